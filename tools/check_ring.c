/* SPDX-License-Identifier: MIT */
/*
 * Ring life-cycle and device I/O checks of `vuf check`: the checker plays
 * the guest driver on memfd guest memory (vuf/virtq.h; vuf/virtio_blk.h for
 * the I/O smoke test) and drives queue 0 with the client's ring requests,
 * in QEMU's start order (vhost-user §Starting the device).
 *
 * Ring behaviour is watched through guest memory: the used index moving is
 * the device processing; "nothing happened" is judged after settle_ms.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check_internal.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define QSIZE 128u
#define MEM_SIZE (4ull << 20)
#define F_PROTO VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES)

/* The blk features the driver here understands. */
#define BLK_DRIVER_FEATURES                                                                 \
    (VUF_BIT(VUF_VIRTIO_F_VERSION_1) | F_PROTO | VUF_BIT(VUF_BLK_F_SEG_MAX) |               \
     VUF_BIT(VUF_BLK_F_BLK_SIZE) | VUF_BIT(VUF_BLK_F_FLUSH) | VUF_BIT(VUF_BLK_F_RO) |       \
     VUF_BIT(VUF_BLK_F_DISCARD) | VUF_BIT(VUF_BLK_F_WRITE_ZEROES) | VUF_BIT(VUF_BLK_F_MQ) | \
     VUF_BIT(VUF_BLK_F_SIZE_MAX) | VUF_BIT(VUF_BLK_F_TOPOLOGY) | VUF_BIT(VUF_BLK_F_CONFIG_WCE))

struct rq {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    struct vuf_virtq_layout lay;
    uint64_t features;
    uint64_t capacity; /* sectors; 0: unknown */
    /* one raw blk read request for the ring checks */
    uint64_t hdr_gpa, data_gpa, st_gpa;
    void *hdr, *data, *st;
};

