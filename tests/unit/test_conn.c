/* SPDX-License-Identifier: MIT */
/*
 * Black-box tests of vuf/conn.h: whole messages with fds over a socketpair
 * and over a real listening socket in a temp dir, every documented error
 * (with raw peers that misbehave on purpose), timeouts measured against the
 * clock, and fd accounting: no test may leak a descriptor, and a failed
 * receive must close every fd that arrived.
 *
 * Tests that take a fixture run twice: over vuf_conn_pair ("pair/...") and
 * over vuf_conn_listen + vuf_conn_connect + vuf_conn_accept ("unix/..."). In the
 * fixture, `a` receives and `b` is the peer.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/log.h"

/* Slack for timing checks: sanitizer builds and loaded CI machines. */
#define SLACK_MS 800

static int g_fds_at_start = -1;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

#define assert_rc(expr, want)                                       \
    do {                                                            \
        int rc_ = (expr);                                           \
        int want_ = (want);                                         \
        if (rc_ != want_)                                           \
            fail_msg("%s = %d (%s), want %d (%s)", #expr, rc_,      \
                     rc_ < 0 ? strerrorname_np(-rc_) : "ok", want_, \
                     want_ < 0 ? strerrorname_np(-want_) : "ok");   \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Raw peer helpers                                                         */
/* ------------------------------------------------------------------------ */

static void put_hdr(uint8_t *b, uint32_t req, uint32_t flags, uint32_t size)
{
    struct vuf_hdr h = {.request = req, .flags = flags, .size = size};

    vuf_hdr_encode(b, &h);
}

/* One sendmsg with optional SCM_RIGHTS; returns bytes sent or -errno. */
static ssize_t raw_sendmsg(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    if (nfds) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    return n < 0 ? -errno : n;
}

static void raw_write_all(int sock, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len) {
        ssize_t n = send(sock, p, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

struct fx {
    struct vuf_conn *a, *b;
    char *dir;
    char path[256];
    int lfd;
    int fds_before;
};

static int setup_pair(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->lfd = -1;
    f->fds_before = tu_count_fds();
    if (vuf_conn_pair(&f->a, &f->b) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int setup_unix(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    int rc;

    if (!f)
        return -1;
    f->lfd = -1;
    f->fds_before = tu_count_fds();
    f->dir = tu_mkdtemp("vuf-conn");
    if (!f->dir)
        goto fail;
    snprintf(f->path, sizeof(f->path), "%s/s.sock", f->dir);
    rc = vuf_conn_listen(f->path, &f->lfd);
    if (rc) {
        print_error("vuf_conn_listen: %d\n", rc);
        goto fail;
    }
    rc = vuf_conn_connect(f->path, 1000, &f->b);
    if (rc) {
        print_error("vuf_conn_connect: %d\n", rc);
        goto fail;
    }
    rc = vuf_conn_accept(f->lfd, 1000, &f->a);
    if (rc) {
        print_error("vuf_conn_accept: %d\n", rc);
        goto fail;
    }
    *state = f;
    return 0;
fail:
    vuf_conn_close(f->b);
    if (f->lfd >= 0)
        close(f->lfd);
    tu_rmtree(f->dir);
    free(f);
    return -1;
}

/* Closes what the test left open and fails if the test leaked an fd. */
static int teardown_fx(void **state)
{
    struct fx *f = *state;
    int after;

    vuf_conn_close(f->a);
    vuf_conn_close(f->b);
    if (f->lfd >= 0) {
        close(f->lfd);
        unlink(f->path);
    }
    tu_rmtree(f->dir);
    after = tu_count_fds();
    if (after != f->fds_before) {
        print_error("fd leak in this test: %d fds before, %d after\n", f->fds_before, after);
        free(f);
        return -1;
    }
    free(f);
    return 0;
}

/* Per-test fd check for tests without a fixture. */
static int setup_count(void **state)
{
    int *n = malloc(sizeof(*n));

    if (!n)
        return -1;
    *n = tu_count_fds();
    *state = n;
    return 0;
}

static int teardown_count(void **state)
{
    int *n = *state, after = tu_count_fds(), before = *n;

    free(n);
    if (after != before) {
        print_error("fd leak in this test: %d fds before, %d after\n", before, after);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* fds                                                                      */
/* ------------------------------------------------------------------------ */

static void test_one_fd(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;
    uint64_t v = 3, got = 0;
    int efd = eventfd(0, EFD_CLOEXEC);

    assert_true(efd >= 0);
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_VRING_CALL, 0, &v, 8), 0);
    m.fds[0] = efd;
    m.nfds = 1;
    assert_rc(vuf_conn_send(f->b, &m), 0);
    assert_true(fd_is_open(efd)); /* the sender keeps its fd */
    memset(&r, 0, sizeof(r));
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_SET_VRING_CALL);
    assert_int_equal(r.hdr.flags, VUF_VERSION);
    assert_int_equal(r.hdr.size, 8);
    assert_int_equal(r.payload.u64, 3);
    assert_int_equal(r.nfds, 1);
    assert_true(r.fds[0] >= 0);
    assert_int_not_equal(r.fds[0], efd);
    assert_true(fcntl(r.fds[0], F_GETFD) & FD_CLOEXEC);
    assert_int_equal(eventfd_write(r.fds[0], 41), 0);
    assert_int_equal(eventfd_read(efd, &got), 0);
    assert_int_equal(got, 41);
    assert_rc(vuf_msg_check(&r, VUF_CH_FRONTEND, false), 0);
    vuf_msg_close_fds(&r);
    assert_int_equal(r.nfds, 0);
    close(efd);
}

static void test_eight_fds(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;
    struct vuf_mem_table t;
    int p[8][2];

    memset(&t, 0, sizeof(t));
    t.nregions = 8;
    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(pipe2(p[i], O_CLOEXEC), 0);
        t.regions[i].guest_phys_addr = 0x100000ull * i;
        t.regions[i].memory_size = 0x100000;
        t.regions[i].userspace_addr = 0x7f0000000000ull + 0x100000ull * i;
    }
    assert_int_equal(
        vuf_msg_init(&m, VUF_REQ_SET_MEM_TABLE, VUF_FLAG_NEED_REPLY, &t, VUF_MEM_TABLE_SIZE(8)), 0);
    for (unsigned i = 0; i < 8; i++)
        m.fds[i] = p[i][1];
    m.nfds = 8;
    assert_rc(vuf_conn_send(f->b, &m), 0);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.nfds, 8);
    assert_int_equal(r.hdr.size, VUF_MEM_TABLE_SIZE(8));
    assert_memory_equal(&r.payload.mem, &t, VUF_MEM_TABLE_SIZE(8));
    assert_rc(vuf_msg_check(&r, VUF_CH_FRONTEND, false), 0);
    /* Order is kept: received fd i is the write end of pipe i. */
    for (unsigned i = 0; i < 8; i++) {
        char c = (char)('A' + i), d = 0;

        assert_true(fcntl(r.fds[i], F_GETFD) & FD_CLOEXEC);
        assert_int_equal(write(r.fds[i], &c, 1), 1);
        assert_int_equal(read(p[i][0], &d, 1), 1);
        assert_int_equal(d, c);
    }
    vuf_msg_close_fds(&r);
    for (unsigned i = 0; i < 8; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
}

static void test_send_nine_fds(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;
    int efd = eventfd(0, EFD_CLOEXEC);

    assert_true(efd >= 0);
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0), 0);
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m.fds[i] = efd;
    m.nfds = VUF_MAX_FDS + 1;
    assert_rc(vuf_conn_send(f->b, &m), -E2BIG);
    /* Nothing went out, and the connection still works (-E2BIG is the one
     * error that does not break it). */
    vuf_conn_set_timeout(f->a, 100);
    assert_rc(vuf_conn_recv(f->a, &r), -ETIMEDOUT);
    m.nfds = 0;
    assert_rc(vuf_conn_send(f->b, &m), 0);
    vuf_conn_set_timeout(f->a, 2000);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GET_FEATURES);
    assert_int_equal(r.nfds, 0);
    close(efd);
}

