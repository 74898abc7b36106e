/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Snapshot and restore (DEVICE_STATE): transfer modes, bounds, failures.
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

/* Snapshot / restore edge cases                                            */
/* ------------------------------------------------------------------------ */

static void test_snapshot_variants(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint8_t *snap = NULL;
    size_t len = 0;
    int64_t t0;

    (void)state;
    /* The back-end hands us its own fd to read from; a big state. */
    fx_begin(&f);
    f.be.save_mode = SAVE_OWN_FD;
    f.be.state_len = sizeof(f.be.state);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), 0);
    expect_seq(&f.be, &f.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));

    /* Restore onto a back-end that lacks an acked feature: refused. */
    fx_begin(&g);
    g.be.features = F_PROTO;
    assert_int_equal(fx_new(&g, &cfg), 0);
    vuf_device_ack_features(f.dev, BIT(0));
    free(snap);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_restore(g.dev, snap, len), -ENOTSUP);
    /* A damaged blob. */
    snap[0] ^= 1;
    assert_int_equal(vuf_device_restore(g.dev, snap, len), -EINVAL);
    snap[0] ^= 1;
    assert_int_equal(vuf_device_restore(g.dev, snap, len - 1), -EINVAL);
    assert_int_equal(vuf_device_restore(g.dev, snap, 3), -EINVAL);
    expect_none(&g.be, &g.mark);
    fx_end(&g);

    /* A back-end that rejects the loaded state: the restore fails and the
     * acked features stay as they were (SET_FEATURES went out, so the next
     * activation sends the old set again). */
    fx_begin(&g);
    g.be.check_status = 1;
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    {
        uint64_t before = vuf_frontend_acked_features(g.dev);

        assert_int_equal(vuf_device_restore(g.dev, snap, len), -EIO);
        expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
        assert_int_equal(vuf_frontend_acked_features(g.dev), before);
    }
    fx_end(&g);

    /* A matching back-end takes the big state. */
    fx_begin(&g);
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_restore(g.dev, snap, len), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_int_equal(g.be.acked, F_PROTO | BIT(0));
    assert_int_equal(g.be.loaded_len, sizeof(f.be.state));
    assert_memory_equal(g.be.loaded, f.be.state, sizeof(f.be.state));
    /* A second restore with the same features: no SET_FEATURES. */
    assert_int_equal(vuf_device_restore(g.dev, snap, len), 0);
    expect_seq(&g.be, &g.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    fx_end(&g);
    free(snap);
    snap = NULL;

    /* Larger than allowed. */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    fx_end(&f);
    fx_begin(&f);
    cfg.max_state_size = 1000;
    f.be.state_len = 2000;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -EFBIG);
    assert_null(snap);
    fx_end(&f);

    /* A silent back-end: bounded by the timeout. */
    fx_begin(&f);
    cfg.max_state_size = 0;
    cfg.state_timeout_ms = 200;
    f.be.save_mode = SAVE_SILENT;
    assert_int_equal(fx_new(&f, &cfg), 0);
    t0 = tu_now_ms();
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -ETIMEDOUT);
    assert_true(tu_now_ms() - t0 < 2000);
    fx_end(&f);

    /* No DEVICE_STATE. */
    fx_begin(&f);
    f.be.protocol_features = VUF_PROTO_MASK(CONFIG);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -ENOTSUP);
    assert_int_equal(vuf_device_restore(f.dev, (const uint8_t *)"x", 1), -ENOTSUP);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_variants),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
