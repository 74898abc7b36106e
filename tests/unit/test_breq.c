/* SPDX-License-Identifier: MIT */
/*
 * The back-end request channel, both ends: vuf_breq_* (the back-end's
 * sender) against a VUF_CH_BACKEND vuf_server (the front-end's dispatcher)
 * made with vuf_server_new_backend_channel(), plus raw bytes on the socket
 * for everything a well-behaved sender cannot produce.
 *
 * Handlers run in a server thread when the sender waits for a reply; they
 * only record what they saw (cmocka asserts must stay on the main thread).
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
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "vuf/breq.h"
#include "vuf/conn.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/wire.h"

#define IO_TIMEOUT_MS 3000
#define FD_TEXT "vuf shmem payload"
#define FD_TEXT_OFFSET 16

/* What the handlers saw. */
struct seen {
    int calls;
    uint32_t code, flags, size;
    unsigned nfds;
    union vuf_payload payload;
    bool fd_valid;    /* fcntl(F_GETFD) worked on fds[0] inside the handler */
    char fd_text[32]; /* pread from fds[0] at fd_offset (SHMEM_MAP) */
    int kept_fd;      /* fds[0] taken over by the handler (keep_fd), or -1 */
    /* How to answer. */
    int ret;               /* handler return value */
    bool keep_fd;          /* take over req->fds[0] */
    bool lookup_attach_fd; /* SHARED_OBJECT_LOOKUP: attach a memfd to the reply */
    uint64_t lookup_value; /* SHARED_OBJECT_LOOKUP: u64 of the reply */
};

struct fe {
    struct vuf_server *srv;
    struct vuf_conn *be; /* the back-end's end of the channel */
    struct seen seen;
    pthread_t thread;
    int srv_rc;
    bool thread_running;
};

static int fds_at_start;

static int handler(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct seen *s = opaque;

    s->calls++;
    s->code = req->hdr.request;
    s->flags = req->hdr.flags;
    s->size = req->hdr.size;
    s->nfds = req->nfds;
    memcpy(&s->payload, &req->payload, req->hdr.size <= VUF_MAX_PAYLOAD ? req->hdr.size : 0);
    if (req->nfds > 0) {
        s->fd_valid = fcntl(req->fds[0], F_GETFD) >= 0;
        if (req->hdr.request == VUF_BREQ_SHMEM_MAP) {
            ssize_t n = pread(req->fds[0], s->fd_text, sizeof(s->fd_text) - 1,
                              (off_t)req->payload.mmap.fd_offset);
            if (n > 0)
                s->fd_text[n] = '\0';
        }
        if (s->keep_fd) {
            s->kept_fd = req->fds[0];
            req->fds[0] = -1;
        }
    }
    if (req->hdr.request == VUF_BREQ_SHARED_OBJECT_LOOKUP) {
        reply->payload.u64 = s->lookup_value;
        reply->hdr.size = sizeof(uint64_t);
        if (s->lookup_attach_fd) {
            int fd = memfd_create("vuf-lookup", MFD_CLOEXEC);
            if (fd >= 0) {
                reply->fds[0] = fd;
                reply->nfds = 1;
            }
        }
    }
    return s->ret;
}

static void fe_open_with(struct fe *f, bool with_handlers)
{
    struct vuf_server_config cfg;
    int peer = -1;

    memset(f, 0, sizeof(*f));
    f->seen.kept_fd = -1;
    memset(&cfg, 0, sizeof(cfg));
    cfg.channel = VUF_CH_FRONTEND; /* ignored by new_backend_channel */
    if (with_handlers)
        for (uint32_t code = 1; code <= VUF_BREQ_MAX; code++)
            cfg.handlers[code] = handler;
    cfg.opaque = &f->seen;
    assert_int_equal(vuf_server_new_backend_channel(&cfg, &f->srv, &peer), 0);
    assert_non_null(f->srv);
    assert_true(peer >= 0);
    assert_int_equal(vuf_conn_adopt(peer, &f->be), 0);
    vuf_conn_set_timeout(f->be, IO_TIMEOUT_MS);
    vuf_conn_set_timeout(vuf_server_conn(f->srv), IO_TIMEOUT_MS);
}

static void fe_open(struct fe *f)
{
    fe_open_with(f, true);
}

static void fe_close(struct fe *f)
{
    if (f->thread_running) {
        pthread_join(f->thread, NULL);
        f->thread_running = false;
    }
    if (f->seen.kept_fd >= 0)
        close(f->seen.kept_fd);
    vuf_server_free(f->srv);
    vuf_conn_close(f->be);
    f->srv = NULL;
    f->be = NULL;
}

static void reply_ack_on(struct fe *f)
{
    vuf_server_set_protocol_features(f->srv, VUF_PROTO_MASK(REPLY_ACK));
    assert_true(vuf_server_protocol_features(f->srv) & VUF_PROTO_MASK(REPLY_ACK));
}

static void *serve_thread(void *p)
{
    struct fe *f = p;

    f->srv_rc = vuf_server_process_one(f->srv);
    return NULL;
}

/* Serve one request in the background (for senders that wait). */
static void serve_async(struct fe *f)
{
    assert_false(f->thread_running);
    assert_int_equal(pthread_create(&f->thread, NULL, serve_thread, f), 0);
    f->thread_running = true;
}

static int serve_join(struct fe *f)
{
    assert_true(f->thread_running);
    pthread_join(f->thread, NULL);
    f->thread_running = false;
    return f->srv_rc;
}

