/* SPDX-License-Identifier: MIT */
/*
 * Virtio facts: the device table (ids, names, queue minimums, config sizes)
 * and feature-bit names. Pure constant data, so everything here is
 * thread-safe.
 *
 * Sources: the virtio 1.2/1.3 specification (device ids, feature bits,
 * config layouts), crosvm's DeviceType::min_queues for the vhost-user
 * minimum queue counts, and what the real back-ends serve (see
 * shared/spec/real-backends.md) where that differs from the newest spec.
 */
#include <stddef.h>
#include <string.h>

#include "vuf/virtio.h"

#define NBITS 64

/* ------------------------------------------------------------------------ */
/* Feature names                                                            */
/* ------------------------------------------------------------------------ */

/*
 * Bits 24-49 outside the device-specific ranges: reserved for the ring and
 * the transport (virtio 1.2 §6), plus the two bits vhost gives meaning to.
 */
static const char *const generic_features[NBITS] = {
    [24] = "NOTIFY_ON_EMPTY",
    [26] = "LOG_ALL", /* VHOST_F_LOG_ALL */
    [27] = "ANY_LAYOUT",
    [28] = "INDIRECT_DESC",
    [29] = "EVENT_IDX",
    [30] = "PROTOCOL_FEATURES", /* VHOST_USER_F_PROTOCOL_FEATURES */
    [32] = "VERSION_1",
    [33] = "ACCESS_PLATFORM",
    [34] = "RING_PACKED",
    [35] = "IN_ORDER",
    [36] = "ORDER_PLATFORM",
    [37] = "SR_IOV",
    [38] = "NOTIFICATION_DATA",
    [39] = "NOTIF_CONFIG_DATA",
    [40] = "RING_RESET",
    [41] = "ADMIN_VQ",
    /* Not in virtio 1.3; crosvm's base features include it under this
     * number, so a back-end that mirrors crosvm may offer it. */
    [42] = "SUSPEND",
};

/* virtio 1.2 §5.2.3; BARRIER and SCSI are legacy-interface bits. */
static const char *const blk_features[NBITS] = {
    [0] = "BARRIER",       [1] = "SIZE_MAX",  [2] = "SEG_MAX",
    [4] = "GEOMETRY",      [5] = "RO",        [6] = "BLK_SIZE",
    [7] = "SCSI",          [9] = "FLUSH",     [10] = "TOPOLOGY",
    [11] = "CONFIG_WCE",   [12] = "MQ",       [13] = "DISCARD",
    [14] = "WRITE_ZEROES", [15] = "LIFETIME", [16] = "SECURE_ERASE",
    [17] = "ZONED",
};

/* virtio 1.3 §5.1.3; GSO is a legacy-interface bit. */
static const char *const net_features[NBITS] = {
    [0] = "CSUM",
    [1] = "GUEST_CSUM",
    [2] = "CTRL_GUEST_OFFLOADS",
    [3] = "MTU",
    [5] = "MAC",
    [6] = "GSO",
    [7] = "GUEST_TSO4",
    [8] = "GUEST_TSO6",
    [9] = "GUEST_ECN",
    [10] = "GUEST_UFO",
    [11] = "HOST_TSO4",
    [12] = "HOST_TSO6",
    [13] = "HOST_ECN",
    [14] = "HOST_UFO",
    [15] = "MRG_RXBUF",
    [16] = "STATUS",
    [17] = "CTRL_VQ",
    [18] = "CTRL_RX",
    [19] = "CTRL_VLAN",
    [20] = "CTRL_RX_EXTRA",
    [21] = "GUEST_ANNOUNCE",
    [22] = "MQ",
    [23] = "CTRL_MAC_ADDR",
    [50] = "DEVICE_STATS",
    [51] = "HASH_TUNNEL",
    [52] = "VQ_NOTF_COAL",
    [53] = "NOTF_COAL",
    [54] = "GUEST_USO4",
    [55] = "GUEST_USO6",
    [56] = "HOST_USO",
    [57] = "HASH_REPORT",
    [59] = "GUEST_HDRLEN",
    [60] = "RSS",
    [61] = "RSC_EXT",
    [62] = "STANDBY",
    [63] = "SPEED_DUPLEX",
};

static const char *const console_features[NBITS] = {
    [0] = "SIZE",
    [1] = "MULTIPORT",
    [2] = "EMERG_WRITE",
};

