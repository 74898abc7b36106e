/* SPDX-License-Identifier: MIT */
/*
 * A real Linux guest for the integration tests: QEMU 7.2 with TCG (there is
 * no usable /dev/kvm here) boots Debian's cloud kernel with a tiny busybox
 * initramfs built at test time. The guest's own virtio-blk driver then
 * drives a vhost-user-blk disk, so a front-end and a driver that are not
 * ours exercise whatever sits on the socket (a back-end, or `vuf relay`).
 *
 * The guest's /init runs a scripted block workload (tg_blk_workload) and
 * reports on the serial console, one fact per line:
 *     VUF-RESULT key=value
 * then powers off. The serial console goes to the QEMU process's log file;
 * tg_result() reads the facts back.
 *
 * Everything comes from packages scripts/setup.sh installs
 * (qemu-system-x86, busybox-static, linux-image-cloud-amd64): a missing
 * one is a test failure, never a skip (tg_find_* print "MISSING: ...").
 * No cpio program is needed: the initramfs (newc) is written here.
 *
 * QEMU always runs under a deadline: a back-end that fails leaves the guest
 * hung rather than QEMU exiting (real-backends.md section 5). It is spawned
 * with tu_spawn(), so tu_reap_all() kills it if the test dies first.
 */
#ifndef VUF_TEST_GUEST_H
#define VUF_TEST_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "testutil.h"

#define TG_QEMU "/usr/bin/qemu-system-x86_64"
#define TG_BUSYBOX "/bin/busybox"
/* Most a guest run may take (boot ~3 s, workload, power-off) before QEMU is
 * killed; measured 4-6 s on the 2-core machines. */
#define TG_DEADLINE_MS 60000
/* Block unit of the workload (dd bs). */
#define TG_BLOCK 4096u

/*
 * The newest Debian cloud kernel under /boot and its module directory.
 * Returns true, or false after printing "MISSING: ..." (the caller fails).
 */
bool tg_find_kernel(char *vmlinuz, size_t vcap, char *moddir, size_t mcap);

/* What the guest does with /dev/vda. Offsets and lengths are multiples of
 * TG_BLOCK. */
struct tg_blk_workload {
    /* Region the host filled with tg_pattern(pre_seed) before boot; the
     * guest reads it (O_DIRECT) and compares. pre_len 0: skipped. */
    uint64_t pre_off, pre_len;
    uint32_t pre_seed;
    /* Region the guest writes with tg_pattern(write_seed) (O_DIRECT), in
     * `writers` concurrent parts, part i pinned to CPU i % cpus, then
     * reads back and compares. */
    uint64_t write_off, write_len;
    uint32_t write_seed;
    unsigned writers; /* 0 = 1 */
    /* marker_len != 0: instead, write the region over and over, TG_CHUNK
     * at a time, reading each pass back, until the block at marker_off
     * starts with "VUF-GO" (tg_write_marker). write_len is a multiple of
     * TG_CHUNK. */
    uint64_t marker_off, marker_len;
    /* marker_len 0 and passes != 0: the same, for this many passes (a RAM
     * disk, which the host cannot write a marker to). */
    unsigned passes;
};

/* Writes of the streaming workload, and its progress unit. */
#define TG_CHUNK (1u << 20)

/* Tell a streaming guest to finish: "VUF-GO" at w->marker_off of the disk
 * file. */
void tg_write_marker(const char *disk, const struct tg_blk_workload *w);

/* Deterministic bytes: block k of the pattern starts with "vuf seed S blk
 * K\n", then bytes that depend on seed, k and position. */
void tg_pattern(uint8_t *buf, uint64_t len, uint32_t seed);

/*
 * Build the initramfs at `path`: busybox, the virtio modules from `moddir`,
 * the workload's pattern files and an /init that runs it. Returns 0 or a
 * negative errno.
 */
int tg_build_initramfs(const char *path, const char *moddir, const struct tg_blk_workload *w);

/* One QEMU guest. */
struct tg_vm {
    struct tu_proc proc; /* QEMU; log_path = serial console + QEMU's stderr */
    int64_t start_ms;
    long elapsed_ms; /* start to exit, set by tg_vm_wait */
};

/*
 * Start QEMU (q35, TCG, shared memfd memory, `cpus` vCPUs) with a
 * vhost-user-blk-pci disk of `num_queues` queues on the unix socket `sock`
 * (which must already be listening), booting `vmlinuz` + `initrd`. Output to
 * `log`. Returns 0 or a negative errno.
 */
int tg_vm_start(struct tg_vm *vm, const char *vmlinuz, const char *initrd, const char *sock,
                unsigned num_queues, unsigned cpus, const char *log);

/*
 * Wait up to deadline_ms for QEMU to exit. Returns its exit status (0 after
 * the guest's poweroff), or -ETIMEDOUT after killing it (always reaped).
 */
int tg_vm_wait(struct tg_vm *vm, int deadline_ms);

/*
 * The value of the last "VUF-RESULT key=value" line for `key` in the log
 * at `log`, copied into val (NUL-terminated). Returns true if found.
 */
bool tg_result(const char *log, const char *key, char *val, size_t cap);

/*
 * cmocka assertions on a finished run of `w` (the log is printed first
 * when one fails): booted, modules loaded, /dev/vda of `sectors` 512-byte
 * sectors with `nq` hardware queues and `cpus` CPUs, pre-read (if any),
 * writes and read-back all "ok", no I/O error in the kernel log, and, when
 * the writers can reach every queue (writers >= nq, cpus >= nq), requests
 * dispatched on each of the nq queues (debugfs hctxN/run).
 */
void tg_assert_blk_results(const char *log, const struct tg_blk_workload *w, unsigned nq,
                           unsigned cpus, uint64_t sectors);

/* Fill [w->pre_off, +pre_len) of the disk file with the pre-read pattern. */
void tg_prefill_disk(const char *disk, const struct tg_blk_workload *w);

/* cmocka assertion: the disk file holds the written pattern at
 * w->write_off and the pre-read pattern at w->pre_off (the host's view of
 * what the guest wrote). */
void tg_assert_disk(const char *disk, const struct tg_blk_workload *w);

/*
 * Whether a case tagged `tag` ("1q", "2q", "restart", ...) runs: all do unless
 * VUF_GUEST_CASES names the ones to run (the sanitizer build sets "2q" or
 * "none",
 * tests/meson.build). A case that does not run calls skip() (counted as
 * skipped, never as passed).
 */
void tg_maybe_skip(const char *tag);

/* Print the log's VUF-RESULT lines and its last lines (diagnosis). */
void tg_dump(const char *log);

#endif
