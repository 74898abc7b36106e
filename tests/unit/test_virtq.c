/* SPDX-License-Identifier: MIT */
/*
 * Guest memory, the split-ring driver and the virtio-blk driver, against a
 * fake device that behaves like a vhost-user back-end: it maps the region
 * fds itself (as from SET_MEM_TABLE), finds the rings through the
 * front-end's addresses (SET_VRING_ADDR), starts from a base
 * (SET_VRING_BASE), pops avail entries, walks chains (indirect included),
 * writes used entries and signals the call eventfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define MiB (1024u * 1024u)
#define F_EVENT_IDX (1ull << VUF_VIRTIO_F_EVENT_IDX)
#define F_INDIRECT (1ull << VUF_VIRTIO_F_INDIRECT_DESC)
#define F_VERSION_1 (1ull << VUF_VIRTIO_F_VERSION_1)

static uint64_t page(void)
{
    return (uint64_t)sysconf(_SC_PAGESIZE);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* Log capture: -EPROTO paths must log, and the test output stays clean.    */
/* ------------------------------------------------------------------------ */

static int log_errors;
static char log_last[256];

static void capture_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    if (level == VUF_LOG_ERROR)
        __atomic_add_fetch(&log_errors, 1, __ATOMIC_RELAXED);
    snprintf(log_last, sizeof(log_last), "%s", msg);
}

static int setup_log(void **state)
{
    (void)state;
    log_errors = 0;
    log_last[0] = 0;
    vuf_log_set(capture_log, NULL, VUF_LOG_DEBUG);
    return 0;
}

static int teardown_log(void **state)
{
    (void)state;
    vuf_log_set(NULL, NULL, VUF_LOG_WARN);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The fake device                                                          */
/* ------------------------------------------------------------------------ */

struct fdev {
    unsigned nreg;
    struct {
        uint64_t gpa, size, uva;
        uint8_t *map;
    } reg[VUF_GUEST_MEM_MAX_REGIONS];
    unsigned size;
    struct vuf_vring_desc *desc;
    struct vuf_vring_avail *avail;
    struct vuf_vring_used *used;
    uint16_t last_avail, used_idx, signalled;
    bool event_idx;
    int kick_fd, call_fd; /* borrowed from the queue */
    unsigned calls;
};

struct fseg {
    uint8_t *p;
    uint32_t len;
    bool w;
};

#define FCHAIN_MAX 64
struct fchain {
    uint16_t head;
    bool indirect;
    unsigned n;
    uint32_t wlen;
    struct fseg seg[FCHAIN_MAX];
};

static void *fdev_gpa(struct fdev *d, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < d->nreg; i++)
        if (gpa >= d->reg[i].gpa && gpa - d->reg[i].gpa < d->reg[i].size &&
            len <= d->reg[i].size - (gpa - d->reg[i].gpa))
            return d->reg[i].map + (gpa - d->reg[i].gpa);
    return NULL;
}

static void *fdev_uva(struct fdev *d, uint64_t uva, uint64_t len)
{
    for (unsigned i = 0; i < d->nreg; i++)
        if (uva >= d->reg[i].uva && uva - d->reg[i].uva < d->reg[i].size &&
            len <= d->reg[i].size - (uva - d->reg[i].uva))
            return d->reg[i].map + (uva - d->reg[i].uva);
    return NULL;
}

/* "SET_MEM_TABLE + SET_VRING_NUM/ADDR/BASE/KICK/CALL": map the fds
 * ourselves, as a separate process would. */
static void fdev_attach(struct fdev *d, struct vuf_guest_mem *gm, struct vuf_virtq *vq,
                        uint16_t base)
{
    struct vuf_mem_region regs[VUF_GUEST_MEM_MAX_REGIONS];
    int fds[VUF_GUEST_MEM_MAX_REGIONS];
    struct vuf_vring_addr a;
    int n = vuf_guest_mem_mem_table(gm, regs, fds, VUF_GUEST_MEM_MAX_REGIONS);

    assert_true(n > 0);
    memset(d, 0, sizeof(*d));
    d->nreg = (unsigned)n;
    for (int i = 0; i < n; i++) {
        void *p = mmap(NULL, regs[i].memory_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i],
                       (off_t)regs[i].mmap_offset);

        assert_true(p != MAP_FAILED);
        d->reg[i].gpa = regs[i].guest_phys_addr;
        d->reg[i].size = regs[i].memory_size;
        d->reg[i].uva = regs[i].userspace_addr;
        d->reg[i].map = p;
    }
    vuf_virtq_vring_addr(vq, &a);
    d->size = vuf_virtq_size(vq);
    d->desc = fdev_uva(d, a.desc, VUF_VRING_DESC_BYTES(d->size));
    d->avail = fdev_uva(d, a.avail, VUF_VRING_AVAIL_BYTES(d->size));
    d->used = fdev_uva(d, a.used, VUF_VRING_USED_BYTES(d->size));
    assert_non_null(d->desc);
    assert_non_null(d->avail);
    assert_non_null(d->used);
    d->event_idx = vuf_virtq_features(vq) & F_EVENT_IDX;
    d->last_avail = base;
    /* Like a back-end resuming: the used idx comes from memory. */
    d->used_idx = d->signalled = __atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE);
    d->kick_fd = vuf_virtq_kick_fd(vq);
    d->call_fd = vuf_virtq_call_fd(vq);
}

static void fdev_detach(struct fdev *d)
{
    for (unsigned i = 0; i < d->nreg; i++)
        munmap(d->reg[i].map, d->reg[i].size);
    d->nreg = 0;
}

static int fdev_add_seg(struct fdev *d, struct fchain *c, const struct vuf_vring_desc *desc)
{
    struct fseg *s;

    if (c->n >= FCHAIN_MAX)
        return -1;
    s = &c->seg[c->n++];
    s->len = desc->len;
    s->w = desc->flags & VUF_VRING_DESC_F_WRITE;
    s->p = fdev_gpa(d, desc->addr, desc->len);
    if (!s->p)
        return -1;
    if (s->w)
        c->wlen += s->len;
    return 0;
}

/* 1 popped, 0 nothing available, -1 malformed chain. Safe from any thread
 * (no cmocka asserts). */
static int fdev_pop(struct fdev *d, struct fchain *c)
{
    uint16_t avail_idx = __atomic_load_n(&d->avail->idx, __ATOMIC_ACQUIRE);
    unsigned i, steps = 0;

    if (avail_idx == d->last_avail)
        return 0;
    memset(c, 0, sizeof(*c));
    c->head = __atomic_load_n(&d->avail->ring[d->last_avail % d->size], __ATOMIC_RELAXED);
    d->last_avail++;
    if (d->event_idx)
        __atomic_store_n(vuf_vring_avail_event(d->used, d->size), d->last_avail, __ATOMIC_RELAXED);
    if (c->head >= d->size)
        return -1;
    i = c->head;
    for (;;) {
        struct vuf_vring_desc desc = d->desc[i];

        if (++steps > d->size)
            return -1;
        if (desc.flags & VUF_VRING_DESC_F_INDIRECT) {
            struct vuf_vring_desc *t;
            unsigned n, j = 0;

            if (i != c->head || (desc.flags & VUF_VRING_DESC_F_NEXT) || desc.len % 16 ||
                desc.len == 0)
                return -1;
            t = fdev_gpa(d, desc.addr, desc.len);
            if (!t)
                return -1;
            n = desc.len / 16;
            c->indirect = true;
            for (unsigned k = 0;; k++) {
                if (k >= n || (t[j].flags & VUF_VRING_DESC_F_INDIRECT))
                    return -1;
                if (fdev_add_seg(d, c, &t[j]) < 0)
                    return -1;
                if (!(t[j].flags & VUF_VRING_DESC_F_NEXT))
                    return 1;
                j = t[j].next;
                if (j >= n)
                    return -1;
            }
        }
        if (fdev_add_seg(d, c, &desc) < 0)
            return -1;
        if (!(desc.flags & VUF_VRING_DESC_F_NEXT))
            return 1;
        i = desc.next;
        if (i >= d->size)
            return -1;
    }
}

/* Write a used entry as is (the tests also use it to write garbage). */
static void fdev_push_raw(struct fdev *d, uint32_t id, uint32_t len)
{
    struct vuf_vring_used_elem *e = &d->used->ring[d->used_idx % d->size];

    __atomic_store_n(&e->id, id, __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, len, __ATOMIC_RELAXED);
    d->used_idx++;
    __atomic_store_n(&d->used->idx, d->used_idx, __ATOMIC_RELEASE);
}

/* Signal the call fd if the driver wants it; returns whether it did. */
static bool fdev_notify(struct fdev *d)
{
    bool need;

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (d->event_idx)
        need = vuf_vring_need_event(
            __atomic_load_n(vuf_vring_used_event(d->avail, d->size), __ATOMIC_RELAXED), d->used_idx,
            d->signalled);
    else
        need =
            d->used_idx != d->signalled &&
            !(__atomic_load_n(&d->avail->flags, __ATOMIC_RELAXED) & VUF_VRING_AVAIL_F_NO_INTERRUPT);
    d->signalled = d->used_idx;
    if (need) {
        uint64_t one = 1;

        if (write(d->call_fd, &one, sizeof(one)) != sizeof(one))
            return false;
        d->calls++;
    }
    return need;
}

static void fdev_set_no_notify(struct fdev *d, bool on)
{
    __atomic_store_n(&d->used->flags, on ? VUF_VRING_USED_F_NO_NOTIFY : 0, __ATOMIC_RELAXED);
}

/* Kicks pending on the kick eventfd (and reset it). */
static uint64_t fd_count(int fd)
{
    uint64_t v = 0;

    if (read(fd, &v, sizeof(v)) != sizeof(v))
        return 0;
    return v;
}

/* Pop one chain (asserting it is well formed) and complete it at once,
 * filling writable bytes with `fill`. */
static struct fchain *fdev_complete_one(struct fdev *d, struct fchain *c, uint8_t fill)
{
    assert_int_equal(fdev_pop(d, c), 1);
    for (unsigned i = 0; i < c->n; i++)
        if (c->seg[i].w)
            memset(c->seg[i].p, fill, c->seg[i].len);
    fdev_push_raw(d, c->head, c->wlen);
    return c;
}

/* ------------------------------------------------------------------------ */
/* guest_mem                                                                */
/* ------------------------------------------------------------------------ */

