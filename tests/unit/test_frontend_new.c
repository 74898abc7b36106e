/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Construction: the request sequence of vuf_frontend_new, feature and
 * queue-count negotiation, refusals.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/breq.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/virtio.h"
#include "fe_fakebe.h"

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

static void test_new_sequence_and_features(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    (void)state;
    fx_begin(&f);
    /* Offer device bits, transport bits, packed rings and protocol bits the
     * front-end does not use. */
    f.be.features = F_PROTO | F_EVENT_IDX | F_VERSION_1 | F_PACKED | BIT(0) | BIT(23) | BIT(24) |
                    BIT(50) | BIT(63);
    f.be.protocol_features |= VUF_PROTO_MASK(LOG_SHMFD) | VUF_PROTO_MASK(STATUS) | BIT(40);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES));
    /* Only the allowed protocol bits are acked. */
    assert_int_equal(be_rec(&f.be, 3).u64, VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) |
                                               VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(STATUS));
    assert_int_equal(vuf_frontend_protocol_features(f.dev),
                     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) |
                         VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(STATUS));
    /* Device-type bits pass, transport bits only from the mask (VERSION_1
     * implied), bit 30 never: it is vhost-user's, not the driver's. */
    assert_int_equal(vuf_device_features(f.dev),
                     F_EVENT_IDX | F_VERSION_1 | BIT(0) | BIT(23) | BIT(50) | BIT(63));
    assert_int_equal(vuf_frontend_acked_features(f.dev), 0);
    assert_false(vuf_frontend_last_sent_features(f.dev, NULL));
    /* Console: 2 queues without MQ, default size 32768. */
    assert_int_equal(vuf_device_num_queues(f.dev), 2);
    assert_int_equal(vuf_device_queue_max_sizes(f.dev)[0], 32768);
    assert_int_equal(vuf_device_queue_max_sizes(f.dev)[1], 32768);
    assert_string_equal(vuf_device_label(f.dev), "vu-console");
    assert_int_equal(vuf_device_type(f.dev), VUF_DEV_CONSOLE);
    assert_true(vuf_device_is_frontend(f.dev));
    /* The driver's acks accumulate and are masked by what is offered; the
     * count of bits dropped is returned (issue 7 §3). */
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX | F_VERSION_1), 0);
    assert_int_equal(vuf_device_ack_features(f.dev, BIT(63)), 0);
    assert_int_equal(vuf_device_ack_features(f.dev, BIT(24) | F_PROTO | F_PACKED), 3);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_EVENT_IDX | F_VERSION_1 | BIT(63));
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* Issue 7 §3: a zeroed config offers a virtio 1.0 device; a legacy one is
 * asked for explicitly; a mask asking for both is refused. */
static void test_version_1_by_default(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev), F_VERSION_1 | BIT(0));
    /* The driver's VERSION_1 ack is kept (it used to be dropped silently). */
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_VERSION_1);
    fx_end(&f);

    cfg.legacy = true;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev), BIT(0));
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1 | BIT(0)), 1);
    assert_int_equal(vuf_frontend_acked_features(f.dev), BIT(0));
    fx_end(&f);

    cfg.base_features_mask = F_VERSION_1;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), -EINVAL);
    expect_none(&f.be, &f.mark); /* refused before anything is sent */
    fx_end(&f);
}

/* Debug lines naming SET_OWNER / GET_FEATURES, by kind. */
static atomic_int owner_lines, owner_sent, owner_recv, features_lines;

static void count_msg_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    if (strstr(msg, "SET_OWNER")) {
        atomic_fetch_add(&owner_lines, 1);
        if (strstr(msg, "main: -> SET_OWNER "))
            atomic_fetch_add(&owner_sent, 1);
        if (strstr(msg, "main: <- SET_OWNER "))
            atomic_fetch_add(&owner_recv, 1);
    }
    if (strstr(msg, "GET_FEATURES") && !strstr(msg, "PROTOCOL"))
        atomic_fetch_add(&features_lines, 1);
}

/*
 * Issue 7 §3: VUF_LOG=debug prints each message once per side, with its
 * direction. Both sides run in this process: SET_OWNER is one line where
 * the front-end sends it and one where the back-end receives it;
 * GET_FEATURES adds the reply's two.
 */
