/* SPDX-License-Identifier: MIT */
/*
 * The reference back-end's inflight tracking of packed rings
 * (backend/vring.c, the packed layout), without a process or a socket: a
 * packed ring in this process's memory, a driver played by the test, and
 * the region handed from one be_vq ("the back-end that crashed") to a fresh
 * one ("the restarted back-end") as the front-end would. The crash points
 * of backend/README.md ("Inflight tracking") are made by hand from the
 * region before and after a step: a completion interrupted before or after
 * its used descriptor was published, a pop interrupted half-way; and a
 * ring of 4 through several laps, so that the wrap counters matter.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "vring.h"
#include "vuf/log.h"

#define WRAP VUF_VRING_PACKED_WRAP
#define P_AVAIL VUF_VRING_PACKED_DESC_F_AVAIL
#define P_USED VUF_VRING_PACKED_DESC_F_USED
#define MAXQ 16u
#define DN 16u /* desc_num of the region (>= the ring size) */

/* The guest side: the ring, both event areas, the driver's positions. */
struct ring {
    unsigned num;
    _Alignas(16) struct vuf_vring_packed_desc d[MAXQ];
    _Alignas(4) struct vuf_vring_packed_event drv, dev;
    uint16_t avail; /* position | wrap << 15 */
    uint16_t used;
};

static _Alignas(64) uint8_t region[4096], saved[4096];

static uint16_t adv(const struct ring *r, uint16_t x, unsigned n)
{
    unsigned pos = (x & 0x7fffu) + n, w = x >> 15;

    while (pos >= r->num) {
        pos -= r->num;
        w ^= 1;
    }
    return (uint16_t)(pos | w << 15);
}

/* Make a chain of n descriptors with buffer id `id` available; the
 * descriptor addresses say which chain and which part (addr = id << 8 | k). */
static void drv_add(struct ring *r, unsigned n, uint16_t id)
{
    uint16_t x = r->avail, head = x, hflags = 0;

    for (unsigned k = 0; k < n; k++) {
        uint16_t w = x >> 15;
        uint16_t f = (uint16_t)((w ? P_AVAIL : P_USED) | (k + 1 < n ? VUF_VRING_DESC_F_NEXT : 0) |
                                (k + 1 == n ? VUF_VRING_DESC_F_WRITE : 0));
        struct vuf_vring_packed_desc *d = &r->d[x & 0x7fff];

        d->addr = (uint64_t)id << 8 | k;
        d->len = 512;
        d->id = id;
        if (x == head)
            hflags = f;
        else
            d->flags = f;
        x = adv(r, x, 1);
    }
    __atomic_store_n(&r->d[head & 0x7fff].flags, hflags, __ATOMIC_RELEASE);
    r->avail = x;
}

/* The next used descriptor's id, or -1; n: its chain's length. */
static int drv_reap(struct ring *r, unsigned n)
{
    const struct vuf_vring_packed_desc *d = &r->d[r->used & 0x7fff];
    uint16_t w = r->used >> 15, want = w ? (P_AVAIL | P_USED) : 0;

    if ((d->flags & (P_AVAIL | P_USED)) != want)
        return -1;
    r->used = adv(r, r->used, n);
    return d->id;
}

/* A back-end's queue on ring r, started at `base` (SET_VRING_BASE's
 * halves), tracked in `reg`. */
static void be_open(struct be_vq *vq, struct ring *r, void *reg, uint16_t avail, uint16_t used)
{
    assert_int_equal(be_vq_init(vq, 0, MAXQ), 0);
    vq->num = r->num;
    vq->packed = true;
    vq->pdesc = r->d;
    vq->avail = (uint16_t *)(void *)&r->drv;
    vq->used = (uint8_t *)&r->dev;
    vq->translated = true;
    vq->started = vq->enabled = true;
    vq->last_avail = avail;
    vq->used_idx = used;
    vq->used_idx_valid = true;
    be_vq_infl_attach(vq, reg, DN, sizeof(region));
    assert_non_null(vq->pk_infl);
    assert_true(vq->infl_recover);
}

static const struct be_inflpk_hdr *hdr(const void *reg)
{
    return reg;
}

