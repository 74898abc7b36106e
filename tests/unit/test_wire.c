/* SPDX-License-Identifier: MIT */
/*
 * Black-box tests of vuf/wire.h: the message table, names, reply rules,
 * header codec, every validation rule with its documented errno, the typed
 * decoders, and a serialize/parse round trip of every request and reply of
 * both channels.
 *
 * Table-driven loops use soft checks (CHECK*) so one run reports every
 * failing code, not just the first; each test then fails if any soft check
 * did.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "vuf/wire.h"

/* ------------------------------------------------------------------------ */
/* Soft checks                                                              */
/* ------------------------------------------------------------------------ */

static int g_fail;

static const char *ename(int rc)
{
    static char buf[4][32];
    static int slot;
    const char *n;

    if (rc >= 0) {
        snprintf(buf[slot], sizeof(buf[slot]), "%d", rc);
    } else {
        n = strerrorname_np(-rc);
        snprintf(buf[slot], sizeof(buf[slot]), "-%s", n ? n : "?");
    }
    n = buf[slot];
    slot = (slot + 1) % 4;
    return n;
}

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            g_fail++;                                                            \
            print_error("%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            print_error(__VA_ARGS__);                                            \
            print_error("\n");                                                   \
        }                                                                        \
    } while (0)

/* rc must equal want; the context names the case. */
#define CHECK_RC(expr, want, ...)                                                           \
    do {                                                                                    \
        int rc_ = (expr);                                                                   \
        int want_ = (want);                                                                 \
        if (rc_ != want_) {                                                                 \
            g_fail++;                                                                       \
            print_error("%s:%d: %s = %s, want %s: ", __FILE__, __LINE__, #expr, ename(rc_), \
                        ename(want_));                                                      \
            print_error(__VA_ARGS__);                                                       \
            print_error("\n");                                                              \
        }                                                                                   \
    } while (0)

#define SOFT_BEGIN() (g_fail = 0)
#define SOFT_END() assert_int_equal(g_fail, 0)

static const char *chname(enum vuf_channel ch)
{
    return ch == VUF_CH_FRONTEND ? "front-end" : "back-end";
}

/* ------------------------------------------------------------------------ */
/* The header's table, expanded here as the expectation for vuf_msg_rule.   */
/* ------------------------------------------------------------------------ */

struct exp_rule {
    const char *name;
    uint32_t code;
    unsigned smin, smax, sstep, fmin, fmax;
    enum vuf_reply_kind reply;
    unsigned rmin, rmax, rstep, rfmin, rfmax;
};

#define X_EXP(nm, code_, a, b, c, d, e, rk, f, g, h, i, j) \
    {#nm, code_, a, b, c, d, e, VUF_REPLY_##rk, f, g, h, i, j},
static const struct exp_rule fe_rules[] = {VUF_FRONTEND_REQUESTS(X_EXP)};
static const struct exp_rule be_rules[] = {VUF_BACKEND_REQUESTS(X_EXP)};
#define N_FE (sizeof(fe_rules) / sizeof(fe_rules[0]))
#define N_BE (sizeof(be_rules) / sizeof(be_rules[0]))

/* ------------------------------------------------------------------------ */
/* Payload builders                                                         */
/* ------------------------------------------------------------------------ */

static void fill_region(struct vuf_mem_region *r, unsigned i)
{
    r->guest_phys_addr = 0x100000000ull * i;
    r->memory_size = 0x40000000ull;
    r->userspace_addr = 0x7f0000000000ull + 0x100000000ull * i;
    r->mmap_offset = 0x1000ull * i;
}

static void fill_uuid(struct vuf_shared_object *o)
{
    for (unsigned i = 0; i < sizeof(o->uuid); i++)
        o->uuid[i] = (uint8_t)(0xa0 + i);
}

static void fill_pattern(void *p, size_t n, unsigned seed)
{
    uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(i * 7 + seed);
}

/*
 * Fill a payload of `size` bytes for (channel, code, request/reply) that
 * travels with `nfds` fds and passes every semantic rule wire.h documents;
 * return false when no valid payload of that shape exists (a memory table
 * whose region count differs from its fd count, a config reply shorter than
 * the config header, ...).
 */
static bool make_payload(enum vuf_channel ch, uint32_t code, bool reply, uint32_t size,
                         unsigned nfds, union vuf_payload *p)
{
    memset(p, 0, sizeof(*p));
    if (ch == VUF_CH_BACKEND) {
        if (reply)
            return true; /* u64 0 = OK */
        switch (code) {
        case VUF_BREQ_IOTLB_MSG:
            p->iotlb.iova = 0x10000;
            p->iotlb.size = 0x1000;
            p->iotlb.perm = 3;
            p->iotlb.type = 1; /* miss */
            return true;
        case VUF_BREQ_VRING_HOST_NOTIFIER_MSG:
            p->area.u64 = 2 | (nfds ? 0 : VUF_VRING_NOFD);
            p->area.size = 4096;
            p->area.offset = 0;
            return true;
        case VUF_BREQ_VRING_CALL:
        case VUF_BREQ_VRING_ERR:
            p->state.index = 1;
            return true;
        case VUF_BREQ_SHARED_OBJECT_ADD:
        case VUF_BREQ_SHARED_OBJECT_REMOVE:
        case VUF_BREQ_SHARED_OBJECT_LOOKUP:
            fill_uuid(&p->object);
            return true;
        case VUF_BREQ_SHMEM_MAP:
        case VUF_BREQ_SHMEM_UNMAP:
            p->mmap.shmid = 1;
            p->mmap.fd_offset = 0x1000;
            p->mmap.shm_offset = 0x2000;
            p->mmap.len = 0x3000;
            p->mmap.flags = code == VUF_BREQ_SHMEM_MAP ? VUF_SHMEM_MAP_RW : 0;
            return true;
        default:
            return true;
        }
    }

    if (reply) {
        switch (code) {
        case VUF_REQ_GET_FEATURES:
            p->u64 = (1ull << VUF_VHOST_F_PROTOCOL_FEATURES) | (1ull << 32);
            return true;
        case VUF_REQ_GET_PROTOCOL_FEATURES:
            p->u64 = VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(CONFIG);
            return true;
        case VUF_REQ_GET_QUEUE_NUM:
            p->u64 = 4;
            return true;
        case VUF_REQ_GET_VRING_BASE:
        case VUF_REQ_GET_VRING_BASE_SKIP_DRAIN:
            p->state.index = 1;
            p->state.num = 17;
            return true;
        case VUF_REQ_GET_CONFIG:
            if (size < VUF_CONFIG_HDR_SIZE)
                return false;
            p->config.offset = 0;
            p->config.size = size - VUF_CONFIG_HDR_SIZE;
            fill_pattern(p->config.region, p->config.size, 3);
            return true;
        case VUF_REQ_CREATE_CRYPTO_SESSION:
            fill_pattern(p->raw, size, 5);
            return true;
        case VUF_REQ_GET_INFLIGHT_FD:
            if (nfds) {
                p->inflight.mmap_size = 8192;
                p->inflight.num_queues = 1;
                p->inflight.queue_size = 128;
            }
            return true;
        case VUF_REQ_SET_DEVICE_STATE_FD:
            p->u64 = nfds ? 0 : VUF_STATE_REPLY_NOFD;
            return true;
        case VUF_REQ_GET_SHMEM_CONFIG:
            p->shmem.nregions = 2;
            p->shmem.memory_sizes[0] = 0x200000;
            p->shmem.memory_sizes[7] = 0x1000;
            return true;
        case VUF_REQ_GET_MAX_MEM_SLOTS:
            p->u64 = 32;
            return true;
        default:
            return true; /* u64 0 or empty */
        }
    }

    switch (code) {
    case VUF_REQ_SET_FEATURES:
        p->u64 = (1ull << VUF_VHOST_F_PROTOCOL_FEATURES) | (1ull << 32);
        return true;
    case VUF_REQ_SET_PROTOCOL_FEATURES:
        p->u64 = VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK);
        return true;
    case VUF_REQ_SET_MEM_TABLE: {
        uint32_t n = (size - 8) / 32;

        if (n < 1 || n > VUF_MEM_TABLE_MAX || n != nfds)
            return false;
        p->mem.nregions = n;
        for (unsigned i = 0; i < n; i++)
            fill_region(&p->mem.regions[i], i);
        return true;
    }
    case VUF_REQ_SET_LOG_BASE:
        p->log.mmap_size = 0x8000;
        p->log.mmap_offset = 0;
        return true;
    case VUF_REQ_SET_VRING_NUM:
        p->state.index = 1;
        p->state.num = 256;
        return true;
    case VUF_REQ_SET_VRING_ADDR:
        p->addr.index = 1;
        p->addr.desc = 0x7f0000001000ull;
        p->addr.avail = 0x7f0000002000ull;
        p->addr.used = 0x7f0000003000ull;
        return true;
    case VUF_REQ_SET_VRING_BASE:
    case VUF_REQ_GET_VRING_BASE:
    case VUF_REQ_VRING_KICK:
    case VUF_REQ_SET_VRING_ENDIAN:
    case VUF_REQ_GET_VRING_BASE_SKIP_DRAIN:
        p->state.index = 1;
        p->state.num = 0; /* GET_VRING_BASE: num must be 0 */
        return true;
    case VUF_REQ_SET_VRING_ENABLE:
        p->state.index = 1;
        p->state.num = 1;
        return true;
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL:
    case VUF_REQ_SET_VRING_ERR:
        p->u64 = 3 | (nfds ? 0 : VUF_VRING_NOFD);
        return true;
    case VUF_REQ_SEND_RARP:
        p->u64 = 0x0000563412005452ull;
        return true;
    case VUF_REQ_NET_SET_MTU:
        p->u64 = 1500;
        return true;
    case VUF_REQ_IOTLB_MSG:
        p->iotlb.iova = 0x10000;
        p->iotlb.size = 0x1000;
        p->iotlb.uaddr = 0x7f0000010000ull;
        p->iotlb.perm = 3;
        p->iotlb.type = 2; /* update */
        return true;
    case VUF_REQ_GET_CONFIG:
    case VUF_REQ_SET_CONFIG:
        p->config.offset = 0;
        p->config.size = size - VUF_CONFIG_HDR_SIZE;
        p->config.flags = VUF_CONFIG_FLAG_WRITABLE;
        if (code == VUF_REQ_SET_CONFIG)
            fill_pattern(p->config.region, p->config.size, 9);
        return true;
    case VUF_REQ_CREATE_CRYPTO_SESSION:
        fill_pattern(p->raw, size, 1);
        return true;
    case VUF_REQ_CLOSE_CRYPTO_SESSION:
        p->u64 = 7;
        return true;
    case VUF_REQ_GET_INFLIGHT_FD:
        p->inflight.num_queues = 2;
        p->inflight.queue_size = 128;
        return true;
    case VUF_REQ_SET_INFLIGHT_FD:
        p->inflight.mmap_size = 8192;
        p->inflight.mmap_offset = 0;
        p->inflight.num_queues = 2;
        p->inflight.queue_size = 128;
        return true;
    case VUF_REQ_ADD_MEM_REG:
    case VUF_REQ_REM_MEM_REG:
        fill_region(&p->mem_single.region, 2);
        return true;
    case VUF_REQ_SET_STATUS:
        p->u64 = 0x0f;
        return true;
    case VUF_REQ_GET_SHARED_OBJECT:
        fill_uuid(&p->object);
        return true;
    case VUF_REQ_SET_DEVICE_STATE_FD:
        p->dstate.direction = VUF_STATE_DIR_SAVE;
        p->dstate.phase = VUF_STATE_PHASE_STOPPED;
        return true;
    default:
        return true; /* no payload */
    }
}

/* ------------------------------------------------------------------------ */
/* Round trip                                                               */
/* ------------------------------------------------------------------------ */

static uint32_t rd32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void wr32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

/* Serialize a raw header + `size` payload bytes from p into buf. */
static size_t raw_msg(uint8_t *buf, uint32_t code, uint32_t flags, uint32_t size, const void *p,
                      uint32_t copy)
{
    wr32(buf, code);
    wr32(buf + 4, flags);
    wr32(buf + 8, size);
    if (copy)
        memcpy(buf + VUF_HDR_SIZE, p, copy);
    return VUF_HDR_SIZE + copy;
}

/* Build (request or reply), check, serialize, parse back, compare. */
static void roundtrip_one(enum vuf_channel ch, uint32_t code, bool reply, uint32_t size,
                          unsigned nfds, uint32_t extra_flags, const union vuf_payload *p)
{
    static uint8_t buf[VUF_HDR_SIZE + VUF_MAX_PAYLOAD + 64];
    struct vuf_msg m, req, out;
    uint32_t want_flags;
    const char *nm = vuf_msg_name(ch, code);
    int rc, n;

    memset(&m, 0xee, sizeof(m));
    if (!reply) {
        rc = vuf_msg_init(&m, code, extra_flags, size ? p : NULL, size);
        want_flags = VUF_VERSION | extra_flags;
    } else {
        CHECK_RC(vuf_msg_init(&req, code, VUF_FLAG_NEED_REPLY, NULL, 0), 0, "%s req", nm);
        rc = vuf_msg_init_reply(&m, &req, size ? p : NULL, size);
        want_flags = VUF_VERSION | VUF_FLAG_REPLY;
    }
    CHECK_RC(rc, 0, "%s %s %s size %u: init", chname(ch), nm, reply ? "reply" : "request", size);
    if (rc)
        return;
    CHECK(m.hdr.request == code && m.hdr.flags == want_flags && m.hdr.size == size && m.nfds == 0,
          "%s %s: init gave hdr {%u, 0x%x, %u} nfds %u, want {%u, 0x%x, %u} nfds 0", chname(ch), nm,
          m.hdr.request, m.hdr.flags, m.hdr.size, m.nfds, code, want_flags, size);
    CHECK(size == 0 || memcmp(m.payload.raw, p->raw, size) == 0, "%s %s: payload not copied",
          chname(ch), nm);

    for (unsigned i = 0; i < nfds; i++)
        m.fds[i] = 100 + (int)i; /* dummy numbers: wire code only counts them */
    m.nfds = nfds;
    CHECK_RC(vuf_msg_check(&m, ch, reply), 0, "%s %s %s size %u nfds %u flags 0x%x", chname(ch), nm,
             reply ? "reply" : "request", size, nfds, m.hdr.flags);

    n = vuf_msg_serialize(&m, buf, sizeof(buf));
    CHECK_RC(n, (int)(VUF_HDR_SIZE + size), "%s %s size %u: serialize", chname(ch), nm, size);
    if (n != (int)(VUF_HDR_SIZE + size))
        return;
    CHECK(rd32(buf) == code && rd32(buf + 4) == want_flags && rd32(buf + 8) == size,
          "%s %s: serialized header {%u, 0x%x, %u}", chname(ch), nm, rd32(buf), rd32(buf + 4),
          rd32(buf + 8));
    CHECK(memcmp(buf + VUF_HDR_SIZE, p->raw, size) == 0, "%s %s: serialized payload differs",
          chname(ch), nm);
    /* One byte short of room. */
    CHECK_RC(vuf_msg_serialize(&m, buf + 0, (size_t)n - 1), -EMSGSIZE,
             "%s %s size %u: serialize into cap %d", chname(ch), nm, size, n - 1);
    n = vuf_msg_serialize(&m, buf, sizeof(buf)); /* restore after the short try */

    /* Trailing bytes (the next message) must not be consumed. */
    memset(buf + n, 0x5a, 16);
    memset(&out, 0xcc, sizeof(out));
    rc = vuf_msg_parse(buf, (size_t)n + 16, nfds, ch, reply, &out);
    CHECK_RC(rc, n, "%s %s %s size %u nfds %u: parse", chname(ch), nm, reply ? "reply" : "request",
             size, nfds);
    if (rc != n)
        return;
    CHECK(memcmp(&out.hdr, &m.hdr, sizeof(m.hdr)) == 0, "%s %s: parsed header differs", chname(ch),
          nm);
    CHECK(memcmp(out.payload.raw, p->raw, size) == 0, "%s %s: parsed payload differs", chname(ch),
          nm);
    CHECK(out.nfds == nfds, "%s %s: parsed nfds %u want %u", chname(ch), nm, out.nfds, nfds);
    for (unsigned i = 0; i < nfds && i < VUF_MAX_FDS; i++)
        CHECK(out.fds[i] == -1, "%s %s: parsed fds[%u] = %d want -1", chname(ch), nm, i,
              out.fds[i]);
    out.nfds = nfds;
    CHECK_RC(vuf_msg_check(&out, ch, reply), 0, "%s %s: check of parsed message", chname(ch), nm);
}

/* Every legal size x every legal fd count that has a valid payload. Returns
 * the number of cases run. */
static unsigned roundtrip_rule(enum vuf_channel ch, const struct vuf_msg_rule *r, bool reply)
{
    unsigned smin = reply ? r->reply_min : r->size_min;
    unsigned smax = reply ? r->reply_max : r->size_max;
    unsigned step = reply ? r->reply_step : r->size_step;
    unsigned fmin = reply ? r->reply_fds_min : r->fds_min;
    unsigned fmax = reply ? r->reply_fds_max : r->fds_max;
    union vuf_payload p;
    unsigned cases = 0;

    for (unsigned s = smin; s <= smax; s += step ? step : 1) {
        for (unsigned f = fmin; f <= fmax; f++) {
            if (!make_payload(ch, r->code, reply, s, f, &p))
                continue;
            roundtrip_one(ch, r->code, reply, s, f, 0, &p);
            if (!reply)
                roundtrip_one(ch, r->code, reply, s, f, VUF_FLAG_NEED_REPLY, &p);
            cases++;
        }
        if (!step)
            break;
    }
    return cases;
}

static void test_roundtrip_all(void **state)
{
    (void)state;
    SOFT_BEGIN();
    for (unsigned c = 1; c <= VUF_REQ_MAX; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_FRONTEND, c);

        CHECK(r != NULL, "front-end code %u has no rule", c);
        if (!r)
            continue;
        CHECK(roundtrip_rule(VUF_CH_FRONTEND, r, false) > 0, "no request case for %s", r->name);
        CHECK(roundtrip_rule(VUF_CH_FRONTEND, r, true) > 0, "no reply case for %s", r->name);
    }
    for (unsigned c = 1; c <= VUF_BREQ_MAX; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, c);

        CHECK(r != NULL, "back-end code %u has no rule", c);
        if (!r)
            continue;
        CHECK(roundtrip_rule(VUF_CH_BACKEND, r, false) > 0, "no request case for %s", r->name);
        CHECK(roundtrip_rule(VUF_CH_BACKEND, r, true) > 0, "no reply case for %s", r->name);
    }
    SOFT_END();
}

