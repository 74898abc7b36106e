/* SPDX-License-Identifier: MIT */
/*
 * vuf/conn.h - one end of a vhost-user unix stream socket: whole messages
 * with their fds, with a deadline on every call.
 *
 * Errors (negative errno, see vuf_strerror()):
 *   -ETIMEDOUT     the peer said nothing (or did not drain) within the timeout
 *   -ECONNRESET    the peer hung up between messages (EOF, ECONNRESET, EPIPE)
 *   -ECONNABORTED  the peer hung up in the middle of a message (after part of
 *                  the payload arrived)
 *   -EBADMSG       the framing broke: EOF after 1..11 header bytes, or fds
 *                  that arrived with a payload chunk instead of the header
 *                  (closed; the rest of that message is left unread)
 *   -EMSGSIZE      header size field above VUF_MAX_PAYLOAD (nothing more is
 *                  read: the stream is no longer in sync, close it)
 *   -ETOOMANYREFS  more than VUF_MAX_FDS fds arrived (MSG_CTRUNC); every fd
 *                  that did arrive has been closed
 *   -E2BIG         a send was asked to carry more than VUF_MAX_FDS fds
 *   -EBADF         a send was given a negative fd (nothing sent)
 *   other          a socket error from the kernel
 * Which of these leave the stream unusable: vuf_conn_error_is_fatal().
 *
 * Thread-safety: a vuf_conn is not thread-safe; one thread sends and
 * receives at a time. Distinct connections are independent.
 */
#ifndef VUF_CONN_H
#define VUF_CONN_H

#include <stdbool.h>

#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vuf_conn;

/* Default per-call timeout, in milliseconds. */
#define VUF_DEFAULT_TIMEOUT_MS 5000

/* Connect to a unix socket at `path`, retrying ECONNREFUSED/ENOENT every few
 * ms until `connect_timeout_ms` has passed (0: one attempt). A path that
 * exists but is not a socket (a regular file, a directory) fails at once
 * with -ENOTSOCK. The new conn owns its socket.
 * Returns: 0; -EINVAL for path or out NULL; -ENAMETOOLONG for a path that
 * does not fit sun_path; -ENOENT / -ECONNREFUSED / -ETIMEDOUT when no
 * back-end answered in time; or connect(2)'s errno. */
int vuf_conn_connect(const char *path, int connect_timeout_ms, struct vuf_conn **out);

/* Create a listening socket bound at `path` (a stale socket file there is
 * unlinked first). *listen_fd is owned by the caller (close it, and unlink
 * the path, when done). -EINVAL for path NULL, -ENAMETOOLONG for a path
 * that does not fit sun_path. */
int vuf_conn_listen(const char *path, int *listen_fd);

/* Accept one connection on a listening socket, waiting at most timeout_ms
 * (negative: forever). */
int vuf_conn_accept(int listen_fd, int timeout_ms, struct vuf_conn **out);

/* Wrap an existing connected stream socket. Takes ownership of `fd`, also on
 * failure. */
int vuf_conn_adopt(int fd, struct vuf_conn **out);

/* A connected pair (socketpair, CLOEXEC). Both are owned by the caller. */
int vuf_conn_pair(struct vuf_conn **a, struct vuf_conn **b);

/* Close the socket and free. NULL is a no-op. */
void vuf_conn_close(struct vuf_conn *c);

/* The socket fd, still owned by the conn (for poll/epoll only). */
int vuf_conn_fd(const struct vuf_conn *c);

/* Per-call timeout for send and recv (ms; negative: wait forever). */
void vuf_conn_set_timeout(struct vuf_conn *c, int timeout_ms);
int vuf_conn_timeout(const struct vuf_conn *c);

/* Channel whose table names messages in the debug trace. Default front-end. */
void vuf_conn_set_channel(struct vuf_conn *c, enum vuf_channel ch);

/*
 * Send header + payload (hdr.size bytes) with m->fds[0..nfds) attached to
 * the first byte. The caller keeps ownership of the fds. Partial writes and
 * EINTR are handled; the whole message is sent before the deadline or
 * -ETIMEDOUT is returned. SIGPIPE is never raised.
 */
int vuf_conn_send(struct vuf_conn *c, const struct vuf_msg *m);

/*
 * Receive one whole message. Only the framing is checked here (size bound,
 * fd count, fds only with the header); vuf_msg_check() applies the protocol
 * table. On success the fds in m->fds[0..nfds) belong to the caller (they
 * are CLOEXEC). On error no fd is left open and m->nfds is 0.
 */
int vuf_conn_recv(struct vuf_conn *c, struct vuf_msg *m);

/* True once the peer has hung up (poll reports HUP/ERR and no data). Does
 * not consume anything. */
bool vuf_conn_peer_closed(const struct vuf_conn *c);

/*
 * The one rule for "this error means the stream is dead", for any error
 * returned by a call that sends or receives on a vhost-user stream
 * (vuf_conn_*, vuf_client_*, vuf_server_process_one(), and the front-end
 * device's operations that pass them on). True when nothing more may be
 * sent or received on it, because the peer is gone or because the two ends
 * no longer agree where the next message starts:
 *   -ECONNRESET, -EPIPE, -ENOTCONN  the peer hung up (or was never there)
 *   -ECONNABORTED  the peer hung up in the middle of a message
 *   -ETIMEDOUT     a message (or its reply) may still arrive: messages carry
 *                  no request id, so a late reply would be taken for the
 *                  answer to the next request
 *   -EBADMSG, -EMSGSIZE, -ETOOMANYREFS  the framing broke: the rest of the
 *                  message was left unread
 * False for everything else, notably -EPROTO: a message that was read whole
 * but broke the protocol (a bad size for its code, a payload that fails its
 * decoder, a reply that answers something else) leaves the stream in step,
 * and whether to go on with such a peer is the caller's policy. -E2BIG, -EBADF, -EINVAL, -ENOTSUP,
 * -EIO and -ENOMEM are refusals before or after a whole exchange. `err` is a negative errno; 0 and
 * positive values give false. Thread-safe (a pure function).
 */
bool vuf_conn_error_is_fatal(int err);

/* Close every fd in m->fds[0..nfds) that is >= 0 and set nfds to 0. */
void vuf_msg_close_fds(struct vuf_msg *m);

#ifdef __cplusplus
}
#endif
#endif