static bool readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* Bytes by hand, with fds on the first byte. */
static void raw_sendmsg(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * VUF_MAX_FDS * 2)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh;

    assert_true(nfds <= VUF_MAX_FDS * 2);
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds) {
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
    assert_int_equal(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

/* Whole message by hand: any header (size need not match the payload). */
static void raw_send(int sock, uint32_t code, uint32_t flags, uint32_t size, const void *payload,
                     uint32_t payload_len, const int *fds, unsigned nfds)
{
    uint8_t buf[VUF_HDR_SIZE + VUF_MAX_PAYLOAD];
    struct vuf_hdr h = {.request = code, .flags = flags, .size = size};

    assert_true(payload_len <= sizeof(buf) - VUF_HDR_SIZE);
    memcpy(buf, &h, VUF_HDR_SIZE);
    if (payload_len)
        memcpy(buf + VUF_HDR_SIZE, payload, payload_len);
    raw_sendmsg(sock, buf, VUF_HDR_SIZE + payload_len, fds, nfds);
}

static void raw_write(int sock, const void *buf, size_t len)
{
    assert_int_equal(send(sock, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

static int make_memfd(void)
{
    int fd = memfd_create("vuf-test", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    assert_int_equal(pwrite(fd, FD_TEXT, sizeof(FD_TEXT), FD_TEXT_OFFSET),
                     (ssize_t)sizeof(FD_TEXT));
    return fd;
}

static struct vuf_shmem_map sample_map(void)
{
    struct vuf_shmem_map m;

    memset(&m, 0, sizeof(m));
    m.shmid = 3;
    m.fd_offset = FD_TEXT_OFFSET;
    m.shm_offset = 0x2000;
    m.len = 0x1000;
    m.flags = VUF_SHMEM_MAP_RW;
    return m;
}

/* Read the error ack the server owes a raw request with NEED_REPLY. */
static uint64_t expect_error_ack(struct fe *f, uint32_t code)
{
    struct vuf_msg r;

    assert_true(readable(vuf_conn_fd(f->be), IO_TIMEOUT_MS));
    assert_int_equal(vuf_conn_recv(f->be, &r), 0);
    assert_int_equal(r.hdr.request, code);
    assert_int_equal(r.hdr.flags, VUF_VERSION | VUF_FLAG_REPLY);
    assert_int_equal(r.hdr.size, 8);
    assert_int_equal(r.nfds, 0);
    assert_true(r.payload.u64 != 0);
    return r.payload.u64;
}

/* The server is still in sync: a valid CONFIG_CHANGE_MSG gets through. */
static void expect_still_serving(struct fe *f)
{
    int calls = f->seen.calls;

    f->seen.ret = 0;
    assert_int_equal(vuf_breq_config_change(f->be, false, NULL), 0);
    assert_int_equal(vuf_server_process_one(f->srv), 0);
    assert_int_equal(f->seen.calls, calls + 1);
    assert_int_equal(f->seen.code, VUF_BREQ_CONFIG_CHANGE_MSG);
    assert_false(readable(vuf_conn_fd(f->be), 20));
}

static int setup(void **state)
{
    (void)state;
    fds_at_start = tu_count_fds();
    return fds_at_start < 0 ? -1 : 0;
}

static int teardown(void **state)
{
    int now = tu_count_fds();

    (void)state;
    if (now != fds_at_start) {
        fprintf(stderr, "fd leak: %d fds before the test, %d after\n", fds_at_start, now);
        return -1;
    }
    return 0;
}

/* ---- through the server -------------------------------------------- */

static void test_config_change_no_reply(void **state)
{
    struct fe f;
    uint64_t ack = 42;

    (void)state;
    fe_open(&f);
    /* No NEED_REPLY: the sender does not wait, the front-end says nothing,
     * even with REPLY_ACK negotiated. */
    reply_ack_on(&f);
    assert_int_equal(vuf_breq_config_change(f.be, false, &ack), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(vuf_server_process_one(f.srv), 0);
    assert_int_equal(f.seen.calls, 1);
    assert_int_equal(f.seen.code, VUF_BREQ_CONFIG_CHANGE_MSG);
    assert_int_equal(f.seen.flags, VUF_VERSION);
    assert_int_equal(f.seen.size, 0);
    assert_int_equal(f.seen.nfds, 0);
    assert_false(readable(vuf_conn_fd(f.be), 50));
    fe_close(&f);
}

static void test_config_change_ack(void **state)
{
    struct fe f;
    uint64_t ack = 42;

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    serve_async(&f);
    assert_int_equal(vuf_breq_config_change(f.be, true, &ack), 0);
    assert_int_equal(serve_join(&f), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(f.seen.calls, 1);
    assert_int_equal(f.seen.flags, VUF_VERSION | VUF_FLAG_NEED_REPLY);
    /* Exactly one reply: nothing else pending. */
    assert_false(readable(vuf_conn_fd(f.be), 20));
    fe_close(&f);
}

static void test_need_reply_without_reply_ack(void **state)
{
    struct fe f;

    (void)state;
    fe_open(&f);
    /* Table (b): the front-end acks only when REPLY_ACK was negotiated, so
     * a sender that asks anyway waits out its timeout. */
    vuf_conn_set_timeout(f.be, 100);
    serve_async(&f);
    assert_int_equal(vuf_breq_config_change(f.be, true, NULL), -ETIMEDOUT);
    assert_int_equal(serve_join(&f), 0);
    assert_int_equal(f.seen.calls, 1);
    fe_close(&f);
}

static void test_shmem_map_with_fd(void **state)
{
    struct fe f;
    struct vuf_shmem_map m = sample_map();
    int memfd = make_memfd();
    uint64_t ack = 42;
    int before;

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    before = tu_count_fds();
    serve_async(&f);
    assert_int_equal(vuf_breq_shmem_map(f.be, &m, memfd, true, &ack), 0);
    assert_int_equal(serve_join(&f), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(f.seen.calls, 1);
    assert_int_equal(f.seen.code, VUF_BREQ_SHMEM_MAP);
    assert_int_equal(f.seen.size, sizeof(struct vuf_shmem_map));
    assert_int_equal(f.seen.nfds, 1);
    assert_true(f.seen.fd_valid);
    assert_int_equal(f.seen.payload.mmap.shmid, 3);
    assert_int_equal(f.seen.payload.mmap.fd_offset, FD_TEXT_OFFSET);
    assert_int_equal(f.seen.payload.mmap.shm_offset, 0x2000);
    assert_int_equal(f.seen.payload.mmap.len, 0x1000);
    assert_int_equal(f.seen.payload.mmap.flags, VUF_SHMEM_MAP_RW);
    assert_string_equal(f.seen.fd_text, FD_TEXT);
    /* The server closed its copy after the handler; ours is still open. */
    assert_int_equal(tu_count_fds(), before);
    assert_true(fcntl(memfd, F_GETFD) >= 0);
    fe_close(&f);
    close(memfd);
}

static void test_handler_keeps_fd(void **state)
{
    struct fe f;
    struct vuf_shmem_map m = sample_map();
    int memfd = make_memfd();
    char buf[sizeof(FD_TEXT)];

    (void)state;
    fe_open(&f);
    f.seen.keep_fd = true;
    assert_int_equal(vuf_breq_shmem_map(f.be, &m, memfd, false, NULL), 0);
    assert_int_equal(vuf_server_process_one(f.srv), 0);
    assert_int_equal(f.seen.calls, 1);
    /* The handler set req->fds[0] = -1: the server left the fd open. */
    assert_true(f.seen.kept_fd >= 0);
    assert_true(f.seen.kept_fd != memfd);
    assert_int_equal(pread(f.seen.kept_fd, buf, sizeof(buf), FD_TEXT_OFFSET), (ssize_t)sizeof(buf));
    assert_string_equal(buf, FD_TEXT);
    fe_close(&f); /* closes kept_fd */
    close(memfd);
}

static void test_shmem_unmap(void **state)
{
    struct fe f;
    struct vuf_shmem_map m = sample_map();

    (void)state;
    fe_open(&f);
    m.fd_offset = 0;
    m.flags = 0;
    assert_int_equal(vuf_breq_shmem_unmap(f.be, &m, false, NULL), 0);
    assert_int_equal(vuf_server_process_one(f.srv), 0);
    assert_int_equal(f.seen.calls, 1);
    assert_int_equal(f.seen.code, VUF_BREQ_SHMEM_UNMAP);
    assert_int_equal(f.seen.flags, VUF_VERSION);
    assert_int_equal(f.seen.size, 40);
    assert_int_equal(f.seen.nfds, 0);
    assert_int_equal(f.seen.payload.mmap.shmid, 3);
    assert_int_equal(f.seen.payload.mmap.shm_offset, 0x2000);
    assert_int_equal(f.seen.payload.mmap.len, 0x1000);
    assert_false(readable(vuf_conn_fd(f.be), 20));
    fe_close(&f);
}

static void test_handler_error_gives_eio(void **state)
{
    struct fe f;
    struct vuf_shmem_map m = sample_map();
    uint64_t ack = 0;
    int rc;

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    f.seen.ret = -EINVAL;
    serve_async(&f);
    assert_int_equal(vuf_breq_shmem_unmap(f.be, &m, true, &ack), -EIO);
    rc = serve_join(&f);
    assert_int_equal(ack, (uint64_t)-EINVAL);
    assert_int_equal(f.seen.calls, 1);
    /* The server passes the handler's error on, after answering it; the
     * channel is fine. */
    assert_int_equal(rc, -EINVAL);
    expect_still_serving(&f);
    fe_close(&f);
}

/* One valid request of every code through vuf_breq_send and the server. */
static void test_every_code(void **state)
{
    static const struct {
        uint32_t code;
        uint32_t size;
        unsigned nfds;
    } cases[] = {
        {VUF_BREQ_IOTLB_MSG, 32, 0},
        {VUF_BREQ_CONFIG_CHANGE_MSG, 0, 0},
        {VUF_BREQ_VRING_HOST_NOTIFIER_MSG, 24, 1},
        {VUF_BREQ_VRING_HOST_NOTIFIER_MSG, 24, 0},
        {VUF_BREQ_VRING_CALL, 8, 0},
        {VUF_BREQ_VRING_ERR, 8, 0},
        {VUF_BREQ_SHARED_OBJECT_ADD, 16, 0},
        {VUF_BREQ_SHARED_OBJECT_REMOVE, 16, 0},
        {VUF_BREQ_SHARED_OBJECT_LOOKUP, 16, 0},
        {VUF_BREQ_SHMEM_MAP, 40, 1},
        {VUF_BREQ_SHMEM_UNMAP, 40, 0},
    };
    struct fe f;
    int memfd = make_memfd();

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        union vuf_payload p;
        uint64_t ack = 42;
        int calls = f.seen.calls;

        memset(&p, 0, sizeof(p));
        switch (cases[i].code) {
        case VUF_BREQ_IOTLB_MSG:
            p.iotlb.iova = 0x1000;
            p.iotlb.size = 0x1000;
            p.iotlb.perm = 3;
            p.iotlb.type = 1;
            break;
        case VUF_BREQ_VRING_HOST_NOTIFIER_MSG:
            p.area.u64 = cases[i].nfds ? 1 : (1 | VUF_VRING_NOFD);
            p.area.size = cases[i].nfds ? 4096 : 0;
            break;
        case VUF_BREQ_VRING_CALL:
        case VUF_BREQ_VRING_ERR:
            p.state.index = 1;
            break;
        case VUF_BREQ_SHARED_OBJECT_ADD:
        case VUF_BREQ_SHARED_OBJECT_REMOVE:
        case VUF_BREQ_SHARED_OBJECT_LOOKUP:
            for (int j = 0; j < 16; j++)
                p.object.uuid[j] = (uint8_t)(j + 1);
            break;
        case VUF_BREQ_SHMEM_MAP:
        case VUF_BREQ_SHMEM_UNMAP:
            p.mmap = sample_map();
            break;
        default:
            break;
        }
        serve_async(&f);
        assert_int_equal(vuf_breq_send(f.be, cases[i].code, &p, cases[i].size, &memfd,
                                       cases[i].nfds, true, &ack),
                         0);
        assert_int_equal(serve_join(&f), 0);
        assert_int_equal(ack, 0);
        assert_int_equal(f.seen.calls, calls + 1);
        assert_int_equal(f.seen.code, cases[i].code);
        assert_int_equal(f.seen.size, cases[i].size);
        assert_int_equal(f.seen.nfds, cases[i].nfds);
        assert_memory_equal(&f.seen.payload, &p, cases[i].size);
        if (cases[i].nfds)
            assert_true(f.seen.fd_valid);
    }
    assert_false(readable(vuf_conn_fd(f.be), 20));
    fe_close(&f);
    close(memfd);
}

static void test_lookup_always_replies(void **state)
{
    struct fe f;
    struct vuf_shared_object o;
    uint64_t ack = 42;
    int before;

    (void)state;
    memset(&o, 0x5a, sizeof(o));
    fe_open(&f);
    /* Table (b): LOOKUP is answered without NEED_REPLY and without
     * REPLY_ACK; the reply may carry the dmabuf fd. */
    f.seen.lookup_attach_fd = true;
    before = tu_count_fds();
    serve_async(&f);
    assert_int_equal(
        vuf_breq_send(f.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack), 0);
    assert_int_equal(serve_join(&f), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(f.seen.flags, VUF_VERSION);
    /* vuf_breq_send has no out-parameter for the fd: it is closed. */
    assert_int_equal(tu_count_fds(), before);
    assert_false(readable(vuf_conn_fd(f.be), 20));

    /* vuf_breq_shared_object_lookup hands the dmabuf to the caller. */
    {
        int dmabuf = -2;
        struct stat st;

        serve_async(&f);
        assert_int_equal(vuf_breq_shared_object_lookup(f.be, &o, &dmabuf, &ack), 0);
        assert_int_equal(serve_join(&f), 0);
        assert_int_equal(ack, 0);
        assert_true(dmabuf >= 0);
        assert_int_equal(fstat(dmabuf, &st), 0);
        assert_int_equal(tu_count_fds(), before + 1);
        close(dmabuf);
        /* Without an fd in the reply: -1. */
        f.seen.lookup_attach_fd = false;
        serve_async(&f);
        assert_int_equal(vuf_breq_shared_object_lookup(f.be, &o, &dmabuf, &ack), 0);
        assert_int_equal(serve_join(&f), 0);
        assert_int_equal(dmabuf, -1);
        assert_int_equal(tu_count_fds(), before);
        assert_int_equal(vuf_breq_shared_object_lookup(f.be, &o, NULL, &ack), -EINVAL);
    }

    /* A non-zero u64 is a failed lookup. */
    f.seen.lookup_attach_fd = false;
    f.seen.lookup_value = (uint64_t)-ENOENT;
    serve_async(&f);
    assert_int_equal(
        vuf_breq_send(f.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack),
        -EIO);
    serve_join(&f);
    assert_int_equal(ack, (uint64_t)-ENOENT);

    /* A failing handler still produces a reply (the negated errno). */
    f.seen.lookup_value = 0;
    f.seen.ret = -ENOENT;
    serve_async(&f);
    assert_int_equal(
        vuf_breq_send(f.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack),
        -EIO);
    serve_join(&f);
    assert_true(ack != 0);
    fe_close(&f);
}

static void test_no_handler(void **state)
{
    struct fe f;
    uint64_t ack = 0;
    int rc;

    (void)state;
    fe_open_with(&f, false);
    reply_ack_on(&f);
    serve_async(&f);
    assert_int_equal(vuf_breq_config_change(f.be, true, &ack), -EIO);
    rc = serve_join(&f);
    assert_int_equal(rc, -ENOTSUP);
    assert_int_equal(ack, (uint64_t)-ENOTSUP);
    assert_int_equal(f.seen.calls, 0);
    fe_close(&f);
}

static void test_unknown_codes(void **state)
{
    static const struct {
        uint32_t code, size;
    } cases[] = {{0, 0}, {11, 8}, {1000, 40}, {VUF_REQ_MAX, 0}, {0xffffffffu, 16}};
    uint8_t payload[64];
    struct fe f;

    (void)state;
    memset(payload, 0xa5, sizeof(payload));
    fe_open(&f);
    reply_ack_on(&f);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        raw_send(vuf_conn_fd(f.be), cases[i].code, VUF_VERSION | VUF_FLAG_NEED_REPLY, cases[i].size,
                 payload, cases[i].size, NULL, 0);
        assert_int_equal(vuf_server_process_one(f.srv), -ENOTSUP);
        assert_int_equal(f.seen.calls, 0);
        assert_int_equal(expect_error_ack(&f, cases[i].code), (uint64_t)-ENOTSUP);
        /* The payload was skipped: the next request is read in sync. */
        expect_still_serving(&f);
        f.seen.calls = 0;
    }
    fe_close(&f);
}

static void test_bad_size(void **state)
{
    uint8_t payload[64];
    struct fe f;
    int memfd = make_memfd();
    int before;

    (void)state;
    memset(payload, 0, sizeof(payload));
    fe_open(&f);
    reply_ack_on(&f);
    before = tu_count_fds();
    /* SHMEM_MAP is exactly 40 bytes. */
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_MAP, VUF_VERSION | VUF_FLAG_NEED_REPLY, 39, payload,
             39, &memfd, 1);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(f.seen.calls, 0);
    assert_int_equal(expect_error_ack(&f, VUF_BREQ_SHMEM_MAP), (uint64_t)-EPROTO);
    assert_int_equal(tu_count_fds(), before);
    expect_still_serving(&f);

    /* CONFIG_CHANGE_MSG has no payload; VRING_CALL is 8 bytes. */
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 8,
             payload, 8, NULL, 0);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(expect_error_ack(&f, VUF_BREQ_CONFIG_CHANGE_MSG), (uint64_t)-EPROTO);
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_VRING_CALL, VUF_VERSION | VUF_FLAG_NEED_REPLY, 16, payload,
             16, NULL, 0);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(expect_error_ack(&f, VUF_BREQ_VRING_CALL), (uint64_t)-EPROTO);
    f.seen.calls = 0;
    expect_still_serving(&f);

    /* A well-sized SHMEM_MAP that fails the decoder (len 0, unknown flag). */
    {
        struct vuf_shmem_map m = sample_map();

        m.len = 0;
        raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_MAP, VUF_VERSION | VUF_FLAG_NEED_REPLY,
                 sizeof(m), &m, sizeof(m), &memfd, 1);
        assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
        assert_int_equal(expect_error_ack(&f, VUF_BREQ_SHMEM_MAP), (uint64_t)-EPROTO);
        m = sample_map();
        m.flags = 0x2;
        raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_UNMAP, VUF_VERSION | VUF_FLAG_NEED_REPLY,
                 sizeof(m), &m, sizeof(m), NULL, 0);
        assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
        assert_int_equal(expect_error_ack(&f, VUF_BREQ_SHMEM_UNMAP), (uint64_t)-EPROTO);
    }
    assert_int_equal(tu_count_fds(), before);
    f.seen.calls = 0;
    expect_still_serving(&f);
    fe_close(&f);
    close(memfd);
}

static void test_wrong_fd_count(void **state)
{
    struct vuf_shmem_map m = sample_map();
    struct fe f;
    int before, memfds[2];

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    before = tu_count_fds();

    /* SHMEM_MAP needs exactly one fd. */
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_MAP, VUF_VERSION | VUF_FLAG_NEED_REPLY, sizeof(m),
             &m, sizeof(m), NULL, 0);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(f.seen.calls, 0);
    assert_int_equal(expect_error_ack(&f, VUF_BREQ_SHMEM_MAP), (uint64_t)-EPROTO);

    /* CONFIG_CHANGE_MSG takes none: the stray fds must be closed. */
    memfds[0] = make_memfd();
    memfds[1] = eventfd(0, EFD_CLOEXEC);
    assert_true(memfds[1] >= 0);
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION, 0, NULL, 0, memfds, 1);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(f.seen.calls, 0);
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0,
             NULL, 0, memfds, 2);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(expect_error_ack(&f, VUF_BREQ_CONFIG_CHANGE_MSG), (uint64_t)-EPROTO);
    /* Two fds on SHMEM_MAP, one on SHMEM_UNMAP. */
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_MAP, VUF_VERSION, sizeof(m), &m, sizeof(m), memfds,
             2);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_SHMEM_UNMAP, VUF_VERSION, sizeof(m), &m, sizeof(m), memfds,
             1);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(f.seen.calls, 0);
    close(memfds[0]);
    close(memfds[1]);
    assert_int_equal(tu_count_fds(), before);
    assert_false(readable(vuf_conn_fd(f.be), 20));
    expect_still_serving(&f);
    fe_close(&f);
}

