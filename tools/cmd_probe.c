/* SPDX-License-Identifier: MIT */
/*
 * `vuf probe`: connect to a vhost-user back-end, negotiate the way crosvm's
 * front-end does at construction (crosvm-frontend.md §2), read what the
 * back-end offers, print it, and disconnect.
 *
 * The probe is read-only: it sends SET_OWNER and SET_PROTOCOL_FEATURES (the
 * handshake needs them) but never SET_FEATURES, SET_BACKEND_REQ_FD, memory
 * or ring messages, so the back-end's device is never started.
 *
 * The connection is always closed before exiting: qemu-storage-daemon
 * serves one client at a time and virtiofsd / vhost-user-gpu serve exactly
 * one connection, so a probe must not linger.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "cli_util.h"
#include "vuf/client.h"
#include "vuf/conn.h"
#include "vuf/frontend.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"
#include "vuf_tool.h"

/*
 * Protocol features the probe acknowledges when offered: exactly those a
 * device made by vuf_frontend_new() with a default config of the same
 * device type acknowledges (vuf_frontend_protocol_mask()), so that the
 * probe shows what the device will negotiate, plus one the device asks for
 * only on request and that changes nothing until used: CONFIGURE_MEM_SLOTS
 * (cfg.mem_slots), so GET_MAX_MEM_SLOTS may be asked. The output marks that
 * one, and says which config flag would make the device take the offered
 * bits neither acknowledges.
 */
#define PROBE_PF_EXTRA VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS)

/* The vuf_frontend_config flag that makes a device ask for `bit`, or NULL. */
static const char *pf_opt_in(unsigned bit)
{
    switch (bit) {
    case VUF_PROTO_F_CONFIGURE_MEM_SLOTS:
        return "cfg.mem_slots";
    case VUF_PROTO_F_LOG_SHMFD:
        return "cfg.dirty_log";
    case VUF_PROTO_F_INFLIGHT_SHMFD:
        return "cfg.inflight";
    default:
        return NULL;
    }
}

#define PROBE_DEFAULT_TIMEOUT_MS VUF_DEFAULT_TIMEOUT_MS

struct probe_opts {
    const char *socket;
    bool json;
    const struct vuf_device_info *dev; /* NULL: not given */
    int timeout_ms;
    long config_size; /* -1: the device type's default */
};

struct probe_result {
    uint64_t features;
    bool has_pf; /* back-end offered PROTOCOL_FEATURES (bit 30) */
    uint64_t offered_pf;
    uint64_t acked_pf;
    uint64_t device_pf; /* what a default device acknowledges of offered_pf */
    bool has_queues;
    uint64_t queues;
    bool has_slots;
    uint64_t slots;
    bool has_config;
    uint32_t config_len;
    uint8_t config[VUF_CONFIG_MAX];
};

/* What a default device of the probed type acknowledges. */
static uint64_t device_pf_mask(const struct probe_opts *o)
{
    struct vuf_frontend_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = o->dev ? (uint32_t)o->dev->type : 0;
    return vuf_frontend_protocol_mask(&cfg);
}

