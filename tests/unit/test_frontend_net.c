/* SPDX-License-Identifier: MIT */
/*
 * The front-end device as a virtio-net device (issue 7 §2, VMM side),
 * against the in-test back-end of tests/lib/fe_fakebe.c: the queue layout,
 * a feature set without the control queue by default, the config space the
 * device builds without CONFIG, and NET_SET_MTU / SEND_RARP through the
 * device.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/virtio.h"
#include "fe_fakebe.h"

#define NB(n) BIT(VUF_NET_F_##n)
/* What a QEMU-minded back-end (DPDK) offers: the control queue and what
 * needs it, plus datapath bits. */
#define BE_NET                                                                                   \
    (NB(CSUM) | NB(MRG_RXBUF) | NB(CTRL_VQ) | NB(CTRL_RX) | NB(CTRL_VLAN) | NB(GUEST_ANNOUNCE) | \
     NB(MQ) | NB(CTRL_MAC_ADDR) | NB(RSS) | NB(CTRL_GUEST_OFFLOADS))

static const uint8_t mac0[6] = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef};

static void start(struct fx *f, struct vuf_frontend_config *cfg, uint64_t net_bits, uint64_t pf)
{
    fx_begin(f);
    f->be.features |= net_bits;
    f->be.protocol_features = VUF_PROTO_MASK(REPLY_ACK) | pf; /* CONFIG only when asked */
    f->be.queue_num = 4;                                      /* pairs, with MQ */
    assert_int_equal(fx_new(f, cfg), 0);
    expect_new(f);
}

/* (b) By default the device never offers CTRL_VQ or a bit that needs it,
 * and has no control queue; cfg.net_ctrl_vq lets them through. (a) The
 * layout says so. */
static void test_ctrl_vq_stripped_by_default(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);
    unsigned pairs = 0;
    int ctrl = -2;

    (void)state;
    start(&f, &cfg, BE_NET, VUF_PROTO_MASK(MQ));
    assert_int_equal(vuf_device_features(f.dev) & VUF_NET_CTRL_VQ_FEATURES_MASK, 0);
    assert_int_equal(vuf_device_features(f.dev) & (NB(CSUM) | NB(MRG_RXBUF) | F_VERSION_1),
                     NB(CSUM) | NB(MRG_RXBUF) | F_VERSION_1);
    assert_int_equal(vuf_device_num_queues(f.dev), 8);
    assert_int_equal(vuf_frontend_net_layout(f.dev, &pairs, &ctrl), 0);
    assert_int_equal(pairs, 4);
    assert_int_equal(ctrl, -1);
    /* A driver that acks them anyway gets them dropped and counted. */
    assert_int_equal(vuf_device_ack_features(f.dev, NB(CTRL_VQ) | NB(MQ) | NB(CSUM)), 2);
    assert_int_equal(vuf_frontend_acked_features(f.dev), NB(CSUM));
    fx_end(&f);

    cfg.net_ctrl_vq = true;
    start(&f, &cfg, BE_NET, VUF_PROTO_MASK(MQ));
    assert_int_equal(vuf_device_features(f.dev) & VUF_NET_CTRL_VQ_FEATURES_MASK,
                     BE_NET & VUF_NET_CTRL_VQ_FEATURES_MASK);
    assert_int_equal(vuf_device_num_queues(f.dev), 9);
    assert_int_equal(vuf_frontend_net_layout(f.dev, &pairs, &ctrl), 0);
    assert_int_equal(pairs, 4);
    assert_int_equal(ctrl, 8);
    fx_end(&f);
}

static void test_layout_refusals(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);
    unsigned pairs = 77;

    (void)state;
    start(&f, &cfg, 0, 0);
    assert_int_equal(vuf_frontend_net_layout(f.dev, &pairs, NULL), -ENOTSUP);
    assert_int_equal(pairs, 77);
    assert_int_equal(vuf_frontend_net_set_mtu(f.dev, 1500), -ENOTSUP);
    assert_int_equal(vuf_frontend_send_rarp(f.dev, mac0), -ENOTSUP);
    assert_int_equal(vuf_frontend_net_layout(NULL, &pairs, NULL), -EINVAL);
    assert_int_equal(vuf_frontend_net_set_mtu(NULL, 1500), -EINVAL);
    assert_int_equal(vuf_frontend_send_rarp(NULL, mac0), -EINVAL);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* (c) Without CONFIG the device builds mac, status, max_virtqueue_pairs and
 * mtu from its config, offers MAC/STATUS/MTU as that config says, sends no
 * GET_CONFIG, and keeps the bits the back-end lacks out of SET_FEATURES. */
