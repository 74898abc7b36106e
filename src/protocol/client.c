/* SPDX-License-Identifier: MIT */
/*
 * The front-end's typed client: one function per front-end request.
 *
 * Every request goes through client_call(): it builds the message, runs the
 * request-side table check on it before anything is sent (a request the
 * back-end would have to reject is the caller's mistake, so -EINVAL and
 * nothing on the wire), sends it, and, when the table says a reply is due,
 * receives the reply and checks its generic shape against the table's reply
 * rule. The per-request functions then check what only they know: that the
 * reply echoes the request (ring index, config window) and that its fds agree
 * with its payload.
 *
 * Fd discipline: every fd that arrives with a reply is either handed to the
 * caller or closed before returning, on every path.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "vuf/client.h"
#include "vuf/log.h"

struct vuf_client {
    struct vuf_conn *conn;
    uint64_t protocol_features; /* recorded after SET_PROTOCOL_FEATURES succeeded */
    uint64_t features;          /* recorded after SET_FEATURES succeeded */
    bool need_reply;
};

/* ------------------------------------------------------------------------ */
/* Plumbing                                                                 */
/* ------------------------------------------------------------------------ */

static bool size_fits(uint32_t size, uint32_t min, uint32_t max, uint32_t step)
{
    if (size < min || size > max)
        return false;
    return step == 0 || (size - min) % step == 0;
}

/* Close the reply's fds and report a protocol violation for request `code`. */
static int bad_reply(uint32_t code, struct vuf_msg *reply, const char *why)
{
    vuf_log(VUF_LOG_WARN, "client: %s: back-end reply rejected: %s (flags 0x%x, size %u, %u fds)",
            vuf_request_name(code), why, reply->hdr.flags, reply->hdr.size, reply->nfds);
    vuf_msg_close_fds(reply);
    return -EPROTO;
}

/*
 * Generic reply rules (vhost-user spec, "Header"): a reply carries exactly
 * VERSION|REPLY, the request's code, and a size and fd count allowed by the
 * table's reply columns. Closes the fds on failure.
 */
static int check_reply_shape(const struct vuf_msg_rule *rule, struct vuf_msg *reply)
{
    if (reply->hdr.flags != (VUF_VERSION | VUF_FLAG_REPLY))
        return bad_reply(rule->code, reply, "flags are not exactly VERSION|REPLY");
    if (reply->hdr.request != rule->code)
        return bad_reply(rule->code, reply, "reply to another request code");
    if (!size_fits(reply->hdr.size, rule->reply_min, rule->reply_max, rule->reply_step))
        return bad_reply(rule->code, reply, "payload size outside the reply rule");
    if (reply->nfds < rule->reply_fds_min || reply->nfds > rule->reply_fds_max)
        return bad_reply(rule->code, reply, "wrong number of fds");
    return 0;
}

/*
 * Send one request and, if the table says one is due, receive its reply.
 * Returns 1 with *reply filled (its fds are the caller's), 0 when no reply
 * is due, or a negative errno (no fd left open).
 *
 * NEED_REPLY is set on "ack" requests only: "always" requests reply anyway
 * and a second reply must not be asked for, and SET_LOG_BASE's reply is
 * governed by LOG_SHMFD alone.
 */