/* ------------------------------------------------------------------------ */
/* Table and names                                                          */
/* ------------------------------------------------------------------------ */

static void compare_rules(enum vuf_channel ch, const struct exp_rule *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(ch, e[i].code);

        CHECK(r != NULL, "%s %s (%u): no rule", chname(ch), e[i].name, e[i].code);
        if (!r)
            continue;
        CHECK(r->code == e[i].code && strcmp(r->name, e[i].name) == 0, "%s code %u: rule {%u, %s}",
              chname(ch), e[i].code, r->code, r->name);
        CHECK(r->size_min == e[i].smin && r->size_max == e[i].smax && r->size_step == e[i].sstep &&
                  r->fds_min == e[i].fmin && r->fds_max == e[i].fmax,
              "%s %s: request rule %u..%u/%u fds %u..%u, header says %u..%u/%u fds %u..%u",
              chname(ch), e[i].name, r->size_min, r->size_max, r->size_step, r->fds_min, r->fds_max,
              e[i].smin, e[i].smax, e[i].sstep, e[i].fmin, e[i].fmax);
        CHECK(r->reply == e[i].reply && r->reply_min == e[i].rmin && r->reply_max == e[i].rmax &&
                  r->reply_step == e[i].rstep && r->reply_fds_min == e[i].rfmin &&
                  r->reply_fds_max == e[i].rfmax,
              "%s %s: reply rule kind %d %u..%u/%u fds %u..%u, header says %d %u..%u/%u "
              "fds %u..%u",
              chname(ch), e[i].name, r->reply, r->reply_min, r->reply_max, r->reply_step,
              r->reply_fds_min, r->reply_fds_max, e[i].reply, e[i].rmin, e[i].rmax, e[i].rstep,
              e[i].rfmin, e[i].rfmax);
        CHECK(strcmp(vuf_msg_name(ch, e[i].code), e[i].name) == 0, "%s %u: vuf_msg_name %s",
              chname(ch), e[i].code, vuf_msg_name(ch, e[i].code));
    }
}

static void test_table_matches_header(void **state)
{
    (void)state;
    SOFT_BEGIN();
    CHECK(N_FE == 45, "header lists %zu front-end requests", N_FE);
    CHECK(N_BE == 10, "header lists %zu back-end requests", N_BE);
    compare_rules(VUF_CH_FRONTEND, fe_rules, N_FE);
    compare_rules(VUF_CH_BACKEND, be_rules, N_BE);
    SOFT_END();
}

/* Facts taken from the spec (vhost-user-protocol.md (a), (b), (d)), not
 * from the header. */
