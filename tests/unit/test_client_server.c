/* SPDX-License-Identifier: MIT */
/*
 * vuf_client against vuf_server over a socketpair, and each of them against
 * a hand-driven peer that breaks the protocol on purpose.
 *
 * Three kinds of fixture:
 *   - threaded: client on one end, server loop in a pthread on the other.
 *     The handler records what it saw (header, payload, fds it keeps) under
 *     a mutex; the test waits for the server to finish each message before
 *     looking (srv_sync), so even requests that get no reply are checked.
 *   - raw client: client on one end, the test plays the back-end with
 *     vuf_conn_send/recv. Replies are queued *before* the client call: the
 *     socket buffers them, the client sends, then reads the queued reply.
 *   - raw server: server on one end, driven by vuf_server_process_one()
 *     from the test thread; the test plays the front-end.
 * Every fixture counts the process's fds before setup and after teardown,
 * and the group does the same around the whole suite.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/vuf.h"

/* ------------------------------------------------------------------------ */
/* Log capture                                                              */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
#define NLOG 64
static char warn_log[NLOG][512]; /* the last NLOG warnings, by sequence number */
static int n_warn;
static bool log_verbose;

static void test_sink(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    pthread_mutex_lock(&log_mu);
    if (level <= VUF_LOG_WARN) {
        snprintf(warn_log[n_warn % NLOG], sizeof(warn_log[0]), "%s", msg);
        n_warn++;
    }
    pthread_mutex_unlock(&log_mu);
    if (log_verbose)
        fprintf(stderr, "[vuf %d] %s\n", (int)level, msg);
}

/* A mark in the warning history. */
static int warn_count(void)
{
    int n;

    pthread_mutex_lock(&log_mu);
    n = n_warn;
    pthread_mutex_unlock(&log_mu);
    return n;
}

/* Some warning logged since `mark` contains every needle given. */
static bool warned_since(int mark, const char *needle, const char *needle2)
{
    bool yes = false;

    pthread_mutex_lock(&log_mu);
    if (mark < n_warn - NLOG)
        mark = n_warn - NLOG;
    for (int i = mark; i < n_warn && !yes; i++)
        yes =
            strstr(warn_log[i % NLOG], needle) && (!needle2 || strstr(warn_log[i % NLOG], needle2));
    pthread_mutex_unlock(&log_mu);
    return yes;
}

/* ------------------------------------------------------------------------ */
/* Small fd helpers                                                         */
/* ------------------------------------------------------------------------ */

static int make_memfd(const char *tag, size_t size)
{
    int fd = memfd_create("vuf-test", MFD_CLOEXEC);

    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)size) < 0 || pwrite(fd, tag, strlen(tag), 0) != (ssize_t)strlen(tag)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void assert_fd_has(int fd, const char *tag)
{
    char buf[64] = {0};
    size_t n = strlen(tag);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, n, 0), (ssize_t)n);
    assert_memory_equal(buf, tag, n);
}

static int make_eventfd(unsigned v)
{
    return eventfd(v, EFD_CLOEXEC | EFD_NONBLOCK);
}

/* `theirs` and `mine` name the same eventfd: a write through one is read
 * through the other. */
static void assert_eventfd_linked(int mine, int theirs)
{
    uint64_t v = 0x1122, got = 0;

    assert_true(theirs >= 0 && theirs != mine);
    assert_int_equal(write(theirs, &v, 8), 8);
    assert_int_equal(read(mine, &got, 8), 8);
    assert_int_equal(got, 0x1122);
}

static void assert_eventfd_value(int fd, uint64_t want)
{
    uint64_t got = 0;

    assert_true(fd >= 0);
    assert_int_equal(read(fd, &got, 8), 8);
    assert_int_equal(got, want);
}

/* `theirs` is a received copy of one end of a socketpair whose other end
 * is `other`: bytes written through it arrive there. */
