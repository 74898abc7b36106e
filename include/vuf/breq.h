/* SPDX-License-Identifier: MIT */
/*
 * vuf/breq.h - the back-end's side of the back-end request channel: sending
 * requests (1-10) to the front-end over the socket received with
 * SET_BACKEND_REQ_FD. The front-end's side is a VUF_CH_BACKEND vuf_server.
 *
 * Each call sends one request; with need_reply it waits (conn timeout) for
 * the front-end's u64 ack and returns -EIO if it is non-zero (*ack, if not
 * NULL, receives the raw value). Fds passed in are borrowed.
 *
 * Thread-safety: serialize calls on one conn.
 */
#ifndef VUF_BREQ_H
#define VUF_BREQ_H

#include <stdbool.h>
#include <stdint.h>

#include "vuf/conn.h"
#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Generic: any back-end request code with payload and fds. */
int vuf_breq_send(struct vuf_conn *c, uint32_t code, const void *payload, uint32_t size,
                  const int *fds, unsigned nfds, bool need_reply, uint64_t *ack);

int vuf_breq_config_change(struct vuf_conn *c, bool need_reply, uint64_t *ack);
int vuf_breq_shmem_map(struct vuf_conn *c, const struct vuf_shmem_map *m, int fd, bool need_reply,
                       uint64_t *ack);
int vuf_breq_shmem_unmap(struct vuf_conn *c, const struct vuf_shmem_map *m, bool need_reply,
                         uint64_t *ack);
/* SHARED_OBJECT_LOOKUP, which the front-end always answers. On success *fd
 * is the dmabuf the front-end returned (caller owns it) or -1. */
int vuf_breq_shared_object_lookup(struct vuf_conn *c, const struct vuf_shared_object *obj, int *fd,
                                  uint64_t *ack);

#ifdef __cplusplus
}
#endif
#endif
