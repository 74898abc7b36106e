/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user wire format: the message table, header rules, payload
 * decoders. Pure functions only: no I/O, no allocation, fds are never
 * touched (only counted).
 */
#include <errno.h>
#include <string.h>

#include "vuf/wire.h"

/* Config space is at most a 4 KiB window (virtio PCI device config). */
#define CONFIG_SPACE_LIMIT 0x1000u

#define ROW(nm, code_, smin, smax, sstep, fmin, fmax, kind, rmin, rmax, rstep, rfmin, rfmax) \
    [code_] = {.name = #nm,                                                                  \
               .code = code_,                                                                \
               .size_min = smin,                                                             \
               .size_max = smax,                                                             \
               .size_step = sstep,                                                           \
               .fds_min = fmin,                                                              \
               .fds_max = fmax,                                                              \
               .reply = VUF_REPLY_##kind,                                                    \
               .reply_min = rmin,                                                            \
               .reply_max = rmax,                                                            \
               .reply_step = rstep,                                                          \
               .reply_fds_min = rfmin,                                                       \
               .reply_fds_max = rfmax},

static const struct vuf_msg_rule frontend_rules[VUF_REQ_MAX + 1] = {VUF_FRONTEND_REQUESTS(ROW)};
static const struct vuf_msg_rule backend_rules[VUF_BREQ_MAX + 1] = {VUF_BACKEND_REQUESTS(ROW)};

const struct vuf_msg_rule *vuf_msg_rule(enum vuf_channel ch, uint32_t code)
{
    const struct vuf_msg_rule *r = NULL;

    if (ch == VUF_CH_FRONTEND && code <= VUF_REQ_MAX)
        r = &frontend_rules[code];
    else if (ch == VUF_CH_BACKEND && code <= VUF_BREQ_MAX)
        r = &backend_rules[code];
    return (r && r->name) ? r : NULL;
}

const char *vuf_msg_name(enum vuf_channel ch, uint32_t code)
{
    const struct vuf_msg_rule *r = vuf_msg_rule(ch, code);
    return r ? r->name : "UNKNOWN";
}

const char *vuf_request_name(uint32_t code)
{
    return vuf_msg_name(VUF_CH_FRONTEND, code);
}

const char *vuf_backend_request_name(uint32_t code)
{
    return vuf_msg_name(VUF_CH_BACKEND, code);
}

bool vuf_msg_expects_reply(const struct vuf_msg_rule *rule, uint32_t flags,
                           uint64_t protocol_features)
{
    if (!rule)
        return false;
    switch (rule->reply) {
    case VUF_REPLY_ALWAYS:
        return true;
    case VUF_REPLY_LOG:
        if (protocol_features & VUF_PROTO_MASK(LOG_SHMFD))
            return true;
        break;
    case VUF_REPLY_ACK:
        break;
    }
    return (flags & VUF_FLAG_NEED_REPLY) && (protocol_features & VUF_PROTO_MASK(REPLY_ACK));
}

static const char *const pf_names[VUF_PROTO_F_COUNT] = {
#define PF_NAME(name, bit) [bit] = #name,
    VUF_PROTOCOL_FEATURES(PF_NAME)
#undef PF_NAME
};

const char *vuf_protocol_feature_name(unsigned bit)
{
    return bit < VUF_PROTO_F_COUNT ? pf_names[bit] : NULL;
}

/* ------------------------------------------------------------------------ */

int vuf_msg_init(struct vuf_msg *m, uint32_t code, uint32_t extra_flags, const void *payload,
                 uint32_t size)
{
    if (size > VUF_MAX_PAYLOAD)
        return -EMSGSIZE;
    m->hdr.request = code;
    m->hdr.flags = VUF_VERSION | extra_flags;
    m->hdr.size = size;
    if (size && payload)
        memcpy(m->payload.raw, payload, size);
    else if (size)
        memset(m->payload.raw, 0, size);
    m->nfds = 0;
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m->fds[i] = -1;
    return 0;
}

int vuf_msg_init_reply(struct vuf_msg *m, const struct vuf_msg *req, const void *payload,
                       uint32_t size)
{
    return vuf_msg_init(m, req->hdr.request, VUF_FLAG_REPLY, payload, size);
}

