/* SPDX-License-Identifier: MIT */
/*
 * Command-line pieces the `vuf` subcommands share (cli_util.h).
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_util.h"
#include "vuf_tool.h"

int cli_usage_error(const struct cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    cmd->usage(stderr);
    return VUF_EXIT_USAGE;
}

int cli_option_error(const struct cli_cmd *cmd, int c, char **argv)
{
    if (c == ':')
        return cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
    if (optopt)
        return cli_usage_error(cmd, "unknown option '-%c'", optopt);
    return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
}

void cli_print_json(json_object *root)
{
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

bool cli_stdout_ok(const struct cli_cmd *cmd)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "%s: writing the output failed: %s\n", cmd->name, strerror(errno));
        return false;
    }
    return true;
}

bool cli_parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    uint64_t mul = 1;

    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s)
        return false;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mul = 1ull << 10;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1ull << 20;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1ull << 30;
        end++;
        break;
    default:
        return false;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end || (v && mul > UINT64_MAX / v))
        return false;
    *out = v * mul;
    return true;
}

bool cli_parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    unsigned long long v;

    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || *end || v < min || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

int cli_socket_and_op(const struct cli_cmd *cmd, int argc, char **argv, const char *const *ops,
                      unsigned nops, const char *ops_text, const char **socket, unsigned *op)
{
    const char *pos[2] = {NULL, NULL};
    unsigned npos = 0;

    while (optind < argc) {
        if (npos == 2)
            return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
        pos[npos++] = argv[optind++];
    }
    if (npos < 1)
        return cli_usage_error(cmd, "missing SOCKET");
    if (npos < 2)
        return cli_usage_error(cmd, "missing the operation (%s)", ops_text);
    *socket = pos[0];
    for (unsigned i = 0; i < nops; i++) {
        if (strcmp(pos[1], ops[i]) == 0) {
            *op = i;
            return 0;
        }
    }
    return cli_usage_error(cmd, "unknown operation '%s' (%s)", pos[1], ops_text);
}

int64_t cli_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