static void recv_too_many(struct fx *f, unsigned nsend)
{
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_msg r;
    int fds[16], before, after;

    for (unsigned i = 0; i < nsend; i++) {
        fds[i] = eventfd(0, EFD_CLOEXEC);
        assert_true(fds[i] >= 0);
    }
    put_hdr(hdr, VUF_REQ_GET_FEATURES, VUF_VERSION, 0);
    before = tu_count_fds();
    assert_int_equal(raw_sendmsg(vuf_conn_fd(f->b), hdr, sizeof(hdr), fds, nsend),
                     (ssize_t)sizeof(hdr));
    memset(&r, 0, sizeof(r));
    r.nfds = 5;
    assert_rc(vuf_conn_recv(f->a, &r), -ETOOMANYREFS);
    assert_int_equal(r.nfds, 0);
    after = tu_count_fds();
    if (after != before)
        fail_msg("%u fds sent: %d fds open before, %d after -ETOOMANYREFS (not closed)", nsend,
                 before, after);
    for (unsigned i = 0; i < nsend; i++)
        close(fds[i]);
}

static void test_recv_nine_fds(void **state)
{
    recv_too_many(*state, 9);
}

static void test_recv_sixteen_fds(void **state)
{
    recv_too_many(*state, 16);
}

/* fds that ride on a payload chunk, not on the header. */
struct late_fd_args {
    int sock, fd;
};

static void *late_fd_writer(void *arg)
{
    struct late_fd_args *a = arg;
    uint8_t b[VUF_HDR_SIZE + 16];

    memset(b, 0, sizeof(b));
    put_hdr(b, VUF_REQ_SET_LOG_BASE, VUF_VERSION, 16);
    raw_sendmsg(a->sock, b, VUF_HDR_SIZE, NULL, 0);
    sleep_ms(80);
    raw_sendmsg(a->sock, b + VUF_HDR_SIZE, 8, &a->fd, 1);
    sleep_ms(80);
    raw_sendmsg(a->sock, b + VUF_HDR_SIZE + 8, 8, NULL, 0);
    return NULL;
}

static void test_fds_with_payload_chunk(void **state)
{
    struct fx *f = *state;
    struct late_fd_args args;
    struct vuf_msg r;
    pthread_t th;
    int before, after;

    args.sock = vuf_conn_fd(f->b);
    args.fd = eventfd(0, EFD_CLOEXEC);
    assert_true(args.fd >= 0);
    before = tu_count_fds();
    assert_int_equal(pthread_create(&th, NULL, late_fd_writer, &args), 0);
    memset(&r, 0, sizeof(r));
    r.nfds = 3;
    int rc = vuf_conn_recv(f->a, &r);
    pthread_join(th, NULL);
    after = tu_count_fds();
    close(args.fd);
    /* The framing is lost (the rest of the message is unread): a fatal
     * error, not a protocol refusal. */
    assert_rc(rc, -EBADMSG);
    assert_true(vuf_conn_error_is_fatal(rc));
    assert_int_equal(r.nfds, 0);
    if (after != before)
        fail_msg("-EBADMSG left the late fd open: %d fds before, %d after", before, after);
}

/* Back-to-back messages with fds: each message gets its own fds. */
static void test_fds_stay_with_their_message(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m1, m2, m3, r;
    int p[3][2];
    uint64_t v = 0;

    for (int i = 0; i < 3; i++)
        assert_int_equal(pipe2(p[i], O_CLOEXEC), 0);
    v = 1;
    assert_int_equal(vuf_msg_init(&m1, VUF_REQ_SET_VRING_KICK, 0, &v, 8), 0);
    m1.fds[0] = p[0][1];
    m1.nfds = 1;
    v = 1 | VUF_VRING_NOFD;
    assert_int_equal(vuf_msg_init(&m2, VUF_REQ_SET_VRING_CALL, 0, &v, 8), 0);
    assert_int_equal(vuf_msg_init(&m3, VUF_REQ_GPU_SET_SOCKET, 0, NULL, 0), 0);
    m3.fds[0] = p[1][1];
    m3.fds[1] = p[2][1];
    m3.nfds = 2;
    assert_rc(vuf_conn_send(f->b, &m1), 0);
    assert_rc(vuf_conn_send(f->b, &m2), 0);
    assert_rc(vuf_conn_send(f->b, &m3), 0);

    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_SET_VRING_KICK);
    assert_int_equal(r.nfds, 1);
    assert_int_equal(write(r.fds[0], "x", 1), 1);
    vuf_msg_close_fds(&r);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_SET_VRING_CALL);
    assert_int_equal(r.nfds, 0);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GPU_SET_SOCKET);
    assert_int_equal(r.nfds, 2);
    assert_int_equal(write(r.fds[0], "y", 1), 1);
    assert_int_equal(write(r.fds[1], "z", 1), 1);
    vuf_msg_close_fds(&r);
    char c;
    assert_int_equal(read(p[0][0], &c, 1), 1);
    assert_int_equal(c, 'x');
    assert_int_equal(read(p[1][0], &c, 1), 1);
    assert_int_equal(c, 'y');
    assert_int_equal(read(p[2][0], &c, 1), 1);
    assert_int_equal(c, 'z');
    for (int i = 0; i < 3; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
}

