/* SPDX-License-Identifier: MIT */
/*
 * `vuf check` against every back-end the tests start: the reference
 * back-end passes every check; qemu-storage-daemon, virtiofsd,
 * vhost-user-gpu and DPDK's vhost PMD get exactly the outcomes
 * docs/conformance.md reports, each FAIL a real deviation (the evidence of
 * each is in that file). --junit output is parsed with python3's XML
 * parser.
 *
 * virtiofsd and vhost-user-gpu serve one connection, so each of their runs
 * gets a fresh process and checks that share that one connection.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "backends.h"
#include "testutil.h"

#define VUGPU "/usr/lib/qemu/vhost-user-gpu"
#define RUN_DEADLINE_MS 40000
#define NCHECKS 33

static const char *tool;
static struct tu_run run_buf;

static int setup(void **state)
{
    return tu_befx_setup(state, "vuf-check-real");
}

/* ---- running vuf check ------------------------------------------------------ */

/* `vuf check SOCK args... --json`: the exit code must be want_exit; returns
 * the parsed object. */
static json_object *check_json(const char *sock, const char *const *args, int want_exit)
{
    const char *argv[24];
    unsigned n = 0;
    json_object *j;

    argv[n++] = "check";
    argv[n++] = sock;
    for (; *args; args++)
        argv[n++] = *args;
    argv[n++] = "--json";
    argv[n] = NULL;
    tu_run_capture(&run_buf, tool, argv, RUN_DEADLINE_MS);
    printf("%s", run_buf.out);
    assert_int_equal(tu_exit_code(&run_buf), want_exit);
    j = json_tokener_parse(run_buf.out);
    assert_non_null(j);
    return j;
}

static json_object *find(json_object *j, const char *id)
{
    json_object *arr;

    assert_true(json_object_object_get_ex(j, "checks", &arr));
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i), *v;

        assert_true(json_object_object_get_ex(c, "id", &v));
        if (strcmp(json_object_get_string(v), id) == 0)
            return c;
    }
    fail_msg("no check %s in the report", id);
    return NULL;
}

static const char *field(json_object *c, const char *key)
{
    json_object *v;

    assert_true(json_object_object_get_ex(c, key, &v));
    return json_object_get_string(v);
}

struct want {
    const char *id;
    const char *status;
};

/* Each listed check has its status; every check not listed is SKIP. */
static void expect(json_object *j, const struct want *w, unsigned n)
{
    json_object *arr;

    assert_true(json_object_object_get_ex(j, "checks", &arr));
    assert_int_equal(json_object_array_length(arr), NCHECKS);
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i);
        const char *id = field(c, "id"), *want = "SKIP";

        for (unsigned k = 0; k < n; k++)
            if (strcmp(w[k].id, id) == 0)
                want = w[k].status;
        if (strcmp(field(c, "status"), want) != 0)
            fail_msg("%s: %s, expected %s; evidence:\n%s", id, field(c, "status"), want,
                     field(c, "evidence"));
    }
}

#define EXPECT(j, ...)                             \
    do {                                           \
        const struct want w_[] = {__VA_ARGS__};    \
        expect(j, w_, sizeof(w_) / sizeof(w_[0])); \
    } while (0)

static void evidence_has(json_object *j, const char *id, const char *needle)
{
    const char *ev = field(find(j, id), "evidence");

    if (!strstr(ev, needle))
        fail_msg("%s: evidence lacks \"%s\":\n%s", id, needle, ev);
}

/* python3's XML parser on FILE: "tests failures errors skipped" of the
 * testcases, counted from the elements, into out. */
static void junit_counts(const char *file, char *out, size_t cap)
{
    static const char prog[] = "import sys, xml.etree.ElementTree as E\n"
                               "r = E.parse(sys.argv[1]).getroot()\n"
                               "assert r.tag == 'testsuites'\n"
                               "cs = r.findall('./testsuite/testcase')\n"
                               "c = lambda t: sum(1 for x in cs if x.find(t) is not None)\n"
                               "print(len(cs), c('failure'), c('error'), c('skipped'))\n";
    const char *py = tu_which("python3");
    const char *argv[] = {"-c", prog, file, NULL};

    assert_non_null(py);
    tu_run_capture(&run_buf, py, argv, 10000);
    assert_int_equal(tu_exit_code(&run_buf), 0);
    assert_true(strlen(run_buf.out) < cap);
    memcpy(out, run_buf.out, strlen(run_buf.out) + 1);
}

