/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"

int tu_befx_setup(void **state, const char *tag)
{
    static unsigned instance;
    struct tu_befx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    f->dir = tu_mkdtemp(tag);
    if (!f->dir) {
        free(f);
        return -1;
    }
    snprintf(f->sock, sizeof(f->sock), "%s/be.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/be.log", f->dir);
    snprintf(f->disk, sizeof(f->disk), "%s/disk.img", f->dir);
    snprintf(f->prefix, sizeof(f->prefix), "%s-%d-%u", tag, (int)getpid(), instance++);
    *state = f;
    return 0;
}

int tu_befx_teardown(void **state)
{
    struct tu_befx *f = *state;

    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    tu_testpmd_cleanup(f->prefix);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

void tu_spawn_wait_file(struct tu_proc *p, char *const argv[], const char *log, const char *sock)
{
    int r = tu_spawn(p, argv, log);

    assert_int_equal(r, 0);
    r = tu_wait_socket_file(p, sock, TU_START_MS);
    if (r) {
        tu_dump_log(p);
        fprintf(stderr, "%s did not create %s: %s\n", argv[0], sock, strerror(-r));
    }
    assert_int_equal(r, 0);
}

void tu_spawn_wait_files(struct tu_proc *p, char *const argv[], const char *log, const char *sock,
                         const char *ctl, const char *name)
{
    int r;

    assert_int_equal(tu_spawn(p, argv, log), 0);
    r = tu_wait_socket_file(p, sock, TU_START_MS);
    if (r == 0)
        r = tu_wait_socket_file(p, ctl, TU_START_MS);
    if (r) {
        tu_dump_log(p);
        fail_msg("%s did not come up: %s", name, strerror(-r));
    }
}

void tu_ctl_command(int *fd, const char *path, const char *cmd, char *ans, size_t cap,
                    int timeout_ms)
{
    char line[256];
    int64_t end = tu_now_ms() + timeout_ms;
    size_t have = 0, n;

    if (*fd < 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        assert_true(strlen(path) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, path, strlen(path) + 1);
        *fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(*fd >= 0);
        assert_int_equal(connect(*fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    }
    n = (size_t)snprintf(line, sizeof(line), "%s\n", cmd);
    assert_true(n < sizeof(line));
    assert_int_equal(send(*fd, line, n, MSG_NOSIGNAL), (ssize_t)n);
    while (have + 1 < cap) {
        struct pollfd p = {.fd = *fd, .events = POLLIN};
        int64_t left = end - tu_now_ms();

        if (left <= 0)
            fail_msg("control command '%s': no answer in %d ms", cmd, timeout_ms);
        assert_int_equal(poll(&p, 1, (int)left), 1);
        assert_int_equal(read(*fd, ans + have, 1), 1);
        if (ans[have] == '\n')
            break;
        have++;
    }
    ans[have] = '\0';
}

/* qsd's --blockdev and --export values for a file export. */
static void qsd_file_opts(char blockdev[400], char exp[600], const char *disk, unsigned num_queues,
                          const char *sock)
{
    snprintf(blockdev, 400, "driver=file,filename=%s,node-name=f0", disk);
    snprintf(exp, 600,
             "type=vhost-user-blk,id=exp0,node-name=f0,addr.type=unix,addr.path=%s,"
             "writable=on,num-queues=%u",
             sock, num_queues);
}

void tu_start_qsd_file(struct tu_proc *p, const char *disk, unsigned num_queues, const char *sock,
                       const char *log)
{
    char blockdev[400], exp[600];
    char *argv[] = {TU_QSD, "--blockdev", blockdev, "--export", exp, NULL};

    qsd_file_opts(blockdev, exp, disk, num_queues, sock);
    tu_spawn_wait_file(p, argv, log, sock);
}

int tu_make_disk(const char *path, uint64_t bytes)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
    return fd;
}

void tu_qsd_up(struct tu_qsd *q, const char *tag, uint64_t bytes, unsigned num_queues)
{
    memset(q, 0, sizeof(*q));
    q->proc.pid = -1;
    q->disk_fd = -1;
    if (!tu_backend_installed(TU_QSD, "qemu-system-common"))
        fail();
    q->dir = tu_mkdtemp(tag);
    assert_non_null(q->dir);
    snprintf(q->disk, sizeof(q->disk), "%s/disk.img", q->dir);
    snprintf(q->sock, sizeof(q->sock), "%s/qsd.sock", q->dir);
    snprintf(q->log, sizeof(q->log), "%s/qsd.log", q->dir);
    q->disk_fd = tu_make_disk(q->disk, bytes);
    tu_start_qsd_file(&q->proc, q->disk, num_queues, q->sock, q->log);
}

void tu_qsd_down(struct tu_qsd *q)
{
    tu_stop_clean(&q->proc, q->sock);
    if (q->disk_fd >= 0)
        close(q->disk_fd);
    q->disk_fd = -1;
    tu_rmtree(q->dir);
    q->dir = NULL;
}

void tu_spawn_qsd_file_after(struct tu_proc *p, int delay_ms, const char *disk, unsigned num_queues,
                             const char *sock, const char *log)
{
    char blockdev[400], exp[600], script[64];
    /* The arguments reach qsd as "$0" "$@": no quoting of paths. */
    char *argv[] = {"/bin/sh", "-c", script, TU_QSD, "--blockdev", blockdev, "--export", exp, NULL};

    snprintf(script, sizeof(script), "sleep %d.%03d && exec \"$0\" \"$@\"", delay_ms / 1000,
             delay_ms % 1000);
    qsd_file_opts(blockdev, exp, disk, num_queues, sock);
    assert_int_equal(tu_spawn(p, argv, log), 0);
}

const char *tu_testpmd_path(void)
{
    const char *path = tu_which("dpdk-testpmd");

    if (!path)
        fprintf(stderr, "MISSING: dpdk-testpmd is not installed (scripts/setup.sh installs it: "
                        "apt-get install dpdk-dev)\n");
    return path;
}

/* dpdk-testpmd with its output to `log`; `cmd_fd` >= 0: interactive, its
 * commands read from that fd. */
static void start_testpmd(struct tu_proc *p, const char *prefix, unsigned pairs, const char *sock,
                          const char *log, int cmd_fd)
{
    const char *path = tu_testpmd_path();
    char vdev[400], rxq[32], txq[32];
    char *argv[24] = {NULL,
                      "-l",
                      "0,1",
                      "--no-huge",
                      "-m",
                      "1024",
                      "--no-pci",
                      "--no-shconf",
                      "--file-prefix",
                      (char *)prefix,
                      "--vdev",
                      vdev,
                      "--",
                      "--total-num-mbufs=16384",
                      "--forward-mode=macswap",
                      "--nb-cores=1",
                      txq};
    int n = 17, r;
    int64_t end;

    /* Non-interactive: forward at once, with --stats-period (see
     * backends.h); interactive: wait for "start". */
    if (cmd_fd < 0) {
        argv[n++] = "-a";
        argv[n++] = "--stats-period=3600";
    } else {
        argv[n++] = "-i";
    }
    /* With several pairs, one forwarding queue per pair (testpmd's default
     * is one). */
    if (pairs > 1)
        argv[n++] = rxq;
    if (!path)
        fail();
    argv[0] = (char *)path;
    snprintf(vdev, sizeof(vdev), "net_vhost0,iface=%s,queues=%u", sock, pairs);
    snprintf(rxq, sizeof(rxq), "--rxq=%u", pairs);
    snprintf(txq, sizeof(txq), "--txq=%u", pairs);
    assert_int_equal(tu_spawn_stdin(p, argv, log, cmd_fd), 0);
    r = tu_wait_socket_file(p, sock, TU_START_MS);
    if (r == -ESRCH) {
        tu_dump_log(p);
        fail_msg("dpdk-testpmd exited before creating %s (its log is above)", sock);
    }
    if (r) {
        tu_dump_log(p);
        fail_msg("dpdk-testpmd did not create %s: %s", sock, strerror(-r));
    }
    if (cmd_fd >= 0)
        return;
    /* Its socket is up well before it forwards (0.2 s idle, seconds on a
     * loaded machine), and when forwarding starts it frees whatever the
     * guest sent until then (it empties its RX queues first). It prints
     * its burst size right after that. */
    end = tu_now_ms() + TU_START_MS;
    while (!tu_log_has(log, "packets/burst=")) {
        siginfo_t si = {0};

        /* WNOWAIT: a testpmd that died stays for tu_stop() to reap. */
        if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid) {
            tu_dump_log(p);
            fail_msg("dpdk-testpmd exited before it forwarded (its log is above)");
        }
        if (tu_now_ms() > end) {
            tu_dump_log(p);
            fail_msg("dpdk-testpmd did not start forwarding in %d ms", TU_START_MS);
        }
        tu_sleep_ms(5);
    }
}

void tu_start_testpmd(struct tu_proc *p, const char *prefix, unsigned pairs, const char *sock,
                      const char *log)
{
    start_testpmd(p, prefix, pairs, sock, log, -1);
}

int tu_start_testpmd_held(struct tu_proc *p, const char *prefix, unsigned pairs, const char *sock,
                          const char *log)
{
    int fds[2];

    int64_t end;

    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    start_testpmd(p, prefix, pairs, sock, log, fds[0]);
    close(fds[0]);
    /* Until it prompts it is still starting (and answered no vhost-user
     * message here before "start"): the front-end must reach a testpmd
     * that serves the protocol but does not forward yet. */
    end = tu_now_ms() + TU_START_MS;
    while (!tu_log_has(log, "testpmd> ") && tu_now_ms() < end)
        tu_sleep_ms(10);
    if (!tu_log_has(log, "testpmd> ")) {
        tu_dump_log(p);
        fail_msg("dpdk-testpmd -i did not prompt in %d ms", TU_START_MS);
    }
    return fds[1];
}

void tu_testpmd_cleanup(const char *prefix)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    char path[512];

    if (getuid() == 0)
        snprintf(path, sizeof(path), "/var/run/dpdk/%s", prefix);
    else
        snprintf(path, sizeof(path), "%s/dpdk/%s", xdg && *xdg ? xdg : "/tmp", prefix);
    rmdir(path);
}