static int client_call(struct vuf_client *c, uint32_t code, const void *payload, uint32_t size,
                       const int *fds, unsigned nfds, struct vuf_msg *reply)
{
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_FRONTEND, code);
    const char *name = vuf_request_name(code);
    struct vuf_msg req;
    uint32_t flags = 0;
    int r;

    if (!rule || nfds > VUF_MAX_FDS)
        return -EINVAL;
    if (rule->reply == VUF_REPLY_ACK && c->need_reply &&
        (c->protocol_features & VUF_PROTO_MASK(REPLY_ACK)))
        flags |= VUF_FLAG_NEED_REPLY;
    /* POSTCOPY_END always replies, but QEMU also sets NEED_REPLY on it and
     * rust-vmm back-ends only answer when it is set; a second reply is never
     * due ("a message that already replies ignores NEED_REPLY"). */
    if (code == VUF_REQ_POSTCOPY_END)
        flags |= VUF_FLAG_NEED_REPLY;

    r = vuf_msg_init(&req, code, flags, payload, size);
    if (r < 0)
        return -EINVAL;
    for (unsigned i = 0; i < nfds; i++)
        req.fds[i] = fds[i];
    req.nfds = nfds;

    r = vuf_msg_check(&req, VUF_CH_FRONTEND, false);
    if (r < 0) {
        vuf_log(VUF_LOG_DEBUG, "client: %s: request refused before sending (%s)", name,
                vuf_strerror(r));
        return -EINVAL;
    }
    /* A back-end may drop the connection on a request it did not agree to
     * (DPDK closes the socket on GET_CONFIG without CONFIG), so refuse it
     * here, before anything is on the wire; a bad argument still gives
     * -EINVAL first. */
    r = vuf_msg_needs_met(rule, c->protocol_features, c->features);
    if (r < 0) {
        if (rule->need_pf >= 0 && !(c->protocol_features & (1ull << rule->need_pf)))
            vuf_log(VUF_LOG_DEBUG, "client: %s: not sent: protocol feature %s not negotiated", name,
                    vuf_protocol_feature_name((unsigned)rule->need_pf));
        else
            vuf_log(VUF_LOG_DEBUG, "client: %s: not sent: virtio feature bit %d not acked", name,
                    rule->need_vf);
        return r;
    }

    r = vuf_conn_send(c->conn, &req);
    if (r < 0) {
        vuf_log(VUF_LOG_DEBUG, "client: %s: send failed: %s", name, vuf_strerror(r));
        return r;
    }
    if (!vuf_msg_expects_reply(rule, req.hdr.flags, c->protocol_features))
        return 0;

    r = vuf_conn_recv(c->conn, reply);
    if (r < 0) {
        vuf_log(VUF_LOG_DEBUG, "client: %s: no reply: %s", name, vuf_strerror(r));
        return r;
    }
    r = check_reply_shape(rule, reply);
    if (r < 0)
        return r;
    return 1;
}

/* A u64 status from the back-end: 0 is success, anything else -EIO. */
static int status_result(uint32_t code, uint64_t v)
{
    if (v == 0)
        return 0;
    vuf_log(VUF_LOG_WARN, "client: %s: back-end reported failure 0x%llx", vuf_request_name(code),
            (unsigned long long)v);
    return -EIO;
}

/* A request whose reply, if any, is a u64 status: 0 success, else -EIO.
 * Used for the "ack" rows and for SET_LOG_BASE. */
static int call_status(struct vuf_client *c, uint32_t code, const void *payload, uint32_t size,
                       const int *fds, unsigned nfds)
{
    struct vuf_msg reply;
    uint64_t v;
    int r = client_call(c, code, payload, size, fds, nfds, &reply);

    if (r <= 0)
        return r;
    if (vuf_decode_u64(&reply, &v) < 0)
        return bad_reply(code, &reply, "undecodable u64");
    vuf_msg_close_fds(&reply); /* none allowed by the shape check; belt and braces */
    return status_result(code, v);
}

/* A request that always gets a reply: 0 with *reply filled, or an error. */
static int call_reply(struct vuf_client *c, uint32_t code, const void *payload, uint32_t size,
                      const int *fds, unsigned nfds, struct vuf_msg *reply)
{
    int r = client_call(c, code, payload, size, fds, nfds, reply);

    if (r == 0) /* the table says this request always replies */
        return -EPROTO;
    return r < 0 ? r : 0;
}

/* call_reply for a reply whose payload is a u64: 0 with *v filled and
 * the reply's fds still open in *reply, or an error. */
static int call_reply_u64(struct vuf_client *c, uint32_t code, const void *payload, uint32_t size,
                          const int *fds, unsigned nfds, struct vuf_msg *reply, uint64_t *v)
{
    int r = call_reply(c, code, payload, size, fds, nfds, reply);

    if (r < 0)
        return r;
    if (vuf_decode_u64(reply, v) < 0)
        return bad_reply(code, reply, "undecodable u64");
    return 0;
}

/* A request with no payload whose reply is a bare u64. */
static int get_u64(struct vuf_client *c, uint32_t code, uint64_t *out)
{
    struct vuf_msg reply;
    int r;

    if (!c || !out)
        return -EINVAL;
    r = call_reply_u64(c, code, NULL, 0, NULL, 0, &reply, out);
    if (r < 0)
        return r;
    vuf_msg_close_fds(&reply);
    return 0;
}