static void rq_free(struct rq *q)
{
    vuf_blk_free(q->blk);
    vuf_virtq_free(q->vq);
    vuf_guest_mem_free(q->gm);
    memset(q, 0, sizeof(*q));
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint16_t used_idx(const struct rq *q)
{
    return __atomic_load_n(&q->lay.used->idx, __ATOMIC_ACQUIRE);
}

/* Wait until the used index reaches `want` or ms pass. True if reached. */
static bool wait_used(const struct rq *q, uint16_t want, int ms)
{
    int64_t end = now_ms() + ms;

    for (;;) {
        if ((uint16_t)(used_idx(q) - want) < 0x8000u)
            return true;
        if (now_ms() >= end)
            return false;
        poll(NULL, 0, 1);
    }
}

/* Sync with the back-end after requests sent without an ack. */
static int rq_sync(struct chk_ctx *x)
{
    return chk_pf(x, VUF_PROTO_F_REPLY_ACK) ? 0 : chk_sync(x);
}

static int send_kick(struct chk_ctx *x, struct rq *q)
{
    chk_ev(x, "-> SET_VRING_KICK 0 (eventfd)");
    return vuf_client_set_vring_kick(x->c, 0, vuf_virtq_kick_fd(q->vq));
}

static int send_enable(struct chk_ctx *x, bool on)
{
    int r;

    chk_ev(x, "-> SET_VRING_ENABLE 0 %d", on);
    r = vuf_client_set_vring_enable(x->c, 0, on);
    return r ? r : rq_sync(x);
}

/* Queue 0 set up up to SET_VRING_CALL; SET_VRING_KICK and SET_VRING_ENABLE
 * as asked. `want` are the features to ack besides the device's own. */
static enum chk_status rq_setup(struct chk_ctx *x, struct rq *q, bool kick, bool enable,
                                uint64_t extra)
{
    struct vuf_mem_region reg;
    struct vuf_vring_addr addr;
    int fd, r;

    memset(q, 0, sizeof(*q));
    if (x->o->device_type != VUF_DEV_BLK)
        return chk_skip(x, "ring and I/O checks drive a blk device: give --device-type blk");
    if (!(x->hs.features & F_PROTO))
        return chk_skip(x, "PROTOCOL_FEATURES not offered (rings start enabled)");
    q->features = x->hs.features & (BLK_DRIVER_FEATURES | extra);
    if (chk_pf(x, VUF_PROTO_F_CONFIG)) {
        uint64_t cap;

        if (vuf_client_get_config(x->c, 0, VUF_CONFIG_FLAG_WRITABLE, &cap, 8) == 0)
            q->capacity = cap;
    }
    r = vuf_guest_mem_new_simple(0, MEM_SIZE, &q->gm);
    if (r == 0)
        r = vuf_virtq_new(q->gm, QSIZE, q->features, &q->vq);
    if (r == 0)
        r = vuf_guest_mem_alloc(q->gm, 16, 16, &q->hdr_gpa);
    if (r == 0)
        r = vuf_guest_mem_alloc(q->gm, 512, 512, &q->data_gpa);
    if (r == 0)
        r = vuf_guest_mem_alloc(q->gm, 1, 1, &q->st_gpa);
    if (r < 0) {
        chk_ev(x, "guest memory: %s", vuf_strerror(r));
        return CHK_ERROR;
    }
    q->hdr = vuf_guest_mem_to_host(q->gm, q->hdr_gpa, 16);
    q->data = vuf_guest_mem_to_host(q->gm, q->data_gpa, 512);
    q->st = vuf_guest_mem_to_host(q->gm, q->st_gpa, 1);
    *(struct vuf_blk_outhdr *)q->hdr = (struct vuf_blk_outhdr){.type = VUF_BLK_T_IN};
    vuf_virtq_layout(q->vq, &q->lay);
    vuf_guest_mem_mem_table(q->gm, &reg, &fd, 1);
    vuf_virtq_vring_addr(q->vq, &addr);
    chk_ev(x,
           "-> SET_FEATURES 0x%" PRIx64 ", SET_MEM_TABLE (1 region), SET_VRING_NUM 0 %u, "
           "SET_VRING_BASE 0 0, SET_VRING_ADDR, SET_VRING_CALL",
           (uint64_t)(q->features | F_PROTO), QSIZE);
    r = vuf_client_set_features(x->c, q->features | F_PROTO);
    if (r == 0)
        r = vuf_client_set_mem_table(x->c, &reg, &fd, 1);
    if (r == 0)
        r = vuf_client_set_vring_num(x->c, 0, QSIZE);
    if (r == 0)
        r = vuf_client_set_vring_base(x->c, 0, 0);
    if (r == 0)
        r = vuf_client_set_vring_addr(x->c, &addr);
    if (r == 0)
        r = vuf_client_set_vring_call(x->c, 0, vuf_virtq_call_fd(q->vq));
    if (r == 0 && kick)
        r = send_kick(x, q);
    if (r == 0 && enable)
        r = send_enable(x, true);
    if (r == 0)
        r = rq_sync(x);
    if (r < 0)
        return chk_err(x, r, "ring set-up");
    return CHK_PASS;
}

/* Publish one 512-byte read of sector 0 and kick (when `kick`). */
static int post_read(struct chk_ctx *x, struct rq *q, bool kick)
{
    struct vuf_virtq_buf b[3] = {
        {.gpa = q->hdr_gpa, .host = q->hdr, .len = 16, .writable = false},
        {.gpa = q->data_gpa, .host = q->data, .len = 512, .writable = true},
        {.gpa = q->st_gpa, .host = q->st, .len = 1, .writable = true},
    };
    int r = vuf_virtq_add(q->vq, b, 3, q);

    if (r < 0) {
        chk_ev(x, "virtq_add: %s", vuf_strerror(r));
        return r;
    }
    chk_ev(x, "   driver: avail idx %u%s", vuf_virtq_avail_idx(q->vq), kick ? ", kick" : "");
    return kick ? vuf_virtq_kick(q->vq, VUF_VIRTQ_KICK_FORCE) : 0;
}

/* Take every used element off the ring (recycles the descriptors). */
static void reap(struct rq *q)
{
    void *cookie;
    uint32_t len;

    while (vuf_virtq_get_used(q->vq, &cookie, &len) == 0)
        ;
}

/* Expect the used index to reach `want` (true) or to stay below it for
 * settle_ms (false); logs what happened. Returns whether it moved. */
static bool moved(struct chk_ctx *x, struct rq *q, uint16_t want, bool expect)
{
    bool m = wait_used(q, want, expect ? x->o->timeout_ms : x->o->settle_ms);

    chk_ev(x, "   used idx %u after %s", used_idx(q),
           expect ? "waiting for it" : "watching for it to stay");
    return m;
}

enum chk_status chk_ring_start(struct chk_ctx *x)
{
    struct rq q;
    enum chk_status st = rq_setup(x, &q, false, false, 0);
    int r;

    if (st != CHK_PASS)
        goto out;
    if ((r = post_read(x, &q, false)) < 0) {
        st = CHK_ERROR;
        goto out;
    }
    if (moved(x, &q, 1, false)) {
        st = chk_fail(x, "the ring ran before SET_VRING_KICK");
        goto out;
    }
    if ((r = send_kick(x, &q)) < 0 || (r = rq_sync(x)) < 0 ||
        (r = vuf_virtq_kick(q.vq, VUF_VIRTQ_KICK_FORCE)) < 0) {
        st = chk_err(x, r, "SET_VRING_KICK");
        goto out;
    }
    if (moved(x, &q, 1, false)) {
        st = chk_fail(x,
                      "the disabled ring completed a read (status %u, data written to guest "
                      "memory): a side effect; with PROTOCOL_FEATURES rings start disabled",
                      *(volatile uint8_t *)q.st);
        goto out;
    }
    if ((r = send_enable(x, true)) < 0 || (r = vuf_virtq_kick(q.vq, VUF_VIRTQ_KICK_FORCE)) < 0) {
        st = chk_err(x, r, "SET_VRING_ENABLE");
        goto out;
    }
    if (!moved(x, &q, 1, true))
        st = chk_fail(x, "the ring did not run after kick and enable");
out:
    rq_free(&q);
    return st;
}

enum chk_status chk_ring_disable(struct chk_ctx *x)
{
    struct rq q;
    enum chk_status st = rq_setup(x, &q, true, true, 0);
    int r;

    if (st != CHK_PASS)
        goto out;
    if (post_read(x, &q, true) < 0 || !moved(x, &q, 1, true)) {
        st = chk_fail(x, "the enabled ring did not run");
        goto out;
    }
    reap(&q);
    if ((r = send_enable(x, false)) < 0) {
        st = chk_err(x, r, "SET_VRING_ENABLE 0");
        goto out;
    }
    if (post_read(x, &q, true) < 0 || moved(x, &q, 2, false)) {
        st = chk_fail(x, "the disabled ring completed a read (status %u): a side effect",
                      *(volatile uint8_t *)q.st);
        goto out;
    }
    if ((r = send_enable(x, true)) < 0 || (r = vuf_virtq_kick(q.vq, VUF_VIRTQ_KICK_FORCE)) < 0) {
        st = chk_err(x, r, "SET_VRING_ENABLE 1");
        goto out;
    }
    if (!moved(x, &q, 2, true))
        st = chk_fail(x, "the ring did not resume after SET_VRING_ENABLE 1");
out:
    rq_free(&q);
    return st;
}

/* Run three reads, then GET_VRING_BASE; *base its answer. */
static enum chk_status three_then_stop(struct chk_ctx *x, struct rq *q, uint32_t *base)
{
    int r;

    for (uint16_t i = 1; i <= 3; i++) {
        if (post_read(x, q, true) < 0 || !moved(x, q, i, true))
            return chk_fail(x, "the running ring did not process request %u", i);
        reap(q);
    }
    r = vuf_client_get_vring_base(x->c, 0, base);
    if (r < 0)
        return chk_err(x, r, "GET_VRING_BASE");
    chk_ev(x, "-> GET_VRING_BASE 0 <- %u (driver's avail idx %u)", *base,
           vuf_virtq_avail_idx(q->vq));
    return CHK_PASS;
}

enum chk_status chk_ring_get_base(struct chk_ctx *x)
{
    struct rq q;
    uint32_t base = 0;
    enum chk_status st = rq_setup(x, &q, true, true, 0);

    if (st != CHK_PASS || (st = three_then_stop(x, &q, &base)) != CHK_PASS)
        goto out;
    if (base != 3) {
        st = chk_fail(x, "GET_VRING_BASE returned %u, the next avail index is 3", base);
        goto out;
    }
    if (post_read(x, &q, true) < 0 || moved(x, &q, 4, false))
        st = chk_fail(x, "the ring ran after GET_VRING_BASE stopped it");
out:
    rq_free(&q);
    return st;
}

enum chk_status chk_ring_restart(struct chk_ctx *x)
{
    struct rq q;
    struct vuf_vring_addr addr;
    uint32_t base = 0;
    enum chk_status st = rq_setup(x, &q, true, true, 0);
    int r;

    if (st != CHK_PASS || (st = three_then_stop(x, &q, &base)) != CHK_PASS)
        goto out;
    vuf_virtq_vring_addr(q.vq, &addr);
    chk_ev(x, "-> SET_VRING_NUM, SET_VRING_BASE 0 %u, SET_VRING_ADDR", base);
    r = vuf_client_set_vring_num(x->c, 0, QSIZE);
    if (r == 0)
        r = vuf_client_set_vring_base(x->c, 0, base);
    if (r == 0)
        r = vuf_client_set_vring_addr(x->c, &addr);
    if (r == 0)
        r = send_kick(x, &q);
    if (r == 0)
        r = send_enable(x, true);
    if (r < 0) {
        st = chk_err(x, r, "restart");
        goto out;
    }
    if (post_read(x, &q, true) < 0 || !moved(x, &q, 4, true)) {
        st = chk_fail(x, "the restarted ring did not process the request at index %u", base);
        goto out;
    }
    if (used_idx(&q) != 4)
        st = chk_fail(x, "used idx %u, expected 4", used_idx(&q));
out:
    rq_free(&q);
    return st;
}

static bool call_pending(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, ms) > 0 && (p.revents & POLLIN);
}

