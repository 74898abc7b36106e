/* SPDX-License-Identifier: MIT */
/*
 * The test library's process handling (tests/lib/testutil.h), on stand-in
 * back-ends written in sh:
 *
 * - a back-end that exits 0 three seconds after SIGTERM (as testpmd did on
 *   a loaded machine) is a slow exit, reported with its time, not a
 *   failure: tu_stop() waits TU_STOP_GRACE_MS before SIGKILL (it waited 2 s
 *   and SIGKILLed it, and tu_stop_clean() failed the test);
 * - one that ignores SIGTERM is SIGKILLed when the grace ends and said to
 *   be, and one that exits non-zero is told apart from both;
 * - tu_spawn_stdin() gives the child the read end of a pipe as its stdin.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* sh with a SIGTERM trap running `on_term`, idle otherwise. */
static void spawn_sh(struct tu_proc *p, const char *on_term)
{
    char script[256];
    char *argv[] = {"/bin/sh", "-c", script, NULL};

    snprintf(script, sizeof(script), "trap '%s' TERM; while :; do sleep 0.05; done", on_term);
    assert_int_equal(tu_spawn(p, argv, NULL), 0);
    /* Let sh install its trap before the signal comes. */
    tu_sleep_ms(300);
}

static void test_stop_slow_exit_is_clean(void **state)
{
    struct tu_proc p;
    char how[96];
    int st;

    (void)state;
    spawn_sh(&p, "sleep 3; exit 0");
    st = tu_stop(&p);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(p.stop_ms >= 3000 && p.stop_ms < TU_STOP_GRACE_MS);
    assert_string_equal(tu_status_str(&p, st, how, sizeof(how)), "exit 0");
    assert_int_equal(p.pid, -1);
    assert_int_equal(tu_stop(&p), -1); /* idempotent */
}

static void test_stop_kills_after_grace(void **state)
{
    struct tu_proc p;
    char how[96];
    int st;

    (void)state;
    spawn_sh(&p, "");
    st = tu_stop_grace(&p, 300);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
    assert_true(p.stop_ms >= 300);
    assert_non_null(strstr(tu_status_str(&p, st, how, sizeof(how)), "SIGKILLed after"));
}

static void test_stop_failing_exit(void **state)
{
    struct tu_proc p;
    char how[96];
    int st;

    (void)state;
    spawn_sh(&p, "exit 3");
    st = tu_stop(&p);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 3);
    assert_true(p.stop_ms < TU_STOP_SLOW_MS);
    assert_string_equal(tu_status_str(&p, st, how, sizeof(how)), "exit 3");
}

static void test_spawn_stdin(void **state)
{
    struct tu_proc p;
    char *dir = tu_mkdtemp("vuf-testutil"), log[300];
    char *argv[] = {"/bin/sh", "-c", "read line && echo \"got $line\"", NULL};
    int fds[2], st, fd0 = tu_count_fds();

    (void)state;
    assert_non_null(dir);
    snprintf(log, sizeof(log), "%s/out.log", dir);
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    assert_int_equal(tu_spawn_stdin(&p, argv, log, fds[0]), 0);
    close(fds[0]);
    assert_int_equal(write(fds[1], "start\n", 6), 6);
    close(fds[1]);
    for (int i = 0; i < 500 && !tu_log_has(log, "got start"); i++)
        tu_sleep_ms(10);
    assert_true(tu_log_has(log, "got start"));
    st = tu_stop(&p);
    assert_true(WIFEXITED(st) || WIFSIGNALED(st));
    assert_int_equal(tu_count_fds(), fd0);
    tu_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_slow_exit_is_clean),
        cmocka_unit_test(test_stop_kills_after_grace),
        cmocka_unit_test(test_stop_failing_exit),
        cmocka_unit_test(test_spawn_stdin),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
