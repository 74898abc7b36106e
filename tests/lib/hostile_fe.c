/* SPDX-License-Identifier: MIT */
/* A hostile front-end against vuf's servers: see hostile_fe.h. */
#include "hostile_fe.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "vuf/virtio.h"

#define F_PROTO (1ull << VUF_VHOST_F_PROTOCOL_FEATURES)
#define F_VERSION_1 (1ull << 32)

const char *hfe_kind_name(enum hfe_kind kind)
{
    return kind == HFE_RELAY ? "relay" : "back-end";
}

int hfe_count_fds(int pid)
{
    char path[64];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    d = opendir(path);
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void start_relay(struct hfe_target *t, const char *log)
{
    const char *vuf = tu_built_exe("VUF_TOOL");
    char *argv[] = {(char *)vuf, "relay", "--listen", t->relay_sock, "--connect", t->be_sock, NULL};

    assert_non_null(vuf);
    unlink(t->relay_sock);
    assert_int_equal(tu_spawn(&t->relay, argv, log), 0);
    if (tu_wait_socket_file(&t->relay, t->relay_sock, TU_START_MS) != 0) {
        tu_dump_log(&t->relay);
        fail_msg("vuf relay did not listen on %s", t->relay_sock);
    }
}

/* The back-end's fd count once it has settled at `want` (it closes a
 * connection's fds after noticing the hang-up), or the last count. */
static int be_fds_settle(struct hfe_target *t, int want)
{
    int64_t end = tu_now_ms() + 3000;
    int n;

    while ((n = hfe_count_fds(t->be.pid)) != want && tu_now_ms() < end)
        tu_sleep_ms(10);
    return n;
}

void hfe_target_up(struct hfe_target *t, enum hfe_kind kind)
{
    const char *be = tu_built_exe("VUF_BACKEND_BLK");
    char sockarg[400];

    assert_non_null(be);
    memset(t, 0, sizeof(*t));
    t->kind = kind;
    t->be.pid = t->relay.pid = -1;
    t->dir = tu_mkdtemp("vuf-hfe");
    assert_non_null(t->dir);
    snprintf(t->be_sock, sizeof(t->be_sock), "%s/be.sock", t->dir);
    snprintf(t->be_log, sizeof(t->be_log), "%s/be.log", t->dir);
    snprintf(t->relay_sock, sizeof(t->relay_sock), "%s/relay.sock", t->dir);
    snprintf(t->relay_log, sizeof(t->relay_log), "%s/relay.log", t->dir);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", t->be_sock);
    /* A RAM disk whose content travels with DEVICE_STATE: a save then
     * streams a megabyte, more than a pipe holds. */
    char *argv[] = {(char *)be,       sockarg, "--ram=1M", "--state-includes-ram",
                    "--num-queues=2", NULL};
    tu_spawn_wait_file(&t->be, argv, t->be_log, t->be_sock);
    t->be_fds0 = hfe_count_fds(t->be.pid);
    assert_true(t->be_fds0 > 0);
    t->sock = t->be_sock;
    if (kind == HFE_RELAY) {
        start_relay(t, t->relay_log);
        t->sock = t->relay_sock;
    }
}

static void assert_alive(struct tu_proc *p, const char *what)
{
    int st;

    if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
        tu_dump_log(p);
        p->pid = -1;
        fail_msg("%s died during the case (status 0x%x)", what, st);
    }
}

static bool log_clean(const char *path)
{
    return !tu_log_has(path, "Sanitizer") && !tu_log_has(path, "runtime error");
}

/* `vuf blk SOCK write|verify` of 64 KiB with a pattern: a new, well-behaved
 * front-end, through the library, served start to end. */
static void blk_served(struct hfe_target *t, const char *sock, const char *what, unsigned seed)
{
    static struct tu_run r;
    char pat[16];

    snprintf(pat, sizeof(pat), "%u", seed);
    tu_run_capture(&r, tu_built_exe("VUF_TOOL"),
                   (const char *[]){"blk", sock, what, "--offset", "64K", "--len", "64K",
                                    "--pattern", pat, "--timeout-ms", "5000", NULL},
                   20000);
    if (tu_exit_code(&r) != 0) {
        tu_dump_log(&t->be);
        if (t->kind == HFE_RELAY)
            tu_dump_log(&t->relay);
        fail_msg("a well-behaved front-end was not served after the case (%s, `vuf blk %s` "
                 "exit %d)",
                 hfe_kind_name(t->kind), what, tu_exit_code(&r));
    }
}