/* ---- back-ends -------------------------------------------------------------- */

static void start_ref(struct tu_befx *f)
{
    const char *bin = tu_built_exe("VUF_BACKEND_BLK");
    char sockarg[320];
    char *argv[] = {(char *)bin, sockarg, "--ram=64M", "--num-queues=2", NULL};

    assert_non_null(bin);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", f->sock);
    tu_spawn_wait_file(&f->proc, argv, f->log, f->sock);
}

static void start_qsd(struct tu_befx *f)
{
    FILE *d = fopen(f->disk, "w");

    assert_non_null(d);
    assert_int_equal(ftruncate(fileno(d), 64 << 20), 0);
    fclose(d);
    tu_start_qsd_file(&f->proc, f->disk, 4, f->sock, f->log);
}

/* A one-connection back-end, fresh for each run. */
static void start_one(struct tu_befx *f, bool gpu)
{
    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    unlink(f->sock);
    if (gpu) {
        char sockarg[320];
        char *argv[] = {VUGPU, sockarg, NULL};

        snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", f->sock);
        tu_spawn_wait_file(&f->proc, argv, f->log, f->sock);
    } else {
        char share[320];

        snprintf(share, sizeof(share), "%s/share", f->dir);
        mkdir(share, 0700);
        tu_start_virtiofsd(&f->proc, share, f->sock, f->log);
    }
}

/* ---- tests ------------------------------------------------------------------ */

/* The reference back-end passes all 31 blk checks, --hostile included (the
 * fs and net I/O checks skip); the JUnit file is well-formed XML with one
 * testcase per check. */
static void test_ref_passes_all(void **state)
{
    struct tu_befx *f = *state;
    char junit[320], counts[64];
    const char *args[] = {"check",     f->sock,   "--device-type", "blk",
                          "--hostile", "--junit", junit,           NULL};

    start_ref(f);
    snprintf(junit, sizeof(junit), "%s/ref.xml", f->dir);
    tu_run_capture(&run_buf, tool, args, RUN_DEADLINE_MS);
    printf("%s", run_buf.out);
    assert_int_equal(tu_exit_code(&run_buf), 0);
    assert_non_null(strstr(run_buf.out, "\n31 passed, 0 failed, 2 skipped, 0 errors\n"));
    junit_counts(junit, counts, sizeof(counts));
    assert_string_equal(counts, "33 0 0 2\n");
}

/* qemu-storage-daemon 7.2 (libvhost-user): the offset ignored, disabled
 * rings processed, a queue index out of range crashes it. */
static void test_qsd(void **state)
{
    struct tu_befx *f = *state;
    char junit[320], counts[64];
    json_object *j;

    start_qsd(f);
    j = check_json(f->sock, (const char *[]){"--device-type", "blk", "--timeout-ms", "2000", NULL},
                   1);
    EXPECT(j, {"handshake.reply-header", "PASS"}, {"handshake.set-owner", "PASS"},
           {"handshake.features", "PASS"}, {"handshake.protocol-features", "PASS"},
           {"handshake.unknown-bits", "PASS"}, {"reply-ack.one-ack", "PASS"},
           {"counts.queue-num", "PASS"}, {"counts.max-mem-slots", "PASS"},
           {"counts.mem-table", "PASS"}, {"counts.add-rem-mem-reg", "PASS"},
           {"config.offset", "FAIL"}, {"config.set-writable", "PASS"}, {"ring.start", "FAIL"},
           {"ring.disable", "FAIL"}, {"ring.get-base", "PASS"}, {"ring.restart", "PASS"},
           {"ring.event-idx", "PASS"}, {"io.blk-rw", "PASS"}, {"io.blk-flush", "PASS"},
           {"io.blk-get-id", "PASS"}, {"io.blk-discard", "PASS"}, {"io.blk-write-zeroes", "PASS"},
           {"io.blk-past-end", "PASS"}, {"state.reconnect", "PASS"}, {"reply-ack.reject", "FAIL"});
    evidence_has(j, "config.offset", "the offset was ignored");
    evidence_has(j, "reply-ack.reject", "peer hung up");
    json_object_put(j);

    /* the crash took it down: a fresh one for the JUnit run of one check */
    tu_stop(&f->proc);
    start_qsd(f);
    snprintf(junit, sizeof(junit), "%s/qsd.xml", f->dir);
    tu_run_capture(&run_buf, tool,
                   (const char *[]){"check", f->sock, "--device-type", "blk", "--only",
                                    "config.offset", "--junit", junit, NULL},
                   RUN_DEADLINE_MS);
    assert_int_equal(tu_exit_code(&run_buf), 1);
    junit_counts(junit, counts, sizeof(counts));
    assert_string_equal(counts, "33 1 0 32\n");
}

