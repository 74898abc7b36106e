/* SPDX-License-Identifier: MIT */
/*
 * The virtio-net driver (vuf/virtio_net.h) and the queue set
 * (vuf/virtq_set.h) through a real vhost-user-net back-end: DPDK 22.11's
 * vhost PMD in dpdk-testpmd, 2 queue pairs, forwarding in macswap mode
 * (every frame sent on TX k comes back on RX k with the MACs swapped).
 *
 * Library level: 10,000 frames per queue pair (lengths 60..1514, RX
 * buffers of 512 bytes with MRG_RXBUF so large frames span several), every
 * byte checked, with a sleep/wake of the device in the middle (frames sent
 * while asleep stay untouched and come back after wake) and /proc/self/fd
 * the same before the device and after it is gone.
 *
 * The same with the zero-copy calls (frames built in the TX slots, read
 * where the device wrote them).
 *
 * Both wait for the link before their frames go (a testpmd held before
 * forwarding drops what comes earlier: nh_wait_link).
 *
 * The tool: `vuf net SOCKET ping` on 2 pairs, `vuf net SOCKET bench --json`
 * in tx and rt modes (structure and pps > 0 asserted, never speed), and
 * its usage errors.
 *
 * testpmd (tu_start_testpmd) and the guest (net_harness.h) are shared
 * with test_packed_dpdk.c; here with 2 pairs of split rings.
 * DPDK drops every pair but the first unless the driver acks MQ, so MQ is
 * acked (without CTRL_VQ: no control queue is used). dpdk-testpmd missing
 * is a failure: scripts/setup.sh installs it.
 */
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

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
#define RUN_DEADLINE_MS 60000

static int setup(void **state)
{
    return nh_setup(state, "net");
}

/* The state sleep returned is consistent with the split rings. */
static void split_asleep(struct nh_guest *g, unsigned p, const struct vuf_queue *rxs,
                         const struct vuf_queue *txs)
{
    unsigned rx = vuf_net_rx_index(p), tx = vuf_net_tx_index(p);

    assert_int_equal(txs->next_avail, vuf_virtq_avail_idx(g->vq[tx]));
    assert_int_equal(txs->next_used, vuf_virtq_used_idx(g->vq[tx]));
    assert_int_equal(rxs->next_used, vuf_virtq_used_idx(g->vq[rx]));
    assert_int_equal(rxs->next_used, vuf_virtq_last_used(g->vq[rx]));
    /* Every RX buffer DPDK took was returned (a frame may take several
     * with MRG_RXBUF); the rest are still posted. */
    assert_int_equal(rxs->next_avail, rxs->next_used);
    assert_true((uint16_t)(vuf_virtq_avail_idx(g->vq[rx]) - rxs->next_avail) <= QSIZE);
}

/* 10,000 frames per pair with every byte checked, sleep/wake in the middle,
 * /proc/self/fd unchanged. */
static void test_net_two_pairs_sleep_wake(void **state)
{
    static const struct nh_checks checks = {.asleep = split_asleep};

    nh_sleep_wake(*state, PAIRS, false, FRAMES, BEFORE_SLEEP, WHILE_ASLEEP, &checks);
}

/* The same through the zero-copy calls: frames built in the TX slots,
 * received frames checked where the device wrote them. */
static void test_net_zero_copy_sleep_wake(void **state)
{
    static const struct nh_checks checks = {.asleep = split_asleep, .zero_copy = true};

    nh_sleep_wake(*state, PAIRS, false, FRAMES, BEFORE_SLEEP, WHILE_ASLEEP, &checks);
}

/* A testpmd that forwards only from a second after the device is up (a
 * held one, started by "start"), as a testpmd still starting on a loaded
 * machine does: the frames sent before then are dropped by it, so the
 * guest waits for the link (probes) before the test frames go, and every
 * one of them comes back. */
static void test_net_link_wait(void **state)
{
    struct tu_befx *f = *state;
    struct nh_guest *g = calloc(1, sizeof(*g));
    struct tu_later start;
    int cmd;

    assert_non_null(g);
    cmd = tu_start_testpmd_held(&f->proc, f->prefix, PAIRS, f->sock, f->log);
    tu_later_start(&start, cmd, 1000, "start\n");
    nh_guest_up(g, f->sock, PAIRS, false);
    assert_int_equal(tu_later_join(&start), 6);
    nh_run_until(g, 500);
    for (unsigned p = 0; p < PAIRS; p++) {
        struct vuf_net_stats st;

        vuf_net_stats(g->net[p], &st);
        assert_true(g->probes_back[p] >= 1);
        assert_int_equal(g->back[p], 500);
        assert_int_equal(st.rx_frames, 500 + g->probes_back[p]);
    }
    nh_guest_down(g);
    free(g);
    tu_stop_clean(&f->proc, f->sock);
    close(cmd);
}

/* ------------------------------------------------------------------------ */
/* The tool                                                                 */
/* ------------------------------------------------------------------------ */

static struct tu_run *run(const char *const *args)
{
    return tu_run_vuf(args, RUN_DEADLINE_MS);
}

