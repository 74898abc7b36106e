/* SPDX-License-Identifier: MIT */
/* Helpers shared by vuf's tests: fd accounting, temp dirs, and real
 * back-end processes that are always reaped. */
#ifndef VUF_TESTUTIL_H
#define VUF_TESTUTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

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
};

/* fork+exec argv (argv[0] is the program path) with stdout/stderr to
 * `log_path`, in its own process group. Returns 0 or -errno. The child is
 * registered so that tu_reap_all() (also run at exit and on SIGINT/SIGTERM)
 * kills it. */
int tu_spawn(struct tu_proc *p, char *const argv[], const char *log_path);

/* Wait until a unix socket at `path` accepts connections, or the process
 * died, or timeout_ms passed. 0 on ready, -ESRCH if the process exited,
 * -ETIMEDOUT. The probe connection is closed at once (a back-end that
 * serves one client only must then be spawned without this wait; see
 * tu_wait_socket_file). */
int tu_wait_socket(struct tu_proc *p, const char *path, int timeout_ms);

/* Wait until the socket file exists (no connection made). */
int tu_wait_socket_file(struct tu_proc *p, const char *path, int timeout_ms);

/* SIGTERM, wait up to 2 s, then SIGKILL; always reaps. Returns the exit
 * status as from waitpid, or -1. Idempotent. */
int tu_stop(struct tu_proc *p);

/* Kill and reap every process spawned and not yet stopped. */
void tu_reap_all(void);

/* Print the child's log to stderr (for failure diagnosis). */
void tu_dump_log(const struct tu_proc *p);

/* True if `path` is an executable file. */
bool tu_have_exe(const char *path);

/* Find a program in PATH; returns a static buffer or NULL. */
const char *tu_which(const char *name);

#endif