void cmd_probe_usage(FILE *f)
{
    fprintf(f,
            "usage: vuf probe SOCKET [--json] [--device-type TYPE] [--config-size N]\n"
            "                 [--timeout-ms N]\n"
            "\n"
            "Connect to the vhost-user back-end listening on the unix socket SOCKET,\n"
            "negotiate as crosvm's front-end does (SET_OWNER, GET_FEATURES,\n"
            "GET/SET_PROTOCOL_FEATURES), ask GET_QUEUE_NUM (with MQ),\n"
            "GET_MAX_MEM_SLOTS (with CONFIGURE_MEM_SLOTS) and GET_CONFIG (with CONFIG\n"
            "and a device type), print the answers and disconnect. Read-only: no\n"
            "SET_FEATURES, SET_BACKEND_REQ_FD, memory or ring messages are sent.\n"
            "\n"
            "options:\n"
            "  --json               print one JSON object instead of text\n"
            "  --device-type TYPE   the back-end's device type (blk, net, fs, gpu,\n"
            "                       console, scsi, vsock, ...; or a virtio id). It names\n"
            "                       the device-specific feature bits and sets how many\n"
            "                       config bytes to read. Without it, device bits are\n"
            "                       shown by number and no config is read.\n"
            "  --config-size N      read N (0-%u) config bytes instead of the device\n"
            "                       type's default (blk 60, fs 40, gpu 16, net 12, ...);\n"
            "                       0 skips GET_CONFIG\n"
            "  --timeout-ms N       wait up to N ms for the socket to accept, and for\n"
            "                       each reply (default %d)\n"
            "  -h, --help           this help\n"
            "\n"
            "The protocol features acknowledged are the offered ones a device made by\n"
            "vuf_frontend_new() with a default config of the same device type\n"
            "acknowledges (vuf_frontend_protocol_mask()), plus CONFIGURE_MEM_SLOTS (a\n"
            "device asks for it with cfg.mem_slots), marked in the output.\n"
            "'features' is the back-end's GET_FEATURES answer, unmasked.\n"
            "\n"
            "JSON keys: socket, device_type (name or null), features, feature_names,\n"
            "offered_protocol_features, protocol_features (acknowledged),\n"
            "device_protocol_features (what a default device acknowledges),\n"
            "protocol_feature_names (acknowledged), offered_protocol_feature_names,\n"
            "queues (null without MQ), max_mem_slots (null without\n"
            "CONFIGURE_MEM_SLOTS), config (object of decoded fields, or null),\n"
            "config_size, config_raw (hex).\n"
            "\n"
            "Exit status: 0 success, 1 the back-end could not be probed (reason on\n"
            "stderr), 2 usage error.\n",
            VUF_CONFIG_MAX, PROBE_DEFAULT_TIMEOUT_MS);
}

static const struct cli_cmd probe_cmd = {"vuf probe", cmd_probe_usage};

/* A decimal number in [min, max], the whole string. */
static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (!s || !*s)
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static const struct vuf_device_info *parse_device(const char *s)
{
    const struct vuf_device_info *d = vuf_device_by_name(s);
    long id;

    if (!d && parse_long(s, 1, UINT32_MAX, &id))
        d = vuf_device_info((uint32_t)id);
    return d;
}

static int parse_args(int argc, char **argv, struct probe_opts *o, bool *help)
{
    enum { OPT_JSON = 256, OPT_DEV, OPT_TIMEOUT, OPT_CFGSIZE };
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"device-type", required_argument, NULL, OPT_DEV},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"config-size", required_argument, NULL, OPT_CFGSIZE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    long v;

    *help = false;
    memset(o, 0, sizeof(*o));
    o->timeout_ms = PROBE_DEFAULT_TIMEOUT_MS;
    o->config_size = -1;
    opterr = 0;
    optind = 1;
    /* GNU getopt permutes: options may come before or after SOCKET, and
     * "--" ends options (for a path starting with '-'). */
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_DEV:
            o->dev = parse_device(optarg);
            if (!o->dev)
                return cli_usage_error(&probe_cmd, "unknown device type '%s'", optarg);
            break;
        case OPT_TIMEOUT:
            if (!parse_long(optarg, 1, INT_MAX, &v))
                return cli_usage_error(&probe_cmd,
                                       "--timeout-ms wants a number of ms >= 1, not '%s'", optarg);
            o->timeout_ms = (int)v;
            break;
        case OPT_CFGSIZE:
            if (!parse_long(optarg, 0, VUF_CONFIG_MAX, &v))
                return cli_usage_error(&probe_cmd, "--config-size wants 0-256, not '%s'", optarg);
            o->config_size = v;
            break;
        case 'h':
            *help = true;
            return 0;
        default:
            return cli_option_error(&probe_cmd, c, argv);
        }
    }
    while (optind < argc) {
        if (o->socket)
            return cli_usage_error(&probe_cmd, "unexpected argument '%s'", argv[optind]);
        o->socket = argv[optind++];
    }
    if (!o->socket)
        return cli_usage_error(&probe_cmd, "missing SOCKET");
    return 0;
}

static int fail(const struct probe_opts *o, const char *what, int err)
{
    fprintf(stderr, "vuf probe: %s: %s failed: %s\n", o->socket, what, vuf_strerror(err));
    return VUF_EXIT_FAIL;
}

