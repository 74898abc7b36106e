/* SPDX-License-Identifier: MIT */
/*
 * `vuf check`: the conformance suite (check.h) from the command line.
 * Exit 0 when no check failed or errored, 1 otherwise, 2 on usage errors.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cli_util.h"
#include "vuf/conn.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf_tool.h"

void cmd_check_usage(FILE *f)
{
    fprintf(f,
            "usage: vuf check SOCKET [--device-type T] [--only ID,...] [--json | --junit FILE]\n"
            "                 [--timeout-ms N] [--hostile] [--verbose]\n"
            "\n"
            "Connect to a vhost-user back-end as a front-end and check that it follows the\n"
            "protocol: handshake, REPLY_ACK, counts, config, ring life cycle, device I/O,\n"
            "state, and with --hostile its robustness. Each check reports PASS, FAIL, SKIP\n"
            "(not offered) or ERROR (hang-up or timeout) with its evidence.\n"
            "\n"
            "  --device-type T  blk, net, fs, gpu, ... (device checks SKIP without it)\n"
            "  --only IDS       comma-separated check ids or prefixes ending in '.'\n"
            "  --json           one JSON object on stdout\n"
            "  --junit FILE     JUnit XML to FILE (one testcase per check)\n"
            "  --timeout-ms N   connect wait and reply timeout (default %d)\n"
            "  --hostile        also send malformed messages (the back-end may exit)\n"
            "  --verbose        print the evidence of passing checks too\n"
            "\n"
            "The blk I/O checks write to the last 8 sectors and restore them.\n"
            "Exit status: 0 nothing failed, 1 a check failed or errored, 2 usage.\n",
            VUF_DEFAULT_TIMEOUT_MS);
}

static const struct cli_cmd me = {"vuf check", cmd_check_usage};

int cmd_check(int argc, char **argv)
{
    static const struct option lo[] = {
        {"device-type", required_argument, NULL, 't'},
        {"only", required_argument, NULL, 'o'},
        {"json", no_argument, NULL, 'j'},
        {"junit", required_argument, NULL, 'J'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"hostile", no_argument, NULL, 'H'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct chk_opts o = {.timeout_ms = VUF_DEFAULT_TIMEOUT_MS};
    struct chk_report rep;
    const char *junit = NULL;
    bool json = false, verbose = false;
    int c, r;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        switch (c) {
        case 't': {
            const struct vuf_device_info *d = vuf_device_by_name(optarg);

            if (!d)
                return cli_usage_error(&me, "unknown device type '%s'", optarg);
            o.device_type = d->type;
            break;
        }
        case 'o': {
            const char *bad;
            size_t n;

            if (!chk_only_valid(optarg, &bad, &n))
                return cli_usage_error(&me, "--only: no check '%.*s'", (int)n, bad);
            o.only = optarg;
            break;
        }
        case 'j':
            json = true;
            break;
        case 'J':
            junit = optarg;
            break;
        case 'T': {
            char *end;
            long v = strtol(optarg, &end, 10);

            if (*optarg == '\0' || *end || v <= 0 || v > INT_MAX)
                return cli_usage_error(&me, "--timeout-ms wants a positive number, not '%s'",
                                       optarg);
            o.timeout_ms = (int)v;
            break;
        }
        case 'H':
            o.hostile = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            cmd_check_usage(stdout);
            return VUF_EXIT_OK;
        default:
            return cli_option_error(&me, c, argv);
        }
    }
    if (json && junit)
        return cli_usage_error(&me, "--json and --junit exclude each other");
    if (optind != argc - 1)
        return cli_usage_error(&me, optind >= argc ? "SOCKET missing" : "one SOCKET only");
    o.socket = argv[optind];

    r = chk_run(&o, &rep);
    if (r < 0) {
        fprintf(stderr, "vuf check: %s: %s\n", o.socket, vuf_strerror(r));
        return VUF_EXIT_FAIL;
    }
    if (json) {
        r = chk_print_json(stdout, &rep, o.socket);
    } else {
        r = chk_print_human(stdout, &rep, o.socket, verbose);
        if (r == 0 && junit) {
            FILE *f = fopen(junit, "w");

            if (!f) {
                fprintf(stderr, "vuf check: %s: %s\n", junit, strerror(errno));
                r = -errno;
            } else {
                r = chk_print_junit(f, &rep, o.socket);
                if (fclose(f) != 0)
                    r = -EIO;
            }
        }
    }
    c = (r == 0 && rep.failed == 0 && rep.errors == 0) ? VUF_EXIT_OK : VUF_EXIT_FAIL;
    chk_report_free(&rep);
    return c;
}
