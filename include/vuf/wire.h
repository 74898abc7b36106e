/* SPDX-License-Identifier: MIT */
/*
 * vuf/wire.h - the vhost-user wire format: message codes, feature bits,
 * header, payload structs and the validation table.
 *
 * Everything in this header is pure: no function declared here performs I/O,
 * allocates, or touches a file descriptor (fd numbers are only counted and
 * copied). That keeps the decoder fuzzable on its own.
 *
 * Byte order: vhost-user uses the host's byte order; vuf supports
 * little-endian hosts only (x86_64, aarch64, riscv64).
 *
 * Thread-safety: every function here is reentrant; the tables are const.
 */
#ifndef VUF_WIRE_H
#define VUF_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Header                                                                   */
/* ------------------------------------------------------------------------ */

#define VUF_HDR_SIZE 12u
#define VUF_VERSION 0x1u
#define VUF_VERSION_MASK 0x3u
#define VUF_FLAG_REPLY 0x4u
#define VUF_FLAG_NEED_REPLY 0x8u
/* Every flag bit a valid message may carry. */
#define VUF_FLAGS_KNOWN (VUF_VERSION_MASK | VUF_FLAG_REPLY | VUF_FLAG_NEED_REPLY)

/* At most 8 fds ride on one message (VHOST_MEMORY_BASELINE_NREGIONS). */
#define VUF_MAX_FDS 8u

/* Largest payload of any known message: the GET_SHMEM_CONFIG reply. A
 * receiver rejects anything larger without reading it. */
#define VUF_MAX_PAYLOAD 2056u

struct vuf_hdr {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
};
_Static_assert(sizeof(struct vuf_hdr) == VUF_HDR_SIZE, "header is 12 bytes");

/* Which channel a message travels on: it selects the request table. */
enum vuf_channel {
    VUF_CH_FRONTEND = 0, /* front-end -> back-end requests, main socket */
    VUF_CH_BACKEND = 1,  /* back-end -> front-end requests, backend-req socket */
};

/* ------------------------------------------------------------------------ */
/* The message table: the single source of truth for every request.          */
/*                                                                          */
/* X(NAME, code, size_min, size_max, size_step, fds_min, fds_max,           */
/*   reply_kind, reply_min, reply_max, reply_step, reply_fds_min,           */
/*   reply_fds_max)                                                         */
/*                                                                          */
/* A payload size s is legal iff min <= s <= max and, when step > 0,        */
/* (s - min) % step == 0. Typed decoders add the semantic checks (region    */
/* count matches size and fds, config size matches payload, ...).           */
/* reply_kind: ALWAYS - the peer always replies with the reply_* shape;     */
/*             ACK    - a u64 ack only when NEED_REPLY is set and           */
/*                      REPLY_ACK was negotiated;                           */
/*             LOG    - always replies (u64) when LOG_SHMFD is negotiated,  */
/*                      otherwise as ACK (SET_LOG_BASE).                    */
/* ------------------------------------------------------------------------ */

#define VUF_CRYPTO_SESSION_SIZE 1064u

