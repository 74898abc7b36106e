/* SPDX-License-Identifier: MIT */
/*
 * `vuf probe` against the real vhost-user back-ends Debian 12 ships
 * (shared/spec/real-backends.md): qemu-storage-daemon (blk), the C
 * virtiofsd (fs) and vhost-user-gpu, plus the CLI's usage and error paths.
 *
 * The vuf binary comes from $VUF_TOOL (set by meson). A back-end binary
 * that scripts/setup.sh installs being missing fails its test; only
 * virtiofsd, which needs root, skips when not run as root. The values
 * asserted are what QEMU 7.2's back-ends answer.
 *
 * Back-ends are always started in a fresh temp dir (no stale socket file)
 * and waited for by socket FILE, never by a test connect: virtiofsd and
 * vhost-user-gpu serve exactly one connection, and qsd serves one client at
 * a time. The probe retries connect() for the bind()-before-listen() race.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "backends.h"
#include "testutil.h"

#define QSD TU_QSD
#define VIRTIOFSD TU_VIRTIOFSD
#define VUGPU "/usr/lib/qemu/vhost-user-gpu"

/* Longest a vuf run may take before the test kills it. */
#define RUN_DEADLINE_MS 30000

static const char *tool;

/* ---- running the vuf binary --------------------------------------------- */

/* Run `vuf args...`, capturing stdout and stderr; kill it after
 * RUN_DEADLINE_MS. Always reaps. */
static void run_vuf(struct tu_run *r, const char *const *args)
{
    tu_run_capture(r, tool, args, RUN_DEADLINE_MS);
}

/* Run a probe that must succeed with --json; returns the parsed object. */
static json_object *probe_json(const char *const *args)
{
    struct tu_run r;
    json_object *j;

    run_vuf(&r, args);
    printf("%s", r.out); /* the exact output, for the test log */
    assert_int_equal(tu_exit_code(&r), 0);
    j = json_tokener_parse(r.out);
    assert_non_null(j);
    assert_true(json_object_is_type(j, json_type_object));
    return j;
}

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;

    if (!json_object_object_get_ex(o, key, &v)) {
        fprintf(stderr, "JSON key '%s' missing\n", key);
        fail();
    }
    return v; /* NULL for a JSON null */
}

static uint64_t get_u64(json_object *o, const char *key)
{
    json_object *v = get(o, key);

    if (!v || !json_object_is_type(v, json_type_int)) {
        fprintf(stderr, "JSON key '%s' is not an integer\n", key);
        fail();
    }
    return json_object_get_uint64(v);
}

static void assert_null_key(json_object *o, const char *key)
{
    assert_null(get(o, key));
}

static bool array_has(json_object *o, const char *key, const char *name)
{
    json_object *a = get(o, key);

    assert_non_null(a);
    assert_true(json_object_is_type(a, json_type_array));
    for (size_t i = 0; i < json_object_array_length(a); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(a, i)), name) == 0)
            return true;
    return false;
}

/* ---- back-end fixtures ----------------------------------------------------- */

static int setup(void **state)
{
    return tu_befx_setup(state, "vuf-probe");
}

/* By file only: a test connect would use up a one-connection back-end
 * (and leave a dead client in qsd's backlog). */
static void start_backend(struct tu_befx *f, char *const argv[])
{
    tu_spawn_wait_file(&f->proc, argv, f->log, f->sock);
}

/* A one-connection back-end exits (rc 0) soon after the probe hangs up:
 * proof that the probe closed its connection. */
static void assert_exits_cleanly(struct tu_befx *f)
{
    tu_assert_exits_zero(&f->proc, 5000);
}

/* ---- qemu-storage-daemon: vhost-user-blk ----------------------------------- */

static void start_qsd(struct tu_befx *f, const char *export_extra)
{
    char exp[600];
    char *argv[] = {
        QSD, "--blockdev", "driver=null-co,node-name=null0,size=1073741824", "--export", exp, NULL,
    };

    snprintf(f->sock, sizeof(f->sock), "%s/qsd.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/qsd.log", f->dir);
    snprintf(exp, sizeof(exp),
             "type=vhost-user-blk,id=exp0,node-name=null0,addr.type=unix,addr.path=%s%s", f->sock,
             export_extra);
    start_backend(f, argv);
}

