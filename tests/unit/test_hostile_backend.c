/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against a hostile or buggy back-end.
 *
 * The back-end here is scripted at the message level: a thread reads each
 * request from the raw main socket and either gives a sane default answer
 * or lets the test's hook misbehave (lie, stall, dribble, hang up, attach
 * fds, answer twice). The back-end request channel is driven from the test
 * thread with raw vuf_conn sends. For every case the front-end must return
 * an error (or a correct result), never crash or hang, and leave no fd,
 * thread or mapping behind once the device is destroyed.
 *
 * No cmocka assertion runs on the back-end thread (cmocka's longjmp is not
 * thread-safe): the thread only records, the test thread checks.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"

#include "hostile_harness.h"

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

static void test_every_bit_set(void **state)
{
    struct fx f;

    (void)state;
    fx_begin(&f);
    f.hb.features = ~0ull;
    f.hb.protocol_features = ~0ull;
    f.hb.queue_num = 3;
    assert_int_equal(fx_new(&f), 0);
    /* Only what we can use is kept: no packed rings, no unknown PF. */
    assert_int_equal(vuf_device_features(f.dev) & BIT(VUF_VIRTIO_F_RING_PACKED), 0);
    assert_int_equal(vuf_frontend_protocol_features(f.dev) &
                         ~(VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) |
                           VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(CONFIG) |
                           VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(SHMEM) |
                           VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(RESET_DEVICE)),
                     0);
    assert_int_equal(vuf_device_num_queues(f.dev), 3);
    fx_end(&f);
}

static void test_queue_num_extremes(void **state)
{
    const uint64_t bad[] = {0, 257, 1ull << 32, ~0ull};

    (void)state;
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fx f;

        fx_begin(&f);
        f.hb.protocol_features |= VUF_PROTO_MASK(MQ);
        f.hb.queue_num = bad[i];
        assert_int_equal(fx_new(&f), -EPROTO);
        assert_null(f.dev);
        fx_end(&f);
    }
}

/* Replies that break the shape: each is refused, with any fds closed. */
static int shape_case;
static enum hb_act hook_bad_shape(struct hb *hb, struct vuf_msg *req)
{
    int fds[2];
    uint64_t v = hb->features;

    if (req->hdr.request != VUF_REQ_GET_FEATURES)
        return HB_DEFAULT;
    switch (shape_case) {
    case 0: /* an fd riding along */
        fds[0] = eventfd(0, EFD_CLOEXEC);
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY, &v, 8, fds, 1);
        close(fds[0]);
        break;
    case 1: /* 8 fds */
        fds[0] = eventfd(0, EFD_CLOEXEC);
        {
            int eight[8];

            for (int i = 0; i < 8; i++)
                eight[i] = fds[0];
            tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY, &v, 8, eight, 8);
        }
        close(fds[0]);
        break;
    case 2: /* answer for another request */
        raw_reply_u64(hb->conn, VUF_REQ_GET_PROTOCOL_FEATURES, v);
        break;
    case 3: /* a request instead of a reply */
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REQ, &v, 8, NULL, 0);
        break;
    case 4: /* short payload */
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY, &v, 4, NULL, 0);
        break;
    case 5: /* oversized header size: the stream is dead */
    {
        uint8_t hdr[VUF_HDR_SIZE];
        struct vuf_hdr h = {.request = VUF_REQ_GET_FEATURES, .flags = REPLY, .size = 0xffffffffu};

        vuf_hdr_encode(hdr, &h);
        if (send(vuf_conn_fd(hb->conn), hdr, sizeof(hdr), MSG_NOSIGNAL) < 0)
            break;
    } break;
    case 6: /* header only, then silence: a timeout */
    {
        uint8_t hdr[VUF_HDR_SIZE];
        struct vuf_hdr h = {.request = VUF_REQ_GET_FEATURES, .flags = REPLY, .size = 8};

        vuf_hdr_encode(hdr, &h);
        if (send(vuf_conn_fd(hb->conn), hdr, 5, MSG_NOSIGNAL) < 0)
            break;
    } break;
    case 7: /* NEED_REPLY on a reply */
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY | VUF_FLAG_NEED_REPLY, &v, 8, NULL, 0);
        break;
    default: /* hang up instead of answering */
        return HB_HANGUP;
    }
    return HB_DONE;
}

static void test_new_bad_replies(void **state)
{
    /* Per shape_case: a broken reply is -EPROTO; a size the front-end
     * will not read is -EMSGSIZE; half a header then silence runs into
     * the timeout; a hang-up instead of the answer is -ECONNRESET. */
    static const int want[] = {-EPROTO,   -EPROTO,    -EPROTO, -EPROTO,    -EPROTO,
                               -EMSGSIZE, -ETIMEDOUT, -EPROTO, -ECONNRESET};

    (void)state;
    for (shape_case = 0; shape_case <= 8; shape_case++) {
        struct fx f;
        struct vuf_conn *c;
        int r;
        int64_t t0;

        fx_begin(&f);
        f.hb.hook = hook_bad_shape;
        c = f.fe_conn;
        vuf_conn_set_timeout(c, 300);
        t0 = tu_now_ms();
        r = fx_new(&f);
        if (r != want[shape_case])
            fail_msg("case %d: %d, expected %d", shape_case, r, want[shape_case]);
        assert_true(tu_now_ms() - t0 < 3000);
        assert_null(f.dev);
        fx_end(&f);
    }
}

/* The back-end hangs up at the k-th request of the constructor. */
static atomic_int hang_at;
static enum hb_act hook_hang_at(struct hb *hb, struct vuf_msg *req)
{
    (void)req;
    return atomic_load(&hb->nreq) == atomic_load(&hang_at) ? HB_HANGUP : HB_DEFAULT;
}

