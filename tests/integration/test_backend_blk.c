/* SPDX-License-Identifier: MIT */
/*
 * vuf-backend-blk, the reference back-end, driven from outside with the
 * library's own client (vuf/client.h), guest memory, virtqueue and
 * virtio-blk driver: negotiation, config, I/O through real rings (with and
 * without EVENT_IDX / INDIRECT_DESC), GET_VRING_BASE, DEVICE_STATE save and
 * load across two processes, SHMEM and the back-end request channel via the
 * control socket, hostile input (bad regions, rings and descriptors), fd
 * hygiene, reconnect and SIGTERM.
 *
 * The binary comes from $VUF_BACKEND_BLK (set by meson); without it the
 * test fails. Every back-end runs in this test's temp dir and is reaped.
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "testutil.h"
#include "vuf/client.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define RAM_BYTES (8u << 20)
#define SHM_BYTES (64u << 10)
#define GUEST_BYTES (4u << 20)
#define QSIZE 64u
#define IO_TIMEOUT_MS 5000

/* What the back-end must offer (backend/blk_device.c). */
#define F(bit) (1ull << (bit))
#define EXPECT_FEATURES                                                                      \
    (F(32) | F(29) | F(28) | F(30) | F(VUF_BLK_F_SEG_MAX) | F(VUF_BLK_F_BLK_SIZE) |          \
     F(VUF_BLK_F_FLUSH) | F(VUF_BLK_F_CONFIG_WCE) | F(VUF_BLK_F_MQ) | F(VUF_BLK_F_DISCARD) | \
     F(VUF_BLK_F_WRITE_ZEROES))
/* ... and RING_PACKED (backend/vring.c), which these tests' split rings do
 * not ack (packed rings: test_packed_ref.c). */
#define OFFERED_FEATURES (EXPECT_FEATURES | F(VUF_VIRTIO_F_RING_PACKED))
#define EXPECT_PROTOCOL                                                                            \
    (VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ) |                \
     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(BACKEND_SEND_FD) | VUF_PROTO_MASK(RESET_DEVICE) |     \
     VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) | VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(DEVICE_STATE) | \
     VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(INFLIGHT_SHMFD))

static const char *backend_bin;
static char *tmpdir;
static unsigned seq;

/* ---- back-end processes -------------------------------------------------- */

struct be {
    struct tu_proc proc;
    char sock[256];
    char ctl[256];
};

/* Start a back-end with the default disk and any extra args (NULL-ended). */
static void be_start(struct be *b, ...)
{
    char *argv[24], ram[32], shm[32], sockarg[300], ctlarg[300], log[300];
    unsigned n = 0, id = seq++;
    va_list ap;
    const char *a;

    snprintf(b->sock, sizeof(b->sock), "%s/blk%u.sock", tmpdir, id);
    snprintf(b->ctl, sizeof(b->ctl), "%s/ctl%u.sock", tmpdir, id);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", b->sock);
    snprintf(ctlarg, sizeof(ctlarg), "--control=%s", b->ctl);
    snprintf(ram, sizeof(ram), "--ram=%u", RAM_BYTES);
    snprintf(shm, sizeof(shm), "--shm-size=%u", SHM_BYTES);
    snprintf(log, sizeof(log), "%s/blk%u.log", tmpdir, id);
    argv[n++] = (char *)backend_bin;
    argv[n++] = sockarg;
    argv[n++] = ctlarg;
    argv[n++] = shm;
    argv[n++] = ram;
    va_start(ap, b);
    while ((a = va_arg(ap, const char *)) && n < 22) {
        if (strncmp(a, "--file=", 7) == 0)
            argv[4] = (char *)a; /* a file disk instead of the RAM disk */
        else
            argv[n++] = (char *)a;
    }
    va_end(ap);
    argv[n] = NULL;
    assert_int_equal(tu_spawn(&b->proc, argv, log), 0);
    /* By file: a probe connect would be a client of its own. */
    if (tu_wait_socket_file(&b->proc, b->sock, 5000) != 0) {
        tu_dump_log(&b->proc);
        fail_msg("back-end did not come up");
    }
}

static bool be_alive(struct be *b)
{
    return b->proc.pid > 0 && kill(b->proc.pid, 0) == 0 && waitpid(b->proc.pid, NULL, WNOHANG) == 0;
}

/* SIGTERM: the back-end must exit 0 and remove its socket. */
static void be_stop(struct be *b)
{
    if (!be_alive(b)) {
        tu_dump_log(&b->proc);
        fail_msg("back-end died");
    }
    tu_stop_clean(&b->proc, b->sock);
}

static int be_count_fds(const struct be *b)
{
    char path[64];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)b->proc.pid);
    d = opendir(path);
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* ---- front-end session ---------------------------------------------------- */

static struct vuf_client *be_connect(struct be *b)
{
    struct vuf_conn *conn;
    struct vuf_client *c;

    assert_int_equal(vuf_conn_connect(b->sock, 5000, &conn), 0);
    assert_int_equal(vuf_client_new(conn, &c), 0);
    return c;
}

/* The QEMU-order handshake, expecting `features` to be offered; returns
 * the protocol features acked. */
static uint64_t negotiate_f(struct vuf_client *c, uint64_t features, uint64_t pf_mask)
{
    uint64_t f, pf;

    assert_int_equal(vuf_client_get_features(c, &f), 0);
    assert_int_equal(f, features);
    assert_int_equal(vuf_client_get_protocol_features(c, &pf), 0);
    assert_int_equal(pf, EXPECT_PROTOCOL);
    pf &= pf_mask;
    assert_int_equal(vuf_client_set_protocol_features(c, pf), 0);
    assert_int_equal(vuf_client_set_owner(c), 0);
    return pf;
}

static uint64_t negotiate(struct vuf_client *c, uint64_t pf_mask)
{
    return negotiate_f(c, OFFERED_FEATURES, pf_mask);
}

struct session {
    struct vuf_client *c;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[2];
    struct vuf_blk *blk[2];
    uint64_t features;
};

static void start_queue(struct session *s, unsigned idx)
{
    struct vuf_virtq_opts o = {.size = QSIZE, .index = idx, .features = s->features};
    struct vuf_vring_addr a;

    assert_int_equal(vuf_virtq_new_opts(s->gm, &o, &s->vq[idx]), 0);
    assert_int_equal(vuf_client_set_vring_num(s->c, idx, QSIZE), 0);
    assert_int_equal(vuf_client_set_vring_base(s->c, idx, 0), 0);
    vuf_virtq_vring_addr(s->vq[idx], &a);
    assert_int_equal(vuf_client_set_vring_addr(s->c, &a), 0);
    assert_int_equal(vuf_client_set_vring_kick(s->c, idx, vuf_virtq_kick_fd(s->vq[idx])), 0);
    assert_int_equal(vuf_client_set_vring_call(s->c, idx, vuf_virtq_call_fd(s->vq[idx])), 0);
    assert_int_equal(vuf_client_set_vring_enable(s->c, idx, true), 0);
    assert_int_equal(vuf_blk_new(s->vq[idx], 4, 64 * 1024, &s->blk[idx]), 0);
}

/* Negotiate `features`, hand over a fresh memfd guest memory and start
 * `nqueues` queues. */
