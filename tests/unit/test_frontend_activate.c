/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Activation and reset: crosvm's lifecycle sequence, queue checks, NACK
 * roll-back, REPLY_ACK option, interrupts.
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
/* crosvm's lifecycle test                                                  */
/* ------------------------------------------------------------------------ */

static void lifecycle(bool with_backend_req)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    uint8_t buf[12];
    uint8_t *snap = NULL;
    size_t snap_len = 0;

    fx_begin(&f);
    if (with_backend_req)
        f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    if (with_backend_req)
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD));
    else
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES));

    /* read_config */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, sizeof(buf)), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_memory_equal(buf, f.be.config, sizeof(buf));

    /* activate */
    fx_queues(&f, 2);
    vuf_device_ack_features(f.dev, F_EVENT_IDX);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX);
    assert_int_equal(f.be.mem_regions, 1);
    assert_int_equal(be_rec(&f.be, f.mark - 1).b, 1); /* ENABLE(1) */
    assert_true(vuf_frontend_is_active(f.dev));
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EBUSY);
    /* Each started ring got one kick after its set-up. */
    for (unsigned i = 0; i < 2; i++) {
        uint64_t kicks = 0;

        assert_int_equal(read(f.q[i].kick_fd, &kicks, sizeof(kicks)), (ssize_t)sizeof(kicks));
        assert_int_equal(kicks, 1);
    }
    /* The back-end state is only defined with the rings stopped. */
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &snap_len), -EBUSY);
    assert_null(snap);
    expect_none(&f.be, &f.mark);

    /* reset */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(be_rec(&f.be, f.mark - 4).b, 0); /* ENABLE(0) */
    assert_int_equal(be_rec(&f.be, f.mark - 4).a, 0);
    assert_int_equal(be_rec(&f.be, f.mark - 2).a, 1);
    assert_false(vuf_frontend_is_active(f.dev));

    /* re-activate: no SET_FEATURES */
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    if (with_backend_req)
        config_change_ok(&f);

    /* sleep: the queues come back, reclaimed */
    tu_set_used_idx(f.mem, &f.q[0], 5);
    tu_set_used_idx(f.mem, &f.q[1], 6);
    f.be.vring_base = 9;
    struct vuf_queue back[MAX_Q];
    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(back[0].next_avail, 9);
    assert_int_equal(back[0].next_used, 5);
    assert_int_equal(back[1].next_avail, 9);
    assert_int_equal(back[1].next_used, 6);
    assert_int_equal(back[0].kick_fd, f.q[0].kick_fd);
    /* asleep: a second sleep is a no-op */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 0);
    expect_none(&f.be, &f.mark);

    /* snapshot */
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &snap_len), 0);
    expect_seq(&f.be, &f.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_true(snap_len > f.be.state_len);

    /* wake: activate with the reclaimed queues */
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.set_base[0], 9);
    assert_int_equal(f.be.set_base[1], 9);
    if (with_backend_req)
        config_change_ok(&f);
    /* wake(None) */
    assert_int_equal(vuf_device_wake(f.dev, NULL, NULL, NULL, 0), 0);
    expect_none(&f.be, &f.mark);

    /* Dropping the front-end: the back-end sees a hang-up, and the device
     * did not report its own destruction as a crash. */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    {
        int64_t until = tu_now_ms() + 1000;

        while (f.be.running && tu_now_ms() < until) {
            if (pthread_tryjoin_np(f.be.thread, NULL) == 0)
                f.be.running = false;
            else
                tu_sleep_ms(1);
        }
        assert_false(f.be.running); /* the server loop ended on ECONNRESET */
    }
    assert_int_equal(atomic_load(&crashes), 0);

    /* restore on a fresh connection */
    fx_begin(&g);
    if (with_backend_req)
        g.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&g, &cfg), 0);
    if (with_backend_req)
        expect_seq(&g.be, &g.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD));
    else
        expect_seq(&g.be, &g.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES));
    /* sleep before any activation: nothing to hand back */
    assert_int_equal(vuf_device_sleep(g.dev, back, f.nq), 0);
    expect_none(&g.be, &g.mark);
    assert_int_equal(vuf_device_restore(g.dev, snap, snap_len), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_int_equal(g.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX);
    assert_int_equal(g.be.loaded_len, f.be.state_len);
    assert_memory_equal(g.be.loaded, f.be.state, f.be.state_len);
    assert_int_equal(vuf_device_wake(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(g.be.set_base[0], 9);
    if (with_backend_req) {
        uint64_t ack = 1;

        assert_int_equal(vuf_breq_config_change(be_breq(&g.be), true, &ack), 0);
        assert_int_equal(atomic_load(&f.intr.config_calls), 3);
    }
    free(snap);
    fx_end(&g);
    fx_end(&f);
}

static void test_lifecycle(void **state)
{
    (void)state;
    lifecycle(false);
}

static void test_lifecycle_with_backend_req(void **state)
{
    (void)state;
    lifecycle(true);
}

/* ------------------------------------------------------------------------ */
/* Queues                                                                   */
/* ------------------------------------------------------------------------ */

static void test_vring_base_too_big(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue back[MAX_Q];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    f.be.vring_base = 0x10000;
    assert_int_equal(vuf_device_reset(f.dev), -EPROTO);
    /* Both queues were still stopped, the worker is gone, the device is
     * inactive and can start again. */
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1); /* the back-end's only */
    f.be.vring_base = 3;
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);

    /* The same on sleep: the queues still come back (used->idx fallback). */
    tu_set_used_idx(f.mem, &f.q[0], 4);
    tu_set_used_idx(f.mem, &f.q[1], 4);
    f.be.vring_base = 0x10000;
    memcpy(back, f.q, sizeof(back));
    back[0].next_avail = back[1].next_avail = 1;
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), -EPROTO);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(back[0].next_avail, 4);
    assert_int_equal(back[0].next_used, 4);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1);
    fx_end(&f);
}

