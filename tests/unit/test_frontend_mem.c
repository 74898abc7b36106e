/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Memory slots (CONFIGURE_MEM_SLOTS, ADD/REM_MEM_REG), memory updates and
 * the mem-table limits.
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
/* Memory slots (CONFIGURE_MEM_SLOTS) and memory updates                    */
/* ------------------------------------------------------------------------ */

#define MS_BASE 0x10000000ull /* extra regions: one page each, 1 MiB apart */
#define MS_GPA(i) (MS_BASE + (uint64_t)(i)*0x100000)

/* Add `n` one-page regions MS_GPA(from) .. MS_GPA(from + n - 1). */
static void ms_add(struct vuf_guest_mem *mem, unsigned from, unsigned n)
{
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    for (unsigned i = from; i < from + n; i++)
        assert_int_equal(vuf_guest_mem_add_memfd(mem, MS_GPA(i), ps), 0);
}

/* The last `n` requests are `code`, each with exactly `nfds` fds; returns
 * the GPA of the first. */
static uint64_t ms_check(struct fx *f, unsigned n, uint32_t code, unsigned nfds)
{
    for (unsigned i = 0; i < n; i++) {
        struct rec r = be_rec(&f->be, f->mark - n + i);

        assert_int_equal(r.code, code);
        assert_int_equal(r.nfds, nfds);
        assert_true(r.flags & VUF_FLAG_NEED_REPLY);
    }
    return n ? be_rec(&f->be, f->mark - n).gpa : 0;
}

static struct vuf_frontend_config ms_cfg(void)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    cfg.mem_slots = true;
    return cfg;
}

static void test_mem_slots(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = ms_cfg();
    struct vuf_guest_mem *other;
    struct vuf_queue back[MAX_Q];
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
    f.be.max_slots = 16;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES), R(GET_MAX_MEM_SLOTS));
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f.dev), 16);

    /* 12 regions (more than SET_MEM_TABLE's 8): the rings' one + 11. */
    fx_queues(&f, 2);
    ms_add(f.mem, 0, 11);
    /* Not active: nothing is sent. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG),
               R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG),
               R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), SEQ_QUEUE,
               SEQ_QUEUE);
    for (unsigned i = 0; i < 12; i++) {
        struct rec r = be_rec(&f.be, f.mark - 24 + i);

        assert_int_equal(r.nfds, 1);
        assert_true(r.flags & VUF_FLAG_NEED_REPLY);
        assert_true(i == 0 ? r.gpa == 0x100000 : r.gpa == MS_GPA(i - 1));
    }
    assert_int_equal(f.be.slots_used, 12);

    /* Unchanged: nothing. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);

    /* Hot-add: only ADD_MEM_REG for the new region, with its fd. */
    ms_add(f.mem, 20, 1);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(ADD_MEM_REG), 1), MS_GPA(20));

    /* Hot-remove: only REM_MEM_REG, no fd. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(3)), 0);
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(3)), -ENOENT);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(REM_MEM_REG), 0), MS_GPA(3));
    assert_int_equal(f.be.slots_used, 12);

    /* Replaced (same GPA and size, new memfd) plus one new: REM first,
     * then both ADDs in GPA order. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(5)), 0);
    assert_int_equal(vuf_guest_mem_add_memfd(f.mem, MS_GPA(5), ps), 0);
    ms_add(f.mem, 3, 1);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG));
    assert_int_equal(be_rec(&f.be, f.mark - 3).gpa, MS_GPA(5));
    assert_int_equal(be_rec(&f.be, f.mark - 2).gpa, MS_GPA(3));
    assert_int_equal(be_rec(&f.be, f.mark - 1).gpa, MS_GPA(5));
    assert_int_equal(f.be.slots_used, 13);

    /* More regions than slots: refused before anything is sent, and the
     * back-end keeps what it had. */
    ms_add(f.mem, 30, 4); /* 17 */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), -E2BIG);
    expect_none(&f.be, &f.mark);
    for (unsigned i = 30; i < 34; i++)
        assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(i)), 0);

    /* The rings must stay where they are: another guest memory maps them
     * elsewhere. */
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &other), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, other), -EBUSY);
    expect_none(&f.be, &f.mark);
    vuf_guest_mem_free(other);
    assert_int_equal(vuf_frontend_update_memory(f.dev, NULL), -EINVAL);

    /* A refused ADD: the error is returned and the next update resumes
     * the diff where it stopped. */
    ms_add(f.mem, 40, 2);
    f.be.nack_code = R(ADD_MEM_REG);
    f.be.nack_skip = 1;
    assert_true(vuf_frontend_update_memory(f.dev, f.mem) < 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG), R(ADD_MEM_REG));
    f.be.nack_code = 0;
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(ADD_MEM_REG), 1), MS_GPA(41));

    /* Sleep / wake with the same memory: the back-end kept its regions, so
     * no memory message at all. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    /* Asleep: an update is for the next wake. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(40)), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&f);
}

static void test_mem_slots_limits(void **state)
{
    static const struct {
        uint64_t answer;
        int ret;
        unsigned max;
    } cases[] = {{0, -EPROTO, 0}, {1, 0, 1}, {512, 0, 512}, {100000, 0, 512}};
    struct vuf_frontend_config cfg = ms_cfg();

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
        f.be.max_slots = cases[i].answer;
        assert_int_equal(fx_new(&f, &cfg), cases[i].ret);
        if (f.dev)
            assert_int_equal(vuf_frontend_max_mem_regions(f.dev), cases[i].max);
        fx_end(&f);
    }

    /* More regions than slots at activation: nothing is sent. */
    {
        struct fx f;

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
        f.be.max_slots = 4;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(GET_MAX_MEM_SLOTS));
        fx_queues(&f, 1);
        ms_add(f.mem, 0, 4);
        assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -E2BIG);
        expect_none(&f.be, &f.mark);
        assert_false(vuf_frontend_is_active(f.dev));
        /* A refused ADD fails the activation; the next one sends only the
         * regions the back-end lacks. */
        assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(0)), 0);
        f.be.nack_code = R(ADD_MEM_REG);
        f.be.nack_skip = 2;
        assert_true(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq) < 0);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG));
        assert_false(vuf_frontend_is_active(f.dev));
        f.be.nack_code = 0;
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(ADD_MEM_REG), R(ADD_MEM_REG), SEQ_QUEUE);
        assert_int_equal(f.be.slots_used, 4);
        fx_end(&f);
    }
}

