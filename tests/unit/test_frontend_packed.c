/* SPDX-License-Identifier: MIT */
/*
 * The front-end device with packed rings (virtio 1.2 §2.8), against the
 * in-test back-end: RING_PACKED offered only when the back-end offers it,
 * SET_VRING_ADDR with the three packed areas, the packed encodings of
 * SET_VRING_BASE (avail position | wrap << 15, used pair << 16) and of
 * GET_VRING_BASE across sleep/wake, and queues built from packed vuf_virtqs.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "fe_fakebe.h"
#include "vuf/virtio.h"
#include "vuf/virtq.h"

static int warn_packed;

static void count_packed_warn(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    if (level == VUF_LOG_WARN && strstr(msg, "RING_PACKED"))
        warn_packed++;
}

static void test_packed_offered(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1 | F_EVENT_IDX | F_PACKED);

    (void)state;
    warn_packed = 0;
    vuf_log_set(count_packed_warn, NULL, VUF_LOG_WARN);
    fx_begin(&f);
    f.be.features = ~0ull;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev),
                     VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | F_VERSION_1 | F_EVENT_IDX | F_PACKED);
    assert_int_equal(warn_packed, 0);
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1 | F_PACKED), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_VERSION_1 | F_PACKED);
    fx_end(&f);
    fe_test_prepare();
}

static void test_packed_not_offered(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1 | F_EVENT_IDX | F_PACKED);

    (void)state;
    warn_packed = 0;
    vuf_log_set(count_packed_warn, NULL, VUF_LOG_WARN);
    fx_begin(&f);
    f.be.features = ~0ull & ~F_PACKED;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev),
                     VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | F_VERSION_1 | F_EVENT_IDX);
    assert_int_equal(warn_packed, 1);
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1 | F_PACKED), 1);
    fx_end(&f);

    /* A VMM that does not ask for packed rings gets no warning. */
    warn_packed = 0;
    cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1);
    fx_begin(&f);
    f.be.features = ~0ull & ~F_PACKED;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(warn_packed, 0);
    fx_end(&f);
    fe_test_prepare();
}