void hfe_target_renew(struct hfe_target *t)
{
    char log[400];

    assert_alive(&t->be, "the back-end");
    if (t->kind != HFE_RELAY)
        return;
    tu_assert_exits_zero(&t->relay, 5000);
    snprintf(log, sizeof(log), "%s/relay-r%u.log", t->dir, t->renewed);
    if (!log_clean(t->relay_log) || !log_clean(log)) {
        tu_dump_log(&t->relay);
        fail_msg("sanitizer report in the relay's log");
    }
    snprintf(log, sizeof(log), "%s/relay-r%u.log", t->dir, ++t->renewed);
    start_relay(t, log);
}

void hfe_target_down(struct hfe_target *t)
{
    unsigned seed = 40 + t->checks++;

    assert_alive(&t->be, "the back-end");
    if (t->kind == HFE_RELAY) {
        char log2[400];

        /* It serves one VMM and exits 0 when that VMM is gone. */
        tu_assert_exits_zero(&t->relay, 5000);
        if (!log_clean(t->relay_log)) {
            tu_dump_log(&t->relay);
            fail_msg("sanitizer report in the relay's log");
        }
        for (int pass = 0; pass < 2; pass++) {
            snprintf(log2, sizeof(log2), "%s/relay-%d.log", t->dir, pass);
            start_relay(t, log2);
            blk_served(t, t->relay_sock, pass ? "verify" : "write", seed);
            tu_assert_exits_zero(&t->relay, 5000);
            assert_true(log_clean(log2));
        }
    } else {
        blk_served(t, t->be_sock, "write", seed);
        blk_served(t, t->be_sock, "verify", seed);
    }
    assert_alive(&t->be, "the back-end");
    int n = be_fds_settle(t, t->be_fds0);
    if (n != t->be_fds0) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "ls -l /proc/%d/fd >&2", (int)t->be.pid);
        if (system(cmd) != 0)
            fprintf(stderr, "(could not list the fds)\n");
        fail_msg("the back-end has %d fds after the case, %d at rest", n, t->be_fds0);
    }
    tu_stop_clean(&t->be, t->be_sock);
    tu_rmtree(t->dir);
    t->dir = NULL;
}

/* ---- raw messages ------------------------------------------------------- */

int hfe_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int64_t end = tu_now_ms() + TU_START_MS;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_true(strlen(path) < sizeof(a.sun_path));
    strcpy(a.sun_path, path);
    /* The socket file exists from bind(); connections work from listen(). */
    while (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (errno != ECONNREFUSED || tu_now_ms() >= end)
            fail_msg("connect %s: %s", path, strerror(errno));
        tu_sleep_ms(5);
    }
    return fd;
}

int hfe_send(int fd, uint32_t code, uint32_t flags, uint32_t hdr_size, const void *payload,
             size_t len, const int *fds, unsigned nfds)
{
    uint8_t *buf = malloc(VUF_HDR_SIZE + len);
    union {
        char b[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    size_t off = 0;
    int ret = 0;

    assert_non_null(buf);
    assert_true(nfds <= 16);
    memcpy(buf, &code, 4);
    memcpy(buf + 4, &flags, 4);
    memcpy(buf + 8, &hdr_size, 4);
    if (len)
        memcpy(buf + VUF_HDR_SIZE, payload, len);
    if (nfds) {
        struct cmsghdr *c;
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    while (off < VUF_HDR_SIZE + len) {
        ssize_t n;
        iov.iov_base = buf + off;
        iov.iov_len = VUF_HDR_SIZE + len - off;
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = -errno;
            break;
        }
        off += (size_t)n;
        mh.msg_control = NULL;
        mh.msg_controllen = 0;
    }
    free(buf);
    return ret;
}

static int wait_in(int fd, int64_t end)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = end - tu_now_ms();
        int r;

        if (left < 0)
            left = 0;
        r = poll(&p, 1, (int)left);
        if (r > 0)
            return 0;
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

static int read_full(int fd, uint8_t *p, size_t len, struct hfe_msg *m, int64_t end)
{
    size_t have = 0;

    while (have < len) {
        union {
            char b[CMSG_SPACE(sizeof(int) * VUF_MAX_FDS)];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {.iov_base = p + have, .iov_len = len - have};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl)};
        int r = wait_in(fd, end);
        ssize_t n;

        if (r < 0)
            return r;
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return errno == ECONNRESET ? -ECONNRESET : -errno;
        if (n == 0)
            return -ECONNRESET;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            unsigned k = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int got[VUF_MAX_FDS];
            memcpy(got, CMSG_DATA(c), k * sizeof(int));
            for (unsigned i = 0; i < k; i++)
                close(got[i]);
            m->nfds += k;
        }
        have += (size_t)n;
    }
    return 0;
}

