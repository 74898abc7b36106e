/* SPDX-License-Identifier: MIT */
/*
 * `vuf blk`: be the VMM of a vhost-user-blk back-end, with a user-space
 * virtio-blk driver in this process: connect, make the front-end device,
 * give it guest memory (a memfd) and queues, activate, then read, write,
 * verify or benchmark, and stop the device (reset) before disconnecting.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cli_util.h"
#include "session.h"
#include "vuf/frontend.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"
#include "vuf_tool.h"

#define DEFAULT_TIMEOUT_MS VUF_DEFAULT_TIMEOUT_MS
#define DEFAULT_QUEUE_SIZE 128u
#define MAX_QUEUE_SIZE 1024u /* libvhost-user's and vuf-backend-blk's limit */
#define DEFAULT_SEED 1u
#define DEFAULT_SECONDS 5.0
/* Data bytes per request for read/write/verify. */
#define RW_CHUNK (128u * 1024)
#define RW_DEPTH 4u
#define MAX_LEN (1ull << 30) /* read/write/verify buffer limit */

enum blk_op { OP_NONE, OP_READ, OP_WRITE, OP_VERIFY, OP_BENCH };
enum bench_rw { RW_RANDREAD, RW_RANDWRITE, RW_READ, RW_WRITE };

static const char *const rw_names[] = {"randread", "randwrite", "read", "write"};

struct blk_opts {
    const char *socket;
    enum blk_op op;
    int timeout_ms;
    unsigned queues;
    unsigned queue_size; /* 0: automatic */
    bool busy_poll, no_event_idx, no_indirect, packed;
    unsigned poll_us; /* bench: adaptive polling before each sleep */
    /* read / write / verify */
    bool have_offset, have_len;
    uint64_t offset, len;
    bool have_seed;
    uint64_t seed;
    bool hexdump;
    const char *out;
    bool no_flush;
    /* bench */
    enum bench_rw rw;
    bool have_rw, have_bs, have_depth, have_seconds, have_ios, have_range;
    uint32_t bs;
    unsigned iodepth;
    double seconds;
    uint64_t ios;
    uint64_t range;
    bool json;
};

void cmd_blk_usage(FILE *f)
{
    fprintf(
        f,
        "usage: vuf blk SOCKET read   --offset BYTES --len BYTES [--hexdump | --out FILE]\n"
        "       vuf blk SOCKET write  --offset BYTES --len BYTES [--pattern SEED] [--no-flush]\n"
        "       vuf blk SOCKET verify --offset BYTES --len BYTES [--pattern SEED]\n"
        "       vuf blk SOCKET bench  [--rw randread|randwrite|read|write] [--bs BYTES]\n"
        "                             [--iodepth N] [--seconds S | --ios N] [--range BYTES]\n"
        "                             [--json]\n"
        "       common: [--queues Q] [--queue-size N] [--busy-poll] [--timeout-ms N]\n"
        "               [--poll-us N]\n"
        "               [--no-event-idx] [--no-indirect] [--ring split|packed]\n"
        "\n"
        "Act as the VMM of the vhost-user-blk back-end listening on SOCKET, with a\n"
        "user-space virtio-blk driver: connect, negotiate (SET_OWNER, features,\n"
        "protocol features, GET_QUEUE_NUM), ack the driver's features, read the\n"
        "config, share guest memory (one memfd), start Q queues (SET_MEM_TABLE,\n"
        "SET_VRING_*), do the I/O, stop the queues (GET_VRING_BASE) and disconnect.\n"
        "BYTES take K, M, G suffixes (1024-based); offsets and lengths must be\n"
        "multiples of 512, and of the disk's logical block size when it reports\n"
        "a larger one (VIRTIO_BLK_F_BLK_SIZE).\n"
        "\n"
        "  read      read LEN bytes at OFFSET; print a hex dump (default) or write\n"
        "            the raw bytes to FILE ('-' for stdout)\n"
        "  write     write the deterministic pattern of SEED (default %u) to\n"
        "            [OFFSET, OFFSET+LEN), then FLUSH if the device offers it\n"
        "  verify    read [OFFSET, OFFSET+LEN) and compare it with the pattern of\n"
        "            SEED; a mismatch names the first bad byte's offset (exit 1)\n"
        "  bench     measure IOPS and per-request latency (clock_gettime\n"
        "            MONOTONIC from submit to completion): min, median, mean, p99,\n"
        "            max; IOPS = completed requests / elapsed time. Each queue is\n"
        "            driven by its own thread with IODEPTH requests in flight.\n"
        "\n"
        "The pattern: byte at disk offset X is byte X%%8 (little-endian) of\n"
        "splitmix64(SEED * 0x9e3779b97f4a7c15 + X/8), so any sub-range of a\n"
        "written area can be verified on its own.\n"
        "\n"
        "options:\n"
        "  --offset BYTES      where to start (read, write, verify)\n"
        "  --len BYTES         how much (read, write, verify; at most 1G)\n"
        "  --pattern SEED      pattern seed, a 64-bit number (write, verify)\n"
        "  --hexdump           print a hex dump (read; the default)\n"
        "  --out FILE          write the raw data to FILE, '-' = stdout (read)\n"
        "  --no-flush          do not send FLUSH after writing (write)\n"
        "  --rw MODE           randread (default), randwrite, read, write (bench)\n"
        "  --bs BYTES          request size, a multiple of 512 (bench; default 4096)\n"
        "  --iodepth N         requests in flight per queue (bench; default 1)\n"
        "  --seconds S         run for S seconds (bench; default %g)\n"
        "  --ios N             or complete N requests in total (bench)\n"
        "  --range BYTES       use only [0, BYTES) of the disk (bench; default all)\n"
        "  --json              print one JSON object (bench)\n"
        "  --queues Q          queues to start (default 1); bench uses all of them,\n"
        "                      the other commands queue 0\n"
        "  --queue-size N      entries per queue, a power of two up to %u (default\n"
        "                      %u, or more if IODEPTH needs it)\n"
        "  --busy-poll         wait for completions by spinning on the used ring\n"
        "                      (default: sleep on the queue's call eventfd)\n"
        "  --poll-us N         adaptive (bench): spin on the used ring up to N us\n"
        "                      before each sleep on the call eventfd (default 0)\n"
        "  --timeout-ms N      wait up to N ms for the socket and for each reply or\n"
        "                      request (default %d)\n"
        "  --no-event-idx      do not negotiate VIRTIO_F_EVENT_IDX\n"
        "  --no-indirect       do not negotiate VIRTIO_F_INDIRECT_DESC\n"
        "  --ring LAYOUT       split (default: every back-end has it) or packed\n"
        "                      (virtio 1.2 §2.8; fails if the back-end does not offer it)\n"
        "  -h, --help          this help\n"
        "\n"
        "JSON keys (bench): socket, rw, bs, iodepth, queues, queue_size, wait\n"
        "(\"eventfd\", \"adaptive\" or \"busy-poll\"), poll_us, ring (\"split\" or \"packed\"),\n"
        "ios, elapsed_s, iops, bytes_per_s, cpu_ns_per_io (this process's user+sys time per\n"
        "request), "
        "latency_ns {min, median, mean, p99, max}, features, protocol_features.\n"
        "\n"
        "Exit status: 0 success; 1 failure (cannot connect, protocol or I/O error,\n"
        "verify mismatch; reason on stderr); 2 usage error.\n",
        DEFAULT_SEED, DEFAULT_SECONDS, MAX_QUEUE_SIZE, DEFAULT_QUEUE_SIZE, DEFAULT_TIMEOUT_MS);
}

