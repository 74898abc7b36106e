/* SPDX-License-Identifier: MIT */
/*
 * vuf/virtq.h - the driver side of a virtqueue, split (virtio 1.2 §2.7) or
 * packed (§2.8), chosen per queue, living in vuf guest memory, so that a
 * real vhost-user back-end can process requests this process makes.
 *
 * Packed rings: the same calls work; where this header speaks of the
 * avail ring and used ring, a packed queue has its descriptor ring, the
 * driver event suppression area ("avail_gpa") and the device event
 * suppression area ("used_gpa"), the three addresses SET_VRING_ADDR
 * carries. Every "index" of a packed queue (base, avail/used/last_used
 * idx) is a ring position in bits 0-14 with its wrap counter in bit 15,
 * the encoding of SET_VRING_BASE/GET_VRING_BASE for packed rings.
 *
 * The queue allocates its descriptor table, available ring and used ring
 * (and, with INDIRECT_DESC, one indirect table per descriptor) from the
 * guest memory's bump allocator; the VMM side hands their addresses to the
 * back-end with SET_VRING_NUM/ADDR/BASE, and the kick and call eventfds with
 * SET_VRING_KICK/CALL.
 *
 * Trust: the back-end is a separate process that may be buggy. The queue
 * never reads back what the device could have changed except the used ring
 * and the used flags/avail_event, and checks every used entry: the id must
 * be the head of a chain in flight, the length at most the chain's
 * device-writable bytes, and used->idx may not run ahead of the number of
 * chains in flight. A violation is logged, nothing is consumed, and the
 * queue turns "broken": every data-path call returns -EPROTO until
 * vuf_virtq_reset(). The driver never crashes on what the device wrote.
 *
 * Handing the rings to another back-end (e.g. after GET_VRING_BASE stopped
 * the old one): reap the used entries the old back-end wrote with
 * vuf_virtq_get_used(), call vuf_virtq_requeue_inflight() to get the base
 * for the new back-end's SET_VRING_BASE (it is the used idx in memory; the
 * chains still in flight are re-published at [base, avail idx) so the new
 * back-end sees each exactly once), start the new back-end, then kick with
 * VUF_VIRTQ_KICK_FORCE.
 *
 * Ownership: the queue borrows the guest memory (it must outlive the queue)
 * and owns its kick and call eventfds (see vuf_virtq_set_kick_fd()). Ring
 * memory comes from the guest memory's bump allocator and is not given back
 * by vuf_virtq_free().
 *
 * Thread-safety: none. All calls on one queue must be serialized (one
 * thread per queue); the device is the only concurrent party, and the
 * memory ordering against it is handled here (release store of avail->idx,
 * acquire load of used->idx, full fences before reading suppression fields).
 */
#ifndef VUF_VIRTQ_H
#define VUF_VIRTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "vuf/guest_mem.h"
#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Split ring layout (virtio 1.2 §2.7). Little-endian hosts only.           */
/* ------------------------------------------------------------------------ */

#define VUF_VIRTQ_MAX_SIZE 32768u

/* The ring layer acts on VUF_VIRTIO_F_INDIRECT_DESC and _EVENT_IDX
 * (vuf/virtio.h). */

#define VUF_VRING_DESC_F_NEXT 1u
#define VUF_VRING_DESC_F_WRITE 2u
#define VUF_VRING_DESC_F_INDIRECT 4u

