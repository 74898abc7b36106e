/* SPDX-License-Identifier: MIT */
/* A seccomp filter written as raw BPF: no libseccomp needed. */
#include "sandbox.h"

#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "tests/lib/sandbox.c: add this architecture's AUDIT_ARCH_*"
#endif

const long tu_aio_syscalls[5] = {SYS_io_setup, SYS_io_submit, SYS_io_getevents, SYS_io_destroy,
                                 SYS_preadv2};

/* Listed calls get `listed`, the others `other`. */
static int install(const long *nrs, unsigned n, uint32_t listed, uint32_t other)
{
    /* arch check (3) + load nr (1) + 2 per syscall + the others (1) */
    unsigned len = 5 + 2 * n, k = 0;
    struct sock_filter *f;
    struct sock_fprog prog;
    int r = 0;

    if (n > 200)
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
        f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, listed);
    }
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, other);
    prog = (struct sock_fprog){.len = (unsigned short)k, .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        r = -errno;
    free(f);
    return r;
}

int tu_seccomp_install(const long *nrs, unsigned n, uint32_t action)
{
    return install(nrs, n, action, SECCOMP_RET_ALLOW);
}

int tu_seccomp_allow_only(const long *nrs, unsigned n, uint32_t action)
{
    return install(nrs, n, SECCOMP_RET_ALLOW, action);
}

int64_t tu_process_cpu_ms(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -1;
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

void tu_guard_start(struct tu_guard *g, pid_t pid)
{
    int p[2];
    char c = 0;

    assert_true(pid > 0);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    g->pid = fork();
    assert_true(g->pid >= 0);
    if (g->pid == 0) {
        /* Nothing of the test's but the pipe: no fd of ours may keep a
         * socket or a file open. */
        for (int fd = 3; fd < 1024; fd++)
            if (fd != p[0])
                close(fd);
        /* EOF without the release byte: the test died. */
        if (read(p[0], &c, 1) != 1 || c != 'r')
            kill(pid, SIGKILL);
        _exit(0);
    }
    close(p[0]);
    g->fd = p[1];
}

void tu_guard_release(struct tu_guard *g)
{
    int st = 0;

    assert_int_equal(write(g->fd, "r", 1), 1);
    close(g->fd);
    assert_int_equal(waitpid(g->pid, &st, 0), g->pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
