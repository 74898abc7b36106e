/* SPDX-License-Identifier: MIT */
/*
 * vuf's servers against a hostile front-end (tests/lib/hostile_fe.h): every
 * case runs against each target (vuf-backend-blk, and `vuf relay` in front
 * of one), asserts the exact outcome of each lie, and then the checks every
 * case must pass (alive, a new front-end served, fd count, exit 0 on
 * SIGTERM, no sanitizer text).
 *
 * HFE_TARGETS=backend or HFE_TARGETS=relay runs one target only;
 * HFE_FILTER=PATTERN (cmocka's, e.g. "*random*") the cases that match;
 * HFE_SEED=N replays the random case with seed N.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile_fe.h"

#define REQ_NR (VUF_VERSION | VUF_FLAG_NEED_REPLY)

static int setup(void **state)
{
    const enum hfe_kind *kind = *state;
    struct hfe_target *t = calloc(1, sizeof(*t));

    if (!t)
        return -1;
    hfe_target_up(t, *kind);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct hfe_target *t = *state;

    if (t && t->dir && getenv("HFE_VERBOSE")) {
        tu_dump_log(&t->be);
        if (t->kind == HFE_RELAY)
            tu_dump_log(&t->relay);
    }
    tu_reap_all();
    if (t && t->dir)
        tu_rmtree(t->dir);
    free(t);
    return 0;
}

static bool is_relay(const struct hfe_target *t)
{
    return t->kind == HFE_RELAY;
}

static int efd(bool nonblock)
{
    int fd = eventfd(0, EFD_CLOEXEC | (nonblock ? EFD_NONBLOCK : 0));

    assert_true(fd >= 0);
    return fd;
}

static void set_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
}

/* A front-end that handshook and shared one memory region. */
struct conn {
    int fd;
    uint64_t pf;
    struct hfe_mem m;
};

static void conn_up(struct hfe_target *t, struct conn *c, bool mem)
{
    c->fd = hfe_connect(t->sock);
    c->pf = hfe_handshake(c->fd);
    c->m.fd = -1;
    if (mem) {
        hfe_mem_new(&c->m, HFE_MEM_LEN);
        hfe_set_mem(c->fd, &c->m);
    }
}

static void conn_down(struct conn *c)
{
    close(c->fd);
    hfe_mem_free(&c->m);
}

/* ---- hangs and crashes ---------------------------------------------------- */

/*
 * Device-state fd: the front-end clears O_NONBLOCK on the pipe it shares
 * with the back-end while the save is waiting for room, then makes a little
 * room: the transfer's next write() must not block past CHECK_DEVICE_STATE's
 * deadline (3 s, then ETIMEDOUT), and the back-end must go on serving.
 */
static void test_state_fd_blocking(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_device_state ds = {.direction = VUF_STATE_DIR_SAVE,
                                  .phase = VUF_STATE_PHASE_STOPPED};
    struct conn c;
    uint8_t buf[4096];
    int p[2];

    conn_up(t, &c, false);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    if (is_relay(t)) {
        /* The relay does not offer DEVICE_STATE. */
        assert_int_equal(c.pf & VUF_PROTO_MASK(DEVICE_STATE), 0);
        hfe_ack(c.fd, VUF_REQ_SET_DEVICE_STATE_FD, &ds, 8, &p[1], 1, -ENOTSUP);
    } else {
        hfe_ack(c.fd, VUF_REQ_SET_DEVICE_STATE_FD, &ds, 8, &p[1], 1, VUF_STATE_REPLY_NOFD);
        tu_sleep_ms(100); /* the 64 KiB pipe is full by now */
        set_blocking(p[1]);
        assert_int_equal(read(p[0], buf, sizeof(buf)), (ssize_t)sizeof(buf));
        tu_sleep_ms(100);
        assert_int_equal(
            hfe_send(c.fd, VUF_REQ_CHECK_DEVICE_STATE, VUF_VERSION, 0, NULL, 0, NULL, 0), 0);
        hfe_expect_u64(c.fd, VUF_REQ_CHECK_DEVICE_STATE, ETIMEDOUT);
    }
    hfe_ping(c.fd);
    close(p[0]);
    close(p[1]);
    conn_down(&c);
    hfe_target_down(t);
}

