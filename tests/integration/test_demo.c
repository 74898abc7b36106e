/* SPDX-License-Identifier: MIT */
/*
 * What `vuf demo` promises about its end (docs/demo.md "Cleanup", README):
 * its back-ends die with it, also when it is SIGKILLed (PR_SET_PDEATHSIG);
 * on SIGTERM it kills them, removes its temp dir and exits 128+15; and a
 * check that fails makes it exit 1, having cleaned up the same way.
 *
 * No fault injection inside the demo: the demo runs its back-end through
 * --backend, and the test hands it a small shell wrapper around the real
 * vuf-backend-blk. One wrapper records its pid and stops the demo
 * (SIGSTOP to its parent) before exec'ing the real back-end, so the demo is
 * caught mid-run deterministically, with its back-end alive. The other runs
 * the back-end as its child and exits 3 when the demo SIGTERMs it, which
 * the demo's check "back-end A exited with status 0 on SIGTERM" must catch.
 * The demo's TMPDIR is this test's temp dir, so its own temp dir is seen.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define DEADLINE_MS 10000

static const char *tool, *backend;

struct fx {
    char *dir;
    char wrapper[400], pids[400], log[400];
    struct tu_proc demo;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->dir = tu_mkdtemp("vuf-demo-test");
    snprintf(f->wrapper, sizeof(f->wrapper), "%s/backend.sh", f->dir);
    snprintf(f->pids, sizeof(f->pids), "%s/pids", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/demo.log", f->dir);
    f->demo.pid = -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    tu_stop(&f->demo);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

static void write_script(const char *path, const char *text)
{
    FILE *fp = fopen(path, "we");

    assert_non_null(fp);
    assert_true(fputs(text, fp) >= 0);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(chmod(path, 0755), 0);
}

/* The process's state letter from /proc/PID/stat, or 0 if it is gone. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512], *rp;
    FILE *fp;
    char st = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fp = fopen(path, "re");
    if (!fp)
        return 0;
    if (fgets(buf, sizeof(buf), fp) && (rp = strrchr(buf, ')')) && rp[1] == ' ')
        st = rp[2];
    fclose(fp);
    return st;
}

/* Dead: gone, or a zombie nobody reaps (it was reparented). */
static bool proc_dead(pid_t pid)
{
    char st = proc_state(pid);

    return st == 0 || st == 'Z' || st == 'X';
}

/* The demo under a TMPDIR of ours, with `wrapper` as its back-end. */
static void start_demo(struct fx *f)
{
    char *argv[] = {(char *)tool, "demo", "--no-trace", "--backend", f->wrapper, NULL};
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;

    assert_int_equal(setenv("TMPDIR", f->dir, 1), 0);
    assert_int_equal(tu_spawn(&f->demo, argv, f->log), 0);
    if (saved) {
        setenv("TMPDIR", saved, 1);
        free(saved);
    } else {
        unsetenv("TMPDIR");
    }
}

/* Wait until the stopping wrapper has recorded its pid and stopped the
 * demo; returns the back-end's pid (the wrapper execs into it). */
static pid_t wait_caught(struct fx *f)
{
    int64_t end = tu_now_ms() + DEADLINE_MS;
    int pid = 0;

    while (tu_now_ms() < end) {
        FILE *fp = fopen(f->pids, "re");

        if (fp) {
            if (fscanf(fp, "%d", &pid) != 1)
                pid = 0;
            fclose(fp);
        }
        if (pid > 0 && proc_state(f->demo.pid) == 'T')
            break;
        tu_sleep_ms(1);
    }
    if (pid <= 0 || proc_state(f->demo.pid) != 'T') {
        tu_dump_log(&f->demo);
        fail_msg("the demo never started its back-end (wrapper pid %d)", pid);
    }
    assert_false(proc_dead(pid));
    return pid;
}

/* Wait for the demo to end by itself (a zombie, watched in /proc so that
 * its status is kept), then reap it through tu_stop(); its wait status. */
static int wait_demo_exit(struct fx *f, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;

    while (proc_state(f->demo.pid) != 'Z' && tu_now_ms() < end)
        tu_sleep_ms(2);
    if (proc_state(f->demo.pid) != 'Z') {
        tu_dump_log(&f->demo);
        fail_msg("the demo still runs after %d ms", timeout_ms);
    }
    return tu_stop(&f->demo);
}

