/* SPDX-License-Identifier: MIT */
/*
 * `vuf relay` between QEMU 7.2 (a Linux guest, tests/guest/guest.h) and
 * qemu-storage-daemon: the guest's virtio-blk driver drives rings that
 * libvuf's front-end device set up on the back-end, through memory the
 * relay imported from QEMU's fds. The guest reads what the host put on the
 * disk, writes a pattern and reads it back; the host checks the file.
 *
 * The relay's trace is checked too: it shows the relay's own activation of
 * the back-end (memory table, ring addresses, kick and call fds for every
 * queue), it decodes every message QEMU sent (no UNKNOWN), and the --json
 * form is one parseable object per line ending in the summary.
 *
 * Also: a live back-end restart (qsd SIGKILLed mid-stream and started
 * again), a live replacement (DEVICE_STATE, between two reference
 * back-ends), and, without a guest, our own front-end (`vuf blk`) through
 * the relay, and the command line.
 * Missing QEMU, busybox, the kernel or qemu-storage-daemon is a failure.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <json-c/json.h>
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
static const char *vuf_bin, *backend_bin;

struct run {
    char *dir;
    char disk[600], be_sock[600], vmm_sock[600], trace[600], relay_log[600], qlog[600];
    struct tg_blk_workload w;
};

static void run_relay(struct run *rn, unsigned nq, unsigned cpus, bool json)
{
    char initrd[600], qsdlog[600], cmd[4096];
    struct tu_proc qsd = {0}, relay = {0};
    struct tg_vm vm = {0};
    int fd, st;

    rn->dir = tu_mkdtemp("vuf-guest-relay");
    rn->w = (struct tg_blk_workload){
        .pre_off = 2u << 20,
        .pre_len = 256u << 10,
        .pre_seed = 3,
        .write_off = 16u << 20,
        .write_len = 1u << 20,
        .write_seed = 5,
        .writers = cpus,
    };
    snprintf(rn->disk, sizeof(rn->disk), "%s/disk.img", rn->dir);
    snprintf(rn->be_sock, sizeof(rn->be_sock), "%s/qsd.sock", rn->dir);
    snprintf(rn->vmm_sock, sizeof(rn->vmm_sock), "%s/relay.sock", rn->dir);
    snprintf(rn->trace, sizeof(rn->trace), "%s/trace.out", rn->dir);
    snprintf(rn->relay_log, sizeof(rn->relay_log), "%s/relay.log", rn->dir);
    snprintf(rn->qlog, sizeof(rn->qlog), "%s/guest.log", rn->dir);
    snprintf(initrd, sizeof(initrd), "%s/initrd", rn->dir);
    snprintf(qsdlog, sizeof(qsdlog), "%s/qsd.log", rn->dir);

    fd = open(rn->disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)DISK_BYTES), 0);
    close(fd);
    tg_prefill_disk(rn->disk, &rn->w);
    assert_int_equal(tg_build_initramfs(initrd, moddir, &rn->w), 0);

    tu_start_qsd_file(&qsd, rn->disk, nq, rn->be_sock, qsdlog);
    /* The trace (stdout) to its own file; stderr to the log. */
    snprintf(cmd, sizeof(cmd), "exec '%s' relay --listen '%s' --connect '%s' %s > '%s'", vuf_bin,
             rn->vmm_sock, rn->be_sock, json ? "--json" : "--trace", rn->trace);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    assert_int_equal(tu_spawn(&relay, argv, rn->relay_log), 0);
    if (tu_wait_socket_file(&relay, rn->vmm_sock, TU_START_MS) != 0) {
        tu_dump_log(&relay);
        fail_msg("vuf relay did not listen on %s", rn->vmm_sock);
    }

    assert_int_equal(tg_vm_start(&vm, vmlinuz, initrd, rn->vmm_sock, nq, cpus, rn->qlog), 0);
    st = tg_vm_wait(&vm, TG_DEADLINE_MS);
    fprintf(stderr, "guest via relay (%u queue(s), %u cpu(s)) ran %ld ms\n", nq, cpus,
            vm.elapsed_ms);
    if (st != 0) {
        tg_dump(rn->qlog);
        tu_dump_log(&relay);
        tu_dump_log(&qsd);
    }
    assert_int_equal(st, 0);
    tg_assert_blk_results(rn->qlog, &rn->w, nq, cpus, DISK_BYTES / 512);
    /* QEMU gone: the relay ends by itself, status 0, back-end left idle. */
    tu_assert_exits_zero(&relay, 5000);
    tu_stop_clean(&qsd, rn->be_sock);
    tg_assert_disk(rn->disk, &rn->w);
}

