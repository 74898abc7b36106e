/* SPDX-License-Identifier: MIT */
/*
 * vuf/virtq_set.h - wait for used entries on several virtqueues at once (a
 * net device always has at least two), over their call eventfds and one
 * epoll fd.
 *
 * vuf_virtq_set_wait() does what a driver must do to sleep without losing
 * a wake-up: it looks for pending used entries, asks every queue for a call
 * (vuf_virtq_enable_cb, which re-checks after publishing the request), and
 * sleeps only if still nothing is pending. Call fds are drained with a
 * read that cannot block (a back-end holding the same eventfd may take the
 * count first or clear O_NONBLOCK), never with a plain read(): each
 * queue's own choice (preadv2(RWF_NOWAIT), or poll/read with its
 * opts.no_aio; README.md, "Syscalls and sandboxes").
 *
 * Ownership: the set owns its epoll fd (EPOLL_CLOEXEC) and borrows the
 * queues and their call fds. Remove a queue (vuf_virtq_set_remove) before
 * freeing it or replacing its call fd: the back-end holds the same eventfd
 * open, so the kernel would keep a registration for it that the set could
 * no longer name.
 *
 * Thread-safety: none; one thread drives a set and its queues.
 */
#ifndef VUF_VIRTQ_SET_H
#define VUF_VIRTQ_SET_H

#include "vuf/virtq.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vuf_virtq_set;

/* Most queues in one set (a device's ring index space). */
#define VUF_VIRTQ_SET_MAX 256u

/* An empty set. Returns 0, -ENOMEM, or an errno of epoll_create1(). */
int vuf_virtq_set_new(struct vuf_virtq_set **out);

/* Close the epoll fd and free. The queues are not touched. NULL is a no-op. */
void vuf_virtq_set_free(struct vuf_virtq_set *set);

/*
 * Add `vq` (borrowed) with its current call fd. Returns 0, -EEXIST (already
 * in), -EBADF (no call fd), -ENOSPC (VUF_VIRTQ_SET_MAX queues), -ENOMEM,
 * or an errno of epoll_ctl().
 */
int vuf_virtq_set_add(struct vuf_virtq_set *set, struct vuf_virtq *vq);

/* Take `vq` out. Returns 0 or -ENOENT (not in the set). */
int vuf_virtq_set_remove(struct vuf_virtq_set *set, struct vuf_virtq *vq);

/* Queues in the set. */
unsigned vuf_virtq_set_count(const struct vuf_virtq_set *set);

/*
 * Wait until at least one queue has used entries pending (or is broken, so
 * that its vuf_virtq_get_used reports -EPROTO), up to timeout_ms (< 0:
 * forever). Stores up to `max` of them in ready[] in the order they were
 * added and returns how many it stored (>= 1). Leaves calls enabled on the
 * queues it looked at (vuf_virtq_disable_cb to spin again).
 * Returns -ETIMEDOUT, -EINVAL (max 0 or an empty set), or an errno of
 * epoll_wait().
 */
int vuf_virtq_set_wait(struct vuf_virtq_set *set, int timeout_ms, struct vuf_virtq **ready,
                       unsigned max);

#ifdef __cplusplus
}
#endif
#endif