static void drain_call(int fd)
{
    uint64_t v;

    /* our own non-blocking eventfd: read cannot block */
    while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;
}

/* One request with used_event set to `ev` first; returns whether the call
 * eventfd fired (waiting `ms`), or -1 when the ring did not run. */
static int one_with_event(struct chk_ctx *x, struct rq *q, uint16_t ev, uint16_t want_used, int ms)
{
    uint16_t *used_event = vuf_vring_used_event(q->lay.avail, QSIZE);
    int cfd = vuf_virtq_call_fd(q->vq);
    bool fired;

    drain_call(cfd);
    __atomic_store_n(used_event, ev, __ATOMIC_RELEASE);
    chk_ev(x, "   driver: used_event = %u", ev);
    if (post_read(x, q, true) < 0 || !moved(x, q, want_used, true))
        return -1;
    fired = call_pending(cfd, ms);
    chk_ev(x, "   call eventfd %s", fired ? "fired" : "silent");
    reap(q);
    return fired;
}

/*
 * virtio 1.2 §2.7.10 (split ring, EVENT_IDX): when the used entry is placed
 * at index used_event the device MUST notify; otherwise it SHOULD NOT. Only
 * the MUST fails the check; a call in between (a SHOULD NOT, and what
 * libvhost-user and Linux vhost do once after a ring starts) is reported in
 * the evidence.
 */
