/* SPDX-License-Identifier: MIT */
/*
 * The packed-ring driver (virtio 1.2 §2.8) behind the vuf_virtq calls,
 * against a device played in the test on the same guest memory: it reads
 * available descriptors by their wrap counters, walks chains (indirect
 * included), writes used descriptors with its own wrap counter and skips
 * each chain's descriptors, as a back-end does.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtio_net.h"
#include "vuf/virtq.h"

#define MiB (1024u * 1024u)
#define F_EVENT_IDX (1ull << VUF_VIRTIO_F_EVENT_IDX)
#define F_INDIRECT (1ull << VUF_VIRTIO_F_INDIRECT_DESC)
#define F_VERSION_1 (1ull << VUF_VIRTIO_F_VERSION_1)
#define F_PACKED (1ull << VUF_VIRTIO_F_RING_PACKED)
#define P_AVAIL VUF_VRING_PACKED_DESC_F_AVAIL
#define P_USED VUF_VRING_PACKED_DESC_F_USED
#define WRAP VUF_VRING_PACKED_WRAP

static int log_errors;

static void capture_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)msg;
    if (level == VUF_LOG_ERROR)
        __atomic_add_fetch(&log_errors, 1, __ATOMIC_RELAXED);
}

static int setup_log(void **state)
{
    (void)state;
    log_errors = 0;
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
/* The device                                                               */
/* ------------------------------------------------------------------------ */

struct pdev {
    struct vuf_guest_mem *gm;
    struct vuf_vring_packed_desc *ring;
    struct vuf_vring_packed_event *drv, *dev;
    unsigned size;
    uint16_t avail, used; /* next position to read / to write used */
    bool avail_wrap, used_wrap;
    int kick_fd, call_fd;
};

struct pseg {
    uint8_t *p;
    uint32_t len;
    bool w;
};

#define PCHAIN_MAX 64
struct pchain {
    uint16_t id;
    unsigned ndesc; /* ring descriptors the chain took */
    bool indirect;
    unsigned n;
    uint32_t wlen;
    struct pseg seg[PCHAIN_MAX];
};

/* Kicks pending on an eventfd (and reset it). */
static uint64_t fd_count(int fd)
{
    uint64_t v = 0;

    if (read(fd, &v, sizeof(v)) != sizeof(v))
        return 0;
    return v;
}

static uint16_t enc(uint16_t pos, bool wrap)
{
    return (uint16_t)(pos | (wrap ? WRAP : 0));
}

/* "SET_VRING_ADDR + SET_VRING_BASE": find the areas from the addresses the
 * front-end would send, start at `base` (position | wrap << 15). */
static void pdev_attach(struct pdev *d, struct vuf_guest_mem *gm, struct vuf_virtq *vq,
                        uint16_t base)
{
    struct vuf_virtq_layout l;
    struct vuf_vring_addr a;

    vuf_virtq_layout(vq, &l);
    vuf_virtq_vring_addr(vq, &a);
    assert_true(l.packed);
    memset(d, 0, sizeof(*d));
    d->gm = gm;
    d->size = l.size;
    d->ring = vuf_guest_mem_to_host(gm, l.desc_gpa, 16ull * l.size);
    d->drv = vuf_guest_mem_to_host(gm, l.avail_gpa, 4);
    d->dev = vuf_guest_mem_to_host(gm, l.used_gpa, 4);
    assert_ptr_equal(d->ring, l.pdesc);
    assert_ptr_equal(d->drv, l.driver_event);
    assert_ptr_equal(d->dev, l.device_event);
    assert_int_equal(a.desc, (uint64_t)(uintptr_t)d->ring);
    assert_int_equal(a.avail, (uint64_t)(uintptr_t)d->drv);
    assert_int_equal(a.used, (uint64_t)(uintptr_t)d->dev);
    d->avail = d->used = base & 0x7fff;
    d->avail_wrap = d->used_wrap = base & WRAP;
    d->kick_fd = vuf_virtq_kick_fd(vq);
    d->call_fd = vuf_virtq_call_fd(vq);
}

static void pdev_advance(const struct pdev *d, uint16_t *pos, bool *wrap, unsigned n)
{
    unsigned p = *pos + n;

    if (p >= d->size) {
        p -= d->size;
        *wrap = !*wrap;
    }
    *pos = (uint16_t)p;
}

static int pdev_seg(struct pdev *d, struct pchain *c, uint64_t gpa, uint32_t len, uint16_t flags)
{
    struct pseg *s;

    if (c->n >= PCHAIN_MAX)
        return -1;
    s = &c->seg[c->n++];
    s->p = vuf_guest_mem_to_host(d->gm, gpa, len);
    s->len = len;
    s->w = flags & VUF_VRING_DESC_F_WRITE;
    if (!s->p)
        return -1;
    if (s->w)
        c->wlen += len;
    return 0;
}

/* 1 popped, 0 nothing available, -1 malformed. No cmocka asserts: runs in
 * the blk device thread too. */
