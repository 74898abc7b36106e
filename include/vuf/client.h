/* SPDX-License-Identifier: MIT */
/*
 * vuf/client.h - the front-end's typed client of a vhost-user back-end: one
 * function per front-end request (1-45).
 *
 * Every function returns 0 or a negative errno:
 *   -EPROTO   the back-end's reply broke the protocol (flags not exactly
 *             VERSION|REPLY, another request code, wrong size, wrong fd
 *             count, or a payload that fails its decoder)
 *   -EIO      the back-end answered with a non-zero ack or status
 *   -ENOTSUP  the request needs a feature that was not negotiated: the
 *             protocol feature in its message-table row (wire.h, "needs")
 *             is not in the set the last successful SET_PROTOCOL_FEATURES
 *             acked, or, for SET_VRING_ENABLE, virtio bit 30 is not in the
 *             last successful SET_FEATURES. Nothing is sent; the connection
 *             stays usable. Checked after the arguments (-EINVAL first).
 *   -EINVAL   a bad argument (checked before anything is sent)
 *   and every error of vuf_conn_send()/vuf_conn_recv() (-ETIMEDOUT,
 *   -ECONNRESET, ...).
 * vuf_conn_error_is_fatal() (vuf/conn.h) says after which of these the
 * stream is out of step and no further request may be sent. -EPROTO is not
 * one of them (the reply was read whole), but a back-end that broke the
 * protocol once is not to be trusted: going on is the caller's choice.
 *
 * REPLY_ACK: once SET_PROTOCOL_FEATURES including REPLY_ACK succeeded, every
 * request whose table entry says "ack" is sent with NEED_REPLY and waits for
 * the u64 ack (0 = success, else -EIO). vuf_client_set_need_reply() turns
 * this off (crosvm's behaviour) or back on.
 *
 * Fds passed in are borrowed: the client never closes them. Fds returned are
 * owned by the caller.
 *
 * Thread-safety: not thread-safe; serialize calls on one client.
 */
#ifndef VUF_CLIENT_H
#define VUF_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "vuf/conn.h"
#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

struct vuf_client;

/* Wrap a connection. Takes ownership of `conn` on success and on failure. */
int vuf_client_new(struct vuf_conn *conn, struct vuf_client **out);
/* Close the connection and free. NULL is a no-op. */
void vuf_client_free(struct vuf_client *c);

struct vuf_conn *vuf_client_conn(struct vuf_client *c);
/* Protocol features acknowledged with SET_PROTOCOL_FEATURES (0 before). */
uint64_t vuf_client_protocol_features(const struct vuf_client *c);
/* Whether ack-type requests carry NEED_REPLY when REPLY_ACK is negotiated
 * (default true). */
void vuf_client_set_need_reply(struct vuf_client *c, bool on);

int vuf_client_get_features(struct vuf_client *c, uint64_t *features);
int vuf_client_set_features(struct vuf_client *c, uint64_t features);
int vuf_client_set_owner(struct vuf_client *c);
int vuf_client_reset_owner(struct vuf_client *c);
/* 1..8 regions, fds[i] backs regions[i]. */
int vuf_client_set_mem_table(struct vuf_client *c, const struct vuf_mem_region *regions,
                             const int *fds, unsigned n);
