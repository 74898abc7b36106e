/* SPDX-License-Identifier: MIT */
/*
 * The receiving side of a vhost-user channel: read one request, check it
 * against the message table, dispatch it, and answer exactly as the
 * protocol says. The same code serves a back-end (front-end requests on the
 * main socket) and a front-end (back-end requests on the SET_BACKEND_REQ_FD
 * socket); the channel only selects the table.
 *
 * Whether a reply is due is decided once, from the request's flags and the
 * protocol features in force *before* the request is handled, so that a
 * SET_PROTOCOL_FEATURES that turns REPLY_ACK on or off is answered by the
 * rules its sender used when it sent it.
 *
 * Fd discipline: request fds are closed after the handler unless it took
 * them (set to -1); reply fds are owned here and closed after sending; a
 * request rejected before dispatch has its fds closed at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vuf/log.h"
#include "vuf/server.h"

struct vuf_server {
    struct vuf_conn *conn;
    struct vuf_server_config cfg;
    uint64_t protocol_features; /* REPLY_ACK / LOG_SHMFD rules */
    uint64_t acked_features;    /* from SET_FEATURES */
};

static const char *srv_name(const struct vuf_server *s, uint32_t code)
{
    return vuf_msg_name(s->cfg.channel, code);
}

static const char *chan_name(const struct vuf_server *s)
{
    return s->cfg.channel == VUF_CH_FRONTEND ? "front-end" : "back-end";
}

static bool size_fits(uint32_t size, uint32_t min, uint32_t max, uint32_t step)
{
    if (size < min || size > max)
        return false;
    return step == 0 || (size - min) % step == 0;
}

/* Only a well-formed request header (version 1, not itself a reply) can be
 * waiting for an answer; anything else gets none, whatever else it says. */
static bool is_request_header(const struct vuf_hdr *h)
{
    return (h->flags & VUF_VERSION_MASK) == VUF_VERSION && !(h->flags & VUF_FLAG_REPLY);
}