static void done(struct run *rn)
{
    /* A sanitizer build's report need not change the exit status. */
    if (tu_log_has(rn->relay_log, "runtime error") || tu_log_has(rn->relay_log, "Sanitizer")) {
        tg_dump(rn->relay_log);
        fail_msg("sanitizer report in %s", rn->relay_log);
    }
    tu_rmtree(rn->dir);
}

/* A text trace line "T side dir NAME ..." with these words in it. */
static bool trace_has(const char *path, const char *side, const char *dir, const char *name,
                      const char *also)
{
    FILE *f = fopen(path, "re");
    char line[4096], s[32], d[8], n[64];
    double t;
    bool found = false;

    assert_non_null(f);
    while (!found && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%lf %31s %7s %63s", &t, s, d, n) != 4)
            continue;
        found = strcmp(s, side) == 0 && strcmp(d, dir) == 0 && strcmp(n, name) == 0 &&
                (!also || strstr(line, also));
    }
    fclose(f);
    return found;
}

/* Objects of the JSON trace matching side/msg (and, if index >= 0,
 * fields.index) with at least `fds` fds. */
static int json_count(json_object **objs, int n, const char *side, const char *dir, const char *msg,
                      int index, int fds)
{
    int c = 0;

    for (int i = 0; i < n; i++) {
        json_object *v, *f;

        if (!json_object_object_get_ex(objs[i], "side", &v) ||
            strcmp(json_object_get_string(v), side) != 0)
            continue;
        if (!json_object_object_get_ex(objs[i], "msg", &v) ||
            strcmp(json_object_get_string(v), msg) != 0)
            continue;
        if (!json_object_object_get_ex(objs[i], "dir", &v) ||
            strcmp(json_object_get_string(v), dir) != 0)
            continue;
        if (index >= 0 &&
            (!json_object_object_get_ex(objs[i], "fields", &f) ||
             !json_object_object_get_ex(f, "index", &v) || json_object_get_int(v) != index))
            continue;
        if (!json_object_object_get_ex(objs[i], "fds", &v) || json_object_get_int(v) < fds)
            continue;
        c++;
    }
    return c;
}

