/* SPDX-License-Identifier: MIT */
/*
 * The virtio-net driver (vuf/virtio_net.h) and the virtqueue set
 * (vuf/virtq_set.h) against a device played by the test on the same guest
 * memory: it pops avail entries, reads or writes the buffers through the
 * descriptors, writes used entries and, where the test says so, signals
 * the call eventfd as a back-end would.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "net_health.h"
#include "testutil.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_net.h"
#include "vuf/virtq.h"
#include "vuf/virtq_set.h"

#define F_V1 VUF_BIT(VUF_VIRTIO_F_VERSION_1)
#define F_EIDX VUF_BIT(VUF_VIRTIO_F_EVENT_IDX)
#define F_MRG VUF_BIT(VUF_NET_F_MRG_RXBUF)
#define QSIZE 16u

static int log_errors;

static void capture_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)msg;
    if (level == VUF_LOG_ERROR)
        __atomic_add_fetch(&log_errors, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------ */
/* The device side of one queue                                             */
/* ------------------------------------------------------------------------ */

struct dq {
    struct vuf_guest_mem *gm;
    struct vuf_virtq_layout l;
    uint16_t last_avail, used_idx;
};

static void dq_init(struct dq *d, struct vuf_virtq *vq)
{
    memset(d, 0, sizeof(*d));
    d->gm = vuf_virtq_guest_mem(vq);
    vuf_virtq_layout(vq, &d->l);
}

/* Next available head, or -1. */
static int dq_pop(struct dq *d)
{
    uint16_t idx = __atomic_load_n(&d->l.avail->idx, __ATOMIC_ACQUIRE);

    if (idx == d->last_avail)
        return -1;
    return d->l.avail->ring[d->last_avail++ % d->l.size];
}

static uint8_t *dq_buf(struct dq *d, unsigned id, uint32_t *len, uint16_t *flags)
{
    struct vuf_vring_desc *desc = &d->l.desc[id];
    uint8_t *p = vuf_guest_mem_to_host(d->gm, desc->addr, desc->len);

    assert_non_null(p);
    *len = desc->len;
    if (flags)
        *flags = desc->flags;
    return p;
}

/* Write a used entry; publish moves used->idx past every entry written. */
static void dq_used(struct dq *d, uint32_t id, uint32_t len, bool publish)
{
    d->l.used->ring[d->used_idx % d->l.size] = (struct vuf_vring_used_elem){id, len};
    d->used_idx++;
    if (publish)
        __atomic_store_n(&d->l.used->idx, d->used_idx, __ATOMIC_RELEASE);
}

static void dq_publish(struct dq *d)
{
    __atomic_store_n(&d->l.used->idx, d->used_idx, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------------ */
/* Fixture: one queue pair and a driver                                     */
/* ------------------------------------------------------------------------ */

struct fx {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *rx, *tx;
    struct vuf_net *net;
    struct dq drx, dtx;
};

static void fx_open(struct fx *f, const struct vuf_net_opts *o)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(vuf_guest_mem_new_simple(0x10000, 4u << 20, &f->gm), 0);
    assert_int_equal(vuf_virtq_new(f->gm, QSIZE, o->features, &f->rx), 0);
    assert_int_equal(vuf_virtq_new(f->gm, QSIZE, o->features, &f->tx), 0);
    assert_int_equal(vuf_net_new(f->rx, f->tx, o, &f->net), 0);
    dq_init(&f->drx, f->rx);
    dq_init(&f->dtx, f->tx);
    log_errors = 0;
}

static void fx_close(struct fx *f)
{
    vuf_net_free(f->net);
    vuf_virtq_free(f->rx);
    vuf_virtq_free(f->tx);
    vuf_guest_mem_free(f->gm);
}

static void fill_frame(uint8_t *p, uint32_t len, unsigned seed)
{
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 13u + seed * 101u + (i >> 8));
}

/* The device receives a frame: one RX buffer with header (num_buffers nb)
 * and the frame. */
static void dev_rx_one(struct fx *f, const uint8_t *frame, uint32_t len, uint16_t nb)
{
    int head = dq_pop(&f->drx);
    uint32_t blen;
    uint16_t flags;
    uint8_t *p;
    unsigned hl = vuf_net_get_hdr_len(f->net);

    assert_true(head >= 0);
    p = dq_buf(&f->drx, (unsigned)head, &blen, &flags);
    assert_int_equal(flags, VUF_VRING_DESC_F_WRITE);
    assert_true(blen >= hl + len);
    memset(p, 0, hl);
    if (hl == VUF_NET_HDR_V1_LEN)
        memcpy(p + 10, &nb, 2);
    memcpy(p + hl, frame, len);
    dq_used(&f->drx, (uint32_t)head, hl + len, true);
}

/* ------------------------------------------------------------------------ */
/* Layout, numbering, config                                                */
/* ------------------------------------------------------------------------ */

static void test_hdr_layout(void **state)
{
    (void)state;
    assert_int_equal(sizeof(struct vuf_net_hdr_v1), 12);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, gso_type), 1);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, hdr_len), 2);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, gso_size), 4);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, csum_start), 6);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, csum_offset), 8);
    assert_int_equal(offsetof(struct vuf_net_hdr_v1, num_buffers), 10);
    assert_int_equal(vuf_net_hdr_len(0), 10);
    assert_int_equal(vuf_net_hdr_len(F_V1), 12);
    assert_int_equal(vuf_net_hdr_len(F_MRG), 12);
    assert_int_equal(vuf_net_hdr_len(VUF_BIT(VUF_NET_F_CSUM) | F_EIDX), 10);
    assert_int_equal(vuf_net_rx_index(0), 0);
    assert_int_equal(vuf_net_tx_index(0), 1);
    assert_int_equal(vuf_net_rx_index(3), 6);
    assert_int_equal(vuf_net_tx_index(3), 7);
    assert_int_equal(vuf_net_ctrl_index(1), 2);
    assert_int_equal(vuf_net_ctrl_index(4), 8);
    /* Every bit number matches the name libvuf prints for it. */
    {
#define NB(name)                \
    {                           \
        VUF_NET_F_##name, #name \
    }
        static const struct {
            unsigned bit;
            const char *name;
        } bits[] = {
            NB(CSUM),        NB(GUEST_CSUM),    NB(CTRL_GUEST_OFFLOADS),
            NB(MTU),         NB(MAC),           NB(GSO),
            NB(GUEST_TSO4),  NB(GUEST_TSO6),    NB(GUEST_ECN),
            NB(GUEST_UFO),   NB(HOST_TSO4),     NB(HOST_TSO6),
            NB(HOST_ECN),    NB(HOST_UFO),      NB(MRG_RXBUF),
            NB(STATUS),      NB(CTRL_VQ),       NB(CTRL_RX),
            NB(CTRL_VLAN),   NB(CTRL_RX_EXTRA), NB(GUEST_ANNOUNCE),
            NB(MQ),          NB(CTRL_MAC_ADDR), NB(DEVICE_STATS),
            NB(HASH_TUNNEL), NB(VQ_NOTF_COAL),  NB(NOTF_COAL),
            NB(GUEST_USO4),  NB(GUEST_USO6),    NB(HOST_USO),
            NB(HASH_REPORT), NB(GUEST_HDRLEN),  NB(RSS),
            NB(RSC_EXT),     NB(STANDBY),       NB(SPEED_DUPLEX),
        };
#undef NB
        for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
            const char *nm = vuf_virtio_feature_name(VUF_DEV_NET, bits[i].bit);

            if (!nm || strcmp(nm, bits[i].name) != 0)
                fail_msg("bit %u: VUF_NET_F_%s, named %s", bits[i].bit, bits[i].name,
                         nm ? nm : "(none)");
        }
    }
}