static int pdev_pop(struct pdev *d, struct pchain *c)
{
    uint16_t f = __atomic_load_n(&d->ring[d->avail].flags, __ATOMIC_ACQUIRE);
    uint16_t pos = d->avail;
    bool wrap = d->avail_wrap;

    if (!!(f & P_AVAIL) != d->avail_wrap || !!(f & P_USED) == d->avail_wrap)
        return 0;
    memset(c, 0, sizeof(*c));
    for (;;) {
        struct vuf_vring_packed_desc desc = d->ring[pos];

        if (c->ndesc == 0)
            desc.flags = f;
        else if (!!(desc.flags & P_AVAIL) != wrap || !!(desc.flags & P_USED) == wrap)
            return -1;
        c->ndesc++;
        if (c->ndesc > d->size)
            return -1;
        if (desc.flags & VUF_VRING_DESC_F_INDIRECT) {
            struct vuf_vring_packed_desc *t = vuf_guest_mem_to_host(d->gm, desc.addr, desc.len);

            if (c->ndesc != 1 || !t || desc.len % 16 || !desc.len ||
                (desc.flags & VUF_VRING_DESC_F_NEXT))
                return -1;
            c->indirect = true;
            for (unsigned k = 0; k < desc.len / 16; k++)
                if (pdev_seg(d, c, t[k].addr, t[k].len, t[k].flags) < 0)
                    return -1;
            c->id = desc.id;
            pdev_advance(d, &pos, &wrap, 1);
            break;
        }
        if (pdev_seg(d, c, desc.addr, desc.len, desc.flags) < 0)
            return -1;
        pdev_advance(d, &pos, &wrap, 1);
        if (!(desc.flags & VUF_VRING_DESC_F_NEXT)) {
            c->id = desc.id; /* §2.8.6: the id of the last descriptor */
            break;
        }
    }
    d->avail = pos;
    d->avail_wrap = wrap;
    return 1;
}

/* Write a used descriptor at the device's used position, with these flags,
 * without moving (the attacks use it). */
static void pdev_write_used(struct pdev *d, uint16_t id, uint32_t len, uint16_t flags)
{
    struct vuf_vring_packed_desc *e = &d->ring[d->used];

    __atomic_store_n(&e->id, id, __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&e->flags, flags, __ATOMIC_RELEASE);
}

static uint16_t used_flags(bool wrap)
{
    return wrap ? (uint16_t)(P_AVAIL | P_USED) : 0;
}

static void pdev_push(struct pdev *d, const struct pchain *c, uint32_t len)
{
    pdev_write_used(d, c->id, len, used_flags(d->used_wrap));
    pdev_advance(d, &d->used, &d->used_wrap, c->ndesc);
}

static void fill_pattern(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 9));
}

static bool check_pattern(const uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)(i * 31 + seed * 7 + (i >> 9)))
            return false;
    return true;
}

struct env {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct pdev d;
    uint8_t *buf; /* 1 MiB of guest memory for data */
    uint64_t buf_gpa;
};

static void env_open(struct env *e, unsigned size, uint64_t features)
{
    struct vuf_virtq_opts o = {.size = size, .features = features, .packed = true};

    memset(e, 0, sizeof(*e));
    assert_int_equal(vuf_guest_mem_new_simple(0, 8 * MiB, &e->gm), 0);
    assert_int_equal(vuf_virtq_new_opts(e->gm, &o, &e->vq), 0);
    assert_int_equal(vuf_guest_mem_alloc(e->gm, MiB, 4096, &e->buf_gpa), 0);
    e->buf = vuf_guest_mem_to_host(e->gm, e->buf_gpa, MiB);
    assert_non_null(e->buf);
    pdev_attach(&e->d, e->gm, e->vq, vuf_virtq_avail_idx(e->vq));
}

static void env_close(struct env *e)
{
    vuf_virtq_free(e->vq);
    vuf_guest_mem_free(e->gm);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static void test_packed_create(void **state)
{
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq, *sq;
    struct vuf_virtq_layout l;

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, 8 * MiB, &gm), 0);
    /* Chosen by the negotiated feature alone. */
    assert_int_equal(vuf_virtq_new(gm, 256, F_PACKED | F_EVENT_IDX, &vq), 0);
    assert_true(vuf_virtq_packed(vq));
    vuf_virtq_layout(vq, &l);
    assert_true(l.packed);
    assert_int_equal(l.size, 256);
    assert_null(l.desc);
    assert_null(l.avail);
    assert_null(l.used);
    assert_non_null(l.pdesc);
    assert_int_equal(l.desc_gpa % 16, 0);
    assert_int_equal(l.avail_gpa % 4, 0);
    assert_int_equal(l.used_gpa % 4, 0);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.desc_gpa, 16 * 256), l.pdesc);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.avail_gpa, 4), l.driver_event);
    assert_ptr_equal(vuf_guest_mem_to_host(gm, l.used_gpa, 4), l.device_event);
    /* A fresh ring: position 0, both wrap counters 1 (§2.8.1), and no
     * descriptor looks available or used. */
    assert_int_equal(vuf_virtq_avail_idx(vq), VUF_VRING_PACKED_BASE_INIT);
    assert_int_equal(vuf_virtq_last_used(vq), 0x8000);
    assert_int_equal(vuf_virtq_used_idx(vq), 0x8000);
    for (unsigned i = 0; i < 256; i++)
        assert_int_equal(l.pdesc[i].flags, 0);
    assert_int_equal(l.driver_event->flags, VUF_RING_EVENT_FLAGS_ENABLE);
    assert_int_equal(vuf_virtq_num_free(vq), 256);
    assert_false(vuf_virtq_has_used(vq));

    /* Reset to position 5 with wrap 0: 0..4 used in this lap (flags 0),
     * 5.. used in the last lap (AVAIL|USED). */
    vuf_virtq_reset(vq, 5);
    assert_int_equal(vuf_virtq_avail_idx(vq), 5);
    assert_int_equal(vuf_virtq_last_used(vq), 5);
    assert_int_equal(l.pdesc[4].flags, 0);
    assert_int_equal(l.pdesc[5].flags, P_AVAIL | P_USED);
    assert_false(vuf_virtq_has_used(vq));
    vuf_virtq_free(vq);

    /* Split stays split. */
    assert_int_equal(vuf_virtq_new(gm, 16, F_EVENT_IDX, &sq), 0);
    assert_false(vuf_virtq_packed(sq));
    vuf_virtq_layout(sq, &l);
    assert_false(l.packed);
    assert_null(l.pdesc);
    assert_non_null(l.desc);
    vuf_virtq_free(sq);
    vuf_guest_mem_free(gm);
}

