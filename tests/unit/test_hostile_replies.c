/* SPDX-License-Identifier: MIT */
/*
 * The front-end device against a back-end whose replies break the framing
 * or the protocol, in ways test_hostile_backend.c does not cover: too many
 * fds, bad version and flag bits, a reply cut short by a hang-up, talk
 * before the first request, memory-slot counts, REPLY_ACK lies, config
 * windows, vring bases on reset, and the main socket misbehaving while
 * the device is active. Each case asserts the exact errno, that the device
 * can still be reset and destroyed, and (fx_end) that no fd or thread is
 * left behind.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hostile_harness.h"
#include "vuf/log.h"

/* A message with `nfds` fds, past the 8 vuf_conn_send allows. */
static void raw_sendmsg(struct vuf_conn *c, uint32_t code, uint32_t flags, const void *p,
                        uint32_t size, const int *fds, unsigned nfds)
{
    uint8_t buf[VUF_HDR_SIZE + 64];
    struct vuf_hdr h = {.request = code, .flags = flags, .size = size};
    union {
        char b[CMSG_SPACE(sizeof(int) * 32)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = VUF_HDR_SIZE + size};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    struct cmsghdr *cm;

    vuf_hdr_encode(buf, &h);
    memcpy(buf + VUF_HDR_SIZE, p, size);
    if (nfds) {
        memset(&ctl, 0, sizeof(ctl));
        m.msg_control = ctl.b;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    (void)sendmsg(vuf_conn_fd(c), &m, MSG_NOSIGNAL);
}

/* Send the first `n` bytes of a message with this header and payload. */
static void raw_partial(struct vuf_conn *c, uint32_t code, uint32_t flags, uint32_t size,
                        const void *p, size_t n)
{
    uint8_t buf[VUF_HDR_SIZE + 64] = {0};
    struct vuf_hdr h = {.request = code, .flags = flags, .size = size};

    vuf_hdr_encode(buf, &h);
    if (p)
        memcpy(buf + VUF_HDR_SIZE, p, size);
    (void)send(vuf_conn_fd(c), buf, n, MSG_NOSIGNAL);
}

/* ------------------------------------------------------------------------ */
/* Replies to GET_FEATURES during construction                              */
/* ------------------------------------------------------------------------ */

static int feat_case;
enum {
    FC_NINE_FDS,       /* 9 fds: more than a message may carry */
    FC_SIXTEEN_FDS,    /* 16 fds */
    FC_VERSION_0,      /* version bits 0 */
    FC_VERSION_2,      /* version bits 2 */
    FC_VERSION_3,      /* version bits 3 */
    FC_FLAG_BIT_4,     /* an unknown flag bit */
    FC_FLAG_BIT_31,    /* the top flag bit */
    FC_HDR_CUT_CLOSE,  /* 7 header bytes, then a hang-up */
    FC_HDR_ONLY_CLOSE, /* a whole header announcing 8 bytes, then a hang-up */
    FC_MID_CLOSE,      /* the header and 4 of 8 payload bytes, then a hang-up */
    FC_HALF_CLOSE,     /* the header and 4 bytes, then shutdown(SHUT_WR) */
    FC_COUNT
};
static const int feat_want[FC_COUNT] = {
    [FC_NINE_FDS] = -ETOOMANYREFS,
    [FC_SIXTEEN_FDS] = -ETOOMANYREFS,
    [FC_VERSION_0] = -EPROTO,
    [FC_VERSION_2] = -EPROTO,
    [FC_VERSION_3] = -EPROTO,
    [FC_FLAG_BIT_4] = -EPROTO,
    [FC_FLAG_BIT_31] = -EPROTO,
    [FC_HDR_CUT_CLOSE] = -EBADMSG,
    [FC_HDR_ONLY_CLOSE] = -ECONNABORTED,
    [FC_MID_CLOSE] = -ECONNABORTED,
    [FC_HALF_CLOSE] = -ECONNABORTED,
};

static enum hb_act hook_features(struct hb *hb, struct vuf_msg *req)
{
    uint64_t v = hb->features;
    int fds[16];
    int ev;

    if (req->hdr.request != VUF_REQ_GET_FEATURES)
        return HB_DEFAULT;
    switch (feat_case) {
    case FC_NINE_FDS:
    case FC_SIXTEEN_FDS:
        ev = eventfd(0, EFD_CLOEXEC);
        for (int i = 0; i < 16; i++)
            fds[i] = ev;
        raw_sendmsg(hb->conn, VUF_REQ_GET_FEATURES, REPLY, &v, 8, fds,
                    feat_case == FC_NINE_FDS ? 9 : 16);
        close(ev);
        break;
    case FC_VERSION_0:
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, VUF_FLAG_REPLY, &v, 8, NULL, 0);
        break;
    case FC_VERSION_2:
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, VUF_FLAG_REPLY | 2, &v, 8, NULL, 0);
        break;
    case FC_VERSION_3:
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, VUF_FLAG_REPLY | 3, &v, 8, NULL, 0);
        break;
    case FC_FLAG_BIT_4:
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY | 0x10, &v, 8, NULL, 0);
        break;
    case FC_FLAG_BIT_31:
        tu_raw_send(hb->conn, VUF_REQ_GET_FEATURES, REPLY | 0x80000000u, &v, 8, NULL, 0);
        break;
    case FC_HDR_CUT_CLOSE:
        raw_partial(hb->conn, VUF_REQ_GET_FEATURES, REPLY, 8, &v, VUF_HDR_SIZE - 5);
        return HB_HANGUP;
    case FC_HDR_ONLY_CLOSE:
        raw_partial(hb->conn, VUF_REQ_GET_FEATURES, REPLY, 8, &v, VUF_HDR_SIZE);
        return HB_HANGUP;
    case FC_MID_CLOSE:
        raw_partial(hb->conn, VUF_REQ_GET_FEATURES, REPLY, 8, &v, VUF_HDR_SIZE + 4);
        return HB_HANGUP;
    case FC_HALF_CLOSE:
        raw_partial(hb->conn, VUF_REQ_GET_FEATURES, REPLY, 8, &v, VUF_HDR_SIZE + 4);
        shutdown(vuf_conn_fd(hb->conn), SHUT_WR);
        break;
    default:
        break;
    }
    return HB_DONE;
}

