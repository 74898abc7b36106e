/* SPDX-License-Identifier: MIT */
/*
 * The back-end's sending side of the back-end request channel (vhost-user
 * spec, back-end requests 1-10). The front-end's side is server.c with
 * VUF_CH_BACKEND.
 *
 * Every request is checked against the message table before anything goes
 * on the wire: a malformed request is the caller's bug (-EINVAL), never the
 * front-end's problem. Replies are checked strictly, as QEMU and crosvm do
 * for theirs: flags exactly VERSION|REPLY, the same request code, the reply
 * size and fd count of the table.
 *
 * The table's "needs" column (CONFIG for CONFIG_CHANGE_MSG, SHMEM for the
 * maps, ...) is not checked here: this layer sends on a bare connection and
 * does not know what was negotiated. A back-end that does checks
 * vuf_msg_needs_met() first (the reference back-end's control socket,
 * backend/control.c, does not: it sends what it is told).
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "vuf/breq.h"
#include "vuf/log.h"

static bool size_fits(uint32_t size, uint16_t min, uint16_t max, uint16_t step)
{
    if (size < min || size > max)
        return false;
    return step == 0 || (size - min) % step == 0;
}

/* Table rules for an outgoing request; -EINVAL if it breaks one. */
static int check_request(uint32_t code, const void *payload, uint32_t size, const int *fds,
                         unsigned nfds, const struct vuf_msg_rule **rule_out)
{
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_BACKEND, code);

    if (!rule) {
        vuf_log(VUF_LOG_ERROR, "back-end request %u: unknown code", code);
        return -EINVAL;
    }
    if (!size_fits(size, rule->size_min, rule->size_max, rule->size_step) ||
        (size > 0 && !payload)) {
        vuf_log(VUF_LOG_ERROR, "back-end request %s: bad payload size %u", rule->name, size);
        return -EINVAL;
    }
    if (nfds < rule->fds_min || nfds > rule->fds_max || nfds > VUF_MAX_FDS || (nfds > 0 && !fds)) {
        vuf_log(VUF_LOG_ERROR, "back-end request %s: %u fds, table allows %u..%u", rule->name, nfds,
                rule->fds_min, rule->fds_max);
        return -EINVAL;
    }
    for (unsigned i = 0; i < nfds; i++)
        if (fds[i] < 0) {
            vuf_log(VUF_LOG_ERROR, "back-end request %s: fd %u is %d", rule->name, i, fds[i]);
            return -EINVAL;
        }
    *rule_out = rule;
    return 0;
}

/*
 * Read and check the front-end's reply to `rule`'s request. On success the
 * u64 is in *value and, when the table allows a reply fd
 * (SHARED_OBJECT_LOOKUP), that fd (or -1) is in *fd_out, owned by the
 * caller; with fd_out NULL a received fd is closed.
 */
static int recv_reply(struct vuf_conn *c, const struct vuf_msg_rule *rule, uint64_t *value,
                      int *fd_out)
{
    const uint32_t want_flags = VUF_VERSION | VUF_FLAG_REPLY;
    struct vuf_msg reply;
    int r;

    r = vuf_conn_recv(c, &reply);
    if (r < 0) {
        vuf_log(VUF_LOG_WARN, "back-end request %s: no reply: %s", rule->name, vuf_strerror(r));
        return r;
    }
    /* QEMU accepts a reply only with flags == 0x5 exactly; so do we. */
    if (reply.hdr.flags != want_flags || reply.hdr.request != rule->code ||
        !size_fits(reply.hdr.size, rule->reply_min, rule->reply_max, rule->reply_step) ||
        reply.nfds < rule->reply_fds_min || reply.nfds > rule->reply_fds_max ||
        vuf_decode_u64(&reply, value) < 0) {
        vuf_log(VUF_LOG_WARN,
                "back-end request %s: bad reply (request %u flags 0x%x size %u fds %u)", rule->name,
                reply.hdr.request, reply.hdr.flags, reply.hdr.size, reply.nfds);
        vuf_msg_close_fds(&reply);
        return -EPROTO;
    }
    if (fd_out) {
        *fd_out = reply.nfds ? reply.fds[0] : -1;
        reply.nfds = 0;
    }
    vuf_msg_close_fds(&reply);
    return 0;
}