void vuf_hdr_encode(uint8_t out[VUF_HDR_SIZE], const struct vuf_hdr *h)
{
    memcpy(out, &h->request, 4);
    memcpy(out + 4, &h->flags, 4);
    memcpy(out + 8, &h->size, 4);
}

int vuf_hdr_decode(const uint8_t *buf, size_t len, struct vuf_hdr *h)
{
    if (len < VUF_HDR_SIZE)
        return -EBADMSG;
    memcpy(&h->request, buf, 4);
    memcpy(&h->flags, buf + 4, 4);
    memcpy(&h->size, buf + 8, 4);
    return 0;
}

static bool size_ok(uint32_t s, uint16_t min, uint16_t max, uint16_t step)
{
    if (s < min || s > max)
        return false;
    return step == 0 || (s - min) % step == 0;
}

int vuf_hdr_check(const struct vuf_hdr *h, enum vuf_channel ch, bool is_reply,
                  const struct vuf_msg_rule **rule_out)
{
    const struct vuf_msg_rule *r;

    if ((h->flags & VUF_VERSION_MASK) != VUF_VERSION || (h->flags & ~VUF_FLAGS_KNOWN))
        return -EPROTO;
    if (!!(h->flags & VUF_FLAG_REPLY) != is_reply)
        return -EPROTO;
    if (is_reply && (h->flags & VUF_FLAG_NEED_REPLY))
        return -EPROTO;
    r = vuf_msg_rule(ch, h->request);
    if (!r)
        return -EPROTO;
    if (rule_out)
        *rule_out = r;
    if (h->size > VUF_MAX_PAYLOAD)
        return -EMSGSIZE;
    /* A reply has the rule's reply shape: a message that always replies
     * never answers NEED_REPLY with a second, u64 ack (spec (a)); ACK rows
     * already have the u64 shape. */
    if (is_reply) {
        if (!size_ok(h->size, r->reply_min, r->reply_max, r->reply_step))
            return -EMSGSIZE;
    } else if (!size_ok(h->size, r->size_min, r->size_max, r->size_step)) {
        return -EMSGSIZE;
    }
    return 0;
}

/* Semantic checks that hold for every message of a code. */
static int semantic_check(const struct vuf_msg *m, enum vuf_channel ch, bool is_reply)
{
    union {
        struct vuf_mem_table mem;
        struct vuf_mem_region region;
        struct vuf_vring_addr addr;
        struct vuf_config config;
        struct vuf_device_state dstate;
        struct vuf_shmem_map mmap;
        struct vuf_shmem_config shmem;
        struct vuf_inflight inflight;
    } u;
    uint32_t idx;
    bool nofd;

    if (ch == VUF_CH_BACKEND) {
        if (is_reply)
            return 0;
        switch (m->hdr.request) {
        case VUF_BREQ_SHMEM_MAP:
        case VUF_BREQ_SHMEM_UNMAP:
            return vuf_decode_shmem_map(m, &u.mmap);
        case VUF_BREQ_VRING_HOST_NOTIFIER_MSG:
            /* NOFD bit set iff no fd attached. */
            if (m->hdr.size >= 8 && (!!(m->payload.area.u64 & VUF_VRING_NOFD) != (m->nfds == 0)))
                return -EBADF;
            return 0;
        default:
            return 0;
        }
    }

    if (is_reply) {
        switch (m->hdr.request) {
        case VUF_REQ_GET_CONFIG:
            /* size 0 is the back-end's refusal, legal on the wire */
            return m->hdr.size == 0 ? 0 : vuf_decode_config(m, &u.config);
        case VUF_REQ_GET_SHMEM_CONFIG:
            return m->hdr.size == sizeof(u.shmem) ? vuf_decode_shmem_config(m, &u.shmem) : 0;
        default:
            return 0;
        }
    }

    switch (m->hdr.request) {
    case VUF_REQ_SET_MEM_TABLE:
        return vuf_decode_mem_table(m, &u.mem);
    case VUF_REQ_ADD_MEM_REG:
    case VUF_REQ_REM_MEM_REG:
        return vuf_decode_mem_single(m, &u.region);
    case VUF_REQ_SET_VRING_ADDR:
        return vuf_decode_vring_addr(m, &u.addr);
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL:
    case VUF_REQ_SET_VRING_ERR:
        return vuf_decode_vring_file(m, &idx, &nofd);
    case VUF_REQ_GET_CONFIG:
    case VUF_REQ_SET_CONFIG:
        return vuf_decode_config(m, &u.config);
    case VUF_REQ_SET_DEVICE_STATE_FD:
        return vuf_decode_device_state(m, &u.dstate);
    case VUF_REQ_GET_INFLIGHT_FD:
    case VUF_REQ_SET_INFLIGHT_FD:
        return vuf_decode_inflight(m, &u.inflight);
    default:
        return 0;
    }
}

