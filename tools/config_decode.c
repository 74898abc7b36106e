/* SPDX-License-Identifier: MIT */
/*
 * Device config-space layouts (virtio 1.3 §5), as tables of fields. One
 * table per device type is the only description of each layout; the probe's
 * human and JSON outputs are both built from what config_decode()
 * returns.
 *
 * Config space is little-endian for virtio 1.x devices.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "vuf/virtio.h"
#include "vuf_tool.h"

struct layout_field {
    const char *name;
    const char *group;
    enum cfg_kind kind;
    unsigned offset;
    unsigned width;
};

#define U(name, off, w)                  \
    {                                    \
        name, NULL, VUF_CFG_UINT, off, w \
    }
#define G(group, name, off, w)            \
    {                                     \
        name, group, VUF_CFG_UINT, off, w \
    }

/* virtio_blk_config. The 60-byte prefix is what qemu-storage-daemon 7.2
 * serves; the secure-erase and zoned fields follow in newer layouts. */
static const struct layout_field blk_layout[] = {
    U("capacity", 0, 8),
    U("size_max", 8, 4),
    U("seg_max", 12, 4),
    G("geometry", "cylinders", 16, 2),
    G("geometry", "heads", 18, 1),
    G("geometry", "sectors", 19, 1),
    U("blk_size", 20, 4),
    G("topology", "physical_block_exp", 24, 1),
    G("topology", "alignment_offset", 25, 1),
    G("topology", "min_io_size", 26, 2),
    G("topology", "opt_io_size", 28, 4),
    U("writeback", 32, 1),
    U("num_queues", 34, 2),
    U("max_discard_sectors", 36, 4),
    U("max_discard_seg", 40, 4),
    U("discard_sector_alignment", 44, 4),
    U("max_write_zeroes_sectors", 48, 4),
    U("max_write_zeroes_seg", 52, 4),
    U("write_zeroes_may_unmap", 56, 1),
    U("max_secure_erase_sectors", 60, 4),
    U("max_secure_erase_seg", 64, 4),
    U("secure_erase_sector_alignment", 68, 4),
    G("zoned", "zone_sectors", 72, 4),
    G("zoned", "max_open_zones", 76, 4),
    G("zoned", "max_active_zones", 80, 4),
    G("zoned", "max_append_sectors", 84, 4),
    G("zoned", "write_granularity", 88, 4),
    G("zoned", "model", 92, 1),
};

static const struct layout_field net_layout[] = {
    {"mac", NULL, VUF_CFG_MAC, 0, 6},
    U("status", 6, 2),
    U("max_virtqueue_pairs", 8, 2),
    U("mtu", 10, 2),
    U("speed", 12, 4),
    U("duplex", 16, 1),
    U("rss_max_key_size", 17, 1),
    U("rss_max_indirection_table_length", 18, 2),
    U("supported_hash_types", 20, 4),
};

static const struct layout_field fs_layout[] = {
    {"tag", NULL, VUF_CFG_STRING, 0, 36},
    U("num_request_queues", 36, 4),
};

/* events_read/events_clear/num_scanouts are the front-end's to manage
 * (QEMU overwrites what the back-end says); shown as served. */
static const struct layout_field gpu_layout[] = {
    U("events_read", 0, 4),
    U("events_clear", 4, 4),
    U("num_scanouts", 8, 4),
    U("num_capsets", 12, 4),
};

static const struct layout_field console_layout[] = {
    U("cols", 0, 2),
    U("rows", 2, 2),
    U("max_nr_ports", 4, 4),
    U("emerg_wr", 8, 4),
};

static const struct layout_field balloon_layout[] = {
    U("num_pages", 0, 4),
    U("actual", 4, 4),
    U("free_page_hint_cmd_id", 8, 4),
    U("poison_val", 12, 4),
};

static const struct layout_field scsi_layout[] = {
    U("num_queues", 0, 4),   U("seg_max", 4, 4),          U("max_sectors", 8, 4),
    U("cmd_per_lun", 12, 4), U("event_info_size", 16, 4), U("sense_size", 20, 4),
    U("cdb_size", 24, 4),    U("max_channel", 28, 2),     U("max_target", 30, 2),
    U("max_lun", 32, 4),
};

static const struct layout_field vsock_layout[] = {
    U("guest_cid", 0, 8),
};

static const struct layout_field sound_layout[] = {
    U("jacks", 0, 4),
    U("streams", 4, 4),
    U("chmaps", 8, 4),
    U("controls", 12, 4),
};

static const struct layout_field pmem_layout[] = {
    U("start", 0, 8),
    U("size", 8, 8),
};

static const struct layout_field gpio_layout[] = {
    U("ngpio", 0, 2),
    U("gpio_names_size", 4, 4),
};

#undef U
#undef G

#define LAYOUT(type, arr)                       \
    {                                           \
        type, arr, sizeof(arr) / sizeof(arr[0]) \
    }

static const struct {
    uint32_t type;
    const struct layout_field *fields;
    size_t n;
} layouts[] = {
    LAYOUT(VUF_DEV_BLK, blk_layout),         LAYOUT(VUF_DEV_NET, net_layout),
    LAYOUT(VUF_DEV_FS, fs_layout),           LAYOUT(VUF_DEV_GPU, gpu_layout),
    LAYOUT(VUF_DEV_CONSOLE, console_layout), LAYOUT(VUF_DEV_BALLOON, balloon_layout),
    LAYOUT(VUF_DEV_SCSI, scsi_layout),       LAYOUT(VUF_DEV_VSOCK, vsock_layout),
    LAYOUT(VUF_DEV_SOUND, sound_layout),     LAYOUT(VUF_DEV_PMEM, pmem_layout),
    LAYOUT(VUF_DEV_GPIO, gpio_layout),
};

static uint64_t get_le(const uint8_t *p, unsigned width)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < width; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A NUL-padded byte string, cut at the first NUL, with anything outside
 * printable ASCII (and the backslash) escaped as \xNN. */
static void escape_string(const uint8_t *p, unsigned width, char *out, size_t cap)
{
    size_t o = 0;

    for (unsigned i = 0; i < width && p[i] != 0; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
            if (o + 1 >= cap)
                break;
            out[o++] = (char)p[i];
        } else {
            if (o + 4 >= cap)
                break;
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", p[i]);
        }
    }
    out[o] = '\0';
}

size_t config_decode(uint32_t device_type, const uint8_t *buf, size_t len,
                         struct cfg_field *out, size_t max)
{
    size_t n = 0;

    for (size_t l = 0; l < sizeof(layouts) / sizeof(layouts[0]); l++) {
        if (layouts[l].type != device_type)
            continue;
        for (size_t i = 0; i < layouts[l].n && n < max; i++) {
            const struct layout_field *f = &layouts[l].fields[i];
            struct cfg_field *d = &out[n];

            if ((size_t)f->offset + f->width > len)
                break; /* fields are in offset order: the rest is absent */
            memset(d, 0, sizeof(*d));
            d->name = f->name;
            d->group = f->group;
            d->kind = f->kind;
            d->offset = f->offset;
            d->width = f->width;
            switch (f->kind) {
            case VUF_CFG_UINT:
                d->value = get_le(buf + f->offset, f->width);
                break;
            case VUF_CFG_STRING:
                escape_string(buf + f->offset, f->width, d->text, sizeof(d->text));
                break;
            case VUF_CFG_MAC: {
                const uint8_t *m = buf + f->offset;
                snprintf(d->text, sizeof(d->text), "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1],
                         m[2], m[3], m[4], m[5]);
                break;
            }
            }
            n++;
        }
        break;
    }
    return n;
}