static void assert_socket_linked(int other, int theirs)
{
    char buf[8] = {0};

    assert_true(theirs >= 0);
    assert_int_equal(write(theirs, "ping", 4), 4);
    assert_int_equal(read(other, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "ping", 4);
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

#define NRC 512

struct fx {
    int base_fds;
    enum vuf_channel channel;
    struct vuf_client *cli;
    struct vuf_server *srv;
    struct vuf_conn *raw; /* the test's own end in raw fixtures */

    /* server thread */
    pthread_t thr;
    bool threaded;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned processed, sent;
    int rcs[NRC];

    /* what the handler saw last (fds kept by the handler, owned here) */
    struct vuf_msg seen;
    unsigned calls[VUF_REQ_MAX + 1];

    /* handler behaviour, written under mu */
    int fail_rc;
    bool bad_reply;
    uint64_t u64_for[VUF_REQ_MAX + 1];
};

static void fx_lock(struct fx *f)
{
    pthread_mutex_lock(&f->mu);
}

static void fx_unlock(struct fx *f)
{
    pthread_mutex_unlock(&f->mu);
}

static void fx_set_fail(struct fx *f, int rc)
{
    fx_lock(f);
    f->fail_rc = rc;
    fx_unlock(f);
}

static void fx_set_u64(struct fx *f, uint32_t code, uint64_t v)
{
    fx_lock(f);
    f->u64_for[code] = v;
    fx_unlock(f);
}

/* Close the fds the handler kept from the previous request. mu held. */
static void seen_close_locked(struct fx *f)
{
    vuf_msg_close_fds(&f->seen);
}

/* Take ownership of a kept fd. */
static int seen_take(struct fx *f, unsigned i)
{
    int fd;

    fx_lock(f);
    fd = i < f->seen.nfds ? f->seen.fds[i] : -1;
    if (i < f->seen.nfds)
        f->seen.fds[i] = -1;
    fx_unlock(f);
    return fd;
}

static uint8_t cfg_byte(uint32_t off)
{
    return (uint8_t)(off * 7u + 3u);
}

#define CRYPTO_ID_OFF 1056u

/* Replies for the "always" front-end requests. */
static int fill_frontend_reply(struct fx *f, const struct vuf_msg *req, struct vuf_msg *reply,
                               uint64_t v)
{
    int fd, p[2];

    (void)f;
    switch (req->hdr.request) {
    case VUF_REQ_GET_FEATURES:
    case VUF_REQ_GET_PROTOCOL_FEATURES:
    case VUF_REQ_GET_QUEUE_NUM:
    case VUF_REQ_POSTCOPY_END:
    case VUF_REQ_GET_MAX_MEM_SLOTS:
    case VUF_REQ_GET_STATUS:
    case VUF_REQ_CHECK_DEVICE_STATE:
        reply->payload.u64 = v;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_VRING_BASE:
    case VUF_REQ_GET_VRING_BASE_SKIP_DRAIN:
        reply->payload.state.index = req->payload.state.index;
        reply->payload.state.num = (uint32_t)v;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_CONFIG:
        reply->payload.config.offset = req->payload.config.offset;
        reply->payload.config.size = req->payload.config.size;
        reply->payload.config.flags = req->payload.config.flags;
        for (uint32_t i = 0; i < req->payload.config.size; i++)
            reply->payload.config.region[i] = cfg_byte(req->payload.config.offset + i);
        reply->hdr.size = VUF_CONFIG_HDR_SIZE + req->payload.config.size;
        return 0;
    case VUF_REQ_CREATE_CRYPTO_SESSION: {
        int64_t id = 42;
        memcpy(reply->payload.raw, req->payload.raw, VUF_CRYPTO_SESSION_SIZE);
        memcpy(reply->payload.raw + CRYPTO_ID_OFF, &id, sizeof(id));
        reply->hdr.size = VUF_CRYPTO_SESSION_SIZE;
        return 0;
    }
    case VUF_REQ_POSTCOPY_ADVISE:
        fd = make_eventfd(28);
        if (fd < 0)
            return -errno;
        reply->fds[0] = fd;
        reply->nfds = 1;
        reply->hdr.size = 0;
        return 0;
    case VUF_REQ_GET_INFLIGHT_FD:
        fd = make_memfd("inflight", 4096);
        if (fd < 0)
            return -EIO;
        memset(&reply->payload.inflight, 0, sizeof(reply->payload.inflight));
        reply->payload.inflight.mmap_size = 4096;
        reply->payload.inflight.mmap_offset = 0;
        reply->payload.inflight.num_queues = req->payload.inflight.num_queues;
        reply->payload.inflight.queue_size = req->payload.inflight.queue_size;
        reply->hdr.size = sizeof(struct vuf_inflight);
        reply->fds[0] = fd;
        reply->nfds = 1;
        return 0;
    case VUF_REQ_GET_SHARED_OBJECT:
        fd = make_eventfd(41);
        if (fd < 0)
            return -errno;
        reply->payload.u64 = 0;
        reply->hdr.size = 8;
        reply->fds[0] = fd;
        reply->nfds = 1;
        return 0;
    case VUF_REQ_SET_DEVICE_STATE_FD:
        reply->payload.u64 = v;
        reply->hdr.size = 8;
        if (!(v & VUF_STATE_REPLY_NOFD)) {
            if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
            if (write(p[1], "state", 5) != 5) {
                close(p[0]);
                close(p[1]);
                return -EIO;
            }
            close(p[1]);
            reply->fds[0] = p[0];
            reply->nfds = 1;
        }
        return 0;
    case VUF_REQ_GET_SHMEM_CONFIG:
        memset(&reply->payload.shmem, 0, sizeof(reply->payload.shmem));
        reply->payload.shmem.nregions = 2;
        reply->payload.shmem.memory_sizes[0] = 0x10000;
        reply->payload.shmem.memory_sizes[5] = 0x200000;
        reply->hdr.size = sizeof(struct vuf_shmem_config);
        return 0;
    default:
        return 0; /* ack-type: the server sends the ack */
    }
}

/* One handler for every code: record, then answer per code. */
static int h_all(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct fx *f = opaque;
    uint32_t code = req->hdr.request;
    bool bad;
    uint64_t v;
    int rc, fd;

    fx_lock(f);
    seen_close_locked(f);
    f->seen.hdr = req->hdr;
    memcpy(f->seen.payload.raw, req->payload.raw, req->hdr.size);
    for (unsigned i = 0; i < req->nfds; i++) {
        f->seen.fds[i] = req->fds[i];
        req->fds[i] = -1; /* kept: the test inspects and closes it */
    }
    f->seen.nfds = req->nfds;
    if (code <= VUF_REQ_MAX)
        f->calls[code]++;
    rc = f->fail_rc;
    bad = f->bad_reply;
    v = code <= VUF_REQ_MAX ? f->u64_for[code] : 0;
    fx_unlock(f);

    if (rc)
        return rc;
    if (bad) {
        /* A reply no rule allows: size 3 and, for good measure, an fd. */
        reply->hdr.size = 3;
        fd = make_eventfd(0);
        if (fd >= 0) {
            reply->fds[0] = fd;
            reply->nfds = 1;
        }
        return 0;
    }
    if (f->channel == VUF_CH_BACKEND) {
        if (code == VUF_BREQ_SHARED_OBJECT_LOOKUP) {
            fd = make_eventfd(8);
            if (fd < 0)
                return -errno;
            reply->payload.u64 = 0;
            reply->hdr.size = 8;
            reply->fds[0] = fd;
            reply->nfds = 1;
        }
        return 0;
    }
    return fill_frontend_reply(f, req, reply, v);
}

/* Server-side errors after which the stream is still usable. */
static bool serve_goes_on(int r)
{
    return r == 0 || r == -ENOTSUP || r == -EPROTO || r == -EINVAL || r == -EIO;
}

static void *serve(void *arg)
{
    struct fx *f = arg;
    int r;

    do {
        r = vuf_server_process_one(f->srv);
        fx_lock(f);
        f->rcs[f->processed % NRC] = r;
        f->processed++;
        pthread_cond_broadcast(&f->cv);
        fx_unlock(f);
    } while (serve_goes_on(r));
    return NULL;
}

/* Wait until the server has finished the next message; its return value.
 * Every client call that sends anything sends exactly one message. */
static int srv_sync(struct fx *f)
{
    struct timespec ts;
    int rc = -ETIME;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    fx_lock(f);
    f->sent++;
    while (f->processed < f->sent)
        if (pthread_cond_timedwait(&f->cv, &f->mu, &ts) == ETIMEDOUT)
            break;
    if (f->processed >= f->sent)
        rc = f->rcs[(f->sent - 1) % NRC];
    fx_unlock(f);
    return rc;
}

/* No message is waiting on `c` (within a short grace period). */
static void assert_nothing_pending(struct vuf_conn *c, int wait_ms)
{
    struct pollfd p = {.fd = vuf_conn_fd(c), .events = POLLIN};

    assert_int_equal(poll(&p, 1, wait_ms), 0);
}

enum fx_kind { FX_THREADED, FX_BUILTIN, FX_RAW_CLIENT, FX_RAW_SERVER, FX_BACKEND_CHANNEL };

#define TEST_FEATURES \
    ((1ull << VUF_VHOST_F_PROTOCOL_FEATURES) | (1ull << VUF_VHOST_F_LOG_ALL) | 0x3ull)
#define TEST_PFEATURES VUF_PROTO_KNOWN_MASK

static void fill_handlers(struct vuf_server_config *cfg, struct fx *f)
{
    for (unsigned i = 1; i <= VUF_SERVER_MAX_CODE; i++)
        cfg->handlers[i] = h_all;
    cfg->opaque = f;
}

static int fx_setup(void **state, enum fx_kind kind)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct vuf_server_config cfg;
    struct vuf_conn *a = NULL, *b = NULL;
    int peer = -1;

    if (!f)
        return -1;
    f->base_fds = tu_count_fds();
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->seen.nfds = 0;
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        f->seen.fds[i] = -1;
    f->u64_for[VUF_REQ_GET_FEATURES] = TEST_FEATURES;
    f->u64_for[VUF_REQ_GET_PROTOCOL_FEATURES] = TEST_PFEATURES;

    memset(&cfg, 0, sizeof(cfg));
    cfg.channel = VUF_CH_FRONTEND;
    cfg.features = TEST_FEATURES;
    cfg.protocol_features = TEST_PFEATURES;
    f->channel = VUF_CH_FRONTEND;

    if (kind == FX_BACKEND_CHANNEL) {
        f->channel = VUF_CH_BACKEND;
        fill_handlers(&cfg, f);
        /* Leave IOTLB_MSG (1) unhandled: no built-ins on this channel. */
        cfg.handlers[VUF_BREQ_IOTLB_MSG] = NULL;
        cfg.channel = VUF_CH_FRONTEND; /* must be ignored */
        if (vuf_server_new_backend_channel(&cfg, &f->srv, &peer) != 0)
            return -1;
        if (vuf_conn_adopt(peer, &f->raw) != 0)
            return -1;
        vuf_conn_set_channel(f->raw, VUF_CH_BACKEND);
        vuf_conn_set_timeout(f->raw, 1000);
        vuf_conn_set_timeout(vuf_server_conn(f->srv), 1000);
        *state = f;
        return 0;
    }

    if (vuf_conn_pair(&a, &b) != 0)
        return -1;
    vuf_conn_set_timeout(a, 2000);
    vuf_conn_set_timeout(b, 2000);
    switch (kind) {
    case FX_THREADED:
    case FX_BUILTIN:
        if (kind == FX_THREADED)
            fill_handlers(&cfg, f);
        if (vuf_client_new(a, &f->cli) != 0 || vuf_server_new(b, &cfg, &f->srv) != 0)
            return -1;
        vuf_conn_set_timeout(b, -1); /* the loop ends when the client hangs up */
        if (pthread_create(&f->thr, NULL, serve, f) != 0)
            return -1;
        f->threaded = true;
        break;
    case FX_RAW_CLIENT:
        if (vuf_client_new(a, &f->cli) != 0)
            return -1;
        f->raw = b;
        break;
    case FX_RAW_SERVER:
        fill_handlers(&cfg, f);
        /* Unhandled on purpose, for the "no handler" paths. */
        cfg.handlers[VUF_REQ_VRING_KICK] = NULL;
        cfg.handlers[VUF_REQ_GET_QUEUE_NUM] = NULL;
        cfg.handlers[VUF_REQ_RESET_DEVICE] = NULL;
        if (vuf_server_new(b, &cfg, &f->srv) != 0)
            return -1;
        vuf_conn_set_timeout(b, 1000);
        f->raw = a;
        break;
    default:
        return -1;
    }
    *state = f;
    return 0;
}

static int setup_threaded(void **state)
{
    return fx_setup(state, FX_THREADED);
}
static int setup_builtin(void **state)
{
    return fx_setup(state, FX_BUILTIN);
}
static int setup_raw_client(void **state)
{
    return fx_setup(state, FX_RAW_CLIENT);
}
static int setup_raw_server(void **state)
{
    return fx_setup(state, FX_RAW_SERVER);
}
static int setup_backend_channel(void **state)
{
    return fx_setup(state, FX_BACKEND_CHANNEL);
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    int now;

    if (!f)
        return 0;
    /* Hanging up the client ends the server loop with -ECONNRESET. */
    vuf_client_free(f->cli);
    vuf_conn_close(f->raw);
    if (f->threaded)
        pthread_join(f->thr, NULL);
    vuf_server_free(f->srv);
    vuf_msg_close_fds(&f->seen);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    now = tu_count_fds();
    if (now != f->base_fds) {
        print_error("fd leak: %d open before the test, %d after\n", f->base_fds, now);
        free(f);
        return -1;
    }
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Raw peers                                                                */
/* ------------------------------------------------------------------------ */

static void raw_send(struct vuf_conn *c, uint32_t code, uint32_t flags, const void *p,
                     uint32_t size, const int *fds, unsigned nfds)
{
    assert_int_equal(tu_raw_send(c, code, flags, p, size, fds, nfds), 0);
}

#define REPLY (VUF_VERSION | VUF_FLAG_REPLY)
#define REQ VUF_VERSION
#define REQ_NR (VUF_VERSION | VUF_FLAG_NEED_REPLY)

static void raw_reply_u64(struct vuf_conn *c, uint32_t code, uint64_t v)
{
    raw_send(c, code, REPLY, &v, 8, NULL, 0);
}

/* Receive one message the peer sent; closes its fds. */
static void raw_recv(struct vuf_conn *c, struct vuf_msg *m)
{
    assert_int_equal(vuf_conn_recv(c, m), 0);
}

static void raw_expect_request(struct vuf_conn *c, uint32_t code, uint32_t flags, uint32_t size,
                               unsigned nfds)
{
    struct vuf_msg m;

    raw_recv(c, &m);
    assert_int_equal(m.hdr.request, code);
    assert_int_equal(m.hdr.flags, flags);
    assert_int_equal(m.hdr.size, size);
    assert_int_equal(m.nfds, nfds);
    vuf_msg_close_fds(&m);
}

/* Receive a u64 reply to `code` from the server. */
static uint64_t raw_expect_u64_reply(struct vuf_conn *c, uint32_t code)
{
    struct vuf_msg m;

    raw_recv(c, &m);
    assert_int_equal(m.hdr.request, code);
    assert_int_equal(m.hdr.flags, REPLY);
    assert_int_equal(m.hdr.size, 8);
    assert_int_equal(m.nfds, 0);
    return m.payload.u64;
}

/* The client sends only what was negotiated: negotiate `pf` (without
 * REPLY_ACK, so nothing to answer) against the raw peer. */
static void raw_negotiate(struct fx *f, uint64_t pf)
{
    assert_int_equal(vuf_client_set_protocol_features(f->cli, pf), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ, 8, 0);
}

/* ------------------------------------------------------------------------ */
/* Round trips: every request 1-45 through the real server                  */
/* ------------------------------------------------------------------------ */

/* What the client's request looked like to the server's handler. */
static void expect_seen(struct fx *f, uint32_t code, uint32_t size, unsigned nfds, bool acked)
{
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_FRONTEND, code);
    uint32_t want = VUF_VERSION;

    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(f->seen.hdr.request, code);
    assert_int_equal(f->seen.hdr.size, size);
    assert_int_equal(f->seen.nfds, nfds);
    if (acked && rule->reply == VUF_REPLY_ACK)
        want |= VUF_FLAG_NEED_REPLY;
    /* POSTCOPY_END carries NEED_REPLY always (QEMU does; rust-vmm needs it). */
    if (code == VUF_REQ_POSTCOPY_END)
        want |= VUF_FLAG_NEED_REPLY;
    assert_int_equal(f->seen.hdr.flags, want);
}

/* 1, 15, 16: negotiation. The first SET_PROTOCOL_FEATURES never asks
 * for an ack: REPLY_ACK is not in force until it succeeded. */
static void rt_negotiation(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    uint64_t u;

    assert_int_equal(vuf_client_get_features(c, &u), 0);
    assert_int_equal(u, TEST_FEATURES);
    expect_seen(f, VUF_REQ_GET_FEATURES, 0, 0, acked);
    assert_int_equal(vuf_client_get_protocol_features(c, &u), 0);
    assert_int_equal(u, TEST_PFEATURES);
    expect_seen(f, VUF_REQ_GET_PROTOCOL_FEATURES, 0, 0, acked);
    assert_int_equal(vuf_client_set_protocol_features(c, pf), 0);
    expect_seen(f, VUF_REQ_SET_PROTOCOL_FEATURES, 8, 0, false);
    assert_int_equal(f->seen.payload.u64, pf);
    assert_int_equal(vuf_client_protocol_features(c), pf);
    assert_int_equal(vuf_server_protocol_features(f->srv), pf);
    /* ... the second one does, when REPLY_ACK is now in force. */
    assert_int_equal(vuf_client_set_protocol_features(c, pf), 0);
    expect_seen(f, VUF_REQ_SET_PROTOCOL_FEATURES, 8, 0, acked);
}

/* 2 */
static void rt_features(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    assert_int_equal(vuf_client_set_features(c, TEST_FEATURES), 0);
    expect_seen(f, VUF_REQ_SET_FEATURES, 8, 0, acked);
    assert_int_equal(f->seen.payload.u64, TEST_FEATURES);
    assert_int_equal(vuf_server_acked_features(f->srv), TEST_FEATURES);
}

/* 3, 4 */
static void rt_owner(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    assert_int_equal(vuf_client_set_owner(c), 0);
    expect_seen(f, VUF_REQ_SET_OWNER, 0, 0, acked);
    assert_int_equal(vuf_client_reset_owner(c), 0);
    expect_seen(f, VUF_REQ_RESET_OWNER, 0, 0, acked);
}

/* 5: two regions; the server's copies of the fds read the same files. */
static void rt_mem_table(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int memfd0, memfd1;

    {
        struct vuf_mem_region r[2] = {
            {.guest_phys_addr = 0,
             .memory_size = 0x1000,
             .userspace_addr = 0x7f0000000000,
             .mmap_offset = 0},
            {.guest_phys_addr = 0x100000,
             .memory_size = 0x2000,
             .userspace_addr = 0x7f0000100000,
             .mmap_offset = 0x1000},
        };
        int fds[2];
        memfd0 = make_memfd("region0", 0x1000);
        memfd1 = make_memfd("region1", 0x3000);
        fds[0] = memfd0;
        fds[1] = memfd1;
        assert_int_equal(vuf_client_set_mem_table(c, r, fds, 2), 0);
        expect_seen(f, VUF_REQ_SET_MEM_TABLE, VUF_MEM_TABLE_SIZE(2), 2, acked);
        assert_int_equal(f->seen.payload.mem.nregions, 2);
        assert_int_equal(f->seen.payload.mem.padding, 0);
        assert_memory_equal(f->seen.payload.mem.regions, r, sizeof(r));
        assert_fd_has(f->seen.fds[0], "region0");
        assert_fd_has(f->seen.fds[1], "region1");
        /* the client only borrowed them */
        assert_fd_has(memfd0, "region0");
        close(memfd0);
        close(memfd1);
    }
}

/* 6: with LOG_SHMFD the log fd rides along and the client waits. */
static void rt_log_base(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;

    if (pf & VUF_PROTO_MASK(LOG_SHMFD)) {
        fd = make_memfd("log", 0x2000);
        assert_int_equal(vuf_client_set_log_base(c, 0x2000, 0x100, fd), 0);
        expect_seen(f, VUF_REQ_SET_LOG_BASE, 16, 1, false);
        assert_fd_has(f->seen.fds[0], "log");
        close(fd);
    } else {
        assert_int_equal(vuf_client_set_log_base(c, 0x2000, 0x100, -1), 0);
        expect_seen(f, VUF_REQ_SET_LOG_BASE, 16, 0, false);
    }
    assert_int_equal(f->seen.payload.log.mmap_size, 0x2000);
    assert_int_equal(f->seen.payload.log.mmap_offset, 0x100);
}

/* 7 */
static void rt_log_fd(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int efd;

    efd = make_eventfd(0);
    assert_int_equal(vuf_client_set_log_fd(c, efd), 0);
    expect_seen(f, VUF_REQ_SET_LOG_FD, 0, 1, acked);
    assert_eventfd_linked(efd, f->seen.fds[0]);
    close(efd);
}

/* 8, 9, 10, 11 */
static void rt_vring_setup(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    uint32_t base;

    assert_int_equal(vuf_client_set_vring_num(c, 1, 256), 0);
    expect_seen(f, VUF_REQ_SET_VRING_NUM, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 1);
    assert_int_equal(f->seen.payload.state.num, 256);
    {
        struct vuf_vring_addr a = {.index = 1,
                                   .flags = VUF_VRING_F_LOG,
                                   .desc = 0x10000,
                                   .used = 0x12000,
                                   .avail = 0x11000,
                                   .log = 0x20000};
        assert_int_equal(vuf_client_set_vring_addr(c, &a), 0);
        expect_seen(f, VUF_REQ_SET_VRING_ADDR, 40, 0, acked);
        assert_memory_equal(&f->seen.payload.addr, &a, sizeof(a));
    }
    assert_int_equal(vuf_client_set_vring_base(c, 1, 0x1234), 0);
    expect_seen(f, VUF_REQ_SET_VRING_BASE, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 1);
    assert_int_equal(f->seen.payload.state.num, 0x1234);
    fx_set_u64(f, VUF_REQ_GET_VRING_BASE, 0x4321);
    assert_int_equal(vuf_client_get_vring_base(c, 1, &base), 0);
    assert_int_equal(base, 0x4321);
    expect_seen(f, VUF_REQ_GET_VRING_BASE, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 1);
    assert_int_equal(f->seen.payload.state.num, 0);
}

/* 12, 13, 14: the eventfd reaches the server; NOFD when fd is -1. */
static void rt_vring_fds(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int efd;

    efd = make_eventfd(0);
    assert_int_equal(vuf_client_set_vring_kick(c, 1, efd), 0);
    expect_seen(f, VUF_REQ_SET_VRING_KICK, 8, 1, acked);
    assert_int_equal(f->seen.payload.u64, 1);
    assert_eventfd_linked(efd, f->seen.fds[0]);
    assert_int_equal(vuf_client_set_vring_kick(c, 2, -1), 0);
    expect_seen(f, VUF_REQ_SET_VRING_KICK, 8, 0, acked);
    assert_int_equal(f->seen.payload.u64, 2 | VUF_VRING_NOFD);
    assert_int_equal(vuf_client_set_vring_call(c, 255, efd), 0);
    expect_seen(f, VUF_REQ_SET_VRING_CALL, 8, 1, acked);
    assert_int_equal(f->seen.payload.u64, 255);
    assert_eventfd_linked(efd, f->seen.fds[0]);
    assert_int_equal(vuf_client_set_vring_err(c, 0, efd), 0);
    expect_seen(f, VUF_REQ_SET_VRING_ERR, 8, 1, acked);
    assert_int_equal(f->seen.payload.u64, 0);
    assert_eventfd_linked(efd, f->seen.fds[0]);
    close(efd);
}

/* 17, 18, 19, 20 */
static void rt_queues_net(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    uint64_t u;

    fx_set_u64(f, VUF_REQ_GET_QUEUE_NUM, 4);
    assert_int_equal(vuf_client_get_queue_num(c, &u), 0);
    assert_int_equal(u, 4);
    expect_seen(f, VUF_REQ_GET_QUEUE_NUM, 0, 0, acked);
    assert_int_equal(vuf_client_set_vring_enable(c, 3, true), 0);
    expect_seen(f, VUF_REQ_SET_VRING_ENABLE, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 3);
    assert_int_equal(f->seen.payload.state.num, 1);
    {
        const uint8_t mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
        assert_int_equal(vuf_client_send_rarp(c, mac), 0);
        expect_seen(f, VUF_REQ_SEND_RARP, 8, 0, acked);
        assert_memory_equal(f->seen.payload.raw, mac, 6);
        assert_int_equal(f->seen.payload.raw[6], 0);
        assert_int_equal(f->seen.payload.raw[7], 0);
    }
    assert_int_equal(vuf_client_net_set_mtu(c, 1500), 0);
    expect_seen(f, VUF_REQ_NET_SET_MTU, 8, 0, acked);
    assert_int_equal(f->seen.payload.u64, 1500);
}

/* 21: a socket the server can talk through. */
static void rt_backend_req(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int sp[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    assert_int_equal(vuf_client_set_backend_req_fd(c, sp[0]), 0);
    expect_seen(f, VUF_REQ_SET_BACKEND_REQ_FD, 0, 1, acked);
    assert_socket_linked(sp[1], f->seen.fds[0]);
    close(sp[0]);
    close(sp[1]);
}

/* 22, 23 */
static void rt_iotlb_endian(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    {
        struct vuf_iotlb_msg m = {
            .iova = 0x1000, .size = 0x2000, .uaddr = 0x7f0000000000, .perm = 3, .type = 2};
        assert_int_equal(vuf_client_iotlb_msg(c, &m), 0);
        expect_seen(f, VUF_REQ_IOTLB_MSG, 32, 0, acked);
        assert_memory_equal(&f->seen.payload.iotlb, &m, sizeof(m));
    }
    assert_int_equal(vuf_client_set_vring_endian(c, 0, true), 0);
    expect_seen(f, VUF_REQ_SET_VRING_ENDIAN, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 0);
    assert_int_equal(f->seen.payload.state.num, 1);
}

/* 24, 25 */
static void rt_config(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    {
        uint8_t cfg[16], want[16];
        memset(cfg, 0xee, sizeof(cfg));
        for (unsigned i = 0; i < sizeof(want); i++)
            want[i] = cfg_byte(4 + i);
        assert_int_equal(vuf_client_get_config(c, 4, 0, cfg, sizeof(cfg)), 0);
        assert_memory_equal(cfg, want, sizeof(cfg));
        expect_seen(f, VUF_REQ_GET_CONFIG, VUF_CONFIG_HDR_SIZE + 16, 0, acked);
        assert_int_equal(f->seen.payload.config.offset, 4);
        assert_int_equal(f->seen.payload.config.size, 16);
        assert_int_equal(f->seen.payload.config.flags, 0);

        assert_int_equal(vuf_client_set_config(c, 8, VUF_CONFIG_FLAG_MIGRATION, "\1\2\3\4", 4), 0);
        expect_seen(f, VUF_REQ_SET_CONFIG, VUF_CONFIG_HDR_SIZE + 4, 0, acked);
        assert_int_equal(f->seen.payload.config.offset, 8);
        assert_int_equal(f->seen.payload.config.size, 4);
        assert_int_equal(f->seen.payload.config.flags, VUF_CONFIG_FLAG_MIGRATION);
        assert_memory_equal(f->seen.payload.config.region, "\1\2\3\4", 4);
    }
}

/* 26, 27 */
static void rt_crypto(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    {
        struct vuf_crypto_session s, orig;
        int64_t id;
        for (unsigned i = 0; i < sizeof(s.bytes); i++)
            s.bytes[i] = (uint8_t)i;
        orig = s;
        assert_int_equal(vuf_client_create_crypto_session(c, &s), 0);
        expect_seen(f, VUF_REQ_CREATE_CRYPTO_SESSION, VUF_CRYPTO_SESSION_SIZE, 0, acked);
        assert_memory_equal(f->seen.payload.raw, orig.bytes, sizeof(orig.bytes));
        memcpy(&id, s.bytes + CRYPTO_ID_OFF, sizeof(id));
        assert_int_equal(id, 42);
        assert_memory_equal(s.bytes, orig.bytes, CRYPTO_ID_OFF);
    }
    assert_int_equal(vuf_client_close_crypto_session(c, 77), 0);
    expect_seen(f, VUF_REQ_CLOSE_CRYPTO_SESSION, 8, 0, acked);
    assert_int_equal(f->seen.payload.u64, 77);
}

/* 28, 29, 30 */
static void rt_postcopy(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;

    fd = -1;
    assert_int_equal(vuf_client_postcopy_advise(c, &fd), 0);
    expect_seen(f, VUF_REQ_POSTCOPY_ADVISE, 0, 0, acked);
    assert_eventfd_value(fd, 28);
    close(fd);
    assert_int_equal(vuf_client_postcopy_listen(c), 0);
    expect_seen(f, VUF_REQ_POSTCOPY_LISTEN, 0, 0, acked);
    fx_set_u64(f, VUF_REQ_POSTCOPY_END, 0);
    assert_int_equal(vuf_client_postcopy_end(c), 0);
    expect_seen(f, VUF_REQ_POSTCOPY_END, 0, 0, acked);
}

/* 31, 32 */
static void rt_inflight(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;

    {
        struct vuf_inflight in;
        fd = -1;
        assert_int_equal(vuf_client_get_inflight_fd(c, 2, 128, &in, &fd), 0);
        expect_seen(f, VUF_REQ_GET_INFLIGHT_FD, 24, 0, acked);
        assert_int_equal(f->seen.payload.inflight.num_queues, 2);
        assert_int_equal(f->seen.payload.inflight.queue_size, 128);
        assert_int_equal(in.mmap_size, 4096);
        assert_int_equal(in.mmap_offset, 0);
        assert_fd_has(fd, "inflight");

        assert_int_equal(vuf_client_set_inflight_fd(c, &in, fd), 0);
        expect_seen(f, VUF_REQ_SET_INFLIGHT_FD, 24, 1, acked);
        assert_int_equal(f->seen.payload.inflight.mmap_size, 4096);
        assert_int_equal(f->seen.payload.inflight.num_queues, 2);
        assert_int_equal(f->seen.payload.inflight.queue_size, 128);
        assert_fd_has(f->seen.fds[0], "inflight");
        close(fd);
    }
}

/* 33, 34, 35, 36 */
static void rt_gpu_reset_kick_slots(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    uint64_t u;
    int sp[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    assert_int_equal(vuf_client_gpu_set_socket(c, sp[0]), 0);
    expect_seen(f, VUF_REQ_GPU_SET_SOCKET, 0, 1, acked);
    assert_socket_linked(sp[1], f->seen.fds[0]);
    close(sp[0]);
    close(sp[1]);
    assert_int_equal(vuf_client_reset_device(c), 0);
    expect_seen(f, VUF_REQ_RESET_DEVICE, 0, 0, acked);
    assert_int_equal(vuf_client_vring_kick(c, 5), 0);
    expect_seen(f, VUF_REQ_VRING_KICK, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 5);
    assert_int_equal(f->seen.payload.state.num, 0);
    fx_set_u64(f, VUF_REQ_GET_MAX_MEM_SLOTS, 32);
    assert_int_equal(vuf_client_get_max_mem_slots(c, &u), 0);
    assert_int_equal(u, 32);
    expect_seen(f, VUF_REQ_GET_MAX_MEM_SLOTS, 0, 0, acked);
}

/* 37, 38 */
static void rt_mem_reg(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;

    {
        struct vuf_mem_region r = {.guest_phys_addr = 0x200000,
                                   .memory_size = 0x1000,
                                   .userspace_addr = 0x7f0000200000,
                                   .mmap_offset = 0};
        fd = make_memfd("slot", 0x1000);
        assert_int_equal(vuf_client_add_mem_reg(c, &r, fd), 0);
        expect_seen(f, VUF_REQ_ADD_MEM_REG, 40, 1, acked);
        assert_int_equal(f->seen.payload.mem_single.padding, 0);
        assert_memory_equal(&f->seen.payload.mem_single.region, &r, sizeof(r));
        assert_fd_has(f->seen.fds[0], "slot");
        close(fd);
        assert_int_equal(vuf_client_rem_mem_reg(c, &r), 0);
        expect_seen(f, VUF_REQ_REM_MEM_REG, 40, 0, acked);
        assert_memory_equal(&f->seen.payload.mem_single.region, &r, sizeof(r));
    }
}

/* 39, 40 */
static void rt_status(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    assert_int_equal(vuf_client_set_status(c, 0x0f), 0);
    expect_seen(f, VUF_REQ_SET_STATUS, 8, 0, acked);
    assert_int_equal(f->seen.payload.u64, 0x0f);
    {
        uint8_t st = 0;
        fx_set_u64(f, VUF_REQ_GET_STATUS, 0x07);
        assert_int_equal(vuf_client_get_status(c, &st), 0);
        assert_int_equal(st, 0x07);
        expect_seen(f, VUF_REQ_GET_STATUS, 0, 0, acked);
    }
}

/* 41 */
static void rt_shared_object(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;

    {
        struct vuf_shared_object uuid;
        for (unsigned i = 0; i < 16; i++)
            uuid.uuid[i] = (uint8_t)(0xa0 + i);
        fd = -1;
        assert_int_equal(vuf_client_get_shared_object(c, &uuid, &fd), 0);
        expect_seen(f, VUF_REQ_GET_SHARED_OBJECT, 16, 0, acked);
        assert_memory_equal(f->seen.payload.object.uuid, uuid.uuid, 16);
        assert_eventfd_value(fd, 41);
        close(fd);
    }
}

/* 42: the back-end hands back its own fd; then NOFD. The pipe end we
 * send reaches the server either way. */
static void rt_device_state(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    int fd;
    int p[2];
    char buf[16];

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    fx_set_u64(f, VUF_REQ_SET_DEVICE_STATE_FD, 0);
    fd = -2;
    assert_int_equal(
        vuf_client_set_device_state_fd(c, VUF_STATE_DIR_SAVE, VUF_STATE_PHASE_STOPPED, p[1], &fd),
        0);
    expect_seen(f, VUF_REQ_SET_DEVICE_STATE_FD, 8, 1, acked);
    assert_int_equal(f->seen.payload.dstate.direction, VUF_STATE_DIR_SAVE);
    assert_int_equal(f->seen.payload.dstate.phase, 0);
    assert_true(fd >= 0);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(read(fd, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "state", 5);
    assert_int_equal(read(fd, buf, sizeof(buf)), 0); /* writer closed: EOF */
    close(fd);
    assert_int_equal(write(f->seen.fds[0], "abc", 3), 3);
    assert_int_equal(read(p[0], buf, sizeof(buf)), 3);
    assert_memory_equal(buf, "abc", 3);

    fx_set_u64(f, VUF_REQ_SET_DEVICE_STATE_FD, VUF_STATE_REPLY_NOFD);
    fd = -2;
    assert_int_equal(
        vuf_client_set_device_state_fd(c, VUF_STATE_DIR_LOAD, VUF_STATE_PHASE_STOPPED, p[0], &fd),
        0);
    expect_seen(f, VUF_REQ_SET_DEVICE_STATE_FD, 8, 1, acked);
    assert_int_equal(f->seen.payload.dstate.direction, VUF_STATE_DIR_LOAD);
    assert_int_equal(fd, -1);
    close(p[0]);
    close(p[1]);
}

/* 43, 44, 45 */
static void rt_state_shmem_skip(struct fx *f, struct vuf_client *c, uint64_t pf, bool acked)
{
    uint32_t base;

    fx_set_u64(f, VUF_REQ_CHECK_DEVICE_STATE, 0);
    assert_int_equal(vuf_client_check_device_state(c), 0);
    expect_seen(f, VUF_REQ_CHECK_DEVICE_STATE, 0, 0, acked);
    {
        struct vuf_shmem_config sc;
        memset(&sc, 0xff, sizeof(sc));
        assert_int_equal(vuf_client_get_shmem_config(c, &sc), 0);
        expect_seen(f, VUF_REQ_GET_SHMEM_CONFIG, 0, 0, acked);
        assert_int_equal(sc.nregions, 2);
        assert_int_equal(sc.memory_sizes[0], 0x10000);
        assert_int_equal(sc.memory_sizes[1], 0);
        assert_int_equal(sc.memory_sizes[5], 0x200000);
    }
    fx_set_u64(f, VUF_REQ_GET_VRING_BASE_SKIP_DRAIN, 0x8001);
    assert_int_equal(vuf_client_get_vring_base_skip_drain(c, 2, &base), 0);
    assert_int_equal(base, 0x8001);
    expect_seen(f, VUF_REQ_GET_VRING_BASE_SKIP_DRAIN, 8, 0, acked);
    assert_int_equal(f->seen.payload.state.index, 2);
}

/* One step per request family, in code order. */
static void (*const rt_steps[])(struct fx *, struct vuf_client *, uint64_t, bool) = {
    rt_negotiation,      rt_features,    rt_owner,         rt_mem_table,
    rt_log_base,         rt_log_fd,      rt_vring_setup,   rt_vring_fds,
    rt_queues_net,       rt_backend_req, rt_iotlb_endian,  rt_config,
    rt_crypto,           rt_postcopy,    rt_inflight,      rt_gpu_reset_kick_slots,
    rt_mem_reg,          rt_status,      rt_shared_object, rt_device_state,
    rt_state_shmem_skip,
};

/*
 * Drive every front-end request once. `pf` is negotiated first; NEED_REPLY
 * is expected on ack-type requests iff REPLY_ACK is in pf and need_reply is
 * on; SET_LOG_BASE waits for its reply iff LOG_SHMFD is in pf.
 */
static void run_all_requests(struct fx *f, uint64_t pf, bool need_reply)
{
    bool acked = (pf & VUF_PROTO_MASK(REPLY_ACK)) && need_reply;

    vuf_client_set_need_reply(f->cli, need_reply);
    for (size_t i = 0; i < sizeof(rt_steps) / sizeof(rt_steps[0]); i++)
        rt_steps[i](f, f->cli, pf, acked);

    /* Every code in the table went through the handler. */
    fx_lock(f);
    for (unsigned code = 1; code <= VUF_REQ_MAX; code++) {
        if (f->calls[code] == 0)
            print_error("request %u (%s) never reached the handler\n", code,
                        vuf_request_name(code));
        assert_true(f->calls[code] > 0);
    }
    fx_unlock(f);
}

#define PF_BASE (VUF_PROTO_KNOWN_MASK & ~(VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(LOG_SHMFD)))

static void test_all_requests_plain(void **state)
{
    run_all_requests(*state, PF_BASE, true);
}

static void test_all_requests_reply_ack(void **state)
{
    run_all_requests(*state, PF_BASE | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(LOG_SHMFD), true);
}

/* crosvm's mode: REPLY_ACK negotiated, but the front-end never asks. */
static void test_all_requests_need_reply_off(void **state)
{
    run_all_requests(*state, PF_BASE | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(LOG_SHMFD),
                     false);
}

/* ------------------------------------------------------------------------ */
/* Handler failures seen through the client                                 */
/* ------------------------------------------------------------------------ */

static void test_handler_errors_acked(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    const uint64_t pf = VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(LOG_SHMFD) |
                        VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) |
                        VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(PAGEFAULT) |
                        VUF_PROTO_MASK(SHARED_OBJECT) | VUF_PROTO_MASK(INFLIGHT_SHMFD);
    struct vuf_mem_region r = {.memory_size = 0x1000, .userspace_addr = 0x10000};
    uint8_t cfg[8];
    uint64_t u;
    int fd, efd;

    assert_int_equal(vuf_client_set_protocol_features(c, pf), 0);
    assert_int_equal(srv_sync(f), 0);
    fx_set_fail(f, -EINVAL);

    /* ack-type: the handler's error comes back as a non-zero ack. */
    assert_int_equal(vuf_client_set_features(c, 1), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_server_acked_features(f->srv), 0); /* not recorded */
    assert_int_equal(vuf_client_set_owner(c), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 64), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    efd = make_eventfd(0);
    assert_int_equal(vuf_client_set_vring_kick(c, 0, efd), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    fd = make_memfd("x", 0x1000);
    assert_int_equal(vuf_client_set_mem_table(c, &r, &fd, 1), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_add_mem_reg(c, &r, fd), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_set_config(c, 0, 0, "ab", 2), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    /* SET_LOG_BASE under LOG_SHMFD replies with the handler's status. */
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    /* A failed SET_PROTOCOL_FEATURES changes nothing on either side. */
    assert_int_equal(vuf_client_set_protocol_features(c, 0), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_protocol_features(c), pf);
    assert_int_equal(vuf_server_protocol_features(f->srv), pf);

    /* "always" requests: the protocol's error forms. */
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, sizeof(cfg)), -EIO); /* size 0 */
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_check_device_state(c), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_postcopy_end(c), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    {
        int bfd = -2;
        assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, efd, &bfd), -EIO);
        assert_int_equal(srv_sync(f), -EINVAL);
        assert_int_equal(bfd, -2);
    }
    {
        struct vuf_shared_object o = {{0}};
        int ofd = -2;
        assert_int_equal(vuf_client_get_shared_object(c, &o, &ofd), -EIO);
        assert_int_equal(srv_sync(f), -EINVAL);
    }
    /* A bare u64 has no way to say "error" but its value. */
    assert_int_equal(vuf_client_get_features(c, &u), 0);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(u, (uint64_t)(int64_t)-EINVAL);
    /* The vring-base error form is zeroes: ring 0, base 0. Asking for
     * ring 1 shows the mismatch. */
    {
        uint32_t base = 99;
        assert_int_equal(vuf_client_get_vring_base(c, 1, &base), -EPROTO);
        assert_int_equal(srv_sync(f), -EINVAL);
        assert_int_equal(vuf_client_get_vring_base(c, 0, &base), 0);
        assert_int_equal(srv_sync(f), -EINVAL);
        assert_int_equal(base, 0);
    }
    /* GET_INFLIGHT_FD's error form is all zeroes: "no inflight area". */
    {
        struct vuf_inflight in;
        int ifd = -2;
        assert_int_equal(vuf_client_get_inflight_fd(c, 1, 64, &in, &ifd), 0);
        assert_int_equal(srv_sync(f), -EINVAL);
        assert_int_equal(ifd, -1);
        assert_int_equal(in.mmap_size, 0);
    }

    /* Recovery: the same connection works once the handler does. */
    fx_set_fail(f, 0);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 64), 0);
    assert_int_equal(srv_sync(f), 0);
    close(fd);
    close(efd);
}

