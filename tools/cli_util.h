/* SPDX-License-Identifier: MIT */
/*
 * Command-line pieces the `vuf` subcommands share: usage errors, getopt's
 * option errors, JSON and stdout output. Not installed; not part of libvuf.
 */
#ifndef VUF_CLI_UTIL_H
#define VUF_CLI_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>

/* A subcommand as its messages name it ("vuf blk") and its usage text. */
struct cli_cmd {
    const char *name;
    void (*usage)(FILE *f);
};

/* "NAME: message", a blank line and the usage on stderr. Returns
 * VUF_EXIT_USAGE. */
int cli_usage_error(const struct cli_cmd *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The usage error for what getopt_long returned as c when it is neither a
 * known option nor 'h': ':' (a value is missing) or an unknown option.
 * For an optstring starting with ':' and opterr = 0. */
int cli_option_error(const struct cli_cmd *cmd, int c, char **argv);

/* Print root as one plain JSON line on stdout, then release it. */
void cli_print_json(json_object *root);

/* Flush stdout; false (reported on stderr) if the output was not written. */
bool cli_stdout_ok(const struct cli_cmd *cmd);

/* A byte count: decimal digits with an optional K, M or G suffix (powers
 * of 1024, optionally followed by "i" and/or "B"). False on anything else,
 * including overflow. */
bool cli_parse_bytes(const char *s, uint64_t *out);

/* A decimal (or 0x hex) number in [min, max]. False on anything else. */
bool cli_parse_uint(const char *s, unsigned min, unsigned max, unsigned *out);

/*
 * The "SOCKET OPERATION" positionals left after getopt: *socket and the
 * index of the operation in ops[0..nops) ("read", "write", ...). Usage
 * errors name the operations as `ops_text` ("ping or bench"). Returns 0
 * or VUF_EXIT_USAGE (reported).
 */
int cli_socket_and_op(const struct cli_cmd *cmd, int argc, char **argv, const char *const *ops,
                      unsigned nops, const char *ops_text, const char **socket, unsigned *op);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t cli_now_ns(void);

#endif
