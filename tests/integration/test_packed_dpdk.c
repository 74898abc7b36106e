/* SPDX-License-Identifier: MIT */
/*
 * Packed virtqueues (virtio 1.2 §2.8) end to end through a real back-end
 * that supports them: DPDK 22.11's vhost PMD in dpdk-testpmd, 2 queue
 * pairs, macswap forwarding. The front-end offers VIRTIO_F_RING_PACKED
 * because DPDK does, the driver acks it, and every queue is a packed
 * vuf_virtq. 10,000 frames per pair (60..1514 bytes, MRG_RXBUF with
 * 512-byte RX buffers, every byte checked) through many laps of the
 * 256-entry rings' wrap counters, with a sleep/wake in the middle: the
 * positions and wrap counters GET_VRING_BASE returns (DPDK fills the avail
 * half, position | wrap << 15) match the driver's rings, frames sent while
 * asleep stay untouched and flow after wake, where SET_VRING_BASE carried
 * them back.
 *
 * testpmd is started as in test_net_dpdk.c. dpdk-testpmd missing is a
 * failure: scripts/setup.sh installs it.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
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
#include "vuf/virtio_net.h"
#include "vuf/virtq.h"
#include "vuf/virtq_set.h"

#define PAIRS 2u
#define NQ (2 * PAIRS)
#define QSIZE 256u
#define RX_BUF 512u
#define FRAMES 10000u      /* per pair */
#define BEFORE_SLEEP 5000u /* per pair, then sleep */
#define WHILE_ASLEEP 48u   /* per pair, sent while asleep (< WINDOW) */
#define WINDOW 64u
#define BURST 32u
#define ETH_MIN 60u
#define ETH_MAX 1514u
#define ETH_TYPE 0x88b5
#define IO_MS 10000

static char testpmd[1024];
static const uint8_t mac_a[6] = {0x02, 0x76, 0x75, 0x66, 0x01, 0x0a};
static const uint8_t mac_b[6] = {0x02, 0x76, 0x75, 0x66, 0x01, 0x0b};

struct fx {
    char *dir;
    char sock[300], log[300], prefix[64];
    struct tu_proc proc;
};

static int setup(void **state)
{
    static unsigned instance;
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    f->dir = tu_mkdtemp("vuf-packed-dpdk");
    if (!f->dir) {
        free(f);
        return -1;
    }
    snprintf(f->sock, sizeof(f->sock), "%s/vh.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/testpmd.log", f->dir);
    snprintf(f->prefix, sizeof(f->prefix), "vufpacked-%d-%u", (int)getpid(), instance++);
    *state = f;
    return 0;
}

static void remove_runtime_dir(const struct fx *f)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    char path[512];

    if (getuid() == 0)
        snprintf(path, sizeof(path), "/var/run/dpdk/%s", f->prefix);
    else
        snprintf(path, sizeof(path), "%s/dpdk/%s", xdg && *xdg ? xdg : "/tmp", f->prefix);
    rmdir(path);
}

