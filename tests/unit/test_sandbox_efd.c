/* SPDX-License-Identifier: MIT */
/*
 * The shared-eventfd calls (src/common/peer_eventfd.h) inside a VMM's
 * seccomp sandbox. Each case runs on a thread of its own that installs a
 * real filter on itself (filters are per thread and cannot be removed), so
 * every case starts with a thread that has learnt nothing yet:
 *   - a filter that refuses io_setup, io_submit and preadv2 with EPERM,
 *     EACCES, ENOSYS or EOPNOTSUPP: every signal lands and every take gets
 *     the count, through poll/read/write; each refused call was tried once
 *     by the thread, not once per kick;
 *   - io_submit alone refused (io_setup allowed): the same, one refusal;
 *   - a filter that KILLS on io_setup, io_submit, io_getevents, io_destroy
 *     and preadv2, with VUF_NO_AIO=1, and with the NO_AIO flag: the process
 *     survives signals, takes and the thread's exit.
 * What ran is read from vuf_peer_efd_get_stats().
 *
 * test_worker_* (run as a process of its own: `test_sandbox_efd worker`,
 * since it filters the test's thread): a device's worker whose drain of the
 * shared interrupt eventfd fails for good (a filter refusing preadv2 AND
 * read) drops that fd with an error line instead of spinning on it.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fe_fakebe.h"
#include "peer_eventfd.h"
#include "sandbox.h"
#include "testutil.h"

#define ROUNDS 50

struct efd_case {
    const long *nrs;
    unsigned n;
    uint32_t action;
    unsigned flags;  /* for the *_flags calls */
    bool takes_work; /* preadv2 allowed: takes need no fallback */
    /* results, read by the test thread after the join */
    int install;
    int signals_ok, takes_ok, total_ok;
    uint64_t total;
    struct vuf_peer_efd_stats before, after;
};

/* ROUNDS of signal + take, then ROUNDS signals and one take of the sum. */
static void *efd_case_thread(void *arg)
{
    struct efd_case *c = arg;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

    c->install = tu_seccomp_install(c->nrs, c->n, c->action);
    if (c->install < 0 || fd < 0)
        goto out;
    vuf_peer_efd_get_stats(&c->before);
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t v = 0;

        c->signals_ok += vuf_peer_efd_signal_flags(fd, c->flags) == 0;
        c->takes_ok += vuf_peer_efd_take_flags(fd, &v, c->flags) == 1 && v == 1;
    }
    for (int i = 0; i < ROUNDS; i++)
        c->signals_ok += vuf_peer_efd_signal_flags(fd, c->flags) == 0;
    c->total_ok = vuf_peer_efd_take_flags(fd, &c->total, c->flags);
    vuf_peer_efd_get_stats(&c->after);
out:
    if (fd >= 0)
        close(fd);
    return NULL;
}

static void run_case(struct efd_case *c)
{
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, efd_case_thread, c), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(c->install, 0);
    assert_int_equal(c->signals_ok, 2 * ROUNDS);
    assert_int_equal(c->takes_ok, ROUNDS);
    assert_int_equal(c->total_ok, 1);
    assert_int_equal(c->total, ROUNDS);
    /* Every signal (and take) went through the fallback. */
    assert_int_equal(c->after.signal_write - c->before.signal_write, 2 * ROUNDS);
    assert_int_equal(c->after.take_read - c->before.take_read, c->takes_work ? 0 : ROUNDS + 1);
}

static const long refused_calls[] = {SYS_io_setup, SYS_io_submit, SYS_preadv2};

/* Any of the four errnos means "use the fallback", learnt once: io_setup
 * and preadv2 each refused once for 151 calls. */
static void test_refusals_fall_back_once_per_thread(void **state)
{
    static const int errs[] = {EPERM, EACCES, ENOSYS, EOPNOTSUPP};

    (void)state;
    for (unsigned i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        struct efd_case c = {
            .nrs = refused_calls, .n = 3, .action = SECCOMP_RET_ERRNO | (uint32_t)errs[i]};

        print_message("refused with %s\n", strerror(errs[i]));
        run_case(&c);
        assert_int_equal(c.after.refused - c.before.refused, 2);
        assert_int_equal(c.after.no_aio - c.before.no_aio, 0);
    }
}

/* An AIO context, but a sandbox that refuses io_submit: refused once, not
 * on every kick. */
static void test_submit_refused_once(void **state)
{
    static const long submit[] = {SYS_io_submit};
    struct efd_case c = {
        .nrs = submit, .n = 1, .action = SECCOMP_RET_ERRNO | EPERM, .takes_work = true};

    (void)state;
    run_case(&c);
    assert_int_equal(c.after.refused - c.before.refused, 1);
}

