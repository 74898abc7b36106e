/* SPDX-License-Identifier: MIT */
/* Helpers shared by vuf's tests: fd accounting, temp dirs, and real
 * back-end processes that are always reaped. */
#ifndef VUF_TESTUTIL_H
#define VUF_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

#include "vuf/log.h"

/* Exit status that makes Meson report a test as skipped. */
#define TEST_SKIP 77

/* Number of open fds in this process (entries of /proc/self/fd). */
int tu_count_fds(void);

/* mkdtemp under $TMPDIR (or /tmp); returns a malloc'd path. */
char *tu_mkdtemp(const char *prefix);
/* rm -rf of a temp dir made by tu_mkdtemp (and free(path)). */
void tu_rmtree(char *path);

/* A child process (a back-end). */
struct tu_proc {
    pid_t pid;
    char log_path[512]; /* its stdout+stderr */
    long stop_ms;       /* tu_stop: from SIGTERM to reaping (-1 before) */
};

/* fork+exec argv (argv[0] is the program path) with stdout/stderr to
 * `log_path`, in its own process group. Returns 0 or -errno. The child is
 * registered so that tu_reap_all() (also run at exit and on SIGINT/SIGTERM)
 * kills it. */
int tu_spawn(struct tu_proc *p, char *const argv[], const char *log_path);

/* tu_spawn() with the child's stdin read from `stdin_fd` (-1: /dev/null).
 * The caller keeps and closes stdin_fd; the child gets its own copy. */
int tu_spawn_stdin(struct tu_proc *p, char *const argv[], const char *log_path, int stdin_fd);

/* Wait until a unix socket at `path` accepts connections, or the process
 * died, or timeout_ms passed. 0 on ready, -ESRCH if the process exited,
 * -ETIMEDOUT. The probe connection is closed at once (a back-end that
 * serves one client only must then be spawned without this wait; see
 * tu_wait_socket_file). */
int tu_wait_socket(struct tu_proc *p, const char *path, int timeout_ms);

/* Wait until the socket file exists (no connection made). */
int tu_wait_socket_file(struct tu_proc *p, const char *path, int timeout_ms);

/*
 * How long a process may take to exit after SIGTERM. Its own shutdown is
 * quick (testpmd: well under a second on an idle machine), but with the two
 * cores shared by other work it has taken several seconds: a shorter grace
 * SIGKILLs a process that was exiting cleanly, and the test fails for the
 * machine's load rather than for what it tests.
 */
#define TU_STOP_GRACE_MS 20000
/* An exit after SIGTERM slower than this is reported (one "slow exit" line
 * on stderr with the time it took) but is not a failure. */
#define TU_STOP_SLOW_MS 2000

/* SIGTERM, wait up to TU_STOP_GRACE_MS, then SIGKILL (process group and
 * process, with a line saying so); always reaps. Sets p->stop_ms. Returns
 * the exit status as from waitpid, or -1. Idempotent. */
int tu_stop(struct tu_proc *p);

/* tu_stop() with a grace of `grace_ms` instead of TU_STOP_GRACE_MS. */
int tu_stop_grace(struct tu_proc *p, int grace_ms);

/* How a process ended, for a failure message: "exit N", "killed by signal
 * N (name)", "SIGKILLed after the N ms grace" (from p->stop_ms). Returns buf. */
const char *tu_status_str(const struct tu_proc *p, int status, char *buf, size_t cap);

/* Kill and reap every process spawned and not yet stopped. */
void tu_reap_all(void);

/* Print the child's log to stderr (for failure diagnosis). */
void tu_dump_log(const struct tu_proc *p);

/* True if `path` is an executable file. */
bool tu_have_exe(const char *path);

/*
 * A back-end that scripts/setup.sh installs must be there: its absence is a
 * failure of the test, never a skip. True if `path` is executable;
 * otherwise prints "MISSING: <path> is not installed (scripts/setup.sh
 * installs it: apt-get install <package>)" and returns false, and the
 * caller fails (fail() in a case, a non-zero, non-77 exit in main).
 */
