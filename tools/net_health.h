/* SPDX-License-Identifier: MIT */
/* `vuf net`: whether a queue pair came through a run unbroken. */
#ifndef VUF_TOOL_NET_HEALTH_H
#define VUF_TOOL_NET_HEALTH_H

#include <stddef.h>

#include "vuf/virtio_net.h"
#include "vuf/virtq.h"

/*
 * After (or during) a run on one pair: take back every TX slot the device
 * returned, then look at both queues and the driver. Every frame may have
 * come back while the device broke a queue (a used entry with a bad id or
 * length): such a run did not pass. Returns 0, or -EPROTO with a sentence
 * in why[0..len) naming what the device broke.
 */
int net_health(struct vuf_net *net, const struct vuf_virtq *rx, const struct vuf_virtq *tx,
               char *why, size_t len);

#endif