/* qsd --hostile: unknown requests and extra fds are acked with 0, a
 * request with the REPLY flag is executed. */
static void test_qsd_hostile(void **state)
{
    struct tu_befx *f = *state;
    json_object *j;

    start_qsd(f);
    j = check_json(f->sock, (const char *[]){"--only", "hostile.", "--hostile", NULL}, 1);
    EXPECT(j, {"hostile.unknown-code", "FAIL"}, {"hostile.oversized", "PASS"},
           {"hostile.fd-count", "FAIL"}, {"hostile.stray-reply", "FAIL"});
    evidence_has(j, "hostile.unknown-code", "<- UNKNOWN (200) flags 0x5 size 8 u64 0x0");
    json_object_put(j);
}

/* DPDK 22.11 testpmd's vhost PMD as a net back-end. */
static void test_dpdk(void **state)
{
    struct tu_befx *f = *state;
    json_object *j;

    tu_start_testpmd(&f->proc, f->prefix, 1, f->sock, f->log);
    j = check_json(
        f->sock,
        (const char *[]){"--device-type", "net", "--hostile", "--timeout-ms", "2000", NULL}, 1);
    EXPECT(j, {"handshake.reply-header", "PASS"}, {"handshake.set-owner", "PASS"},
           {"handshake.features", "PASS"}, {"handshake.protocol-features", "PASS"},
           {"handshake.unknown-bits", "PASS"}, {"reply-ack.one-ack", "PASS"},
           {"counts.mem-table", "PASS"}, {"io.net-tx", "PASS"}, {"state.reconnect", "PASS"},
           {"reply-ack.reject", "FAIL"}, {"hostile.unknown-code", "PASS"},
           {"hostile.oversized", "PASS"}, {"hostile.fd-count", "PASS"},
           {"hostile.stray-reply", "FAIL"});
    evidence_has(j, "reply-ack.reject", "peer hung up");
    evidence_has(j, "counts.queue-num", "CONFIG not offered");
    evidence_has(j, "io.net-tx", "a frame came back on RX");
    json_object_put(j);
}

