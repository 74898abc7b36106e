/* SPDX-License-Identifier: MIT */
/*
 * Packed virtqueues (virtio 1.2 §2.8) against the reference back-end
 * (vuf-backend-blk, $VUF_BACKEND_BLK), which offers RING_PACKED: a
 * 256-entry packed ring through more than 3 laps of both wrap counters
 * (requests of 3 descriptors: header, data, status), every byte read back;
 * then sleep, snapshot, a NEW back-end process, restore, wake with the
 * positions and wrap counters the sleep returned, and 3 more laps, the data
 * written before the move (the RAM disk travels with the state) and after
 * it read back.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
#define QSIZE 256u
#define IO_MS 5000
#define BLOCKS 64u /* 4 KiB blocks written round-robin */
#define WRAP 0x8000u

struct env {
    char *dir;
    struct tu_proc proc;
    char sock[300], log[300];
    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    struct vuf_queue q;
    unsigned avail_flips, used_flips;
    uint16_t last_avail_seen, last_used_seen;
};

static void backend_start(struct env *e, const char *name)
{
    const char *bin = getenv("VUF_BACKEND_BLK");
    char sockarg[320];
    char *argv[] = {(char *)bin, sockarg, "--ram=4194304", "--state-includes-ram", NULL};

    if (!bin || !tu_have_exe(bin))
        fail_msg("VUF_BACKEND_BLK does not name vuf-backend-blk (run via meson test)");
    snprintf(e->sock, sizeof(e->sock), "%s/%s.sock", e->dir, name);
    snprintf(e->log, sizeof(e->log), "%s/%s.log", e->dir, name);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", e->sock);
    tu_spawn_wait_file(&e->proc, argv, e->log, e->sock);
}

static void connect_device(struct env *e)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    /* No INDIRECT_DESC: every request is a chain of 3 ring descriptors. */
    cfg.base_features_mask =
        BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX) | BIT(VUF_VIRTIO_F_RING_PACKED);
    cfg.max_queue_size = QSIZE;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &e->vmm;
    assert_int_equal(vuf_conn_connect(e->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &e->dev), 0);
    assert_true(vuf_device_features(e->dev) & BIT(VUF_VIRTIO_F_RING_PACKED));
}

/* The packed index after `n` descriptors from a fresh ring: position, and
 * the wrap counter (1 at the start) flipped once per lap. */
static uint16_t ring_pos(unsigned n)
{
    return (uint16_t)(n % QSIZE | ((n / QSIZE) % 2 ? 0 : WRAP));
}

static void block(uint8_t *p, unsigned blk, unsigned gen)
{
    for (unsigned i = 0; i < 4096; i++)
        p[i] = (uint8_t)(i * 7 + blk * 13 + gen * 101 + (i >> 8));
}

static void track(struct env *e)
{
    uint16_t a = vuf_virtq_avail_idx(e->vq), u = vuf_virtq_last_used(e->vq);

    e->avail_flips += (a & WRAP) != (e->last_avail_seen & WRAP);
    e->used_flips += (u & WRAP) != (e->last_used_seen & WRAP);
    e->last_avail_seen = a;
    e->last_used_seen = u;
}

/* `n` writes of a 4 KiB block (generation gen), each read back, tracking
 * the wrap counters; the ring is idle after each. */
static void laps(struct env *e, unsigned n, unsigned gen)
{
    uint8_t w[4096], r[4096];

    for (unsigned k = 0; k < n; k++) {
        unsigned b = k % BLOCKS;

        block(w, b, gen);
        assert_int_equal(vuf_blk_write(e->blk, 8ull * b, w, sizeof(w), IO_MS), 0);
        track(e);
        memset(r, 0, sizeof(r));
        assert_int_equal(vuf_blk_read(e->blk, 8ull * b, r, sizeof(r), IO_MS), 0);
        assert_memory_equal(r, w, sizeof(r));
        track(e);
        assert_int_equal(vuf_virtq_avail_idx(e->vq), vuf_virtq_last_used(e->vq));
        assert_int_equal(vuf_virtq_num_inflight(e->vq), 0);
    }
}

