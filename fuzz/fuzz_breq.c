/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the back-end request channel, end to end over a
 * real socket with real fds.
 *
 * Server mode (byte 0 bit 7 clear): a VUF_CH_BACKEND vuf_server
 * (vuf_server_new_backend_channel) with handlers for all ten codes reads
 * the input as the back-end's byte stream until it is used up.
 *   bits 0-3  fds attached, (b & 15) % 10: 0..9 (9 is one more than a
 *             message may carry)
 *   bit 4     REPLY_ACK negotiated on the server
 *   bit 5     fds alternate eventfd, memfd, ... (else memfd, eventfd, ...);
 *             also whether the first handled request fails (then every
 *             other one does)
 *   bit 6     the fds ride on a later chunk: byte 1 says after how many
 *             stream bytes (breaks the "fds with the header" framing rule)
 *
 * Sender mode (bit 7 set): the input is the front-end's reply stream, and
 * vuf_breq_send() sends one valid request after another and reads it.
 *   bits 0-3  request code, (b & 15) % 10 + 1
 *   bit 4     need_reply
 *   bits 5-6  fds attached to the reply stream (0..3)
 *
 * Oracles, each an abort(): a handler sees a request that fails
 * vuf_msg_check or carries a dead / non-CLOEXEC fd; process_one or
 * vuf_breq_send returns an error outside its documented set or does not
 * stop at EOF; a reply is not a well-formed u64 reply; an ack value and
 * the return code disagree; an fd is left open after the input.
 *
 * Seeds: with VUF_FUZZ_SEED_DIR set, one valid request per back-end code
 * (and a stream of all of them) is written there.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vuf/breq.h"
#include "vuf/conn.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_breq: contract broken at %s:%d: %s\n", __FILE__, __LINE__, \
                    #cond);                                                                  \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

#define SEL_NFDS(b) (((b)&0x0fu) % (VUF_MAX_FDS + 2))
#define SEL_REPLY_ACK 0x10u
#define SEL_EVENTFD 0x20u
#define SEL_SPLIT 0x40u
#define SEL_SENDER 0x80u
#define SEL_CODE(b) (((b)&0x0fu) % VUF_BREQ_MAX + 1)
#define SEL_NEED_REPLY 0x10u
#define SEL_REPLY_FDS(b) (((b) >> 5) & 3u)

static int memfd_src = -1, eventfd_src = -1;

struct ctx {
    unsigned fail_parity; /* handled requests of this parity fail */
    bool failed;          /* a handler returned -EINVAL */
    bool bad_reply;       /* a handler built a reply the table forbids */
    unsigned handled;
};

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    CHECK(d != NULL);
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

static void null_sink(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    (void)msg;
}

/* One handler for all ten codes: each case re-validates with the typed
 * decoder that applies. */
static int handler(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct ctx *c = opaque;
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_BACKEND, req->hdr.request);
    struct vuf_shmem_map map;
    struct vuf_vring_state st;
    struct stat sb;

    c->handled++;
    /* The server dispatches only what passes the table. */
    CHECK(rule != NULL);
    CHECK(vuf_msg_check(req, VUF_CH_BACKEND, false) == 0);
    CHECK(req->nfds >= rule->fds_min && req->nfds <= rule->fds_max);
    CHECK(reply->hdr.request == req->hdr.request);
    CHECK(reply->hdr.flags == (VUF_VERSION | VUF_FLAG_REPLY));
    CHECK(reply->hdr.size == 0 && reply->nfds == 0);
    for (unsigned i = 0; i < req->nfds; i++) {
        int fl = fcntl(req->fds[i], F_GETFD);
        CHECK(fl >= 0 && (fl & FD_CLOEXEC));
    }

    switch (req->hdr.request) {
    case VUF_BREQ_IOTLB_MSG:
        CHECK(req->hdr.size == sizeof(struct vuf_iotlb_msg));
        break;
    case VUF_BREQ_CONFIG_CHANGE_MSG:
        CHECK(req->hdr.size == 0 && req->nfds == 0);
        break;
    case VUF_BREQ_VRING_HOST_NOTIFIER_MSG:
        CHECK(req->hdr.size == sizeof(struct vuf_vring_area));
        CHECK(!!(req->payload.area.u64 & VUF_VRING_NOFD) == (req->nfds == 0));
        break;
    case VUF_BREQ_VRING_CALL:
    case VUF_BREQ_VRING_ERR:
        CHECK(vuf_decode_vring_state(req, &st) == 0);
        break;
    case VUF_BREQ_SHARED_OBJECT_ADD:
    case VUF_BREQ_SHARED_OBJECT_REMOVE:
        CHECK(req->hdr.size == sizeof(struct vuf_shared_object));
        break;
    case VUF_BREQ_SHARED_OBJECT_LOOKUP:
        CHECK(req->hdr.size == sizeof(struct vuf_shared_object));
        /* An "always" reply: u64 plus, sometimes, the object's fd. */
        reply->payload.u64 = req->payload.object.uuid[1] & 1 ? (uint64_t)-ENOENT : 0;
        reply->hdr.size = sizeof(uint64_t);
        if (req->payload.object.uuid[0] & 1) {
            reply->fds[0] = fcntl(memfd_src, F_DUPFD_CLOEXEC, 0);
            CHECK(reply->fds[0] >= 0);
            reply->nfds = 1;
        }
        /* A handler that builds an invalid reply: the server must refuse
         * to send it and close the fds. */
        if (req->payload.object.uuid[2] == 0xee) {
            reply->hdr.size = 3;
            c->bad_reply = true;
        }
        break;
    case VUF_BREQ_SHMEM_MAP:
    case VUF_BREQ_SHMEM_UNMAP:
        CHECK(vuf_decode_shmem_map(req, &map) == 0);
        CHECK(req->nfds == (req->hdr.request == VUF_BREQ_SHMEM_MAP ? 1u : 0u));
        if (req->nfds) {
            CHECK(fstat(req->fds[0], &sb) == 0);
            /* Take the fd over now and then, as a mapper would. */
            if (map.shmid & 1) {
                close(req->fds[0]);
                req->fds[0] = -1;
            }
        }
        break;
    default:
        CHECK(!"handler called for a code outside 1..10");
    }
    if (c->handled % 2 == c->fail_parity) {
        c->failed = true;
        return -EINVAL;
    }
    return 0;
}

