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

/* Device status bits (virtio 1.2 §2.1), as SET_STATUS/GET_STATUS carry them. */
#define VUF_STATUS_ACKNOWLEDGE 1u
#define VUF_STATUS_DRIVER 2u
#define VUF_STATUS_DRIVER_OK 4u
#define VUF_STATUS_FEATURES_OK 8u
#define VUF_STATUS_NEEDS_RESET 64u
#define VUF_STATUS_FAILED 128u

/*
 * virtio-net feature bits (bit numbers; virtio 1.2 §5.1.3), shared by the
 * front-end device (vuf/frontend.h) and the guest-side driver.
 */
#define VUF_NET_F_CSUM 0                /* device handles partial checksums */
#define VUF_NET_F_GUEST_CSUM 1          /* driver handles partial checksums */
#define VUF_NET_F_CTRL_GUEST_OFFLOADS 2 /* offload state set by control queue */
#define VUF_NET_F_MTU 3                 /* config mtu is valid */
#define VUF_NET_F_MAC 5                 /* config mac is valid */
#define VUF_NET_F_GSO 6                 /* legacy interface only: any GSO */
#define VUF_NET_F_GUEST_TSO4 7          /* driver takes TSOv4 */
#define VUF_NET_F_GUEST_TSO6 8          /* driver takes TSOv6 */
#define VUF_NET_F_GUEST_ECN 9           /* driver takes TSO with ECN */
#define VUF_NET_F_GUEST_UFO 10          /* driver takes UFO */
#define VUF_NET_F_HOST_TSO4 11          /* device takes TSOv4 */
#define VUF_NET_F_HOST_TSO6 12          /* device takes TSOv6 */
#define VUF_NET_F_HOST_ECN 13           /* device takes TSO with ECN */
#define VUF_NET_F_HOST_UFO 14           /* device takes UFO */
#define VUF_NET_F_MRG_RXBUF 15          /* RX frames may span buffers */
#define VUF_NET_F_STATUS 16             /* config status is valid */
#define VUF_NET_F_CTRL_VQ 17            /* control queue */
#define VUF_NET_F_CTRL_RX 18            /* RX mode control */
#define VUF_NET_F_CTRL_VLAN 19          /* VLAN filtering */
#define VUF_NET_F_CTRL_RX_EXTRA 20      /* extra RX mode control */
#define VUF_NET_F_GUEST_ANNOUNCE 21     /* driver sends gratuitous packets */
#define VUF_NET_F_MQ 22                 /* several queue pairs (needs CTRL_VQ) */
#define VUF_NET_F_CTRL_MAC_ADDR 23      /* MAC set by control queue */
#define VUF_NET_F_GUEST_RSC4 41         /* legacy interface only */
#define VUF_NET_F_GUEST_RSC6 42         /* legacy interface only */
#define VUF_NET_F_DEVICE_STATS 50       /* virtio 1.3: device statistics */
#define VUF_NET_F_HASH_TUNNEL 51        /* virtio 1.3: tunnel hashing */
#define VUF_NET_F_VQ_NOTF_COAL 52       /* virtio 1.3: per-queue coalescing */
#define VUF_NET_F_NOTF_COAL 53          /* notification coalescing */
#define VUF_NET_F_GUEST_USO4 54         /* driver takes USOv4 */
#define VUF_NET_F_GUEST_USO6 55         /* driver takes USOv6 */
#define VUF_NET_F_HOST_USO 56           /* device takes USO */
#define VUF_NET_F_HASH_REPORT 57        /* hash in the header (20 bytes) */
#define VUF_NET_F_GUEST_HDRLEN 59       /* driver sets an exact hdr_len */
#define VUF_NET_F_RSS 60                /* receive-side scaling */
#define VUF_NET_F_RSC_EXT 61            /* coalesced segments reported */
#define VUF_NET_F_STANDBY 62            /* standby for a primary device */
#define VUF_NET_F_SPEED_DUPLEX 63       /* config speed/duplex are valid */
/* Transport bit 27 (ANY_LAYOUT, legacy only): header and frame may share a
 * descriptor; implied by VERSION_1. */
#define VUF_NET_F_ANY_LAYOUT 27
/*
 * CTRL_VQ and every bit that needs it: what a device without a control
 * queue must not offer. Virtio 1.2 §5.1.3.1 makes CTRL_RX, CTRL_VLAN,
 * GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, NOTF_COAL and RSS require CTRL_VQ and
 * CTRL_RX_EXTRA require CTRL_RX; CTRL_GUEST_OFFLOADS and HASH_REPORT are
 * switched on only by control-queue commands, so they go too.
 */
#define VUF_NET_CTRL_VQ_FEATURES_MASK                                                           \
    (VUF_BIT(VUF_NET_F_CTRL_VQ) | VUF_BIT(VUF_NET_F_CTRL_RX) | VUF_BIT(VUF_NET_F_CTRL_VLAN) |   \
     VUF_BIT(VUF_NET_F_GUEST_ANNOUNCE) | VUF_BIT(VUF_NET_F_MQ) |                                \
     VUF_BIT(VUF_NET_F_CTRL_MAC_ADDR) | VUF_BIT(VUF_NET_F_CTRL_GUEST_OFFLOADS) |                \
     VUF_BIT(VUF_NET_F_CTRL_RX_EXTRA) | VUF_BIT(VUF_NET_F_NOTF_COAL) | VUF_BIT(VUF_NET_F_RSS) | \
     VUF_BIT(VUF_NET_F_HASH_REPORT))

/* virtio-net config space (virtio 1.2 §5.1.4): status bits and byte
 * offsets; all fields little-endian. */
#define VUF_NET_S_LINK_UP 1u
#define VUF_NET_S_ANNOUNCE 2u

/* Byte offsets in the config space. */
#define VUF_NET_CFG_MAC 0u
#define VUF_NET_CFG_STATUS 6u
#define VUF_NET_CFG_MAX_VQ_PAIRS 8u
#define VUF_NET_CFG_MTU 10u
#define VUF_NET_CFG_SPEED 12u
#define VUF_NET_CFG_DUPLEX 16u
#define VUF_NET_CFG_RSS_MAX_KEY_SIZE 17u
#define VUF_NET_CFG_RSS_MAX_INDIRECTION 18u
#define VUF_NET_CFG_SUPPORTED_HASH_TYPES 20u
#define VUF_NET_CFG_SIZE 24u

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