static int teardown(void **state)
{
    struct fx *f = *state;

    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    remove_runtime_dir(f);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

/* testpmd, 2 queue pairs on f->sock, macswap on lcore 1. */
static void start_testpmd(struct fx *f)
{
    char vdev[400];
    char *argv[] = {testpmd,
                    "-l",
                    "0,1",
                    "--no-huge",
                    "-m",
                    "1024",
                    "--no-pci",
                    "--no-shconf",
                    "--file-prefix",
                    f->prefix,
                    "--vdev",
                    vdev,
                    "--",
                    "--total-num-mbufs=16384",
                    "--stats-period=3600",
                    "--forward-mode=macswap",
                    "--nb-cores=1",
                    "--rxq=2",
                    "--txq=2",
                    "-a",
                    NULL};
    int r;

    snprintf(vdev, sizeof(vdev), "net_vhost0,iface=%s,queues=%u", f->sock, PAIRS);
    assert_int_equal(tu_spawn(&f->proc, argv, f->log), 0);
    r = tu_wait_socket_file(&f->proc, f->sock, TU_START_MS);
    if (r) {
        tu_dump_log(&f->proc);
        fail_msg("dpdk-testpmd did not create %s: %s", f->sock, strerror(-r));
    }
}

/* ------------------------------------------------------------------------ */
/* /proc/self/fd as text: "fd -> target" per line                          */
/* ------------------------------------------------------------------------ */

static char *fd_list(void)
{
    size_t cap = 1 << 16, n = 0;
    char *out = calloc(1, cap);
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int dfd;

    assert_non_null(out);
    assert_non_null(d);
    dfd = dirfd(d);
    /* readdir order is the kernel's fd order. */
    while ((e = readdir(d)) != NULL) {
        char path[300], target[256];
        ssize_t len;

        if (e->d_name[0] == '.' || atoi(e->d_name) == dfd)
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        target[len < 0 ? 0 : len] = 0;
        n += (size_t)snprintf(out + n, cap - n, "%s -> %s\n", e->d_name, target);
        assert_true(n < cap);
    }
    closedir(d);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Frames                                                                   */
/* ------------------------------------------------------------------------ */

static uint32_t frame_len(uint32_t seq)
{
    static const uint16_t lens[8] = {ETH_MIN, ETH_MAX, 64, 128, 333, 777, 1024, 1500};

    return lens[seq % 8] - (seq % 8 > 1 ? (seq / 8) % 4 : 0);
}

static void build_frame(uint8_t *p, uint16_t pair, uint32_t seq, bool back)
{
    uint32_t len = frame_len(seq);

    memcpy(p, back ? mac_a : mac_b, 6);
    memcpy(p + 6, back ? mac_b : mac_a, 6);
    p[12] = ETH_TYPE >> 8;
    p[13] = ETH_TYPE & 0xff;
    memcpy(p + 14, &pair, 2);
    memcpy(p + 16, &seq, 4);
    for (uint32_t i = 20; i < len; i++)
        p[i] = (uint8_t)(i * 29u + seq * 11u + pair * 97u + (i >> 7));
}

/* ------------------------------------------------------------------------ */
/* The guest: two pairs through the driver                                   */
/* ------------------------------------------------------------------------ */

struct guest {
    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_queue q[NQ];
    struct vuf_net *net[PAIRS];
    struct vuf_virtq_set *set;
    uint32_t sent[PAIRS], back[PAIRS];
    uint8_t seen[PAIRS][FRAMES];
};

static void guest_up(struct guest *g, const char *sock)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t want = VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_VIRTIO_F_EVENT_IDX) |
                    VUF_BIT(VUF_VIRTIO_F_RING_PACKED) | VUF_BIT(VUF_NET_F_MQ) |
                    VUF_BIT(VUF_NET_F_MRG_RXBUF);
    uint8_t mac[6];

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_NET;
    cfg.base_features_mask = VUF_BIT(VUF_VIRTIO_F_EVENT_IDX) | VUF_BIT(VUF_VIRTIO_F_RING_PACKED);
    /* MQ is one of the control-queue bits a net device strips by default;
     * DPDK serves a single pair unless it is acked, so this VMM offers
     * them and acks MQ alone (DPDK has no control queue to serve). */
    cfg.net_ctrl_vq = true;
    memcpy(cfg.net_mac, "\x52\x54\x00\x12\x34\x56", 6);
    cfg.max_queue_size = QSIZE;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &g->vmm;
    tu_vmm_init(&g->vmm);
    assert_int_equal(vuf_conn_connect(sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &g->dev), 0);
    assert_true(vuf_device_num_queues(g->dev) >= NQ);
    assert_int_equal(vuf_device_features(g->dev) & want, want);
    /* No CONFIG from DPDK: the device builds the config space from ours. */
    assert_int_equal(vuf_device_read_config(g->dev, VUF_NET_CFG_MAC, mac, 6), 0);
    assert_memory_equal(mac, "\x52\x54\x00\x12\x34\x56", 6);
    assert_int_equal(vuf_device_ack_features(g->dev, want), 0);
    assert_int_equal(vuf_frontend_acked_features(g->dev) & ~VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES),
                     want);

    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 16u << 20, &g->gm), 0);
    assert_int_equal(vuf_virtq_set_new(&g->set), 0);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = want};

        assert_int_equal(vuf_virtq_new_opts(g->gm, &o, &g->vq[i]), 0);
        assert_true(vuf_virtq_packed(g->vq[i]));
        assert_int_equal(vuf_virtq_avail_idx(g->vq[i]), VUF_VRING_PACKED_BASE_INIT);
        tu_vmm_add_queue(&g->vmm, i, &g->q[i], g->vq[i], (uint16_t)i);
        assert_true(g->q[i].packed);
        assert_int_equal(vuf_virtq_set_add(g->set, g->vq[i]), 0);
    }
    for (unsigned p = 0; p < PAIRS; p++) {
        struct vuf_net_opts o = {.features = want, .rx_buf_len = RX_BUF};

        assert_int_equal(
            vuf_net_new(g->vq[vuf_net_rx_index(p)], g->vq[vuf_net_tx_index(p)], &o, &g->net[p]), 0);
        assert_int_equal(vuf_net_get_hdr_len(g->net[p]), 12);
        /* Posted before activation: the device starts at next_avail 0
         * (tu_vmm_add_queue took the positions before) and finds them. */
        assert_int_equal(vuf_net_rx_fill(g->net[p]), QSIZE);
    }
    g->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &g->vmm};
    assert_int_equal(vuf_device_activate(g->dev, g->gm, &g->intr, g->q, NQ), 0);
}

