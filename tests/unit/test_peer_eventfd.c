/* SPDX-License-Identifier: MIT */
/*
 * Eventfds the back-end shares with us cannot block the front-end.
 *
 * A back-end that receives a kick or call eventfd with SCM_RIGHTS shares
 * its open file description, O_NONBLOCK included. The tricks played here
 * are the ones a hostile back-end can play with that:
 *   - clear O_NONBLOCK and fill the kick counter (0xfffffffffffffffe): a
 *     write() of 1 then sleeps until someone reads;
 *   - clear O_NONBLOCK and keep a thread blocked in read() on the call fd
 *     while signalling it: that thread takes counts from under our read(),
 *     which then sleeps until the next signal (or forever).
 * Each case runs the front-end's call on a watchdog thread: it must return
 * within its deadline (plus a margin for a loaded machine), with the
 * expected result, and reset/destroy must return too.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/server.h"
#include "vuf/virtio.h"
#include "vuf/virtq.h"

#define EFD_FULL 0xfffffffffffffffeull /* the largest count a write() can leave */
#define WATCHDOG_MS 5000               /* "hung": far beyond every deadline used */

/* ------------------------------------------------------------------------ */
/* The back-end's tricks on one eventfd                                     */
/* ------------------------------------------------------------------------ */

static void clear_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
}

static void fill_counter(int fd)
{
    uint64_t v = EFD_FULL;

    clear_nonblock(fd);
    assert_int_equal(write(fd, &v, 8), 8);
}

/*
 * A thread blocked in read() on `fd` (O_NONBLOCK cleared), and another
 * that signals `fd` every 100 us during a burst (thief_burst). Now and then
 * the reader takes a count between the victim's poll() and its read(); a
 * victim that uses read() then sleeps in it until the next signal. The
 * signaller watches for exactly that (another thread of this process
 * sleeping in read(), from /proc/self/task/T/syscall) and then stops
 * signalling: the victim would sleep forever. A victim that cannot block
 * only ever sees the burst end.
 */
struct thief {
    int fd;
    atomic_bool stop;
    atomic_int stolen, signalled;
    int stolen_in_attack;     /* stolen before thief_stop's own wake-up count */
    atomic_llong burst_until; /* tu_now_ms() */
    atomic_int reader_tid;
    atomic_bool caught; /* a victim was seen sleeping in read() */
    pthread_t reader, writer;
    bool running;
};

static void *thief_read(void *arg)
{
    struct thief *t = arg;
    uint64_t v;

    atomic_store(&t->reader_tid, (int)gettid());
    while (!atomic_load(&t->stop))
        if (read(t->fd, &v, 8) == 8)
            atomic_fetch_add(&t->stolen, 1);
    return NULL;
}

/* Is a thread of this process other than `except` and the caller (whose
 * own file shows the read() of it) sleeping in read()? */
static bool someone_sleeps_in_read(int except)
{
    int self = (int)gettid();

    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    bool found = false;

    if (!d)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        char path[64], buf[64];
        int tid = atoi(e->d_name), fd, n;

        if (tid <= 0 || tid == except || tid == self)
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", tid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        n = (int)read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            /* "<nr> <args...>" while in a syscall, "running" otherwise. */
            found = buf[0] >= '0' && buf[0] <= '9' && atol(buf) == SYS_read;
        }
    }
    closedir(d);
    return found;
}

static void *thief_signal(void *arg)
{
    struct thief *t = arg;
    uint64_t one = 1;

    while (!atomic_load(&t->stop)) {
        if (tu_now_ms() >= atomic_load(&t->burst_until)) {
            usleep(1000); /* between bursts */
            continue;
        }
        if (write(t->fd, &one, 8) == 8)
            atomic_fetch_add(&t->signalled, 1);
        usleep(100); /* the attack's pace, not a synchronisation */
        if (someone_sleeps_in_read(atomic_load(&t->reader_tid))) {
            /* Seen twice in a row: asleep, not just passing through. */
            usleep(1000);
            if (someone_sleeps_in_read(atomic_load(&t->reader_tid))) {
                atomic_store(&t->caught, true);
                atomic_store(&t->burst_until, 0);
            }
        }
    }
    return NULL;
}

