/* SPDX-License-Identifier: MIT */
/*
 * Reconnecting to a restarted back-end after a crash without losing guest
 * I/O (docs/reconnect.md is the prose; this is its executable proof),
 * against a real qemu-storage-daemon (QEMU 7.2) exporting a raw FILE as
 * vhost-user-blk with two queues.
 *
 * The test plays the VMM (interrupt ops, the recovery sequence through the
 * public device API) and the guest (the virtq/virtio-blk driver, several
 * writes in flight on both queues, each with its own pattern and sector):
 *
 *   stream writes at QD 8 on both queues -> freeze qsd (SIGSTOP) and queue
 *   more, so a known set is certainly unprocessed -> SIGKILL qsd ->
 *   VUF_DEVICE_EVENT_CRASHED -> the guest issues more writes (nobody is
 *   there) -> VMM: vuf_device_sleep hands the queues back (next_avail =
 *   next_used = used->idx: GET_VRING_BASE cannot be sent), destroy the dead
 *   device -> driver: reap, vuf_virtq_requeue_inflight -> restart qsd on the
 *   same socket and file -> vuf_conn_connect with a deadline ->
 *   vuf_frontend_new, re-ack the same features -> vuf_device_activate with the
 *   slept queues (next_avail = the requeue base) -> forced kick -> every
 *   write completes exactly once with OK status, the file on the host holds
 *   every pattern, more I/O works.
 *
 * qsd 7.2 offers no INFLIGHT_SHMFD: the requests in flight are found again
 * only because the driver (ours, in this process) re-publishes them. A
 * real guest's driver would not; see docs/reconnect.md.
 *
 * Variants: qsd restarted at once, and restarted only after a delay while
 * the VMM waits in vuf_conn_connect(). Fails without qsd.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "blk_writes.h"
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

#define QSD TU_QSD

#define BIT(n) (1ull << (n))
#define NQ 2
#define QSIZE 64u
#define DISK_BYTES (64ull << 20)
#define GUEST_GPA 0x100000ull
#define GUEST_BYTES (8ull << 20)
#define IO_MS 5000
#define CONNECT_MS 10000 /* the VMM's reconnect deadline */
#define DELAY_MS 800     /* the delayed variant's restart delay */

#define QD 8           /* writes kept in flight per queue while streaming */
#define FROZEN_EXTRA 2 /* more per queue once qsd is frozen */
#define POST_CRASH 2   /* per queue while no back-end is there */
#define NREQS (QD + FROZEN_EXTRA + POST_CRASH)
#define WLEN (16u * 1024)
#define WSECTORS (WLEN / VUF_BLK_SECTOR_SIZE)
#define SEC_W 8192ull /* write w goes to SEC_W + w * WSECTORS */
#define MAX_WRITES 1024u

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

enum phase { PH_FIRST = 1, PH_RECOVERED };

struct fx {
    char *dir;
    char disk[300], sock[300], log[300], log2[300];
    struct tu_proc proc;
    int disk_fd;
    int fds0, threads0, queue_fds;

    struct tu_vmm vmm; /* queue 0: MSI-X vector 0; queue 1: INTx */
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_blk *blk[NQ];
    struct vuf_queue q[NQ];

    struct tu_writes wr;
    uint8_t buf[WLEN];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    f->disk_fd = -1;
    tu_vmm_init(&f->vmm);
    tu_wr_init(&f->wr, f->blk, NQ, WLEN, SEC_W, MAX_WRITES);
    f->dir = tu_mkdtemp("vuf-reconnect");
    if (!f->dir) {
        free(f);
        return -1;
    }
    snprintf(f->disk, sizeof(f->disk), "%s/disk.img", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/qsd.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/qsd.log", f->dir);
    snprintf(f->log2, sizeof(f->log2), "%s/qsd2.log", f->dir);
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

/*
 * Connect within `connect_ms` (vuf_conn_connect retries while the socket
 * is missing or refuses) and negotiate. `ack` == 0: the driver acks all it
 * is offered. Otherwise (a reconnect) the driver already negotiated `ack`
 * with the old back-end: the new one must offer all of it, and exactly that
 * is acked again. Returns how long connecting took (ms).
 */
static int64_t connect_device(struct fx *f, int connect_ms, uint64_t ack)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t offered;
    int64_t t0 = tu_now_ms(), took;
    int r;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask =
        BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX) | BIT(VUF_VIRTIO_F_INDIRECT_DESC);
    cfg.max_queue_size = 256;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;

