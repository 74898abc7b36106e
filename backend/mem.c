/* SPDX-License-Identifier: MIT */
/* Front-end memory regions, mapped and translated. See mem.h. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mem.h"
#include "vuf/log.h"

/* ---- the SIGBUS guard ---------------------------------------------------- */

/* Regions (32 slots, up to 8 more while a new table is mapped) and the
 * inflight area. Written by the main thread only; read by the handler,
 * which runs on the thread that faulted: the main thread too (no other
 * thread touches front-end memory), so a slot is never half-written when
 * the handler reads it. */
#define GUARD_SLOTS (BE_MEM_MAX_SLOTS + VUF_MEM_TABLE_MAX + 8)

static struct guard {
    _Atomic uintptr_t base;
    _Atomic size_t len;
    _Atomic int lost;
} guards[GUARD_SLOTS];
static _Atomic uint64_t guard_faults;
static struct sigaction guard_prev;

static void guard_sigbus(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;

    /* si_code > 0: the kernel's, for an access (not kill or sigqueue). */
    if (si->si_code > 0) {
        for (unsigned i = 0; i < GUARD_SLOTS; i++) {
            uintptr_t b = atomic_load_explicit(&guards[i].base, memory_order_relaxed);
            size_t len = atomic_load_explicit(&guards[i].len, memory_order_relaxed);

            if (!b || a - b >= len)
                continue;
            /* Same address, zero pages: the faulting access is restarted
             * and reads zeros; the region is lost for good. */
            if (mmap((void *)b, len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
                break;
            atomic_store_explicit(&guards[i].lost, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&guard_faults, 1, memory_order_relaxed);
            return;
        }
    }
    /* Not ours: the previous disposition decides (the access faults again
     * on return; a sent signal is sent again). */
    sigaction(SIGBUS, &guard_prev, NULL);
    if (si->si_code <= 0)
        raise(sig);
    (void)uc;
}

int be_guard_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = guard_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &guard_prev) < 0 ? -errno : 0;
}

const _Atomic int *be_guard_add(void *base, size_t len)
{
    for (unsigned i = 0; i < GUARD_SLOTS; i++) {
        if (atomic_load_explicit(&guards[i].base, memory_order_relaxed))
            continue;
        atomic_store_explicit(&guards[i].lost, 0, memory_order_relaxed);
        atomic_store_explicit(&guards[i].len, len, memory_order_relaxed);
        atomic_store_explicit(&guards[i].base, (uintptr_t)base, memory_order_release);
        return &guards[i].lost;
    }
    vuf_log(VUF_LOG_WARN, "mapping at %p is not guarded against a shrinking file: no slot", base);
    return NULL;
}

void be_guard_del(void *base)
{
    for (unsigned i = 0; i < GUARD_SLOTS; i++)
        if (atomic_load_explicit(&guards[i].base, memory_order_relaxed) == (uintptr_t)base) {
            atomic_store_explicit(&guards[i].base, 0, memory_order_release);
            atomic_store_explicit(&guards[i].len, 0, memory_order_relaxed);
            return;
        }
}

uint64_t be_guard_faults(void)
{
    return atomic_load_explicit(&guard_faults, memory_order_relaxed);
}

static bool region_lost(const struct be_region *r)
{
    return r->lost && atomic_load_explicit(r->lost, memory_order_relaxed);
}

bool be_mem_lost_check(struct be_mem *m)
{
    uint64_t f = be_guard_faults();

    if (f == m->faults_seen)
        return false;
    m->faults_seen = f;
    for (unsigned i = 0; i < m->n; i++)
        if (region_lost(&m->r[i]))
            vuf_log(VUF_LOG_ERROR,
                    "memory region gpa 0x%llx size 0x%llx: its file shrank under the mapping "
                    "(SIGBUS); the region is lost, requests and rings in it fail",
                    (unsigned long long)m->r[i].gpa, (unsigned long long)m->r[i].size);
    m->generation++;
    return true;
}

/* ---- regions ---------------------------------------------------------------- */

void be_mem_init(struct be_mem *m)
{
    memset(m, 0, sizeof(*m));
    m->faults_seen = be_guard_faults();
}

static void unmap_region(struct be_region *r)
{
    if (r->map_base) {
        be_guard_del(r->map_base);
        munmap(r->map_base, r->map_len);
    }
    memset(r, 0, sizeof(*r));
}

void be_mem_clear(struct be_mem *m)
{
    for (unsigned i = 0; i < m->n; i++)
        unmap_region(&m->r[i]);
    m->n = 0;
    m->generation++;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    /* Both ranges are non-empty and do not wrap (checked before). */
    return a < b + blen && b < a + alen;
}

