/* SPDX-License-Identifier: MIT */
/*
 * `vuf relay` against a VMM that lies (issue 14, section 1), played by hand
 * (tests/lib/relay_vmm.h) in front of the relay, with the reference
 * back-end behind it:
 *
 * - ring messages the back-end would refuse are refused at the message,
 *   with the back-end's errno: sizes that are not a power of two in
 *   1..32768, a split base above 16 bits, an index past the queues, an
 *   enable that is neither 0 nor 1, ring areas that start inside the
 *   memory but run past its end, and a size or base change on a started
 *   ring; then a real ring on the same connection still does I/O;
 * - the VMM shrinks its guest memfd to 0 while the rings run: GET_VRING_BASE
 *   is answered (the back-end's base) instead of the relay dying of SIGBUS
 *   on used->idx, and the relay exits 0 when the VMM leaves;
 * - the same shrink, then the back-end is killed: the restart path reads
 *   used->idx too; the relay gives up after --reconnect-ms with status 1,
 *   not SIGBUS.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "relay_vmm.h"
#include "vuf/wire.h"

#define MEM_BYTES (256u << 10)
#define WLEN 4096u

static void assert_no_sanitizer(const struct rv_env *e)
{
    if (tu_log_has(e->relay_log, "Sanitizer") || tu_log_has(e->relay_log, "runtime error")) {
        tu_dump_log(&e->relay);
        fail_msg("sanitizer report in the relay's log");
    }
}

/* One write through the relay, checked on the disk file. */
static void write_once(struct rv_env *e, struct rv_vmm *v, uint64_t sector, uint32_t seed)
{
    uint8_t want[WLEN];
    int r = rv_wait(v, rv_submit_write(v, sector, WLEN, seed), RV_IO_MS);

    if (r != 0) {
        tu_dump_log(&e->relay);
        fail_msg("write through the relay: %s", vuf_strerror(r));
    }
    tu_fill_pattern(want, WLEN, seed);
    tu_assert_file_has(e->disk_fd, sector, want, WLEN);
}

static void test_relay_refuses_bad_rings(void **state)
{
    static const uint32_t bad_num[] = {0, 3, 40000, 65536, 0xffffffffu, 48, 32769};
    static const uint32_t bad_base[] = {0x12345, 0x10000, 0xffffffffu};
    struct rv_env e;
    struct rv_vmm v;
    uint64_t end, fd0;
    uint32_t idx = 9, num = 9;
    int kfd;

    (void)state;
    rv_env_init(&e, "vuf-relay-hostile", NULL);
    rv_start_relay(&e, NULL);
    rv_connect(&v, &e, MEM_BYTES);
    end = rv_uva(&v, MEM_BYTES);

    for (unsigned i = 0; i < sizeof(bad_num) / sizeof(bad_num[0]); i++)
        if (rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, bad_num[i]) != -EINVAL)
            fail_msg("SET_VRING_NUM %u not refused with -EINVAL", bad_num[i]);
    for (unsigned i = 0; i < sizeof(bad_base) / sizeof(bad_base[0]); i++)
        if (rv_state(&v, VUF_REQ_SET_VRING_BASE, 0, bad_base[i]) != -EINVAL)
            fail_msg("SET_VRING_BASE 0x%x not refused with -EINVAL", bad_base[i]);
    /* The protocol's sizes are taken (the back-end's own limit shows when
     * the rings start on it). */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 1), 0);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 2048), 0);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 32768), 0);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_BASE, 0, 0xffff), 0);
    /* Rings the relay does not have (1 queue). */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 1, 16), -EINVAL);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0xffffffffu, 16), -EINVAL);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_BASE, 1, 0), -EINVAL);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_ENABLE, 1, 1), -EINVAL);
    assert_int_equal(rv_addr(&v, 1, rv_uva(&v, 0), rv_uva(&v, 0x1000), rv_uva(&v, 0x2000)),
                     -EINVAL);
    fd0 = 1; /* ring 1 */
    kfd = dup(0);
    assert_true(kfd >= 0);
    assert_int_equal(rv_ask(&v, VUF_REQ_SET_VRING_KICK, &fd0, 8, &kfd, 1), -EINVAL);
    assert_int_equal(rv_ask(&v, VUF_REQ_SET_VRING_CALL, &fd0, 8, &kfd, 1), -EINVAL);
    assert_int_equal(rv_ask(&v, VUF_REQ_SET_VRING_ERR, &fd0, 8, &kfd, 1), -EINVAL);
    close(kfd);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_ENABLE, 0, 2), -EINVAL);

    /* 256 entries: desc 4096, avail 518, used 2054 bytes. Each area starts
     * inside the region and runs past its end by a little. */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 256), 0);
    assert_int_equal(rv_addr(&v, 0, end - 4096 + 16, rv_uva(&v, 0x1000), rv_uva(&v, 0x2000)),
                     -EFAULT);
    assert_int_equal(rv_addr(&v, 0, rv_uva(&v, 0), end - 516, rv_uva(&v, 0x2000)), -EFAULT);
    assert_int_equal(rv_addr(&v, 0, rv_uva(&v, 0), rv_uva(&v, 0x1000), end - 2052), -EFAULT);
    assert_int_equal(rv_addr(&v, 0, end, rv_uva(&v, 0x1000), rv_uva(&v, 0x2000)), -EFAULT);
    /* Exactly at the end fits. */
    assert_int_equal(rv_addr(&v, 0, end - 4096, end - 8192, end - 12288), 0);
    /* A size sent after the addresses is checked against them. */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 512), -EFAULT);
    assert_int_equal(rv_addr(&v, 0, rv_uva(&v, 0), rv_uva(&v, 0x10000), rv_uva(&v, 0x20000)), 0);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 4096), 0);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 16384), -EFAULT);

    /* After all that, a real ring on the same connection: I/O works. */
    rv_start_ring(&v, 16);
    write_once(&e, &v, 64, 3);
    /* A started ring keeps its size and base. */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_NUM, 0, 16), -EBUSY);
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_BASE, 0, 0), -EBUSY);
    write_once(&e, &v, 128, 4);
    assert_true(rv_get_base(&v, 0, &idx, &num));
    assert_int_equal(idx, 0);
    assert_int_equal(num, 2);
    /* Stopped: both may change again. */
    assert_int_equal(rv_state(&v, VUF_REQ_SET_VRING_BASE, 0, 2), 0);
    assert_true(rv_relay_alive(&e));
    rv_close(&v);
    if (rv_relay_wait(&e, 5000) != 0) {
        tu_dump_log(&e.relay);
        fail_msg("the relay did not exit 0 after the VMM left");
    }
    assert_no_sanitizer(&e);
    rv_env_fini(&e);
}