static void test_features_reply_framing(void **state)
{
    (void)state;
    for (feat_case = 0; feat_case < FC_COUNT; feat_case++) {
        struct fx f;
        int r;

        fx_begin(&f);
        vuf_conn_set_timeout(f.fe_conn, 5000);
        f.hb.hook = hook_features;
        r = fx_new(&f);
        if (r != feat_want[feat_case])
            fail_msg("case %d: %d (%s), expected %d", feat_case, r, vuf_strerror(r),
                     feat_want[feat_case]);
        assert_null(f.dev);
        fx_end(&f); /* every fd that arrived was closed */
    }
}

/* ------------------------------------------------------------------------ */
/* Talk before the first request                                            */
/* ------------------------------------------------------------------------ */

/* The back-end speaks first: a GET_FEATURES "reply" (with an fd) is
 * already queued when the front-end connects. It is not the answer to the
 * front-end's GET_FEATURES: construction fails, and the fd is closed. */
static void test_unsolicited_before_first_request(void **state)
{
    for (int with_fd = 0; with_fd < 2; with_fd++) {
        struct fx f;
        uint64_t bogus = F_VERSION_1; /* no PROTOCOL_FEATURES */
        int ev;

        (void)state;
        fx_begin(&f);
        ev = eventfd(0, EFD_CLOEXEC);
        assert_int_equal(
            tu_raw_send(f.hb.conn, VUF_REQ_GET_FEATURES, REPLY, &bogus, 8, &ev, with_fd ? 1 : 0),
            0);
        close(ev);
        assert_int_equal(fx_new(&f), -EPROTO);
        assert_null(f.dev);
        /* Nothing after SET_OWNER was sent on a stream found out of step. */
        assert_int_equal(atomic_load(&f.hb.seen[VUF_REQ_GET_FEATURES]), 0);
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* GET_MAX_MEM_SLOTS                                                        */
/* ------------------------------------------------------------------------ */

static uint64_t slots_answer;
static enum hb_act hook_slots(struct hb *hb, struct vuf_msg *req)
{
    if (req->hdr.request != VUF_REQ_GET_MAX_MEM_SLOTS)
        return HB_DEFAULT;
    raw_reply_u64(hb->conn, VUF_REQ_GET_MAX_MEM_SLOTS, slots_answer);
    return HB_DONE;
}

static void test_max_mem_slots_extremes(void **state)
{
    const uint64_t answers[] = {0, 1ull << 32, ~0ull};

    (void)state;
    for (unsigned i = 0; i < 3; i++) {
        struct fx f;

        fx_begin(&f);
        f.cfg.mem_slots = true;
        f.hb.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
        slots_answer = answers[i];
        f.hb.hook = hook_slots;
        if (answers[i] == 0) {
            /* No slot at all: no memory could ever be handed over. */
            assert_int_equal(fx_new(&f), -EPROTO);
        } else {
            /* Huge counts are capped; one region goes over with
             * ADD_MEM_REG and the device runs. */
            assert_int_equal(fx_new(&f), 0);
            fx_queues(&f, 1);
            assert_int_equal(fx_activate(&f), 0);
            assert_int_equal(atomic_load(&f.hb.seen[VUF_REQ_ADD_MEM_REG]), 1);
            assert_int_equal(vuf_device_reset(f.dev), 0);
        }
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* REPLY_ACK                                                                */
/* ------------------------------------------------------------------------ */

static uint32_t ack_code;
static int ack_case;
enum {
    AC_ERROR,      /* ack with a non-zero status */
    AC_NEVER,      /* no ack at all */
    AC_TWICE,      /* two acks */
    AC_SHORT,      /* a 4-byte ack */
    AC_WITH_FD,    /* an ack carrying an fd */
    AC_OTHER_CODE, /* an ack naming another request */
    AC_COUNT
};

static enum hb_act hook_ack(struct hb *hb, struct vuf_msg *req)
{
    uint32_t v32 = 0;
    int ev;

    if (req->hdr.request != ack_code || !(req->hdr.flags & VUF_FLAG_NEED_REPLY))
        return HB_DEFAULT;
    switch (ack_case) {
    case AC_ERROR:
        raw_reply_u64(hb->conn, ack_code, 1);
        break;
    case AC_NEVER:
        break;
    case AC_TWICE:
        raw_reply_u64(hb->conn, ack_code, 0);
        raw_reply_u64(hb->conn, ack_code, 0);
        break;
    case AC_SHORT:
        tu_raw_send(hb->conn, ack_code, REPLY, &v32, 4, NULL, 0);
        break;
    case AC_WITH_FD:
        ev = eventfd(0, EFD_CLOEXEC);
        {
            uint64_t z = 0;

            tu_raw_send(hb->conn, ack_code, REPLY, &z, 8, &ev, 1);
        }
        close(ev);
        break;
    default:
        raw_reply_u64(hb->conn, VUF_REQ_GET_FEATURES, 0);
        break;
    }
    return HB_DONE;
}

static void test_reply_ack_lies(void **state)
{
    const uint32_t codes[] = {VUF_REQ_SET_FEATURES, VUF_REQ_SET_MEM_TABLE};
    /* A duplicate ack is found before the next request goes out. */
    static const int want[AC_COUNT] = {
        [AC_ERROR] = -EIO,    [AC_NEVER] = -ETIMEDOUT, [AC_TWICE] = -EPROTO,
        [AC_SHORT] = -EPROTO, [AC_WITH_FD] = -EPROTO,  [AC_OTHER_CODE] = -EPROTO,
    };

    (void)state;
    for (unsigned c = 0; c < 2; c++) {
        for (ack_case = 0; ack_case < AC_COUNT; ack_case++) {
            struct fx f;
            int r;

            fx_begin(&f);
            vuf_conn_set_timeout(f.fe_conn, 300);
            ack_code = codes[c];
            f.hb.hook = hook_ack;
            assert_int_equal(fx_new(&f), 0);
            fx_queues(&f, 2);
            r = fx_activate(&f);
            if (r != want[ack_case])
                fail_msg("%s, case %d: %d (%s), expected %d",
                         vuf_msg_name(VUF_CH_FRONTEND, codes[c]), ack_case, r, vuf_strerror(r),
                         want[ack_case]);
            assert_false(vuf_frontend_is_active(f.dev));
            assert_int_equal(vuf_device_reset(f.dev), 0);
            assert_int_equal(atomic_load(&crashes), 0);
            fx_end(&f);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Config windows                                                           */
/* ------------------------------------------------------------------------ */

static int win_case;
static enum hb_act hook_window(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_config cfg = req->payload.config;

    if (req->hdr.request != VUF_REQ_GET_CONFIG)
        return HB_DEFAULT;
    memset(cfg.region, 0xab, sizeof(cfg.region));
    switch (win_case) {
    case 0: /* offset + size wraps 32 bits */
        cfg.offset = 0xfffffffcu;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        break;
    case 1: /* an empty reply: no payload at all */
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, NULL, 0, NULL, 0);
        break;
    case 2: /* the largest config there is, for an 8-byte question */
        cfg.size = VUF_CONFIG_MAX;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL,
                    0);
        break;
    default: /* the header and size 0 */
        cfg.size = 0;
        tu_raw_send(hb->conn, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE, NULL, 0);
        break;
    }
    return HB_DONE;
}

static void test_config_windows(void **state)
{
    (void)state;
    for (win_case = 0; win_case < 4; win_case++) {
        struct fx f;
        uint8_t buf[8];

        fx_begin(&f);
        f.hb.hook = hook_window;
        assert_int_equal(fx_new(&f), 0);
        memset(buf, 0xee, sizeof(buf));
        /* An empty reply is the protocol's refusal (-EIO); any other
         * shape that is not the window asked for is a violation. */
        assert_int_equal(vuf_device_read_config(f.dev, 4, buf, 8), win_case == 1 ? -EIO : -EPROTO);
        for (unsigned i = 0; i < sizeof(buf); i++)
            assert_int_equal(buf[i], 0xee);
        fx_end(&f);
    }
    /* A window that wraps is refused before anything is sent. */
    {
        struct fx f;
        uint8_t buf[8];
        int n;

        fx_begin(&f);
        assert_int_equal(fx_new(&f), 0);
        hb_settle(&f.hb); /* the constructor's last request may lack a reply */
        n = atomic_load(&f.hb.nreq);
        assert_int_equal(vuf_device_read_config(f.dev, 0xfffffffcu, buf, 8), -EINVAL);
        assert_int_equal(vuf_device_write_config(f.dev, 0xfffffffcu, buf, 8), -EINVAL);
        hb_settle(&f.hb); /* anything sent would be counted by now */
        assert_int_equal(atomic_load(&f.hb.nreq), n);
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* GET_VRING_BASE on reset                                                  */
/* ------------------------------------------------------------------------ */

static uint32_t base_answer;
static enum hb_act hook_base(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_vring_state st = req->payload.state;

    if (req->hdr.request != VUF_REQ_GET_VRING_BASE)
        return HB_DEFAULT;
    st.num = base_answer;
    tu_raw_send(hb->conn, VUF_REQ_GET_VRING_BASE, REPLY, &st, sizeof(st), NULL, 0);
    return HB_DONE;
}

static void test_reset_bad_vring_base(void **state)
{
    /* 2^32-1 and 2^16 are no 16-bit ring index: a protocol violation. 1000
     * is one, but more than a queue size past the used index (3): reset
     * discards the base, so only sleep, which keeps it, has to refuse it. */
    const uint32_t answers[] = {0xffffffffu, 0x10000u, 1000};
    const int want[] = {-EPROTO, -EPROTO, 0};

    (void)state;
    for (unsigned i = 0; i < 3; i++) {
        struct fx f;
        struct vuf_queue back[MAX_Q];

        fx_begin(&f);
        vuf_conn_set_timeout(f.fe_conn, 1000);
        assert_int_equal(fx_new(&f), 0);
        fx_queues(&f, 2);
        tu_set_used_idx(f.mem, &f.q[0], 3);
        assert_int_equal(fx_activate(&f), 0);
        base_answer = answers[i];
        f.hb.hook = hook_base;
        assert_int_equal(vuf_device_reset(f.dev), want[i]);
        assert_false(vuf_frontend_is_active(f.dev));
        /* Both rings were asked: one bad answer does not leave the other
         * ring running. */
        assert_int_equal(atomic_load(&f.hb.seen[VUF_REQ_GET_VRING_BASE]), 2);
        /* The same answer on sleep: never taken as the ring position. */
        assert_int_equal(fx_activate(&f), 0);
        memcpy(back, f.q, sizeof(back));
        assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), -EPROTO);
        /* Ring 0 falls back to used->idx (ring 1 had the same answer). */
        assert_int_equal(back[0].next_avail, 3);
        assert_int_equal(back[0].next_used, 3);
        assert_int_equal(atomic_load(&crashes), 0);
        fx_end(&f);
    }
}

/* ------------------------------------------------------------------------ */
/* The main socket while the device is active                               */
/* ------------------------------------------------------------------------ */

static void wait_crash(int want)
{
    int64_t until = tu_now_ms() + 5000;

    while (atomic_load(&crashes) < want && tu_now_ms() < until)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), want);
}

/* The back-end half-closes (shutdown SHUT_WR): the front-end reads EOF, the
 * same as a hang-up: one crash event, then every request fails. */
static void test_active_half_close(void **state)
{
    struct fx f;
    uint8_t buf[4];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f), 0);
    fx_queues(&f, 2);
    assert_int_equal(fx_activate(&f), 0);
    hb_stop(&f.hb);
    assert_int_equal(shutdown(vuf_conn_fd(f.hb.conn), SHUT_WR), 0);
    wait_crash(1);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 4), -ECONNRESET);
    /* The rings are stopped on our side; the back-end's silence is
     * reported as the hang-up it is. */
    assert_int_equal(vuf_device_reset(f.dev), -ECONNRESET);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(atomic_load(&crashes), 1);
    fx_end(&f);
}

