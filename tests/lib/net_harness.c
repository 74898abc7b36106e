/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "net_harness.h"
#include "vuf/conn.h"
#include "vuf/virtio.h"

#define BURST 32u
#define ETH_MIN 60u
#define ETH_MAX 1514u
#define ETH_TYPE 0x88b5
/* Link probes (nh_wait_link) carry their own ethertype: a late one is
 * counted, never taken for a test frame. */
#define PROBE_TYPE 0x88b6
#define PROBE_EVERY_MS 50

static const uint8_t mac_a[6] = {0x02, 0x76, 0x75, 0x66, 0x01, 0x0a};
static const uint8_t mac_b[6] = {0x02, 0x76, 0x75, 0x66, 0x01, 0x0b};

int nh_setup(void **state, const char *name)
{
    char tag[64];

    snprintf(tag, sizeof(tag), "vuf-%s-dpdk", name);
    return tu_befx_setup(state, tag);
}

void nh_start_testpmd(struct tu_befx *f, unsigned pairs)
{
    tu_start_testpmd(&f->proc, f->prefix, pairs, f->sock, f->log);
}

char *nh_fd_list(void)
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
/* The guest                                                                */
/* ------------------------------------------------------------------------ */

void nh_guest_up(struct nh_guest *g, const char *sock, unsigned pairs, bool packed)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t ring = packed ? VUF_BIT(VUF_VIRTIO_F_RING_PACKED) : 0;
    uint64_t want = VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_VIRTIO_F_EVENT_IDX) | ring |
                    VUF_BIT(VUF_NET_F_MQ) | VUF_BIT(VUF_NET_F_MRG_RXBUF);
    uint8_t mac[6];

    assert_true(pairs >= 1 && pairs <= NH_MAX_PAIRS);
    g->pairs = pairs;
    g->nq = 2 * pairs;
    g->packed = packed;
    g->features = want;
    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_NET;
    cfg.base_features_mask = VUF_BIT(VUF_VIRTIO_F_EVENT_IDX) | ring;
    /* MQ is one of the control-queue bits a net device strips by default;
     * DPDK serves a single pair unless it is acked, so this VMM offers
     * them and acks MQ alone (DPDK has no control queue to serve). */
    cfg.net_ctrl_vq = true;
    memcpy(cfg.net_mac, "\x52\x54\x00\x12\x34\x56", 6);
    cfg.max_queue_size = NH_QSIZE;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &g->vmm;
    cfg.no_aio = g->no_aio;
    tu_vmm_init(&g->vmm);
    assert_int_equal(vuf_conn_connect(sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, NH_IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &g->dev), 0);
    assert_true(vuf_device_num_queues(g->dev) >= g->nq);
    assert_int_equal(vuf_device_features(g->dev) & want, want);
    /* No CONFIG from DPDK: the device builds the config space from ours. */
    assert_int_equal(vuf_device_read_config(g->dev, VUF_NET_CFG_MAC, mac, 6), 0);
    assert_memory_equal(mac, "\x52\x54\x00\x12\x34\x56", 6);
    assert_int_equal(vuf_device_ack_features(g->dev, want), 0);
    assert_int_equal(vuf_frontend_acked_features(g->dev) & ~VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES),
                     want);

    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 16u << 20, &g->gm), 0);
    assert_int_equal(vuf_virtq_set_new(&g->set), 0);
    for (unsigned i = 0; i < g->nq; i++) {
        struct vuf_virtq_opts o = {
            .size = NH_QSIZE, .index = i, .features = want, .no_aio = g->no_aio};

        assert_int_equal(vuf_virtq_new_opts(g->gm, &o, &g->vq[i]), 0);
        assert_int_equal(vuf_virtq_packed(g->vq[i]), packed);
        if (packed)
            assert_int_equal(vuf_virtq_avail_idx(g->vq[i]), VUF_VRING_PACKED_BASE_INIT);
        tu_vmm_add_queue(&g->vmm, i, &g->q[i], g->vq[i], (uint16_t)i);
        assert_int_equal(g->q[i].packed, packed);
        assert_int_equal(vuf_virtq_set_add(g->set, g->vq[i]), 0);
    }
    for (unsigned p = 0; p < pairs; p++) {
        struct vuf_net_opts o = {.features = want, .rx_buf_len = NH_RX_BUF};

        assert_int_equal(
            vuf_net_new(g->vq[vuf_net_rx_index(p)], g->vq[vuf_net_tx_index(p)], &o, &g->net[p]), 0);
        assert_int_equal(vuf_net_get_hdr_len(g->net[p]), 12);
        /* Posted before activation: the device starts at next_avail 0
         * (tu_vmm_add_queue took the positions before) and finds them. */
        assert_int_equal(vuf_net_rx_fill(g->net[p]), NH_QSIZE);
    }
    g->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &g->vmm};
    assert_int_equal(vuf_device_activate(g->dev, g->gm, &g->intr, g->q, g->nq), 0);
    nh_wait_link(g);
}