static const struct cli_cmd blk_cmd = {"vuf blk", cmd_blk_usage};

/* ---- parsing ---------------------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* A byte count with an optional K/M/G suffix (1024-based). */
static bool parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
    uint64_t v;

    if (!parse_u64(s, &v) || v < min || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

static bool is_pow2(unsigned v)
{
    return v && !(v & (v - 1));
}

enum {
    OPT_OFFSET = 256,
    OPT_LEN,
    OPT_PATTERN,
    OPT_HEXDUMP,
    OPT_OUT,
    OPT_NOFLUSH,
    OPT_RW,
    OPT_BS,
    OPT_DEPTH,
    OPT_SECONDS,
    OPT_IOS,
    OPT_RANGE,
    OPT_JSON,
    OPT_QUEUES,
    OPT_QSIZE,
    OPT_BUSY,
    OPT_POLL_US,
    OPT_TIMEOUT,
    OPT_NO_EIDX,
    OPT_NO_IND,
    OPT_RING,
};

static int check_op_options(const struct blk_opts *o)
{
    bool rwv = o->op == OP_READ || o->op == OP_WRITE || o->op == OP_VERIFY;
    const char *op = o->op == OP_READ     ? "read"
                     : o->op == OP_WRITE  ? "write"
                     : o->op == OP_VERIFY ? "verify"
                                          : "bench";

    if (rwv) {
        if (!o->have_offset || !o->have_len)
            return cli_usage_error(&blk_cmd, "%s needs --offset and --len", op);
        if (o->have_rw || o->have_bs || o->have_depth || o->have_seconds || o->have_ios ||
            o->have_range || o->json)
            return cli_usage_error(&blk_cmd,
                                   "--rw/--bs/--iodepth/--seconds/--ios/--range/--json are "
                                   "bench options");
        if (o->offset % VUF_BLK_SECTOR_SIZE || o->len % VUF_BLK_SECTOR_SIZE)
            return cli_usage_error(&blk_cmd, "--offset and --len must be multiples of 512");
        if (o->len == 0 || o->len > MAX_LEN)
            return cli_usage_error(&blk_cmd, "--len must be 512 bytes to 1G");
        if (o->offset > UINT64_MAX - o->len)
            return cli_usage_error(&blk_cmd, "--offset + --len overflows");
        if (o->op != OP_READ && (o->hexdump || o->out))
            return cli_usage_error(&blk_cmd, "--hexdump and --out are read options");
        if (o->hexdump && o->out)
            return cli_usage_error(&blk_cmd, "give --hexdump or --out, not both");
        if (o->op == OP_READ && o->have_seed)
            return cli_usage_error(&blk_cmd, "--pattern is a write/verify option");
        if (o->op != OP_WRITE && o->no_flush)
            return cli_usage_error(&blk_cmd, "--no-flush is a write option");
        return 0;
    }
    if (o->have_offset || o->have_len || o->have_seed || o->hexdump || o->out || o->no_flush)
        return cli_usage_error(&blk_cmd,
                               "--offset/--len/--pattern/--hexdump/--out/--no-flush are not "
                               "bench options");
    if (o->have_seconds && o->have_ios)
        return cli_usage_error(&blk_cmd, "give --seconds or --ios, not both");
    if (o->bs % VUF_BLK_SECTOR_SIZE)
        return cli_usage_error(&blk_cmd, "--bs must be a multiple of 512");
    return 0;
}

/* What the parse_*_option functions return for an option not theirs. */
#define NOT_MINE (-1)

/* The read/write/verify options. 0, NOT_MINE, or the usage error. */
static int parse_io_option(struct blk_opts *o, int c)
{
    switch (c) {
    case OPT_OFFSET:
        if (!cli_parse_bytes(optarg, &o->offset))
            return cli_usage_error(&blk_cmd, "--offset wants a byte count, not '%s'", optarg);
        o->have_offset = true;
        return 0;
    case OPT_LEN:
        if (!cli_parse_bytes(optarg, &o->len))
            return cli_usage_error(&blk_cmd, "--len wants a byte count, not '%s'", optarg);
        o->have_len = true;
        return 0;
    case OPT_PATTERN:
        if (!parse_u64(optarg, &o->seed))
            return cli_usage_error(&blk_cmd, "--pattern wants a number, not '%s'", optarg);
        o->have_seed = true;
        return 0;
    case OPT_HEXDUMP:
        o->hexdump = true;
        return 0;
    case OPT_OUT:
        o->out = optarg;
        return 0;
    case OPT_NOFLUSH:
        o->no_flush = true;
        return 0;
    default:
        return NOT_MINE;
    }
}

static int parse_rw(struct blk_opts *o)
{
    bool found = false;

    for (unsigned i = 0; i < 4; i++)
        if (strcmp(optarg, rw_names[i]) == 0) {
            o->rw = (enum bench_rw)i;
            found = true;
        }
    if (!found)
        return cli_usage_error(&blk_cmd, "--rw wants randread, randwrite, read or write, not '%s'",
                               optarg);
    o->have_rw = true;
    return 0;
}

static int parse_seconds(struct blk_opts *o)
{
    char *end;

    errno = 0;
    o->seconds = strtod(optarg, &end);
    if (errno || *end || !(o->seconds > 0) || o->seconds > 86400)
        return cli_usage_error(&blk_cmd, "--seconds wants a duration > 0, not '%s'", optarg);
    o->have_seconds = true;
    return 0;
}

/* The bench options. 0, NOT_MINE, or the usage error. */
static int parse_bench_option(struct blk_opts *o, int c)
{
    uint64_t v;

    switch (c) {
    case OPT_RW:
        return parse_rw(o);
    case OPT_BS:
        if (!cli_parse_bytes(optarg, &v) || v == 0 || v > (16u << 20))
            return cli_usage_error(&blk_cmd, "--bs wants 512 bytes to 16M, not '%s'", optarg);
        o->bs = (uint32_t)v;
        o->have_bs = true;
        return 0;
    case OPT_DEPTH:
        if (!parse_uint(optarg, 1, MAX_QUEUE_SIZE, &o->iodepth))
            return cli_usage_error(&blk_cmd, "--iodepth wants 1-%u, not '%s'", MAX_QUEUE_SIZE,
                                   optarg);
        o->have_depth = true;
        return 0;
    case OPT_SECONDS:
        return parse_seconds(o);
    case OPT_IOS:
        if (!parse_u64(optarg, &o->ios) || o->ios == 0)
            return cli_usage_error(&blk_cmd, "--ios wants a count >= 1, not '%s'", optarg);
        o->have_ios = true;
        return 0;
    case OPT_RANGE:
        if (!cli_parse_bytes(optarg, &o->range) || o->range == 0)
            return cli_usage_error(&blk_cmd, "--range wants a byte count, not '%s'", optarg);
        o->have_range = true;
        return 0;
    case OPT_JSON:
        o->json = true;
        return 0;
    default:
        return NOT_MINE;
    }
}

/* The options of the device and its queues, for every operation. 0,
 * NOT_MINE, or the usage error. */
static int parse_session_option(struct blk_opts *o, int c)
{
    unsigned t;

    switch (c) {
    case OPT_QUEUES:
        if (!parse_uint(optarg, 1, VUF_FRONTEND_MAX_QUEUES, &o->queues))
            return cli_usage_error(&blk_cmd, "--queues wants 1-%u, not '%s'",
                                   VUF_FRONTEND_MAX_QUEUES, optarg);
        return 0;
    case OPT_QSIZE:
        if (!parse_uint(optarg, 1, MAX_QUEUE_SIZE, &o->queue_size) || !is_pow2(o->queue_size))
            return cli_usage_error(&blk_cmd, "--queue-size wants a power of two up to %u, not '%s'",
                                   MAX_QUEUE_SIZE, optarg);
        return 0;
    case OPT_BUSY:
        o->busy_poll = true;
        return 0;
    case OPT_POLL_US:
        if (!parse_uint(optarg, 0, 1000000, &o->poll_us))
            return cli_usage_error(&blk_cmd, "--poll-us wants 0-1000000, not '%s'", optarg);
        return 0;
    case OPT_TIMEOUT:
        if (!parse_uint(optarg, 1, INT_MAX, &t))
            return cli_usage_error(&blk_cmd, "--timeout-ms wants a number of ms >= 1, not '%s'",
                                   optarg);
        o->timeout_ms = (int)t;
        return 0;
    case OPT_NO_EIDX:
        o->no_event_idx = true;
        return 0;
    case OPT_NO_IND:
        o->no_indirect = true;
        return 0;
    case OPT_RING:
        if (strcmp(optarg, "split") && strcmp(optarg, "packed"))
            return cli_usage_error(&blk_cmd, "--ring wants split or packed, not '%s'", optarg);
        o->packed = !strcmp(optarg, "packed");
        return 0;
    default:
        return NOT_MINE;
    }
}

static void default_opts(struct blk_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->timeout_ms = DEFAULT_TIMEOUT_MS;
    o->queues = 1;
    o->seed = DEFAULT_SEED;
    o->rw = RW_RANDREAD;
    o->bs = 4096;
    o->iodepth = 1;
    o->seconds = DEFAULT_SECONDS;
}

/* SOCKET and the operation, after the options (ops[i] is enum blk_op i + 1). */
static int parse_positionals(int argc, char **argv, struct blk_opts *o)
{
    static const char *const ops[] = {"read", "write", "verify", "bench"};
    unsigned op;
    int r = cli_socket_and_op(&blk_cmd, argc, argv, ops, 4, "read, write, verify or bench",
                              &o->socket, &op);

    if (r == 0)
        o->op = (enum blk_op)(op + 1);
    return r;
}

static int parse_args(int argc, char **argv, struct blk_opts *o, bool *help)
{
    static const struct option longopts[] = {
        {"offset", required_argument, NULL, OPT_OFFSET},
        {"len", required_argument, NULL, OPT_LEN},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"hexdump", no_argument, NULL, OPT_HEXDUMP},
        {"out", required_argument, NULL, OPT_OUT},
        {"no-flush", no_argument, NULL, OPT_NOFLUSH},
        {"rw", required_argument, NULL, OPT_RW},
        {"bs", required_argument, NULL, OPT_BS},
        {"iodepth", required_argument, NULL, OPT_DEPTH},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"ios", required_argument, NULL, OPT_IOS},
        {"range", required_argument, NULL, OPT_RANGE},
        {"json", no_argument, NULL, OPT_JSON},
        {"queues", required_argument, NULL, OPT_QUEUES},
        {"queue-size", required_argument, NULL, OPT_QSIZE},
        {"busy-poll", no_argument, NULL, OPT_BUSY},
        {"poll-us", required_argument, NULL, OPT_POLL_US},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"no-event-idx", no_argument, NULL, OPT_NO_EIDX},
        {"no-indirect", no_argument, NULL, OPT_NO_IND},
        {"ring", required_argument, NULL, OPT_RING},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, r;

    *help = false;
    default_opts(o);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') {
            *help = true;
            return 0;
        }
        r = parse_io_option(o, c);
        if (r == NOT_MINE)
            r = parse_bench_option(o, c);
        if (r == NOT_MINE)
            r = parse_session_option(o, c);
        if (r == NOT_MINE)
            return cli_option_error(&blk_cmd, c, argv);
        if (r)
            return r;
    }
    r = parse_positionals(argc, argv, o);
    return r ? r : check_op_options(o);
}