/* While active, the back-end sends a reply nobody asked for, with fds.
 * The next request finds it before sending and fails; the fds are closed
 * with the connection. */
static void test_active_unsolicited_reply_with_fds(void **state)
{
    struct fx f;
    uint64_t v = 0;
    int ev[3];
    uint8_t buf[4];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f), 0);
    fx_queues(&f, 2);
    assert_int_equal(fx_activate(&f), 0);
    hb_stop(&f.hb);
    for (int i = 0; i < 3; i++)
        ev[i] = eventfd(0, EFD_CLOEXEC);
    assert_int_equal(tu_raw_send(f.hb.conn, VUF_REQ_GET_CONFIG, REPLY, &v, 8, ev, 3), 0);
    for (int i = 0; i < 3; i++)
        close(ev[i]);
    hb_start(&f.hb);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 4), -EPROTO);
    /* Reset still stops the worker and the rings on our side. */
    assert_int_equal(vuf_device_reset(f.dev), -EPROTO);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(atomic_load(&crashes), 0);
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_reply_framing),
        cmocka_unit_test(test_unsolicited_before_first_request),
        cmocka_unit_test(test_max_mem_slots_extremes),
        cmocka_unit_test(test_reply_ack_lies),
        cmocka_unit_test(test_config_windows),
        cmocka_unit_test(test_reset_bad_vring_base),
        cmocka_unit_test(test_active_half_close),
        cmocka_unit_test(test_active_unsolicited_reply_with_fds),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