static void test_config_decode(void **state)
{
    uint8_t b[VUF_NET_CFG_SIZE] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55, /* mac */
                                   0x01, 0x00,                         /* status */
                                   0x04, 0x00,                         /* pairs */
                                   0xdc, 0x05,                         /* mtu 1500 */
                                   0x10, 0x27, 0x00, 0x00,             /* 10000 Mbit/s */
                                   0x01,                               /* full duplex */
                                   40,   0x80, 0x00,                   /* rss */
                                   0x3f, 0x00, 0x00, 0x00};
    uint64_t all = VUF_BIT(VUF_NET_F_MAC) | VUF_BIT(VUF_NET_F_STATUS) | VUF_BIT(VUF_NET_F_MQ) |
                   VUF_BIT(VUF_NET_F_MTU) | VUF_BIT(VUF_NET_F_SPEED_DUPLEX) |
                   VUF_BIT(VUF_NET_F_RSS);
    struct vuf_net_config c;

    (void)state;
    assert_int_equal(vuf_net_config_decode(b, sizeof(b), all, &c), 0);
    assert_int_equal(c.valid, 0x7f);
    assert_memory_equal(c.mac, b, 6);
    assert_int_equal(c.status, VUF_NET_S_LINK_UP);
    assert_int_equal(c.max_virtqueue_pairs, 4);
    assert_int_equal(c.mtu, 1500);
    assert_int_equal(c.speed, 10000);
    assert_int_equal(c.duplex, 1);
    assert_int_equal(c.rss_max_key_size, 40);
    assert_int_equal(c.rss_max_indirection_table_length, 128);
    assert_int_equal(c.supported_hash_types, 0x3f);

    /* Without the feature a field is not there, whatever the bytes say. */
    assert_int_equal(vuf_net_config_decode(b, sizeof(b), VUF_BIT(VUF_NET_F_STATUS), &c), 0);
    assert_int_equal(c.valid, VUF_NET_CFG_HAS_STATUS);
    assert_int_equal(c.mac[0], 0);
    assert_int_equal(c.max_virtqueue_pairs, 0);
    /* A short config gives the fields that fit wholly. */
    assert_int_equal(vuf_net_config_decode(b, 9, all, &c), 0);
    assert_int_equal(c.valid, VUF_NET_CFG_HAS_MAC | VUF_NET_CFG_HAS_STATUS);
    assert_int_equal(vuf_net_config_decode(b, 12, all, &c), 0);
    assert_int_equal(c.valid, 0x0f);
    assert_int_equal(vuf_net_config_decode(b, 16, all, &c), 0);
    assert_int_equal(c.valid, 0x0f); /* duplex at byte 16 missing */
    /* RSS alone gives max_virtqueue_pairs too. */
    assert_int_equal(vuf_net_config_decode(b, sizeof(b), VUF_BIT(VUF_NET_F_RSS), &c), 0);
    assert_int_equal(c.valid, VUF_NET_CFG_HAS_MAX_VQ_PAIRS | VUF_NET_CFG_HAS_RSS |
                                  VUF_NET_CFG_HAS_HASH_TYPES);
    assert_int_equal(c.max_virtqueue_pairs, 4);
    /* HASH_REPORT alone gives the hash types. */
    assert_int_equal(vuf_net_config_decode(b, sizeof(b), VUF_BIT(VUF_NET_F_HASH_REPORT), &c), 0);
    assert_int_equal(c.valid, VUF_NET_CFG_HAS_HASH_TYPES);
    assert_int_equal(vuf_net_config_decode(NULL, 0, all, &c), 0);
    assert_int_equal(c.valid, 0);
    assert_int_equal(vuf_net_config_decode(NULL, 4, all, &c), -EINVAL);
    assert_int_equal(vuf_net_config_decode(b, 4, all, NULL), -EINVAL);
}

static void test_new_rejects(void **state)
{
    struct vuf_guest_mem *gm, *gm2;
    struct vuf_virtq *rx, *tx, *other;
    struct vuf_net *net = NULL;
    struct vuf_net_opts o = {.features = F_V1};

    (void)state;
    assert_int_equal(vuf_guest_mem_new_simple(0, 1u << 20, &gm), 0);
    assert_int_equal(vuf_guest_mem_new_simple(0, 1u << 20, &gm2), 0);
    assert_int_equal(vuf_virtq_new(gm, QSIZE, F_V1, &rx), 0);
    assert_int_equal(vuf_virtq_new(gm, QSIZE, F_V1, &tx), 0);
    assert_int_equal(vuf_virtq_new(gm2, QSIZE, F_V1, &other), 0);
    assert_int_equal(vuf_net_new(NULL, tx, &o, &net), -EINVAL);
    assert_int_equal(vuf_net_new(rx, rx, &o, &net), -EINVAL);
    assert_int_equal(vuf_net_new(rx, other, &o, &net), -EINVAL);
    o.rx_bufs = QSIZE + 1;
    assert_int_equal(vuf_net_new(rx, tx, &o, &net), -EINVAL);
    o.rx_bufs = 0;
    o.tx_slots = QSIZE + 1;
    assert_int_equal(vuf_net_new(rx, tx, &o, &net), -EINVAL);
    o.tx_slots = 0;
    o.rx_buf_len = 12; /* header only */
    assert_int_equal(vuf_net_new(rx, tx, &o, &net), -EINVAL);
    o.rx_buf_len = 0;
    o.tx_frame_max = VUF_NET_FRAME_MAX + 1;
    assert_int_equal(vuf_net_new(rx, tx, &o, &net), -EINVAL);
    o.tx_frame_max = 0;
    o.rx_buf_len = 60000; /* RX fits 1 MiB, TX then does not */
    o.tx_frame_max = 60000;
    {
        uint64_t mark = vuf_guest_mem_alloc_mark(gm);

        assert_int_equal(vuf_net_new(rx, tx, &o, &net), -ENOMEM);
        assert_int_equal(vuf_guest_mem_alloc_mark(gm), mark); /* given back */
    }
    assert_null(net);
    vuf_virtq_free(rx);
    vuf_virtq_free(tx);
    vuf_virtq_free(other);
    vuf_guest_mem_free(gm);
    vuf_guest_mem_free(gm2);
}

