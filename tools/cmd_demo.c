/* SPDX-License-Identifier: MIT */
/*
 * `vuf demo`: the whole life cycle of a vhost-user device, as a VMM lives
 * it, against vuf's reference back-end (vuf-backend-blk), with a numbered
 * log of what is sent and what comes back:
 *
 *   negotiate, activate, write + read back, sleep, snapshot, stop that
 *   back-end, start a fresh back-end process, restore into it (a new
 *   front-end on the new connection), wake, I/O again (data intact),
 *   reset, tear down.
 *
 * Everything lives in a private temp dir. The back-ends run in their own
 * process groups and are always reaped, the temp dir always removed: on
 * success, on a failed step, and on SIGINT/SIGTERM (the signal handler
 * kills, reaps and unlinks with async-signal-safe calls only).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "session.h"
#include "vuf/frontend.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"
#include "vuf_tool.h"

#define DEMO_TIMEOUT_MS 5000
#define DEMO_DISK_DEFAULT (4ull << 20)
#define DEMO_QUEUES 2u
#define DEMO_IO_BYTES (64u * 1024)
#define DEMO_SEED_1 0x1111u
#define DEMO_SEED_2 0x2222u
#define DEMO_SEED_3 0x3333u

enum disk_kind { DISK_RAM, DISK_FILE };

/* ---- what the signal handler may touch ------------------------------------- */

#define MAX_FILES 8
static volatile sig_atomic_t g_pid[2];
static char g_files[MAX_FILES][256];
static volatile sig_atomic_t g_nfiles;
static char g_dir[128];
static volatile sig_atomic_t g_have_dir;

static void kill_and_clean(void)
{
    for (int i = 0; i < 2; i++) {
        pid_t pid = (pid_t)g_pid[i];
        if (pid > 0) {
            kill(-pid, SIGKILL); /* its process group */
            kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
            g_pid[i] = 0;
        }
    }
    for (int i = 0; i < g_nfiles; i++)
        unlink(g_files[i]);
    if (g_have_dir)
        rmdir(g_dir);
    g_have_dir = 0;
}

static void on_signal(int sig)
{
    static const char msg[] = "\nvuf demo: interrupted; back-ends killed, temp dir removed\n";
    ssize_t w;

    kill_and_clean();
    w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    _exit(128 + sig);
}

/* ---- the demo --------------------------------------------------------------- */

static void flush_trace(void);

struct backend {
    const char *name; /* "A", "B" */
    int slot;         /* index into g_pid */
    pid_t pid;
    char sock[256];
    char log[256];
};

struct demo {
    const char *bin;
    char bin_buf[PATH_MAX];
    enum disk_kind disk;
    uint64_t disk_bytes;
    bool trace;
    char disk_path[256];
    struct backend be[2];
    int step;
    unsigned checks, failed;
    int64_t t0;
};

void cmd_demo_usage(FILE *f)
{
    fprintf(f, "usage: vuf demo [--disk ram|file] [--size BYTES] [--no-trace]\n"
               "                [--backend PATH]\n"
               "\n"
               "Walk the whole life cycle of a vhost-user-blk device against vuf's\n"
               "reference back-end, printing a numbered log: start back-end A, negotiate\n"
               "(features and protocol features named), ack features and read the config,\n"
               "share guest memory and start 2 queues, write and read back with\n"
               "verification, sleep, snapshot the device state, stop A, start a fresh\n"
               "back-end B, look at B's disk with a throw-away front-end (control), connect\n"
               "a new front-end to B, restore the state, wake, read the data again and\n"
               "write more, reset, tear down. Lines starting with '->' and '<-' are the\n"
               "vhost-user messages the front-end sent and the replies it got.\n"
               "\n"
               "options:\n"
               "  --disk ram    (default) both back-ends get a RAM disk and are started with\n"
               "                --state-includes-ram, so the disk content travels inside\n"
               "                the snapshot: B's data can only have come from A's state\n"
               "  --disk file   both back-ends serve the same file in the temp dir (shared\n"
               "                storage, as in a real migration): the state carries only\n"
               "                the queue positions and counters\n"
               "  --size BYTES  disk size (K, M suffixes; default 4M, at most 64M)\n"
               "  --no-trace    do not print the individual messages\n"
               "  --backend PATH  the vuf-backend-blk binary (default: $VUF_BACKEND_BLK,\n"
               "                then backend/vuf-backend-blk next to this vuf binary,\n"
               "                then vuf-backend-blk next to it, then $PATH)\n"
               "  -h, --help    this help\n"
               "\n"
               "Everything runs in a fresh temp dir under $TMPDIR (or /tmp). The back-ends\n"
               "are always stopped and reaped and the temp dir removed, also after a\n"
               "failure or SIGINT/SIGTERM.\n"
               "\n"
               "Exit status: 0 every step's check passed; 1 a step failed (the reason,\n"
               "and the back-end's log, on stderr); 2 usage error; 128+N killed by\n"
               "signal N (after cleaning up).\n");
}