static void session_open_f(struct session *s, struct be *b, uint64_t offered, uint64_t features,
                           unsigned nqueues)
{
    struct vuf_mem_region regions[VUF_MEM_TABLE_MAX];
    int fds[VUF_MEM_TABLE_MAX];
    int n;

    memset(s, 0, sizeof(*s));
    s->c = be_connect(b);
    negotiate_f(s->c, offered, ~0ull);
    s->features = features;
    assert_int_equal(vuf_client_set_features(s->c, features), 0);
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, GUEST_BYTES, &s->gm), 0);
    n = vuf_guest_mem_mem_table(s->gm, regions, fds, VUF_MEM_TABLE_MAX);
    assert_int_equal(n, 1);
    assert_int_equal(vuf_client_set_mem_table(s->c, regions, fds, (unsigned)n), 0);
    for (unsigned i = 0; i < nqueues; i++)
        start_queue(s, i);
}

static void session_open(struct session *s, struct be *b, uint64_t features, unsigned nqueues)
{
    session_open_f(s, b, OFFERED_FEATURES, features, nqueues);
}

static void session_close(struct session *s)
{
    for (unsigned i = 0; i < 2; i++) {
        vuf_blk_free(s->blk[i]);
        vuf_virtq_free(s->vq[i]);
    }
    vuf_client_free(s->c);
    vuf_guest_mem_free(s->gm);
    memset(s, 0, sizeof(*s));
}

/* ---- control socket -------------------------------------------------------- */

static int ctl_open(struct be *b)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_true(strlen(b->ctl) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, b->ctl, strlen(b->ctl) + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void ctl_send(int fd, const char *cmd)
{
    size_t n = strlen(cmd);
    assert_int_equal(write(fd, cmd, n), (ssize_t)n);
}

/* One answer line (without the newline). */
static void ctl_recv(int fd, char *buf, size_t cap)
{
    size_t have = 0;
    long end = tu_now_ms() + IO_TIMEOUT_MS;

    while (have + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(end - tu_now_ms());
        assert_true(left > 0);
        assert_int_equal(poll(&p, 1, left), 1);
        ssize_t n = read(fd, buf + have, 1);
        assert_int_equal(n, 1);
        if (buf[have] == '\n')
            break;
        have++;
    }
    buf[have] = '\0';
}

static void ctl_cmd(int fd, const char *cmd, char *ans, size_t cap)
{
    ctl_send(fd, cmd);
    ctl_recv(fd, ans, cap);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_negotiation(void **state)
{
    struct be b;
    struct vuf_client *c;
    uint64_t v;
    uint8_t st;

    be_start(&b, NULL);
    c = be_connect(&b);
    negotiate(c, ~0ull);
    assert_int_equal(vuf_client_get_queue_num(c, &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(vuf_client_get_max_mem_slots(c, &v), 0);
    assert_int_equal(v, 32);
    assert_int_equal(vuf_client_set_status(c, 0x0b), 0);
    assert_int_equal(vuf_client_get_status(c, &st), 0);
    assert_int_equal(st, 0x0b);
    /* A driver only adds status bits; clearing one takes SET_STATUS(0),
     * and DRIVER_OK needs FEATURES_OK (issue 7 §5). Refused (acked with an
     * error), the status unchanged. */
    assert_int_equal(vuf_client_set_status(c, 0x03), -EIO);
    assert_int_equal(vuf_client_set_status(c, 0x0f), 0);
    assert_int_equal(vuf_client_set_status(c, 0), 0);
    assert_int_equal(vuf_client_set_status(c, 0x07), -EIO);
    assert_int_equal(vuf_client_get_status(c, &st), 0);
    assert_int_equal(st, 0);
    /* Bits it never offered are refused, and the session goes on. */
    assert_int_equal(vuf_client_set_features(c, F(35)), -EIO);
    assert_int_equal(vuf_client_set_features(c, EXPECT_FEATURES), 0);
    assert_int_equal(vuf_client_reset_device(c), 0);
    assert_int_equal(vuf_client_get_features(c, &v), 0);
    vuf_client_free(c);

    /* One client at a time, and the next one after it leaves. */
    c = be_connect(&b);
    assert_int_equal(vuf_client_get_features(c, &v), 0);
    assert_int_equal(v, OFFERED_FEATURES);
    vuf_client_free(c);
    be_stop(&b);
}

static void test_print_capabilities(void **state)
{
    char cmd[600], out[512] = {0};
    FILE *f;
    size_t n;

    snprintf(cmd, sizeof(cmd), "'%s' --print-capabilities", backend_bin);
    f = popen(cmd, "r");
    assert_non_null(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    assert_true(n > 0);
    assert_int_equal(pclose(f), 0);
    assert_non_null(strstr(out, "\"type\": \"block\""));
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_config(void **state)
{
    struct be b;
    struct vuf_client *c;
    uint8_t cfg[72], wb;
    uint64_t cap;

    be_start(&b, NULL);
    c = be_connect(&b);
    negotiate(c, ~0ull);
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, 60), 0);
    memcpy(&cap, cfg, 8);
    assert_int_equal(cap, RAM_BYTES / 512);
    assert_int_equal(le32(cfg + 12), 1024 - 2);  /* seg_max */
    assert_int_equal(le32(cfg + 20), 512);       /* blk_size */
    assert_int_equal(cfg[32], 1);                /* writeback */
    assert_int_equal(cfg[34] | cfg[35] << 8, 2); /* num_queues */
    /* A partial read inside the config. */
    assert_int_equal(vuf_client_get_config(c, 20, 0, cfg, 4), 0);
    assert_int_equal(le32(cfg), 512);
    /* Beyond the 60 bytes: an empty reply, and the connection lives. */
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, 72), -EIO);
    assert_int_equal(vuf_client_get_config(c, 56, 0, cfg, 8), -EIO);
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, 8), 0);
    /* writeback is the only writable field. */
    wb = 0;
    assert_int_equal(vuf_client_set_config(c, 32, 0, &wb, 1), 0);
    assert_int_equal(vuf_client_get_config(c, 32, 0, cfg, 1), 0);
    assert_int_equal(cfg[0], 0);
    wb = 2;
    assert_int_equal(vuf_client_set_config(c, 32, 0, &wb, 1), -EIO);
    memset(cfg, 0xff, 8);
    assert_int_equal(vuf_client_set_config(c, 0, 0, cfg, 8), -EIO); /* capacity */
    assert_int_equal(vuf_client_get_config(c, 0, 0, cfg, 8), 0);
    memcpy(&cap, cfg, 8);
    assert_int_equal(cap, RAM_BYTES / 512);
    vuf_client_free(c);
    be_stop(&b);
}

static void fill_pattern(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed + (i >> 9));
}

/* Write, read back, GET_ID, FLUSH, DISCARD, WRITE_ZEROES and error
 * statuses on both queues, then stop them and check the avail index. */