void nh_guest_down(struct nh_guest *g)
{
    vuf_device_destroy(g->dev);
    vuf_virtq_set_free(g->set);
    for (unsigned p = 0; p < g->pairs; p++)
        vuf_net_free(g->net[p]);
    for (unsigned i = 0; i < g->nq; i++) {
        vuf_virtq_free(g->vq[i]);
        tu_vmm_forget_queue(&g->vmm, i);
    }
    vuf_guest_mem_free(g->gm);
}

/* Zero-copy: each frame built in the slot it leaves from. */
static int send_zc(struct nh_guest *g, unsigned p, unsigned n)
{
    void *slot[BURST];
    uint32_t len[BURST];
    int k = vuf_net_tx_slots(g->net[p], slot, n);

    assert_true(k >= 0);
    for (int i = 0; i < k; i++) {
        build_frame(slot[i], (uint16_t)p, g->sent[p] + (uint32_t)i, false);
        len[i] = frame_len(g->sent[p] + (uint32_t)i);
    }
    return k ? vuf_net_tx_commit(g->net[p], len, (unsigned)k, 0) : 0;
}

bool nh_send_some(struct nh_guest *g, unsigned p, uint32_t upto)
{
    static uint8_t buf[BURST][ETH_MAX];
    struct vuf_net_frame f[BURST];
    unsigned n = 0;
    int r;

    assert_true(upto <= NH_FRAMES);
    while (n < BURST && g->sent[p] + n < upto && g->sent[p] + n - g->back[p] < NH_WINDOW)
        n++;
    if (!n)
        return false;
    if (g->zero_copy) {
        r = send_zc(g, p, n);
    } else {
        for (unsigned i = 0; i < n; i++) {
            build_frame(buf[i], (uint16_t)p, g->sent[p] + i, false);
            f[i] = (struct vuf_net_frame){.data = buf[i], .len = frame_len(g->sent[p] + i)};
        }
        r = vuf_net_tx_burst(g->net[p], f, n, 0);
    }
    assert_true(r >= 0);
    g->sent[p] += (uint32_t)r;
    return r > 0;
}

/* One frame back on pair p: every byte as sent, MACs swapped. */
static void check_back(struct nh_guest *g, unsigned p, const uint8_t *fr, uint32_t len)
{
    static uint8_t want[ETH_MAX];
    uint16_t pair;
    uint32_t seq;

    if (len >= 14 && fr[12] == PROBE_TYPE >> 8 && fr[13] == (PROBE_TYPE & 0xff)) {
        g->probes_back[p]++;
        return;
    }
    assert_true(len >= 20);
    memcpy(&pair, fr + 14, 2);
    memcpy(&seq, fr + 16, 4);
    if (pair != p || seq >= NH_FRAMES || g->seen[p][seq])
        fail_msg("pair %u: frame %u of pair %u came back (wrong pair, unknown or twice)", p, seq,
                 pair);
    assert_int_equal(len, frame_len(seq));
    build_frame(want, (uint16_t)p, seq, true);
    for (uint32_t b = 0; b < len; b++)
        if (fr[b] != want[b])
            fail_msg("pair %u frame %u differs at byte %u: 0x%02x, want 0x%02x", p, seq, b, fr[b],
                     want[b]);
    g->seen[p][seq] = 1;
    g->back[p]++;
}

