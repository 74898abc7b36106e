/* SPDX-License-Identifier: MIT */
/* Real back-end processes for the integration tests: started with
 * tu_spawn() in a test's temp dir and waited for by socket FILE. Every
 * process started here is registered with testutil, so tu_reap_all() (also
 * run at exit and on SIGINT/SIGTERM/SIGABRT) kills and reaps it if the test
 * does not tu_stop() it first. */
#ifndef VUF_TEST_BACKENDS_H
#define VUF_TEST_BACKENDS_H

#include <stdint.h>

#include "testutil.h"

/* Paths of the system back-ends (Debian 12, QEMU 7.2). */
#define TU_QSD "/usr/bin/qemu-storage-daemon"
#define TU_VIRTIOFSD "/usr/lib/qemu/virtiofsd"

/* How long a back-end may take to create its socket. testpmd needs about
 * 1.3 s on an idle machine but took over 10 s with the two cores loaded
 * (its 1 GiB of --no-huge memory and mbuf pool are set up first); a back-end
 * that dies early is seen at once (-ESRCH), so only a hung start waits this
 * long. */
#define TU_START_MS 60000

/* A test's temp dir and the one back-end process in it. */
struct tu_befx {
    char *dir;
    char sock[256], log[300], disk[300]; /* dir/be.sock, be.log, disk.img */
    char prefix[64];                     /* "<tag>-<pid>-<n>": an EAL file prefix */
    struct tu_proc proc;
};

/* cmocka set-up: *state = a new tu_befx in the temp dir `tag`
 * (tu_mkdtemp). Returns 0, or -1 if that fails. */
int tu_befx_setup(void **state, const char *tag);

/* cmocka teardown: tu_stop() the process if it runs, remove the dir and
 * the EAL runtime dir of the prefix (tu_testpmd_cleanup), free. */
int tu_befx_teardown(void **state);

/*
 * tu_spawn(p, argv, log) (argv[0] is the program), then wait up to
 * TU_START_MS for the unix socket FILE `sock` to appear. No connection is
 * made: qsd serves one client at a time and virtiofsd exactly one, so a
 * probe connection would use one up or sit in the backlog. On failure the
 * process's log is printed and the test fails (cmocka assertion); the
 * process stays registered and is reaped by tu_stop()/tu_reap_all(). The
 * caller owns *p and stops it with tu_stop().
 */
void tu_spawn_wait_file(struct tu_proc *p, char *const argv[], const char *log, const char *sock);

/*
 * tu_spawn(p, argv, log), then wait up to TU_START_MS for two socket FILES:
 * `sock`, then `ctl` (the reference back-end's --socket-path and
 * --control). On failure the log is printed and the test fails with "<name>
 * did not come up: <error>". The caller owns *p and stops it with
 * tu_stop().
 */
void tu_spawn_wait_files(struct tu_proc *p, char *const argv[], const char *log, const char *sock,
                         const char *ctl, const char *name);

/*
 * One command on the reference back-end's control socket at `path`
 * (--control, backend/README.md): connects on first use (*fd < 0; the
 * caller keeps and closes *fd), sends "cmd\n" and reads the one-line answer
 * into ans (NUL-terminated, without the newline, cut at cap - 1 bytes).
 * Fails the test if the socket cannot be reached or no answer came within
 * timeout_ms.
 */
void tu_ctl_command(int *fd, const char *path, const char *cmd, char *ans, size_t cap,
                    int timeout_ms);

/*
 * qemu-storage-daemon exporting the existing raw file `disk` (node f0,
 * driver=file) as a writable vhost-user-blk device with `num_queues`
 * queues on `sock`; its output goes to `log`. The caller creates and sizes
 * the file (and keeps or closes any fd of it). Started and waited for as
 * tu_spawn_wait_file().
 */
void tu_start_qsd_file(struct tu_proc *p, const char *disk, unsigned num_queues, const char *sock,
                       const char *log);

/*
 * The raw disk file `path` of `bytes` bytes (created if missing, then
 * sized), open read-write. Fails the test otherwise. Returns the fd; the
 * caller closes it.
 */
int tu_make_disk(const char *path, uint64_t bytes);

/* A temp dir holding a raw disk file and a qemu-storage-daemon exporting
 * it. */
struct tu_qsd {
    char *dir;
    char disk[300], sock[300], log[300]; /* dir/disk.img, qsd.sock, qsd.log */
    struct tu_proc proc;
    int disk_fd; /* disk, open read-write */
};