static void test_gm_translate_bounds(void **state)
{
    struct vuf_guest_mem *gm;
    struct vuf_guest_region r;
    uint8_t *h;
    uint64_t gpa;
    void *p;
    int local;

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, MiB, &gm), 0);
    assert_int_equal(vuf_guest_mem_nregions(gm), 1);
    assert_int_equal(vuf_guest_mem_region(gm, 0, &r), 0);
    assert_int_equal(r.gpa, 0);
    assert_int_equal(r.size, MiB);
    assert_true(r.fd >= 0);
    assert_int_equal(r.fd_offset, 0);
    assert_int_equal(vuf_guest_mem_region(gm, 1, &r), -ERANGE);
    h = r.host;

    assert_ptr_equal(vuf_guest_mem_to_host(gm, 0, MiB), h);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, MiB - 1, 1), h + MiB - 1);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, 0, 0), h);
    assert_null(vuf_guest_mem_to_host(gm, MiB, 1));
    assert_null(vuf_guest_mem_to_host(gm, MiB, 0));
    assert_null(vuf_guest_mem_to_host(gm, MiB - 1, 2));
    assert_null(vuf_guest_mem_to_host(gm, 0, MiB + 1));
    /* Overflow: gpa + len wraps past 2^64 back into the region. */
    assert_null(vuf_guest_mem_to_host(gm, 16, UINT64_MAX));
    assert_null(vuf_guest_mem_to_host(gm, 0, UINT64_MAX));
    assert_null(vuf_guest_mem_to_host(gm, UINT64_MAX, 2));
    assert_null(vuf_guest_mem_to_host(gm, UINT64_MAX - 4, 16));
    assert_int_equal(vuf_guest_mem_translate(gm, MiB, 1, &p), -EFAULT);
    assert_int_equal(vuf_guest_mem_translate(gm, 4096, 8, &p), 0);
    assert_ptr_equal(p, h + 4096);

    assert_int_equal(vuf_guest_mem_to_gpa(gm, h + 123, 10, &gpa), 0);
    assert_int_equal(gpa, 123);
    assert_int_equal(vuf_guest_mem_to_gpa(gm, h + MiB - 1, 2, &gpa), -EFAULT);
    assert_int_equal(vuf_guest_mem_to_gpa(gm, h + MiB, 0, &gpa), -EFAULT);
    assert_int_equal(vuf_guest_mem_to_gpa(gm, h + 8, UINT64_MAX, &gpa), -EFAULT);
    assert_int_equal(vuf_guest_mem_to_gpa(gm, &local, sizeof(local), &gpa), -EFAULT);

    /* The memory is really shared and zeroed. */
    assert_int_equal(h[0], 0);
    assert_int_equal(h[MiB - 1], 0);
    vuf_guest_mem_free(gm);
    vuf_guest_mem_free(NULL);
}

static void test_gm_regions(void **state)
{
    const uint64_t ps = page();
    struct vuf_guest_mem *gm;
    struct vuf_mem_region mr[VUF_GUEST_MEM_MAX_REGIONS];
    int fds[VUF_GUEST_MEM_MAX_REGIONS];
    struct vuf_guest_region r0, r1;
    int base = tu_count_fds();

    (void)state;
    assert_int_equal(vuf_guest_mem_new(&gm), 0);
    assert_null(vuf_guest_mem_to_host(gm, 0, 1));
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x100000, 16 * ps), 0);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0, 16 * ps), 0);
    /* Adjacent in GPA space, but a separate mapping. */
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 16 * ps, 16 * ps), 0);
    assert_int_equal(vuf_guest_mem_nregions(gm), 3);

    /* Sorted by gpa. */
    assert_int_equal(vuf_guest_mem_region(gm, 0, &r0), 0);
    assert_int_equal(vuf_guest_mem_region(gm, 1, &r1), 0);
    assert_int_equal(r0.gpa, 0);
    assert_int_equal(r1.gpa, 16 * ps);

    /* Each half of a straddling range translates; the whole does not. */
    assert_non_null(vuf_guest_mem_to_host(gm, 16 * ps - 8, 8));
    assert_non_null(vuf_guest_mem_to_host(gm, 16 * ps, 8));
    assert_null(vuf_guest_mem_to_host(gm, 16 * ps - 8, 16));
    assert_ptr_equal(vuf_guest_mem_to_host(gm, 16 * ps, 8), r1.host);
    /* Hole between 32 pages and 0x100000. */
    assert_null(vuf_guest_mem_to_host(gm, 32 * ps, 1));
    assert_non_null(vuf_guest_mem_to_host(gm, 0x100000, 16 * ps));
    assert_null(vuf_guest_mem_to_host(gm, 0x100000, 16 * ps + 1));

    /* Rejections. */
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 8 * ps, 16 * ps), -EEXIST);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x100000 - ps, 2 * ps), -EEXIST);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x100000 + 15 * ps, ps), -EEXIST);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x200001, ps), -EINVAL);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x200000, ps + 1), -EINVAL);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x200000, 0), -EINVAL);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, UINT64_MAX - ps + 1, 2 * ps), -EINVAL);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, UINT64_MAX - 2 * ps + 1, 4 * ps), -EINVAL);
    assert_int_equal(vuf_guest_mem_nregions(gm), 3);

    /* A region near the top of the GPA space translates without overflow. */
    assert_int_equal(vuf_guest_mem_add_memfd(gm, UINT64_MAX - 2 * ps + 1, ps), 0);
    assert_non_null(vuf_guest_mem_to_host(gm, UINT64_MAX - 2 * ps + 1, ps));
    assert_null(vuf_guest_mem_to_host(gm, UINT64_MAX - 2 * ps + 1, ps + 1));
    assert_null(vuf_guest_mem_to_host(gm, UINT64_MAX - ps + 1, 1));
    assert_null(vuf_guest_mem_to_host(gm, UINT64_MAX - 2 * ps + 2, UINT64_MAX));

    /* SET_MEM_TABLE view. */
    assert_int_equal(vuf_guest_mem_mem_table(gm, mr, fds, 2), -E2BIG);
    assert_int_equal(vuf_guest_mem_mem_table(gm, mr, fds, VUF_GUEST_MEM_MAX_REGIONS), 4);
    assert_int_equal(mr[1].guest_phys_addr, 16 * ps);
    assert_int_equal(mr[1].memory_size, 16 * ps);
    assert_int_equal(mr[1].userspace_addr, (uint64_t)(uintptr_t)r1.host);
    assert_int_equal(mr[1].mmap_offset, 0);
    assert_int_equal(fds[1], r1.fd);
    assert_true(fcntl(fds[1], F_GETFD) & FD_CLOEXEC);

    /* Fill up to the limit. */
    for (unsigned i = 4; i < VUF_GUEST_MEM_MAX_REGIONS; i++)
        assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x1000000 * (uint64_t)i, ps), 0);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x40000000, ps), -ENOSPC);
    assert_int_equal(tu_count_fds(), base + VUF_GUEST_MEM_MAX_REGIONS);
    vuf_guest_mem_free(gm);
    assert_int_equal(tu_count_fds(), base);
}

static void test_gm_add_fd(void **state)
{
    const uint64_t ps = page();
    struct vuf_guest_mem *gm;
    int base = tu_count_fds();
    int fd = memfd_create("test", MFD_CLOEXEC);
    uint8_t *mine, *theirs;

    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)(3 * ps)), 0);
    mine = mmap(NULL, 3 * ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(mine != MAP_FAILED);

    assert_int_equal(vuf_guest_mem_new(&gm), 0);
    assert_int_equal(vuf_guest_mem_add_fd(gm, 0, ps, -1, 0), -EBADF);
    assert_int_equal(vuf_guest_mem_add_fd(gm, 0, ps, fd, 1), -EINVAL);
    assert_int_equal(vuf_guest_mem_add_fd(gm, 0, 2 * ps, fd, 2 * ps), -EINVAL); /* too short */
    assert_int_equal(vuf_guest_mem_add_fd(gm, 0x10000, 2 * ps, fd, ps), 0);
    /* The caller's fd is dup'd: closing ours keeps the region alive. */
    close(fd);
    mine[ps + 5] = 0xab;
    theirs = vuf_guest_mem_to_host(gm, 0x10005, 1);
    assert_non_null(theirs);
    assert_int_equal(*theirs, 0xab);
    *(uint8_t *)vuf_guest_mem_to_host(gm, 0x10000 + ps, 1) = 0xcd;
    assert_int_equal(mine[2 * ps], 0xcd);
    {
        struct vuf_guest_region r;

        assert_int_equal(vuf_guest_mem_region(gm, 0, &r), 0);
        assert_int_equal(r.fd_offset, ps);
        assert_true(fcntl(r.fd, F_GETFD) & FD_CLOEXEC);
    }
    vuf_guest_mem_free(gm);
    munmap(mine, 3 * ps);
    assert_int_equal(tu_count_fds(), base);
}