static void io_roundtrip(uint64_t features)
{
    static uint8_t wbuf[128 * 1024], rbuf[128 * 1024];
    struct session s;
    struct vuf_blk_req *req;
    char id[VUF_BLK_ID_BYTES], ans[512];
    uint32_t base;
    uint16_t avail0, avail1;
    struct be b;
    int ctl;

    be_start(&b, NULL);
    session_open(&s, &b, features, 2);

    fill_pattern(wbuf, sizeof(wbuf), 7);
    /* 128 KiB with 64 KiB request buffers: two requests each way. */
    assert_int_equal(vuf_blk_write(s.blk[0], 8, wbuf, sizeof(wbuf), IO_TIMEOUT_MS), 0);
    memset(rbuf, 0, sizeof(rbuf));
    assert_int_equal(vuf_blk_read(s.blk[0], 8, rbuf, sizeof(rbuf), IO_TIMEOUT_MS), 0);
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    /* The other queue sees the same disk. */
    memset(rbuf, 0, sizeof(rbuf));
    assert_int_equal(vuf_blk_read(s.blk[1], 8, rbuf, 4096, IO_TIMEOUT_MS), 0);
    assert_memory_equal(rbuf, wbuf, 4096);

    assert_int_equal(vuf_blk_get_id(s.blk[0], id, IO_TIMEOUT_MS), 0);
    assert_string_equal(id, "vuf-backend-blk");
    assert_int_equal(vuf_blk_flush(s.blk[1], IO_TIMEOUT_MS), 0);

    assert_int_equal(vuf_blk_discard(s.blk[0], 8, 8, IO_TIMEOUT_MS), 0);
    assert_int_equal(vuf_blk_write_zeroes(s.blk[0], 16, 8, false, IO_TIMEOUT_MS), 0);
    assert_int_equal(vuf_blk_read(s.blk[0], 16, rbuf, 4096, IO_TIMEOUT_MS), 0);
    for (unsigned i = 0; i < 4096; i++)
        assert_int_equal(rbuf[i], 0);
    assert_int_equal(vuf_blk_read(s.blk[0], 24, rbuf, 4096, IO_TIMEOUT_MS), 0);
    assert_memory_equal(rbuf, wbuf + 8192, 4096);

    /* Past the end: IOERR. An unknown type: UNSUPP. */
    assert_int_equal(vuf_blk_read(s.blk[0], RAM_BYTES / 512 - 4, rbuf, 4096, IO_TIMEOUT_MS), -EIO);
    req = vuf_blk_req_get(s.blk[0]);
    assert_non_null(req);
    assert_int_equal(vuf_blk_req_prep(req, 99, 0, 512), 0);
    assert_int_equal(vuf_blk_exec(s.blk[0], req, IO_TIMEOUT_MS), -ENOTSUP);
    assert_int_equal(vuf_blk_req_put(s.blk[0], req), 0);

    /* Counters through the control socket. */
    ctl = ctl_open(&b);
    ctl_cmd(ctl, "stats\n", ans, sizeof(ans));
    assert_non_null(strstr(ans, "ok q0 completed="));
    assert_non_null(strstr(ans, "written=131072"));
    close(ctl);

    /* GET_VRING_BASE stops the ring at the driver's avail index. */
    avail0 = vuf_virtq_avail_idx(s.vq[0]);
    avail1 = vuf_virtq_avail_idx(s.vq[1]);
    assert_true(avail0 >= 10);
    assert_int_equal(vuf_client_get_vring_base(s.c, 0, &base), 0);
    assert_int_equal(base, avail0);
    assert_int_equal(vuf_client_get_vring_base(s.c, 1, &base), 0);
    assert_int_equal(base, avail1);
    session_close(&s);
    be_stop(&b);
}

static void test_io(void **state)
{
    io_roundtrip(EXPECT_FEATURES);
}

static void test_io_plain_ring(void **state)
{
    /* No EVENT_IDX, no INDIRECT_DESC: flags-based suppression, direct chains. */
    io_roundtrip(EXPECT_FEATURES & ~(F(29) | F(28)));
}

static void test_io_no_protocol_features(void **state)
{
    /* Without bit 30 acked the rings start enabled (no SET_VRING_ENABLE). */
    struct vuf_mem_region regions[VUF_MEM_TABLE_MAX];
    int fds[VUF_MEM_TABLE_MAX], n;
    static uint8_t buf[4096], back[4096];
    struct vuf_virtq *vq;
    struct vuf_vring_addr a;
    struct vuf_client *c;
    struct vuf_guest_mem *gm;
    struct vuf_blk *blk;
    uint64_t feat = EXPECT_FEATURES & ~F(30);
    struct be b;

    be_start(&b, NULL);
    c = be_connect(&b);
    assert_int_equal(vuf_client_set_owner(c), 0);
    assert_int_equal(vuf_client_set_features(c, feat), 0);
    assert_int_equal(vuf_guest_mem_new_simple(0, GUEST_BYTES, &gm), 0);
    n = vuf_guest_mem_mem_table(gm, regions, fds, VUF_MEM_TABLE_MAX);
    assert_int_equal(vuf_client_set_mem_table(c, regions, fds, (unsigned)n), 0);
    assert_int_equal(vuf_virtq_new(gm, QSIZE, feat, &vq), 0);
    assert_int_equal(vuf_client_set_vring_num(c, 0, QSIZE), 0);
    assert_int_equal(vuf_client_set_vring_base(c, 0, 0), 0);
    vuf_virtq_vring_addr(vq, &a);
    assert_int_equal(vuf_client_set_vring_addr(c, &a), 0);
    assert_int_equal(vuf_client_set_vring_call(c, 0, vuf_virtq_call_fd(vq)), 0);
    assert_int_equal(vuf_client_set_vring_kick(c, 0, vuf_virtq_kick_fd(vq)), 0);
    assert_int_equal(vuf_blk_new(vq, 2, 4096, &blk), 0);
    fill_pattern(buf, sizeof(buf), 3);
    assert_int_equal(vuf_blk_write(blk, 0, buf, sizeof(buf), IO_TIMEOUT_MS), 0);
    assert_int_equal(vuf_blk_read(blk, 0, back, sizeof(back), IO_TIMEOUT_MS), 0);
    assert_memory_equal(buf, back, sizeof(buf));
    vuf_blk_free(blk);
    vuf_virtq_free(vq);
    vuf_client_free(c);
    vuf_guest_mem_free(gm);
    be_stop(&b);
}

static void test_file_backed(void **state)
{
    static uint8_t img[256 * 1024], buf[8192];
    uint64_t ro_features =
        (EXPECT_FEATURES | F(VUF_BLK_F_RO)) & ~(F(VUF_BLK_F_DISCARD) | F(VUF_BLK_F_WRITE_ZEROES));
    char path[300], filearg[320];
    struct session s;
    struct be b;
    uint8_t cfg[8];
    uint64_t cap;
    int fd;

    snprintf(path, sizeof(path), "%s/disk%u.img", tmpdir, seq);
    snprintf(filearg, sizeof(filearg), "--file=%s", path);
    fill_pattern(img, sizeof(img), 5);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, img, sizeof(img)), (ssize_t)sizeof(img));

    /* Read-only: RO offered, no DISCARD/WRITE_ZEROES, writes fail. */
    be_start(&b, filearg, "--read-only", NULL);
    session_open_f(&s, &b, ro_features | F(VUF_VIRTIO_F_RING_PACKED), ro_features, 1);
    assert_int_equal(vuf_client_get_config(s.c, 0, 0, cfg, 8), 0);
    memcpy(&cap, cfg, 8);
    assert_int_equal(cap, sizeof(img) / 512);
    assert_int_equal(vuf_blk_read(s.blk[0], 16, buf, sizeof(buf), IO_TIMEOUT_MS), 0);
    assert_memory_equal(buf, img + 16 * 512, sizeof(buf));
    assert_int_equal(vuf_blk_write(s.blk[0], 0, buf, 512, IO_TIMEOUT_MS), -EIO);
    assert_int_equal(vuf_blk_flush(s.blk[0], IO_TIMEOUT_MS), 0);
    session_close(&s);
    be_stop(&b);

    /* Writable, writethrough (writeback 0): the data is in the file. */
    be_start(&b, filearg, NULL);
    session_open(&s, &b, EXPECT_FEATURES, 1);
    cfg[0] = 0;
    assert_int_equal(vuf_client_set_config(s.c, 32, 0, cfg, 1), 0);
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(vuf_blk_write(s.blk[0], 2, buf, sizeof(buf), IO_TIMEOUT_MS), 0);
    assert_int_equal(pread(fd, img, sizeof(buf), 1024), (ssize_t)sizeof(buf));
    assert_memory_equal(img, buf, sizeof(buf));
    session_close(&s);
    be_stop(&b);
    close(fd);
}

