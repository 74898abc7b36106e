/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define MAX_PROCS 32
static pid_t live[MAX_PROCS];
static bool hooks_installed;

int tu_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

char *tu_mkdtemp(const char *prefix)
{
    const char *tmp = getenv("TMPDIR");
    char *p;

    if (!tmp || !*tmp)
        tmp = "/tmp";
    if (asprintf(&p, "%s/%s.XXXXXX", tmp, prefix) < 0)
        return NULL;
    if (!mkdtemp(p)) {
        free(p);
        return NULL;
    }
    return p;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void tu_rmtree(char *path)
{
    if (!path)
        return;
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(path);
}

void tu_reap_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (live[i] > 0) {
            kill(-live[i], SIGKILL);
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
    }
}

static void on_signal(int sig)
{
    tu_reap_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_hooks(void)
{
    if (hooks_installed)
        return;
    hooks_installed = true;
    atexit(tu_reap_all);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGABRT, on_signal);
}

int tu_spawn(struct tu_proc *p, char *const argv[], const char *log_path)
{
    return tu_spawn_stdin(p, argv, log_path, -1);
}

int tu_spawn_stdin(struct tu_proc *p, char *const argv[], const char *log_path, int stdin_fd)
{
    int slot = -1;
    pid_t pid;

    install_hooks();
    for (int i = 0; i < MAX_PROCS; i++)
        if (live[i] == 0) {
            slot = i;
            break;
        }
    if (slot < 0)
        return -EAGAIN;
    snprintf(p->log_path, sizeof(p->log_path), "%s", log_path ? log_path : "/dev/null");
    p->stop_ms = -1;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        setpgid(0, 0);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
        int nul = stdin_fd >= 0 ? stdin_fd : open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            if (nul > 2)
                close(nul);
        }
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    live[slot] = pid;
    p->pid = pid;
    return 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static bool proc_alive(struct tu_proc *p)
{
    int st;
    if (p->pid <= 0)
        return false;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == p->pid) {
        for (int i = 0; i < MAX_PROCS; i++)
            if (live[i] == p->pid)
                live[i] = 0;
        p->pid = -1;
        return false;
    }
    return true;
}

int tu_wait_socket_file(struct tu_proc *p, const char *path, int timeout_ms)
{
    long end = now_ms() + timeout_ms;
    struct stat st;

    while (now_ms() < end) {
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            return 0;
        if (!proc_alive(p))
            return -ESRCH;
        usleep(2000);
    }
    return -ETIMEDOUT;
}

int tu_wait_socket(struct tu_proc *p, const char *path, int timeout_ms)
{
    long end = now_ms() + timeout_ms;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    while (now_ms() < end) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (r == 0)
            return 0;
        if (!proc_alive(p))
            return -ESRCH;
        usleep(2000);
    }
    return -ETIMEDOUT;
}

int tu_stop(struct tu_proc *p)
{
    return tu_stop_grace(p, TU_STOP_GRACE_MS);
}

int tu_stop_grace(struct tu_proc *p, int grace_ms)
{
    int64_t start = tu_now_ms();
    bool killed = true;
    int st = -1;

    if (p->pid <= 0)
        return -1;
    kill(p->pid, SIGTERM);
    while (tu_now_ms() - start < grace_ms) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);

        if (r == p->pid) {
            killed = false;
            break;
        }
        usleep(10000);
    }
    if (killed) {
        fprintf(stderr, "tu_stop: pid %d (log %s) still running %d ms after SIGTERM: SIGKILL\n",
                (int)p->pid, p->log_path, grace_ms);
        kill(-p->pid, SIGKILL);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &st, 0);
    }
    p->stop_ms = (long)(tu_now_ms() - start);
    if (!killed && p->stop_ms > TU_STOP_SLOW_MS)
        fprintf(stderr,
                "tu_stop: slow exit: pid %d (log %s) took %ld ms after SIGTERM (not a failure "
                "by itself: its status is checked apart)\n",
                (int)p->pid, p->log_path, p->stop_ms);
    for (int i = 0; i < MAX_PROCS; i++)
        if (live[i] == p->pid)
            live[i] = 0;
    p->pid = -1;
    return st;
}

const char *tu_status_str(const struct tu_proc *p, int status, char *buf, size_t cap)
{
    if (status == -1)
        snprintf(buf, cap, "not reaped (no such process)");
    else if (WIFEXITED(status))
        snprintf(buf, cap, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && p->stop_ms >= 0)
        snprintf(buf, cap, "SIGKILLed after %ld ms (it did not exit on SIGTERM)", p->stop_ms);
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, cap, "status 0x%x", status);
    return buf;
}

void tu_dump_log(const struct tu_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    char line[512];

    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", p->log_path);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fclose(f);
}

bool tu_have_exe(const char *path)
{
    return access(path, X_OK) == 0;
}

bool tu_backend_installed(const char *path, const char *package)
{
    if (tu_have_exe(path))
        return true;
    fprintf(stderr,
            "MISSING: %s is not installed (scripts/setup.sh installs it: apt-get install %s)\n",
            path, package);
    return false;
}

const char *tu_built_exe(const char *var)
{
    const char *p = getenv(var);

    if (p && *p && tu_have_exe(p))
        return p;
    fprintf(stderr, "MISSING: %s %s%s (run the test through meson test, which sets it)\n", var,
            p && *p ? "does not name an executable: " : "is not set", p && *p ? p : "");
    return NULL;
}

