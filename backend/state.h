/* SPDX-License-Identifier: MIT */
/*
 * backend/state.h - vuf-backend-blk's device state (DEVICE_STATE,
 * SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE) and its transfer.
 *
 * Blob layout, version 1 (all integers little-endian):
 *
 *   off  size  field
 *     0     8  magic "VUFBLKST"
 *     8     4  version = 1
 *    12     4  header_size = 48
 *    16     4  num_queues
 *    20     4  queue_record_size = 32
 *    24     8  capacity, in 512-byte sectors
 *    32     4  flags: bit 0 = the disk image follows the queue records
 *    36     1  writeback (virtio_blk_config.writeback, 0 or 1)
 *    37     3  reserved, 0
 *    40     8  image_bytes: capacity * 512 with flag bit 0, else 0
 *    48        num_queues queue records of 32 bytes:
 *                +0  u16 next avail index (what GET_VRING_BASE returns)
 *                +2  u16 reserved 0, +4 u32 reserved 0
 *                +8  u64 requests completed
 *               +16  u64 bytes read (IN data delivered to the driver)
 *               +24  u64 bytes written (OUT data stored)
 *     ..           image_bytes of disk content (flag bit 0 only)
 *     ..        8  FNV-1a 64 of every preceding byte
 *
 * The disk content is part of the state only for a --ram disk started with
 * --state-includes-ram: a --file disk is shared storage that both sides of
 * a migration see, as with qemu-storage-daemon.
 *
 * A loader refuses a blob whose magic, version, sizes, queue count,
 * capacity, reserved bytes or checksum do not match, that has trailing
 * bytes, or that carries an image when its own disk is a file.
 *
 * A transfer runs on its own thread: the front-end reads (save) or writes
 * (load) the pipe only after the SET_DEVICE_STATE_FD reply, so the main
 * loop must not block on it.
 */
#ifndef VUF_BACKEND_STATE_H
#define VUF_BACKEND_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLK_STATE_MAGIC "VUFBLKST"
#define BLK_STATE_VERSION 1u
#define BLK_STATE_HEADER_SIZE 48u
#define BLK_STATE_QUEUE_SIZE 32u
#define BLK_STATE_F_IMAGE 0x1u

struct blk_state_queue {
    uint16_t next_avail;
    uint64_t completed, bytes_read, bytes_written;
};

/* The device state proper (without the image). */
struct blk_state {
    uint32_t num_queues;
    uint64_t capacity;
    uint8_t writeback;
    struct blk_state_queue *q; /* num_queues entries */
};

/* A load's result: what to apply; image_fd is a fresh memfd holding the
 * disk image (owned, -1 when the blob carried none). */
struct blk_loaded {
    struct blk_state st;
    int image_fd;
};
void blk_loaded_free(struct blk_loaded *l);

struct blk_xfer;

/*
 * Start a save: write the blob for `st` (copied) to `fd`, streaming
 * image_bytes from image_fd (dup'd; -1 for none) after the queue records.
 * Takes ownership of fd, also on failure.
 */
int blk_xfer_start_save(int fd, const struct blk_state *st, int image_fd, uint64_t image_bytes,
                        struct blk_xfer **out);

/*
 * Start a load from `fd` (owned, also on failure). The blob must match
 * num_queues and capacity; an image is accepted only if accept_image.
 */
int blk_xfer_start_load(int fd, uint32_t num_queues, uint64_t capacity, bool accept_image,
                        struct blk_xfer **out);

/* True once the transfer thread has finished. */
bool blk_xfer_done(const struct blk_xfer *x);

/*
 * Wait up to timeout_ms for the transfer (then cancel it), reap the
 * thread and free x. Returns 0 or a negative errno. For a load that
 * succeeded, *loaded (if not NULL) receives the result (caller frees with
 * blk_loaded_free); otherwise it is left empty.
 */
int blk_xfer_finish(struct blk_xfer *x, int timeout_ms, struct blk_loaded *loaded);

#endif
