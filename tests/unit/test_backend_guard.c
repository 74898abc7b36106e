/* SPDX-License-Identifier: MIT */
/*
 * The reference back-end's SIGBUS guard (backend/mem.h): a guarded mapping
 * whose file shrank reads zeros and is marked lost, and its region
 * translates nothing more; a SIGBUS anywhere else still kills the process.
 * Each case runs in a child, so a guard that fails kills only the child.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mem.h"
#include "testutil.h"

#define LEN (64u * 1024u)

/* A shared mapping of a fresh memfd of LEN bytes, filled with 0xab. */
static uint8_t *shared_map(int *fd)
{
    uint8_t *p;

    *fd = memfd_create("guard", MFD_CLOEXEC);
    if (*fd < 0 || ftruncate(*fd, LEN) < 0)
        return NULL;
    p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (p == MAP_FAILED)
        return NULL;
    memset(p, 0xab, LEN);
    return p;
}

/* Run fn in a child; its wait status. */
static int in_child(int (*fn)(void))
{
    int st = -1;
    pid_t pid = fork();

    if (pid == 0) {
        /* cmocka catches SIGBUS itself: the process's own default, as in
         * the back-end. */
        signal(SIGBUS, SIG_DFL);
        _exit(fn());
    }
    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

/* A region whose file shrank: exit 0 iff it read zeros, was marked lost,
 * and no longer translates. */
static int guarded_child(void)
{
    struct vuf_mem_region w = {
        .guest_phys_addr = 0x100000, .memory_size = LEN, .userspace_addr = 0x7000000};
    struct be_mem m;
    uint8_t buf[16];
    int fd;

    if (be_guard_install() < 0 || !shared_map(&fd))
        return 10;
    be_mem_init(&m);
    if (be_mem_set_table(&m, &w, &fd, 1) < 0)
        return 11;
    if (be_mem_read(&m, w.guest_phys_addr + 100, buf, sizeof(buf)) < 0 || buf[0] != 0xab)
        return 12;
    if (ftruncate(fd, 0) < 0)
        return 13;
    /* The access faults, the guard swaps in zero pages, the copy goes on. */
    volatile uint8_t *host = be_mem_gpa_to_host(&m, w.guest_phys_addr, 1);
    if (!host || host[LEN / 2] != 0)
        return 14;
    if (be_guard_faults() != 1 || !be_mem_lost_check(&m) || be_mem_lost_check(&m))
        return 15;
    if (be_mem_read(&m, w.guest_phys_addr, buf, 1) != -EFAULT ||
        be_mem_uva_to_host(&m, w.userspace_addr, 1) != NULL)
        return 16;
    be_mem_clear(&m);
    close(fd);
    return 0;
}

static void test_guarded_region_survives(void **state)
{
    int st = in_child(guarded_child);

    (void)state;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* An unguarded mapping whose file shrank: the guard leaves it alone. */
static int unguarded_child(void)
{
    volatile uint8_t *p;
    int fd;

    if (be_guard_install() < 0 || !(p = shared_map(&fd)) || ftruncate(fd, 0) < 0)
        return 10;
    return p[0]; /* SIGBUS */
}

static void test_other_sigbus_kills(void **state)
{
    int st = in_child(unguarded_child);

    (void)state;
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGBUS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guarded_region_survives),
        cmocka_unit_test(test_other_sigbus_kills),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
