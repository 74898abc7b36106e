/* SPDX-License-Identifier: MIT */
/* Guest memory: memfd-backed regions, GPA translation, a bump allocator. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vuf/guest_mem.h"
#include "vuf/log.h"

struct vuf_guest_mem {
    unsigned n;
    struct vuf_guest_region r[VUF_GUEST_MEM_MAX_REGIONS]; /* ascending gpa */
    uint64_t cursor;                                      /* bump allocator: next free gpa */
};

static uint64_t page_size(void)
{
    long ps = sysconf(_SC_PAGESIZE);

    return ps > 0 ? (uint64_t)ps : 4096u;
}

int vuf_guest_mem_new(struct vuf_guest_mem **out)
{
    struct vuf_guest_mem *gm;

    if (!out)
        return -EINVAL;
    gm = calloc(1, sizeof(*gm));
    if (!gm)
        return -ENOMEM;
    *out = gm;
    return 0;
}

int vuf_guest_mem_new_simple(uint64_t base_gpa, uint64_t size, struct vuf_guest_mem **out)
{
    struct vuf_guest_mem *gm;
    int r;

    if (!out)
        return -EINVAL;
    r = vuf_guest_mem_new(&gm);
    if (r < 0)
        return r;
    r = vuf_guest_mem_add_memfd(gm, base_gpa, size);
    if (r < 0) {
        vuf_guest_mem_free(gm);
        return r;
    }
    *out = gm;
    return 0;
}

void vuf_guest_mem_free(struct vuf_guest_mem *gm)
{
    if (!gm)
        return;
    for (unsigned i = 0; i < gm->n; i++) {
        munmap(gm->r[i].host, (size_t)gm->r[i].size);
        close(gm->r[i].fd);
    }
    free(gm);
}

/* Validate a new [gpa, gpa + size) and find its sorted slot. */
static int check_range(const struct vuf_guest_mem *gm, uint64_t gpa, uint64_t size, unsigned *slot)
{
    uint64_t ps = page_size();
    unsigned pos = 0;

    if (size == 0 || gpa % ps || size % ps)
        return -EINVAL;
    /* gpa + size must be representable: the end is used as a bound. */
    if (size > UINT64_MAX - gpa)
        return -EINVAL;
    /* mmap takes a size_t (matters on 32-bit hosts only). */
    if (size > (uint64_t)SIZE_MAX)
        return -EINVAL;
    if (gm->n >= VUF_GUEST_MEM_MAX_REGIONS)
        return -ENOSPC;
    for (unsigned i = 0; i < gm->n; i++) {
        const struct vuf_guest_region *r = &gm->r[i];

        if (gpa < r->gpa + r->size && r->gpa < gpa + size)
            return -EEXIST;
        if (r->gpa < gpa)
            pos = i + 1;
    }
    *slot = pos;
    return 0;
}

/* Takes ownership of fd (closed on failure). */
static int insert_region(struct vuf_guest_mem *gm, unsigned slot, uint64_t gpa, uint64_t size,
                         int fd, uint64_t fd_offset)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)fd_offset);

    if (p == MAP_FAILED) {
        int err = -errno;

        close(fd);
        return err;
    }
    memmove(&gm->r[slot + 1], &gm->r[slot], (gm->n - slot) * sizeof(gm->r[0]));
    gm->r[slot] = (struct vuf_guest_region){
        .gpa = gpa, .size = size, .host = p, .fd = fd, .fd_offset = fd_offset};
    gm->n++;
    return 0;
}

int vuf_guest_mem_add_memfd(struct vuf_guest_mem *gm, uint64_t gpa, uint64_t size)
{
    unsigned slot;
    int fd, r;

    if (!gm)
        return -EINVAL;
    r = check_range(gm, gpa, size, &slot);
    if (r < 0)
        return r;
    if (size > (uint64_t)INT64_MAX)
        return -EINVAL;
    fd = memfd_create("vuf-guest-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    /* Best effort: a peer that shrinks the file would make our accesses
     * fault with SIGBUS. Sealing is not essential to correctness. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        vuf_log(VUF_LOG_DEBUG, "guest_mem: cannot seal memfd: %s", strerror(errno));
    return insert_region(gm, slot, gpa, size, fd, 0);
}

int vuf_guest_mem_add_fd(struct vuf_guest_mem *gm, uint64_t gpa, uint64_t size, int fd,
                         uint64_t fd_offset)
{
    struct stat st;
    unsigned slot;
    int r, dfd;

    if (!gm)
        return -EINVAL;
    if (fd < 0)
        return -EBADF;
    r = check_range(gm, gpa, size, &slot);
    if (r < 0)
        return r;
    if (fd_offset % page_size() || fd_offset > (uint64_t)INT64_MAX ||
        size > (uint64_t)INT64_MAX - fd_offset)
        return -EINVAL;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size < fd_offset + size)
        return -EINVAL;
    dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0)
        return -errno;
    return insert_region(gm, slot, gpa, size, dfd, fd_offset);
}

int vuf_guest_mem_import(const struct vuf_mem_region *regions, const int *fds, unsigned n,
                         struct vuf_guest_mem **out)
{
    struct vuf_guest_mem *gm;
    int r;