/* Neither an AIO call nor preadv2 is made (any would kill the process). */
static void kill_case(unsigned flags)
{
    struct efd_case c = {
        .nrs = tu_aio_syscalls, .n = 5, .action = SECCOMP_RET_KILL_PROCESS, .flags = flags};

    run_case(&c);
    assert_int_equal(c.after.refused - c.before.refused, 0);
}

static void test_kill_filter_env(void **state)
{
    struct vuf_peer_efd_stats a, b;

    (void)state;
    vuf_peer_efd_get_stats(&a);
    /* Read by each thread on its first use: the case's thread sees it. */
    assert_int_equal(setenv("VUF_NO_AIO", "1", 1), 0);
    kill_case(0);
    unsetenv("VUF_NO_AIO");
    vuf_peer_efd_get_stats(&b);
    assert_int_equal(b.no_aio - a.no_aio, 1);
}

static void test_kill_filter_flag(void **state)
{
    (void)state;
    kill_case(VUF_PEER_EFD_NO_AIO);
}

/* VUF_NO_AIO=0 or empty is not set: AIO is used (nothing falls back). */
static void test_env_zero_means_unset(void **state)
{
    static const char *vals[] = {"0", ""};

    (void)state;
    for (unsigned i = 0; i < 2; i++) {
        struct efd_case c = {.nrs = NULL, .n = 0, .action = SECCOMP_RET_ALLOW};
        pthread_t t;

        assert_int_equal(setenv("VUF_NO_AIO", vals[i], 1), 0);
        assert_int_equal(pthread_create(&t, NULL, efd_case_thread, &c), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        unsetenv("VUF_NO_AIO");
        assert_int_equal(c.signals_ok, 2 * ROUNDS);
        assert_int_equal(c.takes_ok, ROUNDS);
        assert_int_equal(c.total, ROUNDS);
        assert_int_equal(c.after.no_aio - c.before.no_aio, 0);
        assert_int_equal(c.after.signal_write - c.before.signal_write, 0);
        assert_int_equal(c.after.take_read - c.before.take_read, 0);
    }
}

static atomic_int unreadable_lines;

static void count_unreadable(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    if (level == VUF_LOG_ERROR && strstr(msg, "shared interrupt eventfd cannot be read"))
        atomic_fetch_add(&unreadable_lines, 1);
}

static void test_worker_drops_unreadable_fd(void **state)
{
    static const long reads[] = {SYS_preadv2, SYS_read};
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint64_t one = 1;
    int64_t t0, until;

    (void)state;
    fx_begin(&f); /* the back-end's thread starts unfiltered */
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    vuf_log_set(count_unreadable, NULL, VUF_LOG_ERROR);
    /* This thread, and the worker activate starts, cannot read at all. */
    assert_int_equal(tu_seccomp_install(reads, 2, SECCOMP_RET_ERRNO | EPERM), 0);
    fx_activate_ok(&f);
    /* Queue 0 has no vector: its call fd is the worker's shared eventfd. */
    assert_int_equal(write(f.be.call_fd[0], &one, 8), 8);
    until = tu_now_ms() + 2000;
    while (atomic_load(&unreadable_lines) == 0 && tu_now_ms() < until)
        tu_sleep_ms(5);
    assert_int_equal(atomic_load(&unreadable_lines), 1);
    /* The count is still there: a level-triggered worker that kept the fd
     * would take a CPU. */
    t0 = tu_process_cpu_ms();
    tu_sleep_ms(1000);
    print_message("%lld ms CPU over an idle second\n", (long long)(tu_process_cpu_ms() - t0));
    assert_true(tu_process_cpu_ms() - t0 < 100);
    assert_int_equal(atomic_load(&f.intr.used_calls), 0);
    assert_int_equal(atomic_load(&unreadable_lines), 1);
    fx_end(&f);
    vuf_log_set(quiet_log, NULL, VUF_LOG_ERROR);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_fall_back_once_per_thread),
        cmocka_unit_test(test_submit_refused_once),
        cmocka_unit_test(test_kill_filter_env),
        cmocka_unit_test(test_kill_filter_flag),
        cmocka_unit_test(test_env_zero_means_unset),
        cmocka_unit_test(test_worker_drops_unreadable_fd),
    };

    fe_test_prepare();
    /* The worker case filters this thread for good: a process of its own. */
    if (argc > 1 && strcmp(argv[1], "worker") == 0)
        cmocka_set_test_filter("test_worker_*");
    else
        cmocka_set_skip_filter("test_worker_*");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