static void test_debug_log_once(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

    (void)state;
    atomic_store(&owner_lines, 0);
    atomic_store(&owner_sent, 0);
    atomic_store(&owner_recv, 0);
    atomic_store(&features_lines, 0);
    vuf_log_set(count_msg_log, NULL, VUF_LOG_DEBUG); /* before any thread */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_end(&f);
    vuf_log_set(getenv("VUF_LOG") ? NULL : quiet_log, NULL,
                getenv("VUF_LOG") ? VUF_LOG_DEBUG : VUF_LOG_ERROR);
    assert_int_equal(atomic_load(&owner_sent), 1);
    assert_int_equal(atomic_load(&owner_recv), 1);
    assert_int_equal(atomic_load(&owner_lines), 2);
    assert_int_equal(atomic_load(&features_lines), 4);
}

static void test_packed_ring_stripped(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1 | F_EVENT_IDX | F_PACKED);

    (void)state;
    fx_begin(&f);
    /* Stripped when the back-end does not offer it (offered otherwise:
     * test_frontend_packed.c). */
    f.be.features = ~0ull & ~F_PACKED;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev),
                     VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | F_VERSION_1 | F_EVENT_IDX);
    assert_int_equal(vuf_device_num_queues(f.dev), 1);
    fx_end(&f);
}

static void test_no_protocol_features(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    (void)state;
    fx_begin(&f);
    f.be.features = F_EVENT_IDX | F_VERSION_1;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES));
    assert_int_equal(vuf_frontend_protocol_features(f.dev), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), 0);

    /* Without bit 30: no SET_VRING_ENABLE, and SET_FEATURES is still sent
     * once though the driver acked no device bit (crosvm skips it when
     * nothing is acked). */
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), R(SET_VRING_NUM),
               R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL), R(SET_VRING_KICK),
               R(SET_VRING_NUM), R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL),
               R(SET_VRING_KICK));
    assert_int_equal(f.be.acked, F_VERSION_1);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(GET_VRING_BASE), R(GET_VRING_BASE));
    /* No REPLY_ACK negotiated: no NEED_REPLY anywhere. */
    for (unsigned i = 0; i < f.mark; i++)
        assert_false(be_rec(&f.be, i).flags & VUF_FLAG_NEED_REPLY);
    fx_end(&f);
}

static void test_queue_max_size(void **state)
{
    static const struct {
        uint16_t in, out;
    } cases[] = {{300, 256}, {0, 32768},     {1, 1},        {256, 256},
                 {255, 128}, {32768, 32768}, {65535, 32768}};

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);

        fx_begin(&f);
        cfg.max_queue_size = cases[i].in;
        assert_int_equal(fx_new(&f, &cfg), 0);
        assert_int_equal(vuf_device_num_queues(f.dev), 2); /* rx, tx: no control queue */
        for (unsigned q = 0; q < 2; q++)
            assert_int_equal(vuf_device_queue_max_sizes(f.dev)[q], cases[i].out);
        fx_end(&f);
    }
}

static void test_backend_req_and_mq(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1);

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(MQ);
    f.be.queue_num = 4;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD), R(GET_QUEUE_NUM));
    assert_int_equal(vuf_device_num_queues(f.dev), 4);
    /* REPLY_ACK is in force after SET_PROTOCOL_FEATURES: our own ack-type
     * requests ask for one. */
    assert_false(be_rec(&f.be, 3).flags & VUF_FLAG_NEED_REPLY);
    assert_true(be_rec(&f.be, 4).flags & VUF_FLAG_NEED_REPLY);
    /* The back-end got a working channel. */
    assert_true(f.be.breq_fd >= 0);
    fx_end(&f);
}

static void test_queue_num_bounds(void **state)
{
    static const struct {
        uint64_t n;
        int r;
    } cases[] = {{0, -EPROTO},
                 {100000, -EPROTO},
                 {VUF_FRONTEND_MAX_QUEUES + 1, -EPROTO},
                 {VUF_FRONTEND_MAX_QUEUES, 0},
                 {1, 0}};

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = cases[i].n;
        assert_int_equal(fx_new(&f, &cfg), cases[i].r);
        if (cases[i].r == 0)
            assert_int_equal(vuf_device_num_queues(f.dev), cases[i].n);
        else
            assert_null(f.dev);
        fx_end(&f);
    }
}