/* A request whose payload is one u64. */
static int set_u64(struct vuf_client *c, uint32_t code, uint64_t v)
{
    if (!c)
        return -EINVAL;
    return call_status(c, code, &v, sizeof(v), NULL, 0);
}

static int set_state(struct vuf_client *c, uint32_t code, uint32_t index, uint32_t num)
{
    struct vuf_vring_state st = {.index = index, .num = num};

    if (!c)
        return -EINVAL;
    return call_status(c, code, &st, sizeof(st), NULL, 0);
}

/* Requests whose only argument is an fd (SET_LOG_FD, SET_BACKEND_REQ_FD,
 * GPU_SET_SOCKET). */
static int set_fd_only(struct vuf_client *c, uint32_t code, int fd)
{
    if (!c || fd < 0)
        return -EINVAL;
    return call_status(c, code, NULL, 0, &fd, 1);
}

/* SET_VRING_KICK/CALL/ERR: bits 0-7 index, bit 8 "no fd" (spec: vring-file). */
static int set_vring_file(struct vuf_client *c, uint32_t code, uint32_t index, int fd)
{
    uint64_t v;

    if (!c || index > VUF_VRING_IDX_MASK || fd < -1)
        return -EINVAL;
    v = index;
    if (fd < 0) {
        v |= VUF_VRING_NOFD;
        return call_status(c, code, &v, sizeof(v), NULL, 0);
    }
    return call_status(c, code, &v, sizeof(v), &fd, 1);
}

/* GET_VRING_BASE and GET_VRING_BASE_SKIP_DRAIN: the request's num must be 0
 * and the reply must name the same ring. */
static int get_vring_base(struct vuf_client *c, uint32_t code, uint32_t index, uint32_t *base)
{
    struct vuf_vring_state st = {.index = index, .num = 0};
    struct vuf_msg reply;
    int r;

    if (!c || !base)
        return -EINVAL;
    r = call_reply(c, code, &st, sizeof(st), NULL, 0, &reply);
    if (r < 0)
        return r;
    if (vuf_decode_vring_state(&reply, &st) < 0)
        return bad_reply(code, &reply, "undecodable vring state");
    if (st.index != index)
        return bad_reply(code, &reply, "reply names another ring");
    vuf_msg_close_fds(&reply);
    *base = st.num;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                 */
/* ------------------------------------------------------------------------ */

int vuf_client_new(struct vuf_conn *conn, struct vuf_client **out)
{
    struct vuf_client *c;

    if (!conn)
        return -EINVAL;
    if (!out) {
        vuf_conn_close(conn);
        return -EINVAL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        vuf_conn_close(conn);
        return -ENOMEM;
    }
    c->conn = conn;
    c->need_reply = true;
    vuf_conn_set_channel(conn, VUF_CH_FRONTEND);
    *out = c;
    return 0;
}

void vuf_client_free(struct vuf_client *c)
{
    if (!c)
        return;
    vuf_conn_close(c->conn);
    free(c);
}

struct vuf_conn *vuf_client_conn(struct vuf_client *c)
{
    return c ? c->conn : NULL;
}

uint64_t vuf_client_protocol_features(const struct vuf_client *c)
{
    return c ? c->protocol_features : 0;
}

void vuf_client_set_need_reply(struct vuf_client *c, bool on)
{
    if (c)
        c->need_reply = on;
}

/* ------------------------------------------------------------------------ */
/* Requests 1-45                                                            */
/* ------------------------------------------------------------------------ */

int vuf_client_get_features(struct vuf_client *c, uint64_t *features)
{
    return get_u64(c, VUF_REQ_GET_FEATURES, features);
}

int vuf_client_set_features(struct vuf_client *c, uint64_t features)
{
    int r = set_u64(c, VUF_REQ_SET_FEATURES, features);

    /* Gates SET_VRING_ENABLE (bit 30); recorded only on success. */
    if (r == 0)
        c->features = features;
    return r;
}

int vuf_client_set_owner(struct vuf_client *c)
{
    if (!c)
        return -EINVAL;
    return call_status(c, VUF_REQ_SET_OWNER, NULL, 0, NULL, 0);
}

int vuf_client_reset_owner(struct vuf_client *c)
{
    if (!c)
        return -EINVAL;
    return call_status(c, VUF_REQ_RESET_OWNER, NULL, 0, NULL, 0);
}

int vuf_client_set_mem_table(struct vuf_client *c, const struct vuf_mem_region *regions,
                             const int *fds, unsigned n)
{
    struct vuf_mem_table t;

    if (!c || !regions || !fds || n < 1 || n > VUF_MEM_TABLE_MAX)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++)
        if (fds[i] < 0)
            return -EINVAL;
    memset(&t, 0, sizeof(t));
    t.nregions = n;
    memcpy(t.regions, regions, n * sizeof(regions[0]));
    /* Only the used part of the array travels (as QEMU sends it). */
    return call_status(c, VUF_REQ_SET_MEM_TABLE, &t, VUF_MEM_TABLE_SIZE(n), fds, n);
}

