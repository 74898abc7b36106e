/* SPDX-License-Identifier: MIT */
/*
 * `vuf net`: be the VMM of a vhost-user-net back-end with a user-space
 * virtio-net driver (vuf/virtio_net.h) in this process: connect, make the
 * front-end device, give it guest memory and N queue pairs, post RX
 * buffers, activate, then ping (every byte of every frame checked after a
 * macswap back-end returned it) or measure packet rates, and stop the
 * device (reset) before disconnecting.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include <json-c/json.h>

#include "cli_util.h"
#include "net_health.h"
#include "session.h"
#include "vuf/frontend.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_net.h"
#include "vuf/virtq_set.h"
#include "vuf_tool.h"

#define DEFAULT_QUEUE_SIZE 256u
#define MAX_QUEUE_SIZE 1024u
#define DEFAULT_SECONDS 5.0
#define DEFAULT_COUNT 1000u
#define BURST 32u
#define ETH_MIN 60u
#define ETH_MAX 1514u
#define ETH_TYPE 0x88b5  /* IEEE 802 local experimental */
#define MRG_BUF_LEN 512u /* RX buffer with --mrg-rxbuf: big frames span several */
#define WAIT_SLICE_MS 100

enum net_op { OP_NONE, OP_PING, OP_BENCH };
enum bench_mode { MODE_TX, MODE_RX, MODE_RT };
static const char *const mode_names[] = {"tx", "rx", "rt"};

struct net_opts {
    const char *socket;
    enum net_op op;
    int timeout_ms;
    unsigned pairs;
    unsigned queue_size;
    bool busy_poll, no_event_idx, mrg, packed, zero_copy;
    uint32_t size; /* 0: ping cycles through lengths */
    unsigned count;
    enum bench_mode mode;
    double seconds;
    unsigned window;
    bool json;
};

/* Locally administered: the guest's (a) and its peer's (b). */
static const uint8_t mac_a[6] = {0x02, 0x76, 0x75, 0x66, 0x00, 0x0a};
static const uint8_t mac_b[6] = {0x02, 0x76, 0x75, 0x66, 0x00, 0x0b};

void cmd_net_usage(FILE *f)
{
    fprintf(f,
            "usage: vuf net SOCKET ping  [--count N] [--size BYTES]\n"
            "       vuf net SOCKET bench [--mode tx|rx|rt] [--size BYTES] [--seconds S]\n"
            "                            [--window N] [--zero-copy] [--json]\n"
            "       common: [--queue-pairs N] [--busy-poll] [--mrg-rxbuf] [--queue-size N]\n"
            "               [--no-event-idx] [--timeout-ms N] [--ring split|packed]\n"
            "\n"
            "Act as the VMM of the vhost-user-net back-end listening on SOCKET, with a\n"
            "user-space virtio-net driver: connect, negotiate, ack VERSION_1 (and\n"
            "EVENT_IDX, MQ for several pairs, MRG_RXBUF if asked; never CTRL_VQ: the\n"
            "tool has no control queue), share guest memory, post RX buffers, start\n"
            "2N queues (pair k: RX 2k, TX 2k+1), run, stop the queues and disconnect.\n"
            "The config space is read only if the back-end negotiates CONFIG; the\n"
            "MACs are the tool's own (%02x:..:%02x sends to %02x:..:%02x).\n"
            "\n"
            "  ping   send COUNT frames on every queue pair and wait for each to come\n"
            "         back (a macswap back-end: dpdk-testpmd --forward-mode=macswap);\n"
            "         every byte is checked (MACs swapped, the rest as sent). Lengths\n"
            "         cycle from 60 to 1514 bytes unless --size is given. First it\n"
            "         waits for the link: a probe frame every 50 ms until one comes\n"
            "         back on each pair (a back-end may drop what comes before it\n"
            "         forwards).\n"
            "  bench  measure the packet rate for S seconds: tx (frames the back-end\n"
            "         took), rx (frames received; needs a back-end that sends, e.g.\n"
            "         testpmd --forward-mode=txonly), rt (frames back from a macswap\n"
            "         back-end, WINDOW in flight per pair). pps = frames / elapsed;\n"
            "         bps = pps * SIZE * 8 (frame bytes, no header or FCS).\n"
            "\n"
            "options:\n"
            "  --count N         frames per queue pair (ping; default %u)\n"
            "  --size BYTES      frame length, %u..%u (bench default 64)\n"
            "  --mode M          tx (default), rx or rt (bench)\n"
            "  --seconds S       duration (bench; default %g)\n"
            "  --window N        frames in flight per pair in rt (default 128)\n"
            "  --zero-copy       build frames in the TX slots and read received ones\n"
            "                    where the device wrote them (vuf_net_tx_slots/commit,\n"
            "                    vuf_net_rx_burst_zc) instead of copying (bench): each\n"
            "                    TX frame gets its first 26 bytes (MACs, type, pair,\n"
            "                    seq, length) written, the rest stays as filled at the\n"
            "                    start (rt: nothing written, frames go out as filled);\n"
            "                    RX frames are counted, their bytes not read\n"
            "  --json            print one JSON object (bench)\n"
            "  --queue-pairs N   queue pairs to use (default 1; more need MQ)\n"
            "  --busy-poll       spin on the rings in bursts of %u (default: sleep on the\n"
            "                    call eventfds of all queues with one epoll set)\n"
            "  --mrg-rxbuf       ack MRG_RXBUF and post %u-byte RX buffers, so that\n"
            "                    large frames span several\n"
            "  --queue-size N    ring entries, a power of two up to %u (default %u)\n"
            "  --no-event-idx    do not ack VIRTIO_F_EVENT_IDX\n"
            "  --ring LAYOUT     split (default: every back-end has it) or packed\n"
            "                    (virtio 1.2 §2.8; fails if the back-end does not offer it)\n"
            "  --timeout-ms N    connect and reply timeout; also the longest wait for\n"
            "                    a frame (default %d)\n"
            "\n"
            "Exit status: 0 success, 1 failure (a frame lost or wrong, reason on\n"
            "stderr), 2 usage error.\n",
            mac_a[0], mac_a[5], mac_b[0], mac_b[5], DEFAULT_COUNT, ETH_MIN, VUF_NET_FRAME_DEFAULT,
            DEFAULT_SECONDS, BURST, MRG_BUF_LEN, MAX_QUEUE_SIZE, DEFAULT_QUEUE_SIZE,
            VUF_DEFAULT_TIMEOUT_MS);
}

