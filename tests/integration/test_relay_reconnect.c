/* SPDX-License-Identifier: MIT */
/*
 * `vuf relay` through back-end outages and replacements (issue 14,
 * section 5), with the VMM played by hand (tests/lib/relay_vmm.h) and the
 * reference back-end behind the relay:
 *
 * - a back-end killed and restarted later: a write submitted while it is
 *   down completes once it is back, data intact, however long it took
 *   (no --reconnect-ms, and --reconnect-ms 0, which now both mean "while
 *   the VMM is connected"); each retry is a warning without the word
 *   "error" and the return is one line with the downtime, without --trace;
 * - --reconnect-ms N still gives up: exit status 1 after N ms;
 * - `replace` to a socket that does not exist, or that accepts and never
 *   answers, fails fast while the guest's writes go on completing, and the
 *   rings are never stopped (no sleep event, no GET_VRING_BASE on the
 *   back-end side); a real replacement afterwards still works;
 * - --max-state-bytes: a state larger than the limit is refused (the old
 *   back-end goes on), and a limit above the old fixed 64 MiB moves a
 *   72 MiB RAM disk.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "relay_vmm.h"
#include "vuf/conn.h"
#include "vuf/wire.h"

#define MEM_BYTES (256u << 10)
#define WLEN 4096u

static void assert_clean_log(const struct rv_env *e)
{
    if (tu_log_has(e->relay_log, "Sanitizer") || tu_log_has(e->relay_log, "runtime error")) {
        tu_dump_log(&e->relay);
        fail_msg("sanitizer report in the relay's log");
    }
}

static void write_ok(struct rv_env *e, struct rv_vmm *v, uint64_t sector, uint32_t seed)
{
    uint8_t want[WLEN];
    int r = rv_wait(v, rv_submit_write(v, sector, WLEN, seed), RV_IO_MS);

    if (r != 0) {
        tu_dump_log(&e->relay);
        fail_msg("write at sector %llu: %s", (unsigned long long)sector, vuf_strerror(r));
    }
    tu_fill_pattern(want, WLEN, seed);
    tu_assert_file_has(e->disk_fd, sector, want, WLEN);
}

/* Lines of `path` containing `needle`. */
static int log_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "re");
    char line[1024];
    int n = 0;

    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/*
 * The back-end is killed with the ring running, a write is submitted while
 * it is down, and it is restarted `outage_ms` later: the write completes on
 * the new process, the relay's stderr has a warning per retry and one line
 * for the return, and no "error".
 */
static void run_outage(const char *const *relay_extra, int outage_ms)
{
    struct rv_env e;
    struct rv_vmm v;
    struct vuf_blk_req *req;
    uint8_t want[WLEN];
    int r;

    rv_env_init(&e, "vuf-relay-outage", NULL);
    rv_start_relay(&e, relay_extra);
    rv_connect(&v, &e, MEM_BYTES);
    rv_start_ring(&v, 16);
    write_ok(&e, &v, 8, 1);
    /* Killed while active (not during the activation, which the reference
     * back-end already serves the first write in). */
    rv_wait_active(&e, 1);
    kill(e.be.pid, SIGKILL);
    tu_stop(&e.be);
    req = rv_submit_write(&v, 16, WLEN, 2);
    tu_sleep_ms(outage_ms); /* the outage itself */
    if (!rv_relay_alive(&e)) {
        tu_dump_log(&e.relay);
        fail_msg("the relay gave up within a %d ms outage", outage_ms);
    }
    assert_int_equal(rv_wait(&v, req, 0), -ETIMEDOUT);
    rv_start_backend(&e, NULL);
    r = rv_wait(&v, req, RV_IO_MS);
    if (r != 0) {
        tu_dump_log(&e.relay);
        fail_msg("the write submitted during the outage: %s", vuf_strerror(r));
    }
    tu_fill_pattern(want, WLEN, 2);
    tu_assert_file_has(e.disk_fd, 16, want, WLEN);
    write_ok(&e, &v, 24, 3);

    /* Each retry a warning, the return one line with the downtime; nothing
     * says "error" for an outage that ended well. */
    if (log_count(e.relay_log, "vuf relay: warning: back-end on") < 3 ||
        log_count(e.relay_log, "is back after") != 1 || log_count(e.relay_log, "error") != 0 ||
        log_count(e.relay_log, "ERROR") != 0) {
        tu_dump_log(&e.relay);
        fail_msg("the relay's log does not tell the outage as it should");
    }
    rv_close(&v);
    r = rv_relay_wait(&e, 5000);
    assert_true(r >= 0 && WIFEXITED(r));
    assert_int_equal(WEXITSTATUS(r), 0);
    assert_clean_log(&e);
    rv_env_fini(&e);
}

static void test_relay_outage_default(void **state)
{
    (void)state;
    run_outage(NULL, 1500);
}

