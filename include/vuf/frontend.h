/* SPDX-License-Identifier: MIT */
/*
 * vuf/frontend.h - a virtio device (vuf/device.h) whose implementation is a
 * vhost-user back-end: the VMM side of vhost-user, with crosvm's
 * VhostUserFrontend as the reference behaviour.
 *
 * docs/frontend.md lists the messages each operation sends, every place
 * where vuf differs from crosvm and why, memory hot-plug, the inflight area
 * and dirty logging; docs/reconnect.md the recovery from a back-end crash.
 *
 * The syscalls each operation makes, and running the device under a
 * seccomp filter (cfg.no_aio, VUF_NO_AIO=1): README.md, "Syscalls and
 * sandboxes".
 *
 * Ownership: the device owns its connection (and closes it on destroy).
 * Thread-safety: as vuf/device.h (ops serialized by the caller; interrupt,
 * mapper and event callbacks come from the worker thread); the exceptions
 * are the log_* queries below.
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
 * are refused (net: clamped, docs/frontend.md). */
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
    uint32_t device_type; /* virtio device id (enum vuf_device_type) */
    /*
     * The transport/ring features the VMM's transport supports, as a MASK
     * of VUF_BIT() of bit numbers: VUF_BIT(VUF_VIRTIO_F_EVENT_IDX) |
     * VUF_BIT(VUF_VIRTIO_F_INDIRECT_DESC). VERSION_1 is always added unless
     * `legacy`. RING_PACKED is offered when the back-end offers it (a
     * warning when it does not). Device-type bits (0-23, 50-63) need
     * no mention here: they pass as the back-end offers them.
     * Migration note: this was `base_features` (same meaning, without the
     * implied VERSION_1), renamed so that old code does not compile into a
     * silent change: a zero `base_features` offered a legacy device whose
     * driver's VERSION_1 ack was dropped (for net, a 10- against a 12-byte
     * header). Copy the old value here; set `legacy` only for a pre-1.0
     * device.
     */
    uint64_t base_features_mask;
    /* true: offer a legacy (pre-virtio-1.0) device, without VERSION_1.
     * base_features_mask must not then contain VERSION_1 (-EINVAL). */
    bool legacy;
    /* Largest queue size; rounded down to a power of two. 0 = 32768. */
    uint16_t max_queue_size;
    /* Bytes of device config space: read_config/write_config past it are
     * refused with -EINVAL, nothing sent. 0 = the device type's size
     * (vuf_device_info()->config_size), grown by the offered features that
     * append fields (blk SECURE_ERASE 72, ZONED 96; net SPEED_DUPLEX, RSS
     * or HASH_REPORT 24); a type whose size is 0 there has no bound. */
    uint32_t config_size;
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
     * back-end offers it, and keep an inflight area for it
     * (docs/frontend.md, "Inflight area"). Off by default (crosvm has
     * none). */
    bool inflight;
    /* NULL, or an area exported (vuf_frontend_inflight_export) from an
     * earlier device of the same VMM device whose back-end crashed, to hand
     * to the restarted back-end. Needs `inflight`. Borrowed for the call to
     * vuf_frontend_new only: the device keeps a dup of its fd, the caller
     * still owns (and closes) area->fd. */
    const struct vuf_inflight_area *inflight_area;
    /* true: signal and drain the eventfds the back-end shares (the initial
     * kick, the shared interrupt of queues without an irqfd) with
     * poll/read/write only, never io_setup, io_submit or preadv2, so that
     * the device runs under a seccomp filter that kills on those (as
     * VUF_NO_AIO=1 in the environment does for the whole process). The
     * price against a hostile back-end: README.md, "Syscalls and
     * sandboxes". */
    bool no_aio;

    /* ---- virtio-net only (device_type VUF_DEV_NET); ignored otherwise ---- */
    /*
     * true: the VMM handles the control queue (it serves the queue at the
     * control index of vuf_frontend_net_layout() itself, or hands it to a
     * back-end that serves it), so CTRL_VQ and the bits that need it pass
     * as the back-end offers them. Default (false): the device has no
     * control queue and never offers VUF_NET_CTRL_VQ_FEATURES_MASK (CTRL_VQ,
     * CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, ...): back-ends
     * written for QEMU (DPDK) offer CTRL_VQ without serving it, and a guest
     * offered it would wait forever for its commands.
     */
    bool net_ctrl_vq;
    /*
     * The config space the device builds when the back-end did not
     * negotiate CONFIG (with CONFIG the back-end's is used and these are
     * ignored): mac = net_mac, offered with VIRTIO_NET_F_MAC unless all
     * zero; status = VUF_NET_S_LINK_UP unless net_link_down (STATUS is
     * always offered); max_virtqueue_pairs = the pairs of
     * vuf_frontend_net_layout(); mtu = net_mtu, offered with
     * VIRTIO_NET_F_MTU unless 0. Without CONFIG, MAC, STATUS and MTU are
     * offered as these say, whatever the back-end offers (they are
     * config-space bits; SET_FEATURES carries only the back-end's own).
     */
    uint8_t net_mac[6];
    uint16_t net_mtu;
    bool net_link_down;
};