static const struct cli_cmd net_cmd = {"vuf net", cmd_net_usage};

/* ---- parsing ---------------------------------------------------------------- */

enum {
    OPT_COUNT = 256,
    OPT_SIZE,
    OPT_MODE,
    OPT_SECONDS,
    OPT_WINDOW,
    OPT_JSON,
    OPT_PAIRS,
    OPT_BUSY,
    OPT_MRG,
    OPT_QSIZE,
    OPT_NO_EIDX,
    OPT_TIMEOUT,
    OPT_RING,
    OPT_ZC,
};

static int parse_option(struct net_opts *o, int c)
{
    unsigned v;

    switch (c) {
    case OPT_COUNT:
        if (!cli_parse_uint(optarg, 1, 100000000, &o->count))
            return cli_usage_error(&net_cmd, "--count wants 1..100000000, not '%s'", optarg);
        return 0;
    case OPT_SIZE:
        if (!cli_parse_uint(optarg, ETH_MIN, VUF_NET_FRAME_DEFAULT, &o->size))
            return cli_usage_error(&net_cmd, "--size wants %u..%u, not '%s'", ETH_MIN,
                                   VUF_NET_FRAME_DEFAULT, optarg);
        return 0;
    case OPT_MODE:
        for (unsigned m = 0; m < 3; m++)
            if (strcmp(optarg, mode_names[m]) == 0) {
                o->mode = (enum bench_mode)m;
                return 0;
            }
        return cli_usage_error(&net_cmd, "--mode wants tx, rx or rt, not '%s'", optarg);
    case OPT_SECONDS: {
        char *end;

        errno = 0;
        o->seconds = strtod(optarg, &end);
        if (errno || *end || !(o->seconds > 0) || o->seconds > 86400)
            return cli_usage_error(&net_cmd, "--seconds wants a duration > 0, not '%s'", optarg);
        return 0;
    }
    case OPT_WINDOW:
        if (!cli_parse_uint(optarg, 1, MAX_QUEUE_SIZE, &o->window))
            return cli_usage_error(&net_cmd, "--window wants 1..%u, not '%s'", MAX_QUEUE_SIZE,
                                   optarg);
        return 0;
    case OPT_JSON:
        o->json = true;
        return 0;
    case OPT_PAIRS:
        if (!cli_parse_uint(optarg, 1, VUF_FRONTEND_MAX_QUEUES / 2, &o->pairs))
            return cli_usage_error(&net_cmd, "--queue-pairs wants 1..%u, not '%s'",
                                   VUF_FRONTEND_MAX_QUEUES / 2, optarg);
        return 0;
    case OPT_RING:
        if (strcmp(optarg, "split") && strcmp(optarg, "packed"))
            return cli_usage_error(&net_cmd, "--ring wants split or packed, not '%s'", optarg);
        o->packed = !strcmp(optarg, "packed");
        return 0;
    case OPT_BUSY:
        o->busy_poll = true;
        return 0;
    case OPT_ZC:
        o->zero_copy = true;
        return 0;
    case OPT_MRG:
        o->mrg = true;
        return 0;
    case OPT_QSIZE:
        if (!cli_parse_uint(optarg, 2, MAX_QUEUE_SIZE, &v) || (v & (v - 1)))
            return cli_usage_error(&net_cmd, "--queue-size wants a power of two 2..%u, not '%s'",
                                   MAX_QUEUE_SIZE, optarg);
        o->queue_size = v;
        return 0;
    case OPT_NO_EIDX:
        o->no_event_idx = true;
        return 0;
    case OPT_TIMEOUT:
        if (!cli_parse_uint(optarg, 1, INT_MAX, &v))
            return cli_usage_error(&net_cmd, "--timeout-ms wants a number > 0, not '%s'", optarg);
        o->timeout_ms = (int)v;
        return 0;
    default:
        return -1;
    }
}

