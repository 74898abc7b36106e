/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) as a virtio-net device whose
 * back-end is DPDK's vhost PMD (dpdk-testpmd from Debian 12's dpdk-dev,
 * DPDK 22.11) forwarding in macswap mode: every frame the guest sends on
 * its TX queue comes back on its RX queue with the MAC addresses swapped.
 * Everything goes through the public device API, as a VMM drives it; the
 * test plays the VMM (interrupt ops) and the guest (a minimal virtio-net
 * driver on the virtq driver: 12-byte virtio_net_hdr with VERSION_1, no
 * MRG_RXBUF, one RX buffer per frame, TX chains of header + frame).
 *
 * Interrupts: RX (queue 0) has MSI-X vector 0 whose irqfd is the driver's
 * call eventfd; TX (queue 1) has none, so its calls go through the
 * front-end's worker (signal_used_queue) to the driver, as INTx would.
 *
 * testpmd busy-polls one lcore: each test starts its own for a few
 * seconds. It is started with --stats-period (without it, non-interactive
 * testpmd waits for a key on stdin, which is /dev/null here, and exits at
 * once), --no-shconf (no 12 MB of runtime files per run) and a file prefix
 * unique to this process. dpdk-testpmd not installed, or exiting before
 * it creates its socket (its log is printed), is a failure: scripts/setup.sh
 * installs it and it runs in a plain container (--no-huge, --no-pci).
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "backends.h"
#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))

/* virtio-net (virtio 1.2 §5.1) */
#define NET_F_MAC 5
#define NET_F_MRG_RXBUF 15
#define NET_F_CTRL_VQ 17
#define NET_F_MQ 22
#define NET_HDR_LEN 12 /* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define ETH_MIN 60
#define ETH_MAX 1514
#define ETH_TYPE 0x88b5                      /* IEEE local experimental */
#define GUEST_MAC "\x52\x54\x00\x12\x34\x56" /* the net config space's mac */

#define RXQ 0
#define TXQ 1
#define NQ 2
#define QSIZE 256u
#define NRX 128  /* RX buffers posted */
#define ROUND 64 /* frames per round; 2 rounds */
#define NFRAMES (2 * ROUND)
#define GUEST_GPA 0x100000ull
#define GUEST_BYTES (8ull << 20)
#define IO_MS 5000
#define RUN_DEADLINE_MS 30000

/* What DPDK 22.11's vhost PMD answers (probed with vuf probe). */
#define DPDK_FEATURES 0xd7c66e7cbull
#define DPDK_PROTOCOL_OFFERED 0x10cbfull
#define DPDK_QUEUE_PAIRS 128u

static const uint8_t mac_a[6] = {0x02, 0x76, 0x75, 0x66, 0x00, 0x0a}; /* sender */
static const uint8_t mac_b[6] = {0x02, 0x76, 0x75, 0x66, 0x00, 0x0b}; /* addressee */

/* ------------------------------------------------------------------------ */
/* Frames                                                                   */
/* ------------------------------------------------------------------------ */

/* Lengths from 60 to 1514 bytes, distinct per sequence number mod 8. */
static size_t frame_len(uint32_t seq)
{
    static const uint16_t lens[8] = {ETH_MIN, ETH_MAX, 64, 128, 333, 777, 1024, 1500};

    return seq % 8 == 0 || seq % 8 == 1 ? lens[seq % 8] : lens[seq % 8] - (seq / 8) % 4;
}

/* The frame the guest sends as number `seq`: dst mac_b, src mac_a, our
 * ethertype, "VUFD", seq, length, then a pattern of seq. With `swapped`,
 * the frame macswap returns (src and dst exchanged). */
static void build_frame(uint8_t *p, uint32_t seq, bool swapped)
{
    size_t len = frame_len(seq);
    uint16_t l16 = (uint16_t)len;

    memcpy(p, swapped ? mac_a : mac_b, 6);
    memcpy(p + 6, swapped ? mac_b : mac_a, 6);
    p[12] = ETH_TYPE >> 8;
    p[13] = ETH_TYPE & 0xff;
    memcpy(p + 14, "VUFD", 4);
    memcpy(p + 18, &seq, 4);
    memcpy(p + 22, &l16, 2);
    for (size_t i = 24; i < len; i++)
        p[i] = (uint8_t)(i * 31u + seq * 7u + (i >> 8));
}

/* ------------------------------------------------------------------------ */
/* testpmd                                                                  */
/* ------------------------------------------------------------------------ */