/* Signal for `ms` from now, and return once that burst is over. */
static void thief_burst(struct thief *t, int ms)
{
    int before = atomic_load(&t->signalled);

    atomic_store(&t->burst_until, tu_now_ms() + ms);
    while (tu_now_ms() < atomic_load(&t->burst_until) + 2)
        usleep(1000); /* the burst's length is the scenario itself */
    assert_true(atomic_load(&t->signalled) > before);
    assert_false(atomic_load(&t->caught));
}

/* Takes a dup of fd: the thief keeps working whatever the test closes. */
static void thief_start(struct thief *t, int fd)
{
    memset(t, 0, sizeof(*t));
    t->fd = dup(fd);
    assert_true(t->fd >= 0);
    clear_nonblock(t->fd);
    assert_int_equal(pthread_create(&t->reader, NULL, thief_read, t), 0);
    while (atomic_load(&t->reader_tid) == 0)
        sched_yield(); /* the signaller must know whom not to watch */
    assert_int_equal(pthread_create(&t->writer, NULL, thief_signal, t), 0);
    t->running = true;
}

static void thief_stop(struct thief *t)
{
    uint64_t one = 1;

    if (!t->running)
        return;
    atomic_store(&t->stop, true);
    pthread_join(t->writer, NULL);
    t->stolen_in_attack = atomic_load(&t->stolen);
    /* The reader may sit in read(): one more count wakes it. */
    assert_int_equal(write(t->fd, &one, 8), 8);
    pthread_join(t->reader, NULL);
    close(t->fd);
    t->running = false;
}

/* ------------------------------------------------------------------------ */
/* Running a call that must not hang                                        */
/* ------------------------------------------------------------------------ */

struct bounded {
    int (*fn)(void *arg);
    void *arg;
    int result;
    atomic_bool done;
    int done_fd;
};

static void *bounded_main(void *arg)
{
    struct bounded *b = arg;
    uint64_t one = 1;

    b->result = b->fn(b->arg);
    atomic_store(&b->done, true);
    if (write(b->done_fd, &one, 8) != 8)
        abort();
    return NULL;
}

/* fn(arg) on its own thread; fails the test if it has not returned within
 * WATCHDOG_MS (the stuck thread then dies with the test process). Returns
 * fn's result and stores the time it took in *ms. */
static int run_bounded(int (*fn)(void *), void *arg, int64_t *ms)
{
    struct bounded b = {.fn = fn, .arg = arg};
    struct pollfd p;
    pthread_t t;
    int64_t t0 = tu_now_ms();

    b.done_fd = eventfd(0, EFD_CLOEXEC);
    assert_true(b.done_fd >= 0);
    assert_int_equal(pthread_create(&t, NULL, bounded_main, &b), 0);
    p = (struct pollfd){.fd = b.done_fd, .events = POLLIN};
    while (poll(&p, 1, WATCHDOG_MS) < 0 && errno == EINTR)
        ;
    if (!atomic_load(&b.done))
        fail_msg("call still blocked after %d ms", WATCHDOG_MS);
    pthread_join(t, NULL);
    close(b.done_fd);
    *ms = tu_now_ms() - t0;
    return b.result;
}

/* ------------------------------------------------------------------------ */
/* The guest's driver (vuf/virtq.h)                                         */
/* ------------------------------------------------------------------------ */

struct drv {
    struct vuf_guest_mem *mem;
    struct vuf_virtq *vq;
    int fds0;
};

static void drv_begin(struct drv *d)
{
    d->fds0 = tu_count_fds();
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &d->mem), 0);
    assert_int_equal(vuf_virtq_new(d->mem, 16, 0, &d->vq), 0);
}

static void drv_end(struct drv *d)
{
    vuf_virtq_free(d->vq);
    vuf_guest_mem_free(d->mem);
    assert_int_equal(tu_count_fds(), d->fds0);
}

static int call_notify(void *arg)
{
    return vuf_virtq_notify(arg);
}

/* The driver's kick returns at once when the counter is full and the
 * back-end cleared O_NONBLOCK; the count stays saturated (the device
 * wakes all the same). */