static void test_bad_flags(void **state)
{
    static const uint32_t bad_flags[] = {
        VUF_VERSION | VUF_FLAG_REPLY, /* a reply where a request belongs */
        0x2,                          /* version 2 */
        0x0,                          /* version 0 */
        0x3,                          /* version 3 */
        VUF_VERSION | 0x10,           /* unknown flag bit */
        VUF_VERSION | 0x80000000u,    /* unknown flag bit */
    };
    struct fe f;

    (void)state;
    fe_open(&f);
    reply_ack_on(&f);
    for (size_t i = 0; i < sizeof(bad_flags) / sizeof(bad_flags[0]); i++) {
        raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG, bad_flags[i], 0, NULL, 0, NULL, 0);
        assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
        assert_int_equal(f.seen.calls, 0);
        /* The sender did not ask for a reply: none comes. */
        assert_false(readable(vuf_conn_fd(f.be), 20));
    }
    /* REPLY together with NEED_REPLY, and version 2 with NEED_REPLY: refused;
     * whatever the server answers, it must not crash and must stay usable. */
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG,
             VUF_VERSION | VUF_FLAG_REPLY | VUF_FLAG_NEED_REPLY, 0, NULL, 0, NULL, 0);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    raw_send(vuf_conn_fd(f.be), VUF_BREQ_CONFIG_CHANGE_MSG, 0x2 | VUF_FLAG_NEED_REPLY, 0, NULL, 0,
             NULL, 0);
    assert_int_equal(vuf_server_process_one(f.srv), -EPROTO);
    assert_int_equal(f.seen.calls, 0);
    while (readable(vuf_conn_fd(f.be), 20)) {
        struct vuf_msg r;

        assert_int_equal(vuf_conn_recv(f.be, &r), 0);
        assert_int_equal(r.hdr.flags, VUF_VERSION | VUF_FLAG_REPLY);
        vuf_msg_close_fds(&r);
    }
    expect_still_serving(&f);
    fe_close(&f);
}