static int parse_args(int argc, char **argv, struct net_opts *o, bool *help)
{
    static const struct option longopts[] = {
        {"count", required_argument, NULL, OPT_COUNT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"mode", required_argument, NULL, OPT_MODE},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"json", no_argument, NULL, OPT_JSON},
        {"queue-pairs", required_argument, NULL, OPT_PAIRS},
        {"busy-poll", no_argument, NULL, OPT_BUSY},
        {"ring", required_argument, NULL, OPT_RING},
        {"zero-copy", no_argument, NULL, OPT_ZC},
        {"mrg-rxbuf", no_argument, NULL, OPT_MRG},
        {"queue-size", required_argument, NULL, OPT_QSIZE},
        {"no-event-idx", no_argument, NULL, OPT_NO_EIDX},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, r;

    memset(o, 0, sizeof(*o));
    o->timeout_ms = VUF_DEFAULT_TIMEOUT_MS;
    o->pairs = 1;
    o->queue_size = DEFAULT_QUEUE_SIZE;
    o->count = DEFAULT_COUNT;
    o->seconds = DEFAULT_SECONDS;
    o->window = 128;
    *help = false;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') {
            *help = true;
            return 0;
        }
        r = parse_option(o, c);
        if (r < 0)
            return cli_option_error(&net_cmd, c, argv);
        if (r)
            return r;
    }
    {
        static const char *const ops[] = {"ping", "bench"};
        unsigned op;

        r = cli_socket_and_op(&net_cmd, argc, argv, ops, 2, "ping or bench", &o->socket, &op);
        if (r)
            return r;
        o->op = op == 0 ? OP_PING : OP_BENCH;
    }
    if (o->op == OP_BENCH && !o->size)
        o->size = 64;
    return 0;
}

/* ---- the device ------------------------------------------------------------- */

struct net_run {
    const struct net_opts *o;
    struct ts_session s;
    struct vuf_net **net; /* one per pair */
    struct vuf_virtq_set *set;
    uint32_t zc_seq;   /* --zero-copy: sequence number of the next frame */
    uint64_t zc_bytes; /* --zero-copy: bytes received */
};

static bool crashed(struct net_run *nr)
{
    return __atomic_load_n(&nr->s.crashed, __ATOMIC_ACQUIRE) != 0;
}

static int fail_msg(struct net_run *nr, const char *step, int err)
{
    fprintf(stderr, "vuf net: %s: %s: %s\n", nr->o->socket, step, vuf_strerror(err));
    return VUF_EXIT_FAIL;
}

/* Every pair's queues and driver unbroken (net_health.h); else say which. */
static int pairs_healthy(struct net_run *nr)
{
    char why[160];

    for (unsigned p = 0; p < nr->o->pairs; p++)
        if (net_health(nr->net[p], nr->s.vq[vuf_net_rx_index(p)], nr->s.vq[vuf_net_tx_index(p)],
                       why, sizeof(why)) < 0) {
            fprintf(stderr, "vuf net: %s: pair %u: %s\n", nr->o->socket, p, why);
            return VUF_EXIT_FAIL;
        }
    return 0;
}

/* Per pair: the rings (2 per pair), RX buffers and TX slots. */
static uint64_t net_mem(const struct net_opts *o)
{
    uint64_t rx =
        (uint64_t)o->queue_size * (o->mrg ? MRG_BUF_LEN : 12 + VUF_NET_FRAME_DEFAULT + 64);
    uint64_t tx = (uint64_t)o->queue_size * (12 + VUF_NET_FRAME_DEFAULT + 64);

    return (rx + tx) * o->pairs;
}

