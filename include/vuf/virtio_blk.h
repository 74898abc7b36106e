/* SPDX-License-Identifier: MIT */
/*
 * vuf/virtio_blk.h - a virtio-blk driver (virtio 1.2 §5.2) over a vuf_virtq,
 * so the front-end can send block requests to a vhost-user-blk back-end
 * (e.g. qemu-storage-daemon) and check the answers.
 *
 * A request is the chain: header (device-readable) | data | status byte
 * (device-writable). A vuf_blk owns a pool of requests, each with its header,
 * status byte and a data buffer of `max_data` bytes in guest memory,
 * allocated once; several may be in flight at a time (queue depth > 1).
 *
 * Status mapping: VIRTIO_BLK_S_OK -> 0, IOERR -> -EIO, UNSUPP -> -ENOTSUP;
 * any other status byte (including one the device never wrote) -> -EPROTO.
 *
 * Ownership: a vuf_blk borrows its queue (and that queue's guest memory),
 * which must outlive it. Requests belong to the pool: the caller borrows one
 * with vuf_blk_req_get() and gives it back with vuf_blk_req_put().
 * vuf_blk_free() does not free the queue; guest memory is not given back.
 *
 * Thread-safety: none; serialize all calls on a vuf_blk and its queue.
 */
#ifndef VUF_VIRTIO_BLK_H
#define VUF_VIRTIO_BLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vuf/virtq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Wire format (virtio 1.2 §5.2.6)                                          */
/* ------------------------------------------------------------------------ */

#define VUF_BLK_T_IN 0u
#define VUF_BLK_T_OUT 1u
#define VUF_BLK_T_FLUSH 4u
#define VUF_BLK_T_GET_ID 8u
#define VUF_BLK_T_DISCARD 11u
#define VUF_BLK_T_WRITE_ZEROES 13u

#define VUF_BLK_S_OK 0u
#define VUF_BLK_S_IOERR 1u
#define VUF_BLK_S_UNSUPP 2u

/* Sector numbers in requests are always in 512-byte units. */
#define VUF_BLK_SECTOR_SIZE 512u
/* GET_ID answers with a 20-byte string, NUL-padded, not terminated if 20. */
#define VUF_BLK_ID_BYTES 20u

/* Device feature bits (virtio 1.2 §5.2.3). */
#define VUF_BLK_F_SIZE_MAX 1
#define VUF_BLK_F_SEG_MAX 2
#define VUF_BLK_F_GEOMETRY 4
#define VUF_BLK_F_RO 5
#define VUF_BLK_F_BLK_SIZE 6
#define VUF_BLK_F_FLUSH 9
#define VUF_BLK_F_TOPOLOGY 10
#define VUF_BLK_F_CONFIG_WCE 11
#define VUF_BLK_F_MQ 12
#define VUF_BLK_F_DISCARD 13
#define VUF_BLK_F_WRITE_ZEROES 14
#define VUF_BLK_F_SECURE_ERASE 16 /* config grows to 72 bytes */
#define VUF_BLK_F_ZONED 17        /* config grows to 96 bytes */

struct vuf_blk_outhdr {
    uint32_t type;
    uint32_t ioprio; /* "reserved" since virtio 1.0 (legacy ioprio); sent as 0 */
    uint64_t sector; /* 512-byte units; 0 for FLUSH, GET_ID, DISCARD, WRITE_ZEROES */
};
VUF_STATIC_ASSERT(sizeof(struct vuf_blk_outhdr) == 16, "virtio_blk_outhdr");

/* Data of DISCARD / WRITE_ZEROES: one or more of these. */
#define VUF_BLK_WZ_F_UNMAP 0x1u
struct vuf_blk_discard_wz {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags; /* bit 0: unmap (WRITE_ZEROES only); others reserved */
};
VUF_STATIC_ASSERT(sizeof(struct vuf_blk_discard_wz) == 16, "discard/write-zeroes segment");

