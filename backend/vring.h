/* SPDX-License-Identifier: MIT */
/*
 * backend/vring.h - the device side of a split virtqueue (virtio 1.2
 * §2.7) in front-end memory: pop descriptor chains from the available
 * ring, push completions to the used ring, decide when to interrupt.
 *
 * Ring state follows the vhost-user spec ("Ring states"): a ring is
 * *started* by SET_VRING_KICK (an fd, or NOFD for polling) and *stopped* by
 * GET_VRING_BASE; it is *enabled* by SET_VRING_ENABLE (or by SET_FEATURES
 * without PROTOCOL_FEATURES). Only a started, enabled ring whose addresses
 * translate is processed.
 *
 * Trust: the ring lives in memory the front-end (the "guest") controls and
 * may change at any time. Every index, length and address read from it is
 * checked before use and every descriptor is copied before it is
 * interpreted. A structurally impossible ring (avail->idx more than `num`
 * ahead, a head index out of range) marks the queue broken: it stops until
 * it is set up again (SET_VRING_ADDR/BASE/KICK), the error is logged and
 * the err eventfd signalled. A malformed chain (loop, bad indirect table,
 * readable after writable, too long) is returned to the driver with used
 * length 0 and logged.
 *
 * Packed rings (VIRTIO_F_RING_PACKED acked, virtio 1.2 §2.8): `packed` is
 * set, the descriptor ring is `pdesc`, `avail` the driver event area and
 * `used` the device event area; last_avail and used_idx are a position in
 * bits 0-14 with its wrap counter in bit 15 (the SET/GET_VRING_BASE
 * encoding), and a chain's head is its buffer id. The used position comes
 * from SET_VRING_BASE's upper half (or equals the avail half when that is
 * 0), as it is not in memory. A chain that runs into a descriptor not
 * available, is longer than the ring or has an id beyond it breaks the
 * queue. Packed rings are tracked in the packed inflight layout below, and
 * only a tracked packed ring holds requests (their descriptors are then
 * re-read from the inflight region: the ring's are overwritten by used
 * ones). The device event area carries the kick switch (DISABLE while the
 * loop polls) and, with EVENT_IDX, DESC at the next avail position.
 *
 * Thread-safety: none; one thread (the back-end's main loop) owns a queue.
 */
#ifndef VUF_BACKEND_VRING_H
#define VUF_BACKEND_VRING_H

#include <stdbool.h>
#include <stdint.h>

#include "mem.h"
#include "vuf/virtq.h"
#include "vuf/wire.h"

/* virtio 1.2 §2.7.5; the descriptor and ring flag bits are the public
 * VUF_VRING_* ones (vuf/virtq.h). */
#define BE_VQ_MAX_SIZE 32768u

struct be_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One buffer segment of a chain, as the driver described it (GPA). */
struct be_seg {
    uint64_t gpa;
    uint32_t len;
};

/* A popped chain: segs[0..nout) device-readable, then segs[nout..nout+nin)
 * device-writable. */
struct be_chain {
    uint16_t head;
    unsigned nout, nin;
    uint64_t out_bytes, in_bytes;
    struct be_seg *segs; /* capacity: the queue's max_segs */
};

/*
 * The inflight area (INFLIGHT_SHMFD), split-ring layout: one region per
 * queue, each BE_INFL_ALIGN-aligned, a header then desc_num entries. It is
 * shared with the front-end, which keeps it across our crashes; see
 * README.md "Inflight tracking" for the update order and the recovery rule.
 */
#define BE_INFL_VERSION 1u
#define BE_INFL_ALIGN 64u

struct be_infl_desc {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
};
_Static_assert(sizeof(struct be_infl_desc) == 16, "inflight desc");

struct be_infl_hdr {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    struct be_infl_desc desc[];
};
_Static_assert(sizeof(struct be_infl_hdr) == 16, "inflight header");

/* Bytes of one queue's region for desc_num entries. */
static inline uint64_t be_infl_region_size(uint32_t desc_num)
{
    uint64_t n = sizeof(struct be_infl_hdr) + sizeof(struct be_infl_desc) * (uint64_t)desc_num;
    return (n + BE_INFL_ALIGN - 1) / BE_INFL_ALIGN * BE_INFL_ALIGN;
}