/* The handshake. Returns an exit code; the client is freed by the caller. */
static int negotiate(struct vuf_client *c, const struct probe_opts *o, struct probe_result *r)
{
    uint32_t cfg_len = 0;
    int ret;

    /* crosvm sends SET_OWNER first and awaits no reply. */
    ret = vuf_client_set_owner(c);
    if (ret)
        return fail(o, "SET_OWNER", ret);
    ret = vuf_client_get_features(c, &r->features);
    if (ret)
        return fail(o, "GET_FEATURES", ret);

    r->has_pf = r->features & (1ull << VUF_VHOST_F_PROTOCOL_FEATURES);
    if (r->has_pf) {
        ret = vuf_client_get_protocol_features(c, &r->offered_pf);
        if (ret)
            return fail(o, "GET_PROTOCOL_FEATURES", ret);
        r->device_pf = r->offered_pf & device_pf_mask(o);
        r->acked_pf = r->device_pf | (r->offered_pf & PROBE_PF_EXTRA);
        /* Sent even when the intersection is empty, as crosvm does. */
        ret = vuf_client_set_protocol_features(c, r->acked_pf);
        if (ret)
            return fail(o, "SET_PROTOCOL_FEATURES", ret);
    }

    if (r->acked_pf & VUF_PROTO_MASK(MQ)) {
        ret = vuf_client_get_queue_num(c, &r->queues);
        if (ret)
            return fail(o, "GET_QUEUE_NUM", ret);
        r->has_queues = true;
    }
    if (r->acked_pf & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS)) {
        ret = vuf_client_get_max_mem_slots(c, &r->slots);
        if (ret)
            return fail(o, "GET_MAX_MEM_SLOTS", ret);
        r->has_slots = true;
    }

    if (o->config_size >= 0)
        cfg_len = (uint32_t)o->config_size;
    else if (o->dev)
        cfg_len = o->dev->config_size;
    if ((r->acked_pf & VUF_PROTO_MASK(CONFIG)) && cfg_len > 0) {
        ret = vuf_client_get_config(c, 0, VUF_CONFIG_FLAG_WRITABLE, r->config, cfg_len);
        if (ret == -EIO) {
            /* libvhost-user answers a length it does not serve with an
             * empty reply (qsd 7.2: 72 bytes for blk). */
            fprintf(stderr,
                    "vuf probe: %s: GET_CONFIG of %u bytes refused by the back-end "
                    "(try a smaller --config-size)\n",
                    o->socket, cfg_len);
            return VUF_EXIT_FAIL;
        }
        if (ret)
            return fail(o, "GET_CONFIG", ret);
        r->has_config = true;
        r->config_len = cfg_len;
    }
    return VUF_EXIT_OK;
}

/* ---- output ------------------------------------------------------------ */

static const char *dev_name(const struct probe_opts *o)
{
    return o->dev ? o->dev->name : NULL;
}

/* Name of a virtio feature bit for the output: known name, or "BIT_<n>". */
static const char *feature_label(const struct probe_opts *o, unsigned bit, char *buf, size_t cap)
{
    const char *n = vuf_virtio_feature_name(o->dev ? (uint32_t)o->dev->type : 0, bit);

    if (n)
        return n;
    snprintf(buf, cap, "BIT_%u", bit);
    return buf;
}

static const char *pf_label(unsigned bit, char *buf, size_t cap)
{
    const char *n = vuf_protocol_feature_name(bit);

    if (n)
        return n;
    snprintf(buf, cap, "BIT_%u", bit);
    return buf;
}

static bool device_bit(unsigned bit)
{
    return (VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK >> bit) & 1;
}

static void print_hex(const uint8_t *p, uint32_t len, const char *indent)
{
    for (uint32_t i = 0; i < len; i += 16) {
        printf("%s%04x:", indent, i);
        for (uint32_t j = i; j < len && j < i + 16; j++)
            printf(" %02x", p[j]);
        printf("\n");
    }
}

