/* SPDX-License-Identifier: MIT */
/*
 * vuf's servers against a hostile front-end (tests/lib/hostile_fe.h): every
 * case runs against each target (vuf-backend-blk, and `vuf relay` in front
 * of one), asserts the exact outcome of each lie, and then the checks every
 * case must pass (alive, a new front-end served, fd count, exit 0 on
 * SIGTERM, no sanitizer text).
 *
 * HFE_TARGETS=backend or HFE_TARGETS=relay runs one target only;
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
    for (int i = 0; i < 50; i++) {
        assert_int_equal(write(kick, &one, 8), 8);
        tu_sleep_ms(2);
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
    CASE(test_state_fd_blocking),
    CASE(test_call_efd_saturated),
    CASE(test_kick_efd_stolen),
    CASE(test_mem_shrunk),
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
    return _cmocka_run_group_tests("hostile_frontend", tests, n, NULL, NULL);
}
