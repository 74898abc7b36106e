/* SPDX-License-Identifier: MIT */
/*
 * vuf/server.h - the receiving side of a vhost-user channel: read a request,
 * check it against the message table, dispatch it to a handler table, and
 * reply as the protocol says.
 *
 * One machine serves both directions:
 *   - VUF_CH_FRONTEND: a back-end serving a front-end's requests (1-45) on
 *     the main socket. vuf's reference back-end and the tests are built on it.
 *   - VUF_CH_BACKEND:  a front-end serving the back-end's requests (1-10)
 *     on the SET_BACKEND_REQ_FD socket (see vuf_server_new_backend_channel).
 *
 * Handler contract. A handler gets the validated request and a reply
 * pre-initialised for it (header {code, VERSION|REPLY, 0}); it returns 0 or a
 * negative errno.
 *   - "always"-reply requests: the handler fills reply->payload, sets
 *     reply->hdr.size and may attach fds (reply->fds/nfds; ownership passes
 *     to the server, which closes them after sending). If it fails, the
 *     server sends the protocol's error form: an empty payload where the
 *     reply may be empty (GET_CONFIG), the negated errno as u64 where the
 *     reply is a u64, else zeroes of the reply size.
 *   - "ack" requests: the server sends the u64 ack (0, or the negated errno
 *     as two's complement) iff the request had NEED_REPLY and REPLY_ACK is
 *     negotiated.
 *   - Request fds (req->fds) are owned by the server and closed after the
 *     handler returns; a handler that keeps one sets req->fds[i] = -1.
 * Requests with no handler, unknown codes and malformed messages are
 * answered with an error (when the sender waits for one) and logged; they
 * never crash the server. vuf_server_process_one() then returns the error
 * (-ENOTSUP, -EPROTO, ...) and the caller decides whether to go on.
 *
 * Built-in answers on VUF_CH_FRONTEND when no handler is installed:
 * GET_FEATURES -> cfg.features, GET_PROTOCOL_FEATURES -> cfg.protocol_features,
 * SET_FEATURES / SET_PROTOCOL_FEATURES / SET_OWNER -> recorded, success.
 * Whatever handles SET_PROTOCOL_FEATURES, the server records the value on
 * success so it knows whether REPLY_ACK / LOG_SHMFD are in force.
 *
 * Thread-safety: a server is used by one thread at a time.
 */
#ifndef VUF_SERVER_H
#define VUF_SERVER_H

#include <stdint.h>

#include "vuf/conn.h"
#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vuf_server;

typedef int (*vuf_server_handler)(void *opaque, struct vuf_msg *req, struct vuf_msg *reply);

#define VUF_SERVER_MAX_CODE VUF_REQ_MAX

struct vuf_server_config {
    enum vuf_channel channel;
    uint64_t features;          /* front-end channel built-in GET_FEATURES */
    uint64_t protocol_features; /* front-end channel built-in GET_PROTOCOL_FEATURES */
    vuf_server_handler handlers[VUF_SERVER_MAX_CODE + 1]; /* indexed by code */
    void *opaque;                                         /* passed to handlers, not owned */
};

/* Takes ownership of `conn` (also on failure). The config is copied. */
int vuf_server_new(struct vuf_conn *conn, const struct vuf_server_config *cfg,
                   struct vuf_server **out);

/*
 * Front-end side of the back-end request channel: makes a CLOEXEC stream
 * socketpair, serves one end with a VUF_CH_BACKEND server and returns the
 * other end in *peer_fd (caller owns it: send it with
 * vuf_client_set_backend_req_fd() and then close it). cfg->channel is
 * ignored.
 */
int vuf_server_new_backend_channel(const struct vuf_server_config *cfg, struct vuf_server **out,
                                   int *peer_fd);

/* Closes the connection and frees. NULL is a no-op. */
void vuf_server_free(struct vuf_server *s);

struct vuf_conn *vuf_server_conn(struct vuf_server *s);
/* The socket to poll for readability; owned by the server. */
int vuf_server_fd(const struct vuf_server *s);

/* Protocol features in force for the reply rules (REPLY_ACK, LOG_SHMFD).
 * Set automatically on the front-end channel; a front-end sets it on its
 * back-end channel after negotiation. */
void vuf_server_set_protocol_features(struct vuf_server *s, uint64_t features);
uint64_t vuf_server_protocol_features(const struct vuf_server *s);
/* Virtio features recorded from SET_FEATURES (front-end channel). */
uint64_t vuf_server_acked_features(const struct vuf_server *s);

/*
 * Wait (up to the conn's timeout) for one request and serve it. Returns 0,
 * -ECONNRESET when the peer hung up cleanly, or another negative errno
 * (the request was answered with an error first where possible).
 */
int vuf_server_process_one(struct vuf_server *s);

#ifdef __cplusplus
}
#endif
#endif
