/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Dirty-page logging (LOG_SHMFD, LOG_ALL): log set-up, sync, switch, stop.
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

/* Dirty logging                                                            */
/* ------------------------------------------------------------------------ */

#define F_LOG_ALL BIT(VUF_VHOST_F_LOG_ALL)

/* The back-end logs `page` as libvhost-user does (atomic byte OR). */
static void be_log_page(struct be *be, uint64_t page)
{
    assert_non_null(be->log);
    assert_true(page / 8 < be->log_size);
    __atomic_fetch_or(&be->log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_SEQ_CST);
}

/* Request `back` records ago, counted from the end. */
static struct rec be_rec_back(struct be *be, unsigned mark, unsigned back)
{
    return be_rec(be, mark - back);
}

struct pages {
    uint64_t p[16];
    unsigned n;
    unsigned stop_after; /* 0: never */
};

static int collect(void *opaque, uint64_t page)
{
    struct pages *ps = opaque;

    if (ps->n < 16)
        ps->p[ps->n] = page;
    ps->n++;
    return ps->stop_after && ps->n == ps->stop_after ? 7 : 0;
}

static void test_dirty_log(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX | F_LOG_ALL);
    struct vuf_queue back[MAX_Q];
    uint8_t bm[80];
    uint64_t n = 99;
    struct pages ps;
    /* Guest memory is [0x100000, 0x200000): 512 pages from GPA 0 = 64 bytes. */
    const size_t log_bytes = 64;
    const uint64_t dirty[] = {0x100, 0x137, 0x1ff};

    (void)state;
    cfg.dirty_log = true;
    fx_begin(&f);
    f.be.features |= F_LOG_ALL;
    f.be.protocol_features |= VUF_PROTO_MASK(LOG_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(LOG_SHMFD));
    /* LOG_ALL is never offered to the driver, even when base asks for it. */
    assert_int_equal(vuf_device_features(f.dev) & F_LOG_ALL, 0);
    assert_int_equal(vuf_device_ack_features(f.dev, F_LOG_ALL | F_EVENT_IDX), 1);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_EVENT_IDX);

    /* Not active: nothing to size the log by. */
    assert_int_equal(vuf_frontend_log_start(f.dev), -EINVAL);
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, NULL), -EINVAL);
    assert_int_equal(vuf_frontend_log_stop(f.dev), -EINVAL);
    assert_false(vuf_frontend_log_is_active(f.dev));
    expect_none(&f.be, &f.mark);

    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.addr[0].flags, 0);

    /* start: SET_LOG_BASE + fd, SET_FEATURES | LOG_ALL, SET_VRING_ADDR with
     * LOG and the used ring's GPA per started ring, each acked. */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    assert_int_equal(vuf_frontend_log_start(f.dev), -EALREADY);
    assert_true(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_bytes(f.dev), log_bytes);
    assert_int_equal(be_rec_back(&f.be, f.mark, 4).u64, log_bytes);
    assert_int_equal(f.be.log_nfds, 1);
    assert_int_equal(f.be.log_size, log_bytes);
    assert_int_equal(be_rec_back(&f.be, f.mark, 3).u64,
                     F_PROTO | F_VERSION_1 | F_EVENT_IDX | F_LOG_ALL);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX | F_LOG_ALL);
    assert_true(be_rec_back(&f.be, f.mark, 3).flags & VUF_FLAG_NEED_REPLY);
    for (unsigned i = 0; i < 2; i++) {
        assert_true(be_rec_back(&f.be, f.mark, 2 - i).flags & VUF_FLAG_NEED_REPLY);
        assert_int_equal(f.be.addr[i].flags, VUF_VRING_F_LOG);
        assert_int_equal(f.be.addr[i].log, f.q[i].used_addr);
        assert_int_equal(f.be.addr[i].used,
                         (uint64_t)(uintptr_t)vuf_guest_mem_to_host(f.mem, f.q[i].used_addr, 8));
    }
    /* Nothing logged yet. */
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 0);

    /* The back-end's bits come back exactly, and are cleared. */
    for (unsigned i = 0; i < 3; i++)
        be_log_page(&f.be, dirty[i]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, 8, &n), -ENOSPC);
    memset(bm, 0xee, sizeof(bm));
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 3);
    for (uint64_t p = 0; p < sizeof(bm) * 8; p++) {
        bool want = p == dirty[0] || p == dirty[1] || p == dirty[2];

        assert_int_equal(!!(bm[p / 8] & (1u << (p % 8))), want);
    }
    for (size_t i = 0; i < log_bytes; i++)
        assert_int_equal(f.be.log[i], 0);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 0);

    /* Iterating: ascending page numbers; a stop keeps the rest. */
    for (unsigned i = 0; i < 3; i++)
        be_log_page(&f.be, dirty[2 - i]);
    memset(&ps, 0, sizeof(ps));
    ps.stop_after = 2;
    assert_int_equal(vuf_frontend_log_for_each_dirty(f.dev, collect, &ps), 7);
    assert_int_equal(ps.n, 2);
    assert_int_equal(ps.p[0], dirty[0]);
    assert_int_equal(ps.p[1], dirty[1]);
    memset(&ps, 0, sizeof(ps));
    assert_int_equal(vuf_frontend_log_for_each_dirty(f.dev, collect, &ps), 0);
    assert_int_equal(ps.n, 1);
    assert_int_equal(ps.p[0], dirty[2]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, &n), 0);
    assert_int_equal(n, 0);
    expect_none(&f.be, &f.mark);

    /* sleep keeps logging (nothing sent about it); bits stay syncable. */
    be_log_page(&f.be, dirty[1]);
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_true(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, &n), 0);
    assert_int_equal(n, 1);
    /* wake re-sends the log and the flags (SET_FEATURES is unchanged). */
    memset(f.be.addr, 0, sizeof(f.be.addr));
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.log_bases, 2);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(f.be.addr[i].flags, VUF_VRING_F_LOG);
        assert_int_equal(f.be.addr[i].log, f.q[i].used_addr);
    }
    be_log_page(&f.be, dirty[0]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(bm[dirty[0] / 8], 1u << (dirty[0] % 8));

    /* Hot-adding memory above the log's end while the rings run grows the
     * log: bits the back-end sets in the old log (before the update, and
     * while it switches to the new one) are all kept. */
    {
        uint8_t big[160];
        const uint64_t at_switch = 0x150, high = 0x480;

        be_log_page(&f.be, dirty[2]);
        f.be.log_page_at_switch = at_switch;
        assert_int_equal(vuf_guest_mem_add_memfd(f.mem, 0x400000, 0x100000), 0);
        assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE));
        /* GPA 0 .. 0x500000: 1280 pages, 160 bytes. */
        assert_int_equal(vuf_frontend_log_bytes(f.dev), 160);
        assert_int_equal(f.be.log_size, 160);
        be_log_page(&f.be, high);
        assert_int_equal(vuf_frontend_log_sync(f.dev, big, sizeof(big), &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(big[dirty[2] / 8], 1u << (dirty[2] % 8));
        assert_int_equal(big[at_switch / 8], 1u << (at_switch % 8));
        assert_int_equal(big[high / 8], 1u << (high % 8));
        /* And back: the log keeps its size, the table shrinks. */
        assert_int_equal(vuf_guest_mem_remove(f.mem, 0x400000), 0);
        assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE));
    }

    /* stop reverses start; the log is gone. */
    assert_int_equal(vuf_frontend_log_stop(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_VRING_ADDR), R(SET_VRING_ADDR));
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(f.be.addr[i].flags, 0);
        assert_int_equal(f.be.addr[i].log, 0);
    }
    assert_false(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_bytes(f.dev), 0);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), -EINVAL);
    assert_int_equal(vuf_frontend_log_stop(f.dev), -EINVAL);

    /* reset ends logging without messages; the next activation's
     * SET_FEATURES drops LOG_ALL and no SET_LOG_BASE goes out. */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_log_is_active(f.dev));
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_VERSION_1 | F_EVENT_IDX);
    assert_int_equal(f.be.addr[0].flags, 0);

    /* Logging at destroy: released with the device (no fd leak). */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    fx_end(&f);
}

