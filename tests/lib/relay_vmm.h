/* SPDX-License-Identifier: MIT */
/*
 * A VMM played by hand in front of `vuf relay` (test_relay_hostile.c,
 * test_relay_reconnect.c): every message is built here, so a test can send
 * what QEMU would and what it never would, and read the exact ack. Guest
 * memory is one memfd region WITHOUT seals (the test may shrink it), with
 * the library's own split-ring driver and virtio-blk requests on it. The
 * reference back-end ($VUF_BACKEND_BLK) and the relay ($VUF_TOOL) run as
 * processes in a temp dir.
 */
#ifndef VUF_TEST_RELAY_VMM_H
#define VUF_TEST_RELAY_VMM_H

#include <stdbool.h>
#include <stdint.h>

#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/guest_mem.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define RV_DISK_BYTES (16ull << 20)
#define RV_IO_MS 10000

/* The processes and their files. */
struct rv_env {
    char *dir;
    char disk[400], be_sock[400], vmm_sock[400], ctl[400], trace[400], relay_log[400];
    char be_log[400];
    unsigned be_starts;
    struct tu_proc be, relay;
    int disk_fd;
};

/* The VMM. */
struct rv_vmm {
    struct vuf_conn *c;
    int memfd;
    uint64_t mem_bytes;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    uint64_t features;
};

/* A temp dir with a 16 MiB disk file, the reference back-end serving it
 * (1 queue, `be_extra` more arguments or NULL), and nothing else yet. */
void rv_env_init(struct rv_env *e, const char *tag, const char *const *be_extra);
/* Start a reference back-end on `sock` as *p: 1 queue, on e->disk unless
 * be_extra names a --ram disk, log in e->dir. */
void rv_spawn_backend(struct rv_env *e, struct tu_proc *p, const char *sock,
                      const char *const *be_extra);
/* (Re)start the reference back-end on e->be_sock (after a kill). */
void rv_start_backend(struct rv_env *e, const char *const *be_extra);
/* `vuf relay --listen vmm_sock --connect be_sock --control ctl --trace
 * [extra...]`, stdout to e->trace, stderr to e->relay_log. */
void rv_start_relay(struct rv_env *e, const char *const *extra);
/* Kill whatever still runs, remove the dir. */
void rv_env_fini(struct rv_env *e);

/* Wait up to timeout_ms for the relay's trace to have `count` lines
 * containing `needle`; fails the test otherwise. */
void rv_wait_trace(const struct rv_env *e, const char *needle, int count, int timeout_ms);
/* The relay started the rings on its back-end and the activation is
 * complete (DRIVER_OK acked): `n` activations so far. */
void rv_wait_active(const struct rv_env *e, int n);

/* The relay's state: true while it has not exited (a zombie counts as
 * exited; its status is kept for rv_relay_wait). */
bool rv_relay_alive(struct rv_env *e);
/* Wait up to timeout_ms for the relay to exit by itself; its waitpid
 * status, or -1 if it was still running (then it is killed). */
int rv_relay_wait(struct rv_env *e, int timeout_ms);

/* Connect to the relay, negotiate (VERSION_1; REPLY_ACK) and hand over a
 * mem_bytes memfd region at GPA 0. */
void rv_connect(struct rv_vmm *v, const struct rv_env *e, uint64_t mem_bytes);
/* Close the connection and free the driver and memory (touches no ring:
 * safe after the memfd was shrunk). */
void rv_close(struct rv_vmm *v);

/* Send `code` with NEED_REPLY and return the ack (0 or a negative errno). */
int64_t rv_ask(struct rv_vmm *v, uint32_t code, const void *payload, uint32_t size, const int *fds,
               unsigned nfds);
/* A vring-state request {index, num}, with NEED_REPLY: its ack. */
int64_t rv_state(struct rv_vmm *v, uint32_t code, uint32_t index, uint32_t num);
/* SET_VRING_ADDR for ring 0 at these VMM addresses: its ack. */
int64_t rv_addr(struct rv_vmm *v, uint32_t index, uint64_t desc, uint64_t avail, uint64_t used);
/* GET_VRING_BASE: the reply's {index, num}; false if the relay hung up. */
bool rv_get_base(struct rv_vmm *v, uint32_t index, uint32_t *out_index, uint32_t *num);

/* The VMM's address of guest offset `off` (the region's mapping). */
uint64_t rv_uva(const struct rv_vmm *v, uint64_t off);

/* A `qsize` split ring 0 with a virtio-blk driver, set up on the relay
 * (NUM, BASE 0, ADDR, KICK, CALL: each acked 0). */
void rv_start_ring(struct rv_vmm *v, unsigned qsize);

/* Submit one write of `len` bytes of pattern `seed` at `sector` (kicks). */
struct vuf_blk_req *rv_submit_write(struct rv_vmm *v, uint64_t sector, uint32_t len, uint32_t seed);
/* Wait up to timeout_ms for `req` to complete; its result (0 = OK), or
 * -ETIMEDOUT. The request is given back. */
int rv_wait(struct rv_vmm *v, struct vuf_blk_req *req, int timeout_ms);

#endif
