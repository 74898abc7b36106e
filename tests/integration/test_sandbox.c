/* SPDX-License-Identifier: MIT */
/*
 * A VMM runs its vhost-user devices under a seccomp filter (README.md,
 * "Syscalls and sandboxes"): whole life cycles of a blk device against the
 * reference back-end ($VUF_BACKEND_BLK) and of a net device against
 * dpdk-testpmd, with a real filter on this process, installed after the
 * back-end was spawned (it must not inherit it) and before the first
 * library call, so that every library thread has it:
 *
 *   *_open      no filter: the control; the kernel's non-blocking paths
 *               ran (nothing fell back), and nothing spins either;
 *   *_eperm     io_setup, io_submit and preadv2 fail with EPERM: every
 *               request completes, the shared interrupt (blk: a queue
 *               without an irqfd, drained by the device's worker) reaches
 *               the VMM, no thread spins while idle (process CPU time over
 *               an idle second), and each refused call was tried about
 *               once per thread, not once per kick;
 *   *_kill_env  any of io_setup, io_submit, io_getevents, io_destroy,
 *               preadv2 kills the process; VUF_NO_AIO=1 in the environment;
 *   *_kill_opt  the same filter; the device's and the queues' no_aio option;
 *   blk_allowlist, blk_allowlist_aio
 *               README.md's syscall table is complete: a thread whose filter
 *               allows only its rows (with no_aio; then with the AIO calls
 *               too) runs connect to destroy, its worker inheriting the
 *               filter; any other call traps and is named.
 *
 * A filter that kills skips the reaping: a guard process (tu_guard_start)
 * then kills the back-end.
 *
 * A filter cannot be removed, so each case is its own process: meson runs
 * this program once per case, with the case name as argument. What ran is
 * read from vuf_peer_efd_get_stats() (src/common/peer_eventfd.h).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <linux/seccomp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "net_harness.h"
#include "peer_eventfd.h"
#include "sandbox.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))
#define QSIZE 64u
#define IO_MS 5000
#define BLOCKS 32u
#define REQ_MS 2000 /* a write and a read of 4 KiB, on a loaded machine */
/* Process CPU time allowed over an idle second: a spinning thread takes
 * the whole second. */
#define IDLE_CPU_MS 100

/* Kills the back-end if a filter kills this process (tu_guard_start). */
static struct tu_guard guard;
static bool guard_on;

static void guard_backend(pid_t pid)
{
    tu_guard_start(&guard, pid);
    guard_on = true;
}

static void guard_release(void)
{
    if (guard_on)
        tu_guard_release(&guard);
    guard_on = false;
}

/* Every case's teardown: also after a failed assertion. */
static int guard_teardown(void **state)
{
    (void)state;
    guard_release();
    return 0;
}

enum sandbox_mode { SB_NONE, SB_EPERM, SB_KILL_ENV, SB_KILL_OPT };

static void enter_sandbox(enum sandbox_mode m)
{
    static const long refused[] = {SYS_io_setup, SYS_io_submit, SYS_preadv2};

    /* Threads that exist now would run unfiltered. */
    assert_int_equal(tu_count_threads(), 1);
    if (m == SB_NONE)
        return;
    if (m == SB_EPERM) {
        assert_int_equal(tu_seccomp_install(refused, 3, SECCOMP_RET_ERRNO | EPERM), 0);
        return;
    }
    assert_int_equal(tu_seccomp_install(tu_aio_syscalls, 5, SECCOMP_RET_KILL_PROCESS), 0);
    if (m == SB_KILL_ENV)
        assert_int_equal(setenv("VUF_NO_AIO", "1", 1), 0);
}

static void assert_idle(const char *when)
{
    int64_t t0 = tu_process_cpu_ms(), used;

    tu_sleep_ms(1000);
    used = tu_process_cpu_ms() - t0;
    print_message("%s: %lld ms CPU over an idle second\n", when, (long long)used);
    assert_true(used >= 0 && used < IDLE_CPU_MS);
}