static void test_new_hangup_each_step(void **state)
{
    (void)state;
    for (int k = 1; k <= 6; k++) {
        struct fx f;

        fx_begin(&f);
        f.hb.protocol_features |= VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(BACKEND_REQ);
        atomic_store(&hang_at, k);
        f.hb.hook = hook_hang_at;
        /* The hang-up comes instead of an answer, between messages. */
        assert_int_equal(fx_new(&f), -ECONNRESET);
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* Config                                                                   */
/* ------------------------------------------------------------------------ */

static int cfg_case;
static enum hb_act hook_bad_config(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_config cfg = req->payload.config;
    int fd;

    if (req->hdr.request != VUF_REQ_GET_CONFIG)
        return HB_DEFAULT;
    memset(cfg.region, 0xab, sizeof(cfg.region));
    switch (cfg_case) {
    case 0: /* larger than asked */
        cfg.size += 4;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        break;
    case 1: /* smaller */
        cfg.size -= 1;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        break;
    case 2: /* size field disagrees with the message size */
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size + 4,
                    NULL, 0);
        break;
    case 3: /* fds attached */
        fd = eventfd(0, EFD_CLOEXEC);
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, &fd,
                    1);
        close(fd);
        break;
    case 4: /* bogus size field, larger than any config */
        cfg.size = 0xffffffffu;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + 8, NULL, 0);
        break;
    case 5: /* only the header */
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, 4, NULL, 0);
        break;
    default: /* offset of the window (we ask from 0) */
        cfg.offset = 7;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        break;
    }
    return HB_DONE;
}

static void test_config_bad_replies(void **state)
{
    struct fx f;
    uint8_t buf[16];

    (void)state;
    fx_begin(&f);
    f.hb.hook = hook_bad_config;
    assert_int_equal(fx_new(&f), 0);
    for (cfg_case = 0; cfg_case <= 6; cfg_case++) {
        memset(buf, 0xee, sizeof(buf));
        assert_int_equal(vuf_device_read_config(f.dev, 4, buf, 8), -EPROTO);
        for (unsigned i = 0; i < sizeof(buf); i++)
            assert_int_equal(buf[i], 0xee);
    }
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* A reply that does not belong to the request                              */
/* ------------------------------------------------------------------------ */

/* Between requests the back-end pushes a GET_CONFIG "reply" nobody asked
 * for. The next GET_CONFIG must not take it as its answer. */
static void test_unsolicited_reply_not_misattributed(void **state)
{
    struct fx f;
    struct vuf_config bogus;
    uint8_t buf[8];
    int r;

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f), 0);
    hb_stop(&f.hb); /* script the socket by hand from here */
    memset(&bogus, 0, sizeof(bogus));
    bogus.offset = 0;
    bogus.size = 8;
    memset(bogus.region, 0x66, 8);
    assert_int_equal(
        tu_raw_send(f.hb.conn, VUF_REQ_GET_CONFIG, REPLY, &bogus, VUF_CONFIG_HDR_SIZE + 8, NULL, 0),
        0);
    /* A socketpair send is complete when it returns: the bogus reply is
     * already queued at the front-end. */
    hb_start(&f.hb);
    memset(buf, 0, sizeof(buf));
    /* The front-end sees the unasked-for bytes before it sends and gives
     * up on the stream (it cannot tell them from its own answer). */
    r = vuf_device_read_config(f.dev, 0, buf, 8);
    assert_int_equal(r, -EPROTO);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(buf[i], 0);
    /* ... and from then on: the stale reply is never taken later. */
    r = vuf_device_read_config(f.dev, 0, buf, 8);
    assert_int_equal(r, -EPROTO);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(buf[i], 0);
    fx_end(&f);
}

/* The first GET_CONFIG is answered too late (after the front-end gave up);
 * the late answer must not become the answer to the next GET_CONFIG. */
static atomic_int late_n, late_go, late_sent;
static enum hb_act hook_late_config(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_config cfg = req->payload.config;
    int64_t until = tu_now_ms() + 10000;

    if (req->hdr.request != VUF_REQ_GET_CONFIG)
        return HB_DEFAULT;
    if (atomic_fetch_add(&late_n, 1) == 0) {
        /* Answer only once the front-end has given up on this request. */
        while (!atomic_load(&late_go) && tu_now_ms() < until)
            tu_sleep_ms(1);
        memset(cfg.region, 0x66, sizeof(cfg.region)); /* the stale content */
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        atomic_store(&late_sent, 1);
        return HB_DONE;
    }
    return HB_DEFAULT;
}

static void test_late_reply_not_misattributed(void **state)
{
    struct fx f;
    struct vuf_conn *c;
    uint8_t buf[8];
    int r;

    (void)state;
    fx_begin(&f);
    atomic_store(&late_n, 0);
    atomic_store(&late_go, 0);
    atomic_store(&late_sent, 0);
    c = f.fe_conn;
    vuf_conn_set_timeout(c, 150);
    f.hb.hook = hook_late_config;
    assert_int_equal(fx_new(&f), 0);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 8), -ETIMEDOUT);
    atomic_store(&late_go, 1);
    while (!atomic_load(&late_sent))
        tu_sleep_ms(1); /* the late reply is now queued */
    memset(buf, 0, sizeof(buf));
    /* A timed-out request leaves the stream position unknown: every
     * later request fails the same way instead of reading the late
     * reply as its own. */
    r = vuf_device_read_config(f.dev, 0, buf, 8);
    assert_int_equal(r, -ETIMEDOUT);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(buf[i], 0);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Slow replies                                                             */
/* ------------------------------------------------------------------------ */

static atomic_int dribble_ms;
static enum hb_act hook_dribble(struct hb *hb, struct vuf_msg *req)
{
    uint8_t buf[VUF_HDR_SIZE + 8];
    struct vuf_hdr h = {.request = VUF_REQ_GET_FEATURES, .flags = REPLY, .size = 8};

    if (req->hdr.request != VUF_REQ_GET_FEATURES)
        return HB_DEFAULT;
    vuf_hdr_encode(buf, &h);
    memcpy(buf + VUF_HDR_SIZE, &hb->features, 8);
    for (unsigned i = 0; i < sizeof(buf); i++) {
        if (send(vuf_conn_fd(hb->conn), buf + i, 1, MSG_NOSIGNAL) != 1)
            break;
        tu_sleep_ms(atomic_load(&dribble_ms));
    }
    return HB_DONE;
}