/* Pop one chain: its id (and the descriptors as the driver wrote them). */
static uint16_t pop(struct be_vq *vq, unsigned n)
{
    static const struct be_mem none;
    struct be_chain c;

    assert_int_equal(be_vq_pop(vq, &none, &c), 1);
    assert_int_equal(c.nout + c.nin, n);
    for (unsigned k = 0; k < n; k++)
        assert_int_equal(c.segs[k].gpa & 0xff, k);
    return c.head;
}

/* What a restarted back-end recovers from `reg`: the ids in order. */
static unsigned recover(struct be_vq *vq, uint16_t *ids)
{
    unsigned n = be_vq_infl_recover(vq);

    assert_false(vq->infl_recover);
    assert_int_equal(vq->nheld, n);
    for (unsigned k = 0; k < n; k++) {
        static const struct be_mem none;
        struct be_chain c;

        ids[k] = vq->held[k];
        /* The chain comes back from the region's copies. */
        assert_int_equal(be_vq_chain_at(vq, &none, ids[k], &c), 1);
        assert_int_equal(c.head, ids[k]);
        for (unsigned j = 0; j < c.nout + c.nin; j++)
            assert_int_equal(c.segs[j].gpa, (uint64_t)ids[k] << 8 | j);
    }
    return n;
}

static void setup_region(void)
{
    memset(region, 0, sizeof(region));
    /* As GET_INFLIGHT_FD leaves it: the header's version and size only. */
    ((struct be_inflpk_hdr *)(void *)region)->version = BE_INFL_VERSION;
    ((struct be_inflpk_hdr *)(void *)region)->desc_num = DN;
}

/* A fresh region takes the positions from SET_VRING_BASE; chains popped
 * and held are resubmitted in the order they were popped, and the used
 * and next avail positions come from the region, not from the stale base. */
static void test_fresh_then_crash(void **state)
{
    struct ring r = {.num = 8, .avail = WRAP, .used = WRAP};
    struct be_vq a, b;
    uint16_t ids[8];

    (void)state;
    setup_region();
    be_open(&a, &r, region, WRAP, WRAP);
    assert_int_equal(be_vq_infl_recover(&a), 0);
    assert_int_equal(hdr(region)->free_head, 0);
    assert_int_equal(hdr(region)->used_wrap_counter, 1);
    assert_int_equal(hdr(region)->desc[DN - 1].next, DN);

    /* ids 5, 2, 7: chains of 2, 3, 1; 2 completes, 5 and 7 stay. */
    drv_add(&r, 2, 5);
    drv_add(&r, 3, 2);
    drv_add(&r, 1, 7);
    assert_int_equal(pop(&a, 2), 5);
    assert_int_equal(pop(&a, 3), 2);
    assert_int_equal(pop(&a, 1), 7);
    be_vq_push(&a, 2, 1);
    assert_int_equal(drv_reap(&r, 3), 2);
    assert_int_equal(a.used_idx, WRAP | 3);
    assert_int_equal(hdr(region)->used_idx, 3);
    assert_int_equal(hdr(region)->old_used_idx, 3);
    assert_int_equal(hdr(region)->free_head, hdr(region)->old_free_head);

    /* "Crash": the region goes to a new back-end started at the base the
     * front-end last sent. */
    be_open(&b, &r, region, WRAP, WRAP);
    be_vq_destroy(&a);
    assert_int_equal(recover(&b, ids), 2);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 7);
    assert_int_equal(b.used_idx, WRAP | 3);
    assert_int_equal(b.last_avail, WRAP | 6); /* 3 used + 2 + 1 in flight */
    /* Completing them frees everything; the driver sees both. */
    be_vq_push(&b, 7, 1);
    be_vq_push(&b, 5, 1);
    assert_int_equal(drv_reap(&r, 1), 7);
    assert_int_equal(drv_reap(&r, 2), 5);
    assert_int_equal(r.used, WRAP | 6);
    /* And the ring goes on from there. */
    drv_add(&r, 2, 1);
    assert_int_equal(pop(&b, 2), 1);
    be_vq_push(&b, 1, 1);
    assert_int_equal(drv_reap(&r, 2), 1);
    assert_int_equal(b.last_avail, r.avail);
    be_vq_destroy(&b);
}

/*
 * A completion interrupted: the region after its free-list and used
 * position update but before the commit, with the used descriptor
 * published (it is done: not resubmitted) or not yet (rolled back: it is).
 */