/* Check one region on its own and map it. */
static int map_region(const struct vuf_mem_region *w, int fd, struct be_region *out)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t delta, len;
    struct stat st;
    void *p;

    if (w->memory_size == 0 || w->guest_phys_addr + w->memory_size < w->guest_phys_addr ||
        w->userspace_addr + w->memory_size < w->userspace_addr ||
        w->mmap_offset + w->memory_size < w->mmap_offset) {
        vuf_log(VUF_LOG_ERROR, "memory region gpa 0x%llx size 0x%llx: bad size or overflow",
                (unsigned long long)w->guest_phys_addr, (unsigned long long)w->memory_size);
        return -EINVAL;
    }
    if (fd < 0 || fstat(fd, &st) < 0) {
        vuf_log(VUF_LOG_ERROR, "memory region gpa 0x%llx: bad fd %d",
                (unsigned long long)w->guest_phys_addr, fd);
        return -EBADF;
    }
    /* Mapping beyond the end of a file succeeds and then SIGBUSes on the
     * first access: refuse what the file cannot back. Only regular files
     * (memfd, tmpfs, hugetlbfs) have a size we can trust. */
    if (!S_ISREG(st.st_mode)) {
        vuf_log(VUF_LOG_ERROR, "memory region gpa 0x%llx: fd is not a regular file/memfd",
                (unsigned long long)w->guest_phys_addr);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size < w->mmap_offset + w->memory_size) {
        vuf_log(VUF_LOG_ERROR,
                "memory region gpa 0x%llx: mmap_offset 0x%llx + size 0x%llx beyond the "
                "end of its file (0x%llx bytes)",
                (unsigned long long)w->guest_phys_addr, (unsigned long long)w->mmap_offset,
                (unsigned long long)w->memory_size, (unsigned long long)st.st_size);
        return -EINVAL;
    }
    /* mmap wants a page-aligned offset; map from the page below. */
    delta = w->mmap_offset % (uint64_t)page;
    len = w->memory_size + delta;
    if (len < w->memory_size || len > SIZE_MAX) {
        vuf_log(VUF_LOG_ERROR, "memory region gpa 0x%llx: too large to map",
                (unsigned long long)w->guest_phys_addr);
        return -EINVAL;
    }
    p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
             (off_t)(w->mmap_offset - delta));
    if (p == MAP_FAILED) {
        int e = errno;
        vuf_log(VUF_LOG_ERROR, "memory region gpa 0x%llx size 0x%llx: mmap: %s",
                (unsigned long long)w->guest_phys_addr, (unsigned long long)w->memory_size,
                strerror(e));
        return -e;
    }
    out->gpa = w->guest_phys_addr;
    out->size = w->memory_size;
    out->uva = w->userspace_addr;
    out->mmap_offset = w->mmap_offset;
    out->map_base = p;
    out->map_len = (size_t)len;
    out->host = (uint8_t *)p + delta;
    out->lost = be_guard_add(p, (size_t)len);
    vuf_log(VUF_LOG_INFO, "mapped region gpa 0x%llx size 0x%llx uva 0x%llx offset 0x%llx",
            (unsigned long long)out->gpa, (unsigned long long)out->size,
            (unsigned long long)out->uva, (unsigned long long)out->mmap_offset);
    return 0;
}

static int check_overlap(const struct be_region *regs, unsigned n, const struct be_region *r)
{
    for (unsigned i = 0; i < n; i++)
        if (ranges_overlap(regs[i].gpa, regs[i].size, r->gpa, r->size)) {
            vuf_log(VUF_LOG_ERROR,
                    "memory region gpa 0x%llx size 0x%llx overlaps gpa 0x%llx size 0x%llx",
                    (unsigned long long)r->gpa, (unsigned long long)r->size,
                    (unsigned long long)regs[i].gpa, (unsigned long long)regs[i].size);
            return -EEXIST;
        }
    return 0;
}

int be_mem_set_table(struct be_mem *m, const struct vuf_mem_region *regions, const int *fds,
                     unsigned n)
{
    struct be_region fresh[VUF_MEM_TABLE_MAX];
    unsigned done = 0;
    int r = 0;

    if (n > VUF_MEM_TABLE_MAX)
        return -E2BIG;
    memset(fresh, 0, sizeof(fresh));
    for (; done < n; done++) {
        r = map_region(&regions[done], fds[done], &fresh[done]);
        if (r == 0)
            r = check_overlap(fresh, done, &fresh[done]);
        if (r < 0) {
            unmap_region(&fresh[done]);
            break;
        }
    }
    if (r < 0) {
        for (unsigned i = 0; i < done; i++)
            unmap_region(&fresh[i]);
        return r;
    }
    be_mem_clear(m);
    memcpy(m->r, fresh, n * sizeof(fresh[0]));
    m->n = n;
    m->generation++;
    return 0;
}

