/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. A back-end that hangs up: the crash event, reset after a crash,
 * reconnecting to a new back-end.
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

/* Crash                                                                    */
/* ------------------------------------------------------------------------ */

static void test_backend_crash(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue back[MAX_Q];
    int64_t t0;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    tu_set_used_idx(f.mem, &f.q[0], 11);
    tu_set_used_idx(f.mem, &f.q[1], 12);

    t0 = tu_now_ms();
    be_kill(&f.be);
    while (atomic_load(&crashes) == 0 && tu_now_ms() - t0 < 1000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), 1);
    assert_true(tu_now_ms() - t0 < 1000);
    tu_sleep_ms(20);
    assert_int_equal(atomic_load(&crashes), 1); /* once */

    /* Sleep fails fast but still hands the queues back (used->idx). Every
     * call below meets the dead peer at its first send (EPIPE on the unix
     * socket, which vuf_conn reports as -ECONNRESET) or at the error the
     * front-end remembered from it. */
    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), -ECONNRESET);
    assert_int_equal(back[0].next_avail, 11);
    assert_int_equal(back[1].next_avail, 12);
    assert_false(vuf_frontend_is_active(f.dev));
    /* Activation against a dead back-end fails cleanly. */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -ECONNRESET);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_true(vuf_device_reset(f.dev) == 0);
    fx_end(&f); /* fds and threads back to where they were */
}

static void test_crash_during_reset_path(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 1);
    fx_activate_ok(&f);
    be_kill(&f.be);
    /* reset reports the dead back-end, stops the worker anyway. */
    assert_int_equal(vuf_device_reset(f.dev), -ECONNRESET);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0), f.threads0);
    fx_end(&f);
}

/*
 * Reconnect (docs/reconnect.md): after a crash, sleep hands the queues back
 * resynced from used->idx; they start the rings of a NEW front-end on a
 * new back-end as they are: SET_FEATURES carries the re-acked features and
 * SET_VRING_BASE the used index.
 */
static void test_reconnect_new_backend(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    struct vuf_queue back[MAX_Q];
    uint64_t acked;
    int64_t t0;

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX), 0);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    tu_set_used_idx(f.mem, &f.q[0], 7);
    tu_set_used_idx(f.mem, &f.q[1], 0xfffe);

    t0 = tu_now_ms();
    be_kill(&f.be);
    while (atomic_load(&crashes) == 0 && tu_now_ms() - t0 < 1000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), 1);
    memcpy(back, f.q, sizeof(back));
    back[0].next_avail = back[1].next_avail = 1;
    {
        int r = vuf_device_sleep(f.dev, back, f.nq);

        /* Not -EINVAL: the queues came back; the error is the hang-up. */
        assert_int_equal(r, -ECONNRESET);
    }
    assert_int_equal(back[0].next_avail, 7);
    assert_int_equal(back[0].next_used, 7);
    assert_int_equal(back[1].next_avail, 0xfffe);
    assert_int_equal(back[1].next_used, 0xfffe);
    assert_int_equal(back[1].used_addr, f.q[1].used_addr);
    assert_int_equal(back[1].kick_fd, f.q[1].kick_fd);
    acked = vuf_frontend_acked_features(f.dev);
    assert_int_equal(acked, F_VERSION_1 | F_EVENT_IDX);
    vuf_device_destroy(f.dev);
    f.dev = NULL;

    /* The restarted back-end: a new connection, a new device. */
    fx_begin(&g);
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_features(g.dev) & acked, acked);
    assert_int_equal(vuf_device_ack_features(g.dev, acked), 0);
    assert_int_equal(vuf_frontend_acked_features(g.dev), acked);
    /* The new device never slept: it is activated with the queues (a wake
     * is refused, docs/reconnect.md). */
    assert_int_equal(vuf_device_wake(g.dev, f.mem, &f.vi, back, f.nq), -EINVAL);
    expect_none(&g.be, &g.mark);
    assert_int_equal(vuf_device_activate(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(g.be.acked, acked | F_PROTO); /* bit 30 is sent, never reported */
    assert_int_equal(g.be.set_base[0], 7);
    assert_int_equal(g.be.set_base[1], 0xfffe);
    assert_true(vuf_frontend_is_active(g.dev));
    assert_int_equal(atomic_load(&crashes), 0); /* fx_begin(&g) cleared it; none since */
    fx_end(&g);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_crash),
        cmocka_unit_test(test_crash_during_reset_path),
        cmocka_unit_test(test_reconnect_new_backend),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