int vuf_client_set_log_base(struct vuf_client *c, uint64_t size, uint64_t offset, int fd)
{
    struct vuf_log lg = {.mmap_size = size, .mmap_offset = offset};
    struct vuf_msg reply;
    uint64_t v;
    int r;

    if (!c || fd < -1)
        return -EINVAL;
    /* The reply (LOG_SHMFD only) is decided by the table's LOG rule. The
     * spec makes it a u64 status; rust-vmm back-ends echo the 16-byte log
     * struct instead, which QEMU accepts too (it checks only the code). */
    r = client_call(c, VUF_REQ_SET_LOG_BASE, &lg, sizeof(lg), &fd, fd >= 0 ? 1 : 0, &reply);
    if (r <= 0)
        return r;
    if (reply.hdr.size == sizeof(lg)) {
        vuf_msg_close_fds(&reply);
        return 0;
    }
    if (vuf_decode_u64(&reply, &v) < 0)
        return bad_reply(VUF_REQ_SET_LOG_BASE, &reply, "undecodable u64");
    vuf_msg_close_fds(&reply);
    /* libvhost-user (QEMU 7.2's qemu-storage-daemon) leaves the request's
     * first u64 in place: the reply echoes mmap_size. */
    if (v == size)
        return 0;
    return status_result(VUF_REQ_SET_LOG_BASE, v);
}

int vuf_client_set_log_fd(struct vuf_client *c, int fd)
{
    return set_fd_only(c, VUF_REQ_SET_LOG_FD, fd);
}

int vuf_client_set_vring_num(struct vuf_client *c, uint32_t index, uint32_t num)
{
    return set_state(c, VUF_REQ_SET_VRING_NUM, index, num);
}

int vuf_client_set_vring_addr(struct vuf_client *c, const struct vuf_vring_addr *addr)
{
    if (!c || !addr)
        return -EINVAL;
    return call_status(c, VUF_REQ_SET_VRING_ADDR, addr, sizeof(*addr), NULL, 0);
}

int vuf_client_set_vring_base(struct vuf_client *c, uint32_t index, uint32_t base)
{
    return set_state(c, VUF_REQ_SET_VRING_BASE, index, base);
}

int vuf_client_get_vring_base(struct vuf_client *c, uint32_t index, uint32_t *base)
{
    return get_vring_base(c, VUF_REQ_GET_VRING_BASE, index, base);
}

int vuf_client_set_vring_kick(struct vuf_client *c, uint32_t index, int fd)
{
    return set_vring_file(c, VUF_REQ_SET_VRING_KICK, index, fd);
}

int vuf_client_set_vring_call(struct vuf_client *c, uint32_t index, int fd)
{
    return set_vring_file(c, VUF_REQ_SET_VRING_CALL, index, fd);
}

int vuf_client_set_vring_err(struct vuf_client *c, uint32_t index, int fd)
{
    return set_vring_file(c, VUF_REQ_SET_VRING_ERR, index, fd);
}

int vuf_client_get_protocol_features(struct vuf_client *c, uint64_t *features)
{
    return get_u64(c, VUF_REQ_GET_PROTOCOL_FEATURES, features);
}

int vuf_client_set_protocol_features(struct vuf_client *c, uint64_t features)
{
    int r = set_u64(c, VUF_REQ_SET_PROTOCOL_FEATURES, features);

    /* Recorded only on success: the ack rules of this very request follow
     * what was in force before it (the back-end decides the same way). */
    if (r == 0)
        c->protocol_features = features;
    return r;
}

int vuf_client_get_queue_num(struct vuf_client *c, uint64_t *num)
{
    return get_u64(c, VUF_REQ_GET_QUEUE_NUM, num);
}