/* clang-format off */
#define VUF_FRONTEND_REQUESTS(X)                                                     \
    X(GET_FEATURES, 1, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                         \
    X(SET_FEATURES, 2, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                            \
    X(SET_OWNER, 3, 0, 0, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                               \
    X(RESET_OWNER, 4, 0, 0, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                             \
    X(SET_MEM_TABLE, 5, 8, 264, 32, 0, 8, ACK, 8, 8, 0, 0, 0)                        \
    X(SET_LOG_BASE, 6, 16, 16, 0, 0, 1, LOG, 8, 16, 8, 0, 0)                         \
    X(SET_LOG_FD, 7, 0, 0, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                              \
    X(SET_VRING_NUM, 8, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                           \
    X(SET_VRING_ADDR, 9, 40, 40, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                        \
    X(SET_VRING_BASE, 10, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                         \
    X(GET_VRING_BASE, 11, 8, 8, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                      \
    X(SET_VRING_KICK, 12, 8, 8, 0, 0, 1, ACK, 8, 8, 0, 0, 0)                         \
    X(SET_VRING_CALL, 13, 8, 8, 0, 0, 1, ACK, 8, 8, 0, 0, 0)                         \
    X(SET_VRING_ERR, 14, 8, 8, 0, 0, 1, ACK, 8, 8, 0, 0, 0)                          \
    X(GET_PROTOCOL_FEATURES, 15, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)               \
    X(SET_PROTOCOL_FEATURES, 16, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                  \
    X(GET_QUEUE_NUM, 17, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                       \
    X(SET_VRING_ENABLE, 18, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                       \
    X(SEND_RARP, 19, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                              \
    X(NET_SET_MTU, 20, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                            \
    X(SET_BACKEND_REQ_FD, 21, 0, 0, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                     \
    X(IOTLB_MSG, 22, 32, 32, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                            \
    X(SET_VRING_ENDIAN, 23, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                       \
    X(GET_CONFIG, 24, 12, 268, 1, 0, 0, ALWAYS, 0, 268, 1, 0, 0)                     \
    X(SET_CONFIG, 25, 12, 268, 1, 0, 0, ACK, 8, 8, 0, 0, 0)                          \
    X(CREATE_CRYPTO_SESSION, 26, VUF_CRYPTO_SESSION_SIZE, VUF_CRYPTO_SESSION_SIZE, 0, \
      0, 0, ALWAYS, VUF_CRYPTO_SESSION_SIZE, VUF_CRYPTO_SESSION_SIZE, 0, 0, 0)       \
    X(CLOSE_CRYPTO_SESSION, 27, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                   \
    X(POSTCOPY_ADVISE, 28, 0, 0, 0, 0, 0, ALWAYS, 0, 0, 0, 1, 1)                     \
    X(POSTCOPY_LISTEN, 29, 0, 0, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                        \
    X(POSTCOPY_END, 30, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                        \
    X(GET_INFLIGHT_FD, 31, 24, 24, 0, 0, 0, ALWAYS, 24, 24, 0, 0, 1)                 \
    X(SET_INFLIGHT_FD, 32, 24, 24, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                      \
    X(GPU_SET_SOCKET, 33, 0, 0, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                         \
    X(RESET_DEVICE, 34, 0, 0, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                           \
    X(VRING_KICK, 35, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                             \
    X(GET_MAX_MEM_SLOTS, 36, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                   \
    X(ADD_MEM_REG, 37, 40, 40, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                          \
    X(REM_MEM_REG, 38, 40, 40, 0, 0, 1, ACK, 8, 8, 0, 0, 0)                          \
    X(SET_STATUS, 39, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                             \
    X(GET_STATUS, 40, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                          \
    X(GET_SHARED_OBJECT, 41, 16, 16, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 1)                 \
    X(SET_DEVICE_STATE_FD, 42, 8, 8, 0, 1, 1, ALWAYS, 8, 8, 0, 0, 1)                 \
    X(CHECK_DEVICE_STATE, 43, 0, 0, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)                  \
    X(GET_SHMEM_CONFIG, 44, 0, 0, 0, 0, 0, ALWAYS, 2056, 2056, 0, 0, 0)              \
    X(GET_VRING_BASE_SKIP_DRAIN, 45, 8, 8, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 0)

#define VUF_BACKEND_REQUESTS(X)                                                  \
    X(IOTLB_MSG, 1, 32, 32, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                         \
    X(CONFIG_CHANGE_MSG, 2, 0, 0, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                   \
    X(VRING_HOST_NOTIFIER_MSG, 3, 24, 24, 0, 0, 1, ACK, 8, 8, 0, 0, 0)           \
    X(VRING_CALL, 4, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                          \
    X(VRING_ERR, 5, 8, 8, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                           \
    X(SHARED_OBJECT_ADD, 6, 16, 16, 0, 0, 0, ACK, 8, 8, 0, 0, 0)                 \
    X(SHARED_OBJECT_REMOVE, 7, 16, 16, 0, 0, 0, ACK, 8, 8, 0, 0, 0)              \
    X(SHARED_OBJECT_LOOKUP, 8, 16, 16, 0, 0, 0, ALWAYS, 8, 8, 0, 0, 1)           \
    X(SHMEM_MAP, 9, 40, 40, 0, 1, 1, ACK, 8, 8, 0, 0, 0)                         \
    X(SHMEM_UNMAP, 10, 40, 40, 0, 0, 0, ACK, 8, 8, 0, 0, 0)

enum vuf_frontend_req {
#define VUF_X_ENUM(name, code, ...) VUF_REQ_##name = code,
    VUF_FRONTEND_REQUESTS(VUF_X_ENUM)
    VUF_REQ_MAX = 45
};

enum vuf_backend_req {
#define VUF_X_BENUM(name, code, ...) VUF_BREQ_##name = code,
    VUF_BACKEND_REQUESTS(VUF_X_BENUM)
    VUF_BREQ_MAX = 10
};
/* clang-format on */

enum vuf_reply_kind {
    VUF_REPLY_ACK = 0,
    VUF_REPLY_ALWAYS = 1,
    VUF_REPLY_LOG = 2,
};

/* One row of the table, as data. */
struct vuf_msg_rule {
    const char *name; /* "GET_FEATURES", without prefix */
    uint32_t code;
    uint16_t size_min, size_max, size_step;
    uint8_t fds_min, fds_max;
    enum vuf_reply_kind reply;
    uint16_t reply_min, reply_max, reply_step;
    uint8_t reply_fds_min, reply_fds_max;
};

/* The rule for a request code, or NULL if the code is unknown on that
 * channel. */
const struct vuf_msg_rule *vuf_msg_rule(enum vuf_channel ch, uint32_t code);

/* Name of a request for logs: "GET_FEATURES"; "UNKNOWN" if not known.
 * vuf_request_name() is for the front-end channel. Never NULL; static. */
const char *vuf_request_name(uint32_t code);
const char *vuf_backend_request_name(uint32_t code);
const char *vuf_msg_name(enum vuf_channel ch, uint32_t code);

/* True if a request with this rule gets a reply, given the request's flags
 * and the negotiated protocol features. */
bool vuf_msg_expects_reply(const struct vuf_msg_rule *rule, uint32_t flags,
                           uint64_t protocol_features);

/* ------------------------------------------------------------------------ */
/* Feature bits                                                             */
/* ------------------------------------------------------------------------ */

#define VUF_PROTOCOL_FEATURES(X)   \
    X(MQ, 0)                       \
    X(LOG_SHMFD, 1)                \
    X(RARP, 2)                     \
    X(REPLY_ACK, 3)                \
    X(NET_MTU, 4)                  \
    X(BACKEND_REQ, 5)              \
    X(CROSS_ENDIAN, 6)             \
    X(CRYPTO_SESSION, 7)           \
    X(PAGEFAULT, 8)                \
    X(CONFIG, 9)                   \
    X(BACKEND_SEND_FD, 10)         \
    X(HOST_NOTIFIER, 11)           \
    X(INFLIGHT_SHMFD, 12)          \
    X(RESET_DEVICE, 13)            \
    X(INBAND_NOTIFICATIONS, 14)    \
    X(CONFIGURE_MEM_SLOTS, 15)     \
    X(STATUS, 16)                  \
    X(XEN_MMAP, 17)                \
    X(SHARED_OBJECT, 18)           \
    X(DEVICE_STATE, 19)            \
    X(GET_VRING_BASE_INFLIGHT, 20) \
    X(GPA_ADDRESSES, 21)           \
    X(SHMEM, 22)                   \
    X(GET_VRING_BASE_SKIP_DRAIN, 23)

/* clang-format off */
enum vuf_protocol_feature_bit {
#define VUF_X_PROTO_F(name, bit) VUF_PROTO_F_##name = bit,
    VUF_PROTOCOL_FEATURES(VUF_X_PROTO_F)
    VUF_PROTO_F_COUNT = 24
};
/* clang-format on */
#define VUF_PROTO_MASK(name) (1ull << VUF_PROTO_F_##name)
/* Every protocol bit this library knows a meaning for. */
#define VUF_PROTO_KNOWN_MASK ((1ull << VUF_PROTO_F_COUNT) - 1)

/* Virtio feature bits the vhost-user protocol itself gives meaning to. */
#define VUF_VHOST_F_LOG_ALL 26
#define VUF_VHOST_F_PROTOCOL_FEATURES 30
#define VUF_VIRTIO_F_RING_PACKED 34

/* "REPLY_ACK" for bit 3; NULL for a bit with no known name. */
const char *vuf_protocol_feature_name(unsigned bit);

/* ------------------------------------------------------------------------ */
/* Payloads (natural C alignment, as on the wire)                           */
/* ------------------------------------------------------------------------ */

struct vuf_vring_state {
    uint32_t index;
    uint32_t num;
};
_Static_assert(sizeof(struct vuf_vring_state) == 8, "vring state");

#define VUF_VRING_F_LOG 0x1u
struct vuf_vring_addr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc;
    uint64_t used;
    uint64_t avail;
    uint64_t log;
};
_Static_assert(sizeof(struct vuf_vring_addr) == 40, "vring addr");

/* SET_VRING_KICK/CALL/ERR u64: bits 0-7 index, bit 8 no fd. */
#define VUF_VRING_IDX_MASK 0xffull
#define VUF_VRING_NOFD 0x100ull

struct vuf_mem_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
};
_Static_assert(sizeof(struct vuf_mem_region) == 32, "memory region");

#define VUF_MEM_TABLE_MAX 8u
struct vuf_mem_table {
    uint32_t nregions;
    uint32_t padding;
    struct vuf_mem_region regions[VUF_MEM_TABLE_MAX];
};
_Static_assert(sizeof(struct vuf_mem_table) == 264, "memory table");
#define VUF_MEM_TABLE_SIZE(n) (8u + 32u * (n))

struct vuf_mem_single {
    uint64_t padding;
    struct vuf_mem_region region;
};
_Static_assert(sizeof(struct vuf_mem_single) == 40, "single region");

struct vuf_log {
    uint64_t mmap_size;
    uint64_t mmap_offset;
};
_Static_assert(sizeof(struct vuf_log) == 16, "log");

struct vuf_iotlb_msg {
    uint64_t iova;
    uint64_t size;
    uint64_t uaddr;
    uint8_t perm;
    uint8_t type;
    uint8_t pad[6];
};
_Static_assert(sizeof(struct vuf_iotlb_msg) == 32, "iotlb");

/* GET_CONFIG / SET_CONFIG. The spec makes flags a value, not a mask. */
#define VUF_CONFIG_HDR_SIZE 12u
#define VUF_CONFIG_MAX 256u
#define VUF_CONFIG_FLAG_WRITABLE 0u
#define VUF_CONFIG_FLAG_MIGRATION 1u
struct vuf_config {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
    uint8_t region[VUF_CONFIG_MAX];
};
_Static_assert(sizeof(struct vuf_config) == 268, "config");

struct vuf_vring_area {
    uint64_t u64; /* bits 0-7 queue index, bit 8 no fd */
    uint64_t size;
    uint64_t offset;
};
_Static_assert(sizeof(struct vuf_vring_area) == 24, "vring area");

struct vuf_inflight {
    uint64_t mmap_size;
    uint64_t mmap_offset;
    uint16_t num_queues;
    uint16_t queue_size;
    uint32_t padding;
};
_Static_assert(sizeof(struct vuf_inflight) == 24, "inflight");

struct vuf_shared_object {
    uint8_t uuid[16];
};
_Static_assert(sizeof(struct vuf_shared_object) == 16, "shared object");

#define VUF_STATE_DIR_SAVE 0u
#define VUF_STATE_DIR_LOAD 1u
#define VUF_STATE_PHASE_STOPPED 0u
/* SET_DEVICE_STATE_FD reply: bits 0-7 error, bit 8 no fd returned. */
#define VUF_STATE_REPLY_ERR_MASK 0xffull
#define VUF_STATE_REPLY_NOFD 0x100ull
struct vuf_device_state {
    uint32_t direction;
    uint32_t phase;
};
_Static_assert(sizeof(struct vuf_device_state) == 8, "device state");

#define VUF_SHMEM_MAP_RW 0x1ull
struct vuf_shmem_map {
    uint8_t shmid;
    uint8_t padding[7];
    uint64_t fd_offset;
    uint64_t shm_offset;
    uint64_t len;
    uint64_t flags;
};
_Static_assert(sizeof(struct vuf_shmem_map) == 40, "shmem map");

#define VUF_SHMEM_MAX_REGIONS 256u
struct vuf_shmem_config {
    uint32_t nregions;
    uint32_t padding;
    uint64_t memory_sizes[VUF_SHMEM_MAX_REGIONS];
};
_Static_assert(sizeof(struct vuf_shmem_config) == VUF_MAX_PAYLOAD, "shmem config");

/* Crypto sessions are carried opaquely (layout is QEMU's
 * VhostUserCryptoSession); vuf only checks the size. */
struct vuf_crypto_session {
    uint8_t bytes[VUF_CRYPTO_SESSION_SIZE];
};

/* ------------------------------------------------------------------------ */
/* A whole message                                                          */
/* ------------------------------------------------------------------------ */

union vuf_payload {
    uint8_t raw[VUF_MAX_PAYLOAD];
    uint64_t u64;
    struct vuf_vring_state state;
    struct vuf_vring_addr addr;
    struct vuf_mem_table mem;
    struct vuf_mem_single mem_single;
    struct vuf_log log;
    struct vuf_iotlb_msg iotlb;
    struct vuf_config config;
    struct vuf_vring_area area;
    struct vuf_inflight inflight;
    struct vuf_shared_object object;
    struct vuf_device_state dstate;
    struct vuf_shmem_map mmap;
    struct vuf_shmem_config shmem;
    struct vuf_crypto_session crypto;
};
_Static_assert(sizeof(union vuf_payload) == VUF_MAX_PAYLOAD, "payload union");

/*
 * A message in memory. fds[0..nfds) are the descriptors that travel (or
 * travelled) with it. Ownership of those fds is stated by each function
 * that fills or consumes a message; the wire functions never close them.
 */
struct vuf_msg {
    struct vuf_hdr hdr;
    union vuf_payload payload;
    int fds[VUF_MAX_FDS];
    unsigned nfds;
};

/* Build a request: header {code, VUF_VERSION | extra_flags, size}, payload
 * copied from `payload` (may be NULL when size is 0), no fds. Returns 0 or
 * -EMSGSIZE when size > VUF_MAX_PAYLOAD. */
int vuf_msg_init(struct vuf_msg *m, uint32_t code, uint32_t extra_flags, const void *payload,
                 uint32_t size);

/* Build the reply to `req` (same code, flags VERSION|REPLY). */
int vuf_msg_init_reply(struct vuf_msg *m, const struct vuf_msg *req, const void *payload,
                       uint32_t size);

/* Header codec. encode writes 12 bytes. decode checks only that len >= 12
 * (-EBADMSG) and copies; use vuf_hdr_check for the rules. */
void vuf_hdr_encode(uint8_t out[VUF_HDR_SIZE], const struct vuf_hdr *h);
int vuf_hdr_decode(const uint8_t *buf, size_t len, struct vuf_hdr *h);

/*
 * Header rules that need no payload: version exactly 1, no unknown flag
 * bits, REPLY set iff `is_reply`, NEED_REPLY never on a reply, code known on
 * the channel, and size within the rule's (request or reply) bounds and
 * below VUF_MAX_PAYLOAD. Returns 0, -EPROTO (bad flags / unknown code) or
 * -EMSGSIZE (size outside every rule). Stores the rule in *rule_out if
 * non-NULL and the code is known.
 */
int vuf_hdr_check(const struct vuf_hdr *h, enum vuf_channel ch, bool is_reply,
                  const struct vuf_msg_rule **rule_out);

/*
 * Full validation of a received message: vuf_hdr_check, the exact size rule,
 * the fd-count rule, and the semantic checks of the typed decoders below
 * that apply to every message of that code. Returns 0 or -EPROTO
 * (-EMSGSIZE for size problems, -EBADF for a wrong fd count).
 */
int vuf_msg_check(const struct vuf_msg *m, enum vuf_channel ch, bool is_reply);

/*
 * Parse one message from a byte buffer (header + payload) as if it had
 * arrived with `nfds` fds (the fds[] entries are set to -1; nothing is
 * opened). On success returns the number of bytes consumed. For fuzzing and
 * tests. Errors as vuf_msg_check, or -EBADMSG when buf is shorter than the
 * header says.
 */
int vuf_msg_parse(const uint8_t *buf, size_t len, unsigned nfds, enum vuf_channel ch, bool is_reply,
                  struct vuf_msg *out);

/* Serialize header + payload into out (at least 12 + hdr.size bytes).
 * Returns the byte count or -EMSGSIZE. */
int vuf_msg_serialize(const struct vuf_msg *m, uint8_t *out, size_t cap);

/* ---- typed decoders: each validates and returns 0 or -EPROTO ---------- */

/* u64 payload (size must be 8). */
int vuf_decode_u64(const struct vuf_msg *m, uint64_t *out);
/* vring state (size 8). */
int vuf_decode_vring_state(const struct vuf_msg *m, struct vuf_vring_state *out);
/* vring addr: flags subset of LOG; desc 16-, avail 2-, used 4-byte aligned. */
int vuf_decode_vring_addr(const struct vuf_msg *m, struct vuf_vring_addr *out);
/* SET_MEM_TABLE: 1 <= nregions <= 8, size == 8 + 32n, nfds == n, padding 0,
 * every region size != 0 and no u64 overflow of gpa/uva/offset + size. */
int vuf_decode_mem_table(const struct vuf_msg *m, struct vuf_mem_table *out);
/* ADD/REM_MEM_REG single region, same region rules. */
int vuf_decode_mem_single(const struct vuf_msg *m, struct vuf_mem_region *out);
/* KICK/CALL/ERR: index <= 255, no bits above 8; NOFD set iff nfds == 0.
 * *index and *nofd out. */
int vuf_decode_vring_file(const struct vuf_msg *m, uint32_t *index, bool *nofd);
/* GET/SET_CONFIG request or GET_CONFIG reply: size == 12 + config.size,
 * config.size <= 256, offset + size no overflow and <= 0x1000, flags 0/1. */
int vuf_decode_config(const struct vuf_msg *m, struct vuf_config *out);
/* SET_DEVICE_STATE_FD request: direction 0/1, phase 0. */
int vuf_decode_device_state(const struct vuf_msg *m, struct vuf_device_state *out);
/* SHMEM_MAP / SHMEM_UNMAP: flags subset of RW, len != 0, fd_offset + len
 * and shm_offset + len do not overflow. */
int vuf_decode_shmem_map(const struct vuf_msg *m, struct vuf_shmem_map *out);
/* GET_SHMEM_CONFIG reply: nregions <= 256, non-zero sizes counted == nregions. */
int vuf_decode_shmem_config(const struct vuf_msg *m, struct vuf_shmem_config *out);
/* inflight: num_queues != 0, queue_size != 0 (request); reply any. */
int vuf_decode_inflight(const struct vuf_msg *m, struct vuf_inflight *out);

#ifdef __cplusplus
}
#endif
#endif