/*
 * Call eventfd: blocking, its counter one short of overflow: the back-end's
 * completion must still be published and its signal must not block.
 */
static void test_call_efd_saturated(void **state)
{
    struct hfe_target *t = *state;
    uint64_t big = 0xfffffffffffffffeull, v = 1;
    int kick = efd(true), call = efd(false);
    struct conn c;

    conn_up(t, &c, true);
    hfe_ring_start(c.fd, &c.m, 0, kick, call, -1);
    /* One request first: the ring is running (behind the relay too). */
    hfe_ring_push(&c.m);
    assert_int_equal(write(kick, &v, 8), 8);
    assert_true(hfe_ring_wait_used(&c.m, 1, 5000));
    tu_sleep_ms(50);
    set_blocking(call); /* whatever the server did to the shared flags */
    assert_int_equal(read(call, &v, 8), 8);
    assert_int_equal(write(call, &big, 8), 8);
    hfe_ring_push(&c.m);
    v = 1;
    assert_int_equal(write(kick, &v, 8), 8);
    assert_true(hfe_ring_wait_used(&c.m, 2, 5000));
    tu_sleep_ms(100);
    hfe_ping(c.fd);
    /* The signal saturated the counter (the kernel's eventfd_signal stops
     * at UINT64_MAX) or was dropped (write()'s limit left as it was). */
    assert_int_equal(read(call, &v, 8), 8);
    assert_true(v == UINT64_MAX || v == big);
    close(kick);
    close(call);
    conn_down(&c);
    hfe_target_down(t);
}

struct thief {
    int fd;
    atomic_int taken;
};

static void *thief_main(void *arg)
{
    struct thief *th = arg;
    uint64_t v;

    for (;;)
        if (read(th->fd, &v, 8) == 8)
            atomic_fetch_add(&th->taken, 1);
    return NULL;
}

/*
 * Kick eventfd: blocking, shared by both queues (the back-end's own read
 * for queue 0 empties what poll() reported for queue 1), and two front-end
 * threads parked in read() on it take counts between the back-end's poll()
 * and its read().
 */
static void test_kick_efd_stolen(void **state)
{
    struct hfe_target *t = *state;
    int kick = efd(false), call = efd(true);
    struct thief th = {.fd = kick};
    pthread_t thr[2];
    struct conn c;
    uint64_t one = 1;

    conn_up(t, &c, true);
    hfe_ring_start(c.fd, &c.m, 0, kick, call, -1);
    hfe_ring_start(c.fd, &c.m, 1, kick, call, -1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&thr[i], NULL, thief_main, &th), 0);
    tu_sleep_ms(50);
    /* Kick until the thieves have taken some counts (the race is the
     * scheduler's: on a busy machine the back-end may win it for a while),
     * then as many again; the back-end must answer afterwards. */
    for (int i = 0, after = -1; i < 2000 && after != 0; i++) {
        assert_int_equal(write(kick, &one, 8), 8);
        tu_sleep_ms(2);
        if (after < 0 && atomic_load(&th.taken) > 0)
            after = 50;
        else if (after > 0)
            after--;
    }
    hfe_ping(c.fd);
    for (int i = 0; i < 2; i++) {
        pthread_cancel(thr[i]);
        pthread_join(thr[i], NULL);
    }
    assert_true(atomic_load(&th.taken) > 0);
    close(kick);
    close(call);
    conn_down(&c);
    hfe_target_down(t);
}

