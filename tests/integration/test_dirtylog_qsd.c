/* SPDX-License-Identifier: MIT */
/*
 * Dirty logging of the front-end device (vuf_frontend_log_*) against a
 * real qemu-storage-daemon (QEMU 7.2 libvhost-user: offers LOG_SHMFD and
 * VHOST_F_LOG_ALL). The test is the VMM and the guest driver, as in
 * test_frontend_qsd.c: READ requests into data buffers at known GPAs make
 * qsd write guest memory, and the log must show every page of them plus
 * the used ring, and no page nobody wrote. WRITE requests (the device only
 * reads the data) dirty the used ring and the status byte only. After
 * log_stop nothing is logged. Fails without qemu-storage-daemon.
 */
#include <errno.h>
#include <fcntl.h>
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
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))
#define QSIZE 64u
#define DISK_BYTES (16ull << 20)
#define GUEST_GPA 0x100000ull
#define GUEST_BYTES (8ull << 20)
#define IO_MS 5000
#define PG VUF_FRONTEND_LOG_PAGE
#define DATA_LEN (3u * PG) /* three pages per request */
#define NPAGES ((GUEST_GPA + GUEST_BYTES) / PG)

static uint8_t bm[NPAGES / 8];

static bool dirty(uint64_t page)
{
    return page < NPAGES && (bm[page / 8] & (1u << (page % 8)));
}

static unsigned count_dirty(void)
{
    unsigned n = 0;

    for (uint64_t p = 0; p < NPAGES; p++)
        n += dirty(p);
    return n;
}

static void print_dirty(const char *what)
{
    fprintf(stderr, "%s: dirty pages:", what);
    for (uint64_t p = 0; p < NPAGES; p++)
        if (dirty(p))
            fprintf(stderr, " 0x%llx", (unsigned long long)p);
    fprintf(stderr, "\n");
}

static void sync_log(struct vuf_device *dev, uint64_t *n)
{
    memset(bm, 0xa5, sizeof(bm));
    assert_int_equal(vuf_frontend_log_sync(dev, bm, sizeof(bm), n), 0);
    assert_int_equal(count_dirty(), *n);
}

/* One request of `type` on `data` (DATA_LEN bytes at gpa) at `sector`. */
static void do_io(struct vuf_blk *blk, uint32_t type, uint64_t sector, uint64_t gpa, void *host)
{
    struct vuf_virtq_buf b = {
        .gpa = gpa, .host = host, .len = DATA_LEN, .writable = type == VUF_BLK_T_IN};
    struct vuf_blk_req *req = vuf_blk_req_get(blk);

    assert_non_null(req);
    assert_int_equal(vuf_blk_req_prep_sg(req, type, sector, &b, 1), 0);
    assert_int_equal(vuf_blk_exec(blk, req, IO_MS), 0);
    assert_int_equal(vuf_blk_req_put(blk, req), 0);
}