static void test_driver_kick_full_counter(void **state)
{
    struct drv d;
    int64_t ms;
    uint64_t v;
    int kick;

    (void)state;
    drv_begin(&d);
    kick = vuf_virtq_kick_fd(d.vq);
    fill_counter(kick);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(run_bounded(call_notify, d.vq, &ms), 0);
        assert_true(ms < WATCHDOG_MS);
    }
    /* The back-end reads what a full counter holds: at least EFD_FULL. */
    assert_int_equal(read(kick, &v, 8), 8);
    assert_true(v >= EFD_FULL);
    /* An empty counter gets exactly one count per kick. */
    assert_int_equal(vuf_virtq_notify(d.vq), 0);
    assert_int_equal(vuf_virtq_notify(d.vq), 0);
    assert_int_equal(read(kick, &v, 8), 8);
    assert_int_equal(v, 2);
    drv_end(&d);
}

/* A kick on a closed fd is an error, not a crash: the queue holds an fd
 * number that was closed behind its back (the signal's syscalls meet it:
 * io_submit or fcntl fail with EBADF); and a queue with no kick fd at all
 * fails before any syscall. */
static void test_driver_kick_bad_fd(void **state)
{
    struct drv d;
    int efd;

    (void)state;
    drv_begin(&d);
    efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(efd >= 0);
    vuf_virtq_set_kick_fd(d.vq, efd); /* the queue owns it now */
    assert_int_equal(vuf_virtq_notify(d.vq), 0);
    /* Closed, and nothing opened after it (this thread opens no fd until
     * the queue lets go of the number). */
    assert_int_equal(close(efd), 0);
    assert_int_equal(vuf_virtq_kick_fd(d.vq), efd);
    assert_int_equal(vuf_virtq_notify(d.vq), -EBADF);
    assert_int_equal(vuf_virtq_notify(d.vq), -EBADF);
    /* Let go of the number (its close() now fails with EBADF, harmlessly). */
    vuf_virtq_set_kick_fd(d.vq, -1);
    assert_int_equal(vuf_virtq_notify(d.vq), -EBADF);
    drv_end(&d);
}

struct wait_arg {
    struct vuf_virtq *vq;
    int timeout_ms;
};

static int call_wait(void *arg)
{
    struct wait_arg *w = arg;

    return vuf_virtq_wait(w->vq, w->timeout_ms);
}

/* Waiting for a completion that never comes, while a back-end thread
 * steals every call signal: -ETIMEDOUT at the deadline, not a hang. */
static void test_driver_wait_call_stolen(void **state)
{
    struct drv d;
    struct thief t;
    struct wait_arg w;
    int64_t ms;
    uint8_t *buf;
    uint64_t gpa;
    struct vuf_virtq_buf b;

    (void)state;
    drv_begin(&d);
    /* One request in flight, so that there is something to wait for. */
    assert_int_equal(vuf_guest_mem_alloc(d.mem, 512, 16, &gpa), 0);
    buf = vuf_guest_mem_to_host(d.mem, gpa, 512);
    assert_non_null(buf);
    b = (struct vuf_virtq_buf){.gpa = gpa, .host = buf, .len = 512, .writable = true};
    assert_int_equal(vuf_virtq_add(d.vq, &b, 1, &b), 0);
    thief_start(&t, vuf_virtq_call_fd(d.vq));
    w = (struct wait_arg){.vq = d.vq, .timeout_ms = 250};
    for (int i = 0; i < 6; i++) {
        /* A 200 ms burst while the driver waits 250 ms for a completion. */
        atomic_store(&t.burst_until, tu_now_ms() + 200);
        assert_int_equal(run_bounded(call_wait, &w, &ms), -ETIMEDOUT);
        assert_true(ms >= 250);
    }
    thief_stop(&t);
    assert_false(atomic_load(&t.caught));
    assert_true(t.stolen_in_attack > 0);
    drv_end(&d);
}

/* ------------------------------------------------------------------------ */
/* The front-end device against a back-end that plays the tricks           */
/* ------------------------------------------------------------------------ */

enum trick {
    TRICK_NONE,
    TRICK_KICK_FULL,  /* on SET_VRING_KICK: clear O_NONBLOCK, fill the counter */
    TRICK_CALL_THIEF, /* on SET_VRING_CALL: a thief on the call fd */
};

