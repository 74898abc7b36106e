/* SPDX-License-Identifier: MIT */
/*
 * vuf-soak: endurance and scale runs of the front-end against real
 * back-end processes (docs/soak.md has the numbers and the commands).
 *
 *   vuf-soak cycles --backend ref|qsd [--cycles N] [--every N] ...
 *     N full life cycles of one device against ONE back-end process kept
 *     running (a back-end serves one front-end after another): connect,
 *     negotiate, activate, write + read back + compare on every queue,
 *     sleep, snapshot (when DEVICE_STATE is negotiated), wake, read back
 *     again, reset, destroy and free everything. Every N cycles this
 *     process's open fds, threads, mappings and RSS are sampled; the last
 *     sample must equal the first one after warm-up (RSS within a
 *     tolerance), else the verdict is "growing" and the exit status 1.
 *
 *   vuf-soak scale [--devices N] [--queues N] [--rounds N] ...
 *     N devices in this process against N reference back-end processes,
 *     a thread per device doing writes + verified reads on every queue;
 *     then one back-end is SIGKILLed: only its device may report the
 *     crash, and every other device must keep doing I/O. Exit 1 otherwise.
 *
 * The front-end side is the `vuf` tool's VMM (tools/session.c): guest
 * memory in a memfd, split virtqueues, the user-space virtio-blk driver.
 * Back-ends live in a private temp dir, die with this process
 * (PR_SET_PDEATHSIG) and are always reaped; a signal handler kills them and
 * removes the temp dir on SIGINT/SIGTERM.
 *
 * Exit status: 0 all checks held, 1 a check failed, 2 usage error.
 */
#include <dirent.h>
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cli_util.h"
#include "session.h"
#include "vuf/log.h"
#include "vuf/wire.h"

#ifndef VUF_SOAK_BACKEND_BLK
#define VUF_SOAK_BACKEND_BLK "vuf-backend-blk"
#endif
#define QSD_DEFAULT "/usr/bin/qemu-storage-daemon"

/* ASan's allocator maps shadow and quarantine memory as it goes: under it
 * mappings and RSS say nothing about the library, fds and threads still do. */
#if defined(__SANITIZE_ADDRESS__)
#define SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SOAK_ASAN 1
#endif
#endif
#ifndef SOAK_ASAN
#define SOAK_ASAN 0
#endif

#define EXIT_CHECK 1
#define EXIT_USAGE 2

#define TIMEOUT_MS 5000       /* connect wait, every reply, every completion */
#define START_MS 10000        /* a back-end creating its socket */
#define DISK_BYTES (4u << 20) /* per back-end */
#define IO_BYTES (64u * 1024) /* per queue and cycle/round */
#define MAX_CHILDREN 256

/* ---- what the signal handler may touch ------------------------------------- */

static volatile sig_atomic_t g_pid[MAX_CHILDREN];
static char g_file[2 * MAX_CHILDREN + 1][128];
static volatile sig_atomic_t g_nfile;
static char g_dir[64];
static volatile sig_atomic_t g_have_dir;

static void kill_and_clean(void)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        pid_t pid = (pid_t)g_pid[i];

        if (pid > 0) {
            kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
            g_pid[i] = 0;
        }
    }
    for (int i = 0; i < g_nfile; i++)
        unlink(g_file[i]);
    g_nfile = 0;
    if (g_have_dir)
        rmdir(g_dir);
    g_have_dir = 0;
}

static void on_signal(int sig)
{
    static const char msg[] = "\nvuf-soak: interrupted; back-ends killed, temp dir removed\n";
    ssize_t w;

    kill_and_clean();
    w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    _exit(128 + sig);
}

/* A path in the temp dir, removed at the end (and by the signal handler). */
static const char *temp_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *temp_path(const char *fmt, ...)
{
    char name[64];
    va_list ap;
    int i = g_nfile;

    if (i >= (int)(sizeof(g_file) / sizeof(g_file[0])))
        return NULL;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    snprintf(g_file[i], sizeof(g_file[i]), "%s/%s", g_dir, name);
    g_nfile = i + 1;
    return g_file[i];
}

static int make_temp_dir(void)
{
    struct sigaction sa = {.sa_handler = on_signal};

    snprintf(g_dir, sizeof(g_dir), "/tmp/vuf-soak.XXXXXX");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "vuf-soak: mkdtemp: %s\n", strerror(errno));
        return -errno;
    }
    g_have_dir = 1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    atexit(kill_and_clean);
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- back-end processes ------------------------------------------------------ */

struct child {
    int slot; /* index into g_pid */
    pid_t pid;
    const char *sock;
    const char *log;
};

static void dump_log(const struct child *c)
{
    char buf[4096];
    FILE *f = fopen(c->log, "re");
    size_t n;

    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", c->log);
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end of %s ----\n", c->log);
    fclose(f);
}

/* fork + exec argv with output to c->log, then wait for c->sock to appear.
 * 0, or -1 with the reason (and the log) on stderr. */
