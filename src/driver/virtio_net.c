/* SPDX-License-Identifier: MIT */
/* virtio-net driver for one queue pair (virtio 1.2 §5.1) over two vuf_virtq. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "virtq_int.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_net.h"

/*
 * Buffer layout, RX and TX alike: each buffer starts `lead` bytes into a
 * 64-byte line, so that the header fills the end of that line and the
 * frame starts on a line of its own. Every line the driver writes was last
 * read by the device's core, and each costs a transfer between the cores:
 * a 64-byte frame then takes one line, not two, and a header that does not
 * change (zero on TX) is never written again.
 */
#define BUF_ALIGN 64u
#define RX_REFILL_BATCH 32u

/* A frame of several RX buffers (MRG_RXBUF) whose buffers are not all back
 * yet: the buffers taken so far, kept off the ring until it is whole. */
struct rx_part {
    unsigned idx;
    uint32_t len; /* used length the device reported */
};

struct vuf_net {
    struct vuf_virtq *rx, *tx;
    struct vuf_guest_mem *gm;
    uint64_t features;
    unsigned hdr_len;
    bool mrg;      /* MRG_RXBUF: num_buffers counts a frame's buffers */
    bool one_desc; /* header and frame in one TX descriptor */
    bool broken;

    unsigned lead; /* BUF_ALIGN - hdr_len: where a buffer starts in its line */

    unsigned nrx;
    uint32_t rx_len;
    uint64_t rx_stride, rx_gpa;
    uint8_t *rx_mem;
    unsigned *rx_free; /* stack of buffers neither posted nor held */
    unsigned rx_nfree;
    struct rx_part *part; /* the frame being reassembled */
    unsigned part_n, part_want;
    struct iovec *iov; /* the complete frame for vuf_net_rx_burst_zc's callback */

    unsigned ntx;
    uint32_t tx_max;
    uint64_t tx_stride, tx_gpa;
    uint8_t *tx_mem;
    unsigned *tx_free; /* free slots, a queue: tx_nfree from tx_head on */
    unsigned tx_head, tx_nfree;
    unsigned tx_lent; /* slots vuf_net_tx_slots() handed out, from the top
                       * of tx_free; 0 after any other TX call */

    struct vuf_net_stats st;
};

unsigned vuf_net_hdr_len(uint64_t features)
{
    if (features & (VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_NET_F_MRG_RXBUF)))
        return VUF_NET_HDR_V1_LEN;
    return VUF_NET_HDR_LEGACY_LEN;
}

static uint64_t le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int vuf_net_config_decode(const uint8_t *buf, size_t len, uint64_t features,
                          struct vuf_net_config *out)
{
#define HAS(bit) (features & VUF_BIT(VUF_NET_F_##bit))
#define FITS(off, n) ((size_t)(off) + (n) <= len)
    if (!out || (!buf && len))
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (HAS(MAC) && FITS(VUF_NET_CFG_MAC, 6)) {
        memcpy(out->mac, buf + VUF_NET_CFG_MAC, 6);
        out->valid |= VUF_NET_CFG_HAS_MAC;
    }
    if (HAS(STATUS) && FITS(VUF_NET_CFG_STATUS, 2)) {
        out->status = (uint16_t)le(buf + VUF_NET_CFG_STATUS, 2);
        out->valid |= VUF_NET_CFG_HAS_STATUS;
    }
    /* max_virtqueue_pairs exists with MQ or RSS (§5.1.4). */
    if ((HAS(MQ) || HAS(RSS)) && FITS(VUF_NET_CFG_MAX_VQ_PAIRS, 2)) {
        out->max_virtqueue_pairs = (uint16_t)le(buf + VUF_NET_CFG_MAX_VQ_PAIRS, 2);
        out->valid |= VUF_NET_CFG_HAS_MAX_VQ_PAIRS;
    }
    if (HAS(MTU) && FITS(VUF_NET_CFG_MTU, 2)) {
        out->mtu = (uint16_t)le(buf + VUF_NET_CFG_MTU, 2);
        out->valid |= VUF_NET_CFG_HAS_MTU;
    }
    if (HAS(SPEED_DUPLEX) && FITS(VUF_NET_CFG_DUPLEX, 1)) {
        out->speed = (uint32_t)le(buf + VUF_NET_CFG_SPEED, 4);
        out->duplex = buf[VUF_NET_CFG_DUPLEX];
        out->valid |= VUF_NET_CFG_HAS_SPEED_DUPLEX;
    }
    if (HAS(RSS) && FITS(VUF_NET_CFG_RSS_MAX_INDIRECTION, 2)) {
        out->rss_max_key_size = buf[VUF_NET_CFG_RSS_MAX_KEY_SIZE];
        out->rss_max_indirection_table_length =
            (uint16_t)le(buf + VUF_NET_CFG_RSS_MAX_INDIRECTION, 2);
        out->valid |= VUF_NET_CFG_HAS_RSS;
    }
    /* supported_hash_types serves both RSS and HASH_REPORT (§5.1.4). */
    if ((HAS(RSS) || HAS(HASH_REPORT)) && FITS(VUF_NET_CFG_SUPPORTED_HASH_TYPES, 4)) {
        out->supported_hash_types = (uint32_t)le(buf + VUF_NET_CFG_SUPPORTED_HASH_TYPES, 4);
        out->valid |= VUF_NET_CFG_HAS_HASH_TYPES;
    }
    return 0;
#undef HAS
#undef FITS
}