static void print_text(const struct probe_opts *o, const struct probe_result *r)
{
    char buf[32];

    printf("socket:            %s\n", o->socket);
    if (o->dev)
        printf("device type:       %s (virtio id %u)\n", o->dev->name, (unsigned)o->dev->type);
    else
        printf("device type:       not given (device-specific bits unnamed, no config read)\n");

    printf("virtio features:   0x%016" PRIx64 "\n", r->features);
    for (unsigned b = 0; b < 64; b++) {
        uint64_t v = 1ull << b;
        if (!(r->features & v))
            continue;
        if (device_bit(b))
            printf("  bit %2u  0x%016" PRIx64 "  %-22s%s\n", b, v,
                   feature_label(o, b, buf, sizeof(buf)),
                   o->dev ? o->dev->name : "device-specific");
        else
            printf("  bit %2u  0x%016" PRIx64 "  %s\n", b, v,
                   feature_label(o, b, buf, sizeof(buf)));
    }

    if (!r->has_pf) {
        printf("protocol features: not offered (no PROTOCOL_FEATURES bit)\n");
    } else {
        printf("protocol features: offered 0x%016" PRIx64 ", acknowledged 0x%016" PRIx64 "\n",
               r->offered_pf, r->acked_pf);
        printf("                   a device (vuf_frontend_new, default config) acknowledges "
               "0x%016" PRIx64 "\n",
               r->device_pf);
        for (unsigned b = 0; b < 64; b++) {
            uint64_t v = 1ull << b;
            if (!(r->offered_pf & v))
                continue;
            const char *opt = (r->device_pf & v) ? NULL : pf_opt_in(b);
            char why[96] = "";

            /* Say why the probe and a default device differ on this bit. */
            if (opt)
                snprintf(why, sizeof(why), "%s (a device asks for it with %s)",
                         (r->acked_pf & v) ? " by the probe only" : "", opt);
            printf("  bit %2u  0x%016" PRIx64 "  %-22s%s%s\n", b, v, pf_label(b, buf, sizeof(buf)),
                   (r->acked_pf & v) ? "acknowledged" : "not acknowledged", why);
        }
    }

    if (r->has_queues)
        printf("queues:            %" PRIu64 " (GET_QUEUE_NUM)\n", r->queues);
    else if (o->dev)
        printf("queues:            no MQ; the %s minimum is %u\n", o->dev->name,
               o->dev->min_queues);
    else
        printf("queues:            no MQ\n");

    if (r->has_slots)
        printf("max mem slots:     %" PRIu64 "\n", r->slots);
    else
        printf("max mem slots:     no CONFIGURE_MEM_SLOTS\n");

    if (!r->has_config) {
        if (!(r->acked_pf & VUF_PROTO_MASK(CONFIG)))
            printf("config:            no CONFIG protocol feature\n");
        else
            printf("config:            not read (give --device-type or --config-size)\n");
        return;
    }
    printf("config:            %u bytes at offset 0\n", r->config_len);
    {
        struct cfg_field f[VUF_CFG_MAX_FIELDS];
        size_t n = config_decode(o->dev ? (uint32_t)o->dev->type : 0, r->config, r->config_len, f,
                                 VUF_CFG_MAX_FIELDS);
        for (size_t i = 0; i < n; i++) {
            char name[80];

            if (f[i].group)
                snprintf(name, sizeof(name), "%s.%s", f[i].group, f[i].name);
            else
                snprintf(name, sizeof(name), "%s", f[i].name);
            if (f[i].kind == VUF_CFG_UINT)
                printf("  %-34s %" PRIu64 "\n", name, f[i].value);
            else
                printf("  %-34s \"%s\"\n", name, f[i].text);
        }
        if (n == 0)
            printf("  (no known layout for this device type)\n");
    }
    print_hex(r->config, r->config_len, "  raw ");
}

static json_object *json_u64(uint64_t v)
{
    return json_object_new_uint64(v);
}

