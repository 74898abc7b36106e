/* SPDX-License-Identifier: MIT */
/*
 * `vuf`: command-line front end to libvuf. One table of subcommands; each
 * subcommand parses its own options and returns the process exit code
 * (0 ok, 1 failure, 2 usage).
 */
#include <stdio.h>
#include <string.h>

#include "vuf_tool.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    void (*usage)(FILE *f);
    const char *summary;
} commands[] = {
    {"probe", cmd_probe, cmd_probe_usage,
     "connect to a vhost-user back-end and report what it offers (read-only)"},
    {"blk", cmd_blk, cmd_blk_usage,
     "be the VMM of a vhost-user-blk back-end: read, write, verify, bench"},
    {"net", cmd_net, cmd_net_usage,
     "be the VMM of a vhost-user-net back-end: ping (bytes checked), bench"},
    {"check", cmd_check, cmd_check_usage,
     "check a vhost-user back-end's conformance to the protocol (a test suite)"},
    {"demo", cmd_demo, cmd_demo_usage,
     "walk the whole device life cycle against the reference back-end"},
    {"relay", cmd_relay, cmd_relay_usage,
     "sit between a VMM and a back-end as libvuf, tracing every message"},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: vuf [--help] COMMAND [ARGS...]\n"
               "\n"
               "vhost-user front-end tool (libvuf).\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n"
               "Run 'vuf COMMAND --help' for a command's options.\n"
               "Environment: VUF_LOG=error|warn|info|debug sets libvuf's log level\n"
               "(debug traces every message by name).\n"
               "Exit status: 0 success, 1 failure, 2 usage error.\n");
}

int main(int argc, char **argv)
{
    const char *cmd;

    if (argc < 2) {
        usage(stderr);
        return VUF_EXIT_USAGE;
    }
    cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        /* `vuf help COMMAND` is `vuf COMMAND --help` */
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            for (size_t i = 0; i < NCOMMANDS; i++)
                if (strcmp(commands[i].name, argv[2]) == 0) {
                    commands[i].usage(stdout);
                    return VUF_EXIT_OK;
                }
            fprintf(stderr, "vuf: unknown command '%s'\n\n", argv[2]);
            usage(stderr);
            return VUF_EXIT_USAGE;
        }
        usage(stdout);
        return VUF_EXIT_OK;
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, cmd) == 0)
            return commands[i].run(argc - 1, argv + 1);
    if (cmd[0] == '-')
        fprintf(stderr, "vuf: unknown option '%s'\n\n", cmd);
    else
        fprintf(stderr, "vuf: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return VUF_EXIT_USAGE;
}
