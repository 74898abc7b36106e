/* SPDX-License-Identifier: MIT */
/*
 * Reconnect with INFLIGHT_SHMFD: a back-end killed with requests in flight
 * is restarted, gets the same inflight area back with SET_INFLIGHT_FD and
 * resubmits exactly the requests that were in flight, WITHOUT the driver
 * re-publishing anything (a real guest's driver would not). The version
 * of test_reconnect_qsd without vuf_virtq_requeue_inflight().
 *
 * Against the reference back-end, vuf-backend-blk ($VUF_BACKEND_BLK), with
 * a shared raw --file and --control: its `hold N` keeps popped requests
 * in flight (marked in the area, never processed), so the set in flight
 * at the crash is known exactly.
 *
 *   back-end A, front-end with cfg.inflight -> activate 2 queues -> some
 *   completed writes -> per queue: `hold 3`, then 5 writes (own pattern and
 *   sector each): the first 3 are held, the last 2 complete, out of order ->
 *   `held` reports 3 + 3 -> SIGKILL A ->
 *   VUF_DEVICE_EVENT_CRASHED -> vuf_device_sleep hands the queues back ->
 *   the area is exported (the test checks its layout: one split region per
 *   queue, exactly the held heads marked) -> destroy -> back-end B on the
 *   same file -> a new front-end with cfg.inflight_area -> re-ack the same
 *   features -> wake with the queues as sleep returned them -> forced kick
 *   -> every held write completes exactly once, OK, done by B; the file has
 *   every pattern; more I/O works; B's counters agree; no fd or thread
 *   left; B exits 0 on SIGTERM.
 *
 * The completions out of order make the test tell recovery from luck: the
 * avail ring at [used->idx, avail->idx), where a back-end without the area
 * would resume, holds the LAST held write and the two completed ones; only
 * a back-end that resubmits from the area (and resumes at used->idx + 3)
 * completes each write exactly once.
 *
 * The same on packed rings (the packed inflight layout): there the used
 * descriptors of the completed writes overwrite the held ones' in the ring,
 * the front-end hands back the positions it last sent (no index is in
 * memory) and the area alone knows where to resume. Once with indirect
 * chains on 64-entry rings, once on 16-entry rings with chains of 3
 * descriptors after more than 3 laps, a held chain straddling the end of
 * the ring and the used wrap counter flipping between the held and the
 * completed writes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

#define BIT(n) (1ull << (n))
#define NQ 2
#define DISK_BYTES (16ull << 20)
#define GUEST_GPA 0x100000ull
#define GUEST_BYTES (8ull << 20)
#define IO_MS 5000
#define CTL_MS 5000

#define HELD 3  /* writes per queue in flight at the crash */
#define EXTRA 2 /* writes per queue completed after the held ones */
#define AFTER 4 /* writes per queue after the recovery */
#define NREQS 8 /* driver requests per queue */
#define WLEN (8u * 1024)
#define WSECTORS (WLEN / VUF_BLK_SECTOR_SIZE)
#define SEC_W 2048ull /* write w goes to SEC_W + w * WSECTORS */
#define MAX_WRITES 256u

/* The reference back-end's split inflight region (backend/README.md). */
#define INFL_HDR 16u
#define INFL_DESC 16u
#define INFL_ALIGN 64u
/* ... and its packed one (struct inflight_info_packed / desc_packed). */
#define PKI_HDR 32u
#define PKI_DESC 32u
#define WRAP 0x8000u

/* One run of the test: the ring layout, its size, and the writes per queue
 * completed before the hold (with BATCH at most in flight). */
struct variant {
    bool packed, indirect;
    unsigned qsize, before, batch;
};

static const char *backend_bin;

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

enum phase { PH_FIRST = 1, PH_RECOVERED };

struct be {
    struct tu_proc proc;
    char sock[300], ctl[300], log[300];
    int ctl_fd;
};

struct fx {
    char *dir;
    char disk[300];
    int disk_fd;
    int fds0, threads0, queue_fds;
    struct be a, b;

    struct tu_vmm vmm; /* queue 0: MSI-X vector 0; queue 1: INTx */
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_blk *blk[NQ];
    struct vuf_queue q[NQ];

    struct tu_writes wr;
    uint8_t buf[WLEN];
    const struct variant *v;
};