static void test_handler_errors_plain(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;

    assert_int_equal(vuf_client_set_protocol_features(c, VUF_PROTO_MASK(DEVICE_STATE)), 0);
    assert_int_equal(srv_sync(f), 0);
    fx_set_fail(f, -EINVAL);
    /* Without REPLY_ACK the front-end cannot know: 0 here, the error stays
     * on the server's side. */
    assert_int_equal(vuf_client_set_vring_num(c, 0, 64), 0);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_set_owner(c), 0);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(vuf_client_check_device_state(c), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
}

/* A handler that builds a reply no rule allows: the server sends the error
 * form instead and closes the fd the handler attached. */
static void test_handler_bad_reply(void **state)
{
    struct fx *f = *state;
    uint64_t u = 0;
    uint8_t cfg[4];

    assert_int_equal(vuf_client_set_protocol_features(f->cli, VUF_PROTO_MASK(CONFIG)), 0);
    assert_int_equal(srv_sync(f), 0);
    fx_lock(f);
    f->bad_reply = true;
    fx_unlock(f);
    assert_int_equal(vuf_client_get_features(f->cli, &u), 0);
    assert_int_equal(srv_sync(f), -EINVAL);
    assert_int_equal(u, (uint64_t)(int64_t)-EINVAL);
    assert_int_equal(vuf_client_get_config(f->cli, 0, 0, cfg, sizeof(cfg)), -EIO);
    assert_int_equal(srv_sync(f), -EINVAL);
    fx_lock(f);
    f->bad_reply = false;
    fx_unlock(f);
    assert_int_equal(vuf_client_get_features(f->cli, &u), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(u, TEST_FEATURES);
}

/* ------------------------------------------------------------------------ */
/* Built-in answers (no handlers installed)                                 */
/* ------------------------------------------------------------------------ */

static void test_builtins(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    uint64_t u;
    uint8_t cfg[4];
    int before;

    assert_int_equal(vuf_client_get_features(c, &u), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(u, TEST_FEATURES);
    assert_int_equal(vuf_client_get_protocol_features(c, &u), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(u, TEST_PFEATURES);
    assert_int_equal(vuf_client_set_protocol_features(c, VUF_PROTO_MASK(REPLY_ACK) |
                                                             VUF_PROTO_MASK(MQ) |
                                                             VUF_PROTO_MASK(CONFIG)),
                     0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(vuf_server_protocol_features(f->srv),
                     VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(CONFIG));
    /* From here on the built-ins ack too. */
    assert_int_equal(vuf_client_set_owner(c), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(vuf_client_set_features(c, 1ull << VUF_VHOST_F_PROTOCOL_FEATURES), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(vuf_server_acked_features(f->srv), 1ull << VUF_VHOST_F_PROTOCOL_FEATURES);

    /* Anything else has no handler: logged, answered with an error. */
    before = warn_count();
    assert_int_equal(vuf_client_set_vring_num(c, 0, 128), -EIO);
    assert_int_equal(srv_sync(f), -ENOTSUP);
    assert_true(warned_since(before, "SET_VRING_NUM", "no handler"));
    assert_int_equal(vuf_client_get_queue_num(c, &u), 0);
    assert_int_equal(srv_sync(f), -ENOTSUP);
    assert_int_equal(u, (uint64_t)(int64_t)-ENOTSUP);
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, sizeof(cfg)), -EIO);
    assert_int_equal(srv_sync(f), -ENOTSUP);
    /* An fd sent to an unhandled request is closed by the server. */
    {
        int efd = make_eventfd(0);
        before = tu_count_fds();
        assert_int_equal(vuf_client_set_vring_call(c, 0, efd), -EIO);
        assert_int_equal(srv_sync(f), -ENOTSUP);
        assert_int_equal(tu_count_fds(), before);
        close(efd);
    }
    /* Still serving. */
    assert_int_equal(vuf_client_get_features(c, &u), 0);
    assert_int_equal(srv_sync(f), 0);
}

/* ------------------------------------------------------------------------ */
/* Client against a misbehaving back-end                                    */
/* ------------------------------------------------------------------------ */

static void test_client_bad_reply_header(void **state)
{
    struct fx *f = *state;
    uint64_t u = 0x55, v = 7;

    /* No REPLY flag. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REQ, &v, 8, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* NEED_REPLY on a reply. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY | VUF_FLAG_NEED_REPLY, &v, 8, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* Version 2, unknown flag bits. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, 0x2 | VUF_FLAG_REPLY, &v, 8, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY | 0x100, &v, 8, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* Another request's code. */
    raw_reply_u64(f->raw, VUF_REQ_GET_PROTOCOL_FEATURES, 7);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* Wrong sizes: short, long, empty. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY, &v, 4, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    {
        uint8_t big[16] = {0};
        raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY, big, 16, NULL, 0);
        assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    }
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY, NULL, 0, NULL, 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* Nothing was written to the output on any failure. */
    assert_int_equal(u, 0x55);
    /* And a correct reply still works on the same stream. */
    raw_reply_u64(f->raw, VUF_REQ_GET_FEATURES, 0x1234);
    assert_int_equal(vuf_client_get_features(f->cli, &u), 0);
    assert_int_equal(u, 0x1234);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
}

/* An fd on a reply whose rule allows none: -EPROTO and the fd is closed. */
static void test_client_extra_fd_closed(void **state)
{
    struct fx *f = *state;
    uint64_t u, v = 1;
    int efd, before;

    before = tu_count_fds();
    efd = make_eventfd(0);
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY, &v, 8, &efd, 1);
    close(efd); /* the socket holds the only reference now */
    assert_int_equal(vuf_client_get_features(f->cli, &u), -EPROTO);
    assert_int_equal(tu_count_fds(), before);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);

    /* Same on an ack. */
    assert_int_equal(vuf_client_set_protocol_features(f->cli, VUF_PROTO_MASK(REPLY_ACK) |
                                                                  VUF_PROTO_MASK(SHARED_OBJECT)),
                     0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ, 8, 0);
    efd = make_eventfd(0);
    v = 0;
    raw_send(f->raw, VUF_REQ_SET_OWNER, REPLY, &v, 8, &efd, 1);
    close(efd);
    assert_int_equal(vuf_client_set_owner(f->cli), -EPROTO);
    assert_int_equal(tu_count_fds(), before);
    raw_expect_request(f->raw, VUF_REQ_SET_OWNER, REQ_NR, 0, 0);

    /* Two fds where at most one is allowed (GET_SHARED_OBJECT). */
    {
        int two[2] = {make_eventfd(0), make_eventfd(0)};
        struct vuf_shared_object o = {{0}};
        int ofd = -2;
        raw_send(f->raw, VUF_REQ_GET_SHARED_OBJECT, REPLY, &v, 8, two, 2);
        close(two[0]);
        close(two[1]);
        assert_int_equal(vuf_client_get_shared_object(f->cli, &o, &ofd), -EPROTO);
        assert_int_equal(ofd, -2);
        assert_int_equal(tu_count_fds(), before);
        raw_expect_request(f->raw, VUF_REQ_GET_SHARED_OBJECT, REQ, 16, 0);
    }
}

static void test_client_acks(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    const uint64_t pf = VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(MQ);

    /* Before REPLY_ACK: no flag, no wait (nothing queued, and it returns). */
    assert_int_equal(vuf_client_set_vring_num(c, 0, 256), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_NUM, REQ, 8, 0);

    /* Negotiation itself is not acked. */
    assert_int_equal(vuf_client_set_protocol_features(c, pf), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ, 8, 0);
    assert_int_equal(vuf_client_protocol_features(c), pf);

    /* Now every ack-type request asks and waits. */
    raw_reply_u64(f->raw, VUF_REQ_SET_VRING_NUM, 0);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 256), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_NUM, REQ_NR, 8, 0);
    raw_reply_u64(f->raw, VUF_REQ_SET_VRING_NUM, 1);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 256), -EIO);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_NUM, REQ_NR, 8, 0);
    raw_reply_u64(f->raw, VUF_REQ_SET_FEATURES, 0); /* bit 30: SET_VRING_ENABLE is legal */
    assert_int_equal(vuf_client_set_features(c, 1ull << VUF_VHOST_F_PROTOCOL_FEATURES), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_FEATURES, REQ_NR, 8, 0);
    raw_reply_u64(f->raw, VUF_REQ_SET_VRING_ENABLE, (uint64_t)(int64_t)-EINVAL);
    assert_int_equal(vuf_client_set_vring_enable(c, 0, true), -EIO);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_ENABLE, REQ_NR, 8, 0);
    /* An ack of the wrong size, or for another request. */
    raw_send(f->raw, VUF_REQ_SET_OWNER, REPLY, "\0\0\0\0", 4, NULL, 0);
    assert_int_equal(vuf_client_set_owner(c), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_SET_OWNER, REQ_NR, 0, 0);
    raw_reply_u64(f->raw, VUF_REQ_SET_VRING_NUM, 0);
    assert_int_equal(vuf_client_set_owner(c), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_SET_OWNER, REQ_NR, 0, 0);

    /* A refused SET_PROTOCOL_FEATURES leaves the recorded set alone. */
    raw_reply_u64(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, 1);
    assert_int_equal(vuf_client_set_protocol_features(c, 0), -EIO);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ_NR, 8, 0);
    assert_int_equal(vuf_client_protocol_features(c), pf);

    /* "always" requests never carry NEED_REPLY. */
    raw_reply_u64(f->raw, VUF_REQ_GET_QUEUE_NUM, 2);
    {
        uint64_t n;
        assert_int_equal(vuf_client_get_queue_num(c, &n), 0);
        assert_int_equal(n, 2);
    }
    raw_expect_request(f->raw, VUF_REQ_GET_QUEUE_NUM, REQ, 0, 0);

    /* need_reply off: back to fire-and-forget. */
    vuf_client_set_need_reply(c, false);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 256), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_NUM, REQ, 8, 0);
    vuf_client_set_need_reply(c, true);

    /* Dropping REPLY_ACK (acked under the old rules) turns it off. */
    raw_reply_u64(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, 0);
    assert_int_equal(vuf_client_set_protocol_features(c, VUF_PROTO_MASK(MQ)), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ_NR, 8, 0);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 256), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_VRING_NUM, REQ, 8, 0);
    assert_nothing_pending(f->raw, 0);
}