static void test_relay_qsd_2q_json(void **state)
{
    struct run rn;
    json_object *objs[4096], *v, *sum;
    char line[16384];
    int n = 0;
    bool activated = false;
    FILE *f;

    (void)state;
    tg_maybe_skip("2q");
    run_relay(&rn, 2, 2, true);
    f = fopen(rn.trace, "re");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        json_object *o = json_tokener_parse(line);

        if (!o)
            fail_msg("trace line %d is not JSON: %s", n + 1, line);
        assert_true(n < 4096);
        objs[n++] = o;
    }
    fclose(f);
    assert_true(n > 40);
    for (int i = 0; i < n; i++)
        if (json_object_object_get_ex(objs[i], "event", &v) &&
            strcmp(json_object_get_string(v), "activate") == 0 &&
            json_object_object_get_ex(objs[i], "detail", &v) &&
            strstr(json_object_get_string(v), "2 of 2 queue"))
            activated = true;
    assert_true(activated);
    for (int q = 0; q < 2; q++) {
        assert_true(json_count(objs, n, "vmm", "request", "SET_VRING_KICK", q, 1) >= 1);
        assert_true(json_count(objs, n, "backend", "request", "SET_VRING_ADDR", q, 0) >= 1);
        assert_true(json_count(objs, n, "backend", "request", "SET_VRING_KICK", q, 1) >= 1);
        assert_true(json_count(objs, n, "backend", "request", "SET_VRING_CALL", q, 1) >= 1);
        assert_true(json_count(objs, n, "backend", "request", "GET_VRING_BASE", q, 0) >= 1);
    }
    assert_true(json_count(objs, n, "backend", "request", "SET_MEM_TABLE", -1, 1) >= 1);
    assert_int_equal(json_count(objs, n, "vmm", "request", "UNKNOWN", -1, 0), 0);
    /* The last object is the summary, with every request QEMU sent known. */
    assert_true(json_object_object_get_ex(objs[n - 1], "summary", &sum));
    assert_true(json_object_object_get_ex(sum, "vmm", &v));
    assert_true(json_object_object_get_ex(v, "unknown", &v));
    assert_int_equal(json_object_get_int(v), 0);
    assert_true(json_object_object_get_ex(sum, "backend", &v));
    assert_true(json_object_object_get_ex(v, "SET_VRING_KICK", &v));
    for (int i = 0; i < n; i++)
        json_object_put(objs[i]);
    done(&rn);
}

static long progress(const char *log)
{
    char v[32];

    return tg_result(log, "progress", v, sizeof(v)) ? strtol(v, NULL, 10) : 0;
}

/* Wait (polling the serial log) until the guest reported `want` chunks. */
static void wait_progress(struct tg_vm *vm, const char *log, long want)
{
    int64_t end = tu_now_ms() + TG_DEADLINE_MS;

    while (progress(log) < want) {
        if (tu_now_ms() > end || vm->proc.pid <= 0 || kill(vm->proc.pid, 0) != 0) {
            tg_dump(log);
            fail_msg("guest progress stayed below %ld", want);
        }
        tu_sleep_ms(10); /* polling the condition */
    }
}

/*
 * Live back-end restart: qemu-storage-daemon is SIGKILLed while the guest
 * streams writes; a new one is started on the same socket and file. The
 * relay keeps QEMU's connection, takes the rings back, reconnects and
 * restarts them; the guest goes on writing, every pass reads back equal,
 * no I/O error reaches its kernel log, and the file is complete. This is
 * also the 1-queue relay case whose text trace (--trace) is checked.
 */
/* The back-end of the restart cases: qemu-storage-daemon, or the reference
 * back-end (which offers INFLIGHT_SHMFD) on the same file. */
static void start_restart_backend(struct tu_proc *p, bool ref, const struct run *rn,
                                  const char *log)
{
    char sockarg[640], filearg[640];
    char *argv[] = {(char *)backend_bin, sockarg, filearg, "--num-queues=1", NULL};

    if (!ref) {
        tu_start_qsd_file(p, rn->disk, 1, rn->be_sock, log);
        return;
    }
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", rn->be_sock);
    snprintf(filearg, sizeof(filearg), "--file=%s", rn->disk);
    tu_spawn_wait_file(p, argv, log, rn->be_sock);
}