static const char *const balloon_features[NBITS] = {
    [0] = "MUST_TELL_HOST", [1] = "STATS_VQ",    [2] = "DEFLATE_ON_OOM",
    [3] = "FREE_PAGE_HINT", [4] = "PAGE_POISON", [5] = "PAGE_REPORTING",
};

static const char *const scsi_features[NBITS] = {
    [0] = "INOUT",
    [1] = "HOTPLUG",
    [2] = "CHANGE",
    [3] = "T10_PI",
};

static const char *const p9_features[NBITS] = {
    [0] = "MOUNT_TAG",
};

static const char *const gpu_features[NBITS] = {
    [0] = "VIRGL", [1] = "EDID", [2] = "RESOURCE_UUID", [3] = "RESOURCE_BLOB", [4] = "CONTEXT_INIT",
};

static const char *const vsock_features[NBITS] = {
    [0] = "STREAM",
    [1] = "SEQPACKET",
};

static const char *const crypto_features[NBITS] = {
    [0] = "REVISION_1",         [1] = "CIPHER_STATELESS_MODE", [2] = "HASH_STATELESS_MODE",
    [3] = "MAC_STATELESS_MODE", [4] = "AEAD_STATELESS_MODE",   [5] = "AKCIPHER_STATELESS_MODE",
};

static const char *const iommu_features[NBITS] = {
    [0] = "INPUT_RANGE", [1] = "DOMAIN_RANGE", [2] = "MAP_UNMAP",     [3] = "BYPASS",
    [4] = "PROBE",       [5] = "MMIO",         [6] = "BYPASS_CONFIG",
};

static const char *const mem_features[NBITS] = {
    [0] = "ACPI_PXM",
    [1] = "UNPLUGGED_INACCESSIBLE",
    [2] = "PERSISTENT_SUSPEND",
};

static const char *const sound_features[NBITS] = {
    [0] = "CTLS",
};

static const char *const fs_features[NBITS] = {
    [0] = "NOTIFICATION",
};

static const char *const pmem_features[NBITS] = {
    [0] = "SHMEM_REGION",
};

static const char *const scmi_features[NBITS] = {
    [0] = "P2A_CHANNELS",
    [1] = "SHARED_MEMORY",
};

static const char *const i2c_features[NBITS] = {
    [0] = "ZERO_LENGTH_REQUEST",
};

static const char *const gpio_features[NBITS] = {
    [0] = "IRQ",
};

/* ------------------------------------------------------------------------ */
/* Device table                                                             */
/* ------------------------------------------------------------------------ */

struct device_row {
    struct vuf_device_info info;
    const char *const *features; /* NBITS entries, or NULL: no device bits */
};

/*
 * min_queues: crosvm's DeviceType::min_queues where crosvm has the type
 * (net counts rx+tx+ctrl; fs hiprio+one request queue; gpu control+cursor;
 * sound control+event+tx+rx); otherwise the queues the virtio spec always
 * gives the device (crypto dataq+controlq, mem guest-request queue, i2c
 * requestq, can tx+rx+control, gpio requestq+eventq).
 *
 * config_size is what GET_CONFIG asks for by default (0: the device has no
 * config space, or its layout is variable / not ratified, so nothing is
 * read unless the caller knows better):
 *   net 12      mac[6], status, max_virtqueue_pairs, mtu; speed/duplex and
 *               the RSS fields only exist with later feature bits.
 *   blk 60      virtio_blk_config up to write_zeroes_may_unmap + 3 pad, as
 *               qemu-storage-daemon 7.2 serves it: it answers a larger
 *               request (the newer layout with the secure-erase fields is
 *               72 bytes) with an empty, failed reply.
 *   console 12  cols, rows, max_nr_ports, emerg_wr.
 *   balloon 16  num_pages, actual, free_page_hint_cmd_id, poison_val.
 *   scsi 36     seven u32 limits, max_channel, max_target, max_lun.
 *   9p 0        tag_len + tag[tag_len]: variable length.
 *   gpu 16      events_read, events_clear, num_scanouts, num_capsets.
 *   input 136   select, subsel, size, reserved[5], u[128].
 *   vsock 8     guest_cid.
 *   crypto 56   twelve u32 + max_size u64.
 *   iommu 40    page_size_mask, input_range, domain_range, probe_size,
 *               bypass + 3 reserved.
 *   mem 56      block_size, node_id + pad, addr, region_size,
 *               usable_region_size, plugged_size, requested_size.
 *   sound 12    jacks, streams, chmaps (controls needs F_CTLS).
 *   fs 40       tag[36], num_request_queues.
 *   pmem 16     start, size.
 *   gpio 8      ngpio, padding[2], gpio_names_size.
 */
