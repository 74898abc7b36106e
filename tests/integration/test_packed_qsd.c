/* SPDX-License-Identifier: MIT */
/*
 * A back-end that does not offer VIRTIO_F_RING_PACKED (qemu-storage-daemon
 * 7.2) while the VMM asks for packed rings: the front-end warns once, does
 * not offer the bit to the driver, the driver's split rings work as before
 * (64 KiB written and read back through the driver and from the file,
 * across a sleep/wake).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))
#define QSIZE 64u
#define DISK_BYTES (64ull << 20)
#define IO_MS 5000
#define LEN (64u * 1024)

static atomic_int warn_packed;

static void count_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    if (level == VUF_LOG_WARN && strstr(msg, "RING_PACKED"))
        atomic_fetch_add(&warn_packed, 1);
    tu_log_to_stderr(opaque, level, msg);
}

static void test_qsd_gets_split_rings(void **state)
{
    struct tu_qsd qsd;
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    struct vuf_device *dev = NULL;
    struct vuf_guest_mem *gm = NULL;
    struct vuf_virtq *vq = NULL;
    struct vuf_blk *blk = NULL;
    struct vuf_queue q, slept;
    struct vuf_interrupt intr;
    struct tu_vmm vmm;
    uint8_t *wbuf = malloc(LEN), *rbuf = malloc(LEN);
    uint64_t offered;

    (void)state;
    assert_non_null(wbuf);
    assert_non_null(rbuf);
    tu_qsd_up(&qsd, "vuf-packed-qsd", DISK_BYTES, 1);

    tu_vmm_init(&vmm);
    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask =
        BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX) | BIT(VUF_VIRTIO_F_RING_PACKED);
    cfg.max_queue_size = 256;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &vmm;
    atomic_store(&warn_packed, 0);
    vuf_log_set(count_log, NULL, VUF_LOG_WARN);
    assert_int_equal(vuf_conn_connect(qsd.sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &dev), 0);
    offered = vuf_device_features(dev);
    /* qsd 7.2 offers 0x175007e46: no bit 34. */
    assert_int_equal(offered & BIT(VUF_VIRTIO_F_RING_PACKED), 0);
    assert_int_equal(offered & BIT(VUF_VIRTIO_F_EVENT_IDX), BIT(VUF_VIRTIO_F_EVENT_IDX));
    assert_int_equal(atomic_load(&warn_packed), 1);
    /* A driver that acks it anyway has the bit dropped. */
    assert_int_equal(vuf_device_ack_features(dev, offered | BIT(VUF_VIRTIO_F_RING_PACKED)), 1);
    assert_int_equal(vuf_frontend_acked_features(dev), offered);

    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 8u << 20, &gm), 0);
    {
        struct vuf_virtq_opts o = {.size = QSIZE, .features = vuf_frontend_acked_features(dev)};

        assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), 0);
    }
    assert_false(vuf_virtq_packed(vq));
    assert_int_equal(vuf_blk_new(vq, 4, LEN, &blk), 0);
    tu_vmm_add_queue(&vmm, 0, &q, vq, 0);
    assert_false(q.packed);
    intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &vmm};
    assert_int_equal(vuf_device_activate(dev, gm, &intr, &q, 1), 0);

    for (unsigned i = 0; i < LEN; i++)
        wbuf[i] = (uint8_t)(i * 13 + 7);
    assert_int_equal(vuf_blk_write(blk, 8, wbuf, LEN, IO_MS), 0);
    assert_int_equal(vuf_blk_flush(blk, IO_MS), 0);
    assert_int_equal(pread(qsd.disk_fd, rbuf, LEN, 8 * 512), (ssize_t)LEN);
    assert_memory_equal(rbuf, wbuf, LEN);

    /* Split indices across sleep/wake, as before packed rings existed. */
    slept = q;
    assert_int_equal(vuf_device_sleep(dev, &slept, 1), 1);
    assert_false(slept.packed);
    assert_int_equal(slept.next_avail, 2); /* the write and the flush */
    assert_int_equal(slept.next_used, 2);
    assert_int_equal(vuf_device_wake(dev, gm, &intr, &slept, 1), 0);
    memset(rbuf, 0, LEN);
    assert_int_equal(vuf_blk_read(blk, 8, rbuf, LEN, IO_MS), 0);
    assert_memory_equal(rbuf, wbuf, LEN);
    assert_int_equal(vuf_virtq_used_idx(vq), 3);
    assert_int_equal(atomic_load(&warn_packed), 1);

    vuf_device_destroy(dev);
    vuf_blk_free(blk);
    vuf_virtq_free(vq);
    tu_vmm_forget_queue(&vmm, 0);
    vuf_guest_mem_free(gm);
    tu_qsd_down(&qsd);
    free(wbuf);
    free(rbuf);
}

/* vuf blk --ring packed on a back-end without packed rings: a failure that
 * says why, not a silent split ring; the default works. */
static void test_qsd_cli_ring_packed_refused(void **state)
{
    struct tu_qsd qsd;
    struct tu_run *r;
    const char *sock;

    (void)state;
    tu_qsd_up(&qsd, "vuf-packed-qsd-cli", DISK_BYTES, 1);
    sock = qsd.sock;
    {
        const char *args[] = {"blk",   sock,   "write",  "--offset", "0",
                              "--len", "4096", "--ring", "packed",   NULL};

        r = tu_run_vuf(args, 60000);
        assert_int_equal(tu_exit_code(r), 1);
        assert_non_null(strstr(r->err, "the back-end does not offer RING_PACKED"));
        free(r);
    }
    {
        const char *args[] = {"blk",   sock,   "write",  "--offset", "0",
                              "--len", "4096", "--ring", "split",    NULL};

        r = tu_run_vuf(args, 60000);
        assert_int_equal(tu_exit_code(r), 0);
    }
    free(r);
    tu_qsd_down(&qsd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qsd_gets_split_rings),
        cmocka_unit_test(test_qsd_cli_ring_packed_refused),
    };

    tu_warm_threads();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
