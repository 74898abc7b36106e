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
 *   -EBADMSG       truncated header: EOF after 1..11 header bytes
 *   -EMSGSIZE      header size field above VUF_MAX_PAYLOAD (nothing more is
 *                  read: the stream is no longer in sync, close it)
 *   -ETOOMANYREFS  more than VUF_MAX_FDS fds arrived (MSG_CTRUNC); every fd
 *                  that did arrive has been closed
 *   -E2BIG         a send was asked to carry more than VUF_MAX_FDS fds
 *   -EPROTO        fds arrived with a payload chunk instead of the header
 *   other          a socket error from the kernel
 * After any error but -E2BIG the connection should be treated as broken.
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
 * ms until `connect_timeout_ms` has passed (0: one attempt). The new conn
 * owns its socket. */
int vuf_conn_connect(const char *path, int connect_timeout_ms, struct vuf_conn **out);

/* Create a listening socket bound at `path` (a stale socket file there is
 * unlinked first). *listen_fd is owned by the caller (close it, and unlink
 * the path, when done). */
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

/* Close every fd in m->fds[0..nfds) that is >= 0 and set nfds to 0. */
void vuf_msg_close_fds(struct vuf_msg *m);

#ifdef __cplusplus
}
#endif
#endif