int vuf_msg_check(const struct vuf_msg *m, enum vuf_channel ch, bool is_reply)
{
    const struct vuf_msg_rule *r = NULL;
    int ret = vuf_hdr_check(&m->hdr, ch, is_reply, &r);
    unsigned fmin, fmax;

    if (ret)
        return ret;
    fmin = is_reply ? r->reply_fds_min : r->fds_min;
    fmax = is_reply ? r->reply_fds_max : r->fds_max;
    if (m->nfds < fmin || m->nfds > fmax || m->nfds > VUF_MAX_FDS)
        return -EBADF;
    return semantic_check(m, ch, is_reply);
}

int vuf_msg_parse(const uint8_t *buf, size_t len, unsigned nfds, enum vuf_channel ch, bool is_reply,
                  struct vuf_msg *out)
{
    int ret = vuf_hdr_decode(buf, len, &out->hdr);

    if (ret)
        return ret;
    out->nfds = 0;
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        out->fds[i] = -1;
    if (out->hdr.size > VUF_MAX_PAYLOAD)
        return -EMSGSIZE;
    if (len - VUF_HDR_SIZE < out->hdr.size)
        return -EBADMSG;
    if (nfds > VUF_MAX_FDS)
        return -EBADF;
    memcpy(out->payload.raw, buf + VUF_HDR_SIZE, out->hdr.size);
    out->nfds = nfds;
    ret = vuf_msg_check(out, ch, is_reply);
    if (ret)
        return ret;
    return (int)(VUF_HDR_SIZE + out->hdr.size);
}

int vuf_msg_serialize(const struct vuf_msg *m, uint8_t *out, size_t cap)
{
    if (m->hdr.size > VUF_MAX_PAYLOAD || cap < VUF_HDR_SIZE + (size_t)m->hdr.size)
        return -EMSGSIZE;
    vuf_hdr_encode(out, &m->hdr);
    memcpy(out + VUF_HDR_SIZE, m->payload.raw, m->hdr.size);
    return (int)(VUF_HDR_SIZE + m->hdr.size);
}

/* ------------------------------------------------------------------------ */
/* Typed decoders                                                           */
/* ------------------------------------------------------------------------ */

static bool add_overflows(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r);
}

int vuf_decode_u64(const struct vuf_msg *m, uint64_t *out)
{
    if (m->hdr.size != sizeof(uint64_t))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    return 0;
}

int vuf_decode_vring_state(const struct vuf_msg *m, struct vuf_vring_state *out)
{
    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    return 0;
}

int vuf_decode_vring_addr(const struct vuf_msg *m, struct vuf_vring_addr *out)
{
    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    if (out->flags & ~VUF_VRING_F_LOG)
        return -EPROTO;
    /* Split-ring alignment (virtio 1.2, 2.7): desc 16, avail 2, used 4. */
    if ((out->desc & 15) || (out->avail & 1) || (out->used & 3))
        return -EPROTO;
    return 0;
}

static int region_check(const struct vuf_mem_region *r)
{
    if (r->memory_size == 0)
        return -EPROTO;
    /* wire.h: no u64 overflow of gpa/uva/offset + size, so the exclusive
     * end of every range is representable (same rule as SHMEM_MAP). */
    if (add_overflows(r->guest_phys_addr, r->memory_size) ||
        add_overflows(r->userspace_addr, r->memory_size) ||
        add_overflows(r->mmap_offset, r->memory_size))
        return -EPROTO;
    return 0;
}

