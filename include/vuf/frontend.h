/* SPDX-License-Identifier: MIT */
/*
 * vuf/frontend.h - a virtio device (vuf/device.h) whose implementation is a
 * vhost-user back-end: the VMM side of vhost-user, with crosvm's
 * VhostUserFrontend as the reference behaviour.
 *
 * Messages on the main socket, per operation (bracketed ones are
 * conditional; PF = the back-end offered VHOST_USER_F_PROTOCOL_FEATURES,
 * virtio bit 30):
 *   new        SET_OWNER, GET_FEATURES, [GET_PROTOCOL_FEATURES,
 *              SET_PROTOCOL_FEATURES if PF], [SET_BACKEND_REQ_FD if
 *              BACKEND_REQ], [GET_QUEUE_NUM if MQ], [GET_MAX_MEM_SLOTS if
 *              CONFIGURE_MEM_SLOTS]
 *   activate   [SET_FEATURES if never sent or the acked set changed],
 *   and wake   [GET_INFLIGHT_FD if INFLIGHT_SHMFD and the device has no
 *              inflight area yet], [SET_INFLIGHT_FD while it has one],
 *              SET_MEM_TABLE (with CONFIGURE_MEM_SLOTS instead: the
 *              memory diff as for update_memory, possibly nothing),
 *              [SET_LOG_BASE if logging], then per ready
 *              queue, ascending:
 *              SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
 *              SET_VRING_KICK, [SET_VRING_ENABLE(1) if PF], then one
 *              write to the queue's kick eventfd (not a message)
 *   reset      per started queue: [SET_VRING_ENABLE(0) if PF],
 *   and sleep  GET_VRING_BASE
 *   snapshot   SET_DEVICE_STATE_FD(save), read to EOF, CHECK_DEVICE_STATE
 *   restore    [SET_FEATURES], SET_DEVICE_STATE_FD(load), write,
 *              CHECK_DEVICE_STATE
 *   config     GET_CONFIG / SET_CONFIG
 *   update_memory (vuf_frontend_update_memory, while active)
 *              with CONFIGURE_MEM_SLOTS: REM_MEM_REG per region the
 *              back-end has and the new memory lacks, then ADD_MEM_REG
 *              (one region, one fd) per new region, each in ascending GPA
 *              order; nothing if nothing changed. Without: SET_MEM_TABLE
 *              with the whole new memory if anything changed. Then
 *              [SET_LOG_BASE if logging]
 *   shm region GET_SHMEM_CONFIG (once; the answer is cached)
 *
 * Where vuf differs from crosvm (each on purpose):
 *   - REPLY_ACK is also used for our own requests: once negotiated, every
 *     request the protocol lets the back-end acknowledge carries NEED_REPLY
 *     and waits for the ack, so a failed SET_MEM_TABLE or SET_VRING_* is an
 *     error at the call instead of a silent desync (QEMU does the same).
 *     crosvm never sets NEED_REPLY; `crosvm_no_need_reply` restores that.
 *   - GET_QUEUE_NUM must answer 1..VUF_FRONTEND_MAX_QUEUES, except for
 *     net (below).
 *   - Net (virtio id 1) with MQ: GET_QUEUE_NUM counts queue PAIRS, as the
 *     vhost-user spec says and DPDK answers (crosvm takes it as the queue
 *     count). The device has rx/tx queues 0..2*pairs-1, plus the
 *     control queue at index 2*pairs when the back-end offers
 *     VIRTIO_NET_F_CTRL_VQ (the layout virtio-net gives max_virtqueue_pairs
 *     = pairs). The answer is the most pairs the back-end serves, not a
 *     requirement (the driver picks how many it uses; DPDK 22.11 always
 *     answers 128, whatever its queues= setting), so one that does not fit
 *     in VUF_FRONTEND_MAX_QUEUES is clamped (127 pairs with a control
 *     queue, 128 without) with a log line instead of refused; 0 is still
 *     -EPROTO. Without MQ, net keeps crosvm's 3 queues (rx, tx, ctrl).
 *     The control queue is not interpreted here: like every queue it is
 *     handed to the back-end if the driver makes it ready. QEMU serves it
 *     in the VMM instead, and back-ends written for QEMU (DPDK's vhost
 *     PMD) offer CTRL_VQ without serving it; a VMM using such a back-end
 *     must not offer CTRL_VQ (and the bits that need it: CTRL_RX,
 *     CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, ...) to its guest, or
 *     must handle the control queue itself. A config-space
 *     max_virtqueue_pairs above a clamped count is not patched.
 *   - A rejected back-end request (bad SHMEM_MAP, unknown code) gets an
 *     error reply and the device goes on; only a hang-up of the main socket
 *     is reported as VUF_DEVICE_EVENT_CRASHED.
 *   - SHMEM_MAP/UNMAP are checked here (shmid, bounds, overlap, exact
 *     unmap range), and reset removes every mapping.
 *   - reset/sleep stop the worker and keep the queue state on every path;
 *     a failed activate stops the rings it had started.
 *   - The worker starts before the first activation message (crosvm: after
 *     the last), so back-end requests are served while we wait for acks.
 *   - SET_FEATURES goes out at the first activation even if the driver
 *     acked nothing (crosvm then never sends it, leaving bit 30 unacked).
 *   - State transfers are bounded in size and time.
 *   - INFLIGHT_SHMFD (opt-in: cfg.inflight), as QEMU does it (crosvm has
 *     none); see "Inflight area" below.
 *   - CONFIGURE_MEM_SLOTS (opt-in: cfg.mem_slots), as QEMU does it:
 *     GET_MAX_MEM_SLOTS at construction (an answer of 0 is -EPROTO; more
 *     than VUF_FRONTEND_MAX_MEM_SLOTS is capped to it), and guest memory
 *     goes over as ADD_MEM_REG/REM_MEM_REG diffs against a shadow of what
 *     the back-end has (crosvm only ever sends SET_MEM_TABLE), so it may
 *     have up to min(GET_MAX_MEM_SLOTS, 512) regions. A region is the same
 *     one only if GPA, size, host address, fd offset and backing file
 *     (st_dev/st_ino) all match; REM_MEM_REG carries no fd. The shadow
 *     outlives sleep/reset (the back-end keeps its regions): a wake with
 *     unchanged memory sends no memory message at all. Without
 *     CONFIGURE_MEM_SLOTS, guest memory of more than 8 regions is refused
 *     (-E2BIG) before anything is sent.
 *   - Memory hot-(un)plug while active: vuf_frontend_update_memory() (crosvm
 *     has none).
 *   - GET_CONFIG flags are the spec's value 0 ("writable fields"), not
 *     crosvm's 1.
 *   - Each started ring gets one kick (a write to its kick eventfd) after
 *     its set-up, as the spec recommends and newest QEMU does: after a wake
 *     or a reconnect the ring may already hold buffers.
 *   - snapshot refuses an active device (-EBUSY): the back-end state is
 *     only defined with every ring stopped; sleep first (crosvm relies on
 *     its caller). A failed restore leaves the acked features as they were.
 *   - A config read that fits one GET_CONFIG (offset + len <= 256) asks
 *     for [0, offset + len) and cuts the window out: libvhost-user up to
 *     QEMU 7.2 ignores the offset field and always answers from byte 0.
 *   - Without VHOST_USER_PROTOCOL_F_CONFIG negotiated, config reads and
 *     writes return -ENOTSUP and send nothing (DPDK's vhost closes the
 *     socket on such a GET_CONFIG); the VMM builds that config space itself.
 *
 * After VUF_DEVICE_EVENT_CRASHED (reconnecting to a restarted back-end, as
 * QEMU's vhost-user-blk does; docs/reconnect.md has the whole sequence):
 *   - sleep is the call that gives the queues back. GET_VRING_BASE cannot
 *     be sent, so it returns the first error (typically -ECONNRESET or
 *     -EPIPE), and every queue the device had started is still written to
 *     queues[] with next_avail = next_used = used->idx read from guest
 *     memory (QEMU's resync); only -EINVAL (queues too short) changes
 *     nothing. reset also stops the device but hands nothing back.
 *   - The connection cannot be re-used: destroy the device and make a new
 *     one over a new connection (vuf_conn_connect() with a timeout waits
 *     for a back-end still restarting). The vuf_queue structs belong to the
 *     VMM and name no device: the ones sleep returned go to the new
 *     device's wake (or activate) as they are.
 *   - The driver's features are not renegotiated with the guest: ack on the
 *     new device what vuf_frontend_acked_features() of the old one said.
 *     ack_features drops bits the new back-end does not offer, so check
 *     that vuf_frontend_acked_features() of the new device equals it.
 *   - Requests the dead back-end took but never completed lie in the avail
 *     ring at [used->idx, avail->idx). Resuming at used->idx re-offers
 *     those positions; they hold exactly the unfinished chains only if the
 *     driver re-published them (vuf_virtq_requeue_inflight()) or the
 *     back-end completed in order. A real guest's driver re-publishes
 *     nothing. With a back-end that offers INFLIGHT_SHMFD (cfg.inflight on
 *     both devices), export the old device's inflight area
 *     (vuf_frontend_inflight_export) before destroying it and give it to
 *     the new one as cfg.inflight_area: the restarted back-end gets it with
 *     SET_INFLIGHT_FD before its rings start and resubmits the unfinished
 *     requests itself, so no driver-side requeue is needed.
 *
 * Ownership: the device owns the connection (and closes it on destroy).
 * Thread-safety: as vuf/device.h (ops serialized by the caller; interrupt,
 * mapper and event callbacks come from the worker thread).
 */
