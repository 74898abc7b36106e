/* SPDX-License-Identifier: MIT */
/*
 * tools/check_internal.h - what the checks (check_suite.c, check_ring.c)
 * share with the engine (check_engine.c): the run context, the connection
 * helpers and the evidence log. Private to `vuf check`.
 */
#ifndef VUF_TOOL_CHECK_INTERNAL_H
#define VUF_TOOL_CHECK_INTERNAL_H

#include <stdarg.h>

#include "check.h"
#include "vuf/client.h"
#include "vuf/conn.h"
#include "vuf/wire.h"

/* What the handshake of the current connection saw (raw, before the
 * library's client judged anything). */
struct chk_hs {
    int owner_err;           /* SET_OWNER send */
    int feat_err;            /* GET_FEATURES exchange */
    struct vuf_hdr feat_hdr; /* its reply header */
    uint64_t features;       /* its value */
    int pf_err;              /* GET_PROTOCOL_FEATURES (-ENOTSUP: bit 30 not offered) */
    struct vuf_hdr pf_hdr;
    uint64_t pf_offered;
    int set_pf_err; /* SET_PROTOCOL_FEATURES through the client */
    uint64_t pf_acked;
};

struct chk_ctx {
    const struct chk_opts *o;
    struct vuf_client *c; /* NULL: no connection */
    struct chk_hs hs;
    bool dirty;        /* the current check changed the back-end's state */
    unsigned conns;    /* connections made */
    int reconnect_err; /* first failed reconnect (0: none) */
    struct chk_result *res;
    size_t evlen;
};

/* One check of the suite. run() returns its status; evidence via chk_ev. */
struct chk_def {
    const char *id;
    const char *rule;
    const char *ref;
    enum chk_status (*run)(struct chk_ctx *x);
    bool dirty;   /* always reconnect after it */
    bool hostile; /* only with --hostile */
};

extern const struct chk_def chk_suite[];
extern const unsigned chk_suite_len;

/* Append a line to the current check's evidence. */
void chk_ev(struct chk_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* SKIP / FAIL / ERROR with a reason line. */
enum chk_status chk_skip(struct chk_ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
enum chk_status chk_fail(struct chk_ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* ERROR when `err` means the back-end hung up or went silent
 * (vuf_conn_error_is_fatal), else FAIL; with the request's name. */
enum chk_status chk_err(struct chk_ctx *x, int err, const char *what);

/*
 * Make sure a negotiated connection exists: connect (waiting up to the
 * timeout), then SET_OWNER, GET_FEATURES and, with bit 30,
 * GET_PROTOCOL_FEATURES (raw, recorded in x->hs) and SET_PROTOCOL_FEATURES
 * through the client with the bits the checker can honour. Returns 0 or the
 * error (connection dropped).
 */
int chk_connect(struct chk_ctx *x);
/* Drop the connection (the next chk_connect makes a new one). */
void chk_disconnect(struct chk_ctx *x);

/* The protocol features the checker acks when offered. */
#define CHK_PF_ACK                                                                        \
    ((uint64_t)(VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(CONFIG) | \
                VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) | VUF_PROTO_MASK(DEVICE_STATE) |      \
                VUF_PROTO_MASK(INFLIGHT_SHMFD) | VUF_PROTO_MASK(RESET_DEVICE) |           \
                VUF_PROTO_MASK(STATUS)))

static inline bool chk_pf(const struct chk_ctx *x, unsigned bit)
{
    return (x->hs.pf_acked >> bit) & 1u;
}

/* Raw messages on the current connection, each logged in the evidence
 * ("-> NAME flags 0x9 size 8 [payload u64 0x..]" / "<- ..."). */
int chk_raw_send(struct chk_ctx *x, uint32_t code, uint32_t flags, const void *payload,
                 uint32_t size, const int *fds, unsigned nfds);
int chk_raw_recv(struct chk_ctx *x, struct vuf_msg *m, int timeout_ms);
/* A request that needs no reply, then GET_FEATURES: true when the next
 * message is GET_FEATURES' well-formed reply (the sync point QEMU uses
 * without REPLY_ACK). Returns 0, or -EPROTO (logged) for another message. */
int chk_sync(struct chk_ctx *x);

/* The config space length the device type's checks use (0: none known). */
uint32_t chk_config_len(const struct chk_ctx *x);

/* Ring and I/O checks (check_ring.c). */
enum chk_status chk_ring_start(struct chk_ctx *x);
enum chk_status chk_ring_disable(struct chk_ctx *x);
enum chk_status chk_ring_get_base(struct chk_ctx *x);
enum chk_status chk_ring_restart(struct chk_ctx *x);
enum chk_status chk_ring_event_idx(struct chk_ctx *x);
enum chk_status chk_io_blk_rw(struct chk_ctx *x);
enum chk_status chk_io_blk_flush(struct chk_ctx *x);
enum chk_status chk_io_blk_get_id(struct chk_ctx *x);
enum chk_status chk_io_blk_discard(struct chk_ctx *x);
enum chk_status chk_io_blk_write_zeroes(struct chk_ctx *x);
enum chk_status chk_io_blk_past_end(struct chk_ctx *x);
enum chk_status chk_io_fs_init(struct chk_ctx *x);
enum chk_status chk_io_net_tx(struct chk_ctx *x);

#endif