/* ------------------------------------------------------------------------ */
/* Hang-ups and framing errors                                              */
/* ------------------------------------------------------------------------ */

static void test_truncated_header(void **state)
{
    struct fx *f = *state;
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_msg r;

    put_hdr(hdr, VUF_REQ_GET_FEATURES, VUF_VERSION, 0);
    raw_write_all(vuf_conn_fd(f->b), hdr, 6);
    vuf_conn_close(f->b);
    f->b = NULL;
    memset(&r, 0, sizeof(r));
    assert_rc(vuf_conn_recv(f->a, &r), -EBADMSG);
    assert_int_equal(r.nfds, 0);
}

static void test_header_size_4gib(void **state)
{
    struct fx *f = *state;
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_msg r;

    put_hdr(hdr, VUF_REQ_GET_FEATURES, VUF_VERSION | VUF_FLAG_REPLY, 0xffffffffu);
    raw_write_all(vuf_conn_fd(f->b), hdr, sizeof(hdr));
    vuf_conn_set_timeout(f->a, 1000);
    memset(&r, 0, sizeof(r));
    assert_rc(vuf_conn_recv(f->a, &r), -EMSGSIZE);
    assert_int_equal(r.nfds, 0);
}

static void test_header_size_one_over(void **state)
{
    struct fx *f = *state;
    uint8_t hdr[VUF_HDR_SIZE];
    struct vuf_msg r;

    put_hdr(hdr, VUF_REQ_GET_SHMEM_CONFIG, VUF_VERSION | VUF_FLAG_REPLY, VUF_MAX_PAYLOAD + 1);
    raw_write_all(vuf_conn_fd(f->b), hdr, sizeof(hdr));
    vuf_conn_set_timeout(f->a, 1000);
    assert_rc(vuf_conn_recv(f->a, &r), -EMSGSIZE);
}

static void test_hangup_mid_payload(void **state)
{
    struct fx *f = *state;
    uint8_t b[VUF_HDR_SIZE + 10];
    struct vuf_msg r;

    memset(b, 0x33, sizeof(b));
    put_hdr(b, VUF_REQ_SET_VRING_ADDR, VUF_VERSION, 40);
    raw_write_all(vuf_conn_fd(f->b), b, sizeof(b));
    vuf_conn_close(f->b);
    f->b = NULL;
    memset(&r, 0, sizeof(r));
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNABORTED);
    assert_int_equal(r.nfds, 0);
}

/* The fd of a message whose payload never completes is closed too. */
static void test_hangup_mid_payload_with_fd(void **state)
{
    struct fx *f = *state;
    uint8_t b[VUF_HDR_SIZE + 4];
    struct vuf_msg r;
    int efd = eventfd(0, EFD_CLOEXEC), before, after;

    assert_true(efd >= 0);
    memset(b, 0, sizeof(b));
    put_hdr(b, VUF_REQ_SET_VRING_KICK, VUF_VERSION, 8);
    before = tu_count_fds();
    assert_int_equal(raw_sendmsg(vuf_conn_fd(f->b), b, sizeof(b), &efd, 1), (ssize_t)sizeof(b));
    vuf_conn_close(f->b);
    f->b = NULL;
    before -= 1; /* the peer's socket is gone */
    memset(&r, 0, sizeof(r));
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNABORTED);
    assert_int_equal(r.nfds, 0);
    after = tu_count_fds();
    close(efd);
    if (after != before)
        fail_msg("fd of an aborted message not closed: %d fds expected, %d open", before, after);
}

static void test_clean_hangup(void **state)
{
    struct fx *f = *state;
    struct vuf_msg r;

    vuf_conn_close(f->b);
    f->b = NULL;
    memset(&r, 0, sizeof(r));
    long long t0 = now_ms();
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNRESET);
    assert_true(now_ms() - t0 < 1000); /* not the 5 s default timeout */
    assert_int_equal(r.nfds, 0);
}

/* A hang-up right after a whole message: the message, then -ECONNRESET. */
static void test_hangup_after_message(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;
    uint64_t v = 0x55;

    assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_STATUS, 0, &v, 8), 0);
    assert_rc(vuf_conn_send(f->b, &m), 0);
    vuf_conn_close(f->b);
    f->b = NULL;
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.payload.u64, 0x55);
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNRESET);
}

static void test_send_after_hangup(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m;

    /* SIGPIPE keeps its default action: raising it would kill this test. */
    vuf_conn_close(f->b);
    f->b = NULL;
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0), 0);
    assert_rc(vuf_conn_send(f->a, &m), -ECONNRESET);
}

/* recv checks only the framing, not the protocol table. */
static void test_recv_checks_framing_only(void **state)
{
    struct fx *f = *state;
    uint8_t b[VUF_HDR_SIZE + 4] = {0};
    struct vuf_msg r;

    put_hdr(b, 9999, 0x0, 4);
    b[12] = 0xab;
    raw_write_all(vuf_conn_fd(f->b), b, sizeof(b));
    vuf_conn_set_timeout(f->a, 1000);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, 9999);
    assert_int_equal(r.hdr.flags, 0);
    assert_int_equal(r.hdr.size, 4);
    assert_int_equal(r.payload.raw[0], 0xab);
    assert_rc(vuf_msg_check(&r, VUF_CH_FRONTEND, false), -EPROTO);
}