static void test_gm_alloc(void **state)
{
    const uint64_t ps = page();
    struct vuf_guest_mem *gm;
    uint64_t a, b, mark;
    uint8_t *p;

    (void)state;
    assert_int_equal(vuf_guest_mem_new(&gm), 0);
    assert_int_equal(vuf_guest_mem_alloc(gm, 1, 1, &a), -ENOMEM); /* no regions */
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x10000, 2 * ps), 0);
    assert_int_equal(vuf_guest_mem_add_memfd(gm, 0x100000, 4 * ps), 0);

    assert_int_equal(vuf_guest_mem_alloc(gm, 0, 8, &a), -EINVAL);
    assert_int_equal(vuf_guest_mem_alloc(gm, 8, 3, &a), -EINVAL);
    assert_int_equal(vuf_guest_mem_alloc(gm, 1, 0, &a), 0);
    assert_int_equal(a, 0x10000);
    assert_int_equal(vuf_guest_mem_alloc(gm, 16, 16, &b), 0);
    assert_int_equal(b, 0x10010);
    assert_int_equal(vuf_guest_mem_alloc(gm, 8, 4096, &b), 0);
    assert_int_equal(b, 0x11000);

    /* Zeroed, even when reused after a rewind. */
    mark = vuf_guest_mem_alloc_mark(gm);
    assert_int_equal(vuf_guest_mem_alloc(gm, 64, 64, &a), 0);
    p = vuf_guest_mem_to_host(gm, a, 64);
    memset(p, 0x5a, 64);
    assert_int_equal(vuf_guest_mem_alloc_rewind(gm, mark), 0);
    assert_int_equal(vuf_guest_mem_alloc(gm, 64, 64, &b), 0);
    assert_int_equal(a, b);
    assert_int_equal(p[0], 0);
    assert_int_equal(p[63], 0);
    assert_int_equal(vuf_guest_mem_alloc_rewind(gm, UINT64_MAX), -EINVAL);

    /* Too big for what is left of the first region: goes to the second. */
    assert_int_equal(vuf_guest_mem_alloc(gm, ps, 8, &a), 0);
    assert_int_equal(a, 0x100000);
    /* Never bigger than a region. */
    assert_int_equal(vuf_guest_mem_alloc(gm, 4 * ps, 8, &a), -ENOMEM);
    assert_int_equal(vuf_guest_mem_alloc(gm, 3 * ps, 8, &a), 0);
    assert_int_equal(vuf_guest_mem_alloc(gm, 1, 1, &a), -ENOMEM);
    /* Alignment padding can itself not fit. */
    assert_int_equal(vuf_guest_mem_alloc_rewind(gm, 0x100000 + 4 * ps - 8), 0);
    assert_int_equal(vuf_guest_mem_alloc(gm, 4, 16, &a), -ENOMEM);
    assert_int_equal(vuf_guest_mem_alloc(gm, 4, 4, &a), 0);
    assert_int_equal(a, 0x100000 + 4 * ps - 8);
    assert_int_equal(vuf_guest_mem_alloc(gm, 1, 1ull << 63, &a), -ENOMEM);
    vuf_guest_mem_free(gm);
}

/* ------------------------------------------------------------------------ */
/* virtq                                                                    */
/* ------------------------------------------------------------------------ */

struct env {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct fdev dev;
    uint8_t *buf; /* scratch in guest memory */
    uint64_t buf_gpa;
};

static void env_open_opts(struct env *e, const struct vuf_virtq_opts *o)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(vuf_guest_mem_new_simple(0x40000000, 4 * MiB, &e->gm), 0);
    assert_int_equal(vuf_virtq_new_opts(e->gm, o, &e->vq), 0);
    assert_int_equal(vuf_guest_mem_alloc(e->gm, 256 * 1024, 4096, &e->buf_gpa), 0);
    e->buf = vuf_guest_mem_to_host(e->gm, e->buf_gpa, 256 * 1024);
    fdev_attach(&e->dev, e->gm, e->vq, o->base);
}

static void env_open(struct env *e, unsigned size, uint64_t features, uint16_t base)
{
    struct vuf_virtq_opts o = {.size = size, .features = features, .base = base};

    env_open_opts(e, &o);
}

static void env_close(struct env *e)
{
    fdev_detach(&e->dev);
    vuf_virtq_free(e->vq);
    vuf_guest_mem_free(e->gm);
}

/* A one-buffer chain from the scratch area. */
static int add1(struct env *e, unsigned off, uint32_t len, bool w, void *cookie)
{
    struct vuf_virtq_buf b = {.gpa = e->buf_gpa + off, .len = len, .writable = w};

    return vuf_virtq_add(e->vq, &b, 1, cookie);
}

static void test_vq_create(void **state)
{
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_virtq_layout l;
    struct vuf_virtq_opts o = {.size = 256, .ring_align = 4096, .index = 3};
    struct vuf_vring_addr a;
    uint64_t mark;
    int base = tu_count_fds();

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, 2 * MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new(gm, 0, 0, &vq), -EINVAL);
    assert_int_equal(vuf_virtq_new(gm, 3, 0, &vq), -EINVAL);
    assert_int_equal(vuf_virtq_new(gm, 65536, 0, &vq), -EINVAL);
    assert_int_equal(vuf_virtq_new(gm, 100, 0, &vq), -EINVAL);
    o.indirect_max = 512;
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), -EINVAL);
    o.indirect_max = 0;
    o.ring_align = 48;
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), -EINVAL);
    o.ring_align = 4096;

    /* Too big for the memory: fails cleanly and gives the memory back. */
    mark = vuf_guest_mem_alloc_mark(gm);
    assert_int_equal(vuf_virtq_new(gm, 32768, F_INDIRECT, &vq), -ENOMEM);
    assert_int_equal(vuf_guest_mem_alloc_mark(gm), mark);
    assert_int_equal(tu_count_fds(), base + 1);

    assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), 0);
    vuf_virtq_layout(vq, &l);
    assert_int_equal(l.size, 256);
    assert_int_equal(l.desc_gpa % 4096, 0);
    assert_int_equal(l.avail_gpa % 4096, 0);
    assert_int_equal(l.used_gpa % 4096, 0);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.desc_gpa, 1), l.desc);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.avail_gpa, 1), l.avail);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.used_gpa, 1), l.used);
    vuf_virtq_vring_addr(vq, &a);
    assert_int_equal(a.index, 3);
    assert_int_equal(a.flags, 0);
    assert_int_equal(a.desc, (uint64_t)(uintptr_t)l.desc);
    assert_int_equal(a.avail, (uint64_t)(uintptr_t)l.avail);
    assert_int_equal(a.used, (uint64_t)(uintptr_t)l.used);
    assert_int_equal(vuf_virtq_index(vq), 3);
    assert_int_equal(vuf_virtq_num_free(vq), 256);
    assert_ptr_equal(vuf_virtq_guest_mem(vq), gm);
    assert_true(fcntl(vuf_virtq_kick_fd(vq), F_GETFD) & FD_CLOEXEC);
    assert_true(fcntl(vuf_virtq_call_fd(vq), F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(vuf_virtq_kick_fd(vq), F_GETFL) & O_NONBLOCK);
    assert_int_equal(tu_count_fds(), base + 3);
    vuf_virtq_free(vq);

    /* Minimal alignments, the maximum size. */
    assert_int_equal(vuf_virtq_new(gm, 32768, F_EVENT_IDX, &vq), 0);
    vuf_virtq_layout(vq, &l);
    assert_int_equal(l.desc_gpa % 16, 0);
    assert_int_equal(l.avail_gpa % 2, 0);
    assert_int_equal(l.used_gpa % 4, 0);
    assert_int_equal(vuf_virtq_num_free(vq), 32768);
    vuf_virtq_free(vq);
    vuf_virtq_free(NULL);
    vuf_guest_mem_free(gm);
    assert_int_equal(tu_count_fds(), base);
}

static void test_vq_roundtrip(void **state)
{
    struct env e;
    struct fchain c;
    int cookie;
    void *ck = NULL;
    uint32_t len = 0;
    struct vuf_virtq_buf bufs[3];

    (void)state;
    env_open(&e, 8, 0, 0);
    memcpy(e.buf, "hello", 5);
    memcpy(e.buf + 100, "world", 5);
    bufs[0] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 5};
    bufs[1] = (struct vuf_virtq_buf){.host = e.buf + 100, .len = 5}; /* by pointer */
    bufs[2] = (struct vuf_virtq_buf){.gpa = e.buf_gpa + 200, .len = 32, .writable = true};
    assert_false(vuf_virtq_has_used(e.vq));
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), -EAGAIN);
    assert_int_equal(vuf_virtq_add(e.vq, bufs, 3, &cookie), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 5);
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 1);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 1);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 1);
    assert_int_equal(fd_count(e.dev.kick_fd), 1);

    assert_int_equal(fdev_pop(&e.dev, &c), 1);
    assert_false(c.indirect);
    assert_int_equal(c.n, 3);
    assert_memory_equal(c.seg[0].p, "hello", 5);
    assert_memory_equal(c.seg[1].p, "world", 5);
    assert_false(c.seg[1].w);
    assert_true(c.seg[2].w);
    assert_int_equal(c.wlen, 32);
    memcpy(c.seg[2].p, "reply", 5);
    fdev_push_raw(&e.dev, c.head, 5);
    assert_true(fdev_notify(&e.dev));
    assert_int_equal(fd_count(e.dev.call_fd), 1);

    assert_true(vuf_virtq_has_used(e.vq));
    assert_int_equal(vuf_virtq_used_idx(e.vq), 1);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
    assert_ptr_equal(ck, &cookie);
    assert_int_equal(len, 5);
    assert_memory_equal(e.buf + 200, "reply", 5);
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 0);
    assert_int_equal(vuf_virtq_last_used(e.vq), 1);
    /* NULL out-params are fine. */
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    env_close(&e);
}

/* Run `rounds` rounds of a random mix of chains, completed out of order. */
static void churn(struct env *e, unsigned rounds, unsigned seed)
{
    unsigned size = vuf_virtq_size(e->vq);
    uintptr_t next_cookie = 1;
    uint16_t start_avail = vuf_virtq_avail_idx(e->vq);
    unsigned total = 0;

    srand(seed);
    for (unsigned round = 0; round < rounds; round++) {
        struct fchain pend[64];
        uintptr_t want[64];
        unsigned np = 0, nwant = 0;

        /* Fill with chains of 1..3 buffers until the queue refuses. */
        for (;;) {
            struct vuf_virtq_buf b[3];
            unsigned n = 1 + (unsigned)rand() % 3;
            int r;

            for (unsigned i = 0; i < n; i++)
                b[i] = (struct vuf_virtq_buf){
                    .gpa = e->buf_gpa + 64 * i, .len = 16, .writable = i == n - 1};
            r = vuf_virtq_add(e->vq, b, n, (void *)next_cookie);
            if (r == -ENOSPC)
                break;
            assert_int_equal(r, 0);
            assert_true(nwant < 64);
            want[nwant++] = next_cookie++;
            total++;
            if ((unsigned)rand() % 4 == 0)
                break;
        }
        assert_int_equal(vuf_virtq_avail_idx(e->vq), (uint16_t)(start_avail + total));
        while (fdev_pop(&e->dev, &pend[np]) == 1)
            np++;
        assert_int_equal(np, nwant);
        /* Complete in reverse order, then reap; cookies come back reversed. */
        for (unsigned i = np; i-- > 0;)
            fdev_push_raw(&e->dev, pend[i].head, pend[i].wlen);
        for (unsigned i = np; i-- > 0;) {
            void *ck;
            uint32_t len;

            assert_int_equal(vuf_virtq_get_used(e->vq, &ck, &len), 0);
            assert_int_equal((uintptr_t)ck, want[i]);
            assert_int_equal(len, 16);
        }
        assert_int_equal(vuf_virtq_get_used(e->vq, NULL, NULL), -EAGAIN);
        assert_int_equal(vuf_virtq_num_free(e->vq), size);
        assert_int_equal(vuf_virtq_last_used(e->vq), (uint16_t)(start_avail + total));
        assert_int_equal(vuf_virtq_used_idx(e->vq), (uint16_t)(start_avail + total));
    }
}