static void test_dribbled_reply(void **state)
{
    struct fx f;
    int64_t t0;

    (void)state;
    /* 20 one-byte sends, 5 ms apart (100 ms), far inside a 10 s
     * timeout: the reply is put together from the pieces. */
    fx_begin(&f);
    atomic_store(&dribble_ms, 5);
    vuf_conn_set_timeout(f.fe_conn, 10000);
    f.hb.hook = hook_dribble;
    assert_int_equal(fx_new(&f), 0);
    fx_end(&f);

    /* 20 bytes, 150 ms apart (3 s in all), 300 ms for the whole message:
     * each gap is under the timeout, the sum is not. The deadline is per
     * message: a per-read deadline would take the whole reply (0) after
     * 3 s; a slow machine only makes a gap longer, which times out too. */
    fx_begin(&f);
    atomic_store(&dribble_ms, 150);
    vuf_conn_set_timeout(f.fe_conn, 300);
    f.hb.hook = hook_dribble;
    t0 = tu_now_ms();
    assert_int_equal(fx_new(&f), -ETIMEDOUT);
    assert_true(tu_now_ms() - t0 < 2900);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Activate / reset / sleep                                                 */
/* ------------------------------------------------------------------------ */

static void test_hangup_during_activate_each_step(void **state)
{
    (void)state;
    /* new takes 4 requests; activate sends SET_FEATURES, SET_MEM_TABLE and
     * 6 per queue: hang up at each of them. */
    for (int k = 5; k < 5 + 2 + 12; k++) {
        struct fx f;

        fx_begin(&f);
        assert_int_equal(fx_new(&f), 0);
        fx_queues(&f, 2);
        atomic_store(&hang_at, k);
        f.hb.hook = hook_hang_at;
        assert_int_equal(fx_activate(&f), -ECONNRESET);
        assert_false(vuf_frontend_is_active(f.dev));
        assert_int_equal(vuf_device_reset(f.dev), 0);
        /* A failed activation is not a crash. */
        assert_int_equal(atomic_load(&crashes), 0);
        assert_int_equal(tu_threads_settle(f.threads0), f.threads0);
        fx_end(&f);
    }
}

static void test_hangup_during_stop(void **state)
{
    (void)state;
    /* After new (4) and activate (2 + 12): hang up at each request of
     * reset or sleep (SET_VRING_ENABLE(0), GET_VRING_BASE per queue). */
    for (int which = 0; which < 2; which++) {
        for (int k = 19; k <= 22; k++) {
            struct fx f;
            struct vuf_queue back[MAX_Q];
            int r;

            fx_begin(&f);
            assert_int_equal(fx_new(&f), 0);
            fx_queues(&f, 2);
            tu_set_used_idx(f.mem, &f.q[0], 3);
            tu_set_used_idx(f.mem, &f.q[1], 4);
            assert_int_equal(fx_activate(&f), 0);
            atomic_store(&hang_at, k);
            f.hb.hook = hook_hang_at;
            if (which == 0) {
                r = vuf_device_reset(f.dev);
            } else {
                memcpy(back, f.q, sizeof(back));
                r = vuf_device_sleep(f.dev, back, f.nq);
                /* Requests 19, 20: queue 0's SET_VRING_ENABLE(0) and
                 * GET_VRING_BASE; from 21 on, queue 0 got its base (5)
                 * and queue 1 falls back to its used index. */
                assert_int_equal(back[0].next_avail, k >= 21 ? 5 : 3);
                assert_int_equal(back[1].next_avail, 4);
                assert_int_equal(back[1].next_used, 4);
            }
            assert_int_equal(r, -ECONNRESET);
            assert_false(vuf_frontend_is_active(f.dev));
            assert_int_equal(tu_threads_settle(f.threads0), f.threads0);
            fx_end(&f);
        }
    }
}

static int vb_case;
static enum hb_act hook_bad_vring_base(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_vring_state st = req->payload.state;
    int fd;

    if (req->hdr.request != VUF_REQ_GET_VRING_BASE)
        return HB_DEFAULT;
    switch (vb_case) {
    case 0: /* another ring */
        st.index ^= 1;
        st.num = 9;
        tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, NULL, 0);
        break;
    case 1: /* too big */
        st.num = 0x10000;
        tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, NULL, 0);
        break;
    case 2: /* with an fd */
        st.num = 9;
        fd = eventfd(0, EFD_CLOEXEC);
        tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, &fd, 1);
        close(fd);
        break;
    case 3: /* answered twice: the second one is stale for the next ring */
        st.num = 9;
        tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, NULL, 0);
        tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, NULL, 0);
        break;
    default: /* never answered */
        break;
    }
    return HB_DONE;
}

static void test_sleep_bad_vring_base(void **state)
{
    (void)state;
    for (vb_case = 0; vb_case <= 4; vb_case++) {
        struct fx f;
        struct vuf_queue back[MAX_Q];
        int64_t t0;

        fx_begin(&f);
        vuf_conn_set_timeout(f.fe_conn, 300);
        assert_int_equal(fx_new(&f), 0);
        fx_queues(&f, 2);
        tu_set_used_idx(f.mem, &f.q[0], 3);
        tu_set_used_idx(f.mem, &f.q[1], 4);
        assert_int_equal(fx_activate(&f), 0);
        f.hb.hook = hook_bad_vring_base;
        memcpy(back, f.q, sizeof(back));
        t0 = tu_now_ms();
        assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), vb_case == 4 ? -ETIMEDOUT : -EPROTO);
        assert_true(tu_now_ms() - t0 < 3000);
        /* Never the lie: ring 0 keeps the good base (9) only when its own
         * answer was sound (case 3, the stale copy hits ring 1); else the
         * used->idx fallback, never ring 1's 9 or the oversized base. */
        assert_int_equal(back[0].next_avail, vb_case == 3 ? 9 : 3);
        assert_int_equal(back[0].next_used, 3);
        /* Ring 1 never gets ring 0's stale answer as its own. */
        assert_int_equal(back[1].next_avail, 4);
        assert_int_equal(back[1].next_used, 4);
        assert_false(vuf_frontend_is_active(f.dev));
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* Snapshot / restore                                                       */
/* ------------------------------------------------------------------------ */