/* ------------------------------------------------------------------------ */
/* Timeouts                                                                 */
/* ------------------------------------------------------------------------ */

static void test_recv_timeout(void **state)
{
    struct fx *f = *state;
    struct vuf_msg r;
    long long t0, dt;

    vuf_conn_set_timeout(f->a, 200);
    assert_int_equal(vuf_conn_timeout(f->a), 200);
    memset(&r, 0, sizeof(r));
    t0 = now_ms();
    assert_rc(vuf_conn_recv(f->a, &r), -ETIMEDOUT);
    dt = now_ms() - t0;
    assert_int_equal(r.nfds, 0);
    if (dt < 180 || dt > 200 + SLACK_MS)
        fail_msg("timeout 200 ms took %lld ms", dt);
}

/* A silent peer in the middle of a message is also a timeout. */
static void test_recv_timeout_mid_payload(void **state)
{
    struct fx *f = *state;
    uint8_t b[VUF_HDR_SIZE + 3] = {0};
    struct vuf_msg r;
    long long t0, dt;

    put_hdr(b, VUF_REQ_SET_FEATURES, VUF_VERSION, 8);
    raw_write_all(vuf_conn_fd(f->b), b, sizeof(b));
    vuf_conn_set_timeout(f->a, 200);
    t0 = now_ms();
    assert_rc(vuf_conn_recv(f->a, &r), -ETIMEDOUT);
    dt = now_ms() - t0;
    if (dt < 180 || dt > 200 + SLACK_MS)
        fail_msg("timeout 200 ms took %lld ms", dt);
}

static void test_send_timeout(void **state)
{
    struct fx *f = *state;
    static struct vuf_msg m;
    long long t0 = 0, dt;
    int rc = 0, n;

    memset(&m, 0, sizeof(m));
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_SHMEM_CONFIG, 0, NULL, 0), 0);
    m.hdr.size = VUF_MAX_PAYLOAD; /* framing allows it; the peer never reads */
    vuf_conn_set_timeout(f->b, 200);
    for (n = 0; n < 100000; n++) {
        t0 = now_ms();
        rc = vuf_conn_send(f->b, &m);
        if (rc)
            break;
    }
    dt = now_ms() - t0;
    assert_true(n > 0);
    assert_rc(rc, -ETIMEDOUT);
    if (dt < 180 || dt > 200 + SLACK_MS)
        fail_msg("send timeout 200 ms took %lld ms", dt);
}

static void test_timeout_accessors(void **state)
{
    struct fx *f = *state;

    assert_int_equal(vuf_conn_timeout(f->a), VUF_DEFAULT_TIMEOUT_MS);
    vuf_conn_set_timeout(f->a, 123);
    assert_int_equal(vuf_conn_timeout(f->a), 123);
    vuf_conn_set_timeout(f->a, -1);
    assert_int_equal(vuf_conn_timeout(f->a), -1);
    assert_int_equal(vuf_conn_timeout(f->b), VUF_DEFAULT_TIMEOUT_MS);
    vuf_conn_set_channel(f->a, VUF_CH_BACKEND);
    vuf_conn_set_channel(f->a, VUF_CH_FRONTEND);
}

/* ------------------------------------------------------------------------ */
/* Partial reads, big and many messages                                     */
/* ------------------------------------------------------------------------ */

struct chunk_args {
    int sock;
    const uint8_t *buf;
    size_t len;
    const size_t *cuts; /* chunk lengths, 0-terminated; the rest in one go */
    int delay_ms;
};

static void *chunk_writer(void *arg)
{
    struct chunk_args *a = arg;
    size_t off = 0;

    for (const size_t *c = a->cuts; *c && off < a->len; c++) {
        size_t n = *c < a->len - off ? *c : a->len - off;

        raw_write_all(a->sock, a->buf + off, n);
        off += n;
        sleep_ms(a->delay_ms);
    }
    if (off < a->len)
        raw_write_all(a->sock, a->buf + off, a->len - off);
    return NULL;
}

static void test_partial_reads(void **state)
{
    struct fx *f = *state;
    static uint8_t b[VUF_HDR_SIZE + VUF_MAX_PAYLOAD];
    static const size_t cuts[] = {1, 4, 3, 4, 1, 100, 7, 500, 1, 1000, 0};
    struct chunk_args args;
    struct vuf_msg r;
    pthread_t th;

    put_hdr(b, VUF_REQ_GET_SHMEM_CONFIG, VUF_VERSION | VUF_FLAG_REPLY, VUF_MAX_PAYLOAD);
    for (size_t i = VUF_HDR_SIZE; i < sizeof(b); i++)
        b[i] = (uint8_t)(i * 13);
    args = (struct chunk_args){vuf_conn_fd(f->b), b, sizeof(b), cuts, 15};
    assert_int_equal(pthread_create(&th, NULL, chunk_writer, &args), 0);
    int rc = vuf_conn_recv(f->a, &r);
    pthread_join(th, NULL);
    assert_rc(rc, 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GET_SHMEM_CONFIG);
    assert_int_equal(r.hdr.size, VUF_MAX_PAYLOAD);
    assert_memory_equal(r.payload.raw, b + VUF_HDR_SIZE, VUF_MAX_PAYLOAD);
    assert_int_equal(r.nfds, 0);
}

/* The GET_SHMEM_CONFIG reply is the largest message (2056 B). */
static void test_large_message(void **state)
{
    struct fx *f = *state;
    static struct vuf_shmem_config sc;
    struct vuf_msg req, m, r;

    memset(&sc, 0, sizeof(sc));
    sc.nregions = 3;
    sc.memory_sizes[0] = 0x100000;
    sc.memory_sizes[100] = 0x200000;
    sc.memory_sizes[255] = 0x1000;
    assert_int_equal(vuf_msg_init(&req, VUF_REQ_GET_SHMEM_CONFIG, 0, NULL, 0), 0);
    assert_rc(vuf_conn_send(f->a, &req), 0);
    assert_rc(vuf_conn_recv(f->b, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GET_SHMEM_CONFIG);
    assert_int_equal(vuf_msg_init_reply(&m, &r, &sc, sizeof(sc)), 0);
    assert_rc(vuf_conn_send(f->b, &m), 0);
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.size, VUF_MAX_PAYLOAD);
    assert_int_equal(r.hdr.flags, VUF_VERSION | VUF_FLAG_REPLY);
    assert_memory_equal(&r.payload.shmem, &sc, sizeof(sc));
    assert_rc(vuf_msg_check(&r, VUF_CH_FRONTEND, true), 0);
}

