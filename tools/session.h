/* SPDX-License-Identifier: MIT */
/*
 * tools/session.h - the `vuf` tool playing a VMM with a user-space
 * virtio-blk or virtio-net driver: the set-up shared by `vuf blk`,
 * `vuf demo` and `vuf net`.
 *
 * A session is one vhost-user-blk (or, with o.device_type VUF_DEV_NET,
 * vhost-user-net) device seen from the VMM side:
 *   open      connect to SOCKET and make the front-end device
 *             (vuf_frontend_new: SET_OWNER, GET_FEATURES, protocol features,
 *             SET_BACKEND_REQ_FD, GET_QUEUE_NUM)
 *   driver    ack the driver's features, read the blk config space
 *   queues    guest memory (one memfd region), then per queue a split
 *             virtqueue and (blk) a virtio-blk request pool in it; net
 *             leaves o.extra_mem bytes for the caller's vuf_net drivers
 *   activate  hand memory and queues to the back-end (vuf_device_activate);
 *             each queue's call fd is its "irqfd", so completions go
 *             straight from the back-end to the queue
 *   sleep / snapshot / replace (new connection, new front-end) / restore /
 *   wake, reset, close.
 *
 * Every call returns 0 or a negative errno and, on failure, names the step
 * that failed in s->failed (a static string) for the caller's message.
 * Not thread-safe, except that several threads may each drive their own
 * queue's vuf_blk between activate and sleep/reset.
 */
#ifndef VUF_TOOL_SESSION_H
#define VUF_TOOL_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vuf/device.h"
#include "vuf/guest_mem.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

/* Bytes of the blk config space read (capacity .. num_queues); every
 * vhost-user-blk back-end serves at least this much. */
#define TS_CONFIG_BYTES 36u
/* Net: mac, status, max_virtqueue_pairs, mtu. */
#define TS_NET_CONFIG_BYTES 12u

struct ts_opts {
    int timeout_ms;      /* connect wait and every reply / request (> 0) */
    unsigned queues;     /* queues to start, >= 1 (<= the device's) */
    unsigned queue_size; /* entries per queue, a power of two */
    unsigned nreqs;      /* requests per queue (the queue depth) */
    uint32_t max_data;   /* data bytes per request, a multiple of 512 */
    bool no_event_idx;   /* do not offer/ack VIRTIO_F_EVENT_IDX */
    bool no_indirect;    /* do not offer/ack VIRTIO_F_INDIRECT_DESC */
    bool busy_poll;      /* wait for completions by spinning */
    bool packed;         /* packed rings: offer/ack RING_PACKED, fail if not offered */
    /* 0 or VUF_DEV_BLK: the blk session above. VUF_DEV_NET: no config
     * read without CONFIG, no request pools; queues = 2 * queue pairs. */
    uint32_t device_type;
    uint64_t net_features; /* net: device bits the driver acks if offered */
    uint64_t extra_mem;    /* net: guest memory bytes left for the caller */
};

struct ts_session {
    struct ts_opts o;
    const char *failed; /* step that failed (static), or NULL */

    struct vuf_device *dev;
    unsigned dev_queues; /* the device's queue count */
    uint64_t offered;    /* features the front-end offers the driver */
    uint64_t acked;      /* features the driver acked */
    uint64_t protocol;   /* negotiated protocol features */

    /* blk config (valid after ts_driver) */
    bool have_config;
    uint8_t config[TS_CONFIG_BYTES];
    uint64_t capacity;       /* 512-byte sectors */
    uint32_t blk_size;       /* 0: not offered */
    uint32_t size_max;       /* 0: no limit given */
    uint16_t cfg_num_queues; /* 0: no MQ */
    bool read_only;
    bool has_flush;

    struct vuf_guest_mem *mem;
    uint64_t mem_size;
    unsigned nq; /* queues made / started */
    struct vuf_virtq **vq;
    struct vuf_blk **blk;
    struct vuf_queue *q;      /* what activate/wake get and sleep returns */
    struct vuf_virtq_irq irq; /* the interrupt sink over vq[] */
    bool active;

    volatile int crashed; /* the worker reported the back-end dead */
};

/* Zero the session and copy the options. */
void ts_init(struct ts_session *s, const struct ts_opts *o);

/* Connect to `socket` (waiting up to o.timeout_ms for it to accept) and
 * create the front-end device. */
int ts_open(struct ts_session *s, const char *socket);

/* Ack the driver's features and read the config space (net: only with
 * the CONFIG protocol feature; s->have_config says). */
int ts_driver(struct ts_session *s);

/* Guest memory, virtqueues and request pools for o.queues queues. */
int ts_queues(struct ts_session *s);

/* Start the queues on the back-end. */
int ts_activate(struct ts_session *s);

/* ts_open, ts_driver, ts_queues and ts_activate, up to the first failure. */
int ts_start(struct ts_session *s, const char *socket);

/* Stop the queues (vuf_device_sleep); s->q gets their state back. */
int ts_sleep(struct ts_session *s);

/* Save the device state (asleep). *data is malloc'd. */
int ts_snapshot(struct ts_session *s, uint8_t **data, size_t *len);

/* Destroy the device (closing its connection) but keep memory and queues;
 * the device must not be active. */
int ts_detach(struct ts_session *s);

/* Drop the current device (and its connection) and open a new one on
 * `socket`, keeping memory and queues (a fresh back-end process taking
 * over). The new back-end must offer every feature the driver acked. */
int ts_replace(struct ts_session *s, const char *socket);

/* Load a saved state into the device (before ts_wake). */
int ts_restore(struct ts_session *s, const uint8_t *data, size_t len);

/* Resume the queues ts_sleep stopped. */
int ts_wake(struct ts_session *s);

/* Stop the device (vuf_device_reset). */
int ts_reset(struct ts_session *s);

/* Reset if active, destroy the device (closing the connection), free the
 * queues and guest memory. Safe on a session in any state. */
void ts_close(struct ts_session *s);

/* The completion wait: until a request of queue `qi` completes or
 * timeout_ms passes; -ECONNRESET once the back-end is known dead.
 * A wrapper around vuf_blk_wait that checks s->crashed every 100 ms. */
int ts_wait(struct ts_session *s, unsigned qi, int timeout_ms, struct vuf_blk_req **done);

/* Synchronous I/O on queue qi, split into max_data requests; offsets and
 * lengths in bytes (multiples of 512). */
int ts_read(struct ts_session *s, unsigned qi, uint64_t offset, void *buf, size_t len);
int ts_write(struct ts_session *s, unsigned qi, uint64_t offset, const void *buf, size_t len);
int ts_flush(struct ts_session *s, unsigned qi);

/* ---- the deterministic data pattern --------------------------------- */

/*
 * Byte at absolute disk offset `off` for seed `seed`: byte (off % 8),
 * little-endian, of splitmix64(seed * 0x9e3779b97f4a7c15 + off / 8), where
 * splitmix64(x) = z ^ (z >> 31) with z from x + 0x9e3779b97f4a7c15 via
 * z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9, z = (z ^ (z >> 27)) *
 * 0x94d049bb133111eb. Any range of a written area can be checked alone.
 */
void ts_pattern_fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t len);
/* Index of the first byte of buf that differs from the pattern, or len. */
size_t ts_pattern_check(uint64_t seed, uint64_t off, const uint8_t *buf, size_t len);

/* Names of the bits set in `v` ("VERSION_1 EVENT_IDX ..."), into buf. */
const char *ts_feature_names(uint64_t v, char *buf, size_t cap);
const char *ts_protocol_names(uint64_t v, char *buf, size_t cap);

#endif