static void test_packed_ref_laps_snapshot_restore(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct vuf_queue slept;
    uint8_t *blob = NULL, r[4096], w[4096];
    size_t blob_len = 0;
    uint64_t acked;
    int fds0, threads0;

    (void)state;
    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-packed-ref");
    assert_non_null(e->dir);
    tu_vmm_init(&e->vmm);
    fds0 = tu_count_fds();
    threads0 = tu_count_threads();

    /* --- A: packed ring, > 3 laps ---------------------------------------- */
    backend_start(e, "A");
    connect_device(e);
    assert_int_equal(vuf_device_ack_features(e->dev, vuf_device_features(e->dev)), 0);
    acked = vuf_frontend_acked_features(e->dev);
    assert_int_equal(acked & BIT(VUF_VIRTIO_F_RING_PACKED), BIT(VUF_VIRTIO_F_RING_PACKED));
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 8u << 20, &e->gm), 0);
    {
        struct vuf_virtq_opts o = {.size = QSIZE, .features = acked};

        assert_int_equal(vuf_virtq_new_opts(e->gm, &o, &e->vq), 0);
    }
    assert_true(vuf_virtq_packed(e->vq));
    assert_int_equal(vuf_blk_new(e->vq, 4, 64 * 1024, &e->blk), 0);
    tu_vmm_add_queue(&e->vmm, 0, &e->q, e->vq, 0);
    assert_true(e->q.packed);
    assert_int_equal(e->q.next_avail, WRAP);
    e->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &e->vmm};
    assert_int_equal(vuf_device_activate(e->dev, e->gm, &e->intr, &e->q, 1), 0);
    e->last_avail_seen = e->last_used_seen = WRAP;

    /* 2 requests of 3 descriptors per block: 6 * 200 = 1200 > 4 * 256. */
    laps(e, 200, 1);
    print_message("A: avail 0x%04x, used 0x%04x, %u/%u wrap flips\n", vuf_virtq_avail_idx(e->vq),
                  vuf_virtq_last_used(e->vq), e->avail_flips, e->used_flips);
    assert_true(e->avail_flips >= 4 && e->used_flips >= 4);
    /* 1200 descriptors = 4 laps + 176: position 176, wrap counter back at 1. */
    assert_int_equal(vuf_virtq_avail_idx(e->vq), ring_pos(1200));

    /* --- sleep, snapshot; A goes away ------------------------------------ */
    slept = e->q;
    assert_int_equal(vuf_device_sleep(e->dev, &slept, 1), 1);
    assert_int_equal(slept.next_avail, vuf_virtq_avail_idx(e->vq));
    assert_int_equal(slept.next_used, vuf_virtq_last_used(e->vq));
    assert_int_equal(vuf_device_snapshot(e->dev, &blob, &blob_len), 0);
    vuf_device_destroy(e->dev);
    e->dev = NULL;
    tu_stop_clean(&e->proc, e->sock);

    /* --- B: a new process; restore, wake where A stopped ----------------- */
    backend_start(e, "B");
    connect_device(e);
    assert_int_equal(vuf_device_restore(e->dev, blob, blob_len), 0);
    free(blob);
    assert_int_equal(vuf_frontend_acked_features(e->dev), acked);
    assert_int_equal(vuf_device_wake(e->dev, e->gm, &e->intr, &slept, 1), 0);
    /* What A wrote travelled with the state. */
    for (unsigned b = 0; b < BLOCKS; b++) {
        block(w, b, 1);
        assert_int_equal(vuf_blk_read(e->blk, 8ull * b, r, sizeof(r), IO_MS), 0);
        assert_memory_equal(r, w, sizeof(r));
        track(e);
    }
    laps(e, 200, 2);
    print_message("B: avail 0x%04x, used 0x%04x, %u/%u wrap flips in all\n",
                  vuf_virtq_avail_idx(e->vq), vuf_virtq_last_used(e->vq), e->avail_flips,
                  e->used_flips);
    assert_int_equal(vuf_virtq_avail_idx(e->vq), ring_pos(1200 + 3 * BLOCKS + 1200));
    assert_int_equal(vuf_virtq_last_used(e->vq), ring_pos(1200 + 3 * BLOCKS + 1200));
    assert_true(e->avail_flips >= 10 && e->used_flips >= 10);

    vuf_device_destroy(e->dev);
    vuf_blk_free(e->blk);
    vuf_virtq_free(e->vq);
    tu_vmm_forget_queue(&e->vmm, 0);
    vuf_guest_mem_free(e->gm);
    tu_stop_clean(&e->proc, e->sock);
    assert_int_equal(tu_threads_settle(threads0), threads0);
    assert_int_equal(tu_count_fds(), fds0);
    tu_rmtree(e->dir);
    free(e);
}