int vuf_decode_mem_table(const struct vuf_msg *m, struct vuf_mem_table *out)
{
    uint32_t n;

    if (m->hdr.size < 8)
        return -EPROTO;
    memset(out, 0, sizeof(*out));
    memcpy(out, m->payload.raw, m->hdr.size > sizeof(*out) ? sizeof(*out) : m->hdr.size);
    n = out->nregions;
    if (n == 0 || n > VUF_MEM_TABLE_MAX || m->hdr.size != VUF_MEM_TABLE_SIZE(n) || m->nfds != n ||
        out->padding != 0)
        return -EPROTO;
    for (uint32_t i = 0; i < n; i++)
        if (region_check(&out->regions[i]))
            return -EPROTO;
    return 0;
}

int vuf_decode_mem_single(const struct vuf_msg *m, struct vuf_mem_region *out)
{
    struct vuf_mem_single s;

    if (m->hdr.size != sizeof(s))
        return -EPROTO;
    memcpy(&s, m->payload.raw, sizeof(s));
    *out = s.region;
    return region_check(out);
}

int vuf_decode_vring_file(const struct vuf_msg *m, uint32_t *index, bool *nofd)
{
    uint64_t v;

    if (vuf_decode_u64(m, &v))
        return -EPROTO;
    if (v & ~(VUF_VRING_IDX_MASK | VUF_VRING_NOFD))
        return -EPROTO;
    *index = (uint32_t)(v & VUF_VRING_IDX_MASK);
    *nofd = !!(v & VUF_VRING_NOFD);
    if (*nofd != (m->nfds == 0))
        return -EPROTO;
    return 0;
}

int vuf_decode_config(const struct vuf_msg *m, struct vuf_config *out)
{
    if (m->hdr.size < VUF_CONFIG_HDR_SIZE || m->hdr.size > sizeof(*out))
        return -EPROTO;
    memset(out, 0, sizeof(*out));
    memcpy(out, m->payload.raw, m->hdr.size);
    if (out->size > VUF_CONFIG_MAX || m->hdr.size != VUF_CONFIG_HDR_SIZE + out->size)
        return -EPROTO;
    if (add_overflows(out->offset, out->size) ||
        (uint64_t)out->offset + out->size > CONFIG_SPACE_LIMIT)
        return -EPROTO;
    if (out->flags > VUF_CONFIG_FLAG_MIGRATION)
        return -EPROTO;
    return 0;
}

int vuf_decode_device_state(const struct vuf_msg *m, struct vuf_device_state *out)
{
    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    if (out->direction > VUF_STATE_DIR_LOAD || out->phase != VUF_STATE_PHASE_STOPPED)
        return -EPROTO;
    return 0;
}

int vuf_decode_shmem_map(const struct vuf_msg *m, struct vuf_shmem_map *out)
{
    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    if (out->flags & ~VUF_SHMEM_MAP_RW)
        return -EPROTO;
    if (out->len == 0 || add_overflows(out->fd_offset, out->len) ||
        add_overflows(out->shm_offset, out->len))
        return -EPROTO;
    return 0;
}

int vuf_decode_shmem_config(const struct vuf_msg *m, struct vuf_shmem_config *out)
{
    uint32_t nonzero = 0;

    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    if (out->nregions > VUF_SHMEM_MAX_REGIONS)
        return -EPROTO;
    for (unsigned i = 0; i < VUF_SHMEM_MAX_REGIONS; i++)
        if (out->memory_sizes[i])
            nonzero++;
    if (nonzero != out->nregions)
        return -EPROTO;
    return 0;
}

int vuf_decode_inflight(const struct vuf_msg *m, struct vuf_inflight *out)
{
    if (m->hdr.size != sizeof(*out))
        return -EPROTO;
    memcpy(out, m->payload.raw, sizeof(*out));
    if (!(m->hdr.flags & VUF_FLAG_REPLY) && (out->num_queues == 0 || out->queue_size == 0))
        return -EPROTO;
    return 0;
}