static void test_crash_in_completion(void **state)
{
    for (int published = 0; published < 2; published++) {
        struct ring r = {.num = 8, .avail = WRAP, .used = WRAP};
        struct vuf_vring_packed_desc before_push;
        struct be_inflpk_hdr pre;
        struct be_vq a, b;
        uint16_t ids[8];

        (void)state;
        setup_region();
        be_open(&a, &r, region, WRAP, WRAP);
        assert_int_equal(be_vq_infl_recover(&a), 0);
        drv_add(&r, 2, 3);
        drv_add(&r, 2, 4);
        assert_int_equal(pop(&a, 2), 3);
        assert_int_equal(pop(&a, 2), 4);
        memcpy(&pre, region, sizeof(pre));
        memcpy(&before_push, &r.d[0], sizeof(before_push));
        be_vq_push(&a, 4, 1); /* out of order: written at position 0 */
        be_vq_destroy(&a);
        /* Uncommitted: the old_* still say before, 4's head still marked. */
        memcpy(saved, region, sizeof(region));
        ((struct be_inflpk_hdr *)(void *)region)->old_free_head = pre.old_free_head;
        ((struct be_inflpk_hdr *)(void *)region)->old_used_idx = pre.old_used_idx;
        ((struct be_inflpk_hdr *)(void *)region)->old_used_wrap_counter = pre.old_used_wrap_counter;
        ((struct be_inflpk_hdr *)(void *)region)->desc[2].inflight = 1; /* 4's head entry */
        assert_int_equal(hdr(saved)->desc[2].inflight, 0);
        assert_int_equal(hdr(region)->used_idx, 2);
        if (!published)
            memcpy(&r.d[0], &before_push, sizeof(before_push));

        be_open(&b, &r, region, WRAP, WRAP);
        if (published) {
            assert_int_equal(recover(&b, ids), 1);
            assert_int_equal(ids[0], 3);
            assert_int_equal(b.used_idx, WRAP | 2);
            assert_int_equal(drv_reap(&r, 2), 4);
        } else {
            assert_int_equal(recover(&b, ids), 2);
            assert_int_equal(ids[0], 3);
            assert_int_equal(ids[1], 4);
            assert_int_equal(b.used_idx, WRAP | 0);
            assert_int_equal(drv_reap(&r, 2), -1);
        }
        assert_int_equal(b.last_avail, WRAP | 4);
        assert_int_equal(hdr(region)->used_idx, b.used_idx & 0x7fff);
        assert_int_equal(hdr(region)->old_used_idx, b.used_idx & 0x7fff);
        /* Each buffer completes exactly once from here. */
        for (unsigned k = 0; k < b.nheld; k++)
            be_vq_push(&b, b.held[k], 1);
        if (!published)
            assert_int_equal(drv_reap(&r, 2), 3);
        assert_int_equal(drv_reap(&r, 2), published ? 3 : 4);
        assert_int_equal(drv_reap(&r, 2), -1);
        assert_int_equal(r.used, WRAP | 4);
        be_vq_destroy(&b);
    }
}

/* A pop interrupted half-way (head marked, free list moved, not
 * committed): the chain is not in flight; the ring gives it again. */
static void test_crash_in_pop(void **state)
{
    struct ring r = {.num = 8, .avail = WRAP, .used = WRAP};
    struct be_inflpk_hdr pre;
    struct be_vq a, b;
    uint16_t ids[8];

    (void)state;
    setup_region();
    be_open(&a, &r, region, WRAP, WRAP);
    assert_int_equal(be_vq_infl_recover(&a), 0);
    drv_add(&r, 1, 6);
    drv_add(&r, 3, 1);
    assert_int_equal(pop(&a, 1), 6);
    memcpy(&pre, region, sizeof(pre));
    assert_int_equal(pop(&a, 3), 1);
    be_vq_destroy(&a);
    ((struct be_inflpk_hdr *)(void *)region)->old_free_head = pre.old_free_head;

    be_open(&b, &r, region, WRAP, WRAP);
    assert_int_equal(recover(&b, ids), 1);
    assert_int_equal(ids[0], 6);
    assert_int_equal(b.last_avail, WRAP | 1);
    assert_int_equal(hdr(region)->desc[1].inflight, 0); /* the uncommitted head */
    assert_int_equal(pop(&b, 3), 1);
    be_vq_push(&b, 1, 1);
    be_vq_push(&b, 6, 1);
    assert_int_equal(drv_reap(&r, 3), 1);
    assert_int_equal(drv_reap(&r, 1), 6);
    assert_int_equal(r.used, WRAP | 4);
    be_vq_destroy(&b);
}

