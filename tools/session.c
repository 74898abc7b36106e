/* SPDX-License-Identifier: MIT */
/*
 * The `vuf` tool as a VMM with a user-space virtio-blk (or virtio-net)
 * driver: connection, front-end device, guest memory, queues and the
 * life-cycle calls shared by `vuf blk`, `vuf demo` and `vuf net`. See
 * session.h.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "session.h"
#include "vuf/conn.h"
#include "vuf/frontend.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"

#define BIT(n) (1ull << (n))

/* What this driver understands: the ring features the virtq layer
 * implements and the blk bits whose only effect is information it reads
 * (or FLUSH, which it uses). No DISCARD / WRITE_ZEROES / CONFIG_WCE: the
 * tool never sends those requests or writes the config. */
#define DRIVER_BLK_FEATURES                                                       \
    (BIT(VUF_BLK_F_SIZE_MAX) | BIT(VUF_BLK_F_SEG_MAX) | BIT(VUF_BLK_F_BLK_SIZE) | \
     BIT(VUF_BLK_F_RO) | BIT(VUF_BLK_F_FLUSH) | BIT(VUF_BLK_F_TOPOLOGY) | BIT(VUF_BLK_F_MQ))

/* Slice of a completion wait between checks of the crash flag. */
#define WAIT_SLICE_MS 100

static int fail(struct ts_session *s, const char *step, int err)
{
    s->failed = step;
    return err;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* ---- interrupts and events (called from the front-end) --------------------- */

static void ts_event(void *opaque, enum vuf_device_event ev)
{
    struct ts_session *s = opaque;

    if (ev == VUF_DEVICE_EVENT_CRASHED)
        __atomic_store_n(&s->crashed, 1, __ATOMIC_RELEASE);
}

static bool is_crashed(struct ts_session *s)
{
    return __atomic_load_n(&s->crashed, __ATOMIC_ACQUIRE) != 0;
}

/* ---- set-up ------------------------------------------------------------------ */

void ts_init(struct ts_session *s, const struct ts_opts *o)
{
    memset(s, 0, sizeof(*s));
    s->o = *o;
}

static bool is_net(const struct ts_session *s)
{
    return s->o.device_type == VUF_DEV_NET;
}

static uint64_t ring_features(const struct ts_session *s)
{
    uint64_t f = BIT(VUF_VIRTIO_F_VERSION_1);

    if (!s->o.no_event_idx)
        f |= BIT(VUF_VIRTIO_F_EVENT_IDX);
    if (!s->o.no_indirect)
        f |= BIT(VUF_VIRTIO_F_INDIRECT_DESC);
    if (s->o.packed)
        f |= BIT(VUF_VIRTIO_F_RING_PACKED);
    return f;
}

/* --ring packed is a request, not a preference: a back-end without packed
 * rings is a failure rather than a silent split ring. */
static int check_ring(struct ts_session *s)
{
    if (s->o.packed && !(s->acked & BIT(VUF_VIRTIO_F_RING_PACKED)))
        return fail(s, "packed ring (the back-end does not offer RING_PACKED)", -ENOTSUP);
    return 0;
}

int ts_open(struct ts_session *s, const char *socket)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    int r;

    s->failed = NULL;
    __atomic_store_n(&s->crashed, 0, __ATOMIC_RELEASE);
    r = vuf_conn_connect(socket, s->o.timeout_ms, &conn);
    if (r < 0)
        return fail(s, "connect", r);
    vuf_conn_set_timeout(conn, s->o.timeout_ms);

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = is_net(s) ? VUF_DEV_NET : VUF_DEV_BLK;
    cfg.base_features_mask = ring_features(s);
    /* Several pairs with DPDK's vhost PMD need MQ acked, and MQ belongs to
     * the control-queue features the device strips by default: this VMM
     * offers them and its driver acks MQ without CTRL_VQ (DPDK then serves
     * every pair; it has no control queue to serve anyway). */
    cfg.net_ctrl_vq = is_net(s);
    cfg.event = ts_event;
    cfg.event_opaque = s;
    r = vuf_frontend_new(&cfg, conn, &s->dev); /* takes conn */
    if (r < 0) {
        s->dev = NULL;
        return fail(s, "negotiation (vuf_frontend_new)", r);
    }
    s->dev_queues = vuf_device_num_queues(s->dev);
    s->offered = vuf_device_features(s->dev);
    s->protocol = vuf_frontend_protocol_features(s->dev);
    return 0;
}