static void test_vq_wraparound(void **state)
{
    struct env e;

    (void)state;
    /* Indices start 3 short of the 16-bit wrap. */
    env_open(&e, 4, 0, 65533);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 65533);
    assert_int_equal(vuf_virtq_used_idx(e.vq), 65533);
    assert_int_equal(e.dev.used_idx, 65533);
    churn(&e, 200, 1);
    assert_true(vuf_virtq_avail_idx(e.vq) < 65533); /* wrapped */
    env_close(&e);

    /* Fill a whole queue across the wrap in one batch, with EVENT_IDX. */
    env_open(&e, 8, F_EVENT_IDX, 65535);
    for (uintptr_t i = 0; i < 8; i++)
        assert_int_equal(add1(&e, 0, 8, true, (void *)(i + 1)), 0);
    assert_int_equal(add1(&e, 0, 8, true, NULL), -ENOSPC);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 7);
    for (uintptr_t i = 0; i < 8; i++) {
        struct fchain c;
        void *ck;

        fdev_complete_one(&e.dev, &c, 1);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_int_equal((uintptr_t)ck, i + 1);
    }
    churn(&e, 50, 2);
    env_close(&e);

    /* And through vuf_virtq_reset() on a live queue. */
    env_open(&e, 16, F_INDIRECT, 0);
    churn(&e, 10, 3);
    vuf_virtq_reset(e.vq, 65530);
    fdev_detach(&e.dev);
    fdev_attach(&e.dev, e.gm, e.vq, 65530);
    churn(&e, 100, 4);
    env_close(&e);
}

static void test_vq_full(void **state)
{
    struct env e;
    struct fchain c;
    struct vuf_virtq_buf b[5];

    (void)state;
    env_open(&e, 4, 0, 0);
    for (unsigned i = 0; i < 5; i++)
        b[i] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 8};
    assert_int_equal(vuf_virtq_add(e.vq, b, 5, NULL), -EINVAL); /* never fits */
    for (int i = 0; i < 4; i++)
        assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(add1(&e, 0, 8, false, NULL), -ENOSPC);
    assert_int_equal(vuf_virtq_num_free(e.vq), 0);
    fdev_complete_one(&e.dev, &c, 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), -ENOSPC); /* 2 free */
    assert_int_equal(vuf_virtq_num_free(e.vq), 2);
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 0);
    env_close(&e);

    /* With indirect descriptors every chain takes one slot. */
    env_open(&e, 4, F_INDIRECT, 0);
    for (unsigned i = 0; i < 5; i++)
        b[i] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 8};
    for (int i = 0; i < 4; i++)
        assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), -ENOSPC);
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), -ENOSPC);
    env_close(&e);
}

static void test_vq_bad_buffers(void **state)
{
    struct vuf_virtq_buf b[2];
    struct env e;
    int local;

    (void)state;
    env_open(&e, 8, 0, 0);
    b[0] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 8, .writable = true};
    b[1] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 8};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EINVAL); /* readable after writable */
    assert_int_equal(vuf_virtq_add(e.vq, b, 0, NULL), -EINVAL);
    b[1].writable = true;
    b[1].len = 0;
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EINVAL);
    b[1] = (struct vuf_virtq_buf){.gpa = 0x40000000 + 4 * MiB - 4, .len = 8, .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EFAULT); /* runs off the end */
    b[1] = (struct vuf_virtq_buf){.gpa = 0, .len = 8, .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EFAULT);
    b[1] = (struct vuf_virtq_buf){.gpa = UINT64_MAX - 3, .len = 8, .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EFAULT);
    b[1] = (struct vuf_virtq_buf){.host = &local, .len = sizeof(local), .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EFAULT); /* not guest memory */
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 0);
    env_close(&e);
}

static void test_vq_indirect(void **state)
{
    struct vuf_virtq_opts o = {.size = 16, .features = F_INDIRECT | F_VERSION_1, .indirect_max = 8};
    struct vuf_virtq_buf b[10];
    struct env e;
    struct fchain c;
    struct vuf_virtq_layout l;
    void *ck;
    uint32_t len;

    (void)state;
    env_open_opts(&e, &o);
    vuf_virtq_layout(e.vq, &l);
    for (unsigned i = 0; i < 10; i++) {
        e.buf[i * 16] = (uint8_t)i;
        b[i] = (struct vuf_virtq_buf){.gpa = e.buf_gpa + i * 16, .len = 16, .writable = i >= 5};
    }

    /* 5 buffers: one ring descriptor pointing at a table of 5. */
    assert_int_equal(vuf_virtq_add(e.vq, b, 5, (void *)5), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 15);
    assert_int_equal(fdev_pop(&e.dev, &c), 1);
    assert_true(c.indirect);
    assert_int_equal(l.desc[c.head].flags, VUF_VRING_DESC_F_INDIRECT);
    assert_int_equal(l.desc[c.head].len, 5 * 16);
    assert_int_equal(l.desc[c.head].addr % 16, 0);
    assert_int_equal(c.n, 5);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(c.seg[i].p[0], i);
        assert_false(c.seg[i].w);
    }
    fdev_push_raw(&e.dev, c.head, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
    assert_ptr_equal(ck, (void *)5);
    assert_int_equal(vuf_virtq_num_free(e.vq), 16);

    /* 8 (the max) with writables: indirect; the device may use them all. */
    assert_int_equal(vuf_virtq_add(e.vq, b + 2, 8, (void *)8), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 15);
    fdev_complete_one(&e.dev, &c, 0xee);
    assert_true(c.indirect);
    assert_int_equal(c.n, 8);
    assert_int_equal(c.wlen, 5 * 16);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
    assert_int_equal(len, 80);
    assert_int_equal(e.buf[9 * 16], 0xee);

    /* 1 buffer: direct. 10 (> indirect_max): direct, 10 descriptors. */
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 10, NULL), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 16 - 11);
    fdev_complete_one(&e.dev, &c, 0);
    assert_false(c.indirect);
    assert_int_equal(c.n, 1);
    fdev_complete_one(&e.dev, &c, 0);
    assert_false(c.indirect);
    assert_int_equal(c.n, 10);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);

    /* Renegotiated without INDIRECT_DESC: direct. */
    assert_int_equal(vuf_virtq_set_features(e.vq, 0), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), 0);
    assert_int_equal(vuf_virtq_set_features(e.vq, F_INDIRECT), -EBUSY);
    fdev_complete_one(&e.dev, &c, 0);
    assert_false(c.indirect);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_set_features(e.vq, F_INDIRECT), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_true(c.indirect);
    env_close(&e);

    /* INDIRECT_DESC negotiated only later: no tables, so never indirect. */
    env_open(&e, 8, 0, 0);
    assert_int_equal(vuf_virtq_set_features(e.vq, F_INDIRECT), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, NULL), 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_false(c.indirect);
    env_close(&e);
}

static void test_vq_event_idx(void **state)
{
    struct env e;
    struct fchain c;
    int kick;

    (void)state;
    env_open(&e, 8, F_EVENT_IDX, 100);
    kick = e.dev.kick_fd;
    /* Nothing added: nothing to say. */
    assert_false(vuf_virtq_kick_needed(e.vq));

    /* avail_event = 100: the first add needs a kick. */
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 1);
    assert_int_equal(fd_count(kick), 1);
    /* The device pops it and asks for a kick at avail 101. */
    assert_int_equal(fdev_pop(&e.dev, &c), 1);
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 1);
    assert_int_equal(fd_count(kick), 1);
    /* Device has not caught up (avail_event still 101): suppressed. */
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 0);
    assert_int_equal(fd_count(kick), 0);
    /* Forced kicks always go out. */
    assert_int_equal(vuf_virtq_kick(e.vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(fd_count(kick), 1);
    /* The device catches up; a new add passes avail_event again. */
    while (fdev_pop(&e.dev, &c) == 1)
        ;
    assert_int_equal(*vuf_vring_avail_event(e.dev.used, 8), 104);
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_true(vuf_virtq_kick_needed(e.vq));
    assert_false(vuf_virtq_kick_needed(e.vq)); /* decision recorded */

    /* Calls: used_event from the driver. Complete the 4 popped chains. */
    for (int i = 0; i < 4; i++)
        fdev_push_raw(&e.dev, (uint16_t)i, 0); /* heads 0..3 */
    /* used_event is 100 (initial): passing it calls once... */
    assert_true(fdev_notify(&e.dev));
    assert_int_equal(fd_count(e.dev.call_fd), 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    /* ...and with callbacks disabled, not again. */
    vuf_virtq_disable_cb(e.vq);
    fdev_pop(&e.dev, &c);
    fdev_push_raw(&e.dev, c.head, 0);
    assert_false(fdev_notify(&e.dev));
    /* Enabling reports the entry that slipped in. */
    assert_int_equal(*vuf_vring_used_event(e.dev.avail, 8), 103);
    assert_true(vuf_virtq_enable_cb(e.vq));
    assert_int_equal(*vuf_vring_used_event(e.dev.avail, 8), 104);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_false(vuf_virtq_enable_cb(e.vq));
    assert_int_equal(*vuf_vring_used_event(e.dev.avail, 8), 105);
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_true(fdev_notify(&e.dev));
    /* avail->flags stay 0 with EVENT_IDX (§2.7.10). */
    assert_int_equal(e.dev.avail->flags, 0);
    env_close(&e);
}

static void test_vq_no_notify_flags(void **state)
{
    struct env e;
    struct fchain c;

    (void)state;
    env_open(&e, 8, 0, 0);
    fdev_set_no_notify(&e.dev, true);
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 0);
    assert_int_equal(fd_count(e.dev.kick_fd), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(fd_count(e.dev.kick_fd), 1);
    fdev_set_no_notify(&e.dev, false);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 0); /* nothing new since */
    assert_int_equal(add1(&e, 0, 8, false, NULL), 0);
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 1);
    assert_int_equal(fd_count(e.dev.kick_fd), 1);

    vuf_virtq_disable_cb(e.vq);
    assert_int_equal(e.dev.avail->flags, VUF_VRING_AVAIL_F_NO_INTERRUPT);
    fdev_complete_one(&e.dev, &c, 0);
    assert_false(fdev_notify(&e.dev));
    assert_true(vuf_virtq_enable_cb(e.vq));
    assert_int_equal(e.dev.avail->flags, 0);
    fdev_complete_one(&e.dev, &c, 0);
    assert_true(fdev_notify(&e.dev));
    env_close(&e);
}

