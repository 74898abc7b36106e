/* SPDX-License-Identifier: MIT */
/*
 * The reference back-end (vuf-backend-blk) under a front-end and a driver
 * that are not ours: QEMU 7.2's vhost-user-blk-pci and a Linux guest's
 * virtio-blk driver (tests/guest/guest.h). The guest reads a region the
 * host filled, writes a pattern with O_DIRECT, reads it back and compares;
 * the host then checks the disk file byte for byte.
 *
 * Cases (each boot costs 5-9 s of TCG, so two cover both dimensions): a
 * file disk with 1 queue, checked from the host too, and a RAM disk with 2
 * queues (2 vCPUs, one writer pinned to each, so requests arrive on both
 * rings; the guest's read-back is the check, the bytes leave with the
 * process).
 * Missing QEMU, busybox or the kernel is a failure (scripts/setup.sh
 * installs them).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends.h"
#include "guest.h"
#include "testutil.h"

#define DISK_BYTES (64ull << 20)

static char vmlinuz[512], moddir[512];
static const char *backend_bin;

static void run_ref(bool ram, unsigned nq, unsigned cpus)
{
    char *dir = tu_mkdtemp("vuf-guest-ref");
    char sock[600], disk[600], initrd[600], belog[600], qlog[600], diskarg[640], nqarg[32];
    struct tg_blk_workload w = {
        .pre_off = 1u << 20,
        .pre_len = 256u << 10,
        .pre_seed = 7,
        .write_off = 8u << 20,
        .write_len = 1u << 20,
        .write_seed = 11,
        .writers = cpus,
    };
    struct tu_proc be = {0};
    struct tg_vm vm = {0};
    int st;

    snprintf(sock, sizeof(sock), "%s/be.sock", dir);
    snprintf(disk, sizeof(disk), "%s/disk.img", dir);
    snprintf(initrd, sizeof(initrd), "%s/initrd", dir);
    snprintf(belog, sizeof(belog), "%s/backend.log", dir);
    snprintf(qlog, sizeof(qlog), "%s/guest.log", dir);
    snprintf(nqarg, sizeof(nqarg), "--num-queues=%u", nq);
    if (ram) {
        w.pre_len = 0; /* the host cannot fill a RAM disk */
        snprintf(diskarg, sizeof(diskarg), "--ram=%llu", DISK_BYTES);
    } else {
        int fd = open(disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t)DISK_BYTES), 0);
        close(fd);
        tg_prefill_disk(disk, &w);
        snprintf(diskarg, sizeof(diskarg), "--file=%s", disk);
    }
    assert_int_equal(tg_build_initramfs(initrd, moddir, &w), 0);

    char sockarg[640];
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", sock);
    char *argv[] = {(char *)backend_bin, sockarg, diskarg, nqarg, NULL};
    tu_spawn_wait_file(&be, argv, belog, sock);

    assert_int_equal(tg_vm_start(&vm, vmlinuz, initrd, sock, nq, cpus, qlog), 0);
    st = tg_vm_wait(&vm, TG_DEADLINE_MS);
    fprintf(stderr, "guest (%s, %u queue(s), %u cpu(s)) ran %ld ms\n", ram ? "ram" : "file", nq,
            cpus, vm.elapsed_ms);
    if (st != 0) {
        tg_dump(qlog);
        tu_dump_log(&be);
    }
    assert_int_equal(st, 0);
    tg_assert_blk_results(qlog, &w, nq, cpus, DISK_BYTES / 512);
    /* QEMU is gone: the back-end must still be serving, and stop cleanly. */
    tu_stop_clean(&be, sock);
    if (!ram)
        tg_assert_disk(disk, &w);
    tu_rmtree(dir);
}

static void test_ref_file_1q(void **state)
{
    (void)state;
    tg_maybe_skip("1q");
    run_ref(false, 1, 1);
}

static void test_ref_ram_2q(void **state)
{
    (void)state;
    tg_maybe_skip("2q");
    run_ref(true, 2, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_file_1q),
        cmocka_unit_test(test_ref_ram_2q),
    };

    backend_bin = tu_built_exe("VUF_BACKEND_BLK");
    if (!backend_bin || !tg_find_kernel(vmlinuz, sizeof(vmlinuz), moddir, sizeof(moddir)))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