/* ---- helpers ---------------------------------------------------------------- */

static int fail_session(const struct blk_opts *o, const struct ts_session *s, int err)
{
    fprintf(stderr, "vuf blk: %s: %s failed: %s\n", o->socket, s->failed ? s->failed : "?",
            vuf_strerror(err));
    return VUF_EXIT_FAIL;
}

/* Valid once check_disk() accepted the config: the product cannot wrap. */
static uint64_t disk_bytes(const struct ts_session *s)
{
    return s->capacity * VUF_BLK_SECTOR_SIZE;
}

/* Requests are built in 512-byte sectors; a disk with larger logical blocks
 * (VIRTIO_BLK_F_BLK_SIZE) fails every request that is not a whole number of
 * its blocks, as "peer reported failure". */
static uint32_t block_size(const struct ts_session *s)
{
    return s->blk_size > VUF_BLK_SECTOR_SIZE ? s->blk_size : VUF_BLK_SECTOR_SIZE;
}

/* What the back-end's config says about the disk, checked against the
 * operation before any request goes out. */
static int check_disk(const struct blk_opts *o, const struct ts_session *s)
{
    uint32_t bsz = block_size(s);

    if (!s->have_config)
        return VUF_EXIT_OK;
    if (s->capacity > UINT64_MAX / VUF_BLK_SECTOR_SIZE) {
        fprintf(stderr,
                "vuf blk: %s: the back-end reports a capacity of %" PRIu64
                " sectors, more bytes than 64 bits hold; refusing the device\n",
                o->socket, s->capacity);
        return VUF_EXIT_FAIL;
    }
    /* Same bounds as Linux's virtio-blk driver applies (a power of two up
     * to a page), widened to what the chunking here keeps aligned. */
    if (s->blk_size && (s->blk_size < VUF_BLK_SECTOR_SIZE || s->blk_size > RW_CHUNK ||
                        (s->blk_size & (s->blk_size - 1)))) {
        fprintf(stderr,
                "vuf blk: %s: the back-end reports a logical block size of %" PRIu32
                " bytes (VIRTIO_BLK_F_BLK_SIZE); supported: a power of two from 512 to %u\n",
                o->socket, s->blk_size, RW_CHUNK);
        return VUF_EXIT_FAIL;
    }
    if (o->op == OP_BENCH) {
        if (o->bs % bsz) {
            fprintf(stderr,
                    "vuf blk: %s: --bs %" PRIu32 " is not a multiple of the disk's %" PRIu32
                    "-byte logical block (VIRTIO_BLK_F_BLK_SIZE)\n",
                    o->socket, o->bs, bsz);
            return VUF_EXIT_FAIL;
        }
        return VUF_EXIT_OK;
    }
    if (o->offset % bsz || o->len % bsz) {
        fprintf(stderr,
                "vuf blk: %s: --offset %" PRIu64 " and --len %" PRIu64
                " must be multiples of the disk's %" PRIu32
                "-byte logical block (VIRTIO_BLK_F_BLK_SIZE)\n",
                o->socket, o->offset, o->len, bsz);
        return VUF_EXIT_FAIL;
    }
    return VUF_EXIT_OK;
}