static void test_qsd_blk(void **state)
{
    struct tu_befx *f = *state;
    json_object *j, *cfg;
    uint64_t pf, feat;

    if (!tu_backend_installed(QSD, "qemu-system-common"))
        fail();
    start_qsd(f, ",writable=on,num-queues=4");

    j = probe_json((const char *[]){"probe", "--json", "--device-type", "blk", "--timeout-ms",
                                    "5000", f->sock, NULL});
    assert_string_equal(json_object_get_string(get(j, "device_type")), "blk");

    /* virtio features: exactly what qsd 7.2 offers, unmasked */
    feat = get_u64(j, "features");
    assert_true(feat & (1ull << 12)); /* VIRTIO_BLK_F_MQ */
    assert_true(feat & (1ull << 30)); /* VHOST_USER_F_PROTOCOL_FEATURES */
    assert_true(feat & (1ull << 32)); /* VIRTIO_F_VERSION_1 */
    assert_false(feat & (1ull << 5)); /* RO: the export is writable */
    assert_int_equal(feat, 0x175007e46ull);
    assert_true(array_has(j, "feature_names", "MQ"));
    assert_true(array_has(j, "feature_names", "SIZE_MAX"));
    assert_true(array_has(j, "feature_names", "WRITE_ZEROES"));
    assert_true(array_has(j, "feature_names", "VERSION_1"));
    assert_true(array_has(j, "feature_names", "PROTOCOL_FEATURES"));
    assert_int_equal(json_object_array_length(get(j, "feature_names")), 15);

    /* protocol features: offered 0x8f2b; the probe acks its subset */
    assert_int_equal(get_u64(j, "offered_protocol_features"), 0x8f2b);
    pf = get_u64(j, "protocol_features");
    assert_int_equal(pf, 0x8229); /* MQ REPLY_ACK BACKEND_REQ CONFIG MEM_SLOTS */
    /* ... which is a default device's set plus MEM_SLOTS (cfg.mem_slots) */
    assert_int_equal(get_u64(j, "device_protocol_features"), 0x229);
    assert_true(pf & (1ull << 0)); /* MQ */
    assert_true(pf & (1ull << 3)); /* REPLY_ACK */
    assert_true(pf & (1ull << 5)); /* BACKEND_REQ */
    assert_true(pf & (1ull << 9)); /* CONFIG */
    assert_true(array_has(j, "protocol_feature_names", "CONFIG"));
    assert_false(array_has(j, "protocol_feature_names", "PAGEFAULT"));
    assert_true(array_has(j, "offered_protocol_feature_names", "PAGEFAULT"));

    assert_int_equal(get_u64(j, "queues"), 4);
    assert_int_equal(get_u64(j, "max_mem_slots"), 32);

    /* the 60-byte virtio_blk_config of a 1 GiB null device */
    assert_int_equal(get_u64(j, "config_size"), 60);
    cfg = get(j, "config");
    assert_non_null(cfg);
    assert_int_equal(get_u64(cfg, "capacity"), 2097152);
    assert_int_equal(get_u64(cfg, "size_max"), 0); /* qsd 7.2 quirk: offered, 0 */
    assert_int_equal(get_u64(cfg, "seg_max"), 126);
    assert_int_equal(get_u64(cfg, "blk_size"), 512);
    assert_int_equal(get_u64(cfg, "min_io_size"), 1);
    assert_int_equal(get_u64(cfg, "opt_io_size"), 1);
    assert_int_equal(get_u64(cfg, "writeback"), 0);
    assert_int_equal(get_u64(cfg, "num_queues"), 4);
    assert_int_equal(get_u64(cfg, "max_discard_sectors"), 32768);
    assert_int_equal(get_u64(cfg, "max_discard_seg"), 1);
    assert_int_equal(get_u64(cfg, "discard_sector_alignment"), 1);
    assert_int_equal(get_u64(cfg, "max_write_zeroes_sectors"), 32768);
    assert_int_equal(get_u64(cfg, "max_write_zeroes_seg"), 1);
    assert_int_equal(get_u64(cfg, "write_zeroes_may_unmap"), 0);
    /* fields of the newer layout are beyond the 60 bytes: absent */
    assert_false(json_object_object_get_ex(cfg, "max_secure_erase_sectors", NULL));
    json_object_put(j);
}

/* qsd serves one client at a time: a second and third probe only answer if
 * every earlier probe closed its connection, including a failed one. */