/* fd may be -1 when LOG_SHMFD is not negotiated. */
int vuf_client_set_log_base(struct vuf_client *c, uint64_t size, uint64_t offset, int fd);
int vuf_client_set_log_fd(struct vuf_client *c, int fd);
int vuf_client_set_vring_num(struct vuf_client *c, uint32_t index, uint32_t num);
int vuf_client_set_vring_addr(struct vuf_client *c, const struct vuf_vring_addr *addr);
int vuf_client_set_vring_base(struct vuf_client *c, uint32_t index, uint32_t base);
int vuf_client_get_vring_base(struct vuf_client *c, uint32_t index, uint32_t *base);
/* index <= 255; fd -1 sends the NOFD flag. */
int vuf_client_set_vring_kick(struct vuf_client *c, uint32_t index, int fd);
int vuf_client_set_vring_call(struct vuf_client *c, uint32_t index, int fd);
int vuf_client_set_vring_err(struct vuf_client *c, uint32_t index, int fd);
int vuf_client_get_protocol_features(struct vuf_client *c, uint64_t *features);
int vuf_client_set_protocol_features(struct vuf_client *c, uint64_t features);
int vuf_client_get_queue_num(struct vuf_client *c, uint64_t *num);
int vuf_client_set_vring_enable(struct vuf_client *c, uint32_t index, bool enable);
int vuf_client_send_rarp(struct vuf_client *c, const uint8_t mac[6]);
int vuf_client_net_set_mtu(struct vuf_client *c, uint16_t mtu);
int vuf_client_set_backend_req_fd(struct vuf_client *c, int fd);
int vuf_client_iotlb_msg(struct vuf_client *c, const struct vuf_iotlb_msg *msg);
int vuf_client_set_vring_endian(struct vuf_client *c, uint32_t index, bool big_endian);
/* Reads `size` (<= 256) bytes at `offset` into buf. A reply of size 0 (the
 * back-end's refusal) gives -EIO; any other size mismatch -EPROTO. */
int vuf_client_get_config(struct vuf_client *c, uint32_t offset, uint32_t flags, void *buf,
                          uint32_t size);
int vuf_client_set_config(struct vuf_client *c, uint32_t offset, uint32_t flags, const void *buf,
                          uint32_t size);
int vuf_client_create_crypto_session(struct vuf_client *c, struct vuf_crypto_session *s);
int vuf_client_close_crypto_session(struct vuf_client *c, uint64_t session_id);
/* Returns the back-end's userfaultfd in *uffd (caller owns it). */
int vuf_client_postcopy_advise(struct vuf_client *c, int *uffd);
int vuf_client_postcopy_listen(struct vuf_client *c);
int vuf_client_postcopy_end(struct vuf_client *c);
/* *fd is -1 when the back-end returned mmap_size 0 (no inflight area). */
int vuf_client_get_inflight_fd(struct vuf_client *c, uint16_t num_queues, uint16_t queue_size,
                               struct vuf_inflight *out, int *fd);
int vuf_client_set_inflight_fd(struct vuf_client *c, const struct vuf_inflight *in, int fd);
int vuf_client_gpu_set_socket(struct vuf_client *c, int fd);
int vuf_client_reset_device(struct vuf_client *c);
int vuf_client_vring_kick(struct vuf_client *c, uint32_t index);
int vuf_client_get_max_mem_slots(struct vuf_client *c, uint64_t *slots);
int vuf_client_add_mem_reg(struct vuf_client *c, const struct vuf_mem_region *r, int fd);
int vuf_client_rem_mem_reg(struct vuf_client *c, const struct vuf_mem_region *r);
int vuf_client_set_status(struct vuf_client *c, uint8_t status);
int vuf_client_get_status(struct vuf_client *c, uint8_t *status);
/* *fd: the dmabuf (caller owns) or -1. */
int vuf_client_get_shared_object(struct vuf_client *c, const struct vuf_shared_object *uuid,
                                 int *fd);
/*
 * SET_DEVICE_STATE_FD with `fd` (borrowed). On success *backend_fd is the
 * fd the back-end returned instead (caller owns; use it in place of the
 * other end of the pipe) or -1 when the reply carried NOFD. A non-zero error
 * byte gives -EIO; NOFD with an fd, or no NOFD and no fd, gives -EPROTO.
 */
int vuf_client_set_device_state_fd(struct vuf_client *c, uint32_t direction, uint32_t phase, int fd,
                                   int *backend_fd);
int vuf_client_check_device_state(struct vuf_client *c);
int vuf_client_get_shmem_config(struct vuf_client *c, struct vuf_shmem_config *out);
int vuf_client_get_vring_base_skip_drain(struct vuf_client *c, uint32_t index, uint32_t *base);

#ifdef __cplusplus
}
#endif
#endif