static void test_hangup(void **state)
{
    uint8_t partial[VUF_HDR_SIZE + 10];
    struct vuf_hdr h = {VUF_BREQ_SHMEM_UNMAP, VUF_VERSION, 40};
    struct fe f;

    (void)state;
    /* Between messages: a clean hang-up. */
    fe_open(&f);
    vuf_conn_close(f.be);
    f.be = NULL;
    assert_int_equal(vuf_server_process_one(f.srv), -ECONNRESET);
    assert_int_equal(vuf_server_process_one(f.srv), -ECONNRESET);
    fe_close(&f);

    /* After a served request. */
    fe_open(&f);
    assert_int_equal(vuf_breq_config_change(f.be, false, NULL), 0);
    vuf_conn_close(f.be);
    f.be = NULL;
    assert_int_equal(vuf_server_process_one(f.srv), 0);
    assert_int_equal(f.seen.calls, 1);
    assert_int_equal(vuf_server_process_one(f.srv), -ECONNRESET);
    fe_close(&f);

    /* In the middle of a payload. */
    fe_open(&f);
    memcpy(partial, &h, sizeof(h));
    memset(partial + VUF_HDR_SIZE, 0, 10);
    raw_write(vuf_conn_fd(f.be), partial, sizeof(partial));
    vuf_conn_close(f.be);
    f.be = NULL;
    assert_int_equal(vuf_server_process_one(f.srv), -ECONNABORTED);
    assert_int_equal(f.seen.calls, 0);
    fe_close(&f);

    /* In the middle of the header. */
    fe_open(&f);
    raw_write(vuf_conn_fd(f.be), partial, 5);
    vuf_conn_close(f.be);
    f.be = NULL;
    assert_int_equal(vuf_server_process_one(f.srv), -EBADMSG);
    fe_close(&f);
}