static void be_start(struct fx *f, struct be *b, const char *name)
{
    char sockarg[320], ctlarg[320], filearg[320];
    char *argv[] = {(char *)backend_bin, sockarg, ctlarg, filearg, "--num-queues=2", NULL};

    snprintf(b->sock, sizeof(b->sock), "%s/%s.sock", f->dir, name);
    snprintf(b->ctl, sizeof(b->ctl), "%s/%s.ctl", f->dir, name);
    snprintf(b->log, sizeof(b->log), "%s/%s.log", f->dir, name);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", b->sock);
    snprintf(ctlarg, sizeof(ctlarg), "--control=%s", b->ctl);
    snprintf(filearg, sizeof(filearg), "--file=%s", f->disk);
    b->ctl_fd = -1;
    tu_spawn_wait_files(&b->proc, argv, b->log, b->sock, b->ctl, name);
}

static void ctl_close(struct be *b)
{
    if (b->ctl_fd >= 0)
        close(b->ctl_fd);
    b->ctl_fd = -1;
}

/* One control command, its one-line answer. */
static void ctl(struct be *b, const char *cmd, char *ans, size_t cap)
{
    tu_ctl_command(&b->ctl_fd, b->ctl, cmd, ans, cap, CTL_MS);
}

/* `held`: the total and per-queue counts. */
static unsigned ctl_held(struct be *b, unsigned per_q[NQ])
{
    char ans[256];
    unsigned total, idx[NQ];

    ctl(b, "held", ans, sizeof(ans));
    assert_int_equal(
        sscanf(ans, "ok held=%u q%u=%u q%u=%u", &total, &idx[0], &per_q[0], &idx[1], &per_q[1]), 5);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    assert_int_equal(total, per_q[0] + per_q[1]);
    return total;
}

/* `stats`: requests completed by queue. */
static void ctl_completed(struct be *b, uint64_t done[NQ])
{
    char ans[512];
    unsigned idx;
    uint64_t rd, wr;
    int used = 0;
    const char *p;

    ctl(b, "stats", ans, sizeof(ans));
    assert_true(strncmp(ans, "ok", 2) == 0);
    p = ans + 2;
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(sscanf(p,
                                " q%u completed=%" SCNu64 " read=%" SCNu64 " written=%" SCNu64 "%n",
                                &idx, &done[i], &rd, &wr, &used),
                         4);
        assert_int_equal(idx, i);
        p += used;
    }
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->v = *state;
    f->a.proc.pid = f->b.proc.pid = -1;
    f->a.ctl_fd = f->b.ctl_fd = -1;
    f->disk_fd = -1;
    tu_vmm_init(&f->vmm);
    tu_wr_init(&f->wr, f->blk, NQ, WLEN, SEC_W, MAX_WRITES);
    f->dir = tu_mkdtemp("vuf-inflight");
    if (!f->dir) {
        free(f);
        return -1;
    }
    snprintf(f->disk, sizeof(f->disk), "%s/disk.img", f->dir);
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
    ctl_close(&f->a);
    ctl_close(&f->b);
    if (f->a.proc.pid > 0)
        tu_stop(&f->a.proc);
    if (f->b.proc.pid > 0)
        tu_stop(&f->b.proc);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

/* A front-end device with cfg.inflight on back-end `b`; `area` (or NULL)
 * is the area to hand over. ack == 0: ack all offered; else exactly ack. */
static void connect_device(struct fx *f, struct be *b, const struct vuf_inflight_area *area,
                           uint64_t ack)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX) |
                             (f->v->indirect ? BIT(VUF_VIRTIO_F_INDIRECT_DESC) : 0) |
                             (f->v->packed ? BIT(VUF_VIRTIO_F_RING_PACKED) : 0);
    cfg.max_queue_size = 256;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;
    cfg.inflight = true;
    cfg.inflight_area = area;

    assert_int_equal(vuf_conn_connect(b->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &f->dev), 0);
    assert_true(vuf_frontend_protocol_features(f->dev) & VUF_PROTO_MASK(INFLIGHT_SHMFD));
    assert_int_equal(vuf_device_num_queues(f->dev), NQ);
    tu_ack_features(f->dev, ack);
    assert_int_equal(!!(vuf_frontend_acked_features(f->dev) & BIT(VUF_VIRTIO_F_RING_PACKED)),
                     f->v->packed);
}

