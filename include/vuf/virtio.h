/* SPDX-License-Identifier: MIT */
/*
 * vuf/virtio.h - virtio facts the front-end needs: device types with their
 * virtio ids, the minimum queue counts (used when the back-end lacks MQ),
 * config-space sizes, and feature-bit names.
 *
 * Pure tables; thread-safe.
 */
#ifndef VUF_VIRTIO_H
#define VUF_VIRTIO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A feature mask from a bit number: VUF_BIT(VUF_VIRTIO_F_VERSION_1). */
#define VUF_BIT(bit) (1ull << (bit))

/* Virtio transport feature bits (bit numbers; virtio 1.2 §6). */
#define VUF_VIRTIO_F_INDIRECT_DESC 28
#define VUF_VIRTIO_F_EVENT_IDX 29
#define VUF_VIRTIO_F_VERSION_1 32
#define VUF_VIRTIO_F_ACCESS_PLATFORM 33
#define VUF_VIRTIO_F_RING_PACKED 34

enum vuf_device_type {
    VUF_DEV_NET = 1,
    VUF_DEV_BLK = 2,
    VUF_DEV_CONSOLE = 3,
    VUF_DEV_RNG = 4,
    VUF_DEV_BALLOON = 5,
    VUF_DEV_SCSI = 8,
    VUF_DEV_9P = 9,
    VUF_DEV_GPU = 16,
    VUF_DEV_INPUT = 18,
    VUF_DEV_VSOCK = 19,
    VUF_DEV_CRYPTO = 20,
    VUF_DEV_IOMMU = 23,
    VUF_DEV_MEM = 24,
    VUF_DEV_SOUND = 25,
    VUF_DEV_FS = 26,
    VUF_DEV_PMEM = 27,
    VUF_DEV_MAC80211_HWSIM = 29,
    VUF_DEV_VIDEO_ENC = 30,
    VUF_DEV_VIDEO_DEC = 31,
    VUF_DEV_SCMI = 32,
    VUF_DEV_I2C = 34,
    VUF_DEV_CAN = 36,
    VUF_DEV_GPIO = 41,
};

struct vuf_device_info {
    enum vuf_device_type type;
    const char *name;     /* "blk", "net", "fs", ... (CLI spelling) */
    const char *label;    /* debug label: "vu-blk" */
    unsigned min_queues;  /* virtio spec minimum, used without MQ */
    uint32_t config_size; /* bytes of device config read by default (0: none) */
};

/* NULL if unknown. */
const struct vuf_device_info *vuf_device_info(uint32_t type);
const struct vuf_device_info *vuf_device_by_name(const char *name);

/* Bits 0-23 and 50-63 are device-type specific (virtio 1.2). */
#define VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK 0xfffc000000ffffffull

/* Name of a virtio feature bit: device-specific names for the device type,
 * transport/ring names (VERSION_1, EVENT_IDX, ...) and the vhost-user bits
 * (LOG_ALL, PROTOCOL_FEATURES). NULL if unknown. Static storage. */
const char *vuf_virtio_feature_name(uint32_t device_type, unsigned bit);

#ifdef __cplusplus
}
#endif
#endif