static void test_packed_roundtrip(void **state)
{
    struct env e;
    struct pchain c;
    void *cookie = NULL;
    uint32_t len = 0;
    struct vuf_virtq_buf b[3];

    (void)state;
    env_open(&e, 16, 0);
    fill_pattern(e.buf, 100, 1);
    fill_pattern(e.buf + 4096, 200, 2);
    b[0] = (struct vuf_virtq_buf){.host = e.buf, .len = 100};
    b[1] = (struct vuf_virtq_buf){.gpa = e.buf_gpa + 4096, .len = 200};
    b[2] = (struct vuf_virtq_buf){.host = e.buf + 8192, .len = 300, .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)0x77), 0);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), WRAP | 3);
    assert_int_equal(vuf_virtq_num_free(e.vq), 13);
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 1);
    /* Head written last with NEXT, the id on every descriptor. */
    assert_int_equal(e.d.ring[0].flags, P_AVAIL | VUF_VRING_DESC_F_NEXT);
    assert_int_equal(e.d.ring[1].flags, P_AVAIL | VUF_VRING_DESC_F_NEXT);
    assert_int_equal(e.d.ring[2].flags, P_AVAIL | VUF_VRING_DESC_F_WRITE);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), -EAGAIN);

    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_int_equal(c.ndesc, 3);
    assert_int_equal(c.n, 3);
    assert_false(c.indirect);
    assert_true(check_pattern(c.seg[0].p, 100, 1));
    assert_int_equal(c.seg[1].len, 200);
    assert_true(check_pattern(c.seg[1].p, 200, 2));
    assert_true(c.seg[2].w);
    assert_int_equal(c.wlen, 300);
    {
        struct pchain none;

        assert_int_equal(pdev_pop(&e.d, &none), 0);
    }
    fill_pattern(c.seg[2].p, 250, 3);
    pdev_push(&e.d, &c, 250);
    assert_true(vuf_virtq_has_used(e.vq));
    assert_int_equal(vuf_virtq_used_idx(e.vq), WRAP | 3);
    assert_int_equal(vuf_virtq_last_used(e.vq), WRAP | 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)0x77);
    assert_int_equal(len, 250);
    assert_true(check_pattern(e.buf + 8192, 250, 3));
    assert_int_equal(vuf_virtq_last_used(e.vq), WRAP | 3);
    assert_int_equal(vuf_virtq_num_free(e.vq), 16);
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), -EAGAIN);
    assert_int_equal(log_errors, 0);

    /* A device-readable chain: DPDK's vhost PMD reports the bytes it read;
     * taken as "nothing written". */
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, (void *)0x78), 0);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    pdev_push(&e.d, &c, 300);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)0x78);
    assert_int_equal(len, 0);
    assert_int_equal(log_errors, 0);
    env_close(&e);
}

/* Queue size 256, more than 3 laps of both wrap counters, chains of 1-3
 * descriptors completed in batches, in order and in reverse, every byte and
 * every index checked against the device's own positions. */
static void test_packed_wraparound(void **state)
{
    struct env e;
    static struct pchain pend[64];
    unsigned seq = 0, done = 0, avail_laps = 0, used_laps = 0;
    bool last_aw = true, last_uw = true;

    (void)state;
    env_open(&e, 256, F_EVENT_IDX);
    for (unsigned batch = 0; used_laps < 4 || avail_laps < 4; batch++) {
        unsigned nb = 1 + (batch * 7) % 40, np = 0, first = seq;

        assert_true(batch < 1000);
        for (unsigned k = 0; k < nb; k++, seq++) {
            unsigned nr = seq % 3; /* 0..2 readable + 1 writable */
            struct vuf_virtq_buf b[3];
            uint8_t *slot = e.buf + (size_t)(seq % 64) * 4096;

            for (unsigned j = 0; j < nr; j++) {
                fill_pattern(slot + j * 1024, 1000, seq * 3 + j);
                b[j] = (struct vuf_virtq_buf){.host = slot + j * 1024, .len = 1000};
            }
            memset(slot + 3072, 0, 1024);
            b[nr] = (struct vuf_virtq_buf){.host = slot + 3072, .len = 1024, .writable = true};
            assert_int_equal(vuf_virtq_add(e.vq, b, nr + 1, (void *)(uintptr_t)(seq + 1)), 0);
        }
        assert_int_equal(vuf_virtq_num_inflight(e.vq), nb);
        assert_true(vuf_virtq_kick_needed(e.vq)); /* device area: ENABLE */
        while (np < 64 && pdev_pop(&e.d, &pend[np]) == 1)
            np++;
        assert_int_equal(np, nb);
        assert_int_equal(vuf_virtq_avail_idx(e.vq), enc(e.d.avail, e.d.avail_wrap));
        for (unsigned k = 0; k < np; k++) {
            unsigned s = first + k, nr = s % 3;

            assert_int_equal(pend[k].n, nr + 1);
            for (unsigned j = 0; j < nr; j++)
                assert_true(check_pattern(pend[k].seg[j].p, 1000, s * 3 + j));
        }
        /* Odd batches complete in reverse: used order differs from avail. */
        for (unsigned k = 0; k < np; k++) {
            unsigned i = batch % 2 ? np - 1 - k : k;
            struct pchain *c = &pend[i];

            fill_pattern(c->seg[c->n - 1].p, 1000 - i, 5000 + first + i);
            pdev_push(&e.d, c, 1000 - i);
        }
        assert_int_equal(vuf_virtq_used_idx(e.vq), enc(e.d.used, e.d.used_wrap));
        for (unsigned k = 0; k < np; k++) {
            unsigned i = batch % 2 ? np - 1 - k : k, s;
            void *cookie;
            uint32_t len;

            assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), 0);
            s = (unsigned)(uintptr_t)cookie - 1;
            assert_int_equal(s, first + i);
            assert_int_equal(len, 1000 - i);
            assert_true(check_pattern(e.buf + (size_t)(s % 64) * 4096 + 3072, len, 5000 + s));
            done++;
        }
        assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), -EAGAIN);
        assert_int_equal(vuf_virtq_last_used(e.vq), enc(e.d.used, e.d.used_wrap));
        assert_int_equal(vuf_virtq_avail_idx(e.vq), vuf_virtq_last_used(e.vq));
        assert_int_equal(vuf_virtq_num_free(e.vq), 256);
        if (e.d.avail_wrap != last_aw)
            avail_laps++;
        if (e.d.used_wrap != last_uw)
            used_laps++;
        last_aw = e.d.avail_wrap;
        last_uw = e.d.used_wrap;
    }
    assert_int_equal(done, seq);
    assert_true(seq * 2 > 4 * 256); /* on average 2 descriptors a chain */
    assert_int_equal(log_errors, 0);
    env_close(&e);
}