/* A ring of 4 through 5 laps of chains of 3 (each straddling the end of
 * the ring in turn); then buffer 3 is held while buffer 2, a chain across
 * the end of the ring, completes over 3's descriptor and flips the used
 * wrap counter: the restarted back-end resumes at the right positions with
 * the right counters. */
static void test_wrapped(void **state)
{
    struct ring r = {.num = 4, .avail = WRAP, .used = WRAP};
    struct be_vq a, b;
    uint16_t ids[4];

    (void)state;
    setup_region();
    be_open(&a, &r, region, WRAP, WRAP);
    assert_int_equal(be_vq_infl_recover(&a), 0);
    for (unsigned k = 0; k < 7; k++) { /* 21 descriptors: 5 laps + 1 */
        drv_add(&r, 3, (uint16_t)(k % 4));
        assert_int_equal(pop(&a, 3), k % 4);
        be_vq_push(&a, (uint16_t)(k % 4), 1);
        assert_int_equal(drv_reap(&r, 3), k % 4);
    }
    assert_int_equal(r.used, 1); /* position 1, wrap counter 0 */
    assert_int_equal(hdr(region)->used_wrap_counter, 0);
    drv_add(&r, 1, 3); /* position 1 */
    drv_add(&r, 3, 2); /* positions 2, 3, 0 */
    assert_int_equal(pop(&a, 1), 3);
    assert_int_equal(pop(&a, 3), 2);
    assert_int_equal(a.last_avail, WRAP | 1);
    be_vq_push(&a, 2, 1); /* written at position 1 */
    assert_int_equal(drv_reap(&r, 3), 2);
    assert_int_equal(r.used, WRAP | 0);
    assert_int_equal(hdr(region)->used_wrap_counter, 1);
    be_vq_destroy(&a);

    be_open(&b, &r, region, WRAP, WRAP);
    assert_int_equal(recover(&b, ids), 1);
    assert_int_equal(ids[0], 3);
    assert_int_equal(b.used_idx, WRAP | 0);
    assert_int_equal(b.last_avail, WRAP | 1);
    be_vq_push(&b, 3, 1);
    assert_int_equal(drv_reap(&r, 1), 3);
    /* 0 held at the end of this lap, 1 (the next lap) completed over it. */
    drv_add(&r, 3, 0); /* positions 1, 2, 3 */
    drv_add(&r, 1, 1); /* position 0, wrap 0 */
    assert_int_equal(pop(&b, 3), 0);
    assert_int_equal(pop(&b, 1), 1);
    be_vq_push(&b, 1, 1); /* written at position 1 */
    assert_int_equal(drv_reap(&r, 1), 1);
    be_vq_destroy(&b);
    be_open(&b, &r, region, WRAP, WRAP);
    assert_int_equal(recover(&b, ids), 1);
    assert_int_equal(ids[0], 0);
    assert_int_equal(b.used_idx, WRAP | 2);
    assert_int_equal(b.last_avail, 1); /* position 1, wrap 0 */
    be_vq_push(&b, 0, 1);
    assert_int_equal(drv_reap(&r, 3), 0);
    assert_int_equal(r.used, 1);
    assert_int_equal(hdr(region)->used_wrap_counter, 0);
    assert_int_equal(hdr(region)->free_head, hdr(region)->old_free_head);
    be_vq_destroy(&b);
}

/* A region that does not fit the ring is not trusted: a chain through a
 * free entry, positions past the ring. Reset, the base kept, nothing
 * resubmitted. */