/* What the stats must say after a life cycle in mode m. */
static void assert_paths(enum sandbox_mode m, const struct vuf_peer_efd_stats *a,
                         const struct vuf_peer_efd_stats *b, uint64_t min_signals)
{
    uint64_t wr = b->signal_write - a->signal_write, rd = b->take_read - a->take_read;
    uint64_t refused = b->refused - a->refused, no_aio = b->no_aio - a->no_aio;

    print_message("fallback: %llu signals, %llu takes; %llu refusals; %llu VUF_NO_AIO threads\n",
                  (unsigned long long)wr, (unsigned long long)rd, (unsigned long long)refused,
                  (unsigned long long)no_aio);
    if (m != SB_NONE) {
        assert_true(wr >= min_signals);
        assert_true(rd >= 1);
    }
    switch (m) {
    case SB_NONE:
        /* The kernel's non-blocking paths (AIO poll, preadv2) did it all;
         * no sandbox to fall back for. */
        assert_int_equal(wr, 0);
        assert_int_equal(refused, 0);
        assert_int_equal(no_aio, 0);
        return;
    case SB_EPERM:
        /* io_setup and preadv2 once per thread that uses them: the test's
         * thread and each of the worker threads (one per activation). */
        assert_true(refused >= 2 && refused <= 8);
        assert_int_equal(no_aio, 0);
        break;
    case SB_KILL_ENV:
        assert_int_equal(refused, 0);
        /* Each thread that signalled or took read it: this one, and for
         * blk the workers too. */
        assert_true(no_aio >= 1);
        break;
    case SB_KILL_OPT:
        assert_int_equal(refused, 0);
        assert_int_equal(no_aio, 0);
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* blk: the reference back-end                                              */
/* ------------------------------------------------------------------------ */

struct blk_env {
    char *dir;
    struct tu_proc proc;
    char sock[300], log[300];
    struct tu_vmm vmm;
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq;
    struct vuf_blk *blk;
    struct vuf_queue q;
};

static void blk_backend_start(struct blk_env *e)
{
    const char *bin = getenv("VUF_BACKEND_BLK");
    char sockarg[320];
    char *argv[] = {(char *)bin, sockarg, "--ram=4194304", "--num-queues=1", NULL};

    if (!bin || !tu_have_exe(bin))
        fail_msg("VUF_BACKEND_BLK does not name vuf-backend-blk (run via meson test)");
    snprintf(e->sock, sizeof(e->sock), "%s/be.sock", e->dir);
    snprintf(e->log, sizeof(e->log), "%s/be.log", e->dir);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", e->sock);
    tu_spawn_wait_file(&e->proc, argv, e->log, e->sock);
}

/* BLOCKS writes of 4 KiB (generation gen), each read back, each answered
 * by its interrupt: a driver that is never woken still finds the request
 * done when its IO_MS deadline passes, which REQ_MS tells apart. */
static void blk_io(struct blk_env *e, unsigned gen)
{
    uint8_t w[4096], r[4096];

    for (unsigned b = 0; b < BLOCKS; b++) {
        int64_t t = tu_now_ms();

        tu_fill_pattern(w, sizeof(w), gen * BLOCKS + b);
        assert_int_equal(vuf_blk_write(e->blk, 8ull * b, w, sizeof(w), IO_MS), 0);
        memset(r, 0, sizeof(r));
        assert_int_equal(vuf_blk_read(e->blk, 8ull * b, r, sizeof(r), IO_MS), 0);
        assert_memory_equal(r, w, sizeof(r));
        if (tu_now_ms() - t >= REQ_MS)
            fail_msg("block %u: write and read took %lld ms: no interrupt?", b,
                     (long long)(tu_now_ms() - t));
    }
}

/*
 * The INTx count once it is above `above`, waiting up to IO_MS for the
 * worker: it delivers the back-end's call on its own time, and on a busy
 * machine the driver can find every request done by looking (the woken
 * back-end preempts the kicking thread) before the worker has run at all.
 */
static int intx_above(struct tu_vmm *v, int above)
{
    int64_t end = tu_now_ms() + IO_MS;
    int n;

    while ((n = atomic_load(&v->intx)) <= above && tu_now_ms() < end)
        tu_sleep_ms(1);
    return n;
}

static void blk_cycle(enum sandbox_mode m)
{
    struct blk_env *e = calloc(1, sizeof(*e));
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    struct vuf_peer_efd_stats st0, st1;
    struct vuf_queue slept;
    uint64_t acked;
    int intx, t0 = 0;

    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-sandbox-blk");
    assert_non_null(e->dir);
    blk_backend_start(e);
    guard_backend(e->proc.pid);
    enter_sandbox(m);
    vuf_peer_efd_get_stats(&st0);
    t0 = tu_count_threads();

    print_message("phase: connect and negotiate\n");
    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = QSIZE;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &e->vmm;
    cfg.no_aio = m == SB_KILL_OPT;
    tu_vmm_init(&e->vmm);
    assert_int_equal(vuf_conn_connect(e->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &e->dev), 0);
    assert_int_equal(vuf_device_ack_features(e->dev, vuf_device_features(e->dev)), 0);
    acked = vuf_frontend_acked_features(e->dev);
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 8u << 20, &e->gm), 0);
    {
        struct vuf_virtq_opts o = {.size = QSIZE, .features = acked, .no_aio = cfg.no_aio};

        assert_int_equal(vuf_virtq_new_opts(e->gm, &o, &e->vq), 0);
    }
    assert_int_equal(vuf_blk_new(e->vq, 4, 64 * 1024, &e->blk), 0);
    /* No MSI-X vector: the back-end signals the device's shared eventfd,
     * which the worker drains into signal_used_queue (INTx). */
    tu_vmm_add_queue(&e->vmm, 0, &e->q, e->vq, VUF_NO_VECTOR);
    e->intr = (struct vuf_interrupt){.ops = &tu_vmm_intr_ops, .opaque = &e->vmm};
    print_message("phase: activate\n");
    assert_int_equal(vuf_device_activate(e->dev, e->gm, &e->intr, &e->q, 1), 0);

    print_message("phase: steady state\n");
    blk_io(e, 1);
    intx = intx_above(&e->vmm, 0);
    print_message("%d interrupts for %u requests\n", intx, 2 * BLOCKS);
    assert_true(intx >= 1);
    assert_idle("active");

    print_message("phase: sleep\n");
    slept = e->q;
    assert_int_equal(vuf_device_sleep(e->dev, &slept, 1), 1);
    assert_int_equal(slept.next_avail, vuf_virtq_avail_idx(e->vq));
    assert_idle("asleep");
    print_message("phase: wake\n");
    assert_int_equal(vuf_device_wake(e->dev, e->gm, &e->intr, &slept, 1), 0);
    print_message("phase: steady state\n");
    blk_io(e, 2);
    assert_true(intx_above(&e->vmm, intx) > intx);
    assert_idle("woken");
    assert_int_equal(atomic_load(&e->vmm.crashed), 0);

    print_message("phase: destroy\n");
    vuf_device_destroy(e->dev);
    vuf_blk_free(e->blk);
    print_message("phase: end\n");
    vuf_virtq_free(e->vq);
    tu_vmm_forget_queue(&e->vmm, 0);
    vuf_guest_mem_free(e->gm);
    assert_int_equal(tu_threads_settle(t0), t0);
    vuf_peer_efd_get_stats(&st1);
    assert_paths(m, &st0, &st1, BLOCKS);
    guard_release();
    tu_stop_clean(&e->proc, e->sock);
    tu_rmtree(e->dir);
    free(e);
}