static void test_packed_full(void **state)
{
    struct env e;
    struct vuf_virtq_buf b[9];
    struct pchain c;

    (void)state;
    env_open(&e, 8, 0);
    for (unsigned i = 0; i < 9; i++)
        b[i] = (struct vuf_virtq_buf){.host = e.buf + i * 64, .len = 64};
    assert_int_equal(vuf_virtq_add(e.vq, b, 9, NULL), -EINVAL); /* never fits */
    assert_int_equal(vuf_virtq_add(e.vq, b, 6, (void *)1), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)2), -ENOSPC);
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, (void *)2), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 0);
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), -ENOSPC);
    /* A full ring ends where it started, one lap on. */
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 0);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    pdev_push(&e.d, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 6);
    /* The 3-chain now wraps around the end of the ring. */
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)3), 0);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 3);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_int_equal(c.ndesc, 2);
    pdev_push(&e.d, &c, 0);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_int_equal(c.ndesc, 3);
    assert_int_equal(c.seg[2].p, e.buf + 128);
    pdev_push(&e.d, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    assert_int_equal(vuf_virtq_last_used(e.vq), 3);
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);
    /* Bad buffers. */
    b[0].len = 0;
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), -EINVAL);
    b[0] = (struct vuf_virtq_buf){.gpa = 64 * MiB, .len = 16};
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, NULL), -EFAULT);
    b[0] = (struct vuf_virtq_buf){.host = e.buf, .len = 16, .writable = true};
    b[1] = (struct vuf_virtq_buf){.host = e.buf, .len = 16};
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, NULL), -EINVAL);
    assert_int_equal(vuf_virtq_add(e.vq, b, 0, NULL), -EINVAL);
    env_close(&e);
}

static void test_packed_indirect(void **state)
{
    struct env e;
    struct vuf_virtq_buf b[5];
    struct pchain c;
    void *cookie;
    uint32_t len;

    (void)state;
    env_open(&e, 16, F_INDIRECT);
    for (unsigned i = 0; i < 4; i++) {
        fill_pattern(e.buf + i * 512, 512, 10 + i);
        b[i] = (struct vuf_virtq_buf){.host = e.buf + i * 512, .len = 512};
    }
    b[4] = (struct vuf_virtq_buf){.host = e.buf + 4096, .len = 700, .writable = true};
    assert_int_equal(vuf_virtq_add(e.vq, b, 5, (void *)9), 0);
    assert_int_equal(vuf_virtq_num_free(e.vq), 15);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), WRAP | 1);
    assert_int_equal(e.d.ring[0].flags, P_AVAIL | VUF_VRING_DESC_F_INDIRECT);
    assert_int_equal(e.d.ring[0].len, 5 * 16);
    /* A single buffer does not go indirect (indirect_min 2). */
    assert_int_equal(vuf_virtq_add(e.vq, b, 1, (void *)10), 0);
    assert_int_equal(e.d.ring[1].flags, P_AVAIL);

    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_true(c.indirect);
    assert_int_equal(c.ndesc, 1);
    assert_int_equal(c.n, 5);
    for (unsigned i = 0; i < 4; i++)
        assert_true(check_pattern(c.seg[i].p, 512, 10 + i));
    assert_int_equal(c.wlen, 700);
    fill_pattern(c.seg[4].p, 700, 20);
    pdev_push(&e.d, &c, 700);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)9);
    assert_int_equal(len, 700);
    assert_true(check_pattern(e.buf + 4096, 700, 20));
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_false(c.indirect);
    pdev_push(&e.d, &c, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)10);
    assert_int_equal(vuf_virtq_last_used(e.vq), WRAP | 2);
    env_close(&e);
}

static void add_one(struct env *e, void *cookie)
{
    struct vuf_virtq_buf b = {.host = e->buf, .len = 64, .writable = true};

    assert_int_equal(vuf_virtq_add(e->vq, &b, 1, cookie), 0);
}