/* ------------------------------------------------------------------------ */
/* TX and RX                                                                */
/* ------------------------------------------------------------------------ */

/* VERSION_1: TX chains are one descriptor (zero header + frame, bytes
 * exact); frames the device receives come back whole through rx_burst with
 * num_buffers left 0 (DPDK) and are refilled. */
static void test_tx_rx_v1(void **state)
{
    struct vuf_net_opts o = {.features = F_V1 | F_EIDX, .rx_bufs = 8, .tx_slots = 8};
    uint8_t frames[3][1518], got[3][1518];
    const uint32_t lens[3] = {60, 1514, 1518};
    struct vuf_net_frame tx[3], rx[4];
    struct vuf_net_stats st;
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    assert_int_equal(vuf_net_get_hdr_len(f.net), 12);
    assert_int_equal(vuf_net_rx_frame_max(f.net), 1518);
    assert_int_equal(vuf_net_rx_fill(f.net), 8);
    assert_int_equal(vuf_virtq_avail_idx(f.rx), 8);
    assert_int_equal(vuf_net_rx_fill(f.net), 0); /* all posted */
    for (unsigned i = 0; i < 3; i++) {
        fill_frame(frames[i], lens[i], i);
        tx[i] = (struct vuf_net_frame){.data = frames[i], .len = lens[i]};
    }
    assert_int_equal(vuf_net_tx_burst(f.net, tx, 3, 0), 3);
    assert_int_equal(vuf_net_tx_inflight(f.net), 3);
    for (unsigned i = 0; i < 3; i++) {
        int head = dq_pop(&f.dtx);
        uint32_t blen;
        uint16_t flags;
        uint8_t *p, zero[12] = {0};

        assert_true(head >= 0);
        p = dq_buf(&f.dtx, (unsigned)head, &blen, &flags);
        assert_int_equal(flags, 0); /* one readable descriptor */
        assert_int_equal(blen, 12 + lens[i]);
        assert_memory_equal(p, zero, 12);
        assert_memory_equal(p + 12, frames[i], lens[i]);
        dq_used(&f.dtx, (uint32_t)head, 0, true);
        dev_rx_one(&f, p + 12, lens[i], 0);
    }
    assert_int_equal(dq_pop(&f.dtx), -1);
    for (unsigned i = 0; i < 4; i++)
        rx[i] = (struct vuf_net_frame){.data = got[i < 3 ? i : 0], .len = sizeof(got[0])};
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 4), 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(rx[i].len, lens[i]);
        assert_memory_equal(got[i], frames[i], lens[i]);
    }
    /* Refilled: 3 more available, all 8 on the ring again. */
    assert_int_equal(vuf_virtq_avail_idx(f.rx), 11);
    assert_int_equal(vuf_virtq_num_inflight(f.rx), 8);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 4), 0);
    assert_int_equal(vuf_net_tx_reclaim(f.net), 3);
    assert_int_equal(vuf_net_tx_inflight(f.net), 0);
    vuf_net_stats(f.net, &st);
    assert_int_equal(st.tx_frames, 3);
    assert_int_equal(st.tx_bytes, 60 + 1514 + 1518);
    assert_int_equal(st.tx_done, 3);
    assert_int_equal(st.rx_frames, 3);
    assert_int_equal(st.rx_bytes, 60 + 1514 + 1518);
    assert_int_equal(st.rx_merged, 0);
    assert_int_equal(log_errors, 0);
    fx_close(&f);
}

/* Issue 14: `vuf net ping` printed "every byte checked" and exited 0 after
 * the device broke the TX queue, as every frame still came back. Its
 * verdict (tools/net_health.c) looks at both queues and the driver. */
static void test_health_after_broken_queue(void **state)
{
    struct vuf_net_opts o = {.features = F_V1, .rx_bufs = 8, .tx_slots = 8};
    uint8_t frame[60], got[2][1518];
    struct vuf_net_frame tx[2], rx[2];
    char why[160] = "";
    struct fx f;

    (void)state;
    for (int lie = 0; lie < 3; lie++) {
        fx_open(&f, &o);
        assert_int_equal(vuf_net_rx_fill(f.net), 8);
        fill_frame(frame, sizeof(frame), 1);
        for (unsigned i = 0; i < 2; i++)
            tx[i] = (struct vuf_net_frame){.data = frame, .len = sizeof(frame)};
        assert_int_equal(vuf_net_tx_burst(f.net, tx, 2, 0), 2);
        /* The device echoes both frames; lie 1: the second TX used entry
         * names a descriptor that was never made available. */
        for (unsigned i = 0; i < 2; i++) {
            int head = dq_pop(&f.dtx);
            uint32_t blen;
            uint8_t *p;

            assert_true(head >= 0);
            p = dq_buf(&f.dtx, (unsigned)head, &blen, NULL);
            dev_rx_one(&f, p + 12, sizeof(frame), 0);
            dq_used(&f.dtx, lie == 1 && i == 1 ? QSIZE + 3 : (uint32_t)head, 0, true);
        }
        for (unsigned i = 0; i < 2; i++)
            rx[i] = (struct vuf_net_frame){.data = got[i], .len = sizeof(got[i])};
        assert_int_equal(vuf_net_rx_burst(f.net, rx, 2), 2); /* every frame back */
        assert_memory_equal(got[1], frame, sizeof(frame));
        if (lie == 2) {
            /* An RX used entry for a buffer the device does not hold. */
            dq_used(&f.drx, QSIZE + 5, 20, true);
            assert_int_equal(vuf_net_rx_burst(f.net, rx, 2), -EPROTO);
        }
        why[0] = 0;
        if (lie == 0) {
            assert_int_equal(net_health(f.net, f.rx, f.tx, why, sizeof(why)), 0);
            assert_string_equal(why, "");
            assert_int_equal(vuf_net_tx_inflight(f.net), 0);
        } else {
            assert_int_equal(net_health(f.net, f.rx, f.tx, why, sizeof(why)), -EPROTO);
            assert_non_null(strstr(why, lie == 1 ? "the TX queue is broken" : "the RX queue"));
        }
        fx_close(&f);
    }
}

