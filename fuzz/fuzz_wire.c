/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the pure wire layer (wire.h): header codec and
 * rules, vuf_msg_parse on both channels as request and as reply, every
 * typed decoder, and the parse -> serialize -> parse round trip.
 *
 * Input: byte 0 selects how many fds the message "arrived" with (0..8),
 * the rest is the message bytes (header + payload).
 *
 * Besides memory errors (ASan/UBSan), the target aborts when a function
 * breaks its documented contract: a decoder that accepts what its comment
 * in wire.h says it rejects, a parse that disagrees with vuf_msg_check, a
 * round trip that changes the message.
 *
 * Seeds: with VUF_FUZZ_SEED_DIR set, LLVMFuzzerInitialize writes one valid
 * request (and reply) per row of both message tables into that directory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vuf/log.h"
#include "vuf/wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_wire: contract broken at %s:%d: %s\n", __FILE__, __LINE__, \
                    #cond);                                                                  \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

#define CONFIG_SPACE_LIMIT 0x1000u

static bool add_overflows(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r);
}

static bool size_fits(uint32_t s, uint16_t min, uint16_t max, uint16_t step)
{
    return s >= min && s <= max && (step == 0 || (s - min) % step == 0);
}

static void check_region(const struct vuf_mem_region *r)
{
    CHECK(r->memory_size != 0);
    /* wire.h: "no u64 overflow of gpa/uva/offset + size". */
    CHECK(!add_overflows(r->guest_phys_addr, r->memory_size));
    CHECK(!add_overflows(r->userspace_addr, r->memory_size));
    CHECK(!add_overflows(r->mmap_offset, r->memory_size));
}

/* Every typed decoder on `m`; whatever one accepts must satisfy the rules
 * its declaration in wire.h promises. */
static void run_decoders(const struct vuf_msg *m)
{
    union {
        uint64_t u64;
        struct vuf_vring_state state;
        struct vuf_vring_addr addr;
        struct vuf_mem_table mem;
        struct vuf_mem_region region;
        struct vuf_config config;
        struct vuf_device_state dstate;
        struct vuf_shmem_map mmap;
        struct vuf_shmem_config shmem;
        struct vuf_inflight inflight;
    } u;
    uint32_t index;
    bool nofd;
    int r;

    r = vuf_decode_u64(m, &u.u64);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 8);
        CHECK(memcmp(&u.u64, m->payload.raw, 8) == 0);
    }

    r = vuf_decode_vring_state(m, &u.state);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0)
        CHECK(m->hdr.size == 8);

    r = vuf_decode_vring_addr(m, &u.addr);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 40);
        CHECK((u.addr.flags & ~VUF_VRING_F_LOG) == 0);
        CHECK(u.addr.desc % 16 == 0 && u.addr.avail % 2 == 0 && u.addr.used % 4 == 0);
    }

    r = vuf_decode_mem_table(m, &u.mem);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(u.mem.nregions >= 1 && u.mem.nregions <= VUF_MEM_TABLE_MAX);
        CHECK(m->hdr.size == VUF_MEM_TABLE_SIZE(u.mem.nregions));
        CHECK(m->nfds == u.mem.nregions);
        CHECK(u.mem.padding == 0);
        for (uint32_t i = 0; i < u.mem.nregions; i++)
            check_region(&u.mem.regions[i]);
    }

    r = vuf_decode_mem_single(m, &u.region);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 40);
        check_region(&u.region);
    }

    index = 0xdeadbeef;
    r = vuf_decode_vring_file(m, &index, &nofd);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        uint64_t v;

        CHECK(m->hdr.size == 8);
        memcpy(&v, m->payload.raw, 8);
        CHECK((v & ~(VUF_VRING_IDX_MASK | VUF_VRING_NOFD)) == 0);
        CHECK(index <= 255 && index == (v & VUF_VRING_IDX_MASK));
        CHECK(nofd == !!(v & VUF_VRING_NOFD));
        CHECK(nofd == (m->nfds == 0));
    }

    r = vuf_decode_config(m, &u.config);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(u.config.size <= VUF_CONFIG_MAX);
        CHECK(m->hdr.size == VUF_CONFIG_HDR_SIZE + u.config.size);
        CHECK((uint64_t)u.config.offset + u.config.size <= CONFIG_SPACE_LIMIT);
        CHECK(u.config.flags == VUF_CONFIG_FLAG_WRITABLE ||
              u.config.flags == VUF_CONFIG_FLAG_MIGRATION);
        CHECK(memcmp(u.config.region, m->payload.raw + VUF_CONFIG_HDR_SIZE, u.config.size) == 0);
    }

    r = vuf_decode_device_state(m, &u.dstate);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 8);
        CHECK(u.dstate.direction <= VUF_STATE_DIR_LOAD);
        CHECK(u.dstate.phase == VUF_STATE_PHASE_STOPPED);
    }

    r = vuf_decode_shmem_map(m, &u.mmap);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 40);
        CHECK((u.mmap.flags & ~VUF_SHMEM_MAP_RW) == 0);
        CHECK(u.mmap.len != 0);
        CHECK(!add_overflows(u.mmap.fd_offset, u.mmap.len));
        CHECK(!add_overflows(u.mmap.shm_offset, u.mmap.len));
    }

    r = vuf_decode_shmem_config(m, &u.shmem);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        uint32_t nonzero = 0;

        CHECK(m->hdr.size == VUF_MAX_PAYLOAD);
        CHECK(u.shmem.nregions <= VUF_SHMEM_MAX_REGIONS);
        for (unsigned i = 0; i < VUF_SHMEM_MAX_REGIONS; i++)
            nonzero += u.shmem.memory_sizes[i] != 0;
        CHECK(nonzero == u.shmem.nregions);
    }

    r = vuf_decode_inflight(m, &u.inflight);
    CHECK(r == 0 || r == -EPROTO);
    if (r == 0) {
        CHECK(m->hdr.size == 24);
        if (!(m->hdr.flags & VUF_FLAG_REPLY))
            CHECK(u.inflight.num_queues != 0 && u.inflight.queue_size != 0);
    }
}