static int net_start(struct net_run *nr)
{
    const struct net_opts *o = nr->o;
    struct ts_opts to = {
        .timeout_ms = o->timeout_ms,
        .queues = 2 * o->pairs,
        .queue_size = o->queue_size,
        .no_event_idx = o->no_event_idx,
        .no_indirect = true, /* one or two descriptors per frame */
        .busy_poll = o->busy_poll,
        .packed = o->packed,
        .device_type = VUF_DEV_NET,
        .extra_mem = net_mem(o),
    };
    struct ts_session *s = &nr->s;
    int r;

    /* MQ without CTRL_VQ: the spec ties them, but vhost-user back-ends
     * (DPDK) drop every pair but the first unless MQ is acked, and the
     * tool never sends control commands. */
    if (o->pairs > 1)
        to.net_features |= VUF_BIT(VUF_NET_F_MQ);
    if (o->mrg)
        to.net_features |= VUF_BIT(VUF_NET_F_MRG_RXBUF);
    ts_init(s, &to);
    r = ts_open(s, o->socket);
    if (r == 0)
        r = ts_driver(s);
    if (r < 0)
        return fail_msg(nr, s->failed, r);
    if (o->pairs > 1 && !(s->acked & VUF_BIT(VUF_NET_F_MQ))) {
        fprintf(stderr, "vuf net: %s: %u queue pairs asked, but the back-end does not offer MQ\n",
                o->socket, o->pairs);
        return VUF_EXIT_FAIL;
    }
    if (o->mrg && !(s->acked & VUF_BIT(VUF_NET_F_MRG_RXBUF))) {
        fprintf(stderr, "vuf net: %s: the back-end does not offer MRG_RXBUF\n", o->socket);
        return VUF_EXIT_FAIL;
    }
    r = ts_queues(s);
    if (r < 0)
        return fail_msg(nr, s->failed, r);
    nr->net = calloc(o->pairs, sizeof(*nr->net));
    if (!nr->net)
        return fail_msg(nr, "driver set-up", -ENOMEM);
    r = vuf_virtq_set_new(&nr->set);
    if (r < 0)
        return fail_msg(nr, "queue set", r);
    for (unsigned p = 0; p < o->pairs; p++) {
        struct vuf_net_opts no = {
            .features = s->acked,
            .rx_buf_len = o->mrg ? MRG_BUF_LEN : 0,
        };

        r = vuf_net_new(s->vq[vuf_net_rx_index(p)], s->vq[vuf_net_tx_index(p)], &no, &nr->net[p]);
        if (r == 0)
            r = vuf_net_rx_fill(nr->net[p]);
        if (r >= 0)
            r = vuf_virtq_set_add(nr->set, s->vq[vuf_net_rx_index(p)]);
        if (r == 0)
            r = vuf_virtq_set_add(nr->set, s->vq[vuf_net_tx_index(p)]);
        if (r < 0)
            return fail_msg(nr, "driver set-up", r);
        vuf_net_set_busy_poll(nr->net[p], o->busy_poll);
    }
    r = ts_activate(s);
    return r < 0 ? fail_msg(nr, s->failed, r) : VUF_EXIT_OK;
}

static void net_stop(struct net_run *nr)
{
    if (nr->s.active)
        (void)ts_reset(&nr->s);
    for (unsigned p = 0; nr->net && p < nr->o->pairs; p++)
        vuf_net_free(nr->net[p]);
    free(nr->net);
    vuf_virtq_set_free(nr->set); /* before the queues it names */
    ts_close(&nr->s);
}

/* Nothing to do on any pair: spin (busy poll) or sleep on every queue's
 * call fd for a slice. 0, or the exit code of a failure. */
static int idle(struct net_run *nr)
{
    struct vuf_virtq *ready[4];
    int r;

    if (crashed(nr)) {
        fprintf(stderr, "vuf net: %s: the back-end hung up\n", nr->o->socket);
        return VUF_EXIT_FAIL;
    }
    if (nr->o->busy_poll)
        return 0;
    r = vuf_virtq_set_wait(nr->set, WAIT_SLICE_MS, ready, 4);
    if (r < 0 && r != -ETIMEDOUT)
        return fail_msg(nr, "waiting for the queues", r);
    /* Awake: calls off while the rings are being processed (NAPI-like);
     * the next wait asks for them again. */
    for (unsigned p = 0; p < nr->o->pairs; p++)
        vuf_net_set_busy_poll(nr->net[p], true);
    return 0;
}

/* ---- frames ------------------------------------------------------------------ */

static uint32_t ping_len(const struct net_opts *o, uint32_t seq)
{
    static const uint16_t lens[8] = {ETH_MIN, ETH_MAX, 64, 128, 333, 777, 1024, 1500};

    return o->size ? o->size : lens[seq % 8] - (seq % 8 > 1 ? (seq / 8) % 4 : 0);
}

/* dst, src, ethertype, "VUFN", pair, seq, length, then bytes of (pair,
 * seq). `back`: as a macswap back-end returns it. */
static void frame_header(uint8_t *p, uint32_t len, uint16_t pair, uint32_t seq, bool back)
{
    uint16_t l16 = (uint16_t)len;

    memcpy(p, back ? mac_a : mac_b, 6);
    memcpy(p + 6, back ? mac_b : mac_a, 6);
    p[12] = ETH_TYPE >> 8;
    p[13] = ETH_TYPE & 0xff;
    memcpy(p + 14, "VUFN", 4);
    memcpy(p + 18, &pair, 2);
    memcpy(p + 20, &seq, 4);
    memcpy(p + 24, &l16, 2);
}