static void test_client_log_base(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    int fd = make_memfd("log", 0x1000);

    /* REPLY_ACK alone: SET_LOG_BASE is not an ack-type request. */
    assert_int_equal(vuf_client_set_protocol_features(c, VUF_PROTO_MASK(REPLY_ACK)), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ, 8, 0);
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, -1), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 0);

    /* LOG_SHMFD: the reply is waited for, without NEED_REPLY. */
    raw_reply_u64(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, 0);
    assert_int_equal(
        vuf_client_set_protocol_features(c, VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(LOG_SHMFD)),
        0);
    raw_expect_request(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ_NR, 8, 0);
    raw_reply_u64(f->raw, VUF_REQ_SET_LOG_BASE, 0);
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    raw_reply_u64(f->raw, VUF_REQ_SET_LOG_BASE, 3);
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), -EIO);
    raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    /* rust-vmm back-ends echo the 16-byte log struct: accepted as success. */
    {
        struct vuf_log echo = {.mmap_size = 0x1000, .mmap_offset = 0};
        raw_send(f->raw, VUF_REQ_SET_LOG_BASE, REPLY, &echo, sizeof(echo), NULL, 0);
        assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), 0);
        raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    }
    /* libvhost-user 7.2 (qsd) answers a u64 equal to mmap_size: success. */
    raw_reply_u64(f->raw, VUF_REQ_SET_LOG_BASE, 0x1000);
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), 0);
    raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    /* Any other size is a protocol violation. */
    {
        uint8_t odd[24] = {0};
        raw_send(f->raw, VUF_REQ_SET_LOG_BASE, REPLY, odd, sizeof(odd), NULL, 0);
        assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    }
    /* It really waits: with nothing queued it times out. */
    vuf_conn_set_timeout(vuf_client_conn(c), 100);
    assert_int_equal(vuf_client_set_log_base(c, 0x1000, 0, fd), -ETIMEDOUT);
    raw_expect_request(f->raw, VUF_REQ_SET_LOG_BASE, REQ, 16, 1);
    close(fd);
}