/*
 * The full 512 regions (VUF_FRONTEND_MAX_MEM_SLOTS) go over at activation,
 * one ADD_MEM_REG with one fd each, and each fd maps the memory of its GPA:
 * the back-end reads every region's first word, which the guest set to the
 * region's GPA. Guest memory refuses a 513th region (-ENOSPC). (The
 * real back-ends installed here offer 32 slots, qemu-storage-daemon 7.2 and
 * vuf-backend-blk alike: test_memslots_qsd does I/O through 12.)
 */
static void test_mem_slots_512(void **state)
{
    struct vuf_frontend_config cfg = ms_cfg();
    struct vuf_guest_region gr;
    unsigned n;
    struct fx f;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
    f.be.max_slots = 100000;
    f.be.read_regions = true;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES), R(GET_MAX_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f.dev), VUF_FRONTEND_MAX_MEM_SLOTS);
    fx_queues(&f, 1);
    n = vuf_guest_mem_nregions(f.mem);
    ms_add(f.mem, 0, VUF_FRONTEND_MAX_MEM_SLOTS - n);
    assert_int_equal(vuf_guest_mem_nregions(f.mem), VUF_FRONTEND_MAX_MEM_SLOTS);
    /* Tag every region with its GPA (in region 0 that overwrites the start
     * of the idle rings: nothing reads them here). */
    for (unsigned i = 0; i < VUF_FRONTEND_MAX_MEM_SLOTS; i++) {
        uint64_t *p;

        assert_int_equal(vuf_guest_mem_region(f.mem, i, &gr), 0);
        p = vuf_guest_mem_to_host(f.mem, gr.gpa, 8);
        assert_non_null(p);
        *p = gr.gpa;
    }
    fx_activate_ok(&f);
    {
        uint32_t codes[VUF_FRONTEND_MAX_MEM_SLOTS + 7];
        unsigned k = 0;

        codes[k++] = R(SET_FEATURES);
        for (unsigned i = 0; i < VUF_FRONTEND_MAX_MEM_SLOTS; i++)
            codes[k++] = R(ADD_MEM_REG);
        codes[k++] = R(SET_VRING_NUM);
        codes[k++] = R(SET_VRING_ADDR);
        codes[k++] = R(SET_VRING_BASE);
        codes[k++] = R(SET_VRING_CALL);
        codes[k++] = R(SET_VRING_KICK);
        codes[k++] = R(SET_VRING_ENABLE);
        expect_seq_(&f.be, &f.mark, codes, k, __LINE__);
    }
    assert_int_equal(f.be.slots_used, VUF_FRONTEND_MAX_MEM_SLOTS);
    assert_int_equal(f.be.regions_tagged, VUF_FRONTEND_MAX_MEM_SLOTS);
    assert_int_equal(vuf_guest_mem_add_memfd(f.mem, MS_GPA(VUF_FRONTEND_MAX_MEM_SLOTS),
                                             (uint64_t)sysconf(_SC_PAGESIZE)),
                     -ENOSPC);
    fx_end(&f);
}

static void test_mem_table_limits(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    (void)state;
    fx_begin(&f);
    /* Offered, but not asked for (cfg.mem_slots false): crosvm's set. */
    f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_false(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f.dev), 8);

    /* 9 regions: refused before anything is sent. */
    fx_queues(&f, 1);
    ms_add(f.mem, 0, 8);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -E2BIG);
    expect_none(&f.be, &f.mark);
    /* 8 work. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(7)), 0);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.mem_regions, 8);
    /* Updates: SET_MEM_TABLE with everything when something changed. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_guest_mem_add_memfd(f.mem, MS_GPA(7), ps), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), -E2BIG);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(2)), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE));
    assert_int_equal(f.be.mem_regions, 8);
    assert_int_equal(be_rec(&f.be, f.mark - 1).nfds, 8);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mem_slots),
        cmocka_unit_test(test_mem_slots_limits),
        cmocka_unit_test(test_mem_slots_512),
        cmocka_unit_test(test_mem_table_limits),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