static struct tu_run *run_tool(const char *const *args)
{
    return tu_run_vuf(args, 60000);
}

/* vuf blk --ring packed: write, verify, and a bench whose JSON says so. */
static void test_packed_cli_blk(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct tu_run *r;

    (void)state;
    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-packed-cli");
    assert_non_null(e->dir);
    backend_start(e, "A");
    {
        const char *args[] = {"blk", e->sock,  "write",  "--offset",     "4096", "--len",
                              "1M",  "--ring", "packed", "--queue-size", "64",   NULL};
        r = run_tool(args);
        assert_int_equal(tu_exit_code(r), 0);
        free(r);
    }
    {
        const char *args[] = {"blk",   e->sock, "verify", "--offset", "4096",
                              "--len", "1M",    "--ring", "packed",   NULL};
        r = run_tool(args);
        assert_int_equal(tu_exit_code(r), 0);
        assert_non_null(
            strstr(r->out, "verified 1048576 bytes at offset 4096 (pattern seed 1): ok"));
        free(r);
    }
    for (int packed = 0; packed < 2; packed++) {
        const char *args[] = {"blk",       e->sock, "bench",  "--ios",  "2000",
                              "--iodepth", "8",     "--json", "--ring", packed ? "packed" : "split",
                              NULL};

        r = run_tool(args);
        assert_int_equal(tu_exit_code(r), 0);
        assert_non_null(strstr(r->out, packed ? "\"ring\":\"packed\"" : "\"ring\":\"split\""));
        assert_non_null(strstr(r->out, "\"ios\":2000"));
        free(r);
    }
    tu_stop_clean(&e->proc, e->sock);
    tu_rmtree(e->dir);
    free(e);
}

/* A FLUSH chain (header, status byte) on the raw queue; returns the ring
 * position of its head. */
static uint16_t add_flush(struct env *e, uint8_t *hdr_status, void *cookie)
{
    struct vuf_blk_outhdr h = {.type = VUF_BLK_T_FLUSH};
    struct vuf_virtq_buf b[2] = {
        {.host = hdr_status, .len = sizeof(h)},
        {.host = hdr_status + 64, .len = 1, .writable = true},
    };
    uint16_t pos = vuf_virtq_avail_idx(e->vq) & 0x7fff;

    memcpy(hdr_status, &h, sizeof(h));
    hdr_status[64] = 0xee;
    assert_int_equal(vuf_virtq_add(e->vq, b, 2, cookie), 0);
    return pos;
}

/* The reference back-end's packed ring parser against chains the driver
 * tampered with before kicking: a readable descriptor after a writable one
 * comes back with length 0; a buffer id beyond the ring stops the queue
 * (nothing used), and GET_VRING_BASE still answers where it stopped. */