/* Each way a device can corrupt the used ring: -EPROTO, logged, the queue
 * broken until reset, no crash, nothing consumed. */
enum bad_kind {
    BAD_ID_RANGE,
    BAD_ID_NOT_HEAD,
    BAD_ID_TWICE,
    BAD_LEN,
    BAD_IDX_JUMP,
    BAD_IDX_BACK,
    BAD_KINDS
};

static void test_vq_malformed_used(void **state)
{
    (void)state;
    for (int kind = 0; kind < BAD_KINDS; kind++) {
        struct vuf_virtq_buf b[3];
        struct env e;
        struct fchain c;
        void *ck;
        uint32_t len;
        int errs = log_errors;

        env_open(&e, 8, F_EVENT_IDX, 65534);
        for (int i = 0; i < 3; i++)
            b[i] = (struct vuf_virtq_buf){.gpa = e.buf_gpa, .len = 100, .writable = i > 0};
        assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)1), 0); /* wlen 200 */
        assert_int_equal(fdev_pop(&e.dev, &c), 1);
        switch (kind) {
        case BAD_ID_RANGE:
            fdev_push_raw(&e.dev, 8, 0);
            break;
        case BAD_ID_NOT_HEAD: /* the chain's second descriptor */
            fdev_push_raw(&e.dev, e.dev.desc[c.head].next, 0);
            break;
        case BAD_ID_TWICE: /* with a second chain in flight, so that the
                            * used idx itself is plausible */
            assert_int_equal(vuf_virtq_add(e.vq, b, 1, (void *)3), 0);
            fdev_push_raw(&e.dev, c.head, 0);
            fdev_push_raw(&e.dev, c.head, 0);
            /* the first one is fine */
            assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
            break;
        case BAD_LEN:
            fdev_push_raw(&e.dev, c.head, 201);
            break;
        case BAD_IDX_JUMP:
            fdev_push_raw(&e.dev, c.head, 200);
            e.dev.used_idx += 5;
            __atomic_store_n(&e.dev.used->idx, e.dev.used_idx, __ATOMIC_RELEASE);
            break;
        case BAD_IDX_BACK: /* used->idx runs backwards past what the driver
                            * already took, with a chain still in flight
                            * (across the 16-bit wrap: base 65534) */
            fdev_push_raw(&e.dev, c.head, 200);
            assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
            assert_int_equal(vuf_virtq_add(e.vq, b, 1, (void *)3), 0);
            e.dev.used_idx -= 2;
            __atomic_store_n(&e.dev.used->idx, e.dev.used_idx, __ATOMIC_RELEASE);
            break;
        }
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), -EPROTO);
        assert_int_equal(log_errors, errs + 1);
        assert_non_null(strstr(log_last, "virtq 0:"));
        assert_true(vuf_virtq_broken(e.vq));
        /* Sticky, and logged only once. */
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), -EPROTO);
        assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), -EPROTO);
        assert_int_equal(vuf_virtq_wait(e.vq, 0), -EPROTO);
        assert_int_equal(vuf_virtq_wait_busy(e.vq, 0), -EPROTO);
        assert_int_equal(log_errors, errs + 1);
        {
            uint16_t base;

            assert_int_equal(vuf_virtq_requeue_inflight(e.vq, &base), -EPROTO);
        }

        /* Reset recovers the queue. */
        vuf_virtq_reset(e.vq, 7);
        assert_false(vuf_virtq_broken(e.vq));
        assert_int_equal(vuf_virtq_num_free(e.vq), 8);
        fdev_detach(&e.dev);
        fdev_attach(&e.dev, e.gm, e.vq, 7);
        assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)2), 0);
        fdev_complete_one(&e.dev, &c, 0);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, &len), 0);
        assert_ptr_equal(ck, (void *)2);
        assert_int_equal(len, 200);
        env_close(&e);
    }
}

/* Bursts: chains added with vuf_virtq_add_deferred() stay invisible to the
 * device until vuf_virtq_publish() or a kick stores avail->idx once. */
static void test_vq_deferred_publish(void **state)
{
    struct vuf_virtq_buf b;
    struct env e;
    struct fchain c;

    (void)state;
    env_open(&e, 8, 0, 0);
    for (unsigned i = 0; i < 4; i++)
        e.buf[64 * i] = (uint8_t)('a' + i);
    for (unsigned i = 0; i < 3; i++) {
        b = (struct vuf_virtq_buf){.gpa = e.buf_gpa + 64 * i, .len = 64};
        assert_int_equal(vuf_virtq_add_deferred(e.vq, &b, 1, (void *)(uintptr_t)(i + 1)), 0);
    }
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 3);
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 0);
    assert_int_equal(fdev_pop(&e.dev, &c), 0);
    vuf_virtq_publish(e.vq);
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 3);
    vuf_virtq_publish(e.vq); /* nothing new: no store */
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 3);
    b = (struct vuf_virtq_buf){.gpa = e.buf_gpa + 192, .len = 64};
    assert_int_equal(vuf_virtq_add_deferred(e.vq, &b, 1, (void *)4), 0);
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 3);
    /* The kick publishes before it decides. */
    assert_int_equal(vuf_virtq_kick(e.vq, 0), 1);
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 4);
    assert_int_equal(fd_count(e.dev.kick_fd), 1);
    for (unsigned i = 0; i < 4; i++) {
        void *ck;

        fdev_complete_one(&e.dev, &c, 0);
        assert_int_equal(c.seg[0].p[0], 'a' + i);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_ptr_equal(ck, (void *)(uintptr_t)(i + 1));
    }
    /* So does vuf_virtq_notify() (issue 14): the device it wakes sees the
     * chain, and the kick is recorded as the decision point. */
    b = (struct vuf_virtq_buf){.gpa = e.buf_gpa + 64, .len = 64};
    assert_int_equal(vuf_virtq_add_deferred(e.vq, &b, 1, (void *)5), 0);
    assert_int_equal(vuf_virtq_notify(e.vq), 0);
    assert_int_equal(__atomic_load_n(&e.dev.avail->idx, __ATOMIC_ACQUIRE), 5);
    assert_int_equal(fd_count(e.dev.kick_fd), 1);
    assert_false(vuf_virtq_kick_needed(e.vq));
    {
        void *ck;

        fdev_complete_one(&e.dev, &c, 0);
        assert_int_equal(c.seg[0].p[0], 'b');
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_ptr_equal(ck, (void *)5);
    }
    /* Errors as vuf_virtq_add(). */
    b.len = 0;
    assert_int_equal(vuf_virtq_add_deferred(e.vq, &b, 1, NULL), -EINVAL);
    env_close(&e);
}

/* A device that completes in order gets descriptor i at avail position i
 * lap after lap (the free list is first in, first out), so the avail ring
 * entries never change after the first lap. */
static void test_vq_ring_order_reuse(void **state)
{
    struct env e;
    struct fchain c;

    (void)state;
    env_open(&e, 8, F_EVENT_IDX, 0);
    for (unsigned lap = 0; lap < 4; lap++) {
        for (unsigned i = 0; i < 8; i++)
            assert_int_equal(add1(&e, 64 * i, 64, lap & 1, (void *)(uintptr_t)(i + 1)), 0);
        assert_int_equal(vuf_virtq_num_free(e.vq), 0);
        for (unsigned i = 0; i < 8; i++) {
            void *ck;

            fdev_complete_one(&e.dev, &c, 0);
            assert_int_equal(c.head, i);
            assert_int_equal(e.dev.avail->ring[i], i);
            assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
            assert_ptr_equal(ck, (void *)(uintptr_t)(i + 1));
        }
    }
    /* Half a lap, then completions in reverse: still consistent. */
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(add1(&e, 64 * i, 64, false, (void *)(uintptr_t)(i + 1)), 0);
    {
        struct fchain pend[4];

        for (unsigned i = 0; i < 4; i++)
            assert_int_equal(fdev_pop(&e.dev, &pend[i]), 1);
        for (unsigned i = 4; i-- > 0;)
            fdev_push_raw(&e.dev, pend[i].head, 0);
    }
    for (unsigned i = 4; i-- > 0;) {
        void *ck;

        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_ptr_equal(ck, (void *)(uintptr_t)(i + 1));
    }
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);
    churn(&e, 50, 7);
    env_close(&e);
}

/* Each ring part starts on a cache line of its own and no other
 * allocation shares its last line. */
static void test_vq_ring_lines(void **state)
{
    struct vuf_guest_mem *gm;
    struct vuf_virtq *a, *b;
    struct vuf_virtq_layout la, lb;
    uint64_t next;

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, 2 * MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new(gm, 256, F_EVENT_IDX, &a), 0);
    assert_int_equal(vuf_virtq_new(gm, 8, 0, &b), 0);
    vuf_virtq_layout(a, &la);
    vuf_virtq_layout(b, &lb);
    assert_int_equal(la.desc_gpa % 64, 0);
    assert_int_equal(la.avail_gpa % 64, 0);
    assert_int_equal(la.used_gpa % 64, 0);
    assert_true(la.avail_gpa >= la.desc_gpa + 4096);
    assert_true(la.used_gpa >= la.avail_gpa + 576); /* 518 bytes, rounded up */
    assert_true(lb.desc_gpa >= la.used_gpa + 2112); /* 2054 bytes, rounded up */
    assert_int_equal(lb.avail_gpa - lb.desc_gpa, 128);
    assert_int_equal(lb.used_gpa - lb.avail_gpa, 64);
    assert_int_equal(vuf_guest_mem_alloc(gm, 1, 1, &next), 0);
    assert_true(next >= lb.used_gpa + 128); /* 70 bytes, rounded up */
    vuf_virtq_free(a);
    vuf_virtq_free(b);
    vuf_guest_mem_free(gm);
}