static void run_restart(bool ref)
{
    struct run rn;
    char initrd[600], qsdlog[600], qsdlog2[600], cmd[4096];
    struct tu_proc qsd = {0}, relay = {0};
    struct tg_vm vm = {0};
    long at_kill;
    int fd, st;

    rn.dir = tu_mkdtemp("vuf-guest-restart");
    rn.w = (struct tg_blk_workload){
        .write_off = 4u << 20,
        .write_len = 8u << 20,
        .write_seed = 9,
        .marker_off = 1u << 20,
        .marker_len = TG_BLOCK,
    };
    snprintf(rn.disk, sizeof(rn.disk), "%s/disk.img", rn.dir);
    snprintf(rn.be_sock, sizeof(rn.be_sock), "%s/qsd.sock", rn.dir);
    snprintf(rn.vmm_sock, sizeof(rn.vmm_sock), "%s/relay.sock", rn.dir);
    snprintf(rn.trace, sizeof(rn.trace), "%s/trace.out", rn.dir);
    snprintf(rn.relay_log, sizeof(rn.relay_log), "%s/relay.log", rn.dir);
    snprintf(rn.qlog, sizeof(rn.qlog), "%s/guest.log", rn.dir);
    snprintf(initrd, sizeof(initrd), "%s/initrd", rn.dir);
    snprintf(qsdlog, sizeof(qsdlog), "%s/qsd.log", rn.dir);
    snprintf(qsdlog2, sizeof(qsdlog2), "%s/qsd2.log", rn.dir);
    fd = open(rn.disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)DISK_BYTES), 0);
    close(fd);
    assert_int_equal(tg_build_initramfs(initrd, moddir, &rn.w), 0);

    start_restart_backend(&qsd, ref, &rn, qsdlog);
    snprintf(cmd, sizeof(cmd), "exec '%s' relay --listen '%s' --connect '%s' --trace > '%s'",
             vuf_bin, rn.vmm_sock, rn.be_sock, rn.trace);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    assert_int_equal(tu_spawn(&relay, argv, rn.relay_log), 0);
    if (tu_wait_socket_file(&relay, rn.vmm_sock, TU_START_MS) != 0) {
        tu_dump_log(&relay);
        fail_msg("vuf relay did not listen on %s", rn.vmm_sock);
    }
    assert_int_equal(tg_vm_start(&vm, vmlinuz, initrd, rn.vmm_sock, 1, 1, rn.qlog), 0);

    /* Mid-stream: a few chunks written, more coming. */
    wait_progress(&vm, rn.qlog, 3);
    kill(qsd.pid, SIGKILL);
    tu_stop(&qsd);
    at_kill = progress(rn.qlog);
    start_restart_backend(&qsd, ref, &rn, qsdlog2);
    /* Writes through the new back-end, then let the guest finish its pass. */
    wait_progress(&vm, rn.qlog, at_kill + 4);
    tg_write_marker(rn.disk, &rn.w);
    st = tg_vm_wait(&vm, TG_DEADLINE_MS);
    fprintf(stderr, "guest with a %s restart ran %ld ms (killed at chunk %ld of %ld)\n",
            ref ? "reference back-end" : "qsd", vm.elapsed_ms, at_kill, progress(rn.qlog));
    if (st != 0) {
        tg_dump(rn.qlog);
        tu_dump_log(&relay);
    }
    assert_int_equal(st, 0);
    tg_assert_blk_results(rn.qlog, &rn.w, 1, 1, DISK_BYTES / 512);
    assert_true(progress(rn.qlog) > at_kill);
    assert_true(trace_has(rn.trace, "relay", "*", "reconnect:", "back-end lost"));
    assert_true(trace_has(rn.trace, "relay", "*", "reconnect:", "back-end is back"));
    assert_true(trace_has(rn.trace, "relay", "*", "activate:", "1 of 1 queue"));
    if (!ref) {
        /* The text trace: what QEMU sent, decoded, and the relay's own
         * activation of the back-end. */
        assert_true(trace_has(rn.trace, "vmm", ">", "GET_FEATURES", NULL));
        assert_true(trace_has(rn.trace, "vmm", "<", "GET_FEATURES", "features_names=["));
        assert_true(trace_has(rn.trace, "vmm", ">", "SET_MEM_TABLE", "regions=["));
        assert_true(trace_has(rn.trace, "vmm", ">", "SET_VRING_ADDR", "index=0"));
        assert_true(trace_has(rn.trace, "vmm", ">", "SET_VRING_KICK", "fds=1"));
        assert_true(trace_has(rn.trace, "vmm", ">", "GET_VRING_BASE", "index=0"));
        assert_true(trace_has(rn.trace, "vmm", "<", "GET_VRING_BASE", "base="));
        assert_false(trace_has(rn.trace, "vmm", ">", "UNKNOWN", NULL));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_MEM_TABLE", "fds="));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_VRING_ADDR", "index=0"));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_VRING_KICK", "fds=1"));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_VRING_CALL", "fds=1"));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_VRING_ENABLE", "enable=1"));
        assert_true(trace_has(rn.trace, "backend", "<", "GET_VRING_BASE", "us)"));
        assert_true(tu_log_has(rn.trace, "summary vmm:"));
        assert_true(tu_log_has(rn.trace, "summary backend:"));
    } else {
        /* The area the dead back-end kept goes to the new one. */
        assert_true(trace_has(rn.trace, "relay", "*", "reconnect:", "inflight area kept"));
        assert_true(trace_has(rn.trace, "backend", ">", "SET_INFLIGHT_FD", "fds=1"));
    }
    tu_assert_exits_zero(&relay, 5000);
    tu_stop_clean(&qsd, rn.be_sock);
    tg_assert_disk(rn.disk, &rn.w);
    done(&rn);
}