/* Legacy (no VERSION_1, no ANY_LAYOUT): a 10-byte header in its own
 * descriptor, then the frame. */
static void test_tx_legacy(void **state)
{
    struct vuf_net_opts o = {.features = 0, .tx_slots = 2};
    uint8_t frame[100], got[100];
    struct vuf_net_frame tx = {.data = frame, .len = 100}, rx = {.data = got, .len = 100};
    struct fx f;
    uint32_t blen;
    uint16_t flags;
    uint8_t *p;
    int head;

    (void)state;
    fx_open(&f, &o);
    assert_int_equal(vuf_net_get_hdr_len(f.net), 10);
    fill_frame(frame, 100, 7);
    assert_int_equal(vuf_net_tx_burst(f.net, &tx, 1, 0), 1);
    head = dq_pop(&f.dtx);
    assert_true(head >= 0);
    p = dq_buf(&f.dtx, (unsigned)head, &blen, &flags);
    assert_int_equal(blen, 10);
    assert_int_equal(flags, VUF_VRING_DESC_F_NEXT);
    p = dq_buf(&f.dtx, f.dtx.l.desc[head].next, &blen, &flags);
    assert_int_equal(blen, 100);
    assert_int_equal(flags, 0);
    assert_memory_equal(p, frame, 100);
    /* RX with the 10-byte header. */
    assert_int_equal(vuf_net_rx_fill(f.net), QSIZE);
    dev_rx_one(&f, frame, 100, 0);
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), 1);
    assert_int_equal(rx.len, 100);
    assert_memory_equal(got, frame, 100);
    fx_close(&f);
}

/* TX limits: bad lengths are -EMSGSIZE when first and stop a burst after
 * the good ones; a full pool sends what fits, and reclaim frees slots. */
static void test_tx_limits(void **state)
{
    struct vuf_net_opts o = {.features = F_V1, .tx_slots = 4, .tx_frame_max = 200};
    uint8_t frame[300] = {0};
    struct vuf_net_frame t[6];
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    for (unsigned i = 0; i < 6; i++)
        t[i] = (struct vuf_net_frame){.data = frame, .len = 64};
    t[0].len = 0;
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, 0), -EMSGSIZE);
    t[0].len = 201;
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, 0), -EMSGSIZE);
    t[0].len = 200;
    t[2].len = 201;
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, 0), 2);
    t[2].len = 64;
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, VUF_NET_TX_NO_KICK), 2); /* pool of 4 */
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, 0), 0);
    assert_int_equal(vuf_net_tx_inflight(f.net), 4);
    /* The device returns two: the next burst reclaims them itself. */
    for (unsigned i = 0; i < 2; i++)
        dq_used(&f.dtx, (uint32_t)dq_pop(&f.dtx), 0, true);
    assert_int_equal(vuf_net_tx_burst(f.net, t, 6, 0), 2);
    assert_int_equal(vuf_net_tx_inflight(f.net), 4);
    fx_close(&f);
}

/* Zero-copy TX: frames built in the slots vuf_net_tx_slots() lends reach
 * the device as written, each frame on a line of its own behind a zero
 * header; misuse of the lent slots is refused without sending anything. */
static void test_tx_zero_copy(void **state)
{
    struct vuf_net_opts o = {.features = F_V1, .tx_slots = 4, .tx_frame_max = 200};
    uint8_t want[3][200];
    const uint32_t lens[3] = {60, 200, 64};
    uint32_t bad[1] = {201};
    void *slot[6];
    struct vuf_net_stats st;
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    assert_int_equal(vuf_net_tx_commit(f.net, lens, 1, 0), -EINVAL); /* nothing lent */
    assert_int_equal(vuf_net_tx_slots(f.net, slot, 6), 4);           /* the pool */
    for (unsigned i = 0; i < 4; i++) {
        assert_int_equal((uintptr_t)slot[i] % 64, 0);
        for (unsigned j = 0; j < i; j++)
            assert_true(slot[i] != slot[j]);
    }
    assert_int_equal(vuf_net_tx_commit(f.net, lens, 5, 0), -EINVAL); /* more than lent */
    bad[0] = 0;
    assert_int_equal(vuf_net_tx_commit(f.net, bad, 1, 0), -EMSGSIZE);
    bad[0] = 201;
    assert_int_equal(vuf_net_tx_slots(f.net, slot, 4), 4);
    assert_int_equal(vuf_net_tx_commit(f.net, bad, 1, 0), -EMSGSIZE);
    assert_int_equal(vuf_net_tx_inflight(f.net), 0);
    assert_int_equal(dq_pop(&f.dtx), -1);

    assert_int_equal(vuf_net_tx_slots(f.net, slot, 3), 3);
    for (unsigned i = 0; i < 3; i++) {
        fill_frame(want[i], lens[i], 10 + i);
        memcpy(slot[i], want[i], lens[i]);
    }
    assert_int_equal(vuf_net_tx_commit(f.net, lens, 3, 0), 3);
    assert_int_equal(vuf_net_tx_commit(f.net, lens, 1, 0), -EINVAL); /* taken back */
    assert_int_equal(vuf_net_tx_inflight(f.net), 3);
    for (unsigned i = 0; i < 3; i++) {
        int head = dq_pop(&f.dtx);
        uint32_t blen;
        uint16_t flags;
        uint8_t *p, zero[12] = {0};

        assert_true(head >= 0);
        p = dq_buf(&f.dtx, (unsigned)head, &blen, &flags);
        assert_int_equal(flags, 0);
        assert_int_equal(blen, 12 + lens[i]);
        assert_ptr_equal(p + 12, slot[i]);
        assert_memory_equal(p, zero, 12);
        assert_memory_equal(p + 12, want[i], lens[i]);
        /* A device that scribbles on the header it read. */
        memset(p, 0xa5, 12);
        dq_used(&f.dtx, (uint32_t)head, 0, true);
    }
    assert_int_equal(dq_pop(&f.dtx), -1);

    /* Lending reclaims; another TX call takes the loan back. */
    assert_int_equal(vuf_net_tx_slots(f.net, slot, 4), 4);
    assert_int_equal(vuf_net_tx_inflight(f.net), 0);
    assert_int_equal(vuf_net_tx_reclaim(f.net), 0);
    assert_int_equal(vuf_net_tx_commit(f.net, lens, 1, 0), -EINVAL);

    /* The scribbled headers go out zero again. */
    assert_int_equal(vuf_net_tx_slots(f.net, slot, 4), 4);
    assert_int_equal(vuf_net_tx_commit(f.net, (const uint32_t[]){60, 60, 60, 60}, 4, 0), 4);
    for (unsigned i = 0; i < 4; i++) {
        uint32_t blen;
        uint8_t *p, zero[12] = {0};
        int head = dq_pop(&f.dtx);

        assert_true(head >= 0);
        p = dq_buf(&f.dtx, (unsigned)head, &blen, NULL);
        assert_int_equal(blen, 72);
        assert_memory_equal(p, zero, 12);
    }
    vuf_net_stats(f.net, &st);
    assert_int_equal(st.tx_frames, 7);
    assert_int_equal(st.tx_bytes, 60 + 200 + 64 + 4 * 60);
    assert_int_equal(st.tx_done, 3);
    assert_int_equal(log_errors, 0);
    fx_close(&f);
}