/* ------------------------------------------------------------------------ */
/* Set-up                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static void pools_rebuild(struct vuf_net *net)
{
    net->rx_nfree = 0;
    for (unsigned i = net->nrx; i-- > 0;)
        net->rx_free[net->rx_nfree++] = i;
    net->tx_nfree = net->tx_head = 0;
    for (unsigned i = 0; i < net->ntx; i++)
        net->tx_free[net->tx_nfree++] = i;
    net->part_n = net->part_want = 0;
    net->tx_lent = 0;
}

static int check_opts(struct vuf_virtq *rx, struct vuf_virtq *tx, const struct vuf_net_opts *o,
                      unsigned hdr_len, unsigned *nrx, uint32_t *rx_len, unsigned *ntx,
                      uint32_t *tx_max)
{
    *nrx = o->rx_bufs ? o->rx_bufs : vuf_virtq_size(rx);
    *ntx = o->tx_slots ? o->tx_slots : vuf_virtq_size(tx);
    *rx_len = o->rx_buf_len ? o->rx_buf_len : hdr_len + VUF_NET_FRAME_DEFAULT;
    *tx_max = o->tx_frame_max ? o->tx_frame_max : VUF_NET_FRAME_DEFAULT;
    if (*nrx > vuf_virtq_size(rx) || *ntx > vuf_virtq_size(tx))
        return -EINVAL;
    if (*rx_len <= hdr_len || *rx_len > hdr_len + VUF_NET_FRAME_MAX)
        return -EINVAL;
    if (*tx_max > VUF_NET_FRAME_MAX)
        return -EINVAL;
    if (vuf_virtq_guest_mem(rx) != vuf_virtq_guest_mem(tx))
        return -EINVAL;
    return 0;
}

static int alloc_buffers(struct vuf_net *net)
{
    uint64_t rx_bytes = net->rx_stride * net->nrx, tx_bytes = net->tx_stride * net->ntx;
    int r;

    r = vuf_guest_mem_alloc(net->gm, rx_bytes, BUF_ALIGN, &net->rx_gpa);
    if (r == 0)
        r = vuf_guest_mem_alloc(net->gm, tx_bytes, BUF_ALIGN, &net->tx_gpa);
    if (r < 0)
        return -ENOMEM;
    net->rx_mem = vuf_guest_mem_to_host(net->gm, net->rx_gpa, rx_bytes);
    net->tx_mem = vuf_guest_mem_to_host(net->gm, net->tx_gpa, tx_bytes);
    /* Each pool must lie in one region: descriptors are checked per
     * buffer, but one host pointer serves the whole pool. */
    return net->rx_mem && net->tx_mem ? 0 : -ENOMEM;
}