int vuf_client_set_vring_enable(struct vuf_client *c, uint32_t index, bool enable)
{
    return set_state(c, VUF_REQ_SET_VRING_ENABLE, index, enable ? 1 : 0);
}

int vuf_client_send_rarp(struct vuf_client *c, const uint8_t mac[6])
{
    uint64_t v = 0;

    if (!c || !mac)
        return -EINVAL;
    /* The MAC is the first six bytes of the u64 as it lies in memory. */
    memcpy(&v, mac, 6);
    return call_status(c, VUF_REQ_SEND_RARP, &v, sizeof(v), NULL, 0);
}

int vuf_client_net_set_mtu(struct vuf_client *c, uint16_t mtu)
{
    return set_u64(c, VUF_REQ_NET_SET_MTU, mtu);
}

int vuf_client_set_backend_req_fd(struct vuf_client *c, int fd)
{
    return set_fd_only(c, VUF_REQ_SET_BACKEND_REQ_FD, fd);
}

int vuf_client_iotlb_msg(struct vuf_client *c, const struct vuf_iotlb_msg *msg)
{
    if (!c || !msg)
        return -EINVAL;
    return call_status(c, VUF_REQ_IOTLB_MSG, msg, sizeof(*msg), NULL, 0);
}

int vuf_client_set_vring_endian(struct vuf_client *c, uint32_t index, bool big_endian)
{
    return set_state(c, VUF_REQ_SET_VRING_ENDIAN, index, big_endian ? 1 : 0);
}

int vuf_client_get_config(struct vuf_client *c, uint32_t offset, uint32_t flags, void *buf,
                          uint32_t size)
{
    struct vuf_config cfg;
    struct vuf_msg reply;
    int r;

    if (!c || !buf || size == 0 || size > VUF_CONFIG_MAX)
        return -EINVAL;
    memset(&cfg, 0, sizeof(cfg));
    cfg.offset = offset;
    cfg.size = size;
    cfg.flags = flags;
    r = call_reply(c, VUF_REQ_GET_CONFIG, &cfg, VUF_CONFIG_HDR_SIZE + size, NULL, 0, &reply);
    if (r < 0)
        return r;
    /* An empty reply is the back-end's way of refusing (spec: GET_CONFIG). */
    if (reply.hdr.size == 0) {
        vuf_log(VUF_LOG_WARN, "client: GET_CONFIG: back-end refused offset %u size %u", offset,
                size);
        vuf_msg_close_fds(&reply);
        return -EIO;
    }
    if (vuf_decode_config(&reply, &cfg) < 0)
        return bad_reply(VUF_REQ_GET_CONFIG, &reply, "undecodable config");
    if (reply.hdr.size != VUF_CONFIG_HDR_SIZE + size || cfg.size != size)
        return bad_reply(VUF_REQ_GET_CONFIG, &reply, "config size differs from the request");
    if (cfg.offset != offset)
        return bad_reply(VUF_REQ_GET_CONFIG, &reply, "config offset differs from the request");
    vuf_msg_close_fds(&reply);
    memcpy(buf, cfg.region, size);
    return 0;
}

int vuf_client_set_config(struct vuf_client *c, uint32_t offset, uint32_t flags, const void *buf,
                          uint32_t size)
{
    struct vuf_config cfg;

    if (!c || !buf || size == 0 || size > VUF_CONFIG_MAX)
        return -EINVAL;
    memset(&cfg, 0, sizeof(cfg));
    cfg.offset = offset;
    cfg.size = size;
    cfg.flags = flags;
    memcpy(cfg.region, buf, size);
    return call_status(c, VUF_REQ_SET_CONFIG, &cfg, VUF_CONFIG_HDR_SIZE + size, NULL, 0);
}

int vuf_client_create_crypto_session(struct vuf_client *c, struct vuf_crypto_session *s)
{
    struct vuf_msg reply;
    int r;

    if (!c || !s)
        return -EINVAL;
    r = call_reply(c, VUF_REQ_CREATE_CRYPTO_SESSION, s, sizeof(*s), NULL, 0, &reply);
    if (r < 0)
        return r;
    /* The session layout is QEMU's and opaque to vuf: the table's size
     * check is all there is to validate. */
    memcpy(s, reply.payload.raw, sizeof(*s));
    vuf_msg_close_fds(&reply);
    return 0;
}

