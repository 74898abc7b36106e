/* SPDX-License-Identifier: MIT */
/*
 * vuf-floor: what one QD1 request cannot beat on this machine, measured in
 * the same run as the request itself (issue 10, "the floor").
 *
 *   eventfd  two processes, no protocol at all: the "driver" writes a kick
 *            eventfd, the "device" wakes in epoll_wait, reads it and writes
 *            a call eventfd, the driver wakes in poll and reads it. This is
 *            the notification path of a vhost-user request without the
 *            rings, the memory table or the request's own work.
 *   spin     the same round trip with both sides spinning on a counter in
 *            shared memory (no syscalls): the floor of busy-poll mode.
 *
 * Usage: vuf-floor [--mode eventfd|spin] [--rounds N] [--json]
 * Prints the median, mean, p99, min and max round trip in nanoseconds.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* The device side of the eventfd round trip: epoll on the kick, answer on
 * the call, until the kick carries the stop value. */
static void device_eventfd(int kick, int call)
{
    struct epoll_event ev = {.events = EPOLLIN}, out;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uint64_t v, one = 1;

    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, kick, &ev) < 0)
        _exit(2);
    for (;;) {
        if (epoll_wait(ep, &out, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(2);
        }
        if (read(kick, &v, sizeof(v)) != (ssize_t)sizeof(v))
            continue;
        if (v >= 1000000)
            _exit(0);
        if (write(call, &one, sizeof(one)) != (ssize_t)sizeof(one))
            _exit(2);
    }
}

static int run_eventfd(int64_t *rt, unsigned n)
{
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    uint64_t one = 1, v, stop = 1000000;
    int status;
    pid_t pid;

    if (kick < 0 || call < 0)
        return -errno;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0)
        device_eventfd(kick, call);
    for (unsigned i = 0; i < n; i++) {
        struct pollfd p = {.fd = call, .events = POLLIN};
        int64_t t0 = now_ns();

        if (write(kick, &one, sizeof(one)) != (ssize_t)sizeof(one))
            return -EIO;
        while (poll(&p, 1, 5000) < 0 && errno == EINTR)
            ;
        if (!(p.revents & POLLIN) || read(call, &v, sizeof(v)) != (ssize_t)sizeof(v))
            return -ETIMEDOUT;
        rt[i] = now_ns() - t0;
    }
    if (write(kick, &stop, sizeof(stop)) != (ssize_t)sizeof(stop))
        return -EIO;
    waitpid(pid, &status, 0);
    close(kick);
    close(call);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Two counters on separate cache lines: the driver bumps `kick`, the
 * device copies it to `call`. */
struct spin_area {
    _Alignas(64) atomic_uint_fast64_t kick;
    _Alignas(64) atomic_uint_fast64_t call;
};

static int run_spin(int64_t *rt, unsigned n)
{
    struct spin_area *a =
        mmap(NULL, sizeof(*a), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int status;
    pid_t pid;

    if (a == MAP_FAILED)
        return -errno;
    atomic_store(&a->kick, 0);
    atomic_store(&a->call, 0);
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        uint64_t seen = 0;

        for (;;) {
            uint64_t k = atomic_load_explicit(&a->kick, memory_order_acquire);

            if (k == UINT64_MAX)
                _exit(0);
            if (k != seen) {
                seen = k;
                atomic_store_explicit(&a->call, k, memory_order_release);
            }
            cpu_relax();
        }
    }
    for (unsigned i = 0; i < n; i++) {
        int64_t t0 = now_ns(), limit = t0 + 5000000000ll;

        atomic_store_explicit(&a->kick, i + 1, memory_order_release);
        while (atomic_load_explicit(&a->call, memory_order_acquire) != i + 1) {
            cpu_relax();
            if ((i & 1023) == 0 && now_ns() > limit) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                return -ETIMEDOUT;
            }
        }
        rt[i] = now_ns() - t0;
    }
    atomic_store(&a->kick, UINT64_MAX);
    waitpid(pid, &status, 0);
    munmap(a, sizeof(*a));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

int main(int argc, char **argv)
{
    const char *mode = "eventfd";
    unsigned n = 20000;
    int json = 0, r;
    int64_t *rt, sum = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mode") && i + 1 < argc)
            mode = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            n = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: vuf-floor [--mode eventfd|spin] [--rounds N] [--json]\n");
            return 2;
        }
    }
    if (n == 0 || n > 100000000u || (strcmp(mode, "eventfd") && strcmp(mode, "spin"))) {
        fprintf(stderr, "vuf-floor: bad --mode or --rounds\n");
        return 2;
    }
    rt = calloc(n, sizeof(*rt));
    if (!rt)
        return 1;
    r = !strcmp(mode, "spin") ? run_spin(rt, n) : run_eventfd(rt, n);
    if (r < 0) {
        fprintf(stderr, "vuf-floor: %s\n", strerror(-r));
        return 1;
    }
    for (unsigned i = 0; i < n; i++)
        sum += rt[i];
    qsort(rt, n, sizeof(*rt), cmp_i64);
    if (json)
        printf("{\"mode\":\"%s\",\"rounds\":%u,\"median_ns\":%lld,\"mean_ns\":%lld,"
               "\"p99_ns\":%lld,\"min_ns\":%lld,\"max_ns\":%lld}\n",
               mode, n, (long long)rt[n / 2], (long long)(sum / n), (long long)rt[n * 99 / 100],
               (long long)rt[0], (long long)rt[n - 1]);
    else
        printf("%s round trip over %u rounds: median %lld ns, mean %lld, p99 %lld, min %lld, "
               "max %lld\n",
               mode, n, (long long)rt[n / 2], (long long)(sum / n), (long long)rt[n * 99 / 100],
               (long long)rt[0], (long long)rt[n - 1]);
    free(rt);
    return 0;
}