static void hexdump(uint64_t base, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i += 16) {
        printf("%012" PRIx64 " ", base + i);
        for (size_t j = 0; j < 16; j++) {
            if (j == 8)
                putchar(' ');
            if (i + j < len)
                printf(" %02x", p[i + j]);
            else
                printf("   ");
        }
        printf("  |");
        for (size_t j = 0; j < 16 && i + j < len; j++)
            putchar(p[i + j] >= 0x20 && p[i + j] < 0x7f ? p[i + j] : '.');
        printf("|\n");
    }
}

static int write_out(const char *path, const uint8_t *buf, size_t len)
{
    int fd = strcmp(path, "-") == 0 ? STDOUT_FILENO
                                    : open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t done = 0;

    if (fd < 0) {
        fprintf(stderr, "vuf blk: %s: %s\n", path, strerror(errno));
        return VUF_EXIT_FAIL;
    }
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "vuf blk: writing %s: %s\n", path,
                    n < 0 ? strerror(errno) : "short write");
            if (fd != STDOUT_FILENO)
                close(fd);
            return VUF_EXIT_FAIL;
        }
        done += (size_t)n;
    }
    if (fd != STDOUT_FILENO && close(fd) < 0) {
        fprintf(stderr, "vuf blk: closing %s: %s\n", path, strerror(errno));
        return VUF_EXIT_FAIL;
    }
    return VUF_EXIT_OK;
}

