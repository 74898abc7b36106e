/* SPDX-License-Identifier: MIT */
/*
 * Private: signalling and draining an eventfd that a back-end also holds.
 *
 * O_NONBLOCK lives on the open file description, and a back-end that got
 * the fd with SCM_RIGHTS shares that description: it can clear the flag.
 * It can also fill the counter (a write() then blocks until someone reads)
 * or read the counter away from under us (a read() then blocks until the
 * next signal). Neither call below can block, whatever the peer does to
 * the fd's flags or counter:
 *
 *   - vuf_peer_efd_take() reads with preadv2(RWF_NOWAIT) (Linux >= 5.12
 *     honours it for eventfds), which ignores the file's flags;
 *   - vuf_peer_efd_signal() does not write() at all: it submits a Linux
 *     AIO poll of a private, always-writable eventfd with IOCB_FLAG_RESFD
 *     naming the peer's fd, and the kernel signals it from the completion
 *     with eventfd_signal(), which saturates the counter instead of
 *     waiting. One AIO context per thread, created on first use and
 *     destroyed when the thread exits.
 *
 * Where those kernel facilities are missing (AIO disabled, an old kernel),
 * both fall back to restoring O_NONBLOCK, polling with a zero timeout and a
 * plain read()/write(), and log once that a peer flipping the flag between
 * the check and the call could still make it block.
 *
 * Both are thread-safe; they do not take ownership of fd.
 */
#ifndef VUF_PEER_EVENTFD_H
#define VUF_PEER_EVENTFD_H

#include <stdint.h>

#define VUF_INTERNAL __attribute__((visibility("hidden")))

/*
 * Add 1 to the eventfd `fd`'s counter. A counter already at its maximum
 * stays there (the reader wakes all the same): that is success.
 * Returns 0, or a negative errno (-EBADF, -EINVAL when fd is no eventfd).
 */
VUF_INTERNAL int vuf_peer_efd_signal(int fd);

/*
 * Take the eventfd's counter without waiting. Returns 1 and stores it in
 * *val (may be NULL), 0 when it was zero (the peer may have taken it
 * first), or a negative errno.
 */
VUF_INTERNAL int vuf_peer_efd_take(int fd, uint64_t *val);

#endif