#define NQ 1 /* virtio-blk without MQ */

struct tbe {
    enum trick trick;
    struct vuf_server *srv;
    pthread_t thread;
    int stop_fd;
    int kick[NQ], call[NQ]; /* the fds as received, kept */
    struct thief thief;
    atomic_int kicks_filled, thieves;
};

static int tbe_handler(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct tbe *be = opaque;
    unsigned idx = (unsigned)(req->payload.u64 & 0xff);

    switch (req->hdr.request) {
    case VUF_REQ_GET_FEATURES:
        reply->payload.u64 =
            (1ull << VUF_VIRTIO_F_VERSION_1) | (1ull << VUF_VHOST_F_PROTOCOL_FEATURES);
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_PROTOCOL_FEATURES:
        /* REPLY_ACK: the front-end waits until SET_VRING_KICK was handled,
         * so the trick is in place before the activation's kick. */
        reply->payload.u64 = VUF_PROTO_MASK(REPLY_ACK);
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_VRING_BASE:
        reply->payload.state = (struct vuf_vring_state){.index = req->payload.state.index};
        reply->hdr.size = sizeof(reply->payload.state);
        return 0;
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL: {
        bool kick = req->hdr.request == VUF_REQ_SET_VRING_KICK;
        int *slot = kick ? &be->kick[idx % NQ] : &be->call[idx % NQ];

        if (req->nfds != 1)
            return 0;
        if (*slot >= 0)
            close(*slot);
        *slot = req->fds[0];
        req->fds[0] = -1; /* kept, as a back-end keeps it */
        /* No cmocka assertions on this thread: the tricks only record. */
        if (kick && be->trick == TRICK_KICK_FULL) {
            uint64_t v = EFD_FULL;
            int fl = fcntl(*slot, F_GETFL);

            if (fl >= 0 && fcntl(*slot, F_SETFL, fl & ~O_NONBLOCK) == 0 && write(*slot, &v, 8) == 8)
                atomic_fetch_add(&be->kicks_filled, 1);
        }
        return 0;
    }
    default:
        return 0;
    }
}

static void *tbe_main(void *arg)
{
    struct tbe *be = arg;

    for (;;) {
        struct pollfd p[2] = {{.fd = vuf_server_fd(be->srv), .events = POLLIN},
                              {.fd = be->stop_fd, .events = POLLIN}};

        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents)
            break;
        if (p[0].revents && vuf_server_process_one(be->srv) == -ECONNRESET)
            break;
    }
    return NULL;
}

struct fx {
    struct tbe be;
    struct vuf_device *dev;
    struct vuf_guest_mem *mem;
    struct tu_vmm vmm;
    struct vuf_interrupt vi;
    struct vuf_queue q[NQ];
    int fds0, threads0;
};

static void fx_begin(struct fx *f, enum trick trick)
{
    struct vuf_server_config sc;
    struct vuf_frontend_config cfg;
    struct vuf_conn *a, *b;

    memset(f, 0, sizeof(*f));
    tu_warm_threads();
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();
    f->be.trick = trick;
    for (int i = 0; i < NQ; i++)
        f->be.kick[i] = f->be.call[i] = -1;
    memset(&sc, 0, sizeof(sc));
    sc.channel = VUF_CH_FRONTEND;
    sc.opaque = &f->be;
    for (unsigned c = 1; c <= VUF_SERVER_MAX_CODE; c++)
        sc.handlers[c] = tbe_handler;
    assert_int_equal(vuf_conn_pair(&a, &b), 0);
    assert_int_equal(vuf_server_new(b, &sc, &f->be.srv), 0);
    f->be.stop_fd = eventfd(0, EFD_CLOEXEC);
    assert_true(f->be.stop_fd >= 0);
    assert_int_equal(pthread_create(&f->be.thread, NULL, tbe_main, &f->be), 0);

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = 1ull << VUF_VIRTIO_F_VERSION_1;
    assert_int_equal(vuf_frontend_new(&cfg, a, &f->dev), 0);
    tu_ack_features(f->dev, 0);

    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &f->mem), 0);
    tu_vmm_init(&f->vmm);
    f->vi = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &f->vmm};
    /* No MSI-X vector: the queue signals the worker's shared eventfd. */
    for (int i = 0; i < NQ; i++)
        tu_ring_queue(f->mem, &f->q[i], VUF_NO_VECTOR);
}