static void test_blk_open(void **state)
{
    (void)state;
    blk_cycle(SB_NONE);
}

static void test_blk_eperm(void **state)
{
    (void)state;
    blk_cycle(SB_EPERM);
}

static void test_blk_kill_env(void **state)
{
    (void)state;
    blk_cycle(SB_KILL_ENV);
}

static void test_blk_kill_opt(void **state)
{
    (void)state;
    blk_cycle(SB_KILL_OPT);
}

/* ------------------------------------------------------------------------ */
/* blk under an allow-list: README.md's table is complete                   */
/* ------------------------------------------------------------------------ */

/*
 * The README's table, row by row, as the allow-list of a thread that runs
 * the whole life cycle (connect to destroy; the worker it starts inherits
 * the list). Anything else traps: the handler names the syscall and the
 * process exits 3, so a call the README does not list fails the test.
 */
static const long allow_library[] = {
    /* connect, negotiate */
    SYS_socket,
    SYS_connect,
    SYS_fcntl,
    SYS_close,
    SYS_newfstatat,
    SYS_clock_nanosleep,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_socketpair,
#ifdef SYS_poll
    SYS_poll,
#endif
#ifdef SYS_ppoll
    SYS_ppoll, /* poll() where there is no poll syscall */
#endif
    /* guest memory, queues */
    SYS_memfd_create,
    SYS_ftruncate,
    SYS_mmap,
    SYS_munmap,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    /* worker */
    SYS_prctl,
#ifdef SYS_epoll_wait
    SYS_epoll_wait,
#endif
    SYS_epoll_pwait,
    /* kick, drain: the fallback (the AIO calls are added for the aio case) */
    SYS_read,
    SYS_write,
    /* sleep, destroy: used->idx through the memory fd, the worker's stop
     * eventfd and join */
    SYS_pread64,
    SYS_futex,
};
/* What the README says glibc adds: locks, malloc, thread start and end. */
static const long allow_glibc[] = {
    SYS_brk,          SYS_mprotect,   SYS_madvise,
    SYS_clone3,       SYS_clone,      SYS_rt_sigprocmask,
    SYS_rt_sigaction, SYS_rseq,       SYS_set_robust_list,
    SYS_exit,         SYS_exit_group,
};
/* The sanitizer runtimes' own calls (ASan, UBSan), in sanitizer builds
 * only: they are not the library's. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(TU_SANITIZED)
static const long allow_sanitizer[] = {SYS_gettid, SYS_sched_getaffinity, SYS_sigaltstack};
#else
static const long allow_sanitizer[] = {SYS_exit}; /* (none) */
#endif
static const long allow_aio[] = {SYS_io_setup, SYS_io_submit, SYS_io_getevents, SYS_io_destroy,
                                 SYS_preadv2};