int vuf_net_new(struct vuf_virtq *rx, struct vuf_virtq *tx, const struct vuf_net_opts *opts,
                struct vuf_net **out)
{
    struct vuf_net *net;
    uint64_t mark;
    int r;

    if (!rx || !tx || rx == tx || !opts || !out)
        return -EINVAL;
    net = calloc(1, sizeof(*net));
    if (!net)
        return -ENOMEM;
    net->rx = rx;
    net->tx = tx;
    net->gm = vuf_virtq_guest_mem(rx);
    net->features = opts->features;
    net->hdr_len = vuf_net_hdr_len(opts->features);
    net->mrg = opts->features & VUF_BIT(VUF_NET_F_MRG_RXBUF);
    /* Legacy devices without ANY_LAYOUT may expect the header alone in the
     * first descriptor (virtio 1.2 §5.1.6.6, legacy interface). */
    net->one_desc =
        opts->features & (VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_NET_F_ANY_LAYOUT));
    r = check_opts(rx, tx, opts, net->hdr_len, &net->nrx, &net->rx_len, &net->ntx, &net->tx_max);
    if (r < 0) {
        free(net);
        return r;
    }
    net->lead = BUF_ALIGN - net->hdr_len;
    net->rx_stride = round_up((uint64_t)net->lead + net->rx_len, BUF_ALIGN);
    net->tx_stride = round_up((uint64_t)net->lead + net->hdr_len + net->tx_max, BUF_ALIGN);
    net->rx_free = calloc(net->nrx, sizeof(*net->rx_free));
    net->part = calloc(net->nrx, sizeof(*net->part));
    net->iov = calloc(net->nrx, sizeof(*net->iov));
    net->tx_free = calloc(net->ntx, sizeof(*net->tx_free));
    mark = vuf_guest_mem_alloc_mark(net->gm);
    r = net->rx_free && net->part && net->iov && net->tx_free ? alloc_buffers(net) : -ENOMEM;
    if (r < 0) {
        vuf_guest_mem_alloc_rewind(net->gm, mark);
        vuf_net_free(net);
        return r;
    }
    pools_rebuild(net);
    *out = net;
    return 0;
}

void vuf_net_free(struct vuf_net *net)
{
    if (!net)
        return;
    free(net->rx_free);
    free(net->part);
    free(net->iov);
    free(net->tx_free);
    free(net);
}

struct vuf_virtq *vuf_net_rx_virtq(const struct vuf_net *net)
{
    return net->rx;
}

struct vuf_virtq *vuf_net_tx_virtq(const struct vuf_net *net)
{
    return net->tx;
}

unsigned vuf_net_get_hdr_len(const struct vuf_net *net)
{
    return net->hdr_len;
}

uint32_t vuf_net_rx_frame_max(const struct vuf_net *net)
{
    return net->mrg ? VUF_NET_FRAME_MAX : net->rx_len - net->hdr_len;
}

void vuf_net_set_busy_poll(struct vuf_net *net, bool on)
{
    if (on) {
        vuf_virtq_disable_cb(net->rx);
        vuf_virtq_disable_cb(net->tx);
    } else {
        vuf_virtq_enable_cb(net->rx);
        vuf_virtq_enable_cb(net->tx);
    }
}

void vuf_net_reset(struct vuf_net *net, uint16_t base)
{
    vuf_virtq_reset(net->rx, base);
    vuf_virtq_reset(net->tx, base);
    pools_rebuild(net);
    net->broken = false;
}

bool vuf_net_broken(const struct vuf_net *net)
{
    return net->broken;
}

void vuf_net_stats(const struct vuf_net *net, struct vuf_net_stats *out)
{
    *out = net->st;
}

/* ------------------------------------------------------------------------ */
/* RX                                                                       */
/* ------------------------------------------------------------------------ */

static uint8_t *rx_host(const struct vuf_net *net, unsigned idx)
{
    return net->rx_mem + net->rx_stride * idx + net->lead;
}