struct zc_seen {
    unsigned frames;
    unsigned niov[4];
    uint32_t len[4];
    uint8_t data[4][400];
};

static void zc_collect(void *opaque, const struct iovec *iov, unsigned niov, uint32_t len)
{
    struct zc_seen *z = opaque;
    uint32_t at = 0;

    if (z->frames >= 4)
        return;
    z->niov[z->frames] = niov;
    z->len[z->frames] = len;
    for (unsigned i = 0; i < niov; i++) {
        if (at + iov[i].iov_len <= sizeof(z->data[0]))
            memcpy(z->data[z->frames] + at, iov[i].iov_base, iov[i].iov_len);
        at += (uint32_t)iov[i].iov_len;
    }
    z->frames++;
}

/* Zero-copy RX: each frame handed over in place (one piece, or the pieces
 * of a merged frame), the buffers back on the ring afterwards. */
static void test_rx_zero_copy(void **state)
{
    struct vuf_net_opts o = {.features = F_V1 | F_MRG, .rx_bufs = 8, .rx_buf_len = 100};
    const uint32_t part[3] = {88, 100, 62};
    uint8_t a[80], big[250];
    struct zc_seen z = {0};
    uint32_t off = 0;
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_fill(f.net), 8);
    assert_int_equal(vuf_net_rx_burst_zc(f.net, NULL, NULL, 4), -EINVAL);
    assert_int_equal(vuf_net_rx_burst_zc(f.net, zc_collect, &z, 4), 0);
    fill_frame(a, sizeof(a), 1);
    dev_rx_one(&f, a, sizeof(a), 1);
    fill_frame(big, sizeof(big), 2);
    for (unsigned b = 0; b < 3; b++) {
        int head = dq_pop(&f.drx);
        uint32_t blen, skip = b == 0 ? 12 : 0;
        uint8_t *p = dq_buf(&f.drx, (unsigned)head, &blen, NULL);

        if (b == 0) {
            uint16_t nb = 3;

            memset(p, 0, 12);
            memcpy(p + 10, &nb, 2);
        }
        memcpy(p + skip, big + off, part[b]);
        off += part[b];
        dq_used(&f.drx, (uint32_t)head, skip + part[b], true);
    }
    assert_int_equal(vuf_virtq_avail_idx(f.rx), 8);
    assert_int_equal(vuf_net_rx_burst_zc(f.net, zc_collect, &z, 4), 2);
    assert_int_equal(z.frames, 2);
    assert_int_equal(z.niov[0], 1);
    assert_int_equal(z.len[0], sizeof(a));
    assert_memory_equal(z.data[0], a, sizeof(a));
    assert_int_equal(z.niov[1], 3);
    assert_int_equal(z.len[1], sizeof(big));
    assert_memory_equal(z.data[1], big, sizeof(big));
    assert_int_equal(vuf_virtq_avail_idx(f.rx), 12); /* all four refilled */
    assert_int_equal(vuf_virtq_num_inflight(f.rx), 8);
    assert_int_equal(vuf_net_rx_burst_zc(f.net, zc_collect, &z, 4), 0);
    assert_int_equal(log_errors, 0);
    fx_close(&f);

    /* A device that lies (num_buffers 0, then more than posted): nothing
     * reaches the callback, the driver is broken, and says so once. */
    for (uint16_t nb = 0; nb < 2; nb++) {
        struct zc_seen none = {0};

        fx_open(&f, &o);
        assert_int_equal(vuf_net_rx_fill(f.net), 8);
        dev_rx_one(&f, a, sizeof(a), nb ? 9 : 0);
        assert_int_equal(vuf_net_rx_burst_zc(f.net, zc_collect, &none, 4), -EPROTO);
        assert_int_equal(none.frames, 0);
        assert_int_equal(log_errors, 1);
        assert_true(vuf_net_broken(f.net));
        assert_int_equal(vuf_net_rx_burst_zc(f.net, zc_collect, &none, 4), -EPROTO);
        assert_int_equal(log_errors, 1);
        fx_close(&f);
    }
}

/* MRG_RXBUF: a 250-byte frame over three 100-byte buffers (header in the
 * first only) comes back whole, also when its last buffer arrives later;
 * a short caller buffer gets the head and the full length. */