int hfe_recv(int fd, struct hfe_msg *m, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;
    uint8_t hdr[VUF_HDR_SIZE];
    int r;

    memset(m, 0, sizeof(*m));
    r = read_full(fd, hdr, sizeof(hdr), m, end);
    if (r < 0)
        return r;
    memcpy(&m->code, hdr, 4);
    memcpy(&m->flags, hdr + 4, 4);
    memcpy(&m->size, hdr + 8, 4);
    if (m->size > sizeof(m->payload))
        return -EPROTO;
    return read_full(fd, m->payload, m->size, m, end);
}

void hfe_expect_u64(int fd, uint32_t code, uint64_t want)
{
    struct hfe_msg m;
    uint64_t v;
    int r = hfe_recv(fd, &m, HFE_REPLY_MS);

    if (r < 0)
        fail_msg("%s: no reply: %s", vuf_request_name(code), strerror(-r));
    assert_int_equal(m.code, code);
    assert_int_equal(m.flags, VUF_VERSION | VUF_FLAG_REPLY);
    assert_int_equal(m.size, 8);
    assert_int_equal(m.nfds, 0);
    memcpy(&v, m.payload, 8);
    if (v != want)
        fail_msg("%s: reply 0x%llx (%lld), want 0x%llx (%lld)", vuf_request_name(code),
                 (unsigned long long)v, (long long)v, (unsigned long long)want, (long long)want);
}

void hfe_expect_closed(int fd)
{
    struct hfe_msg m;
    int r = hfe_recv(fd, &m, HFE_REPLY_MS);

    if (r == 0)
        fail_msg("got %s (size %u), want the connection closed", vuf_request_name(m.code), m.size);
    if (r != -ECONNRESET)
        fail_msg("want the connection closed, got %s", strerror(-r));
}

void hfe_expect_silence(int fd, int ms)
{
    struct hfe_msg m;
    int r = hfe_recv(fd, &m, ms);

    if (r == 0)
        fail_msg("unexpected %s (size %u)", vuf_request_name(m.code), m.size);
    assert_int_equal(r, -ETIMEDOUT);
}

void hfe_ack(int fd, uint32_t code, const void *p, size_t len, const int *fds, unsigned nfds,
             int64_t want)
{
    assert_int_equal(
        hfe_send(fd, code, VUF_VERSION | VUF_FLAG_NEED_REPLY, (uint32_t)len, p, len, fds, nfds), 0);
    hfe_expect_u64(fd, code, (uint64_t)want);
}

uint64_t hfe_get_u64(int fd, uint32_t code)
{
    struct hfe_msg m;
    uint64_t v;
    int r;

    assert_int_equal(hfe_send(fd, code, VUF_VERSION, 0, NULL, 0, NULL, 0), 0);
    r = hfe_recv(fd, &m, HFE_REPLY_MS);
    if (r < 0)
        fail_msg("%s: no reply: %s", vuf_request_name(code), strerror(-r));
    assert_int_equal(m.code, code);
    assert_int_equal(m.size, 8);
    memcpy(&v, m.payload, 8);
    return v;
}

void hfe_ping(int fd)
{
    uint64_t f = hfe_get_u64(fd, VUF_REQ_GET_FEATURES);

    assert_true(f & F_VERSION_1);
}

int hfe_sync(int fd)
{
    int64_t end = tu_now_ms() + HFE_REPLY_MS;
    struct hfe_msg m;

    if (hfe_send(fd, VUF_REQ_GET_FEATURES, VUF_VERSION, 0, NULL, 0, NULL, 0) < 0)
        return -ECONNRESET;
    for (;;) {
        int r = hfe_recv(fd, &m, (int)(end - tu_now_ms() > 0 ? end - tu_now_ms() : 0));

        if (r == -ECONNRESET || r == -EPIPE)
            return -ECONNRESET;
        if (r == -ETIMEDOUT)
            fail_msg("the server answers nothing any more (GET_FEATURES)");
        if (r == 0 && m.code == VUF_REQ_GET_FEATURES && m.flags == (VUF_VERSION | VUF_FLAG_REPLY))
            return 0;
    }
}

uint64_t hfe_handshake(int fd)
{
    uint64_t want = VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(CONFIG) |
                    VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) | VUF_PROTO_MASK(DEVICE_STATE);
    uint64_t f, pf, feat = F_VERSION_1 | F_PROTO;

    assert_int_equal(hfe_send(fd, VUF_REQ_SET_OWNER, VUF_VERSION, 0, NULL, 0, NULL, 0), 0);
    f = hfe_get_u64(fd, VUF_REQ_GET_FEATURES);
    assert_true((f & feat) == feat);
    pf = hfe_get_u64(fd, VUF_REQ_GET_PROTOCOL_FEATURES) & want;
    assert_true(pf & VUF_PROTO_MASK(REPLY_ACK));
    assert_int_equal(hfe_send(fd, VUF_REQ_SET_PROTOCOL_FEATURES, VUF_VERSION, 8, &pf, 8, NULL, 0),
                     0);
    hfe_ack(fd, VUF_REQ_SET_FEATURES, &feat, 8, NULL, 0, 0);
    return pf;
}