static void test_oversized(void **state)
{
    static const uint32_t sizes[] = {VUF_MAX_PAYLOAD + 1, 0x10000, 0xffffffffu};

    (void)state;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct vuf_hdr h = {VUF_BREQ_SHMEM_MAP, VUF_VERSION | VUF_FLAG_NEED_REPLY, sizes[i]};
        uint8_t junk[64];
        struct fe f;

        fe_open(&f);
        reply_ack_on(&f);
        memset(junk, 0x11, sizeof(junk));
        raw_write(vuf_conn_fd(f.be), &h, sizeof(h));
        raw_write(vuf_conn_fd(f.be), junk, sizeof(junk));
        assert_int_equal(vuf_server_process_one(f.srv), -EMSGSIZE);
        assert_int_equal(f.seen.calls, 0);
        fe_close(&f);
    }
}

static void test_timeout(void **state)
{
    struct fe f;

    (void)state;
    fe_open(&f);
    vuf_conn_set_timeout(vuf_server_conn(f.srv), 50);
    assert_int_equal(vuf_server_process_one(f.srv), -ETIMEDOUT);
    /* Still usable: nothing was read. */
    vuf_conn_set_timeout(vuf_server_conn(f.srv), IO_TIMEOUT_MS);
    expect_still_serving(&f);
    fe_close(&f);
}

