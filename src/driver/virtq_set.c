/* SPDX-License-Identifier: MIT */
/* Waiting on several virtqueues' call eventfds with one epoll fd. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "deadline.h"
#include "peer_eventfd.h"
#include "vuf/virtq_set.h"

struct member {
    struct vuf_virtq *vq;
    int fd; /* the call fd registered with epoll */
};

struct vuf_virtq_set {
    int epfd;
    unsigned n, cap;
    struct member *m;
};

int vuf_virtq_set_new(struct vuf_virtq_set **out)
{
    struct vuf_virtq_set *set;

    if (!out)
        return -EINVAL;
    set = calloc(1, sizeof(*set));
    if (!set)
        return -ENOMEM;
    set->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (set->epfd < 0) {
        int e = errno;

        free(set);
        return -e;
    }
    *out = set;
    return 0;
}

void vuf_virtq_set_free(struct vuf_virtq_set *set)
{
    if (!set)
        return;
    close(set->epfd);
    free(set->m);
    free(set);
}

static int find(const struct vuf_virtq_set *set, const struct vuf_virtq *vq)
{
    for (unsigned i = 0; i < set->n; i++)
        if (set->m[i].vq == vq)
            return (int)i;
    return -1;
}

int vuf_virtq_set_add(struct vuf_virtq_set *set, struct vuf_virtq *vq)
{
    struct epoll_event ev = {.events = EPOLLIN};
    int fd;

    if (!set || !vq)
        return -EINVAL;
    if (find(set, vq) >= 0)
        return -EEXIST;
    fd = vuf_virtq_call_fd(vq);
    if (fd < 0)
        return -EBADF;
    if (set->n == VUF_VIRTQ_SET_MAX)
        return -ENOSPC;
    if (set->n == set->cap) {
        unsigned cap = set->cap ? set->cap * 2 : 4;
        struct member *m = realloc(set->m, cap * sizeof(*m));

        if (!m)
            return -ENOMEM;
        set->m = m;
        set->cap = cap;
    }
    /* The wait only needs to wake; which queue is found by looking. */
    ev.data.ptr = vq;
    if (epoll_ctl(set->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    set->m[set->n++] = (struct member){.vq = vq, .fd = fd};
    return 0;
}

int vuf_virtq_set_remove(struct vuf_virtq_set *set, struct vuf_virtq *vq)
{
    int i = set && vq ? find(set, vq) : -1;

    if (i < 0)
        return -ENOENT;
    (void)epoll_ctl(set->epfd, EPOLL_CTL_DEL, set->m[i].fd, NULL);
    /* Keep the order of addition: vuf_virtq_set_wait reports in it. */
    memmove(&set->m[i], &set->m[i + 1], (set->n - (unsigned)i - 1) * sizeof(set->m[0]));
    set->n--;
    return 0;
}

unsigned vuf_virtq_set_count(const struct vuf_virtq_set *set)
{
    return set ? set->n : 0;
}

/* The queues with something for the driver, in order. */
static unsigned collect(struct vuf_virtq_set *set, struct vuf_virtq **ready, unsigned max)
{
    unsigned k = 0;

    for (unsigned i = 0; i < set->n && k < max; i++)
        if (vuf_virtq_broken(set->m[i].vq) || vuf_virtq_has_used(set->m[i].vq))
            ready[k++] = set->m[i].vq;
    return k;
}

int vuf_virtq_set_wait(struct vuf_virtq_set *set, int timeout_ms, struct vuf_virtq **ready,
                       unsigned max)
{
    int64_t deadline = vuf_deadline(timeout_ms);
    struct epoll_event ev[16];

    if (!set || !ready || max == 0 || set->n == 0)
        return -EINVAL;
    for (;;) {
        unsigned k = collect(set, ready, max);
        int r;

        if (k)
            return (int)k;
        /* Ask each queue for a call, then look again: an entry the device
         * published before it could see the request would never be
         * signalled (enable_cb orders the request before its re-check). */
        for (unsigned i = 0; i < set->n; i++)
            vuf_virtq_enable_cb(set->m[i].vq);
        k = collect(set, ready, max);
        if (k)
            return (int)k;
        r = epoll_wait(set->epfd, ev, 16, vuf_ms_left(deadline));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0) {
            if (deadline >= 0 && vuf_now_ms() >= deadline) {
                k = collect(set, ready, max);
                return k ? (int)k : -ETIMEDOUT;
            }
            continue;
        }
        for (int i = 0; i < r; i++) {
            int j = find(set, ev[i].data.ptr);

            /* Zero taken (the back-end took the count first) is fine: the
             * loop looks at the rings, not at the counters. */
            if (j >= 0)
                vuf_peer_efd_take_flags(set->m[j].fd, NULL, vuf_virtq_efd_flags(set->m[j].vq));
        }
    }
}
