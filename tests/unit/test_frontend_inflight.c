/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. The inflight area (INFLIGHT_SHMFD): GET/SET sequence, export/import,
 * checks.
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

/* Inflight area (INFLIGHT_SHMFD)                                           */
/* ------------------------------------------------------------------------ */

static struct vuf_frontend_config infl_cfg(void)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    cfg.inflight = true;
    return cfg;
}

static ino_t fd_ino(int fd)
{
    struct stat st;

    assert_int_equal(fstat(fd, &st), 0);
    return st.st_ino;
}

/* The last SET_INFLIGHT_FD carried the area the last GET handed out. */
static void expect_set_of_get(struct be *be, uint16_t nq)
{
    assert_int_equal(be->infl_set_nfds, 1);
    assert_int_equal(be->infl_set_ino, be->infl_get_ino);
    assert_int_equal(be->infl_set.mmap_size, be->infl_size);
    assert_int_equal(be->infl_set.mmap_offset, be->infl_offset);
    assert_int_equal(be->infl_set.num_queues, nq);
    assert_int_equal(be->infl_set.queue_size, 16);
}

/*
 * GET_INFLIGHT_FD once, after SET_FEATURES; SET_INFLIGHT_FD with the same
 * file, size and offset at every activation and wake, before
 * SET_MEM_TABLE; reset frees the area and the next activation asks again.
 */
static void test_inflight_sequence(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area a;
    struct vuf_queue back[MAX_Q];
    uint16_t nq;
    ino_t first;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    f.be.infl_offset = 8192; /* the area need not start the file */
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_true(be_rec(&f.be, 3).u64 & VUF_PROTO_MASK(INFLIGHT_SHMFD));
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(INFLIGHT_SHMFD));
    nq = (uint16_t)vuf_device_num_queues(f.dev);
    fx_queues(&f, 2);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
    assert_int_equal(vuf_frontend_inflight_export(NULL, &a), -EINVAL);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, NULL), -EINVAL);

    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD),
               R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    /* Asked for every queue of the device, sized as the started ones. */
    assert_int_equal(f.be.infl_get.num_queues, nq);
    assert_int_equal(f.be.infl_get.queue_size, 16);
    assert_int_equal(be_rec(&f.be, f.mark - 15).nfds, 0); /* GET: no fd */
    expect_set_of_get(&f.be, nq);
    first = f.be.infl_get_ino;

    /* Export: a dup of the same file, with the area's values. */
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), 0);
    assert_true(a.fd >= 0);
    assert_int_equal(fd_ino(a.fd), first);
    assert_true(fcntl(a.fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(a.mmap_size, 4096);
    assert_int_equal(a.mmap_offset, 8192);
    assert_int_equal(a.num_queues, nq);
    assert_int_equal(a.queue_size, 16);
    close(a.fd);

    /* Sleep keeps the area (nothing sent for it); wake hands it back. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    f.be.infl_set_ino = 0;
    /* A queue larger than the area's queues is refused before anything
     * is sent. */
    back[0].size = 32;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EINVAL);
    expect_none(&f.be, &f.mark);
    back[0].size = 16;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    expect_set_of_get(&f.be, nq);
    assert_int_equal(f.be.infl_set_ino, first);

    /* A refused SET_INFLIGHT_FD fails the activation; the area stays. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    f.be.nack_code = R(SET_INFLIGHT_FD);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EIO);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD));
    f.be.nack_code = 0;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.infl_set_ino, first);

    /* Reset frees it: the next activation asks for a new one. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
               SEQ_QUEUE);
    assert_int_not_equal(f.be.infl_get_ino, first);
    expect_set_of_get(&f.be, nq);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&f);
}

/*
 * Reconnect: the area of the first device goes to a second one (another
 * back-end), which sends no GET_INFLIGHT_FD, only SET_INFLIGHT_FD with the
 * same file before its rings.
 */
static void test_inflight_export_import(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area a, b;
    struct vuf_queue back[MAX_Q];
    uint16_t nq;
    ino_t ino;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    nq = (uint16_t)vuf_device_num_queues(f.dev);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD),
               R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    ino = f.be.infl_get_ino;
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), 0);
    vuf_device_destroy(f.dev); /* the area lives on in the export */
    f.dev = NULL;
    be_kill(&f.be); /* its thread is gone before g counts threads */

    fx_begin(&g); /* counts the export's fd: closed after fx_end(&g) */
    g.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    cfg.inflight_area = &a;
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    /* The area is the device's from the start. */
    assert_int_equal(vuf_frontend_inflight_export(g.dev, &b), 0);
    assert_int_equal(fd_ino(b.fd), ino);
    assert_int_equal(b.mmap_size, a.mmap_size);
    assert_int_equal(b.mmap_offset, a.mmap_offset);
    assert_int_equal(b.num_queues, nq);
    assert_int_equal(b.queue_size, 16);
    close(b.fd);
    fx_ack_version_1(&g);
    assert_int_equal(vuf_device_activate(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
               SEQ_QUEUE);
    assert_int_equal(g.be.infl_set_nfds, 1);
    assert_int_equal(g.be.infl_set_ino, ino);
    assert_int_equal(g.be.infl_set.mmap_size, 4096);
    assert_int_equal(g.be.infl_set.mmap_offset, 0);
    assert_int_equal(g.be.infl_set.num_queues, nq);
    assert_int_equal(g.be.infl_set.queue_size, 16);
    assert_int_equal(vuf_device_reset(g.dev), 0);
    expect_seq(&g.be, &g.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&g);
    close(a.fd); /* borrowed by vuf_frontend_new: still ours */
    fx_end(&f);
}