static json_object *build_json(const struct probe_opts *o, const struct probe_result *r)
{
    json_object *root = json_object_new_object();
    json_object *names = json_object_new_array();
    json_object *pnames = json_object_new_array();
    json_object *onames = json_object_new_array();
    char buf[32];

    if (!root || !names || !pnames || !onames) {
        json_object_put(root);
        json_object_put(names);
        json_object_put(pnames);
        json_object_put(onames);
        return NULL;
    }
    json_object_object_add(root, "socket", json_object_new_string(o->socket));
    json_object_object_add(root, "device_type",
                           dev_name(o) ? json_object_new_string(dev_name(o)) : NULL);
    json_object_object_add(root, "features", json_u64(r->features));
    for (unsigned b = 0; b < 64; b++)
        if (r->features & (1ull << b))
            json_object_array_add(names,
                                  json_object_new_string(feature_label(o, b, buf, sizeof(buf))));
    json_object_object_add(root, "feature_names", names);

    json_object_object_add(root, "offered_protocol_features",
                           r->has_pf ? json_u64(r->offered_pf) : NULL);
    json_object_object_add(root, "protocol_features", json_u64(r->acked_pf));
    json_object_object_add(root, "device_protocol_features", json_u64(r->device_pf));
    for (unsigned b = 0; b < 64; b++) {
        if (r->offered_pf & (1ull << b))
            json_object_array_add(onames, json_object_new_string(pf_label(b, buf, sizeof(buf))));
        if (r->acked_pf & (1ull << b))
            json_object_array_add(pnames, json_object_new_string(pf_label(b, buf, sizeof(buf))));
    }
    json_object_object_add(root, "protocol_feature_names", pnames);
    json_object_object_add(root, "offered_protocol_feature_names", onames);

    json_object_object_add(root, "queues", r->has_queues ? json_u64(r->queues) : NULL);
    json_object_object_add(root, "max_mem_slots", r->has_slots ? json_u64(r->slots) : NULL);

    if (r->has_config) {
        struct cfg_field f[VUF_CFG_MAX_FIELDS];
        json_object *cfg = json_object_new_object();
        size_t n = config_decode(o->dev ? (uint32_t)o->dev->type : 0, r->config, r->config_len, f,
                                 VUF_CFG_MAX_FIELDS);
        char hex[2 * VUF_CONFIG_MAX + 1];

        for (size_t i = 0; i < n; i++)
            json_object_object_add(cfg, f[i].name,
                                   f[i].kind == VUF_CFG_UINT ? json_u64(f[i].value)
                                                             : json_object_new_string(f[i].text));
        json_object_object_add(root, "config", cfg);
        json_object_object_add(root, "config_size", json_u64(r->config_len));
        for (uint32_t i = 0; i < r->config_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", r->config[i]);
        hex[2 * r->config_len] = '\0';
        json_object_object_add(root, "config_raw", json_object_new_string(hex));
    } else {
        json_object_object_add(root, "config", NULL);
        json_object_object_add(root, "config_size", NULL);
        json_object_object_add(root, "config_raw", NULL);
    }
    return root;
}

int cmd_probe(int argc, char **argv)
{
    struct probe_opts o;
    struct probe_result r;
    struct vuf_conn *conn = NULL;
    struct vuf_client *client = NULL;
    bool help;
    int ret;

    ret = parse_args(argc, argv, &o, &help);
    if (ret)
        return ret;
    if (help) {
        cmd_probe_usage(stdout);
        return VUF_EXIT_OK;
    }

    memset(&r, 0, sizeof(r));
    ret = vuf_conn_connect(o.socket, o.timeout_ms, &conn);
    if (ret) {
        /* Only a missing socket or a refused connection is waited for;
         * anything else (not a socket, no permission) fails at once. */
        if (ret == -ENOENT || ret == -ECONNREFUSED || ret == -ETIMEDOUT)
            fprintf(stderr, "vuf probe: %s: cannot connect (waited %d ms): %s\n", o.socket,
                    o.timeout_ms, vuf_strerror(ret));
        else
            fprintf(stderr, "vuf probe: %s: cannot connect: %s\n", o.socket, vuf_strerror(ret));
        return VUF_EXIT_FAIL;
    }
    vuf_conn_set_timeout(conn, o.timeout_ms);
    ret = vuf_client_new(conn, &client); /* owns conn from here, also on failure */
    if (ret)
        return fail(&o, "creating the client", ret);

    ret = negotiate(client, &o, &r);
    /* Close before printing: the back-end is free for its next client as
     * early as possible, and no path leaves the connection open. */
    vuf_client_free(client);
    if (ret != VUF_EXIT_OK)
        return ret;

    if (o.json) {
        json_object *root = build_json(&o, &r);

        if (!root) {
            fprintf(stderr, "vuf probe: out of memory building JSON\n");
            return VUF_EXIT_FAIL;
        }
        cli_print_json(root);
    } else {
        print_text(&o, &r);
    }
    return cli_stdout_ok(&probe_cmd) ? VUF_EXIT_OK : VUF_EXIT_FAIL;
}