static void test_cli_net_ping(void **state)
{
    struct tu_befx *f = *state;
    struct tu_run *r;

    nh_start_testpmd(f, PAIRS);
    {
        const char *args[] = {"net",  f->sock,       "ping", "--queue-pairs", "2", "--count",
                              "2000", "--mrg-rxbuf", NULL};
        r = run(args);
    }
    assert_int_equal(tu_exit_code(r), 0);
    assert_non_null(strstr(r->out, "pair 0: 2000 frames sent, 2000 back, every byte checked\n"));
    assert_non_null(strstr(r->out, "pair 1: 2000 frames sent, 2000 back, every byte checked\n"));
    free(r);
    tu_stop_clean(&f->proc, f->sock);
}

/* `vuf net ping` waits for the link too: testpmd forwards only from 1.5 s
 * after it started. */
static void test_cli_net_ping_link_wait(void **state)
{
    struct tu_befx *f = *state;
    struct tu_later start;
    struct tu_run *r;
    int cmd = tu_start_testpmd_held(&f->proc, f->prefix, PAIRS, f->sock, f->log);

    tu_later_start(&start, cmd, 1500, "start\n");
    {
        const char *args[] = {"net", f->sock, "ping", "--queue-pairs", "2", "--count", "300", NULL};
        r = run(args);
    }
    assert_int_equal(tu_later_join(&start), 6);
    assert_int_equal(tu_exit_code(r), 0);
    assert_non_null(strstr(r->out, "pair 0: 300 frames sent, 300 back, every byte checked\n"));
    assert_non_null(strstr(r->out, "pair 1: 300 frames sent, 300 back, every byte checked\n"));
    free(r);
    tu_stop_clean(&f->proc, f->sock);
    close(cmd);
}

static json_object *jget(json_object *o, const char *key, json_type type)
{
    json_object *v = NULL;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type))
        fail_msg("JSON key '%s' missing or of the wrong type", key);
    return v;
}

static void bench_json(struct tu_befx *f, const char *mode, const char *size, bool busy, bool zc)
{
    const char *args[] = {"net",
                          f->sock,
                          "bench",
                          "--mode",
                          mode,
                          "--size",
                          size,
                          "--seconds",
                          "1",
                          "--json",
                          zc ? "--zero-copy" : "--json",
                          busy ? "--busy-poll" : NULL,
                          NULL};
    struct tu_run *r = run(args);
    json_object *j;
    double pps, bps;

    assert_int_equal(tu_exit_code(r), 0);
    j = json_tokener_parse(r->out);
    free(r);
    assert_non_null(j);
    assert_string_equal(json_object_get_string(jget(j, "mode", json_type_string)), mode);
    assert_int_equal(json_object_get_int64(jget(j, "size", json_type_int)), atoi(size));
    assert_int_equal(json_object_get_int64(jget(j, "queue_pairs", json_type_int)), 1);
    assert_int_equal(json_object_get_boolean(jget(j, "busy_poll", json_type_boolean)), busy);
    assert_int_equal(json_object_get_boolean(jget(j, "zero_copy", json_type_boolean)), zc);
    assert_true(json_object_get_int64(jget(j, "frames", json_type_int)) > 0);
    pps = json_object_get_double(jget(j, "pps", json_type_double));
    bps = json_object_get_double(jget(j, "bps", json_type_double));
    assert_true(pps > 0);
    /* bps is pps * size * 8 (frame bytes). */
    assert_true(bps > pps * atoi(size) * 8 * 0.999 && bps < pps * atoi(size) * 8 * 1.001);
    json_object_put(j);
}

static void test_cli_net_bench_json(void **state)
{
    struct tu_befx *f = *state;

    nh_start_testpmd(f, PAIRS);
    bench_json(f, "tx", "64", false, false);
    bench_json(f, "rt", "1500", true, false);
    bench_json(f, "rt", "64", false, false);
    bench_json(f, "rt", "64", true, true);
    bench_json(f, "tx", "1500", false, true);
    tu_stop_clean(&f->proc, f->sock);
}

static void test_cli_net_usage(void **state)
{
    static const char *const cases[][6] = {
        {"net", NULL},
        {"net", "/nonexistent.sock", NULL},
        {"net", "/nonexistent.sock", "fly", NULL},
        {"net", "/nonexistent.sock", "bench", "--mode", "sideways", NULL},
        {"net", "/nonexistent.sock", "bench", "--size", "59", NULL},
        {"net", "/nonexistent.sock", "ping", "--queue-pairs", "0", NULL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tu_run *r = run(cases[i]);

        assert_int_equal(tu_exit_code(r), 2);
        free(r);
    }
    {
        const char *args[] = {"net", "/nonexistent.sock", "ping", "--timeout-ms", "200", NULL};
        struct tu_run *r = run(args);

        assert_int_equal(tu_exit_code(r), 1);
        free(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_net_two_pairs_sleep_wake, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_net_zero_copy_sleep_wake, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_net_link_wait, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_net_ping, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_net_ping_link_wait, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_cli_net_bench_json, setup, tu_befx_teardown),
        cmocka_unit_test(test_cli_net_usage),
    };

    signal(SIGPIPE, SIG_IGN);
    tu_warm_threads();
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_WARN);
    if (!tu_testpmd_path())
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