enum chk_status chk_ring_event_idx(struct chk_ctx *x)
{
    struct rq q;
    enum chk_status st;
    int f;

    if (x->o->device_type == VUF_DEV_BLK && !(x->hs.features & VUF_BIT(VUF_VIRTIO_F_EVENT_IDX)))
        return chk_skip(x, "EVENT_IDX not offered");
    st = rq_setup(x, &q, true, true, VUF_BIT(VUF_VIRTIO_F_EVENT_IDX));
    if (st != CHK_PASS)
        goto out;
    /* entry 0 placed with used_event 0: MUST notify */
    f = one_with_event(x, &q, 0, 1, x->o->timeout_ms);
    if (f <= 0) {
        st = f < 0 ? chk_fail(x, "the ring did not run")
                   : chk_fail(x, "no call for the entry at used_event (0)");
        goto out;
    }
    /* entry 1 placed with used_event 5: SHOULD NOT notify */
    f = one_with_event(x, &q, 5, 2, x->o->settle_ms);
    if (f < 0) {
        st = chk_fail(x, "the ring did not run");
        goto out;
    }
    if (f)
        chk_ev(x, "   (a call before used_event was reached: a SHOULD NOT, not failed)");
    /* entry 2 placed with used_event 2: MUST notify */
    f = one_with_event(x, &q, 2, 3, x->o->timeout_ms);
    if (f <= 0)
        st = f < 0 ? chk_fail(x, "the ring did not run")
                   : chk_fail(x, "no call for the entry at used_event (2)");
out:
    rq_free(&q);
    return st;
}

