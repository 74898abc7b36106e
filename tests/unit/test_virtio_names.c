/* SPDX-License-Identifier: MIT */
/* The virtio device table and feature-bit names (include/vuf/virtio.h). */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "vuf/virtio.h"
#include "vuf/wire.h"

/* Every device type the header enumerates. */
static const uint32_t all_types[] = {
    VUF_DEV_NET,
    VUF_DEV_BLK,
    VUF_DEV_CONSOLE,
    VUF_DEV_RNG,
    VUF_DEV_BALLOON,
    VUF_DEV_SCSI,
    VUF_DEV_9P,
    VUF_DEV_GPU,
    VUF_DEV_INPUT,
    VUF_DEV_VSOCK,
    VUF_DEV_CRYPTO,
    VUF_DEV_IOMMU,
    VUF_DEV_MEM,
    VUF_DEV_SOUND,
    VUF_DEV_FS,
    VUF_DEV_PMEM,
    VUF_DEV_MAC80211_HWSIM,
    VUF_DEV_VIDEO_ENC,
    VUF_DEV_VIDEO_DEC,
    VUF_DEV_SCMI,
    VUF_DEV_I2C,
    VUF_DEV_CAN,
    VUF_DEV_GPIO,
};
#define NTYPES (sizeof(all_types) / sizeof(all_types[0]))

static void test_every_type_has_a_row(void **state)
{
    (void)state;
    for (size_t i = 0; i < NTYPES; i++) {
        const struct vuf_device_info *d = vuf_device_info(all_types[i]);
        char label[64];

        assert_non_null(d);
        assert_int_equal(d->type, all_types[i]);
        assert_non_null(d->name);
        assert_non_null(d->label);
        /* the label is "vu-" + the CLI name */
        snprintf(label, sizeof(label), "vu-%s", d->name);
        assert_string_equal(d->label, label);
        assert_true(d->min_queues >= 1);
        assert_true(d->config_size <= VUF_CONFIG_MAX);
        /* the name leads back to the same row */
        assert_ptr_equal(vuf_device_by_name(d->name), d);
        /* names are unique */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(vuf_device_info(all_types[j])->name, d->name);
    }
}

static void test_unknown_types(void **state)
{
    (void)state;
    assert_null(vuf_device_info(0));
    assert_null(vuf_device_info(6)); /* ioMemory: not a vhost-user device here */
    assert_null(vuf_device_info(1000));
    assert_null(vuf_device_info(UINT32_MAX));
    assert_null(vuf_device_by_name(NULL));
    assert_null(vuf_device_by_name(""));
    assert_null(vuf_device_by_name("BLK"));
    assert_null(vuf_device_by_name("blk "));
    assert_null(vuf_device_by_name("nosuch"));
}

struct expect_row {
    uint32_t type;
    const char *name;
    unsigned min_queues;
    uint32_t config_size;
};

/* min_queues as crosvm's DeviceType::min_queues (crosvm-frontend.md §11.2);
 * the rest from the virtio spec. config sizes as documented in virtio.c. */
static const struct expect_row expected[] = {
    {VUF_DEV_NET, "net", 3, 12},
    {VUF_DEV_BLK, "blk", 1, 60}, /* qemu-storage-daemon 7.2's layout */
    {VUF_DEV_CONSOLE, "console", 2, 12},
    {VUF_DEV_RNG, "rng", 1, 0},
    {VUF_DEV_BALLOON, "balloon", 2, 16},
    {VUF_DEV_SCSI, "scsi", 3, 36},
    {VUF_DEV_9P, "9p", 1, 0},
    {VUF_DEV_GPU, "gpu", 2, 16},
    {VUF_DEV_INPUT, "input", 2, 136},
    {VUF_DEV_VSOCK, "vsock", 3, 8},
    {VUF_DEV_CRYPTO, "crypto", 2, 56},
    {VUF_DEV_IOMMU, "iommu", 2, 40},
    {VUF_DEV_MEM, "mem", 1, 56},
    {VUF_DEV_SOUND, "sound", 4, 12},
    {VUF_DEV_FS, "fs", 2, 40},
    {VUF_DEV_PMEM, "pmem", 1, 16},
    {VUF_DEV_MAC80211_HWSIM, "mac80211-hwsim", 2, 0},
    {VUF_DEV_VIDEO_ENC, "video-enc", 2, 0},
    {VUF_DEV_VIDEO_DEC, "video-dec", 2, 0},
    {VUF_DEV_SCMI, "scmi", 2, 0},
    {VUF_DEV_I2C, "i2c", 1, 0},
    {VUF_DEV_CAN, "can", 3, 0},
    {VUF_DEV_GPIO, "gpio", 2, 8},
};