static void test_table_spec_facts(void **state)
{
    const struct vuf_msg_rule *r;

    (void)state;
    SOFT_BEGIN();

    r = vuf_msg_rule(VUF_CH_FRONTEND, 1); /* GET_FEATURES: no payload, u64 always */
    CHECK(r && r->size_min == 0 && r->size_max == 0 && r->reply == VUF_REPLY_ALWAYS &&
              r->reply_min == 8 && r->reply_max == 8 && r->fds_max == 0,
          "GET_FEATURES");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 2); /* SET_FEATURES u64, ack */
    CHECK(r && r->size_min == 8 && r->size_max == 8 && r->reply == VUF_REPLY_ACK, "SET_FEATURES");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 5); /* SET_MEM_TABLE 8 + 32n, n <= 8, 0..8 fds */
    CHECK(r && r->size_min == 8 && r->size_max == 264 && r->size_step == 32 && r->fds_min == 0 &&
              r->fds_max == 8 && r->reply == VUF_REPLY_ACK,
          "SET_MEM_TABLE");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 6); /* SET_LOG_BASE: log 16 B + fd, reply iff LOG_SHMFD */
    CHECK(r && r->size_min == 16 && r->size_max == 16 && r->fds_max == 1 &&
              r->reply == VUF_REPLY_LOG,
          "SET_LOG_BASE");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 7); /* SET_LOG_FD: no payload, 1 fd */
    CHECK(r && r->size_max == 0 && r->fds_min == 1 && r->fds_max == 1, "SET_LOG_FD");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 9); /* SET_VRING_ADDR 40 */
    CHECK(r && r->size_min == 40 && r->size_max == 40, "SET_VRING_ADDR");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 11); /* GET_VRING_BASE: state -> state, always */
    CHECK(r && r->size_min == 8 && r->reply == VUF_REPLY_ALWAYS && r->reply_min == 8,
          "GET_VRING_BASE");
    for (uint32_t c = 12; c <= 14; c++) { /* KICK/CALL/ERR: u64 + 0..1 fd */
        r = vuf_msg_rule(VUF_CH_FRONTEND, c);
        CHECK(r && r->size_min == 8 && r->size_max == 8 && r->fds_min == 0 && r->fds_max == 1,
              "vring file %u", c);
    }
    r = vuf_msg_rule(VUF_CH_FRONTEND, 15);
    CHECK(r && r->reply == VUF_REPLY_ALWAYS && r->reply_min == 8, "GET_PROTOCOL_FEATURES");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 21); /* SET_BACKEND_REQ_FD: 1 socket fd */
    CHECK(r && r->size_max == 0 && r->fds_min == 1 && r->fds_max == 1, "SET_BACKEND_REQ_FD");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 22);
    CHECK(r && r->size_min == 32 && r->size_max == 32, "IOTLB_MSG");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 24); /* GET_CONFIG 12..268, reply same shape */
    CHECK(r && r->size_min == 12 && r->size_max == 268 && r->reply == VUF_REPLY_ALWAYS &&
              r->reply_max == 268,
          "GET_CONFIG");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 28); /* POSTCOPY_ADVISE: reply size 0 + uffd */
    CHECK(r && r->reply == VUF_REPLY_ALWAYS && r->reply_max == 0 && r->reply_fds_min == 1 &&
              r->reply_fds_max == 1,
          "POSTCOPY_ADVISE");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 31); /* GET_INFLIGHT_FD: 24 -> 24 + fd */
    CHECK(r && r->size_min == 24 && r->reply == VUF_REPLY_ALWAYS && r->reply_min == 24 &&
              r->reply_fds_max == 1,
          "GET_INFLIGHT_FD");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 32);
    CHECK(r && r->size_min == 24 && r->fds_min == 1 && r->fds_max == 1, "SET_INFLIGHT_FD");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 37); /* ADD_MEM_REG: 40 + exactly 1 fd */
    CHECK(r && r->size_min == 40 && r->size_max == 40 && r->fds_min == 1 && r->fds_max == 1,
          "ADD_MEM_REG");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 38); /* REM_MEM_REG: 40, fd tolerated */
    CHECK(r && r->size_min == 40 && r->fds_min == 0, "REM_MEM_REG");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 42); /* SET_DEVICE_STATE_FD: 8 + 1 fd, u64 (+fd) */
    CHECK(r && r->size_min == 8 && r->size_max == 8 && r->fds_min == 1 && r->fds_max == 1 &&
              r->reply == VUF_REPLY_ALWAYS && r->reply_min == 8 && r->reply_fds_max == 1,
          "SET_DEVICE_STATE_FD");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 43);
    CHECK(r && r->reply == VUF_REPLY_ALWAYS, "CHECK_DEVICE_STATE");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 44); /* GET_SHMEM_CONFIG reply 2056 */
    CHECK(r && r->size_max == 0 && r->reply == VUF_REPLY_ALWAYS && r->reply_min == 2056 &&
              r->reply_max == 2056,
          "GET_SHMEM_CONFIG");
    r = vuf_msg_rule(VUF_CH_FRONTEND, 45);
    CHECK(r && r->size_min == 8 && r->reply == VUF_REPLY_ALWAYS && r->reply_min == 8,
          "GET_VRING_BASE_SKIP_DRAIN");

    r = vuf_msg_rule(VUF_CH_BACKEND, 3); /* HOST_NOTIFIER: area 24 + fd or NOFD */
    CHECK(r && r->size_min == 24 && r->size_max == 24 && r->fds_min == 0 && r->fds_max == 1,
          "BACKEND_VRING_HOST_NOTIFIER_MSG");
    r = vuf_msg_rule(VUF_CH_BACKEND, 8); /* LOOKUP: always replies, u64 + fd */
    CHECK(r && r->size_min == 16 && r->reply == VUF_REPLY_ALWAYS && r->reply_fds_max == 1,
          "BACKEND_SHARED_OBJECT_LOOKUP");
    r = vuf_msg_rule(VUF_CH_BACKEND, 9); /* SHMEM_MAP: 40 + 1 fd */
    CHECK(r && r->size_min == 40 && r->size_max == 40 && r->fds_min == 1 && r->fds_max == 1 &&
              r->reply == VUF_REPLY_ACK,
          "BACKEND_SHMEM_MAP");
    r = vuf_msg_rule(VUF_CH_BACKEND, 10);
    CHECK(r && r->size_min == 40 && r->fds_max == 0, "BACKEND_SHMEM_UNMAP");

    /* Unknown codes. */
    static const uint32_t fe_unknown[] = {0, 46, 1000, 1004, 0xffffffffu};
    static const uint32_t be_unknown[] = {0, 11, 1000, 1001, 0xffffffffu};
    for (size_t i = 0; i < sizeof(fe_unknown) / sizeof(fe_unknown[0]); i++) {
        CHECK(vuf_msg_rule(VUF_CH_FRONTEND, fe_unknown[i]) == NULL, "front-end %u known",
              fe_unknown[i]);
        CHECK(strcmp(vuf_request_name(fe_unknown[i]), "UNKNOWN") == 0, "name(%u) = %s",
              fe_unknown[i], vuf_request_name(fe_unknown[i]));
        CHECK(strcmp(vuf_msg_name(VUF_CH_FRONTEND, fe_unknown[i]), "UNKNOWN") == 0,
              "msg_name(fe, %u)", fe_unknown[i]);
    }
    for (size_t i = 0; i < sizeof(be_unknown) / sizeof(be_unknown[0]); i++) {
        CHECK(vuf_msg_rule(VUF_CH_BACKEND, be_unknown[i]) == NULL, "back-end %u known",
              be_unknown[i]);
        CHECK(strcmp(vuf_backend_request_name(be_unknown[i]), "UNKNOWN") == 0,
              "backend name(%u) = %s", be_unknown[i], vuf_backend_request_name(be_unknown[i]));
        CHECK(strcmp(vuf_msg_name(VUF_CH_BACKEND, be_unknown[i]), "UNKNOWN") == 0,
              "msg_name(be, %u)", be_unknown[i]);
    }
    /* A bogus channel value must not select a table. */
    CHECK(vuf_msg_rule((enum vuf_channel)7, 1) == NULL, "channel 7 has a table");
    SOFT_END();
}

/* The names, written out from the spec's tables (a) and (b). */
static const char *const spec_fe_names[] = {
    NULL,
    "GET_FEATURES",
    "SET_FEATURES",
    "SET_OWNER",
    "RESET_OWNER",
    "SET_MEM_TABLE",
    "SET_LOG_BASE",
    "SET_LOG_FD",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_BASE",
    "GET_VRING_BASE",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES",
    "GET_QUEUE_NUM",
    "SET_VRING_ENABLE",
    "SEND_RARP",
    "NET_SET_MTU",
    "SET_BACKEND_REQ_FD",
    "IOTLB_MSG",
    "SET_VRING_ENDIAN",
    "GET_CONFIG",
    "SET_CONFIG",
    "CREATE_CRYPTO_SESSION",
    "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_END",
    "GET_INFLIGHT_FD",
    "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET",
    "RESET_DEVICE",
    "VRING_KICK",
    "GET_MAX_MEM_SLOTS",
    "ADD_MEM_REG",
    "REM_MEM_REG",
    "SET_STATUS",
    "GET_STATUS",
    "GET_SHARED_OBJECT",
    "SET_DEVICE_STATE_FD",
    "CHECK_DEVICE_STATE",
    "GET_SHMEM_CONFIG",
    "GET_VRING_BASE_SKIP_DRAIN",
};

static const char *const spec_be_names[] = {
    NULL,
    "IOTLB_MSG",
    "CONFIG_CHANGE_MSG",
    "VRING_HOST_NOTIFIER_MSG",
    "VRING_CALL",
    "VRING_ERR",
    "SHARED_OBJECT_ADD",
    "SHARED_OBJECT_REMOVE",
    "SHARED_OBJECT_LOOKUP",
    "SHMEM_MAP",
    "SHMEM_UNMAP",
};

