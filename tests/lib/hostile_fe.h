/* SPDX-License-Identifier: MIT */
/*
 * A hostile front-end (a lying VMM) against vuf's servers: the mirror of
 * tests/unit/hostile_harness.c, which scripts a hostile back-end against
 * the library.
 *
 * A target is a server process and what stands behind it:
 *   - HFE_BACKEND: vuf-backend-blk (VUF_BACKEND_BLK) on its socket;
 *   - HFE_RELAY:   `vuf relay --listen X --connect <back-end>` (VUF_TOOL) in
 *                  front of a vuf-backend-blk, attacked on X.
 * A case connects to hfe_target.sock and speaks raw vhost-user: any header,
 * flags, size and payload, 0..N fds, replies read with a deadline. After
 * the case, hfe_target_down() checks what every case must leave behind:
 *   - the server is alive (the relay, which serves one VMM, may instead
 *     have exited 0 once the connection closed);
 *   - a new, well-behaved front-end is served: `vuf blk write` then
 *     `vuf blk verify` (the library's own front-end, a real handshake and
 *     blk I/O), through a fresh relay for HFE_RELAY;
 *   - the back-end's fd count (/proc/PID/fd) is back to what it was at rest;
 *   - SIGTERM makes every process exit 0 within 2 s (tu_stop_clean);
 *   - no sanitizer text ("Sanitizer", "runtime error") in any log.
 */
#ifndef VUF_TEST_HOSTILE_FE_H
#define VUF_TEST_HOSTILE_FE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "testutil.h"
#include "vuf/wire.h"

enum hfe_kind { HFE_BACKEND, HFE_RELAY };

/* The back-end's queues and ring size limit (its --num-queues, default
 * --queue-size-max). */
#define HFE_NQ 2u
#define HFE_QSIZE_MAX 1024u

struct hfe_target {
    enum hfe_kind kind;
    char *dir;
    char be_sock[300], be_log[300], relay_sock[300], relay_log[300];
    struct tu_proc be, relay;
    const char *sock; /* where the hostile front-end connects */
    int be_fds0;      /* the back-end's fd count at rest */
    unsigned checks;  /* hfe_target_down() runs */
    unsigned renewed; /* relays started by hfe_target_renew() */
};

/* Start the target (fails the test on error). */
void hfe_target_up(struct hfe_target *t, enum hfe_kind kind);
/* After the server closed a connection: the back-end is alive; a relay
 * (one VMM per process) exited 0 with a clean log and is started again. */
void hfe_target_renew(struct hfe_target *t);
/* The checks above, then stop everything and remove the dir. */
void hfe_target_down(struct hfe_target *t);
/* Name for messages: "back-end" or "relay". */
const char *hfe_kind_name(enum hfe_kind kind);

/* Number of fds of process pid, or -1. */
int hfe_count_fds(int pid);

/* ---- raw messages ------------------------------------------------------- */

/* A connected, blocking unix socket to `path` (fails the test otherwise). */
int hfe_connect(const char *path);

/*
 * One message: header {code, flags, hdr_size}, then `len` payload bytes
 * (which need not be hdr_size) with `nfds` fds attached to the first byte.
 * Returns 0 or -errno (EPIPE once the server closed).
 */
int hfe_send(int fd, uint32_t code, uint32_t flags, uint32_t hdr_size, const void *payload,
             size_t len, const int *fds, unsigned nfds);

struct hfe_msg {
    uint32_t code, flags, size;
    uint8_t payload[4096];
    int fds[VUF_MAX_FDS];
    unsigned nfds;
};

/* Read one message within timeout_ms: 0, -ECONNRESET at EOF (the server
 * closed), -ETIMEDOUT, or -EPROTO (a payload beyond 4096). Fds received are
 * closed. */
int hfe_recv(int fd, struct hfe_msg *m, int timeout_ms);

/* The deadline for a reply. */
#define HFE_REPLY_MS 5000

/* Expect exactly a reply {code, VERSION|REPLY, 8, want}. */
void hfe_expect_u64(int fd, uint32_t code, uint64_t want);
/* Expect the server to close the connection (EOF) within HFE_REPLY_MS. */
void hfe_expect_closed(int fd);
/* Expect nothing at all for ms. */
void hfe_expect_silence(int fd, int ms);

/* Send `code` with NEED_REPLY and the payload (hdr size = len), then expect
 * the ack {code, VERSION|REPLY, 8, (uint64_t)want}. */
void hfe_ack(int fd, uint32_t code, const void *p, size_t len, const int *fds, unsigned nfds,
             int64_t want);
/* A u64 request (GET_FEATURES, ...): its reply's value. */
uint64_t hfe_get_u64(int fd, uint32_t code);
/* GET_FEATURES is answered: the server still serves this connection. */
void hfe_ping(int fd);
/* Send GET_FEATURES and read (and drop) whatever comes until its reply:
 * 0, or -ECONNRESET if the server closed the connection first. Fails the
 * test if nothing comes within HFE_REPLY_MS. */
int hfe_sync(int fd);

/*
 * SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES
 * with what is offered of REPLY_ACK, MQ, CONFIG, CONFIGURE_MEM_SLOTS,
 * DEVICE_STATE, and SET_FEATURES(VERSION_1 | PROTOCOL_FEATURES). Returns
 * the protocol features acked (REPLY_ACK is required).
 */
uint64_t hfe_handshake(int fd);

/* ---- guest memory and a split ring -------------------------------------- */

#define HFE_MEM_LEN (1u << 20)
#define HFE_DESC 0x0u
#define HFE_AVAIL 0x1000u
#define HFE_USED 0x2000u
#define HFE_REQ 0x3000u /* request buffers */
#define HFE_RING_NUM 16u

/* One memfd region at GPA 0, mapped here (uva = our address). */
struct hfe_mem {
    int fd;
    uint8_t *p;
    uint64_t gpa, uva, len;
};
void hfe_mem_new(struct hfe_mem *m, uint64_t len);
void hfe_mem_free(struct hfe_mem *m);
/* The region as a wire struct. */
struct vuf_mem_region hfe_mem_region(const struct hfe_mem *m);
/* SET_MEM_TABLE of m, acked 0. */
void hfe_set_mem(int fd, const struct hfe_mem *m);

/*
 * Queue `q` as a 16-entry split ring at HFE_DESC/AVAIL/USED of m:
 * SET_VRING_NUM, BASE 0, ADDR, CALL (call_fd, -1 = NOFD), ERR (err_fd, -1 =
 * none sent), KICK (kick_fd), ENABLE 1; each acked 0.
 */
void hfe_ring_start(int fd, const struct hfe_mem *m, unsigned q, int kick_fd, int call_fd,
                    int err_fd);
/* Put a GET_ID request (header, 20-byte data, status) on the ring and
 * publish it (no kick). */
void hfe_ring_push(struct hfe_mem *m);
/* The ring's used->idx. */
uint16_t hfe_ring_used(const struct hfe_mem *m);
/* Wait until used->idx is `want` (false after timeout_ms). */
bool hfe_ring_wait_used(const struct hfe_mem *m, uint16_t want, int timeout_ms);

#endif