/* Lines of the library log that report a clamped net queue-pair count. */
static atomic_int clamp_lines;

static void count_clamp_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    if (strstr(msg, "queue pairs; using"))
        atomic_fetch_add(&clamp_lines, 1);
}

/*
 * Net with MQ: GET_QUEUE_NUM counts queue pairs. The device has 2 queues
 * per pair, plus the control queue when the back-end offers CTRL_VQ; an
 * answer that does not fit VUF_FRONTEND_MAX_QUEUES is clamped (logged),
 * not refused (DPDK 22.11 answers 128 and offers CTRL_VQ); 0 is refused.
 */
static void test_net_queue_pairs(void **state)
{
    static const struct {
        uint64_t pairs;
        bool ctrl;
        int r;
        unsigned queues;
        bool clamped;
    } cases[] = {
        {1, false, 0, 2, false},       {1, true, 0, 3, false},       {4, false, 0, 8, false},
        {4, true, 0, 9, false},        {127, true, 0, 255, false},   {128, false, 0, 256, false},
        {128, true, 0, 255, true}, /* DPDK 22.11's answer */
        {129, false, 0, 256, true},    {100000, true, 0, 255, true}, {~0ull, false, 0, 256, true},
        {0, false, -EPROTO, 0, false}, {0, true, -EPROTO, 0, false},
    };
    const uint64_t ctrl_vq = BIT(17); /* VIRTIO_NET_F_CTRL_VQ */

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, F_VERSION_1);
        const uint16_t *sizes;
        unsigned pairs = 0;
        int ctrl_index = -2;

        cfg.net_ctrl_vq = true; /* the VMM serves a control queue */
        /* vuf_log_set() only while no other thread uses the library
         * (log.h): before the back-end thread starts, after it is joined. */
        atomic_store(&clamp_lines, 0);
        vuf_log_set(count_clamp_log, NULL, VUF_LOG_DEBUG);
        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = cases[i].pairs;
        if (cases[i].ctrl)
            f.be.features |= ctrl_vq;
        assert_int_equal(fx_new(&f, &cfg), cases[i].r);
        print_message("%llu pairs, CTRL_VQ %s: %d, %u queues\n", (unsigned long long)cases[i].pairs,
                      cases[i].ctrl ? "on" : "off", cases[i].r,
                      f.dev ? vuf_device_num_queues(f.dev) : 0);
        if (cases[i].r == 0) {
            assert_int_equal(vuf_device_num_queues(f.dev), cases[i].queues);
            assert_true(vuf_device_num_queues(f.dev) <= VUF_FRONTEND_MAX_QUEUES);
            /* CTRL_VQ is passed to the driver as offered. */
            assert_int_equal(vuf_device_features(f.dev) & ctrl_vq, cases[i].ctrl ? ctrl_vq : 0);
            assert_int_equal(vuf_frontend_net_layout(f.dev, &pairs, &ctrl_index), 0);
            assert_int_equal(pairs, cases[i].queues / 2);
            assert_int_equal(ctrl_index, cases[i].ctrl ? (int)cases[i].queues - 1 : -1);
            /* One max size per queue, the last one included. */
            sizes = vuf_device_queue_max_sizes(f.dev);
            assert_int_equal(sizes[cases[i].queues - 1], 32768);
        } else {
            assert_null(f.dev);
        }
        assert_int_equal(atomic_load(&clamp_lines), cases[i].clamped ? 1 : 0);
        fx_end(&f);
        vuf_log_set(getenv("VUF_LOG") ? NULL : quiet_log, NULL,
                    getenv("VUF_LOG") ? VUF_LOG_DEBUG : VUF_LOG_ERROR);
    }

    /* Other device types still count queues: 4 is 4 (fs) ... */
    {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_FS, 0);

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = 4;
        f.be.features |= ctrl_vq; /* a device-specific bit of another meaning */
        assert_int_equal(fx_new(&f, &cfg), 0);
        assert_int_equal(vuf_device_num_queues(f.dev), 4);
        fx_end(&f);
    }
    /* ... and without MQ, net has one pair, plus crosvm's ctrl queue when
     * the VMM serves one and the back-end offers CTRL_VQ. */
    for (int with_ctrl = 0; with_ctrl < 2; with_ctrl++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);

        cfg.net_ctrl_vq = with_ctrl;
        fx_begin(&f);
        f.be.queue_num = 64; /* not asked */
        f.be.features |= ctrl_vq;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        assert_int_equal(vuf_device_num_queues(f.dev), with_ctrl ? 3 : 2);
        fx_end(&f);
    }
}

