/* SPDX-License-Identifier: MIT */
/*
 * A VMM's seccomp sandbox, for tests: a filter that gives chosen syscalls
 * an action (an errno, or death) and allows everything else, and the
 * process CPU time that shows a spinning thread.
 */
#ifndef VUF_TEST_SANDBOX_H
#define VUF_TEST_SANDBOX_H

#include <stdint.h>

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

/* The syscalls libvuf uses only for its non-blocking eventfd paths:
 * io_setup, io_submit, io_getevents, io_destroy, preadv2 (5 entries). */
extern const long tu_aio_syscalls[5];

/* User + system CPU time of the whole process (all threads), in ms. */
int64_t tu_process_cpu_ms(void);

#endif