/*
 * Guest memory shrunk to nothing after the ring started, then a kick: the
 * back-end must not die of SIGBUS; the ring is broken (err eventfd) and
 * GET_VRING_BASE still answers with the position reached.
 */
static void test_mem_shrunk(void **state)
{
    struct hfe_target *t = *state;
    int kick = efd(true), call = efd(true), err = efd(true);
    struct pollfd pe = {.fd = err, .events = POLLIN};
    struct vuf_vring_state s = {.index = 0};
    uint64_t one = 1;
    struct conn c;

    conn_up(t, &c, true);
    hfe_ring_start(c.fd, &c.m, 0, kick, call, err);
    hfe_ring_push(&c.m);
    assert_int_equal(write(kick, &one, 8), 8);
    assert_true(hfe_ring_wait_used(&c.m, 1, 5000));
    hfe_ring_push(&c.m);
    munmap(c.m.p, c.m.len);
    c.m.p = NULL;
    assert_int_equal(ftruncate(c.m.fd, 0), 0);
    assert_int_equal(write(kick, &one, 8), 8);
    if (!is_relay(t)) {
        assert_int_equal(poll(&pe, 1, 5000), 1);
        assert_int_equal(read(err, &one, 8), 8);
        assert_int_equal(one, 1);
    } else {
        tu_sleep_ms(200);
    }
    hfe_ping(c.fd);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_GET_VRING_BASE, VUF_VERSION, 8, &s, 8, NULL, 0), 0);
    hfe_expect_u64(c.fd, VUF_REQ_GET_VRING_BASE, 1ull << 32);
    close(kick);
    close(call);
    close(err);
    conn_down(&c);
    hfe_target_down(t);
}

/* ---- lies the message table or a handler must refuse ---------------------- */

/* The outcome on the back-end, and on the relay. */
#define W(t, be, relay) (is_relay(t) ? (int64_t)(relay) : (int64_t)(be))