static void test_local_config(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);
    uint8_t c[16], want[16] = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 1, 0, 4, 0, 0x28, 0x23};
    uint16_t mtu = 0;

    (void)state;
    memcpy(cfg.net_mac, mac0, 6);
    cfg.net_mtu = 9000; /* 0x2328 */
    start(&f, &cfg, NB(MTU) | NB(CSUM), VUF_PROTO_MASK(MQ));
    assert_int_equal(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIG), 0);
    assert_int_equal(vuf_device_features(f.dev) & (NB(MAC) | NB(STATUS) | NB(MTU)),
                     NB(MAC) | NB(STATUS) | NB(MTU));
    memset(c, 0xee, sizeof(c));
    assert_int_equal(vuf_device_read_config(f.dev, 0, c, 12), 0);
    assert_memory_equal(c, want, 12);
    assert_int_equal(vuf_device_read_config(f.dev, VUF_NET_CFG_MTU, &mtu, 2), 0);
    assert_int_equal(mtu, 9000);
    /* Past the 12-byte space: refused, the buffer untouched (issue 14). */
    memset(c, 0xee, sizeof(c));
    assert_int_equal(vuf_device_read_config(f.dev, 0, c, sizeof(c)), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 100, c, 4), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 10, c, 4), -EINVAL);
    assert_int_equal(c[0], 0xee);
    assert_int_equal(vuf_device_write_config(f.dev, 0, mac0, 6), -ENOTSUP);
    expect_none(&f.be, &f.mark);

    /* SET_FEATURES carries only what the back-end offers (MTU, CSUM). */
    tu_ack_features(f.dev, 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | NB(MTU) | NB(CSUM));
    fx_end(&f);

    /* No mac, no mtu, link down: MAC and MTU are not offered even though
     * the back-end offers them (it has no config space to back them). */
    cfg = fx_cfg(VUF_DEV_NET, 0);
    cfg.net_link_down = true;
    start(&f, &cfg, NB(MTU) | NB(MAC), 0);
    assert_int_equal(vuf_device_features(f.dev) & (NB(MAC) | NB(STATUS) | NB(MTU)), NB(STATUS));
    assert_int_equal(vuf_device_read_config(f.dev, 0, c, VUF_NET_CFG_SPEED), 0);
    assert_memory_equal(c, "\0\0\0\0\0\0\0\0\1\0\0\0", VUF_NET_CFG_SPEED);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* With CONFIG the back-end's config space and config bits are used. */
static void test_backend_config(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);
    uint8_t c[6];

    (void)state;
    memcpy(cfg.net_mac, mac0, 6);
    start(&f, &cfg, NB(MAC), VUF_PROTO_MASK(CONFIG));
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIG));
    assert_int_equal(vuf_device_features(f.dev) & (NB(MAC) | NB(STATUS) | NB(MTU)), NB(MAC));
    assert_int_equal(vuf_device_read_config(f.dev, 0, c, 6), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_memory_equal(c, f.be.config, 6);
    fx_end(&f);
}

/* (d) NET_SET_MTU and SEND_RARP reach the back-end through the device when
 * negotiated, and are refused with nothing sent when not. */
static void test_mtu_and_rarp(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);
    struct rec r;

    (void)state;
    start(&f, &cfg, 0, VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(RARP));
    assert_int_equal(vuf_frontend_protocol_features(f.dev) &
                         (VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(RARP)),
                     VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(RARP));
    assert_int_equal(vuf_frontend_net_set_mtu(f.dev, 1500), 0);
    expect_seq(&f.be, &f.mark, R(NET_SET_MTU));
    assert_int_equal(be_rec(&f.be, f.mark - 1).u64, 1500);
    assert_int_equal(vuf_frontend_send_rarp(f.dev, mac0), 0);
    expect_seq(&f.be, &f.mark, R(SEND_RARP));
    r = be_rec(&f.be, f.mark - 1);
    assert_memory_equal(&r.u64, mac0, 6);
    assert_int_equal(vuf_frontend_net_set_mtu(f.dev, 0), -EINVAL);
    assert_int_equal(vuf_frontend_send_rarp(f.dev, NULL), -EINVAL);
    expect_none(&f.be, &f.mark);
    fx_end(&f);

    start(&f, &cfg, 0, 0);
    assert_int_equal(vuf_frontend_net_set_mtu(f.dev, 1500), -ENOTSUP);
    assert_int_equal(vuf_frontend_send_rarp(f.dev, mac0), -ENOTSUP);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctrl_vq_stripped_by_default),
        cmocka_unit_test(test_layout_refusals),
        cmocka_unit_test(test_local_config),
        cmocka_unit_test(test_backend_config),
        cmocka_unit_test(test_mtu_and_rarp),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