/* Errors after which the stream is gone. */
static bool channel_broken(int rc)
{
    return rc == -ECONNRESET || rc == -ECONNABORTED || rc == -EBADMSG || rc == -EMSGSIZE ||
           rc == -ETOOMANYREFS;
}

static void send_all(int fd, const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * (VUF_MAX_FDS + 1))];
        struct cmsghdr align;
    } ctl;
    size_t sent = 0;

    /* Fds alone cannot travel: at least one byte must carry them. */
    if (len == 0)
        return;
    while (sent < len) {
        struct iovec iov = {.iov_base = (void *)(buf + sent), .iov_len = len - sent};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r;

        if (sent == 0 && nfds) {
            struct cmsghdr *cm;

            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
        }
        r = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0);
        sent += (size_t)r;
    }
}

/* Read back what the server has answered so far (a peer that never reads
 * would stall it: every reply is an skb of ~1 KiB truesize). Every answer
 * must be a u64 reply with flags 0x5, an fd only on SHARED_OBJECT_LOOKUP. */
static void drain_replies(struct vuf_conn *c)
{
    struct vuf_msg m;

    for (;;) {
        struct pollfd p = {.fd = vuf_conn_fd(c), .events = POLLIN};
        int r;

        if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
            break;
        r = vuf_conn_recv(c, &m);
        if (r == -ECONNRESET)
            break;
        CHECK(r == 0);
        CHECK(m.hdr.flags == (VUF_VERSION | VUF_FLAG_REPLY));
        CHECK(m.hdr.size == sizeof(uint64_t));
        CHECK(m.nfds == 0 || (m.nfds == 1 && m.hdr.request == VUF_BREQ_SHARED_OBJECT_LOOKUP));
        vuf_msg_close_fds(&m);
    }
}

/* A valid payload for `code` (size rule->size_min) and its fd count. */
static const struct vuf_msg_rule *valid_payload(uint32_t code, union vuf_payload *p, unsigned *nfds)
{
    const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, code);

    memset(p, 0, sizeof(*p));
    *nfds = r->fds_min;
    switch (code) {
    case VUF_BREQ_VRING_HOST_NOTIFIER_MSG:
        p->area.size = 0x1000;
        *nfds = 1;
        break;
    case VUF_BREQ_SHARED_OBJECT_LOOKUP:
        p->object.uuid[0] = 1;
        break;
    case VUF_BREQ_SHMEM_MAP:
    case VUF_BREQ_SHMEM_UNMAP:
        p->mmap.shmid = 1;
        p->mmap.len = 0x1000;
        p->mmap.flags = VUF_SHMEM_MAP_RW;
        break;
    default:
        break;
    }
    return r;
}