/*
 * A back-end that hangs up while the front-end waits for GET_FEATURES's
 * reply, at three points (conn.h): before the reply (-ECONNRESET), after
 * half of its header (-EBADMSG), in the middle of its payload
 * (-ECONNABORTED). vuf_frontend_new() returns exactly that error,
 * with no device and no fd left behind. The peer reads SET_OWNER and
 * GET_FEATURES first (bytes sent before the first request are refused as
 * unsolicited), then sends part of the reply and stops writing (SHUT_WR):
 * it still takes whatever the front-end sends.
 */
struct cut_reply {
    int fd;
    size_t bytes;
    int read_ok; /* both request headers arrived */
};

static void *cut_reply_main(void *arg)
{
    struct cut_reply *c = arg;
    const uint32_t hdr[3] = {VUF_REQ_GET_FEATURES, VUF_VERSION | VUF_FLAG_REPLY, 8};
    uint8_t reply[20] = {0}, req[2 * VUF_HDR_SIZE];
    size_t got = 0;

    while (got < sizeof(req)) {
        ssize_t n = read(c->fd, req + got, sizeof(req) - got);

        if (n <= 0)
            break;
        got += (size_t)n;
    }
    c->read_ok = got == sizeof(req);
    memcpy(reply, hdr, sizeof(hdr));
    if (c->bytes && write(c->fd, reply, c->bytes) != (ssize_t)c->bytes)
        c->read_ok = 0;
    shutdown(c->fd, SHUT_WR);
    return NULL;
}

static void test_new_hangup_mid_reply(void **state)
{
    static const struct {
        const char *what;
        size_t bytes; /* of the 20-byte reply (header + u64) sent before the hang-up */
        int ret;
    } cases[] = {{"no reply", 0, -ECONNRESET},
                 {"half a header", 6, -EBADMSG},
                 {"header and half the payload", 16, -ECONNABORTED}};

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
        struct vuf_device *dev = NULL;
        struct vuf_conn *c;
        struct cut_reply peer;
        pthread_t t;
        int sv[2], fds0 = tu_count_fds();

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vuf_conn_adopt(sv[0], &c), 0);
        peer = (struct cut_reply){.fd = sv[1], .bytes = cases[i].bytes};
        assert_int_equal(pthread_create(&t, NULL, cut_reply_main, &peer), 0);
        print_message("%s\n", cases[i].what);
        assert_int_equal(vuf_frontend_new(&cfg, c, &dev), cases[i].ret);
        pthread_join(t, NULL);
        assert_true(peer.read_ok);
        assert_null(dev);
        close(sv[1]);
        assert_int_equal(tu_count_fds(), fds0);
    }
}

static void test_new_errors(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(0x7777, 0);

    (void)state;
    /* Unknown device type without MQ: no queue count. */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), -ENOTSUP);
    fx_end(&f);

    /* Unknown type with MQ is fine. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(MQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_string_equal(vuf_device_label(f.dev), "vu-30583");
    fx_end(&f);

    /* The back-end is gone before we start. */
    fx_begin(&f);
    be_kill(&f.be);
    cfg = fx_cfg(VUF_DEV_BLK, 0);
    assert_true(fx_new(&f, &cfg) < 0);
    fx_end(&f);

    /* Bad arguments. */
    assert_int_equal(vuf_frontend_new(NULL, NULL, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_sequence_and_features),
        cmocka_unit_test(test_version_1_by_default),
        cmocka_unit_test(test_debug_log_once),
        cmocka_unit_test(test_packed_ring_stripped),
        cmocka_unit_test(test_no_protocol_features),
        cmocka_unit_test(test_queue_max_size),
        cmocka_unit_test(test_backend_req_and_mq),
        cmocka_unit_test(test_queue_num_bounds),
        cmocka_unit_test(test_net_queue_pairs),
        cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_new_hangup_mid_reply),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
