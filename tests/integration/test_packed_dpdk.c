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
 * testpmd and the guest are those of test_net_dpdk.c (net_harness.h),
 * with packed rings. dpdk-testpmd missing is a
 * failure: scripts/setup.sh installs it.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"
#include "net_harness.h"
#include "testutil.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_net.h"
#include "vuf/virtq.h"

#define PAIRS 2u
#define QSIZE NH_QSIZE
#define FRAMES 10000u      /* per pair */
#define BEFORE_SLEEP 5000u /* per pair, then sleep */
#define WHILE_ASLEEP 48u   /* per pair, sent while asleep (< NH_WINDOW) */

static int setup(void **state)
{
    return nh_setup(state, "packed");
}

/* Laps so far: the RX rings took > QSIZE buffers, so their avail wrap
 * counter has flipped at least once. */
static void packed_before_sleep(struct nh_guest *g)
{
    for (unsigned p = 0; p < PAIRS; p++)
        assert_true(g->back[p] > QSIZE);
}

/* Positions and wrap counters came back, consistent with the rings (DPDK
 * returns the avail half; used = avail: everything it took was used). */
static void packed_asleep(struct nh_guest *g, unsigned p, const struct vuf_queue *rxs,
                          const struct vuf_queue *txs)
{
    unsigned rx = vuf_net_rx_index(p), tx = vuf_net_tx_index(p);

    print_message("pair %u asleep: tx avail 0x%04x used 0x%04x, rx avail 0x%04x "
                  "(driver posted up to 0x%04x)\n",
                  p, txs->next_avail, txs->next_used, rxs->next_avail,
                  vuf_virtq_avail_idx(g->vq[rx]));
    assert_true(txs->packed && rxs->packed);
    /* TX: DPDK took and used every frame sent. */
    assert_int_equal(txs->next_avail, vuf_virtq_avail_idx(g->vq[tx]));
    assert_int_equal(txs->next_used, txs->next_avail);
    assert_int_equal(vuf_virtq_used_idx(g->vq[tx]), txs->next_avail);
    /* RX: every buffer DPDK took came back; the rest are still posted. */
    assert_int_equal(rxs->next_used, rxs->next_avail);
    assert_int_equal(vuf_virtq_used_idx(g->vq[rx]), rxs->next_avail);
    assert_int_equal(vuf_virtq_last_used(g->vq[rx]), rxs->next_avail);
}

/* Many laps of both rings: > 3 * QSIZE descriptors each way. */
static void packed_done(struct nh_guest *g, unsigned p, const struct vuf_net_stats *st)
{
    (void)g;
    (void)p;
    assert_true(st->rx_merged + FRAMES > 3 * QSIZE);
}

/* 10,000 frames per pair with every byte checked, sleep/wake in the middle,
 * /proc/self/fd unchanged. */
static void test_packed_net_two_pairs_sleep_wake(void **state)
{
    static const struct nh_checks checks = {
        .before_sleep = packed_before_sleep, .asleep = packed_asleep, .done = packed_done};

    nh_sleep_wake(*state, PAIRS, true, FRAMES, BEFORE_SLEEP, WHILE_ASLEEP, &checks);
}

/* The same through the zero-copy calls (vuf_net_tx_slots/commit,
 * vuf_net_rx_burst_zc) on packed rings. */
static void test_packed_net_zero_copy(void **state)
{
    static const struct nh_checks checks = {.before_sleep = packed_before_sleep,
                                            .asleep = packed_asleep,
                                            .done = packed_done,
                                            .zero_copy = true};

    nh_sleep_wake(*state, PAIRS, true, FRAMES, BEFORE_SLEEP, WHILE_ASLEEP, &checks);
}

/* ------------------------------------------------------------------------ */
/* The tool: vuf net --ring packed                                          */
/* ------------------------------------------------------------------------ */

static struct tu_run *run_tool(const char *const *args)
{
    return tu_run_vuf(args, 60000);
}

static void test_packed_cli_net(void **state)
{
    struct tu_befx *f = *state;
    struct tu_run *r;

    nh_start_testpmd(f, PAIRS);
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
        cmocka_unit_test_setup_teardown(test_packed_net_zero_copy, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_packed_net_two_pairs_sleep_wake, setup,
                                        tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_packed_cli_net, setup, tu_befx_teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_WARN);
    if (!tu_testpmd_path())
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