/* Many messages glued in one write are split at the right places. */
static void test_back_to_back_one_write(void **state)
{
    struct fx *f = *state;
    static uint8_t stream[64 * (VUF_HDR_SIZE + 300)];
    static const uint32_t sizes[] = {0, 8, 40, 264, 1, 16, 24, 268, 12, 0, 32, 8};
    size_t off = 0;
    struct vuf_msg r;
    const unsigned n = 64;

    for (unsigned i = 0; i < n; i++) {
        uint32_t s = sizes[i % (sizeof(sizes) / sizeof(sizes[0]))];

        put_hdr(stream + off, 1000 + i, VUF_VERSION, s);
        for (uint32_t j = 0; j < s; j++)
            stream[off + VUF_HDR_SIZE + j] = (uint8_t)(i + j);
        off += VUF_HDR_SIZE + s;
    }
    struct chunk_args args = {vuf_conn_fd(f->b), stream, off, (const size_t[]){0}, 0};
    pthread_t th;

    assert_int_equal(pthread_create(&th, NULL, chunk_writer, &args), 0);
    for (unsigned i = 0; i < n; i++) {
        uint32_t s = sizes[i % (sizeof(sizes) / sizeof(sizes[0]))];
        int rc = vuf_conn_recv(f->a, &r);

        if (rc != 0) {
            pthread_join(th, NULL);
            fail_msg("message %u: recv = %d", i, rc);
        }
        assert_int_equal(r.hdr.request, 1000 + i);
        assert_int_equal(r.hdr.size, s);
        for (uint32_t j = 0; j < s; j++)
            assert_int_equal(r.payload.raw[j], (uint8_t)(i + j));
    }
    pthread_join(th, NULL);
    /* Nothing more: the split consumed exactly the stream. */
    vuf_conn_set_timeout(f->a, 50);
    assert_rc(vuf_conn_recv(f->a, &r), -ETIMEDOUT);
}

struct sender_args {
    struct vuf_conn *c;
    unsigned n;
    int rc;
};

static void *many_sender(void *arg)
{
    struct sender_args *a = arg;
    struct vuf_msg m;

    for (unsigned i = 0; i < a->n; i++) {
        uint64_t v = i;

        vuf_msg_init(&m, VUF_REQ_SET_VRING_NUM + (i % 3), 0, &v, 8);
        if (i % 7 == 0)
            vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0);
        a->rc = vuf_conn_send(a->c, &m);
        if (a->rc)
            return NULL;
    }
    return NULL;
}

static void test_back_to_back_sends(void **state)
{
    struct fx *f = *state;
    struct sender_args args = {f->b, 2000, 0};
    struct vuf_msg r;
    pthread_t th;

    assert_int_equal(pthread_create(&th, NULL, many_sender, &args), 0);
    for (unsigned i = 0; i < args.n; i++) {
        int rc = vuf_conn_recv(f->a, &r);

        if (rc) {
            pthread_join(th, NULL);
            fail_msg("message %u: recv = %d", i, rc);
        }
        if (i % 7 == 0) {
            assert_int_equal(r.hdr.request, VUF_REQ_GET_FEATURES);
            assert_int_equal(r.hdr.size, 0);
        } else {
            assert_int_equal(r.hdr.request, VUF_REQ_SET_VRING_NUM + (i % 3));
            assert_int_equal(r.payload.u64, i);
        }
    }
    pthread_join(th, NULL);
    assert_rc(args.rc, 0);
}

/* ------------------------------------------------------------------------ */
/* peer_closed                                                              */
/* ------------------------------------------------------------------------ */

static void test_peer_closed(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;

    assert_false(vuf_conn_peer_closed(f->a));
    assert_false(vuf_conn_peer_closed(f->b));
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0), 0);
    assert_rc(vuf_conn_send(f->b, &m), 0);
    assert_false(vuf_conn_peer_closed(f->a)); /* data is not a hang-up */
    vuf_conn_close(f->b);
    f->b = NULL;
    /* "HUP and no data": a message is still queued. */
    assert_false(vuf_conn_peer_closed(f->a));
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_true(vuf_conn_peer_closed(f->a));
    assert_true(vuf_conn_peer_closed(f->a)); /* consumes nothing */
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNRESET);
}

static void test_peer_closed_plain(void **state)
{
    struct fx *f = *state;

    assert_false(vuf_conn_peer_closed(f->a));
    vuf_conn_close(f->b);
    f->b = NULL;
    assert_true(vuf_conn_peer_closed(f->a));
}

/* A peer that only shuts its write side has hung up too, once drained. */
static void test_peer_closed_half(void **state)
{
    struct fx *f = *state;
    struct vuf_msg m, r;

    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_STATUS, 0, NULL, 0), 0);
    assert_rc(vuf_conn_send(f->b, &m), 0);
    assert_int_equal(shutdown(vuf_conn_fd(f->b), SHUT_WR), 0);
    assert_false(vuf_conn_peer_closed(f->a));
    assert_rc(vuf_conn_recv(f->a, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GET_STATUS);
    assert_true(vuf_conn_peer_closed(f->a));
    assert_rc(vuf_conn_recv(f->a, &r), -ECONNRESET);
}

/* ------------------------------------------------------------------------ */
/* EINTR                                                                    */
/* ------------------------------------------------------------------------ */

static volatile sig_atomic_t g_alarms;

static void on_alarm(int sig)
{
    (void)sig;
    g_alarms++;
}

struct delayed_args {
    struct vuf_conn *c;
    int delay_ms;
};