/*
 * Connect a device to a back-end over `conn` and negotiate.
 * Sends: SET_OWNER, GET_FEATURES, [GET/SET_PROTOCOL_FEATURES],
 * [SET_BACKEND_REQ_FD], [GET_QUEUE_NUM], [GET_MAX_MEM_SLOTS]
 * (docs/frontend.md).
 * Ownership: takes `conn` (also on failure); borrows `cfg` and
 * cfg->inflight_area for the call (the device keeps a dup of its fd).
 * On success *out is the device; free it with vuf_device_destroy().
 * Returns: 0; -EINVAL for a bad config (cfg.legacy with VERSION_1 in
 * cfg.base_features_mask) or a cfg.inflight_area without cfg.inflight or
 * with fd < 0; -EPROTO for a GET_QUEUE_NUM answer of 0 or
 * (except for net) above VUF_FRONTEND_MAX_QUEUES; -ENOTSUP for an unknown
 * device type without MQ (no queue count to use); -EINVAL or -EBADF for an
 * inflight area that does not fit; or the vuf/client.h error of the failing
 * request.
 */
int vuf_frontend_new(const struct vuf_frontend_config *cfg, struct vuf_conn *conn,
                     struct vuf_device **out);

/*
 * The protocol features a device made with `cfg` acknowledges when the
 * back-end offers them (SET_PROTOCOL_FEATURES carries offered & this).
 * `vuf probe` uses it to negotiate as the device does. Sends nothing.
 * Returns: the mask; 0 for cfg NULL.
 */
uint64_t vuf_frontend_protocol_mask(const struct vuf_frontend_config *cfg);

/* Returns: true if `dev` was made by vuf_frontend_new. */
bool vuf_device_is_frontend(const struct vuf_device *dev);

/* Introspection (for tools and tests). Send nothing; `dev` not a front-end
 * gives 0 / false. */
/* Returns: the protocol features negotiated with SET_PROTOCOL_FEATURES. */
uint64_t vuf_frontend_protocol_features(const struct vuf_device *dev);
/* Returns: the virtio features the driver acked so far (never bit 30,
 * VHOST_USER_F_PROTOCOL_FEATURES: vhost-user's own, which SET_FEATURES
 * carries whenever the back-end offers it). */
uint64_t vuf_frontend_acked_features(const struct vuf_device *dev);
/* Returns: whether SET_FEATURES was ever sent; *features (may be NULL) = the
 * value last sent. */
bool vuf_frontend_last_sent_features(const struct vuf_device *dev, uint64_t *features);
/* Returns: true while queues are started on the back-end (active, awake). */
bool vuf_frontend_is_active(const struct vuf_device *dev);
/* Returns: the number of SHMEM mappings currently held. Any thread. */
unsigned vuf_frontend_num_mappings(const struct vuf_device *dev);
/* Returns: the most guest memory regions the device can hand over:
 * min(GET_MAX_MEM_SLOTS, VUF_FRONTEND_MAX_MEM_SLOTS) with
 * CONFIGURE_MEM_SLOTS, else 8. */