#ifndef VUF_FRONTEND_H
#define VUF_FRONTEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vuf/conn.h"
#include "vuf/device.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most queues a device has: SET_VRING_KICK/CALL carry the ring index in 8
 * bits, so no more rings can be started. GET_QUEUE_NUM answers above it
 * are refused (net: clamped, see above). */
#define VUF_FRONTEND_MAX_QUEUES 256u

/* Defaults for the device-state transfer of snapshot/restore. */
#define VUF_FRONTEND_STATE_TIMEOUT_MS 30000
#define VUF_FRONTEND_STATE_MAX_SIZE (64u * 1024 * 1024)

/* Most memory slots used with CONFIGURE_MEM_SLOTS (QEMU's cap; also
 * VUF_GUEST_MEM_MAX_REGIONS). */
#define VUF_FRONTEND_MAX_MEM_SLOTS 512u

/* Most SHMEM_MAP mappings kept at once (a back-end cannot exhaust memory
 * with tiny mappings). */
#define VUF_FRONTEND_MAX_MAPPINGS 4096u

/*
 * An inflight area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) as the front-end
 * keeps it: the back-end's file (a memfd) and the values of its
 * GET_INFLIGHT_FD answer, which SET_INFLIGHT_FD hands back. The layout
 * inside is the back-end's business; vuf never maps it. `fd` is owned by
 * whoever holds the struct: vuf_frontend_inflight_export() gives the
 * caller a dup it must close; vuf_frontend_new() only borrows
 * cfg.inflight_area.
 */