static void test_packed_notifications(void **state)
{
    struct env e;
    struct pchain c;

    (void)state;
    /* Without EVENT_IDX: the device area's ENABLE/DISABLE. */
    env_open(&e, 8, 0);
    assert_false(vuf_virtq_kick_needed(e.vq)); /* nothing added */
    add_one(&e, NULL);
    assert_true(vuf_virtq_kick_needed(e.vq));
    assert_false(vuf_virtq_kick_needed(e.vq));
    e.d.dev->flags = VUF_RING_EVENT_FLAGS_DISABLE;
    add_one(&e, NULL);
    assert_false(vuf_virtq_kick_needed(e.vq));
    assert_int_equal(vuf_virtq_kick(e.vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(fd_count(e.d.kick_fd), 1);
    /* DESC without EVENT_IDX negotiated is not a mode: treated as enabled. */
    e.d.dev->flags = VUF_RING_EVENT_FLAGS_DESC;
    add_one(&e, NULL);
    assert_true(vuf_virtq_kick_needed(e.vq));
    /* Calls: the driver area. */
    vuf_virtq_disable_cb(e.vq);
    assert_int_equal(e.d.drv->flags, VUF_RING_EVENT_FLAGS_DISABLE);
    assert_false(vuf_virtq_enable_cb(e.vq));
    assert_int_equal(e.d.drv->flags, VUF_RING_EVENT_FLAGS_ENABLE);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    pdev_push(&e.d, &c, 0);
    assert_true(vuf_virtq_enable_cb(e.vq)); /* pending: process first */
    env_close(&e);

    /* With EVENT_IDX: the device names the position (and lap) it wants a
     * kick for. */
    env_open(&e, 8, F_EVENT_IDX);
    e.d.dev->off_wrap = WRAP | 2;
    e.d.dev->flags = VUF_RING_EVENT_FLAGS_DESC;
    add_one(&e, NULL); /* position 0 */
    add_one(&e, NULL); /* 1 */
    assert_false(vuf_virtq_kick_needed(e.vq));
    add_one(&e, NULL); /* 2: the one it asked for */
    assert_true(vuf_virtq_kick_needed(e.vq));
    add_one(&e, NULL); /* 3 */
    assert_false(vuf_virtq_kick_needed(e.vq));
    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal(pdev_pop(&e.d, &c), 1);
        pdev_push(&e.d, &c, 0);
        assert_int_equal(vuf_virtq_get_used(e.vq, NULL, NULL), 0);
    }
    /* Across the end of the ring: positions 4..7 of lap 1, then 0..1 of
     * lap 0; the device asks for position 0 in the new lap. */
    e.d.dev->off_wrap = 0;
    for (unsigned i = 0; i < 4; i++)
        add_one(&e, NULL);
    assert_false(vuf_virtq_kick_needed(e.vq));
    add_one(&e, NULL);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), 1);
    assert_true(vuf_virtq_kick_needed(e.vq));
    /* Position 7 of the last lap, passed before the decision began. */
    e.d.dev->off_wrap = WRAP | 7;
    add_one(&e, NULL);
    assert_false(vuf_virtq_kick_needed(e.vq));
    /* Calls: DESC with our next used position and its wrap counter. */
    assert_false(vuf_virtq_enable_cb(e.vq));
    assert_int_equal(e.d.drv->flags, VUF_RING_EVENT_FLAGS_DESC);
    assert_int_equal(e.d.drv->off_wrap, WRAP | 4);
    vuf_virtq_disable_cb(e.vq);
    assert_int_equal(e.d.drv->flags, VUF_RING_EVENT_FLAGS_DISABLE);
    env_close(&e);
}

/* Every used-ring lie the split driver refuses, and the packed-only ones:
 * nothing is consumed, -EPROTO, logged once, broken until reset. */
enum lie {
    LIE_ID_RANGE,
    LIE_ID_FREE,
    LIE_ID_TWICE,
    LIE_LEN,
    LIE_LEN_READONLY,
    LIE_WRAP_AVAIL,
    LIE_WRAP_OLD,
    LIE_NOTHING_IN_FLIGHT
};

static void one_lie(enum lie lie)
{
    struct env e;
    struct pchain c0, c1;
    struct vuf_virtq_buf b = {.len = 64, .writable = true};
    void *cookie = NULL;

    env_open(&e, 16, 0);
    b.host = e.buf;
    /* A 64-byte device-readable chain: up to 64 tolerated (DPDK), 65 not. */
    b.writable = lie != LIE_LEN_READONLY;
    log_errors = 0;
    if (lie != LIE_NOTHING_IN_FLIGHT) {
        assert_int_equal(vuf_virtq_add(e.vq, &b, 1, (void *)1), 0);
        assert_int_equal(vuf_virtq_add(e.vq, &b, 1, (void *)2), 0);
        assert_int_equal(pdev_pop(&e.d, &c0), 1);
        assert_int_equal(pdev_pop(&e.d, &c1), 1);
    }
    switch (lie) {
    case LIE_ID_RANGE:
        pdev_write_used(&e.d, 16, 0, used_flags(true));
        break;
    case LIE_ID_FREE:
        pdev_write_used(&e.d, 5, 0, used_flags(true));
        break;
    case LIE_ID_TWICE:
        pdev_push(&e.d, &c0, 64);
        assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), 0);
        assert_ptr_equal(cookie, (void *)1);
        pdev_write_used(&e.d, c0.id, 0, used_flags(true));
        break;
    case LIE_LEN:
        pdev_write_used(&e.d, c0.id, 65, used_flags(true));
        break;
    case LIE_LEN_READONLY:
        pdev_write_used(&e.d, c0.id, 65, used_flags(true));
        break;
    case LIE_WRAP_AVAIL: /* "available in the other lap" */
        pdev_write_used(&e.d, c0.id, 0, P_USED);
        break;
    case LIE_WRAP_OLD: /* "used in the last lap" on a chain of this one */
        pdev_write_used(&e.d, c0.id, 0, used_flags(false));
        break;
    case LIE_NOTHING_IN_FLIGHT:
        pdev_write_used(&e.d, 0, 0, used_flags(true));
        break;
    }
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), -EPROTO);
    assert_true(vuf_virtq_broken(e.vq));
    assert_int_equal(log_errors, 1);
    assert_int_equal(vuf_virtq_num_inflight(e.vq), lie == LIE_NOTHING_IN_FLIGHT ? 0
                                                   : lie == LIE_ID_TWICE        ? 1
                                                                                : 2);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), -EPROTO);
    assert_int_equal(vuf_virtq_add(e.vq, &b, 1, NULL), -EPROTO);
    assert_int_equal(vuf_virtq_requeue_inflight(e.vq, NULL), -EPROTO);
    assert_int_equal(vuf_virtq_wait(e.vq, 0), -EPROTO);
    assert_int_equal(log_errors, 1);
    vuf_virtq_reset(e.vq, VUF_VRING_PACKED_BASE_INIT);
    assert_false(vuf_virtq_broken(e.vq));
    assert_int_equal(vuf_virtq_num_inflight(e.vq), 0);
    assert_int_equal(vuf_virtq_add(e.vq, &b, 1, NULL), 0);
    env_close(&e);
}