static void test_qsd_sequential_and_refused_config(void **state)
{
    struct tu_befx *f = *state;
    struct tu_run r;
    json_object *j;

    if (!tu_backend_installed(QSD, "qemu-system-common"))
        fail();
    /* read-only export, default queue count */
    start_qsd(f, "");

    /* human output: every bit named, one per line, with its hex value */
    run_vuf(&r, (const char *[]){"probe", f->sock, "--device-type", "blk", NULL});
    printf("%s", r.out);
    assert_int_equal(tu_exit_code(&r), 0);
    assert_non_null(strstr(r.out, "virtio features:   0x0000000175007e66\n"));
    assert_non_null(strstr(r.out, "bit  5  0x0000000000000020  RO"));
    assert_non_null(strstr(r.out, "bit 12  0x0000000000001000  MQ"));
    assert_non_null(strstr(r.out, "bit 32  0x0000000100000000  VERSION_1\n"));
    assert_non_null(strstr(r.out, "bit 15  0x0000000000008000  CONFIGURE_MEM_SLOTS"));
    assert_non_null(
        strstr(r.out, "bit  8  0x0000000000000100  PAGEFAULT             not acknowledged"));
    assert_non_null(strstr(r.out, "queues:            1 (GET_QUEUE_NUM)\n"));
    assert_non_null(strstr(r.out, "  capacity                           2097152\n"));
    assert_non_null(strstr(r.out, "  num_queues                         1\n"));

    /* 72 bytes (the newer virtio_blk_config) is refused by qsd 7.2 */
    run_vuf(&r, (const char *[]){"probe", f->sock, "--device-type", "blk", "--config-size", "72",
                                 "--timeout-ms", "3000", NULL});
    assert_int_equal(tu_exit_code(&r), 1);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "GET_CONFIG of 72 bytes refused"));
    assert_non_null(strstr(r.err, f->sock));

    /* and it still serves the next client */
    j = probe_json((const char *[]){"probe", "--json", f->sock, "--timeout-ms", "3000", NULL});
    assert_int_equal(get_u64(j, "features"), 0x175007e66ull);
    assert_int_equal(get_u64(j, "queues"), 1);
    /* no device type: device bits unnamed, no config read */
    assert_null_key(j, "device_type");
    assert_null_key(j, "config");
    assert_true(array_has(j, "feature_names", "BIT_5"));
    assert_true(array_has(j, "feature_names", "VERSION_1"));
    json_object_put(j);
}

/* ---- virtiofsd: vhost-user-fs ------------------------------------------------ */

static void test_virtiofsd(void **state)
{
    struct tu_befx *f = *state;
    char share[300];
    json_object *j;
    uint64_t pf;

    if (!tu_backend_installed(VIRTIOFSD, "qemu-system-common"))
        fail();
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: virtiofsd needs root (pid file under /var/run/virtiofsd, "
                        "unshare/chroot sandbox)\n");
        skip();
    }
    snprintf(share, sizeof(share), "%s/share", f->dir);
    assert_int_equal(mkdir(share, 0755), 0);
    snprintf(f->sock, sizeof(f->sock), "%s/vfs.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/virtiofsd.log", f->dir);
    tu_start_virtiofsd(&f->proc, share, f->sock, f->log);

    j = probe_json((const char *[]){"probe", "--json", "--device-type", "fs", f->sock, NULL});
    assert_string_equal(json_object_get_string(get(j, "device_type")), "fs");
    assert_int_equal(get_u64(j, "features"), 0x175000000ull);
    assert_int_equal(json_object_array_length(get(j, "feature_names")), 6);
    assert_int_equal(get_u64(j, "offered_protocol_features"), 0x8c2b);
    pf = get_u64(j, "protocol_features");
    assert_false(pf & (1ull << 9)); /* no CONFIG: the front-end owns the fs config */
    assert_int_equal(pf, 0x8029);
    assert_int_equal(get_u64(j, "device_protocol_features"), 0x29);
    assert_false(array_has(j, "offered_protocol_feature_names", "CONFIG"));
    assert_int_equal(get_u64(j, "queues"), 2); /* hiprio + 1 request queue */
    assert_int_equal(get_u64(j, "max_mem_slots"), 32);
    assert_null_key(j, "config");
    json_object_put(j);

    assert_exits_cleanly(f);
}

/* ---- vhost-user-gpu ---------------------------------------------------------- */