struct vuf_inflight_area {
    int fd;
    uint64_t mmap_size;
    uint64_t mmap_offset;
    uint16_t num_queues;
    uint16_t queue_size;
};

/* Largest inflight area (mmap_size) accepted from a back-end. */
#define VUF_FRONTEND_INFLIGHT_MAX_SIZE (64u * 1024 * 1024)

struct vuf_frontend_config {
    uint32_t device_type;   /* virtio device id (enum vuf_device_type) */
    uint64_t base_features; /* transport/ring bits to offer, e.g. VERSION_1 |
                             * EVENT_IDX; RING_PACKED is dropped */
    /* Largest queue size; rounded down to a power of two. 0 = 32768. */
    uint16_t max_queue_size;
    /* Device-crashed notification (may be NULL). */
    vuf_device_event_fn event;
    void *event_opaque;
    /* true: never set NEED_REPLY on our own requests (crosvm). Default
     * (false): use REPLY_ACK for them when negotiated. */
    bool crosvm_no_need_reply;
    /* Snapshot/restore: whole-transfer deadline in ms (0 = default,
     * negative = none) and largest back-end state accepted (0 = default). */
    int state_timeout_ms;
    size_t max_state_size;
    /* true: also negotiate VHOST_USER_PROTOCOL_F_LOG_SHMFD, so that dirty
     * logging (vuf_frontend_log_start) can be used. Off by default: a
     * device that never migrates does not ask for it. */
    bool dirty_log;
    /* true: also negotiate VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS (QEMU),
     * for guest memory of more than 8 regions and diff-based updates. Off
     * by default: crosvm's protocol set, SET_MEM_TABLE only. */
    bool mem_slots;
    /* true: also negotiate VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD when the
     * back-end offers it, and keep an inflight area for it (see "Inflight
     * area" below). Off by default (crosvm has none). */
    bool inflight;
    /* NULL, or an area exported (vuf_frontend_inflight_export) from an
     * earlier device of the same VMM device whose back-end crashed, to hand
     * to the restarted back-end. Needs `inflight`. Borrowed for the call to
     * vuf_frontend_new only: the device keeps a dup of its fd, the caller
     * still owns (and closes) area->fd. */
    const struct vuf_inflight_area *inflight_area;
};