static uint64_t le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Net: ack what the caller asked for; the config space only with CONFIG
 * (DPDK 22.11 does not negotiate it; the caller makes its own MAC). */
static int ts_driver_net(struct ts_session *s)
{
    int r = vuf_device_ack_features(s->dev, s->offered & (ring_features(s) | s->o.net_features));

    if (r < 0)
        return fail(s, "ack features", r);
    s->acked = vuf_frontend_acked_features(s->dev);
    r = check_ring(s);
    if (r < 0)
        return r;
    if (!(s->protocol & VUF_PROTO_MASK(CONFIG)))
        return 0;
    r = vuf_device_read_config(s->dev, 0, s->config, TS_NET_CONFIG_BYTES);
    if (r < 0)
        return fail(s, "GET_CONFIG", r);
    s->have_config = true;
    return 0;
}

int ts_driver(struct ts_session *s)
{
    uint64_t want = ring_features(s) | DRIVER_BLK_FEATURES;
    int r;

    if (!(s->offered & BIT(VUF_VIRTIO_F_VERSION_1)))
        return fail(s, "feature check (the back-end does not offer VERSION_1)", -ENOTSUP);
    if (is_net(s))
        return ts_driver_net(s);
    r = vuf_device_ack_features(s->dev, s->offered & want);
    if (r < 0)
        return fail(s, "ack features", r);
    s->acked = vuf_frontend_acked_features(s->dev);
    r = check_ring(s);
    if (r < 0)
        return r;
    s->read_only = s->acked & BIT(VUF_BLK_F_RO);
    s->has_flush = s->acked & BIT(VUF_BLK_F_FLUSH);

    r = vuf_device_read_config(s->dev, 0, s->config, TS_CONFIG_BYTES);
    if (r < 0) {
        /* Without the CONFIG protocol feature there is nothing to read:
         * the size is then unknown and not checked. */
        if (!(s->protocol & VUF_PROTO_MASK(CONFIG)))
            return 0;
        return fail(s, "GET_CONFIG", r);
    }
    s->have_config = true;
    s->capacity = le(s->config + 0, 8);
    if (s->acked & BIT(VUF_BLK_F_SIZE_MAX))
        s->size_max = (uint32_t)le(s->config + 8, 4);
    if (s->acked & BIT(VUF_BLK_F_BLK_SIZE))
        s->blk_size = (uint32_t)le(s->config + 20, 4);
    if (s->acked & BIT(VUF_BLK_F_MQ))
        s->cfg_num_queues = (uint16_t)le(s->config + 34, 2);
    return 0;
}