static void test_activate_checks(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue bad[MAX_Q];

    (void)state;
    fx_begin(&f);
    cfg.max_queue_size = 64;
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    expect_new(&f);
    fx_ack_version_1(&f);

    memcpy(bad, f.q, sizeof(bad));
    bad[1].size = 12; /* not a power of two */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EINVAL);
    memcpy(bad, f.q, sizeof(bad));
    bad[1].size = 128; /* above the max */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EINVAL);
    memcpy(bad, f.q, sizeof(bad));
    bad[0].used_addr = 0x100000 + (1 << 20) - 8; /* runs off guest memory */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EFAULT);
    memcpy(bad, f.q, sizeof(bad));
    bad[0].desc_addr = 0x10; /* not in guest memory */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EFAULT);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, 3), -EINVAL);
    assert_int_equal(vuf_device_activate(f.dev, NULL, &f.vi, f.q, 2), -EINVAL);
    /* No interrupt sink (documented in device.h, issue 7 §3). */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, NULL, f.q, 2), -EINVAL);
    {
        struct vuf_interrupt no_ops = {.ops = NULL, .opaque = NULL};

        assert_int_equal(vuf_device_activate(f.dev, f.mem, &no_ops, f.q, 2), -EINVAL);
    }
    /* Nothing was sent. */
    expect_none(&f.be, &f.mark);

    /* Only ready queues are sent. */
    memcpy(bad, f.q, sizeof(bad));
    bad[0].ready = false;
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(be_rec(&f.be, f.mark - 1).a, 1);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    /* Reset when inactive sends nothing. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

static void test_activate_nack_rolls_back(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    expect_new(&f);
    fx_ack_version_1(&f);
    /* With REPLY_ACK the back-end can refuse queue 1's kick fd. */
    f.be.nack_code = VUF_REQ_SET_VRING_KICK;
    f.be.nack_skip = 1;
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EIO);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, R(SET_VRING_NUM),
               R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL), R(SET_VRING_KICK),
               /* rolled back: both rings stopped again */
               SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1);
    f.be.nack_code = 0;
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    fx_end(&f);
}