static void sigsys_handler(int sig, siginfo_t *si, void *uc)
{
    char msg[96];
    int n;

    (void)sig;
    (void)uc;
    n = snprintf(msg, sizeof(msg), "syscall %d is not in README.md's table\n", si->si_syscall);
    if (write(2, msg, (size_t)n) < 0)
        _exit(4);
    _exit(3);
}

struct allow_run {
    const char *sock;
    bool aio;
    const char *failed; /* the first step that failed, or NULL */
    int err;
    int intx;
    struct tu_vmm vmm;
};

#define STEP(what, call)        \
    do {                        \
        int r_ = (call);        \
        if (r_ < 0) {           \
            a->failed = (what); \
            a->err = r_;        \
            goto out;           \
        }                       \
    } while (0)

/* The whole life cycle, with no cmocka assertion (not on the test's
 * thread): the first failing step is recorded. */
static void *allow_thread(void *arg)
{
    struct allow_run *a = arg;
    long nrs[80];
    unsigned n = 0;
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    struct vuf_device *dev = NULL;
    struct vuf_guest_mem *gm = NULL;
    struct vuf_virtq *vq = NULL;
    struct vuf_blk *blk = NULL;
    struct vuf_queue q, slept;
    struct vuf_interrupt intr = {.ops = &tu_vmm_intr_ops, .opaque = &a->vmm};
    uint8_t w[4096], r[4096];

#define ADD(list)                                                    \
    for (unsigned i_ = 0; i_ < sizeof(list) / sizeof(list[0]); i_++) \
        nrs[n++] = list[i_];
    ADD(allow_library);
    ADD(allow_glibc);
    ADD(allow_sanitizer);
    if (a->aio) {
        ADD(allow_aio);
    }
#undef ADD
    STEP("filter", tu_seccomp_allow_only(nrs, n, SECCOMP_RET_TRAP));

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = QSIZE;
    cfg.no_aio = !a->aio;
    STEP("connect", vuf_conn_connect(a->sock, 2000, &conn));
    vuf_conn_set_timeout(conn, IO_MS);
    STEP("new", vuf_frontend_new(&cfg, conn, &dev));
    STEP("ack", vuf_device_ack_features(dev, vuf_device_features(dev)));
    STEP("memory", vuf_guest_mem_new_simple(0x100000, 8u << 20, &gm));
    {
        struct vuf_virtq_opts o = {
            .size = QSIZE, .features = vuf_frontend_acked_features(dev), .no_aio = !a->aio};

        STEP("virtq", vuf_virtq_new_opts(gm, &o, &vq));
    }
    STEP("blk", vuf_blk_new(vq, 4, 64 * 1024, &blk));
    tu_vmm_add_queue(&a->vmm, 0, &q, vq, VUF_NO_VECTOR);
    STEP("activate", vuf_device_activate(dev, gm, &intr, &q, 1));
    for (unsigned round = 0; round < 2; round++) {
        for (unsigned b = 0; b < 8; b++) {
            tu_fill_pattern(w, sizeof(w), round * 8 + b);
            STEP("write", vuf_blk_write(blk, 8ull * b, w, sizeof(w), IO_MS));
            STEP("read", vuf_blk_read(blk, 8ull * b, r, sizeof(r), IO_MS));
            STEP("compare", memcmp(r, w, sizeof(r)) ? -EIO : 0);
        }
        if (round == 0) {
            slept = q;
            STEP("sleep", vuf_device_sleep(dev, &slept, 1));
            STEP("wake", vuf_device_wake(dev, gm, &intr, &slept, 1));
        }
    }
    intx_above(&a->vmm, 0);
out:
    a->intx = atomic_load(&a->vmm.intx);
    vuf_device_destroy(dev);
    vuf_blk_free(blk);
    vuf_virtq_free(vq);
    tu_vmm_forget_queue(&a->vmm, 0);
    vuf_guest_mem_free(gm);
    return NULL;
}