/* ---- blk I/O ----------------------------------------------------------------- */

static enum chk_status blk_setup(struct chk_ctx *x, struct rq *q)
{
    enum chk_status st = rq_setup(x, q, true, true, 0);
    int r;

    if (st != CHK_PASS)
        return st;
    r = vuf_blk_new(q->vq, 4, 8192, &q->blk);
    if (r < 0) {
        chk_ev(x, "blk driver: %s", vuf_strerror(r));
        return CHK_ERROR;
    }
    return CHK_PASS;
}

/* The sector the destructive checks use, and restore afterwards. */
static uint64_t test_sector(const struct rq *q)
{
    return q->capacity > 16 ? q->capacity - 8 : 0;
}

static enum chk_status io_status(struct chk_ctx *x, int r, const char *what)
{
    if (r == 0) {
        chk_ev(x, "%s: OK", what);
        return CHK_PASS;
    }
    if (r == -ETIMEDOUT || r == -ECONNRESET) {
        chk_ev(x, "%s: %s", what, vuf_strerror(r));
        return CHK_ERROR;
    }
    return chk_fail(x, "%s: %s (%d)", what, vuf_strerror(r), r);
}

enum chk_status chk_io_blk_rw(struct chk_ctx *x)
{
    struct rq q;
    uint8_t saved[4096], pat[4096], back[4096];
    enum chk_status st = blk_setup(x, &q);
    uint64_t s;
    int r;

    if (st != CHK_PASS)
        goto out;
    if (q.features & VUF_BIT(VUF_BLK_F_RO)) {
        st = chk_skip(x, "read-only device");
        goto out;
    }
    s = test_sector(&q);
    for (unsigned i = 0; i < sizeof(pat); i++)
        pat[i] = (uint8_t)(i * 7 + 3);
    r = vuf_blk_read(q.blk, s, saved, sizeof(saved), x->o->timeout_ms);
    if ((st = io_status(x, r, "IN 8 sectors (saving them)")) != CHK_PASS)
        goto out;
    r = vuf_blk_write(q.blk, s, pat, sizeof(pat), x->o->timeout_ms);
    if ((st = io_status(x, r, "OUT 8 sectors of a pattern")) != CHK_PASS)
        goto out;
    r = vuf_blk_read(q.blk, s, back, sizeof(back), x->o->timeout_ms);
    if ((st = io_status(x, r, "IN the same sectors")) != CHK_PASS)
        goto out;
    if (memcmp(back, pat, sizeof(pat)) != 0)
        st = chk_fail(x, "the read returned other bytes than were written (sector %" PRIu64 ")", s);
    vuf_blk_write(q.blk, s, saved, sizeof(saved), x->o->timeout_ms);
    chk_ev(x, "sectors %" PRIu64 "+8 restored", s);
out:
    rq_free(&q);
    return st;
}

enum chk_status chk_io_blk_flush(struct chk_ctx *x)
{
    struct rq q;
    enum chk_status st;

    if (x->o->device_type == VUF_DEV_BLK && !(x->hs.features & VUF_BIT(VUF_BLK_F_FLUSH)))
        return chk_skip(x, "VIRTIO_BLK_F_FLUSH not offered");
    st = blk_setup(x, &q);
    if (st == CHK_PASS)
        st = io_status(x, vuf_blk_flush(q.blk, x->o->timeout_ms), "FLUSH");
    rq_free(&q);
    return st;
}

enum chk_status chk_io_blk_get_id(struct chk_ctx *x)
{
    struct rq q;
    char id[VUF_BLK_ID_BYTES + 1] = "";
    enum chk_status st = blk_setup(x, &q);

    if (st == CHK_PASS) {
        st = io_status(x, vuf_blk_get_id(q.blk, id, x->o->timeout_ms), "GET_ID");
        if (st == CHK_PASS)
            chk_ev(x, "id \"%.20s\"", id);
    }
    rq_free(&q);
    return st;
}

static enum chk_status range_op(struct chk_ctx *x, bool zeroes)
{
    struct rq q;
    uint8_t saved[512], back[512], zero[512] = {0};
    enum chk_status st;
    uint64_t s;
    int r;