static void test_need_reply_option(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    for (int crosvm = 0; crosvm < 2; crosvm++) {
        fx_begin(&f);
        cfg.crosvm_no_need_reply = crosvm;
        assert_int_equal(fx_new(&f, &cfg), 0);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE,
                   SEQ_QUEUE);
        for (unsigned i = 4; i < f.mark; i++)
            assert_int_equal(!!(be_rec(&f.be, i).flags & VUF_FLAG_NEED_REPLY), !crosvm);
        fx_end(&f);
    }
}

static void test_interrupts(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint64_t one = 1, v = 0;
    int64_t until;

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    /* Queue 0 has no vector: the shared eventfd -> signal_used_queue(NO_VECTOR). */
    assert_int_equal(write(f.be.call_fd[0], &one, 8), 8);
    until = tu_now_ms() + 1000;
    while (atomic_load(&f.intr.used_calls) == 0 && tu_now_ms() < until)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&f.intr.used_calls), 1);
    assert_int_equal(atomic_load(&f.intr.last_vector), VUF_NO_VECTOR);
    /* Queue 1's call fd is the irqfd of vector 1: straight to the VMM. */
    assert_int_equal(write(f.be.call_fd[1], &one, 8), 8);
    assert_int_equal(read(f.intr.irqfd1, &v, 8), 8);
    assert_int_equal(v, 1);
    tu_sleep_ms(20);
    assert_int_equal(atomic_load(&f.intr.used_calls), 1);
    fx_end(&f);
}

/* Whether eventfd `fd` has a count (without taking it). */
static bool efd_ready(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, 0) == 1;
}

static atomic_int wiring_config_calls;
static void wiring_config_changed(void *opaque)
{
    (void)opaque;
    atomic_fetch_add(&wiring_config_calls, 1);
}

/* Issue 14: a modern device refuses to start for a driver that did not
 * accept VERSION_1 (qemu-storage-daemon aborts on such a SET_FEATURES). */
static void test_version_1_required(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    (void)state;
    fx_begin(&f);
    fx_queues(&f, 2); /* before the device: no ack yet */
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX), 0);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EINVAL);
    expect_none(&f.be, &f.mark);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_false(vuf_frontend_last_sent_features(f.dev, NULL));
    /* The driver acks it: the same device starts. */
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1), 0);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX);
    fx_end(&f);

    /* A back-end that does not offer VERSION_1 (legacy): nothing to ack. */
    fx_begin(&f);
    f.be.features &= ~F_VERSION_1;
    fx_queues(&f, 1);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO);
    fx_end(&f);

    /* cfg.legacy: VERSION_1 is not offered, and not required. */
    fx_begin(&f);
    cfg.legacy = true;
    fx_queues(&f, 1);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_features(f.dev) & F_VERSION_1, 0);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO);
    fx_end(&f);
}

/* Issue 14: features are fixed from FEATURES_OK until reset (virtio 1.2
 * §3.1.1): a new bit while active or asleep is -EBUSY and never sent. */
static void test_features_frozen(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    struct vuf_queue back[MAX_Q];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX), -EBUSY);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_VERSION_1);
    /* Acking again what is acked changes nothing: allowed. */
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1), 0);

    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX | F_VERSION_1), -EBUSY);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_VERSION_1);
    /* The wake sends no SET_FEATURES: nothing changed. */
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1);

    /* After a reset the driver negotiates again. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_VERSION_1 | F_EVENT_IDX);
    fx_end(&f);
}

/* Issue 14: wake resumes a device that slept (or was restored); one that
 * never slept, or was reset since, is not started by it. */
static void test_wake_needs_sleep(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue back[MAX_Q];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, f.q, f.nq), -EINVAL);
    assert_int_equal(vuf_device_wake(f.dev, NULL, &f.vi, f.q, f.nq), 0); /* nothing to resume */
    /* A sleep of an inactive device hands nothing back: still no wake. */
    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 0);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EINVAL);
    expect_none(&f.be, &f.mark);
    assert_false(vuf_frontend_is_active(f.dev));

    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, f.q, f.nq), -EBUSY);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    /* Reset ends the sleep: the driver starts over with activate. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EINVAL);
    assert_false(vuf_frontend_is_active(f.dev));
    fx_end(&f);
}

/* Issue 7 §3: vuf_queue_from_virtq() and vuf_virtq_irq_sink() are the
 * queue wiring every in-process VMM wrote by hand. */