/* The rings run, then the VMM shrinks the memory file to nothing. */
static void start_and_shrink(struct rv_env *e, struct rv_vmm *v)
{
    rv_connect(v, e, MEM_BYTES);
    rv_start_ring(v, 16);
    write_once(e, v, 8, 5);
    write_once(e, v, 16, 6);
    write_once(e, v, 24, 7);
    assert_int_equal(ftruncate(v->memfd, 0), 0);
}

static void test_relay_shrunk_memory_get_base(void **state)
{
    struct rv_env e;
    struct rv_vmm v;
    uint32_t idx = 9, num = 9;
    int st;

    (void)state;
    rv_env_init(&e, "vuf-relay-shrink", NULL);
    rv_start_relay(&e, NULL);
    start_and_shrink(&e, &v);
    if (!rv_get_base(&v, 0, &idx, &num)) {
        st = rv_relay_wait(&e, 5000);
        tu_dump_log(&e.relay);
        fail_msg("the relay hung up on GET_VRING_BASE (status 0x%x%s)", st,
                 st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS ? ", SIGBUS" : "");
    }
    assert_int_equal(idx, 0);
    /* The back-end's word: three requests taken. */
    assert_int_equal(num, 3);
    assert_true(rv_relay_alive(&e));
    rv_close(&v);
    st = rv_relay_wait(&e, 5000);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        tu_dump_log(&e.relay);
        fail_msg("relay status 0x%x, want exit 0", st);
    }
    assert_no_sanitizer(&e);
    rv_env_fini(&e);
}

static void test_relay_shrunk_memory_backend_lost(void **state)
{
    static const char *const extra[] = {"--reconnect-ms", "300", NULL};
    struct rv_env e;
    struct rv_vmm v;
    int st;

    (void)state;
    rv_env_init(&e, "vuf-relay-shrink-lost", NULL);
    rv_start_relay(&e, extra);
    start_and_shrink(&e, &v);
    kill(e.be.pid, SIGKILL);
    tu_stop(&e.be);
    /* The relay takes the rings back (used->idx, unreadable now), tries to
     * reconnect for 300 ms, and gives up. */
    st = rv_relay_wait(&e, 10000);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 1)) {
        tu_dump_log(&e.relay);
        fail_msg("relay status 0x%x%s, want exit 1", st,
                 st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS ? " (SIGBUS)" : "");
    }
    assert_true(tu_log_has(e.relay_log, "giving up"));
    assert_no_sanitizer(&e);
    rv_close(&v);
    rv_env_fini(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relay_refuses_bad_rings),
        cmocka_unit_test(test_relay_shrunk_memory_get_base),
        cmocka_unit_test(test_relay_shrunk_memory_backend_lost),
    };

    if (!tu_built_exe("VUF_TOOL") || !tu_built_exe("VUF_BACKEND_BLK"))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