struct fx {
    char *dir;
    char sock[300], log[300], prefix[64];
    struct tu_proc proc;
    int fds0, threads0;

    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_queue q[NQ];

    uint64_t rx_gpa[NRX];
    uint8_t *rx_buf[NRX];
    uint8_t *tx_hdr[NFRAMES], *tx_frame[NFRAMES];
    uint64_t tx_hdr_gpa[NFRAMES], tx_frame_gpa[NFRAMES];
    bool seen[NFRAMES];
    unsigned received;
    uint16_t num_buffers; /* what DPDK left in the last RX header's num_buffers */
};

static int setup(void **state)
{
    static unsigned instance;
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    tu_vmm_init(&f->vmm);
    f->dir = tu_mkdtemp("vuf-fe-dpdk");
    if (!f->dir) {
        free(f);
        return -1;
    }
    snprintf(f->sock, sizeof(f->sock), "%s/vh.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/testpmd.log", f->dir);
    snprintf(f->prefix, sizeof(f->prefix), "vuf-%d-%u", (int)getpid(), instance++);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    vuf_device_destroy(f->dev);
    for (unsigned i = 0; i < NQ; i++)
        vuf_virtq_free(f->vq[i]);
    vuf_guest_mem_free(f->gm);
    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    tu_testpmd_cleanup(f->prefix);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

/* testpmd with one vhost-user-net port (1 queue pair) on f->sock. */
static void start_testpmd(struct fx *f)
{
    tu_start_testpmd(&f->proc, f->prefix, 1, f->sock, f->log);
}

/* ------------------------------------------------------------------------ */
/* The device and the guest's driver                                        */
/* ------------------------------------------------------------------------ */

static void new_device(struct fx *f)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t offered, want;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_NET;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = QSIZE;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;
    memcpy(cfg.net_mac, GUEST_MAC, 6);

    /* Retries ECONNREFUSED: the file appears at bind(), before listen(). */
    assert_int_equal(vuf_conn_connect(f->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &f->dev), 0);

    assert_int_equal(vuf_device_type(f->dev), VUF_DEV_NET);
    /* GET_QUEUE_NUM = 128 pairs (whatever queues= says); CTRL_VQ is
     * offered but not served, and the VMM has no control queue either
     * (cfg.net_ctrl_vq unset): 128 pairs, no control queue. */
    assert_int_equal(vuf_device_num_queues(f->dev), 2 * DPDK_QUEUE_PAIRS);
    assert_int_equal(vuf_device_queue_max_sizes(f->dev)[RXQ], QSIZE);
    offered = vuf_device_features(f->dev);
    /* No CONFIG: the device builds the config space, so MAC (given) and
     * STATUS are its own, MTU is not offered (none given). */
    assert_int_equal(offered, (DPDK_FEATURES &
                               (VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | cfg.base_features_mask) &
                               ~(VUF_NET_CTRL_VQ_FEATURES_MASK | BIT(VUF_NET_F_MTU))) |
                                  BIT(VUF_NET_F_STATUS) | BIT(VUF_NET_F_MAC));
    assert_false(offered & BIT(NET_F_CTRL_VQ));
    assert_false(offered & BIT(NET_F_MQ));
    assert_true(offered & BIT(NET_F_MRG_RXBUF));
    /* of DPDK_PROTOCOL_OFFERED: MQ RARP REPLY_ACK NET_MTU BACKEND_REQ STATUS */
    assert_int_equal(vuf_frontend_protocol_features(f->dev),
                     VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ) |
                         VUF_PROTO_MASK(RARP) | VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(STATUS));

    /* The guest acks only VERSION_1 and EVENT_IDX (no MRG_RXBUF, no control
     * queue: a 12-byte header, one buffer per frame). */
    want = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    assert_int_equal(vuf_device_ack_features(f->dev, want & 0xffffffffull), 0);
    assert_int_equal(vuf_device_ack_features(f->dev, want & ~0xffffffffull), 0);
    assert_int_equal(vuf_frontend_acked_features(f->dev), want);
    assert_false(vuf_frontend_is_active(f->dev));
}

/* Guest memory, the two queues, the RX buffers and one TX header + frame
 * buffer per frame (never reused, so a frame is never rewritten while in
 * flight). */