/* used->idx is loaded once per burst: entries under a checked index are
 * taken without reloading it, and a lie told after that is caught at the
 * next load. */
static void test_vq_used_snapshot(void **state)
{
    struct env e;
    struct fchain c;
    void *ck;
    int errs = log_errors;

    (void)state;
    env_open(&e, 8, 0, 0);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(add1(&e, 64 * i, 64, true, (void *)(uintptr_t)(i + 1)), 0);
    for (unsigned i = 0; i < 3; i++)
        fdev_complete_one(&e.dev, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
    assert_ptr_equal(ck, (void *)1);
    /* The device now claims 200 entries. */
    __atomic_store_n(&e.dev.used->idx, 200, __ATOMIC_RELEASE);
    assert_true(vuf_virtq_has_used(e.vq));
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
    assert_ptr_equal(ck, (void *)2);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
    assert_ptr_equal(ck, (void *)3);
    assert_int_equal(log_errors, errs);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), -EPROTO);
    assert_int_equal(log_errors, errs + 1);
    assert_true(vuf_virtq_broken(e.vq));
    env_close(&e);
}

/* A device thread: completes everything that becomes available after
 * `delay_ms`, then signals as the driver asks. */
struct delayed_dev {
    struct fdev *dev;
    int delay_ms;
    bool ok;
};

static void *delayed_dev_main(void *arg)
{
    struct delayed_dev *dd = arg;
    struct fchain c;
    int64_t start = now_ms();

    while (fdev_pop(dd->dev, &c) != 1) {
        if (now_ms() - start > 5000)
            return NULL;
        usleep(1000);
    }
    usleep((useconds_t)dd->delay_ms * 1000);
    fdev_push_raw(dd->dev, c.head, c.wlen);
    dd->ok = true;
    fdev_notify(dd->dev);
    return NULL;
}

static void test_vq_wait(void **state)
{
    for (int ev = 0; ev < 2; ev++) {
        struct env e;
        struct delayed_dev dd;
        pthread_t th;
        int64_t t0;
        void *ck;

        (void)state;
        env_open(&e, 8, ev ? F_EVENT_IDX : 0, 0);
        t0 = now_ms();
        assert_int_equal(vuf_virtq_wait(e.vq, 30), -ETIMEDOUT);
        assert_true(now_ms() - t0 >= 29);
        assert_int_equal(vuf_virtq_wait_busy(e.vq, 10), -ETIMEDOUT);

        /* Sleeping on the call fd. */
        dd = (struct delayed_dev){.dev = &e.dev, .delay_ms = 20};
        assert_int_equal(add1(&e, 0, 8, true, (void *)1), 0);
        assert_int_equal(pthread_create(&th, NULL, delayed_dev_main, &dd), 0);
        assert_int_equal(vuf_virtq_wait(e.vq, 5000), 0);
        pthread_join(th, NULL);
        assert_true(dd.ok);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_ptr_equal(ck, (void *)1);
        /* Already pending: returns at once. */
        assert_int_equal(add1(&e, 0, 8, true, (void *)2), 0);
        fdev_complete_one(&e.dev, &(struct fchain){0}, 0);
        assert_int_equal(vuf_virtq_wait(e.vq, 0), 0);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);

        /* Busy polling, with calls disabled. */
        vuf_virtq_disable_cb(e.vq);
        dd = (struct delayed_dev){.dev = &e.dev, .delay_ms = 10};
        assert_int_equal(add1(&e, 0, 8, true, (void *)3), 0);
        assert_int_equal(pthread_create(&th, NULL, delayed_dev_main, &dd), 0);
        assert_int_equal(vuf_virtq_wait_busy(e.vq, 5000), 0);
        pthread_join(th, NULL);
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_ptr_equal(ck, (void *)3);
        env_close(&e);
    }
}

static void test_vq_fds(void **state)
{
    int base = tu_count_fds();
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    int mykick, mycall;
    struct vuf_virtq_buf b;
    uint64_t gpa;

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new(gm, 8, 0, &vq), 0);
    assert_int_equal(tu_count_fds(), base + 3);
    mykick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    mycall = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* Ownership moves to the queue; its own fds are closed. */
    vuf_virtq_set_kick_fd(vq, mykick);
    vuf_virtq_set_call_fd(vq, mycall);
    assert_int_equal(vuf_virtq_kick_fd(vq), mykick);
    assert_int_equal(vuf_virtq_call_fd(vq), mycall);
    assert_int_equal(tu_count_fds(), base + 3);
    assert_int_equal(vuf_virtq_notify(vq), 0);
    assert_int_equal(fd_count(mykick), 1);
    vuf_virtq_set_kick_fd(vq, mykick); /* same fd again: kept */
    assert_int_equal(vuf_virtq_notify(vq), 0);
    assert_int_equal(fd_count(mykick), 1);

    /* No fds: notify and wait say so. */
    vuf_virtq_set_kick_fd(vq, -1);
    vuf_virtq_set_call_fd(vq, -1);
    assert_int_equal(tu_count_fds(), base + 1);
    assert_int_equal(vuf_virtq_kick_fd(vq), -1);
    assert_int_equal(vuf_virtq_notify(vq), -EBADF);
    assert_int_equal(vuf_virtq_wait(vq, 0), -EBADF);
    assert_int_equal(vuf_guest_mem_alloc(gm, 8, 8, &gpa), 0);
    b = (struct vuf_virtq_buf){.gpa = gpa, .len = 8};
    assert_int_equal(vuf_virtq_add(vq, &b, 1, NULL), 0);
    assert_int_equal(vuf_virtq_kick(vq, 0), -EBADF);
    vuf_virtq_free(vq);
    vuf_guest_mem_free(gm);
    assert_int_equal(tu_count_fds(), base);
}

/* GET_VRING_BASE on the old back-end, then the same rings to a new one. */
static void test_vq_handoff(void **state)
{
    struct env e;
    struct fchain pend[5], c;
    struct fdev dev2;
    uint16_t base;
    void *ck;
    void *infl[8];
    bool seen[6] = {false};

    (void)state;
    env_open(&e, 8, F_EVENT_IDX, 65533);
    for (uintptr_t i = 1; i <= 5; i++)
        assert_int_equal(add1(&e, 0, 16, true, (void *)i), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(fdev_pop(&e.dev, &pend[i]), 1);
    /* The old back-end finished #4 and #2 (out of order), then stopped:
     * GET_VRING_BASE would answer its last_avail, 65533 + 5. */
    fdev_push_raw(&e.dev, pend[3].head, 16);
    fdev_push_raw(&e.dev, pend[1].head, 16);
    assert_int_equal(e.dev.last_avail, (uint16_t)(65533 + 5));

    /* Unreaped used entries: reap first. */
    assert_int_equal(vuf_virtq_requeue_inflight(e.vq, &base), -EBUSY);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
    assert_ptr_equal(ck, (void *)4);
    assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
    assert_ptr_equal(ck, (void *)2);
    assert_int_equal(vuf_virtq_inflight(e.vq, infl, 8), 3);
    assert_ptr_equal(infl[0], (void *)1);
    assert_ptr_equal(infl[1], (void *)3);
    assert_ptr_equal(infl[2], (void *)5);
    assert_int_equal(vuf_virtq_inflight(e.vq, infl, 1), 3);

    assert_int_equal(vuf_virtq_requeue_inflight(e.vq, &base), 0);
    assert_int_equal(base, (uint16_t)(65533 + 2));
    assert_int_equal(base, vuf_virtq_used_idx(e.vq));
    fdev_detach(&e.dev);

    /* New back-end: SET_VRING_BASE(base); it sees exactly 1, 3, 5. */
    fdev_attach(&dev2, e.gm, e.vq, base);
    assert_int_equal(dev2.used_idx, base);
    assert_int_equal(vuf_virtq_kick(e.vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(fd_count(dev2.kick_fd), 1);
    for (int i = 0; i < 3; i++)
        fdev_complete_one(&dev2, &c, 0);
    assert_int_equal(fdev_pop(&dev2, &c), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(vuf_virtq_get_used(e.vq, &ck, NULL), 0);
        assert_true((uintptr_t)ck <= 5 && (uintptr_t)ck % 2 == 1);
        assert_false(seen[(uintptr_t)ck]);
        seen[(uintptr_t)ck] = true;
    }
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);

    /* And the queue goes on with the new back-end. */
    e.dev = dev2;
    churn(&e, 20, 5);
    env_close(&e);
}

/* ------------------------------------------------------------------------ */
/* virtio-blk against a fake blk device thread                              */
/* ------------------------------------------------------------------------ */

#define DISK_SECTORS 4096u /* 2 MiB */

struct fblk {
    struct fdev dev;
    uint8_t *disk;
    pthread_t th;
    int stop, paused;    /* atomics */
    int paused_seen;     /* atomic: the thread saw `paused` and is idle */
    int status_override; /* atomic: -1 none, 0x100 = leave status unwritten */
    int errors;          /* malformed chains seen */
    int requests;
    int unmapped; /* WRITE_ZEROES with unmap */
};

static uint8_t fblk_handle(struct fblk *f, struct fchain *c, uint32_t *written)
{
    struct vuf_blk_outhdr h;
    uint8_t *data;
    uint32_t dlen;

    *written = 0;
    if (c->n < 2 || c->seg[0].len != sizeof(h) || c->seg[0].w || !c->seg[c->n - 1].w ||
        c->seg[c->n - 1].len != 1) {
        __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
        return VUF_BLK_S_IOERR;
    }
    memcpy(&h, c->seg[0].p, sizeof(h));
    if (c->n > 3) { /* this fake takes one data segment */
        __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
        return VUF_BLK_S_IOERR;
    }
    data = c->n == 3 ? c->seg[1].p : NULL;
    dlen = c->n == 3 ? c->seg[1].len : 0;
    switch (h.type) {
    case VUF_BLK_T_IN:
    case VUF_BLK_T_OUT:
        if (!data || dlen % 512 || c->seg[1].w != (h.type == VUF_BLK_T_IN)) {
            __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
            return VUF_BLK_S_IOERR;
        }
        if (h.sector > DISK_SECTORS || dlen / 512 > DISK_SECTORS - h.sector)
            return VUF_BLK_S_IOERR;
        if (h.type == VUF_BLK_T_IN) {
            memcpy(data, f->disk + h.sector * 512, dlen);
            *written = dlen;
        } else {
            memcpy(f->disk + h.sector * 512, data, dlen);
        }
        return VUF_BLK_S_OK;
    case VUF_BLK_T_FLUSH:
        return data ? VUF_BLK_S_IOERR : VUF_BLK_S_OK;
    case VUF_BLK_T_GET_ID:
        if (!data || !c->seg[1].w || dlen < VUF_BLK_ID_BYTES)
            return VUF_BLK_S_IOERR;
        memset(data, 0, VUF_BLK_ID_BYTES);
        memcpy(data, "vuf-fake-blk", 12);
        *written = VUF_BLK_ID_BYTES;
        return VUF_BLK_S_OK;
    case VUF_BLK_T_DISCARD:
    case VUF_BLK_T_WRITE_ZEROES: {
        struct vuf_blk_discard_wz s;

        if (!data || dlen != sizeof(s) || c->seg[1].w)
            return VUF_BLK_S_IOERR;
        memcpy(&s, data, sizeof(s));
        if (s.sector > DISK_SECTORS || s.num_sectors > DISK_SECTORS - s.sector)
            return VUF_BLK_S_IOERR;
        if (h.type == VUF_BLK_T_WRITE_ZEROES) {
            memset(f->disk + s.sector * 512, 0, (size_t)s.num_sectors * 512);
            if (s.flags & VUF_BLK_WZ_F_UNMAP)
                __atomic_add_fetch(&f->unmapped, 1, __ATOMIC_RELAXED);
        }
        return VUF_BLK_S_OK;
    }
    default:
        return VUF_BLK_S_UNSUPP;
    }
}

static void *fblk_main(void *arg)
{
    struct fblk *f = arg;
    static struct fchain pend[64]; /* one device thread at a time */

    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pfd = {.fd = f->dev.kick_fd, .events = POLLIN};
        unsigned np = 0;
        int r;

        poll(&pfd, 1, 2);
        fd_count(f->dev.kick_fd);
        if (__atomic_load_n(&f->paused, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&f->paused_seen, 1, __ATOMIC_RELEASE);
            continue;
        }
        while (np < 64 && (r = fdev_pop(&f->dev, &pend[np])) != 0) {
            if (r < 0) {
                __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
                break;
            }
            np++;
        }
        /* Complete in reverse order: exercises out-of-order completion. */
        for (unsigned i = np; i-- > 0;) {
            struct fchain *c = &pend[i];
            uint32_t written;
            uint8_t st = fblk_handle(f, c, &written);
            int ov = __atomic_load_n(&f->status_override, __ATOMIC_RELAXED);

            if (ov >= 0 && ov < 0x100)
                st = (uint8_t)ov;
            if (ov != 0x100)
                *c->seg[c->n - 1].p = st;
            fdev_push_raw(&f->dev, c->head, written + 1);
            __atomic_add_fetch(&f->requests, 1, __ATOMIC_RELAXED);
        }
        if (np)
            fdev_notify(&f->dev);
    }
    return NULL;
}

struct blkenv {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    struct fblk f;
};

static void blkenv_open(struct blkenv *b, uint64_t features, unsigned nreqs, uint32_t max_data)
{
    memset(b, 0, sizeof(*b));
    assert_int_equal(vuf_guest_mem_new_simple(0, 8 * MiB, &b->gm), 0);
    assert_int_equal(vuf_virtq_new(b->gm, 64, features, &b->vq), 0);
    assert_int_equal(vuf_blk_new(b->vq, nreqs, max_data, &b->blk), 0);
    b->f.disk = calloc(DISK_SECTORS, 512);
    assert_non_null(b->f.disk);
    b->f.status_override = -1;
    fdev_attach(&b->f.dev, b->gm, b->vq, 0);
    assert_int_equal(pthread_create(&b->f.th, NULL, fblk_main, &b->f), 0);
}

static void blkenv_close(struct blkenv *b)
{
    __atomic_store_n(&b->f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(b->f.th, NULL);
    assert_int_equal(b->f.errors, 0);
    fdev_detach(&b->f.dev);
    free(b->f.disk);
    vuf_blk_free(b->blk);
    vuf_virtq_free(b->vq);
    vuf_guest_mem_free(b->gm);
}

/* Stop the device thread from touching the rings (it keeps draining kicks). */
static void fblk_pause(struct fblk *f)
{
    __atomic_store_n(&f->paused_seen, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&f->paused, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&f->paused_seen, __ATOMIC_ACQUIRE))
        usleep(500);
}

static void fill_pattern(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 9));
}

