/* SPDX-License-Identifier: MIT */
/* The virtqueue's private state, shared by the split (virtq.c) and packed
 * (virtq_packed.c) layouts. Not installed. */
#ifndef VUF_DRIVER_VIRTQ_INT_H
#define VUF_DRIVER_VIRTQ_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "vuf/virtq.h"

/* Ring parts are placed on lines of this size (see vq_alloc_part). */
#define VQ_LINE 64u

/* Driver-private state of a chain, indexed by its head descriptor. The
 * device never sees this, so freeing a chain never trusts shared memory. */
struct vq_slot {
    void *cookie;
    uint64_t wlen;  /* device-writable bytes: bound for used len */
    uint64_t tlen;  /* all bytes of the chain (packed: see vqp_get_used) */
    uint16_t ndesc; /* ring descriptors taken (1 when indirect) */
    uint16_t last;  /* last ring descriptor of the chain (split) */
    uint16_t head;  /* ring position of the first descriptor (packed) */
    bool inflight;
    unsigned older, newer; /* in-flight list in submission order; size = none */
};

struct vuf_virtq {
    struct vuf_guest_mem *gm;
    unsigned size, mask, index;
    uint64_t features;
    bool event_idx;
    bool use_indirect;
    unsigned indirect_max, indirect_min;

    uint64_t desc_gpa, avail_gpa, used_gpa, ind_gpa;
    struct vuf_vring_desc *desc;
    struct vuf_vring_avail *avail;
    struct vuf_vring_used *used;
    struct vuf_vring_desc *ind; /* size tables of indirect_max, or NULL */
    uint16_t *used_event;       /* driver-written (in the avail ring) */
    uint16_t *avail_event;      /* device-written (in the used ring) */

    int kick_fd, call_fd;
    bool no_aio; /* opts.no_aio: eventfds through poll/read/write only */

    uint16_t avail_idx; /* chains added (avail ring entries written) */
    uint16_t avail_pub; /* the avail->idx last stored: avail_idx unless deferred */
    uint16_t last_used; /* used entries consumed */
    uint16_t used_seen; /* used->idx as last loaded and checked: entries up to
                         * it are consumed without reloading the shared line */
    uint16_t kick_prev; /* avail idx at the last notification decision */
    unsigned num_free, free_head, free_tail, inflight;
    unsigned oldest, newest; /* in-flight list ends; size = empty */
    bool broken;
    uint16_t *free_next; /* private free-list links, one per descriptor */
    struct vq_slot *slots;

    /* Packed layout (virtq_packed.c); the split fields above other than
     * the in-flight list, slots and free_next (free buffer ids) are unused. */
    bool packed;
    struct vuf_vring_packed_desc *pdesc;
    struct vuf_vring_packed_desc *shadow; /* what the driver wrote, per position */
    struct vuf_vring_packed_event *drv_event, *dev_event;
    uint16_t p_avail, p_used; /* next position to fill / to read */
    bool p_avail_wrap, p_used_wrap;
    unsigned p_kick_added; /* descriptors made available since the last decision */
};

/* virtq_packed.c: the packed layout behind the public calls. */
int vqp_alloc(struct vuf_virtq *vq, const struct vuf_virtq_opts *opts);
void vqp_reset(struct vuf_virtq *vq, uint16_t base);
void vqp_layout(const struct vuf_virtq *vq, struct vuf_virtq_layout *out);
uint16_t vqp_avail_idx(const struct vuf_virtq *vq);
uint16_t vqp_used_idx(const struct vuf_virtq *vq);
uint16_t vqp_last_used(const struct vuf_virtq *vq);
int vqp_add(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n, void *cookie);
bool vqp_kick_needed(struct vuf_virtq *vq);
bool vqp_enable_cb(struct vuf_virtq *vq);
void vqp_disable_cb(struct vuf_virtq *vq);
bool vqp_has_used(const struct vuf_virtq *vq);
int vqp_get_used(struct vuf_virtq *vq, void **cookie, uint32_t *len);
int vqp_requeue_inflight(struct vuf_virtq *vq, uint16_t *base);

/* virtq.c: helpers both layouts use. */
/* A ring part from the guest memory's allocator, on cache lines of its own
 * (at least VQ_LINE aligned, its size rounded up to VQ_LINE), and its host
 * address. */
int vq_alloc_part(struct vuf_guest_mem *gm, uint64_t bytes, uint64_t align, uint64_t *gpa,
                  void **host);
int vq_buf_gpa(const struct vuf_virtq *vq, const struct vuf_virtq_buf *b, uint64_t *gpa);
/* virtq.c: the layout-independent checks of a chain before it is added. */
int vq_check_chain(const struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n,
                   uint64_t *wlen, uint64_t *tlen, bool *indirect);
void vq_inflight_push(struct vuf_virtq *vq, unsigned id);
/* Add one buffer the caller has already checked lies in guest memory (a
 * pool it allocated there), without publishing it (split rings; see
 * vuf_virtq_add_deferred()). 0, -ENOSPC or -EPROTO. For the device models'
 * hot paths; everything else goes through vuf_virtq_add(). */
int vq_add_one(struct vuf_virtq *vq, uint64_t gpa, uint32_t len, bool writable, void *cookie);
int vqp_add_one(struct vuf_virtq *vq, uint64_t gpa, uint32_t len, bool writable, void *cookie);
void vq_inflight_unlink(struct vuf_virtq *vq, unsigned id);

#endif