static void build_frame(uint8_t *p, uint32_t len, uint16_t pair, uint32_t seq, bool back)
{
    frame_header(p, len, pair, seq, back);
    for (uint32_t i = 26; i < len; i++)
        p[i] = (uint8_t)(i * 31u + seq * 7u + pair * 113u + (i >> 8));
}

/* ---- ping -------------------------------------------------------------------- */

struct ping_pair {
    uint32_t sent, back;
    uint8_t *seen; /* one byte per seq */
    uint32_t probes_sent, probes_back;
};

/* A link probe (ping_wait_link): our header with "VUFP" for "VUFN". */
#define PROBE_EVERY_MS 50
static const char probe_magic[4] = {'V', 'U', 'F', 'P'};

static int ping_check(struct net_run *nr, unsigned p, struct ping_pair *pp, const uint8_t *fr,
                      uint32_t len)
{
    static uint8_t want[VUF_NET_FRAME_DEFAULT];
    uint16_t pair;
    uint32_t seq;

    if (len >= 26 && memcmp(fr + 14, probe_magic, 4) == 0) {
        pp->probes_back++; /* a late probe: not one of the COUNT frames */
        return 0;
    }
    if (len < 26 || memcmp(fr + 14, "VUFN", 4) != 0) {
        fprintf(stderr, "vuf net: pair %u: a %u-byte frame that is not ours came back\n", p, len);
        return VUF_EXIT_FAIL;
    }
    memcpy(&pair, fr + 18, 2);
    memcpy(&seq, fr + 20, 4);
    if (pair != p || seq >= nr->o->count || pp->seen[seq]) {
        fprintf(stderr, "vuf net: pair %u: frame %u of pair %u came back (%s)\n", p, seq, pair,
                pair != p             ? "wrong pair"
                : seq >= nr->o->count ? "never sent"
                                      : "twice");
        return VUF_EXIT_FAIL;
    }
    if (len != ping_len(nr->o, seq)) {
        fprintf(stderr, "vuf net: pair %u: frame %u came back with %u bytes, sent %u\n", p, seq,
                len, ping_len(nr->o, seq));
        return VUF_EXIT_FAIL;
    }
    build_frame(want, len, (uint16_t)p, seq, true);
    for (uint32_t i = 0; i < len; i++)
        if (fr[i] != want[i]) {
            fprintf(stderr, "vuf net: pair %u: frame %u differs at byte %u: 0x%02x, want 0x%02x\n",
                    p, seq, i, fr[i], want[i]);
            return VUF_EXIT_FAIL;
        }
    pp->seen[seq] = 1;
    pp->back++;
    return 0;
}

/* Send what the window allows and check what came back on pair p. Sets
 * *progress when anything moved. */
static int ping_step(struct net_run *nr, unsigned p, struct ping_pair *pp, bool *progress)
{
    static uint8_t txbuf[BURST][VUF_NET_FRAME_DEFAULT], rxbuf[BURST][VUF_NET_FRAME_DEFAULT];
    const unsigned window = 64;
    struct vuf_net_frame f[BURST];
    unsigned n = 0;
    int r;

    r = vuf_net_tx_reclaim(nr->net[p]);
    if (r < 0)
        return fail_msg(nr, "reclaiming TX", r);
    while (n < BURST && pp->sent + n < nr->o->count && pp->sent + n - pp->back < window) {
        uint32_t len = ping_len(nr->o, pp->sent + n);

        build_frame(txbuf[n], len, (uint16_t)p, pp->sent + n, false);
        f[n] = (struct vuf_net_frame){.data = txbuf[n], .len = len};
        n++;
    }
    if (n) {
        r = vuf_net_tx_burst(nr->net[p], f, n, 0);
        if (r < 0)
            return fail_msg(nr, "sending", r);
        pp->sent += (uint32_t)r;
        *progress |= r > 0;
    }
    for (unsigned i = 0; i < BURST; i++)
        f[i] = (struct vuf_net_frame){.data = rxbuf[i], .len = VUF_NET_FRAME_DEFAULT};
    r = vuf_net_rx_burst(nr->net[p], f, BURST);
    if (r < 0)
        return fail_msg(nr, "receiving", r);
    for (int i = 0; i < r; i++) {
        int rc = ping_check(nr, p, pp, f[i].data, f[i].len);

        if (rc)
            return rc;
    }
    *progress |= r > 0;
    return 0;
}

/*
 * Before the COUNT frames go, wait until the back-end forwards on every
 * pair: send a probe every PROBE_EVERY_MS until one comes back, within
 * --timeout-ms. An activated device is not yet a forwarding one: testpmd
 * takes the guest's TX frames before it forwards and frees them (it empties
 * its RX queues when forwarding starts, and its socket is up before that;
 * seconds before on a loaded machine), so frames sent at once never came
 * back. A probe that comes back late is counted and skipped (ping_check).
 */