static void test_relay_qsd_restart(void **state)
{
    (void)state;
    tg_maybe_skip("restart");
    run_restart(false);
}

/* The same with the reference back-end: its requests in flight at the
 * crash come back through the inflight area (INFLIGHT_SHMFD). */
static void test_relay_ref_restart_inflight(void **state)
{
    (void)state;
    tg_maybe_skip("inflight");
    run_restart(true);
}

/*
 * Live back-end replacement: two reference back-ends with RAM disks whose
 * content travels with DEVICE_STATE (--state-includes-ram). While the guest
 * streams writes to the first, `replace` on the relay's control socket
 * sleeps the device, moves its state to the second process, and starts the
 * rings there. The guest's read-back of the pass that spans the move (and
 * of every later pass) comes from the second process: the blocks written
 * into the first one's RAM moved with it.
 */
static void test_relay_ref_replace(void **state)
{
    struct run rn;
    char initrd[600], loga[600], logb[600], socka[600], sockb[600], ctl[600], cmd[4096], ans[256],
        req[700], sa[640], sb[640];
    struct tu_proc a = {0}, b = {0}, relay = {0};
    struct tg_vm vm = {0};
    long at_replace;
    int cfd = -1, st;

    (void)state;
    tg_maybe_skip("replace");
    rn.dir = tu_mkdtemp("vuf-guest-replace");
    rn.w = (struct tg_blk_workload){
        .write_off = 4u << 20,
        .write_len = 4u << 20,
        .write_seed = 13,
        .passes = 3,
    };
    snprintf(socka, sizeof(socka), "%s/a.sock", rn.dir);
    snprintf(sockb, sizeof(sockb), "%s/b.sock", rn.dir);
    snprintf(loga, sizeof(loga), "%s/a.log", rn.dir);
    snprintf(logb, sizeof(logb), "%s/b.log", rn.dir);
    snprintf(ctl, sizeof(ctl), "%s/relay.ctl", rn.dir);
    snprintf(rn.vmm_sock, sizeof(rn.vmm_sock), "%s/relay.sock", rn.dir);
    snprintf(rn.trace, sizeof(rn.trace), "%s/trace.out", rn.dir);
    snprintf(rn.relay_log, sizeof(rn.relay_log), "%s/relay.log", rn.dir);
    snprintf(rn.qlog, sizeof(rn.qlog), "%s/guest.log", rn.dir);
    snprintf(initrd, sizeof(initrd), "%s/initrd", rn.dir);
    assert_int_equal(tg_build_initramfs(initrd, moddir, &rn.w), 0);

    snprintf(sa, sizeof(sa), "--socket-path=%s", socka);
    snprintf(sb, sizeof(sb), "--socket-path=%s", sockb);
    char *argva[] = {(char *)backend_bin,    sa,  "--ram=16M", "--num-queues=1",
                     "--state-includes-ram", NULL};
    char *argvb[] = {(char *)backend_bin,    sb,  "--ram=16M", "--num-queues=1",
                     "--state-includes-ram", NULL};
    tu_spawn_wait_file(&a, argva, loga, socka);
    tu_spawn_wait_file(&b, argvb, logb, sockb);
    snprintf(cmd, sizeof(cmd),
             "exec '%s' relay --listen '%s' --connect '%s' --control '%s' --trace > '%s'", vuf_bin,
             rn.vmm_sock, socka, ctl, rn.trace);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    assert_int_equal(tu_spawn(&relay, argv, rn.relay_log), 0);
    if (tu_wait_socket_file(&relay, rn.vmm_sock, TU_START_MS) != 0) {
        tu_dump_log(&relay);
        fail_msg("vuf relay did not listen on %s", rn.vmm_sock);
    }
    assert_int_equal(tg_vm_start(&vm, vmlinuz, initrd, rn.vmm_sock, 1, 1, rn.qlog), 0);

    wait_progress(&vm, rn.qlog, 2);
    snprintf(req, sizeof(req), "replace %s", sockb);
    tu_ctl_command(&cfd, ctl, req, ans, sizeof(ans), 10000);
    close(cfd);
    at_replace = progress(rn.qlog);
    if (strcmp(ans, "ok") != 0) {
        tu_dump_log(&relay);
        fail_msg("replace answered '%s'", ans);
    }
    st = tg_vm_wait(&vm, TG_DEADLINE_MS);
    fprintf(stderr, "guest with a back-end replacement ran %ld ms (moved at chunk %ld of %ld)\n",
            vm.elapsed_ms, at_replace, progress(rn.qlog));
    if (st != 0) {
        tg_dump(rn.qlog);
        tu_dump_log(&relay);
    }
    assert_int_equal(st, 0);
    tg_assert_blk_results(rn.qlog, &rn.w, 1, 1, (16u << 20) / 512);
    assert_int_equal(progress(rn.qlog), 3 * 4);
    assert_true(at_replace < 3 * 4);
    assert_true(trace_has(rn.trace, "relay", "*", "replace:", "bytes of device state saved"));
    assert_true(trace_has(rn.trace, "relay", "*", "replace:", "state loaded into"));
    assert_true(trace_has(rn.trace, "backend", ">", "SET_DEVICE_STATE_FD", "direction=0"));
    /* Loaded into the new back-end before the switch: its own trace side. */
    assert_true(trace_has(rn.trace, "next", ">", "SET_DEVICE_STATE_FD", "direction=1"));
    tu_assert_exits_zero(&relay, 5000);
    /* The first process lost its front-end and ends cleanly when told. */
    tu_stop_clean(&a, socka);
    tu_stop_clean(&b, sockb);
    done(&rn);
}