static void allow_cycle(bool aio)
{
    struct blk_env *e = calloc(1, sizeof(*e));
    struct allow_run a = {.aio = aio};
    struct sigaction sa = {.sa_sigaction = sigsys_handler, .sa_flags = SA_SIGINFO};
    pthread_t t;
    int t0;

    assert_non_null(e);
    e->proc.pid = -1;
    e->dir = tu_mkdtemp("vuf-sandbox-allow");
    assert_non_null(e->dir);
    blk_backend_start(e);
    guard_backend(e->proc.pid);
    assert_int_equal(sigaction(SIGSYS, &sa, NULL), 0);
    tu_vmm_init(&a.vmm);
    a.sock = e->sock;
    t0 = tu_count_threads();
    assert_int_equal(pthread_create(&t, NULL, allow_thread, &a), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (a.failed)
        fail_msg("%s: %s", a.failed, vuf_strerror(a.err));
    assert_true(a.intx >= 1);
    assert_int_equal(tu_threads_settle(t0), t0);
    guard_release();
    tu_stop_clean(&e->proc, e->sock);
    tu_rmtree(e->dir);
    free(e);
}

static void test_blk_allowlist(void **state)
{
    (void)state;
    allow_cycle(false);
}

static void test_blk_allowlist_aio(void **state)
{
    (void)state;
    allow_cycle(true);
}

/* ------------------------------------------------------------------------ */
/* net: dpdk-testpmd (tests/lib/net_harness.c)                              */
/* ------------------------------------------------------------------------ */

static enum sandbox_mode net_mode;
static struct vuf_peer_efd_stats net_st0;

static void net_started(struct tu_befx *f)
{
    guard_backend(f->proc.pid);
    enter_sandbox(net_mode);
    vuf_peer_efd_get_stats(&net_st0);
}

static void net_before_sleep(struct nh_guest *g)
{
    (void)g;
    assert_idle("active");
}

static void net_asleep(struct nh_guest *g, unsigned p, const struct vuf_queue *rx,
                       const struct vuf_queue *tx)
{
    (void)g;
    (void)p;
    (void)rx;
    (void)tx;
}

static void net_cycle(void **state, enum sandbox_mode m)
{
    struct tu_befx *f = *state;
    struct nh_checks c = {.started = net_started,
                          .before_sleep = net_before_sleep,
                          .asleep = net_asleep,
                          .no_aio = m == SB_KILL_OPT};
    struct vuf_peer_efd_stats st1;

    net_mode = m;
    nh_sleep_wake(f, 1, false, 512, 256, 8, &c);
    guard_release();
    vuf_peer_efd_get_stats(&st1);
    assert_paths(m, &net_st0, &st1, 1);
}

static int net_setup(void **state)
{
    return nh_setup(state, "sandbox");
}

static int net_teardown(void **state)
{
    guard_release();
    return tu_befx_teardown(state);
}

static void test_net_open(void **state)
{
    net_cycle(state, SB_NONE);
}

static void test_net_eperm(void **state)
{
    net_cycle(state, SB_EPERM);
}

static void test_net_kill_env(void **state)
{
    net_cycle(state, SB_KILL_ENV);
}

static void test_net_kill_opt(void **state)
{
    net_cycle(state, SB_KILL_OPT);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_blk_open, guard_teardown),
        cmocka_unit_test_teardown(test_blk_eperm, guard_teardown),
        cmocka_unit_test_teardown(test_blk_kill_env, guard_teardown),
        cmocka_unit_test_teardown(test_blk_kill_opt, guard_teardown),
        cmocka_unit_test_teardown(test_blk_allowlist, guard_teardown),
        cmocka_unit_test_teardown(test_blk_allowlist_aio, guard_teardown),
        cmocka_unit_test_setup_teardown(test_net_open, net_setup, net_teardown),
        cmocka_unit_test_setup_teardown(test_net_eperm, net_setup, net_teardown),
        cmocka_unit_test_setup_teardown(test_net_kill_env, net_setup, net_teardown),
        cmocka_unit_test_setup_teardown(test_net_kill_opt, net_setup, net_teardown),
    };
    char filter[64];

    /* One case per process: its filter would stay for the next one. */
    if (argc != 2) {
        fprintf(stderr, "usage: %s {blk,net}_{open,eperm,kill_env,kill_opt}\n", argv[0]);
        return 2;
    }
    snprintf(filter, sizeof(filter), "test_%s", argv[1]);
    cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