/*
 * Connect the device to a back-end over `conn` (taken over, also on
 * failure) and negotiate as listed above. On success *out is the device;
 * free it with vuf_device_destroy(). Errors: those of vuf/client.h for the
 * failing request, -EINVAL for a bad config, -EPROTO for a GET_QUEUE_NUM
 * answer of 0 or (except for net) above VUF_FRONTEND_MAX_QUEUES, -ENOTSUP
 * for an unknown device type without MQ (no queue count to use), -EINVAL
 * or -EBADF for a cfg.inflight_area that does not fit (see "Inflight
 * area"; -EINVAL also when given without cfg.inflight or with fd < 0).
 */
int vuf_frontend_new(const struct vuf_frontend_config *cfg, struct vuf_conn *conn,
                     struct vuf_device **out);

/* True if `dev` was made by vuf_frontend_new. */
bool vuf_device_is_frontend(const struct vuf_device *dev);

/* Introspection (for tools and tests); `dev` must be a front-end. */
/* Protocol features negotiated with SET_PROTOCOL_FEATURES. */
uint64_t vuf_frontend_protocol_features(const struct vuf_device *dev);
/* Virtio features acked so far (including bit 30 when the back-end offers
 * it), and whether/what was last sent with SET_FEATURES. */
uint64_t vuf_frontend_acked_features(const struct vuf_device *dev);
bool vuf_frontend_last_sent_features(const struct vuf_device *dev, uint64_t *features);
/* True while queues are started on the back-end (active and awake). */
bool vuf_frontend_is_active(const struct vuf_device *dev);
/* Number of SHMEM mappings currently held. */
unsigned vuf_frontend_num_mappings(const struct vuf_device *dev);
/* Most guest memory regions the device can hand over: min(GET_MAX_MEM_SLOTS,
 * VUF_FRONTEND_MAX_MEM_SLOTS) with CONFIGURE_MEM_SLOTS, else 8. */
unsigned vuf_frontend_max_mem_regions(const struct vuf_device *dev);

/*
 * Memory hot-(un)plug: tell the back-end that the guest memory is now
 * `mem` (message sequences above). `mem` is borrowed like activate's: it
 * replaces the guest memory the device uses and must outlive the device's
 * active period (or the next update). Typically it is the guest_mem given
 * to activate, changed in place:
 *   hot-add     vuf_guest_mem_add_memfd/add_fd(gm, ...), then update;
 *   hot-remove  make sure nothing uses the region (no ring, no buffer in
 *               flight), vuf_guest_mem_remove(gm, gpa), then update. The
 *               back-end keeps its own mapping until the REM_MEM_REG.
 * The started rings must stay in regions the back-end keeps, unchanged
 * (their host addresses were sent): otherwise -EBUSY, nothing sent.
 *
 * While the device is not active (before activate, asleep, reset) nothing
 * is sent and 0 is returned: the next activate/wake sends the memory it is
 * given (with CONFIGURE_MEM_SLOTS as a diff against what the back-end kept).
 *
 * While dirty logging, the log then grows to cover the new memory if
 * needed (SET_LOG_BASE, as at a wake).
 *
 * Returns 0, or (nothing sent) -EINVAL (not a front-end, mem NULL or
 * without regions), -E2BIG (more regions than vuf_frontend_max_mem_regions()),
 * -EBUSY (rings), -EBADF (a region's fd), -ENOMEM, the sticky stream error;
 * or the vuf/client.h error of the failing request. After a failed
 * REM/ADD_MEM_REG the device still knows which regions the back-end has
 * (the diff resumes at the next update or wake); the back-end may be left
 * with part of the change.
 *
 * Thread-safety: a device operation (vuf/device.h): serialized with the
 * others by the caller, and no other thread may use `mem` (translate,
 * virtq calls) while it is being changed in place.
 */