    if (x->o->device_type == VUF_DEV_BLK &&
        !(x->hs.features & VUF_BIT(zeroes ? VUF_BLK_F_WRITE_ZEROES : VUF_BLK_F_DISCARD)))
        return chk_skip(x, "%s not offered", zeroes ? "WRITE_ZEROES" : "DISCARD");
    st = blk_setup(x, &q);
    if (st != CHK_PASS)
        goto out;
    s = test_sector(&q);
    r = vuf_blk_read(q.blk, s, saved, sizeof(saved), x->o->timeout_ms);
    if ((st = io_status(x, r, "IN 1 sector (saving it)")) != CHK_PASS)
        goto out;
    if (zeroes) {
        memset(back, 0xa5, sizeof(back));
        r = vuf_blk_write(q.blk, s, back, sizeof(back), x->o->timeout_ms);
        if ((st = io_status(x, r, "OUT 1 sector of 0xa5")) != CHK_PASS)
            goto out;
        r = vuf_blk_write_zeroes(q.blk, s, 1, false, x->o->timeout_ms);
        if ((st = io_status(x, r, "WRITE_ZEROES 1 sector")) != CHK_PASS)
            goto out;
        r = vuf_blk_read(q.blk, s, back, sizeof(back), x->o->timeout_ms);
        if ((st = io_status(x, r, "IN the sector")) == CHK_PASS && memcmp(back, zero, 512) != 0)
            st = chk_fail(x, "the sector is not zero after WRITE_ZEROES");
    } else {
        r = vuf_blk_discard(q.blk, s, 1, x->o->timeout_ms);
        st = io_status(x, r, "DISCARD 1 sector");
    }
    vuf_blk_write(q.blk, s, saved, sizeof(saved), x->o->timeout_ms);
    chk_ev(x, "sector %" PRIu64 " restored", s);
out:
    rq_free(&q);
    return st;
}

enum chk_status chk_io_blk_discard(struct chk_ctx *x)
{
    return range_op(x, false);
}

enum chk_status chk_io_blk_write_zeroes(struct chk_ctx *x)
{
    return range_op(x, true);
}

enum chk_status chk_io_blk_past_end(struct chk_ctx *x)
{
    struct rq q;
    uint8_t buf[1024];
    enum chk_status st;
    int r;

    if (x->o->device_type == VUF_DEV_BLK && !chk_pf(x, VUF_PROTO_F_CONFIG))
        return chk_skip(x, "CONFIG not offered: capacity unknown");
    st = blk_setup(x, &q);
    if (st != CHK_PASS)
        goto out;
    if (!q.capacity) {
        st = chk_skip(x, "capacity unknown");
        goto out;
    }
    /* Two sectors from the last one: the second lies past the end. */
    r = vuf_blk_read(q.blk, q.capacity - 1, buf, sizeof(buf), x->o->timeout_ms);
    chk_ev(x, "IN 2 sectors at %" PRIu64 " (capacity %" PRIu64 "): %s", q.capacity - 1, q.capacity,
           r ? vuf_strerror(r) : "OK");
    if (r == -ETIMEDOUT || r == -ECONNRESET)
        st = CHK_ERROR;
    else if (r != vuf_blk_status_errno(VUF_BLK_S_IOERR))
        st =
            chk_fail(x, "want status IOERR (%d), got %d", vuf_blk_status_errno(VUF_BLK_S_IOERR), r);
out:
    rq_free(&q);
    return st;
}

/* ---- fs and net: a device with several queues ---------------------------------- */

struct dq {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[2];
    struct vuf_virtq_layout lay[2];
    unsigned n;
};

static void dq_free(struct dq *d)
{
    for (unsigned i = 0; i < 2; i++)
        vuf_virtq_free(d->vq[i]);
    vuf_guest_mem_free(d->gm);
    memset(d, 0, sizeof(*d));
}

/* Queues 0..n-1 started and enabled, features VERSION_1 and bit 30 only
 * (a 12-byte net header; no device features). */
static enum chk_status dq_setup(struct chk_ctx *x, struct dq *d, unsigned n)
{
    uint64_t f = x->hs.features & (VUF_BIT(VUF_VIRTIO_F_VERSION_1) | F_PROTO);
    struct vuf_mem_region reg;
    int fd, r;

