/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c: VHOST_USER_PROTOCOL_F_STATUS and RESET_DEVICE
 * (issue 7 §5). With them offered, activation sets the driver's status bits
 * and reset clears them and resets the back-end; with neither, nothing of
 * the kind is sent.
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

#define ST_FEATURES (VUF_STATUS_ACKNOWLEDGE | VUF_STATUS_DRIVER | VUF_STATUS_FEATURES_OK)
#define ST_RUNNING (ST_FEATURES | VUF_STATUS_DRIVER_OK)

/* A console (2 queues) whose back-end offers `pf` on top of the default. */
static void start(struct fx *f, uint64_t pf)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    fx_begin(f);
    f->be.protocol_features |= pf;
    assert_int_equal(fx_new(f, &cfg), 0);
    expect_new(f);
    assert_int_equal(vuf_frontend_protocol_features(f->dev) & pf, pf);
    tu_ack_features(f->dev, 0);
    fx_queues(f, 2);
}

/* The u64 payload of the request recorded `back` entries before the end. */
static uint64_t rec_u64(struct fx *f, unsigned back)
{
    return be_rec(&f->be, be_count(&f->be) - back).u64;
}

static void test_status_and_reset_device(void **state)
{
    struct fx f;
    struct vuf_queue back[2];
    uint8_t st = 0xee;

    (void)state;
    start(&f, VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(RESET_DEVICE));
    /* A transport's reset before the first activation: nothing to reset. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_none(&f.be, &f.mark);

    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_STATUS), R(GET_STATUS), R(SET_MEM_TABLE),
               SEQ_QUEUE, SEQ_QUEUE, R(SET_STATUS));
    assert_int_equal(be_rec(&f.be, f.mark - 16).u64, ST_FEATURES); /* the first SET_STATUS */
    assert_int_equal(rec_u64(&f, 1), ST_RUNNING);
    assert_int_equal(vuf_frontend_get_status(f.dev, &st), 0);
    expect_seq(&f.be, &f.mark, R(GET_STATUS));
    assert_int_equal(st, ST_RUNNING);

    /* Sleep and wake change no status: nothing is sent for it. */
    assert_int_equal(vuf_device_sleep(f.dev, back, 2), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, 2), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.status, ST_RUNNING);

    /* Reset: the rings stop, the status goes to 0, then RESET_DEVICE. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP, R(SET_STATUS), R(RESET_DEVICE));
    assert_int_equal(rec_u64(&f, 2), 0);
    assert_int_equal(f.be.status, 0);
    /* A second reset has nothing left to reset. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_none(&f.be, &f.mark);

    /* The back-end forgot the features: the next activation sends them
     * again, and the status steps again. */
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_STATUS), R(GET_STATUS), R(SET_MEM_TABLE),
               SEQ_QUEUE, SEQ_QUEUE, R(SET_STATUS));
    assert_int_equal(f.be.status, ST_RUNNING);
    fx_end(&f);
}

/* A back-end that clears FEATURES_OK does not accept the acked features:
 * activation stops there with -ENOTSUP, no ring set up. */
static void test_features_ok_refused(void **state)
{
    struct fx f;

    (void)state;
    start(&f, VUF_PROTO_MASK(STATUS));
    f.be.status_clear = VUF_STATUS_FEATURES_OK;
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -ENOTSUP);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_STATUS), R(GET_STATUS));
    assert_false(vuf_frontend_is_active(f.dev));
    /* The reset after it clears the status; no RESET_DEVICE (not offered). */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_STATUS));
    assert_int_equal(f.be.status, 0);
    fx_end(&f);
}

/* RESET_DEVICE without STATUS: reset ends with it and no SET_STATUS is
 * ever sent. */
static void test_reset_device_only(void **state)
{
    struct fx f;

    (void)state;
    start(&f, VUF_PROTO_MASK(RESET_DEVICE));
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP, R(RESET_DEVICE));
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    fx_end(&f);
}

/* A back-end that offers neither: reset stops the rings and sends nothing
 * else (no RESET_OWNER: deprecated), and GET_STATUS is refused locally. */
static void test_neither(void **state)
{
    struct fx f;
    uint8_t st = 0xee;

    (void)state;
    start(&f, 0);
    assert_int_equal(vuf_frontend_protocol_features(f.dev) &
                         (VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(RESET_DEVICE)),
                     0);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_frontend_get_status(f.dev, &st), -ENOTSUP);
    assert_int_equal(st, 0xee);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    /* The features were not lost: the next activation does not resend them. */
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_frontend_get_status(NULL, &st), -EINVAL);
    assert_int_equal(vuf_frontend_get_status(f.dev, NULL), -EINVAL);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_and_reset_device),
        cmocka_unit_test(test_features_ok_refused),
        cmocka_unit_test(test_reset_device_only),
        cmocka_unit_test(test_neither),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
