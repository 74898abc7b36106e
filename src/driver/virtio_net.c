/* SPDX-License-Identifier: MIT */
/* virtio-net driver for one queue pair (virtio 1.2 §5.1) over two vuf_virtq. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_net.h"

#define BUF_ALIGN 64u

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

    unsigned nrx;
    uint32_t rx_len;
    uint64_t rx_stride, rx_gpa;
    uint8_t *rx_mem;
    unsigned *rx_free; /* stack of buffers neither posted nor held */
    unsigned rx_nfree;
    struct rx_part *part; /* the frame being reassembled */
    unsigned part_n, part_want;

    unsigned ntx;
    uint32_t tx_max;
    uint64_t tx_stride, tx_gpa;
    uint8_t *tx_mem;
    unsigned *tx_free;
    unsigned tx_nfree;

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
    net->tx_nfree = 0;
    for (unsigned i = net->ntx; i-- > 0;)
        net->tx_free[net->tx_nfree++] = i;
    net->part_n = net->part_want = 0;
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
    net->rx_stride = round_up(net->rx_len, BUF_ALIGN);
    net->tx_stride = round_up((uint64_t)net->hdr_len + net->tx_max, BUF_ALIGN);
    net->rx_free = calloc(net->nrx, sizeof(*net->rx_free));
    net->part = calloc(net->nrx, sizeof(*net->part));
    net->tx_free = calloc(net->ntx, sizeof(*net->tx_free));
    mark = vuf_guest_mem_alloc_mark(net->gm);
    r = net->rx_free && net->part && net->tx_free ? alloc_buffers(net) : -ENOMEM;
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
    return net->rx_mem + net->rx_stride * idx;
}

int vuf_net_rx_fill(struct vuf_net *net)
{
    int posted = 0, r = 0;

    if (net->broken || vuf_virtq_broken(net->rx))
        return -EPROTO;
    while (net->rx_nfree > 0) {
        unsigned idx = net->rx_free[net->rx_nfree - 1];
        struct vuf_virtq_buf b = {
            .gpa = net->rx_gpa + net->rx_stride * idx,
            .host = rx_host(net, idx),
            .len = net->rx_len,
            .writable = true,
        };

        /* A device that never writes num_buffers (DPDK 22.11 without
         * MRG_RXBUF) then leaves 0 behind, not an old frame's count. */
        memset(b.host, 0, net->hdr_len);
        r = vuf_virtq_add(net->rx, &b, 1, (void *)(uintptr_t)(idx + 1));
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

static int rx_fault(struct vuf_net *net, const char *what, unsigned v)
{
    vuf_log(VUF_LOG_ERROR, "virtio-net rx queue %u: %s (%u)", vuf_virtq_index(net->rx), what, v);
    net->broken = true;
    return -EPROTO;
}

/* Copy the complete frame in net->part into *f and free its buffers. */
static void rx_deliver(struct vuf_net *net, struct vuf_net_frame *f)
{
    uint32_t room = f->len, total = 0;

    for (unsigned i = 0; i < net->part_n; i++) {
        const struct rx_part *p = &net->part[i];
        /* Only the first buffer carries the header (§5.1.6.4). */
        uint32_t skip = i == 0 ? net->hdr_len : 0, n = p->len - skip;

        if (total < room)
            memcpy((uint8_t *)f->data + total, rx_host(net, p->idx) + skip,
                   n < room - total ? n : room - total);
        total += n;
        net->rx_free[net->rx_nfree++] = p->idx;
    }
    f->len = total;
    net->st.rx_frames++;
    net->st.rx_bytes += total;
    if (net->part_n > 1)
        net->st.rx_merged++;
    if (total > room)
        net->st.rx_truncated++;
    net->part_n = net->part_want = 0;
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
        uint16_t nb;

        if (len < net->hdr_len) {
            net->rx_free[net->rx_nfree++] = idx;
            return rx_fault(net, "used length shorter than the header", len);
        }
        /* Read once: the device is done with a buffer it returned. */
        memcpy(&nb, rx_host(net, idx) + offsetof(struct vuf_net_hdr_v1, num_buffers), 2);
        /* Without MRG_RXBUF num_buffers means nothing to us (and DPDK
         * 22.11 does not write it): one buffer per frame. */
        net->part_want = net->mrg ? nb : 1;
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

int vuf_net_rx_burst(struct vuf_net *net, struct vuf_net_frame *frames, unsigned n)
{
    unsigned got = 0;
    int r = 0;

    if (net->broken || vuf_virtq_broken(net->rx))
        return -EPROTO;
    while (got < n) {
        r = rx_take(net);
        if (r < 0)
            break;
        if (net->part_n == net->part_want)
            rx_deliver(net, &frames[got++]);
    }
    if (!net->broken && !vuf_virtq_broken(net->rx))
        vuf_net_rx_fill(net);
    if (got)
        return (int)got;
    return r == -EAGAIN ? 0 : r;
}

/* ------------------------------------------------------------------------ */
/* TX                                                                       */
/* ------------------------------------------------------------------------ */

int vuf_net_tx_reclaim(struct vuf_net *net)
{
    int n = 0, r;
    void *cookie;

    while ((r = vuf_virtq_get_used(net->tx, &cookie, NULL)) == 0) {
        net->tx_free[net->tx_nfree++] = (unsigned)((uintptr_t)cookie - 1);
        n++;
    }
    net->st.tx_done += (uint64_t)n;
    if (r != -EAGAIN && n == 0)
        return r;
    return n;
}

/* Put frame f into a free slot and make it available: 0 or -errno. */
static int tx_one(struct vuf_net *net, const struct vuf_net_frame *f)
{
    unsigned slot = net->tx_free[net->tx_nfree - 1];
    uint64_t gpa = net->tx_gpa + net->tx_stride * slot;
    uint8_t *p = net->tx_mem + net->tx_stride * slot;
    struct vuf_virtq_buf b[2] = {
        {.gpa = gpa, .host = p, .len = net->hdr_len},
        {.gpa = gpa + net->hdr_len, .host = p + net->hdr_len, .len = f->len},
    };
    int r;

    memset(p, 0, net->hdr_len);
    memcpy(p + net->hdr_len, f->data, f->len);
    if (net->one_desc) {
        b[0].len += f->len;
        r = vuf_virtq_add(net->tx, b, 1, (void *)(uintptr_t)(slot + 1));
    } else {
        r = vuf_virtq_add(net->tx, b, 2, (void *)(uintptr_t)(slot + 1));
    }
    if (r == 0) {
        net->tx_nfree--;
        net->st.tx_frames++;
        net->st.tx_bytes += f->len;
    }
    return r;
}

int vuf_net_tx_burst(struct vuf_net *net, const struct vuf_net_frame *frames, unsigned n,
                     unsigned flags)
{
    unsigned i;
    int r = 0;

    if (net->broken || vuf_virtq_broken(net->tx))
        return -EPROTO;
    if (net->tx_nfree < n) {
        r = vuf_net_tx_reclaim(net);
        if (r < 0)
            return r;
    }
    for (i = 0; i < n && net->tx_nfree > 0; i++) {
        if (frames[i].len == 0 || frames[i].len > net->tx_max) {
            r = -EMSGSIZE;
            break;
        }
        r = tx_one(net, &frames[i]);
        if (r < 0)
            break;
    }
    if (i > 0 && !(flags & VUF_NET_TX_NO_KICK))
        vuf_virtq_kick(net->tx, 0);
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