/* Deterministic garbage: a server must answer errors, never crash or leak. */
static uint32_t rng_state = 0x2545f491u;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Errors after which the stream cannot go on. */
static bool channel_broken(int rc)
{
    return rc == -ECONNRESET || rc == -ECONNABORTED || rc == -EBADMSG || rc == -EMSGSIZE ||
           rc == -ETOOMANYREFS || rc == -ETIMEDOUT;
}

static void test_garbage(void **state)
{
    enum vuf_log_level saved = vuf_log_level();

    (void)state;
    /* Hundreds of expected rejections: keep the log for real failures. */
    vuf_log_set(NULL, NULL, VUF_LOG_ERROR);
    for (int round = 0; round < 200; round++) {
        uint8_t buf[512];
        size_t len = 1 + rng() % sizeof(buf);
        int fds[VUF_MAX_FDS + 1];
        /* Up to one more fd than a message may carry. */
        unsigned nfds = rng() % 4 == 0 ? rng() % (VUF_MAX_FDS + 2) : 0;
        size_t bound, it;
        struct fe f;
        int rc = 0;

        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng();
        /* Most rounds start with a plausible header so that the body rules,
         * not only the header rules, see the garbage. */
        if (round % 4 != 0) {
            struct vuf_hdr h = {1 + rng() % VUF_BREQ_MAX,
                                VUF_VERSION | (rng() % 2 ? VUF_FLAG_NEED_REPLY : 0), rng() % 48};
            if (len < sizeof(h))
                len = sizeof(h);
            memcpy(buf, &h, sizeof(h));
        }
        fe_open(&f);
        if (round % 3 != 0)
            reply_ack_on(&f);
        vuf_conn_set_timeout(vuf_server_conn(f.srv), 500);
        for (unsigned i = 0; i < nfds; i++) {
            fds[i] = i % 2 ? eventfd(0, EFD_CLOEXEC) : make_memfd();
            assert_true(fds[i] >= 0);
        }
        raw_sendmsg(vuf_conn_fd(f.be), buf, len, fds, nfds);
        for (unsigned i = 0; i < nfds; i++)
            close(fds[i]);
        /* EOF after the garbage, so that the server stops on its own. */
        assert_int_equal(shutdown(vuf_conn_fd(f.be), SHUT_WR), 0);
        /* Every served or refused message consumes at least a header. */
        bound = len / VUF_HDR_SIZE + 2;
        for (it = 0; it < bound; it++) {
            rc = vuf_server_process_one(f.srv);
            if (channel_broken(rc))
                break;
        }
        if (it == bound)
            fprintf(stderr, "round %d: still serving after %zu messages (rc %d)\n", round, it, rc);
        assert_true(it < bound);
        assert_true(rc < 0);
        /* Whatever came back must be a well-formed reply. */
        while (readable(vuf_conn_fd(f.be), 0)) {
            struct vuf_msg r;

            if (vuf_conn_recv(f.be, &r) < 0)
                break;
            assert_int_equal(r.hdr.flags, VUF_VERSION | VUF_FLAG_REPLY);
            assert_int_equal(r.hdr.size, 8);
            vuf_msg_close_fds(&r);
        }
        fe_close(&f);
    }
    vuf_log_set(NULL, NULL, saved);
}

