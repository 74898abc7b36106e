/* SPDX-License-Identifier: MIT */
/*
 * The shortest complete VMM side of a vhost-user-net device with libvuf,
 * with a user-space virtio-net driver standing in for the guest: two queue
 * pairs, FRAMES frames per pair sent to a back-end that swaps MAC addresses
 * and sends them back (dpdk-testpmd's vhost PMD in macswap mode), every
 * byte of every frame checked; the device is put to sleep half-way (sleep
 * hands the rings' positions back to the VMM: its queue state) and woken
 * from that state. Built against the installed library:
 *     cc net_vmm.c $(pkg-config --cflags --libs vuf)
 * Usage: net_vmm SOCKET [FRAMES]          (default 10000 per pair)
 * Exit 0 when every frame came back intact and no fd was left behind.
 * docs/minimal-vmm.md walks through it.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vuf/vuf.h>

#define PAIRS 2
#define NQ (2 * PAIRS)
#define QSIZE 256
#define BURST 32
#define LEN 128 /* frame bytes */

static int fail(const char *what, int r)
{
    fprintf(stderr, "net_vmm: %s: %s\n", what, vuf_strerror(r));
    return 1;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    while (d && readdir(d))
        n++;
    if (d)
        closedir(d);
    return n;
}

/* Frame `seq` of pair p: destination, source, then (p, seq) and a pattern.
 * macswap exchanges the two MAC addresses. */
static void make_frame(uint8_t *f, unsigned p, uint32_t seq, int swapped)
{
    static const uint8_t a[6] = {2, 0, 0, 0, 0, 1}, b[6] = {2, 0, 0, 0, 0, 2};

    memcpy(f, swapped ? b : a, 6);
    memcpy(f + 6, swapped ? a : b, 6);
    f[12] = 0x88, f[13] = 0xb5; /* local experimental EtherType */
    f[14] = (uint8_t)p;
    memcpy(f + 15, &seq, 4);
    for (unsigned i = 19; i < LEN; i++)
        f[i] = (uint8_t)(seq * 7 + i + p);
}

/* Send and receive on every pair until `upto` frames per pair are back. */
static int traffic(struct vuf_net **net, struct vuf_virtq_set *set, uint32_t *sent, uint32_t *back,
                   uint32_t upto)
{
    uint8_t buf[BURST][LEN + 64], want[LEN];
    struct vuf_net_frame fr[BURST];
    struct vuf_virtq *ready[NQ];

    for (;;) {
        int done = 1, moved = 0;

        for (unsigned p = 0; p < PAIRS; p++) {
            unsigned n = 0;
            int r;

            vuf_net_tx_reclaim(net[p]);
            while (n < BURST && sent[p] + n < upto && sent[p] + n - back[p] < QSIZE / 2) {
                make_frame(buf[n], p, sent[p] + n, 0);
                fr[n] = (struct vuf_net_frame){.data = buf[n], .len = LEN};
                n++;
            }
            r = n ? vuf_net_tx_burst(net[p], fr, n, 0) : 0;
            if (r < 0)
                return fail("tx", r);
            sent[p] += (uint32_t)r;
            for (unsigned i = 0; i < BURST; i++)
                fr[i] = (struct vuf_net_frame){.data = buf[i], .len = sizeof(buf[i])};
            r = vuf_net_rx_burst(net[p], fr, BURST);
            if (r < 0)
                return fail("rx", r);
            for (int i = 0; i < r; i++) {
                make_frame(want, p, back[p], 1); /* in order, per pair */
                if (fr[i].len != LEN || memcmp(buf[i], want, LEN) != 0) {
                    fprintf(stderr, "net_vmm: pair %u frame %u came back wrong\n", p, back[p]);
                    return 1;
                }
                back[p]++;
            }
            moved |= n > 0 || r > 0;
            done &= back[p] == upto;
        }
        if (done)
            return 0;
        if (!moved && vuf_virtq_set_wait(set, 5000, ready, NQ) == -ETIMEDOUT)
            return fail("no frames back within 5 s", -ETIMEDOUT);
    }
}