static void test_qsd_dirty_log(void **state)
{
    struct tu_qsd qsd;
    struct tu_vmm vmm;
    struct vuf_interrupt intr = {.ops = &tu_vmm_intr_ops, .opaque = &vmm};
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    struct vuf_device *dev = NULL;
    struct vuf_guest_mem *gm = NULL;
    struct vuf_virtq *vq = NULL;
    struct vuf_blk *blk = NULL;
    struct vuf_queue q;
    uint64_t gpa_r[2], gpa_w, gpa_u, offered, n = 0, used_page;
    uint8_t *host_r[2], *host_w, *host_u;
    int fds0, threads0;

    (void)state;
    fds0 = tu_count_fds();
    threads0 = tu_count_threads();
    tu_vmm_init(&vmm);
    tu_qsd_up(&qsd, "vuf-dirtylog", DISK_BYTES, 1);
    close(qsd.disk_fd);

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = 256;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &vmm;
    cfg.dirty_log = true;
    assert_int_equal(vuf_conn_connect(qsd.sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &dev), 0);
    /* qsd negotiates LOG_SHMFD; its LOG_ALL stays away from the driver. */
    assert_true(vuf_frontend_protocol_features(dev) & VUF_PROTO_MASK(LOG_SHMFD));
    offered = vuf_device_features(dev);
    assert_false(offered & BIT(VUF_VHOST_F_LOG_ALL));
    assert_int_equal(vuf_device_ack_features(dev, offered), 0);

    /* Guest memory: the queue, two read buffers, a write buffer and an
     * untouched one, each page-aligned. */
    assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &gm), 0);
    {
        struct vuf_virtq_opts o = {
            .size = QSIZE, .index = 0, .features = vuf_frontend_acked_features(dev)};

        assert_int_equal(vuf_virtq_new_opts(gm, &o, &vq), 0);
    }
    assert_int_equal(vuf_blk_new(vq, 2, 0, &blk), 0);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(vuf_guest_mem_alloc(gm, DATA_LEN, PG, &gpa_r[i]), 0);
        host_r[i] = vuf_guest_mem_to_host(gm, gpa_r[i], DATA_LEN);
    }
    assert_int_equal(vuf_guest_mem_alloc(gm, DATA_LEN, PG, &gpa_w), 0);
    host_w = vuf_guest_mem_to_host(gm, gpa_w, DATA_LEN);
    assert_int_equal(vuf_guest_mem_alloc(gm, DATA_LEN, PG, &gpa_u), 0);
    host_u = vuf_guest_mem_to_host(gm, gpa_u, DATA_LEN);
    assert_non_null(host_u);
    tu_vmm_add_queue(&vmm, 0, &q, vq, 0);
    used_page = q.used_addr / PG;

    assert_int_equal(vuf_frontend_log_start(dev), -EINVAL); /* not active */
    assert_int_equal(vuf_device_activate(dev, gm, &intr, &q, 1), 0);
    assert_int_equal(vuf_frontend_log_start(dev), 0);
    assert_int_equal(vuf_frontend_log_bytes(dev), sizeof(bm));
    sync_log(dev, &n); /* start clean */

    /* WRITE first (puts known data on disk): the device only reads the
     * data buffer. */
    for (unsigned i = 0; i < DATA_LEN; i++)
        host_w[i] = (uint8_t)(i * 7 + 3);
    do_io(blk, VUF_BLK_T_OUT, 8, gpa_w, host_w);
    sync_log(dev, &n);
    print_dirty("after WRITE");
    assert_true(dirty(used_page));
    for (uint64_t p = gpa_w / PG; p < (gpa_w + DATA_LEN) / PG; p++)
        assert_false(dirty(p));
    /* The used ring and the status byte's page (the request header and
     * status live in the driver's own area), nothing else. */
    assert_true(n >= 1 && n <= 2);

    /* READs into two buffers: every page of each, and the used ring. */
    memset(host_r[0], 0, DATA_LEN);
    memset(host_r[1], 0, DATA_LEN);
    do_io(blk, VUF_BLK_T_IN, 8, gpa_r[0], host_r[0]);
    do_io(blk, VUF_BLK_T_IN, 64, gpa_r[1], host_r[1]);
    assert_memory_equal(host_r[0], host_w, DATA_LEN);
    sync_log(dev, &n);
    print_dirty("after 2 READs");
    assert_true(dirty(used_page));
    for (unsigned i = 0; i < 2; i++)
        for (uint64_t p = gpa_r[i] / PG; p < (gpa_r[i] + DATA_LEN) / PG; p++)
            assert_true(dirty(p));
    for (uint64_t p = gpa_w / PG; p < (gpa_w + DATA_LEN) / PG; p++)
        assert_false(dirty(p));
    for (uint64_t p = gpa_u / PG; p < (gpa_u + DATA_LEN) / PG; p++)
        assert_false(dirty(p));
    assert_true(n >= 2 * DATA_LEN / PG + 1 && n <= 2 * DATA_LEN / PG + 2);
    /* Fetch-and-clear: nothing new since. */
    sync_log(dev, &n);
    assert_int_equal(n, 0);

    /* Sleep/wake keeps logging. */
    {
        struct vuf_queue back = q;

        assert_int_equal(vuf_device_sleep(dev, &back, 1), 1);
        assert_true(vuf_frontend_log_is_active(dev));
        assert_int_equal(vuf_device_wake(dev, gm, &intr, &back, 1), 0);
    }
    do_io(blk, VUF_BLK_T_IN, 8, gpa_r[1], host_r[1]);
    sync_log(dev, &n);
    print_dirty("after wake + READ");
    for (uint64_t p = gpa_r[1] / PG; p < (gpa_r[1] + DATA_LEN) / PG; p++)
        assert_true(dirty(p));
    assert_true(dirty(used_page));
    assert_false(dirty(gpa_r[0] / PG));

    /* Stopped: more I/O, nothing logged (the log is gone). */
    assert_int_equal(vuf_frontend_log_stop(dev), 0);
    assert_false(vuf_frontend_log_is_active(dev));
    assert_int_equal(vuf_frontend_log_sync(dev, bm, sizeof(bm), &n), -EINVAL);
    do_io(blk, VUF_BLK_T_IN, 8, gpa_r[0], host_r[0]);
    do_io(blk, VUF_BLK_T_OUT, 8, gpa_w, host_w);
    /* Started again: the old log is not reused, the new one starts clean,
     * and only what happens now is logged. */
    assert_int_equal(vuf_frontend_log_start(dev), 0);
    sync_log(dev, &n);
    assert_int_equal(n, 0);
    do_io(blk, VUF_BLK_T_IN, 8, gpa_r[0], host_r[0]);
    sync_log(dev, &n);
    assert_true(dirty(gpa_r[0] / PG));
    assert_false(dirty(gpa_r[1] / PG));

    /* reset ends logging; destroy leaks nothing. */
    assert_int_equal(vuf_device_reset(dev), 0);
    assert_false(vuf_frontend_log_is_active(dev));
    vuf_device_destroy(dev);
    vuf_blk_free(blk);
    vuf_virtq_free(vq);
    vuf_guest_mem_free(gm);
    tu_stop(&qsd.proc);
    tu_rmtree(qsd.dir);
    assert_int_equal(tu_threads_settle(threads0), threads0);
    assert_int_equal(tu_count_fds(), fds0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qsd_dirty_log),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