int vuf_net_rx_fill(struct vuf_net *net)
{
    int posted = 0, r = 0;

    if (net->broken || vuf_virtq_broken(net->rx))
        return -EPROTO;
    while (net->rx_nfree > 0) {
        unsigned idx = net->rx_free[net->rx_nfree - 1];

        /* The header is not cleared: the device writes it whole, and
         * num_buffers, the one field read back, only counts with MRG_RXBUF,
         * which obliges the device to write it (DPDK 22.11 without
         * MRG_RXBUF does not). The pool was checked to lie in guest memory
         * when it was allocated. */
        r = vq_add_one(net->rx, net->rx_gpa + net->rx_stride * idx + net->lead, net->rx_len, true,
                       (void *)(uintptr_t)(idx + 1));
        if (r < 0)
            break;
        net->rx_nfree--;
        posted++;
    }
    if (posted)
        vuf_virtq_kick(net->rx, 0);
    if (r < 0 && r != -ENOSPC && posted == 0)
        return r;
    return posted;
}

/* After a burst: post the free buffers again once there are enough of
 * them to be worth a publish (a store to the avail index the device polls,
 * and a kick decision), or when the device is left with few. */
static void rx_refill(struct vuf_net *net)
{
    unsigned posted = net->nrx - net->rx_nfree, batch = net->nrx / 4 ? net->nrx / 4 : 1;

    if (batch > RX_REFILL_BATCH)
        batch = RX_REFILL_BATCH;
    if (net->broken || vuf_virtq_broken(net->rx) || net->rx_nfree == 0)
        return;
    if (net->rx_nfree >= batch || posted < batch)
        vuf_net_rx_fill(net);
}

static int rx_fault(struct vuf_net *net, const char *what, unsigned v)
{
    vuf_log(VUF_LOG_ERROR, "virtio-net rx queue %u: %s (%u)", vuf_virtq_index(net->rx), what, v);
    net->broken = true;
    return -EPROTO;
}

/* The complete frame in net->part as net->iov (its bytes, without the
 * header that only the first buffer carries, §5.1.6.4); returns its length. */
static uint32_t rx_frame_iov(struct vuf_net *net)
{
    uint32_t total = 0;

    for (unsigned i = 0; i < net->part_n; i++) {
        const struct rx_part *p = &net->part[i];
        uint32_t skip = i == 0 ? net->hdr_len : 0;

        net->iov[i].iov_base = rx_host(net, p->idx) + skip;
        net->iov[i].iov_len = p->len - skip;
        total += p->len - skip;
    }
    return total;
}

/* The frame in net->part was delivered: count it, free its buffers. */
static void rx_done(struct vuf_net *net, uint32_t total)
{
    for (unsigned i = 0; i < net->part_n; i++)
        net->rx_free[net->rx_nfree++] = net->part[i].idx;
    net->st.rx_frames++;
    net->st.rx_bytes += total;
    if (net->part_n > 1)
        net->st.rx_merged++;
    net->part_n = net->part_want = 0;
}

/* Copy the complete frame in net->part into *f and free its buffers. */
static void rx_deliver(struct vuf_net *net, struct vuf_net_frame *f)
{
    uint32_t room = f->len, total = rx_frame_iov(net), at = 0;

    for (unsigned i = 0; i < net->part_n && at < room; i++) {
        size_t n = net->iov[i].iov_len < room - at ? net->iov[i].iov_len : room - at;

        memcpy((uint8_t *)f->data + at, net->iov[i].iov_base, n);
        at += (uint32_t)n;
    }
    f->len = total;
    if (total > room)
        net->st.rx_truncated++;
    rx_done(net, total);
}