static void test_packed_ref_bad_chains(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct vuf_virtq_layout l;
    struct vuf_queue slept;
    uint8_t *mem;
    uint64_t gpa, acked;
    void *cookie;
    uint32_t len;
    uint16_t pos, before;

    (void)state;
    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-packed-bad");
    assert_non_null(e->dir);
    tu_vmm_init(&e->vmm);
    backend_start(e, "A");
    connect_device(e);
    assert_int_equal(vuf_device_ack_features(e->dev, vuf_device_features(e->dev)), 0);
    acked = vuf_frontend_acked_features(e->dev);
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 8u << 20, &e->gm), 0);
    {
        struct vuf_virtq_opts o = {.size = QSIZE, .features = acked & ~BIT(28)};

        assert_int_equal(vuf_virtq_new_opts(e->gm, &o, &e->vq), 0);
    }
    assert_int_equal(vuf_guest_mem_alloc(e->gm, 4096, 64, &gpa), 0);
    mem = vuf_guest_mem_to_host(e->gm, gpa, 4096);
    vuf_virtq_layout(e->vq, &l);
    tu_vmm_add_queue(&e->vmm, 0, &e->q, e->vq, 0);
    e->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &e->vmm};
    assert_int_equal(vuf_device_activate(e->dev, e->gm, &e->intr, &e->q, 1), 0);

    /* A good FLUSH first. */
    add_flush(e, mem, (void *)1);
    assert_int_equal(vuf_virtq_kick(e->vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(vuf_virtq_wait(e->vq, IO_MS), 0);
    assert_int_equal(vuf_virtq_get_used(e->vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)1);
    assert_int_equal(len, 1);
    assert_int_equal(mem[64], VUF_BLK_S_OK);

    /* Header writable, status readable: malformed, returned with length 0
     * and the status byte untouched. */
    pos = add_flush(e, mem, (void *)2);
    l.pdesc[pos + 1].flags &= (uint16_t)~VUF_VRING_DESC_F_WRITE;
    __atomic_store_n(&l.pdesc[pos].flags, (uint16_t)(l.pdesc[pos].flags | VUF_VRING_DESC_F_WRITE),
                     __ATOMIC_RELEASE);
    assert_int_equal(vuf_virtq_kick(e->vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(vuf_virtq_wait(e->vq, IO_MS), 0);
    assert_int_equal(vuf_virtq_get_used(e->vq, &cookie, &len), 0);
    assert_ptr_equal(cookie, (void *)2);
    assert_int_equal(len, 0);
    assert_int_equal(mem[64], 0xee);

    /* A buffer id beyond the ring: the queue stops, nothing is used. */
    before = vuf_virtq_avail_idx(e->vq);
    pos = add_flush(e, mem, (void *)3);
    l.pdesc[pos + 1].id = QSIZE + 44;
    assert_int_equal(vuf_virtq_kick(e->vq, VUF_VIRTQ_KICK_FORCE), 1);
    assert_int_equal(vuf_virtq_wait(e->vq, 300), -ETIMEDOUT);
    assert_int_equal(vuf_virtq_num_inflight(e->vq), 1);
    slept = e->q;
    assert_int_equal(vuf_device_sleep(e->dev, &slept, 1), 1);
    assert_int_equal(slept.next_avail, before);
    assert_int_equal(slept.next_used, before);

    vuf_device_destroy(e->dev);
    vuf_virtq_free(e->vq);
    tu_vmm_forget_queue(&e->vmm, 0);
    vuf_guest_mem_free(e->gm);
    tu_stop_clean(&e->proc, e->sock);
    tu_rmtree(e->dir);
    free(e);
}

/* ---- kick suppression while the back-end polls (--poll-us) ------------------ */

/* The device event area as the driver reads it: flags, off_wrap. */
static uint32_t dev_event(const struct vuf_virtq_layout *l)
{
    return __atomic_load_n((const uint32_t *)(const void *)l->device_event, __ATOMIC_ACQUIRE);
}

/* Wait until the device event flags are (want) or are not (!want) DISABLE. */
static uint32_t wait_disable(const struct vuf_virtq_layout *l, bool want)
{
    int64_t until = tu_now_ms() + IO_MS;
    uint32_t ev;

    while (((ev = dev_event(l)) >> 16 == VUF_RING_EVENT_FLAGS_DISABLE) != want) {
        if (tu_now_ms() >= until)
            fail_msg("device event area 0x%08x: DISABLE %s after %d ms", ev,
                     want ? "never came" : "stayed", IO_MS);
        tu_sleep_ms(1);
    }
    return ev;
}

/* One 4 KiB write (pattern gen) of block b, kicked as the device asks;
 * returns what the kick did (1 notified, 0 suppressed). */
static int write_counting_kick(struct env *e, unsigned b, unsigned gen)
{
    struct vuf_blk_req *req = vuf_blk_req_get(e->blk), *done = NULL;
    int kicked;

    assert_non_null(req);
    block(vuf_blk_req_buf(req, NULL), b, gen);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_OUT, 8ull * b, 4096), 0);
    assert_int_equal(vuf_blk_submit(e->blk, req, VUF_BLK_SUBMIT_NO_KICK), 0);
    kicked = vuf_blk_kick(e->blk);
    assert_true(kicked == 0 || kicked == 1);
    assert_int_equal(vuf_blk_wait(e->blk, IO_MS, &done), 0);
    assert_ptr_equal(done, req);
    assert_int_equal(vuf_blk_req_result(req), 0);
    assert_int_equal(vuf_blk_req_put(e->blk, req), 0);
    return kicked;
}

/*
 * The back-end's kick switch on a packed ring (--poll-us=500000): after a
 * request it spins on the ring with the device event flags at DISABLE, so
 * the driver's next requests go out without a kick and still complete;
 * when the spin ends the flags come back (ENABLE, or DESC naming the
 * driver's next avail position with EVENT_IDX) and the next request is
 * kicked. With and without EVENT_IDX, on one back-end; every write read
 * back, the ring's positions exact (3 descriptors a request).
 */
static void test_packed_ref_kick_switch(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    const char *bin = getenv("VUF_BACKEND_BLK");
    char sockarg[320];
    char *argv[] = {(char *)bin, sockarg, "--ram=4194304", "--poll-us=500000", NULL};
    enum { N = 100 }; /* > BLOCKS: every block written, 300 descriptors: a lap */

    (void)state;
    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-packed-kick");
    assert_non_null(e->dir);
    tu_vmm_init(&e->vmm);
    snprintf(e->sock, sizeof(e->sock), "%s/A.sock", e->dir);
    snprintf(e->log, sizeof(e->log), "%s/A.log", e->dir);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", e->sock);
    tu_spawn_wait_file(&e->proc, argv, e->log, e->sock);

    for (unsigned ev = 0; ev < 2; ev++) {
        struct vuf_virtq_layout l;
        struct vuf_virtq_opts o = {.size = QSIZE};
        uint8_t w[4096], r[4096];
        unsigned suppressed = 0, reqs = 0;
        uint32_t area;
        uint64_t ack;

        connect_device(e);
        ack = vuf_device_features(e->dev) & ~(ev ? 0 : BIT(VUF_VIRTIO_F_EVENT_IDX));
        assert_int_equal(vuf_device_ack_features(e->dev, ack), 0);
        o.features = vuf_frontend_acked_features(e->dev);
        assert_int_equal(!!(o.features & BIT(VUF_VIRTIO_F_EVENT_IDX)), ev);
        assert_int_equal(vuf_guest_mem_new_simple(0x100000, 8u << 20, &e->gm), 0);
        assert_int_equal(vuf_virtq_new_opts(e->gm, &o, &e->vq), 0);
        assert_true(vuf_virtq_packed(e->vq));
        assert_int_equal(vuf_blk_new(e->vq, 4, 4096, &e->blk), 0);
        vuf_virtq_layout(e->vq, &l);
        tu_vmm_add_queue(&e->vmm, 0, &e->q, e->vq, 0);
        e->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &e->vmm};
        assert_int_equal(vuf_device_activate(e->dev, e->gm, &e->intr, &e->q, 1), 0);

        /* A first request (kicked or not: a spin may be under way), then
         * the spin it starts: N requests without a kick. */
        write_counting_kick(e, 0, ev);
        reqs++;
        wait_disable(&l, true);
        for (unsigned k = 1; k <= N; k++) {
            suppressed += write_counting_kick(e, k % BLOCKS, ev) == 0;
            reqs++;
        }
        assert_int_equal(suppressed, N);
        assert_int_equal(vuf_virtq_avail_idx(e->vq), ring_pos(3 * reqs));
        assert_int_equal(vuf_virtq_last_used(e->vq), ring_pos(3 * reqs));

        /* The spin ends: kicks wanted again, from the next position. */
        area = wait_disable(&l, false);
        if (ev) {
            assert_int_equal(area >> 16, VUF_RING_EVENT_FLAGS_DESC);
            assert_int_equal(area & 0xffff, ring_pos(3 * reqs));
        } else {
            assert_int_equal(area, VUF_RING_EVENT_FLAGS_ENABLE << 16);
        }
        assert_int_equal(write_counting_kick(e, 1, ev + 10), 1);
        reqs++;
        assert_int_equal(vuf_virtq_avail_idx(e->vq), ring_pos(3 * reqs));
        assert_int_equal(vuf_virtq_last_used(e->vq), ring_pos(3 * reqs));

        /* Every block as last written. */
        for (unsigned b = 0; b < BLOCKS; b++) {
            block(w, b, b == 1 ? ev + 10 : ev);
            memset(r, 0, sizeof(r));
            assert_int_equal(vuf_blk_read(e->blk, 8ull * b, r, sizeof(r), IO_MS), 0);
            assert_memory_equal(r, w, sizeof(r));
        }
        assert_int_equal(vuf_virtq_num_inflight(e->vq), 0);
        assert_false(vuf_virtq_broken(e->vq));

        vuf_device_destroy(e->dev);
        e->dev = NULL;
        vuf_blk_free(e->blk);
        vuf_virtq_free(e->vq);
        tu_vmm_forget_queue(&e->vmm, 0);
        vuf_guest_mem_free(e->gm);
    }
    tu_stop_clean(&e->proc, e->sock);
    tu_rmtree(e->dir);
    free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_ref_laps_snapshot_restore),
        cmocka_unit_test(test_packed_cli_blk),
        cmocka_unit_test(test_packed_ref_bad_chains),
        cmocka_unit_test(test_packed_ref_kick_switch),
    };

    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