/* A memfd of `len` bytes (the caller closes it). */
static int memfd_of(uint64_t len)
{
    int fd = memfd_create("hfe-extra", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    return fd;
}

static void mem_table(int fd, const struct vuf_mem_region *r, unsigned nregions, size_t size,
                      const int *fds, unsigned nfds, int64_t want)
{
    uint8_t buf[8 + 32 * 9] = {0};
    uint32_t n = nregions;

    memcpy(buf, &n, 4);
    memcpy(buf + 8, r, 32 * (size_t)nregions);
    hfe_ack(fd, VUF_REQ_SET_MEM_TABLE, buf, size, fds, nfds, want);
}

static void test_mem_table_lies(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_mem_region r[9];
    int fds[9];
    struct conn c;

    conn_up(t, &c, false);
    for (unsigned i = 0; i < 9; i++) {
        fds[i] = memfd_of(1 << 16);
        r[i] = (struct vuf_mem_region){.guest_phys_addr = (uint64_t)i << 20,
                                       .memory_size = 1 << 16,
                                       .userspace_addr = 0x7f0000000000ull + ((uint64_t)i << 20)};
    }
    /* No region at all. */
    mem_table(c.fd, r, 0, 8, NULL, 0, W(t, -EPROTO, -EPROTO));
    /* Nine regions (eight at most), with eight fds. */
    mem_table(c.fd, r, 9, 8 + 32 * 9, fds, 8, W(t, -EPROTO, -EPROTO));
    /* Nine in nregions, but the size of one. */
    mem_table(c.fd, r, 9, 8 + 32, fds, 1, W(t, -EPROTO, -EPROTO));
    /* A region of size 0 (the payload decoder refuses it). */
    r[0].memory_size = 0;
    mem_table(c.fd, r, 1, 8 + 32, fds, 1, W(t, -EPROTO, -EPROTO));
    r[0].memory_size = 1 << 16;
    /* Two regions overlapping in GPA. */
    r[1].guest_phys_addr = r[0].guest_phys_addr + 0x1000;
    mem_table(c.fd, r, 2, 8 + 64, fds, 2, W(t, -EEXIST, -EEXIST));
    r[1].guest_phys_addr = 1 << 20;
    /* mmap_offset beyond the file, and offset + size past its end. */
    r[0].mmap_offset = 1 << 20;
    mem_table(c.fd, r, 1, 8 + 32, fds, 1, W(t, -EINVAL, -EINVAL));
    r[0].mmap_offset = 0x1000;
    mem_table(c.fd, r, 1, 8 + 32, fds, 1, W(t, -EINVAL, -EINVAL));
    r[0].mmap_offset = 0;
    /* Fewer and more fds than regions. */
    mem_table(c.fd, r, 2, 8 + 64, fds, 1, W(t, -EPROTO, -EPROTO));
    mem_table(c.fd, r, 1, 8 + 32, fds, 2, W(t, -EPROTO, -EPROTO));
    /* No fd at all. */
    mem_table(c.fd, r, 1, 8 + 32, NULL, 0, W(t, -EPROTO, -EPROTO));
    hfe_ping(c.fd);
    for (unsigned i = 0; i < 9; i++)
        close(fds[i]);
    conn_down(&c);
    hfe_target_down(t);
}

static void mem_single(int fd, uint32_t code, const struct vuf_mem_region *r, const int *fds,
                       unsigned nfds, int64_t want)
{
    uint8_t buf[40] = {0};

    memcpy(buf + 8, r, 32);
    hfe_ack(fd, code, buf, sizeof(buf), fds, nfds, want);
}

static void test_mem_reg_lies(void **state)
{
    struct hfe_target *t = *state;
    struct conn c;
    struct vuf_mem_region r, other;
    int fds[2] = {memfd_of(1 << 16), memfd_of(1 << 16)};

    conn_up(t, &c, true);
    r = hfe_mem_region(&c.m);
    other = (struct vuf_mem_region){
        .guest_phys_addr = 1ull << 32, .memory_size = 1 << 16, .userspace_addr = 1ull << 40};
    /* The relay offers no CONFIGURE_MEM_SLOTS and has no handler: what
     * passes the message table is refused with ENOTSUP. */
    int64_t nomsg = -ENOTSUP;
    /* Removing a region that is not there. */
    mem_single(c.fd, VUF_REQ_REM_MEM_REG, &other, NULL, 0, W(t, -ENOENT, nomsg));
    /* Adding one overlapping the table's. */
    r.guest_phys_addr += 0x1000;
    r.memory_size = 1 << 16;
    mem_single(c.fd, VUF_REQ_ADD_MEM_REG, &r, fds, 1, W(t, -EEXIST, nomsg));
    /* Size 0 (the payload decoder refuses it). */
    other.memory_size = 0;
    mem_single(c.fd, VUF_REQ_ADD_MEM_REG, &other, fds, 1, -EPROTO);
    other.memory_size = 1 << 16;
    /* No fd, two fds. */
    mem_single(c.fd, VUF_REQ_ADD_MEM_REG, &other, NULL, 0, -EPROTO);
    mem_single(c.fd, VUF_REQ_ADD_MEM_REG, &other, fds, 2, -EPROTO);
    /* Removing with an fd, and twice the same region. */
    mem_single(c.fd, VUF_REQ_ADD_MEM_REG, &other, fds, 1, W(t, 0, nomsg));
    mem_single(c.fd, VUF_REQ_REM_MEM_REG, &other, fds, 1, W(t, 0, nomsg));
    mem_single(c.fd, VUF_REQ_REM_MEM_REG, &other, NULL, 0, W(t, -ENOENT, nomsg));
    hfe_ping(c.fd);
    close(fds[0]);
    close(fds[1]);
    conn_down(&c);
    hfe_target_down(t);
}

static void vring_addr(int fd, uint32_t q, uint64_t desc, uint64_t avail, uint64_t used,
                       int64_t want)
{
    struct vuf_vring_addr a = {.index = q, .desc = desc, .avail = avail, .used = used};

    hfe_ack(fd, VUF_REQ_SET_VRING_ADDR, &a, sizeof(a), NULL, 0, want);
}

static void test_ring_outside_memory(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_vring_state s = {.index = 0, .num = HFE_RING_NUM};
    struct conn c;
    uint64_t u, end;

    conn_up(t, &c, true);
    u = c.m.uva;
    end = u + c.m.len;
    hfe_ack(c.fd, VUF_REQ_SET_VRING_NUM, &s, 8, NULL, 0, 0);
    /* Entirely outside: below, above, and at the end of the address space. */
    vring_addr(c.fd, 0, 0x1000, u + HFE_AVAIL, u + HFE_USED, W(t, -EFAULT, -EFAULT));
    vring_addr(c.fd, 0, u, end, u + HFE_USED, W(t, -EFAULT, -EFAULT));
    vring_addr(c.fd, 0, u, u + HFE_AVAIL, UINT64_MAX - 3, W(t, -EFAULT, -EFAULT));
    /* Starting inside the region, running past its end. */
    vring_addr(c.fd, 0, end - 16, u + HFE_AVAIL, u + HFE_USED, W(t, -EFAULT, -EFAULT));
    vring_addr(c.fd, 0, u, u + HFE_AVAIL, end - 8, W(t, -EFAULT, -EFAULT));
    hfe_ping(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

/* Every ring message with queue index `q` (no queue there). */
static void ring_index_lies(struct hfe_target *t, int fd, const struct hfe_mem *m, uint32_t q,
                            int64_t want, int64_t want_file)
{
    struct vuf_vring_state s = {.index = q, .num = HFE_RING_NUM};
    int e = efd(true);
    uint64_t f = q;

    hfe_ack(fd, VUF_REQ_SET_VRING_NUM, &s, 8, NULL, 0, want);
    s.num = 0;
    hfe_ack(fd, VUF_REQ_SET_VRING_BASE, &s, 8, NULL, 0, want);
    vring_addr(fd, q, m->uva + HFE_DESC, m->uva + HFE_AVAIL, m->uva + HFE_USED, want);
    hfe_ack(fd, VUF_REQ_SET_VRING_KICK, &f, 8, &e, 1, want_file);
    hfe_ack(fd, VUF_REQ_SET_VRING_CALL, &f, 8, &e, 1, want_file);
    hfe_ack(fd, VUF_REQ_SET_VRING_ERR, &f, 8, &e, 1, want_file);
    s.num = 1;
    hfe_ack(fd, VUF_REQ_SET_VRING_ENABLE, &s, 8, NULL, 0, want);
    /* GET_VRING_BASE always answers: the error form. */
    assert_int_equal(hfe_send(fd, VUF_REQ_GET_VRING_BASE, VUF_VERSION, 8, &s, 8, NULL, 0), 0);
    hfe_expect_u64(fd, VUF_REQ_GET_VRING_BASE, 0);
    close(e);
}

static void test_ring_index_lies(void **state)
{
    struct hfe_target *t = *state;
    struct conn c;

    conn_up(t, &c, true);
    /* The relay answers a queue it does not have as the back-end does. */
    int64_t noq = W(t, -EINVAL, -EINVAL);
    ring_index_lies(t, c.fd, &c.m, HFE_NQ, noq, noq);
    ring_index_lies(t, c.fd, &c.m, 255, noq, noq);
    /* Above 255 a vring file message is malformed (bits 8-63 are flags). */
    ring_index_lies(t, c.fd, &c.m, 0x10000, noq, -EPROTO);
    ring_index_lies(t, c.fd, &c.m, UINT32_MAX, noq, -EPROTO);
    hfe_ping(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

/* Ring values out of range on a queue that exists. */
static void test_ring_value_lies(void **state)
{
    struct hfe_target *t = *state;
    static const uint32_t nums[] = {0, 3, 2048, 65536, UINT32_MAX};
    struct vuf_vring_state s = {.index = 0};
    struct conn c;

    conn_up(t, &c, true);
    for (unsigned i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        /* 2048 is a valid virtio ring size but above the reference back-end's
         * --queue-size-max (1024). The relay applies the protocol's limit
         * (32768): no message tells it the back-end's own until the rings
         * start there (docs/relay.md). */
        int64_t want = nums[i] == 2048 ? W(t, -EINVAL, 0) : -EINVAL;

        s.num = nums[i];
        hfe_ack(c.fd, VUF_REQ_SET_VRING_NUM, &s, 8, NULL, 0, want);
    }
    s.num = 0x12345;
    hfe_ack(c.fd, VUF_REQ_SET_VRING_BASE, &s, 8, NULL, 0, W(t, -EINVAL, -EINVAL));
    s.num = 2;
    hfe_ack(c.fd, VUF_REQ_SET_VRING_ENABLE, &s, 8, NULL, 0, W(t, -EINVAL, -EINVAL));
    hfe_ping(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

static void test_size_lies(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_vring_state s = {.index = 0, .num = HFE_RING_NUM};
    uint8_t big[64] = {0};
    struct conn c;

    conn_up(t, &c, false);
    memcpy(big, &s, 8);
    /* Larger and smaller than the request takes, payload as announced:
     * the stream stays in step. */
    assert_int_equal(hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR, 16, big, 16, NULL, 0), 0);
    hfe_expect_u64(c.fd, VUF_REQ_SET_VRING_NUM, (uint64_t)-EPROTO);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR, 4, big, 4, NULL, 0), 0);
    hfe_expect_u64(c.fd, VUF_REQ_SET_VRING_NUM, (uint64_t)-EPROTO);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_GET_FEATURES, VUF_VERSION, 8, big, 8, NULL, 0), 0);
    hfe_expect_u64(c.fd, VUF_REQ_GET_FEATURES, (uint64_t)-EPROTO);
    hfe_ping(c.fd);
    /* More than any payload: the stream cannot be resynchronised. */
    assert_int_equal(hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR, UINT32_MAX, big, 8, NULL, 0), 0);
    hfe_expect_closed(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

/* A header announcing more than comes before the front-end's end. */
static void test_size_short(void **state)
{
    struct hfe_target *t = *state;
    uint8_t big[8] = {0};
    struct conn c;

    conn_up(t, &c, false);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR, 8, big, 4, NULL, 0), 0);
    assert_int_equal(shutdown(c.fd, SHUT_WR), 0);
    hfe_expect_closed(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

static void test_flag_lies(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_vring_state s = {.index = 0, .num = HFE_RING_NUM};
    struct conn c;

    conn_up(t, &c, false);
    /* The REPLY flag on a request: refused unanswered (a reply is never
     * answered), the stream in step. */
    assert_int_equal(
        hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR | VUF_FLAG_REPLY, 8, &s, 8, NULL, 0), 0);
    hfe_expect_silence(c.fd, 300);
    hfe_ping(c.fd);
    /* Unknown flag bits. */
    assert_int_equal(hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, REQ_NR | 0x100, 8, &s, 8, NULL, 0), 0);
    hfe_expect_u64(c.fd, VUF_REQ_SET_VRING_NUM, (uint64_t)-EPROTO);
    hfe_ping(c.fd);
    /* Version 2 (and 0): no request of this protocol, so unanswered. */
    assert_int_equal(
        hfe_send(c.fd, VUF_REQ_SET_VRING_NUM, 2 | VUF_FLAG_NEED_REPLY, 8, &s, 8, NULL, 0), 0);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_GET_FEATURES, 0, 0, NULL, 0, NULL, 0), 0);
    hfe_expect_silence(c.fd, 300);
    hfe_ping(c.fd);
    /* Unknown request codes. */
    assert_int_equal(hfe_send(c.fd, 46, REQ_NR, 0, NULL, 0, NULL, 0), 0);
    hfe_expect_u64(c.fd, 46, (uint64_t)-ENOTSUP);
    assert_int_equal(hfe_send(c.fd, 0, REQ_NR, 0, NULL, 0, NULL, 0), 0);
    hfe_expect_u64(c.fd, 0, (uint64_t)-ENOTSUP);
    hfe_ping(c.fd);
    conn_down(&c);
    hfe_target_down(t);
}