static void blk_roundtrip(uint64_t features, bool busy)
{
    const size_t len = 200 * 1024; /* 4 requests of 64 KiB at most */
    struct blkenv b;
    uint8_t *wbuf = malloc(len), *rbuf = malloc(len);
    char id[VUF_BLK_ID_BYTES];
    struct vuf_blk_req *reqs[8], *req;
    int base = tu_count_fds();

    assert_non_null(wbuf);
    assert_non_null(rbuf);
    blkenv_open(&b, features, 8, 64 * 1024);
    vuf_blk_set_busy_poll(b.blk, busy);
    assert_int_equal(tu_count_fds(), base + 3);

    fill_pattern(wbuf, len, 1);
    assert_int_equal(vuf_blk_write(b.blk, 10, wbuf, len, 5000), 0);
    assert_memory_equal(b.f.disk + 10 * 512, wbuf, len);
    memset(rbuf, 0, len);
    assert_int_equal(vuf_blk_read(b.blk, 10, rbuf, len, 5000), 0);
    assert_memory_equal(rbuf, wbuf, len);
    assert_int_equal(vuf_blk_flush(b.blk, 5000), 0);
    assert_int_equal(vuf_blk_get_id(b.blk, id, 5000), 0);
    assert_string_equal(id, "vuf-fake-blk");

    /* WRITE_ZEROES and DISCARD. */
    assert_int_equal(vuf_blk_write_zeroes(b.blk, 12, 4, true, 5000), 0);
    assert_int_equal(b.f.unmapped, 1);
    assert_int_equal(vuf_blk_read(b.blk, 10, rbuf, 8 * 512, 5000), 0);
    assert_memory_equal(rbuf, wbuf, 2 * 512);
    for (size_t i = 2 * 512; i < 6 * 512; i++)
        assert_int_equal(rbuf[i], 0);
    assert_memory_equal(rbuf + 6 * 512, wbuf + 6 * 512, 2 * 512);
    assert_int_equal(vuf_blk_discard(b.blk, 0, 8, 5000), 0);

    /* Errors the device reports. */
    assert_int_equal(vuf_blk_read(b.blk, DISK_SECTORS - 1, rbuf, 1024, 5000), -EIO);
    assert_int_equal(vuf_blk_write_zeroes(b.blk, DISK_SECTORS, 1, false, 5000), -EIO);
    req = vuf_blk_req_get(b.blk);
    assert_non_null(req);
    assert_int_equal(vuf_blk_req_prep(req, 99, 0, 0), 0);
    assert_int_equal(vuf_blk_exec(b.blk, req, 5000), -ENOTSUP);
    assert_int_equal(vuf_blk_req_status(req), VUF_BLK_S_UNSUPP);
    assert_int_equal(vuf_blk_req_used_len(req), 1);
    assert_int_equal(vuf_blk_req_put(b.blk, req), 0);

    /* Argument checks. */
    assert_int_equal(vuf_blk_read(b.blk, 0, rbuf, 100, 5000), -EINVAL);
    req = vuf_blk_req_get(b.blk);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_IN, 0, 64 * 1024 + 512), -EINVAL);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_FLUSH, 1, 0), -EINVAL);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_DISCARD, 0, 512), -EINVAL);
    assert_int_equal(vuf_blk_req_prep_range(req, VUF_BLK_T_DISCARD, 0, 1, VUF_BLK_WZ_F_UNMAP),
                     -EINVAL);
    assert_int_equal(vuf_blk_submit(b.blk, req, 0), -EINVAL); /* not prepared */
    assert_int_equal(vuf_blk_req_result(req), -EINPROGRESS);
    assert_int_equal(vuf_blk_req_put(b.blk, req), 0);

    /* Queue depth 8: all in flight at once, one kick, out-of-order
     * completion, then read everything back the same way. */
    for (int i = 0; i < 8; i++) {
        uint64_t gpa;
        uint8_t *p;

        reqs[i] = vuf_blk_req_get(b.blk);
        assert_non_null(reqs[i]);
        p = vuf_blk_req_buf(reqs[i], &gpa);
        assert_ptr_equal(vuf_guest_mem_to_host(b.gm, gpa, 64 * 1024), p);
        assert_int_equal(gpa % 4096, 0);
        fill_pattern(p, 8192, 100 + (unsigned)i);
        vuf_blk_req_set_user(reqs[i], (void *)(uintptr_t)(i + 1));
        assert_int_equal(vuf_blk_req_prep(reqs[i], VUF_BLK_T_OUT, 1000 + 16 * (uint64_t)i, 8192),
                         0);
    }
    assert_null(vuf_blk_req_get(b.blk));
    assert_int_equal(vuf_blk_flush(b.blk, 100), -EBUSY); /* pool empty */
    for (int i = 0; i < 8; i++)
        assert_int_equal(vuf_blk_submit(b.blk, reqs[i], VUF_BLK_SUBMIT_NO_KICK), 0);
    assert_int_equal(vuf_blk_submit(b.blk, reqs[0], 0), -EBUSY);
    assert_int_equal(vuf_blk_req_put(b.blk, reqs[0]), -EBUSY);
    vuf_blk_kick(b.blk);
    /* As each write completes, re-use its request to read the range back;
     * 16 completions in all, in whatever order the device chose. */
    {
        bool reading[8] = {false};

        for (int n = 0; n < 16; n++) {
            struct vuf_blk_req *done;
            uint8_t expect[8192];
            unsigned k;

            assert_int_equal(vuf_blk_wait(b.blk, 5000, &done), 0);
            assert_int_equal(vuf_blk_req_result(done), 0);
            k = (unsigned)(uintptr_t)vuf_blk_req_user(done) - 1;
            assert_true(k < 8);
            if (!reading[k]) {
                assert_int_equal(vuf_blk_req_used_len(done), 1);
                reading[k] = true;
                memset(vuf_blk_req_buf(done, NULL), 0, 8192);
                assert_int_equal(
                    vuf_blk_req_prep(done, VUF_BLK_T_IN, 1000 + 16 * (uint64_t)k, 8192), 0);
                assert_int_equal(vuf_blk_submit(b.blk, done, 0), 0);
                continue;
            }
            assert_int_equal(vuf_blk_req_used_len(done), 8192 + 1);
            fill_pattern(expect, sizeof(expect), 100 + k);
            assert_memory_equal(vuf_blk_req_buf(done, NULL), expect, sizeof(expect));
            assert_int_equal(vuf_blk_req_put(b.blk, done), 0);
        }
    }
    {
        struct vuf_blk_req *done;

        assert_int_equal(vuf_blk_reap(b.blk, &done), -EAGAIN);
    }
    assert_int_equal(vuf_virtq_num_inflight(b.vq), 0);

    /* Caller-supplied data segment (zero-copy from guest memory). */
    {
        struct vuf_virtq_buf seg;
        uint64_t gpa;
        uint8_t *p;

        assert_int_equal(vuf_guest_mem_alloc(b.gm, 4096, 4096, &gpa), 0);
        p = vuf_guest_mem_to_host(b.gm, gpa, 4096);
        fill_pattern(p, 4096, 9);
        seg = (struct vuf_virtq_buf){.gpa = gpa, .len = 4096};
        req = vuf_blk_req_get(b.blk);
        assert_int_equal(vuf_blk_req_prep_sg(req, VUF_BLK_T_OUT, 2000, &seg, 1), 0);
        assert_int_equal(vuf_blk_exec(b.blk, req, 5000), 0);
        assert_memory_equal(b.f.disk + 2000 * 512, p, 4096);
        assert_int_equal(vuf_blk_req_put(b.blk, req), 0);
    }

    /* A synchronous request while asynchronous ones complete around it:
     * those are kept for reap. */
    {
        struct vuf_blk_req *a = vuf_blk_req_get(b.blk), *done;

        assert_int_equal(vuf_blk_req_prep(a, VUF_BLK_T_FLUSH, 0, 0), 0);
        assert_int_equal(vuf_blk_submit(b.blk, a, 0), 0);
        assert_int_equal(vuf_blk_read(b.blk, 10, rbuf, 512, 5000), 0);
        assert_memory_equal(rbuf, wbuf, 512);
        assert_int_equal(vuf_blk_wait(b.blk, 5000, &done), 0);
        assert_ptr_equal(done, a);
        assert_int_equal(vuf_blk_req_result(a), 0);
        assert_int_equal(vuf_blk_req_put(b.blk, a), 0);
    }
    /* Every request is back in the pool. */
    for (int i = 0; i < 8; i++)
        assert_non_null(reqs[i] = vuf_blk_req_get(b.blk));
    for (int i = 0; i < 8; i++)
        assert_int_equal(vuf_blk_req_put(b.blk, reqs[i]), 0);

    blkenv_close(&b);
    assert_int_equal(tu_count_fds(), base);
    free(wbuf);
    free(rbuf);
}