static void fx_end(struct fx *f)
{
    uint64_t one = 1;

    vuf_device_destroy(f->dev);
    thief_stop(&f->be.thief);
    assert_int_equal(write(f->be.stop_fd, &one, 8), 8);
    pthread_join(f->be.thread, NULL);
    vuf_server_free(f->be.srv);
    close(f->be.stop_fd);
    for (int i = 0; i < NQ; i++) {
        if (f->be.kick[i] >= 0)
            close(f->be.kick[i]);
        if (f->be.call[i] >= 0)
            close(f->be.call[i]);
        close(f->q[i].kick_fd);
    }
    vuf_guest_mem_free(f->mem);
    assert_int_equal(tu_count_fds(), f->fds0);
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
}

static int call_activate(void *arg)
{
    struct fx *f = arg;

    return vuf_device_activate(f->dev, f->mem, &f->vi, f->q, NQ);
}

static int call_reset(void *arg)
{
    struct fx *f = arg;

    return vuf_device_reset(f->dev);
}

static int call_destroy(void *arg)
{
    struct fx *f = arg;

    vuf_device_destroy(f->dev);
    f->dev = NULL;
    return 0;
}

/* The one kick per started ring at activation, on a kick fd the back-end
 * filled with O_NONBLOCK cleared: activation completes, reset returns. */
static void test_activate_kick_full_counter(void **state)
{
    struct fx f;
    int64_t ms;
    uint64_t v;

    (void)state;
    fx_begin(&f, TRICK_KICK_FULL);
    assert_int_equal(run_bounded(call_activate, &f, &ms), 0);
    assert_int_equal(atomic_load(&f.be.kicks_filled), NQ);
    /* The kicks found full counters: they stay saturated, the back-end
     * sees "kicked". */
    for (int i = 0; i < NQ; i++) {
        assert_int_equal(read(f.q[i].kick_fd, &v, 8), 8);
        assert_true(v >= EFD_FULL);
    }
    assert_int_equal(run_bounded(call_reset, &f, &ms), 0);
    fx_end(&f);
}

/* The worker's shared non-MSI-X call eventfd, robbed by a back-end thread
 * blocked in read() while another signals it: the worker never blocks, so
 * reset (which joins it) and destroy return. */
static void test_worker_call_thief(void **state)
{
    struct fx f;
    int64_t ms;

    (void)state;
    fx_begin(&f, TRICK_CALL_THIEF);
    assert_int_equal(run_bounded(call_activate, &f, &ms), 0);
    /* Queue 0 has no vector: its call fd is the worker's shared one. */
    assert_true(f.be.call[0] >= 0);
    /* Rounds of: a burst of signals that the worker and the thief share,
     * then reset, which has to join the worker. */
    int stolen = 0;

    for (int round = 0; round < 4; round++) {
        if (round > 0)
            assert_int_equal(run_bounded(call_activate, &f, &ms), 0);
        thief_start(&f.be.thief, f.be.call[0]);
        thief_burst(&f.be.thief, 50);
        assert_int_equal(run_bounded(call_reset, &f, &ms), 0);
        thief_stop(&f.be.thief);
        stolen += f.be.thief.stolen_in_attack;
    }
    /* Both sides took signals: the attack was real, and the worker kept
     * forwarding what it got. */
    assert_true(stolen > 0);
    assert_true(atomic_load(&f.vmm.intx) > 0);
    /* Once more with the device active, through destroy. */
    assert_int_equal(run_bounded(call_activate, &f, &ms), 0);
    thief_start(&f.be.thief, f.be.call[0]);
    thief_burst(&f.be.thief, 50);
    assert_int_equal(run_bounded(call_destroy, &f, &ms), 0);
    fx_end(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_driver_kick_full_counter),
        cmocka_unit_test(test_driver_kick_bad_fd),
        cmocka_unit_test(test_driver_wait_call_stolen),
        cmocka_unit_test(test_activate_kick_full_counter),
        cmocka_unit_test(test_worker_call_thief),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