static void fuzz_server(unsigned sel, const uint8_t *data, size_t size)
{
    struct vuf_server_config cfg;
    struct vuf_server *srv = NULL;
    struct vuf_conn *be;
    struct ctx ctx = {0};
    int fds[VUF_MAX_FDS + 1];
    unsigned nfds = SEL_NFDS(sel);
    size_t split = 0, bound, it;
    int peer = -1, rc = 0;

    if (sel & SEL_SPLIT) {
        if (size < 1)
            return;
        split = data[0];
        data++;
        size--;
    }

    memset(&cfg, 0, sizeof(cfg));
    for (uint32_t code = 1; code <= VUF_BREQ_MAX; code++)
        cfg.handlers[code] = handler;
    cfg.opaque = &ctx;
    /* handled is 1 for the first request: bit 5 makes it fail. */
    ctx.fail_parity = sel & SEL_EVENTFD ? 1 : 0;
    CHECK(vuf_server_new_backend_channel(&cfg, &srv, &peer) == 0);
    CHECK(vuf_conn_adopt(peer, &be) == 0);
    vuf_conn_set_timeout(be, 0);
    if (sel & SEL_REPLY_ACK)
        vuf_server_set_protocol_features(srv, VUF_PROTO_MASK(REPLY_ACK));
    /* EOF ends every input; the timeout only bounds a bug. */
    vuf_conn_set_timeout(vuf_server_conn(srv), 1000);

    for (unsigned i = 0; i < nfds; i++)
        fds[i] = ((i % 2 == 0) == !!(sel & SEL_EVENTFD)) ? eventfd_src : memfd_src;
    if (split > 0 && split < size) {
        send_all(peer, data, split, NULL, 0);
        send_all(peer, data + split, size - split, fds, nfds);
    } else {
        send_all(peer, data, size, fds, nfds);
    }
    CHECK(shutdown(peer, SHUT_WR) == 0);

    /* Every message served or refused consumes a header at least. */
    bound = size / VUF_HDR_SIZE + 2;
    for (it = 0; it < bound; it++) {
        rc = vuf_server_process_one(srv);
        CHECK(rc == 0 || rc == -EINVAL || rc == -ENOTSUP || rc == -EPROTO || channel_broken(rc));
        drain_replies(be);
        /* -EINVAL is a handler's own error, or the server's verdict on a
         * reply the handler built wrong. */
        if (rc == -EINVAL)
            CHECK(ctx.failed || ctx.bad_reply);
        if (channel_broken(rc))
            break;
    }
    CHECK(it < bound);
    vuf_server_free(srv);
    drain_replies(be);
    vuf_conn_close(be);
}

/* The scripted front-end reads what vuf_breq_send() sent (else the fds in
 * flight fill the socket buffer): each must be the valid request asked for. */
static void drain_requests(struct vuf_conn *fe, uint32_t code, bool need_reply, unsigned nfds)
{
    struct vuf_msg m;

    for (;;) {
        struct pollfd p = {.fd = vuf_conn_fd(fe), .events = POLLIN};

        if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
            break;
        if (vuf_conn_recv(fe, &m) < 0)
            break;
        CHECK(m.hdr.request == code);
        CHECK(m.hdr.flags == (VUF_VERSION | (need_reply ? VUF_FLAG_NEED_REPLY : 0)));
        CHECK(m.nfds == nfds);
        CHECK(vuf_msg_check(&m, VUF_CH_BACKEND, false) == 0);
        vuf_msg_close_fds(&m);
    }
}