static void *delayed_sender(void *arg)
{
    struct delayed_args *a = arg;
    struct vuf_msg m;
    uint64_t v = 77;

    sleep_ms(a->delay_ms);
    vuf_msg_init(&m, VUF_REQ_SET_FEATURES, 0, &v, 8);
    vuf_conn_send(a->c, &m);
    return NULL;
}

/* Signals without SA_RESTART during a wait: the call keeps going until the
 * message or the deadline. */
static void test_recv_survives_signals(void **state)
{
    struct fx *f = *state;
    struct sigaction sa, old;
    struct itimerval it = {.it_interval = {0, 10000}, .it_value = {0, 10000}};
    struct itimerval off = {{0, 0}, {0, 0}};
    struct delayed_args args = {f->b, 300};
    sigset_t block, prev;
    struct vuf_msg r;
    pthread_t th;
    int rc;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART */
    assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
    /* Only this thread takes the signal. */
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &block, &prev);
    assert_int_equal(pthread_create(&th, NULL, delayed_sender, &args), 0);
    pthread_sigmask(SIG_SETMASK, &prev, NULL);

    g_alarms = 0;
    vuf_conn_set_timeout(f->a, 3000);
    setitimer(ITIMER_REAL, &it, NULL);
    rc = vuf_conn_recv(f->a, &r);
    setitimer(ITIMER_REAL, &off, NULL);
    pthread_join(th, NULL);
    sigaction(SIGALRM, &old, NULL);
    assert_true(g_alarms > 5);
    assert_rc(rc, 0);
    assert_int_equal(r.payload.u64, 77);
}

/* ------------------------------------------------------------------------ */
/* Sockets: connect, listen, accept, adopt                                  */
/* ------------------------------------------------------------------------ */

static void test_connect_nothing_there(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    char path[256];
    struct vuf_conn *c = NULL;
    long long t0, dt;
    int rc;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/nobody.sock", dir);
    t0 = now_ms();
    rc = vuf_conn_connect(path, 100, &c);
    dt = now_ms() - t0;
    if (rc == 0)
        vuf_conn_close(c);
    tu_rmtree(dir);
    /* The last attempt's error: still no socket file at the deadline. */
    assert_int_equal(rc, -ENOENT);
    if (dt < 90 || dt > 100 + SLACK_MS)
        fail_msg("connect timeout 100 ms took %lld ms (rc %d)", dt, rc);

    /* 0: one attempt, at once. */
    dir = tu_mkdtemp("vuf-conn");
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/nobody.sock", dir);
    t0 = now_ms();
    rc = vuf_conn_connect(path, 0, &c);
    dt = now_ms() - t0;
    if (rc == 0)
        vuf_conn_close(c);
    tu_rmtree(dir);
    assert_int_equal(rc, -ENOENT);
    assert_true(dt < 50);
}

/* A socket file with no listener behind it (ECONNREFUSED) is retried too. */
static void test_connect_stale_socket(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    char path[256];
    struct vuf_conn *c = NULL;
    long long t0, dt;
    int lfd, rc;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/stale.sock", dir);
    assert_rc(vuf_conn_listen(path, &lfd), 0);
    close(lfd); /* the file stays */
    t0 = now_ms();
    rc = vuf_conn_connect(path, 100, &c);
    dt = now_ms() - t0;
    if (rc == 0)
        vuf_conn_close(c);
    assert_int_equal(rc, -ECONNREFUSED);
    if (dt < 90 || dt > 100 + SLACK_MS)
        fail_msg("connect to stale socket, timeout 100 ms, took %lld ms (rc %d)", dt, rc);

    /* vuf_conn_listen replaces the stale file. */
    assert_rc(vuf_conn_listen(path, &lfd), 0);
    assert_rc(vuf_conn_connect(path, 1000, &c), 0);
    struct vuf_conn *s = NULL;
    assert_rc(vuf_conn_accept(lfd, 1000, &s), 0);
    vuf_conn_close(s);
    vuf_conn_close(c);
    close(lfd);
    tu_rmtree(dir);
}

/* A path that exists but is not a socket can never become a back-end: a
 * regular file and a directory fail at once with -ENOTSOCK instead of being
 * retried like a back-end that is still starting. The bound is half the
 * timeout, far from both the retry loop (the whole timeout) and the time a
 * single failed connect takes. */
static void connect_not_socket(const char *path)
{
    const int timeout_ms = 4000;
    struct vuf_conn *c = NULL;
    int fds0 = tu_count_fds();
    long long t0, dt;
    int rc;

    t0 = now_ms();
    rc = vuf_conn_connect(path, timeout_ms, &c);
    dt = now_ms() - t0;
    if (rc == 0)
        vuf_conn_close(c);
    assert_int_equal(rc, -ENOTSOCK);
    assert_null(c);
    if (dt >= timeout_ms / 2)
        fail_msg("connect to non-socket %s took %lld ms (timeout %d ms)", path, dt, timeout_ms);
    assert_int_equal(tu_count_fds(), fds0);
}

static void test_connect_not_a_socket(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    char path[256];
    int fd;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/file", dir);
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    connect_not_socket(path);
    snprintf(path, sizeof(path), "%s/dir", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    connect_not_socket(path);
    /* A symlink is followed, as connect() follows it. */
    snprintf(path, sizeof(path), "%s/link", dir);
    assert_int_equal(symlink("file", path), 0);
    connect_not_socket(path);
    tu_rmtree(dir);
}

struct late_listen_args {
    const char *path;
    int delay_ms;
    int lfd;
    int rc;
};

static void *late_listener(void *arg)
{
    struct late_listen_args *a = arg;

    sleep_ms(a->delay_ms);
    a->rc = vuf_conn_listen(a->path, &a->lfd);
    return NULL;
}

static void test_connect_retry(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    char path[256];
    struct late_listen_args args;
    struct vuf_conn *c = NULL, *s = NULL;
    struct vuf_msg m, r;
    pthread_t th;
    long long t0, dt;
    int rc;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/late.sock", dir);
    args = (struct late_listen_args){path, 50, -1, -1};
    t0 = now_ms();
    assert_int_equal(pthread_create(&th, NULL, late_listener, &args), 0);
    rc = vuf_conn_connect(path, 2000, &c);
    dt = now_ms() - t0;
    pthread_join(th, NULL);
    if (rc != 0) {
        if (args.lfd >= 0)
            close(args.lfd);
        tu_rmtree(dir);
        fail_msg("connect with retry = %d after %lld ms (listener rc %d)", rc, dt, args.rc);
    }
    assert_rc(args.rc, 0);
    assert_true(dt >= 40);
    assert_true(dt < 1000);
    assert_rc(vuf_conn_accept(args.lfd, 1000, &s), 0);
    /* Both directions work. */
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_GET_FEATURES, 0, NULL, 0), 0);
    assert_rc(vuf_conn_send(c, &m), 0);
    assert_rc(vuf_conn_recv(s, &r), 0);
    assert_int_equal(r.hdr.request, VUF_REQ_GET_FEATURES);
    uint64_t v = 1ull << 30;
    assert_int_equal(vuf_msg_init_reply(&m, &r, &v, 8), 0);
    assert_rc(vuf_conn_send(s, &m), 0);
    assert_rc(vuf_conn_recv(c, &r), 0);
    assert_int_equal(r.payload.u64, 1ull << 30);
    vuf_conn_close(s);
    vuf_conn_close(c);
    close(args.lfd);
    tu_rmtree(dir);
}