/* ---- read / write / verify -------------------------------------------------- */

static int do_rwv(const struct blk_opts *o, struct ts_session *s)
{
    uint8_t *buf;
    int r, rc = VUF_EXIT_OK;

    if (s->have_config && o->offset + o->len > disk_bytes(s)) {
        fprintf(stderr,
                "vuf blk: %s: [%" PRIu64 ", %" PRIu64 ") is beyond the disk's end "
                "(%" PRIu64 " bytes)\n",
                o->socket, o->offset, o->offset + o->len, disk_bytes(s));
        return VUF_EXIT_FAIL;
    }
    if (o->op == OP_WRITE && s->read_only) {
        fprintf(stderr, "vuf blk: %s: the device is read-only (VIRTIO_BLK_F_RO)\n", o->socket);
        return VUF_EXIT_FAIL;
    }
    buf = malloc(o->len);
    if (!buf) {
        fprintf(stderr, "vuf blk: out of memory for %" PRIu64 " bytes\n", o->len);
        return VUF_EXIT_FAIL;
    }

    switch (o->op) {
    case OP_WRITE:
        ts_pattern_fill(o->seed, o->offset, buf, o->len);
        r = ts_write(s, 0, o->offset, buf, o->len);
        if (r == 0 && s->has_flush && !o->no_flush)
            r = ts_flush(s, 0);
        if (r < 0) {
            rc = fail_session(o, s, r);
            break;
        }
        printf("wrote %" PRIu64 " bytes at offset %" PRIu64 " (pattern seed %" PRIu64 ")%s\n",
               o->len, o->offset, o->seed, s->has_flush && !o->no_flush ? ", flushed" : "");
        break;
    case OP_READ:
        r = ts_read(s, 0, o->offset, buf, o->len);
        if (r < 0) {
            rc = fail_session(o, s, r);
            break;
        }
        if (o->out)
            rc = write_out(o->out, buf, o->len);
        else
            hexdump(o->offset, buf, o->len);
        break;
    case OP_VERIFY: {
        size_t bad;

        r = ts_read(s, 0, o->offset, buf, o->len);
        if (r < 0) {
            rc = fail_session(o, s, r);
            break;
        }
        bad = ts_pattern_check(o->seed, o->offset, buf, o->len);
        if (bad < o->len) {
            uint8_t want;
            ts_pattern_fill(o->seed, o->offset + bad, &want, 1);
            fprintf(stderr,
                    "vuf blk: %s: verify failed: first mismatch at offset %" PRIu64 " (0x%" PRIx64
                    "): expected 0x%02x, read 0x%02x (pattern seed %" PRIu64 ")\n",
                    o->socket, o->offset + bad, o->offset + bad, want, buf[bad], o->seed);
            rc = VUF_EXIT_FAIL;
            break;
        }
        printf("verified %" PRIu64 " bytes at offset %" PRIu64 " (pattern seed %" PRIu64 "): ok\n",
               o->len, o->offset, o->seed);
        break;
    }
    default:
        break;
    }
    free(buf);
    return rc;
}

/* ---- bench ------------------------------------------------------------------ */

struct bench_slot {
    struct vuf_blk_req *req;
    uint64_t t_submit;
};

struct bench_job {
    const struct blk_opts *o;
    struct ts_session *s;
    unsigned qi;
    uint64_t *claimed; /* shared: requests claimed (with --ios) */
    uint64_t deadline; /* ns, with --seconds */
    uint64_t nblocks;  /* bs-sized blocks in the range */
    uint64_t rng;
    uint64_t seq; /* next block for sequential modes */
    /* results */
    uint64_t t_start, t_end;
    uint64_t *lat;
    size_t nlat, caplat;
    int err;
    const char *err_what;
};