static void test_bad_region(void **state)
{
    struct ring r = {.num = 8, .avail = WRAP, .used = WRAP};
    struct be_vq a, b;
    uint16_t ids[8];

    (void)state;
    for (int bad = 0; bad < 2; bad++) {
        setup_region();
        be_open(&a, &r, region, WRAP, WRAP);
        assert_int_equal(be_vq_infl_recover(&a), 0);
        drv_add(&r, 2, 1);
        assert_int_equal(pop(&a, 2), 1);
        be_vq_destroy(&a);
        if (bad)
            ((struct be_inflpk_hdr *)(void *)region)->used_idx = 9;
        else
            ((struct be_inflpk_hdr *)(void *)region)->desc[0].num = 7;
        be_open(&b, &r, region, WRAP | 2, WRAP);
        assert_int_equal(recover(&b, ids), 0);
        assert_int_equal(b.last_avail, WRAP | 2);
        assert_int_equal(b.used_idx, WRAP);
        assert_int_equal(hdr(region)->desc[0].inflight, 0);
        assert_int_equal(hdr(region)->free_head, 0);
        be_vq_destroy(&b);
        r = (struct ring){.num = 8, .avail = WRAP, .used = WRAP};
    }
}

/* A chain that breaks the queue half-way (its second descriptor not
 * available; a buffer id already in flight) leaves nothing of itself in
 * the region. */
static void test_broken_chain(void **state)
{
    static const struct be_mem none;
    struct ring r = {.num = 8, .avail = WRAP, .used = WRAP};
    struct be_chain c;
    struct be_vq a;

    (void)state;
    for (int dup = 0; dup < 2; dup++) {
        setup_region();
        be_open(&a, &r, region, WRAP, WRAP);
        assert_int_equal(be_vq_infl_recover(&a), 0);
        if (dup) {
            drv_add(&r, 1, 1);
            assert_int_equal(pop(&a, 1), 1);
            drv_add(&r, 2, 1);
        } else {
            drv_add(&r, 2, 1);
            r.d[1].flags = 0; /* not available in this lap */
        }
        assert_int_equal(be_vq_pop(&a, &none, &c), -EPROTO);
        assert_true(a.broken);
        assert_int_equal(hdr(region)->free_head, dup);
        assert_int_equal(hdr(region)->old_free_head, dup);
        assert_int_equal(hdr(region)->desc[dup].inflight, 0);
        assert_int_equal(hdr(region)->desc[0].inflight, dup);
        be_vq_destroy(&a);
        r = (struct ring){.num = 8, .avail = WRAP, .used = WRAP};
    }
}

/* A split ring started after a back-end that died polling: its kick
 * suppression (NO_NOTIFY, or avail_event one behind with EVENT_IDX) is
 * taken back when the ring starts, or the driver would never kick. */
static void test_split_start_clears_stale_suppression(void **state)
{
    static _Alignas(64) uint8_t used[4 + 8 * 8 + 2];
    static _Alignas(16) struct be_desc desc[8];
    static _Alignas(2) uint16_t avail[2 + 8 + 1];
    struct be_mem mem;
    struct be_vq vq;

    (void)state;
    for (int ev = 0; ev < 2; ev++) {
        uint16_t flags = VUF_VRING_USED_F_NO_NOTIFY, uidx = 7, aev = 4;

        memcpy(used, &flags, 2);
        memcpy(used + 2, &uidx, 2);
        memcpy(used + 4 + 8 * 8, &aev, 2);
        memset(&mem, 0, sizeof(mem));
        assert_int_equal(be_vq_init(&vq, 0, MAXQ), 0);
        vq.num = 8;
        vq.desc = desc;
        vq.avail = avail;
        vq.used = used;
        vq.translated = true;
        vq.started = vq.enabled = true;
        vq.event_idx = ev;
        vq.last_avail = 5;
        vq.mem_gen = mem.generation;
        assert_true(be_vq_ready(&vq, &mem));
        assert_int_equal(vq.used_idx, 7);
        memcpy(&flags, used, 2);
        memcpy(&aev, used + 4 + 8 * 8, 2);
        if (ev) {
            assert_int_equal(aev, 5);                            /* the next request is kicked */
            assert_int_equal(flags, VUF_VRING_USED_F_NO_NOTIFY); /* ignored with EVENT_IDX */
        } else {
            assert_int_equal(flags, 0);
            assert_int_equal(aev, 4);
        }
        be_vq_destroy(&vq);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_then_crash),
        cmocka_unit_test(test_crash_in_completion),
        cmocka_unit_test(test_crash_in_pop),
        cmocka_unit_test(test_wrapped),
        cmocka_unit_test(test_bad_region),
        cmocka_unit_test(test_broken_chain),
        cmocka_unit_test(test_split_start_clears_stale_suppression),
    };

    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