struct connect_args {
    const char *path;
    int timeout_ms;
    int rc;
    long long ms;
    struct vuf_conn *c;
};

static void *connect_thread(void *arg)
{
    struct connect_args *a = arg;
    long long t0 = now_ms();

    a->rc = vuf_conn_connect(a->path, a->timeout_ms, &a->c);
    a->ms = now_ms() - t0;
    return NULL;
}

/* A listener that accepts nothing and whose backlog is full: on AF_UNIX a
 * blocking connect() then sleeps until the peer accepts, with no limit. The
 * connect timeout must still hold. */
static void test_connect_backlog_full(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct connect_args args;
    struct timespec until;
    int lfd, fill[64], nfill = 0, joined;
    pthread_t th;

    (void)state;
    assert_non_null(dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/full.sock", dir);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    /* Fill the backlog with non-blocking connects until the kernel says so. */
    while (nfill < 64) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        assert_true(fd >= 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            assert_int_equal(errno, EAGAIN);
            close(fd);
            break;
        }
        fill[nfill++] = fd;
    }
    assert_true(nfill < 64);

    args = (struct connect_args){sa.sun_path, 200, 0, 0, NULL};
    assert_int_equal(pthread_create(&th, NULL, connect_thread, &args), 0);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 3;
    joined = pthread_timedjoin_np(th, NULL, &until) == 0;
    if (!joined) {
        /* Unblock the stuck connect by accepting everything, then join. */
        for (int i = 0; i < nfill + 1; i++) {
            int a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (a >= 0)
                close(a);
        }
        pthread_join(th, NULL);
    }
    if (args.rc == 0)
        vuf_conn_close(args.c);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    close(lfd);
    tu_rmtree(dir);
    if (!joined)
        fail_msg("vuf_conn_connect(timeout 200 ms) to a full backlog was still blocked "
                 "after 3 s");
    /* EAGAIN (backlog full) until the deadline is reported as a timeout. */
    assert_int_equal(args.rc, -ETIMEDOUT);
    if (args.ms < 180 || args.ms > 200 + SLACK_MS)
        fail_msg("connect to a full backlog, timeout 200 ms, took %lld ms (rc %d)", args.ms,
                 args.rc);
}

static void test_path_too_long(void **state)
{
    char path[300];
    struct vuf_conn *c = NULL;
    int lfd = -1;

    (void)state;
    memset(path, 'x', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = 0;
    assert_int_equal(vuf_conn_connect(path, 0, &c), -ENAMETOOLONG);
    assert_int_equal(vuf_conn_listen(path, &lfd), -ENAMETOOLONG);
    assert_null(c);
    assert_int_equal(lfd, -1);
}

/* No path is a bad argument, not a path too long (issue 14). */
static void test_null_path(void **state)
{
    struct vuf_conn *c = NULL;
    int lfd = -1;

    (void)state;
    assert_int_equal(vuf_conn_connect(NULL, 0, &c), -EINVAL);
    assert_int_equal(vuf_conn_connect(NULL, 100, &c), -EINVAL);
    assert_int_equal(vuf_conn_connect("/nonexistent/vuf.sock", 0, NULL), -EINVAL);
    assert_int_equal(vuf_conn_listen(NULL, &lfd), -EINVAL);
    assert_null(c);
    assert_int_equal(lfd, -1);
}

/* Every int has a description: -INT_MIN would overflow (issue 14). */
static void test_strerror_any_int(void **state)
{
    (void)state;
    assert_string_equal(vuf_strerror(INT_MIN), "unknown error");
    assert_non_null(vuf_strerror(INT_MAX));
    assert_non_null(vuf_strerror(INT_MIN + 1));
    assert_string_equal(vuf_strerror(-ECONNRESET), "peer hung up");
}

static void test_accept_timeout(void **state)
{
    char *dir = tu_mkdtemp("vuf-conn");
    char path[256];
    struct vuf_conn *c = NULL;
    long long t0, dt;
    int lfd, rc;

    (void)state;
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/acc.sock", dir);
    assert_rc(vuf_conn_listen(path, &lfd), 0);
    t0 = now_ms();
    rc = vuf_conn_accept(lfd, 100, &c);
    dt = now_ms() - t0;
    if (rc == 0)
        vuf_conn_close(c);
    close(lfd);
    tu_rmtree(dir);
    assert_rc(rc, -ETIMEDOUT);
    if (dt < 90 || dt > 100 + SLACK_MS)
        fail_msg("accept timeout 100 ms took %lld ms", dt);
}

static void test_adopt(void **state)
{
    int sv[2];
    struct vuf_conn *c = NULL;
    struct vuf_msg m;
    uint8_t b[VUF_HDR_SIZE + 8];
    struct vuf_hdr h;
    uint64_t v = 9;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_rc(vuf_conn_adopt(sv[0], &c), 0);
    assert_int_equal(vuf_conn_fd(c), sv[0]);
    assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_FEATURES, 0, &v, 8), 0);
    assert_rc(vuf_conn_send(c, &m), 0);
    assert_int_equal(recv(sv[1], b, sizeof(b), MSG_WAITALL), (ssize_t)sizeof(b));
    assert_int_equal(vuf_hdr_decode(b, sizeof(b), &h), 0);
    assert_int_equal(h.request, VUF_REQ_SET_FEATURES);
    assert_int_equal(h.size, 8);
    vuf_conn_close(c);
    /* Closing the conn closed the adopted fd: the peer sees EOF. */
    assert_int_equal(recv(sv[1], b, sizeof(b), 0), 0);
    assert_false(fd_is_open(sv[0]));
    close(sv[1]);
}