/* Status byte -> 0 / -EIO / -ENOTSUP / -EPROTO. */
int vuf_blk_status_errno(uint8_t status);

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

struct vuf_blk;
struct vuf_blk_req;

/* Most data segments vuf_blk_req_prep_sg() takes. */
#define VUF_BLK_MAX_SG 32u

/*
 * A driver on `vq` with `nreqs` requests (1..VUF_VIRTQ_MAX_SIZE), each with
 * a data buffer of `max_data` bytes (0 allowed: then only FLUSH, DISCARD,
 * WRITE_ZEROES and caller-supplied data). Buffers are 4096-aligned.
 * Returns 0, -EINVAL, or -ENOMEM (heap, or no room in guest memory; the
 * guest memory taken is given back on failure).
 */
int vuf_blk_new(struct vuf_virtq *vq, unsigned nreqs, uint32_t max_data, struct vuf_blk **out);

/* Free the driver and its pool. Stop the back-end first: requests still in
 * flight are abandoned. The queue is not freed. NULL is a no-op. */
void vuf_blk_free(struct vuf_blk *blk);

struct vuf_virtq *vuf_blk_virtq(const struct vuf_blk *blk);

/* Wait by spinning on the used ring instead of sleeping on the call fd
 * (default off). Applies to vuf_blk_wait() and the synchronous helpers.
 * Turning it on also asks the device not to signal the call fd
 * (vuf_virtq_disable_cb()). */
void vuf_blk_set_busy_poll(struct vuf_blk *blk, bool on);

/* Adaptive polling (default 0: off): a sleeping wait first spins on the
 * used ring for up to `us` microseconds and only then sleeps on the call
 * fd. A completion that arrives within the spin is seen without a
 * syscall (the device may still signal the call fd, which the next
 * sleeping wait drains). No effect in busy-poll mode. */
void vuf_blk_set_poll_us(struct vuf_blk *blk, unsigned us);

/*
 * Return every request to the pool (those in flight, completed, and held by
 * the caller alike) and vuf_virtq_reset(vq, base). For recovery after
 * -EPROTO or a back-end crash, with no back-end using the rings.
 */
void vuf_blk_reset(struct vuf_blk *blk, uint16_t base);

/* --- asynchronous requests --------------------------------------------- */

/* Borrow an idle request, or NULL if all are in use. */
struct vuf_blk_req *vuf_blk_req_get(struct vuf_blk *blk);
/* Give back a request that is idle or completed (not one in flight:
 * -EBUSY). 0 on success. */
int vuf_blk_req_put(struct vuf_blk *blk, struct vuf_blk_req *req);

/* The request's data buffer in this process (and its GPA in *gpa if not
 * NULL); vuf_blk_max_data() bytes. Borrowed, valid while the guest memory
 * lives. */
void *vuf_blk_req_buf(const struct vuf_blk_req *req, uint64_t *gpa);
uint32_t vuf_blk_max_data(const struct vuf_blk *blk);

/* An opaque pointer for the caller (e.g. its own I/O descriptor). */
void vuf_blk_req_set_user(struct vuf_blk_req *req, void *user);
void *vuf_blk_req_user(const struct vuf_blk_req *req);

/*
 * Prepare a request on the request's own data buffer:
 *   IN / OUT   len bytes (a multiple of 512, 1..max_data) at `sector`; IN
 *              makes the buffer device-writable
 *   FLUSH      no data; len and sector must be 0
 *   GET_ID     20 device-writable bytes; len is ignored, max_data >= 20
 *   other      any other type goes out with len (maybe 0) device-readable
 *              bytes, to probe how a device answers an unknown type
 * DISCARD and WRITE_ZEROES use vuf_blk_req_prep_range().
 * 0, -EINVAL, or -EBUSY if the request is in flight.
 */
int vuf_blk_req_prep(struct vuf_blk_req *req, uint32_t type, uint64_t sector, uint32_t len);