static void test_fds_on_fdless(void **state)
{
    struct hfe_target *t = *state;
    struct vuf_vring_state s = {.index = 0, .num = HFE_RING_NUM};
    int fds[3] = {efd(true), memfd_of(4096), efd(true)};
    uint64_t f = 1ull << 32;
    struct conn c;

    conn_up(t, &c, false);
    hfe_ack(c.fd, VUF_REQ_SET_VRING_NUM, &s, 8, fds, 1, -EPROTO);
    hfe_ack(c.fd, VUF_REQ_SET_FEATURES, &f, 8, fds, 3, -EPROTO);
    hfe_ack(c.fd, VUF_REQ_SET_OWNER, NULL, 0, fds, 2, -EPROTO);
    assert_int_equal(hfe_send(c.fd, VUF_REQ_GET_FEATURES, VUF_VERSION, 0, NULL, 0, fds, 1), 0);
    hfe_expect_u64(c.fd, VUF_REQ_GET_FEATURES, (uint64_t)-EPROTO);
    /* Two fds for a KICK. */
    f = 0;
    hfe_ack(c.fd, VUF_REQ_SET_VRING_KICK, &f, 8, fds, 2, -EPROTO);
    hfe_ping(c.fd);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    conn_down(&c);
    hfe_target_down(t);
}