static void make_queues(struct fx *f)
{
    uint64_t features = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);

    assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = features};

        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        tu_vmm_add_queue(&f->vmm, i, &f->q[i], f->vq[i], i == RXQ ? 0 : VUF_NO_VECTOR);
    }
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
    for (unsigned i = 0; i < NRX; i++) {
        assert_int_equal(vuf_guest_mem_alloc(f->gm, NET_HDR_LEN + ETH_MAX, 64, &f->rx_gpa[i]), 0);
        f->rx_buf[i] = vuf_guest_mem_to_host(f->gm, f->rx_gpa[i], NET_HDR_LEN + ETH_MAX);
        assert_non_null(f->rx_buf[i]);
    }
    for (unsigned i = 0; i < NFRAMES; i++) {
        assert_int_equal(vuf_guest_mem_alloc(f->gm, NET_HDR_LEN, 16, &f->tx_hdr_gpa[i]), 0);
        assert_int_equal(vuf_guest_mem_alloc(f->gm, ETH_MAX, 64, &f->tx_frame_gpa[i]), 0);
        f->tx_hdr[i] = vuf_guest_mem_to_host(f->gm, f->tx_hdr_gpa[i], NET_HDR_LEN);
        f->tx_frame[i] = vuf_guest_mem_to_host(f->gm, f->tx_frame_gpa[i], ETH_MAX);
        assert_true(f->tx_hdr[i] && f->tx_frame[i]);
    }
}

/* Make RX buffer i available (filled with 0xee, so that what the device
 * wrote shows). */
static void post_rx(struct fx *f, unsigned i)
{
    struct vuf_virtq_buf b = {.gpa = f->rx_gpa[i], .len = NET_HDR_LEN + ETH_MAX, .writable = true};

    memset(f->rx_buf[i], 0xee, NET_HDR_LEN + ETH_MAX);
    assert_int_equal(vuf_virtq_add(f->vq[RXQ], &b, 1, (void *)(uintptr_t)(i + 1)), 0);
}

/* Queue frame `seq` on TX (header, zeroed: no offloads; then the frame). */
static void add_tx(struct fx *f, uint32_t seq)
{
    struct vuf_virtq_buf b[2] = {
        {.gpa = f->tx_hdr_gpa[seq], .len = NET_HDR_LEN},
        {.gpa = f->tx_frame_gpa[seq], .len = (uint32_t)frame_len(seq)},
    };

    memset(f->tx_hdr[seq], 0, NET_HDR_LEN);
    build_frame(f->tx_frame[seq], seq, false);
    assert_int_equal(vuf_virtq_add(f->vq[TXQ], b, 2, (void *)(uintptr_t)(seq + 1)), 0);
}

/* Send frames [first, first + n) and kick TX once. */
static void send_frames(struct fx *f, uint32_t first, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        add_tx(f, first + i);
    assert_true(vuf_virtq_kick(f->vq[TXQ], 0) >= 0);
}

/* Check one received buffer: the macswapped frame of some seq not seen
 * before, intact; repost the buffer. */
static void check_rx(struct fx *f, unsigned idx, uint32_t len)
{
    static uint8_t want[ETH_MAX];
    const uint8_t *p = f->rx_buf[idx], *fr = p + NET_HDR_LEN;
    uint32_t seq;
    static const uint8_t zero[10];

    assert_true(len >= NET_HDR_LEN + ETH_MIN);
    assert_true(len <= NET_HDR_LEN + ETH_MAX);
    /* No offloads: flags, gso_type, hdr_len, gso_size, csum_* all 0. */
    assert_memory_equal(p, zero, sizeof(zero));
    /* num_buffers: virtio 1.x says 1 without MRG_RXBUF; DPDK 22.11 leaves
     * it as it was (0xeeee here). Drivers ignore it then: only recorded. */
    memcpy(&f->num_buffers, p + 10, 2);
    assert_memory_equal(fr + 14, "VUFD", 4);
    memcpy(&seq, fr + 18, 4);
    if (seq >= NFRAMES || f->seen[seq])
        fail_msg("RX: unexpected or duplicate frame seq %u", seq);
    f->seen[seq] = true;
    assert_int_equal(len, NET_HDR_LEN + frame_len(seq));
    build_frame(want, seq, true);
    if (memcmp(fr, want, frame_len(seq)) != 0) {
        size_t i = 0;

        while (fr[i] == want[i])
            i++;
        fail_msg("RX frame %u differs at byte %zu: 0x%02x, want 0x%02x", seq, i, fr[i], want[i]);
    }
    f->received++;
    post_rx(f, idx);
}