/* Prepare with the caller's data segments (1..VUF_BLK_MAX_SG, inside guest
 * memory, each with its own writable flag; copied, so `data` may go away). */
int vuf_blk_req_prep_sg(struct vuf_blk_req *req, uint32_t type, uint64_t sector,
                        const struct vuf_virtq_buf *data, unsigned n);

/* DISCARD or WRITE_ZEROES of one range; flags VUF_BLK_WZ_F_UNMAP or 0. */
int vuf_blk_req_prep_range(struct vuf_blk_req *req, uint32_t type, uint64_t sector,
                           uint32_t num_sectors, uint32_t flags);

/*
 * Put a prepared request on the queue and kick it (honouring the device's
 * notification suppression) unless VUF_BLK_SUBMIT_NO_KICK, for batching
 * with vuf_blk_kick(): a request submitted so is not even published to
 * the device (avail->idx, vuf_virtq_add_deferred()) until that kick, so
 * that a batch costs one store the device's core sees. Returns 0 (the request is in flight; a
 * failed kick is logged, not returned), -ENOSPC (queue full; retry after completions), -EINVAL (not
 * prepared), -EBUSY (already in flight), or as vuf_virtq_add().
 */
#define VUF_BLK_SUBMIT_NO_KICK 0x1u
int vuf_blk_submit(struct vuf_blk *blk, struct vuf_blk_req *req, unsigned flags);
/* Kick for what was submitted with NO_KICK: as vuf_virtq_kick(vq, 0). */
int vuf_blk_kick(struct vuf_blk *blk);

/*
 * Take one completed request without waiting: 0 and *done, -EAGAIN if none,
 * or -EPROTO if the queue is broken. The request stays the caller's (read
 * its result, then put it back or prepare it again).
 */
int vuf_blk_reap(struct vuf_blk *blk, struct vuf_blk_req **done);
/* The same, waiting up to timeout_ms (< 0: forever): -ETIMEDOUT. */
int vuf_blk_wait(struct vuf_blk *blk, int timeout_ms, struct vuf_blk_req **done);

/* A completed request's outcome: 0, -EIO, -ENOTSUP, -EPROTO (unknown
 * status byte), or -EINPROGRESS if it has not completed. */
int vuf_blk_req_result(const struct vuf_blk_req *req);
/* The raw status byte and the device's used length of a completed request. */
uint8_t vuf_blk_req_status(const struct vuf_blk_req *req);
uint32_t vuf_blk_req_used_len(const struct vuf_blk_req *req);

/*
 * Submit a prepared request and wait for it: its result, or an error from
 * submit/wait. Other requests that complete meanwhile are kept for
 * vuf_blk_reap(). On -ETIMEDOUT the request stays in flight and returns to
 * the pool by itself when it completes: do not touch or put it. On -EPROTO
 * the queue is broken; see vuf_blk_reset().
 */
int vuf_blk_exec(struct vuf_blk *blk, struct vuf_blk_req *req, int timeout_ms);

/* --- synchronous helpers (take a request from the pool; -EBUSY if none is
 * idle). Requests longer than max_data are split. timeout_ms applies to
 * each request. --------------------------------------------------------- */

int vuf_blk_read(struct vuf_blk *blk, uint64_t sector, void *buf, size_t len, int timeout_ms);
int vuf_blk_write(struct vuf_blk *blk, uint64_t sector, const void *buf, size_t len,
                  int timeout_ms);
int vuf_blk_flush(struct vuf_blk *blk, int timeout_ms);
/* id receives the 20 raw bytes (not necessarily NUL-terminated). */
int vuf_blk_get_id(struct vuf_blk *blk, char id[VUF_BLK_ID_BYTES], int timeout_ms);
int vuf_blk_discard(struct vuf_blk *blk, uint64_t sector, uint32_t num_sectors, int timeout_ms);
int vuf_blk_write_zeroes(struct vuf_blk *blk, uint64_t sector, uint32_t num_sectors, bool unmap,
                         int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