static void test_mrg_reassembly(void **state)
{
    struct vuf_net_opts o = {.features = F_V1 | F_MRG, .rx_bufs = 8, .rx_buf_len = 100};
    uint8_t frame[250], got[300], small[50];
    struct vuf_net_frame rx = {.data = got, .len = sizeof(got)};
    const uint32_t part[3] = {88, 100, 62};
    struct vuf_net_stats st;
    uint32_t off = 0;
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_frame_max(f.net), VUF_NET_FRAME_MAX);
    fill_frame(frame, sizeof(frame), 3);
    assert_int_equal(vuf_net_rx_fill(f.net), 8);
    for (unsigned b = 0; b < 3; b++) {
        int head = dq_pop(&f.drx);
        uint32_t blen, skip = b == 0 ? 12 : 0;
        uint8_t *p = dq_buf(&f.drx, (unsigned)head, &blen, NULL);

        assert_int_equal(blen, 100);
        if (b == 0) {
            uint16_t nb = 3;

            memset(p, 0, 12);
            memcpy(p + 10, &nb, 2);
        }
        memcpy(p + skip, frame + off, part[b]);
        off += part[b];
        /* The first two buffers are published before the third. */
        dq_used(&f.drx, (uint32_t)head, skip + part[b], b != 2);
    }
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), 0); /* held: 2 of 3 */
    assert_int_equal(vuf_virtq_num_inflight(f.rx), 6);    /* not refilled yet */
    dq_publish(&f.drx);
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), 1);
    assert_int_equal(rx.len, 250);
    assert_memory_equal(got, frame, 250);
    assert_int_equal(vuf_virtq_num_inflight(f.rx), 8); /* all three back */

    /* The same frame into 50 bytes of room: cut, full length reported. */
    off = 0;
    for (unsigned b = 0; b < 3; b++) {
        int head = dq_pop(&f.drx);
        uint32_t blen, skip = b == 0 ? 12 : 0;
        uint8_t *p = dq_buf(&f.drx, (unsigned)head, &blen, NULL);

        if (b == 0) {
            uint16_t nb = 3;
            memcpy(p + 10, &nb, 2);
        }
        memcpy(p + skip, frame + off, part[b]);
        off += part[b];
        dq_used(&f.drx, (uint32_t)head, skip + part[b], true);
    }
    rx = (struct vuf_net_frame){.data = small, .len = sizeof(small)};
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), 1);
    assert_int_equal(rx.len, 250);
    assert_memory_equal(small, frame, sizeof(small));
    vuf_net_stats(f.net, &st);
    assert_int_equal(st.rx_frames, 2);
    assert_int_equal(st.rx_merged, 2);
    assert_int_equal(st.rx_truncated, 1);
    assert_int_equal(log_errors, 0);
    fx_close(&f);
}

/* Post 4 MRG buffers and let the device claim num_buffers = nb for a frame
 * in the first; returns what rx_burst says. */
static int mrg_lie(struct fx *f, uint16_t nb)
{
    struct vuf_net_opts o = {.features = F_V1 | F_MRG, .rx_bufs = 4, .rx_buf_len = 100};
    uint8_t got[100], frame[50] = {1};
    struct vuf_net_frame rx = {.data = got, .len = sizeof(got)};

    fx_open(f, &o);
    assert_int_equal(vuf_net_rx_fill(f->net), 4);
    dev_rx_one(f, frame, sizeof(frame), nb);
    return vuf_net_rx_burst(f->net, &rx, 1);
}

static void test_mrg_num_buffers_lies(void **state)
{
    uint8_t got[100], frame[50] = {1};
    struct vuf_net_frame rx = {.data = got, .len = sizeof(got)};
    struct fx f;

    (void)state;
    /* 0 buffers. */
    assert_int_equal(mrg_lie(&f, 0), -EPROTO);
    assert_true(vuf_net_broken(f.net));
    assert_int_equal(log_errors, 1);
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), -EPROTO);
    assert_int_equal(vuf_net_rx_fill(f.net), -EPROTO);
    assert_int_equal(vuf_net_tx_burst(f.net, &rx, 1, 0), -EPROTO);
    /* Reset clears it; the driver works again. */
    vuf_net_reset(f.net, 0);
    dq_init(&f.drx, f.rx);
    assert_false(vuf_net_broken(f.net));
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    dev_rx_one(&f, frame, sizeof(frame), 1);
    assert_int_equal(vuf_net_rx_burst(f.net, &rx, 1), 1);
    assert_int_equal(rx.len, 50);
    fx_close(&f);

    /* 5 with 4 posted: 3 left with the device, 4 more can never come. */
    assert_int_equal(mrg_lie(&f, 5), -EPROTO);
    assert_true(vuf_net_broken(f.net));
    fx_close(&f);
    /* 4 is possible (3 still posted): held, not an error. */
    assert_int_equal(mrg_lie(&f, 4), 0);
    assert_false(vuf_net_broken(f.net));
    fx_close(&f);
    /* 0xffff. */
    assert_int_equal(mrg_lie(&f, 0xffff), -EPROTO);
    fx_close(&f);
}

/* Without MRG_RXBUF num_buffers means nothing: 0 and 7 are both one
 * buffer each. */
static void test_num_buffers_ignored_without_mrg(void **state)
{
    struct vuf_net_opts o = {.features = F_V1, .rx_bufs = 4};
    uint8_t got[2][100], frame[60];
    struct vuf_net_frame rx[2] = {{got[0], 100}, {got[1], 100}};
    struct fx f;

    (void)state;
    fx_open(&f, &o);
    fill_frame(frame, 60, 1);
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    dev_rx_one(&f, frame, 60, 0);
    dev_rx_one(&f, frame, 60, 7);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 2), 2);
    assert_int_equal(rx[0].len, 60);
    assert_int_equal(rx[1].len, 60);
    assert_memory_equal(got[1], frame, 60);
    assert_int_equal(log_errors, 0);
    fx_close(&f);
}

/* The device lies in the used ring: a length beyond the posted buffer, an
 * id out of range, a length shorter than the header. Frames taken before
 * the fault in the same burst are returned first. */
static void test_rx_device_lies(void **state)
{
    struct vuf_net_opts o = {.features = F_V1, .rx_bufs = 4, .rx_buf_len = 200};
    uint8_t got[3][200], frame[60];
    struct vuf_net_frame rx[3] = {{got[0], 200}, {got[1], 200}, {got[2], 200}};
    struct fx f;
    int head;

    (void)state;
    memset(frame, 0x5a, sizeof(frame));
    /* Length 201 > 200 posted, after one good frame. */
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    dev_rx_one(&f, frame, 60, 1);
    head = dq_pop(&f.drx);
    dq_used(&f.drx, (uint32_t)head, 201, true);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 3), 1);
    assert_int_equal(rx[0].len, 60);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 3), -EPROTO);
    assert_true(vuf_virtq_broken(f.rx));
    assert_int_equal(log_errors, 1);
    fx_close(&f);

    /* Id out of range. */
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    dq_pop(&f.drx);
    dq_used(&f.drx, QSIZE + 3, 72, true);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 3), -EPROTO);
    assert_true(vuf_virtq_broken(f.rx));
    fx_close(&f);

    /* Id in range but not a chain in flight (never posted: only 4 are). */
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    dq_used(&f.drx, 9, 72, true);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 3), -EPROTO);
    fx_close(&f);

    /* 11 bytes: shorter than the 12-byte header. */
    fx_open(&f, &o);
    assert_int_equal(vuf_net_rx_fill(f.net), 4);
    head = dq_pop(&f.drx);
    dq_used(&f.drx, (uint32_t)head, 11, true);
    assert_int_equal(vuf_net_rx_burst(f.net, rx, 3), -EPROTO);
    assert_true(vuf_net_broken(f.net));
    assert_false(vuf_virtq_broken(f.rx));
    fx_close(&f);

    /* TX: a length for a device-readable chain is > 0 writable bytes. */
    fx_open(&f, &o);
    assert_int_equal(vuf_net_tx_burst(f.net, rx, 1, 0), 1);
    head = dq_pop(&f.dtx);
    dq_used(&f.dtx, (uint32_t)head, 1, true);
    assert_int_equal(vuf_net_tx_reclaim(f.net), -EPROTO);
    assert_int_equal(vuf_net_tx_burst(f.net, rx, 1, 0), -EPROTO);
    fx_close(&f);
}