static const struct cli_cmd demo_cmd = {"vuf demo", cmd_demo_usage};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void step(struct demo *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void step(struct demo *d, const char *fmt, ...)
{
    va_list ap;

    flush_trace();
    printf("\n[%d] ", ++d->step);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

static void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void info(const char *fmt, ...)
{
    va_list ap;

    flush_trace();
    printf("    ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* A check of the step: printed either way; false on failure. */
static bool check(struct demo *d, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool check(struct demo *d, bool ok, const char *fmt, ...)
{
    va_list ap;

    d->checks++;
    flush_trace();
    printf("    check: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(": %s\n", ok ? "ok" : "FAILED");
    if (!ok)
        d->failed++;
    return ok;
}

static bool step_failed(struct demo *d, const struct ts_session *s, int err)
{
    d->failed++;
    flush_trace();
    printf("    FAILED: %s: %s\n", s->failed ? s->failed : "?", vuf_strerror(err));
    fprintf(stderr, "vuf demo: step %d: %s failed: %s\n", d->step, s->failed ? s->failed : "?",
            vuf_strerror(err));
    return false;
}

/*
 * The library's log. Message trace lines of the main socket ("main: -> NAME
 * (flags F, size N, K fds...)" and "main: <- NAME reply (flags F, size N,
 * K fds...)", src/protocol/conn.c) are shown one request a line, its reply on the same line;
 * warnings and errors are shown; other debug/info lines are dropped. Only the caller's thread sends
 * requests, so the pending line needs no lock; the worker may log warnings (one printf each).
 */
static char pending[160];
static char pending_name[64];

static void flush_trace(void)
{
    if (pending[0]) {
        printf("      %s\n", pending);
        pending[0] = '\0';
    }
}

static void demo_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    const struct demo *d = opaque;
    char name[64];
    unsigned flags, size, nfds;

    if (level <= VUF_LOG_WARN) {
        flush_trace();
        printf("      vuf %s: %s\n", level == VUF_LOG_ERROR ? "error" : "warning", msg);
        return;
    }
    if (!d->trace || strncmp(msg, "main: ", 6) != 0)
        return;
    msg += 6;
    if (sscanf(msg, "-> %63s (flags 0x%x, size %u, %u fds)", name, &flags, &size, &nfds) == 4) {
        flush_trace();
        snprintf(pending, sizeof(pending), "-> %-22s flags 0x%x, %3u bytes%s", name, flags, size,
                 nfds ? (nfds == 1 ? ", 1 fd" : ", fds") : "");
        snprintf(pending_name, sizeof(pending_name), "%s", name);
        return;
    }
    if (sscanf(msg, "<- %63s reply (flags 0x%x, size %u, %u fds", name, &flags, &size, &nfds) ==
            4 &&
        pending[0] && strcmp(name, pending_name) == 0) {
        printf("      %-52s <- reply, %u bytes%s\n", pending, size,
               nfds ? (nfds == 1 ? ", 1 fd" : ", fds") : "");
        pending[0] = '\0';
        return;
    }
    if (strncmp(msg, "-> ", 3) == 0 || strncmp(msg, "<- ", 3) == 0) {
        flush_trace();
        printf("      %s\n", msg);
    }
}

/* ---- back-end processes ----------------------------------------------------- */

static bool exe_ok(const char *p)
{
    return access(p, X_OK) == 0;
}

static const char *find_backend(struct demo *d, const char *given)
{
    char self[PATH_MAX - 32];
    ssize_t n;
    const char *env = getenv("VUF_BACKEND_BLK");

    if (given)
        return exe_ok(given) ? given : NULL;
    if (env && *env)
        return exe_ok(env) ? env : NULL;
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        char *slash;

        self[n] = '\0';
        slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(d->bin_buf, sizeof(d->bin_buf), "%s/backend/vuf-backend-blk", self);
            if (exe_ok(d->bin_buf))
                return d->bin_buf;
            snprintf(d->bin_buf, sizeof(d->bin_buf), "%s/vuf-backend-blk", self);
            if (exe_ok(d->bin_buf))
                return d->bin_buf;
        }
    }
    {
        const char *path = getenv("PATH");
        while (path && *path) {
            const char *c = strchr(path, ':');
            size_t len = c ? (size_t)(c - path) : strlen(path);
            if (len && len < sizeof(d->bin_buf) - 20) {
                snprintf(d->bin_buf, sizeof(d->bin_buf), "%.*s/vuf-backend-blk", (int)len, path);
                if (exe_ok(d->bin_buf))
                    return d->bin_buf;
            }
            path = c ? c + 1 : NULL;
        }
    }
    return NULL;
}

static void add_file(const char *path)
{
    sigset_t all, old;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (g_nfiles < MAX_FILES) {
        snprintf(g_files[g_nfiles], sizeof(g_files[0]), "%s", path);
        g_nfiles = g_nfiles + 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void dump_log(const struct backend *b)
{
    char buf[4096];
    FILE *f = fopen(b->log, "r");
    size_t n;

    if (!f)
        return;
    fprintf(stderr, "---- back-end %s log (%s) ----\n", b->name, b->log);
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end of back-end %s log ----\n", b->name);
    fclose(f);
}

/* fork + exec the back-end in its own process group, output to its log. */
static bool start_backend(struct demo *d, struct backend *b)
{
    char sockarg[300], diskarg[300], qarg[32];
    char *argv[8];
    int argc = 0, fd;
    sigset_t all, old;
    pid_t pid, parent;
    int64_t t0;

    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", b->sock);
    if (d->disk == DISK_FILE)
        snprintf(diskarg, sizeof(diskarg), "--file=%s", d->disk_path);
    else
        snprintf(diskarg, sizeof(diskarg), "--ram=%" PRIu64, d->disk_bytes);
    snprintf(qarg, sizeof(qarg), "--num-queues=%u", DEMO_QUEUES);
    argv[argc++] = (char *)d->bin;
    argv[argc++] = sockarg;
    argv[argc++] = diskarg;
    argv[argc++] = qarg;
    if (d->disk == DISK_RAM)
        argv[argc++] = (char *)"--state-includes-ram";
    argv[argc] = NULL;

    printf("    $ VUF_LOG=info");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    fflush(stdout);
    fflush(stderr);

    fd = open(b->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        printf("    FAILED: %s: %s\n", b->log, strerror(errno));
        d->failed++;
        return false;
    }
    /* No signal between fork and recording the pid. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    parent = getpid();
    pid = fork();
    if (pid == 0) {
        sigset_t none;

        setpgid(0, 0);
        /* Even if we are SIGKILLed, the back-end goes too. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        setenv("VUF_LOG", "info", 1);
        execv(d->bin, argv);
        _exit(127);
    }
    if (pid > 0) {
        setpgid(pid, pid); /* also from here: no race with the child */
        b->pid = pid;
        g_pid[b->slot] = pid;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(fd);
    if (pid < 0) {
        printf("    FAILED: fork: %s\n", strerror(errno));
        d->failed++;
        return false;
    }

    /* Wait for the socket file while checking the process is alive; the
     * connect that follows retries the short bind-to-listen window. */
    t0 = now_ms();
    for (;;) {
        struct stat st;
        int status;

        if (waitpid(pid, &status, WNOHANG) == pid) {
            b->pid = 0;
            g_pid[b->slot] = 0;
            printf("    FAILED: back-end %s exited at start (status 0x%x)\n", b->name, status);
            fprintf(stderr, "vuf demo: back-end %s exited at start\n", b->name);
            dump_log(b);
            d->failed++;
            return false;
        }
        if (stat(b->sock, &st) == 0 && S_ISSOCK(st.st_mode))
            break;
        if (now_ms() - t0 > DEMO_TIMEOUT_MS) {
            printf("    FAILED: no socket after %d ms\n", DEMO_TIMEOUT_MS);
            dump_log(b);
            d->failed++;
            return false;
        }
        poll(NULL, 0, 2);
    }
    info("back-end %s: pid %d, socket %s ready after %" PRId64 " ms", b->name, (int)pid, b->sock,
         now_ms() - t0);
    return true;
}

/* SIGTERM, wait up to 3 s, else SIGKILL. Returns the wait status or -1. */
static int stop_backend(struct backend *b)
{
    int status = -1;
    int64_t t0 = now_ms();

    if (b->pid <= 0)
        return -1;
    kill(b->pid, SIGTERM);
    for (;;) {
        pid_t r = waitpid(b->pid, &status, WNOHANG);
        if (r == b->pid)
            break;
        if (r < 0 && errno != EINTR) {
            status = -1;
            break;
        }
        if (now_ms() - t0 > 3000) {
            kill(-b->pid, SIGKILL);
            kill(b->pid, SIGKILL);
            while (waitpid(b->pid, &status, 0) < 0 && errno == EINTR)
                ;
            status = -1;
            break;
        }
        poll(NULL, 0, 2);
    }
    b->pid = 0;
    g_pid[b->slot] = 0;
    return status;
}

/* ---- steps ------------------------------------------------------------------ */

static void print_negotiated(const struct ts_session *s)
{
    char names[512];

    info("<- virtio features offered to the driver: 0x%016" PRIx64, s->offered);
    info("     %s", ts_feature_names(s->offered, names, sizeof(names)));
    info("<- protocol features negotiated: 0x%016" PRIx64, s->protocol);
    info("     %s", ts_protocol_names(s->protocol, names, sizeof(names)));
    info("<- queues: %u (GET_QUEUE_NUM)", s->dev_queues);
}

static bool do_connect(struct demo *d, struct ts_session *s, const struct backend *b)
{
    int r;

    info("connect to %s, then vuf_frontend_new() negotiates:", b->sock);
    r = ts_open(s, b->sock);
    if (r < 0)
        return step_failed(d, s, r);
    print_negotiated(s);
    if (!check(d, (s->protocol & VUF_PROTO_MASK(DEVICE_STATE)) != 0,
               "DEVICE_STATE negotiated (snapshot/restore possible)"))
        return false;
    return check(d, s->dev_queues >= DEMO_QUEUES, "at least %u queues", DEMO_QUEUES);
}

/* Write `len` bytes of pattern `seed` at `off` through queue qi, flush. */
static bool do_write(struct demo *d, struct ts_session *s, unsigned qi, uint64_t off, size_t len,
                     uint64_t seed)
{
    uint8_t *buf = malloc(len);
    int r;

    if (!buf)
        return check(d, false, "memory for the write buffer");
    ts_pattern_fill(seed, off, buf, len);
    r = ts_write(s, qi, off, buf, len);
    free(buf);
    if (r < 0)
        return step_failed(d, s, r);
    info("queue %u: wrote %zu bytes at offset %" PRIu64 " (pattern seed 0x%" PRIx64 ")", qi, len,
         off, seed);
    return true;
}

/* Read and compare with the pattern. want_pattern false: expect zeros. */
static bool do_verify(struct demo *d, struct ts_session *s, unsigned qi, uint64_t off, size_t len,
                      uint64_t seed, bool want_pattern, const char *what)
{
    uint8_t *buf = malloc(len);
    size_t bad = len;
    int r;

    if (!buf)
        return check(d, false, "memory for the read buffer");
    r = ts_read(s, qi, off, buf, len);
    if (r < 0) {
        free(buf);
        return step_failed(d, s, r);
    }
    if (want_pattern) {
        bad = ts_pattern_check(seed, off, buf, len);
    } else {
        for (size_t i = 0; i < len; i++)
            if (buf[i]) {
                bad = i;
                break;
            }
    }
    info("queue %u: read %zu bytes at offset %" PRIu64 "%s", qi, len, off,
         bad < len ? "" : (want_pattern ? ": pattern matches" : ": all zero"));
    if (bad < len)
        info("first difference at offset %" PRIu64 " (read 0x%02x)", off + bad, buf[bad]);
    free(buf);
    return check(d, bad == len, "%s", what);
}

static bool check_host_file(struct demo *d, uint64_t off, size_t len, uint64_t seed)
{
    uint8_t *buf = malloc(len);
    int fd = open(d->disk_path, O_RDONLY | O_CLOEXEC);
    ssize_t n = -1;
    bool ok;

    if (buf && fd >= 0)
        n = pread(fd, buf, len, (off_t)off);
    if (fd >= 0)
        close(fd);
    ok = buf && n == (ssize_t)len && ts_pattern_check(seed, off, buf, len) == len;
    free(buf);
    return check(d, ok, "the host file %s holds the pattern at %" PRIu64, d->disk_path, off);
}

static void print_queues(const struct ts_session *s)
{
    for (unsigned i = 0; i < s->nq; i++)
        info("queue %u: next_avail %u, next_used %u (driver: avail idx %u, used idx %u)", i,
             s->q[i].next_avail, s->q[i].next_used, vuf_virtq_avail_idx(s->vq[i]),
             vuf_virtq_used_idx(s->vq[i]));
}

/* What the demo's steps share: the session, where the data went and what
 * came back from the first back-end. */
struct run {
    struct ts_opts to;
    struct ts_session s;
    uint64_t off1, off2, off3;
    uint8_t *snap;
    size_t snap_len;
    uint16_t avail_before[DEMO_QUEUES];
};

/* A session call's result: false (and the step reported failed) on error. */
static bool done(struct demo *d, const struct ts_session *s, int r)
{
    return r >= 0 || step_failed(d, s, r);
}

static bool stopped_cleanly(struct demo *d, struct backend *b)
{
    int status = stop_backend(b);

    return check(d, status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                 "back-end %s exited with status 0 on SIGTERM", b->name);
}

static bool demo_connect_a(struct demo *d, struct run *x)
{
    char names[512];

    step(d, "Start back-end A (%s disk of %" PRIu64 " bytes)", d->disk == DISK_RAM ? "RAM" : "file",
         d->disk_bytes);
    if (!start_backend(d, &d->be[0]))
        return false;

    step(d, "Connect and negotiate with back-end A");
    if (!do_connect(d, &x->s, &d->be[0]))
        return false;

    step(d, "Driver: ack features, read the config space");
    if (!done(d, &x->s, ts_driver(&x->s)))
        return false;
    info("driver acks 0x%016" PRIx64 ": %s", x->s.acked,
         ts_feature_names(x->s.acked, names, sizeof(names)));
    info("(the front-end sends SET_FEATURES at activation, not now)");
    if (!check(d, x->s.have_config, "GET_CONFIG answered"))
        return false;
    info("config: capacity %" PRIu64 " sectors, blk_size %u, num_queues %u", x->s.capacity,
         x->s.blk_size, x->s.cfg_num_queues);
    return check(d, x->s.capacity * 512 == d->disk_bytes, "capacity is the disk size");
}

static bool demo_activate(struct demo *d, struct run *x)
{
    struct ts_session *s = &x->s;

    step(d, "Guest memory and queues");
    if (!done(d, s, ts_queues(s)))
        return false;
    info("guest memory: one memfd region of %" PRIu64 " KiB at GPA 0", s->mem_size >> 10);
    for (unsigned i = 0; i < s->nq; i++)
        info("queue %u: %u entries, desc 0x%" PRIx64 " avail 0x%" PRIx64 " used 0x%" PRIx64
             ", call fd = its irqfd (vector %u)",
             i, s->q[i].size, s->q[i].desc_addr, s->q[i].avail_addr, s->q[i].used_addr, i);

    step(d, "Activate (memory table and rings to the back-end)");
    if (!done(d, s, ts_activate(s)))
        return false;
    return check(d, vuf_frontend_is_active(s->dev), "device active");
}

static bool demo_io_a(struct demo *d, struct run *x)
{
    struct ts_session *s = &x->s;

    step(d, "I/O on back-end A: write, flush, read back");
    if (!do_write(d, s, 0, x->off1, DEMO_IO_BYTES, DEMO_SEED_1) ||
        !do_write(d, s, 1, x->off2, DEMO_IO_BYTES, DEMO_SEED_2))
        return false;
    if (s->has_flush) {
        if (!done(d, s, ts_flush(s, 0)))
            return false;
        info("queue 0: FLUSH ok");
    }
    if (!do_verify(d, s, 1, x->off1, DEMO_IO_BYTES, DEMO_SEED_1, true,
                   "data written on queue 0 reads back on queue 1") ||
        !do_verify(d, s, 0, x->off2, DEMO_IO_BYTES, DEMO_SEED_2, true,
                   "data written on queue 1 reads back on queue 0"))
        return false;
    return d->disk != DISK_FILE || check_host_file(d, x->off1, DEMO_IO_BYTES, DEMO_SEED_1);
}

static bool demo_sleep(struct demo *d, struct run *x)
{
    struct ts_session *s = &x->s;
    bool same = true;

    step(d, "Sleep (stop the rings, get their positions back)");
    if (!done(d, s, ts_sleep(s)))
        return false;
    print_queues(s);
    for (unsigned i = 0; i < s->nq; i++) {
        x->avail_before[i] = vuf_virtq_avail_idx(s->vq[i]);
        same &= s->q[i].next_avail == x->avail_before[i] && s->q[i].next_used == x->avail_before[i];
    }
    return check(d, !vuf_frontend_is_active(s->dev), "device asleep") &&
           check(d, same,
                 "back-end consumed and completed everything the driver made "
                 "available");
}

static bool demo_snapshot(struct demo *d, struct run *x)
{
    step(d, "Snapshot the device state");
    if (!done(d, &x->s, ts_snapshot(&x->s, &x->snap, &x->snap_len)))
        return false;
    info("<- %zu bytes of state (front-end header with the acked features + the "
         "back-end's own state)",
         x->snap_len);
    if (d->disk == DISK_RAM) {
        info("back-end A runs with --state-includes-ram: its %" PRIu64
             "-byte RAM disk is inside this state",
             d->disk_bytes);
        return check(d, x->snap_len > d->disk_bytes, "state is larger than the disk");
    }
    info("the disk is a shared file: the state holds queue positions and counters, "
         "not data");
    return check(d, x->snap_len > 0 && x->snap_len < d->disk_bytes, "state is small");
}

static bool demo_replace_backend(struct demo *d, struct run *x)
{
    step(d, "Disconnect from back-end A and stop it");
    ts_detach(&x->s);
    if (!stopped_cleanly(d, &d->be[0]))
        return false;
    if (d->disk == DISK_RAM)
        info("A's RAM disk is gone with its process");

    step(d, "Start a fresh back-end B (new process, %s)",
         d->disk == DISK_RAM ? "new empty RAM disk" : "same file");
    return start_backend(d, &d->be[1]);
}

/* What B's disk holds before any restore, seen through a throw-away
 * front-end of its own. */
static bool demo_control(struct demo *d, struct run *x)
{
    struct ts_opts co = x->to;
    struct ts_session ctl;
    bool cok;
    int r;

    step(d, "Control: what B's disk holds before any restore (throw-away front-end)");
    co.queues = 1;
    ts_init(&ctl, &co);
    r = ts_start(&ctl, d->be[1].sock);
    if (r < 0) {
        step_failed(d, &ctl, r);
        ts_close(&ctl);
        return false;
    }
    if (d->disk == DISK_RAM)
        cok = do_verify(d, &ctl, 0, x->off1, DEMO_IO_BYTES, 0, false,
                        "B's RAM disk does not have the data yet");
    else
        cok = do_verify(d, &ctl, 0, x->off1, DEMO_IO_BYTES, DEMO_SEED_1, true,
                        "B already sees the data in the shared file");
    r = ts_reset(&ctl);
    ts_close(&ctl);
    info("throw-away front-end reset and disconnected");
    if (!cok)
        return false;
    return done(d, &ctl, r);
}

static bool demo_restore(struct demo *d, struct run *x)
{
    struct ts_session *s = &x->s;

    step(d, "Connect a new front-end to back-end B");
    if (!do_connect(d, s, &d->be[1]))
        return false;

    step(d, "Restore the state into back-end B");
    if (!done(d, s, ts_restore(s, x->snap, x->snap_len)))
        return false;
    info("-> %zu bytes written; acked features now 0x%016" PRIx64, x->snap_len, s->acked);

    step(d, "Wake (same guest memory, same rings, restored positions)");
    if (!done(d, s, ts_wake(s)))
        return false;
    return check(d, vuf_frontend_is_active(s->dev), "device active on back-end B");
}

static bool demo_io_b(struct demo *d, struct run *x)
{
    struct ts_session *s = &x->s;
    bool moved = true;

    step(d, "I/O on back-end B: the old data, then new data");
    if (!do_verify(d, s, 0, x->off1, DEMO_IO_BYTES, DEMO_SEED_1, true,
                   d->disk == DISK_RAM ? "data intact (it came with the state)"
                                       : "data intact (from the shared file)") ||
        !do_verify(d, s, 1, x->off2, DEMO_IO_BYTES, DEMO_SEED_2, true, "data intact"))
        return false;
    if (!do_write(d, s, 1, x->off3, DEMO_IO_BYTES, DEMO_SEED_3) ||
        !do_verify(d, s, 0, x->off3, DEMO_IO_BYTES, DEMO_SEED_3, true, "new data reads back"))
        return false;
    for (unsigned i = 0; i < s->nq; i++) {
        info("queue %u: avail idx %u -> %u, used idx %u", i, x->avail_before[i],
             vuf_virtq_avail_idx(s->vq[i]), vuf_virtq_used_idx(s->vq[i]));
        moved &= vuf_virtq_avail_idx(s->vq[i]) != x->avail_before[i] &&
                 vuf_virtq_used_idx(s->vq[i]) == vuf_virtq_avail_idx(s->vq[i]);
    }
    if (!check(d, moved, "both rings went on from where back-end A stopped"))
        return false;
    return d->disk != DISK_FILE || check_host_file(d, x->off3, DEMO_IO_BYTES, DEMO_SEED_3);
}

static bool demo_teardown(struct demo *d, struct run *x)
{
    step(d, "Reset the device");
    if (!done(d, &x->s, ts_reset(&x->s)))
        return false;
    if (!check(d, !vuf_frontend_is_active(x->s.dev), "device inactive"))
        return false;

    step(d, "Tear down: disconnect, stop back-end B, remove the temp dir");
    ts_close(&x->s);
    return stopped_cleanly(d, &d->be[1]);
}

/* The life cycle, in order; the first step that fails ends it. */
static bool (*const demo_steps[])(struct demo *, struct run *) = {
    demo_connect_a,       demo_activate, demo_io_a,    demo_sleep, demo_snapshot,
    demo_replace_backend, demo_control,  demo_restore, demo_io_b,  demo_teardown,
};

static bool run_demo(struct demo *d)
{
    struct run x = {
        .to =
            {
                .timeout_ms = DEMO_TIMEOUT_MS,
                .queues = DEMO_QUEUES,
                .queue_size = 64,
                .nreqs = 4,
                .max_data = 32 * 1024,
            },
        .off1 = 0,
        .off2 = d->disk_bytes / 2,
        .off3 = d->disk_bytes / 4,
    };
    bool ok = true;

    ts_init(&x.s, &x.to);
    for (size_t i = 0; ok && i < sizeof(demo_steps) / sizeof(demo_steps[0]); i++)
        ok = demo_steps[i](d, &x);
    if (!ok) {
        for (int i = 0; i < 2; i++)
            if (d->be[i].pid > 0)
                dump_log(&d->be[i]);
    }
    free(x.snap);
    ts_close(&x.s);
    return ok;
}

/* ---- main ------------------------------------------------------------------- */

/* What parse_demo_args returns when the demo is to run. */
#define DEMO_RUN (-1)

/* DEMO_RUN, or the exit code (help, usage error). */
static int parse_demo_args(int argc, char **argv, struct demo *d, const char **given)
{
    enum { OPT_DISK = 256, OPT_SIZE, OPT_NOTRACE, OPT_BACKEND };
    static const struct option longopts[] = {
        {"disk", required_argument, NULL, OPT_DISK},
        {"size", required_argument, NULL, OPT_SIZE},
        {"no-trace", no_argument, NULL, OPT_NOTRACE},
        {"backend", required_argument, NULL, OPT_BACKEND},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(d, 0, sizeof(*d));
    d->disk = DISK_RAM;
    d->disk_bytes = DEMO_DISK_DEFAULT;
    d->trace = true;
    *given = NULL;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_DISK:
            if (strcmp(optarg, "ram") == 0)
                d->disk = DISK_RAM;
            else if (strcmp(optarg, "file") == 0)
                d->disk = DISK_FILE;
            else
                return cli_usage_error(&demo_cmd, "--disk wants ram or file, not '%s'", optarg);
            break;
        case OPT_SIZE:
            if (!cli_parse_bytes(optarg, &d->disk_bytes) || d->disk_bytes < 1024 * 1024 ||
                d->disk_bytes > (64ull << 20) || d->disk_bytes % 4096)
                return cli_usage_error(&demo_cmd, "--size wants 1M to 64M in 4K steps, not '%s'",
                                       optarg);
            break;
        case OPT_NOTRACE:
            d->trace = false;
            break;
        case OPT_BACKEND:
            *given = optarg;
            break;
        case 'h':
            cmd_demo_usage(stdout);
            return VUF_EXIT_OK;
        default:
            return cli_option_error(&demo_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(&demo_cmd, "unexpected argument '%s'", argv[optind]);
    return DEMO_RUN;
}

static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL); /* stdout closed (| head) */
}

/* The private temp dir in g_dir, and the names of everything in it. */
static bool make_temp_dir(struct demo *d)
{
    const char *tmp = getenv("TMPDIR");
    char dir[sizeof(g_dir)];
    sigset_t all, old;

    /* Socket paths are short (sun_path): a long TMPDIR is not used. */
    if (!tmp || !*tmp || strlen(tmp) > 80)
        tmp = "/tmp";
    snprintf(dir, sizeof(dir), "%s/vuf-demo.XXXXXX", tmp);
    /* The signal handler must see the dir either not made or recorded. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (!mkdtemp(dir)) {
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        fprintf(stderr, "vuf demo: cannot make a temp dir in %s: %s\n", tmp, strerror(errno));
        return false;
    }
    snprintf(g_dir, sizeof(g_dir), "%s", dir);
    g_have_dir = 1;
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    for (int i = 0; i < 2; i++) {
        d->be[i].name = i ? "B" : "A";
        d->be[i].slot = i;
        snprintf(d->be[i].sock, sizeof(d->be[i].sock), "%s/backend-%c.sock", g_dir, 'a' + i);
        snprintf(d->be[i].log, sizeof(d->be[i].log), "%s/backend-%c.log", g_dir, 'a' + i);
        add_file(d->be[i].sock);
        add_file(d->be[i].log);
    }
    snprintf(d->disk_path, sizeof(d->disk_path), "%s/disk.img", g_dir);
    add_file(d->disk_path);
    return true;
}

static void print_banner(const struct demo *d)
{
    printf("vuf demo: a vhost-user-blk device's life cycle, vuf as the VMM\n");
    printf("    back-end binary: %s\n", d->bin);
    printf("    temp dir:        %s\n", g_dir);
    printf("    disk:            %s, %" PRIu64 " bytes%s\n",
           d->disk == DISK_RAM ? "RAM" : "file disk.img", d->disk_bytes,
           d->disk == DISK_RAM ? " (carried in the device state: --state-includes-ram)"
                               : " (shared by both back-ends)");
    if (d->trace)
        printf("    message lines: '-> NAME flags, payload' sent by the front-end, '<- reply'\n"
               "    on the same line; flags 0x1 = protocol version 1, 0x9 = also NEED_REPLY\n"
               "    (REPLY_ACK: the back-end acks each such request)\n");
}

/* --disk file: the disk image both back-ends share. */
static bool make_disk_file(const struct demo *d)
{
    int fd = open(d->disk_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0 || ftruncate(fd, (off_t)d->disk_bytes) < 0) {
        fprintf(stderr, "vuf demo: %s: %s\n", d->disk_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return false;
    }
    close(fd);
    return true;
}

/* Always: stop what still runs, remove the files and the dir; then the
 * verdict. The exit code. */
static int finish(struct demo *d, bool ok)
{
    bool dir_removed;

    for (int i = 0; i < 2; i++)
        if (d->be[i].pid > 0)
            stop_backend(&d->be[i]);
    kill_and_clean();
    dir_removed = access(g_dir, F_OK) != 0;
    if (ok) {
        d->checks++;
        printf("    check: temp dir removed: %s\n", dir_removed ? "ok" : "FAILED");
        if (!dir_removed) {
            d->failed++;
            ok = false;
        }
    } else if (!dir_removed) {
        fprintf(stderr, "vuf demo: could not remove %s\n", g_dir);
    }

    if (ok && d->failed == 0) {
        printf("\nvuf demo: PASSED: %d steps, %u checks, %" PRId64 " ms\n", d->step, d->checks,
               now_ms() - d->t0);
        return VUF_EXIT_OK;
    }
    printf("\nvuf demo: FAILED at step %d (%u of %u checks failed)\n", d->step, d->failed,
           d->checks);
    return VUF_EXIT_FAIL;
}

int cmd_demo(int argc, char **argv)
{
    const char *given;
    struct demo d;
    bool ok;
    int r = parse_demo_args(argc, argv, &d, &given);

    if (r != DEMO_RUN)
        return r;
    d.bin = find_backend(&d, given);
    if (!d.bin) {
        fprintf(stderr,
                "vuf demo: cannot find the vuf-backend-blk binary%s%s; build it "
                "(ninja) or give --backend PATH or $VUF_BACKEND_BLK\n",
                given ? " at " : "", given ? given : "");
        return VUF_EXIT_FAIL;
    }

    /* Line-buffered, so the log is whole up to the last line even if a
     * signal ends us. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    install_signals();
    if (!make_temp_dir(&d))
        return VUF_EXIT_FAIL;
    print_banner(&d);
    if (d.disk == DISK_FILE && !make_disk_file(&d)) {
        kill_and_clean();
        return VUF_EXIT_FAIL;
    }

    vuf_log_set(demo_log, &d, VUF_LOG_DEBUG);
    d.t0 = now_ms();
    ok = run_demo(&d);
    flush_trace();
    vuf_log_set(NULL, NULL, VUF_LOG_WARN);
    return finish(&d, ok);
}