static int ping_wait_link(struct net_run *nr, struct ping_pair *pp)
{
    static uint8_t probe[ETH_MIN], rxbuf[BURST][VUF_NET_FRAME_DEFAULT];
    const struct net_opts *o = nr->o;
    int64_t start = cli_now_ns(), sent_at = 0;
    struct vuf_net_frame f[BURST];

    for (unsigned p = 0; p < o->pairs; p++) {
        while (pp[p].probes_back == 0) {
            int64_t now = cli_now_ns();
            struct vuf_virtq *ready[4];
            int r;

            if (crashed(nr)) {
                fprintf(stderr, "vuf net: %s: the back-end hung up\n", o->socket);
                return VUF_EXIT_FAIL;
            }
            if (now - start > (int64_t)o->timeout_ms * 1000000) {
                fprintf(stderr,
                        "vuf net: pair %u: none of %u probe frames came back in %d ms: the "
                        "back-end does not forward\n",
                        p, pp[p].probes_sent, o->timeout_ms);
                return VUF_EXIT_FAIL;
            }
            if (now - sent_at >= (int64_t)PROBE_EVERY_MS * 1000000) {
                f[0] = (struct vuf_net_frame){.data = probe, .len = sizeof(probe)};
                frame_header(probe, sizeof(probe), (uint16_t)p, 0, false);
                memcpy(probe + 14, probe_magic, 4);
                r = vuf_net_tx_reclaim(nr->net[p]);
                if (r >= 0)
                    r = vuf_net_tx_burst(nr->net[p], f, 1, 0);
                if (r < 0)
                    return fail_msg(nr, "sending a probe", r);
                pp[p].probes_sent += (uint32_t)r;
                sent_at = now;
            }
            for (unsigned i = 0; i < BURST; i++)
                f[i] = (struct vuf_net_frame){.data = rxbuf[i], .len = VUF_NET_FRAME_DEFAULT};
            r = vuf_net_rx_burst(nr->net[p], f, BURST);
            if (r < 0)
                return fail_msg(nr, "receiving", r);
            for (int i = 0; i < r; i++) {
                int rc = ping_check(nr, p, &pp[p], f[i].data, f[i].len);

                if (rc)
                    return rc;
            }
            if (r == 0 && !o->busy_poll) {
                r = vuf_virtq_set_wait(nr->set, 10, ready, 4);
                if (r < 0 && r != -ETIMEDOUT)
                    return fail_msg(nr, "waiting for the queues", r);
            }
        }
    }
    return 0;
}

static int do_ping(struct net_run *nr)
{
    const struct net_opts *o = nr->o;
    struct ping_pair *pp = calloc(o->pairs, sizeof(*pp));
    int64_t last = cli_now_ns();
    int rc = 0;

    for (unsigned p = 0; pp && p < o->pairs; p++)
        if (!(pp[p].seen = calloc(o->count, 1)))
            rc = fail_msg(nr, "ping", -ENOMEM);
    if (!pp)
        return fail_msg(nr, "ping", -ENOMEM);
    if (!rc)
        rc = ping_wait_link(nr, pp);
    for (bool done = false; !rc && !done;) {
        bool progress = false;

        done = true;
        for (unsigned p = 0; p < o->pairs && !rc; p++) {
            rc = ping_step(nr, p, &pp[p], &progress);
            done &= pp[p].back == o->count;
        }
        if (rc || done)
            break;
        if (progress) {
            last = cli_now_ns();
            continue;
        }
        if (cli_now_ns() - last > (int64_t)o->timeout_ms * 1000000) {
            for (unsigned p = 0; p < o->pairs; p++)
                fprintf(stderr, "vuf net: pair %u: %u sent, %u back after %d ms without progress\n",
                        p, pp[p].sent, pp[p].back, o->timeout_ms);
            rc = VUF_EXIT_FAIL;
            break;
        }
        rc = idle(nr);
    }
    /* Every frame back is not enough: the device may have broken a queue
     * on the way (a TX used entry is never looked at otherwise). */
    if (!rc)
        rc = pairs_healthy(nr);
    for (unsigned p = 0; p < o->pairs; p++) {
        if (!rc)
            printf("pair %u: %u frames sent, %u back, every byte checked\n", p, pp[p].sent,
                   pp[p].back);
        free(pp[p].seen);
    }
    free(pp);
    return rc;
}

/* ---- bench ------------------------------------------------------------------- */

struct bench_result {
    uint64_t frames, tx, rx;
    double elapsed;
    uint64_t *lost; /* rt, per pair: frames given up on (dropped by the back-end) */
    uint64_t stalls;
};

/* rt without progress for this long: the frames in flight were dropped
 * (testpmd drops when our RX ring is full); open the window again. */
#define RT_STALL_NS 50000000

/* Zero-copy receive: the frame is counted and its bytes are left unread,
 * as DPDK's rxonly and io modes leave them (reading one line of each frame
 * the device just wrote costs a transfer from its core: 10-30 % of a round
 * trip here). */
static void bench_rx_zc(void *opaque, const struct iovec *iov, unsigned niov, uint32_t len)
{
    uint64_t *bytes = opaque;

    (void)iov;
    (void)niov;
    *bytes += len;
}

