/* SPDX-License-Identifier: MIT */
/*
 * A VMM's seccomp sandbox, for tests: a filter that gives chosen syscalls
 * an action (an errno, or death) and allows everything else, and the
 * process CPU time that shows a spinning thread.
 */
#ifndef VUF_TEST_SANDBOX_H
#define VUF_TEST_SANDBOX_H

#include <stdint.h>
#include <sys/types.h>

/*
 * Install on the CALLING THREAD (and the threads it creates afterwards;
 * not on threads that already exist) a seccomp filter under which each of
 * the n syscall numbers nrs[] gets `action` (SECCOMP_RET_ERRNO | errno,
 * SECCOMP_RET_KILL_PROCESS, ...) and every other syscall is allowed. Sets
 * PR_SET_NO_NEW_PRIVS first, as an unprivileged process must. Filters
 * cannot be removed: install in a thread or process made for it.
 * Returns 0 or -errno.
 */
int tu_seccomp_install(const long *nrs, unsigned n, uint32_t action);

/* The allow-list form: the n listed syscalls are allowed, every other one
 * gets `action` (e.g. SECCOMP_RET_TRAP: a SIGSYS with si_syscall set). The
 * same rules as tu_seccomp_install() otherwise. */
int tu_seccomp_allow_only(const long *nrs, unsigned n, uint32_t action);

/* The syscalls libvuf uses only for its non-blocking eventfd paths:
 * io_setup, io_submit, io_getevents, io_destroy, preadv2 (5 entries). */
extern const long tu_aio_syscalls[5];

/*
 * A filter that kills (or a trap handler that _exits) skips the test's
 * reaping, and the back-end it spawned would live on. A guard is a forked
 * process, started before the filter, that SIGKILLs `pid` once this
 * process is gone, unless tu_guard_release() came first. Fails the test
 * if it cannot start.
 */
struct tu_guard {
    pid_t pid; /* the guard process */
    int fd;    /* our end of its pipe */
};
void tu_guard_start(struct tu_guard *g, pid_t pid);
/* The test ended by itself: the guard exits without killing; reaped. */
void tu_guard_release(struct tu_guard *g);

/* User + system CPU time of the whole process (all threads), in ms. */
int64_t tu_process_cpu_ms(void);

#endif