/* Take one used RX buffer into net->part. 0, -EAGAIN, or -EPROTO. */
static int rx_take(struct vuf_net *net)
{
    void *cookie;
    uint32_t len;
    unsigned idx;
    int r = vuf_virtq_get_used(net->rx, &cookie, &len);

    if (r < 0)
        return r;
    idx = (unsigned)((uintptr_t)cookie - 1);
    if (net->part_n == 0) {
        uint16_t nb = 1;

        if (len < net->hdr_len) {
            net->rx_free[net->rx_nfree++] = idx;
            return rx_fault(net, "used length shorter than the header", len);
        }
        /* Without MRG_RXBUF num_buffers means nothing to us (and DPDK
         * 22.11 does not write it): one buffer per frame, and the header's
         * line is not read at all. Read once: the device is done with a
         * buffer it returned. */
        if (net->mrg)
            memcpy(&nb, rx_host(net, idx) + offsetof(struct vuf_net_hdr_v1, num_buffers), 2);
        net->part_want = nb;
        /* The rest of the frame must come from buffers the device still
         * holds; anything else can never complete. */
        if (net->part_want == 0 || net->part_want - 1u > vuf_virtq_num_inflight(net->rx)) {
            net->rx_free[net->rx_nfree++] = idx;
            return rx_fault(net, "num_buffers is 0 or more than the buffers posted", nb);
        }
    }
    net->part[net->part_n++] = (struct rx_part){.idx = idx, .len = len};
    return 0;
}

/* Where rx_loop hands complete frames: copied into caller frames, or to a
 * zero-copy callback. */
struct rx_sink {
    struct vuf_net_frame *frames;
    vuf_net_rx_fn fn;
    void *opaque;
};

/* Take up to n complete frames into sink, then refill. The count, 0, or
 * -EPROTO as vuf_net_rx_burst() says. */
static int rx_loop(struct vuf_net *net, const struct rx_sink *sink, unsigned n)
{
    unsigned got = 0;
    int r = 0;

    if (net->broken || vuf_virtq_broken(net->rx))
        return -EPROTO;
    while (got < n) {
        r = rx_take(net);
        if (r < 0)
            break;
        if (net->part_n != net->part_want)
            continue;
        if (sink->frames) {
            rx_deliver(net, &sink->frames[got]);
        } else {
            uint32_t total = rx_frame_iov(net);

            sink->fn(sink->opaque, net->iov, net->part_n, total);
            rx_done(net, total);
        }
        got++;
    }
    rx_refill(net);
    if (got)
        return (int)got;
    return r == -EAGAIN ? 0 : r;
}

int vuf_net_rx_burst(struct vuf_net *net, struct vuf_net_frame *frames, unsigned n)
{
    const struct rx_sink sink = {.frames = frames};

    if (!frames && n)
        return -EINVAL;
    return rx_loop(net, &sink, n);
}

int vuf_net_rx_burst_zc(struct vuf_net *net, vuf_net_rx_fn fn, void *opaque, unsigned n)
{
    const struct rx_sink sink = {.fn = fn, .opaque = opaque};

    if (!fn)
        return -EINVAL;
    return rx_loop(net, &sink, n);
}

/* ------------------------------------------------------------------------ */
/* TX                                                                       */
/* ------------------------------------------------------------------------ */

/* The k-th free slot in the order they are taken: the one returned
 * longest ago first, whose lines the device's core is least likely to
 * still hold (writing them would take them back from it). */
static unsigned tx_peek(const struct vuf_net *net, unsigned k)
{
    unsigned i = net->tx_head + k;

    return net->tx_free[i < net->ntx ? i : i - net->ntx];
}

static void tx_take(struct vuf_net *net)
{
    net->tx_head = net->tx_head + 1 < net->ntx ? net->tx_head + 1 : 0;
    net->tx_nfree--;
}

static void tx_put(struct vuf_net *net, unsigned slot)
{
    unsigned i = net->tx_head + net->tx_nfree;

    net->tx_free[i < net->ntx ? i : i - net->ntx] = slot;
    net->tx_nfree++;
}

int vuf_net_tx_reclaim(struct vuf_net *net)
{
    int n = 0, r;
    void *cookie;

    net->tx_lent = 0;
    while ((r = vuf_virtq_get_used(net->tx, &cookie, NULL)) == 0) {
        tx_put(net, (unsigned)((uintptr_t)cookie - 1));
        n++;
    }
    net->st.tx_done += (uint64_t)n;
    if (r != -EAGAIN && n == 0)
        return r;
    return n;
}

static const uint8_t zero_hdr[VUF_NET_HDR_V1_LEN];

static uint8_t *tx_host(const struct vuf_net *net, unsigned slot)
{
    return net->tx_mem + net->tx_stride * slot + net->lead;
}