int ts_queues(struct ts_session *s)
{
    uint64_t per_q, ind;
    int r;

    if (s->o.queues == 0 || s->o.queues > s->dev_queues)
        return fail(s, "queue set-up (more queues asked than the back-end has)", -ERANGE);
    if (!is_net(s) && s->o.queues > 1 && !(s->acked & BIT(VUF_BLK_F_MQ)))
        return fail(s, "queue set-up (several queues, but no VIRTIO_BLK_F_MQ)", -ENOTSUP);

    /* Rings (with slack for alignment), indirect tables (one per ring
     * descriptor, 16 entries), and per request its data buffer plus
     * header and status. */
    ind = (s->acked & BIT(VUF_VIRTIO_F_INDIRECT_DESC))
              ? (uint64_t)s->o.queue_size * 16 *
                    (s->o.queue_size < VUF_VIRTQ_INDIRECT_DEFAULT ? s->o.queue_size
                                                                  : VUF_VIRTQ_INDIRECT_DEFAULT)
              : 0;
    per_q = VUF_VRING_DESC_BYTES(s->o.queue_size) + VUF_VRING_AVAIL_BYTES(s->o.queue_size) +
            VUF_VRING_USED_BYTES(s->o.queue_size) + 3 * 4096 + ind +
            (uint64_t)s->o.nreqs * (round_up(s->o.max_data, 4096) + 4096);
    if (is_net(s))
        per_q -= (uint64_t)s->o.nreqs * (round_up(s->o.max_data, 4096) + 4096);
    s->mem_size = round_up(per_q * s->o.queues + s->o.extra_mem + (1u << 20), 2u << 20);
    r = vuf_guest_mem_new_simple(0, s->mem_size, &s->mem);
    if (r < 0)
        return fail(s, "guest memory", r);

    s->nq = s->o.queues;
    s->vq = calloc(s->nq, sizeof(*s->vq));
    s->blk = calloc(s->nq, sizeof(*s->blk));
    s->q = calloc(s->nq, sizeof(*s->q));
    if (!s->vq || !s->blk || !s->q) {
        s->nq = 0;
        return fail(s, "queue set-up", -ENOMEM);
    }
    for (unsigned i = 0; i < s->nq; i++) {
        struct vuf_virtq_opts vo = {
            .size = s->o.queue_size,
            .index = i,
            .features = s->acked,
        };
        r = vuf_virtq_new_opts(s->mem, &vo, &s->vq[i]);
        if (r < 0)
            return fail(s, "virtqueue set-up", r);
        if (!is_net(s)) {
            r = vuf_blk_new(s->vq[i], s->o.nreqs, s->o.max_data, &s->blk[i]);
            if (r < 0)
                return fail(s, "request pool set-up", r);
            vuf_blk_set_busy_poll(s->blk[i], s->o.busy_poll);
        }
        vuf_queue_from_virtq(&s->q[i], s->vq[i], (uint16_t)i); /* queue i: vector i */
    }
    return 0;
}

/* Queue i's call fd is vector i's "irqfd": the back-end signals the
 * queue directly. */
static struct vuf_interrupt intr_of(struct ts_session *s)
{
    s->irq = (struct vuf_virtq_irq){.vqs = s->vq, .n = s->nq};
    return vuf_virtq_irq_sink(&s->irq);
}

int ts_activate(struct ts_session *s)
{
    struct vuf_interrupt intr = intr_of(s);
    int r = vuf_device_activate(s->dev, s->mem, &intr, s->q, s->nq);

    if (r < 0)
        return fail(s, "activate", r);
    s->active = true;
    return 0;
}

int ts_start(struct ts_session *s, const char *socket)
{
    int r = ts_open(s, socket);

    if (r == 0)
        r = ts_driver(s);
    if (r == 0)
        r = ts_queues(s);
    if (r == 0)
        r = ts_activate(s);
    return r;
}

int ts_sleep(struct ts_session *s)
{
    int r = vuf_device_sleep(s->dev, s->q, s->nq);

    s->active = false;
    if (r < 0)
        return fail(s, "sleep", r);
    return 0;
}

int ts_snapshot(struct ts_session *s, uint8_t **data, size_t *len)
{
    int r = vuf_device_snapshot(s->dev, data, len);

    return r < 0 ? fail(s, "snapshot", r) : 0;
}

int ts_detach(struct ts_session *s)
{
    if (s->active)
        return fail(s, "detach (device still active)", -EBUSY);
    vuf_device_destroy(s->dev);
    s->dev = NULL;
    return 0;
}

int ts_replace(struct ts_session *s, const char *socket)
{
    int r = ts_detach(s);

    return r < 0 ? r : ts_open(s, socket);
}

int ts_restore(struct ts_session *s, const uint8_t *data, size_t len)
{
    int r = vuf_device_restore(s->dev, data, len);

    if (r < 0)
        return fail(s, "restore", r);
    s->acked = vuf_frontend_acked_features(s->dev);
    return 0;
}

int ts_wake(struct ts_session *s)
{
    struct vuf_interrupt intr = intr_of(s);
    int r = vuf_device_wake(s->dev, s->mem, &intr, s->q, s->nq);

    if (r < 0)
        return fail(s, "wake", r);
    s->active = true;
    return 0;
}