/* Take every used RX buffer now pending. */
static void drain_rx(struct fx *f)
{
    void *cookie;
    uint32_t len;
    int r;

    while ((r = vuf_virtq_get_used(f->vq[RXQ], &cookie, &len)) == 0) {
        unsigned idx = (unsigned)(uintptr_t)cookie - 1;

        assert_true(idx < NRX);
        check_rx(f, idx, len);
    }
    assert_int_equal(r, -EAGAIN);
    /* Refill the ring for what was just posted. */
    assert_true(vuf_virtq_kick(f->vq[RXQ], 0) >= 0);
}

/* Wait (bounded) until `total` frames have come back on RX. */
static void wait_received(struct fx *f, unsigned total)
{
    int64_t end = tu_now_ms() + IO_MS;

    drain_rx(f);
    while (f->received < total && tu_now_ms() < end) {
        int r = vuf_virtq_wait(f->vq[RXQ], (int)(end - tu_now_ms()));

        assert_true(r == 0 || r == -ETIMEDOUT);
        drain_rx(f);
    }
    if (f->received != total) {
        tu_dump_log(&f->proc);
        fail_msg("received %u frames, want %u", f->received, total);
    }
}

/* Wait (bounded) until every TX chain is back, checking their cookies. */
static void wait_tx_done(struct fx *f)
{
    int64_t end = tu_now_ms() + IO_MS;

    while (vuf_virtq_num_inflight(f->vq[TXQ]) > 0 && tu_now_ms() < end) {
        void *cookie;
        int r;

        while ((r = vuf_virtq_get_used(f->vq[TXQ], &cookie, NULL)) == 0)
            assert_true((uintptr_t)cookie >= 1 && (uintptr_t)cookie <= NFRAMES);
        assert_int_equal(r, -EAGAIN);
        if (vuf_virtq_num_inflight(f->vq[TXQ]) > 0) {
            r = vuf_virtq_wait(f->vq[TXQ], (int)(end - tu_now_ms()));
            assert_true(r == 0 || r == -ETIMEDOUT);
        }
    }
    assert_int_equal(vuf_virtq_num_inflight(f->vq[TXQ]), 0);
}