static void test_names(void **state)
{
    (void)state;
    SOFT_BEGIN();
    CHECK(strcmp(vuf_request_name(1), "GET_FEATURES") == 0, "1 -> %s", vuf_request_name(1));
    CHECK(strcmp(vuf_request_name(45), "GET_VRING_BASE_SKIP_DRAIN") == 0, "45 -> %s",
          vuf_request_name(45));
    CHECK(strcmp(vuf_backend_request_name(9), "SHMEM_MAP") == 0, "backend 9 -> %s",
          vuf_backend_request_name(9));
    for (uint32_t c = 1; c <= 45; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_FRONTEND, c);

        CHECK(strcmp(vuf_request_name(c), spec_fe_names[c]) == 0, "front-end %u: %s, spec %s", c,
              vuf_request_name(c), spec_fe_names[c]);
        CHECK(strcmp(vuf_msg_name(VUF_CH_FRONTEND, c), spec_fe_names[c]) == 0,
              "msg_name front-end %u", c);
        CHECK(r && strcmp(r->name, spec_fe_names[c]) == 0, "rule name %u", c);
    }
    for (uint32_t c = 1; c <= 10; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, c);

        CHECK(strcmp(vuf_backend_request_name(c), spec_be_names[c]) == 0,
              "back-end %u: %s, spec %s", c, vuf_backend_request_name(c), spec_be_names[c]);
        CHECK(strcmp(vuf_msg_name(VUF_CH_BACKEND, c), spec_be_names[c]) == 0,
              "msg_name back-end %u", c);
        CHECK(r && strcmp(r->name, spec_be_names[c]) == 0, "rule name back-end %u", c);
    }
    /* Channels are distinct tables: 44 is front-end only, 9 differs. */
    CHECK(strcmp(vuf_backend_request_name(44), "UNKNOWN") == 0, "backend 44");
    CHECK(strcmp(vuf_request_name(9), "SET_VRING_ADDR") == 0, "front-end 9");
    SOFT_END();
}

static void test_protocol_feature_names(void **state)
{
    static const char *const spec[24] = {
        "MQ",
        "LOG_SHMFD",
        "RARP",
        "REPLY_ACK",
        "NET_MTU",
        "BACKEND_REQ",
        "CROSS_ENDIAN",
        "CRYPTO_SESSION",
        "PAGEFAULT",
        "CONFIG",
        "BACKEND_SEND_FD",
        "HOST_NOTIFIER",
        "INFLIGHT_SHMFD",
        "RESET_DEVICE",
        "INBAND_NOTIFICATIONS",
        "CONFIGURE_MEM_SLOTS",
        "STATUS",
        "XEN_MMAP",
        "SHARED_OBJECT",
        "DEVICE_STATE",
        "GET_VRING_BASE_INFLIGHT",
        "GPA_ADDRESSES",
        "SHMEM",
        "GET_VRING_BASE_SKIP_DRAIN",
    };

    (void)state;
    SOFT_BEGIN();
    for (unsigned b = 0; b < 24; b++) {
        const char *n = vuf_protocol_feature_name(b);

        CHECK(n && strcmp(n, spec[b]) == 0, "bit %u: %s, spec %s", b, n ? n : "(null)", spec[b]);
    }
    for (unsigned b = 24; b < 70; b++)
        CHECK(vuf_protocol_feature_name(b) == NULL, "bit %u: %s", b, vuf_protocol_feature_name(b));
    CHECK(vuf_protocol_feature_name(1000) == NULL, "bit 1000");
    CHECK(vuf_protocol_feature_name(~0u) == NULL, "bit ~0");
    CHECK(VUF_PROTO_KNOWN_MASK == 0xffffffull, "known mask");
    CHECK(VUF_PROTO_MASK(SHMEM) == 1ull << 22, "SHMEM is upstream bit 22");
    SOFT_END();
}

static void test_expects_reply(void **state)
{
    const struct vuf_msg_rule *always = vuf_msg_rule(VUF_CH_FRONTEND, VUF_REQ_GET_FEATURES);
    const struct vuf_msg_rule *ack = vuf_msg_rule(VUF_CH_FRONTEND, VUF_REQ_SET_FEATURES);
    const struct vuf_msg_rule *lg = vuf_msg_rule(VUF_CH_FRONTEND, VUF_REQ_SET_LOG_BASE);
    const struct vuf_msg_rule *lookup = vuf_msg_rule(VUF_CH_BACKEND, VUF_BREQ_SHARED_OBJECT_LOOKUP);
    const struct vuf_msg_rule *bmap = vuf_msg_rule(VUF_CH_BACKEND, VUF_BREQ_SHMEM_MAP);
    const uint32_t V = VUF_VERSION, NR = VUF_FLAG_NEED_REPLY;
    const uint64_t RA = VUF_PROTO_MASK(REPLY_ACK), LS = VUF_PROTO_MASK(LOG_SHMFD), ALL = VUF_PROTO_KNOWN_MASK;

    (void)state;
    assert_non_null(always);
    assert_non_null(ack);
    assert_non_null(lg);
    assert_non_null(lookup);
    assert_non_null(bmap);
    SOFT_BEGIN();
    /* ALWAYS: whatever the flags and features. */
    CHECK(vuf_msg_expects_reply(always, V, 0), "ALWAYS, no flags");
    CHECK(vuf_msg_expects_reply(always, V | NR, 0), "ALWAYS + NEED_REPLY");
    CHECK(vuf_msg_expects_reply(always, V | NR, RA), "ALWAYS + NEED_REPLY + REPLY_ACK");
    CHECK(vuf_msg_expects_reply(lookup, V, 0), "back-end LOOKUP always");
    /* ACK: only NEED_REPLY with REPLY_ACK. */
    CHECK(!vuf_msg_expects_reply(ack, V, 0), "ACK, nothing");
    CHECK(!vuf_msg_expects_reply(ack, V | NR, 0), "ACK + NEED_REPLY without REPLY_ACK");
    CHECK(!vuf_msg_expects_reply(ack, V, RA), "ACK + REPLY_ACK without NEED_REPLY");
    CHECK(!vuf_msg_expects_reply(ack, V, ALL), "ACK, all features, no NEED_REPLY");
    CHECK(vuf_msg_expects_reply(ack, V | NR, RA), "ACK + NEED_REPLY + REPLY_ACK");
    CHECK(vuf_msg_expects_reply(ack, V | NR, ALL), "ACK + NEED_REPLY + all features");
    CHECK(!vuf_msg_expects_reply(ack, V | NR, ALL & ~RA), "ACK, all features but REPLY_ACK");
    CHECK(vuf_msg_expects_reply(bmap, V | NR, RA), "back-end SHMEM_MAP ack");
    CHECK(!vuf_msg_expects_reply(bmap, V, RA), "back-end SHMEM_MAP no NEED_REPLY");
    /* LOG: iff LOG_SHMFD. */
    CHECK(vuf_msg_expects_reply(lg, V, LS), "LOG with LOG_SHMFD");
    CHECK(vuf_msg_expects_reply(lg, V | NR, LS | RA), "LOG with LOG_SHMFD + NEED_REPLY");
    CHECK(!vuf_msg_expects_reply(lg, V, 0), "LOG without LOG_SHMFD");
    CHECK(!vuf_msg_expects_reply(lg, V, RA), "LOG, REPLY_ACK only");
    CHECK(!vuf_msg_expects_reply(lg, V, ALL & ~LS), "LOG, all features but LOG_SHMFD");
    SOFT_END();
}

/* ------------------------------------------------------------------------ */
/* Header codec and init                                                    */
/* ------------------------------------------------------------------------ */

static void test_hdr_codec(void **state)
{
    const struct vuf_hdr h = {.request = 0x04030201u, .flags = 0x0d, .size = 0x00000a0bu};
    const uint8_t want[12] = {1, 2, 3, 4, 0x0d, 0, 0, 0, 0x0b, 0x0a, 0, 0};
    uint8_t buf[16];
    struct vuf_hdr d;

    (void)state;
    memset(buf, 0xff, sizeof(buf));
    vuf_hdr_encode(buf, &h);
    assert_memory_equal(buf, want, 12);
    assert_int_equal(buf[12], 0xff); /* writes exactly 12 bytes */

    memset(&d, 0, sizeof(d));
    assert_int_equal(vuf_hdr_decode(buf, 12, &d), 0);
    assert_int_equal(d.request, h.request);
    assert_int_equal(d.flags, h.flags);
    assert_int_equal(d.size, h.size);
    assert_int_equal(vuf_hdr_decode(buf, 16, &d), 0);
    /* decode does no rule checks: any values come back. */
    const struct vuf_hdr odd = {.request = 0xffffffffu, .flags = 0xffffffffu, .size = 0xffffffffu};
    vuf_hdr_encode(buf, &odd);
    assert_int_equal(vuf_hdr_decode(buf, 12, &d), 0);
    assert_int_equal(d.request, 0xffffffffu);
    assert_int_equal(d.size, 0xffffffffu);
    for (size_t len = 0; len < 12; len++)
        assert_int_equal(vuf_hdr_decode(buf, len, &d), -EBADMSG);
}

static void test_init(void **state)
{
    struct vuf_msg m, r;
    uint8_t big[VUF_MAX_PAYLOAD + 1];

    (void)state;
    memset(big, 0x11, sizeof(big));
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0), 0);
    assert_int_equal(m.hdr.request, 1);
    assert_int_equal(m.hdr.flags, VUF_VERSION);
    assert_int_equal(m.hdr.size, 0);
    assert_int_equal(m.nfds, 0);
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_SHMEM_CONFIG, 0, big, VUF_MAX_PAYLOAD), 0);
    assert_int_equal(vuf_msg_init(&m, 1, 0, big, VUF_MAX_PAYLOAD + 1), -EMSGSIZE);
    assert_int_equal(vuf_msg_init(&m, 1, 0, big, 0xffffffffu), -EMSGSIZE);

    /* A reply drops NEED_REPLY and keeps the code. */
    uint64_t v = 42;
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_FEATURES, VUF_FLAG_NEED_REPLY, &v, 8), 0);
    assert_int_equal(m.hdr.flags, VUF_VERSION | VUF_FLAG_NEED_REPLY);
    assert_int_equal(m.payload.u64, 42);
    v = 0;
    assert_int_equal(vuf_msg_init_reply(&r, &m, &v, 8), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_SET_FEATURES);
    assert_int_equal(r.hdr.flags, VUF_VERSION | VUF_FLAG_REPLY);
    assert_int_equal(r.hdr.size, 8);
    assert_int_equal(r.nfds, 0);
    assert_int_equal(r.payload.u64, 0);
    assert_int_equal(vuf_msg_init_reply(&r, &m, big, VUF_MAX_PAYLOAD + 1), -EMSGSIZE);
}

/* ------------------------------------------------------------------------ */
/* Validation rules                                                         */
/* ------------------------------------------------------------------------ */

/* Run one bad (or good) header through hdr_check (if want_hdr is not 1),
 * vuf_msg_check and vuf_msg_parse; all must give `want`. want_hdr == 1 means
 * "hdr_check need not catch this" (an exact-size or fd rule). */