enum st_case {
    ST_SOCKET_SILENT, /* a socket we never write to */
    ST_REGULAR_FILE,  /* a regular file: read to its end */
    ST_DIRECTORY,     /* not readable at all */
    ST_ENDLESS,       /* a socket fed without end: must hit the size cap */
    ST_CHARDEV,       /* /dev/zero: not a pipe, socket or file */
    ST_TWO_FDS,       /* two fds: a protocol error */
    ST_NO_FD,         /* neither NOFD nor an fd */
    ST_FD_AND_NOFD,   /* both */
    ST_ERROR,         /* error code in the reply, with an fd */
    ST_UNKNOWN_BITS,  /* reserved bits */
    ST_HANGUP,        /* hang up instead of answering */
    ST_CHECK_FAILS,   /* CHECK_DEVICE_STATE says no */
    ST_CHECK_HANGUP,  /* hang up at CHECK_DEVICE_STATE */
    ST_WRITE_END,     /* the write end of a pipe (for save) */
    ST_COUNT
};

/* What snapshot and restore return for each case (restore's first, fifth
 * and last cases succeed: the fd is the right kind for a load). A kind of
 * fd the transfer cannot use is -EBADF; larger than the cap, -EFBIG. */
static const int st_snapshot_want[ST_COUNT] = {
    [ST_SOCKET_SILENT] = -ETIMEDOUT,
    [ST_REGULAR_FILE] = -EFBIG,
    [ST_DIRECTORY] = -EBADF,
    [ST_ENDLESS] = -EFBIG,
    [ST_CHARDEV] = -EBADF,
    [ST_TWO_FDS] = -EPROTO,
    [ST_NO_FD] = -EPROTO,
    [ST_FD_AND_NOFD] = -EPROTO,
    [ST_ERROR] = -EIO,
    [ST_UNKNOWN_BITS] = -EPROTO,
    [ST_HANGUP] = -ECONNRESET,
    [ST_CHECK_FAILS] = -EIO,
    [ST_CHECK_HANGUP] = -ECONNRESET,
    [ST_WRITE_END] = -EBADF,
};
static const int st_restore_want[ST_COUNT] = {
    [ST_SOCKET_SILENT] = 0,
    [ST_REGULAR_FILE] = -EBADF,
    [ST_DIRECTORY] = -EBADF,
    [ST_ENDLESS] = 0,
    [ST_CHARDEV] = -EBADF,
    [ST_TWO_FDS] = -EPROTO,
    [ST_NO_FD] = -EPROTO,
    [ST_FD_AND_NOFD] = -EPROTO,
    [ST_ERROR] = -EIO,
    [ST_UNKNOWN_BITS] = -EPROTO,
    [ST_HANGUP] = -ECONNRESET,
    [ST_CHECK_FAILS] = -EIO,
    [ST_CHECK_HANGUP] = -ECONNRESET,
    [ST_WRITE_END] = 0,
};