static void fuzz_sender(unsigned sel, const uint8_t *data, size_t size)
{
    const uint32_t code = SEL_CODE(sel);
    const bool need_reply = sel & SEL_NEED_REPLY;
    const unsigned reply_fds = SEL_REPLY_FDS(sel);
    const int fds[3] = {memfd_src, eventfd_src, memfd_src};
    const struct vuf_msg_rule *rule;
    struct vuf_conn *be, *fe;
    union vuf_payload p;
    unsigned nfds;
    size_t bound, it;

    rule = valid_payload(code, &p, &nfds);
    CHECK(vuf_conn_pair(&be, &fe) == 0);
    vuf_conn_set_timeout(be, 1000);
    send_all(vuf_conn_fd(fe), data, size, fds, reply_fds);
    CHECK(shutdown(vuf_conn_fd(fe), SHUT_WR) == 0);

    /* A request that waits consumes a header of the stream at least; one
     * that does not wait consumes nothing, so a few suffice. */
    bound = need_reply || rule->reply == VUF_REPLY_ALWAYS ? size / VUF_HDR_SIZE + 2 : 4;
    for (it = 0; it < bound; it++) {
        uint64_t ack = 0x5a5a5a5a;
        int rc = vuf_breq_send(be, code, &p, rule->size_min, &memfd_src, nfds, need_reply, &ack);

        drain_requests(fe, code, need_reply, nfds);
        CHECK(rc == 0 || rc == -EIO || rc == -EPROTO || channel_broken(rc));
        /* *ack is the front-end's answer: 0 on success, non-zero with -EIO,
         * and 0 whenever there was no valid answer. */
        if (rc == -EIO)
            CHECK(ack != 0);
        else
            CHECK(ack == 0);
        if (rc < 0 && rc != -EIO)
            break;
    }
    vuf_conn_close(be);
    vuf_conn_close(fe);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel;
    int before;

    if (size < 1)
        return 0;
    sel = data[0];
    before = count_fds();
    if (sel & SEL_SENDER)
        fuzz_sender(sel, data + 1, size - 1);
    else
        fuzz_server(sel, data + 1, size - 1);
    if (count_fds() != before) {
        fprintf(stderr, "fuzz_breq: fd leak: %d open before, %d after\n", before, count_fds());
        abort();
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Seeds                                                                    */
/* ------------------------------------------------------------------------ */

/* A valid request of `code`, serialized; returns its length. */
static size_t valid_request(uint32_t code, uint8_t *out, size_t cap, unsigned *nfds)
{
    static struct vuf_msg m;
    union vuf_payload p;
    const struct vuf_msg_rule *r = valid_payload(code, &p, nfds);
    int n;

    vuf_msg_init(&m, code, VUF_FLAG_NEED_REPLY, &p, r->size_min);
    n = vuf_msg_serialize(&m, out, cap);
    return n < 0 ? 0 : (size_t)n;
}

static void write_seed(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/seed-%s", dir, name);
    f = fopen(path, "wb");
    if (!f)
        return;
    fwrite(buf, 1, len, f);
    fclose(f);
}

static void write_seeds(const char *dir)
{
    static uint8_t stream[1 + VUF_BREQ_MAX * (VUF_HDR_SIZE + 64)];
    size_t slen = 1;
    uint8_t buf[1 + VUF_HDR_SIZE + 64];

    stream[0] = SEL_REPLY_ACK;
    for (uint32_t code = 1; code <= VUF_BREQ_MAX; code++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, code);
        unsigned nfds;
        size_t n = valid_request(code, buf + 1, sizeof(buf) - 1, &nfds);
        char name[64];

        if (!r || n == 0)
            continue;
        buf[0] = (uint8_t)(SEL_REPLY_ACK | nfds);
        snprintf(name, sizeof(name), "%s", r->name);
        write_seed(dir, name, buf, n + 1);
        /* The stream carries no fds, so only fd-less requests go in. */
        if (nfds == 0 && slen + n <= sizeof(stream)) {
            memcpy(stream + slen, buf + 1, n);
            slen += n;
        }
    }
    write_seed(dir, "stream", stream, slen);

    /* As many acks as the input can ask for: the replies must not stall. */
    {
        static uint8_t flood[1 + 4095 / VUF_HDR_SIZE * VUF_HDR_SIZE];
        const struct vuf_hdr h = {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0};

        flood[0] = SEL_REPLY_ACK;
        for (size_t off = 1; off + VUF_HDR_SIZE <= sizeof(flood); off += VUF_HDR_SIZE)
            memcpy(flood + off, &h, VUF_HDR_SIZE);
        write_seed(dir, "ack-flood", flood, sizeof(flood));
    }

    /* Sender mode: a valid ack (LOOKUP: with its fd) for each code. */
    for (uint32_t code = 1; code <= VUF_BREQ_MAX; code++) {
        const struct vuf_msg_rule *r = vuf_msg_rule(VUF_CH_BACKEND, code);
        static struct vuf_msg m;
        uint64_t zero = 0;
        char name[64];
        int n;

        buf[0] = (uint8_t)(SEL_SENDER | SEL_NEED_REPLY | (code - 1));
        if (r->reply_fds_max)
            buf[0] |= 1u << 5;
        vuf_msg_init(&m, code, VUF_FLAG_REPLY, &zero, sizeof(zero));
        n = vuf_msg_serialize(&m, buf + 1, sizeof(buf) - 1);
        if (n < 0)
            continue;
        snprintf(name, sizeof(name), "ack-%s", r->name);
        write_seed(dir, name, buf, (size_t)n + 1);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("VUF_FUZZ_SEED_DIR");

    (void)argc;
    (void)argv;
    /* Debug level through a sink that drops everything: the trace code
     * runs on every message without flooding stderr. */
    if (!getenv("VUF_LOG"))
        vuf_log_set(null_sink, NULL, VUF_LOG_DEBUG);
    memfd_src = memfd_create("fuzz-breq", MFD_CLOEXEC);
    eventfd_src = eventfd(0, EFD_CLOEXEC);
    if (memfd_src < 0 || eventfd_src < 0 || ftruncate(memfd_src, 4096) < 0) {
        perror("fuzz_breq: setup");
        abort();
    }
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}