/* Make slot (header, then len frame bytes already in place) available. */
static int tx_post(struct vuf_net *net, unsigned slot, uint32_t len)
{
    uint64_t gpa = net->tx_gpa + net->tx_stride * slot + net->lead;
    uint8_t *p = tx_host(net, slot);
    int r;

    /* A zero header stays zero from send to send: compare, and leave the
     * line alone unless it changed. */
    if (memcmp(p, zero_hdr, net->hdr_len) != 0)
        memset(p, 0, net->hdr_len);
    if (net->one_desc) {
        r = vq_add_one(net->tx, gpa, net->hdr_len + len, false, (void *)(uintptr_t)(slot + 1));
    } else {
        struct vuf_virtq_buf b[2] = {
            {.gpa = gpa, .len = net->hdr_len},
            {.gpa = gpa + net->hdr_len, .len = len},
        };

        r = vuf_virtq_add_deferred(net->tx, b, 2, (void *)(uintptr_t)(slot + 1));
    }
    if (r == 0) {
        net->st.tx_frames++;
        net->st.tx_bytes += len;
    }
    return r;
}

/* Publish what was added, and kick unless told not to. */
static void tx_finish(struct vuf_net *net, unsigned sent, unsigned flags)
{
    if (sent > 0 && !(flags & VUF_NET_TX_NO_KICK))
        vuf_virtq_kick(net->tx, 0);
    else
        vuf_virtq_publish(net->tx);
}

int vuf_net_tx_burst(struct vuf_net *net, const struct vuf_net_frame *frames, unsigned n,
                     unsigned flags)
{
    unsigned i;
    int r = 0;

    if (net->broken || vuf_virtq_broken(net->tx))
        return -EPROTO;
    net->tx_lent = 0;
    if (net->tx_nfree < n) {
        r = vuf_net_tx_reclaim(net);
        if (r < 0)
            return r;
    }
    for (i = 0; i < n && net->tx_nfree > 0; i++) {
        unsigned slot = tx_peek(net, 0);

        if (frames[i].len == 0 || frames[i].len > net->tx_max) {
            r = -EMSGSIZE;
            break;
        }
        memcpy(tx_host(net, slot) + net->hdr_len, frames[i].data, frames[i].len);
        r = tx_post(net, slot, frames[i].len);
        if (r < 0)
            break;
        tx_take(net);
    }
    tx_finish(net, i, flags);
    if (i > 0 || r == -ENOSPC || r >= 0)
        return (int)i;
    return r;
}

int vuf_net_tx_slots(struct vuf_net *net, void **data, unsigned n)
{
    unsigned k;
    int r;

    if (net->broken || vuf_virtq_broken(net->tx))
        return -EPROTO;
    if (net->tx_nfree < n) {
        r = vuf_net_tx_reclaim(net);
        if (r < 0)
            return r;
    }
    for (k = 0; k < n && k < net->tx_nfree; k++)
        data[k] = tx_host(net, tx_peek(net, k)) + net->hdr_len;
    net->tx_lent = k;
    return (int)k;
}

int vuf_net_tx_commit(struct vuf_net *net, const uint32_t *lens, unsigned n, unsigned flags)
{
    unsigned i;
    int r = 0;

    if (net->broken || vuf_virtq_broken(net->tx))
        return -EPROTO;
    if (n > net->tx_lent)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        if (lens[i] == 0 || lens[i] > net->tx_max) {
            r = -EMSGSIZE;
            break;
        }
        r = tx_post(net, tx_peek(net, 0), lens[i]);
        if (r < 0)
            break;
        tx_take(net);
    }
    /* What is left of the lent slots moved down by i; lend none. */
    net->tx_lent = 0;
    tx_finish(net, i, flags);
    if (i > 0 || r == -ENOSPC || r >= 0)
        return (int)i;
    return r;
}

int vuf_net_tx_kick(struct vuf_net *net)
{
    return vuf_virtq_kick(net->tx, 0);
}

unsigned vuf_net_tx_inflight(const struct vuf_net *net)
{
    return net->ntx - net->tx_nfree;
}