/* Zero-copy send of up to n frames on pair p: in tx mode each slot gets the
 * frame's first 26 bytes; the rest is what the slot held (filled by
 * bench_fill_slots, then the same shape every time). Frames sent, or -errno. */
static int bench_send_zc(struct net_run *nr, unsigned p, unsigned n)
{
    void *slot[BURST];
    uint32_t len[BURST];
    int k = vuf_net_tx_slots(nr->net[p], slot, n);

    if (k <= 0)
        return k;
    /* rt: the frames go out as built at the start, nothing written per
     * frame, as testpmd's io mode forwards its frames untouched (writing
     * one line per frame cost 13 % of a 64-byte round trip). */
    for (int i = 0; i < k; i++) {
        if (nr->o->mode != MODE_RT)
            frame_header(slot[i], nr->o->size, (uint16_t)p, nr->zc_seq++, false);
        len[i] = nr->o->size;
    }
    return vuf_net_tx_commit(nr->net[p], len, (unsigned)k, 0);
}

/* Before a zero-copy bench: a whole frame in every TX slot of every pair. */
static int bench_fill_slots(struct net_run *nr)
{
    for (unsigned p = 0; p < nr->o->pairs; p++) {
        void **slot;
        int k;

        slot = calloc(MAX_QUEUE_SIZE, sizeof(*slot));
        if (!slot)
            return -ENOMEM;
        k = vuf_net_tx_slots(nr->net[p], slot, MAX_QUEUE_SIZE);
        for (int i = 0; i < k; i++)
            build_frame(slot[i], nr->o->size, (uint16_t)p, (uint32_t)i, false);
        free(slot);
        if (k < 0)
            return k;
    }
    return 0;
}

/* One pass over pair p: send (tx, rt), receive (rx, rt). Counts into *b. */
static int bench_step(struct net_run *nr, unsigned p, uint8_t (*frame)[VUF_NET_FRAME_DEFAULT],
                      struct bench_result *b, bool *progress)
{
    const struct net_opts *o = nr->o;
    struct vuf_net_frame f[BURST];
    struct vuf_net_stats st;
    int r;

    if (o->mode != MODE_RX) {
        unsigned n = BURST;

        if (o->mode == MODE_RT) {
            vuf_net_stats(nr->net[p], &st);
            uint64_t inflight = st.tx_frames - st.rx_frames, out;

            /* Frames given up on after a stall may still come back (the
             * stall was the scheduler, not a drop). */
            if (b->lost[p] > inflight)
                b->lost[p] = inflight;
            out = inflight - b->lost[p];
            n = out >= o->window ? 0
                                 : (unsigned)(o->window - out < BURST ? o->window - out : BURST);
        }
        if (n && o->zero_copy) {
            r = bench_send_zc(nr, p, n);
            if (r < 0)
                return fail_msg(nr, "sending", r);
            *progress |= r > 0;
        } else if (n) {
            for (unsigned i = 0; i < n; i++)
                f[i] = (struct vuf_net_frame){.data = frame[i], .len = o->size};
            r = vuf_net_tx_burst(nr->net[p], f, n, 0);
            if (r < 0)
                return fail_msg(nr, "sending", r);
            *progress |= r > 0;
        }
        /* No reclaim pass of its own: sending reclaims when slots run
         * short, as DPDK's virtio PMD does, so that the TX used ring (a
         * line the device keeps writing) is not read on every pass. */
    }
    if (o->zero_copy) {
        r = vuf_net_rx_burst_zc(nr->net[p], bench_rx_zc, &nr->zc_bytes, BURST);
    } else {
        for (unsigned i = 0; i < BURST; i++)
            f[i] = (struct vuf_net_frame){.data = frame[BURST + i], .len = VUF_NET_FRAME_DEFAULT};
        r = vuf_net_rx_burst(nr->net[p], f, BURST);
    }
    if (r < 0)
        return fail_msg(nr, "receiving", r);
    *progress |= r > 0;
    return 0;
}