static void test_virtq_wiring(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_virtq *vq[2];
    struct vuf_virtq_layout l;
    struct vuf_virtq_irq irq;
    struct vuf_interrupt intr;
    uint64_t v = 0;

    (void)state;
    atomic_store(&wiring_config_calls, 0);
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_ack_version_1(&f);
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &f.mem), 0);
    for (unsigned i = 0; i < 2; i++) {
        struct vuf_virtq_opts o = {.size = 16, .index = i, .base = (uint16_t)(i ? 5 : 0)};

        assert_int_equal(vuf_virtq_new_opts(f.mem, &o, &vq[i]), 0);
        vuf_queue_from_virtq(&f.q[i], vq[i], (uint16_t)i);
    }
    vuf_virtq_layout(vq[1], &l);
    assert_int_equal(f.q[1].size, 16);
    assert_true(f.q[1].ready);
    assert_int_equal(f.q[1].desc_addr, l.desc_gpa);
    assert_int_equal(f.q[1].avail_addr, l.avail_gpa);
    assert_int_equal(f.q[1].used_addr, l.used_gpa);
    assert_int_equal(f.q[1].vector, 1);
    assert_int_equal(f.q[1].kick_fd, vuf_virtq_kick_fd(vq[1]));
    assert_int_equal(f.q[1].next_avail, 5);
    assert_int_equal(f.q[1].next_used, 5);

    irq = (struct vuf_virtq_irq){.vqs = vq, .n = 2, .config_changed = wiring_config_changed};
    intr = vuf_virtq_irq_sink(&irq);
    assert_ptr_equal(intr.opaque, &irq);
    assert_int_equal(intr.ops->irqfd(intr.opaque, 0), vuf_virtq_call_fd(vq[0]));
    assert_int_equal(intr.ops->irqfd(intr.opaque, 1), vuf_virtq_call_fd(vq[1]));
    assert_int_equal(intr.ops->irqfd(intr.opaque, 2), -1);
    assert_int_equal(intr.ops->irqfd(intr.opaque, VUF_NO_VECTOR), -1);
    intr.ops->signal_config_changed(intr.opaque);
    assert_int_equal(atomic_load(&wiring_config_calls), 1);

    /* Activated with them, the back-end signals each ring's call fd. */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &intr, f.q, 2), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.set_base[1], 5);
    assert_false(efd_ready(vuf_virtq_call_fd(vq[0])));
    assert_int_equal(write(f.be.call_fd[1], &(uint64_t){1}, 8), 8);
    assert_true(efd_ready(vuf_virtq_call_fd(vq[1])));
    assert_false(efd_ready(vuf_virtq_call_fd(vq[0])));
    assert_int_equal(read(vuf_virtq_call_fd(vq[1]), &v, 8), 8);
    /* The no-vector path wakes every queue. */
    intr.ops->signal_used_queue(intr.opaque, VUF_NO_VECTOR);
    assert_true(efd_ready(vuf_virtq_call_fd(vq[0])));
    assert_true(efd_ready(vuf_virtq_call_fd(vq[1])));
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    for (unsigned i = 0; i < 2; i++)
        vuf_virtq_free(vq[i]);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_lifecycle_with_backend_req),
        cmocka_unit_test(test_vring_base_too_big),
        cmocka_unit_test(test_activate_checks),
        cmocka_unit_test(test_activate_nack_rolls_back),
        cmocka_unit_test(test_need_reply_option),
        cmocka_unit_test(test_interrupts),
        cmocka_unit_test(test_virtq_wiring),
        cmocka_unit_test(test_version_1_required),
        cmocka_unit_test(test_features_frozen),
        cmocka_unit_test(test_wake_needs_sleep),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