    if (!out || !regions || !fds || n == 0)
        return -EINVAL;
    if (n > VUF_GUEST_MEM_MAX_REGIONS)
        return -E2BIG;
    r = vuf_guest_mem_new(&gm);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < n; i++) {
        r = vuf_guest_mem_add_fd(gm, regions[i].guest_phys_addr, regions[i].memory_size, fds[i],
                                 regions[i].mmap_offset);
        if (r < 0) {
            vuf_guest_mem_free(gm);
            return r;
        }
    }
    *out = gm;
    return 0;
}

int vuf_guest_mem_remove(struct vuf_guest_mem *gm, uint64_t gpa)
{
    if (!gm)
        return -EINVAL;
    for (unsigned i = 0; i < gm->n; i++) {
        if (gm->r[i].gpa != gpa)
            continue;
        munmap(gm->r[i].host, (size_t)gm->r[i].size);
        close(gm->r[i].fd);
        memmove(&gm->r[i], &gm->r[i + 1], (gm->n - i - 1) * sizeof(gm->r[0]));
        gm->n--;
        return 0;
    }
    return -ENOENT;
}

unsigned vuf_guest_mem_nregions(const struct vuf_guest_mem *gm)
{
    return gm ? gm->n : 0;
}

int vuf_guest_mem_region(const struct vuf_guest_mem *gm, unsigned i, struct vuf_guest_region *out)
{
    if (!gm || !out || i >= gm->n)
        return -ERANGE;
    *out = gm->r[i];
    return 0;
}

int vuf_guest_mem_mem_table(const struct vuf_guest_mem *gm, struct vuf_mem_region *regions,
                            int *fds, unsigned max)
{
    if (!gm || (max && (!regions || !fds)))
        return -EINVAL;
    if (gm->n > max)
        return -E2BIG;
    for (unsigned i = 0; i < gm->n; i++) {
        regions[i] = (struct vuf_mem_region){
            .guest_phys_addr = gm->r[i].gpa,
            .memory_size = gm->r[i].size,
            .userspace_addr = (uint64_t)(uintptr_t)gm->r[i].host,
            .mmap_offset = gm->r[i].fd_offset,
        };
        fds[i] = gm->r[i].fd;
    }
    return (int)gm->n;
}

/* Does [a, a + len) lie inside [base, base + size)? No sum can overflow:
 * off < size and len <= size - off. len 0 still needs a inside. */
static bool within(uint64_t a, uint64_t len, uint64_t base, uint64_t size)
{
    uint64_t off;

    if (a < base)
        return false;
    off = a - base;
    return off < size && len <= size - off;
}

void *vuf_guest_mem_to_host(const struct vuf_guest_mem *gm, uint64_t gpa, uint64_t len)
{
    if (!gm)
        return NULL;
    for (unsigned i = 0; i < gm->n; i++) {
        const struct vuf_guest_region *r = &gm->r[i];

        if (within(gpa, len, r->gpa, r->size))
            return (uint8_t *)r->host + (gpa - r->gpa);
    }
    return NULL;
}

int vuf_guest_mem_translate(const struct vuf_guest_mem *gm, uint64_t gpa, uint64_t len, void **host)
{
    void *p = vuf_guest_mem_to_host(gm, gpa, len);

    if (!p)
        return -EFAULT;
    if (host)
        *host = p;
    return 0;
}

int vuf_guest_mem_to_gpa(const struct vuf_guest_mem *gm, const void *host, uint64_t len,
                         uint64_t *gpa)
{
    uintptr_t h = (uintptr_t)host;

    if (!gm)
        return -EFAULT;
    for (unsigned i = 0; i < gm->n; i++) {
        const struct vuf_guest_region *r = &gm->r[i];

        if (within(h, len, (uintptr_t)r->host, r->size)) {
            if (gpa)
                *gpa = r->gpa + (h - (uintptr_t)r->host);
            return 0;
        }
    }
    return -EFAULT;
}

int vuf_guest_mem_alloc(struct vuf_guest_mem *gm, uint64_t size, uint64_t align, uint64_t *gpa)
{
    if (!gm || !gpa)
        return -EINVAL;
    if (align == 0)
        align = 1;
    if (size == 0 || (align & (align - 1)))
        return -EINVAL;
    for (unsigned i = 0; i < gm->n; i++) {
        const struct vuf_guest_region *r = &gm->r[i];
        uint64_t end = r->gpa + r->size; /* no overflow: checked at add */
        uint64_t start = gm->cursor > r->gpa ? gm->cursor : r->gpa;

        if (start >= end)
            continue;
        /* Round up without overflow: start < end <= UINT64_MAX. */
        if (start % align) {
            uint64_t pad = align - start % align;

            if (pad >= end - start)
                continue;
            start += pad;
        }
        if (size > end - start)
            continue;
        memset((uint8_t *)r->host + (start - r->gpa), 0, (size_t)size);
        gm->cursor = start + size;
        *gpa = start;
        return 0;
    }
    return -ENOMEM;
}

uint64_t vuf_guest_mem_alloc_mark(const struct vuf_guest_mem *gm)
{
    return gm ? gm->cursor : 0;
}

int vuf_guest_mem_alloc_rewind(struct vuf_guest_mem *gm, uint64_t mark)
{
    if (!gm || mark > gm->cursor)
        return -EINVAL;
    gm->cursor = mark;
    return 0;
}