static void test_client_get_config(void **state)
{
    struct fx *f = *state;
    struct vuf_config cfg;
    uint8_t buf[8];
    const uint32_t req_size = VUF_CONFIG_HDR_SIZE + 8;

    raw_negotiate(f, VUF_PROTO_MASK(CONFIG));
    memset(&cfg, 0, sizeof(cfg));
    cfg.offset = 0x10;
    cfg.size = 8;
    memcpy(cfg.region, "ABCDEFGH", 8);

    /* Correct. */
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, &cfg, req_size, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), 0);
    assert_memory_equal(buf, "ABCDEFGH", 8);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);

    /* Size 0: the back-end's refusal. */
    memset(buf, 0, sizeof(buf));
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, NULL, 0, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EIO);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);

    /* Another offset. */
    cfg.offset = 0x14;
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, &cfg, req_size, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);
    cfg.offset = 0x10;

    /* A consistent reply of another size (4 bytes instead of 8). */
    cfg.size = 4;
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + 4, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);

    /* config.size disagrees with the message size. */
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, &cfg, req_size, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);

    /* Too short to hold a config header. */
    raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, &cfg, 6, NULL, 0);
    assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);

    /* A refusal with an fd attached: still a violation, fd closed. */
    {
        int before = tu_count_fds();
        int efd = make_eventfd(0);
        raw_send(f->raw, VUF_REQ_GET_CONFIG, REPLY, NULL, 0, &efd, 1);
        close(efd);
        assert_int_equal(vuf_client_get_config(f->cli, 0x10, 0, buf, 8), -EPROTO);
        assert_int_equal(tu_count_fds(), before);
        raw_expect_request(f->raw, VUF_REQ_GET_CONFIG, REQ, req_size, 0);
    }
}