static void expect_all(enum vuf_channel ch, bool reply, uint32_t code, uint32_t flags,
                       uint32_t size, unsigned nfds, const union vuf_payload *p, int want,
                       int want_hdr, const char *what)
{
    static uint8_t buf[VUF_HDR_SIZE + 4096];
    struct vuf_msg m, out;
    struct vuf_hdr h = {.request = code, .flags = flags, .size = size};
    uint32_t copy = size <= VUF_MAX_PAYLOAD ? size : VUF_MAX_PAYLOAD;
    size_t len;

    if (want_hdr != 1)
        CHECK_RC(vuf_hdr_check(&h, ch, reply, NULL), want_hdr,
                 "%s %s code %u flags 0x%x size %u: %s", chname(ch), reply ? "reply" : "req", code,
                 flags, size, what);
    memset(&m, 0, sizeof(m));
    m.hdr = h;
    if (p)
        memcpy(m.payload.raw, p->raw, copy);
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m.fds[i] = 200 + (int)i;
    m.nfds = nfds;
    CHECK_RC(vuf_msg_check(&m, ch, reply), want, "%s %s code %u flags 0x%x size %u nfds %u: %s",
             chname(ch), reply ? "reply" : "req", code, flags, size, nfds, what);

    /* parse sees the whole message (even an oversized one) so only the rule
     * under test can fail. */
    memset(buf, 0, sizeof(buf));
    len = raw_msg(buf, code, flags, size, m.payload.raw, copy);
    if (size > copy && size <= sizeof(buf) - VUF_HDR_SIZE)
        len = VUF_HDR_SIZE + size;
    CHECK_RC(vuf_msg_parse(buf, len, nfds, ch, reply, &out),
             want == 0 ? (int)(VUF_HDR_SIZE + size) : want,
             "parse %s %s code %u flags 0x%x size %u nfds %u: %s", chname(ch),
             reply ? "reply" : "req", code, flags, size, nfds, what);
}

/* A valid (size, nfds, payload) for a request or reply of a rule. */
static bool valid_shape(enum vuf_channel ch, const struct vuf_msg_rule *r, bool reply,
                        uint32_t *size, unsigned *nfds, union vuf_payload *p)
{
    unsigned smin = reply ? r->reply_min : r->size_min;
    unsigned smax = reply ? r->reply_max : r->size_max;
    unsigned step = reply ? r->reply_step : r->size_step;
    unsigned fmin = reply ? r->reply_fds_min : r->fds_min;
    unsigned fmax = reply ? r->reply_fds_max : r->fds_max;

    for (unsigned s = smin; s <= smax; s += step ? step : 1) {
        for (unsigned f = fmin; f <= fmax; f++) {
            if (make_payload(ch, r->code, reply, s, f, p)) {
                *size = s;
                *nfds = f;
                return true;
            }
        }
        if (!step)
            break;
    }
    return false;
}

static void flag_and_size_rules(enum vuf_channel ch, const struct vuf_msg_rule *r, bool reply)
{
    static const uint32_t bad_bits[] = {0x10, 0x20, 0x100, 0x10000, 0x80000000u};
    const uint32_t base = reply ? (VUF_VERSION | VUF_FLAG_REPLY) : VUF_VERSION;
    unsigned smin = reply ? r->reply_min : r->size_min;
    unsigned smax = reply ? r->reply_max : r->size_max;
    unsigned step = reply ? r->reply_step : r->size_step;
    unsigned fmin = reply ? r->reply_fds_min : r->fds_min;
    unsigned fmax = reply ? r->reply_fds_max : r->fds_max;
    union vuf_payload p;
    uint32_t size = 0;
    unsigned nfds = 0;
    const struct vuf_msg_rule *got = NULL;
    struct vuf_hdr h;

    if (!valid_shape(ch, r, reply, &size, &nfds, &p)) {
        CHECK(false, "%s %s: no valid shape", chname(ch), r->name);
        return;
    }

    /* The good case, and hdr_check hands back the rule. */
    expect_all(ch, reply, r->code, base, size, nfds, &p, 0, 0, "valid");
    h = (struct vuf_hdr){.request = r->code, .flags = base, .size = size};
    CHECK_RC(vuf_hdr_check(&h, ch, reply, &got), 0, "%s %s", chname(ch), r->name);
    CHECK(got == r, "%s %s: hdr_check rule_out %p, vuf_msg_rule %p", chname(ch), r->name,
          (const void *)got, (const void *)r);

    /* Version must be exactly 1. */
    expect_all(ch, reply, r->code, (base & ~VUF_VERSION_MASK) | 0, size, nfds, &p, -EPROTO, -EPROTO,
               "version 0");
    expect_all(ch, reply, r->code, (base & ~VUF_VERSION_MASK) | 2, size, nfds, &p, -EPROTO, -EPROTO,
               "version 2");
    expect_all(ch, reply, r->code, (base & ~VUF_VERSION_MASK) | 3, size, nfds, &p, -EPROTO, -EPROTO,
               "version 3");
    for (size_t i = 0; i < sizeof(bad_bits) / sizeof(bad_bits[0]); i++)
        expect_all(ch, reply, r->code, base | bad_bits[i], size, nfds, &p, -EPROTO, -EPROTO,
                   "unknown flag bit");
    if (reply) {
        expect_all(ch, reply, r->code, VUF_VERSION, size, nfds, &p, -EPROTO, -EPROTO,
                   "reply without REPLY");
        expect_all(ch, reply, r->code, base | VUF_FLAG_NEED_REPLY, size, nfds, &p, -EPROTO, -EPROTO,
                   "reply with NEED_REPLY");
    } else {
        expect_all(ch, reply, r->code, base | VUF_FLAG_REPLY, size, nfds, &p, -EPROTO, -EPROTO,
                   "request with REPLY");
        expect_all(ch, reply, r->code, base | VUF_FLAG_NEED_REPLY, size, nfds, &p, 0, 0,
                   "request with NEED_REPLY");
    }

    /* Sizes. */
    if (smin > 0)
        expect_all(ch, reply, r->code, base, smin - 1, nfds, &p, -EMSGSIZE, -EMSGSIZE,
                   "size below min");
    if (smax < VUF_MAX_PAYLOAD)
        expect_all(ch, reply, r->code, base, smax + 1, nfds, &p, -EMSGSIZE, -EMSGSIZE,
                   "size above max");
    if (step > 1)
        expect_all(ch, reply, r->code, base, smin + step + 1, nfds, &p, -EMSGSIZE, 1,
                   "size off step");
    expect_all(ch, reply, r->code, base, VUF_MAX_PAYLOAD + 1, nfds, &p, -EMSGSIZE, -EMSGSIZE,
               "size > VUF_MAX_PAYLOAD");
    expect_all(ch, reply, r->code, base, 4000, nfds, &p, -EMSGSIZE, -EMSGSIZE, "size 4000");
    h = (struct vuf_hdr){.request = r->code, .flags = base, .size = 0xffffffffu};
    CHECK_RC(vuf_hdr_check(&h, ch, reply, NULL), -EMSGSIZE, "%s %s size 4 GiB", chname(ch),
             r->name);

    /* Fd counts. */
    if (fmin > 0)
        expect_all(ch, reply, r->code, base, size, fmin - 1, &p, -EBADF, 1, "too few fds");
    if (fmax < VUF_MAX_FDS)
        expect_all(ch, reply, r->code, base, size, fmax + 1, &p, -EBADF, 1, "too many fds");
    expect_all(ch, reply, r->code, base, size, VUF_MAX_FDS + 1, &p, -EBADF, 1,
               "more than VUF_MAX_FDS fds");

    /* Buffer shorter than the header says. */
    {
        uint8_t buf[VUF_HDR_SIZE + VUF_MAX_PAYLOAD];
        struct vuf_msg out;
        size_t len = raw_msg(buf, r->code, base, size, p.raw, size);

        for (size_t l = 0; l < VUF_HDR_SIZE; l++)
            CHECK_RC(vuf_msg_parse(buf, l, nfds, ch, reply, &out), -EBADMSG,
                     "%s %s: parse of %zu bytes", chname(ch), r->name, l);
        if (size > 0) {
            CHECK_RC(vuf_msg_parse(buf, len - 1, nfds, ch, reply, &out), -EBADMSG,
                     "%s %s: parse one byte short", chname(ch), r->name);
            CHECK_RC(vuf_msg_parse(buf, VUF_HDR_SIZE, nfds, ch, reply, &out), -EBADMSG,
                     "%s %s: parse header only", chname(ch), r->name);
        }
    }
}

static void test_validation_rules_all_codes(void **state)
{
    (void)state;
    SOFT_BEGIN();
    for (uint32_t c = 1; c <= VUF_REQ_MAX; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_FRONTEND, c);

        if (!r)
            continue; /* reported by the table tests */
        flag_and_size_rules(VUF_CH_FRONTEND, r, false);
        flag_and_size_rules(VUF_CH_FRONTEND, r, true);
    }
    for (uint32_t c = 1; c <= VUF_BREQ_MAX; c++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, c);

        if (!r)
            continue;
        flag_and_size_rules(VUF_CH_BACKEND, r, false);
        flag_and_size_rules(VUF_CH_BACKEND, r, true);
    }
    SOFT_END();
}