static void test_table_facts(void **state)
{
    (void)state;
    assert_int_equal(sizeof(expected) / sizeof(expected[0]), NTYPES);
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        const struct vuf_device_info *d = vuf_device_info(expected[i].type);

        assert_non_null(d);
        assert_string_equal(d->name, expected[i].name);
        assert_int_equal(d->min_queues, expected[i].min_queues);
        assert_int_equal(d->config_size, expected[i].config_size);
    }
    /* the virtio ids themselves */
    assert_int_equal(VUF_DEV_BLK, 2);
    assert_int_equal(VUF_DEV_GPU, 16);
    assert_int_equal(VUF_DEV_FS, 26);
    assert_string_equal(vuf_device_info(2)->label, "vu-blk");
    assert_string_equal(vuf_device_info(26)->label, "vu-fs");
}

static void test_aliases(void **state)
{
    (void)state;
    assert_ptr_equal(vuf_device_by_name("block"), vuf_device_info(VUF_DEV_BLK));
    assert_ptr_equal(vuf_device_by_name("video-encoder"), vuf_device_info(VUF_DEV_VIDEO_ENC));
    assert_ptr_equal(vuf_device_by_name("video-decoder"), vuf_device_info(VUF_DEV_VIDEO_DEC));
    assert_ptr_equal(vuf_device_by_name("snd"), vuf_device_info(VUF_DEV_SOUND));
}

static void test_generic_names(void **state)
{
    static const struct {
        unsigned bit;
        const char *name;
    } g[] = {
        {24, "NOTIFY_ON_EMPTY"},   {26, "LOG_ALL"},           {27, "ANY_LAYOUT"},
        {28, "INDIRECT_DESC"},     {29, "EVENT_IDX"},         {30, "PROTOCOL_FEATURES"},
        {32, "VERSION_1"},         {33, "ACCESS_PLATFORM"},   {34, "RING_PACKED"},
        {35, "IN_ORDER"},          {36, "ORDER_PLATFORM"},    {37, "SR_IOV"},
        {38, "NOTIFICATION_DATA"}, {39, "NOTIF_CONFIG_DATA"}, {40, "RING_RESET"},
        {41, "ADMIN_VQ"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        /* the same for every device type, and without one */
        assert_string_equal(vuf_virtio_feature_name(0, g[i].bit), g[i].name);
        for (size_t t = 0; t < NTYPES; t++)
            assert_string_equal(vuf_virtio_feature_name(all_types[t], g[i].bit), g[i].name);
    }
    /* the header's bit numbers agree with the names */
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BLK, VUF_VHOST_F_LOG_ALL), "LOG_ALL");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BLK, VUF_VHOST_F_PROTOCOL_FEATURES),
                        "PROTOCOL_FEATURES");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BLK, VUF_VIRTIO_F_RING_PACKED), "RING_PACKED");
    /* unassigned transport bits and out-of-range bits have no name */
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 25));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 31));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 49));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 64));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 1000));
}

static void test_mask_splits_generic_and_device(void **state)
{
    (void)state;
    /* bits 0-23 and 50-63 are device-specific; 24-49 are not */
    for (unsigned b = 0; b < 64; b++) {
        bool dev = (VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK >> b) & 1;
        assert_int_equal(dev, b < 24 || b >= 50);
        /* without a device type, a device-specific bit has no name */
        if (dev)
            assert_null(vuf_virtio_feature_name(0, b));
    }
}