const char *tu_which(const char *name)
{
    static char buf[1024];
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *c = strchr(path, ':');
        size_t n = c ? (size_t)(c - path) : strlen(path);
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, name);
        if (access(buf, X_OK) == 0)
            return buf;
        if (!c)
            break;
        path = c + 1;
    }
    return NULL;
}

int64_t tu_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tu_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void tu_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int tu_count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void *nothing(void *arg)
{
    return arg;
}

void tu_warm_threads(void)
{
    static bool warm;
    pthread_t t;

    if (warm)
        return;
    warm = true;
    if (pthread_create(&t, NULL, nothing, NULL) == 0)
        pthread_join(t, NULL);
}

int tu_threads_settle(int want)
{
    int64_t until = tu_now_ms() + 1000;
    int n;

    while ((n = tu_count_threads()) != want && tu_now_ms() < until)
        tu_sleep_ms(1);
    return n;
}

static void *later_main(void *arg)
{
    struct tu_later *l = arg;

    tu_sleep_ms(l->delay_ms);
    return (void *)(intptr_t)write(l->fd, l->text, strlen(l->text));
}

void tu_later_start(struct tu_later *l, int fd, int delay_ms, const char *text)
{
    l->fd = fd;
    l->delay_ms = delay_ms;
    l->text = text;
    assert_int_equal(pthread_create(&l->thread, NULL, later_main, l), 0);
}

long tu_later_join(struct tu_later *l)
{
    void *ret = NULL;

    assert_int_equal(pthread_join(l->thread, &ret), 0);
    return (long)(intptr_t)ret;
}

void tu_log_to_stderr(void *opaque, enum vuf_log_level level, const char *msg)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    (void)opaque;
    fprintf(stderr, "[vuf %s] %s\n", names[level & 3], msg);
}

bool tu_log_has(const char *path, const char *needle)
{
    char line[1024];
    bool found = false;
    FILE *fp = fopen(path, "re");

    if (!fp)
        return false;
    while (!found && fgets(line, sizeof(line), fp))
        found = strstr(line, needle) != NULL;
    fclose(fp);
    return found;
}

/* Append what *fd has to buf; closes *fd (and sets -1) at EOF or error. */
static void pump(int *fd, char *buf, size_t cap, size_t *len)
{
    char tmp[8192];
    ssize_t n = read(*fd, tmp, sizeof(tmp));

    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return;
    }
    if (*len + 1 < cap) {
        size_t k = (size_t)n;

        if (k > cap - 1 - *len)
            k = cap - 1 - *len;
        memcpy(buf + *len, tmp, k);
        *len += k;
        buf[*len] = '\0';
    }
}

void tu_run_capture(struct tu_run *r, const char *prog, const char *const *args, int deadline_ms)
{
    char *argv[40];
    int po[2], pe[2], n = 0;
    size_t ol = 0, el = 0;
    int64_t start = tu_now_ms();
    pid_t pid;

    r->status = -1;
    r->elapsed_ms = 0;
    r->out[0] = r->err[0] = '\0';
    argv[n++] = (char *)prog;
    while (args[n - 1] && n < 39) {
        argv[n] = (char *)args[n - 1];
        n++;
    }
    argv[n] = NULL;

    assert_int_equal(pipe2(po, O_CLOEXEC), 0);
    assert_int_equal(pipe2(pe, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(po[1], STDOUT_FILENO);
        dup2(pe[1], STDERR_FILENO);
        execv(prog, argv);
        fprintf(stderr, "exec %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    while (po[0] >= 0 || pe[0] >= 0) {
        struct pollfd p[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
        int64_t left = start + deadline_ms - tu_now_ms();

        if (left <= 0) {
            fprintf(stderr, "%s still running after %d ms: killed\n", prog, deadline_ms);
            kill(pid, SIGKILL);
            break;
        }
        if (poll(p, 2, (int)left) < 0 && errno != EINTR)
            break;
        if (po[0] >= 0 && p[0].revents)
            pump(&po[0], r->out, sizeof(r->out), &ol);
        if (pe[0] >= 0 && p[1].revents)
            pump(&pe[0], r->err, sizeof(r->err), &el);
    }
    if (po[0] >= 0)
        close(po[0]);
    if (pe[0] >= 0)
        close(pe[0]);
    while (waitpid(pid, &r->status, 0) < 0 && errno == EINTR)
        ;
    r->elapsed_ms = (long)(tu_now_ms() - start);
    if (r->err[0])
        fprintf(stderr, "[vuf stderr] %s", r->err);
}

int tu_exit_code(const struct tu_run *r)
{
    if (WIFEXITED(r->status))
        return WEXITSTATUS(r->status);
    return 128 + WTERMSIG(r->status);
}

struct tu_run *tu_run_vuf(const char *const *args, int deadline_ms)
{
    const char *tool = tu_built_exe("VUF_TOOL");
    struct tu_run *r;

    if (!tool)
        fail();
    r = malloc(sizeof(*r));
    assert_non_null(r);
    tu_run_capture(r, tool, args, deadline_ms);
    printf("%s", r->out);
    return r;
}