static void test_blk_roundtrip(void **state)
{
    (void)state;
    blk_roundtrip(F_VERSION_1, false);
}

static void test_blk_roundtrip_event_idx_indirect(void **state)
{
    (void)state;
    blk_roundtrip(F_VERSION_1 | F_EVENT_IDX | F_INDIRECT, false);
}

static void test_blk_roundtrip_busy_poll(void **state)
{
    (void)state;
    blk_roundtrip(F_VERSION_1 | F_EVENT_IDX, true);
}

static void test_blk_bad_device(void **state)
{
    struct blkenv b;
    uint8_t buf[512];
    struct vuf_blk_req *req, *done;
    int errs;

    (void)state;
    blkenv_open(&b, F_EVENT_IDX, 4, 4096);
    assert_int_equal(vuf_blk_status_errno(0), 0);
    assert_int_equal(vuf_blk_status_errno(1), -EIO);
    assert_int_equal(vuf_blk_status_errno(2), -ENOTSUP);
    assert_int_equal(vuf_blk_status_errno(3), -EPROTO);

    /* A status byte outside the spec. */
    __atomic_store_n(&b.f.status_override, 7, __ATOMIC_RELAXED);
    assert_int_equal(vuf_blk_read(b.blk, 0, buf, sizeof(buf), 5000), -EPROTO);
    /* A completion that never wrote the status. */
    __atomic_store_n(&b.f.status_override, 0x100, __ATOMIC_RELAXED);
    assert_int_equal(vuf_blk_flush(b.blk, 5000), -EPROTO);
    __atomic_store_n(&b.f.status_override, -1, __ATOMIC_RELAXED);
    assert_int_equal(vuf_blk_flush(b.blk, 5000), 0);

    /* A stalled device: the synchronous request times out, is orphaned, and
     * returns to the pool by itself when the device completes it. */
    fblk_pause(&b.f);
    assert_int_equal(vuf_blk_flush(b.blk, 30), -ETIMEDOUT);
    assert_int_equal(vuf_virtq_num_inflight(b.vq), 1);
    {
        struct vuf_blk_req *held[4];
        int n = 0;

        while (n < 4 && (held[n] = vuf_blk_req_get(b.blk)))
            n++;
        assert_int_equal(n, 3);
        for (int i = 0; i < n; i++)
            vuf_blk_req_put(b.blk, held[i]);
    }
    __atomic_store_n(&b.f.paused, 0, __ATOMIC_RELEASE);
    assert_int_equal(vuf_virtq_kick(b.vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(vuf_blk_wait(b.blk, 200, &done), -ETIMEDOUT); /* nothing for us */
    assert_int_equal(vuf_virtq_num_inflight(b.vq), 0);
    {
        struct vuf_blk_req *held[4];

        for (int i = 0; i < 4; i++)
            assert_non_null(held[i] = vuf_blk_req_get(b.blk));
        for (int i = 0; i < 4; i++)
            vuf_blk_req_put(b.blk, held[i]);
    }

    /* A device that corrupts the used ring: -EPROTO, then reset. */
    fblk_pause(&b.f);
    errs = log_errors;
    req = vuf_blk_req_get(b.blk);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_IN, 0, 512), 0);
    assert_int_equal(vuf_blk_submit(b.blk, req, 0), 0);
    {
        struct fchain c;

        /* Pop it here, as the device, and claim too many bytes. The device
         * thread is paused, so it does not touch the ring. */
        assert_int_equal(fdev_pop(&b.f.dev, &c), 1);
        fdev_push_raw(&b.f.dev, c.head, 512 + 2);
    }
    assert_int_equal(vuf_blk_wait(b.blk, 1000, &done), -EPROTO);
    assert_int_equal(log_errors, errs + 1);
    assert_int_equal(vuf_blk_read(b.blk, 0, buf, sizeof(buf), 100), -EPROTO);
    assert_int_equal(vuf_blk_req_put(b.blk, req), -EBUSY);
    /* Recover: stop the device, reset rings and pool, new device. */
    __atomic_store_n(&b.f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(b.f.th, NULL);
    fdev_detach(&b.f.dev);
    vuf_blk_reset(b.blk, 500);
    fdev_attach(&b.f.dev, b.gm, b.vq, 500);
    b.f.stop = 0;
    b.f.paused = 0;
    assert_int_equal(pthread_create(&b.f.th, NULL, fblk_main, &b.f), 0);
    memset(buf, 0x77, sizeof(buf));
    assert_int_equal(vuf_blk_write(b.blk, 3, buf, sizeof(buf), 5000), 0);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(vuf_blk_read(b.blk, 3, buf, sizeof(buf), 5000), 0);
    assert_int_equal(buf[0], 0x77);
    assert_int_equal(buf[511], 0x77);
    assert_int_equal(vuf_virtq_avail_idx(b.vq), 502);
    blkenv_close(&b);
}

static void test_blk_new_errors(void **state)
{
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    uint64_t mark;
    char id[VUF_BLK_ID_BYTES];

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new(gm, 8, 0, &vq), 0);
    assert_int_equal(vuf_blk_new(vq, 0, 4096, &blk), -EINVAL);
    mark = vuf_guest_mem_alloc_mark(gm);
    assert_int_equal(vuf_blk_new(vq, 8, 1024 * 1024, &blk), -ENOMEM);
    assert_int_equal(vuf_guest_mem_alloc_mark(gm), mark);
    /* No data buffers: read/write and GET_ID cannot use the pool. */
    assert_int_equal(vuf_blk_new(vq, 2, 0, &blk), 0);
    assert_int_equal(vuf_blk_max_data(blk), 0);
    assert_ptr_equal(vuf_blk_virtq(blk), vq);
    assert_int_equal(vuf_blk_read(blk, 0, id, 512, 10), -EINVAL);
    assert_int_equal(vuf_blk_get_id(blk, id, 10), -EINVAL);
    vuf_blk_free(blk);
    vuf_blk_free(NULL);
    vuf_virtq_free(vq);
    vuf_guest_mem_free(gm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gm_translate_bounds),
        cmocka_unit_test(test_gm_regions),
        cmocka_unit_test(test_gm_add_fd),
        cmocka_unit_test(test_gm_alloc),
        cmocka_unit_test(test_vq_create),
        cmocka_unit_test(test_vq_roundtrip),
        cmocka_unit_test(test_vq_wraparound),
        cmocka_unit_test(test_vq_full),
        cmocka_unit_test(test_vq_bad_buffers),
        cmocka_unit_test(test_vq_indirect),
        cmocka_unit_test(test_vq_event_idx),
        cmocka_unit_test(test_vq_no_notify_flags),
        cmocka_unit_test(test_vq_malformed_used),
        cmocka_unit_test(test_vq_deferred_publish),
        cmocka_unit_test(test_vq_ring_order_reuse),
        cmocka_unit_test(test_vq_ring_lines),
        cmocka_unit_test(test_vq_used_snapshot),
        cmocka_unit_test(test_vq_wait),
        cmocka_unit_test(test_vq_fds),
        cmocka_unit_test(test_vq_handoff),
        cmocka_unit_test(test_blk_roundtrip),
        cmocka_unit_test(test_blk_roundtrip_event_idx_indirect),
        cmocka_unit_test(test_blk_roundtrip_busy_poll),
        cmocka_unit_test(test_blk_bad_device),
        cmocka_unit_test(test_blk_new_errors),
    };

    return cmocka_run_group_tests(tests, setup_log, teardown_log);
}