bool tu_backend_installed(const char *path, const char *package);

/*
 * A program this project builds (VUF_TOOL, VUF_BACKEND_BLK, set by meson
 * test): its path from the environment variable `var`, or NULL after
 * printing why (unset or not executable: run through meson test). Missing is
 * a failure, never a skip.
 */
const char *tu_built_exe(const char *var);

/* Find a program in PATH; returns a static buffer or NULL. */
const char *tu_which(const char *name);

/* ---- time --------------------------------------------------------------- */

/* CLOCK_MONOTONIC in milliseconds / nanoseconds. */
int64_t tu_now_ms(void);
int64_t tu_now_ns(void);

/* Sleep `ms` milliseconds (restarted when a signal interrupts it). */
void tu_sleep_ms(int ms);

/* ---- threads ------------------------------------------------------------ */

/* Number of threads of this process (entries of /proc/self/task), or -1. */
int tu_count_threads(void);

/* Start and join one thread, once per process (later calls do nothing), so
 * that the helper threads a runtime creates lazily with the first
 * pthread_create (sanitizers, ThreadSanitizer's background thread) already
 * exist when a test takes its thread baseline. Call it before the first
 * tu_count_threads() whose result is a baseline. */
void tu_warm_threads(void);

/* A joined thread can linger in /proc/self/task for a moment after
 * pthread_join returns (the kernel wakes the joiner before the task is
 * reaped): wait up to a second for tu_count_threads() to be `want`, and
 * return the last count. */
int tu_threads_settle(int want);

/* Write `text` to `fd` after `delay_ms`, from a thread of its own (for a
 * command that must reach a process while the test is blocked in a call). */
struct tu_later {
    pthread_t thread;
    int fd, delay_ms;
    const char *text;
};
void tu_later_start(struct tu_later *l, int fd, int delay_ms, const char *text);
/* Wait for the write; returns what write() returned (-1 on error). */
long tu_later_join(struct tu_later *l);

/* ---- logs --------------------------------------------------------------- */

/* A vuf_log sink (vuf_log_set_sink) printing "[vuf LEVEL] msg" to stderr,
 * so the library's log stays in the test output. opaque is unused. */
void tu_log_to_stderr(void *opaque, enum vuf_log_level level, const char *msg);

/* True if a line of the file at `path` contains `needle` (false when the
 * file cannot be opened). */
bool tu_log_has(const char *path, const char *needle);

/* ---- running a program to completion ------------------------------------ */

/* What a program run by tu_run_capture printed, and how it ended. Large:
 * allocate it on the heap or in static storage when stack is tight. */
struct tu_run {
    int status;      /* as from waitpid; -1 until reaped */
    long elapsed_ms; /* from fork to reaping */
    char out[256 * 1024];
    char err[32 * 1024];
};

/* Run `prog args...` (args NULL-ended, at most 38 of them; argv[0] is prog)
 * with stdout and stderr captured in r (NUL-terminated, cut at the buffer
 * size) and stdin inherited. SIGKILLed after `deadline_ms`. The child is
 * always reaped before this returns and the pipes are closed; nothing is
 * left behind. What it wrote to stderr is echoed to our stderr. */
void tu_run_capture(struct tu_run *r, const char *prog, const char *const *args, int deadline_ms);

/* The exit code of a finished run; 128+signal if it was killed. */
int tu_exit_code(const struct tu_run *r);

/*
 * `vuf args...` (the tool in VUF_TOOL, tu_built_exe(); its absence fails
 * the test) by tu_run_capture() with `deadline_ms`, its stdout echoed.
 * Returns the run, malloc'd: the caller frees it.
 */
struct tu_run *tu_run_vuf(const char *const *args, int deadline_ms);

#endif