/*
 * The packed-ring layout (the one QEMU's vhost-user spec and DPDK's
 * rte_vhost_inflight_info_packed describe): desc_num entries form a pool; a
 * chain popped takes one entry per ring descriptor from the free list
 * (linked by `next`, ending at desc_num) and keeps a copy of each, its
 * head entry carrying inflight, counter, num and last. free_head,
 * used_idx and used_wrap_counter move as work is done; the old_* copies
 * are committed after each pop and each completion, so recovery can roll
 * an interrupted step back (README.md, "Inflight tracking").
 */
struct be_inflpk_desc {
    uint8_t inflight;
    uint8_t padding;
    uint16_t next;
    uint16_t last;
    uint16_t num;
    uint64_t counter;
    uint16_t id;
    uint16_t flags;
    uint32_t len;
    uint64_t addr;
};
_Static_assert(sizeof(struct be_inflpk_desc) == 32, "packed inflight desc");

struct be_inflpk_hdr {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t free_head;
    uint16_t old_free_head;
    uint16_t used_idx;
    uint16_t old_used_idx;
    uint8_t used_wrap_counter;
    uint8_t old_used_wrap_counter;
    uint8_t padding[7];
    struct be_inflpk_desc desc[];
};
_Static_assert(sizeof(struct be_inflpk_hdr) == 32, "packed inflight header");

static inline uint64_t be_inflpk_region_size(uint32_t desc_num)
{
    uint64_t n = sizeof(struct be_inflpk_hdr) + sizeof(struct be_inflpk_desc) * (uint64_t)desc_num;
    return (n + BE_INFL_ALIGN - 1) / BE_INFL_ALIGN * BE_INFL_ALIGN;
}

struct be_vq {
    unsigned index;
    uint32_t num; /* 0 until SET_VRING_NUM */
    struct vuf_vring_addr addr;
    bool addr_set;

    /* Host pointers for addr, valid while mem_gen == mem->generation. */
    uint64_t mem_gen;
    bool translated;
    struct be_desc *desc;
    uint16_t *avail; /* flags, idx, ring[num], used_event */
    uint8_t *used;   /* flags, idx, ring[num] {u32 id; u32 len}, avail_event */

    bool packed;
    struct vuf_vring_packed_desc *pdesc; /* packed: the descriptor ring */
    uint16_t *pk_ndesc;                  /* packed: descriptors per buffer id (num entries) */
    uint16_t pk_used_base;               /* packed: used position | wrap from SET_VRING_BASE */

    uint16_t last_avail; /* next avail index to process (SET/GET_VRING_BASE) */
    uint16_t used_idx;   /* shadow of used->idx */
    bool used_idx_valid;
    bool event_idx; /* VIRTIO_RING_F_EVENT_IDX negotiated */

    int kick_fd, call_fd, err_fd; /* owned; -1 = none */
    bool started, enabled, polling, broken;
    bool pending;   /* a pass stopped at its budget with work left */
    bool kicks_off; /* the loop polls this ring: the driver is told not to kick */

    unsigned max_segs;
    struct be_seg *seg_buf; /* max_segs entries, owned */

    /* Inflight tracking: this queue's region of the inflight area (NULL:
     * none; infl for split rings, pk_infl for packed ones), its entry
     * count (our validated copy), the last counter used, and whether the
     * region still has to be recovered (ring start). */
    struct be_infl_hdr *infl;
    struct be_inflpk_hdr *pk_infl;
    uint16_t infl_desc_num;
    uint64_t infl_seq;
    bool infl_recover;
    /* Packed tracking, our own copies (the region is written, and read back
     * only by recovery): the free list (head, head as last committed,
     * next[] by entry), the last entry of each chain by head entry, and
     * by buffer id the head entry + 1 (0: not in flight). */
    uint16_t pk_free, pk_free_old;
    uint16_t *pk_next, *pk_last, *pk_slot;
    /* Packed: descriptors used since the last call decision. */
    unsigned pk_unsignalled;

    /* Heads (packed: buffer ids) popped and marked in flight but not
     * processed: the control hook's "hold on", and the requests recovered
     * from the inflight area (in counter order). held[0..nheld), capacity
     * max_segs (>= the ring size); nheld is
     * read by the control thread (relaxed atomics). */
    uint16_t *held;
    unsigned nheld;
    unsigned release_seen; /* the blk_dev release_gen last acted on */

    /* Device-lifetime counters, read by other threads (relaxed atomics). */
    uint64_t completed, bytes_read, bytes_written;
};

/* Set up a queue; max_segs bounds a chain (the seg_max the device
 * advertises plus header and status). 0 or -ENOMEM. */