static void wait_intx(struct fx *f, int old)
{
    int64_t end = tu_now_ms() + IO_MS;

    while (atomic_load(&f->vmm.intx) == old && tu_now_ms() < end)
        tu_sleep_ms(1);
    assert_true(atomic_load(&f->vmm.intx) > old);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * 64 frames out on TX come back macswapped on RX, each exactly once and
 * intact; sleep hands the queues back with DPDK's indices; frames sent
 * while asleep wait for wake; 64 more after wake; destroy leaks nothing;
 * testpmd survives the hang-up and exits 0 on SIGTERM, removing its socket.
 */
static void test_dpdk_macswap_sleep_wake(void **state)
{
    struct fx *f = *state;
    struct vuf_queue slept[NQ];
    uint16_t tx_used, rx_used;
    int intx0;
    char line[64];

    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();
    start_testpmd(f);

    new_device(f);
    /* A guest's virtio-net driver reads mac and status before it activates
     * the device. testpmd did not negotiate CONFIG and closes the socket on
     * a GET_CONFIG, so nothing is sent (issue 7 §1): the device builds the
     * config space from its config (§2c); the activation below shows the
     * connection intact. NET_SET_MTU reaches testpmd through the device
     * (§2d; SEND_RARP is not sent: testpmd would forward the RARP frame). */
    {
        uint8_t mac[6] = {1, 2, 3, 4, 5, 6}, status[2] = {7, 8}, big[300];

        assert_int_equal(vuf_device_read_config(f->dev, 0, mac, sizeof(mac)), 0);
        assert_memory_equal(mac, GUEST_MAC, 6);
        assert_int_equal(vuf_device_read_config(f->dev, 6, status, sizeof(status)), 0);
        assert_int_equal(status[0], VUF_NET_S_LINK_UP);
        assert_int_equal(status[1], 0);
        assert_int_equal(vuf_device_read_config(f->dev, 0, big, 12), 0);
        assert_int_equal(big[8] | big[9] << 8, DPDK_QUEUE_PAIRS); /* max_virtqueue_pairs */
        /* Past the 12-byte space: refused (issue 14), nothing sent. */
        assert_int_equal(vuf_device_read_config(f->dev, 0, big, sizeof(big)), -EINVAL);
        assert_int_equal(vuf_device_write_config(f->dev, 0, mac, sizeof(mac)), -ENOTSUP);
        assert_int_equal(vuf_frontend_net_set_mtu(f->dev, 1500), 0);
    }
    make_queues(f);
    for (unsigned i = 0; i < NRX; i++)
        post_rx(f, i);
    intx0 = atomic_load(&f->vmm.intx);
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1); /* the worker */
    assert_true(atomic_load(&f->vmm.irqfd_asks) > 0);      /* RX's vector */

    /* --- round 1 --------------------------------------------------------- */
    send_frames(f, 0, ROUND);
    wait_received(f, ROUND);
    wait_tx_done(f);
    /* TX has no vector: DPDK's call for it came through the worker. */
    wait_intx(f, intx0);
    assert_int_equal(atomic_load(&f->vmm.bad_vector), 0);
    print_message("round 1: %u frames back; RX num_buffers left as 0x%04x; INTx %d\n", f->received,
                  f->num_buffers, atomic_load(&f->vmm.intx));

    /* --- sleep: queues handed back with DPDK's indices ---------------------- */
    for (unsigned i = 0; i < NQ; i++)
        slept[i] = f->q[i];
    assert_int_equal(vuf_device_sleep(f->dev, slept, NQ), 1);
    assert_false(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0);
    tx_used = vuf_virtq_used_idx(f->vq[TXQ]);
    rx_used = vuf_virtq_used_idx(f->vq[RXQ]);
    print_message("after sleep: RX next_avail %u next_used %u (avail %u); TX next_avail %u "
                  "next_used %u\n",
                  slept[RXQ].next_avail, slept[RXQ].next_used, vuf_virtq_avail_idx(f->vq[RXQ]),
                  slept[TXQ].next_avail, slept[TXQ].next_used);
    /* TX: everything consumed. RX: DPDK took one buffer per frame, the rest
     * of the posted ones are still available. */
    assert_int_equal(slept[TXQ].next_avail, vuf_virtq_avail_idx(f->vq[TXQ]));
    assert_int_equal(slept[TXQ].next_used, tx_used);
    assert_int_equal(tx_used, ROUND);
    assert_int_equal(slept[RXQ].next_avail, ROUND);
    assert_int_equal(slept[RXQ].next_used, rx_used);
    assert_int_equal(rx_used, ROUND);
    assert_int_equal(vuf_device_sleep(f->dev, slept, NQ), 0); /* a no-op now */

    /* Frames sent while asleep are not touched... */
    send_frames(f, ROUND, ROUND / 2);
    assert_int_equal(vuf_virtq_notify(f->vq[TXQ]), 0);
    tu_sleep_ms(200);
    assert_int_equal(vuf_virtq_used_idx(f->vq[TXQ]), tx_used);
    assert_int_equal(vuf_virtq_used_idx(f->vq[RXQ]), rx_used);

    /* --- wake: ...and come back after it; then the rest of round 2 --------- */
    assert_int_equal(vuf_device_wake(f->dev, f->gm, &f->intr, slept, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1);
    wait_received(f, ROUND + ROUND / 2);
    send_frames(f, ROUND + ROUND / 2, ROUND - ROUND / 2);
    wait_received(f, NFRAMES);
    wait_tx_done(f);
    for (unsigned i = 0; i < NFRAMES; i++)
        assert_true(f->seen[i]);
    assert_false(vuf_virtq_broken(f->vq[RXQ]));
    assert_false(vuf_virtq_broken(f->vq[TXQ]));
    /* Nothing else arrives. */
    tu_sleep_ms(50);
    assert_false(vuf_virtq_has_used(f->vq[RXQ]));
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);
    assert_int_equal(atomic_load(&f->vmm.bad_vector), 0);

    /* --- destroy while active: no fd, no thread left ----------------------- */
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    for (unsigned i = 0; i < NQ; i++) {
        vuf_virtq_free(f->vq[i]);
        f->vq[i] = NULL;
        tu_vmm_forget_queue(&f->vmm, i);
    }
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
    /* testpmd is persistent: it saw our hang-up and still runs. */
    tu_sleep_ms(100);
    assert_int_equal(waitpid(f->proc.pid, NULL, WNOHANG), 0);
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);

    /* --- testpmd stops cleanly, having forwarded exactly our frames -------- */
    tu_stop_clean(&f->proc, f->sock);
    snprintf(line, sizeof(line), "RX-packets: %u ", NFRAMES);
    if (!tu_log_has(f->log, line)) {
        tu_dump_log(&f->proc);
        fail_msg("testpmd's statistics lack '%s'", line);
    }
    snprintf(line, sizeof(line), "TX-packets: %u ", NFRAMES);
    assert_true(tu_log_has(f->log, line));
    assert_false(tu_log_has(f->log, "GET_CONFIG"));
    assert_int_equal(tu_count_fds(), f->fds0);
}

