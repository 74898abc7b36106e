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
 *     AIO poll (IOCB_CMD_POLL, Linux >= 4.18) of the eventfd itself for
 *     POLLIN | POLLOUT, one of which holds at every count, with
 *     IOCB_FLAG_RESFD naming the same fd, and the kernel signals it from
 *     the completion with eventfd_signal(), which saturates the counter
 *     instead of waiting. One AIO context per thread, created on first
 *     use and destroyed when the thread exits.
 *
 * Where those kernel facilities are missing or refused (AIO disabled, an old
 * kernel, a seccomp filter answering EPERM/EACCES/ENOSYS/EOPNOTSUPP), both
 * fall back to restoring O_NONBLOCK, polling with a zero timeout and a
 * plain read()/write(), and log once that a peer flipping the flag between
 * the check and the call could still make it block. A refusal is
 * remembered by the thread that met it: that thread never tries the call
 * again (one failing syscall per thread, not one per kick).
 *
 * VUF_NO_AIO=1 in the environment (read by each thread on its first use),
 * or VUF_PEER_EFD_NO_AIO in the flags of the *_flags variants (the
 * front-end's and the virtqueue's `no_aio` option), skips the kernel
 * facilities altogether: then only fcntl, poll, read and write are called,
 * so that a seccomp filter that kills on io_setup, io_submit, io_getevents,
 * io_destroy or preadv2 is never tripped. README.md ("Syscalls and
 * sandboxes") says what that costs against a hostile back-end.
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

/* Flags of the *_flags variants. */
#define VUF_PEER_EFD_NO_AIO 1u /* fallback only: fcntl, poll, read, write */

/* As above, with VUF_PEER_EFD_* flags (0: the same as the plain calls). */
VUF_INTERNAL int vuf_peer_efd_signal_flags(int fd, unsigned flags);
VUF_INTERNAL int vuf_peer_efd_take_flags(int fd, uint64_t *val, unsigned flags);

/*
 * What ran, counted over the whole process (for tests: nothing else can
 * tell the paths apart). Only the fallback paths and the refusals are
 * counted, so that the fast path pays no shared atomic.
 */
struct vuf_peer_efd_stats {
    uint64_t signal_write; /* signals done with poll() + write() */
    uint64_t take_read;    /* takes done with poll() + read() */
    uint64_t refused;      /* io_setup/io_submit/preadv2 calls refused with
                            * a "use the fallback" errno (then remembered) */
    uint64_t no_aio;       /* threads that read VUF_NO_AIO=1 */
};
VUF_INTERNAL void vuf_peer_efd_get_stats(struct vuf_peer_efd_stats *out);

/* The VUF_PEER_EFD_* flags of a virtqueue (its opts.no_aio). */
struct vuf_virtq;
VUF_INTERNAL unsigned vuf_virtq_efd_flags(const struct vuf_virtq *vq);

#endif