int vuf_client_close_crypto_session(struct vuf_client *c, uint64_t session_id)
{
    return set_u64(c, VUF_REQ_CLOSE_CRYPTO_SESSION, session_id);
}

int vuf_client_postcopy_advise(struct vuf_client *c, int *uffd)
{
    struct vuf_msg reply;
    int r;

    if (!c || !uffd)
        return -EINVAL;
    r = call_reply(c, VUF_REQ_POSTCOPY_ADVISE, NULL, 0, NULL, 0, &reply);
    if (r < 0)
        return r;
    /* The shape check guarantees an empty payload and exactly one fd. */
    *uffd = reply.fds[0];
    return 0;
}

int vuf_client_postcopy_listen(struct vuf_client *c)
{
    if (!c)
        return -EINVAL;
    return call_status(c, VUF_REQ_POSTCOPY_LISTEN, NULL, 0, NULL, 0);
}

int vuf_client_postcopy_end(struct vuf_client *c)
{
    uint64_t v;
    int r = get_u64(c, VUF_REQ_POSTCOPY_END, &v);

    if (r < 0)
        return r;
    return status_result(VUF_REQ_POSTCOPY_END, v);
}

int vuf_client_get_inflight_fd(struct vuf_client *c, uint16_t num_queues, uint16_t queue_size,
                               struct vuf_inflight *out, int *fd)
{
    struct vuf_inflight in = {.num_queues = num_queues, .queue_size = queue_size};
    struct vuf_msg reply;
    int r;

    if (!c || !out || !fd)
        return -EINVAL;
    r = call_reply(c, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), NULL, 0, &reply);
    if (r < 0)
        return r;
    if (vuf_decode_inflight(&reply, out) < 0)
        return bad_reply(VUF_REQ_GET_INFLIGHT_FD, &reply, "undecodable inflight");
    /* mmap_size 0 means "no inflight area" and comes without an fd; any
     * other size must come with the area's fd. */
    if (out->mmap_size == 0) {
        if (reply.nfds != 0)
            return bad_reply(VUF_REQ_GET_INFLIGHT_FD, &reply, "fd without an inflight area");
        *fd = -1;
        return 0;
    }
    if (reply.nfds != 1)
        return bad_reply(VUF_REQ_GET_INFLIGHT_FD, &reply, "inflight area without an fd");
    *fd = reply.fds[0];
    return 0;
}

int vuf_client_set_inflight_fd(struct vuf_client *c, const struct vuf_inflight *in, int fd)
{
    if (!c || !in || fd < 0)
        return -EINVAL;
    return call_status(c, VUF_REQ_SET_INFLIGHT_FD, in, sizeof(*in), &fd, 1);
}

int vuf_client_gpu_set_socket(struct vuf_client *c, int fd)
{
    return set_fd_only(c, VUF_REQ_GPU_SET_SOCKET, fd);
}

int vuf_client_reset_device(struct vuf_client *c)
{
    if (!c)
        return -EINVAL;
    return call_status(c, VUF_REQ_RESET_DEVICE, NULL, 0, NULL, 0);
}

int vuf_client_vring_kick(struct vuf_client *c, uint32_t index)
{
    return set_state(c, VUF_REQ_VRING_KICK, index, 0);
}

int vuf_client_get_max_mem_slots(struct vuf_client *c, uint64_t *slots)
{
    return get_u64(c, VUF_REQ_GET_MAX_MEM_SLOTS, slots);
}

int vuf_client_add_mem_reg(struct vuf_client *c, const struct vuf_mem_region *r, int fd)
{
    struct vuf_mem_single s = {.padding = 0};

    if (!c || !r || fd < 0)
        return -EINVAL;
    s.region = *r;
    return call_status(c, VUF_REQ_ADD_MEM_REG, &s, sizeof(s), &fd, 1);
}

int vuf_client_rem_mem_reg(struct vuf_client *c, const struct vuf_mem_region *r)
{
    struct vuf_mem_single s = {.padding = 0};

    if (!c || !r)
        return -EINVAL;
    s.region = *r;
    /* The spec matches regions by address and size; no fd travels. */
    return call_status(c, VUF_REQ_REM_MEM_REG, &s, sizeof(s), NULL, 0);
}