int be_mem_add(struct be_mem *m, const struct vuf_mem_region *reg, int fd)
{
    struct be_region fresh;
    int r;

    if (m->n >= BE_MEM_MAX_SLOTS) {
        vuf_log(VUF_LOG_ERROR, "ADD_MEM_REG: all %u slots in use", BE_MEM_MAX_SLOTS);
        return -ENOSPC;
    }
    memset(&fresh, 0, sizeof(fresh));
    r = map_region(reg, fd, &fresh);
    if (r == 0)
        r = check_overlap(m->r, m->n, &fresh);
    if (r < 0) {
        unmap_region(&fresh);
        return r;
    }
    m->r[m->n++] = fresh;
    m->generation++;
    return 0;
}

int be_mem_remove(struct be_mem *m, const struct vuf_mem_region *reg)
{
    for (unsigned i = 0; i < m->n; i++) {
        struct be_region *r = &m->r[i];
        if (r->gpa == reg->guest_phys_addr && r->uva == reg->userspace_addr &&
            r->size == reg->memory_size) {
            unmap_region(r);
            m->r[i] = m->r[m->n - 1];
            memset(&m->r[m->n - 1], 0, sizeof(m->r[0]));
            m->n--;
            m->generation++;
            return 0;
        }
    }
    vuf_log(VUF_LOG_ERROR, "REM_MEM_REG: no region gpa 0x%llx size 0x%llx uva 0x%llx",
            (unsigned long long)reg->guest_phys_addr, (unsigned long long)reg->memory_size,
            (unsigned long long)reg->userspace_addr);
    return -ENOENT;
}

/* Does [addr, addr + len) lie within [base, base + size)? Overflow-safe. */
static bool inside(uint64_t addr, uint64_t len, uint64_t base, uint64_t size)
{
    return addr >= base && addr - base <= size && len <= size - (addr - base);
}

void *be_mem_uva_to_host(const struct be_mem *m, uint64_t uva, uint64_t len)
{
    for (unsigned i = 0; i < m->n; i++) {
        const struct be_region *r = &m->r[i];
        if (inside(uva, len, r->uva, r->size) && uva - r->uva < r->size)
            return region_lost(r) ? NULL : r->host + (uva - r->uva);
    }
    return NULL;
}

void *be_mem_gpa_to_host(const struct be_mem *m, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < m->n; i++) {
        const struct be_region *r = &m->r[i];
        if (inside(gpa, len, r->gpa, r->size) && gpa - r->gpa < r->size)
            return region_lost(r) ? NULL : r->host + (gpa - r->gpa);
    }
    return NULL;
}

void *be_mem_gpa_piece(const struct be_mem *m, uint64_t gpa, uint64_t len, uint64_t *piece)
{
    for (unsigned i = 0; i < m->n; i++) {
        const struct be_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            if (region_lost(r))
                break;
            uint64_t left = r->size - (gpa - r->gpa);
            *piece = len < left ? len : left;
            return r->host + (gpa - r->gpa);
        }
    }
    *piece = 0;
    return NULL;
}

int be_mem_read(const struct be_mem *m, uint64_t gpa, void *buf, size_t len)
{
    uint8_t *dst = buf;

    while (len > 0) {
        uint64_t piece;
        const uint8_t *src = be_mem_gpa_piece(m, gpa, len, &piece);
        if (!src)
            return -EFAULT;
        memcpy(dst, src, (size_t)piece);
        dst += piece;
        len -= (size_t)piece;
        if (gpa + piece < gpa && len > 0)
            return -EFAULT;
        gpa += piece;
    }
    return 0;
}

int be_mem_write(const struct be_mem *m, uint64_t gpa, const void *buf, size_t len)
{
    const uint8_t *src = buf;

    while (len > 0) {
        uint64_t piece;
        uint8_t *dst = be_mem_gpa_piece(m, gpa, len, &piece);
        if (!dst)
            return -EFAULT;
        memcpy(dst, src, (size_t)piece);
        src += piece;
        len -= (size_t)piece;
        if (gpa + piece < gpa && len > 0)
            return -EFAULT;
        gpa += piece;
    }
    return 0;
}