static int spew_fd = -1;
static atomic_int spew_stop;
static pthread_t spew_thread;
static void *spew_main(void *arg)
{
    static char junk[65536];

    (void)arg;
    while (!atomic_load(&spew_stop))
        if (send(spew_fd, junk, sizeof(junk), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
            break;
    return NULL;
}

static void spew_end(void)
{
    if (spew_fd < 0)
        return;
    atomic_store(&spew_stop, 1);
    pthread_join(spew_thread, NULL);
    close(spew_fd);
    spew_fd = -1;
}

static int st_case;
static enum hb_act hook_state(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_conn *c = hb->conn;
    int fds[2] = {-1, -1}, sv[2];
    uint64_t v = 0;
    unsigned n = 1;

    if (req->hdr.request == VUF_REQ_CHECK_DEVICE_STATE) {
        if (st_case == ST_CHECK_FAILS) {
            raw_reply_u64(c, VUF_REQ_CHECK_DEVICE_STATE, 1);
            return HB_DONE;
        }
        if (st_case == ST_CHECK_HANGUP)
            return HB_HANGUP;
        return HB_DEFAULT;
    }
    if (req->hdr.request != VUF_REQ_SET_DEVICE_STATE_FD)
        return HB_DEFAULT;
    switch (st_case) {
    case ST_SOCKET_SILENT:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            return HB_HANGUP;
        fds[0] = sv[0];
        hb_keep(hb, sv[1]);
        break;
    case ST_REGULAR_FILE:
        fds[0] = open("/proc/self/exe", O_RDONLY | O_CLOEXEC); /* a few MB */
        break;
    case ST_DIRECTORY:
        fds[0] = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        break;
    case ST_ENDLESS:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            return HB_HANGUP;
        fds[0] = sv[0];
        spew_fd = sv[1];
        atomic_store(&spew_stop, 0);
        pthread_create(&spew_thread, NULL, spew_main, NULL);
        break;
    case ST_CHARDEV:
        fds[0] = open("/dev/zero", O_RDWR | O_CLOEXEC);
        break;
    case ST_TWO_FDS:
        fds[0] = eventfd(0, EFD_CLOEXEC);
        fds[1] = eventfd(0, EFD_CLOEXEC);
        n = 2;
        break;
    case ST_NO_FD:
        n = 0;
        break;
    case ST_FD_AND_NOFD:
        fds[0] = eventfd(0, EFD_CLOEXEC);
        v = VUF_STATE_REPLY_NOFD;
        break;
    case ST_ERROR:
        fds[0] = eventfd(0, EFD_CLOEXEC);
        v = 5;
        break;
    case ST_UNKNOWN_BITS:
        fds[0] = eventfd(0, EFD_CLOEXEC);
        v = 1ull << 40;
        break;
    case ST_HANGUP:
        return HB_HANGUP;
    case ST_WRITE_END:
        if (pipe2(sv, O_CLOEXEC) < 0)
            return HB_HANGUP;
        fds[0] = sv[1];
        hb_keep(hb, sv[0]);
        break;
    default:
        return HB_DEFAULT;
    }
    tu_raw_send(c, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, fds, n);
    for (unsigned i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return HB_DONE;
}

static void test_snapshot_hostile_fds(void **state)
{
    (void)state;
    for (st_case = 0; st_case < ST_COUNT; st_case++) {
        struct fx f;
        uint8_t *snap = NULL;
        size_t len = 0;
        int64_t t0;
        int r;

        fx_begin(&f);
        f.cfg.state_timeout_ms = 300;
        f.cfg.max_state_size = 64 << 10;
        vuf_conn_set_timeout(f.fe_conn, 300);
        f.hb.hook = hook_state;
        assert_int_equal(fx_new(&f), 0);
        t0 = tu_now_ms();
        r = vuf_device_snapshot(f.dev, &snap, &len);
        assert_true(tu_now_ms() - t0 < 3000);
        spew_end();
        /* ST_REGULAR_FILE: the test binary is well over the 64 KiB cap. */
        if (r != st_snapshot_want[st_case])
            fail_msg("snapshot case %d: %d, expected %d", st_case, r, st_snapshot_want[st_case]);
        assert_null(snap);
        free(snap);
        fx_end(&f);
    }
}

/* A well-formed snapshot to restore. */
static void make_snapshot(uint8_t **snap, size_t *len)
{
    struct fx f;

    fx_begin(&f);
    assert_int_equal(fx_new(&f), 0);
    assert_int_equal(vuf_device_snapshot(f.dev, snap, len), 0);
    fx_end(&f);
}

static void test_restore_hostile_fds(void **state)
{
    uint8_t *snap;
    size_t len;

    (void)state;
    make_snapshot(&snap, &len);
    for (st_case = 0; st_case < ST_COUNT; st_case++) {
        struct fx f;
        int64_t t0;
        int r;

        fx_begin(&f);
        f.cfg.state_timeout_ms = 300;
        vuf_conn_set_timeout(f.fe_conn, 300);
        f.hb.hook = hook_state;
        assert_int_equal(fx_new(&f), 0);
        t0 = tu_now_ms();
        r = vuf_device_restore(f.dev, snap, len);
        assert_true(tu_now_ms() - t0 < 3000);
        spew_end();
        /* ST_SOCKET_SILENT: 40 bytes fit in the socket buffer;
         * ST_REGULAR_FILE: opened read-only. */
        if (r != st_restore_want[st_case])
            fail_msg("restore case %d: %d, expected %d", st_case, r, st_restore_want[st_case]);
        fx_end(&f);
    }
    free(snap);
}

/*
 * The back-end hands over its own pipe but keeps a copy of the same end
 * and steals what it writes: poll says "readable", then the data is gone.
 * A blocking read after poll would hang forever; the transfer must end at
 * its deadline.
 */
struct thief {
    int wr, rd;
    atomic_int stop;
    pthread_t t;
};

static void *thief_main(void *arg)
{
    struct thief *th = arg;
    int64_t until = tu_now_ms() + 4000;
    char b = 'x';

    while (!atomic_load(&th->stop) && tu_now_ms() < until) {
        if (send(th->wr, &b, 1, MSG_NOSIGNAL) != 1)
            break;
        while (recv(th->rd, &b, 1, MSG_DONTWAIT) == 1)
            ;
    }
    /* Unblock a stuck reader, if any: the test then sees the time. */
    close(th->wr);
    return NULL;
}

static struct thief the_thief;
static enum hb_act hook_thief(struct hb *hb, struct vuf_msg *req)
{
    int sv[2], mine;
    uint64_t v = 0;

    if (req->hdr.request != VUF_REQ_SET_DEVICE_STATE_FD)
        return HB_DEFAULT;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return HB_HANGUP;
    mine = fcntl(sv[0], F_DUPFD_CLOEXEC, 0); /* same end, same description */
    the_thief.rd = mine;
    the_thief.wr = sv[1];
    atomic_store(&the_thief.stop, 0);
    tu_raw_send(hb->conn, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &sv[0], 1);
    close(sv[0]);
    pthread_create(&the_thief.t, NULL, thief_main, &the_thief);
    return HB_DONE;
}

/*
 * Deterministic: the back-end sets SO_RCVLOWAT on the socket it hands
 * over, writes one byte and keeps its end open. poll() says "readable", a
 * blocking read() then waits for 4096 bytes that never come.
 */
static atomic_int lowat_peer = -1; /* set on the back-end's thread */
static atomic_bool lowat_done;     /* the front-end's call returned */
static enum hb_act hook_lowat(struct hb *hb, struct vuf_msg *req)
{
    int sv[2], lowat = 4096;
    uint64_t v = 0;

    if (req->hdr.request != VUF_REQ_SET_DEVICE_STATE_FD)
        return HB_DEFAULT;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return HB_HANGUP;
    setsockopt(sv[0], SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat));
    if (send(sv[1], "x", 1, MSG_NOSIGNAL) != 1)
        return HB_HANGUP;
    tu_raw_send(hb->conn, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &sv[0], 1);
    close(sv[0]);
    lowat_peer = sv[1];
    return HB_DONE;
}

static void *unstick_main(void *arg)
{
    /* If the front-end is stuck, unstick it after 3 s so the test can
     * report the time instead of hanging. */
    int64_t until = tu_now_ms() + 3000;

    (void)arg;
    while (tu_now_ms() < until && !atomic_load(&lowat_done))
        tu_sleep_ms(5);
    if (!atomic_load(&lowat_done) && atomic_load(&lowat_peer) >= 0)
        shutdown(atomic_load(&lowat_peer), SHUT_WR);
    return NULL;
}

static void test_snapshot_rcvlowat_no_hang(void **state)
{
    struct fx f;
    uint8_t *snap = NULL;
    size_t len = 0;
    int64_t t0, dt;
    pthread_t un;
    int r;

    (void)state;
    fx_begin(&f);
    atomic_store(&lowat_peer, -1);
    atomic_store(&lowat_done, false);
    f.cfg.state_timeout_ms = 300;
    f.hb.hook = hook_lowat;
    assert_int_equal(fx_new(&f), 0);
    assert_int_equal(pthread_create(&un, NULL, unstick_main, NULL), 0);
    t0 = tu_now_ms();
    r = vuf_device_snapshot(f.dev, &snap, &len);
    dt = tu_now_ms() - t0;
    atomic_store(&lowat_done, true);
    pthread_join(un, NULL);
    close(atomic_load(&lowat_peer));
    atomic_store(&lowat_peer, -1);
    /* The one byte and then no EOF within the deadline: a timeout. */
    assert_int_equal(r, -ETIMEDOUT);
    assert_true(dt < 2000);
    free(snap);
    fx_end(&f);
}

static void test_snapshot_stolen_data_no_hang(void **state)
{
    struct fx f;
    uint8_t *snap = NULL;
    size_t len = 0;
    int64_t t0, dt;
    int r;

    (void)state;
    fx_begin(&f);
    f.cfg.state_timeout_ms = 300;
    f.cfg.max_state_size = 1 << 24;
    f.hb.hook = hook_thief;
    assert_int_equal(fx_new(&f), 0);
    t0 = tu_now_ms();
    r = vuf_device_snapshot(f.dev, &snap, &len);
    dt = tu_now_ms() - t0;
    atomic_store(&the_thief.stop, 1);
    pthread_join(the_thief.t, NULL);
    close(the_thief.rd);
    /* Bounded by the state deadline (the thief gives up after 4 s). */
    assert_true(dt < 2000);
    /* The thief never closes its end within the deadline: no EOF. */
    assert_int_equal(r, -ETIMEDOUT);
    assert_null(snap);
    free(snap);
    fx_end(&f);
}

/*
 * Restore: the back-end hands us the write end of its pipe, keeps a copy
 * and fills the pipe right after our poll said "writable". A blocking
 * write would hang forever.
 */
struct filler {
    int wr;
    atomic_int stop;
    pthread_t t;
};

static void *filler_main(void *arg)
{
    struct filler *fl = arg;
    static char junk[65536];
    int64_t until = tu_now_ms() + 4000;
    int fl0 = fcntl(fl->wr, F_GETFL);

    while (!atomic_load(&fl->stop) && tu_now_ms() < until) {
        /* Keep the pipe full without blocking ourselves. */
        fcntl(fl->wr, F_SETFL, fl0 | O_NONBLOCK);
        if (write(fl->wr, junk, sizeof(junk)) < 0 && errno != EAGAIN)
            break;
        fcntl(fl->wr, F_SETFL, fl0);
        tu_sleep_ms(1);
    }
    return NULL;
}

static struct filler the_filler;
static atomic_int filler_rd = -1;
static enum hb_act hook_filler(struct hb *hb, struct vuf_msg *req)
{
    int p[2];
    uint64_t v = 0;

    if (req->hdr.request != VUF_REQ_SET_DEVICE_STATE_FD)
        return HB_DEFAULT;
    if (pipe2(p, O_CLOEXEC) < 0)
        return HB_HANGUP;
    atomic_store(&filler_rd, p[0]);
    the_filler.wr = fcntl(p[1], F_DUPFD_CLOEXEC, 0);
    atomic_store(&the_filler.stop, 0);
    /* Slowly drain so that poll sees room now and then. */
    tu_raw_send(hb->conn, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &p[1], 1);
    close(p[1]);
    pthread_create(&the_filler.t, NULL, filler_main, &the_filler);
    return HB_DONE;
}

static void *drainer_main(void *arg)
{
    int64_t until = tu_now_ms() + 4000;
    char b[8192];

    (void)arg;
    while (atomic_load(&filler_rd) < 0 && tu_now_ms() < until)
        tu_sleep_ms(1);
    while (tu_now_ms() < until && !atomic_load(&the_filler.stop)) {
        if (read(atomic_load(&filler_rd), b, sizeof(b)) < 0)
            break;
        tu_sleep_ms(2);
    }
    return NULL;
}

static void test_restore_full_pipe_no_hang(void **state)
{
    struct fx f;
    uint8_t *snap, *big;
    size_t len;
    int64_t t0, dt;
    pthread_t dr;
    int r;

    (void)state;
    filler_rd = -1;
    make_snapshot(&snap, &len);
    /* A larger state: many PIPE_BUF chunks, many chances to lose. */
    big = calloc(1, 24 + (1 << 20));
    assert_non_null(big);
    memcpy(big, snap, 24);
    {
        uint64_t sl = 1 << 20;

        memcpy(big + 16, &sl, 8);
    }
    fx_begin(&f);
    f.cfg.state_timeout_ms = 300;
    f.hb.hook = hook_filler;
    assert_int_equal(fx_new(&f), 0);
    t0 = tu_now_ms();
    assert_int_equal(pthread_create(&dr, NULL, drainer_main, NULL), 0);
    r = vuf_device_restore(f.dev, big, 24 + (1 << 20));
    dt = tu_now_ms() - t0;
    atomic_store(&the_filler.stop, 1);
    pthread_join(dr, NULL);
    pthread_join(the_filler.t, NULL);
    close(the_filler.wr);
    close(filler_rd);
    /* Either the drainer let it through or the deadline hit; never a hang. */
    assert_true(dt < 2000);
    assert_true(r == 0 || r == -ETIMEDOUT);
    free(big);
    free(snap);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Shared memory config                                                     */
/* ------------------------------------------------------------------------ */

static void test_shmem_config_cases(void **state)
{
    (void)state;
    for (int c = 0; c < 6; c++) {
        struct fx f;
        struct vuf_shm_region reg;
        int r;

        fx_begin(&f);
        f.hb.protocol_features |= VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ);
        switch (c) {
        case 0: /* nregions says 2, one size */
            f.hb.shm.nregions = 2;
            f.hb.shm.memory_sizes[0] = 4096;
            break;
        case 1: /* two regions */
            f.hb.shm.nregions = 2;
            f.hb.shm.memory_sizes[0] = 4096;
            f.hb.shm.memory_sizes[3] = 4096;
            break;
        case 2: /* huge */
            f.hb.shm.nregions = 1;
            f.hb.shm.memory_sizes[1] = ~0ull;
            break;
        case 3: /* not page aligned */
            f.hb.shm.nregions = 1;
            f.hb.shm.memory_sizes[0] = 4097;
            break;
        case 4: /* nregions huge */
            f.hb.shm.nregions = 0xffffffffu;
            f.hb.shm.memory_sizes[0] = 4096;
            break;
        default: /* none */
            break;
        }
        assert_int_equal(fx_new(&f), 0);
        r = vuf_device_get_shm_region(f.dev, &reg);
        switch (c) {
        case 0: /* the count disagrees with the sizes */
        case 4:
            assert_int_equal(r, -EPROTO);
            break;
        case 1: /* a second region: one is all the VMM interface has */
            assert_int_equal(r, -ENOTSUP);
            break;
        case 2:
        case 3:
            /* Region sizes must be multiples of the page size (spec); ~0
             * and 4097 are not, so neither reaches the VMM. */
            assert_int_equal(r, -EPROTO);
            break;
        default:
            assert_int_equal(r, 0);
            break;
        }
        /* Asked again: the same answer, no crash. */
        assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), r);
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* The back-end request channel                                             */
/* ------------------------------------------------------------------------ */

static void fx_shm_active(struct fx *f, bool reply_ack)
{
    struct vuf_shm_mapper m = {&tmap_ops, &f->map};

    f->cfg.device_type = VUF_DEV_GPU;
    f->hb.protocol_features = VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ) |
                              VUF_PROTO_MASK(CONFIG) | (reply_ack ? VUF_PROTO_MASK(REPLY_ACK) : 0);
    f->hb.shm.nregions = 1;
    f->hb.shm.memory_sizes[0] = REGION_LEN;
    assert_int_equal(fx_new(f), 0);
    assert_int_equal(vuf_device_set_shm_mapper(f->dev, &m), 0);
    fx_queues(f, 2);
    assert_int_equal(fx_activate(f), 0);
}

static int memfd_of(size_t len)
{
    int fd = memfd_create("vuf-hostile", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    return fd;
}

static int64_t breq_map(struct fx *f, uint32_t code, uint32_t flags, int fd, uint64_t off,
                        uint64_t len)
{
    struct vuf_shmem_map m = {
        .shmid = 0, .fd_offset = 0, .shm_offset = off, .len = len, .flags = VUF_SHMEM_MAP_RW};
    struct vuf_msg reply;

    if (tu_raw_send(fx_breq(f), code, flags, &m, sizeof(m), &fd, fd >= 0 ? 1 : 0) < 0)
        return INT64_MIN;
    if (!(flags & VUF_FLAG_NEED_REPLY))
        return 0;
    if (vuf_conn_recv(f->breq, &reply) < 0)
        return INT64_MIN;
    vuf_msg_close_fds(&reply);
    if (reply.hdr.request != code || reply.hdr.size != 8)
        return INT64_MIN + 1;
    return (int64_t)reply.payload.u64;
}

static void test_breq_map_storm_and_bad_fds(void **state)
{
    struct fx f;
    int mfd, ev, sv[2];
    int eight[8];

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    mfd = memfd_of(REGION_LEN);

    /* A storm of map/unmap pairs. */
    for (int i = 0; i < 300; i++) {
        uint64_t off = (uint64_t)(i % 16) * 4096;

        assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_MAP, REQ_NR, mfd, off, 4096), 0);
        assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_UNMAP, REQ_NR, -1, off, 4096), 0);
    }
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 0);

    /* An fd that cannot be mmapped: refused, the channel goes on. */
    ev = eventfd(0, EFD_CLOEXEC);
    assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_MAP, REQ_NR, ev, 0, 4096), -ENODEV);
    close(ev);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_MAP, REQ_NR, sv[0], 0, 4096), -ENODEV);
    close(sv[0]);
    close(sv[1]);
    /* No fd at all. */
    assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_MAP, REQ_NR, -1, 0, 4096), -EPROTO);
    /* Eight fds. */
    for (int i = 0; i < 8; i++)
        eight[i] = mfd;
    {
        struct vuf_shmem_map m = {.len = 4096, .flags = VUF_SHMEM_MAP_RW};
        struct vuf_msg reply;

        assert_int_equal(
            tu_raw_send(fx_breq(&f), VUF_BREQ_SHMEM_MAP, REQ_NR, &m, sizeof(m), eight, 8), 0);
        assert_int_equal(vuf_conn_recv(f.breq, &reply), 0);
        assert_int_equal((int64_t)reply.payload.u64, -EPROTO);
        vuf_msg_close_fds(&reply);
    }
    /* Still serving. */
    assert_int_equal(breq_map(&f, VUF_BREQ_SHMEM_MAP, REQ_NR, mfd, 0, 8192), 0);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);
    close(mfd);
    /* Reset removes the mapping. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 0);
    fx_end(&f);
}

/* Requests flooding in faster than they are served (config changes and
 * unknown codes), their replies never read. */