static void make_queues(struct fx *f)
{
    uint64_t acked = vuf_frontend_acked_features(f->dev);
    int before = tu_count_fds();

    assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = f->v->qsize, .index = i, .features = acked};

        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        assert_int_equal(vuf_virtq_packed(f->vq[i]), f->v->packed);
        assert_int_equal(vuf_blk_new(f->vq[i], NREQS, WLEN, &f->blk[i]), 0);
        tu_vmm_add_queue(&f->vmm, i, &f->q[i], f->vq[i], i == 0 ? 0 : VUF_NO_VECTOR);
    }
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
    f->queue_fds = tu_count_fds() - before;
}

/* ------------------------------------------------------------------------ */
/* The guest's writes                                                       */
/* ------------------------------------------------------------------------ */

/*
 * The exported area, read as the reference back-end lays it out: one
 * 64-byte aligned split region per queue, version 1, desc_num = the
 * area's queue_size, used_idx = the ring's used->idx, and exactly `want`
 * entries marked in flight with distinct non-zero counters.
 */
static void check_area(const struct vuf_inflight_area *a, const uint16_t used[NQ], unsigned want)
{
    uint64_t region =
        (INFL_HDR + INFL_DESC * (uint64_t)a->queue_size + INFL_ALIGN - 1) / INFL_ALIGN * INFL_ALIGN;
    struct stat st;
    uint8_t *m;

    assert_int_equal(fstat(a->fd, &st), 0);
    assert_true((uint64_t)st.st_size >= a->mmap_offset + a->mmap_size);
    assert_true(a->mmap_size >= region * a->num_queues);
    assert_int_equal(a->mmap_offset, 0);
    m = mmap(NULL, a->mmap_size, PROT_READ, MAP_SHARED, a->fd, 0);
    assert_true(m != MAP_FAILED);
    for (unsigned q = 0; q < a->num_queues; q++) {
        const uint8_t *r = m + region * q;
        uint16_t version, desc_num, used_idx;
        unsigned marked = 0;

        memcpy(&version, r + 8, 2);
        memcpy(&desc_num, r + 10, 2);
        memcpy(&used_idx, r + 14, 2);
        assert_int_equal(version, 1);
        assert_int_equal(desc_num, a->queue_size);
        assert_int_equal(used_idx, used[q]);
        for (unsigned i = 0; i < desc_num; i++) {
            const uint8_t *e = r + INFL_HDR + INFL_DESC * i;
            uint64_t ctr;

            memcpy(&ctr, e + 8, 8);
            if (e[0] == 1) {
                assert_true(ctr != 0);
                marked++;
            } else {
                assert_int_equal(e[0], 0);
            }
        }
        assert_int_equal(marked, want);
    }
    munmap(m, a->mmap_size);
}

/* Ring descriptors per write: an indirect table, or header, data, status. */
static unsigned wdesc(const struct fx *f)
{
    return f->v->indirect ? 1 : 3;
}

/* The packed position after n descriptors from a fresh ring: position,
 * and the wrap counter (1 at the start) flipped once per lap. */
static uint16_t ring_pos(const struct fx *f, unsigned n)
{
    unsigned q = f->v->qsize;

    return (uint16_t)(n % q | ((n / q) % 2 ? 0 : WRAP));
}

static uint16_t rd16(const uint8_t *p)
{
    uint16_t v;

    memcpy(&v, p, 2);
    return v;
}

/*
 * The exported area in the packed layout: one 64-byte aligned region per
 * queue of a 32-byte header {features, version 1, desc_num, free_head,
 * old_free_head, used_idx, old_used_idx, used_wrap_counter,
 * old_used_wrap_counter} and 32-byte entries {inflight, pad, next, last,
 * num, counter, id, flags, len, addr}; everything committed (old_* equal
 * the current values), the used position and wrap counter = the ring's
 * `used`, exactly `want` chains of `ndesc` entries marked in flight with
 * distinct non-zero counters, and every other entry on the free list.
 */