static void test_validation_named_cases(void **state)
{
    static const uint32_t fe_unknown[] = {0, 46, 1000, 0xffffffffu};
    static const uint32_t be_unknown[] = {0, 11, 1000};
    union vuf_payload p;
    const struct vuf_msg_rule *got = (const void *)&p;
    struct vuf_hdr h;

    (void)state;
    SOFT_BEGIN();
    memset(&p, 0, sizeof(p));
    for (size_t i = 0; i < sizeof(fe_unknown) / sizeof(fe_unknown[0]); i++) {
        expect_all(VUF_CH_FRONTEND, false, fe_unknown[i], VUF_VERSION, 0, 0, &p, -EPROTO, -EPROTO,
                   "unknown code");
        expect_all(VUF_CH_FRONTEND, true, fe_unknown[i], VUF_VERSION | VUF_FLAG_REPLY, 8, 0, &p,
                   -EPROTO, -EPROTO, "unknown code reply");
    }
    for (size_t i = 0; i < sizeof(be_unknown) / sizeof(be_unknown[0]); i++)
        expect_all(VUF_CH_BACKEND, false, be_unknown[i], VUF_VERSION, 0, 0, &p, -EPROTO, -EPROTO,
                   "unknown back-end code");
    /* 44 is front-end only. */
    expect_all(VUF_CH_BACKEND, false, 44, VUF_VERSION, 0, 0, &p, -EPROTO, -EPROTO,
               "GET_SHMEM_CONFIG on the back-end channel");

    /* rule_out is left alone (or NULLed) for an unknown code, not set to junk. */
    h = (struct vuf_hdr){.request = 46, .flags = VUF_VERSION, .size = 0};
    CHECK_RC(vuf_hdr_check(&h, VUF_CH_FRONTEND, false, &got), -EPROTO, "46");
    CHECK(got == (const void *)&p || got == NULL, "rule_out set for unknown code");

    /* The brief's named examples. */
    memset(&p, 0, sizeof(p));
    p.mem.nregions = 1;
    fill_region(&p.mem.regions[0], 0);
    expect_all(VUF_CH_FRONTEND, false, VUF_REQ_SET_MEM_TABLE, VUF_VERSION, 8 + 33, 1, &p, -EMSGSIZE,
               1, "SET_MEM_TABLE 8+33");
    expect_all(VUF_CH_FRONTEND, false, VUF_REQ_SET_MEM_TABLE, VUF_VERSION, 8 + 32, 1, &p, 0, 0,
               "SET_MEM_TABLE 1 region");
    expect_all(VUF_CH_FRONTEND, false, VUF_REQ_GET_FEATURES, VUF_VERSION, 2057, 0, &p, -EMSGSIZE,
               -EMSGSIZE, "size 2057");
    expect_all(VUF_CH_FRONTEND, true, VUF_REQ_GET_FEATURES, VUF_VERSION | VUF_FLAG_REPLY, 0, 0, &p,
               -EMSGSIZE, -EMSGSIZE, "GET_FEATURES reply without its u64");
    expect_all(VUF_CH_FRONTEND, false, VUF_REQ_SET_DEVICE_STATE_FD, VUF_VERSION, 8, 0, &p, -EBADF,
               1, "SET_DEVICE_STATE_FD without fd");
    memset(&p, 0, sizeof(p));
    p.mmap.len = 0x1000;
    p.mmap.flags = VUF_SHMEM_MAP_RW;
    expect_all(VUF_CH_BACKEND, false, VUF_BREQ_SHMEM_MAP, VUF_VERSION, 40, 0, &p, -EBADF, 1,
               "SHMEM_MAP without fd");
    expect_all(VUF_CH_BACKEND, false, VUF_BREQ_SHMEM_MAP, VUF_VERSION, 40, 2, &p, -EBADF, 1,
               "SHMEM_MAP with 2 fds");
    expect_all(VUF_CH_BACKEND, false, VUF_BREQ_SHMEM_MAP, VUF_VERSION, 40, 1, &p, 0, 0,
               "SHMEM_MAP with 1 fd");
    expect_all(VUF_CH_FRONTEND, false, VUF_REQ_GET_FEATURES, VUF_VERSION, 0, 1, &p, -EBADF, 1,
               "GET_FEATURES with an fd");

    /* GET_CONFIG reply of size 0 (the spec's error answer) is within the
     * table's reply bounds, so the header check passes. */
    h = (struct vuf_hdr){
        .request = VUF_REQ_GET_CONFIG, .flags = VUF_VERSION | VUF_FLAG_REPLY, .size = 0};
    CHECK_RC(vuf_hdr_check(&h, VUF_CH_FRONTEND, true, NULL), 0, "GET_CONFIG reply size 0");
    /* Back-end requests on the back-end channel follow the same flag rules. */
    h = (struct vuf_hdr){.request = VUF_BREQ_CONFIG_CHANGE_MSG,
                         .flags = VUF_VERSION | VUF_FLAG_NEED_REPLY,
                         .size = 0};
    CHECK_RC(vuf_hdr_check(&h, VUF_CH_BACKEND, false, NULL), 0, "CONFIG_CHANGE + NEED_REPLY");
    SOFT_END();
}

/*
 * wire.h: a reply's size must lie within the rule's reply bounds. Messages
 * that always reply have their own shape; per the spec ((a), "If a message
 * already has a reply, setting NEED_REPLY does not add a second one") they
 * never answer with a u64 ack, so an 8-byte reply to them is malformed.
 */
static void test_shaped_reply_rejects_u64_ack(void **state)
{
    static const uint32_t codes[] = {VUF_REQ_GET_SHMEM_CONFIG, VUF_REQ_POSTCOPY_ADVISE,
                                     VUF_REQ_CREATE_CRYPTO_SESSION, VUF_REQ_GET_INFLIGHT_FD};
    union vuf_payload p;

    (void)state;
    SOFT_BEGIN();
    memset(&p, 0, sizeof(p));
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        expect_all(VUF_CH_FRONTEND, true, codes[i], VUF_VERSION | VUF_FLAG_REPLY, 8, 0, &p,
                   -EMSGSIZE, -EMSGSIZE, "8-byte ack as reply to a shaped-reply request");
    SOFT_END();
}

/* Two messages back to back in one buffer parse one at a time. */
static void test_parse_stream(void **state)
{
    uint8_t buf[256];
    struct vuf_msg out;
    uint64_t v = 0x1122334455667788ull;
    size_t off;
    int rc;

    (void)state;
    off = raw_msg(buf, VUF_REQ_SET_FEATURES, VUF_VERSION, 8, &v, 8);
    off += raw_msg(buf + off, VUF_REQ_GET_FEATURES, VUF_VERSION, 0, NULL, 0);
    off += raw_msg(buf + off, VUF_REQ_SET_OWNER, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0, NULL, 0);
    rc = vuf_msg_parse(buf, off, 0, VUF_CH_FRONTEND, false, &out);
    assert_int_equal(rc, 20);
    assert_int_equal(out.hdr.request, VUF_REQ_SET_FEATURES);
    assert_int_equal(out.payload.u64, v);
    rc = vuf_msg_parse(buf + 20, off - 20, 0, VUF_CH_FRONTEND, false, &out);
    assert_int_equal(rc, 12);
    assert_int_equal(out.hdr.request, VUF_REQ_GET_FEATURES);
    rc = vuf_msg_parse(buf + 32, off - 32, 0, VUF_CH_FRONTEND, false, &out);
    assert_int_equal(rc, 12);
    assert_int_equal(out.hdr.flags, VUF_VERSION | VUF_FLAG_NEED_REPLY);
    assert_int_equal(out.nfds, 0);
}

/* ------------------------------------------------------------------------ */
/* Typed decoders                                                           */
/* ------------------------------------------------------------------------ */

static void mk(struct vuf_msg *m, uint32_t code, const void *p, uint32_t size, unsigned nfds)
{
    assert_int_equal(vuf_msg_init(m, code, 0, p, size), 0);
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m->fds[i] = i < nfds ? 300 + (int)i : -1;
    m->nfds = nfds;
}

static void mk_reply(struct vuf_msg *m, uint32_t code, const void *p, uint32_t size, unsigned nfds)
{
    struct vuf_msg req;

    assert_int_equal(vuf_msg_init(&req, code, 0, NULL, 0), 0);
    assert_int_equal(vuf_msg_init_reply(m, &req, p, size), 0);
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m->fds[i] = i < nfds ? 300 + (int)i : -1;
    m->nfds = nfds;
}

/* Both the decoder and the full check must reject a semantic error. */
#define BAD(decode_call, m, ch, reply, what)                                        \
    do {                                                                            \
        CHECK_RC(decode_call, -EPROTO, "%s", what);                                 \
        CHECK(vuf_msg_check(m, ch, reply) != 0, "vuf_msg_check accepts: %s", what); \
    } while (0)
#define GOOD(decode_call, m, ch, reply, what)                                \
    do {                                                                     \
        CHECK_RC(decode_call, 0, "%s", what);                                \
        CHECK_RC(vuf_msg_check(m, ch, reply), 0, "vuf_msg_check: %s", what); \
    } while (0)

static void test_decode_u64_state(void **state)
{
    struct vuf_msg m;
    uint64_t v = 0xdeadbeefcafef00dull, out = 0;
    struct vuf_vring_state s = {.index = 3, .num = 256}, so;

    (void)state;
    SOFT_BEGIN();
    mk(&m, VUF_REQ_SET_FEATURES, &v, 8, 0);
    GOOD(vuf_decode_u64(&m, &out), &m, VUF_CH_FRONTEND, false, "u64");
    CHECK(out == v, "u64 out %" PRIx64, out);
    mk(&m, VUF_REQ_GET_FEATURES, NULL, 0, 0);
    CHECK_RC(vuf_decode_u64(&m, &out), -EPROTO, "u64 from size 0");
    uint64_t two[2] = {v, v};
    mk(&m, VUF_REQ_SET_LOG_BASE, two, 16, 0);
    CHECK_RC(vuf_decode_u64(&m, &out), -EPROTO, "u64 from size 16");

    mk(&m, VUF_REQ_SET_VRING_NUM, &s, 8, 0);
    memset(&so, 0, sizeof(so));
    GOOD(vuf_decode_vring_state(&m, &so), &m, VUF_CH_FRONTEND, false, "vring state");
    CHECK(so.index == 3 && so.num == 256, "state out %u %u", so.index, so.num);
    mk(&m, VUF_REQ_GET_FEATURES, NULL, 0, 0);
    CHECK_RC(vuf_decode_vring_state(&m, &so), -EPROTO, "vring state from size 0");
    SOFT_END();
}

static void test_decode_vring_addr(void **state)
{
    struct vuf_vring_addr a0 = {.index = 0,
                                .flags = 0,
                                .desc = 0x10000,
                                .used = 0x20000,
                                .avail = 0x30000,
                                .log = 0},
                          a, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
#define ADDR_CASE(field, val, good, what)                                            \
    do {                                                                             \
        a = a0;                                                                      \
        a.field = val;                                                               \
        mk(&m, VUF_REQ_SET_VRING_ADDR, &a, sizeof(a), 0);                            \
        if (good)                                                                    \
            GOOD(vuf_decode_vring_addr(&m, &out), &m, VUF_CH_FRONTEND, false, what); \
        else                                                                         \
            BAD(vuf_decode_vring_addr(&m, &out), &m, VUF_CH_FRONTEND, false, what);  \
    } while (0)
    ADDR_CASE(index, 0, true, "aligned");
    CHECK(memcmp(&out, &a0, sizeof(out)) == 0, "vring addr out differs");
    ADDR_CASE(flags, VUF_VRING_F_LOG, true, "flags LOG");
    ADDR_CASE(desc, 0x10010, true, "desc 16-aligned");
    ADDR_CASE(avail, 0x30002, true, "avail 2-aligned");
    ADDR_CASE(used, 0x20004, true, "used 4-aligned");
    ADDR_CASE(log, 0x12345, true, "log address any");
    ADDR_CASE(desc, 0x10008, false, "desc 8-aligned only");
    ADDR_CASE(desc, 0x10001, false, "desc odd");
    ADDR_CASE(avail, 0x30001, false, "avail odd");
    ADDR_CASE(used, 0x20002, false, "used 2-aligned only");
    ADDR_CASE(used, 0x20001, false, "used odd");
    ADDR_CASE(flags, 2, false, "flags bit 1");
    ADDR_CASE(flags, 0x80000000u, false, "flags bit 31");
    ADDR_CASE(flags, 3, false, "flags LOG|2");
#undef ADDR_CASE
    SOFT_END();
}