/* virtiofsd (C, 7.2): one connection per process. */
static void test_virtiofsd(void **state)
{
    struct tu_befx *f = *state;
    json_object *j;

    if (geteuid() != 0) {
        print_message("virtiofsd needs root\n");
        skip();
    }
    start_one(f, false);
    j = check_json(
        f->sock,
        (const char *[]){"--device-type", "fs", "--only", "handshake.,reply-ack.one-ack", NULL}, 0);
    EXPECT(j, {"handshake.reply-header", "PASS"}, {"handshake.set-owner", "PASS"},
           {"handshake.features", "PASS"}, {"handshake.protocol-features", "PASS"},
           {"handshake.unknown-bits", "PASS"}, {"reply-ack.one-ack", "PASS"});
    json_object_put(j);

    start_one(f, false);
    j = check_json(f->sock, (const char *[]){"--only", "counts.add-rem-mem-reg", NULL}, 0);
    EXPECT(j, {"counts.add-rem-mem-reg", "PASS"});
    json_object_put(j);

    start_one(f, false);
    j = check_json(f->sock, (const char *[]){"--device-type", "fs", "--only", "io.fs-init", NULL},
                   0);
    EXPECT(j, {"io.fs-init", "PASS"});
    evidence_has(j, "io.fs-init", "error 0 unique 1 major 7");
    json_object_put(j);

    start_one(f, false);
    j = check_json(f->sock, (const char *[]){"--only", "reply-ack.reject", NULL}, 1);
    EXPECT(j, {"reply-ack.reject", "FAIL"});
    json_object_put(j);

    /* the whole suite: after the first check that needs a new connection,
     * every check says the back-end did not accept one */
    start_one(f, false);
    j = check_json(f->sock, (const char *[]){"--device-type", "fs", "--timeout-ms", "500", NULL},
                   1);
    assert_string_equal(field(find(j, "reply-ack.one-ack"), "status"), "PASS");
    assert_string_equal(field(find(j, "counts.queue-num"), "status"), "ERROR");
    evidence_has(j, "counts.queue-num", "did not accept a new front-end");
    json_object_put(j);
}

/* vhost-user-gpu (7.2): one connection per process; an all-zero config. */
static void test_gpu(void **state)
{
    struct tu_befx *f = *state;
    json_object *j;

    start_one(f, true);
    j = check_json(f->sock,
                   (const char *[]){"--device-type", "gpu", "--only",
                                    "handshake.,counts.max-mem-slots,config.offset", NULL},
                   0);
    EXPECT(j, {"handshake.reply-header", "PASS"}, {"handshake.set-owner", "PASS"},
           {"handshake.features", "PASS"}, {"handshake.protocol-features", "PASS"},
           {"handshake.unknown-bits", "PASS"}, {"counts.max-mem-slots", "PASS"});
    evidence_has(j, "config.offset", "every config byte is 0x00");
    json_object_put(j);

    start_one(f, true);
    j = check_json(f->sock, (const char *[]){"--only", "reply-ack.reject", NULL}, 1);
    EXPECT(j, {"reply-ack.reject", "FAIL"});
    json_object_put(j);

    start_one(f, true);
    j = check_json(
        f->sock,
        (const char *[]){"--only", "hostile.stray-reply", "--hostile", "--timeout-ms", "500", NULL},
        1);
    EXPECT(j, {"hostile.stray-reply", "FAIL"});
    evidence_has(j, "hostile.stray-reply", "answered as if the message were valid");
    json_object_put(j);
}

/* Usage errors exit 2 and name the problem. */
static void test_usage(void **state)
{
    const char *const *cases[] = {
        (const char *[]){"check", NULL},
        (const char *[]){"check", "/x.sock", "--only", "ring.nope", NULL},
        (const char *[]){"check", "/x.sock", "--json", "--junit", "/tmp/x.xml", NULL},
        (const char *[]){"check", "/x.sock", "--device-type", "floppy", NULL},
        (const char *[]){"check", "/x.sock", "--timeout-ms", "soon", NULL},
    };
    static const char *const msgs[] = {"SOCKET missing", "no check 'ring.nope'",
                                       "exclude each other", "unknown device type", "--timeout-ms"};

    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tu_run_capture(&run_buf, tool, cases[i], RUN_DEADLINE_MS);
        assert_int_equal(tu_exit_code(&run_buf), 2);
        assert_non_null(strstr(run_buf.err, msgs[i]));
    }
    /* nothing listening: exit 1 with the connect error */
    tu_run_capture(&run_buf, tool,
                   (const char *[]){"check", "/nonexistent/x.sock", "--timeout-ms", "100", NULL},
                   RUN_DEADLINE_MS);
    assert_int_equal(tu_exit_code(&run_buf), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test_setup_teardown(test_ref_passes_all, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_qsd, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_qsd_hostile, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_dpdk, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_virtiofsd, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_gpu, setup, tu_befx_teardown),
    };

    tool = tu_built_exe("VUF_TOOL");
    if (!tool)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