static int bench_run(struct net_run *nr, struct bench_result *b)
{
    const struct net_opts *o = nr->o;
    uint8_t(*frame)[VUF_NET_FRAME_DEFAULT] = calloc(2 * BURST, sizeof(*frame));
    int64_t t0, end, last;
    bool moved = false; /* progress since the clock was last read */
    int rc = 0;

    memset(b, 0, sizeof(*b));
    b->lost = calloc(o->pairs, sizeof(*b->lost));
    if (!frame || !b->lost) {
        free(frame);
        free(b->lost);
        return fail_msg(nr, "bench", -ENOMEM);
    }
    for (unsigned i = 0; i < BURST; i++)
        build_frame(frame[i], o->size, 0, i, false);
    if (o->zero_copy && (rc = bench_fill_slots(nr)) < 0) {
        free(frame);
        free(b->lost);
        return fail_msg(nr, "bench", rc);
    }
    t0 = last = cli_now_ns();
    end = t0 + (int64_t)(o->seconds * 1e9);
    for (unsigned it = 0; !rc; it++) {
        bool progress = false;
        int64_t now;

        for (unsigned p = 0; p < o->pairs && !rc; p++)
            rc = bench_step(nr, p, frame, b, &progress);
        moved |= progress;
        /* The clock costs more than an empty pass over the rings (it was
         * a quarter of a busy-polling profile): read it every 64 passes
         * unless the pass is about to sleep. */
        if ((progress || o->busy_poll) && (it & 63) != 0)
            continue;
        now = cli_now_ns();
        if (now >= end)
            break;
        if (moved)
            last = now;
        moved = false;
        if (progress)
            continue;
        if (o->mode == MODE_RT && now - last > RT_STALL_NS) {
            for (unsigned p = 0; p < o->pairs; p++) {
                struct vuf_net_stats st;

                vuf_net_stats(nr->net[p], &st);
                b->lost[p] = st.tx_frames - st.rx_frames;
            }
            b->stalls++;
            last = now;
        }
        if (!rc)
            rc = idle(nr);
    }
    free(b->lost);
    b->lost = NULL;
    /* What the back-end took (TX slots it returned) and what it sent. */
    if (!rc)
        rc = pairs_healthy(nr);
    for (unsigned p = 0; p < o->pairs; p++) {
        struct vuf_net_stats st;

        vuf_net_stats(nr->net[p], &st);
        b->tx += st.tx_done;
        b->rx += st.rx_frames;
    }
    b->elapsed = (double)(cli_now_ns() - t0) / 1e9;
    b->frames = o->mode == MODE_TX ? b->tx : b->rx;
    free(frame);
    return rc;
}

static int do_bench(struct net_run *nr)
{
    const struct net_opts *o = nr->o;
    struct bench_result b;
    double pps, bps;
    int rc = bench_run(nr, &b);

    if (rc)
        return rc;
    pps = b.elapsed > 0 ? (double)b.frames / b.elapsed : 0;
    bps = pps * o->size * 8;
    if (o->json) {
        json_object *j = json_object_new_object();

        if (!j)
            return fail_msg(nr, "output", -ENOMEM);
        json_object_object_add(j, "socket", json_object_new_string(o->socket));
        json_object_object_add(j, "mode", json_object_new_string(mode_names[o->mode]));
        json_object_object_add(j, "size", json_object_new_uint64(o->size));
        json_object_object_add(j, "queue_pairs", json_object_new_uint64(o->pairs));
        json_object_object_add(j, "queue_size", json_object_new_uint64(o->queue_size));
        json_object_object_add(j, "busy_poll", json_object_new_boolean(o->busy_poll));
        json_object_object_add(j, "ring", json_object_new_string(o->packed ? "packed" : "split"));
        json_object_object_add(j, "mrg_rxbuf", json_object_new_boolean(o->mrg));
        json_object_object_add(j, "zero_copy", json_object_new_boolean(o->zero_copy));
        json_object_object_add(j, "elapsed_s", json_object_new_double(b.elapsed));
        json_object_object_add(j, "frames", json_object_new_uint64(b.frames));
        json_object_object_add(j, "tx_frames", json_object_new_uint64(b.tx));
        json_object_object_add(j, "rx_frames", json_object_new_uint64(b.rx));
        json_object_object_add(j, "rt_stalls", json_object_new_uint64(b.stalls));
        json_object_object_add(j, "pps", json_object_new_double(pps));
        json_object_object_add(j, "bps", json_object_new_double(bps));
        cli_print_json(j);
    } else {
        printf("%s, %u-byte frames, %u queue pair%s, %s: %.0f frames in %.2f s\n",
               mode_names[o->mode], o->size, o->pairs, o->pairs > 1 ? "s" : "",
               o->busy_poll ? "busy-poll" : "eventfd", (double)b.frames, b.elapsed);
        printf("  %.0f pps, %.1f Mbit/s (frame bytes); tx %" PRIu64 ", rx %" PRIu64 "\n", pps,
               bps / 1e6, b.tx, b.rx);
    }
    return 0;
}

/* ---- main -------------------------------------------------------------------- */

int cmd_net(int argc, char **argv)
{
    struct net_opts o;
    struct net_run nr;
    bool help;
    int rc;

    rc = parse_args(argc, argv, &o, &help);
    if (rc)
        return rc;
    if (help) {
        cmd_net_usage(stdout);
        return VUF_EXIT_OK;
    }
    memset(&nr, 0, sizeof(nr));
    nr.o = &o;
    rc = net_start(&nr);
    if (rc == VUF_EXIT_OK)
        rc = o.op == OP_PING ? do_ping(&nr) : do_bench(&nr);
    net_stop(&nr);
    return cli_stdout_ok(&net_cmd) ? rc : VUF_EXIT_FAIL;
}