static void test_decode_mem_table(void **state)
{
    struct vuf_mem_table t, out;
    struct vuf_msg m;
    char what[64];

    (void)state;
    SOFT_BEGIN();
    for (unsigned n = 1; n <= 8; n++) {
        memset(&t, 0, sizeof(t));
        t.nregions = n;
        for (unsigned i = 0; i < n; i++)
            fill_region(&t.regions[i], i);
        mk(&m, VUF_REQ_SET_MEM_TABLE, &t, VUF_MEM_TABLE_SIZE(n), n);
        memset(&out, 0xcc, sizeof(out));
        snprintf(what, sizeof(what), "mem table %u regions", n);
        GOOD(vuf_decode_mem_table(&m, &out), &m, VUF_CH_FRONTEND, false, what);
        CHECK(out.nregions == n && out.padding == 0 &&
                  memcmp(out.regions, t.regions, n * sizeof(t.regions[0])) == 0,
              "%s: out differs", what);
    }
    /* A region that ends exactly at 2^64 - 1 does not overflow. */
    memset(&t, 0, sizeof(t));
    t.nregions = 1;
    t.regions[0].guest_phys_addr = 0xffffffffffff0000ull;
    t.regions[0].memory_size = 0xffff;
    t.regions[0].userspace_addr = 0x1000;
    mk(&m, VUF_REQ_SET_MEM_TABLE, &t, VUF_MEM_TABLE_SIZE(1), 1);
    GOOD(vuf_decode_mem_table(&m, &out), &m, VUF_CH_FRONTEND, false, "region ending at 2^64-1");

#define TBL_CASE(n, size, nfds, mutate, what)                                  \
    do {                                                                       \
        memset(&t, 0, sizeof(t));                                              \
        t.nregions = n;                                                        \
        for (unsigned i = 0; i < 8; i++)                                       \
            fill_region(&t.regions[i], i);                                     \
        mutate;                                                                \
        mk(&m, VUF_REQ_SET_MEM_TABLE, &t, size, nfds);                         \
        BAD(vuf_decode_mem_table(&m, &out), &m, VUF_CH_FRONTEND, false, what); \
    } while (0)
    TBL_CASE(0, 8, 0, (void)0, "nregions 0");
    TBL_CASE(9, 264, 8, (void)0, "nregions 9 (size 264)");
    TBL_CASE(2, VUF_MEM_TABLE_SIZE(1), 2, (void)0, "nregions 2, size for 1");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(2), 1, (void)0, "nregions 1, size for 2");
    TBL_CASE(2, VUF_MEM_TABLE_SIZE(2), 1, (void)0, "nregions 2, 1 fd");
    TBL_CASE(2, VUF_MEM_TABLE_SIZE(2), 3, (void)0, "nregions 2, 3 fds");
    TBL_CASE(2, VUF_MEM_TABLE_SIZE(2), 0, (void)0, "nregions 2, no fd");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(1), 1, t.padding = 1, "padding 1");
    TBL_CASE(2, VUF_MEM_TABLE_SIZE(2), 2, t.regions[1].memory_size = 0, "region 1 size 0");
    TBL_CASE(
        1, VUF_MEM_TABLE_SIZE(1), 1,
        (t.regions[0].guest_phys_addr = 0xfffffffffffff000ull, t.regions[0].memory_size = 0x2000),
        "gpa + size overflows");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(1), 1,
             (t.regions[0].userspace_addr = 0xffffffffffffffffull, t.regions[0].memory_size = 1),
             "uva + size == 2^64 exactly (uva ~0, size 1)");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(1), 1,
             (t.regions[0].mmap_offset = 0xfffffffffffff000ull, t.regions[0].memory_size = 0x2000),
             "mmap_offset + size overflows");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(1), 1,
             (t.regions[0].guest_phys_addr = 0 - 0x1000ull, t.regions[0].memory_size = 0x1000),
             "gpa + size == 2^64 exactly");
    TBL_CASE(1, VUF_MEM_TABLE_SIZE(1), 1,
             (t.regions[0].mmap_offset = 0 - 0x1000ull, t.regions[0].memory_size = 0x1000),
             "mmap_offset + size == 2^64 exactly");
    TBL_CASE(3, VUF_MEM_TABLE_SIZE(3), 3,
             (t.regions[2].guest_phys_addr = ~0ull, t.regions[2].memory_size = 2),
             "last region overflows");
#undef TBL_CASE

    /* Wrong-size message to the decoder. */
    mk(&m, VUF_REQ_GET_FEATURES, NULL, 0, 0);
    CHECK_RC(vuf_decode_mem_table(&m, &out), -EPROTO, "mem table from size 0");
    SOFT_END();
}

static void test_decode_mem_single(void **state)
{
    struct vuf_mem_single s;
    struct vuf_mem_region out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
    memset(&s, 0, sizeof(s));
    fill_region(&s.region, 3);
    mk(&m, VUF_REQ_ADD_MEM_REG, &s, sizeof(s), 1);
    GOOD(vuf_decode_mem_single(&m, &out), &m, VUF_CH_FRONTEND, false, "ADD_MEM_REG");
    CHECK(memcmp(&out, &s.region, sizeof(out)) == 0, "single region out differs");
    mk(&m, VUF_REQ_REM_MEM_REG, &s, sizeof(s), 0);
    GOOD(vuf_decode_mem_single(&m, &out), &m, VUF_CH_FRONTEND, false, "REM_MEM_REG");

#define ONE_CASE(code, nfds, mutate, what)                                      \
    do {                                                                        \
        memset(&s, 0, sizeof(s));                                               \
        fill_region(&s.region, 3);                                              \
        mutate;                                                                 \
        mk(&m, code, &s, sizeof(s), nfds);                                      \
        BAD(vuf_decode_mem_single(&m, &out), &m, VUF_CH_FRONTEND, false, what); \
    } while (0)
    ONE_CASE(VUF_REQ_ADD_MEM_REG, 1, s.region.memory_size = 0, "ADD size 0");
    ONE_CASE(VUF_REQ_REM_MEM_REG, 0, s.region.memory_size = 0, "REM size 0");
    ONE_CASE(VUF_REQ_ADD_MEM_REG, 1,
             (s.region.guest_phys_addr = ~0ull - 10, s.region.memory_size = 0x1000),
             "ADD gpa overflow");
    ONE_CASE(VUF_REQ_ADD_MEM_REG, 1,
             (s.region.userspace_addr = ~0ull - 10, s.region.memory_size = 0x1000),
             "ADD uva overflow");
    ONE_CASE(VUF_REQ_ADD_MEM_REG, 1,
             (s.region.mmap_offset = ~0ull - 10, s.region.memory_size = 0x1000),
             "ADD offset overflow");
    ONE_CASE(VUF_REQ_ADD_MEM_REG, 1,
             (s.region.userspace_addr = 0 - 0x1000ull, s.region.memory_size = 0x1000),
             "ADD uva + size == 2^64 exactly");
#undef ONE_CASE
    SOFT_END();
}

static void test_decode_vring_file(void **state)
{
    static const uint32_t codes[] = {VUF_REQ_SET_VRING_KICK, VUF_REQ_SET_VRING_CALL,
                                     VUF_REQ_SET_VRING_ERR};
    struct vuf_msg m;
    uint64_t v;
    uint32_t idx;
    bool nofd;

    (void)state;
    SOFT_BEGIN();
    for (size_t i = 0; i < 3; i++) {
        uint32_t c = codes[i];
        const char *nm = vuf_request_name(c);

        v = 0;
        mk(&m, c, &v, 8, 1);
        idx = 99;
        nofd = true;
        GOOD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, nm);
        CHECK(idx == 0 && !nofd, "%s: index %u nofd %d", nm, idx, nofd);
        v = 255;
        mk(&m, c, &v, 8, 1);
        GOOD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, nm);
        CHECK(idx == 255 && !nofd, "%s: index %u nofd %d", nm, idx, nofd);
        v = 7 | VUF_VRING_NOFD;
        mk(&m, c, &v, 8, 0);
        GOOD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, nm);
        CHECK(idx == 7 && nofd, "%s: index %u nofd %d", nm, idx, nofd);

        /* Index 256 is not representable: bit 8 is NOFD. With an fd attached,
         * the value 256 is "NOFD with fd". */
        v = 256;
        mk(&m, c, &v, 8, 1);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false,
            "u64 256 (index 0 + NOFD) with an fd");
        v = 0x200;
        mk(&m, c, &v, 8, 1);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false,
            "bit 9 (index 512)");
        v = 0x200 | VUF_VRING_NOFD;
        mk(&m, c, &v, 8, 0);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, "bit 9 with NOFD");
        v = 1ull << 63;
        mk(&m, c, &v, 8, 1);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, "bit 63");
        v = 1ull << 32 | 1;
        mk(&m, c, &v, 8, 1);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, "bit 32");
        v = 1 | VUF_VRING_NOFD;
        mk(&m, c, &v, 8, 1);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, "NOFD with fd");
        v = 1;
        mk(&m, c, &v, 8, 0);
        BAD(vuf_decode_vring_file(&m, &idx, &nofd), &m, VUF_CH_FRONTEND, false, "no NOFD, no fd");
    }
    SOFT_END();
}