/* ---- the sender against a scripted front-end ----------------------- */

struct pair {
    struct vuf_conn *be; /* vuf_breq_* side */
    struct vuf_conn *fe; /* scripted front-end */
};

static void pair_open(struct pair *p)
{
    assert_int_equal(vuf_conn_pair(&p->be, &p->fe), 0);
    vuf_conn_set_timeout(p->be, IO_TIMEOUT_MS);
    vuf_conn_set_timeout(p->fe, IO_TIMEOUT_MS);
}

static void pair_close(struct pair *p)
{
    vuf_conn_close(p->be);
    vuf_conn_close(p->fe);
}

/* The request the scripted front-end got must be `code` with `flags`. */
static void expect_request(struct pair *p, uint32_t code, uint32_t flags, unsigned nfds)
{
    struct vuf_msg m;

    assert_int_equal(vuf_conn_recv(p->fe, &m), 0);
    assert_int_equal(m.hdr.request, code);
    assert_int_equal(m.hdr.flags, flags);
    assert_int_equal(m.nfds, nfds);
    assert_int_equal(vuf_msg_check(&m, VUF_CH_BACKEND, false), 0);
    vuf_msg_close_fds(&m);
}

static void test_send_rejects_invalid(void **state)
{
    struct vuf_shmem_map m = sample_map();
    struct pair p;
    uint8_t payload[64];
    int memfd = make_memfd();
    int two[2] = {memfd, memfd};
    uint64_t ack = 42;

    (void)state;
    memset(payload, 0, sizeof(payload));
    pair_open(&p);
    assert_int_equal(vuf_breq_send(p.be, 0, NULL, 0, NULL, 0, false, &ack), -EINVAL);
    assert_int_equal(ack, 0);
    assert_int_equal(vuf_breq_send(p.be, 11, NULL, 0, NULL, 0, false, NULL), -EINVAL);
    assert_int_equal(vuf_breq_send(p.be, 1000, payload, 40, &memfd, 1, false, NULL), -EINVAL);
    /* Sizes. */
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_CONFIG_CHANGE_MSG, payload, 8, NULL, 0, false, NULL), -EINVAL);
    assert_int_equal(vuf_breq_send(p.be, VUF_BREQ_SHMEM_MAP, payload, 39, &memfd, 1, false, NULL),
                     -EINVAL);
    assert_int_equal(vuf_breq_send(p.be, VUF_BREQ_SHMEM_UNMAP, NULL, 40, NULL, 0, false, NULL),
                     -EINVAL);
    /* Fd counts. */
    assert_int_equal(vuf_breq_send(p.be, VUF_BREQ_SHMEM_MAP, &m, sizeof(m), NULL, 0, false, NULL),
                     -EINVAL);
    assert_int_equal(vuf_breq_send(p.be, VUF_BREQ_SHMEM_MAP, &m, sizeof(m), two, 2, false, NULL),
                     -EINVAL);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_SHMEM_UNMAP, &m, sizeof(m), &memfd, 1, false, NULL), -EINVAL);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_CONFIG_CHANGE_MSG, NULL, 0, &memfd, 1, false, NULL), -EINVAL);
    assert_int_equal(vuf_breq_send(p.be, VUF_BREQ_SHMEM_MAP, &m, sizeof(m), NULL, 1, false, NULL),
                     -EINVAL);
    assert_int_equal(vuf_breq_shmem_map(p.be, &m, -1, false, NULL), -EINVAL);
    assert_int_equal(vuf_breq_shmem_map(p.be, NULL, memfd, false, NULL), -EINVAL);
    assert_int_equal(vuf_breq_shmem_unmap(p.be, NULL, false, NULL), -EINVAL);
    /* Semantic rules of the decoder: len 0, unknown flag, overflow. */
    m.len = 0;
    assert_int_equal(vuf_breq_shmem_map(p.be, &m, memfd, false, NULL), -EINVAL);
    m = sample_map();
    m.flags = 0x2;
    assert_int_equal(vuf_breq_shmem_unmap(p.be, &m, false, NULL), -EINVAL);
    m = sample_map();
    m.shm_offset = UINT64_MAX;
    assert_int_equal(vuf_breq_shmem_map(p.be, &m, memfd, false, NULL), -EINVAL);
    /* Nothing reached the wire. */
    assert_false(readable(vuf_conn_fd(p.fe), 20));
    pair_close(&p);
    close(memfd);
}

static void queue_reply(struct pair *p, uint32_t code, uint32_t flags, uint32_t size,
                        uint64_t value, const int *fds, unsigned nfds)
{
    uint8_t payload[16];

    memset(payload, 0, sizeof(payload));
    memcpy(payload, &value, sizeof(value));
    assert_true(size <= sizeof(payload));
    raw_send(vuf_conn_fd(p->fe), code, flags, size, payload, size, fds, nfds);
}