int vuf_client_set_status(struct vuf_client *c, uint8_t status)
{
    return set_u64(c, VUF_REQ_SET_STATUS, status);
}

int vuf_client_get_status(struct vuf_client *c, uint8_t *status)
{
    uint64_t v;
    int r;

    if (!status)
        return -EINVAL;
    r = get_u64(c, VUF_REQ_GET_STATUS, &v);
    if (r < 0)
        return r;
    /* The device status is one byte (virtio 1.x, 2.1). */
    if (v > 0xff) {
        vuf_log(VUF_LOG_WARN, "client: GET_STATUS: status 0x%llx does not fit a byte",
                (unsigned long long)v);
        return -EPROTO;
    }
    *status = (uint8_t)v;
    return 0;
}

int vuf_client_get_shared_object(struct vuf_client *c, const struct vuf_shared_object *uuid,
                                 int *fd)
{
    struct vuf_msg reply;
    uint64_t v;
    int r;

    if (!c || !uuid || !fd)
        return -EINVAL;
    r = call_reply_u64(c, VUF_REQ_GET_SHARED_OBJECT, uuid, sizeof(*uuid), NULL, 0, &reply, &v);
    if (r < 0)
        return r;
    if (v != 0) {
        vuf_log(VUF_LOG_WARN, "client: GET_SHARED_OBJECT: back-end reported failure 0x%llx",
                (unsigned long long)v);
        vuf_msg_close_fds(&reply);
        return -EIO;
    }
    *fd = reply.nfds ? reply.fds[0] : -1;
    return 0;
}

int vuf_client_set_device_state_fd(struct vuf_client *c, uint32_t direction, uint32_t phase, int fd,
                                   int *backend_fd)
{
    struct vuf_device_state st = {.direction = direction, .phase = phase};
    struct vuf_msg reply;
    uint64_t v;
    int r;

    if (!c || fd < 0 || !backend_fd)
        return -EINVAL;
    r = call_reply_u64(c, VUF_REQ_SET_DEVICE_STATE_FD, &st, sizeof(st), &fd, 1, &reply, &v);
    if (r < 0)
        return r;
    if (v & VUF_STATE_REPLY_ERR_MASK) {
        vuf_log(VUF_LOG_WARN, "client: SET_DEVICE_STATE_FD: back-end reported error %llu",
                (unsigned long long)(v & VUF_STATE_REPLY_ERR_MASK));
        vuf_msg_close_fds(&reply);
        return -EIO;
    }
    if (v & ~(VUF_STATE_REPLY_ERR_MASK | VUF_STATE_REPLY_NOFD))
        return bad_reply(VUF_REQ_SET_DEVICE_STATE_FD, &reply, "unknown bits in the reply");
    if (v & VUF_STATE_REPLY_NOFD) {
        if (reply.nfds != 0)
            return bad_reply(VUF_REQ_SET_DEVICE_STATE_FD, &reply, "NOFD but an fd came");
        *backend_fd = -1;
        return 0;
    }
    if (reply.nfds != 1)
        return bad_reply(VUF_REQ_SET_DEVICE_STATE_FD, &reply, "no NOFD and no fd");
    *backend_fd = reply.fds[0];
    return 0;
}

int vuf_client_check_device_state(struct vuf_client *c)
{
    uint64_t v;
    int r = get_u64(c, VUF_REQ_CHECK_DEVICE_STATE, &v);

    if (r < 0)
        return r;
    return status_result(VUF_REQ_CHECK_DEVICE_STATE, v);
}

int vuf_client_get_shmem_config(struct vuf_client *c, struct vuf_shmem_config *out)
{
    struct vuf_msg reply;
    int r;

    if (!c || !out)
        return -EINVAL;
    r = call_reply(c, VUF_REQ_GET_SHMEM_CONFIG, NULL, 0, NULL, 0, &reply);
    if (r < 0)
        return r;
    if (vuf_decode_shmem_config(&reply, out) < 0)
        return bad_reply(VUF_REQ_GET_SHMEM_CONFIG, &reply, "inconsistent shmem config");
    vuf_msg_close_fds(&reply);
    return 0;
}

int vuf_client_get_vring_base_skip_drain(struct vuf_client *c, uint32_t index, uint32_t *base)
{
    return get_vring_base(c, VUF_REQ_GET_VRING_BASE_SKIP_DRAIN, index, base);
}