static void run_gpu(struct tu_befx *f, bool virgl)
{
    char sockopt[300];
    char *argv[] = {VUGPU, sockopt, virgl ? "--virgl" : NULL, NULL};
    json_object *j, *cfg;

    snprintf(f->sock, sizeof(f->sock), "%s/gpu.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/gpu.log", f->dir);
    snprintf(sockopt, sizeof(sockopt), "--socket-path=%s", f->sock);
    start_backend(f, argv);

    j = probe_json((const char *[]){"probe", "--json", "--device-type", "gpu", f->sock, NULL});
    assert_int_equal(get_u64(j, "features"), virgl ? 0x175000001ull : 0x175000000ull);
    assert_int_equal(array_has(j, "feature_names", "VIRGL"), virgl);
    assert_false(array_has(j, "feature_names", "EDID")); /* never in 7.2 */
    assert_int_equal(get_u64(j, "offered_protocol_features"), 0x8f2b);
    assert_int_equal(get_u64(j, "protocol_features"), 0x8229);
    assert_int_equal(get_u64(j, "device_protocol_features"), 0x229);
    assert_int_equal(get_u64(j, "queues"), 2); /* control + cursor */
    assert_int_equal(get_u64(j, "max_mem_slots"), 32);
    assert_int_equal(get_u64(j, "config_size"), 16);
    cfg = get(j, "config");
    assert_non_null(cfg);
    assert_int_equal(json_object_object_length(cfg), 4);
    assert_int_equal(get_u64(cfg, "events_read"), 0);
    assert_int_equal(get_u64(cfg, "events_clear"), 0);
    assert_int_equal(get_u64(cfg, "num_scanouts"), 0); /* the front-end's to set */
    assert_int_equal(get_u64(cfg, "num_capsets"), virgl ? 2 : 0);
    assert_string_equal(json_object_get_string(get(j, "config_raw")),
                        virgl ? "00000000000000000000000002000000"
                              : "00000000000000000000000000000000");
    json_object_put(j);

    assert_exits_cleanly(f);
}

static void test_gpu(void **state)
{
    if (!tu_backend_installed(VUGPU, "qemu-system-gui"))
        fail();
    run_gpu(*state, false);
}

static void test_gpu_virgl(void **state)
{
    if (!tu_backend_installed(VUGPU, "qemu-system-gui"))
        fail();
    run_gpu(*state, true);
}

static void fill_sun(struct sockaddr_un *sa, const char *path)
{
    size_t n = strlen(path);

    assert_true(n < sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, n + 1);
}

/* ---- failures --------------------------------------------------------------- */

/* Nothing at the path: exit 1 with a message naming the socket, after
 * retrying for about --timeout-ms and not much longer. */
static void test_nothing_listening(void **state)
{
    struct tu_befx *f = *state;
    struct tu_run r;

    snprintf(f->sock, sizeof(f->sock), "%s/nobody.sock", f->dir);
    run_vuf(&r, (const char *[]){"probe", "--json", "--timeout-ms", "400", f->sock, NULL});
    assert_int_equal(tu_exit_code(&r), 1);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, f->sock));
    assert_non_null(strstr(r.err, "cannot connect"));
    assert_non_null(strstr(r.err, "No such file or directory"));
    assert_true(r.elapsed_ms >= 350);
    assert_true(r.elapsed_ms < 400 + 2000);
}

/* A stale socket file (bound, never listening): connection refused. */
static void test_stale_socket(void **state)
{
    struct tu_befx *f = *state;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct tu_run r;
    int fd;

    snprintf(f->sock, sizeof(f->sock), "%s/stale.sock", f->dir);
    fill_sun(&sa, f->sock);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);

    run_vuf(&r, (const char *[]){"probe", f->sock, "--timeout-ms", "300", NULL});
    assert_int_equal(tu_exit_code(&r), 1);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "cannot connect"));
    assert_non_null(strstr(r.err, "Connection refused"));
    assert_true(r.elapsed_ms < 300 + 2000);
}

/* A peer that accepts and hangs up at once: the failing step is named. */
static void test_peer_hangs_up(void **state)
{
    struct tu_befx *f = *state;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct tu_run r;
    pid_t pid;
    int lfd, status;

    snprintf(f->sock, sizeof(f->sock), "%s/hangup.sock", f->dir);
    fill_sun(&sa, f->sock);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* read SET_OWNER + GET_FEATURES request headers (12 bytes each, no
         * payload), however slowly they come, then hang up */
        int c = accept(lfd, NULL, NULL);
        char buf[64];
        size_t got = 0;

        if (c >= 0) {
            while (got < 24) {
                struct pollfd pfd = {.fd = c, .events = POLLIN};
                ssize_t n;

                if (poll(&pfd, 1, 10000) != 1)
                    break;
                n = read(c, buf, 24 - got);
                if (n <= 0)
                    break;
                got += (size_t)n;
            }
            close(c);
        }
        _exit(got == 24 ? 0 : 1);
    }
    close(lfd);
    run_vuf(&r, (const char *[]){"probe", f->sock, "--timeout-ms", "3000", NULL});
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* it saw both requests */
    assert_int_equal(tu_exit_code(&r), 1);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "GET_FEATURES failed"));
    assert_non_null(strstr(r.err, "hung up"));
}