static void test_blk_names(void **state)
{
    static const struct {
        unsigned bit;
        const char *name;
    } b[] = {
        {1, "SIZE_MAX"},      {2, "SEG_MAX"},  {4, "GEOMETRY"},      {5, "RO"},
        {6, "BLK_SIZE"},      {9, "FLUSH"},    {10, "TOPOLOGY"},     {11, "CONFIG_WCE"},
        {12, "MQ"},           {13, "DISCARD"}, {14, "WRITE_ZEROES"}, {15, "LIFETIME"},
        {16, "SECURE_ERASE"}, {17, "ZONED"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
        assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BLK, b[i].bit), b[i].name);
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 3));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 8));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 18));
    assert_null(vuf_virtio_feature_name(VUF_DEV_BLK, 50));
}

/* Every bit qemu-storage-daemon 7.2 offers (0x175007e46) has a name. */
static void test_qsd_offer_fully_named(void **state)
{
    const uint64_t qsd = 0x175007e46ull;
    (void)state;
    for (unsigned b = 0; b < 64; b++)
        if (qsd & (1ull << b))
            assert_non_null(vuf_virtio_feature_name(VUF_DEV_BLK, b));
}

static void test_net_names(void **state)
{
    (void)state;
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 0), "CSUM");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 3), "MTU");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 5), "MAC");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 15), "MRG_RXBUF");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 16), "STATUS");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 17), "CTRL_VQ");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 22), "MQ");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 23), "CTRL_MAC_ADDR");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 60), "RSS");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 63), "SPEED_DUPLEX");
    assert_null(vuf_virtio_feature_name(VUF_DEV_NET, 4));
    /* the same bit means different things per device */
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BLK, 12), "MQ");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_NET, 12), "HOST_TSO6");
}

static void test_other_device_names(void **state)
{
    (void)state;
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_FS, 0), "NOTIFICATION");
    assert_null(vuf_virtio_feature_name(VUF_DEV_FS, 1));
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPU, 0), "VIRGL");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPU, 1), "EDID");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPU, 2), "RESOURCE_UUID");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPU, 3), "RESOURCE_BLOB");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPU, 4), "CONTEXT_INIT");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_CONSOLE, 0), "SIZE");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_CONSOLE, 1), "MULTIPORT");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_CONSOLE, 2), "EMERG_WRITE");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_SCSI, 0), "INOUT");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_SCSI, 1), "HOTPLUG");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_SCSI, 2), "CHANGE");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_SCSI, 3), "T10_PI");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_VSOCK, 0), "STREAM");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_VSOCK, 1), "SEQPACKET");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_BALLOON, 2), "DEFLATE_ON_OOM");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_9P, 0), "MOUNT_TAG");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_IOMMU, 2), "MAP_UNMAP");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_PMEM, 0), "SHMEM_REGION");
    assert_string_equal(vuf_virtio_feature_name(VUF_DEV_GPIO, 0), "IRQ");
    /* devices with no feature bits of their own */
    for (unsigned b = 0; b < 24; b++) {
        assert_null(vuf_virtio_feature_name(VUF_DEV_RNG, b));
        assert_null(vuf_virtio_feature_name(VUF_DEV_INPUT, b));
    }
    /* an unknown device type still names the generic bits */
    assert_string_equal(vuf_virtio_feature_name(12345, 32), "VERSION_1");
    assert_null(vuf_virtio_feature_name(12345, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type_has_a_row),
        cmocka_unit_test(test_unknown_types),
        cmocka_unit_test(test_table_facts),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_generic_names),
        cmocka_unit_test(test_mask_splits_generic_and_device),
        cmocka_unit_test(test_blk_names),
        cmocka_unit_test(test_qsd_offer_fully_named),
        cmocka_unit_test(test_net_names),
        cmocka_unit_test(test_other_device_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