/* ---- DEVICE_STATE ---------------------------------------------------------- */

struct blob {
    uint8_t *p;
    size_t n;
};

static void state_save(struct vuf_client *c, struct blob *out)
{
    int p[2], bfd = -2;
    size_t cap = 1 << 16;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(vuf_client_set_device_state_fd(c, VUF_STATE_DIR_SAVE, 0, p[1], &bfd), 0);
    assert_int_equal(bfd, -1); /* NOFD: our pipe is used */
    close(p[1]);
    out->p = malloc(cap);
    out->n = 0;
    for (;;) {
        ssize_t r;
        if (out->n == cap) {
            cap *= 2;
            out->p = realloc(out->p, cap);
        }
        assert_non_null(out->p);
        r = read(p[0], out->p + out->n, cap - out->n);
        assert_true(r >= 0);
        if (r == 0)
            break;
        out->n += (size_t)r;
    }
    close(p[0]);
    assert_int_equal(vuf_client_check_device_state(c), 0);
}

/* Load; returns CHECK_DEVICE_STATE's result. */
static int state_load(struct vuf_client *c, const uint8_t *blob, size_t n)
{
    int p[2], bfd = -2;
    size_t off = 0;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(vuf_client_set_device_state_fd(c, VUF_STATE_DIR_LOAD, 0, p[0], &bfd), 0);
    assert_int_equal(bfd, -1);
    close(p[0]);
    while (off < n) {
        ssize_t r = write(p[1], blob + off, n - off);
        if (r < 0 && errno == EPIPE)
            break; /* the back-end refused the blob early and closed its end */
        assert_true(r > 0);
        off += (size_t)r;
    }
    close(p[1]);
    return vuf_client_check_device_state(c);
}

static void test_device_state(void **state)
{
    static uint8_t buf[64 * 1024], back[64 * 1024];
    struct session s;
    struct blob a, bb;
    struct be src, dst;
    uint32_t base;
    uint16_t avail;
    int p[2], bfd;

    be_start(&src, "--state-includes-ram", NULL);
    be_start(&dst, "--state-includes-ram", NULL);

    /* Source: some I/O so the counters and the disk are not empty. */
    session_open(&s, &src, EXPECT_FEATURES, 1);
    fill_pattern(buf, sizeof(buf), 11);
    assert_int_equal(vuf_blk_write(s.blk[0], 100, buf, sizeof(buf), IO_TIMEOUT_MS), 0);
    assert_int_equal(vuf_blk_read(s.blk[0], 100, back, 4096, IO_TIMEOUT_MS), 0);
    avail = vuf_virtq_avail_idx(s.vq[0]);

    /* A started ring: the device is not suspended, the transfer is refused. */
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(vuf_client_set_device_state_fd(s.c, VUF_STATE_DIR_SAVE, 0, p[1], &bfd), -EIO);
    close(p[0]);
    close(p[1]);

    assert_int_equal(vuf_client_get_vring_base(s.c, 0, &base), 0);
    assert_int_equal(base, avail);
    state_save(s.c, &a);
    session_close(&s);
    /* header + 2 queue records + the 8 MiB image + checksum */
    assert_int_equal(a.n, 48 + 2 * 32 + RAM_BYTES + 8);
    assert_memory_equal(a.p, "VUFBLKST", 8);
    assert_int_equal(le32(a.p + 8), 1);
    assert_int_equal(le32(a.p + 16), 2);
    assert_int_equal(a.p[48] | a.p[49] << 8, avail); /* queue 0 next avail */

    /* Destination: load, then save again: the same bytes. */
    {
        struct vuf_client *c = be_connect(&dst);
        negotiate(c, ~0ull);
        assert_int_equal(state_load(c, a.p, a.n), 0);
        state_save(c, &bb);
        assert_int_equal(bb.n, a.n);
        assert_memory_equal(bb.p, a.p, a.n);
        free(bb.p);

        /* A damaged blob is refused, and the device keeps its state. */
        a.p[a.n - 100] ^= 1; /* inside the image: the checksum catches it */
        assert_int_equal(state_load(c, a.p, a.n), -EIO);
        a.p[a.n - 100] ^= 1;
        a.p[16] = 3; /* queue count */
        assert_int_equal(state_load(c, a.p, a.n), -EIO);
        a.p[16] = 2;
        assert_int_equal(state_load(c, a.p, 40), -EIO); /* truncated */
        state_save(c, &bb);
        assert_memory_equal(bb.p, a.p, a.n);
        free(bb.p);
        vuf_client_free(c);
    }

    /* The image travelled: the destination's disk holds the data. */
    session_open(&s, &dst, EXPECT_FEATURES, 1);
    memset(back, 0, sizeof(back));
    assert_int_equal(vuf_blk_read(s.blk[0], 100, back, sizeof(back), IO_TIMEOUT_MS), 0);
    assert_memory_equal(back, buf, sizeof(buf));
    session_close(&s);

    free(a.p);
    be_stop(&src);
    be_stop(&dst);
}

static void test_device_state_no_ram(void **state)
{
    struct vuf_client *c;
    struct blob a;
    struct be b;

    /* Without --state-includes-ram the blob is only header + queues. */
    be_start(&b, NULL);
    c = be_connect(&b);
    negotiate(c, ~0ull);
    /* No transfer yet: CHECK reports failure. */
    assert_int_equal(vuf_client_check_device_state(c), -EIO);
    state_save(c, &a);
    assert_int_equal(a.n, 48 + 2 * 32 + 8);
    assert_int_equal(state_load(c, a.p, a.n), 0);
    free(a.p);
    vuf_client_free(c);
    be_stop(&b);
}

/* ---- SHMEM and the back-end request channel ------------------------------- */

struct breq_seen {
    unsigned config_changes, maps, unmaps;
    bool pattern_ok;
    struct vuf_shmem_map last;
};

static int on_config_change(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct breq_seen *s = opaque;
    s->config_changes++;
    return 0;
}

static int on_shmem_map(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct breq_seen *s = opaque;
    struct vuf_shmem_map m;
    uint8_t *p;

    assert_int_equal(vuf_decode_shmem_map(req, &m), 0);
    s->last = m;
    if (m.shmid != 0 || m.shm_offset + m.len > SHM_BYTES)
        return -EINVAL; /* what a front-end checks */
    s->maps++;
    assert_int_equal(req->nfds, 1);
    p = mmap(NULL, m.len, PROT_READ, MAP_SHARED, req->fds[0], (off_t)m.fd_offset);
    assert_true(p != MAP_FAILED);
    s->pattern_ok = true;
    for (uint64_t i = 0; i < m.len; i++)
        if (p[i] != (uint8_t)((m.fd_offset + i) % 251))
            s->pattern_ok = false;
    munmap(p, m.len);
    return 0;
}

static int on_shmem_unmap(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct breq_seen *s = opaque;
    struct vuf_shmem_map m;

    assert_int_equal(vuf_decode_shmem_map(req, &m), 0);
    s->last = m;
    s->unmaps++;
    return 0;
}