    memset(d, 0, sizeof(*d));
    d->n = n;
    if (!(x->hs.features & F_PROTO))
        return chk_skip(x, "PROTOCOL_FEATURES not offered (rings start enabled)");
    r = vuf_guest_mem_new_simple(0, MEM_SIZE, &d->gm);
    for (unsigned i = 0; r == 0 && i < n; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = f};

        r = vuf_virtq_new_opts(d->gm, &o, &d->vq[i]);
        if (r == 0)
            vuf_virtq_layout(d->vq[i], &d->lay[i]);
    }
    if (r < 0) {
        chk_ev(x, "guest memory: %s", vuf_strerror(r));
        return CHK_ERROR;
    }
    vuf_guest_mem_mem_table(d->gm, &reg, &fd, 1);
    chk_ev(x,
           "-> SET_FEATURES 0x%" PRIx64 ", SET_MEM_TABLE; queues 0..%u: SET_VRING_NUM %u, "
           "SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_KICK, "
           "SET_VRING_ENABLE 1",
           f, n - 1, QSIZE);
    r = vuf_client_set_features(x->c, f);
    if (r == 0)
        r = vuf_client_set_mem_table(x->c, &reg, &fd, 1);
    for (unsigned i = 0; r == 0 && i < n; i++) {
        struct vuf_vring_addr addr;

        vuf_virtq_vring_addr(d->vq[i], &addr);
        r = vuf_client_set_vring_num(x->c, i, QSIZE);
        if (r == 0)
            r = vuf_client_set_vring_base(x->c, i, 0);
        if (r == 0)
            r = vuf_client_set_vring_addr(x->c, &addr);
        if (r == 0)
            r = vuf_client_set_vring_call(x->c, i, vuf_virtq_call_fd(d->vq[i]));
        if (r == 0)
            r = vuf_client_set_vring_kick(x->c, i, vuf_virtq_kick_fd(d->vq[i]));
        if (r == 0)
            r = vuf_client_set_vring_enable(x->c, i, true);
    }
    /* With STATUS the device starts at DRIVER_OK (DPDK waits for it). */
    if (r == 0 && chk_pf(x, VUF_PROTO_F_STATUS)) {
        chk_ev(x, "-> SET_STATUS 0xf (ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK)");
        r = vuf_client_set_status(x->c, 0xf);
    }
    if (r == 0)
        r = rq_sync(x);
    if (r < 0)
        return chk_err(x, r, "queue set-up");
    return CHK_PASS;
}

static bool dq_wait_used(const struct dq *d, unsigned q, uint16_t want, int ms)
{
    struct rq tmp = {.lay = d->lay[q]};

    return wait_used(&tmp, want, ms);
}

/* Guest buffer of len bytes: its GPA and host pointer. */
static int dq_buf(struct dq *d, uint32_t len, struct vuf_virtq_buf *b, bool writable)
{
    int r = vuf_guest_mem_alloc(d->gm, len, 8, &b->gpa);

    if (r < 0)
        return r;
    b->host = vuf_guest_mem_to_host(d->gm, b->gpa, len);
    b->len = len;
    b->writable = writable;
    return 0;
}

#define FUSE_INIT_OP 26u

struct chk_fuse_in {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid, padding;
    uint32_t major, minor, max_readahead, flags;
};
struct chk_fuse_out {
    uint32_t len;
    int32_t error;
    uint64_t unique;
    uint32_t major, minor;
};

/* virtio 1.2 §5.11.6: the driver's first request on a request queue is
 * FUSE_INIT; the device answers it on the same buffer chain. */
enum chk_status chk_io_fs_init(struct chk_ctx *x)
{
    struct dq d;
    struct vuf_virtq_buf b[2];
    struct chk_fuse_in *in;
    const struct chk_fuse_out *out;
    void *cookie;
    uint32_t len = 0;
    enum chk_status st;