static void guest_down(struct guest *g)
{
    vuf_device_destroy(g->dev);
    vuf_virtq_set_free(g->set);
    for (unsigned p = 0; p < PAIRS; p++)
        vuf_net_free(g->net[p]);
    for (unsigned i = 0; i < NQ; i++) {
        vuf_virtq_free(g->vq[i]);
        tu_vmm_forget_queue(&g->vmm, i);
    }
    vuf_guest_mem_free(g->gm);
}

/* Send frames of pair p up to `upto` (window permitting). */
static bool send_some(struct guest *g, unsigned p, uint32_t upto)
{
    static uint8_t buf[BURST][ETH_MAX];
    struct vuf_net_frame f[BURST];
    unsigned n = 0;
    int r;

    while (n < BURST && g->sent[p] + n < upto && g->sent[p] + n - g->back[p] < WINDOW) {
        build_frame(buf[n], (uint16_t)p, g->sent[p] + n, false);
        f[n] = (struct vuf_net_frame){.data = buf[n], .len = frame_len(g->sent[p] + n)};
        n++;
    }
    if (!n)
        return false;
    r = vuf_net_tx_burst(g->net[p], f, n, 0);
    assert_true(r >= 0);
    g->sent[p] += (uint32_t)r;
    return r > 0;
}

/* Take what came back on pair p, checking every byte. */
static bool recv_some(struct guest *g, unsigned p)
{
    static uint8_t buf[BURST][ETH_MAX + 4], want[ETH_MAX];
    struct vuf_net_frame f[BURST];
    int r;

    for (unsigned i = 0; i < BURST; i++)
        f[i] = (struct vuf_net_frame){.data = buf[i], .len = sizeof(buf[i])};
    r = vuf_net_rx_burst(g->net[p], f, BURST);
    assert_true(r >= 0);
    for (int i = 0; i < r; i++) {
        const uint8_t *fr = buf[i];
        uint16_t pair;
        uint32_t seq;

        assert_true(f[i].len >= 20);
        memcpy(&pair, fr + 14, 2);
        memcpy(&seq, fr + 16, 4);
        if (pair != p || seq >= FRAMES || g->seen[p][seq])
            fail_msg("pair %u: frame %u of pair %u came back (wrong pair, unknown or twice)", p,
                     seq, pair);
        assert_int_equal(f[i].len, frame_len(seq));
        build_frame(want, (uint16_t)p, seq, true);
        for (uint32_t b = 0; b < f[i].len; b++)
            if (fr[b] != want[b])
                fail_msg("pair %u frame %u differs at byte %u: 0x%02x, want 0x%02x", p, seq, b,
                         fr[b], want[b]);
        g->seen[p][seq] = 1;
        g->back[p]++;
    }
    return r > 0;
}