static struct vuf_server *backend_channel(struct vuf_client *c, struct breq_seen *seen, uint64_t pf)
{
    struct vuf_server_config cfg;
    struct vuf_server *srv;
    uint64_t f;
    int peer;

    memset(&cfg, 0, sizeof(cfg));
    cfg.opaque = seen;
    cfg.handlers[VUF_BREQ_CONFIG_CHANGE_MSG] = on_config_change;
    cfg.handlers[VUF_BREQ_SHMEM_MAP] = on_shmem_map;
    cfg.handlers[VUF_BREQ_SHMEM_UNMAP] = on_shmem_unmap;
    assert_int_equal(vuf_server_new_backend_channel(&cfg, &srv, &peer), 0);
    vuf_server_set_protocol_features(srv, pf);
    assert_int_equal(vuf_client_set_backend_req_fd(c, peer), 0);
    close(peer);
    /* Without REPLY_ACK nothing says the back-end has it yet: GET_FEATURES
     * is the barrier (as in QEMU). */
    assert_int_equal(vuf_client_get_features(c, &f), 0);
    return srv;
}

/* Send a control command, serve the one back-end request it causes (the
 * handler's result is `want`), and return the control answer. */
static void ctl_breq(int ctl, struct vuf_server *srv, const char *cmd, int want, char *ans,
                     size_t cap)
{
    ctl_send(ctl, cmd);
    assert_int_equal(vuf_server_process_one(srv), want);
    ctl_recv(ctl, ans, cap);
}

static void test_shmem_and_backend_channel(void **state)
{
    struct vuf_shmem_config sc;
    struct breq_seen seen = {0};
    struct vuf_client *c;
    struct vuf_server *srv;
    char ans[256];
    uint64_t pf;
    struct be b;
    int ctl;

    be_start(&b, NULL);
    c = be_connect(&b);
    pf = negotiate(c, ~0ull);
    assert_int_equal(vuf_client_get_shmem_config(c, &sc), 0);
    assert_int_equal(sc.nregions, 1);
    assert_int_equal(sc.memory_sizes[0], SHM_BYTES);
    assert_int_equal(sc.memory_sizes[1], 0);

    ctl = ctl_open(&b);
    /* Before SET_BACKEND_REQ_FD nothing can be sent. */
    ctl_cmd(ctl, "config-change\n", ans, sizeof(ans));
    assert_non_null(strstr(ans, "error"));

    srv = backend_channel(c, &seen, pf);
    ctl_breq(ctl, srv, "config-change\n", 0, ans, sizeof(ans));
    assert_string_equal(ans, "ack 0");
    assert_int_equal(seen.config_changes, 1);

    ctl_breq(ctl, srv, "map 0 0x1000 0 8192 rw\n", 0, ans, sizeof(ans));
    assert_string_equal(ans, "ack 0");
    assert_int_equal(seen.maps, 1);
    assert_true(seen.pattern_ok);
    assert_int_equal(seen.last.fd_offset, 0x1000);
    assert_int_equal(seen.last.len, 8192);
    assert_int_equal(seen.last.flags, VUF_SHMEM_MAP_RW);

    /* The front-end's refusal comes back as its (negative) ack. */
    ctl_breq(ctl, srv, "map 0 0 0xf000 0x2000 ro\n", -EINVAL, ans, sizeof(ans));
    assert_string_equal(ans, "ack -22");
    assert_int_equal(seen.last.flags, 0);

    ctl_breq(ctl, srv, "unmap 0 0 8192\n", 0, ans, sizeof(ans));
    assert_string_equal(ans, "ack 0");
    assert_int_equal(seen.unmaps, 1);

    /* Malformed commands are answered locally. */
    ctl_cmd(ctl, "map 0 0 0\n", ans, sizeof(ans));
    assert_non_null(strstr(ans, "error"));
    ctl_cmd(ctl, "map 300 0 0 4096 rw\n", ans, sizeof(ans));
    assert_non_null(strstr(ans, "error"));
    ctl_cmd(ctl, "bogus\n", ans, sizeof(ans));
    assert_non_null(strstr(ans, "error"));
    ctl_cmd(ctl, "ping\n", ans, sizeof(ans));
    assert_string_equal(ans, "ok pong");
    close(ctl);
    vuf_server_free(srv);
    vuf_client_free(c);
    be_stop(&b);
}

static void test_backend_channel_no_reply_ack(void **state)
{
    struct breq_seen seen = {0};
    struct vuf_client *c;
    struct vuf_server *srv;
    char ans[256];
    uint64_t pf;
    struct be b;
    int ctl;

    be_start(&b, NULL);
    c = be_connect(&b);
    pf = negotiate(c, ~VUF_PROTO_MASK(REPLY_ACK));
    srv = backend_channel(c, &seen, pf);
    ctl = ctl_open(&b);
    ctl_breq(ctl, srv, "config-change\n", 0, ans, sizeof(ans));
    assert_string_equal(ans, "sent");
    assert_int_equal(seen.config_changes, 1);
    close(ctl);
    vuf_server_free(srv);
    vuf_client_free(c);
    be_stop(&b);
}

/* ---- hostile input --------------------------------------------------------- */

/* A hand-written split ring, for chains the library driver refuses to build. */
struct raw_ring {
    unsigned n;
    struct vuf_vring_desc *desc;
    struct vuf_vring_avail *avail;
    struct vuf_vring_used *used;
    uint16_t next_avail;
    int kick, call, err;
};

static void *gm_alloc(struct vuf_guest_mem *gm, uint64_t size, uint64_t align, uint64_t *gpa)
{
    void *p;

    assert_int_equal(vuf_guest_mem_alloc(gm, size, align, gpa), 0);
    p = vuf_guest_mem_to_host(gm, *gpa, size);
    assert_non_null(p);
    return p;
}

static void raw_ring_start(struct vuf_client *c, struct vuf_guest_mem *gm, unsigned idx,
                           struct raw_ring *r)
{
    struct vuf_vring_addr a = {.index = idx};
    uint64_t gpa;

    memset(r, 0, sizeof(*r));
    r->n = 8;
    r->desc = gm_alloc(gm, VUF_VRING_DESC_BYTES(r->n), 16, &gpa);
    r->avail = gm_alloc(gm, VUF_VRING_AVAIL_BYTES(r->n), 2, &gpa);
    r->used = gm_alloc(gm, VUF_VRING_USED_BYTES(r->n), 4, &gpa);
    /* Ring addresses are this process's VAs (the table's userspace_addr). */
    a.desc = (uint64_t)(uintptr_t)r->desc;
    a.avail = (uint64_t)(uintptr_t)r->avail;
    a.used = (uint64_t)(uintptr_t)r->used;
    r->kick = eventfd(0, EFD_CLOEXEC);
    r->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->err = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(r->kick >= 0 && r->call >= 0 && r->err >= 0);
    assert_int_equal(vuf_client_set_vring_num(c, idx, r->n), 0);
    assert_int_equal(vuf_client_set_vring_base(c, idx, 0), 0);
    assert_int_equal(vuf_client_set_vring_addr(c, &a), 0);
    assert_int_equal(vuf_client_set_vring_kick(c, idx, r->kick), 0);
    assert_int_equal(vuf_client_set_vring_call(c, idx, r->call), 0);
    assert_int_equal(vuf_client_set_vring_err(c, idx, r->err), 0);
    assert_int_equal(vuf_client_set_vring_enable(c, idx, true), 0);
}