static void test_client_device_state_fd(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    int p[2], before, efd, bfd;
    uint64_t v;
    char buf[8];

    raw_negotiate(f, VUF_PROTO_MASK(DEVICE_STATE));
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    before = tu_count_fds();

    /* NOFD with an fd. */
    efd = make_eventfd(0);
    v = VUF_STATE_REPLY_NOFD;
    raw_send(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &efd, 1);
    close(efd);
    bfd = -2;
    assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), -EPROTO);
    assert_int_equal(bfd, -2);
    assert_int_equal(tu_count_fds(), before);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);

    /* Neither NOFD nor an fd. */
    raw_reply_u64(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, 0);
    assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);

    /* An error byte, with an fd: -EIO and the fd closed. */
    efd = make_eventfd(0);
    v = 0x5;
    raw_send(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &efd, 1);
    close(efd);
    assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), -EIO);
    assert_int_equal(tu_count_fds(), before);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);
    raw_reply_u64(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, VUF_STATE_REPLY_NOFD | 0x1);
    assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), -EIO);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);

    /* Unknown bits above NOFD. */
    raw_reply_u64(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, VUF_STATE_REPLY_NOFD | 0x10000);
    assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), -EPROTO);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);

    /* NOFD, no fd: keep using our end. */
    raw_reply_u64(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, VUF_STATE_REPLY_NOFD);
    assert_int_equal(vuf_client_set_device_state_fd(c, 1, 0, p[0], &bfd), 0);
    assert_int_equal(bfd, -1);
    raw_expect_request(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REQ, 8, 1);

    /* An fd back, usable: the raw side writes into the pipe it got. */
    {
        struct vuf_msg m;
        int q[2];
        assert_int_equal(pipe2(q, O_CLOEXEC), 0);
        v = 0;
        raw_send(f->raw, VUF_REQ_SET_DEVICE_STATE_FD, REPLY, &v, 8, &q[0], 1);
        close(q[0]);
        assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, p[1], &bfd), 0);
        assert_true(bfd >= 0);
        assert_int_equal(write(q[1], "st", 2), 2);
        assert_int_equal(read(bfd, buf, sizeof(buf)), 2);
        assert_memory_equal(buf, "st", 2);
        close(bfd);
        close(q[1]);
        raw_recv(f->raw, &m);
        assert_int_equal(m.hdr.request, VUF_REQ_SET_DEVICE_STATE_FD);
        assert_int_equal(m.nfds, 1);
        assert_int_equal(write(m.fds[0], "x", 1), 1); /* our p[1], as sent */
        assert_int_equal(read(p[0], buf, 1), 1);
        vuf_msg_close_fds(&m);
    }
    assert_int_equal(tu_count_fds(), before);
    close(p[0]);
    close(p[1]);
}

static void test_client_other_replies(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    int before = tu_count_fds(), fd, efd;
    uint32_t base;
    uint64_t v;

    raw_negotiate(f, PF_BASE);
    /* GET_VRING_BASE for another ring. */
    {
        struct vuf_vring_state st = {.index = 2, .num = 5};
        raw_send(f->raw, VUF_REQ_GET_VRING_BASE, REPLY, &st, 8, NULL, 0);
        assert_int_equal(vuf_client_get_vring_base(c, 1, &base), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_GET_VRING_BASE, REQ, 8, 0);
        raw_send(f->raw, VUF_REQ_GET_VRING_BASE_SKIP_DRAIN, REPLY, &st, 8, NULL, 0);
        assert_int_equal(vuf_client_get_vring_base_skip_drain(c, 2, &base), 0);
        assert_int_equal(base, 5);
        raw_expect_request(f->raw, VUF_REQ_GET_VRING_BASE_SKIP_DRAIN, REQ, 8, 0);
    }
    /* SHMEM config whose nregions disagrees with its sizes. */
    {
        struct vuf_shmem_config sc;
        struct vuf_shmem_config out;
        memset(&sc, 0, sizeof(sc));
        sc.nregions = 2;
        sc.memory_sizes[0] = 0x1000;
        raw_send(f->raw, VUF_REQ_GET_SHMEM_CONFIG, REPLY, &sc, sizeof(sc), NULL, 0);
        assert_int_equal(vuf_client_get_shmem_config(c, &out), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_GET_SHMEM_CONFIG, REQ, 0, 0);
    }
    /* POSTCOPY_ADVISE without the userfaultfd. */
    fd = -2;
    raw_send(f->raw, VUF_REQ_POSTCOPY_ADVISE, REPLY, NULL, 0, NULL, 0);
    assert_int_equal(vuf_client_postcopy_advise(c, &fd), -EPROTO);
    assert_int_equal(fd, -2);
    raw_expect_request(f->raw, VUF_REQ_POSTCOPY_ADVISE, REQ, 0, 0);
    /* GET_INFLIGHT_FD: an area without fd; an fd without area; none. */
    {
        struct vuf_inflight in = {.mmap_size = 4096};
        struct vuf_inflight out;
        raw_send(f->raw, VUF_REQ_GET_INFLIGHT_FD, REPLY, &in, sizeof(in), NULL, 0);
        assert_int_equal(vuf_client_get_inflight_fd(c, 1, 64, &out, &fd), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_GET_INFLIGHT_FD, REQ, 24, 0);
        in.mmap_size = 0;
        efd = make_eventfd(0);
        raw_send(f->raw, VUF_REQ_GET_INFLIGHT_FD, REPLY, &in, sizeof(in), &efd, 1);
        close(efd);
        assert_int_equal(vuf_client_get_inflight_fd(c, 1, 64, &out, &fd), -EPROTO);
        assert_int_equal(tu_count_fds(), before);
        raw_expect_request(f->raw, VUF_REQ_GET_INFLIGHT_FD, REQ, 24, 0);
        raw_send(f->raw, VUF_REQ_GET_INFLIGHT_FD, REPLY, &in, sizeof(in), NULL, 0);
        assert_int_equal(vuf_client_get_inflight_fd(c, 1, 64, &out, &fd), 0);
        assert_int_equal(fd, -1);
        raw_expect_request(f->raw, VUF_REQ_GET_INFLIGHT_FD, REQ, 24, 0);
    }
    /* GET_STATUS beyond a byte. */
    {
        uint8_t st;
        raw_reply_u64(f->raw, VUF_REQ_GET_STATUS, 0x100);
        assert_int_equal(vuf_client_get_status(c, &st), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_GET_STATUS, REQ, 0, 0);
    }
    /* GET_SHARED_OBJECT failure with a dmabuf attached; success without. */
    {
        struct vuf_shared_object o = {{1}};
        efd = make_eventfd(0);
        v = 1;
        raw_send(f->raw, VUF_REQ_GET_SHARED_OBJECT, REPLY, &v, 8, &efd, 1);
        close(efd);
        fd = -2;
        assert_int_equal(vuf_client_get_shared_object(c, &o, &fd), -EIO);
        assert_int_equal(fd, -2);
        assert_int_equal(tu_count_fds(), before);
        raw_expect_request(f->raw, VUF_REQ_GET_SHARED_OBJECT, REQ, 16, 0);
        raw_reply_u64(f->raw, VUF_REQ_GET_SHARED_OBJECT, 0);
        assert_int_equal(vuf_client_get_shared_object(c, &o, &fd), 0);
        assert_int_equal(fd, -1);
        raw_expect_request(f->raw, VUF_REQ_GET_SHARED_OBJECT, REQ, 16, 0);
    }
    /* CHECK_DEVICE_STATE and POSTCOPY_END report failure as non-zero. */
    raw_reply_u64(f->raw, VUF_REQ_CHECK_DEVICE_STATE, 1);
    assert_int_equal(vuf_client_check_device_state(c), -EIO);
    raw_expect_request(f->raw, VUF_REQ_CHECK_DEVICE_STATE, REQ, 0, 0);
    raw_reply_u64(f->raw, VUF_REQ_POSTCOPY_END, 1);
    assert_int_equal(vuf_client_postcopy_end(c), -EIO);
    raw_expect_request(f->raw, VUF_REQ_POSTCOPY_END, REQ | VUF_FLAG_NEED_REPLY, 0, 0);
    /* Crypto session: wrong size. */
    {
        struct vuf_crypto_session s;
        memset(&s, 0, sizeof(s));
        raw_send(f->raw, VUF_REQ_CREATE_CRYPTO_SESSION, REPLY, &s, 8, NULL, 0);
        assert_int_equal(vuf_client_create_crypto_session(c, &s), -EPROTO);
        raw_expect_request(f->raw, VUF_REQ_CREATE_CRYPTO_SESSION, REQ, VUF_CRYPTO_SESSION_SIZE, 0);
    }
    assert_int_equal(tu_count_fds(), before);
}

static void test_client_timeout(void **state)
{
    struct fx *f = *state;
    uint64_t u;
    int64_t t0, dt;

    vuf_conn_set_timeout(vuf_client_conn(f->cli), 200);
    t0 = mono_ms();
    assert_int_equal(vuf_client_get_features(f->cli, &u), -ETIMEDOUT);
    dt = mono_ms() - t0;
    assert_true(dt >= 150);
    assert_true(dt < 3000);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
}

