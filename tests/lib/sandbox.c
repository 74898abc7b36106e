/* SPDX-License-Identifier: MIT */
/* A seccomp filter written as raw BPF: no libseccomp needed. */
#include "sandbox.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "tests/lib/sandbox.c: add this architecture's AUDIT_ARCH_*"
#endif

const long tu_aio_syscalls[5] = {SYS_io_setup, SYS_io_submit, SYS_io_getevents, SYS_io_destroy,
                                 SYS_preadv2};

int tu_seccomp_install(const long *nrs, unsigned n, uint32_t action)
{
    /* arch check (3) + load nr (1) + 2 per syscall + allow (1) */
    unsigned len = 5 + 2 * n, k = 0;
    struct sock_filter *f;
    struct sock_fprog prog;
    int r = 0;

    if (n > 100)
        return -EINVAL;
    f = calloc(len, sizeof(*f));
    if (!f)
        return -ENOMEM;
    /* Another ABI's numbers mean other calls: such a call is a test bug. */
    f[k++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TU_AUDIT_ARCH, 1, 0);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[k++] =
        (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (unsigned i = 0; i < n; i++) {
        f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nrs[i], 0, 1);
        f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, action);
    }
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog = (struct sock_fprog){.len = (unsigned short)k, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        r = -errno;
    free(f);
    return r;
}

int64_t tu_process_cpu_ms(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -1;
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}
