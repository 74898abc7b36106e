/* SPDX-License-Identifier: MIT */
/*
 * Private header of the `vuf` command-line tool: the subcommands and the
 * device-config decoder they share. Not installed; not part of libvuf.
 */
#ifndef VUF_TOOL_H
#define VUF_TOOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes of every subcommand. */
#define VUF_EXIT_OK 0
#define VUF_EXIT_FAIL 1  /* the operation failed (message on stderr) */
#define VUF_EXIT_USAGE 2 /* bad command line (usage on stderr) */

/* `vuf probe ...`; argv[0] is "probe". Returns the exit code. */
int cmd_probe(int argc, char **argv);
void cmd_probe_usage(FILE *f);

/* `vuf blk SOCKET read|write|verify|bench ...` (blk.c). */
int cmd_blk(int argc, char **argv);
void cmd_blk_usage(FILE *f);

/* `vuf net SOCKET ping|bench ...` (cmd_net.c). */
int cmd_net(int argc, char **argv);
void cmd_net_usage(FILE *f);
/* `vuf check SOCKET ...` (cmd_check.c; the engine is check.h). */
int cmd_check(int argc, char **argv);
void cmd_check_usage(FILE *f);

/* `vuf demo` (cmd_demo.c). */
int cmd_demo(int argc, char **argv);
void cmd_demo_usage(FILE *f);

/* `vuf relay` (cmd_relay.c). */
int cmd_relay(int argc, char **argv);
void cmd_relay_usage(FILE *f);

/* ---- device config decoding (config_decode.c) ------------------------ */

enum cfg_kind {
    VUF_CFG_UINT,   /* little-endian unsigned integer of `width` bytes */
    VUF_CFG_STRING, /* NUL-padded byte string (fs tag), escaped into text */
    VUF_CFG_MAC,    /* 6-byte MAC address, "xx:xx:xx:xx:xx:xx" in text */
};

/* One decoded field of a device's config space. */
struct cfg_field {
    const char *name;  /* the virtio spec's field name; unique per device */
    const char *group; /* the spec's enclosing struct ("geometry"), or NULL */
    enum cfg_kind kind;
    unsigned offset; /* byte offset in the config space */
    unsigned width;  /* bytes */
    uint64_t value;  /* VUF_CFG_UINT */
    char text[160];  /* VUF_CFG_STRING / VUF_CFG_MAC; printable ASCII */
};

#define VUF_CFG_MAX_FIELDS 48

/*
 * Decode the first `len` bytes of a `device_type` config space (read from
 * offset 0). Only fields that lie wholly inside `len` are decoded, so a
 * shorter config (an older layout) yields a prefix of the field list.
 * Returns the number of fields written to out[0..max), 0 when the device
 * type has no known layout. Pure; thread-safe.
 */
size_t config_decode(uint32_t device_type, const uint8_t *buf, size_t len, struct cfg_field *out,
                     size_t max);

#endif