/* ---- random messages ---------------------------------------------------------- */

#define RANDOM_MSGS 1000

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A random message: mostly well-formed headers with lying payloads (queue
 * indexes near the real ones, sizes from the message's own row), some with
 * any flags, size or code. Fds are memfds only (a regular file never makes
 * a device-state transfer wait, so no case waits out a deadline). */
static int random_message(int fd, uint64_t *s, const int *pool, unsigned npool)
{
    uint8_t p[4096];
    uint32_t code = (uint32_t)(rnd(s) % 48), flags = VUF_VERSION | VUF_FLAG_NEED_REPLY, size;
    const struct vuf_msg_rule *rule;
    unsigned nfds = 0, roll = (unsigned)(rnd(s) % 100);
    int fds[VUF_MAX_FDS];

    if (roll < 3)
        code = (uint32_t)rnd(s);
    rule = vuf_msg_rule(VUF_CH_FRONTEND, code);
    roll = (unsigned)(rnd(s) % 100);
    if (roll < 10)
        flags = VUF_VERSION;
    else if (roll < 15)
        flags = (uint32_t)rnd(s);
    roll = (unsigned)(rnd(s) % 100);
    if (rule && roll < 75)
        size = rule->size_min + (uint32_t)(rnd(s) % (rule->size_max - rule->size_min + 1u));
    else if (roll < 97)
        size = (uint32_t)(rnd(s) % 300);
    else
        size = VUF_MAX_PAYLOAD + 1 + (uint32_t)(rnd(s) % 1000);
    for (uint32_t i = 0; i < size; i += 8) {
        uint64_t v = rnd(s);
        memcpy(p + i, &v, size - i < 8 ? size - i : 8);
    }
    /* Half of them name a queue that exists or nearly does. */
    if (size >= 4 && rnd(s) % 2) {
        uint32_t q = (uint32_t)(rnd(s) % 4);
        memcpy(p, &q, 4);
    }
    roll = (unsigned)(rnd(s) % 100);
    if (rule && roll < 70)
        nfds = rule->fds_min + (unsigned)(rnd(s) % (rule->fds_max - rule->fds_min + 1u));
    else if (roll < 90)
        nfds = (unsigned)(rnd(s) % 4);
    for (unsigned i = 0; i < nfds; i++)
        fds[i] = pool[rnd(s) % npool];
    return hfe_send(fd, code, flags, size, p, size, fds, nfds);
}

static void test_random_messages(void **state)
{
    struct hfe_target *t = *state;
    const char *env = getenv("HFE_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)tu_now_ns(), s = seed;
    int pool[2] = {memfd_of(1 << 16), memfd_of(0)};
    int kick = efd(true), call = efd(true);
    unsigned closed = 0;
    struct conn c;

    printf("random messages (%s): seed %llu (HFE_SEED=%llu replays it)\n", hfe_kind_name(t->kind),
           (unsigned long long)seed, (unsigned long long)seed);
    fflush(stdout);
    conn_up(t, &c, true);
    hfe_ring_start(c.fd, &c.m, 0, kick, call, -1);
    for (unsigned i = 0; i < RANDOM_MSGS; i++) {
        /* Every 25th message, and after the last: is it still served? */
        bool sync = i % 25 == 24 || i == RANDOM_MSGS - 1;

        if (random_message(c.fd, &s, pool, 2) == 0 && (!sync || hfe_sync(c.fd) == 0))
            continue;
        /* The server closed the connection (a size it cannot skip): a new
         * one, on a new relay. */
        closed++;
        close(c.fd);
        hfe_target_renew(t);
        c.fd = hfe_connect(t->sock);
        c.pf = hfe_handshake(c.fd);
    }
    printf("random messages: %u connections closed by the server\n", closed);
    close(pool[0]);
    close(pool[1]);
    close(kick);
    close(call);
    conn_down(&c);
    hfe_target_down(t);
}

/* ---- the list --------------------------------------------------------------- */

struct hcase {
    const char *name;
    CMUnitTestFunction fn;
};

#define CASE(f) \
    {           \
#f, f   \
    }
static const struct hcase cases[] = {
    CASE(test_state_fd_blocking),   CASE(test_call_efd_saturated), CASE(test_kick_efd_stolen),
    CASE(test_mem_shrunk),          CASE(test_mem_table_lies),     CASE(test_mem_reg_lies),
    CASE(test_ring_outside_memory), CASE(test_ring_index_lies),    CASE(test_ring_value_lies),
    CASE(test_size_lies),           CASE(test_size_short),         CASE(test_flag_lies),
    CASE(test_fds_on_fdless),       CASE(test_random_messages),
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

static const enum hfe_kind kinds[] = {HFE_BACKEND, HFE_RELAY};
static const char *const kind_tag[] = {"backend", "relay"};

int main(void)
{
    static struct CMUnitTest tests[2 * NCASES];
    static char names[2 * NCASES][96];
    const char *only = getenv("HFE_TARGETS");
    size_t n = 0;

    for (size_t k = 0; k < 2; k++) {
        if (only && *only && strcmp(only, kind_tag[k]) != 0)
            continue;
        for (size_t i = 0; i < NCASES; i++) {
            snprintf(names[n], sizeof(names[n]), "%s/%s", kind_tag[k], cases[i].name + 5);
            tests[n] = (struct CMUnitTest){.name = names[n],
                                           .test_func = cases[i].fn,
                                           .setup_func = setup,
                                           .teardown_func = teardown,
                                           .initial_state = (void *)&kinds[k]};
            n++;
        }
    }
    if (getenv("HFE_FILTER"))
        cmocka_set_test_filter(getenv("HFE_FILTER"));
    return _cmocka_run_group_tests("hostile_frontend", tests, n, NULL, NULL);
}