unsigned vuf_frontend_max_mem_regions(const struct vuf_device *dev);

/*
 * Device status (VHOST_USER_PROTOCOL_F_STATUS, negotiated when offered, as
 * QEMU does): activate sends SET_STATUS(ACKNOWLEDGE | DRIVER | FEATURES_OK)
 * after SET_FEATURES and reads it back with GET_STATUS (a back-end that
 * cleared FEATURES_OK refuses the acked features: activate fails with
 * -ENOTSUP), then DRIVER_OK once the rings are started; reset sends
 * SET_STATUS(0). Only changes are sent (a wake after sleep sends none).
 * This asks the back-end: GET_STATUS.
 * Returns: 0 and *status; -EINVAL (not a front-end, status NULL);
 * -ENOTSUP when STATUS was not negotiated (nothing sent); or the
 * vuf/client.h error.
 * Thread-safety: a device operation.
 */
int vuf_frontend_get_status(struct vuf_device *dev, uint8_t *status);

/* ---- virtio-net (device_type VUF_DEV_NET) -------------------------------- */

/*
 * The queue layout of a net device (virtio 1.2 §5.1.2): receiveq k is
 * queue 2k, transmitq k queue 2k + 1 for k < *pairs, then the control
 * queue at *ctrl_index, or *ctrl_index = -1 when the device has none
 * (cfg.net_ctrl_vq unset, or the back-end does not offer CTRL_VQ).
 * *pairs is GET_QUEUE_NUM's answer with MQ (clamped to fit
 * VUF_FRONTEND_MAX_QUEUES), else 1. Either pointer may be NULL. Sends
 * nothing.
 * Returns: 0; -EINVAL (not a front-end); -ENOTSUP (not a net device).
 */
int vuf_frontend_net_layout(const struct vuf_device *dev, unsigned *pairs, int *ctrl_index);

/*
 * NET_SET_MTU: tell the back-end the MTU the VMM offers its guest
 * (virtio-net's mtu field). Needs VHOST_USER_PROTOCOL_F_NET_MTU, which a
 * net device negotiates when offered.
 * Returns: 0; -EINVAL (not a front-end, mtu 0); -ENOTSUP (not a net
 * device, or NET_MTU not negotiated: nothing sent); or the vuf/client.h
 * error.
 * Thread-safety: a device operation.
 */
int vuf_frontend_net_set_mtu(struct vuf_device *dev, uint16_t mtu);

/*
 * SEND_RARP: ask the back-end to broadcast a RARP for `mac` (after a
 * migration, so that switches learn the guest's new port; needed when the
 * guest does not offer GUEST_ANNOUNCE). Needs
 * VHOST_USER_PROTOCOL_F_RARP, which a net device negotiates when offered.
 * Returns: 0; -EINVAL (not a front-end, mac NULL); -ENOTSUP (not a net
 * device, or RARP not negotiated: nothing sent); or the vuf/client.h error.
 * Thread-safety: a device operation.
 */
int vuf_frontend_send_rarp(struct vuf_device *dev, const uint8_t mac[6]);

/*
 * Memory hot-(un)plug: the guest memory is now `mem` (docs/frontend.md,
 * "Memory hot-plug").
 * Sends, while active: with CONFIGURE_MEM_SLOTS the REM_MEM_REG/ADD_MEM_REG
 * diff, else SET_MEM_TABLE if anything changed; then [SET_LOG_BASE] while
 * logging. While not active: nothing (the next activate/wake sends it).
 * Ownership: `mem` is borrowed like activate's, until the next update,
 * reset, sleep or destroy; the started rings must stay in regions the
 * back-end keeps.
 * Returns: 0; with nothing sent, -EINVAL (not a front-end, mem NULL or
 * without regions), -E2BIG (more than vuf_frontend_max_mem_regions()),
 * -EBUSY (a started ring would move), -EBADF (a region's fd), -ENOMEM or
 * the sticky stream error; or the vuf/client.h error of the failing request
 * (the device still knows which regions the back-end has).
 * Thread-safety: a device operation; no other thread may use `mem` while
 * it is changed in place.
 */
