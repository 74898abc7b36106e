/* SPDX-License-Identifier: MIT */
/*
 * Private: monotonic deadlines for the calls that wait on a peer. A
 * deadline is an absolute CLOCK_MONOTONIC time in ms, or -1 for "never".
 */
#ifndef VUF_DEADLINE_H
#define VUF_DEADLINE_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>

static inline int64_t vuf_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A deadline timeout_ms from now; negative timeout: never. */
static inline int64_t vuf_deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : vuf_now_ms() + timeout_ms;
}

/* Milliseconds left, as poll() takes them: -1 forever, 0 when past. */
static inline int vuf_ms_left(int64_t deadline)
{
    int64_t d;

    if (deadline < 0)
        return -1;
    d = deadline - vuf_now_ms();
    if (d <= 0)
        return 0;
    return d > 1000000 ? 1000000 : (int)d;
}

/* Wait for `events` on fd until the deadline: 0 when ready (POLLHUP and
 * POLLERR count: the next read/write tells what happened), -ETIMEDOUT, or
 * another negative errno. EINTR is retried. */
static inline int vuf_poll_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, vuf_ms_left(deadline));

        if (r > 0)
            return 0;
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

#endif