static void test_client_hangup(void **state)
{
    struct fx *f = *state;
    uint64_t u;

    /* The back-end reads the request but closes its side instead of
     * answering: the request goes out, the reply never comes. */
    assert_int_equal(shutdown(vuf_conn_fd(f->raw), SHUT_WR), 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -ECONNRESET);
    raw_expect_request(f->raw, VUF_REQ_GET_FEATURES, REQ, 0, 0);
    /* Gone entirely: even the send fails, as a hang-up, without SIGPIPE. */
    vuf_conn_close(f->raw);
    f->raw = NULL;
    assert_int_equal(vuf_client_set_owner(f->cli), -ECONNRESET);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -ECONNRESET);
}

static void test_client_hangup_mid_reply(void **state)
{
    struct fx *f = *state;
    uint8_t hdr[VUF_HDR_SIZE + 4];
    struct vuf_hdr h = {.request = VUF_REQ_GET_FEATURES, .flags = REPLY, .size = 8};
    uint64_t u;

    /* Header and half the payload, then EOF. */
    vuf_hdr_encode(hdr, &h);
    memset(hdr + VUF_HDR_SIZE, 0, 4);
    assert_int_equal(write(vuf_conn_fd(f->raw), hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    assert_int_equal(shutdown(vuf_conn_fd(f->raw), SHUT_WR), 0);
    assert_int_equal(vuf_client_get_features(f->cli, &u), -ECONNABORTED);
}

/* Bad arguments: -EINVAL and nothing on the wire. */
static void test_client_invalid_args(void **state)
{
    struct fx *f = *state;
    struct vuf_client *c = f->cli;
    struct vuf_mem_region r[9];
    int fds[9];
    uint8_t buf[300];
    uint64_t u;
    int efd = make_eventfd(0);

    memset(r, 0, sizeof(r));
    for (unsigned i = 0; i < 9; i++) {
        r[i].memory_size = 0x1000;
        r[i].guest_phys_addr = 0x1000 * i;
        fds[i] = efd;
    }
    assert_int_equal(vuf_client_set_vring_kick(c, 256, efd), -EINVAL);
    assert_int_equal(vuf_client_set_vring_call(c, 300, -1), -EINVAL);
    assert_int_equal(vuf_client_set_vring_err(c, 256, efd), -EINVAL);
    assert_int_equal(vuf_client_set_vring_kick(c, 0, -5), -EINVAL);
    assert_int_equal(vuf_client_get_config(c, 0, 0, buf, 257), -EINVAL);
    assert_int_equal(vuf_client_get_config(c, 0, 0, buf, 0), -EINVAL);
    assert_int_equal(vuf_client_get_config(c, 0, 0, NULL, 4), -EINVAL);
    assert_int_equal(vuf_client_get_config(c, 0x1000, 0, buf, 4), -EINVAL); /* past 4 KiB */
    assert_int_equal(vuf_client_get_config(c, 0, 7, buf, 4), -EINVAL);      /* flags */
    assert_int_equal(vuf_client_set_config(c, 0, 0, buf, 257), -EINVAL);
    assert_int_equal(vuf_client_set_mem_table(c, r, fds, 0), -EINVAL);
    assert_int_equal(vuf_client_set_mem_table(c, r, fds, 9), -EINVAL);
    fds[1] = -1;
    assert_int_equal(vuf_client_set_mem_table(c, r, fds, 2), -EINVAL);
    fds[1] = efd;
    r[1].memory_size = 0;
    assert_int_equal(vuf_client_set_mem_table(c, r, fds, 2), -EINVAL);
    assert_int_equal(vuf_client_add_mem_reg(c, &r[1], efd), -EINVAL);
    assert_int_equal(vuf_client_add_mem_reg(c, &r[0], -1), -EINVAL);
    assert_int_equal(vuf_client_set_log_fd(c, -1), -EINVAL);
    assert_int_equal(vuf_client_set_backend_req_fd(c, -1), -EINVAL);
    assert_int_equal(vuf_client_gpu_set_socket(c, -1), -EINVAL);
    {
        struct vuf_vring_addr a = {.desc = 0x1001};
        assert_int_equal(vuf_client_set_vring_addr(c, &a), -EINVAL);
        assert_int_equal(vuf_client_set_vring_addr(c, NULL), -EINVAL);
    }
    {
        int bfd;
        assert_int_equal(vuf_client_set_device_state_fd(c, 2, 0, efd, &bfd), -EINVAL);
        assert_int_equal(vuf_client_set_device_state_fd(c, 0, 1, efd, &bfd), -EINVAL);
        assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, -1, &bfd), -EINVAL);
        assert_int_equal(vuf_client_set_device_state_fd(c, 0, 0, efd, NULL), -EINVAL);
    }
    {
        struct vuf_inflight in = {.num_queues = 0, .queue_size = 64};
        assert_int_equal(vuf_client_set_inflight_fd(c, &in, efd), -EINVAL);
        assert_int_equal(vuf_client_get_inflight_fd(c, 0, 64, &in, &efd), -EINVAL);
    }
    assert_int_equal(vuf_client_get_features(c, NULL), -EINVAL);
    assert_int_equal(vuf_client_get_features(NULL, &u), -EINVAL);
    assert_int_equal(vuf_client_get_status(c, NULL), -EINVAL);
    assert_int_equal(vuf_client_send_rarp(c, NULL), -EINVAL);
    assert_int_equal(vuf_client_postcopy_advise(c, NULL), -EINVAL);
    assert_nothing_pending(f->raw, 20);
    close(efd);
}

/* ------------------------------------------------------------------------ */
/* Server against a misbehaving front-end                                   */
/* ------------------------------------------------------------------------ */

static void srv_set_reply_ack(struct fx *f)
{
    vuf_server_set_protocol_features(f->srv, VUF_PROTO_MASK(REPLY_ACK));
}

static void test_server_unknown_code(void **state)
{
    struct fx *f = *state;
    uint64_t v;
    int before, efd;

    srv_set_reply_ack(f);
    before = warn_count();
    raw_send(f->raw, 99, REQ_NR, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_int_equal(raw_expect_u64_reply(f->raw, 99), (uint64_t)(int64_t)-ENOTSUP);
    assert_true(warned_since(before, "unknown", "99"));

    /* Without NEED_REPLY: no answer; an fd riding along is closed. */
    before = tu_count_fds();
    efd = make_eventfd(0);
    v = 5;
    raw_send(f->raw, 0, REQ, &v, 8, &efd, 1);
    close(efd);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_int_equal(tu_count_fds(), before);
    assert_nothing_pending(f->raw, 20);

    /* The server keeps serving. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REQ, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_GET_FEATURES), TEST_FEATURES);
}

static void test_server_malformed(void **state)
{
    struct fx *f = *state;
    struct vuf_mem_table t;
    int before, mark, fd, efd;
    uint64_t v;

    srv_set_reply_ack(f);
    before = tu_count_fds();
    mark = warn_count();

    /* SET_MEM_TABLE: two regions, one fd. */
    memset(&t, 0, sizeof(t));
    t.nregions = 2;
    t.regions[0].memory_size = 0x1000;
    t.regions[1].memory_size = 0x1000;
    fd = make_memfd("m", 0x1000);
    raw_send(f->raw, VUF_REQ_SET_MEM_TABLE, REQ_NR, &t, VUF_MEM_TABLE_SIZE(2), &fd, 1);
    close(fd);
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    assert_int_not_equal(raw_expect_u64_reply(f->raw, VUF_REQ_SET_MEM_TABLE), 0);
    assert_int_equal(tu_count_fds(), before);
    assert_true(warned_since(mark, "malformed SET_MEM_TABLE", NULL));
    fx_lock(f);
    assert_int_equal(f->calls[VUF_REQ_SET_MEM_TABLE], 0); /* never dispatched */
    fx_unlock(f);

    /* SET_MEM_TABLE: size not 8 + 32n. */
    t.nregions = 1;
    fd = make_memfd("m", 0x1000);
    raw_send(f->raw, VUF_REQ_SET_MEM_TABLE, REQ_NR, &t, 20, &fd, 1);
    close(fd);
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    assert_int_not_equal(raw_expect_u64_reply(f->raw, VUF_REQ_SET_MEM_TABLE), 0);
    assert_int_equal(tu_count_fds(), before);

    /* An fd on a request that takes none. */
    {
        struct vuf_vring_state st = {0, 64};
        efd = make_eventfd(0);
        raw_send(f->raw, VUF_REQ_SET_VRING_NUM, REQ_NR, &st, 8, &efd, 1);
        close(efd);
        assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
        assert_int_not_equal(raw_expect_u64_reply(f->raw, VUF_REQ_SET_VRING_NUM), 0);
        assert_int_equal(tu_count_fds(), before);
    }
    /* Malformed without NEED_REPLY: no answer. */
    v = 0;
    raw_send(f->raw, VUF_REQ_SET_VRING_KICK, REQ, &v, 8, NULL, 0); /* no fd, no NOFD */
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    assert_nothing_pending(f->raw, 20);

    /* "always" requests get their error form even without NEED_REPLY. */
    v = 1;
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REQ, &v, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_GET_FEATURES),
                     (uint64_t)(int64_t)-EPROTO);
    {
        struct vuf_config cfg = {.offset = 0, .size = 16};
        struct vuf_msg m;
        raw_send(f->raw, VUF_REQ_GET_CONFIG, REQ, &cfg, VUF_CONFIG_HDR_SIZE + 8, NULL, 0);
        assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
        raw_recv(f->raw, &m);
        assert_int_equal(m.hdr.request, VUF_REQ_GET_CONFIG);
        assert_int_equal(m.hdr.flags, REPLY);
        assert_int_equal(m.hdr.size, 0);
        assert_int_equal(m.nfds, 0);
    }
    {
        struct vuf_inflight in = {.num_queues = 0, .queue_size = 0};
        struct vuf_msg m;
        raw_send(f->raw, VUF_REQ_GET_INFLIGHT_FD, REQ, &in, sizeof(in), NULL, 0);
        assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
        raw_recv(f->raw, &m);
        assert_int_equal(m.hdr.request, VUF_REQ_GET_INFLIGHT_FD);
        assert_int_equal(m.hdr.size, sizeof(struct vuf_inflight));
        assert_int_equal(m.nfds, 0);
        assert_int_equal(m.payload.inflight.mmap_size, 0);
    }

    /* Not a request at all (REPLY set), or a foreign version: no answer,
     * even for an "always" code. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REPLY, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    raw_send(f->raw, VUF_REQ_GET_FEATURES, 0x2 | VUF_FLAG_NEED_REPLY, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
    assert_nothing_pending(f->raw, 20);

    /* Still serving, fds balanced. */
    raw_send(f->raw, VUF_REQ_GET_FEATURES, REQ, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_GET_FEATURES), TEST_FEATURES);
    assert_int_equal(tu_count_fds(), before);
}

static void test_server_no_handler(void **state)
{
    struct fx *f = *state;
    struct vuf_vring_state st = {1, 0};
    int before = warn_count();

    srv_set_reply_ack(f);
    raw_send(f->raw, VUF_REQ_VRING_KICK, REQ_NR, &st, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_VRING_KICK), (uint64_t)(int64_t)-ENOTSUP);
    assert_true(warned_since(before, "VRING_KICK", "no handler"));
    /* No NEED_REPLY: silently -ENOTSUP. */
    raw_send(f->raw, VUF_REQ_RESET_DEVICE, REQ, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_nothing_pending(f->raw, 20);
    /* NEED_REPLY but REPLY_ACK not negotiated: no answer either. */
    vuf_server_set_protocol_features(f->srv, 0);
    raw_send(f->raw, VUF_REQ_RESET_DEVICE, REQ_NR, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_nothing_pending(f->raw, 20);
    /* "always" with no handler: the error form. */
    raw_send(f->raw, VUF_REQ_GET_QUEUE_NUM, REQ, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_GET_QUEUE_NUM),
                     (uint64_t)(int64_t)-ENOTSUP);
}