static void test_breq_flood_nonblocking(void **state)
{
    struct fx f;
    int fd, flags, sent = 0;
    uint64_t v = 0;
    int64_t t0;

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    fd = vuf_conn_fd(fx_breq(&f));
    flags = fcntl(fd, F_GETFL);
    /* Flood with config-change requests and unknown codes, never reading
     * replies, until the socket is full. */
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    t0 = tu_now_ms();
    while (tu_now_ms() - t0 < 500) {
        uint8_t msg[VUF_HDR_SIZE + 8];
        struct vuf_hdr h = {
            .request = (sent & 1) ? 99u : VUF_BREQ_CONFIG_CHANGE_MSG, .flags = REQ_NR, .size = 0};

        vuf_hdr_encode(msg, &h);
        if (send(fd, msg, VUF_HDR_SIZE, MSG_NOSIGNAL) != VUF_HDR_SIZE)
            break;
        sent++;
    }
    fcntl(fd, F_SETFL, flags);
    (void)v;
    assert_true(sent > 10);
    /* Reset must still finish promptly (the worker's reply sends are
     * bounded; stop wins). */
    t0 = tu_now_ms();
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_true(tu_now_ms() - t0 < 3000);
    fx_end(&f);
}

/* NEED_REPLY on a SHMEM_MAP without REPLY_ACK: no reply is owed. */
static void test_breq_need_reply_without_reply_ack(void **state)
{
    struct fx f;
    int mfd;
    struct pollfd p;
    struct vuf_shmem_map m = {.len = 4096, .flags = VUF_SHMEM_MAP_RW};
    int64_t t0;

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, false);
    mfd = memfd_of(REGION_LEN);
    assert_int_equal(tu_raw_send(fx_breq(&f), VUF_BREQ_SHMEM_MAP, REQ_NR, &m, sizeof(m), &mfd, 1),
                     0);
    t0 = tu_now_ms();
    while (vuf_frontend_num_mappings(f.dev) == 0 && tu_now_ms() - t0 < 2000)
        tu_sleep_ms(1);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);
    p.fd = vuf_conn_fd(f.breq);
    p.events = POLLIN;
    assert_int_equal(poll(&p, 1, 100), 0); /* nothing came back */
    close(mfd);
    fx_end(&f); /* destroy removes the mapping */
}

