/* SPDX-License-Identifier: MIT */
/*
 * CONFIGURE_MEM_SLOTS (vuf/frontend.h, cfg.mem_slots) against a real
 * qemu-storage-daemon (QEMU 7.2, Debian 12: 32 memory slots): guest memory
 * of 12 regions (more than SET_MEM_TABLE's 8) goes over as ADD_MEM_REG,
 * with the rings in one region and the driver's data buffers placed in the
 * others in turn; every write reads back through the device and is in the
 * backing file. Then memory hot-plug while active: a region is added, new
 * buffers are placed in it and I/O works; a region nothing uses is removed
 * (REM_MEM_REG) and I/O still works. No fd or thread outlives the device.
 * Fails when qemu-storage-daemon is not installed (scripts/setup.sh
 * installs it).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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
#define NQ 2
#define QSIZE 64u
#define DISK_BYTES (16ull << 20)
#define RING_GPA 0x100000ull
#define RING_BYTES (64u << 10)
#define NDATA 11 /* data regions: 12 regions in all */
#define DATA_GPA(i) (0x10000000ull + (uint64_t)(i)*0x1000000)
#define DATA_BYTES (256u << 10)
#define HOT_GPA 0x40000000ull
#define SPARE NDATA - 1 /* the data region no buffer ever uses */
#define NREQS 2
#define MAX_DATA (16u * 1024)
#define IO_MS 5000

struct fx {
    char *dir;
    char disk[300], sock[300], log[300];
    struct tu_proc proc;
    int disk_fd;
    int fds0, threads0;
    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_blk *blk[NQ];
    struct vuf_queue q[NQ];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    f->disk_fd = -1;
    tu_vmm_init(&f->vmm);
    f->dir = tu_mkdtemp("vuf-memslots-qsd");
    if (!f->dir) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static void free_queues(struct fx *f)
{
    tu_free_queues(&f->vmm, f->blk, f->vq, NQ);
}

static int teardown(void **state)
{
    struct fx *f = *state;

    vuf_device_destroy(f->dev);
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    if (f->disk_fd >= 0)
        close(f->disk_fd);
    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

/* The allocator's next block starts at or above `gpa` (one page at a time
 * is skipped; nothing in use is touched). */
static void place_at(struct vuf_guest_mem *gm, uint64_t gpa)
{
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE), g = 0;

    for (;;) {
        assert_int_equal(vuf_guest_mem_alloc(gm, ps, ps, &g), 0);
        if (g >= gpa)
            break;
    }
    assert_int_equal(vuf_guest_mem_alloc_rewind(gm, g), 0);
}

/* A new driver for queue i whose request headers and data buffers live in
 * the region at `gpa` (the queue's rings stay where they are). */
static void blk_in_region(struct fx *f, unsigned i, uint64_t gpa, uint64_t size)
{
    vuf_blk_free(f->blk[i]);
    f->blk[i] = NULL;
    place_at(f->gm, gpa);
    assert_int_equal(vuf_blk_new(f->vq[i], NREQS, MAX_DATA, &f->blk[i]), 0);
    /* Everything it took is in that region. */
    assert_true(vuf_guest_mem_alloc_mark(f->gm) > gpa);
    assert_true(vuf_guest_mem_alloc_mark(f->gm) <= gpa + size);
}

/* Write a pattern through queue i, read it back, and find it in the file. */
static void io_check(struct fx *f, unsigned i, uint64_t sector, uint32_t seed)
{
    uint8_t want[MAX_DATA + 4096], got[sizeof(want)];

    tu_fill_pattern(want, sizeof(want), seed);
    assert_int_equal(vuf_blk_write(f->blk[i], sector, want, sizeof(want), IO_MS), 0);
    tu_assert_blk_reads(f->blk[i], sector, want, sizeof(want), IO_MS);
    assert_int_equal(pread(f->disk_fd, got, sizeof(got), (off_t)(sector * VUF_BLK_SECTOR_SIZE)),
                     (ssize_t)sizeof(got));
    assert_memory_equal(got, want, sizeof(want));
}

static void test_memslots_qsd(void **state)
{
    struct fx *f = *state;
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t acked;
    unsigned n = 0;

    snprintf(f->disk, sizeof(f->disk), "%s/disk.img", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/qsd.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/qsd.log", f->dir);
    f->disk_fd = tu_make_disk(f->disk, DISK_BYTES);
    tu_start_qsd_file(&f->proc, f->disk, NQ, f->sock, f->log);
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = 256;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;
    cfg.mem_slots = true;
    assert_int_equal(vuf_conn_connect(f->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &f->dev), 0);
    /* qsd 7.2 offers CONFIGURE_MEM_SLOTS and answers 32. */
    assert_true(vuf_frontend_protocol_features(f->dev) & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f->dev), 32);
    assert_int_equal(vuf_device_ack_features(f->dev, vuf_device_features(f->dev)), 0);
    acked = vuf_frontend_acked_features(f->dev);

    /* 12 regions: rings in the first, data regions after it. */
    assert_int_equal(vuf_guest_mem_new_simple(RING_GPA, RING_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < NDATA; i++)
        assert_int_equal(vuf_guest_mem_add_memfd(f->gm, DATA_GPA(i), DATA_BYTES), 0);
    assert_int_equal(vuf_guest_mem_nregions(f->gm), 12);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = acked};

        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        tu_vmm_add_queue(&f->vmm, i, &f->q[i], f->vq[i], i == 0 ? 0 : VUF_NO_VECTOR);
    }
    assert_true(vuf_guest_mem_alloc_mark(f->gm) <= RING_GPA + RING_BYTES);
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
    blk_in_region(f, 0, DATA_GPA(0), DATA_BYTES);
    blk_in_region(f, 1, DATA_GPA(1), DATA_BYTES);
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));

    /* Buffers in each data region but the spare, both queues in turn. */
    for (unsigned r = 0; r < SPARE; r++) {
        unsigned i = r % NQ;

        if (r >= NQ)
            blk_in_region(f, i, DATA_GPA(r), DATA_BYTES);
        io_check(f, i, 64 * (n + 1), 100 + n);
        n++;
    }

    /* Hot-add while active; new buffers in the new region. */
    assert_int_equal(vuf_guest_mem_add_memfd(f->gm, HOT_GPA, DATA_BYTES), 0);
    assert_int_equal(vuf_frontend_update_memory(f->dev, f->gm), 0);
    blk_in_region(f, 0, HOT_GPA, DATA_BYTES);
    io_check(f, 0, 64 * (n + 1), 100 + n);
    n++;
    io_check(f, 1, 64 * (n + 1), 100 + n); /* queue 1's buffers: an old region */
    n++;

    /* Hot-remove the spare region (nothing in it is used). */
    assert_int_equal(vuf_guest_mem_remove(f->gm, DATA_GPA(SPARE)), 0);
    assert_int_equal(vuf_frontend_update_memory(f->dev, f->gm), 0);
    assert_int_equal(vuf_guest_mem_nregions(f->gm), 12);
    io_check(f, 0, 64 * (n + 1), 100 + n);
    n++;
    io_check(f, 1, 64 * (n + 1), 100 + n);
    n++;
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);

    assert_int_equal(vuf_device_reset(f->dev), 0);
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memslots_qsd, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    if (!tu_backend_installed(TU_QSD, "qemu-system-common"))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