void tu_start_virtiofsd(struct tu_proc *p, const char *share, const char *sock, const char *log)
{
    char sockopt[320], srcopt[320];
    char *argv[] = {TU_VIRTIOFSD, sockopt, "-o", srcopt, NULL};

    snprintf(sockopt, sizeof(sockopt), "--socket-path=%s", sock);
    snprintf(srcopt, sizeof(srcopt), "source=%s", share);
    tu_spawn_wait_file(p, argv, log, sock);
}

void tu_stop_clean(struct tu_proc *p, const char *sock)
{
    int st = tu_stop(p);
    char how[96];

    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        tu_dump_log(p);
        fail_msg("back-end ended with %s, want exit 0", tu_status_str(p, st, how, sizeof(how)));
    }
    /* It removes its socket on the way out. */
    assert_int_not_equal(access(sock, F_OK), 0);
    if (tu_log_has(p->log_path, "Sanitizer") || tu_log_has(p->log_path, "runtime error")) {
        tu_dump_log(p);
        fail_msg("sanitizer report in the back-end's log");
    }
}

void tu_assert_exits_zero(struct tu_proc *p, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;
    bool zombie = false;
    char path[64], st[512];
    int status;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->pid);
    while (!zombie && tu_now_ms() < end) {
        FILE *fp = fopen(path, "re");
        char *rp;

        if (fp && fgets(st, sizeof(st), fp) && (rp = strrchr(st, ')')) && rp[1] == ' ' &&
            rp[2] == 'Z')
            zombie = true;
        if (fp)
            fclose(fp);
        if (!zombie)
            tu_sleep_ms(5);
    }
    if (!zombie) {
        tu_dump_log(p);
        fail_msg("%s still running %d ms after its connection ended", p->log_path, timeout_ms);
    }
    status = tu_stop(p);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}