struct vuf_vring_desc {
    uint64_t addr; /* guest-physical */
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
VUF_STATIC_ASSERT(sizeof(struct vuf_vring_desc) == 16, "split descriptor");

#define VUF_VRING_AVAIL_F_NO_INTERRUPT 1u
/* Followed by uint16_t used_event (EVENT_IDX) after ring[size]. */
struct vuf_vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct vuf_vring_used_elem {
    uint32_t id;  /* head of the chain */
    uint32_t len; /* bytes written into the chain's writable buffers */
};
VUF_STATIC_ASSERT(sizeof(struct vuf_vring_used_elem) == 8, "used element");

#define VUF_VRING_USED_F_NO_NOTIFY 1u
/* Followed by uint16_t avail_event (EVENT_IDX) after ring[size]. */
struct vuf_vring_used {
    uint16_t flags;
    uint16_t idx;
    struct vuf_vring_used_elem ring[];
};

/* Bytes of each part for a queue of `n` entries, event fields included.
 * Minimum alignments: desc 16, avail 2, used 4. */
#define VUF_VRING_DESC_BYTES(n) (16ull * (n))
#define VUF_VRING_AVAIL_BYTES(n) (6ull + 2ull * (n))
#define VUF_VRING_USED_BYTES(n) (6ull + 8ull * (n))

static inline uint16_t *vuf_vring_used_event(struct vuf_vring_avail *avail, unsigned size)
{
    return &avail->ring[size];
}

static inline uint16_t *vuf_vring_avail_event(struct vuf_vring_used *used, unsigned size)
{
    return (uint16_t *)(void *)&used->ring[size];
}

/* EVENT_IDX rule: moving an index from `old_idx` to `new_idx` must notify
 * the other side iff it passed `event` (virtio 1.2 §2.7.7.2, §2.7.10.2). */
static inline bool vuf_vring_need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

/* ------------------------------------------------------------------------ */
/* Packed ring layout (virtio 1.2 §2.8). Little-endian hosts only.          */
/* ------------------------------------------------------------------------ */

/* Flag masks of a packed descriptor (NEXT, WRITE, INDIRECT as above). */
#define VUF_VRING_PACKED_DESC_F_AVAIL (1u << 7)
#define VUF_VRING_PACKED_DESC_F_USED (1u << 15)

struct vuf_vring_packed_desc {
    uint64_t addr; /* guest-physical */
    uint32_t len;
    uint16_t id; /* buffer id: the device returns it in the used descriptor */
    uint16_t flags;
};
VUF_STATIC_ASSERT(sizeof(struct vuf_vring_packed_desc) == 16, "packed descriptor");

/* Event suppression (§2.8.10): the driver area is written by the driver and
 * governs the device's calls, the device area the other way round. */
#define VUF_RING_EVENT_FLAGS_ENABLE 0u
#define VUF_RING_EVENT_FLAGS_DISABLE 1u
#define VUF_RING_EVENT_FLAGS_DESC 2u /* only with EVENT_IDX */
struct vuf_vring_packed_event {
    uint16_t off_wrap; /* position in bits 0-14, wrap counter in bit 15 */
    uint16_t flags;
};
VUF_STATIC_ASSERT(sizeof(struct vuf_vring_packed_event) == 4, "event suppression");

/* The wrap counter bit of a packed ring index (SET/GET_VRING_BASE). */
#define VUF_VRING_PACKED_WRAP (1u << 15)
/* A fresh packed ring: position 0, wrap counters 1 (§2.8.1). */
#define VUF_VRING_PACKED_BASE_INIT VUF_VRING_PACKED_WRAP

/* ------------------------------------------------------------------------ */
/* The queue                                                                */
/* ------------------------------------------------------------------------ */

struct vuf_virtq;

/* Default descriptors per indirect table (capped at the queue size). */
#define VUF_VIRTQ_INDIRECT_DEFAULT 16u

struct vuf_virtq_opts {
    unsigned size;         /* entries: a power of two, 1..VUF_VIRTQ_MAX_SIZE */
    unsigned index;        /* queue index: used in logs and vuf_virtq_vring_addr() */
    uint64_t features;     /* negotiated virtio features; the queue acts on
                            * EVENT_IDX and INDIRECT_DESC and ignores the rest */
    unsigned indirect_max; /* with INDIRECT_DESC: descriptors per indirect
                            * table, 1..size; 0 = the default. One table per
                            * ring descriptor is allocated up front. */
    unsigned indirect_min; /* chains of at least this many buffers go
                            * indirect when they fit; 0 = 2 */
    uint64_t ring_align;   /* 0 = 64 (each part on cache lines of its own,
                            * above the spec minima); else a power of two
                            * applied to all three parts (4096 for legacy
                            * layouts) */
    uint16_t base;         /* initial avail/used index, as vuf_virtq_reset();
                            * packed: 0 means VUF_VRING_PACKED_BASE_INIT
                            * (position 0 wrap 0 only via vuf_virtq_reset()) */
    bool packed;           /* packed layout (§2.8); also chosen when
                            * `features` has VIRTIO_F_RING_PACKED */
    bool no_aio;           /* true: kick (notify) and drain the call eventfd
                            * with poll/read/write only, never io_setup,
                            * io_submit or preadv2 (as VUF_NO_AIO=1 does
                            * process-wide): for a seccomp filter that kills
                            * on them. Weaker against a back-end that clears
                            * O_NONBLOCK: README.md, "Syscalls and sandboxes" */
};

/*
 * Create a queue in `gm` (borrowed, must outlive the queue), with fresh
 * kick and call eventfds (EFD_CLOEXEC | EFD_NONBLOCK). The rings start
 * zeroed with avail idx = used idx = base. On failure the guest memory the
 * call allocated is given back (vuf_guest_mem_alloc_rewind()).
 * Returns 0, -EINVAL (bad size/options), -ENOMEM (no room in guest memory
 * or heap), or an errno from eventfd().
 */
int vuf_virtq_new_opts(struct vuf_guest_mem *gm, const struct vuf_virtq_opts *opts,
                       struct vuf_virtq **out);
/* The same with defaults: index 0, base 0. */
int vuf_virtq_new(struct vuf_guest_mem *gm, unsigned size, uint64_t features,
                  struct vuf_virtq **out);

/* Close the eventfds the queue owns and free. Cookies still in flight are
 * dropped (see vuf_virtq_inflight()). NULL is a no-op. */
void vuf_virtq_free(struct vuf_virtq *vq);

unsigned vuf_virtq_size(const struct vuf_virtq *vq);
/* The guest memory the queue was created in (borrowed). */
struct vuf_guest_mem *vuf_virtq_guest_mem(const struct vuf_virtq *vq);
unsigned vuf_virtq_index(const struct vuf_virtq *vq);
uint64_t vuf_virtq_features(const struct vuf_virtq *vq);
/* True for a packed ring (fixed at creation). */
bool vuf_virtq_packed(const struct vuf_virtq *vq);

/*
 * Change the negotiated features (e.g. for a new back-end). Only with
 * nothing in flight (-EBUSY otherwise). INDIRECT_DESC is used only if the
 * queue was created with it (its tables exist); a driver never has to use
 * indirect descriptors, so that is not an error.
 */
int vuf_virtq_set_features(struct vuf_virtq *vq, uint64_t features);

/* Where the rings are. Host pointers are borrowed (valid while gm lives).
 * Split: desc/avail/used are set, the packed pointers NULL. Packed: the
 * GPAs are the descriptor ring, driver area and device area, and
 * pdesc/driver_event/device_event point at them (desc/avail/used NULL). */
struct vuf_virtq_layout {
    unsigned size;
    bool packed;
    uint64_t desc_gpa, avail_gpa, used_gpa;
    struct vuf_vring_desc *desc;
    struct vuf_vring_avail *avail;
    struct vuf_vring_used *used;
    struct vuf_vring_packed_desc *pdesc;
    struct vuf_vring_packed_event *driver_event;
    struct vuf_vring_packed_event *device_event;
};
void vuf_virtq_layout(const struct vuf_virtq *vq, struct vuf_virtq_layout *out);

/* SET_VRING_ADDR payload: index, flags 0, desc/used/avail as this
 * process's addresses (vhost-user translates them through the memory
 * table's userspace_addr), log 0. Packed: avail = driver area, used =
 * device area. */
void vuf_virtq_vring_addr(const struct vuf_virtq *vq, struct vuf_vring_addr *out);

/* ------------------------------------------------------------------------ */
/* Notification fds                                                         */
/* ------------------------------------------------------------------------ */

/* The fds to send with SET_VRING_KICK / SET_VRING_CALL. Borrowed: the queue
 * keeps them open until it is freed or they are replaced; -1 if none. */
int vuf_virtq_kick_fd(const struct vuf_virtq *vq);
int vuf_virtq_call_fd(const struct vuf_virtq *vq);

/*
 * Replace an eventfd with the caller's `fd` (or -1 for none). The queue
 * takes ownership of `fd` and closes the one it had. Neither needs any
 * flag: the queue never blocks on them, whatever the back-end (which holds
 * the same open file) does to their O_NONBLOCK flag or counter. With no
 * kick fd, notify by other means (in-band VRING_KICK)
 * using vuf_virtq_kick_needed(); with no call fd, use vuf_virtq_wait_busy().
 */
void vuf_virtq_set_kick_fd(struct vuf_virtq *vq, int fd);
void vuf_virtq_set_call_fd(struct vuf_virtq *vq, int fd);

/* ------------------------------------------------------------------------ */
/* Data path                                                                */
/* ------------------------------------------------------------------------ */

/* One buffer of a chain. `host`, if not NULL, is a pointer into guest
 * memory and wins over `gpa`. */
struct vuf_virtq_buf {
    uint64_t gpa;
    void *host;
    uint32_t len;  /* > 0 */
    bool writable; /* device-writable (VIRTQ_DESC_F_WRITE) */
};

/*
 * Add a chain of n buffers and make it available (release store of
 * avail->idx); does not notify, see vuf_virtq_kick(). Device-readable
 * buffers must come before device-writable ones (§2.7.4.2). Each buffer
 * must lie within one guest memory region. `cookie` (may be NULL) comes
 * back from vuf_virtq_get_used(). With INDIRECT_DESC, a chain of
 * indirect_min..indirect_max buffers takes one ring descriptor.
 * Returns 0, or:
 *   -ENOSPC  not enough free descriptors now (retry after completions)
 *   -EINVAL  n == 0, a zero length, readable after writable, or a chain
 *            longer than the queue that cannot go indirect (never fits)
 *   -EFAULT  a buffer outside guest memory
 *   -EPROTO  the queue is broken
 */
int vuf_virtq_add(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n, void *cookie);

/*
 * For bursts: vuf_virtq_add() without the store of avail->idx, which
 * vuf_virtq_publish(), vuf_virtq_kick_needed() or vuf_virtq_kick() then
 * makes once for all chains added since. The device polls that index, so
 * storing it per chain moves its cache line between the two cores per
 * chain. Until published, the device does not see the chains. Same returns
 * as vuf_virtq_add(). Packed rings have no such index: each chain is
 * available as soon as it is added, and publishing does nothing.
 */
int vuf_virtq_add_deferred(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n,
                           void *cookie);
void vuf_virtq_publish(struct vuf_virtq *vq);

/*
 * Publish what was added (vuf_virtq_publish()), then say whether the
 * device wants a notification for what was added since the last decision (by this call or
 * vuf_virtq_kick()): with EVENT_IDX the device's avail_event, else the used ring's NO_NOTIFY flag.
 * False if nothing was added since. Records the decision point. Packed: the device area's flags
 * (DISABLE: no; DESC with EVENT_IDX: whether the position and wrap counter it names were made
 * available since; otherwise yes).
 */
bool vuf_virtq_kick_needed(struct vuf_virtq *vq);

/* Publish what was added (vuf_virtq_publish(), so that chains from
 * vuf_virtq_add_deferred() are visible to the device it wakes), record the
 * decision point as vuf_virtq_kick_needed() does, then add 1 to the kick
 * eventfd's counter unconditionally, without ever blocking: a counter the
 * back-end filled stays full, which still wakes it. The same as
 * vuf_virtq_kick(vq, VUF_VIRTQ_KICK_FORCE) but for the return value.
 * Syscalls: io_submit (io_setup once per thread, io_getevents now and
 * then); with opts.no_aio, VUF_NO_AIO=1 or a sandbox that refuses AIO:
 * fcntl, poll, write (README.md, "Syscalls and sandboxes").
 * Returns 0, -EBADF without a kick fd, or another negative errno (-EINVAL
 * when the kick fd is no eventfd and cannot be written). */
int vuf_virtq_notify(struct vuf_virtq *vq);

#define VUF_VIRTQ_KICK_FORCE 0x1u
/* vuf_virtq_kick_needed() then vuf_virtq_notify() if so (always with
 * VUF_VIRTQ_KICK_FORCE). 1 if notified, 0 if suppressed, or -errno. */
int vuf_virtq_kick(struct vuf_virtq *vq, unsigned flags);

/*
 * Take the next used entry (acquire load of used->idx first). On success
 * the chain's descriptors are free again, *cookie (may be NULL) is its
 * cookie and *len (may be NULL) the bytes the device says it wrote.
 * Returns 0, -EAGAIN if none, or -EPROTO (the entry is invalid or the queue
 * was already broken; logged once).
 * Packed: a chain without device-writable buffers may come back with a
 * length up to its total size (DPDK's vhost PMD reports what it read); *len
 * is then 0. Beyond that, as for split rings, -EPROTO.
 */
int vuf_virtq_get_used(struct vuf_virtq *vq, void **cookie, uint32_t *len);

/* True if used->idx is ahead of what the driver consumed. */
bool vuf_virtq_has_used(const struct vuf_virtq *vq);

/*
 * Ask for a call after the next used entry (used_event with EVENT_IDX,
 * else clear NO_INTERRUPT; packed: the driver area's flags, DESC naming
 * last_used and its wrap counter with EVENT_IDX, else ENABLE), then
 * re-check: returns true if used entries are already pending (process
 * them; no call may come for them).
 */
bool vuf_virtq_enable_cb(struct vuf_virtq *vq);
/* Ask the device not to call (for busy polling). A hint, not a guarantee. */
void vuf_virtq_disable_cb(struct vuf_virtq *vq);

/*
 * Wait until a used entry is pending: enable calls and poll() the call fd
 * (draining it without blocking: a back-end that takes the signals first
 * cannot stretch the wait past timeout_ms). timeout_ms < 0 waits forever.
 * Syscalls: poll, preadv2(RWF_NOWAIT); with opts.no_aio, VUF_NO_AIO=1 or
 * a sandbox that refuses preadv2: poll, fcntl, read.
 * Returns 0, -ETIMEDOUT,
 * -EBADF without a call fd, -EPROTO if broken, or -errno from poll().
 */
int vuf_virtq_wait(struct vuf_virtq *vq, int timeout_ms);
/* The same by spinning on used->idx (no syscalls, no call fd needed;
 * consider vuf_virtq_disable_cb() first). */
int vuf_virtq_wait_busy(struct vuf_virtq *vq, int timeout_ms);

/* ------------------------------------------------------------------------ */
/* Indices and state (for SET_VRING_BASE / GET_VRING_BASE)                  */
/* ------------------------------------------------------------------------ */

/* avail->idx as published: the next avail position the driver fills. */
uint16_t vuf_virtq_avail_idx(const struct vuf_virtq *vq);
/* used->idx as the device last wrote it (acquire load from memory).
 * Packed: the position (and wrap) past the used descriptors the device has
 * written so far, found by walking them from last_used without consuming. */
uint16_t vuf_virtq_used_idx(const struct vuf_virtq *vq);
/* How far the driver consumed the used ring. */
uint16_t vuf_virtq_last_used(const struct vuf_virtq *vq);
unsigned vuf_virtq_num_free(const struct vuf_virtq *vq);     /* free ring descriptors */
unsigned vuf_virtq_num_inflight(const struct vuf_virtq *vq); /* chains in flight */
bool vuf_virtq_broken(const struct vuf_virtq *vq);

/* Copy up to `max` cookies of chains in flight, oldest first. Returns how
 * many are in flight (may exceed max). For teardown: vuf_virtq_reset() and
 * vuf_virtq_free() drop them. */
unsigned vuf_virtq_inflight(const struct vuf_virtq *vq, void **cookies, unsigned max);

/*
 * Re-initialize: zero the rings, free every descriptor, drop every chain in
 * flight, set avail->idx = used->idx = used_event = avail_event = base and
 * clear "broken". Only while no back-end uses the rings. Features and fds
 * are kept.
 */
void vuf_virtq_reset(struct vuf_virtq *vq, uint16_t base);

/*
 * For a new back-end taking over the rings, once the old one is stopped and
 * its used entries were reaped: rewrite the available ring at positions
 * [last_used, avail idx) with the chains still in flight, oldest first, and
 * set *base = last_used, the value for SET_VRING_BASE. Returns 0, -EBUSY if
 * used->idx in memory is not last_used (reap first), or -EPROTO if broken.
 */
/* Packed: the chains in flight are rewritten at the descriptor positions
 * from last_used on, and *base is last_used with its wrap counter (bit 15),
 * the value for both halves of SET_VRING_BASE; -EBUSY if a used descriptor
 * is pending at last_used. */
int vuf_virtq_requeue_inflight(struct vuf_virtq *vq, uint16_t *base);

#ifdef __cplusplus
}
#endif
#endif