/* A request that stops mid-payload: the worker gives up within its bound,
 * drops the channel, and a reset does not wait forever. */
static void test_breq_stops_mid_payload(void **state)
{
    struct fx f;
    uint8_t msg[VUF_HDR_SIZE + 10];
    struct vuf_hdr h = {.request = VUF_BREQ_SHMEM_MAP, .flags = REQ_NR, .size = 40};
    int64_t t0;

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    vuf_hdr_encode(msg, &h);
    memset(msg + VUF_HDR_SIZE, 0, 10);
    assert_int_equal(send(vuf_conn_fd(fx_breq(&f)), msg, sizeof(msg), MSG_NOSIGNAL),
                     (ssize_t)sizeof(msg));
    /* The worker has taken all 22 bytes (none left unread in the
     * socket, SIOCOUTQ) and now waits inside the read for the rest. */
    {
        int64_t until = tu_now_ms() + 5000;
        int outq = -1;

        while (tu_now_ms() < until) {
            assert_int_equal(ioctl(vuf_conn_fd(f.breq), SIOCOUTQ, &outq), 0);
            if (outq == 0)
                break;
            tu_sleep_ms(1);
        }
        assert_int_equal(outq, 0);
    }
    t0 = tu_now_ms();
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_true(tu_now_ms() - t0 < 2500);
    /* The channel was dropped: our end sees EOF. */
    {
        char b;
        struct pollfd p = {.fd = vuf_conn_fd(f.breq), .events = POLLIN};

        assert_int_equal(poll(&p, 1, 2000), 1);
        assert_int_equal(read(p.fd, &b, 1), 0);
    }
    /* The device is still usable. */
    assert_int_equal(fx_activate(&f), 0);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    fx_end(&f);
}