/* vuf_frontend_new with `area` on a fresh back-end (offering
 * INFLIGHT_SHMFD if `offer`): its result; no fd or thread leaks. */
static int try_import(const struct vuf_inflight_area *area, bool inflight, bool offer)
{
    struct fx f;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area x;
    int r;

    fx_begin(&f);
    if (offer)
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    cfg.inflight = inflight;
    cfg.inflight_area = area;
    r = fx_new(&f, &cfg);
    if (r == 0) {
        int e = vuf_frontend_inflight_export(f.dev, &x);

        if (e == 0)
            close(x.fd);
        else
            assert_int_equal(e, -ENOENT);
        /* Ignored without INFLIGHT_SHMFD. */
        assert_int_equal(e == 0, offer && inflight);
    } else {
        f.dev = NULL;
    }
    fx_end(&f);
    return r;
}

static void test_inflight_import_checks(void **state)
{
    struct vuf_inflight_area a;
    int mfd = memfd_create("area", MFD_CLOEXEC), p[2];

    (void)state;
    assert_true(mfd >= 0);
    assert_int_equal(ftruncate(mfd, 8192), 0);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    /* The console has 2 queues here (no MQ). */
    a = (struct vuf_inflight_area){mfd, 4096, 4096, 2, 16};
    assert_int_equal(try_import(&a, true, true), 0);
    assert_int_equal(try_import(&a, true, false), 0); /* ignored */
    assert_int_equal(try_import(&a, false, true), -EINVAL);
    a.num_queues = 3;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.num_queues = 2;
    a.mmap_size = 8192; /* beyond the file */
    assert_int_equal(try_import(&a, true, true), -EBADF);
    a.mmap_size = 1ull << 40; /* too large */
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.mmap_size = 0;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.mmap_size = 4096;
    a.fd = p[0];
    assert_int_equal(try_import(&a, true, true), -EBADF);
    a.fd = -1;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    close(p[0]);
    close(p[1]);
    close(mfd);
}

/*
 * Answers that cannot be an area are refused (the activation fails, the
 * fd is closed, the next activation asks again); mmap_size 0 means the
 * back-end has none: nothing more is sent until a reset.
 */
static void test_inflight_bad_answers(void **state)
{
    static const struct {
        enum infl_mode mode;
        uint64_t size, file;
    } bad[] = {
        {INFL_MEMFD, 1ull << 30, 4096},  /* huge (the file is small too) */
        {INFL_MEMFD, 64ull << 20, 0},    /* the 64 MiB cap, file as large */
        {INFL_MEMFD, 3 * 4096 + 1, 0},   /* more than 2 queues of 16 need */
        {INFL_MEMFD, 8192, 4096},        /* the file is too small */
        {INFL_PIPE, 4096, 0},            /* not a file */
        {INFL_SOCKET, 4096, 0},          /* not a file */
        {INFL_ZERO_WITH_FD, 4096, 4096}, /* mmap_size 0 with an fd */
    };
    struct vuf_inflight_area a;
    struct vuf_queue back[MAX_Q];

    (void)state;
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        f.be.infl_mode = bad[i].mode;
        f.be.infl_size = bad[i].size;
        f.be.infl_file = bad[i].file;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        fx_queues(&f, 2);
        assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EPROTO);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD));
        assert_false(vuf_frontend_is_active(f.dev));
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        /* The connection is still in step: a good answer now works. */
        f.be.infl_mode = INFL_MEMFD;
        f.be.infl_size = 4096;
        f.be.infl_file = 0;
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE),
                   SEQ_QUEUE, SEQ_QUEUE);
        expect_set_of_get(&f.be, 2);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_end(&f); /* no fd left behind */
    }

    /* No area: one GET, then nothing until a reset. */
    {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        f.be.infl_mode = INFL_NONE;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
                   SEQ_QUEUE);
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        fx_end(&f);
    }
}

/* Off by default: a back-end's INFLIGHT_SHMFD is not acked and nothing
 * inflight is sent; on, a back-end without it gets nothing either. */
static void test_inflight_off(void **state)
{
    for (int on = 0; on < 2; on++) {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();
        struct vuf_inflight_area a;

        (void)state;
        cfg.inflight = on;
        fx_begin(&f);
        if (!on)
            f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        assert_false(be_rec(&f.be, 3).u64 & VUF_PROTO_MASK(INFLIGHT_SHMFD));
        assert_false(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(INFLIGHT_SHMFD));
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_end(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inflight_sequence),
        cmocka_unit_test(test_inflight_export_import),
        cmocka_unit_test(test_inflight_import_checks),
        cmocka_unit_test(test_inflight_bad_answers),
        cmocka_unit_test(test_inflight_off),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