/* ---- vuf probe ----------------------------------------------------------- */

static json_object *jget(json_object *o, const char *key)
{
    json_object *v = NULL;

    if (!json_object_object_get_ex(o, key, &v))
        fail_msg("JSON key '%s' missing", key);
    return v; /* NULL for a JSON null */
}

static uint64_t jget_u64(json_object *o, const char *key)
{
    json_object *v = jget(o, key);

    if (!v || !json_object_is_type(v, json_type_int))
        fail_msg("JSON key '%s' is not an integer", key);
    return json_object_get_uint64(v);
}

static bool jarray_has(json_object *o, const char *key, const char *name)
{
    json_object *a = jget(o, key);

    assert_non_null(a);
    assert_true(json_object_is_type(a, json_type_array));
    for (size_t i = 0; i < json_object_array_length(a); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(a, i)), name) == 0)
            return true;
    return false;
}

/* `vuf probe --json --device-type net` against testpmd: what DPDK 22.11's
 * vhost PMD advertises. */
static void test_dpdk_probe(void **state)
{
    struct fx *f = *state;
    const char *tool = getenv("VUF_TOOL");
    struct tu_run *r;
    json_object *j;

    if (!tool || !tu_have_exe(tool)) {
        fprintf(stderr, "MISSING: VUF_TOOL does not name the vuf binary (run via meson test)\n");
        fail();
    }
    start_testpmd(f);
    r = malloc(sizeof(*r));
    assert_non_null(r);
    {
        const char *args[] = {"probe", "--json", "--device-type", "net", f->sock, NULL};

        tu_run_capture(r, tool, args, RUN_DEADLINE_MS);
    }
    printf("%s", r->out);
    assert_int_equal(tu_exit_code(r), 0);
    j = json_tokener_parse(r->out);
    free(r);
    assert_non_null(j);

    assert_string_equal(json_object_get_string(jget(j, "device_type")), "net");
    assert_int_equal(jget_u64(j, "features"), DPDK_FEATURES);
    assert_true(jarray_has(j, "feature_names", "MRG_RXBUF"));
    assert_true(jarray_has(j, "feature_names", "CTRL_VQ"));
    assert_true(jarray_has(j, "feature_names", "MQ"));
    assert_true(jarray_has(j, "feature_names", "VERSION_1"));
    assert_true(jarray_has(j, "feature_names", "PROTOCOL_FEATURES"));
    assert_true(jarray_has(j, "feature_names", "RING_PACKED"));
    assert_false(jarray_has(j, "feature_names", "MAC"));
    assert_false(jarray_has(j, "feature_names", "STATUS"));
    /* MQ LOG_SHMFD RARP REPLY_ACK NET_MTU BACKEND_REQ CRYPTO_SESSION
     * BACKEND_SEND_FD HOST_NOTIFIER STATUS; no CONFIG, no
     * CONFIGURE_MEM_SLOTS. */
    assert_int_equal(jget_u64(j, "offered_protocol_features"), DPDK_PROTOCOL_OFFERED);
    /* What the device negotiates (new_device() asserts the same set). */
    assert_int_equal(jget_u64(j, "protocol_features"),
                     VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ) |
                         VUF_PROTO_MASK(RARP) | VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(STATUS));
    assert_int_equal(jget_u64(j, "device_protocol_features"), jget_u64(j, "protocol_features"));
    assert_true(jarray_has(j, "offered_protocol_feature_names", "STATUS"));
    /* Queue PAIRS: the compile-time maximum, not the queues=1 setting. */
    assert_int_equal(jget_u64(j, "queues"), DPDK_QUEUE_PAIRS);
    assert_null(jget(j, "max_mem_slots"));
    assert_null(jget(j, "config"));
    json_object_put(j);

    /* testpmd served the probe and still runs; then exits cleanly. */
    assert_int_equal(waitpid(f->proc.pid, NULL, WNOHANG), 0);
    tu_stop_clean(&f->proc, f->sock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dpdk_probe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dpdk_macswap_sleep_wake, setup, teardown),
    };

    /* SIGPIPE must not kill us when a dead back-end's socket is written. */
    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    if (!tu_testpmd_path())
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