    r = vuf_conn_connect(f->sock, connect_ms, &conn);
    took = tu_now_ms() - t0;
    if (r < 0) {
        tu_dump_log(&f->proc);
        fail_msg("connect %s: %s after %lld ms", f->sock, vuf_strerror(r), (long long)took);
    }
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &f->dev), 0);
    assert_int_equal(vuf_device_type(f->dev), VUF_DEV_BLK);
    assert_int_equal(vuf_device_num_queues(f->dev), NQ);
    offered = vuf_device_features(f->dev);
    assert_true(offered & BIT(VUF_BLK_F_MQ));
    assert_false(offered & BIT(VUF_BLK_F_RO));
    /* A back-end that lost a feature the driver relies on cannot take
     * over (ack_features would silently drop it). */
    tu_ack_features(f->dev, ack);
    assert_false(vuf_frontend_is_active(f->dev));
    return took;
}

/* Driver queues in guest memory, and the vuf_queue structs a transport
 * would hand to activate. */
static void make_queues(struct fx *f)
{
    uint64_t acked = vuf_frontend_acked_features(f->dev);
    int before = tu_count_fds();

    assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = acked};

        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        assert_int_equal(vuf_blk_new(f->vq[i], NREQS, WLEN, &f->blk[i]), 0);
        tu_vmm_add_queue(&f->vmm, i, &f->q[i], f->vq[i], i == 0 ? 0 : VUF_NO_VECTOR);
    }
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
    f->queue_fds = tu_count_fds() - before; /* the guest's, not the device's */
}

/* ------------------------------------------------------------------------ */
/* The guest's writes                                                       */
/* ------------------------------------------------------------------------ */

/* Keep QD writes in flight on both queues until `count` more completed. */
static void stream(struct fx *f, unsigned count)
{
    int64_t until = tu_now_ms() + 4 * IO_MS;
    unsigned done = 0;

    while (done < count) {
        assert_true(tu_now_ms() < until);
        for (unsigned i = 0; i < NQ; i++)
            while (f->wr.pending[i] < QD)
                tu_wr_submit(&f->wr, i);
        for (unsigned i = 0; i < NQ; i++)
            done += tu_wr_reap_wait(&f->wr, i, 1);
    }
}

/* The process is in group stop ('T' in /proc/PID/stat), within 2 s. */
static void wait_stopped(pid_t pid)
{
    int64_t until = tu_now_ms() + 2000;
    char path[64], st[512];

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    while (tu_now_ms() < until) {
        FILE *fp = fopen(path, "re");
        char *rp;
        bool stopped = false;

        if (fp && fgets(st, sizeof(st), fp) && (rp = strrchr(st, ')')) && rp[1] == ' ')
            stopped = rp[2] == 'T';
        if (fp)
            fclose(fp);
        if (stopped)
            return;
        tu_sleep_ms(1);
    }
    fail_msg("pid %d did not stop", (int)pid);
}

/* ------------------------------------------------------------------------ */
/* The test                                                                 */
/* ------------------------------------------------------------------------ */

