/* SPDX-License-Identifier: MIT */
/*
 * backend/blk_device.h - vuf-backend-blk's device: options, virtio-blk facts and
 * the state shared by the protocol handlers (blk_device.c) and the request
 * processing (blk_io.c).
 *
 * Threads: the main thread owns everything here and runs both the
 * front-end socket and the data path (one poll loop over the socket and
 * the kick eventfds), so ring and memory changes never race with request
 * processing. The control thread touches only `slot`, the shm fd and the
 * queues' atomic counters; a state transfer thread only its own copies.
 */
#ifndef VUF_BACKEND_BLK_H
#define VUF_BACKEND_BLK_H

#include <stdbool.h>
#include <stdint.h>

#include "control.h"
#include "mem.h"
#include "state.h"
#include "vring.h"
#include "vuf/server.h"
#include "vuf/virtio_blk.h"

/* virtio-blk's feature bits, request types and status values are the
 * public ones (vuf/virtio_blk.h): one spelling of each virtio fact. */

#define BLK_SECTOR 512u
#define BLK_ID_STRING "vuf-backend-blk"
/* virtio_blk_config up to write_zeroes_may_unmap + 3 pad (what
 * qemu-storage-daemon serves, and vuf_device_info's blk size). */
#define BLK_CONFIG_SIZE 60u
#define BLK_CONFIG_WRITEBACK_OFF 32u
#define BLK_MAX_DISCARD_SECTORS (1u << 22)
#define BLK_MAX_DISCARD_SEG 16u
#define BLK_MAX_QUEUES 256u

struct blk_opts {
    const char *socket_path;
    int fd;
    const char *file;
    uint64_t ram;
    unsigned num_queues;
    unsigned queue_size_max;
    bool read_only;
    uint64_t shm_size;
    const char *shm_file;
    const char *control_path;
    bool state_includes_ram;
    uint64_t protocol_mask;
    unsigned poll_us; /* spin this long on the rings before sleeping (0: never) */
};

struct blk_dev {
    struct blk_opts o;
    int disk_fd;
    bool disk_is_ram;
    /* The RAM disk's memfd mapped (NULL: pread/pwrite on disk_fd): a
     * request's data is then a memcpy, not a syscall. */
    uint8_t *disk_map;
    /* With disk_map, one bit per 4 KiB page: set once the page may hold
     * anything but zeroes. Reads of clear pages are a memset: reading a
     * hole of a shared memfd mapping would allocate the page and fault. */
    uint64_t *disk_touched;
    uint64_t capacity; /* sectors */
    uint8_t writeback;
    uint64_t features, protocol_features; /* offered */
    int shm_fd;

    /* per connection */
    struct vuf_server *srv;
    uint64_t acked_features, acked_protocol;
    bool features_set; /* a SET_FEATURES came (the ring layout is known) */
    uint8_t status;
    struct be_mem mem;
    struct be_vq *vqs;
    unsigned nq;
    struct blk_xfer *xfer;
    int xfer_result; /* of the last finished transfer, 0 = success */
    bool xfer_is_load;

    struct be_breq_slot slot;
    struct be_control *control;

    /* INFLIGHT_SHMFD: the mapped inflight area (per connection), NULL if
     * none. base = map + the front-end's mmap_offset within the page. */
    void *infl_map;
    size_t infl_map_len;
    uint8_t *infl_base;
    uint16_t infl_nq, infl_qsize;
    uint64_t infl_region; /* bytes per queue */

    /* Control hook "hold" (written by the control thread): popped requests
     * are marked in flight and kept, not processed. hold: -1 = every one,
     * N >= 0 = the next N (counted down by the main thread). "hold off"
     * sets 0, bumps release_gen and writes hold_efd: the main loop then
     * processes what the queues hold. */
    int hold;
    unsigned release_gen;
    int hold_efd;
};

/* The inflight region of queue i (d->infl_region bytes), or NULL. */
void *blk_infl_region(struct blk_dev *d, unsigned i);

/* blk_io.c: process every available request of a ready queue, then
 * interrupt the driver if it wants to hear. */
void blk_process_vq(struct blk_dev *d, struct be_vq *vq);
/* Process and complete the requests a queue holds (GET_VRING_BASE: a
 * stopped ring has nothing in flight). */
void blk_drain_held(struct blk_dev *d, struct be_vq *vq);

#endif
