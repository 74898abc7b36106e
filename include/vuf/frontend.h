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
 *              BACKEND_REQ], [GET_QUEUE_NUM if MQ]
 *   activate   [SET_FEATURES if never sent or the acked set changed],
 *   and wake   SET_MEM_TABLE, then per ready queue, ascending:
 *              SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
 *              SET_VRING_KICK, [SET_VRING_ENABLE(1) if PF]
 *   reset      per started queue: [SET_VRING_ENABLE(0) if PF],
 *   and sleep  GET_VRING_BASE
 *   snapshot   SET_DEVICE_STATE_FD(save), read to EOF, CHECK_DEVICE_STATE
 *   restore    [SET_FEATURES], SET_DEVICE_STATE_FD(load), write,
 *              CHECK_DEVICE_STATE
 *   config     GET_CONFIG / SET_CONFIG
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
 *   - GET_CONFIG flags are the spec's value 0 ("writable fields"), not
 *     crosvm's 1.
 *   - A config read that fits one GET_CONFIG (offset + len <= 256) asks
 *     for [0, offset + len) and cuts the window out: libvhost-user up to
 *     QEMU 7.2 ignores the offset field and always answers from byte 0.
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
 *     nothing: its requests would need INFLIGHT_SHMFD, which this device
 *     does not negotiate (vuf/client.h only has the messages).
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

/* Most SHMEM_MAP mappings kept at once (a back-end cannot exhaust memory
 * with tiny mappings). */
#define VUF_FRONTEND_MAX_MAPPINGS 4096u

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
};

/*
 * Connect the device to a back-end over `conn` (taken over, also on
 * failure) and negotiate as listed above. On success *out is the device;
 * free it with vuf_device_destroy(). Errors: those of vuf/client.h for the
 * failing request, -EINVAL for a bad config, -EPROTO for a GET_QUEUE_NUM
 * answer of 0 or (except for net) above VUF_FRONTEND_MAX_QUEUES, -ENOTSUP
 * for an unknown device type without MQ (no queue count to use).
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

#ifdef __cplusplus
}
#endif
#endif