static void assert_dies(pid_t pid, const char *what)
{
    int64_t end = tu_now_ms() + DEADLINE_MS;

    while (!proc_dead(pid) && tu_now_ms() < end)
        tu_sleep_ms(1);
    if (!proc_dead(pid))
        fail_msg("%s (pid %d) still runs %d ms after the demo ended", what, (int)pid, DEADLINE_MS);
}

/* Nothing but this test's own files is left in the demo's TMPDIR. */
static void assert_no_demo_dir(struct fx *f)
{
    DIR *d = opendir(f->dir);
    struct dirent *e;

    assert_non_null(d);
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "vuf-demo", 8) == 0) {
            closedir(d);
            fail_msg("the demo's temp dir %s/%s is left", f->dir, e->d_name);
        }
    closedir(d);
}

static void write_stopping_wrapper(struct fx *f)
{
    char text[2048];

    snprintf(text, sizeof(text),
             "#!/bin/sh\n"
             "echo $$ > '%s'\n"
             "kill -STOP $PPID\n"
             "exec '%s' \"$@\"\n",
             f->pids, backend);
    write_script(f->wrapper, text);
}

/* SIGKILL: no handler runs; the back-end goes by PR_SET_PDEATHSIG. */
static void test_demo_sigkill_takes_backend(void **state)
{
    struct fx *f = *state;
    pid_t be;
    int status;

    write_stopping_wrapper(f);
    start_demo(f);
    be = wait_caught(f);
    assert_int_equal(kill(f->demo.pid, SIGKILL), 0);
    status = tu_stop(&f->demo);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    assert_dies(be, "back-end A");
}

/* SIGTERM: the handler kills the back-end, removes the temp dir, 128+15. */
static void test_demo_sigterm_cleans_up(void **state)
{
    struct fx *f = *state;
    pid_t be;
    int status;

    write_stopping_wrapper(f);
    start_demo(f);
    be = wait_caught(f);
    assert_int_equal(kill(f->demo.pid, SIGTERM), 0);
    assert_int_equal(kill(f->demo.pid, SIGCONT), 0);
    status = wait_demo_exit(f, DEADLINE_MS);
    tu_dump_log(&f->demo);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 128 + SIGTERM);
    assert_true(tu_log_has(f->demo.log_path, "interrupted; back-ends killed, temp dir removed"));
    assert_dies(be, "back-end A");
    assert_no_demo_dir(f);
}

/* A back-end that exits 3 on SIGTERM: the demo's check fails, it exits 1,
 * names the check, and leaves no back-end and no temp dir. */
static void test_demo_failed_check_exits_1(void **state)
{
    struct fx *f = *state;
    char text[2048];
    int status;

    snprintf(text, sizeof(text),
             "#!/bin/bash\n"
             "'%s' \"$@\" &\n"
             "child=$!\n"
             "echo $child >> '%s'\n"
             "trap 'kill -TERM $child; wait $child; exit 3' TERM\n"
             "wait $child\n",
             backend, f->pids);
    write_script(f->wrapper, text);
    start_demo(f);
    status = wait_demo_exit(f, 30000);
    tu_dump_log(&f->demo);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_true(
        tu_log_has(f->demo.log_path, "check: back-end A exited with status 0 on SIGTERM: FAILED"));
    assert_true(tu_log_has(f->demo.log_path, "vuf demo: FAILED at step"));
    assert_false(tu_log_has(f->demo.log_path, "could not remove"));
    {
        FILE *fp = fopen(f->pids, "re");
        int pid;

        assert_non_null(fp);
        while (fscanf(fp, "%d", &pid) == 1)
            assert_dies(pid, "a back-end");
        fclose(fp);
    }
    assert_no_demo_dir(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_demo_sigkill_takes_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_demo_sigterm_cleans_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_demo_failed_check_exits_1, setup, teardown),
    };

    tool = tu_built_exe("VUF_TOOL");
    backend = tu_built_exe("VUF_BACKEND_BLK");
    if (!tool || !backend)
        return 1;
    if (!tu_have_exe("/bin/bash")) {
        fprintf(stderr, "MISSING: /bin/bash\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