/* 0 says "for ever" (it used to say "give up at once"). */
static void test_relay_outage_zero_is_forever(void **state)
{
    static const char *const extra[] = {"--reconnect-ms", "0", NULL};

    (void)state;
    run_outage(extra, 1200);
}

/* A limit is still a limit: the relay gives up and exits 1. */
static void test_relay_outage_limit(void **state)
{
    static const char *const extra[] = {"--reconnect-ms", "400", NULL};
    struct rv_env e;
    struct rv_vmm v;
    int64_t t0;
    int st;

    (void)state;
    rv_env_init(&e, "vuf-relay-limit", NULL);
    rv_start_relay(&e, extra);
    rv_connect(&v, &e, MEM_BYTES);
    rv_start_ring(&v, 16);
    write_ok(&e, &v, 8, 1);
    rv_wait_active(&e, 1);
    kill(e.be.pid, SIGKILL);
    tu_stop(&e.be);
    t0 = tu_now_ms();
    st = rv_relay_wait(&e, 10000);
    if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 1)) {
        tu_dump_log(&e.relay);
        fail_msg("relay status 0x%x, want exit 1", st);
    }
    assert_true(tu_now_ms() - t0 >= 400);
    assert_int_equal(log_count(e.relay_log, "giving up (--reconnect-ms 400)"), 1);
    assert_true(log_count(e.relay_log, "vuf relay: warning: back-end on") >= 1);
    assert_clean_log(&e);
    rv_close(&v);
    rv_env_fini(&e);
}

/* ---- replace ---------------------------------------------------------------- */

/* Send one control command; the connection, to read the answer from. */
static int ctl_send(const struct rv_env *e, const char *cmd)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char line[700];

    assert_true(fd >= 0);
    assert_true(strlen(e->ctl) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, e->ctl, strlen(e->ctl) + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    snprintf(line, sizeof(line), "%s\n", cmd);
    assert_int_equal(send(fd, line, strlen(line), MSG_NOSIGNAL), (ssize_t)strlen(line));
    return fd;
}

/* The answer line if it is there within wait_ms; false if not yet. */
static bool ctl_answer(int fd, char *ans, size_t cap, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;

    if (poll(&p, 1, wait_ms) != 1)
        return false;
    n = recv(fd, ans, cap - 1, 0);
    assert_true(n > 0);
    ans[n] = '\0';
    ans[strcspn(ans, "\n")] = '\0';
    return true;
}

/*
 * `replace target` while the VMM keeps writing: the answer must start with
 * "error:" and come within limit_ms, and writes must go on completing
 * while the relay works on it (each within 2 s; the old order froze them
 * for the 5 s connect or handshake deadline).
 */
static void replace_fails_running(struct rv_env *e, struct rv_vmm *v, const char *target,
                                  int limit_ms, uint64_t *sector)
{
    char cmd[600], ans[256];
    int64_t t0 = tu_now_ms(), took;
    int fd, during = 0;
    bool answered = false;

    snprintf(cmd, sizeof(cmd), "replace %s", target);
    fd = ctl_send(e, cmd);
    while (!answered && tu_now_ms() - t0 < 10000) {
        struct vuf_blk_req *req = rv_submit_write(v, *sector, WLEN, (uint32_t)*sector);
        int r = rv_wait(v, req, 2000);

        if (r != 0) {
            tu_dump_log(&e->relay);
            fail_msg("a write while replacing with %s: %s (the rings stopped?)", target,
                     vuf_strerror(r));
        }
        *sector += 8;
        answered = ctl_answer(fd, ans, sizeof(ans), 20);
        during += !answered;
    }
    took = tu_now_ms() - t0;
    close(fd);
    assert_true(answered);
    if (strncmp(ans, "error:", 6) != 0 || took > limit_ms) {
        tu_dump_log(&e->relay);
        fail_msg("replace %s answered '%s' after %lld ms (want an error within %d ms)", target, ans,
                 (long long)took, limit_ms);
    }
    fprintf(stderr, "replace %s: '%s' after %lld ms, %d writes meanwhile\n", target, ans,
            (long long)took, during);
}