static void check_header(const struct vuf_hdr *h)
{
    for (int ch = VUF_CH_FRONTEND; ch <= VUF_CH_BACKEND; ch++) {
        for (int is_reply = 0; is_reply <= 1; is_reply++) {
            const struct vuf_msg_rule *rule = NULL;
            int r = vuf_hdr_check(h, (enum vuf_channel)ch, is_reply, &rule);

            CHECK(r == 0 || r == -EPROTO || r == -EMSGSIZE);
            if (r == 0) {
                CHECK(rule && rule->code == h->request);
                CHECK(rule == vuf_msg_rule((enum vuf_channel)ch, h->request));
                CHECK((h->flags & VUF_VERSION_MASK) == VUF_VERSION);
                CHECK((h->flags & ~VUF_FLAGS_KNOWN) == 0);
                CHECK(!!(h->flags & VUF_FLAG_REPLY) == is_reply);
                CHECK(!is_reply || !(h->flags & VUF_FLAG_NEED_REPLY));
                CHECK(h->size <= VUF_MAX_PAYLOAD);
                if (!is_reply)
                    CHECK(size_fits(h->size, rule->size_min, rule->size_max, rule->size_step));
            }
            CHECK(vuf_msg_name((enum vuf_channel)ch, h->request) != NULL);
        }
    }
    CHECK(vuf_request_name(h->request) != NULL);
    CHECK(vuf_backend_request_name(h->request) != NULL);
    (void)vuf_protocol_feature_name(h->flags & 0xff);
}