static void test_reply_checks(void **state)
{
    static const struct {
        uint32_t code, flags, size;
    } bad[] = {
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION, 8},
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY | VUF_FLAG_NEED_REPLY, 8},
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY | 0x10, 8},
        {VUF_BREQ_CONFIG_CHANGE_MSG, 0x2 | VUF_FLAG_REPLY, 8},
        {VUF_BREQ_SHMEM_UNMAP, VUF_VERSION | VUF_FLAG_REPLY, 8},
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 0},
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 4},
        {VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 16},
    };
    uint64_t ack;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct pair p;

        pair_open(&p);
        queue_reply(&p, bad[i].code, bad[i].flags, bad[i].size, 0, NULL, 0);
        ack = 42;
        assert_int_equal(vuf_breq_config_change(p.be, true, &ack), -EPROTO);
        assert_int_equal(ack, 0);
        expect_request(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0);
        pair_close(&p);
    }

    /* A valid ack of 0, then a non-zero ack. */
    {
        struct pair p;

        pair_open(&p);
        queue_reply(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 8, 0, NULL, 0);
        queue_reply(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 8, 5, NULL, 0);
        assert_int_equal(vuf_breq_config_change(p.be, true, &ack), 0);
        assert_int_equal(ack, 0);
        assert_int_equal(vuf_breq_config_change(p.be, true, &ack), -EIO);
        assert_int_equal(ack, 5);
        expect_request(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0);
        expect_request(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0);
        /* Without need_reply the sender reads nothing. */
        assert_int_equal(vuf_breq_config_change(p.be, false, &ack), 0);
        expect_request(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION, 0);
        pair_close(&p);
    }
}

static void test_reply_fds(void **state)
{
    struct vuf_shared_object o;
    struct pair p;
    int fds[2], before;
    uint64_t ack;

    (void)state;
    memset(&o, 1, sizeof(o));
    fds[0] = make_memfd();
    fds[1] = eventfd(0, EFD_CLOEXEC);
    assert_true(fds[1] >= 0);
    before = tu_count_fds();

    /* An ack carries no fd: -EPROTO, and the fd is closed. */
    pair_open(&p);
    queue_reply(&p, VUF_BREQ_CONFIG_CHANGE_MSG, VUF_VERSION | VUF_FLAG_REPLY, 8, 0, fds, 1);
    assert_int_equal(vuf_breq_config_change(p.be, true, &ack), -EPROTO);
    pair_close(&p);
    assert_int_equal(tu_count_fds(), before);

    /* LOOKUP: one fd allowed (closed, no out-parameter), two are not. */
    pair_open(&p);
    queue_reply(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION | VUF_FLAG_REPLY, 8, 0, fds, 1);
    queue_reply(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION | VUF_FLAG_REPLY, 8, 0, NULL, 0);
    queue_reply(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION | VUF_FLAG_REPLY, 8, 0, fds, 2);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack), 0);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, true, &ack), 0);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack),
        -EPROTO);
    expect_request(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION, 0);
    expect_request(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION | VUF_FLAG_NEED_REPLY, 0);
    expect_request(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION, 0);
    pair_close(&p);
    assert_int_equal(tu_count_fds(), before);

    /* A non-zero LOOKUP answer with a (stray) fd: -EIO, fd closed. */
    pair_open(&p);
    queue_reply(&p, VUF_BREQ_SHARED_OBJECT_LOOKUP, VUF_VERSION | VUF_FLAG_REPLY, 8,
                (uint64_t)-ENOENT, fds, 1);
    assert_int_equal(
        vuf_breq_send(p.be, VUF_BREQ_SHARED_OBJECT_LOOKUP, &o, sizeof(o), NULL, 0, false, &ack),
        -EIO);
    assert_int_equal(ack, (uint64_t)-ENOENT);
    pair_close(&p);
    assert_int_equal(tu_count_fds(), before);

    close(fds[0]);
    close(fds[1]);
}

static void test_sender_timeout_and_hangup(void **state)
{
    struct pair p;
    struct vuf_shmem_map m = sample_map();
    int memfd = make_memfd();

    (void)state;
    /* Nobody answers. */
    pair_open(&p);
    vuf_conn_set_timeout(p.be, 50);
    assert_int_equal(vuf_breq_shmem_map(p.be, &m, memfd, true, NULL), -ETIMEDOUT);
    expect_request(&p, VUF_BREQ_SHMEM_MAP, VUF_VERSION | VUF_FLAG_NEED_REPLY, 1);
    pair_close(&p);

    /* The front-end hangs up instead of answering. */
    pair_open(&p);
    assert_int_equal(vuf_breq_config_change(p.be, false, NULL), 0);
    vuf_conn_close(p.fe);
    p.fe = NULL;
    assert_int_equal(vuf_breq_config_change(p.be, true, NULL), -ECONNRESET);
    pair_close(&p);
    close(memfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config_change_no_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_change_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_need_reply_without_reply_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shmem_map_with_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handler_keeps_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shmem_unmap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handler_error_gives_eio, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_code, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_always_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_fd_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hangup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_rejects_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_fds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_timeout_and_hangup, setup, teardown),
    };
    int fds_before = tu_count_fds();
    int rc = cmocka_run_group_tests_name("breq", tests, NULL, NULL);

    if (rc == 0 && tu_count_fds() != fds_before) {
        fprintf(stderr, "fd leak across the suite: %d -> %d\n", fds_before, tu_count_fds());
        return 1;
    }
    return rc;
}