static void check_area_packed(const struct vuf_inflight_area *a, const uint16_t used[NQ],
                              unsigned want, unsigned ndesc)
{
    uint64_t region =
        (PKI_HDR + PKI_DESC * (uint64_t)a->queue_size + INFL_ALIGN - 1) / INFL_ALIGN * INFL_ALIGN;
    uint8_t *m;

    assert_int_equal(a->mmap_offset, 0);
    assert_true(a->mmap_size >= region * a->num_queues);
    m = mmap(NULL, a->mmap_size, PROT_READ, MAP_SHARED, a->fd, 0);
    assert_true(m != MAP_FAILED);
    for (unsigned q = 0; q < a->num_queues; q++) {
        const uint8_t *r = m + region * q;
        uint16_t dn = rd16(r + 10), e;
        uint64_t ctrs[HELD] = {0};
        unsigned marked = 0, nfree = 0;

        assert_int_equal(rd16(r + 8), 1);
        assert_int_equal(dn, a->queue_size);
        assert_int_equal(rd16(r + 12), rd16(r + 14));     /* free_head committed */
        assert_int_equal(rd16(r + 16), used[q] & 0x7fff); /* used_idx */
        assert_int_equal(rd16(r + 18), used[q] & 0x7fff); /* old_used_idx */
        assert_int_equal(r[20], !!(used[q] & WRAP));      /* used_wrap_counter */
        assert_int_equal(r[21], !!(used[q] & WRAP));
        for (unsigned i = 0; i < dn; i++) {
            const uint8_t *x = r + PKI_HDR + PKI_DESC * i;
            uint16_t k = (uint16_t)i;

            if (x[0] != 1)
                continue;
            assert_true(marked < want);
            assert_int_equal(rd16(x + 6), ndesc); /* num */
            memcpy(&ctrs[marked], x + 8, 8);
            assert_true(ctrs[marked] != 0);
            for (unsigned j = 0; j < marked; j++)
                assert_true(ctrs[j] != ctrs[marked]);
            for (unsigned j = 1; j < ndesc; j++)
                k = rd16(r + PKI_HDR + PKI_DESC * k + 2);
            assert_int_equal(rd16(x + 4), k);                                   /* last */
            assert_true(rd16(r + PKI_HDR + PKI_DESC * k + 16) < a->queue_size); /* buffer id */
            marked++;
        }
        assert_int_equal(marked, want);
        for (e = rd16(r + 12); e != dn; e = rd16(r + PKI_HDR + PKI_DESC * e + 2)) {
            assert_true(e < dn && nfree < dn);
            assert_int_equal(r[PKI_HDR + PKI_DESC * e], 0);
            nfree++;
        }
        assert_int_equal(nfree, dn - want * ndesc);
    }
    munmap(m, a->mmap_size);
}

/* Writes on both queues, at most `batch` per queue in flight. */
static void write_batches(struct fx *f, unsigned per_queue, unsigned batch)
{
    for (unsigned k = 0; k < per_queue; k++) {
        for (unsigned i = 0; i < NQ; i++)
            tu_wr_submit(&f->wr, i);
        if ((k + 1) % batch == 0 || k + 1 == per_queue)
            tu_wr_drain(&f->wr, IO_MS);
    }
}

/* ------------------------------------------------------------------------ */
/* The test                                                                 */
/* ------------------------------------------------------------------------ */