static void reconnect(struct fx *f, int restart_delay_ms)
{
    struct vuf_queue slept[NQ], resume[NQ];
    unsigned inflight[NQ], before_freeze;
    uint64_t acked;
    int64_t t_kill, took;
    int r, status;

    if (!tu_backend_installed(QSD, "qemu-system-common"))
        fail();
    f->disk_fd = tu_make_disk(f->disk, DISK_BYTES);
    tu_start_qsd_file(&f->proc, f->disk, NQ, f->sock, f->log);
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();

    connect_device(f, 2000, 0);
    make_queues(f);
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, NQ), 0);
    assert_int_equal(tu_count_threads(), f->threads0 + 1); /* the worker */

    /* --- the guest streams writes on both queues --------------------------- */
    f->wr.phase = PH_FIRST;
    stream(f, 64);
    print_message("streamed: %u writes issued, %u + %u in flight\n", f->wr.n, f->wr.pending[0],
                  f->wr.pending[1]);

    /* --- qsd dies mid-stream ------------------------------------------------ *
     * Frozen first, so that the writes queued now are certainly unprocessed
     * when it dies; those issued before are in whatever state qsd left them
     * (taken from the avail ring, maybe written, maybe completed out of
     * order). */
    assert_int_equal(kill(f->proc.pid, SIGSTOP), 0);
    wait_stopped(f->proc.pid);
    tu_sleep_ms(20);
    before_freeze = f->wr.n;
    for (unsigned i = 0; i < NQ; i++)
        while (f->wr.pending[i] < QD + FROZEN_EXTRA)
            tu_wr_submit(&f->wr, i);
    t_kill = tu_now_ms();
    assert_int_equal(kill(f->proc.pid, SIGKILL), 0);
    while (!atomic_load(&f->vmm.crashed) && tu_now_ms() - t_kill < 3000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&f->vmm.crashed), 1);
    print_message("crash reported %lld ms after SIGKILL\n", (long long)(tu_now_ms() - t_kill));
    /* Reaped before anything else (its aio threads' writes are done). */
    status = tu_stop(&f->proc);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);

    /* The guest keeps going: what the dead back-end completed is reaped,
     * and new writes pile up unanswered. */
    for (unsigned i = 0; i < NQ; i++) {
        tu_wr_reap_now(&f->wr, i);
        for (unsigned k = 0; k < POST_CRASH; k++)
            tu_wr_submit(&f->wr, i);
    }
    tu_sleep_ms(50);
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(tu_wr_reap_now(&f->wr, i), 0);

    /* --- VMM: take the queues back from the dead device --------------------- *
     * GET_VRING_BASE cannot be sent; sleep reports the error and still hands
     * every started queue back, resynced from used->idx (as QEMU does). */
    for (unsigned i = 0; i < NQ; i++) {
        slept[i] = f->q[i];
        slept[i].next_avail = slept[i].next_used = 0xdead;
    }
    r = vuf_device_sleep(f->dev, slept, NQ);
    print_message("sleep after the crash: %d (%s)\n", r, vuf_strerror(r));
    /* The hang-up (the first message that stops a ring meets the closed
     * socket: EPIPE, reported as -ECONNRESET), not -EINVAL: the queues
     * come back. */
    assert_int_equal(r, -ECONNRESET);
    assert_false(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(slept[i].next_used, vuf_virtq_used_idx(f->vq[i]));
        assert_int_equal(slept[i].next_avail, slept[i].next_used);
        assert_int_equal(slept[i].desc_addr, f->q[i].desc_addr);
        assert_int_equal(slept[i].avail_addr, f->q[i].avail_addr);
        assert_int_equal(slept[i].used_addr, f->q[i].used_addr);
        assert_int_equal(slept[i].kick_fd, f->q[i].kick_fd);
        assert_int_equal(slept[i].vector, f->q[i].vector);
        assert_int_equal(slept[i].size, f->q[i].size);
    }
    /* What the guest negotiated, before the device goes. */
    acked = vuf_frontend_acked_features(f->dev);
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0 + f->queue_fds);
    assert_int_equal(atomic_load(&f->vmm.crashed), 1);

    /* --- driver: re-publish what is still in flight ------------------------- */
    for (unsigned i = 0; i < NQ; i++) {
        uint16_t base = 0;

        inflight[i] = vuf_virtq_num_inflight(f->vq[i]);
        assert_int_equal(inflight[i], f->wr.pending[i]);
        assert_true(inflight[i] >= FROZEN_EXTRA + POST_CRASH);
        assert_int_equal(vuf_virtq_requeue_inflight(f->vq[i], &base), 0);
        assert_int_equal(base, slept[i].next_avail);
        assert_int_equal((uint16_t)(vuf_virtq_avail_idx(f->vq[i]) - base), inflight[i]);
        resume[i] = slept[i];
        resume[i].next_avail = base;
    }
    print_message("in flight at the crash: %u + %u (of %u writes; %u issued after the freeze)\n",
                  inflight[0], inflight[1], f->wr.n, f->wr.n - before_freeze);

    /* --- the back-end comes back on the same socket and file ---------------- */
    if (restart_delay_ms) {
        struct vuf_conn *c = NULL;

        /* Nobody listens on the stale socket yet. */
        assert_int_equal(vuf_conn_connect(f->sock, 0, &c), -ECONNREFUSED);
        tu_spawn_qsd_file_after(&f->proc, restart_delay_ms, f->disk, NQ, f->sock, f->log2);
    } else {
        tu_start_qsd_file(&f->proc, f->disk, NQ, f->sock, f->log2);
    }
    took = connect_device(f, CONNECT_MS, acked);
    print_message("reconnected after %lld ms (restart delay %d ms)\n", (long long)took,
                  restart_delay_ms);
    if (restart_delay_ms)
        assert_true(took >= restart_delay_ms / 2);

    /* --- resume the rings on the new back-end ------------------------------- */
    f->wr.phase = PH_RECOVERED;
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, resume, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1);
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(vuf_virtq_kick(f->vq[i], VUF_VIRTQ_KICK_FORCE), 1);
    tu_wr_drain(&f->wr, IO_MS);
    {
        unsigned recovered = 0;

        for (unsigned id = 0; id < f->wr.n; id++)
            recovered += f->wr.w[id].done_in == PH_RECOVERED;
        /* Exactly the writes in flight at the crash were done by the new
         * back-end. */
        assert_int_equal(recovered, inflight[0] + inflight[1]);
    }
    assert_int_equal(vuf_blk_flush(f->blk[0], IO_MS), 0);
    assert_int_equal(vuf_blk_flush(f->blk[1], IO_MS), 0);
    tu_wr_assert_all_done(&f->wr, f->disk_fd, f->vq);

    /* --- and the device goes on --------------------------------------------- */
    stream(f, 64);
    tu_wr_drain(&f->wr, IO_MS);
    assert_int_equal(vuf_blk_flush(f->blk[1], IO_MS), 0);
    tu_wr_assert_all_done(&f->wr, f->disk_fd, f->vq);
    /* Reads through the driver, across queues: one from before the freeze,
     * one queued while frozen, the last one issued. */
    {
        unsigned ids[3] = {0, before_freeze, f->wr.n - 1};

        for (unsigned k = 0; k < 3; k++) {
            tu_fill_pattern(f->buf, WLEN, tu_wr_seed(ids[k]));
            tu_assert_blk_reads(f->blk[(f->wr.w[ids[k]].queue + 1) % NQ],
                                tu_wr_sector(&f->wr, ids[k]), f->buf, WLEN, IO_MS);
        }
    }
    assert_int_equal(atomic_load(&f->vmm.crashed), 1);
    assert_int_equal(atomic_load(&f->vmm.bad_vector), 0);

    /* --- nothing left behind ------------------------------------------------ */
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0);
    /* The restarted qsd is healthy: it ends cleanly on SIGTERM. */
    tu_stop_clean(&f->proc, f->sock);
}

static void test_reconnect_at_once(void **state)
{
    reconnect(*state, 0);
}

static void test_reconnect_after_delay(void **state)
{
    reconnect(*state, DELAY_MS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reconnect_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_delay, setup, teardown),
    };

    /* A dead back-end's socket must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    if (!tu_backend_installed(QSD, "qemu-system-common"))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