int vuf_frontend_update_memory(struct vuf_device *dev, const struct vuf_guest_mem *mem);

/*
 * The device's inflight area (cfg.inflight; docs/frontend.md, "Inflight
 * area"), to hand to the device of a restarted back-end as
 * cfg.inflight_area. Sends nothing.
 * Ownership: *out->fd is a close-on-exec dup the caller owns and closes.
 * Returns: 0; -EINVAL (not a front-end, out NULL); -ENOENT (no area:
 * INFLIGHT_SHMFD not negotiated, not activated yet, the back-end has none,
 * or reset since); or the dup's error.
 * Thread-safety: a device operation.
 */
int vuf_frontend_inflight_export(struct vuf_device *dev, struct vuf_inflight_area *out);

/*
 * Dirty-page logging for live migration (docs/frontend.md, "Dirty-page
 * logging"): a memfd bitmap shared with the back-end, 1 bit per
 * VUF_FRONTEND_LOG_PAGE bytes of guest-physical address space from GPA 0,
 * page p at byte p / 8, bit p % 8.
 */
#define VUF_FRONTEND_LOG_PAGE 4096u

/*
 * Start logging on an active device.
 * Sends: SET_LOG_BASE + memfd, SET_FEATURES(acked | LOG_ALL), then per
 * started queue SET_VRING_ADDR with VHOST_VRING_F_LOG.
 * Returns: 0; -ENOTSUP when cfg.dirty_log was not set, LOG_SHMFD was not
 * negotiated or the back-end does not offer LOG_ALL; -EINVAL when the
 * device is not active; -EALREADY when logging already; -ENOMEM / memfd
 * errors; or the vuf/client.h error of a failing request (logging is then
 * not started; messages already sent are not undone).
 * Thread-safety: a device operation.
 */
int vuf_frontend_log_start(struct vuf_device *dev);

/*
 * Stop logging. Sends: SET_FEATURES(acked), then per started queue
 * SET_VRING_ADDR without the flag. The log is released and logging off
 * either way.
 * Returns: 0, -EINVAL when not logging, or the first request error.
 * Thread-safety: a device operation.
 */
int vuf_frontend_log_stop(struct vuf_device *dev);

/* Returns: true while logging (between log_start and log_stop, reset or
 * destroy; sleep keeps it). Any thread. */
bool vuf_frontend_log_is_active(const struct vuf_device *dev);

/* Returns: bytes of the bitmap (a multiple of 8), 0 when not logging. It
 * can grow at a wake or update with more guest memory. Any thread. */
size_t vuf_frontend_log_bytes(const struct vuf_device *dev);

/*
 * Fetch and clear the dirty bits (one atomic exchange per 64-bit word).
 * With `bitmap`, they are copied to bitmap[0, log_bytes) in the log's
 * layout and the rest of `len` is zeroed; bitmap NULL (len 0) only clears.
 * *ndirty (may be NULL) = the number of dirty pages fetched. Sends nothing.
 * Returns: 0; -EINVAL (not logging, bad arguments); -ENOSPC when
 * len < log_bytes (nothing is cleared).
 * Thread-safety: any thread, also while another operation runs.
 */
int vuf_frontend_log_sync(struct vuf_device *dev, uint8_t *bitmap, size_t len, uint64_t *ndirty);

/*
 * Fetch and clear the dirty bits, calling fn(opaque, page) for each dirty
 * page number in ascending order (page * VUF_FRONTEND_LOG_PAGE is its
 * GPA). fn runs on the calling thread with the log locked: it must not call
 * the log functions. Sends nothing.
 * Returns: 0; -EINVAL when not logging; or fn's non-zero return, which
 * stops the walk (the bits not yet reported stay set).
 * Thread-safety: any thread, also while another operation runs.
 */
int vuf_frontend_log_for_each_dirty(struct vuf_device *dev, int (*fn)(void *opaque, uint64_t page),
                                    void *opaque);

#ifdef __cplusplus
}
#endif
#endif