static void test_packed_malformed_used(void **state)
{
    (void)state;
    for (int l = LIE_ID_RANGE; l <= LIE_NOTHING_IN_FLIGHT; l++)
        one_lie((enum lie)l);
}

/* Hand-over: out-of-order completions leave the chains in flight scattered
 * among used descriptors; requeue lays them out again for a new device. */
static void test_packed_requeue(void **state)
{
    struct env e;
    struct pchain a, bb, cc, c;
    struct vuf_virtq_buf b[3];
    uint16_t base = 0;
    void *cookie;

    (void)state;
    env_open(&e, 8, 0);
    for (unsigned i = 0; i < 3; i++) {
        fill_pattern(e.buf + i * 256, 256, 30 + i);
        b[i] = (struct vuf_virtq_buf){.host = e.buf + i * 256, .len = 256};
    }
    assert_int_equal(vuf_virtq_add(e.vq, b, 2, (void *)1), 0);     /* 0-1 */
    assert_int_equal(vuf_virtq_add(e.vq, b + 2, 1, (void *)2), 0); /* 2 */
    assert_int_equal(vuf_virtq_add(e.vq, b, 3, (void *)3), 0);     /* 3-5 */
    assert_int_equal(pdev_pop(&e.d, &a), 1);
    assert_int_equal(pdev_pop(&e.d, &bb), 1);
    assert_int_equal(pdev_pop(&e.d, &cc), 1);
    pdev_push(&e.d, &bb, 0); /* the middle one, at position 0 */
    assert_int_equal(vuf_virtq_requeue_inflight(e.vq, &base), -EBUSY);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), 0);
    assert_ptr_equal(cookie, (void *)2);
    assert_int_equal(vuf_virtq_last_used(e.vq), WRAP | 1);
    assert_int_equal(vuf_virtq_requeue_inflight(e.vq, &base), 0);
    assert_int_equal(base, WRAP | 1);
    assert_int_equal(vuf_virtq_avail_idx(e.vq), WRAP | 6);

    /* A new device starts from base and sees exactly the two chains. */
    pdev_attach(&e.d, e.gm, e.vq, base);
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_int_equal(c.ndesc, 2);
    assert_true(check_pattern(c.seg[0].p, 256, 30));
    assert_true(check_pattern(c.seg[1].p, 256, 31));
    a = c;
    assert_int_equal(pdev_pop(&e.d, &c), 1);
    assert_int_equal(c.ndesc, 3);
    assert_true(check_pattern(c.seg[2].p, 256, 32));
    assert_int_equal(pdev_pop(&e.d, &cc), 0);
    assert_int_equal(e.d.avail, 6);
    pdev_push(&e.d, &c, 0);
    pdev_push(&e.d, &a, 0);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), 0);
    assert_ptr_equal(cookie, (void *)3);
    assert_int_equal(vuf_virtq_get_used(e.vq, &cookie, NULL), 0);
    assert_ptr_equal(cookie, (void *)1);
    assert_int_equal(vuf_virtq_last_used(e.vq), WRAP | 6);
    assert_int_equal(vuf_virtq_num_free(e.vq), 8);
    env_close(&e);
}

/* ------------------------------------------------------------------------ */
/* virtio-blk on a packed ring, the device in a thread                      */
/* ------------------------------------------------------------------------ */

#define DISK_SECTORS 4096u

struct pblk {
    struct pdev d;
    uint8_t *disk;
    pthread_t th;
    int stop, errors, requests;
};

static uint8_t pblk_handle(struct pblk *f, struct pchain *c, uint32_t *written)
{
    struct vuf_blk_outhdr h;
    uint8_t *data = c->n == 3 ? c->seg[1].p : NULL;
    uint32_t dlen = c->n == 3 ? c->seg[1].len : 0;

    *written = 0;
    if (c->n < 2 || c->seg[0].len != sizeof(h) || c->seg[0].w || !c->seg[c->n - 1].w)
        return VUF_BLK_S_IOERR;
    memcpy(&h, c->seg[0].p, sizeof(h));
    switch (h.type) {
    case VUF_BLK_T_IN:
    case VUF_BLK_T_OUT:
        if (!data || dlen % 512 || h.sector > DISK_SECTORS || dlen / 512 > DISK_SECTORS - h.sector)
            return VUF_BLK_S_IOERR;
        if (h.type == VUF_BLK_T_IN) {
            memcpy(data, f->disk + h.sector * 512, dlen);
            *written = dlen;
        } else {
            memcpy(f->disk + h.sector * 512, data, dlen);
        }
        return VUF_BLK_S_OK;
    case VUF_BLK_T_FLUSH:
        return VUF_BLK_S_OK;
    case VUF_BLK_T_GET_ID:
        if (!data || dlen < VUF_BLK_ID_BYTES)
            return VUF_BLK_S_IOERR;
        memset(data, 0, VUF_BLK_ID_BYTES);
        memcpy(data, "vuf-packed-blk", 14);
        *written = VUF_BLK_ID_BYTES;
        return VUF_BLK_S_OK;
    default:
        return VUF_BLK_S_UNSUPP;
    }
}