static void test_inflight_reconnect(void **state)
{
    struct fx *f = *state;
    const struct variant *v = f->v;
    const unsigned nd = wdesc(f), before = v->before;
    struct vuf_queue slept[NQ];
    struct vuf_inflight_area area;
    unsigned per_q[NQ];
    uint16_t used[NQ];
    uint64_t acked, done[NQ];
    char ans[256];
    int64_t t_kill, until;
    int r, status;

    f->disk_fd = tu_make_disk(f->disk, DISK_BYTES);
    be_start(f, &f->a, "a");
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();

    /* --- back-end A: some writes complete ---------------------------------- */
    connect_device(f, &f->a, NULL, 0);
    make_queues(f);
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, NQ), 0);
    f->wr.phase = PH_FIRST;
    write_batches(f, before, v->batch);
    tu_wr_assert_all_done(&f->wr, f->disk_fd, f->vq);
    if (v->packed)
        for (unsigned i = 0; i < NQ; i++)
            assert_int_equal(vuf_virtq_avail_idx(f->vq[i]), ring_pos(f, before * nd));

    /* --- A takes HELD writes per queue and never finishes them ------------- *
     * One queue at a time, so that the hold budget (global) goes to it;
     * the EXTRA writes behind them complete. */
    for (unsigned i = 0; i < NQ; i++) {
        char cmd[32];

        snprintf(cmd, sizeof(cmd), "hold %u", HELD);
        ctl(&f->a, cmd, ans, sizeof(ans));
        assert_string_equal(ans, "ok hold=3");
        for (unsigned k = 0; k < HELD + EXTRA; k++)
            tu_wr_submit(&f->wr, i);
        until = tu_now_ms() + IO_MS;
        while (f->wr.pending[i] > HELD) {
            struct vuf_blk_req *req;

            if (tu_now_ms() >= until)
                fail_msg("queue %u: %u in flight after %d ms, want %u", i, f->wr.pending[i], IO_MS,
                         HELD);
            r = vuf_blk_wait(f->blk[i], 1, &req);
            if (r == -ETIMEDOUT)
                continue;
            assert_int_equal(r, 0);
            tu_wr_complete(&f->wr, i, req);
        }
        assert_int_equal(ctl_held(&f->a, per_q), (i + 1) * HELD);
        assert_int_equal(per_q[i], HELD);
    }
    /* The extras completed (in A), the held ones did not. */
    for (unsigned id = NQ * before; id < f->wr.n; id++) {
        bool held = (id - NQ * before) % (HELD + EXTRA) < HELD;

        assert_int_equal(f->wr.w[id].completions, held ? 0 : 1);
    }
    tu_sleep_ms(20);
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(tu_wr_reap_now(&f->wr, i), 0);
        assert_int_equal(f->wr.pending[i], HELD);
        assert_int_equal(vuf_virtq_num_inflight(f->vq[i]), HELD);
        used[i] = vuf_virtq_used_idx(f->vq[i]);
        /* Packed: the used pointer moved by the extras' descriptors, over
         * those of the held chains. */
        assert_int_equal(used[i], v->packed ? ring_pos(f, (before + EXTRA) * nd) : before + EXTRA);
    }
    assert_int_equal(ctl_held(&f->a, per_q), NQ * HELD);

    /* --- A dies ------------------------------------------------------------ */
    ctl_close(&f->a);
    t_kill = tu_now_ms();
    assert_int_equal(kill(f->a.proc.pid, SIGKILL), 0);
    while (!atomic_load(&f->vmm.crashed) && tu_now_ms() - t_kill < 3000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&f->vmm.crashed), 1);
    status = tu_stop(&f->a.proc);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(tu_wr_reap_now(&f->wr, i), 0);

    /* --- VMM: the queues back, the area out, the dead device gone ---------- */
    for (unsigned i = 0; i < NQ; i++) {
        slept[i] = f->q[i];
        slept[i].next_avail = slept[i].next_used = 0xdead;
    }
    r = vuf_device_sleep(f->dev, slept, NQ);
    /* The hang-up, not -EINVAL: the queues come back. */
    assert_int_equal(r, -ECONNRESET);
    for (unsigned i = 0; i < NQ; i++) {
        if (v->packed) {
            /* No index in memory: the positions as activate sent them. */
            assert_int_equal(slept[i].next_avail, VUF_VRING_PACKED_BASE_INIT);
            assert_int_equal(slept[i].next_used, VUF_VRING_PACKED_BASE_INIT);
            continue;
        }
        assert_int_equal(slept[i].next_used, used[i]);
        assert_int_equal(slept[i].next_avail, used[i]);
        /* The held writes are still published, after used->idx. */
        assert_int_equal((uint16_t)(vuf_virtq_avail_idx(f->vq[i]) - used[i]), HELD);
    }
    memset(&area, 0, sizeof(area));
    area.fd = -1;
    assert_int_equal(vuf_frontend_inflight_export(f->dev, &area), 0);
    assert_true(area.fd >= 0);
    assert_int_equal(area.num_queues, NQ);
    assert_int_equal(area.queue_size, v->qsize);
    if (v->packed)
        check_area_packed(&area, used, HELD, nd);
    else
        check_area(&area, used, HELD);
    acked = vuf_frontend_acked_features(f->dev);
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0 + f->queue_fds + 1); /* + the area */

    /* --- back-end B on the same file gets the area back -------------------- */
    be_start(f, &f->b, "b");
    connect_device(f, &f->b, &area, acked);
    close(area.fd);
    area.fd = -1;
    f->wr.phase = PH_RECOVERED;
    /* No driver requeue: the queues exactly as sleep returned them. */
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, slept, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(vuf_virtq_kick(f->vq[i], VUF_VIRTQ_KICK_FORCE), 1);
    tu_wr_drain(&f->wr, IO_MS);
    {
        unsigned recovered = 0;

        for (unsigned id = 0; id < f->wr.n; id++) {
            bool was_held = id >= NQ * before && (id - NQ * before) % (HELD + EXTRA) < HELD;

            assert_int_equal(f->wr.w[id].done_in, was_held ? PH_RECOVERED : PH_FIRST);
            recovered += f->wr.w[id].done_in == PH_RECOVERED;
        }
        assert_int_equal(recovered, NQ * HELD);
    }
    /* B resumed where A's work ends: every descriptor used, once. */
    for (unsigned i = 0; i < NQ; i++) {
        unsigned n = before + HELD + EXTRA;

        assert_int_equal(vuf_virtq_used_idx(f->vq[i]), v->packed ? ring_pos(f, n * nd) : n);
        assert_int_equal(vuf_virtq_avail_idx(f->vq[i]), v->packed ? ring_pos(f, n * nd) : n);
    }
    assert_int_equal(vuf_blk_flush(f->blk[0], IO_MS), 0);
    assert_int_equal(vuf_blk_flush(f->blk[1], IO_MS), 0);
    tu_wr_assert_all_done(&f->wr, f->disk_fd, f->vq);
    ctl_completed(&f->b, done);
    assert_int_equal(done[0], HELD + 1); /* + the flush */
    assert_int_equal(done[1], HELD + 1);
    assert_int_equal(ctl_held(&f->b, per_q), 0);

    /* --- and the device goes on -------------------------------------------- */
    write_batches(f, AFTER, v->batch);
    tu_wr_assert_all_done(&f->wr, f->disk_fd, f->vq);
    {
        unsigned ids[3] = {0, NQ * before, f->wr.n - 1};

        for (unsigned k = 0; k < 3; k++) {
            tu_fill_pattern(f->buf, WLEN, tu_wr_seed(ids[k]));
            tu_assert_blk_reads(f->blk[(f->wr.w[ids[k]].queue + 1) % NQ],
                                tu_wr_sector(&f->wr, ids[k]), f->buf, WLEN, IO_MS);
        }
    }
    ctl_completed(&f->b, done);
    assert_int_equal(done[0] + done[1], 2 * (HELD + 1) + NQ * AFTER + 3);
    assert_int_equal(atomic_load(&f->vmm.crashed), 1);
    assert_int_equal(atomic_load(&f->vmm.bad_vector), 0);

    /* --- nothing left behind ----------------------------------------------- */
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    ctl_close(&f->b);
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0);
    assert_int_equal(waitpid(f->b.proc.pid, NULL, WNOHANG), 0); /* still running */
    tu_stop_clean(&f->b.proc, f->b.sock);
}

/* Split, as before; packed with indirect chains; packed on 16-entry rings
 * with 3-descriptor chains after 21 writes a queue (63 descriptors, nearly
 * 4 laps): the first held chain takes positions 15, 0 and 1, and the
 * completed ones move the used wrap counter. */
static const struct variant split64 = {
    .packed = false, .indirect = true, .qsize = 64, .before = 6, .batch = 6};
static const struct variant packed64 = {
    .packed = true, .indirect = true, .qsize = 64, .before = 6, .batch = 6};
static const struct variant packed16 = {
    .packed = true, .indirect = false, .qsize = 16, .before = 21, .batch = 4};

int main(void)
{
    const struct CMUnitTest tests[] = {
        {"inflight_reconnect_split", test_inflight_reconnect, setup, teardown, (void *)&split64},
        {"inflight_reconnect_packed", test_inflight_reconnect, setup, teardown, (void *)&packed64},
        {"inflight_reconnect_packed_wrapped", test_inflight_reconnect, setup, teardown,
         (void *)&packed16},
    };

    signal(SIGPIPE, SIG_IGN);
    backend_bin = tu_built_exe("VUF_BACKEND_BLK");
    if (!backend_bin)
        return 1;
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