static void parse_one(const uint8_t *buf, size_t len, unsigned nfds, enum vuf_channel ch,
                      bool is_reply)
{
    static struct vuf_msg m, m2;
    static uint8_t out[VUF_HDR_SIZE + VUF_MAX_PAYLOAD];
    const struct vuf_msg_rule *rule;
    int r, n, r2;

    memset(&m, 0xa5, sizeof(m));
    r = vuf_msg_parse(buf, len, nfds, ch, is_reply, &m);
    CHECK(r > 0 || r == -EBADMSG || r == -EPROTO || r == -EMSGSIZE || r == -EBADF);
    if (r < 0) {
        /* The header was decoded, the payload maybe not: the decoders take
         * any struct vuf_msg and must cope with a lying hdr.size too. */
        if (len >= VUF_HDR_SIZE) {
            m.nfds = nfds;
            run_decoders(&m);
        }
        return;
    }

    /* Accepted: consistent with the table and with vuf_msg_check. */
    CHECK((size_t)r == VUF_HDR_SIZE + m.hdr.size && (size_t)r <= len);
    CHECK(m.nfds == nfds);
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        CHECK(m.fds[i] == -1);
    CHECK(memcmp(m.payload.raw, buf + VUF_HDR_SIZE, m.hdr.size) == 0);
    CHECK(vuf_hdr_check(&m.hdr, ch, is_reply, &rule) == 0);
    CHECK(vuf_msg_check(&m, ch, is_reply) == 0);
    CHECK(m.nfds <= VUF_MAX_FDS);
    if (!is_reply) {
        CHECK(m.nfds >= rule->fds_min && m.nfds <= rule->fds_max);
        (void)vuf_msg_expects_reply(rule, m.hdr.flags, 0);
        (void)vuf_msg_expects_reply(rule, m.hdr.flags, VUF_PROTO_KNOWN_MASK);
        if (rule->reply == VUF_REPLY_ALWAYS)
            CHECK(vuf_msg_expects_reply(rule, m.hdr.flags, 0));
    }
    run_decoders(&m);

    /* Round trip. */
    n = vuf_msg_serialize(&m, out, sizeof(out));
    CHECK(n == r);
    CHECK(memcmp(out, buf, (size_t)n) == 0);
    CHECK(vuf_msg_serialize(&m, out, (size_t)n - 1) == -EMSGSIZE);
    memset(&m2, 0x5a, sizeof(m2));
    r2 = vuf_msg_parse(out, (size_t)n, nfds, ch, is_reply, &m2);
    CHECK(r2 == r);
    CHECK(memcmp(&m2.hdr, &m.hdr, sizeof(m.hdr)) == 0);
    CHECK(memcmp(m2.payload.raw, m.payload.raw, m.hdr.size) == 0);
    CHECK(m2.nfds == m.nfds);

    /* Rebuilt with the constructors: the same bytes. */
    if (!is_reply) {
        uint32_t extra = m.hdr.flags & ~VUF_VERSION_MASK;

        CHECK(vuf_msg_init(&m2, m.hdr.request, extra, m.payload.raw, m.hdr.size) == 0);
        m2.nfds = nfds;
        CHECK(vuf_msg_check(&m2, ch, false) == 0);
        CHECK(vuf_msg_serialize(&m2, out, sizeof(out)) == n);
        CHECK(memcmp(out, buf, (size_t)n) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vuf_hdr h;
    unsigned nfds;

    if (size < 1)
        return 0;
    nfds = data[0] % (VUF_MAX_FDS + 1);
    data++;
    size--;

    if (vuf_hdr_decode(data, size, &h) == 0) {
        uint8_t enc[VUF_HDR_SIZE];

        vuf_hdr_encode(enc, &h);
        CHECK(memcmp(enc, data, VUF_HDR_SIZE) == 0);
        check_header(&h);
    } else {
        CHECK(size < VUF_HDR_SIZE);
    }

    for (int ch = VUF_CH_FRONTEND; ch <= VUF_CH_BACKEND; ch++) {
        parse_one(data, size, nfds, (enum vuf_channel)ch, false);
        parse_one(data, size, nfds, (enum vuf_channel)ch, true);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Seeds                                                                    */
/* ------------------------------------------------------------------------ */

/* Make a zeroed payload of the row's minimum size valid for its decoder. */
static void make_valid(enum vuf_channel ch, uint32_t code, union vuf_payload *p, uint32_t *size,
                       unsigned *nfds)
{
    if (ch == VUF_CH_BACKEND) {
        if (code == VUF_BREQ_SHMEM_MAP || code == VUF_BREQ_SHMEM_UNMAP) {
            p->mmap.len = 0x1000;
            p->mmap.flags = VUF_SHMEM_MAP_RW;
        } else if (code == VUF_BREQ_VRING_HOST_NOTIFIER_MSG) {
            p->area.size = 0x1000;
            *nfds = 1;
        }
        return;
    }
    switch (code) {
    case VUF_REQ_SET_MEM_TABLE:
        p->mem.nregions = 1;
        p->mem.regions[0].memory_size = 0x100000;
        p->mem.regions[0].userspace_addr = 0x7f0000000000ull;
        *size = VUF_MEM_TABLE_SIZE(1);
        *nfds = 1;
        break;
    case VUF_REQ_ADD_MEM_REG:
    case VUF_REQ_REM_MEM_REG:
        p->mem_single.region.memory_size = 0x100000;
        break;
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL:
    case VUF_REQ_SET_VRING_ERR:
        *nfds = 1;
        break;
    case VUF_REQ_GET_CONFIG:
    case VUF_REQ_SET_CONFIG:
        p->config.size = 8;
        *size = VUF_CONFIG_HDR_SIZE + 8;
        break;
    case VUF_REQ_GET_INFLIGHT_FD:
    case VUF_REQ_SET_INFLIGHT_FD:
        p->inflight.num_queues = 1;
        p->inflight.queue_size = 128;
        break;
    default:
        break;
    }
}

static void write_seed(const char *dir, const char *name, unsigned nfds, const struct vuf_msg *m)
{
    uint8_t buf[1 + VUF_HDR_SIZE + VUF_MAX_PAYLOAD];
    char path[4096];
    FILE *f;
    int n;

    buf[0] = (uint8_t)nfds;
    n = vuf_msg_serialize(m, buf + 1, sizeof(buf) - 1);
    if (n < 0)
        return;
    snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(buf, 1, (size_t)n + 1, f);
    fclose(f);
}

static void write_row_seeds(const char *dir, enum vuf_channel ch, uint32_t code)
{
    const struct vuf_msg_rule *r = vuf_msg_rule(ch, code);
    const char *prefix = ch == VUF_CH_FRONTEND ? "fe" : "be";
    static struct vuf_msg m;
    union vuf_payload p;
    uint32_t size;
    unsigned nfds;
    char name[128];

    if (!r)
        return;
    memset(&p, 0, sizeof(p));
    size = r->size_min;
    nfds = r->fds_min;
    make_valid(ch, code, &p, &size, &nfds);
    vuf_msg_init(&m, code, VUF_FLAG_NEED_REPLY, &p, size);
    m.nfds = nfds;
    snprintf(name, sizeof(name), "%s-%s-req", prefix, r->name);
    write_seed(dir, name, nfds, &m);

    memset(&p, 0, sizeof(p));
    vuf_msg_init(&m, code, VUF_FLAG_REPLY, &p, r->reply_min);
    snprintf(name, sizeof(name), "%s-%s-reply", prefix, r->name);
    write_seed(dir, name, r->reply_fds_min, &m);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("VUF_FUZZ_SEED_DIR");

    (void)argc;
    (void)argv;
    /* The library logs nothing here (no I/O), but keep stderr quiet. */
    vuf_log_set(NULL, NULL, VUF_LOG_ERROR);
    if (!dir || !*dir)
        return 0;
#define SEED_FE(name, code, ...) write_row_seeds(dir, VUF_CH_FRONTEND, code);
#define SEED_BE(name, code, ...) write_row_seeds(dir, VUF_CH_BACKEND, code);
    VUF_FRONTEND_REQUESTS(SEED_FE)
    VUF_BACKEND_REQUESTS(SEED_BE)
#undef SEED_FE
#undef SEED_BE
    return 0;
}