/* The ack rule for SET_PROTOCOL_FEATURES follows the features in force
 * before it, and the handler's result decides whether it is recorded. */
static void test_server_protocol_features_rules(void **state)
{
    struct fx *f = *state;
    uint64_t v = VUF_PROTO_MASK(REPLY_ACK);

    /* NEED_REPLY before REPLY_ACK exists: no ack; then it is in force. */
    raw_send(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ_NR, &v, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_nothing_pending(f->raw, 20);
    assert_int_equal(vuf_server_protocol_features(f->srv), VUF_PROTO_MASK(REPLY_ACK));
    /* Turning it off is still acked (old rules). */
    v = 0;
    raw_send(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ_NR, &v, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES), 0);
    assert_int_equal(vuf_server_protocol_features(f->srv), 0);
    /* A failing handler: not recorded. */
    fx_set_fail(f, -EPERM);
    v = VUF_PROTO_MASK(REPLY_ACK);
    raw_send(f->raw, VUF_REQ_SET_PROTOCOL_FEATURES, REQ, &v, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -EPERM);
    assert_int_equal(vuf_server_protocol_features(f->srv), 0);
    fx_set_fail(f, 0);

    /* LOG_SHMFD: SET_LOG_BASE always answered, NEED_REPLY or not. */
    vuf_server_set_protocol_features(f->srv, VUF_PROTO_MASK(LOG_SHMFD));
    {
        struct vuf_log lg = {.mmap_size = 0x1000};
        int fd = make_memfd("log", 0x1000);
        raw_send(f->raw, VUF_REQ_SET_LOG_BASE, REQ, &lg, 16, &fd, 1);
        close(fd);
        assert_int_equal(vuf_server_process_one(f->srv), 0);
        assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_SET_LOG_BASE), 0);
    }
}

static void test_server_stream_errors(void **state)
{
    struct fx *f = *state;
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_hdr h = {.request = VUF_REQ_SET_MEM_TABLE, .flags = REQ, .size = 5000};

    /* Nothing arrives: the conn's timeout. */
    vuf_conn_set_timeout(vuf_server_conn(f->srv), 50);
    assert_int_equal(vuf_server_process_one(f->srv), -ETIMEDOUT);
    /* A size no message can have: the stream is beyond repair. */
    vuf_hdr_encode(hdr, &h);
    assert_int_equal(write(vuf_conn_fd(f->raw), hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    assert_int_equal(vuf_server_process_one(f->srv), -EMSGSIZE);
}

static void test_server_hangup(void **state)
{
    struct fx *f = *state;

    vuf_conn_close(f->raw);
    f->raw = NULL;
    assert_int_equal(vuf_server_process_one(f->srv), -ECONNRESET);
    assert_int_equal(vuf_server_process_one(f->srv), -ECONNRESET);
}

/* The front-end's side of the back-end request channel. */
static void test_backend_channel(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m;
    int before = tu_count_fds(), fd;

    assert_true(vuf_server_fd(f->srv) >= 0);
    vuf_server_set_protocol_features(f->srv, VUF_PROTO_MASK(REPLY_ACK));

    /* CONFIG_CHANGE_MSG (code 2 = SET_FEATURES on the other channel). */
    raw_send(f->raw, VUF_BREQ_CONFIG_CHANGE_MSG, REQ_NR, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_BREQ_CONFIG_CHANGE_MSG), 0);
    assert_int_equal(f->seen.hdr.request, VUF_BREQ_CONFIG_CHANGE_MSG);
    assert_int_equal(vuf_server_acked_features(f->srv), 0);

    /* SHMEM_MAP with its fd, without NEED_REPLY: handled, not answered. */
    {
        struct vuf_shmem_map mm = {.shmid = 1,
                                   .fd_offset = 0,
                                   .shm_offset = 0x1000,
                                   .len = 0x1000,
                                   .flags = VUF_SHMEM_MAP_RW};
        fd = make_memfd("shm", 0x1000);
        raw_send(f->raw, VUF_BREQ_SHMEM_MAP, REQ, &mm, sizeof(mm), &fd, 1);
        close(fd);
        assert_int_equal(vuf_server_process_one(f->srv), 0);
        assert_nothing_pending(f->raw, 20);
        assert_int_equal(f->seen.hdr.request, VUF_BREQ_SHMEM_MAP);
        assert_int_equal(f->seen.payload.mmap.shmid, 1);
        assert_int_equal(f->seen.payload.mmap.len, 0x1000);
        assert_fd_has(f->seen.fds[0], "shm");
        close(seen_take(f, 0));
        /* ... and without its fd: malformed, error ack. */
        raw_send(f->raw, VUF_BREQ_SHMEM_MAP, REQ_NR, &mm, sizeof(mm), NULL, 0);
        assert_int_equal(vuf_server_process_one(f->srv), -EPROTO);
        assert_int_not_equal(raw_expect_u64_reply(f->raw, VUF_BREQ_SHMEM_MAP), 0);
    }

    /* SHARED_OBJECT_LOOKUP always replies: u64 + the dmabuf fd. */
    {
        struct vuf_shared_object o = {{9}};
        raw_send(f->raw, VUF_BREQ_SHARED_OBJECT_LOOKUP, REQ, &o, 16, NULL, 0);
        assert_int_equal(vuf_server_process_one(f->srv), 0);
        raw_recv(f->raw, &m);
        assert_int_equal(m.hdr.request, VUF_BREQ_SHARED_OBJECT_LOOKUP);
        assert_int_equal(m.hdr.flags, REPLY);
        assert_int_equal(m.payload.u64, 0);
        assert_int_equal(m.nfds, 1);
        assert_eventfd_value(m.fds[0], 8);
        vuf_msg_close_fds(&m);
    }

    /* Code 1 is IOTLB_MSG here, unhandled: no GET_FEATURES built-in. */
    {
        struct vuf_iotlb_msg io = {.iova = 0x1000, .size = 0x1000, .perm = 1, .type = 1};
        raw_send(f->raw, VUF_BREQ_IOTLB_MSG, REQ_NR, &io, sizeof(io), NULL, 0);
        assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
        assert_int_equal(raw_expect_u64_reply(f->raw, VUF_BREQ_IOTLB_MSG),
                         (uint64_t)(int64_t)-ENOTSUP);
    }
    /* Front-end-only codes are unknown here. */
    raw_send(f->raw, VUF_REQ_GET_PROTOCOL_FEATURES, REQ_NR, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f->srv), -ENOTSUP);
    assert_int_equal(raw_expect_u64_reply(f->raw, VUF_REQ_GET_PROTOCOL_FEATURES),
                     (uint64_t)(int64_t)-ENOTSUP);
    assert_int_equal(tu_count_fds(), before);
}

/* End to end: the client hands the back-end request socket over with
 * SET_BACKEND_REQ_FD, and the back-end talks to the front-end's server
 * through the fd it received. */
static void test_backend_channel_via_client(void **state)
{
    struct fx *f = *state;
    struct vuf_server_config cfg;
    struct vuf_server *bsrv = NULL;
    struct vuf_conn *bconn = NULL;
    int peer = -1, rfd;

    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(vuf_server_new_backend_channel(&cfg, &bsrv, &peer), 0);
    assert_int_equal(vuf_client_set_protocol_features(f->cli, VUF_PROTO_MASK(BACKEND_REQ)), 0);
    assert_int_equal(srv_sync(f), 0);
    assert_int_equal(vuf_client_set_backend_req_fd(f->cli, peer), 0);
    assert_int_equal(srv_sync(f), 0);
    close(peer);
    rfd = seen_take(f, 0);
    assert_true(rfd >= 0);
    assert_int_equal(vuf_conn_adopt(rfd, &bconn), 0);
    vuf_conn_set_timeout(bconn, 1000);
    vuf_server_set_protocol_features(bsrv, VUF_PROTO_MASK(REPLY_ACK));
    /* No handlers on that server: an acked request gets -ENOTSUP back. */
    raw_send(bconn, VUF_BREQ_CONFIG_CHANGE_MSG, REQ_NR, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(bsrv), -ENOTSUP);
    assert_int_equal(raw_expect_u64_reply(bconn, VUF_BREQ_CONFIG_CHANGE_MSG),
                     (uint64_t)(int64_t)-ENOTSUP);
    vuf_conn_close(bconn);
    assert_int_equal(vuf_server_process_one(bsrv), -ECONNRESET);
    vuf_server_free(bsrv);
}

static void test_constructors(void **state)
{
    struct vuf_server_config cfg;
    struct vuf_conn *a, *b;
    struct vuf_server *s = NULL;
    struct vuf_client *c = NULL;
    int before = tu_count_fds(), peer;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    assert_int_equal(vuf_client_new(NULL, &c), -EINVAL);
    assert_int_equal(vuf_server_new(NULL, &cfg, &s), -EINVAL);
    /* Ownership passes even on failure. */
    assert_int_equal(vuf_conn_pair(&a, &b), 0);
    assert_int_equal(vuf_client_new(a, NULL), -EINVAL);
    cfg.channel = (enum vuf_channel)7;
    assert_int_equal(vuf_server_new(b, &cfg, &s), -EINVAL);
    assert_int_equal(tu_count_fds(), before);
    assert_int_equal(vuf_server_new_backend_channel(NULL, &s, &peer), -EINVAL);
    vuf_client_free(NULL);
    vuf_server_free(NULL);
    assert_int_equal(vuf_client_protocol_features(NULL), 0);
    assert_int_equal(tu_count_fds(), before);
}

/* ------------------------------------------------------------------------ */

static int suite_fds;

static int group_setup(void **state)
{
    (void)state;
    log_verbose = getenv("VUF_TEST_VERBOSE") != NULL;
    /* Debug level: every trace line is formatted, which is what the
     * sanitizer builds should see. */
    vuf_log_set(test_sink, NULL, VUF_LOG_DEBUG);
    suite_fds = tu_count_fds();
    return 0;
}

static int group_teardown(void **state)
{
    int now = tu_count_fds();

    (void)state;
    vuf_log_set(NULL, NULL, VUF_LOG_WARN);
    if (now != suite_fds) {
        print_error("fd leak over the suite: %d before, %d after\n", suite_fds, now);
        return -1;
    }
    return 0;
}

#define T(fn, setup) cmocka_unit_test_setup_teardown(fn, setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_all_requests_plain, setup_threaded),
        T(test_all_requests_reply_ack, setup_threaded),
        T(test_all_requests_need_reply_off, setup_threaded),
        T(test_handler_errors_acked, setup_threaded),
        T(test_handler_errors_plain, setup_threaded),
        T(test_handler_bad_reply, setup_threaded),
        T(test_backend_channel_via_client, setup_threaded),
        T(test_builtins, setup_builtin),
        T(test_client_bad_reply_header, setup_raw_client),
        T(test_client_extra_fd_closed, setup_raw_client),
        T(test_client_acks, setup_raw_client),
        T(test_client_log_base, setup_raw_client),
        T(test_client_get_config, setup_raw_client),
        T(test_client_device_state_fd, setup_raw_client),
        T(test_client_other_replies, setup_raw_client),
        T(test_client_timeout, setup_raw_client),
        T(test_client_hangup, setup_raw_client),
        T(test_client_hangup_mid_reply, setup_raw_client),
        T(test_client_invalid_args, setup_raw_client),
        T(test_server_unknown_code, setup_raw_server),
        T(test_server_malformed, setup_raw_server),
        T(test_server_no_handler, setup_raw_server),
        T(test_server_protocol_features_rules, setup_raw_server),
        T(test_server_stream_errors, setup_raw_server),
        T(test_server_hangup, setup_raw_server),
        T(test_backend_channel, setup_backend_channel),
        cmocka_unit_test(test_constructors),
    };

    return cmocka_run_group_tests_name("client_server", tests, group_setup, group_teardown);
}