int ts_reset(struct ts_session *s)
{
    int r = vuf_device_reset(s->dev);

    s->active = false;
    /* The driver starts over too: rings and pools back to index 0, so a
     * later ts_activate is a fresh start. */
    for (unsigned i = 0; i < s->nq; i++) {
        if (s->blk && s->blk[i])
            vuf_blk_reset(s->blk[i], 0);
        s->q[i].next_avail = 0;
        s->q[i].next_used = 0;
    }
    return r < 0 ? fail(s, "reset", r) : 0;
}

void ts_close(struct ts_session *s)
{
    /* The back-end stops touching guest memory before it goes away. */
    if (s->dev && s->active)
        (void)vuf_device_reset(s->dev);
    s->active = false;
    vuf_device_destroy(s->dev);
    s->dev = NULL;
    for (unsigned i = 0; i < s->nq; i++) {
        if (s->blk)
            vuf_blk_free(s->blk[i]);
        if (s->vq)
            vuf_virtq_free(s->vq[i]);
    }
    free(s->blk);
    free(s->vq);
    free(s->q);
    s->blk = NULL;
    s->vq = NULL;
    s->q = NULL;
    s->nq = 0;
    vuf_guest_mem_free(s->mem);
    s->mem = NULL;
}

/* ---- I/O --------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ts_wait(struct ts_session *s, unsigned qi, int timeout_ms, struct vuf_blk_req **done)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;

    for (;;) {
        int slice = WAIT_SLICE_MS, r;

        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left < 0)
                left = 0;
            if (left < slice)
                slice = (int)left;
        }
        r = vuf_blk_wait(s->blk[qi], slice, done);
        if (r != -ETIMEDOUT)
            return r;
        if (is_crashed(s))
            return -ECONNRESET;
        if (deadline >= 0 && now_ms() >= deadline)
            return -ETIMEDOUT;
    }
}

/* Largest data bytes of one request: the pool's buffer, the back-end's
 * size_max, whole sectors. */
static uint32_t chunk_bytes(const struct ts_session *s)
{
    uint32_t c = s->o.max_data;

    if (s->size_max && s->size_max < c)
        c = s->size_max;
    c -= c % VUF_BLK_SECTOR_SIZE;
    return c ? c : VUF_BLK_SECTOR_SIZE;
}

/* Read or write [offset, offset + len) with up to nreqs requests in flight. */
static int ts_rw(struct ts_session *s, unsigned qi, uint32_t type, uint64_t offset, uint8_t *buf,
                 size_t len)
{
    struct vuf_blk *blk = s->blk[qi];
    uint32_t chunk = chunk_bytes(s);
    size_t next = 0; /* bytes submitted */
    unsigned inflight = 0;
    const char *what = type == VUF_BLK_T_IN ? "read request" : "write request";
    int r;

    if (offset % VUF_BLK_SECTOR_SIZE || len % VUF_BLK_SECTOR_SIZE)
        return fail(s, what, -EINVAL);
    while (next < len || inflight) {
        struct vuf_blk_req *req;

        /* Fill the queue. */
        while (next < len && (req = vuf_blk_req_get(blk)) != NULL) {
            uint32_t n = (uint32_t)(len - next < chunk ? len - next : chunk);

            r = vuf_blk_req_prep(req, type, (offset + next) / VUF_BLK_SECTOR_SIZE, n);
            if (r < 0) {
                vuf_blk_req_put(blk, req);
                return fail(s, what, r);
            }
            if (type == VUF_BLK_T_OUT)
                memcpy(vuf_blk_req_buf(req, NULL), buf + next, n);
            vuf_blk_req_set_user(req, (void *)(uintptr_t)next);
            r = vuf_blk_submit(blk, req, 0);
            if (r < 0) {
                vuf_blk_req_put(blk, req);
                if (r == -ENOSPC && inflight)
                    break; /* the ring is full: reap first */
                return fail(s, what, r);
            }
            inflight++;
            next += n;
        }
        if (!inflight)
            continue;
        r = ts_wait(s, qi, s->o.timeout_ms, &req);
        if (r < 0)
            return fail(s, "waiting for a completion", r);
        inflight--;
        r = vuf_blk_req_result(req);
        if (r < 0) {
            vuf_blk_req_put(blk, req);
            return fail(s, what, r);
        }
        if (type == VUF_BLK_T_IN) {
            size_t at = (size_t)(uintptr_t)vuf_blk_req_user(req);
            size_t n = len - at < chunk ? len - at : chunk;
            memcpy(buf + at, vuf_blk_req_buf(req, NULL), n);
        }
        vuf_blk_req_put(blk, req);
    }
    return 0;
}