static int breq_send(struct vuf_conn *c, uint32_t code, const void *payload, uint32_t size,
                     const int *fds, unsigned nfds, bool need_reply, uint64_t *ack, int *fd_out)
{
    const struct vuf_msg_rule *rule = NULL;
    struct vuf_msg m;
    uint64_t value = 0;
    int r;

    if (fd_out)
        *fd_out = -1;
    if (ack)
        *ack = 0;
    if (!c)
        return -EINVAL;
    r = check_request(code, payload, size, fds, nfds, &rule);
    if (r < 0)
        return r;
    r = vuf_msg_init(&m, code, need_reply ? VUF_FLAG_NEED_REPLY : 0, payload, size);
    if (r < 0)
        return -EINVAL;
    for (unsigned i = 0; i < nfds; i++)
        m.fds[i] = fds[i];
    m.nfds = nfds;
    /* The decoders' semantic rules (SHMEM_MAP flags and overflow, ...) are
     * the receiver's too: a request that fails them would only be refused. */
    r = vuf_msg_check(&m, VUF_CH_BACKEND, false);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "back-end request %s: payload fails the table's checks (%d)",
                rule->name, r);
        return -EINVAL;
    }

    vuf_conn_set_channel(c, VUF_CH_BACKEND);
    r = vuf_conn_send(c, &m);
    if (r < 0)
        return r;

    /* SHARED_OBJECT_LOOKUP is answered whether or not NEED_REPLY was set
     * (spec table (b)); ack-type requests only when asked. The front-end
     * also needs REPLY_ACK negotiated to answer: the caller asks only then,
     * or it waits out the conn timeout. */
    if (rule->reply != VUF_REPLY_ALWAYS && !need_reply)
        return 0;
    r = recv_reply(c, rule, &value, fd_out);
    if (r < 0)
        return r;
    if (ack)
        *ack = value;
    if (value != 0) {
        vuf_log(VUF_LOG_INFO, "back-end request %s: front-end answered %lld", rule->name,
                (long long)value);
        if (fd_out && *fd_out >= 0) {
            close(*fd_out);
            *fd_out = -1;
        }
        return -EIO;
    }
    return 0;
}

int vuf_breq_send(struct vuf_conn *c, uint32_t code, const void *payload, uint32_t size,
                  const int *fds, unsigned nfds, bool need_reply, uint64_t *ack)
{
    /* No out-parameter for a LOOKUP reply's dmabuf here: it is closed. */
    return breq_send(c, code, payload, size, fds, nfds, need_reply, ack, NULL);
}

int vuf_breq_config_change(struct vuf_conn *c, bool need_reply, uint64_t *ack)
{
    return vuf_breq_send(c, VUF_BREQ_CONFIG_CHANGE_MSG, NULL, 0, NULL, 0, need_reply, ack);
}

int vuf_breq_shmem_map(struct vuf_conn *c, const struct vuf_shmem_map *m, int fd, bool need_reply,
                       uint64_t *ack)
{
    if (!m || fd < 0) {
        if (ack)
            *ack = 0;
        return -EINVAL;
    }
    return vuf_breq_send(c, VUF_BREQ_SHMEM_MAP, m, sizeof(*m), &fd, 1, need_reply, ack);
}

int vuf_breq_shmem_unmap(struct vuf_conn *c, const struct vuf_shmem_map *m, bool need_reply,
                         uint64_t *ack)
{
    if (!m) {
        if (ack)
            *ack = 0;
        return -EINVAL;
    }
    return vuf_breq_send(c, VUF_BREQ_SHMEM_UNMAP, m, sizeof(*m), NULL, 0, need_reply, ack);
}

int vuf_breq_shared_object_lookup(struct vuf_conn *c, const struct vuf_shared_object *obj, int *fd,
                                  uint64_t *ack)
{
    if (!obj || !fd) {
        if (ack)
            *ack = 0;
        return -EINVAL;
    }
    /* LOOKUP is always answered, with the dmabuf when the front-end has one. */
    return breq_send(c, VUF_BREQ_SHARED_OBJECT_LOOKUP, obj, sizeof(*obj), NULL, 0, false, ack, fd);
}