static const struct device_row devices[] = {
    {{VUF_DEV_NET, "net", "vu-net", 3, 12}, net_features},
    {{VUF_DEV_BLK, "blk", "vu-blk", 1, 60}, blk_features},
    {{VUF_DEV_CONSOLE, "console", "vu-console", 2, 12}, console_features},
    {{VUF_DEV_RNG, "rng", "vu-rng", 1, 0}, NULL},
    {{VUF_DEV_BALLOON, "balloon", "vu-balloon", 2, 16}, balloon_features},
    {{VUF_DEV_SCSI, "scsi", "vu-scsi", 3, 36}, scsi_features},
    {{VUF_DEV_9P, "9p", "vu-9p", 1, 0}, p9_features},
    {{VUF_DEV_GPU, "gpu", "vu-gpu", 2, 16}, gpu_features},
    {{VUF_DEV_INPUT, "input", "vu-input", 2, 136}, NULL},
    {{VUF_DEV_VSOCK, "vsock", "vu-vsock", 3, 8}, vsock_features},
    {{VUF_DEV_CRYPTO, "crypto", "vu-crypto", 2, 56}, crypto_features},
    {{VUF_DEV_IOMMU, "iommu", "vu-iommu", 2, 40}, iommu_features},
    {{VUF_DEV_MEM, "mem", "vu-mem", 1, 56}, mem_features},
    {{VUF_DEV_SOUND, "sound", "vu-sound", 4, 12}, sound_features},
    {{VUF_DEV_FS, "fs", "vu-fs", 2, 40}, fs_features},
    {{VUF_DEV_PMEM, "pmem", "vu-pmem", 1, 16}, pmem_features},
    {{VUF_DEV_MAC80211_HWSIM, "mac80211-hwsim", "vu-mac80211-hwsim", 2, 0}, NULL},
    {{VUF_DEV_VIDEO_ENC, "video-enc", "vu-video-enc", 2, 0}, NULL},
    {{VUF_DEV_VIDEO_DEC, "video-dec", "vu-video-dec", 2, 0}, NULL},
    {{VUF_DEV_SCMI, "scmi", "vu-scmi", 2, 0}, scmi_features},
    {{VUF_DEV_I2C, "i2c", "vu-i2c", 1, 0}, i2c_features},
    {{VUF_DEV_CAN, "can", "vu-can", 3, 0}, NULL},
    {{VUF_DEV_GPIO, "gpio", "vu-gpio", 2, 8}, gpio_features},
};

#define NDEVICES (sizeof(devices) / sizeof(devices[0]))

/* Other spellings accepted by vuf_device_by_name: crosvm's --vhost-user
 * type names and the usual long forms. */
static const struct {
    const char *alias;
    enum vuf_device_type type;
} aliases[] = {
    {"block", VUF_DEV_BLK},
    {"entropy", VUF_DEV_RNG},
    {"snd", VUF_DEV_SOUND},
    {"video-encoder", VUF_DEV_VIDEO_ENC},
    {"video-decoder", VUF_DEV_VIDEO_DEC},
};

static const struct device_row *row_by_type(uint32_t type)
{
    for (size_t i = 0; i < NDEVICES; i++)
        if ((uint32_t)devices[i].info.type == type)
            return &devices[i];
    return NULL;
}

const struct vuf_device_info *vuf_device_info(uint32_t type)
{
    const struct device_row *r = row_by_type(type);

    return r ? &r->info : NULL;
}

const struct vuf_device_info *vuf_device_by_name(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < NDEVICES; i++)
        if (strcmp(devices[i].info.name, name) == 0)
            return &devices[i].info;
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcmp(aliases[i].alias, name) == 0)
            return vuf_device_info(aliases[i].type);
    return NULL;
}

const char *vuf_virtio_feature_name(uint32_t device_type, unsigned bit)
{
    const struct device_row *r;

    if (bit >= NBITS)
        return NULL;
    if (!(VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK & (1ull << bit)))
        return generic_features[bit];
    /* A device-specific bit means nothing without its device type. */
    r = row_by_type(device_type);
    if (!r || !r->features)
        return NULL;
    return r->features[bit];
}