int ts_read(struct ts_session *s, unsigned qi, uint64_t offset, void *buf, size_t len)
{
    return ts_rw(s, qi, VUF_BLK_T_IN, offset, buf, len);
}

int ts_write(struct ts_session *s, unsigned qi, uint64_t offset, const void *buf, size_t len)
{
    return ts_rw(s, qi, VUF_BLK_T_OUT, offset, (uint8_t *)(uintptr_t)buf, len);
}

int ts_flush(struct ts_session *s, unsigned qi)
{
    struct vuf_blk_req *req = vuf_blk_req_get(s->blk[qi]), *done;
    int r;

    if (!req)
        return fail(s, "flush", -EBUSY);
    r = vuf_blk_req_prep(req, VUF_BLK_T_FLUSH, 0, 0);
    if (r == 0)
        r = vuf_blk_submit(s->blk[qi], req, 0);
    if (r < 0) {
        vuf_blk_req_put(s->blk[qi], req);
        return fail(s, "flush", r);
    }
    r = ts_wait(s, qi, s->o.timeout_ms, &done);
    if (r < 0)
        return fail(s, "waiting for the flush", r);
    r = vuf_blk_req_result(done);
    vuf_blk_req_put(s->blk[qi], done);
    return r < 0 ? fail(s, "flush", r) : 0;
}

/* ---- pattern ----------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ull;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint8_t pattern_byte(uint64_t seed, uint64_t off, uint64_t *cache_word, uint64_t *cache_idx,
                            bool *cached)
{
    uint64_t idx = off / 8;

    if (!*cached || *cache_idx != idx) {
        *cache_word = splitmix64(seed * 0x9e3779b97f4a7c15ull + idx);
        *cache_idx = idx;
        *cached = true;
    }
    return (uint8_t)(*cache_word >> (8 * (off % 8)));
}

void ts_pattern_fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t len)
{
    uint64_t w = 0, wi = 0;
    bool c = false;

    for (size_t i = 0; i < len; i++)
        buf[i] = pattern_byte(seed, off + i, &w, &wi, &c);
}

size_t ts_pattern_check(uint64_t seed, uint64_t off, const uint8_t *buf, size_t len)
{
    uint64_t w = 0, wi = 0;
    bool c = false;

    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern_byte(seed, off + i, &w, &wi, &c))
            return i;
    return len;
}

/* ---- names ------------------------------------------------------------------- */

static const char *names(uint64_t v, char *buf, size_t cap, bool protocol)
{
    size_t n = 0;

    buf[0] = '\0';
    for (unsigned b = 0; b < 64; b++) {
        const char *nm;
        char tmp[16];
        int w;

        if (!(v & BIT(b)))
            continue;
        nm = protocol ? vuf_protocol_feature_name(b) : vuf_virtio_feature_name(VUF_DEV_BLK, b);
        if (!nm) {
            snprintf(tmp, sizeof(tmp), "BIT_%u", b);
            nm = tmp;
        }
        w = snprintf(buf + n, cap - n, "%s%s", n ? " " : "", nm);
        if (w < 0 || (size_t)w >= cap - n) {
            buf[n] = '\0';
            break;
        }
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, cap, "(none)");
    return buf;
}

const char *ts_feature_names(uint64_t v, char *buf, size_t cap)
{
    return names(v, buf, cap, false);
}

const char *ts_protocol_names(uint64_t v, char *buf, size_t cap)
{
    return names(v, buf, cap, true);
}