int vuf_frontend_update_memory(struct vuf_device *dev, const struct vuf_guest_mem *mem);

/*
 * Inflight area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, opt-in:
 * cfg.inflight), as QEMU's vhost-user-blk keeps it for reconnect. The
 * back-end records in it the requests it has taken from the rings and not
 * completed; a restarted back-end given the same area resubmits them, so a
 * real guest loses no request across a back-end crash.
 *
 * Messages (at activate and wake, after SET_FEATURES and before the memory,
 * QEMU's order):
 *   - the device has no area (first activation, or since a reset):
 *     GET_INFLIGHT_FD(num_queues = the device's queue count, queue_size =
 *     the largest size of the queues being started, or the device's queue
 *     size if none is), answered with the area's fd, size and offset. An
 *     answer of mmap_size 0 (no fd) means the back-end keeps none: nothing
 *     more is sent until a reset. An answer that cannot be a real area is
 *     refused (-EPROTO, the fd closed, the activation fails, the next one
 *     asks again): more than VUF_FRONTEND_INFLIGHT_MAX_SIZE or than
 *     num_queues x round_up(64 + 32 x queue_size, 4096), or an fd that is
 *     not a regular file (memfd) of at least mmap_offset + mmap_size bytes.
 *   - while the device has an area: SET_INFLIGHT_FD(the area's mmap_size,
 *     mmap_offset, num_queues, queue_size) with its fd, at every
 *     activation and wake.
 *
 * Lifecycle: the area is the device's, not the connection's. sleep keeps
 * it (nothing is sent) and wake hands it back; reset frees it without a
 * message (the guest starts over: nothing is in flight; QEMU frees it on
 * a guest reset too), so the next activation asks for a new one; destroy
 * closes it. vuf never maps it.
 *
 * Reconnect: export the area of the crashed back-end's device
 * (vuf_frontend_inflight_export), give it as cfg.inflight_area to the
 * device of the restarted back-end, and close the exported fd after
 * vuf_frontend_new. The new device keeps a dup and sends no
 * GET_INFLIGHT_FD, only SET_INFLIGHT_FD with that area at its wake. The
 * area given must have the new device's queue count (else -EINVAL) and
 * pass the checks above (else -EINVAL or -EBADF); it is ignored, with a
 * warning, when the new back-end does not offer INFLIGHT_SHMFD (check
 * vuf_frontend_protocol_features()). Queues larger than the area's
 * queue_size are refused at activation (-EINVAL, nothing sent).
 */

/*
 * A dup of the device's inflight area fd (close-on-exec; the caller owns
 * and closes it) and the area's values in *out. 0, or -EINVAL (not a
 * front-end, out NULL), -ENOENT (the device has no area: INFLIGHT_SHMFD
 * not negotiated, not activated yet, the back-end has none, or reset since),
 * or the dup's error. A device operation (vuf/device.h).
 */
int vuf_frontend_inflight_export(struct vuf_device *dev, struct vuf_inflight_area *out);