    if (x->o->device_type != VUF_DEV_FS)
        return chk_skip(x, "not an fs device (--device-type fs)");
    st = dq_setup(x, &d, 2);
    if (st != CHK_PASS)
        goto out;
    if (dq_buf(&d, sizeof(*in), &b[0], false) < 0 || dq_buf(&d, 4096, &b[1], true) < 0) {
        st = CHK_ERROR;
        goto out;
    }
    in = b[0].host;
    *in = (struct chk_fuse_in){
        .len = sizeof(*in), .opcode = FUSE_INIT_OP, .unique = 1, .major = 7, .minor = 31};
    chk_ev(x, "   driver: FUSE_INIT (7.31, unique 1) on request queue 1, 4096-byte answer buffer");
    if (vuf_virtq_add(d.vq[1], b, 2, &d) < 0 || vuf_virtq_kick(d.vq[1], VUF_VIRTQ_KICK_FORCE) < 0) {
        st = CHK_ERROR;
        goto out;
    }
    if (!dq_wait_used(&d, 1, 1, x->o->timeout_ms)) {
        st = chk_fail(x, "FUSE_INIT was not answered within %d ms", x->o->timeout_ms);
        goto out;
    }
    if (vuf_virtq_get_used(d.vq[1], &cookie, &len) < 0) {
        st = chk_fail(x, "the used entry for FUSE_INIT is invalid (bad id or length)");
        goto out;
    }
    out = b[1].host;
    chk_ev(x, "<- used len %u: out.len %u error %d unique %" PRIu64 " major %u minor %u", len,
           out->len, out->error, out->unique, out->major, out->minor);
    if (len < 16 + 8 || out->len != len || out->unique != 1)
        st =
            chk_fail(x, "not a FUSE answer to request 1 (used len, out.len and unique must agree)");
    else if (out->error != 0 || out->major != 7)
        st = chk_fail(x, "FUSE_INIT refused (error %d, major %u)", out->error, out->major);
out:
    dq_free(&d);
    return st;
}

/* virtio 1.2 §5.1.6.2: the device consumes transmitted buffers. A frame that
 * comes back on the RX queue (a looped-back or forwarding back-end) is
 * reported, not required. */
enum chk_status chk_io_net_tx(struct chk_ctx *x)
{
    static const uint8_t mac_dst[6] = {0x02, 0, 0, 0, 0, 0x01},
                         mac_src[6] = {0x02, 0, 0, 0, 0, 0x02};
    struct dq d;
    struct vuf_virtq_buf rx[8], tx[2];
    uint8_t *frame;
    enum chk_status st;

    if (x->o->device_type != VUF_DEV_NET)
        return chk_skip(x, "not a net device (--device-type net)");
    st = dq_setup(x, &d, 2);
    if (st != CHK_PASS)
        goto out;
    for (unsigned i = 0; i < 8; i++)
        if (dq_buf(&d, 12 + 1518, &rx[i], true) < 0 || vuf_virtq_add(d.vq[0], &rx[i], 1, &d) < 0) {
            st = CHK_ERROR;
            goto out;
        }
    vuf_virtq_kick(d.vq[0], VUF_VIRTQ_KICK_FORCE);
    if (dq_buf(&d, 12, &tx[0], false) < 0 || dq_buf(&d, 60, &tx[1], false) < 0) {
        st = CHK_ERROR;
        goto out;
    }
    frame = tx[1].host;
    memcpy(frame, mac_dst, 6);
    memcpy(frame + 6, mac_src, 6);
    frame[12] = 0x88; /* local experimental ethertype */
    frame[13] = 0xb5;
    for (unsigned i = 14; i < 60; i++)
        frame[i] = (uint8_t)i;
    chk_ev(x, "   driver: 8 RX buffers on queue 0; one 60-byte frame (+12-byte header) on TX "
              "queue 1");
    if (vuf_virtq_add(d.vq[1], tx, 2, &d) < 0 ||
        vuf_virtq_kick(d.vq[1], VUF_VIRTQ_KICK_FORCE) < 0) {
        st = CHK_ERROR;
        goto out;
    }
    if (!dq_wait_used(&d, 1, 1, x->o->timeout_ms)) {
        st = chk_fail(x, "the TX frame was not consumed within %d ms", x->o->timeout_ms);
        goto out;
    }
    chk_ev(x, "<- TX used idx 1: consumed");
    if (dq_wait_used(&d, 0, 1, x->o->timeout_ms < 1000 ? x->o->timeout_ms : 1000))
        chk_ev(x, "<- a frame came back on RX (looped back)");
    else
        chk_ev(x, "   no frame came back on RX (not required)");
out:
    dq_free(&d);
    return st;
}