/* ------------------------------------------------------------------------ */
/* The virtqueue set                                                        */
/* ------------------------------------------------------------------------ */

struct sfx {
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[3];
    struct dq d[3];
    struct vuf_virtq_set *set;
};

static void sfx_open(struct sfx *s, uint64_t features)
{
    memset(s, 0, sizeof(*s));
    assert_int_equal(vuf_guest_mem_new_simple(0, 1u << 20, &s->gm), 0);
    for (unsigned i = 0; i < 3; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = features};

        assert_int_equal(vuf_virtq_new_opts(s->gm, &o, &s->vq[i]), 0);
        dq_init(&s->d[i], s->vq[i]);
    }
    assert_int_equal(vuf_virtq_set_new(&s->set), 0);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(vuf_virtq_set_add(s->set, s->vq[i]), 0);
}

static void sfx_close(struct sfx *s)
{
    vuf_virtq_set_free(s->set);
    for (unsigned i = 0; i < 3; i++)
        vuf_virtq_free(s->vq[i]);
    vuf_guest_mem_free(s->gm);
}

static void add_one(struct sfx *s, unsigned q)
{
    uint64_t gpa;
    struct vuf_virtq_buf b;

    assert_int_equal(vuf_guest_mem_alloc(s->gm, 64, 64, &gpa), 0);
    b = (struct vuf_virtq_buf){.gpa = gpa, .len = 64, .writable = true};
    assert_int_equal(vuf_virtq_add(s->vq[q], &b, 1, (void *)(uintptr_t)(q + 1)), 0);
}

static void test_set_membership(void **state)
{
    struct sfx s;
    struct vuf_virtq *ready[3];
    int fds0 = tu_count_fds();

    (void)state;
    sfx_open(&s, F_V1);
    /* The memfd, kick and call per queue, the epoll fd. */
    assert_int_equal(tu_count_fds(), fds0 + 1 + 6 + 1);
    assert_int_equal(vuf_virtq_set_count(s.set), 3);
    assert_int_equal(vuf_virtq_set_add(s.set, s.vq[1]), -EEXIST);
    assert_int_equal(vuf_virtq_set_remove(s.set, s.vq[1]), 0);
    assert_int_equal(vuf_virtq_set_remove(s.set, s.vq[1]), -ENOENT);
    assert_int_equal(vuf_virtq_set_count(s.set), 2);
    vuf_virtq_set_call_fd(s.vq[1], -1);
    assert_int_equal(vuf_virtq_set_add(s.set, s.vq[1]), -EBADF);
    assert_int_equal(vuf_virtq_set_wait(s.set, 0, ready, 0), -EINVAL);
    assert_int_equal(vuf_virtq_set_wait(s.set, 0, ready, 3), -ETIMEDOUT);
    /* Order of addition is kept after a removal: 0 then 2. */
    add_one(&s, 2);
    add_one(&s, 0);
    dq_used(&s.d[2], (uint32_t)dq_pop(&s.d[2]), 0, true);
    dq_used(&s.d[0], (uint32_t)dq_pop(&s.d[0]), 0, true);
    assert_int_equal(vuf_virtq_set_wait(s.set, 0, ready, 3), 2);
    assert_ptr_equal(ready[0], s.vq[0]);
    assert_ptr_equal(ready[1], s.vq[2]);
    assert_int_equal(vuf_virtq_set_wait(s.set, 0, ready, 1), 1);
    assert_ptr_equal(ready[0], s.vq[0]);
    sfx_close(&s);
    assert_int_equal(tu_count_fds(), fds0);
    {
        struct vuf_virtq_set *empty;

        assert_int_equal(vuf_virtq_set_new(&empty), 0);
        assert_int_equal(vuf_virtq_set_wait(empty, 0, ready, 3), -EINVAL);
        vuf_virtq_set_free(empty);
    }
}

struct signaller {
    int fd;
    int delay_ms;
    struct dq *d;
};

static void *complete_later(void *arg)
{
    struct signaller *g = arg;

    tu_sleep_ms(g->delay_ms);
    if (g->d)
        dq_used(g->d, (uint32_t)dq_pop(g->d), 0, true);
    assert_int_equal(eventfd_write(g->fd, 1), 0);
    return NULL;
}

/* A sleeping wait wakes on the signalled queue only, reports it, and
 * drains its call fd. */
static void test_set_wakes_on_signal(void **state)
{
    struct sfx s;
    struct vuf_virtq *ready[3];
    struct signaller g;
    pthread_t t;
    eventfd_t v;

    (void)state;
    sfx_open(&s, F_V1 | F_EIDX);
    add_one(&s, 1);
    g = (struct signaller){.fd = vuf_virtq_call_fd(s.vq[1]), .delay_ms = 20, .d = &s.d[1]};
    assert_int_equal(pthread_create(&t, NULL, complete_later, &g), 0);
    assert_int_equal(vuf_virtq_set_wait(s.set, 5000, ready, 3), 1);
    pthread_join(t, NULL);
    assert_ptr_equal(ready[0], s.vq[1]);
    /* Calls were asked for on every queue (used_event = last used). */
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(*vuf_vring_used_event(s.d[i].l.avail, QSIZE), 0);
    /* The counter is either drained by the wait or still 1 (the signal came
     * after the ring was seen); nothing more. */
    if (eventfd_read(vuf_virtq_call_fd(s.vq[1]), &v) == 0)
        assert_int_equal(v, 1);
    sfx_close(&s);
}

/* A signal without a used entry (spurious, or the back-end took the
 * count) wakes the wait, which drains it and sleeps on to the deadline;
 * a back-end that cleared O_NONBLOCK on the shared file cannot make the
 * drain block. */