static void test_pair_and_close(void **state)
{
    struct vuf_conn *a = NULL, *b = NULL;
    int fa, fb;

    (void)state;
    vuf_conn_close(NULL);
    assert_rc(vuf_conn_pair(&a, &b), 0);
    fa = vuf_conn_fd(a);
    fb = vuf_conn_fd(b);
    assert_true(fa >= 0 && fb >= 0 && fa != fb);
    assert_true(fcntl(fa, F_GETFD) & FD_CLOEXEC);
    assert_true(fcntl(fb, F_GETFD) & FD_CLOEXEC);
    vuf_conn_close(a);
    vuf_conn_close(b);
    assert_false(fd_is_open(fa));
    assert_false(fd_is_open(fb));
}

static void test_msg_close_fds(void **state)
{
    struct vuf_msg m;
    int p[2], e;

    (void)state;
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    e = eventfd(0, EFD_CLOEXEC);
    assert_true(e >= 0);
    memset(&m, 0, sizeof(m));
    m.fds[0] = p[0];
    m.fds[1] = -1;
    m.fds[2] = p[1];
    m.fds[3] = e; /* beyond nfds: untouched */
    m.nfds = 3;
    vuf_msg_close_fds(&m);
    assert_int_equal(m.nfds, 0);
    assert_false(fd_is_open(p[0]));
    assert_false(fd_is_open(p[1]));
    assert_true(fd_is_open(e));
    vuf_msg_close_fds(&m); /* nfds 0: no-op */
    assert_true(fd_is_open(e));
    close(e);
}

/* The one "stream is dead" rule (conn.h): every errno this library
 * returns, on the side it belongs to. */
static void test_error_is_fatal(void **state)
{
    static const int fatal[] = {ECONNRESET, EPIPE,   ENOTCONN, ECONNABORTED,
                                ETIMEDOUT,  EBADMSG, EMSGSIZE, ETOOMANYREFS};
    static const int kept[] = {EPROTO, E2BIG,  EBADF, EINVAL, ENOTSUP, EIO,
                               ENOMEM, EAGAIN, EPERM, EBUSY,  ENOENT,  EFAULT};

    (void)state;
    for (unsigned i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
        if (!vuf_conn_error_is_fatal(-fatal[i]))
            fail_msg("-%s should be fatal", strerror(fatal[i]));
    }
    for (unsigned i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
        if (vuf_conn_error_is_fatal(-kept[i]))
            fail_msg("-%s should leave the stream usable", strerror(kept[i]));
    }
    assert_false(vuf_conn_error_is_fatal(0));
    assert_false(vuf_conn_error_is_fatal(1));
    assert_false(vuf_conn_error_is_fatal(ECONNRESET)); /* positive: not an error */
}

/* Runs last: the whole suite left no fd behind. */
static void test_no_fd_leak_whole_suite(void **state)
{
    int now = tu_count_fds();

    (void)state;
    if (now != g_fds_at_start)
        fail_msg("suite started with %d fds open, ends with %d", g_fds_at_start, now);
}

static int group_setup(void **state)
{
    (void)state;
    g_fds_at_start = tu_count_fds();
    return 0;
}

#define PAIR(fn)                                       \
    {                                                  \
        "pair/" #fn, fn, setup_pair, teardown_fx, NULL \
    }
#define UNIX(fn)                                       \
    {                                                  \
        "unix/" #fn, fn, setup_unix, teardown_fx, NULL \
    }
#define BOTH(fn) PAIR(fn), UNIX(fn)
#define PLAIN(fn)                                  \
    {                                              \
#fn, fn, setup_count, teardown_count, NULL \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        BOTH(test_one_fd),
        BOTH(test_eight_fds),
        BOTH(test_send_nine_fds),
        BOTH(test_recv_nine_fds),
        PAIR(test_recv_sixteen_fds),
        BOTH(test_fds_with_payload_chunk),
        BOTH(test_fds_stay_with_their_message),
        BOTH(test_truncated_header),
        BOTH(test_header_size_4gib),
        PAIR(test_header_size_one_over),
        BOTH(test_hangup_mid_payload),
        PAIR(test_hangup_mid_payload_with_fd),
        BOTH(test_clean_hangup),
        PAIR(test_hangup_after_message),
        BOTH(test_send_after_hangup),
        PAIR(test_recv_checks_framing_only),
        BOTH(test_recv_timeout),
        PAIR(test_recv_timeout_mid_payload),
        BOTH(test_send_timeout),
        PAIR(test_timeout_accessors),
        BOTH(test_partial_reads),
        BOTH(test_large_message),
        BOTH(test_back_to_back_one_write),
        BOTH(test_back_to_back_sends),
        BOTH(test_peer_closed),
        UNIX(test_peer_closed_plain),
        PAIR(test_peer_closed_plain),
        BOTH(test_peer_closed_half),
        PAIR(test_recv_survives_signals),
        PLAIN(test_connect_nothing_there),
        PLAIN(test_connect_stale_socket),
        PLAIN(test_connect_not_a_socket),
        PLAIN(test_connect_retry),
        PLAIN(test_connect_backlog_full),
        PLAIN(test_path_too_long),
        PLAIN(test_null_path),
        PLAIN(test_strerror_any_int),
        PLAIN(test_accept_timeout),
        PLAIN(test_adopt),
        PLAIN(test_pair_and_close),
        PLAIN(test_msg_close_fds),
        PLAIN(test_error_is_fatal),
        {"test_no_fd_leak_whole_suite", test_no_fd_leak_whole_suite, NULL, NULL, NULL},
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