static void test_decode_config(void **state)
{
    union vuf_payload u; /* room for a payload larger than struct vuf_config */
    struct vuf_config *c = &u.config, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
#define CFG(code, reply_, off, sz, fl, psize, good, what)                         \
    do {                                                                          \
        memset(&u, 0, sizeof(u));                                                 \
        c->offset = off;                                                          \
        c->size = sz;                                                             \
        c->flags = fl;                                                            \
        fill_pattern(c->region, VUF_CONFIG_MAX, 1);                               \
        if (reply_)                                                               \
            mk_reply(&m, code, &u, psize, 0);                                     \
        else                                                                      \
            mk(&m, code, &u, psize, 0);                                           \
        memset(&out, 0, sizeof(out));                                             \
        if (good)                                                                 \
            GOOD(vuf_decode_config(&m, &out), &m, VUF_CH_FRONTEND, reply_, what); \
        else                                                                      \
            BAD(vuf_decode_config(&m, &out), &m, VUF_CH_FRONTEND, reply_, what);  \
    } while (0)
    CFG(VUF_REQ_GET_CONFIG, false, 0, 60, 0, 12 + 60, true, "GET_CONFIG blk 60");
    CFG(VUF_REQ_GET_CONFIG, true, 0, 60, 0, 12 + 60, true, "GET_CONFIG reply 60");
    CHECK(out.offset == 0 && out.size == 60 && memcmp(out.region, c->region, 60) == 0,
          "config reply out differs");
    CFG(VUF_REQ_SET_CONFIG, false, 20, 4, VUF_CONFIG_FLAG_WRITABLE, 16, true, "SET_CONFIG 4");
    CFG(VUF_REQ_SET_CONFIG, false, 20, 4, VUF_CONFIG_FLAG_MIGRATION, 16, true,
        "SET_CONFIG migration");
    CFG(VUF_REQ_GET_CONFIG, false, 0, 256, 0, 268, true, "size 256");
    CFG(VUF_REQ_GET_CONFIG, false, 0x1000 - 4, 4, 0, 16, true, "offset + size == 0x1000");
    CFG(VUF_REQ_GET_CONFIG, false, 0x1000 - 256, 256, 0, 268, true, "last 256 bytes");

    CFG(VUF_REQ_GET_CONFIG, false, 0, 257, 0, 12 + 257, false, "config size 257");
    CFG(VUF_REQ_GET_CONFIG, false, 0, 257, 0, 268, false, "config size 257, payload 268");
    CFG(VUF_REQ_GET_CONFIG, false, 0, 4, 0, 12 + 8, false, "size 4, payload 12+8");
    CFG(VUF_REQ_GET_CONFIG, false, 0, 8, 0, 12 + 4, false, "size 8, payload 12+4");
    CFG(VUF_REQ_GET_CONFIG, true, 0, 60, 0, 12 + 59, false, "reply size mismatch");
    CFG(VUF_REQ_SET_CONFIG, false, 0x1000 - 3, 4, 0, 16, false, "offset + size 0x1001");
    CFG(VUF_REQ_SET_CONFIG, false, 0x1000, 1, 0, 13, false, "offset 0x1000");
    CFG(VUF_REQ_SET_CONFIG, false, 0xffffffffu, 4, 0, 16, false, "offset + size overflows");
    CFG(VUF_REQ_SET_CONFIG, false, 0xfffffffcu, 4, 0, 16, false, "offset + size wraps to 0 in u32");
    CFG(VUF_REQ_SET_CONFIG, false, 0, 4, 2, 16, false, "flags 2");
    CFG(VUF_REQ_SET_CONFIG, false, 0, 4, 3, 16, false, "flags 3 (a value, not a mask)");
#undef CFG
    SOFT_END();
}

static void test_decode_device_state(void **state)
{
    struct vuf_device_state d, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
#define DS(dir, ph, good, what)                                                        \
    do {                                                                               \
        d.direction = dir;                                                             \
        d.phase = ph;                                                                  \
        mk(&m, VUF_REQ_SET_DEVICE_STATE_FD, &d, sizeof(d), 1);                         \
        if (good)                                                                      \
            GOOD(vuf_decode_device_state(&m, &out), &m, VUF_CH_FRONTEND, false, what); \
        else                                                                           \
            BAD(vuf_decode_device_state(&m, &out), &m, VUF_CH_FRONTEND, false, what);  \
    } while (0)
    DS(VUF_STATE_DIR_SAVE, 0, true, "save");
    DS(VUF_STATE_DIR_LOAD, 0, true, "load");
    CHECK(out.direction == 1 && out.phase == 0, "device state out");
    DS(2, 0, false, "direction 2");
    DS(0xffffffffu, 0, false, "direction ~0");
    DS(0, 1, false, "phase 1");
    DS(1, 0x80000000u, false, "phase bit 31");
#undef DS
    SOFT_END();
}

static void test_decode_shmem_map(void **state)
{
    struct vuf_shmem_map mm, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
#define SM(code, nfds, mutate, good, what)                                         \
    do {                                                                           \
        memset(&mm, 0, sizeof(mm));                                                \
        mm.shmid = 2;                                                              \
        mm.fd_offset = 0x1000;                                                     \
        mm.shm_offset = 0x4000;                                                    \
        mm.len = 0x2000;                                                           \
        mm.flags = VUF_SHMEM_MAP_RW;                                               \
        mutate;                                                                    \
        mk(&m, code, &mm, sizeof(mm), nfds);                                       \
        if (good)                                                                  \
            GOOD(vuf_decode_shmem_map(&m, &out), &m, VUF_CH_BACKEND, false, what); \
        else                                                                       \
            BAD(vuf_decode_shmem_map(&m, &out), &m, VUF_CH_BACKEND, false, what);  \
    } while (0)
    SM(VUF_BREQ_SHMEM_MAP, 1, (void)0, true, "map RW");
    CHECK(memcmp(&out, &mm, sizeof(out)) == 0, "shmem map out differs");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.flags = 0, true, "map RO");
    SM(VUF_BREQ_SHMEM_UNMAP, 0, (void)0, true, "unmap");
    SM(VUF_BREQ_SHMEM_MAP, 1, (mm.fd_offset = ~0ull - 0x2000), true, "fd_offset + len == 2^64 - 1");
    SM(VUF_BREQ_SHMEM_MAP, 1, (mm.shm_offset = ~0ull - 0x2000), true,
       "shm_offset + len == 2^64 - 1");
    SM(VUF_BREQ_SHMEM_MAP, 1, (mm.fd_offset = 0 - 0x2000ull), false,
       "fd_offset + len == 2^64 exactly");
    SM(VUF_BREQ_SHMEM_MAP, 1, (mm.shm_offset = 0 - 0x2000ull), false,
       "shm_offset + len == 2^64 exactly");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.flags = 2, false, "flags 2");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.flags = 3, false, "flags 3");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.len = 0, false, "len 0");
    SM(VUF_BREQ_SHMEM_UNMAP, 0, mm.len = 0, false, "unmap len 0");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.fd_offset = ~0ull - 0x1000, false, "fd_offset + len overflows");
    SM(VUF_BREQ_SHMEM_MAP, 1, mm.shm_offset = ~0ull, false, "shm_offset + len overflows");
    SM(VUF_BREQ_SHMEM_UNMAP, 0, mm.shm_offset = ~0ull - 0x1000, false,
       "unmap shm_offset + len overflows");
#undef SM
    SOFT_END();
}

static void test_decode_shmem_config(void **state)
{
    static struct vuf_shmem_config sc, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
#define SC(mutate, good, what)                                                        \
    do {                                                                              \
        memset(&sc, 0, sizeof(sc));                                                   \
        mutate;                                                                       \
        mk_reply(&m, VUF_REQ_GET_SHMEM_CONFIG, &sc, sizeof(sc), 0);                   \
        if (good)                                                                     \
            GOOD(vuf_decode_shmem_config(&m, &out), &m, VUF_CH_FRONTEND, true, what); \
        else                                                                          \
            BAD(vuf_decode_shmem_config(&m, &out), &m, VUF_CH_FRONTEND, true, what);  \
    } while (0)
    SC((void)0, true, "no regions");
    SC((sc.nregions = 2, sc.memory_sizes[0] = 0x1000, sc.memory_sizes[9] = 0x200000), true,
       "2 regions with a hole");
    CHECK(out.nregions == 2 && out.memory_sizes[9] == 0x200000, "shmem config out");
    SC((sc.nregions = 1, sc.memory_sizes[255] = 0x1000), true, "only shmid 255");
    SC(({
           sc.nregions = 256;
           for (unsigned i = 0; i < 256; i++)
               sc.memory_sizes[i] = 0x1000;
       }),
       true, "256 regions");
    SC(({
           sc.nregions = 257;
           for (unsigned i = 0; i < 256; i++)
               sc.memory_sizes[i] = 0x1000;
       }),
       false, "nregions 257");
    SC(sc.nregions = 0xffffffffu, false, "nregions ~0");
    SC((sc.nregions = 1, sc.memory_sizes[0] = 1, sc.memory_sizes[1] = 1), false,
       "nregions 1, two sizes");
    SC((sc.nregions = 3, sc.memory_sizes[0] = 1, sc.memory_sizes[1] = 1), false,
       "nregions 3, two sizes");
    SC(sc.nregions = 1, false, "nregions 1, no sizes");
#undef SC
    SOFT_END();
}

static void test_decode_inflight(void **state)
{
    struct vuf_inflight in, out;
    struct vuf_msg m;

    (void)state;
    SOFT_BEGIN();
    memset(&in, 0, sizeof(in));
    in.num_queues = 4;
    in.queue_size = 256;
    mk(&m, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), 0);
    GOOD(vuf_decode_inflight(&m, &out), &m, VUF_CH_FRONTEND, false, "GET_INFLIGHT_FD request");
    CHECK(out.num_queues == 4 && out.queue_size == 256, "inflight out");
    in.num_queues = 0;
    mk(&m, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), 0);
    BAD(vuf_decode_inflight(&m, &out), &m, VUF_CH_FRONTEND, false, "num_queues 0");
    in.num_queues = 4;
    in.queue_size = 0;
    mk(&m, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), 0);
    BAD(vuf_decode_inflight(&m, &out), &m, VUF_CH_FRONTEND, false, "queue_size 0");

    /* Replies: any values, with or without the fd. */
    memset(&in, 0, sizeof(in));
    mk_reply(&m, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), 0);
    GOOD(vuf_decode_inflight(&m, &out), &m, VUF_CH_FRONTEND, true, "reply all zero");
    in.mmap_size = 0x10000;
    in.mmap_offset = 0x1000;
    mk_reply(&m, VUF_REQ_GET_INFLIGHT_FD, &in, sizeof(in), 1);
    GOOD(vuf_decode_inflight(&m, &out), &m, VUF_CH_FRONTEND, true, "reply with fd");
    CHECK(out.mmap_size == 0x10000 && out.mmap_offset == 0x1000, "inflight reply out");
    SOFT_END();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_header),
        cmocka_unit_test(test_table_spec_facts),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_protocol_feature_names),
        cmocka_unit_test(test_expects_reply),
        cmocka_unit_test(test_hdr_codec),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_roundtrip_all),
        cmocka_unit_test(test_validation_rules_all_codes),
        cmocka_unit_test(test_validation_named_cases),
        cmocka_unit_test(test_shaped_reply_rejects_u64_ack),
        cmocka_unit_test(test_parse_stream),
        cmocka_unit_test(test_decode_u64_state),
        cmocka_unit_test(test_decode_vring_addr),
        cmocka_unit_test(test_decode_mem_table),
        cmocka_unit_test(test_decode_mem_single),
        cmocka_unit_test(test_decode_vring_file),
        cmocka_unit_test(test_decode_config),
        cmocka_unit_test(test_decode_device_state),
        cmocka_unit_test(test_decode_shmem_map),
        cmocka_unit_test(test_decode_shmem_config),
        cmocka_unit_test(test_decode_inflight),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