static int spawn_wait(struct child *c, char *const argv[])
{
    sigset_t all, old;
    pid_t parent = getpid(), pid;
    int fd = open(c->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int64_t end;

    if (fd < 0) {
        fprintf(stderr, "vuf-soak: %s: %s\n", c->log, strerror(errno));
        return -1;
    }
    /* No signal between fork and recording the pid. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = fork();
    if (pid == 0) {
        sigset_t none;

        /* Even if this process is SIGKILLed, the back-end goes too. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid > 0) {
        c->pid = pid;
        g_pid[c->slot] = pid;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(fd);
    if (pid < 0) {
        fprintf(stderr, "vuf-soak: fork: %s\n", strerror(errno));
        return -1;
    }
    for (end = now_ms() + START_MS;;) {
        struct stat st;
        int status;

        if (waitpid(pid, &status, WNOHANG) == pid) {
            c->pid = 0;
            g_pid[c->slot] = 0;
            fprintf(stderr, "vuf-soak: %s exited at start (status 0x%x)\n", argv[0], status);
            dump_log(c);
            return -1;
        }
        if (stat(c->sock, &st) == 0 && S_ISSOCK(st.st_mode))
            return 0;
        if (now_ms() > end) {
            fprintf(stderr, "vuf-soak: %s: no socket %s after %d ms\n", argv[0], c->sock, START_MS);
            dump_log(c);
            return -1;
        }
        poll(NULL, 0, 2);
    }
}

/* SIGTERM (or `sig`), up to 3 s, then SIGKILL; always reaped. The wait
 * status, or -1 if it had to be killed. */
static int stop_child(struct child *c, int sig)
{
    int64_t end = now_ms() + 3000;
    int status = -1;

    if (c->pid <= 0)
        return -1;
    kill(c->pid, sig);
    for (;;) {
        pid_t r = waitpid(c->pid, &status, WNOHANG);

        if (r == c->pid)
            break;
        if (r < 0 && errno != EINTR) {
            status = -1;
            break;
        }
        if (now_ms() > end) {
            kill(c->pid, SIGKILL);
            while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
                ;
            status = -1;
            break;
        }
        poll(NULL, 0, 2);
    }
    c->pid = 0;
    g_pid[c->slot] = 0;
    return status;
}

static const char *backend_bin(void)
{
    const char *e = getenv("VUF_BACKEND_BLK");

    return e && *e ? e : VUF_SOAK_BACKEND_BLK;
}

static int start_ref(struct child *c, unsigned queues, uint64_t disk_bytes)
{
    char sockarg[160], ramarg[48], qarg[32];
    char *argv[] = {(char *)backend_bin(), sockarg, ramarg, qarg, NULL};

    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", c->sock);
    snprintf(ramarg, sizeof(ramarg), "--ram=%" PRIu64, disk_bytes);
    snprintf(qarg, sizeof(qarg), "--num-queues=%u", queues);
    return spawn_wait(c, argv);
}

static int start_qsd(struct child *c, const char *qsd, const char *disk, unsigned queues)
{
    char blockdev[200], exp[300];
    char *argv[] = {(char *)qsd, "--blockdev", blockdev, "--export", exp, NULL};
    int fd = open(disk, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0 || ftruncate(fd, DISK_BYTES) < 0) {
        fprintf(stderr, "vuf-soak: disk %s: %s\n", disk, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    snprintf(blockdev, sizeof(blockdev), "driver=file,filename=%s,node-name=f0", disk);
    snprintf(exp, sizeof(exp),
             "type=vhost-user-blk,id=exp0,node-name=f0,addr.type=unix,addr.path=%s,"
             "writable=on,num-queues=%u",
             c->sock, queues);
    return spawn_wait(c, argv);
}

/* ---- process samples ----------------------------------------------------------- */

struct sample {
    unsigned cycle;
    long fds, threads, maps, rss_kib;
    long be_fds, be_rss_kib; /* the back-end process (information only) */
};

static long count_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static long status_field(const char *path, const char *key)
{
    char line[256];
    size_t kl = strlen(key);
    FILE *f = fopen(path, "re");
    long v = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static long count_lines(const char *path)
{
    FILE *f = fopen(path, "re");
    long n = 0;
    int ch;

    if (!f)
        return -1;
    while ((ch = getc(f)) != EOF)
        if (ch == '\n')
            n++;
    fclose(f);
    return n;
}

static void take_sample(struct sample *s, unsigned cycle, pid_t be)
{
    char p[64];

    s->cycle = cycle;
    /* opendir's own fd is in the listing: not one of ours. */
    s->fds = count_dir("/proc/self/fd") - 1;
    s->threads = status_field("/proc/self/status", "Threads");
    s->maps = count_lines("/proc/self/maps");
    s->rss_kib = status_field("/proc/self/status", "VmRSS");
    s->be_fds = s->be_rss_kib = -1;
    if (be > 0) {
        snprintf(p, sizeof(p), "/proc/%d/fd", (int)be);
        s->be_fds = count_dir(p);
        snprintf(p, sizeof(p), "/proc/%d/status", (int)be);
        s->be_rss_kib = status_field(p, "VmRSS");
    }
}

static json_object *sample_json(const struct sample *s)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "cycle", json_object_new_int64(s->cycle));
    json_object_object_add(o, "fds", json_object_new_int64(s->fds));
    json_object_object_add(o, "threads", json_object_new_int64(s->threads));
    json_object_object_add(o, "maps", json_object_new_int64(s->maps));
    json_object_object_add(o, "rss_kib", json_object_new_int64(s->rss_kib));
    if (s->be_fds >= 0) {
        json_object_object_add(o, "backend_fds", json_object_new_int64(s->be_fds));
        json_object_object_add(o, "backend_rss_kib", json_object_new_int64(s->be_rss_kib));
    }
    return o;
}

/* Raise the soft fd limit to the hard one: the scale run holds ~20 fds per
 * device. Returns the new soft limit. */
static long raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? LONG_MAX : (long)rl.rlim_cur;
}

/* ---- I/O with verification ------------------------------------------------------- */

struct io_bufs {
    uint8_t *w, *r;
};

static int io_bufs_new(struct io_bufs *b)
{
    b->w = malloc(IO_BYTES);
    b->r = malloc(IO_BYTES);
    return b->w && b->r ? 0 : -ENOMEM;
}

static void io_bufs_free(struct io_bufs *b)
{
    free(b->w);
    free(b->r);
}

/* Read queue qi's area back and compare it with pattern `seed`. */
static int verify(struct ts_session *s, struct io_bufs *b, unsigned qi, uint64_t seed)
{
    uint64_t off = (uint64_t)qi * IO_BYTES;
    size_t at;
    int r;

    memset(b->r, 0, IO_BYTES);
    r = ts_read(s, qi, off, b->r, IO_BYTES);
    if (r < 0)
        return r;
    at = ts_pattern_check(seed, off, b->r, IO_BYTES);
    if (at != IO_BYTES) {
        s->failed = "compare (read back differs from what was written)";
        fprintf(stderr, "vuf-soak: queue %u: byte %zu of the read back differs\n", qi, at);
        return -EIO;
    }
    return 0;
}

/* Write pattern `seed` to queue qi's area, then read it back and compare. */
static int write_verify(struct ts_session *s, struct io_bufs *b, unsigned qi, uint64_t seed)
{
    uint64_t off = (uint64_t)qi * IO_BYTES;
    int r;

    ts_pattern_fill(seed, off, b->w, IO_BYTES);
    r = ts_write(s, qi, off, b->w, IO_BYTES);
    return r < 0 ? r : verify(s, b, qi, seed);
}

static void session_opts(struct ts_opts *o, unsigned queues)
{
    memset(o, 0, sizeof(*o));
    o->timeout_ms = TIMEOUT_MS;
    o->queues = queues;
    o->queue_size = 64;
    o->nreqs = 8;
    o->max_data = 16384;
}

/* ---- cycles ------------------------------------------------------------------------ */

struct cycles_args {
    const char *backend; /* "ref" or "qsd" */
    const char *qsd;
    unsigned cycles, every, queues;
    long rss_tolerance_kib;
    bool json;
    bool leak_fd; /* test hook: leak one fd per cycle, so the verdict must
                   * say "growing" (the check is not vacuous) */
};

struct cycles_run {
    struct cycles_args a;
    struct child be;
    pid_t be_pid; /* for the report: be.pid is 0 once it is stopped */
    struct io_bufs b;
    bool snapshot; /* DEVICE_STATE negotiated: the cycle snapshots */
    int snap_checked;
    size_t snap_bytes;
    struct sample *smp;
    unsigned nsmp;
};

/* One full life cycle; on failure, the step and error on stderr. */
static int one_cycle(struct cycles_run *k, unsigned cycle)
{
    struct ts_opts o;
    struct ts_session s;
    int r;

    session_opts(&o, k->a.queues);
    ts_init(&s, &o);
    r = ts_start(&s, k->be.sock);
    for (unsigned q = 0; r == 0 && q < s.nq; q++)
        r = write_verify(&s, &k->b, q, (uint64_t)cycle * 64 + q + 1);
    if (r == 0)
        r = ts_sleep(&s);
    if (r == 0) {
        bool offered = (s.protocol & VUF_PROTO_MASK(DEVICE_STATE)) != 0;

        if (k->snap_checked < 0)
            k->snapshot = offered;
        k->snap_checked = 1;
        if (offered != k->snapshot) {
            s.failed = "negotiation (DEVICE_STATE came and went between cycles)";
            r = -EPROTO;
        } else if (offered) {
            uint8_t *data = NULL;

            r = ts_snapshot(&s, &data, &k->snap_bytes);
            free(data);
        }
    }
    if (r == 0)
        r = ts_wake(&s);
    /* The data survived sleep (and snapshot) on the woken rings. */
    for (unsigned q = 0; r == 0 && q < s.nq; q++)
        r = verify(&s, &k->b, q, (uint64_t)cycle * 64 + q + 1);
    if (r == 0)
        r = ts_reset(&s);
    if (r < 0)
        fprintf(stderr, "vuf-soak: cycle %u: %s: %s\n", cycle, s.failed ? s.failed : "?",
                vuf_strerror(r));
    ts_close(&s);
    return r;
}

struct verdict {
    const struct sample *base, *last;
    bool flat;
    bool mem_judged;
    char why[256];
};

static void judge(const struct cycles_run *k, struct verdict *v)
{
    size_t n = 0;

    /* smp[0] is before the first cycle; smp[1], after the first `every`
     * cycles, is the warmed-up baseline (malloc arenas, the thread-stack
     * cache and the library's one-time state exist by then). */
    v->base = &k->smp[1];
    v->last = &k->smp[k->nsmp - 1];
    v->mem_judged = !SOAK_ASAN;
    v->why[0] = '\0';
#define GROW(field, name)                                                                       \
    if (v->last->field != v->base->field)                                                       \
        n += (size_t)snprintf(v->why + n, sizeof(v->why) - n, "%s%s %+ld", n ? ", " : "", name, \
                              v->last->field - v->base->field);
    GROW(fds, "fds");
    GROW(threads, "threads");
    if (v->mem_judged) {
        GROW(maps, "mappings");
        if (v->last->rss_kib - v->base->rss_kib > k->a.rss_tolerance_kib)
            n += (size_t)snprintf(v->why + n, sizeof(v->why) - n, "%sRSS %+ld KiB (> %ld)",
                                  n ? ", " : "", v->last->rss_kib - v->base->rss_kib,
                                  k->a.rss_tolerance_kib);
    }
#undef GROW
    v->flat = n == 0;
}

static void print_cycles(const struct cycles_run *k, const struct verdict *v, double secs)
{
    printf("# vuf-soak cycles: back-end %s (pid %d), %u cycles, %u queue(s), %u KiB written and "
           "read back per queue per cycle\n",
           k->a.backend, (int)k->be_pid, k->a.cycles, k->a.queues, IO_BYTES / 1024);
    printf("# snapshot step: %s\n", k->snapshot
                                        ? "done every cycle (DEVICE_STATE negotiated)"
                                        : "skipped: the back-end does not offer DEVICE_STATE");
    if (k->snapshot)
        printf("# device state per snapshot: %zu bytes\n", k->snap_bytes);
    printf("# %.1f s, %.1f ms per cycle\n", secs, secs * 1000.0 / k->a.cycles);
    printf("%8s %6s %8s %6s %9s %8s %12s\n", "cycle", "fds", "threads", "maps", "rss_kib", "be_fds",
           "be_rss_kib");
    for (unsigned i = 0; i < k->nsmp; i++) {
        const struct sample *s = &k->smp[i];

        printf("%8u %6ld %8ld %6ld %9ld %8ld %12ld\n", s->cycle, s->fds, s->threads, s->maps,
               s->rss_kib, s->be_fds, s->be_rss_kib);
    }
    printf("baseline: cycle %u (after warm-up); last: cycle %u\n", v->base->cycle, v->last->cycle);
    if (!v->mem_judged)
        printf("mappings and RSS not judged: built with AddressSanitizer, whose allocator maps "
               "and quarantines memory as it runs\n");
    printf(
        "rule: flat when fds, threads and mappings equal the baseline and RSS is at most %ld KiB "
        "above it\n",
        k->a.rss_tolerance_kib);
    printf("verdict: %s%s\n", v->flat ? "flat" : "GROWING: ", v->why);
}

static void json_cycles(const struct cycles_run *k, const struct verdict *v, double secs)
{
    json_object *o = json_object_new_object(), *arr = json_object_new_array();

    json_object_object_add(o, "mode", json_object_new_string("cycles"));
    json_object_object_add(o, "backend", json_object_new_string(k->a.backend));
    json_object_object_add(o, "cycles", json_object_new_int64(k->a.cycles));
    json_object_object_add(o, "every", json_object_new_int64(k->a.every));
    json_object_object_add(o, "queues", json_object_new_int64(k->a.queues));
    json_object_object_add(o, "snapshot", json_object_new_boolean(k->snapshot));
    json_object_object_add(o, "snapshot_bytes", json_object_new_int64((int64_t)k->snap_bytes));
    json_object_object_add(o, "seconds", json_object_new_double(secs));
    for (unsigned i = 0; i < k->nsmp; i++)
        json_object_array_add(arr, sample_json(&k->smp[i]));
    json_object_object_add(o, "samples", arr);
    json_object_object_add(o, "baseline_cycle", json_object_new_int64(v->base->cycle));
    json_object_object_add(o, "memory_judged", json_object_new_boolean(v->mem_judged));
    json_object_object_add(o, "rss_tolerance_kib", json_object_new_int64(k->a.rss_tolerance_kib));
    json_object_object_add(o, "flat", json_object_new_boolean(v->flat));
    json_object_object_add(o, "growth", json_object_new_string(v->why));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static int start_cycles_backend(struct cycles_run *k)
{
    k->be.slot = 0;
    k->be.sock = temp_path("%s.sock", k->a.backend);
    k->be.log = temp_path("%s.log", k->a.backend);
    if (strcmp(k->a.backend, "ref") == 0)
        return start_ref(&k->be, k->a.queues, DISK_BYTES);
    return start_qsd(&k->be, k->a.qsd, temp_path("disk.img"), k->a.queues);
}

static int run_cycles(const struct cycles_args *a)
{
    struct cycles_run k = {.a = *a, .snap_checked = -1};
    struct verdict v;
    int64_t t0;
    int r = 0, st;

    k.smp = calloc(a->cycles / a->every + 1, sizeof(*k.smp));
    if (!k.smp || io_bufs_new(&k.b) < 0 || start_cycles_backend(&k) < 0) {
        free(k.smp);
        io_bufs_free(&k.b);
        return EXIT_CHECK;
    }
    k.be_pid = k.be.pid;
    take_sample(&k.smp[k.nsmp++], 0, k.be.pid);
    t0 = now_ms();
    for (unsigned c = 1; c <= a->cycles && r == 0; c++) {
        r = one_cycle(&k, c);
        if (a->leak_fd && dup(STDERR_FILENO) < 0)
            r = -errno;
        if (r == 0 && c % a->every == 0)
            take_sample(&k.smp[k.nsmp++], c, k.be.pid);
    }
    st = stop_child(&k.be, SIGTERM);
    io_bufs_free(&k.b);
    if (r == 0 && !(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        fprintf(stderr, "vuf-soak: back-end %s did not exit cleanly (status 0x%x)\n", a->backend,
                st);
        dump_log(&k.be);
        r = -ECHILD;
    }
    if (r == 0) {
        double secs = (double)(now_ms() - t0) / 1000.0;

        judge(&k, &v);
        if (a->json)
            json_cycles(&k, &v, secs);
        else
            print_cycles(&k, &v, secs);
        r = v.flat ? 0 : -EOVERFLOW;
    }
    free(k.smp);
    return r == 0 ? 0 : EXIT_CHECK;
}

/* ---- scale ------------------------------------------------------------------------- */

#define SCALE_DISK_BYTES (1u << 20)

struct scale_args {
    unsigned devices, queues, rounds;
    bool json;
};

struct sdev {
    unsigned idx;
    struct child be;
    struct ts_session s;
    struct io_bufs b;
    pthread_t th;
    bool running;
    unsigned rounds, seed_base;
    int err;            /* first I/O error, 0 */
    uint64_t transfers; /* verified write + read pairs */
    uint64_t bytes;     /* bytes written + bytes read back */
    int done;           /* atomic: the thread finished */
    pthread_barrier_t *gate;
};

struct scale_run {
    struct scale_args a;
    struct sdev *d;
    unsigned victim;
    struct sample before, peak, after;
    int64_t spawn_ms, connect_ms, crash_ms;
    uint64_t transfers, bytes;
    unsigned others_crashed, others_io_ok, others_exit_ok, started;
    int victim_err;
};

static bool dev_crashed(struct sdev *d)
{
    return __atomic_load_n(&d->s.crashed, __ATOMIC_ACQUIRE) != 0;
}

static void *dev_io(void *p)
{
    struct sdev *d = p;

    /* Twice: between the two waits every I/O thread exists, so the main
     * thread's sample sees them all. */
    pthread_barrier_wait(d->gate);
    pthread_barrier_wait(d->gate);
    for (unsigned rd = 0; rd < d->rounds && d->err == 0; rd++)
        for (unsigned q = 0; q < d->s.nq && d->err == 0; q++) {
            uint64_t seed = ((uint64_t)d->idx << 32) | ((uint64_t)(d->seed_base + rd) << 8) | q;

            d->err = write_verify(&d->s, &d->b, q, seed);
            if (d->err == 0) {
                d->transfers++;
                d->bytes += 2ull * IO_BYTES;
            }
        }
    if (d->err)
        fprintf(stderr, "vuf-soak: device %u: %s: %s\n", d->idx, d->s.failed ? d->s.failed : "?",
                vuf_strerror(d->err));
    __atomic_store_n(&d->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void peak_of(struct sample *peak, const struct sample *s)
{
    if (s->fds > peak->fds)
        peak->fds = s->fds;
    if (s->threads > peak->threads)
        peak->threads = s->threads;
    if (s->maps > peak->maps)
        peak->maps = s->maps;
    if (s->rss_kib > peak->rss_kib)
        peak->rss_kib = s->rss_kib;
}

/* A thread per device (all but `skip`, or all with skip = devices) doing
 * `rounds` rounds of write + verify on every queue, sampling this process
 * while they run. Returns how many devices failed. */
static unsigned io_phase(struct scale_run *k, unsigned skip, unsigned seed_base)
{
    unsigned failed = 0, left, n = skip < k->a.devices ? k->a.devices - 1 : k->a.devices;
    pthread_barrier_t gate;

    if (pthread_barrier_init(&gate, NULL, n + 1) != 0)
        return n;
    for (unsigned i = 0; i < k->a.devices; i++) {
        struct sdev *d = &k->d[i];

        d->running = false;
        if (i == skip)
            continue;
        d->rounds = k->a.rounds;
        d->seed_base = seed_base;
        d->err = 0;
        d->done = 0;
        d->gate = &gate;
        if (pthread_create(&d->th, NULL, dev_io, d) != 0) {
            fprintf(stderr, "vuf-soak: device %u: pthread_create failed\n", i);
            /* The started threads would wait at the gate for it forever;
             * exit() still kills the back-ends (atexit). */
            exit(EXIT_CHECK);
        }
        d->running = true;
    }
    pthread_barrier_wait(&gate);
    {
        struct sample s;

        take_sample(&s, 0, 0);
        peak_of(&k->peak, &s);
    }
    pthread_barrier_wait(&gate);
    do {
        struct sample s;

        take_sample(&s, 0, 0);
        peak_of(&k->peak, &s);
        left = 0;
        for (unsigned i = 0; i < k->a.devices; i++)
            if (k->d[i].running && !__atomic_load_n(&k->d[i].done, __ATOMIC_ACQUIRE))
                left++;
        if (left)
            poll(NULL, 0, 20);
    } while (left);
    for (unsigned i = 0; i < k->a.devices; i++) {
        struct sdev *d = &k->d[i];

        if (i == skip)
            continue;
        if (d->running)
            pthread_join(d->th, NULL);
        if (d->err)
            failed++;
        k->transfers += d->transfers;
        k->bytes += d->bytes;
        d->transfers = d->bytes = 0;
    }
    pthread_barrier_destroy(&gate);
    return failed;
}

static int scale_setup(struct scale_run *k)
{
    int64_t t0 = now_ms();
    struct ts_opts o;

    for (unsigned i = 0; i < k->a.devices; i++) {
        struct sdev *d = &k->d[i];

        d->idx = i;
        d->be.slot = (int)i;
        d->be.sock = temp_path("be%u.sock", i);
        d->be.log = temp_path("be%u.log", i);
        if (io_bufs_new(&d->b) < 0 || start_ref(&d->be, k->a.queues, SCALE_DISK_BYTES) < 0)
            return -1;
    }
    k->spawn_ms = now_ms() - t0;
    t0 = now_ms();
    session_opts(&o, k->a.queues);
    for (unsigned i = 0; i < k->a.devices; i++) {
        struct sdev *d = &k->d[i];
        int r;

        ts_init(&d->s, &o);
        r = ts_start(&d->s, d->be.sock);
        if (r < 0) {
            fprintf(stderr, "vuf-soak: device %u: %s: %s\n", i, d->s.failed, vuf_strerror(r));
            return -1;
        }
        k->started = i + 1;
    }
    k->connect_ms = now_ms() - t0;
    return 0;
}

/* SIGKILL the victim's back-end and wait for its device's crash report. */
static int scale_crash(struct scale_run *k)
{
    struct sdev *v = &k->d[k->victim];
    int64_t t0 = now_ms(), end = t0 + TIMEOUT_MS;

    stop_child(&v->be, SIGKILL);
    while (!dev_crashed(v) && now_ms() < end)
        poll(NULL, 0, 1);
    if (!dev_crashed(v)) {
        fprintf(stderr, "vuf-soak: device %u: no crash report %d ms after its back-end died\n",
                k->victim, TIMEOUT_MS);
        return -1;
    }
    k->crash_ms = now_ms() - t0;
    return 0;
}

static unsigned count_others_crashed(struct scale_run *k)
{
    unsigned n = 0;

    for (unsigned i = 0; i < k->a.devices; i++)
        if (i != k->victim && dev_crashed(&k->d[i]))
            n++;
    return n;
}

static void scale_teardown(struct scale_run *k)
{
    for (unsigned i = 0; i < k->a.devices; i++) {
        struct sdev *d = &k->d[i];
        int st;

        if (i < k->started)
            ts_close(&d->s);
        io_bufs_free(&d->b);
        if (d->be.pid <= 0)
            continue;
        st = stop_child(&d->be, SIGTERM);
        if (st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
            k->others_exit_ok++;
        else {
            fprintf(stderr, "vuf-soak: back-end %u did not exit cleanly (status 0x%x)\n", i, st);
            dump_log(&d->be);
        }
    }
}

static bool scale_judge(const struct scale_run *k, unsigned fail1, unsigned fail2, char *why,
                        size_t cap)
{
    size_t n = 0;

#define WHY(cond, ...)                                                      \
    if (cond) {                                                             \
        n += (size_t)snprintf(why + n, cap - n, "%s", n ? "; " : "");       \
        n += (size_t)snprintf(why + n, cap > n ? cap - n : 0, __VA_ARGS__); \
    }
    WHY(fail1, "%u device(s) failed I/O before the crash", fail1);
    WHY(fail2, "%u other device(s) failed I/O after the crash", fail2);
    WHY(k->crash_ms < 0, "the crashed device reported no crash");
    WHY(k->others_crashed, "%u other device(s) reported a crash", k->others_crashed);
    WHY(k->crash_ms >= 0 && k->victim_err != -ECONNRESET,
        "the crashed device's I/O returned %d, want -ECONNRESET", k->victim_err);
    WHY(k->others_exit_ok != k->a.devices - 1, "%u of %u surviving back-ends exited cleanly",
        k->others_exit_ok, k->a.devices - 1);
    WHY(k->after.fds != k->before.fds, "fds after teardown %ld, before set-up %ld", k->after.fds,
        k->before.fds);
    WHY(k->after.threads != k->before.threads, "threads after teardown %ld, before %ld",
        k->after.threads, k->before.threads);
#undef WHY
    if (n == 0)
        snprintf(why, cap, "ok");
    return n == 0;
}

static void print_scale(const struct scale_run *k, long nofile, bool ok, const char *why)
{
    const struct scale_args *a = &k->a;

    printf("# vuf-soak scale: %u devices x %u queues in one process, %u reference back-end "
           "processes (--ram=%u), RLIMIT_NOFILE soft limit %ld\n",
           a->devices, a->queues, a->devices, SCALE_DISK_BYTES, nofile);
    printf("set-up: %u back-ends started in %" PRId64 " ms; %u devices connected, negotiated and "
           "activated in %" PRId64 " ms\n",
           a->devices, k->spawn_ms, k->started, k->connect_ms);
    printf("I/O: %u round(s) per phase, a thread per device; %" PRIu64
           " verified transfers (%u KiB written, read back, compared), %.1f MiB moved\n",
           a->rounds, k->transfers, IO_BYTES / 1024, (double)k->bytes / (1 << 20));
    printf("this process: before set-up fds %ld threads %ld maps %ld rss %ld KiB; at peak fds %ld "
           "threads %ld maps %ld rss %ld KiB\n",
           k->before.fds, k->before.threads, k->before.maps, k->before.rss_kib, k->peak.fds,
           k->peak.threads, k->peak.maps, k->peak.rss_kib);
    printf("crash: back-end of device %u SIGKILLed; crash reported after %" PRId64
           " ms; other devices reporting a crash: %u; other devices' I/O after it: %u/%u ok; "
           "the crashed device's next I/O: %s (%d)\n",
           k->victim, k->crash_ms, k->others_crashed, k->others_io_ok, a->devices - 1,
           vuf_strerror(k->victim_err), k->victim_err);
    printf("after teardown: fds %ld threads %ld; surviving back-ends exited cleanly: %u/%u\n",
           k->after.fds, k->after.threads, k->others_exit_ok, a->devices - 1);
    printf("verdict: %s\n", ok ? "ok" : why);
}

static void json_scale(const struct scale_run *k, long nofile, bool ok, const char *why)
{
    json_object *o = json_object_new_object(), *c = json_object_new_object();

    json_object_object_add(o, "mode", json_object_new_string("scale"));
    json_object_object_add(o, "devices", json_object_new_int64(k->a.devices));
    json_object_object_add(o, "queues", json_object_new_int64(k->a.queues));
    json_object_object_add(o, "rounds", json_object_new_int64(k->a.rounds));
    json_object_object_add(o, "nofile", json_object_new_int64(nofile));
    json_object_object_add(o, "spawn_ms", json_object_new_int64(k->spawn_ms));
    json_object_object_add(o, "connect_ms", json_object_new_int64(k->connect_ms));
    json_object_object_add(o, "transfers", json_object_new_int64((int64_t)k->transfers));
    json_object_object_add(o, "bytes", json_object_new_int64((int64_t)k->bytes));
    json_object_object_add(o, "before", sample_json(&k->before));
    json_object_object_add(o, "peak", sample_json(&k->peak));
    json_object_object_add(o, "after", sample_json(&k->after));
    json_object_object_add(c, "victim", json_object_new_int64(k->victim));
    json_object_object_add(c, "reported_ms", json_object_new_int64(k->crash_ms));
    json_object_object_add(c, "others_crashed", json_object_new_int64(k->others_crashed));
    json_object_object_add(c, "others_io_ok", json_object_new_int64(k->others_io_ok));
    json_object_object_add(c, "victim_io_errno", json_object_new_int64(k->victim_err));
    json_object_object_add(o, "crash", c);
    json_object_object_add(o, "backends_exit_ok", json_object_new_int64(k->others_exit_ok));
    json_object_object_add(o, "ok", json_object_new_boolean(ok));
    json_object_object_add(o, "verdict", json_object_new_string(why));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static int run_scale(const struct scale_args *a)
{
    struct scale_run k = {.a = *a, .victim = a->devices / 2, .crash_ms = -1};
    long nofile = raise_nofile();
    unsigned fail1 = 0, fail2 = 0;
    char why[512];
    bool ok;
    int r;

    k.d = calloc(a->devices, sizeof(*k.d));
    if (!k.d)
        return EXIT_CHECK;
    take_sample(&k.before, 0, 0);
    k.peak = k.before;
    r = scale_setup(&k);
    if (r == 0)
        fail1 = io_phase(&k, a->devices, 0);
    if (r == 0 && fail1 == 0)
        r = scale_crash(&k);
    if (r == 0 && fail1 == 0) {
        struct sdev *v = &k.d[k.victim];

        k.others_crashed = count_others_crashed(&k);
        fail2 = io_phase(&k, k.victim, a->rounds);
        k.others_io_ok = a->devices - 1 - fail2;
        if (count_others_crashed(&k) > k.others_crashed)
            k.others_crashed = count_others_crashed(&k);
        /* Its driver learns of the crash instead of waiting forever. */
        k.victim_err = write_verify(&v->s, &v->b, 0, 1);
    }
    scale_teardown(&k);
    take_sample(&k.after, 0, 0);
    ok = r == 0 && scale_judge(&k, fail1, fail2, why, sizeof(why));
    if (r != 0)
        snprintf(why, sizeof(why), "set-up or crash detection failed (see above)");
    if (a->json)
        json_scale(&k, nofile, ok, why);
    else
        print_scale(&k, nofile, ok, why);
    free(k.d);
    return ok ? 0 : EXIT_CHECK;
}

/* ---- command line ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vuf-soak cycles --backend ref|qsd [--cycles N] [--every N] [--queues N]\n"
            "                       [--rss-tolerance-kib N] [--qsd PATH] [--json]\n"
            "       vuf-soak scale [--devices N] [--queues N] [--rounds N] [--json]\n"
            "\n"
            "cycles: N (default 1000) full life cycles of one device against one back-end\n"
            "  process (connect, activate, write + read back, sleep, snapshot if DEVICE_STATE,\n"
            "  wake, read back, reset, destroy), sampling fds, threads, mappings and RSS every\n"
            "  --every (100) cycles; exit 1 unless the last sample equals the first after\n"
            "  warm-up (RSS within --rss-tolerance-kib, default 512). --queues default 2.\n"
            "  --leak-fd (a test of the check) leaks one fd per cycle.\n"
            "scale: --devices (64) devices with --queues (4) queues each against as many\n"
            "  reference back-ends, --rounds (4) rounds of verified I/O on every queue, then\n"
            "  one back-end is SIGKILLed: exit 1 unless only its device reports the crash and\n"
            "  every other device keeps doing I/O.\n"
            "The reference back-end is $VUF_BACKEND_BLK, else %s.\n"
            "Exit status: 0 ok, 1 a check failed, 2 usage error.\n",
            VUF_SOAK_BACKEND_BLK);
}

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "vuf-soak: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n");
    usage(stderr);
    return EXIT_USAGE;
}

enum {
    O_BACKEND = 1,
    O_CYCLES,
    O_EVERY,
    O_QUEUES,
    O_RSS,
    O_QSD,
    O_JSON,
    O_DEVICES,
    O_ROUNDS,
    O_LEAK_FD,
};

static const struct option long_opts[] = {
    {"backend", required_argument, NULL, O_BACKEND},
    {"cycles", required_argument, NULL, O_CYCLES},
    {"every", required_argument, NULL, O_EVERY},
    {"queues", required_argument, NULL, O_QUEUES},
    {"rss-tolerance-kib", required_argument, NULL, O_RSS},
    {"qsd", required_argument, NULL, O_QSD},
    {"json", no_argument, NULL, O_JSON},
    {"devices", required_argument, NULL, O_DEVICES},
    {"rounds", required_argument, NULL, O_ROUNDS},
    {"leak-fd", no_argument, NULL, O_LEAK_FD},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    struct cycles_args ca = {
        .qsd = QSD_DEFAULT, .cycles = 1000, .every = 100, .queues = 2, .rss_tolerance_kib = 512};
    struct scale_args sa = {.devices = 64, .queues = 4, .rounds = 4};
    bool scale;
    unsigned v;
    int c;

    if (argc < 2 || (strcmp(argv[1], "cycles") && strcmp(argv[1], "scale"))) {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            usage(stdout);
            return 0;
        }
        return bad("%s", "the first argument must be 'cycles' or 'scale'");
    }
    scale = strcmp(argv[1], "scale") == 0;
    optind = 2;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
        switch (c) {
        case O_BACKEND:
            if (strcmp(optarg, "ref") && strcmp(optarg, "qsd"))
                return bad("--backend %s: want ref or qsd", optarg);
            ca.backend = optarg;
            break;
        case O_CYCLES:
            if (!cli_parse_uint(optarg, 1, 10000000, &ca.cycles))
                return bad("--cycles %s: want 1..10000000", optarg);
            break;
        case O_EVERY:
            if (!cli_parse_uint(optarg, 1, 10000000, &ca.every))
                return bad("--every %s: want 1..10000000", optarg);
            break;
        case O_QUEUES:
            if (!cli_parse_uint(optarg, 1, 64, &v))
                return bad("--queues %s: want 1..64", optarg);
            ca.queues = sa.queues = v;
            break;
        case O_RSS:
            if (!cli_parse_uint(optarg, 0, 1u << 30, &v))
                return bad("--rss-tolerance-kib %s: want a number of KiB", optarg);
            ca.rss_tolerance_kib = v;
            break;
        case O_QSD:
            ca.qsd = optarg;
            break;
        case O_JSON:
            ca.json = sa.json = true;
            break;
        case O_DEVICES:
            if (!cli_parse_uint(optarg, 2, MAX_CHILDREN, &sa.devices))
                return bad("--devices %s: want 2..256", optarg);
            break;
        case O_ROUNDS:
            if (!cli_parse_uint(optarg, 1, 1000000, &sa.rounds))
                return bad("--rounds %s: want 1..1000000", optarg);
            break;
        case O_LEAK_FD:
            ca.leak_fd = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return bad("bad or incomplete option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return bad("unexpected argument %s", argv[optind]);
    if (!scale && !ca.backend)
        return bad("%s", "cycles needs --backend ref|qsd");
    if (!scale && (ca.cycles < 2 * ca.every || ca.cycles % ca.every))
        return bad("%s", "--cycles must be a multiple of --every and at least twice it (the "
                         "first sample is the warm-up baseline)");
    if (make_temp_dir() < 0)
        return EXIT_CHECK;
    /* The library's warnings (the crashed back-end's hang-up) go to stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    return scale ? run_scale(&sa) : run_cycles(&ca);
}