/*
 * Dirty-page logging (live migration), as QEMU's vhost does it. Needs
 * cfg.dirty_log, LOG_SHMFD negotiated and VHOST_F_LOG_ALL (virtio bit 26)
 * offered by the back-end; bit 26 is kept for logging and never offered to
 * the driver (it is not in vuf_device_features()).
 *
 * The log is a memfd shared with the back-end: 1 bit per
 * VUF_FRONTEND_LOG_PAGE bytes of guest-physical address space, from GPA 0
 * to the end of the highest guest memory region, page p at byte p / 8, bit
 * p % 8. The back-end sets bits atomically; log_sync fetches and clears
 * them with one atomic exchange per 64-bit word.
 *
 * Messages:
 *   log_start  SET_LOG_BASE(size, offset 0) + memfd (reply expected),
 *              SET_FEATURES(acked | LOG_ALL), then per started queue
 *              SET_VRING_ADDR with VHOST_VRING_F_LOG and log = the used
 *              ring's GPA (each waited for with REPLY_ACK)
 *   log_stop   SET_FEATURES(acked), then per started queue SET_VRING_ADDR
 *              without the flag; the log is released
 *   while logging, activate/wake send SET_FEATURES with LOG_ALL (if not
 *   already), SET_MEM_TABLE, SET_LOG_BASE (the log grows first, keeping
 *   its bits, if the new guest memory reaches further), then the queues
 *   with VHOST_VRING_F_LOG.
 *
 * Lifecycle: logging is a device state, not a queue state. It needs an
 * active device to start (the guest memory sizes the log). sleep keeps it
 * (nothing is sent; bits logged before sleep can still be synced) and wake
 * re-sends it as above. reset and destroy end it without messages: the
 * log is released here, and the next activation's SET_FEATURES drops
 * LOG_ALL on the back-end (its value changed). A crashed back-end does not
 * end it; log_stop (or reset/destroy) does.
 *
 * Thread-safety: log_start and log_stop are device operations (serialized
 * with the others, as vuf/device.h says). log_is_active, log_bytes,
 * log_sync and log_for_each_dirty may be called from any thread, also
 * while another operation runs.
 */
#define VUF_FRONTEND_LOG_PAGE 4096u

/*
 * Start logging. 0, or: -ENOTSUP when cfg.dirty_log was not set, LOG_SHMFD
 * was not negotiated or the back-end does not offer LOG_ALL; -EINVAL when
 * the device is not active; -EALREADY when logging already; -ENOMEM /
 * memfd errors; the vuf/client.h error of a failing request (then logging
 * is not started; messages already sent are not undone).
 */
int vuf_frontend_log_start(struct vuf_device *dev);

/* Stop logging (see above). 0, -EINVAL when not logging, or the first
 * request error (the log is released and logging off either way). */
int vuf_frontend_log_stop(struct vuf_device *dev);

/* True while logging (between log_start and log_stop/reset/destroy). */
bool vuf_frontend_log_is_active(const struct vuf_device *dev);

/* Bytes of the bitmap (a multiple of 8), 0 when not logging. It can grow
 * at a wake with more guest memory. */
size_t vuf_frontend_log_bytes(const struct vuf_device *dev);

/*
 * Fetch and clear the dirty bits. With `bitmap`, they are copied to
 * bitmap[0, log_bytes) in the log's layout and the rest of `len` is
 * zeroed; bitmap NULL (len 0) only clears. *ndirty (may be NULL) = the
 * number of dirty pages fetched. 0, or -EINVAL (not logging, bad
 * arguments), -ENOSPC when len < log_bytes (nothing is cleared).
 */
int vuf_frontend_log_sync(struct vuf_device *dev, uint8_t *bitmap, size_t len, uint64_t *ndirty);

/*
 * Fetch and clear the dirty bits, calling fn(opaque, page) for each dirty
 * page number in ascending order (page * VUF_FRONTEND_LOG_PAGE is its GPA).
 * fn runs on the calling thread with the log locked: it must not call the
 * log functions. A non-zero return from fn stops the walk and is returned;
 * the bits not yet reported stay set. 0, or -EINVAL when not logging.
 */
int vuf_frontend_log_for_each_dirty(struct vuf_device *dev, int (*fn)(void *opaque, uint64_t page),
                                    void *opaque);

#ifdef __cplusplus
}
#endif
#endif