/* -ENOTSUP unless cfg.dirty_log, LOG_SHMFD and LOG_ALL all hold. */
static void test_dirty_log_not_supported(void **state)
{
    (void)state;
    for (int c = 0; c < 3; c++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

        fx_begin(&f);
        cfg.dirty_log = c != 0;
        f.be.features |= c == 1 ? 0 : F_LOG_ALL;
        f.be.protocol_features |= c == 2 ? 0 : VUF_PROTO_MASK(LOG_SHMFD);
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        /* Without cfg.dirty_log, LOG_SHMFD is not negotiated. */
        assert_int_equal(!!(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(LOG_SHMFD)),
                         c == 1);
        assert_int_equal(vuf_device_features(f.dev) & F_LOG_ALL, 0);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_frontend_log_start(f.dev), -ENOTSUP);
        assert_false(vuf_frontend_log_is_active(f.dev));
        assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, NULL), -EINVAL);
        expect_none(&f.be, &f.mark);
        assert_int_equal(f.be.acked & F_LOG_ALL, 0);
        fx_end(&f);
    }
}

/* Without REPLY_ACK, a GET_FEATURES is the barrier after the log changes. */
static void test_dirty_log_barrier(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    cfg.dirty_log = true;
    fx_begin(&f);
    f.be.features |= F_LOG_ALL;
    f.be.protocol_features = VUF_PROTO_MASK(LOG_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 1);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(GET_FEATURES));
    assert_int_equal(f.be.log_nfds, 1);
    assert_int_equal(vuf_frontend_log_stop(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_VRING_ADDR), R(GET_FEATURES));
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dirty_log),
        cmocka_unit_test(test_dirty_log_not_supported),
        cmocka_unit_test(test_dirty_log_barrier),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