static void test_relay_replace_unreachable(void **state)
{
    static const char *const extra[] = {"--timeout-ms", "800", NULL};
    struct rv_env e;
    struct rv_vmm v;
    struct tu_proc b = {.pid = -1};
    char missing[500], mute[500], sockb[500], ans[256], cmd[600];
    uint64_t sector = 64;
    int lfd = -1, cfd = -1, st;

    (void)state;
    rv_env_init(&e, "vuf-relay-replace", NULL);
    rv_start_relay(&e, extra);
    rv_connect(&v, &e, MEM_BYTES);
    rv_start_ring(&v, 16);
    write_ok(&e, &v, 8, 1);

    /* Nobody there. */
    snprintf(missing, sizeof(missing), "%s/missing.sock", e.dir);
    replace_fails_running(&e, &v, missing, 1000, &sector);
    /* A socket that accepts (the kernel's backlog) and never answers: the
     * handshake's first reply is awaited for --timeout-ms. */
    snprintf(mute, sizeof(mute), "%s/mute.sock", e.dir);
    assert_int_equal(vuf_conn_listen(mute, &lfd), 0);
    replace_fails_running(&e, &v, mute, 2500, &sector);
    close(lfd);
    /* The rings never stopped: no sleep, no GET_VRING_BASE to the back-end. */
    if (tu_log_has(e.trace, "rings stopped") || tu_log_has(e.trace, "GET_VRING_BASE")) {
        tu_dump_log(&e.relay);
        fail_msg("a failed replace stopped the rings");
    }
    assert_true(tu_log_has(e.trace, "replace: failed before stopping anything"));

    /* A real replacement still works, from the same place. */
    snprintf(sockb, sizeof(sockb), "%s/b.sock", e.dir);
    rv_spawn_backend(&e, &b, sockb, NULL);
    snprintf(cmd, sizeof(cmd), "replace %s", sockb);
    tu_ctl_command(&cfd, e.ctl, cmd, ans, sizeof(ans), 10000);
    close(cfd);
    if (strcmp(ans, "ok") != 0) {
        tu_dump_log(&e.relay);
        fail_msg("replace to a live back-end answered '%s'", ans);
    }
    write_ok(&e, &v, sector, 77);
    /* The new back-end's handshake is traced on its own side until the
     * switch. */
    assert_true(tu_log_has(e.trace, "next    > GET_FEATURES"));
    assert_true(tu_log_has(e.trace, "state loaded into"));
    rv_close(&v);
    st = rv_relay_wait(&e, 5000);
    assert_true(st >= 0 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_clean_log(&e);
    tu_stop_clean(&b, sockb);
    tu_stop_clean(&e.be, e.be_sock);
    rv_env_fini(&e);
}

/* `replace` between two RAM-disk back-ends whose 72 MiB travel in the
 * state: answered `want` ("ok", or an error's start). */
static void replace_ram(const char *limit, const char *want)
{
    static const char *const be_extra[] = {"--ram=72M", "--state-includes-ram", NULL};
    const char *const extra[] = {"--max-state-bytes", limit, NULL};
    struct rv_env e;
    struct rv_vmm v;
    struct tu_proc b = {.pid = -1};
    char sockb[500], ans[256], cmd[600];
    int cfd = -1, st;

    rv_env_init(&e, "vuf-relay-state", be_extra);
    rv_start_relay(&e, extra);
    rv_connect(&v, &e, MEM_BYTES);
    rv_start_ring(&v, 16);
    assert_int_equal(rv_wait(&v, rv_submit_write(&v, 8, WLEN, 1), RV_IO_MS), 0);
    snprintf(sockb, sizeof(sockb), "%s/b.sock", e.dir);
    rv_spawn_backend(&e, &b, sockb, be_extra);
    snprintf(cmd, sizeof(cmd), "replace %s", sockb);
    tu_ctl_command(&cfd, e.ctl, cmd, ans, sizeof(ans), 30000);
    close(cfd);
    if (strncmp(ans, want, strlen(want)) != 0) {
        tu_dump_log(&e.relay);
        fail_msg("replace with --max-state-bytes %s answered '%s', want '%s...'", limit, ans, want);
    }
    /* Either way the device goes on (on the old back-end after a refusal). */
    assert_int_equal(rv_wait(&v, rv_submit_write(&v, 16, WLEN, 2), RV_IO_MS), 0);
    rv_close(&v);
    st = rv_relay_wait(&e, 5000);
    assert_true(st >= 0 && WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_clean_log(&e);
    tu_stop_clean(&b, sockb);
    tu_stop_clean(&e.be, e.be_sock);
    rv_env_fini(&e);
}

static void test_relay_max_state_bytes(void **state)
{
    static struct tu_run r;

    (void)state;
    replace_ram("1M", "error:");
    replace_ram("100M", "ok");
    tu_run_capture(&r, tu_built_exe("VUF_TOOL"), (const char *[]){"relay", "--help", NULL}, 5000);
    assert_int_equal(tu_exit_code(&r), 0);
    assert_non_null(strstr(r.out, "--max-state-bytes N"));
    assert_non_null(strstr(r.out, "'forever'"));
    tu_run_capture(&r, tu_built_exe("VUF_TOOL"),
                   (const char *[]){"relay", "--listen", "/tmp/x", "--connect", "/tmp/y",
                                    "--max-state-bytes", "lots", NULL},
                   5000);
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "--max-state-bytes wants a size"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relay_outage_default),
        cmocka_unit_test(test_relay_outage_zero_is_forever),
        cmocka_unit_test(test_relay_outage_limit),
        cmocka_unit_test(test_relay_replace_unreachable),
        cmocka_unit_test(test_relay_max_state_bytes),
    };

    if (!tu_built_exe("VUF_TOOL") || !tu_built_exe("VUF_BACKEND_BLK"))
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