/* Traffic on both pairs until every pair sent and got back `upto`. */
static void run_until(struct guest *g, uint32_t upto)
{
    int64_t last = tu_now_ms();

    for (;;) {
        bool progress = false, done = true;
        struct vuf_virtq *ready[NQ];
        int r;

        for (unsigned p = 0; p < PAIRS; p++) {
            vuf_net_tx_reclaim(g->net[p]);
            progress |= send_some(g, p, upto);
            progress |= recv_some(g, p);
            done &= g->back[p] == upto;
        }
        if (done)
            return;
        if (progress) {
            last = tu_now_ms();
            continue;
        }
        if (tu_now_ms() - last > IO_MS)
            fail_msg("no progress for %d ms: pair 0 %u/%u back, pair 1 %u/%u back", IO_MS,
                     g->back[0], g->sent[0], g->back[1], g->sent[1]);
        r = vuf_virtq_set_wait(g->set, 100, ready, NQ);
        assert_true(r > 0 || r == -ETIMEDOUT);
    }
}

/*
 * 10,000 frames per pair with every byte checked, sleep/wake in the middle,
 * /proc/self/fd unchanged.
 */
static void test_packed_net_two_pairs_sleep_wake(void **state)
{
    struct fx *f = *state;
    struct guest *g = calloc(1, sizeof(*g));
    struct vuf_queue slept[NQ];
    uint16_t used[NQ];
    char *fds0, *fds1;
    int threads0;

    assert_non_null(g);
    start_testpmd(f);
    threads0 = tu_count_threads();
    fds0 = fd_list();
    guest_up(g, f->sock);

    run_until(g, BEFORE_SLEEP);

    /* Laps so far: the RX rings took > QSIZE buffers, so their avail wrap
     * counter has flipped at least once. */
    for (unsigned p = 0; p < PAIRS; p++)
        assert_true(g->back[p] > QSIZE);

    /* Sleep: positions and wrap counters come back, consistent with the
     * rings (DPDK returns the avail half; used = avail: everything it took
     * was used). */
    memcpy(slept, g->q, sizeof(slept));
    assert_int_equal(vuf_device_sleep(g->dev, slept, NQ), 1);
    assert_false(vuf_frontend_is_active(g->dev));
    for (unsigned p = 0; p < PAIRS; p++) {
        unsigned rx = vuf_net_rx_index(p), tx = vuf_net_tx_index(p);

        print_message("pair %u asleep: tx avail 0x%04x used 0x%04x, rx avail 0x%04x "
                      "(driver posted up to 0x%04x)\n",
                      p, slept[tx].next_avail, slept[tx].next_used, slept[rx].next_avail,
                      vuf_virtq_avail_idx(g->vq[rx]));
        assert_true(slept[tx].packed && slept[rx].packed);
        /* TX: DPDK took and used every frame sent. */
        assert_int_equal(slept[tx].next_avail, vuf_virtq_avail_idx(g->vq[tx]));
        assert_int_equal(slept[tx].next_used, slept[tx].next_avail);
        assert_int_equal(vuf_virtq_used_idx(g->vq[tx]), slept[tx].next_avail);
        /* RX: every buffer DPDK took came back; the rest are still posted. */
        assert_int_equal(slept[rx].next_used, slept[rx].next_avail);
        assert_int_equal(vuf_virtq_used_idx(g->vq[rx]), slept[rx].next_avail);
        assert_int_equal(vuf_virtq_last_used(g->vq[rx]), slept[rx].next_avail);
    }
    for (unsigned i = 0; i < NQ; i++)
        used[i] = vuf_virtq_used_idx(g->vq[i]);

    /* Frames sent while asleep are not touched. */
    for (unsigned p = 0; p < PAIRS; p++)
        while (g->sent[p] < BEFORE_SLEEP + WHILE_ASLEEP)
            assert_true(send_some(g, p, BEFORE_SLEEP + WHILE_ASLEEP));
    tu_sleep_ms(100);
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(vuf_virtq_used_idx(g->vq[i]), used[i]);

    /* Wake with the state sleep gave back: the rest flows. */
    assert_int_equal(vuf_device_wake(g->dev, g->gm, &g->intr, slept, NQ), 0);
    assert_true(vuf_frontend_is_active(g->dev));
    run_until(g, FRAMES);
    for (unsigned p = 0; p < PAIRS; p++) {
        struct vuf_net_stats st;

        vuf_net_stats(g->net[p], &st);
        print_message("pair %u: %u frames back, %llu merged (several RX buffers)\n", p, g->back[p],
                      (unsigned long long)st.rx_merged);
        assert_int_equal(st.rx_frames, FRAMES);
        assert_true(st.rx_merged > 0);
        /* Many laps of both rings: > 3 * QSIZE descriptors each way. */
        assert_true(st.rx_merged + FRAMES > 3 * QSIZE);
        assert_false(vuf_net_broken(g->net[p]));
    }
    assert_int_equal(atomic_load(&g->vmm.crashed), 0);

    guest_down(g);
    free(g);
    assert_int_equal(tu_threads_settle(threads0), threads0);
    fds1 = fd_list();
    assert_string_equal(fds1, fds0);
    free(fds0);
    free(fds1);
    assert_int_equal(waitpid(f->proc.pid, NULL, WNOHANG), 0); /* testpmd still runs */
    tu_stop_clean(&f->proc, f->sock);
}