/* Start `vuf relay --trace` between `vmm_sock` and `be_sock`. */
static void start_relay(struct tu_proc *relay, const char *vmm_sock, const char *be_sock,
                        const char *trace, const char *log)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd), "exec '%s' relay --listen '%s' --connect '%s' --trace > '%s'",
             vuf_bin, vmm_sock, be_sock, trace);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    assert_int_equal(tu_spawn(relay, argv, log), 0);
    if (tu_wait_socket_file(relay, vmm_sock, TU_START_MS) != 0) {
        tu_dump_log(relay);
        fail_msg("vuf relay did not listen on %s", vmm_sock);
    }
}

/*
 * No guest: our own front-end (`vuf blk`, 2 queues) through the relay to
 * qemu-storage-daemon, once to write a pattern and once (a second relay
 * run) to verify it; the host checks the file too. Fast, so it runs in
 * every build.
 */
static void test_relay_vuf_blk(void **state)
{
    static struct tu_run r;
    char *dir = tu_mkdtemp("vuf-relay-blk");
    char disk[600], be[600], vmm[600], trace[600], log[600], qsdlog[600];
    struct tu_proc qsd = {0}, relay = {0};
    uint8_t buf[4096];
    int fd;

    (void)state;
    snprintf(disk, sizeof(disk), "%s/disk.img", dir);
    snprintf(be, sizeof(be), "%s/qsd.sock", dir);
    snprintf(vmm, sizeof(vmm), "%s/relay.sock", dir);
    snprintf(trace, sizeof(trace), "%s/trace.out", dir);
    snprintf(log, sizeof(log), "%s/relay.log", dir);
    snprintf(qsdlog, sizeof(qsdlog), "%s/qsd.log", dir);
    fd = open(disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)DISK_BYTES), 0);
    tu_start_qsd_file(&qsd, disk, 2, be, qsdlog);

    for (int pass = 0; pass < 2; pass++) {
        start_relay(&relay, vmm, be, trace, log);
        tu_run_capture(&r, vuf_bin,
                       (const char *[]){"blk", vmm, pass ? "verify" : "write", "--offset", "1M",
                                        "--len", "256K", "--pattern", "7", "--queues", "2", NULL},
                       30000);
        if (tu_exit_code(&r) != 0)
            tu_dump_log(&relay);
        assert_int_equal(tu_exit_code(&r), 0);
        tu_assert_exits_zero(&relay, 5000);
        assert_true(trace_has(trace, "relay", "*", "activate:", "2 of 2 queue"));
        assert_true(trace_has(trace, "backend", "<", "GET_VRING_BASE", "index=1"));
        assert_false(tu_log_has(log, "Sanitizer") || tu_log_has(log, "runtime error"));
    }
    /* The host's view: `vuf blk`'s pattern (its --help): byte X is byte
     * X%8 (little-endian) of splitmix64(seed * 0x9e3779b97f4a7c15 + X/8). */
    for (uint64_t off = 1u << 20; off < (1u << 20) + (256u << 10); off += sizeof(buf)) {
        assert_int_equal(pread(fd, buf, sizeof(buf), (off_t)off), (ssize_t)sizeof(buf));
        for (size_t i = 0; i < sizeof(buf); i++) {
            uint64_t x = off + i, z = 7 * 0x9e3779b97f4a7c15ull + x / 8;

            z += 0x9e3779b97f4a7c15ull;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            z ^= z >> 31;
            if (buf[i] != (uint8_t)(z >> (8 * (x % 8))))
                fail_msg("disk byte %llu differs", (unsigned long long)x);
        }
    }
    close(fd);
    tu_stop_clean(&qsd, be);
    tu_rmtree(dir);
}