static void close_fd_array(int *fds, unsigned n)
{
    if (n > VUF_MAX_FDS)
        n = VUF_MAX_FDS;
    for (unsigned i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

/* Send a bare u64 reply to `req`. */
static int send_u64(struct vuf_server *s, const struct vuf_msg *req, uint64_t v)
{
    struct vuf_msg reply;
    int r = vuf_msg_init_reply(&reply, req, &v, sizeof(v));

    if (r < 0)
        return r;
    reply.nfds = 0;
    r = vuf_conn_send(s->conn, &reply);
    if (r < 0)
        vuf_log(VUF_LOG_DEBUG, "server: %s: reply not sent: %s", srv_name(s, req->hdr.request),
                vuf_strerror(r));
    return r;
}

/*
 * The error form of an "always" reply (server.h): empty where the rule
 * allows an empty reply, the negated errno where the reply is a u64, and
 * zeroes of the smallest legal size otherwise.
 */
static int send_error_form(struct vuf_server *s, const struct vuf_msg_rule *rule,
                           const struct vuf_msg *req, int err)
{
    struct vuf_msg reply;
    uint32_t code = req->hdr.request;
    /* The vring-base replies are vring states, not u64s, though both are
     * 8 bytes and the table does not tell them apart. */
    bool vring_state =
        s->cfg.channel == VUF_CH_FRONTEND &&
        (code == VUF_REQ_GET_VRING_BASE || code == VUF_REQ_GET_VRING_BASE_SKIP_DRAIN);
    int r;

    if (rule->reply_min == 8 && rule->reply_max == 8 && !vring_state)
        return send_u64(s, req, (uint64_t)(int64_t)err);
    r = vuf_msg_init_reply(&reply, req, NULL, 0);
    if (r < 0)
        return r;
    memset(reply.payload.raw, 0, rule->reply_min);
    reply.hdr.size = rule->reply_min;
    reply.nfds = 0;
    r = vuf_conn_send(s->conn, &reply);
    if (r < 0)
        vuf_log(VUF_LOG_DEBUG, "server: %s: error reply not sent: %s",
                srv_name(s, req->hdr.request), vuf_strerror(r));
    return r;
}

/*
 * Answer a request that will not be dispatched (or whose handler failed)
 * with the protocol's error form, if the sender waits for an answer at all.
 * `rule` may be NULL (unknown code): then only a REPLY_ACK ack can be owed.
 */
static int send_rejection(struct vuf_server *s, const struct vuf_msg_rule *rule,
                          const struct vuf_msg *req, int err)
{
    if (!is_request_header(&req->hdr))
        return 0;
    if (!rule) {
        if ((req->hdr.flags & VUF_FLAG_NEED_REPLY) &&
            (s->protocol_features & VUF_PROTO_MASK(REPLY_ACK)))
            return send_u64(s, req, (uint64_t)(int64_t)err);
        return 0;
    }
    if (!vuf_msg_expects_reply(rule, req->hdr.flags, s->protocol_features))
        return 0;
    if (rule->reply == VUF_REPLY_ALWAYS)
        return send_error_form(s, rule, req, err);
    return send_u64(s, req, (uint64_t)(int64_t)err);
}

/* ------------------------------------------------------------------------ */
/* Built-in answers (front-end channel, no handler installed)               */
/* ------------------------------------------------------------------------ */

static int builtin_get_features(struct vuf_server *s, struct vuf_msg *reply)
{
    reply->payload.u64 = s->cfg.features;
    reply->hdr.size = sizeof(uint64_t);
    return 0;
}

static int builtin_get_protocol_features(struct vuf_server *s, struct vuf_msg *reply)
{
    reply->payload.u64 = s->cfg.protocol_features;
    reply->hdr.size = sizeof(uint64_t);
    return 0;
}

/* SET_FEATURES and SET_PROTOCOL_FEATURES are recorded by
 * record_negotiation() on success, whoever handled them; SET_OWNER has
 * nothing to do. */
static int builtin_accept(struct vuf_server *s, struct vuf_msg *reply)
{
    (void)s;
    (void)reply;
    return 0;
}

typedef int (*builtin_fn)(struct vuf_server *s, struct vuf_msg *reply);

/* By front-end request code; the codes and their rules stay the message
 * table's (vuf/wire.h). */
static const builtin_fn builtins[VUF_SERVER_MAX_CODE + 1] = {
    [VUF_REQ_GET_FEATURES] = builtin_get_features,
    [VUF_REQ_GET_PROTOCOL_FEATURES] = builtin_get_protocol_features,
    [VUF_REQ_SET_FEATURES] = builtin_accept,
    [VUF_REQ_SET_PROTOCOL_FEATURES] = builtin_accept,
    [VUF_REQ_SET_OWNER] = builtin_accept,
};

/* Does the handler's "always" reply fit the table's reply rule? */
static bool reply_fits(const struct vuf_msg_rule *rule, const struct vuf_msg *reply)
{
    if (reply->nfds < rule->reply_fds_min || reply->nfds > rule->reply_fds_max)
        return false;
    for (unsigned i = 0; i < reply->nfds; i++)
        if (reply->fds[i] < 0)
            return false;
    return size_fits(reply->hdr.size, rule->reply_min, rule->reply_max, rule->reply_step);
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

int vuf_server_new(struct vuf_conn *conn, const struct vuf_server_config *cfg,
                   struct vuf_server **out)
{
    struct vuf_server *s;

    if (!conn)
        return -EINVAL;
    if (!cfg || !out || (cfg->channel != VUF_CH_FRONTEND && cfg->channel != VUF_CH_BACKEND)) {
        vuf_conn_close(conn);
        return -EINVAL;
    }
    s = calloc(1, sizeof(*s));
    if (!s) {
        vuf_conn_close(conn);
        return -ENOMEM;
    }
    s->conn = conn;
    s->cfg = *cfg;
    vuf_conn_set_channel(conn, cfg->channel);
    *out = s;
    return 0;
}

int vuf_server_new_backend_channel(const struct vuf_server_config *cfg, struct vuf_server **out,
                                   int *peer_fd)
{
    struct vuf_server_config c;
    struct vuf_conn *conn;
    int sv[2];
    int r;

    if (!cfg || !out || !peer_fd)
        return -EINVAL;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    r = vuf_conn_adopt(sv[0], &conn); /* owns sv[0] even on failure */
    if (r < 0) {
        close(sv[1]);
        return r;
    }
    c = *cfg;
    c.channel = VUF_CH_BACKEND;
    r = vuf_server_new(conn, &c, out); /* owns conn even on failure */
    if (r < 0) {
        close(sv[1]);
        return r;
    }
    *peer_fd = sv[1];
    return 0;
}

void vuf_server_free(struct vuf_server *s)
{
    if (!s)
        return;
    vuf_conn_close(s->conn);
    free(s);
}

struct vuf_conn *vuf_server_conn(struct vuf_server *s)
{
    return s ? s->conn : NULL;
}

int vuf_server_fd(const struct vuf_server *s)
{
    return s ? vuf_conn_fd(s->conn) : -1;
}

void vuf_server_set_protocol_features(struct vuf_server *s, uint64_t features)
{
    if (s)
        s->protocol_features = features;
}

uint64_t vuf_server_protocol_features(const struct vuf_server *s)
{
    return s ? s->protocol_features : 0;
}

uint64_t vuf_server_acked_features(const struct vuf_server *s)
{
    return s ? s->acked_features : 0;
}

/* ------------------------------------------------------------------------ */
/* One request: receive, look up, dispatch, answer                          */
/* ------------------------------------------------------------------------ */

static int recv_request(struct vuf_server *s, struct vuf_msg *req)
{
    int r = vuf_conn_recv(s->conn, req);

    if (r < 0) {
        /* The conn closed whatever fds arrived. A clean hang-up or a quiet
         * peer is the caller's business; anything else broke the stream. */
        if (r != -ECONNRESET && r != -ETIMEDOUT)
            vuf_log(VUF_LOG_WARN, "server: %s channel: receive failed: %s", chan_name(s),
                    vuf_strerror(r));
        return r;
    }
    return 0;
}

/*
 * The request's row of the message table, once the request passes it. An
 * unknown code or a request that breaks its row is answered with an error
 * (where one is owed), its fds closed, and the error returned.
 */
static int lookup(struct vuf_server *s, struct vuf_msg *req, const struct vuf_msg_rule **rule)
{
    uint32_t code = req->hdr.request;
    int r, sr;

    *rule = vuf_msg_rule(s->cfg.channel, code);
    if (!*rule) {
        vuf_log(VUF_LOG_WARN,
                "server: unknown %s request %u (flags 0x%x, size %u, %u fds) rejected",
                chan_name(s), code, req->hdr.flags, req->hdr.size, req->nfds);
        vuf_msg_close_fds(req);
        sr = send_rejection(s, NULL, req, -ENOTSUP);
        return sr < 0 ? sr : -ENOTSUP;
    }
    r = vuf_msg_check(req, s->cfg.channel, false);
    if (r < 0) {
        /* Whatever the table check called it (size, fd count, payload),
         * the message was read whole and the stream is still in step:
         * report one "malformed" error the caller can recover from. */
        vuf_log(VUF_LOG_WARN, "server: malformed %s (flags 0x%x, size %u, %u fds) rejected: %s",
                srv_name(s, code), req->hdr.flags, req->hdr.size, req->nfds, vuf_strerror(r));
        vuf_msg_close_fds(req);
        sr = send_rejection(s, *rule, req, -EPROTO);
        return sr < 0 ? sr : -EPROTO;
    }
    return 0;
}

/* Run the installed handler, else the built-in answer (front-end channel
 * only). Request fds the handler did not keep are closed. */
static int dispatch(struct vuf_server *s, struct vuf_msg *req, struct vuf_msg *reply)
{
    uint32_t code = req->hdr.request;
    vuf_server_handler fn = code <= VUF_SERVER_MAX_CODE ? s->cfg.handlers[code] : NULL;
    builtin_fn bi = NULL;
    int hr = -ENOTSUP;

    if (!fn && s->cfg.channel == VUF_CH_FRONTEND && code <= VUF_SERVER_MAX_CODE)
        bi = builtins[code];
    if (fn)
        hr = fn(s->cfg.opaque, req, reply);
    else if (bi)
        hr = bi(s, reply);
    /* The handler has kept what it wanted (set to -1); the rest goes. */
    close_fd_array(req->fds, req->nfds);
    req->nfds = 0;

    if (!fn && !bi)
        vuf_log(VUF_LOG_WARN, "server: %s request %s has no handler", chan_name(s),
                srv_name(s, code));
    else if (hr < 0)
        vuf_log(VUF_LOG_INFO, "server: %s handler failed: %s", srv_name(s, code), vuf_strerror(hr));
    return hr;
}

/* What the reply rules depend on, recorded once its request succeeded. */
static void record_negotiation(struct vuf_server *s, const struct vuf_msg *req, int hr)
{
    if (hr != 0 || s->cfg.channel != VUF_CH_FRONTEND)
        return;
    if (req->hdr.request == VUF_REQ_SET_PROTOCOL_FEATURES)
        s->protocol_features = req->payload.u64;
    else if (req->hdr.request == VUF_REQ_SET_FEATURES)
        s->acked_features = req->payload.u64;
}

/* An "always" row: the handler's reply if it fits the row, else the
 * protocol's error form (*hr becomes -EINVAL for a reply that does not
 * fit). The reply's fds are closed after sending. */
static int send_always_reply(struct vuf_server *s, const struct vuf_msg_rule *rule,
                             const struct vuf_msg *req, struct vuf_msg *reply, int *hr)
{
    uint32_t code = req->hdr.request;
    int sr;

    /* Pin the header: whatever the handler did, this is the reply to this
     * request. */
    reply->hdr.request = code;
    reply->hdr.flags = VUF_VERSION | VUF_FLAG_REPLY;
    if (*hr == 0 && !reply_fits(rule, reply)) {
        vuf_log(VUF_LOG_WARN,
                "server: %s handler built an invalid reply (size %u, %u fds); "
                "sending an error instead",
                srv_name(s, code), reply->hdr.size, reply->nfds);
        *hr = -EINVAL;
    }
    if (*hr == 0) {
        sr = vuf_conn_send(s->conn, reply);
        if (sr < 0)
            vuf_log(VUF_LOG_DEBUG, "server: %s: reply not sent: %s", srv_name(s, code),
                    vuf_strerror(sr));
    } else {
        sr = send_error_form(s, rule, req, *hr);
    }
    close_fd_array(reply->fds, reply->nfds);
    return sr;
}

/* ACK rows, and SET_LOG_BASE under LOG_SHMFD: a u64 status, if owed. */
static int send_ack(struct vuf_server *s, const struct vuf_msg *req, struct vuf_msg *reply,
                    bool expects, int hr)
{
    int sr = 0;

    close_fd_array(reply->fds, reply->nfds);
    if (expects) {
        sr = send_u64(s, req, (uint64_t)(int64_t)hr);
    }
    return sr;
}

int vuf_server_process_one(struct vuf_server *s)
{
    const struct vuf_msg_rule *rule;
    struct vuf_msg req, reply;
    bool expects;
    int r, hr, sr;

    if (!s)
        return -EINVAL;
    r = recv_request(s, &req);
    if (r < 0)
        return r;
    r = lookup(s, &req, &rule);
    if (r < 0)
        return r;
    /* Decided by the rules in force before this request (see the top). */
    expects = vuf_msg_expects_reply(rule, req.hdr.flags, s->protocol_features);
    r = vuf_msg_init_reply(&reply, &req, NULL, 0);
    if (r < 0) {
        vuf_msg_close_fds(&req);
        return r;
    }
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        reply.fds[i] = -1;
    reply.nfds = 0;

    hr = dispatch(s, &req, &reply);
    record_negotiation(s, &req, hr);
    if (rule->reply == VUF_REPLY_ALWAYS)
        sr = send_always_reply(s, rule, &req, &reply, &hr);
    else
        sr = send_ack(s, &req, &reply, expects, hr);
    return sr < 0 ? sr : hr;
}
