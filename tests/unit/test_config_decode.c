/* SPDX-License-Identifier: MIT */
/*
 * The probe's config-space decoders (tools/config_decode.c) fed what a
 * hostile back-end may answer to GET_CONFIG: nothing, every length up to
 * the largest config a message carries, all-zero, all-ones, backslashes
 * and random bytes, for every device type (known or not). Every decoded
 * field must lie inside the bytes given, come in offset order, carry the
 * bytes' value, and print as plain ASCII; nothing is written past `max`.
 * Each buffer is allocated at its exact length, so the sanitizer build
 * catches any read past it.
 */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"
#include "vuf_tool.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint8_t next_byte(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint8_t)rng;
}

enum fill { FILL_ZERO, FILL_ONES, FILL_BACKSLASH, FILL_RANDOM, FILL_COUNT };

static void fill(uint8_t *b, size_t len, enum fill how)
{
    for (size_t i = 0; i < len; i++)
        b[i] = how == FILL_ZERO        ? 0
               : how == FILL_ONES      ? 0xff
               : how == FILL_BACKSLASH ? '\\'
                                       : next_byte();
}

static uint64_t le(const uint8_t *p, unsigned w)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < w; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The fields of one decode, checked against the bytes; returns n. */
static size_t decode_checked(uint32_t type, const uint8_t *buf, size_t len, size_t max)
{
    struct cfg_field out[VUF_CFG_MAX_FIELDS + 1];
    size_t n;

    memset(out, 0xa5, sizeof(out));
    n = config_decode(type, buf, len, out, max);
    assert_true(n <= max);
    /* The element past max is untouched. */
    for (size_t i = 0; i < sizeof(out[max]); i++)
        assert_int_equal(((const uint8_t *)&out[max])[i], 0xa5);
    for (size_t i = 0; i < n; i++) {
        const struct cfg_field *f = &out[i];
        size_t tl;

        assert_non_null(f->name);
        assert_true(f->width > 0);
        assert_true((size_t)f->offset + f->width <= len);
        if (i)
            assert_true(f->offset >= out[i - 1].offset + out[i - 1].width);
        switch (f->kind) {
        case VUF_CFG_UINT:
            assert_true(f->width <= 8);
            assert_int_equal(f->value, le(buf + f->offset, f->width));
            break;
        case VUF_CFG_MAC:
            assert_int_equal(f->width, 6);
            assert_int_equal(strnlen(f->text, sizeof(f->text)), 17);
            break;
        case VUF_CFG_STRING:
            tl = strnlen(f->text, sizeof(f->text));
            assert_true(tl < sizeof(f->text));
            for (size_t k = 0; k < tl; k++)
                assert_true(f->text[k] >= 0x20 && f->text[k] < 0x7f);
            break;
        default:
            fail_msg("field %s: kind %d", f->name, (int)f->kind);
        }
    }
    return n;
}

static void test_every_type_every_length(void **state)
{
    (void)state;
    for (uint32_t type = 0; type < 64; type++) {
        for (int how = 0; how < FILL_COUNT; how++) {
            size_t prev = 0;

            for (size_t len = 0; len <= VUF_CONFIG_MAX; len++) {
                uint8_t *buf = malloc(len ? len : 1);
                size_t n;

                assert_non_null(buf);
                fill(buf, len, (enum fill)how);
                n = decode_checked(type, buf, len, VUF_CFG_MAX_FIELDS);
                /* More bytes never decode fewer fields. */
                assert_true(n >= prev);
                if (len == 0 || !vuf_device_info(type))
                    assert_int_equal(n, 0);
                prev = n;
                free(buf);
            }
        }
    }
}

/* A caller with room for fewer fields than the layout has. */
static void test_small_out(void **state)
{
    uint8_t buf[VUF_CONFIG_MAX];

    (void)state;
    fill(buf, sizeof(buf), FILL_RANDOM);
    for (uint32_t type = 0; type < 64; type++)
        for (size_t max = 0; max <= 4; max++)
            assert_true(decode_checked(type, buf, sizeof(buf), max) <= max);
}

/* The fs tag: 36 bytes, not NUL-terminated when full; every byte that is
 * not printable comes out escaped, never raw. */
static void test_fs_tag_full_and_escaped(void **state)
{
    uint8_t buf[40];
    struct cfg_field out[VUF_CFG_MAX_FIELDS];
    size_t n;

    (void)state;
    memset(buf, 0, sizeof(buf));
    for (int i = 0; i < 36; i++)
        buf[i] = (uint8_t)(i % 2 ? 0x80 + i : 'a' + i % 26);
    n = config_decode(VUF_DEV_FS, buf, sizeof(buf), out, VUF_CFG_MAX_FIELDS);
    assert_true(n >= 1);
    assert_string_equal(out[0].name, "tag");
    assert_int_equal(out[0].kind, VUF_CFG_STRING);
    assert_non_null(strstr(out[0].text, "\\x81"));
    assert_int_equal(strncmp(out[0].text, "a\\x81c", 6), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type_every_length),
        cmocka_unit_test(test_small_out),
        cmocka_unit_test(test_fs_tag_full_and_escaped),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