int main(int argc, char **argv)
{
    struct vuf_frontend_config cfg = {.device_type = VUF_DEV_NET, .net_ctrl_vq = true};
    uint64_t want = VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_NET_F_MQ);
    uint32_t frames = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 0) : 10000;
    uint32_t sent[PAIRS] = {0}, back[PAIRS] = {0};
    struct vuf_virtq *vq[NQ];
    struct vuf_net *net[PAIRS];
    struct vuf_queue q[NQ];
    struct vuf_virtq_irq irq = {.vqs = vq, .n = NQ};
    struct vuf_interrupt intr = vuf_virtq_irq_sink(&irq);
    struct vuf_virtq_set *set;
    struct vuf_guest_mem *mem;
    struct vuf_device *dev;
    struct vuf_conn *conn;
    int fds0 = count_fds(), r;

    if (argc < 2)
        return fprintf(stderr, "usage: net_vmm SOCKET [FRAMES]\n"), 2;

    /* Connect and negotiate. DPDK serves one pair unless MQ is acked, and
     * MQ belongs to the control-queue bits a device strips by default:
     * net_ctrl_vq offers them; the driver acks MQ alone (no control queue
     * is used). */
    r = vuf_conn_connect(argv[1], 5000, &conn);
    if (r < 0)
        return fail("connect", r);
    r = vuf_frontend_new(&cfg, conn, &dev);
    if (r < 0)
        return fail("vuf_frontend_new", r);
    if ((vuf_device_features(dev) & want) != want)
        return fail("the back-end offers no MQ", -ENOTSUP);
    r = vuf_device_ack_features(dev, want);
    if (r < 0)
        return fail("ack_features", r);

    /* Guest memory, two rx/tx pairs with a net driver each, RX posted. */
    if ((r = vuf_guest_mem_new_simple(0, 8 << 20, &mem)) < 0 || (r = vuf_virtq_set_new(&set)) < 0)
        return fail("guest memory", r);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = want};

        if ((r = vuf_virtq_new_opts(mem, &o, &vq[i])) < 0 ||
            (r = vuf_virtq_set_add(set, vq[i])) < 0)
            return fail("virtqueue", r);
        vuf_queue_from_virtq(&q[i], vq[i], (uint16_t)i);
    }
    for (unsigned p = 0; p < PAIRS; p++) {
        struct vuf_net_opts o = {.features = want};

        if ((r = vuf_net_new(vq[vuf_net_rx_index(p)], vq[vuf_net_tx_index(p)], &o, &net[p])) < 0 ||
            (r = vuf_net_rx_fill(net[p])) < 0)
            return fail("net driver", r);
    }
    r = vuf_device_activate(dev, mem, &intr, q, NQ);
    if (r < 0)
        return fail("activate", r);

    /* Half the frames, sleep (q[] receives the rings' positions), wake from
     * that state, the other half. */
    if ((r = traffic(net, set, sent, back, frames / 2)) != 0)
        return r;
    if ((r = vuf_device_sleep(dev, q, NQ)) < 0)
        return fail("sleep", r);
    if ((r = vuf_device_wake(dev, mem, &intr, q, NQ)) < 0)
        return fail("wake", r);
    if ((r = traffic(net, set, sent, back, frames)) != 0)
        return r;

    /* Tear down: device first, then the driver's side. */
    r = vuf_device_reset(dev);
    vuf_device_destroy(dev);
    vuf_virtq_set_free(set);
    for (unsigned p = 0; p < PAIRS; p++)
        vuf_net_free(net[p]);
    for (unsigned i = 0; i < NQ; i++)
        vuf_virtq_free(vq[i]);
    vuf_guest_mem_free(mem);
    if (r < 0)
        return fail("reset", r);
    if (count_fds() != fds0)
        return fprintf(stderr, "net_vmm: %d fds before, %d after\n", fds0, count_fds()), 1;
    printf("net_vmm: %u frames per pair on %d pairs came back intact across a sleep/wake; "
           "no fd left\n",
           frames, PAIRS);
    return 0;
}