/* ---- guest memory and a split ring -------------------------------------- */

void hfe_mem_new(struct hfe_mem *m, uint64_t len)
{
    memset(m, 0, sizeof(*m));
    m->fd = memfd_create("hfe-guest", MFD_CLOEXEC);
    assert_true(m->fd >= 0);
    assert_int_equal(ftruncate(m->fd, (off_t)len), 0);
    m->p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
    assert_true(m->p != MAP_FAILED);
    m->len = len;
    m->gpa = 0;
    m->uva = (uint64_t)(uintptr_t)m->p;
}

void hfe_mem_free(struct hfe_mem *m)
{
    if (m->p)
        munmap(m->p, m->len);
    if (m->fd >= 0)
        close(m->fd);
    m->p = NULL;
    m->fd = -1;
}

struct vuf_mem_region hfe_mem_region(const struct hfe_mem *m)
{
    return (struct vuf_mem_region){.guest_phys_addr = m->gpa,
                                   .memory_size = m->len,
                                   .userspace_addr = m->uva,
                                   .mmap_offset = 0};
}

void hfe_set_mem(int fd, const struct hfe_mem *m)
{
    struct vuf_mem_table t = {.nregions = 1};

    t.regions[0] = hfe_mem_region(m);
    hfe_ack(fd, VUF_REQ_SET_MEM_TABLE, &t, 8 + 32, &m->fd, 1, 0);
}

static void vring_file(int fd, uint32_t code, unsigned q, int efd)
{
    uint64_t v = q | (efd < 0 ? VUF_VRING_NOFD : 0);

    hfe_ack(fd, code, &v, 8, efd < 0 ? NULL : &efd, efd < 0 ? 0 : 1, 0);
}

void hfe_ring_start(int fd, const struct hfe_mem *m, unsigned q, int kick_fd, int call_fd,
                    int err_fd)
{
    struct vuf_vring_state s = {.index = q, .num = HFE_RING_NUM};
    struct vuf_vring_addr a = {.index = q,
                               .desc = m->uva + HFE_DESC,
                               .avail = m->uva + HFE_AVAIL,
                               .used = m->uva + HFE_USED};

    hfe_ack(fd, VUF_REQ_SET_VRING_NUM, &s, 8, NULL, 0, 0);
    s.num = 0;
    hfe_ack(fd, VUF_REQ_SET_VRING_BASE, &s, 8, NULL, 0, 0);
    hfe_ack(fd, VUF_REQ_SET_VRING_ADDR, &a, sizeof(a), NULL, 0, 0);
    vring_file(fd, VUF_REQ_SET_VRING_CALL, q, call_fd);
    if (err_fd >= 0)
        vring_file(fd, VUF_REQ_SET_VRING_ERR, q, err_fd);
    vring_file(fd, VUF_REQ_SET_VRING_KICK, q, kick_fd);
    s.num = 1;
    hfe_ack(fd, VUF_REQ_SET_VRING_ENABLE, &s, 8, NULL, 0, 0);
}

static void put_desc(uint8_t *table, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    uint8_t *d = table + 16 * i;

    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
}

void hfe_ring_push(struct hfe_mem *m)
{
    volatile uint16_t *avail = (volatile uint16_t *)(m->p + HFE_AVAIL);
    uint32_t type = 8; /* VIRTIO_BLK_T_GET_ID */
    uint16_t idx = avail[1];

    memset(m->p + HFE_REQ, 0, 16);
    memcpy(m->p + HFE_REQ, &type, 4);
    m->p[HFE_REQ + 0x200] = 0xff;
    put_desc(m->p + HFE_DESC, 0, m->gpa + HFE_REQ, 16, 1 /* NEXT */, 1);
    put_desc(m->p + HFE_DESC, 1, m->gpa + HFE_REQ + 0x100, 20, 1 | 2 /* WRITE */, 2);
    put_desc(m->p + HFE_DESC, 2, m->gpa + HFE_REQ + 0x200, 1, 2, 0);
    avail[2 + idx % HFE_RING_NUM] = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    avail[1] = (uint16_t)(idx + 1);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

uint16_t hfe_ring_used(const struct hfe_mem *m)
{
    return __atomic_load_n((const uint16_t *)(m->p + HFE_USED + 2), __ATOMIC_ACQUIRE);
}

bool hfe_ring_wait_used(const struct hfe_mem *m, uint16_t want, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;

    while (hfe_ring_used(m) != want) {
        if (tu_now_ms() >= end)
            return false;
        tu_sleep_ms(2);
    }
    return true;
}