struct zc_ctx {
    struct nh_guest *g;
    unsigned p;
};

/* Zero-copy receive: the pieces gathered (copied once, as the test must
 * not check memory the back-end could still write), then checked. */
static void recv_zc(void *opaque, const struct iovec *iov, unsigned niov, uint32_t len)
{
    static uint8_t fr[ETH_MAX + 4];
    struct zc_ctx *z = opaque;
    uint32_t at = 0;

    assert_true(len <= sizeof(fr));
    for (unsigned i = 0; i < niov; i++) {
        assert_true(at + iov[i].iov_len <= len);
        memcpy(fr + at, iov[i].iov_base, iov[i].iov_len);
        at += (uint32_t)iov[i].iov_len;
    }
    assert_int_equal(at, len);
    check_back(z->g, z->p, fr, len);
}

/* Take what came back on pair p, checking every byte. */
static bool recv_some(struct nh_guest *g, unsigned p)
{
    static uint8_t buf[BURST][ETH_MAX + 4];
    struct vuf_net_frame f[BURST];
    int r;

    if (g->zero_copy) {
        struct zc_ctx z = {g, p};

        r = vuf_net_rx_burst_zc(g->net[p], recv_zc, &z, BURST);
        assert_true(r >= 0);
        return r > 0;
    }
    for (unsigned i = 0; i < BURST; i++)
        f[i] = (struct vuf_net_frame){.data = buf[i], .len = sizeof(buf[i])};
    r = vuf_net_rx_burst(g->net[p], f, BURST);
    assert_true(r >= 0);
    for (int i = 0; i < r; i++)
        check_back(g, p, buf[i], f[i].len);
    return r > 0;
}

void nh_wait_link(struct nh_guest *g)
{
    static uint8_t probe[ETH_MIN];
    int64_t start = tu_now_ms(), sent_at = 0;

    memcpy(probe, mac_b, 6);
    memcpy(probe + 6, mac_a, 6);
    probe[12] = PROBE_TYPE >> 8;
    probe[13] = PROBE_TYPE & 0xff;
    for (unsigned p = 0; p < g->pairs; p++) {
        while (g->probes_back[p] == 0) {
            if (tu_now_ms() - start > NH_IO_MS)
                fail_msg("pair %u: none of %u probe frames came back in %d ms: the back-end "
                         "does not forward",
                         p, g->probes_sent[p], NH_IO_MS);
            if (tu_now_ms() - sent_at >= PROBE_EVERY_MS) {
                struct vuf_net_frame f = {.data = probe, .len = sizeof(probe)};
                int r;

                assert_true(vuf_net_tx_reclaim(g->net[p]) >= 0);
                r = vuf_net_tx_burst(g->net[p], &f, 1, 0);
                assert_true(r >= 0);
                g->probes_sent[p] += (uint32_t)r;
                sent_at = tu_now_ms();
            }
            if (!recv_some(g, p)) {
                struct vuf_virtq *ready[NH_MAX_NQ];
                int r = vuf_virtq_set_wait(g->set, 10, ready, g->nq);

                assert_true(r > 0 || r == -ETIMEDOUT);
            }
        }
    }
    if (g->probes_sent[0] > 1)
        print_message("link up after %lld ms (%u probe frames sent on pair 0)\n",
                      (long long)(tu_now_ms() - start), g->probes_sent[0]);
}