/* ---- command line --------------------------------------------------------- */

static void test_cli_usage(void **state)
{
    struct tu_run r;
    (void)state;

    run_vuf(&r, (const char *[]){"--help", NULL});
    assert_int_equal(tu_exit_code(&r), 0);
    assert_non_null(strstr(r.out, "usage: vuf"));
    assert_non_null(strstr(r.out, "probe"));

    run_vuf(&r, (const char *[]){"probe", "--help", NULL});
    assert_int_equal(tu_exit_code(&r), 0);
    assert_non_null(strstr(r.out, "usage: vuf probe SOCKET"));
    assert_non_null(strstr(r.out, "--device-type"));

    run_vuf(&r, (const char *[]){"frobnicate", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "unknown command 'frobnicate'"));
    assert_non_null(strstr(r.err, "usage: vuf"));

    run_vuf(&r, (const char *[]){NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "usage: vuf"));

    run_vuf(&r, (const char *[]){"probe", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "missing SOCKET"));

    run_vuf(&r, (const char *[]){"probe", "/x.sock", "--device-type", "floppy", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "unknown device type 'floppy'"));

    run_vuf(&r, (const char *[]){"probe", "/x.sock", "--timeout-ms", "soon", NULL});
    assert_int_equal(tu_exit_code(&r), 2);

    run_vuf(&r, (const char *[]){"probe", "/x.sock", "--config-size", "257", NULL});
    assert_int_equal(tu_exit_code(&r), 2);

    run_vuf(&r, (const char *[]){"probe", "/x.sock", "--bogus", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "unknown option '--bogus'"));

    run_vuf(&r, (const char *[]){"probe", "/a.sock", "/b.sock", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "unexpected argument"));

    run_vuf(&r, (const char *[]){"probe", "/x.sock", "--device-type", NULL});
    assert_int_equal(tu_exit_code(&r), 2);
    assert_non_null(strstr(r.err, "needs a value"));
}

/*
 * The default logger honours VUF_LOG (README, vuf/log.h): debug (any case)
 * traces every message the probe sends; unset, warn, error or an unknown
 * word keep the default (warn), so a clean probe prints no log line at all.
 */
static void test_vuf_log_env(void **state)
{
    static const struct {
        const char *value; /* NULL: unset */
        bool trace;
    } cases[] = {{"debug", true}, {"DEBUG", true},  {NULL, false},
                 {"warn", false}, {"error", false}, {"nonsense", false}};
    struct tu_befx *f = *state;
    static struct tu_run r;

    if (!tu_backend_installed(QSD, "qemu-system-common"))
        fail();
    start_qsd(f, "");
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (cases[i].value)
            assert_int_equal(setenv("VUF_LOG", cases[i].value, 1), 0);
        else
            assert_int_equal(unsetenv("VUF_LOG"), 0);
        run_vuf(&r, (const char *[]){"probe", f->sock, "--json", NULL});
        unsetenv("VUF_LOG");
        print_message("VUF_LOG=%s: exit %d, %zu bytes on stderr\n",
                      cases[i].value ? cases[i].value : "(unset)", tu_exit_code(&r), strlen(r.err));
        assert_int_equal(tu_exit_code(&r), 0);
        if (cases[i].trace) {
            assert_non_null(strstr(r.err, "vuf debug: "));
            assert_non_null(strstr(r.err, "SET_OWNER"));
            assert_non_null(strstr(r.err, "GET_FEATURES"));
            assert_non_null(strstr(r.err, "GET_PROTOCOL_FEATURES"));
            assert_non_null(strstr(r.err, "GET_QUEUE_NUM"));
        } else {
            assert_string_equal(r.err, "");
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_vuf_log_env, setup, tu_befx_teardown),
        cmocka_unit_test(test_cli_usage),
        cmocka_unit_test_setup_teardown(test_qsd_blk, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_qsd_sequential_and_refused_config, setup,
                                        tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_virtiofsd, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_gpu, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_gpu_virgl, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_nothing_listening, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_stale_socket, setup, tu_befx_teardown),
        cmocka_unit_test_setup_teardown(test_peer_hangs_up, setup, tu_befx_teardown),
    };

    tool = tu_built_exe("VUF_TOOL");
    if (!tool)
        return 1;
    /* A probe hitting a dead back-end must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