/*
 * Fails the test unless qemu-storage-daemon is installed; then the temp
 * dir `tag` (tu_mkdtemp), disk.img of `bytes` (q->disk_fd stays open) and
 * tu_start_qsd_file() with `num_queues` queues on qsd.sock.
 */
void tu_qsd_up(struct tu_qsd *q, const char *tag, uint64_t bytes, unsigned num_queues);

/* tu_stop_clean() the daemon, close disk_fd (if >= 0), remove the dir. */
void tu_qsd_down(struct tu_qsd *q);

/*
 * The same qemu-storage-daemon, started `delay_ms` after this call (a shell
 * sleeps, then execs it under the same pid), without waiting for anything:
 * for a front-end that must wait for a back-end still being restarted
 * (vuf_conn_connect() with a timeout). Fails the test if the spawn fails;
 * the caller owns *p and stops it with tu_stop().
 */
void tu_spawn_qsd_file_after(struct tu_proc *p, int delay_ms, const char *disk, unsigned num_queues,
                             const char *sock, const char *log);

/*
 * virtiofsd (root only) sharing the existing directory `share` on `sock`;
 * its output goes to `log`. Always given a source (without one it silently
 * shares "/"). virtiofsd serves exactly ONE connection and exits when it
 * ends. Started and waited for as tu_spawn_wait_file().
 */
void tu_start_virtiofsd(struct tu_proc *p, const char *share, const char *sock, const char *log);

/*
 * dpdk-testpmd's path, or NULL after printing a MISSING line (it is a
 * failure, not a skip: scripts/setup.sh installs it).
 */
const char *tu_testpmd_path(void);

/*
 * dpdk-testpmd (DPDK 22.11) with one vhost-user-net port of `pairs` queue
 * pairs on `sock`, forwarding in macswap mode on lcore 1; its output goes
 * to `log`. EAL runs with --no-huge, --no-pci, --no-shconf and the file
 * prefix `prefix` (unique per process and run), testpmd with
 * --stats-period (without it, non-interactive testpmd waits for a key on
 * stdin, which is /dev/null here, and exits at once). Waits for the socket
 * FILE, then until testpmd forwards (its log shows the forwarding start:
 * frames a guest sends before then are freed by it, see
 * tu_start_testpmd_held); fails the test (MISSING if testpmd is not installed; with its log
 * if it exits first or never creates the socket). The caller owns *p and
 * stops it with tu_stop(), then calls tu_testpmd_cleanup(prefix).
 */
void tu_start_testpmd(struct tu_proc *p, const char *prefix, unsigned pairs, const char *sock,
                      const char *log);

/*
 * The same testpmd held before forwarding, as a testpmd still starting up
 * is: interactive (-i), reading its commands from a pipe. Its socket and
 * vhost port are up, so a front-end connects, negotiates and sends, but
 * nothing is forwarded until "start\n" is written to the returned fd (the
 * pipe's write end; the caller closes it after stopping testpmd). When
 * forwarding starts, testpmd first empties ("flushes") every RX queue of
 * its port, which for the vhost port are the guest's TX rings: frames the
 * guest sent before then are taken and freed, never forwarded. It exits 0
 * on SIGTERM as the non-interactive one does.
 */
int tu_start_testpmd_held(struct tu_proc *p, const char *prefix, unsigned pairs, const char *sock,
                          const char *log);

/* Remove EAL's runtime dir for `prefix`: empty with --no-shconf, but left
 * behind (rmdir: only if empty). */
void tu_testpmd_cleanup(const char *prefix);

/*
 * Stop a back-end that must end cleanly: tu_stop() (SIGTERM, SIGKILL after
 * TU_STOP_GRACE_MS; a slow exit is reported, not failed; always reaped),
 * then fail the test unless it exited 0 (the message says how it ended), removed its
 * socket `sock`, and left no sanitizer report in its log (under
 * -Db_sanitize a report need not change the exit status). The log is
 * printed on failure. Whether the process was still running beforehand is
 * the caller's check.
 */
void tu_stop_clean(struct tu_proc *p, const char *sock);

/*
 * A back-end that serves one connection must exit by itself once it ends:
 * wait up to `timeout_ms` for *p to become a zombie (watched in /proc, not
 * reaped, so its status is not lost), failing the test with its log
 * printed if it does not; then reap it with tu_stop() and require exit
 * status 0.
 */
void tu_assert_exits_zero(struct tu_proc *p, int timeout_ms);

#endif
