/* SPDX-License-Identifier: MIT */
/* vuf/vuf.h - umbrella header for libvuf, a vhost-user front-end library. */
#ifndef VUF_VUF_H
#define VUF_VUF_H

#include "vuf/log.h"
#include "vuf/wire.h"
#include "vuf/conn.h"
#include "vuf/client.h"
#include "vuf/server.h"
#include "vuf/breq.h"
#include "vuf/virtio.h"
#include "vuf/guest_mem.h"
#include "vuf/virtq.h"
#include "vuf/virtq_set.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtio_net.h"
#include "vuf/device.h"
#include "vuf/frontend.h"

#endif