void nh_run_until(struct nh_guest *g, uint32_t upto)
{
    int64_t last = tu_now_ms();

    for (;;) {
        bool progress = false, done = true;
        struct vuf_virtq *ready[NH_MAX_NQ];
        int r;

        for (unsigned p = 0; p < g->pairs; p++) {
            /* A device that broke the TX queue fails here, by name. */
            assert_true(vuf_net_tx_reclaim(g->net[p]) >= 0);
            progress |= nh_send_some(g, p, upto);
            progress |= recv_some(g, p);
            done &= g->back[p] == upto;
        }
        if (done)
            return;
        if (progress) {
            last = tu_now_ms();
            continue;
        }
        if (tu_now_ms() - last > NH_IO_MS) {
            for (unsigned p = 0; p < g->pairs; p++)
                print_message("pair %u: %u/%u back\n", p, g->back[p], g->sent[p]);
            /* Where each ring stands: did the back-end take TX, fill RX? */
            for (unsigned i = 0; i < g->nq; i++)
                print_message("queue %u: avail %u, used %u (as the driver last saw it)\n", i,
                              vuf_virtq_avail_idx(g->vq[i]), vuf_virtq_used_idx(g->vq[i]));
            fail_msg("no progress for %d ms", NH_IO_MS);
        }
        r = vuf_virtq_set_wait(g->set, 100, ready, g->nq);
        assert_true(r > 0 || r == -ETIMEDOUT);
    }
}

void nh_sleep_wake(struct tu_befx *f, unsigned pairs, bool packed, uint32_t frames,
                   uint32_t before_sleep, uint32_t while_asleep, const struct nh_checks *c)
{
    struct nh_guest *g = calloc(1, sizeof(*g));
    struct vuf_queue slept[NH_MAX_NQ];
    uint16_t used[NH_MAX_NQ];
    char *fds0, *fds1;
    int threads0;

    assert_non_null(g);
    assert_true(frames <= NH_FRAMES && before_sleep + while_asleep <= frames);
    assert_true(while_asleep < NH_WINDOW);
    nh_start_testpmd(f, pairs);
    if (c->started)
        c->started(f);
    threads0 = tu_count_threads();
    fds0 = nh_fd_list();
    g->zero_copy = c->zero_copy;
    g->no_aio = c->no_aio;
    nh_guest_up(g, f->sock, pairs, packed);

    nh_run_until(g, before_sleep);
    if (c->before_sleep)
        c->before_sleep(g);

    /* Sleep: the queue state comes back, consistent with the rings. */
    memcpy(slept, g->q, sizeof(slept));
    assert_int_equal(vuf_device_sleep(g->dev, slept, g->nq), 1);
    assert_false(vuf_frontend_is_active(g->dev));
    for (unsigned p = 0; p < pairs; p++)
        c->asleep(g, p, &slept[vuf_net_rx_index(p)], &slept[vuf_net_tx_index(p)]);
    for (unsigned i = 0; i < g->nq; i++)
        used[i] = vuf_virtq_used_idx(g->vq[i]);

    /* Frames sent while asleep are not touched. */
    for (unsigned p = 0; p < pairs; p++)
        while (g->sent[p] < before_sleep + while_asleep)
            assert_true(nh_send_some(g, p, before_sleep + while_asleep));
    tu_sleep_ms(100);
    for (unsigned i = 0; i < g->nq; i++)
        assert_int_equal(vuf_virtq_used_idx(g->vq[i]), used[i]);

    /* Wake with the state sleep gave back: the rest flows. */
    assert_int_equal(vuf_device_wake(g->dev, g->gm, &g->intr, slept, g->nq), 0);
    assert_true(vuf_frontend_is_active(g->dev));
    nh_run_until(g, frames);
    for (unsigned p = 0; p < pairs; p++) {
        struct vuf_net_stats st;

        vuf_net_stats(g->net[p], &st);
        print_message("pair %u: %u frames back, %llu merged (several RX buffers)\n", p, g->back[p],
                      (unsigned long long)st.rx_merged);
        assert_int_equal(st.rx_frames, frames + g->probes_back[p]);
        assert_true(st.rx_merged > 0);
        if (c->done)
            c->done(g, p, &st);
        assert_false(vuf_net_broken(g->net[p]));
    }
    assert_int_equal(atomic_load(&g->vmm.crashed), 0);

    nh_guest_down(g);
    free(g);
    assert_int_equal(tu_threads_settle(threads0), threads0);
    fds1 = nh_fd_list();
    assert_string_equal(fds1, fds0);
    free(fds0);
    free(fds1);
    assert_int_equal(waitpid(f->proc.pid, NULL, WNOHANG), 0); /* testpmd still runs */
    tu_stop_clean(&f->proc, f->sock);
}