static void test_set_spurious_signal_peer_blocking(void **state)
{
    struct sfx s;
    struct vuf_virtq *ready[3];
    struct signaller g;
    pthread_t t;
    int fd;

    (void)state;
    sfx_open(&s, F_V1);
    fd = vuf_virtq_call_fd(s.vq[0]);
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
    g = (struct signaller){.fd = fd, .delay_ms = 10, .d = NULL};
    assert_int_equal(pthread_create(&t, NULL, complete_later, &g), 0);
    assert_int_equal(vuf_virtq_set_wait(s.set, 300, ready, 3), -ETIMEDOUT);
    pthread_join(t, NULL);
    /* Drained: a zero-timeout poll shows nothing pending. */
    {
        struct pollfd p = {.fd = fd, .events = POLLIN};

        assert_int_equal(poll(&p, 1, 0), 0);
    }
    sfx_close(&s);
}

/*
 * Lost wake-up race: a device thread completes each request a random short
 * while after it sees it and signals only when the driver asked for a call
 * (EVENT_IDX's used_event, or NO_INTERRUPT without it), as a real back-end
 * does. The driver turns calls off after each completion (as a NAPI-style
 * driver does) and sleeps in vuf_virtq_set_wait over RACE_NQ queues, of
 * which two carry requests: the idle ones widen the window between the
 * wait's first look at a busy queue and its enable_cb. Had the wait slept
 * without looking again after enabling calls, a completion published in
 * that window would never be signalled: the wait would sleep to its
 * 3 s deadline (where it looks again and returns the queue, so the
 * deadline, not the result, shows the lost wake-up). With that re-check
 * removed from vuf_virtq_set_wait this test failed at round 11 (three
 * runs out of three when written); with it, a wait never comes near its
 * deadline.
 */
#define RACE_WAIT_MS 3000
#define RACE_NQ 64u

struct racer {
    struct vuf_virtq **vq;
    struct dq *d;
    unsigned rounds;
    bool event_idx;
};

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *race_device(void *arg)
{
    struct racer *r = arg;
    uint32_t rnd = 12345;

    for (unsigned n = 0; n < r->rounds;) {
        for (unsigned q = 0; q < 2; q++) {
            struct dq *d = &r->d[q];
            int head = dq_pop(d);
            uint16_t old;
            bool call;

            if (head < 0) {
                relax();
                continue;
            }
            rnd = rnd * 1103515245u + 12345u;
            for (unsigned i = (rnd >> 16) % 256; i > 0; i--)
                relax();
            old = d->used_idx;
            dq_used(d, (uint32_t)head, 0, true);
            /* The used idx store before the suppression read (§2.7.10). */
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (r->event_idx)
                call = vuf_vring_need_event(
                    __atomic_load_n(vuf_vring_used_event(d->l.avail, d->l.size), __ATOMIC_RELAXED),
                    d->used_idx, old);
            else
                call = !(__atomic_load_n(&d->l.avail->flags, __ATOMIC_RELAXED) &
                         VUF_VRING_AVAIL_F_NO_INTERRUPT);
            if (call)
                eventfd_write(vuf_virtq_call_fd(r->vq[q]), 1);
            n++;
        }
    }
    return NULL;
}

static void race(bool event_idx, unsigned rounds)
{
    struct vuf_virtq *vq[RACE_NQ];
    struct dq d[2];
    struct racer r = {.vq = vq, .d = d, .rounds = rounds, .event_idx = event_idx};
    struct vuf_guest_mem *gm;
    struct vuf_virtq_set *set;
    uint64_t gpa;
    pthread_t t;

    assert_int_equal(vuf_guest_mem_new_simple(0, 4u << 20, &gm), 0);
    assert_int_equal(vuf_virtq_set_new(&set), 0);
    for (unsigned i = 0; i < RACE_NQ; i++) {
        struct vuf_virtq_opts o = {
            .size = QSIZE, .index = i, .features = F_V1 | (event_idx ? F_EIDX : 0)};

        assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq[i]), 0);
        assert_int_equal(vuf_virtq_set_add(set, vq[i]), 0);
    }
    /* Busy: the first and the last in the set. */
    {
        struct vuf_virtq *t0 = vq[1];

        vq[1] = vq[RACE_NQ - 1];
        vq[RACE_NQ - 1] = t0;
    }
    dq_init(&d[0], vq[0]);
    dq_init(&d[1], vq[1]);
    assert_int_equal(vuf_guest_mem_alloc(gm, 64, 64, &gpa), 0);
    assert_int_equal(pthread_create(&t, NULL, race_device, &r), 0);
    for (unsigned n = 0; n < rounds; n++) {
        struct vuf_virtq_buf b = {.gpa = gpa, .len = 64, .writable = true};
        unsigned q = n % 2;
        struct vuf_virtq *ready[2];
        int k;

        vuf_virtq_disable_cb(vq[q]);
        assert_int_equal(vuf_virtq_add(vq[q], &b, 1, (void *)(uintptr_t)1), 0);
        int64_t t0 = tu_now_ms();

        k = vuf_virtq_set_wait(set, RACE_WAIT_MS, ready, 2);
        if (tu_now_ms() - t0 >= RACE_WAIT_MS)
            fail_msg("round %u: the wait ran to its deadline: a lost wake-up", n);
        if (k != 1)
            fail_msg("round %u: wait returned %d", n, k);
        assert_ptr_equal(ready[0], vq[q]);
        assert_int_equal(vuf_virtq_get_used(vq[q], NULL, NULL), 0);
    }
    pthread_join(t, NULL);
    vuf_virtq_set_free(set);
    for (unsigned i = 0; i < RACE_NQ; i++)
        vuf_virtq_free(vq[i]);
    vuf_guest_mem_free(gm);
}

static void test_set_lost_wakeup_race(void **state)
{
    (void)state;
    race(true, 20000);
    race(false, 20000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hdr_layout),
        cmocka_unit_test(test_config_decode),
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_tx_rx_v1),
        cmocka_unit_test(test_health_after_broken_queue),
        cmocka_unit_test(test_tx_legacy),
        cmocka_unit_test(test_tx_limits),
        cmocka_unit_test(test_tx_zero_copy),
        cmocka_unit_test(test_rx_zero_copy),
        cmocka_unit_test(test_mrg_reassembly),
        cmocka_unit_test(test_mrg_num_buffers_lies),
        cmocka_unit_test(test_num_buffers_ignored_without_mrg),
        cmocka_unit_test(test_rx_device_lies),
        cmocka_unit_test(test_set_membership),
        cmocka_unit_test(test_set_wakes_on_signal),
        cmocka_unit_test(test_set_spurious_signal_peer_blocking),
        cmocka_unit_test(test_set_lost_wakeup_race),
    };

    vuf_log_set(capture_log, NULL, VUF_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
