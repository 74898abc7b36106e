/* SPDX-License-Identifier: MIT */
/*
 * The virtio-net driver (vuf/virtio_net.h) and the queue set
 * (vuf/virtq_set.h) through dpdk-testpmd's vhost PMD in macswap mode:
 * every frame sent on TX k comes back on RX k with the MACs swapped. Shared
 * by test_net_dpdk.c (split rings) and test_packed_dpdk.c (packed rings).
 *
 * The guest acks VERSION_1, EVENT_IDX, MQ and MRG_RXBUF (and RING_PACKED
 * for packed rings) and posts RX buffers of NH_RX_BUF bytes, so large
 * frames span several. Frames are 60..1514 bytes carrying their pair and
 * sequence number; every byte that comes back is checked.
 */
#ifndef VUF_TEST_NET_HARNESS_H
#define VUF_TEST_NET_HARNESS_H

#include <stdbool.h>
#include <stdint.h>

#include "backends.h"
#include "fe_harness.h"
#include "testutil.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/virtio_net.h"
#include "vuf/virtq.h"
#include "vuf/virtq_set.h"

#define NH_MAX_PAIRS 2u
#define NH_MAX_NQ (2 * NH_MAX_PAIRS)
#define NH_QSIZE 256u
#define NH_RX_BUF 512u
#define NH_FRAMES 10000u /* per pair, at most */
#define NH_WINDOW 64u    /* frames of a pair in flight, at most */
#define NH_IO_MS 10000

/* cmocka set-up: tu_befx_setup() in the temp dir "vuf-<name>-dpdk"; the
 * teardown is tu_befx_teardown(). */
int nh_setup(void **state, const char *name);
/* tu_start_testpmd() with `pairs` queue pairs on f->sock. */
void nh_start_testpmd(struct tu_befx *f, unsigned pairs);

/* /proc/self/fd as text, "fd -> target" per line (caller frees). */
char *nh_fd_list(void);

struct nh_guest {
    unsigned pairs, nq;
    bool packed;
    uint64_t features; /* acked */
    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NH_MAX_NQ];
    struct vuf_queue q[NH_MAX_NQ];
    struct vuf_net *net[NH_MAX_PAIRS];
    struct vuf_virtq_set *set;
    bool zero_copy; /* see struct nh_checks */
    bool no_aio;    /* the device's and the queues' no_aio option */
    uint32_t sent[NH_MAX_PAIRS], back[NH_MAX_PAIRS];
    uint32_t probes_sent[NH_MAX_PAIRS], probes_back[NH_MAX_PAIRS]; /* nh_wait_link */
    uint8_t seen[NH_MAX_PAIRS][NH_FRAMES];
};

/*
 * Connect to `sock`, negotiate, build `pairs` pairs of split or packed
 * rings of NH_QSIZE, fill every RX ring, activate the device and wait for
 * the link (nh_wait_link). *g must be zeroed. Every step is asserted.
 */
void nh_guest_up(struct nh_guest *g, const char *sock, unsigned pairs, bool packed);
void nh_guest_down(struct nh_guest *g);

/*
 * Wait until the back-end forwards on every pair: send a probe frame (its
 * own ethertype) every 50 ms until one comes back, failing after NH_IO_MS.
 * An activated device is not yet a forwarding one: testpmd takes the
 * guest's TX frames before it forwards and drops them (it empties its RX
 * queues when forwarding starts; on a loaded machine its socket is up
 * seconds before that), and the frames of a test never come back. Probes
 * that come back later are counted in probes_back and skipped.
 */
void nh_wait_link(struct nh_guest *g);

/* Send frames of pair p up to number `upto` (window permitting); true if
 * any went out. */
bool nh_send_some(struct nh_guest *g, unsigned p, uint32_t upto);

/* Traffic on every pair until each sent and got back `upto` frames
 * (<= NH_FRAMES); fails after NH_IO_MS without progress. */
void nh_run_until(struct nh_guest *g, uint32_t upto);

/* What a sleep/wake run checks beyond nh_sleep_wake()'s own checks. */
struct nh_checks {
    /* After the frames before sleep came back, before the sleep (may be
     * NULL). */
    void (*before_sleep)(struct nh_guest *g);
    /* Per pair: the RX and TX queue state vuf_device_sleep() returned. */
    void (*asleep)(struct nh_guest *g, unsigned p, const struct vuf_queue *rx,
                   const struct vuf_queue *tx);
    /* Per pair, after every frame came back (may be NULL). */
    void (*done)(struct nh_guest *g, unsigned p, const struct vuf_net_stats *st);
    /* Send and receive with the zero-copy calls (vuf_net_tx_slots/commit,
     * vuf_net_rx_burst_zc) instead of the copying ones. */
    bool zero_copy;
    /* Right after testpmd is up, before anything of the guest (may be
     * NULL): e.g. enter a sandbox that testpmd must not inherit. */
    void (*started)(struct tu_befx *f);
    /* Make the device and the queues with their no_aio option set. */
    bool no_aio;
};

/*
 * The sleep/wake scenario on a fresh testpmd with `pairs` pairs of split or
 * packed rings: `frames` frames per pair (<= NH_FRAMES) with every byte
 * checked, the device put to sleep after `before_sleep`; `while_asleep`
 * more (< NH_WINDOW) are sent while it sleeps and must stay untouched, then
 * the device wakes with the state sleep gave back and the rest flows. Each
 * pair's stats count `frames` frames, some merged (MRG_RXBUF), none broken;
 * no crash event; threads and /proc/self/fd the same before the device and
 * after it is gone; testpmd still runs and stops cleanly.
 */
void nh_sleep_wake(struct tu_befx *f, unsigned pairs, bool packed, uint32_t frames,
                   uint32_t before_sleep, uint32_t while_asleep, const struct nh_checks *c);

#endif