static void raw_ring_close(struct raw_ring *r)
{
    close(r->kick);
    close(r->call);
    close(r->err);
}

static void raw_push(struct raw_ring *r, uint16_t head)
{
    uint64_t one = 1;

    r->avail->ring[r->next_avail % r->n] = head;
    r->next_avail++;
    __atomic_store_n(&r->avail->idx, r->next_avail, __ATOMIC_RELEASE);
    assert_int_equal(write(r->kick, &one, sizeof(one)), 8);
}

/* Wait for used->idx to reach `want`; the used element in *elem. */
static bool raw_wait_used(struct raw_ring *r, uint16_t want, struct vuf_vring_used_elem *elem)
{
    long end = tu_now_ms() + 10000;

    while (tu_now_ms() < end) {
        if (__atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE) == want) {
            if (elem)
                *elem = r->used->ring[(uint16_t)(want - 1) % r->n];
            return true;
        }
        usleep(1000);
    }
    return false;
}

static bool fd_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, timeout_ms) == 1;
}

struct req_bufs {
    struct vuf_blk_outhdr *hdr;
    uint8_t *data, *status;
    uint64_t hdr_gpa, data_gpa, status_gpa;
};

static void desc_set(struct raw_ring *r, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    r->desc[i] = (struct vuf_vring_desc){.addr = addr, .len = len, .flags = flags, .next = next};
}

/* A well-formed IN of one sector at sector 0: descriptors 0, 1, 2. */
static void build_read(struct raw_ring *r, struct req_bufs *b)
{
    b->hdr->type = VUF_BLK_T_IN;
    b->hdr->ioprio = 0;
    b->hdr->sector = 0;
    *b->status = 0xee;
    desc_set(r, 0, b->hdr_gpa, 16, VUF_VRING_DESC_F_NEXT, 1);
    desc_set(r, 1, b->data_gpa, 512, VUF_VRING_DESC_F_WRITE | VUF_VRING_DESC_F_NEXT, 2);
    desc_set(r, 2, b->status_gpa, 1, VUF_VRING_DESC_F_WRITE, 0);
}

static void test_bad_descriptors(void **state)
{
    struct vuf_mem_region regions[VUF_MEM_TABLE_MAX];
    struct vuf_vring_used_elem e;
    struct vuf_guest_mem *gm;
    struct vuf_client *c;
    struct raw_ring r;
    struct req_bufs b;
    uint16_t used = 0;
    uint32_t base;
    uint64_t v;
    int fds[VUF_MEM_TABLE_MAX], n;
    struct be be;

    be_start(&be, NULL);
    c = be_connect(&be);
    negotiate(c, ~0ull);
    assert_int_equal(vuf_client_set_features(c, EXPECT_FEATURES & ~F(29)), 0);
    assert_int_equal(vuf_guest_mem_new_simple(0, GUEST_BYTES, &gm), 0);
    n = vuf_guest_mem_mem_table(gm, regions, fds, VUF_MEM_TABLE_MAX);
    assert_int_equal(vuf_client_set_mem_table(c, regions, fds, (unsigned)n), 0);
    raw_ring_start(c, gm, 0, &r);
    b.hdr = gm_alloc(gm, 16, 16, &b.hdr_gpa);
    b.data = gm_alloc(gm, 512, 512, &b.data_gpa);
    b.status = gm_alloc(gm, 1, 1, &b.status_gpa);

    /* The raw ring works: a good read. */
    build_read(&r, &b);
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.id, 0);
    assert_int_equal(e.len, 513);
    assert_int_equal(*b.status, VUF_BLK_S_OK);
    assert_true(fd_readable(r.call, 0));

    /* Data outside guest memory: IOERR in the status byte. */
    build_read(&r, &b);
    r.desc[1].addr = 0xdead00000000ull;
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 1);
    assert_int_equal(*b.status, VUF_BLK_S_IOERR);

    /* A GPA range that wraps around 2^64. */
    build_read(&r, &b);
    r.desc[1].addr = ~0ull - 100;
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(*b.status, VUF_BLK_S_IOERR);

    /* Malformed chains come back with length 0 and signal the err fd. */
    desc_set(&r, 0, b.hdr_gpa, 16, VUF_VRING_DESC_F_NEXT, 0); /* loop */
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);
    assert_true(fd_readable(r.err, 1000));

    desc_set(&r, 0, 0xdead0000ull, 48, VUF_VRING_DESC_F_INDIRECT, 0); /* table outside */
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);

    desc_set(&r, 0, b.hdr_gpa, 17, VUF_VRING_DESC_F_INDIRECT, 0); /* bad table size */
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);

    desc_set(&r, 0, b.hdr_gpa, 16, VUF_VRING_DESC_F_NEXT, 200); /* next out of range */
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);

    build_read(&r, &b); /* readable after writable */
    r.desc[0].flags |= VUF_VRING_DESC_F_WRITE;
    r.desc[1].flags &= (uint16_t)~VUF_VRING_DESC_F_WRITE;
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);

    build_read(&r, &b); /* no status byte: nothing device-writable */
    r.desc[1].flags = VUF_VRING_DESC_F_NEXT;
    r.desc[2].flags = 0;
    raw_push(&r, 0);
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 0);

    /* A head beyond the ring breaks the queue: nothing more is consumed. */
    raw_push(&r, 100);
    assert_false(raw_wait_used(&r, (uint16_t)(used + 1), NULL));
    assert_int_equal(vuf_client_get_features(c, &v), 0);
    assert_int_equal(vuf_client_get_vring_base(c, 0, &base), 0);
    assert_int_equal(base, used);

    /* Restarted past the bad entry, the ring works again. */
    build_read(&r, &b);
    raw_push(&r, 0);
    assert_int_equal(vuf_client_set_vring_base(c, 0, (uint32_t)(r.next_avail - 1)), 0);
    {
        int kick = eventfd(0, EFD_CLOEXEC);
        assert_int_equal(vuf_client_set_vring_kick(c, 0, kick), 0);
        close(r.kick);
        r.kick = kick;
    }
    assert_true(raw_wait_used(&r, ++used, &e));
    assert_int_equal(e.len, 513);

    raw_ring_close(&r);
    assert_true(be_alive(&be));
    /* SIGTERM with a front-end still connected: exit 0 all the same. */
    be_stop(&be);
    vuf_client_free(c);
    vuf_guest_mem_free(gm);
}