/* The back-end closes its request channel: not a crash, the device works. */
static void test_breq_closed(void **state)
{
    struct fx f;
    uint8_t buf[4];

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    fx_breq(&f);
    {
        /* Our end goes, then the worker's once it has seen the EOF. */
        int want = tu_count_fds() - 2;
        int64_t until = tu_now_ms() + 5000;

        vuf_conn_close(f.breq);
        f.breq = NULL;
        while (tu_count_fds() != want && tu_now_ms() < until)
            tu_sleep_ms(1);
        assert_int_equal(tu_count_fds(), want);
    }
    assert_int_equal(atomic_load(&crashes), 0);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 4), 0);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_int_equal(fx_activate(&f), 0);
    fx_end(&f);
}

/* Destroy while the worker is inside a (slow) mapper call. */
static void test_destroy_while_handling(void **state)
{
    struct fx f;
    int mfd;
    struct vuf_shmem_map m = {.len = 4096, .flags = VUF_SHMEM_MAP_RW};
    int64_t t0;

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    mfd = memfd_of(REGION_LEN);
    atomic_store(&f.map.slow_ms, 200);
    assert_int_equal(tu_raw_send(fx_breq(&f), VUF_BREQ_SHMEM_MAP, REQ_NR, &m, sizeof(m), &mfd, 1),
                     0);
    close(mfd);
    t0 = tu_now_ms();
    while (atomic_load(&f.map.entered) == 0 && tu_now_ms() - t0 < 5000)
        tu_sleep_ms(1); /* until the worker is inside the slow mapper */
    assert_int_equal(atomic_load(&f.map.entered), 1);
    t0 = tu_now_ms();
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    assert_true(tu_now_ms() - t0 < 2000);
    /* The mapping made while we waited was removed, and released. */
    assert_int_equal(f.map.live, 0);
    assert_int_equal(f.map.releases, 1);
    fx_end(&f);
}

/* Hang-up of the main socket while active: one crash event, and every op
 * after it fails fast. */
static void test_crash_then_everything_fails(void **state)
{
    struct fx f;
    struct vuf_queue back[MAX_Q];
    uint8_t buf[4] = {0}, *snap = NULL;
    size_t len;
    int64_t t0;

    (void)state;
    fx_begin(&f);
    fx_shm_active(&f, true);
    hb_stop(&f.hb);
    hb_close_conn(&f.hb);
    t0 = tu_now_ms();
    while (atomic_load(&crashes) == 0 && tu_now_ms() - t0 < 2000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), 1);
    t0 = tu_now_ms();
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 4), -ECONNRESET);
    assert_int_equal(vuf_device_write_config(f.dev, 0, buf, 4), -ECONNRESET);
    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), -ECONNRESET);
    /* DEVICE_STATE was not negotiated: refused before any send. */
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -ENOTSUP);
    assert_int_equal(fx_activate(&f), -ECONNRESET);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_true(tu_now_ms() - t0 < 1000);
    fx_end(&f);
}

static void *noop_thread(void *arg)
{
    return arg;
}

static void quiet_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    (void)msg;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_bit_set),
        cmocka_unit_test(test_queue_num_extremes),
        cmocka_unit_test(test_new_bad_replies),
        cmocka_unit_test(test_new_hangup_each_step),
        cmocka_unit_test(test_config_bad_replies),
        cmocka_unit_test(test_unsolicited_reply_not_misattributed),
        cmocka_unit_test(test_late_reply_not_misattributed),
        cmocka_unit_test(test_dribbled_reply),
        cmocka_unit_test(test_hangup_during_activate_each_step),
        cmocka_unit_test(test_hangup_during_stop),
        cmocka_unit_test(test_sleep_bad_vring_base),
        cmocka_unit_test(test_snapshot_hostile_fds),
        cmocka_unit_test(test_restore_hostile_fds),
        cmocka_unit_test(test_snapshot_stolen_data_no_hang),
        cmocka_unit_test(test_snapshot_rcvlowat_no_hang),
        cmocka_unit_test(test_restore_full_pipe_no_hang),
        cmocka_unit_test(test_shmem_config_cases),
        cmocka_unit_test(test_breq_map_storm_and_bad_fds),
        cmocka_unit_test(test_breq_flood_nonblocking),
        cmocka_unit_test(test_breq_need_reply_without_reply_ack),
        cmocka_unit_test(test_breq_stops_mid_payload),
        cmocka_unit_test(test_breq_closed),
        cmocka_unit_test(test_destroy_while_handling),
        cmocka_unit_test(test_crash_then_everything_fails),
    };

    {
        pthread_t t;

        if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
            pthread_join(t, NULL);
    }
    if (!getenv("VUF_LOG"))
        vuf_log_set(quiet_log, NULL, VUF_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