int be_vq_init(struct be_vq *vq, unsigned index, unsigned max_segs);
/* Free what be_vq_init allocated and close the fds. */
void be_vq_destroy(struct be_vq *vq);
/* Back to "never set up" (fds closed, stopped, disabled, next avail index
 * 0); the counters are kept. */
void be_vq_reset(struct be_vq *vq);

/* Replace one of the eventfds (ownership of fd passes; -1 for none). */
void be_vq_set_kick(struct be_vq *vq, int fd);
void be_vq_set_call(struct be_vq *vq, int fd);
void be_vq_set_err(struct be_vq *vq, int fd);

/* Translate the ring addresses (front-end VAs) with the current memory.
 * 0, or -EFAULT (logged) when a part of the ring is outside memory or the
 * size is not set. */
int be_vq_translate(struct be_vq *vq, const struct be_mem *mem);

/* Started, enabled, not broken, and translatable with the current memory
 * (re-translates after a memory change). */
bool be_vq_ready(struct be_vq *vq, const struct be_mem *mem);

/* Stop: not started, kick fd closed. Returns the next avail index. */
uint16_t be_vq_stop(struct be_vq *vq);

/*
 * Pop the next chain into *c (c->segs is set to the queue's buffer).
 * Returns 1 with a chain, 0 when the ring is empty, -EBADMSG for a
 * malformed chain (c->head is valid: push it with length 0), -EPROTO when
 * the ring turned broken.
 */
int be_vq_pop(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c);

/* Parse the chain at `head` into *c, as be_vq_pop does after taking a
 * head from the avail ring (held and recovered requests). 1 or -EBADMSG. */
int be_vq_chain_at(struct be_vq *vq, const struct be_mem *mem, uint16_t head, struct be_chain *c);

/* Put {head, len} on the used ring and publish the new used->idx; with
 * inflight tracking, then clear the head's entry and advance the region's
 * used_idx. Packed: head is the buffer id; with tracking, its entries go
 * back to the free list first and the region's positions are committed
 * after the used descriptor is published. */
void be_vq_push(struct be_vq *vq, uint16_t head, uint32_t len);

/* Attach this queue's inflight region (NULL to detach), `bytes` long
 * (the area's stride). The ring's layout (vq->packed, set before) picks
 * the region's: a region whose desc_num is below the ring size, or too
 * small for the packed layout, is refused (logged, no tracking).
 * Attaching arms the recovery, done by be_vq_infl_recover. */
void be_vq_infl_attach(struct be_vq *vq, void *region, uint16_t desc_num, uint64_t bytes);

/*
 * Recover a ready queue's region (once per attach). Split: reconcile the
 * region with used->idx, queue the in-flight heads in counter order on
 * held[], and set the next avail index to used->idx + their number.
 * Packed: commit or roll back the step a crash interrupted, queue the
 * in-flight buffer ids in counter order on held[], and set the used
 * position from the region and the next avail position to it plus their
 * descriptors (a fresh or inconsistent region starts from SET_VRING_BASE
 * instead). Returns how many were queued.
 */
unsigned be_vq_infl_recover(struct be_vq *vq);

/* With EVENT_IDX: publish avail_event = last_avail, then re-check the
 * ring. True if more chains are available (call be_vq_pop again). */
bool be_vq_more(struct be_vq *vq);

/* Adaptive polling (--poll-us): while the loop spins on the ring, the
 * driver is asked not to kick (used->flags NO_NOTIFY, or avail_event left
 * behind with EVENT_IDX; packed: device event flags DISABLE); turning
 * kicks back on re-publishes the wish (packed: ENABLE, or DESC at the next
 * avail position with EVENT_IDX), and the caller must look at the ring
 * once more before it sleeps. */
void be_vq_set_kicks(struct be_vq *vq, bool on);

/* Requests on the avail ring that are not yet taken (no side effects). */
bool be_vq_has_avail(const struct be_vq *vq);

/* Interrupt the driver (call eventfd) if the used index moved past
 * `old_used` and the driver wants to hear about it (used_event with
 * EVENT_IDX, else the NO_INTERRUPT flag). Packed: if descriptors were used
 * since the last decision and the driver event area allows it (DISABLE,
 * ENABLE, or DESC with EVENT_IDX); old_used is not needed. */
void be_vq_notify(struct be_vq *vq, uint16_t old_used);

/* Signal the err eventfd, if any. */
void be_vq_signal_err(struct be_vq *vq);
/* Mark the queue broken (logged with `why`, err eventfd signalled): it
 * stops until it is set up again. */
void be_vq_break(struct be_vq *vq, const char *why);

#endif