static void test_bad_memory_and_rings(void **state)
{
    struct vuf_mem_region good, r2[2];
    struct vuf_vring_addr a = {.index = 0};
    struct vuf_client *c;
    int memfd, p[2], f2[2];
    uint64_t v;
    void *host;
    struct be b;

    be_start(&b, NULL);
    c = be_connect(&b);
    negotiate(c, ~0ull);
    memfd = memfd_create("t", MFD_CLOEXEC);
    assert_true(memfd >= 0);
    assert_int_equal(ftruncate(memfd, 1 << 20), 0);
    host = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    assert_true(host != MAP_FAILED);
    good = (struct vuf_mem_region){.guest_phys_addr = 0,
                                   .memory_size = 1 << 20,
                                   .userspace_addr = (uint64_t)(uintptr_t)host,
                                   .mmap_offset = 0};

    /* mmap_offset past the end of the file. */
    {
        struct vuf_mem_region bad = good;
        bad.mmap_offset = 1 << 20;
        assert_int_equal(vuf_client_set_mem_table(c, &bad, &memfd, 1), -EIO);
        bad.mmap_offset = 0;
        bad.memory_size = 2 << 20; /* larger than the file */
        assert_int_equal(vuf_client_set_mem_table(c, &bad, &memfd, 1), -EIO);
    }
    /* Not a mappable file. */
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(vuf_client_set_mem_table(c, &good, &p[0], 1), -EIO);
    close(p[0]);
    close(p[1]);
    /* Overlapping GPA ranges. */
    r2[0] = good;
    r2[1] = good;
    r2[1].memory_size = 4096;
    r2[1].userspace_addr += 4096;
    f2[0] = f2[1] = memfd;
    assert_int_equal(vuf_client_set_mem_table(c, r2, f2, 2), -EIO);

    assert_int_equal(vuf_client_set_mem_table(c, &good, &memfd, 1), 0);

    /* Rings: bad index, size, base, addresses. */
    assert_int_equal(vuf_client_set_vring_num(c, 5, 8), -EIO);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 1000), -EIO);
    assert_int_equal(vuf_client_set_vring_num(c, 0, 4096), -EIO); /* > queue-size-max */
    assert_int_equal(vuf_client_set_vring_num(c, 0, 8), 0);
    assert_int_equal(vuf_client_set_vring_base(c, 0, 0x10000), -EIO);
    a.desc = 0xdead0000;
    a.avail = (uint64_t)(uintptr_t)host + 4096;
    a.used = (uint64_t)(uintptr_t)host + 8192;
    assert_int_equal(vuf_client_set_vring_addr(c, &a), -EIO);
    a.desc = (uint64_t)(uintptr_t)host + (1 << 20) - 64; /* runs off the end */
    assert_int_equal(vuf_client_set_vring_addr(c, &a), -EIO);
    a.desc = (uint64_t)(uintptr_t)host;
    assert_int_equal(vuf_client_set_vring_addr(c, &a), 0);

    /* Memory slots: overlap refused, a second region added and removed. */
    {
        struct vuf_mem_region extra = good;
        assert_int_equal(vuf_client_add_mem_reg(c, &extra, memfd), -EIO);
        extra.guest_phys_addr = 1 << 30;
        extra.userspace_addr = 0x7000000000ull; /* need not be mapped here */
        assert_int_equal(vuf_client_add_mem_reg(c, &extra, memfd), 0);
        assert_int_equal(vuf_client_rem_mem_reg(c, &extra), 0);
        assert_int_equal(vuf_client_rem_mem_reg(c, &extra), -EIO);
    }
    /* The ring's memory goes away under a started ring: no crash. */
    {
        int kick = eventfd(0, EFD_CLOEXEC);
        uint64_t one = 1;
        assert_int_equal(vuf_client_set_vring_kick(c, 0, kick), 0);
        /* SET_VRING_ENABLE is legal only once bit 30 is acked. */
        assert_int_equal(vuf_client_set_features(c, EXPECT_FEATURES), 0);
        assert_int_equal(vuf_client_set_vring_enable(c, 0, true), 0);
        assert_int_equal(vuf_client_rem_mem_reg(c, &good), 0);
        ((struct vuf_vring_avail *)((uint8_t *)host + 4096))->idx = 1;
        assert_int_equal(write(kick, &one, sizeof(one)), 8);
        close(kick);
    }
    /* Unknown and unsupported requests: error replies, connection kept. */
    /* CROSS_ENDIAN is not offered: the client refuses it, so it goes out
     * by hand. */
    assert_int_equal(vuf_client_set_vring_endian(c, 0, true), -ENOTSUP);
    {
        struct vuf_conn *conn = vuf_client_conn(c);
        struct vuf_vring_state be_ring = {.index = 0, .num = 1};
        struct vuf_msg m, reply;
        uint32_t bad = 7;

        assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_VRING_ENDIAN, VUF_FLAG_NEED_REPLY, &be_ring,
                                      sizeof(be_ring)),
                         0);
        assert_int_equal(vuf_conn_send(conn, &m), 0);
        assert_int_equal(vuf_conn_recv(conn, &reply), 0);
        assert_int_equal(reply.hdr.request, VUF_REQ_SET_VRING_ENDIAN);
        assert_int_equal(reply.hdr.size, 8);
        assert_int_not_equal(reply.payload.u64, 0);

        /* A code no table knows, asking for an ack. */
        assert_int_equal(vuf_msg_init(&m, 99, VUF_FLAG_NEED_REPLY, NULL, 0), 0);
        assert_int_equal(vuf_conn_send(conn, &m), 0);
        assert_int_equal(vuf_conn_recv(conn, &reply), 0);
        assert_int_equal(reply.hdr.request, 99);
        assert_int_equal(reply.hdr.size, 8);
        assert_int_not_equal(reply.payload.u64, 0);
        /* A known code with a payload of the wrong size. */
        assert_int_equal(vuf_msg_init(&m, VUF_REQ_SET_VRING_NUM, VUF_FLAG_NEED_REPLY, &bad, 4), 0);
        assert_int_equal(vuf_conn_send(conn, &m), 0);
        assert_int_equal(vuf_conn_recv(conn, &reply), 0);
        assert_int_equal(reply.hdr.request, VUF_REQ_SET_VRING_NUM);
        assert_int_not_equal(reply.payload.u64, 0);
    }
    assert_int_equal(vuf_client_get_features(c, &v), 0);
    assert_int_equal(v, OFFERED_FEATURES);
    assert_true(be_alive(&b));

    vuf_client_free(c);
    munmap(host, 1 << 20);
    close(memfd);
    be_stop(&b);
}

/* Everything a session handed over is closed when it ends. */
static void test_fd_hygiene(void **state)
{
    struct breq_seen seen = {0};
    struct vuf_server *srv;
    struct session s;
    struct blob a;
    uint8_t buf[4096] = {1};
    uint32_t base;
    int before, after = -1;
    long end;
    struct be b;

    be_start(&b, NULL);
    /* The baseline is "between clients". The back-end serves one client at
     * a time, so an answer on a second connection proves the first one is
     * torn down; the second then holds exactly its socket. */
    vuf_client_free(be_connect(&b));
    {
        struct vuf_client *c = be_connect(&b);
        uint64_t f;

        assert_int_equal(vuf_client_get_features(c, &f), 0);
        before = be_count_fds(&b) - 1;
        vuf_client_free(c);
    }
    assert_true(before > 0);
    /* A first throwaway connection: the baseline is "between clients",
     * i.e. once the back-end has closed what that client gave it. */
    vuf_client_free(be_connect(&b));
    for (end = tu_now_ms() + 5000; tu_now_ms() < end; usleep(1000)) {
        after = be_count_fds(&b);
        if (after == before)
            break;
    }
    assert_int_equal(after, before);

    session_open(&s, &b, EXPECT_FEATURES, 2);
    srv = backend_channel(s.c, &seen, vuf_client_protocol_features(s.c));
    assert_int_equal(vuf_blk_write(s.blk[0], 0, buf, sizeof(buf), IO_TIMEOUT_MS), 0);
    assert_int_equal(vuf_client_get_vring_base(s.c, 0, &base), 0);
    assert_int_equal(vuf_client_get_vring_base(s.c, 1, &base), 0);
    state_save(s.c, &a);
    free(a.p);
    assert_true(be_count_fds(&b) > before);
    session_close(&s);
    vuf_server_free(srv);

    after = -1;
    for (end = tu_now_ms() + 5000; tu_now_ms() < end; usleep(1000)) {
        after = be_count_fds(&b);
        if (after == before)
            break;
    }
    assert_int_equal(after, before);
    be_stop(&b);
}