/* Usage errors are exit status 2 with the usage on stderr; --help is 0. */
static void test_relay_cli(void **state)
{
    static struct tu_run r;

    (void)state;
    tu_run_capture(&r, vuf_bin, (const char *[]){"relay", "--help", NULL}, 5000);
    assert_int_equal(tu_exit_code(&r), 0);
    assert_non_null(strstr(r.out, "usage: vuf relay --listen SOCK_FOR_VMM --connect BACKEND_SOCK"));
    tu_run_capture(&r, vuf_bin, (const char *[]){"relay", "--listen", "/tmp/x", NULL}, 5000);
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "usage: vuf relay"));
    tu_run_capture(&r, vuf_bin,
                   (const char *[]){"relay", "--listen", "/tmp/x", "--connect", "/tmp/y",
                                    "--device-type", "frob", NULL},
                   5000);
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "unknown device type 'frob'"));
    tu_run_capture(&r, vuf_bin, (const char *[]){"--help", NULL}, 5000);
    assert_non_null(strstr(r.out, "relay"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relay_cli),
        cmocka_unit_test(test_relay_vuf_blk),
        cmocka_unit_test(test_relay_qsd_2q_json),
        cmocka_unit_test(test_relay_qsd_restart),
        cmocka_unit_test(test_relay_ref_restart_inflight),
        cmocka_unit_test(test_relay_ref_replace),
    };

    vuf_bin = tu_built_exe("VUF_TOOL");
    backend_bin = tu_built_exe("VUF_BACKEND_BLK");
    if (!vuf_bin || !backend_bin || !tu_backend_installed(TU_QSD, "qemu-system-common") ||
        !tg_find_kernel(vmlinuz, sizeof(vmlinuz), moddir, sizeof(moddir)))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
