/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Config space reads and writes through GET/SET_CONFIG.
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

/* Config space                                                             */
/* ------------------------------------------------------------------------ */

static void test_config(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint8_t buf[300], w[4] = {9, 8, 7, 6};

    (void)state;
    cfg.config_size = 1024; /* past the fake's 512 bytes, not console's 12 */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);

    assert_int_equal(vuf_device_write_config(f.dev, 4, w, sizeof(w)), 0);
    expect_seq(&f.be, &f.mark, R(SET_CONFIG));
    assert_memory_equal(f.be.config + 4, w, 4);

    /* A reply for another offset is refused; the buffer is untouched. */
    memset(buf, 0xee, sizeof(buf));
    f.be.config_bad_offset = true;
    assert_int_equal(vuf_device_read_config(f.dev, 2, buf, 8), -EPROTO);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(buf[i], 0xee);
    f.be.config_bad_offset = false;
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));

    /* The back-end refuses (empty reply): an error, not a crash. */
    assert_true(vuf_device_read_config(f.dev, 510, buf, 10) < 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));

    /* Over 256 bytes: split into two requests. */
    f.be.config[0] = 0x42;
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 300), 0);
    assert_memory_equal(buf, f.be.config, 300);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG), R(GET_CONFIG));
    assert_int_equal(be_rec(&f.be, f.mark - 1).a, 256);
    assert_int_equal(be_rec(&f.be, f.mark - 1).b, 44);
    assert_int_equal(vuf_device_read_config(f.dev, 0x1000, buf, 4), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 1ull << 40, buf, 4), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 0), 0);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* Issue 14: an access past the config space is refused before anything is
 * sent (qemu-storage-daemon fails it with an empty reply: -EIO). */
static void test_config_past_end(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);
    uint8_t buf[128];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    /* blk: 60 bytes (up to write_zeroes_may_unmap and its padding) */
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vuf_device_read_config(f.dev, 56, buf, 8), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 61), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 60, buf, 1), -EINVAL);
    assert_int_equal(vuf_device_write_config(f.dev, 59, buf, 2), -EINVAL);
    assert_int_equal(buf[0], 0xee);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 60), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_memory_equal(buf, f.be.config, 60);
    assert_int_equal(vuf_device_read_config(f.dev, 56, buf, 4), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    fx_end(&f);

    /* SECURE_ERASE offered: the three secure-erase fields, 72 bytes. */
    fx_begin(&f);
    f.be.features |= BIT(VUF_BLK_F_SECURE_ERASE);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_read_config(f.dev, 60, buf, 12), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_int_equal(vuf_device_read_config(f.dev, 60, buf, 13), -EINVAL);
    expect_none(&f.be, &f.mark);
    fx_end(&f);

    /* cfg.config_size: the VMM knows better. */
    fx_begin(&f);
    cfg.config_size = 16;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_read_config(f.dev, 8, buf, 8), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_int_equal(vuf_device_read_config(f.dev, 8, buf, 9), -EINVAL);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_past_end),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