/* ---- inflight area -------------------------------------------------------- */

/* GET_INFLIGHT_FD's area and SET_INFLIGHT_FD's checks (backend/README.md,
 * "Inflight tracking"); the data path is test_inflight_ref's. Before any
 * SET_FEATURES (QEMU's order) the regions are sized for the packed layout:
 * 32-byte header and entries. */
static void test_inflight_area(void **state)
{
    const uint64_t region = (32 + 32 * 64 + 63) / 64 * 64;
    const uint64_t split_region = (16 + 16 * 64 + 63) / 64 * 64;
    struct vuf_inflight a, bad;
    struct vuf_client *c;
    struct stat st;
    uint8_t *m;
    uint16_t v;
    int fd = -1, fd2 = -1;
    struct be b;

    be_start(&b, NULL);
    c = be_connect(&b);
    /* Not negotiated: no area (the error form, mmap_size 0). The client
     * refuses to send it (-ENOTSUP), so it goes out by hand. */
    negotiate(c, ~VUF_PROTO_MASK(INFLIGHT_SHMFD));
    assert_int_equal(vuf_client_get_inflight_fd(c, 2, 64, &a, &fd), -ENOTSUP);
    {
        struct vuf_inflight req = {.num_queues = 2, .queue_size = 64};
        struct vuf_msg reply;

        assert_int_equal(tu_raw_send(vuf_client_conn(c), VUF_REQ_GET_INFLIGHT_FD, VUF_VERSION, &req,
                                     sizeof(req), NULL, 0),
                         0);
        assert_int_equal(vuf_conn_recv(vuf_client_conn(c), &reply), 0);
        assert_int_equal(reply.hdr.request, VUF_REQ_GET_INFLIGHT_FD);
        assert_int_equal(reply.hdr.size, sizeof(req));
        assert_int_equal(reply.nfds, 0);
        assert_int_equal(reply.payload.inflight.mmap_size, 0);
    }
    vuf_client_free(c);

    c = be_connect(&b);
    negotiate(c, ~0ull);
    /* Beyond the limits: 2 queues, 1024 entries. */
    assert_int_equal(vuf_client_get_inflight_fd(c, 3, 64, &a, &fd), 0);
    assert_int_equal(fd, -1);
    assert_int_equal(vuf_client_get_inflight_fd(c, 2, 2048, &a, &fd), 0);
    assert_int_equal(fd, -1);

    assert_int_equal(vuf_client_get_inflight_fd(c, 2, 64, &a, &fd), 0);
    assert_true(fd >= 0);
    assert_int_equal(a.mmap_size, 2 * region);
    assert_int_equal(a.mmap_offset, 0);
    assert_int_equal(a.num_queues, 2);
    assert_int_equal(a.queue_size, 64);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, (off_t)a.mmap_size);
    assert_int_equal(fcntl(fd, F_GET_SEALS) & (F_SEAL_GROW | F_SEAL_SHRINK),
                     F_SEAL_GROW | F_SEAL_SHRINK);
    m = mmap(NULL, a.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(m != MAP_FAILED);
    for (unsigned q = 0; q < 2; q++) {
        memcpy(&v, m + region * q + 8, 2);
        assert_int_equal(v, 1); /* version */
        memcpy(&v, m + region * q + 10, 2);
        assert_int_equal(v, 64); /* desc_num */
        for (unsigned i = 0; i < 64; i++)
            assert_int_equal(m[region * q + 32 + 32 * i], 0); /* inflight */
    }

    /* The area handed back as it is. */
    assert_int_equal(vuf_client_set_inflight_fd(c, &a, fd), 0);
    /* Refused: too small, misaligned offset, past the file, too many queues
     * or entries, a region with a foreign header. */
    bad = a;
    bad.mmap_size = 2 * region - 1;
    assert_true(vuf_client_set_inflight_fd(c, &bad, fd) < 0);
    bad = a;
    bad.mmap_offset = 8;
    bad.mmap_size = region;
    bad.num_queues = 1;
    assert_true(vuf_client_set_inflight_fd(c, &bad, fd) < 0);
    bad = a;
    bad.mmap_offset = 64;
    assert_true(vuf_client_set_inflight_fd(c, &bad, fd) < 0);
    bad = a;
    bad.num_queues = 3;
    bad.mmap_size = 3 * region;
    assert_true(vuf_client_set_inflight_fd(c, &bad, fd) < 0);
    bad = a;
    bad.queue_size = 2048;
    assert_true(vuf_client_set_inflight_fd(c, &bad, fd) < 0);
    m[region + 8] = 2; /* queue 1: version 2 */
    assert_true(vuf_client_set_inflight_fd(c, &a, fd) < 0);
    m[region + 8] = 1;
    assert_int_equal(vuf_client_set_inflight_fd(c, &a, fd), 0);
    /* A second GET makes a new area. */
    assert_int_equal(vuf_client_get_inflight_fd(c, 1, 16, &a, &fd2), 0);
    assert_true(fd2 >= 0 && fd2 != fd);
    assert_int_equal(a.mmap_size, (32 + 32 * 16 + 63) / 64 * 64);
    close(fd2);
    /* Features without RING_PACKED: split regions; with it: packed ones. */
    assert_int_equal(vuf_client_set_features(c, F(VUF_VIRTIO_F_VERSION_1)), 0);
    assert_int_equal(vuf_client_get_inflight_fd(c, 2, 64, &a, &fd2), 0);
    assert_int_equal(a.mmap_size, 2 * split_region);
    /* A split-sized area is taken back (split stride). */
    assert_int_equal(vuf_client_set_inflight_fd(c, &a, fd2), 0);
    close(fd2);
    assert_int_equal(
        vuf_client_set_features(c, F(VUF_VIRTIO_F_VERSION_1) | F(VUF_VIRTIO_F_RING_PACKED)), 0);
    assert_int_equal(vuf_client_get_inflight_fd(c, 2, 64, &a, &fd2), 0);
    assert_int_equal(a.mmap_size, 2 * region);
    close(fd2);
    munmap(m, 2 * region);
    close(fd);
    vuf_client_free(c);
    be_stop(&b);
}

/* ---- main ---------------------------------------------------------------- */

static int group_setup(void **state)
{
    tmpdir = tu_mkdtemp("vuf-backend-blk");
    return tmpdir ? 0 : -1;
}

static int group_teardown(void **state)
{
    tu_reap_all();
    tu_rmtree(tmpdir);
    tmpdir = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_negotiation),
        cmocka_unit_test(test_print_capabilities),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_io),
        cmocka_unit_test(test_io_plain_ring),
        cmocka_unit_test(test_io_no_protocol_features),
        cmocka_unit_test(test_file_backed),
        cmocka_unit_test(test_device_state),
        cmocka_unit_test(test_device_state_no_ram),
        cmocka_unit_test(test_shmem_and_backend_channel),
        cmocka_unit_test(test_backend_channel_no_reply_ack),
        cmocka_unit_test(test_bad_descriptors),
        cmocka_unit_test(test_bad_memory_and_rings),
        cmocka_unit_test(test_fd_hygiene),
        cmocka_unit_test(test_inflight_area),
    };

    backend_bin = tu_built_exe("VUF_BACKEND_BLK");
    if (!backend_bin)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