static uint64_t xorshift(uint64_t *st)
{
    uint64_t x = *st;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* May another request be started? */
static bool bench_may_submit(struct bench_job *j)
{
    if (j->o->have_ios)
        return __atomic_fetch_add(j->claimed, 1, __ATOMIC_RELAXED) < j->o->ios;
    return (uint64_t)cli_now_ns() < j->deadline;
}

static int bench_prep(struct bench_job *j, struct bench_slot *sl)
{
    bool rnd = j->o->rw == RW_RANDREAD || j->o->rw == RW_RANDWRITE;
    bool wr = j->o->rw == RW_RANDWRITE || j->o->rw == RW_WRITE;
    uint64_t blk;

    if (rnd) {
        blk = xorshift(&j->rng) % j->nblocks;
    } else {
        blk = j->seq;
        j->seq = (j->seq + 1) % j->nblocks;
    }
    return vuf_blk_req_prep(sl->req, wr ? VUF_BLK_T_OUT : VUF_BLK_T_IN,
                            blk * (j->o->bs / VUF_BLK_SECTOR_SIZE), j->o->bs);
}

static bool bench_record(struct bench_job *j, uint64_t ns)
{
    if (j->nlat == j->caplat) {
        size_t cap = j->caplat ? j->caplat * 2 : 65536;
        uint64_t *p = realloc(j->lat, cap * sizeof(*p));
        if (!p)
            return false;
        j->lat = p;
        j->caplat = cap;
    }
    j->lat[j->nlat++] = ns;
    return true;
}

static void *bench_thread(void *arg)
{
    struct bench_job *j = arg;
    struct vuf_blk *blk = j->s->blk[j->qi];
    unsigned depth = j->o->iodepth, inflight = 0;
    struct bench_slot *slots = calloc(depth, sizeof(*slots));
    bool stopping = false;
    int r;

    if (!slots) {
        j->err = -ENOMEM;
        j->err_what = "bench set-up";
        return NULL;
    }
    for (unsigned k = 0; k < depth; k++) {
        slots[k].req = vuf_blk_req_get(blk);
        if (!slots[k].req) {
            j->err = -EBUSY;
            j->err_what = "bench set-up";
            goto out;
        }
        vuf_blk_req_set_user(slots[k].req, &slots[k]);
        /* Writes carry a pattern (its content does not matter). */
        ts_pattern_fill(j->qi + 1, 0, vuf_blk_req_buf(slots[k].req, NULL), j->o->bs);
    }

    j->t_start = (uint64_t)cli_now_ns();
    j->t_end = j->t_start;
    /* Fill the queue: one kick for the batch. */
    for (unsigned k = 0; k < depth && !stopping; k++) {
        if (!bench_may_submit(j)) {
            stopping = true;
            break;
        }
        r = bench_prep(j, &slots[k]);
        if (r == 0) {
            slots[k].t_submit = (uint64_t)cli_now_ns();
            r = vuf_blk_submit(blk, slots[k].req, VUF_BLK_SUBMIT_NO_KICK);
        }
        if (r < 0) {
            j->err = r;
            j->err_what = "submit";
            goto drain;
        }
        inflight++;
    }
    if (inflight) {
        r = vuf_blk_kick(blk);
        if (r < 0) {
            j->err = r;
            j->err_what = "kick";
            goto drain;
        }
    }

    while (inflight) {
        struct vuf_blk_req *done;
        unsigned resubmitted = 0;

        r = ts_wait(j->s, j->qi, j->o->timeout_ms, &done);
        while (r == 0) {
            struct bench_slot *sl = vuf_blk_req_user(done);
            uint64_t t = (uint64_t)cli_now_ns();

            inflight--;
            j->t_end = t;
            r = vuf_blk_req_result(done);
            if (r < 0) {
                j->err = r;
                j->err_what = j->o->rw == RW_RANDWRITE || j->o->rw == RW_WRITE ? "write request"
                                                                               : "read request";
                goto drain;
            }
            if (!bench_record(j, t - sl->t_submit)) {
                j->err = -ENOMEM;
                j->err_what = "recording latencies";
                goto drain;
            }
            if (!stopping && bench_may_submit(j)) {
                r = bench_prep(j, sl);
                if (r == 0) {
                    sl->t_submit = (uint64_t)cli_now_ns();
                    r = vuf_blk_submit(blk, sl->req, VUF_BLK_SUBMIT_NO_KICK);
                }
                if (r < 0) {
                    j->err = r;
                    j->err_what = "submit";
                    goto drain;
                }
                inflight++;
                resubmitted++;
            } else {
                stopping = true;
            }
            r = vuf_blk_reap(blk, &done);
        }
        if (r != -EAGAIN) {
            j->err = r;
            j->err_what = "waiting for a completion";
            goto out; /* the queue is unusable: no drain */
        }
        if (resubmitted) {
            r = vuf_blk_kick(blk);
            if (r < 0) {
                j->err = r;
                j->err_what = "kick";
                goto drain;
            }
        }
    }
    goto out;

drain:
    /* After an error, let what is in flight finish (bounded). */
    while (inflight) {
        struct vuf_blk_req *done;
        if (ts_wait(j->s, j->qi, j->o->timeout_ms, &done) < 0)
            break;
        inflight--;
    }
out:
    free(slots);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static uint64_t pct(const uint64_t *v, size_t n, double p)
{
    size_t k;

    if (n == 0)
        return 0;
    k = (size_t)(p * (double)n + 0.999999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

/* The byte range bench works in: --range, else the disk. An exit code. */
static int bench_range(const struct blk_opts *o, const struct ts_session *s, uint64_t *out)
{
    uint64_t range;

    if (s->have_config) {
        range = o->have_range ? o->range : disk_bytes(s);
        if (range > disk_bytes(s)) {
            fprintf(stderr,
                    "vuf blk: %s: --range %" PRIu64 " is beyond the disk's end (%" PRIu64
                    " bytes)\n",
                    o->socket, range, disk_bytes(s));
            return VUF_EXIT_FAIL;
        }
    } else if (o->have_range) {
        range = o->range;
    } else {
        fprintf(stderr, "vuf blk: %s: the disk size is unknown (no CONFIG); give --range\n",
                o->socket);
        return VUF_EXIT_FAIL;
    }
    if (range < o->bs) {
        fprintf(stderr, "vuf blk: %s: the range (%" PRIu64 " bytes) is smaller than --bs\n",
                o->socket, range);
        return VUF_EXIT_FAIL;
    }
    if ((o->rw == RW_RANDWRITE || o->rw == RW_WRITE) && s->read_only) {
        fprintf(stderr, "vuf blk: %s: the device is read-only (VIRTIO_BLK_F_RO)\n", o->socket);
        return VUF_EXIT_FAIL;
    }
    *out = range;
    return VUF_EXIT_OK;
}

/* One thread per queue until the deadline or --ios; joined here. */
static void bench_run(const struct blk_opts *o, struct ts_session *s, struct bench_job *jobs,
                      pthread_t *th, uint64_t range)
{
    uint64_t claimed = 0, deadline = (uint64_t)cli_now_ns() + (uint64_t)(o->seconds * 1e9);
    unsigned started = 0;

    for (unsigned i = 0; i < s->nq; i++) {
        jobs[i] = (struct bench_job){
            .o = o,
            .s = s,
            .qi = i,
            .claimed = &claimed,
            .deadline = deadline,
            .nblocks = range / o->bs,
            .rng = 0x9e3779b97f4a7c15ull * (i + 1) ^ 0x76756621ull,
            .seq = (range / o->bs) / s->nq * i,
        };
    }
    for (unsigned i = 0; i < s->nq; i++) {
        if (pthread_create(&th[i], NULL, bench_thread, &jobs[i]) != 0) {
            jobs[i].err = -EAGAIN;
            jobs[i].err_what = "starting a thread";
            break;
        }
        started++;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i], NULL);
}

/* What bench reports: every queue's latencies, merged. */
struct bench_stats {
    size_t n;
    double elapsed, iops, mean;
    double cpu_ns_per_io; /* user+sys of the whole process over the run */
    uint64_t mn, med, p99, mx;
};

/* The first job error, else the merged statistics. An exit code. */
static int bench_collect(const struct blk_opts *o, const struct ts_session *s,
                         const struct bench_job *jobs, struct bench_stats *st)
{
    uint64_t t0 = UINT64_MAX, t1 = 0, sum = 0, *all;
    size_t n = 0, k = 0;

    for (unsigned i = 0; i < s->nq; i++) {
        if (jobs[i].err) {
            fprintf(stderr, "vuf blk: %s: queue %u: %s failed: %s\n", o->socket, i,
                    jobs[i].err_what, vuf_strerror(jobs[i].err));
            return VUF_EXIT_FAIL;
        }
        if (jobs[i].nlat) {
            if (jobs[i].t_start < t0)
                t0 = jobs[i].t_start;
            if (jobs[i].t_end > t1)
                t1 = jobs[i].t_end;
        }
        n += jobs[i].nlat;
    }
    if (n == 0) {
        fprintf(stderr, "vuf blk: %s: no request completed\n", o->socket);
        return VUF_EXIT_FAIL;
    }
    all = malloc(n * sizeof(*all));
    if (!all) {
        fprintf(stderr, "vuf blk: out of memory\n");
        return VUF_EXIT_FAIL;
    }
    for (unsigned i = 0; i < s->nq; i++) {
        memcpy(all + k, jobs[i].lat, jobs[i].nlat * sizeof(*all));
        k += jobs[i].nlat;
    }
    qsort(all, n, sizeof(*all), cmp_u64);
    for (size_t i = 0; i < n; i++)
        sum += all[i];
    st->n = n;
    st->elapsed = (double)(t1 - t0) / 1e9;
    st->mean = (double)sum / (double)n;
    st->mn = all[0];
    st->mx = all[n - 1];
    st->med = pct(all, n, 0.5);
    st->p99 = pct(all, n, 0.99);
    st->iops = st->elapsed > 0 ? (double)n / st->elapsed : 0;
    free(all);
    return VUF_EXIT_OK;
}

static const char *bench_wait(const struct blk_opts *o)
{
    return o->busy_poll ? "busy-poll" : o->poll_us ? "adaptive" : "eventfd";
}

static int bench_print_json(const struct blk_opts *o, const struct ts_session *s,
                            const struct bench_stats *st)
{
    json_object *root = json_object_new_object(), *lat = json_object_new_object();

    if (!root || !lat) {
        json_object_put(root);
        json_object_put(lat);
        fprintf(stderr, "vuf blk: out of memory building JSON\n");
        return VUF_EXIT_FAIL;
    }
    json_object_object_add(root, "socket", json_object_new_string(o->socket));
    json_object_object_add(root, "rw", json_object_new_string(rw_names[o->rw]));
    json_object_object_add(root, "bs", json_object_new_uint64(o->bs));
    json_object_object_add(root, "iodepth", json_object_new_uint64(o->iodepth));
    json_object_object_add(root, "queues", json_object_new_uint64(s->nq));
    json_object_object_add(root, "queue_size", json_object_new_uint64(s->o.queue_size));
    json_object_object_add(root, "wait", json_object_new_string(bench_wait(o)));
    json_object_object_add(root, "ring", json_object_new_string(o->packed ? "packed" : "split"));
    json_object_object_add(root, "poll_us", json_object_new_uint64(o->busy_poll ? 0 : o->poll_us));
    json_object_object_add(root, "ios", json_object_new_uint64(st->n));
    json_object_object_add(root, "elapsed_s", json_object_new_double(st->elapsed));
    json_object_object_add(root, "iops", json_object_new_double(st->iops));
    json_object_object_add(root, "bytes_per_s", json_object_new_double(st->iops * o->bs));
    json_object_object_add(root, "cpu_ns_per_io", json_object_new_double(st->cpu_ns_per_io));
    json_object_object_add(lat, "min", json_object_new_uint64(st->mn));
    json_object_object_add(lat, "median", json_object_new_uint64(st->med));
    json_object_object_add(lat, "mean", json_object_new_double(st->mean));
    json_object_object_add(lat, "p99", json_object_new_uint64(st->p99));
    json_object_object_add(lat, "max", json_object_new_uint64(st->mx));
    json_object_object_add(root, "latency_ns", lat);
    json_object_object_add(root, "features", json_object_new_uint64(s->acked));
    json_object_object_add(root, "protocol_features", json_object_new_uint64(s->protocol));
    cli_print_json(root);
    return VUF_EXIT_OK;
}

static void bench_print_text(const struct blk_opts *o, const struct ts_session *s,
                             const struct bench_stats *st)
{
    printf("vuf blk bench: %s, bs %u, iodepth %u x %u queue%s (size %u), wait: %s\n",
           rw_names[o->rw], o->bs, o->iodepth, s->nq, s->nq == 1 ? "" : "s", s->o.queue_size,
           bench_wait(o));
    printf("  requests:    %zu in %.3f s\n", st->n, st->elapsed);
    printf("  IOPS:        %.0f\n", st->iops);
    printf("  throughput:  %.1f MiB/s\n", st->iops * o->bs / (1024.0 * 1024.0));
    printf("  latency us:  min %.1f  median %.1f  mean %.1f  p99 %.1f  max %.1f\n",
           (double)st->mn / 1e3, (double)st->med / 1e3, st->mean / 1e3, (double)st->p99 / 1e3,
           (double)st->mx / 1e3);
}

/* This process's CPU time (all threads, user + system). */
static uint64_t cpu_ns(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ull +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

static int do_bench(const struct blk_opts *o, struct ts_session *s)
{
    struct bench_stats st;
    struct bench_job *jobs;
    pthread_t *th;
    uint64_t range = 0, cpu0;
    int rc = bench_range(o, s, &range);

    if (rc != VUF_EXIT_OK)
        return rc;
    jobs = calloc(s->nq, sizeof(*jobs));
    th = calloc(s->nq, sizeof(*th));
    if (!jobs || !th) {
        free(jobs);
        free(th);
        fprintf(stderr, "vuf blk: out of memory\n");
        return VUF_EXIT_FAIL;
    }
    for (unsigned i = 0; i < s->nq; i++)
        vuf_blk_set_poll_us(s->blk[i], o->poll_us);
    cpu0 = cpu_ns();
    bench_run(o, s, jobs, th, range);
    rc = bench_collect(o, s, jobs, &st);
    if (rc == VUF_EXIT_OK)
        st.cpu_ns_per_io = st.n ? (double)(cpu_ns() - cpu0) / (double)st.n : 0;
    if (rc == VUF_EXIT_OK && o->json)
        rc = bench_print_json(o, s, &st);
    else if (rc == VUF_EXIT_OK)
        bench_print_text(o, s, &st);
    for (unsigned i = 0; i < s->nq; i++)
        free(jobs[i].lat);
    free(jobs);
    free(th);
    return rc;
}

/* ---- main ------------------------------------------------------------------- */

static unsigned pow2_at_least(unsigned v)
{
    unsigned p = 1;

    while (p < v)
        p *= 2;
    return p;
}

int cmd_blk(int argc, char **argv)
{
    struct blk_opts o;
    struct ts_opts to;
    struct ts_session s;
    bool help;
    int r, rc;

    r = parse_args(argc, argv, &o, &help);
    if (r)
        return r;
    if (help) {
        cmd_blk_usage(stdout);
        return VUF_EXIT_OK;
    }

    memset(&to, 0, sizeof(to));
    to.timeout_ms = o.timeout_ms;
    to.queues = o.queues;
    to.busy_poll = o.busy_poll;
    to.no_event_idx = o.no_event_idx;
    to.no_indirect = o.no_indirect;
    to.packed = o.packed;
    if (o.op == OP_BENCH) {
        /* Without indirect descriptors a request takes 3 ring entries. */
        unsigned need = o.iodepth * (o.no_indirect ? 3 : 1);

        to.nreqs = o.iodepth;
        to.max_data = o.bs;
        if (o.queue_size) {
            if (o.queue_size < need)
                return cli_usage_error(&blk_cmd,
                                       "--queue-size %u is too small for --iodepth %u (needs %u "
                                       "entries)",
                                       o.queue_size, o.iodepth, need);
            to.queue_size = o.queue_size;
        } else {
            to.queue_size = pow2_at_least(need > DEFAULT_QUEUE_SIZE ? need : DEFAULT_QUEUE_SIZE);
            if (to.queue_size > MAX_QUEUE_SIZE)
                return cli_usage_error(&blk_cmd,
                                       "--iodepth %u needs more than %u ring entries without "
                                       "indirect descriptors",
                                       o.iodepth, MAX_QUEUE_SIZE);
        }
    } else {
        to.nreqs = RW_DEPTH;
        to.max_data = RW_CHUNK;
        to.queue_size = o.queue_size ? o.queue_size : DEFAULT_QUEUE_SIZE;
        if (to.queue_size < RW_DEPTH * 3)
            to.nreqs = 1;
    }

    ts_init(&s, &to);
    /* The disk is checked between reading its config and handing memory
     * and rings to the back-end, so a refused disk costs no activation. */
    r = ts_open(&s, o.socket);
    if (r == 0)
        r = ts_driver(&s);
    if (r == 0) {
        rc = check_disk(&o, &s);
        if (rc != VUF_EXIT_OK) {
            ts_close(&s);
            return rc;
        }
        r = ts_queues(&s);
    }
    if (r == 0)
        r = ts_activate(&s);
    if (r < 0) {
        rc = fail_session(&o, &s, r);
        ts_close(&s);
        return rc;
    }

    rc = o.op == OP_BENCH ? do_bench(&o, &s) : do_rwv(&o, &s);

    /* Stop the rings before the memory goes away; a failure here is only
     * reported (the device is torn down either way). */
    r = ts_reset(&s);
    if (r < 0 && rc == VUF_EXIT_OK)
        rc = fail_session(&o, &s, r);
    ts_close(&s);
    return cli_stdout_ok(&blk_cmd) ? rc : VUF_EXIT_FAIL;
}