static void test_packed_activate_sleep_wake(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1 | F_EVENT_IDX | F_PACKED);
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_virtq_opts o = {.size = 16, .features = F_VERSION_1 | F_PACKED};
    struct vuf_virtq_layout l;
    struct vuf_queue q, back;

    (void)state;
    fx_begin(&f);
    f.be.features = F_PROTO | F_VERSION_1 | F_EVENT_IDX | F_PACKED;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &gm), 0);
    assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), 0);
    /* Position 5 of a lap with wrap counter 0 (a ring that has wrapped). */
    vuf_virtq_reset(vq, 5);
    vuf_virtq_layout(vq, &l);
    vuf_queue_from_virtq(&q, vq, VUF_NO_VECTOR);
    assert_true(q.packed);
    assert_int_equal(q.desc_addr, l.desc_gpa);
    assert_int_equal(q.avail_addr, l.avail_gpa);
    assert_int_equal(q.used_addr, l.used_gpa);
    assert_int_equal(q.next_avail, 5);
    assert_int_equal(q.next_used, 5);

    /* A packed queue while the driver acked split rings. */
    assert_int_equal(vuf_device_ack_features(f.dev, F_VERSION_1), 0);
    assert_int_equal(vuf_device_activate(f.dev, gm, &f.vi, &q, 1), -EINVAL);
    expect_none(&f.be, &f.mark);

    assert_int_equal(vuf_device_ack_features(f.dev, F_PACKED), 0);
    assert_int_equal(vuf_device_activate(f.dev, gm, &f.vi, &q, 1), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.acked & F_PACKED, F_PACKED);
    assert_int_equal(f.be.set_base[0], 5u | 5u << 16);
    assert_int_equal(f.be.addr[0].desc, (uint64_t)(uintptr_t)l.pdesc);
    assert_int_equal(f.be.addr[0].avail, (uint64_t)(uintptr_t)l.driver_event);
    assert_int_equal(f.be.addr[0].used, (uint64_t)(uintptr_t)l.device_event);

    /* sleep: both halves decoded, wrap counters included. */
    f.be.vring_base = (0x8000u | 9) | (0x8000u | 7) << 16;
    back = q;
    assert_int_equal(vuf_device_sleep(f.dev, &back, 1), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    assert_int_equal(back.next_avail, 0x8000 | 9);
    assert_int_equal(back.next_used, 0x8000 | 7);
    assert_true(back.packed);
    /* wake: sent back as they came. */
    assert_int_equal(vuf_device_wake(f.dev, gm, &f.vi, &back, 1), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.set_base[0], (0x8000u | 9) | (0x8000u | 7) << 16);

    /* A back-end that reports the avail half only (DPDK): used = avail. */
    f.be.vring_base = 0x8000u | 12;
    assert_int_equal(vuf_device_sleep(f.dev, &back, 1), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    assert_int_equal(back.next_avail, 0x8000 | 12);
    assert_int_equal(back.next_used, 0x8000 | 12);
    assert_int_equal(vuf_device_wake(f.dev, gm, &f.vi, &back, 1), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.set_base[0], (0x8000u | 12) * 0x10001u);

    /* A position past the queue size: refused, the queue left as it was. */
    f.be.vring_base = 16;
    assert_int_equal(vuf_device_sleep(f.dev, &back, 1), -EPROTO);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    assert_int_equal(back.next_avail, 0x8000 | 12);
    assert_int_equal(back.next_used, 0x8000 | 12);

    /* vuf_queue_reclaim directly. */
    back.size = 16;
    assert_int_equal(vuf_queue_reclaim(&back, gm, 3u | (0x8000u | 15) << 16), 0);
    assert_int_equal(back.next_avail, 3);
    assert_int_equal(back.next_used, 0x8000 | 15);
    assert_int_equal(vuf_queue_reclaim(&back, gm, 3u | 16u << 16), -EPROTO);
    assert_int_equal(back.next_used, 0x8000 | 15);

    /* The running distance from used to avail, as for split rings (issue
     * 14): each position below the size is not enough. */
    back.next_avail = back.next_used = 0x8000 | 1;
    /* same lap, used ahead of avail */
    assert_int_equal(vuf_queue_reclaim(&back, gm, (0x8000u | 5) | (0x8000u | 10) << 16), -EPROTO);
    /* avail a lap ahead and past used: more than 16 in flight */
    assert_int_equal(vuf_queue_reclaim(&back, gm, 7u | (0x8000u | 5) << 16), -EPROTO);
    assert_int_equal(back.next_avail, 0x8000 | 1); /* unchanged on refusal */
    assert_int_equal(back.next_used, 0x8000 | 1);
    /* The bounds: 0 and 16 in flight, in one lap and across the wrap. */
    assert_int_equal(vuf_queue_reclaim(&back, gm, (0x8000u | 5) | (0x8000u | 5) << 16), 0);
    assert_int_equal(vuf_queue_reclaim(&back, gm, 5u | (0x8000u | 5) << 16), 0);
    assert_int_equal(back.next_avail, 5);
    assert_int_equal(back.next_used, 0x8000 | 5);
    assert_int_equal(vuf_queue_reclaim(&back, gm, 3u | (0x8000u | 5) << 16), 0); /* 14 */
    assert_int_equal(vuf_queue_reclaim(&back, gm, (0x8000u | 9) | (0x8000u | 2) << 16), 0);
    assert_int_equal(vuf_queue_reclaim(&back, gm, 9u | 2u << 16), 0); /* wrap 0 both */

    vuf_device_destroy(f.dev);
    f.dev = NULL;
    vuf_virtq_free(vq);
    vuf_guest_mem_free(gm);
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_offered),
        cmocka_unit_test(test_packed_not_offered),
        cmocka_unit_test(test_packed_activate_sleep_wake),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
