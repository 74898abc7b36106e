/* SPDX-License-Identifier: MIT */
/*
 * The front-end's side of the back-end request channel against a hostile
 * back-end, beyond test_hostile_backend.c: half a header then silence,
 * requests sent before the device is activated, and requests that carry
 * the reply flag. The back-end's side is driven from the test thread with
 * raw sends on the channel it got with SET_BACKEND_REQ_FD.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile_harness.h"
#include "vuf/virtio.h"

/* Construct a device with SHMEM, BACKEND_REQ, CONFIG (and REPLY_ACK when
 * asked), two queues made but not activated. */
static void fx_breq_device(struct fx *f, bool reply_ack)
{
    f->cfg.device_type = VUF_DEV_GPU;
    f->hb.protocol_features = VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ) |
                              VUF_PROTO_MASK(CONFIG) | (reply_ack ? VUF_PROTO_MASK(REPLY_ACK) : 0);
    f->hb.shm.nregions = 1;
    f->hb.shm.memory_sizes[0] = REGION_LEN;
    assert_int_equal(fx_new(f), 0);
    fx_queues(f, 2);
}

/* Wait until the worker has read every byte we sent (none left in the
 * socket: SIOCOUTQ on our end is 0). */
static void wait_taken(struct vuf_conn *c)
{
    int64_t until = tu_now_ms() + 5000;
    int outq = -1;

    while (tu_now_ms() < until) {
        assert_int_equal(ioctl(vuf_conn_fd(c), SIOCOUTQ, &outq), 0);
        if (outq == 0)
            return;
        tu_sleep_ms(1);
    }
    fail_msg("the worker did not read the %d bytes sent", outq);
}

/* What comes back on our end of the channel within timeout_ms: 1 and the
 * message, 0 for EOF (the front-end dropped the channel), -ETIMEDOUT. */
static int channel_next(struct vuf_conn *c, int timeout_ms, struct vuf_msg *m)
{
    struct pollfd p = {.fd = vuf_conn_fd(c), .events = POLLIN};
    char b;

    if (poll(&p, 1, timeout_ms) != 1)
        return -ETIMEDOUT;
    if (recv(p.fd, &b, 1, MSG_PEEK) == 0)
        return 0;
    assert_int_equal(vuf_conn_recv(c, m), 0);
    return 1;
}

/* Half a header, then silence: the worker gives up within its bound and
 * drops the channel; the device is not reported crashed and goes on. */
static void test_breq_half_header(void **state)
{
    struct fx f;
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_hdr h = {.request = VUF_BREQ_CONFIG_CHANGE_MSG, .flags = REQ_NR, .size = 0};
    struct vuf_msg m;
    uint8_t buf[4];

    (void)state;
    fx_begin(&f);
    fx_breq_device(&f, true);
    assert_int_equal(fx_activate(&f), 0);
    vuf_hdr_encode(hdr, &h);
    assert_int_equal(send(vuf_conn_fd(fx_breq(&f)), hdr, 6, MSG_NOSIGNAL), 6);
    wait_taken(f.breq);
    assert_int_equal(channel_next(f.breq, 10000, &m), 0);
    assert_int_equal(atomic_load(&crashes), 0);
    assert_int_equal(atomic_load(&config_calls), 0);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 4), 0);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    fx_end(&f);
}

/* The ack for a CONFIG_CHANGE_MSG with NEED_REPLY: the next message on
 * the channel, and nothing queued behind it. */
static void expect_config_ack(struct vuf_conn *c)
{
    struct vuf_msg m;
    struct pollfd p = {.fd = vuf_conn_fd(c), .events = POLLIN};

    assert_int_equal(channel_next(c, 10000, &m), 1);
    assert_int_equal(m.hdr.request, VUF_BREQ_CONFIG_CHANGE_MSG);
    assert_int_equal(m.hdr.flags, REPLY);
    assert_int_equal(m.hdr.size, 8);
    assert_int_equal(m.payload.u64, 0);
    assert_int_equal(poll(&p, 1, 0), 0);
}

/* Requests sent before activation wait in the socket: the worker that
 * serves the channel runs while the device is active. They are served, in
 * order, once it is; construction and activation are not disturbed. */
static void test_breq_before_activation(void **state)
{
    struct fx f;

    (void)state;
    fx_begin(&f);
    fx_breq_device(&f, true);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            tu_raw_send(fx_breq(&f), VUF_BREQ_CONFIG_CHANGE_MSG, REQ_NR, NULL, 0, NULL, 0), 0);
    assert_int_equal(atomic_load(&config_calls), 0);
    assert_int_equal(fx_activate(&f), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(channel_next(f.breq, 10000, &(struct vuf_msg){0}), 1);
    assert_int_equal(atomic_load(&config_calls), 3);
    assert_int_equal(atomic_load(&crashes), 0);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    fx_end(&f);
}

/* A request with the reply flag set (with and without NEED_REPLY) is
 * malformed: refused without an answer (an answer to a "reply" would put
 * the back-end's stream out of step) and without acting on it; the channel
 * goes on serving. The good request behind each bad one is the proof: its
 * ack is the next message, nothing before or after it. */
static void test_breq_reply_flag(void **state)
{
    const uint32_t bad_flags[] = {REPLY | VUF_FLAG_NEED_REPLY, REPLY};

    (void)state;
    for (unsigned i = 0; i < 2; i++) {
        struct fx f;

        fx_begin(&f);
        fx_breq_device(&f, true);
        assert_int_equal(fx_activate(&f), 0);
        assert_int_equal(
            tu_raw_send(fx_breq(&f), VUF_BREQ_CONFIG_CHANGE_MSG, bad_flags[i], NULL, 0, NULL, 0),
            0);
        assert_int_equal(tu_raw_send(f.breq, VUF_BREQ_CONFIG_CHANGE_MSG, REQ_NR, NULL, 0, NULL, 0),
                         0);
        expect_config_ack(f.breq);
        assert_int_equal(atomic_load(&config_calls), 1);
        assert_int_equal(atomic_load(&crashes), 0);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        fx_end(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breq_half_header),
        cmocka_unit_test(test_breq_before_activation),
        cmocka_unit_test(test_breq_reply_flag),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