/* ------------------------------------------------------------------------ */
/* The tool: vuf net --ring packed                                          */
/* ------------------------------------------------------------------------ */

static struct tu_run *run_tool(const char *const *args)
{
    const char *t = getenv("VUF_TOOL");
    struct tu_run *r = malloc(sizeof(*r));

    if (!t || !tu_have_exe(t))
        fail_msg("VUF_TOOL does not name the vuf binary (run via meson test)");
    assert_non_null(r);
    tu_run_capture(r, t, args, 60000);
    printf("%s", r->out);
    return r;
}

static void test_packed_cli_net(void **state)
{
    struct fx *f = *state;
    struct tu_run *r;

    start_testpmd(f);
    {
        /* (Not with --queue-size 64: with MRG_RXBUF, DPDK then drops frames
         * on split rings too.) */
        const char *args[] = {"net",  f->sock,  "ping",   "--queue-pairs", "2", "--count",
                              "2000", "--ring", "packed", "--mrg-rxbuf",   NULL};
        r = run_tool(args);
    }
    assert_int_equal(tu_exit_code(r), 0);
    assert_non_null(strstr(r->out, "pair 0: 2000 frames sent, 2000 back, every byte checked\n"));
    assert_non_null(strstr(r->out, "pair 1: 2000 frames sent, 2000 back, every byte checked\n"));
    free(r);
    /* The bench JSON says which layout it ran on. */
    for (int packed = 0; packed < 2; packed++) {
        const char *args[] = {"net",       f->sock, "bench",  "--mode", "rt",
                              "--seconds", "0.3",   "--json", "--ring", packed ? "packed" : "split",
                              NULL};

        r = run_tool(args);
        assert_int_equal(tu_exit_code(r), 0);
        assert_non_null(strstr(r->out, packed ? "\"ring\":\"packed\"" : "\"ring\":\"split\""));
        free(r);
    }
    {
        const char *args[] = {"net", f->sock, "ping", "--ring", "twisted", NULL};

        r = run_tool(args);
        assert_int_equal(tu_exit_code(r), 2);
        free(r);
    }
    tu_stop_clean(&f->proc, f->sock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_packed_net_two_pairs_sleep_wake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_packed_cli_net, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_WARN);
    if (!tu_which("dpdk-testpmd")) {
        fprintf(stderr, "MISSING: dpdk-testpmd is not installed (scripts/setup.sh installs it: "
                        "apt-get install dpdk-dev)\n");
        return 1;
    }
    snprintf(testpmd, sizeof(testpmd), "%s", tu_which("dpdk-testpmd"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