static void *pblk_main(void *arg)
{
    struct pblk *f = arg;
    static struct pchain pend[64];

    while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pfd = {.fd = f->d.kick_fd, .events = POLLIN};
        unsigned np = 0;
        uint64_t v;
        int r;

        poll(&pfd, 1, 2);
        if (read(f->d.kick_fd, &v, sizeof(v)) < 0) {
            /* nothing pending */
        }
        while (np < 64 && (r = pdev_pop(&f->d, &pend[np])) != 0) {
            if (r < 0) {
                __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
                break;
            }
            np++;
        }
        for (unsigned i = np; i-- > 0;) {
            uint32_t written;
            uint8_t st = pblk_handle(f, &pend[i], &written);

            *pend[i].seg[pend[i].n - 1].p = st;
            pdev_push(&f->d, &pend[i], written + 1);
            __atomic_add_fetch(&f->requests, 1, __ATOMIC_RELAXED);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (np &&
            __atomic_load_n(&f->d.drv->flags, __ATOMIC_RELAXED) != VUF_RING_EVENT_FLAGS_DISABLE) {
            uint64_t one = 1;

            if (write(f->d.call_fd, &one, sizeof(one)) != sizeof(one))
                __atomic_add_fetch(&f->errors, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void blk_packed(uint64_t features, bool busy)
{
    struct vuf_virtq_opts o = {.size = 64, .features = features, .packed = true};
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    struct pblk f = {0};
    const size_t len = 200 * 1024;
    uint8_t *wbuf = malloc(len), *rbuf = calloc(1, len);
    char id[VUF_BLK_ID_BYTES];
    struct vuf_blk_req *reqs[8];

    assert_non_null(wbuf);
    assert_non_null(rbuf);
    assert_int_equal(vuf_guest_mem_new_simple(0, 8 * MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), 0);
    assert_int_equal(vuf_blk_new(vq, 8, 64 * 1024, &blk), 0);
    vuf_blk_set_busy_poll(blk, busy);
    f.disk = calloc(DISK_SECTORS, 512);
    assert_non_null(f.disk);
    pdev_attach(&f.d, gm, vq, vuf_virtq_avail_idx(vq));
    assert_int_equal(pthread_create(&f.th, NULL, pblk_main, &f), 0);

    fill_pattern(wbuf, len, 1);
    assert_int_equal(vuf_blk_write(blk, 10, wbuf, len, 5000), 0);
    assert_memory_equal(f.disk + 10 * 512, wbuf, len);
    assert_int_equal(vuf_blk_read(blk, 10, rbuf, len, 5000), 0);
    assert_memory_equal(rbuf, wbuf, len);
    assert_int_equal(vuf_blk_flush(blk, 5000), 0);
    assert_int_equal(vuf_blk_get_id(blk, id, 5000), 0);
    assert_string_equal(id, "vuf-packed-blk");
    assert_int_equal(vuf_blk_read(blk, DISK_SECTORS - 1, rbuf, 1024, 5000), -EIO);

    /* Many laps of the 64-entry ring, 8 in flight, completed out of order. */
    for (unsigned round = 0; round < 40; round++) {
        for (unsigned i = 0; i < 8; i++) {
            uint8_t *p;

            reqs[i] = vuf_blk_req_get(blk);
            assert_non_null(reqs[i]);
            p = vuf_blk_req_buf(reqs[i], NULL);
            fill_pattern(p, 4096, round * 8 + i);
            vuf_blk_req_set_user(reqs[i], (void *)(uintptr_t)(i + 1));
            assert_int_equal(vuf_blk_req_prep(reqs[i], VUF_BLK_T_OUT, 100 + 8 * (uint64_t)i, 4096),
                             0);
            assert_int_equal(vuf_blk_submit(blk, reqs[i], VUF_BLK_SUBMIT_NO_KICK), 0);
        }
        vuf_blk_kick(blk);
        for (unsigned n = 0; n < 8; n++) {
            struct vuf_blk_req *done;

            assert_int_equal(vuf_blk_wait(blk, 5000, &done), 0);
            assert_int_equal(vuf_blk_req_result(done), 0);
            assert_int_equal(vuf_blk_req_used_len(done), 1);
            assert_int_equal(vuf_blk_req_put(blk, done), 0);
        }
        for (unsigned i = 0; i < 8; i++)
            assert_true(check_pattern(f.disk + (100 + 8 * i) * 512, 4096, round * 8 + i));
    }
    assert_int_equal(vuf_virtq_num_inflight(vq), 0);
    assert_int_equal(vuf_virtq_avail_idx(vq), vuf_virtq_last_used(vq));

    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(f.th, NULL);
    assert_int_equal(f.errors, 0);
    /* 200 KiB in 64 KiB pieces (4 each way), flush, get-id, the failed read. */
    assert_int_equal(f.requests, 4 + 4 + 3 + 40 * 8);
    vuf_blk_free(blk);
    vuf_virtq_free(vq);
    vuf_guest_mem_free(gm);
    free(f.disk);
    free(wbuf);
    free(rbuf);
}

static void test_packed_blk(void **state)
{
    (void)state;
    blk_packed(F_VERSION_1, false);
}

static void test_packed_blk_event_idx_indirect(void **state)
{
    (void)state;
    blk_packed(F_VERSION_1 | F_EVENT_IDX | F_INDIRECT, false);
}

static void test_packed_blk_busy_poll(void **state)
{
    (void)state;
    blk_packed(F_VERSION_1 | F_EVENT_IDX, true);
}

/* ------------------------------------------------------------------------ */
/* virtio-net on packed rings: a loopback device                            */
/* ------------------------------------------------------------------------ */

static uint32_t net_len(unsigned seq)
{
    static const uint32_t lens[6] = {60, 1514, 64, 511, 1000, 1500};

    return lens[seq % 6];
}

static void net_frame(uint8_t *p, unsigned seq)
{
    for (uint32_t i = 0; i < net_len(seq); i++)
        p[i] = (uint8_t)(i * 3 + seq * 17 + (i >> 8));
}

/* Every TX frame comes back on RX (MRG_RXBUF, 512-byte RX buffers), through
 * many laps of both 32-entry packed rings. */
static void test_packed_net_loopback(void **state)
{
    const uint64_t feat = F_VERSION_1 | F_EVENT_IDX | (1ull << VUF_NET_F_MRG_RXBUF);
    struct vuf_virtq_opts o = {.size = 32, .features = feat, .packed = true};
    struct vuf_net_opts no = {.features = feat, .rx_buf_len = 512};
    struct vuf_guest_mem *gm;
    struct vuf_virtq *rx, *tx;
    struct vuf_net *net;
    struct pdev drx, dtx;
    unsigned sent = 0, back = 0;
    static uint8_t fr[4][1514], got[4][1600];

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, 8 * MiB, &gm), 0);
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &rx), 0);
    o.index = 1;
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &tx), 0);
    assert_true(vuf_virtq_packed(rx) && vuf_virtq_packed(tx));
    assert_int_equal(vuf_net_new(rx, tx, &no, &net), 0);
    assert_int_equal(vuf_net_rx_fill(net), 32);
    pdev_attach(&drx, gm, rx, vuf_virtq_last_used(rx));
    pdev_attach(&dtx, gm, tx, vuf_virtq_last_used(tx));

    while (back < 300) {
        struct vuf_net_frame f[4];
        struct pchain c;
        int n;

        for (unsigned i = 0; i < 4; i++) {
            net_frame(fr[i], sent + i);
            f[i] = (struct vuf_net_frame){.data = fr[i], .len = net_len(sent + i)};
        }
        n = vuf_net_tx_burst(net, f, 4, 0);
        assert_int_equal(n, 4);
        sent += 4;
        /* The device: each TX chain (header + frame) into RX buffers. */
        while (pdev_pop(&dtx, &c) == 1) {
            static uint8_t flat[12 + 1514];
            uint32_t len = 0, off = 0, nbuf;
            struct pchain rb[4];

            for (unsigned k = 0; k < c.n; k++) {
                assert_false(c.seg[k].w);
                assert_true(len + c.seg[k].len <= sizeof(flat));
                memcpy(flat + len, c.seg[k].p, c.seg[k].len);
                len += c.seg[k].len;
            }
            pdev_push(&dtx, &c, 0);
            nbuf = (len + 511) / 512;
            assert_true(nbuf <= 4);
            for (unsigned k = 0; k < nbuf; k++)
                assert_int_equal(pdev_pop(&drx, &rb[k]), 1);
            memset(flat, 0, 12);
            flat[10] = (uint8_t)nbuf; /* num_buffers */
            for (unsigned k = 0; k < nbuf; k++) {
                uint32_t m = len - off < 512 ? len - off : 512;

                assert_int_equal(rb[k].n, 1);
                assert_int_equal(rb[k].seg[0].len, 512);
                memcpy(rb[k].seg[0].p, flat + off, m);
                off += m;
                pdev_push(&drx, &rb[k], m);
            }
        }
        for (int tries = 0; tries < 4 && back < sent; tries++) {
            for (unsigned i = 0; i < 4; i++)
                f[i] = (struct vuf_net_frame){.data = got[i], .len = sizeof(got[i])};
            n = vuf_net_rx_burst(net, f, 4);
            assert_true(n >= 0);
            for (int i = 0; i < n; i++, back++) {
                uint8_t want[1514];

                assert_int_equal(f[i].len, net_len(back));
                net_frame(want, back);
                assert_memory_equal(got[i], want, f[i].len);
            }
        }
        assert_int_equal(back, sent);
        assert_int_equal(vuf_net_tx_reclaim(net), 4);
    }
    assert_false(vuf_net_broken(net));
    /* Laps: the driver's indices and the device's positions agree. */
    assert_int_equal(vuf_virtq_last_used(tx), enc(dtx.used, dtx.used_wrap));
    assert_int_equal(vuf_virtq_last_used(rx), enc(drx.used, drx.used_wrap));
    assert_int_equal(log_errors, 0);
    vuf_net_free(net);
    vuf_virtq_free(rx);
    vuf_virtq_free(tx);
    vuf_guest_mem_free(gm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_packed_create, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_roundtrip, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_wraparound, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_full, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_indirect, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_notifications, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_malformed_used, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_requeue, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_blk, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_blk_event_idx_indirect, setup_log,
                                        teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_blk_busy_poll, setup_log, teardown_log),
        cmocka_unit_test_setup_teardown(test_packed_net_loopback, setup_log, teardown_log),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
