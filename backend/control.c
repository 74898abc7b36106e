/* SPDX-License-Identifier: MIT */
/* vuf-backend-blk's control socket (test hook). See control.h. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "vuf/breq.h"
#include "vuf/log.h"

/* ---- the shared back-end channel ---------------------------------------- */

void be_breq_slot_init(struct be_breq_slot *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
}

void be_breq_slot_set(struct be_breq_slot *s, struct vuf_conn *conn)
{
    struct vuf_conn *old;

    pthread_mutex_lock(&s->mu);
    old = s->conn;
    s->conn = conn;
    if (old && old == s->lent) {
        /* The control thread is inside a request on it: wake it up with
         * an error; it frees the conn when it gives it back. */
        shutdown(vuf_conn_fd(old), SHUT_RDWR);
        s->zombie = old;
        old = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    vuf_conn_close(old);
}

void be_breq_slot_set_features(struct be_breq_slot *s, uint64_t protocol_features)
{
    pthread_mutex_lock(&s->mu);
    s->protocol_features = protocol_features;
    pthread_mutex_unlock(&s->mu);
}

void be_breq_slot_destroy(struct be_breq_slot *s)
{
    vuf_conn_close(s->conn);
    if (s->zombie != s->conn)
        vuf_conn_close(s->zombie);
    s->conn = s->zombie = s->lent = NULL;
    pthread_mutex_destroy(&s->mu);
}

static struct vuf_conn *slot_borrow(struct be_breq_slot *s, uint64_t *pf)
{
    struct vuf_conn *c;

    pthread_mutex_lock(&s->mu);
    c = s->lent ? NULL : s->conn;
    s->lent = c;
    *pf = s->protocol_features;
    pthread_mutex_unlock(&s->mu);
    return c;
}

/* Give the channel back; `broken` drops it (its stream is out of step). */
static void slot_return(struct be_breq_slot *s, struct vuf_conn *c, bool broken)
{
    struct vuf_conn *dead = NULL;

    pthread_mutex_lock(&s->mu);
    s->lent = NULL;
    if (s->zombie == c) {
        s->zombie = NULL;
        dead = c;
    } else if (broken && s->conn == c) {
        s->conn = NULL;
        dead = c;
    }
    pthread_mutex_unlock(&s->mu);
    if (dead)
        vuf_log(VUF_LOG_INFO, "back-end request channel dropped");
    vuf_conn_close(dead);
}

/* ---- commands ----------------------------------------------------------- */

struct be_control {
    pthread_t thread;
    char *path;
    int listen_fd, stop_efd;
    struct be_control_ctx ctx;
};

static bool parse_u64(const char *tok, uint64_t *out)
{
    char *end;

    if (!tok || !*tok || *tok == '-')
        return false;
    errno = 0;
    *out = strtoull(tok, &end, 0);
    return errno == 0 && *end == '\0';
}

/* Send one back-end request and describe the outcome in `ans`. */
static void send_breq(struct be_control *c, int kind, const struct vuf_shmem_map *m, char *ans,
                      size_t cap)
{
    uint64_t pf = 0, ack = 0;
    struct vuf_conn *conn = slot_borrow(c->ctx.slot, &pf);
    bool need_reply;
    int r;

    if (!conn) {
        snprintf(ans, cap, "error no back-end request channel (SET_BACKEND_REQ_FD)");
        return;
    }
    need_reply = (pf & VUF_PROTO_MASK(REPLY_ACK)) != 0;
    if (kind == VUF_BREQ_SHMEM_MAP)
        r = vuf_breq_shmem_map(conn, m, c->ctx.shm_fd, need_reply, &ack);
    else if (kind == VUF_BREQ_SHMEM_UNMAP)
        r = vuf_breq_shmem_unmap(conn, m, need_reply, &ack);
    else
        r = vuf_breq_config_change(conn, need_reply, &ack);
    /* -EINVAL: refused locally before sending; -EIO: a non-zero ack. */
    slot_return(c->ctx.slot, conn, r < 0 && r != -EIO && r != -EINVAL);
    if (r == 0 && !need_reply)
        snprintf(ans, cap, "sent");
    else if (r == 0 || r == -EIO)
        snprintf(ans, cap, "ack %" PRId64, (int64_t)ack);
    else
        snprintf(ans, cap, "error %s", vuf_strerror(r));
}

static void run_command(struct be_control *c, char *line, char *ans, size_t cap)
{
    char *save = NULL;
    char *cmd = strtok_r(line, " \t", &save);
    char *arg[6] = {0};
    unsigned n = 0;
    struct vuf_shmem_map m;
    uint64_t v[4];

    while (n < 6 && (arg[n] = strtok_r(NULL, " \t", &save)))
        n++;
    memset(&m, 0, sizeof(m));
    if (!cmd) {
        snprintf(ans, cap, "error empty command");
    } else if (strcmp(cmd, "ping") == 0 && n == 0) {
        snprintf(ans, cap, "ok pong");
    } else if (strcmp(cmd, "config-change") == 0 && n == 0) {
        send_breq(c, VUF_BREQ_CONFIG_CHANGE_MSG, NULL, ans, cap);
    } else if (strcmp(cmd, "map") == 0 && n == 5) {
        if (!parse_u64(arg[0], &v[0]) || v[0] > 255 || !parse_u64(arg[1], &v[1]) ||
            !parse_u64(arg[2], &v[2]) || !parse_u64(arg[3], &v[3]) ||
            (strcmp(arg[4], "rw") != 0 && strcmp(arg[4], "ro") != 0)) {
            snprintf(ans, cap, "error usage: map SHMID FD_OFFSET SHM_OFFSET LEN rw|ro");
            return;
        }
        if (c->ctx.shm_fd < 0) {
            snprintf(ans, cap, "error no shared memory fd (--shm-size or --shm-file)");
            return;
        }
        m.shmid = (uint8_t)v[0];
        m.fd_offset = v[1];
        m.shm_offset = v[2];
        m.len = v[3];
        m.flags = strcmp(arg[4], "rw") == 0 ? VUF_SHMEM_MAP_RW : 0;
        send_breq(c, VUF_BREQ_SHMEM_MAP, &m, ans, cap);
    } else if (strcmp(cmd, "unmap") == 0 && n == 3) {
        if (!parse_u64(arg[0], &v[0]) || v[0] > 255 || !parse_u64(arg[1], &v[1]) ||
            !parse_u64(arg[2], &v[2])) {
            snprintf(ans, cap, "error usage: unmap SHMID SHM_OFFSET LEN");
            return;
        }
        m.shmid = (uint8_t)v[0];
        m.shm_offset = v[1];
        m.len = v[2];
        send_breq(c, VUF_BREQ_SHMEM_UNMAP, &m, ans, cap);
    } else if (strcmp(cmd, "stats") == 0 && n == 0) {
        size_t off = (size_t)snprintf(ans, cap, "ok");
        for (unsigned i = 0; i < c->ctx.nq && off < cap; i++) {
            const struct be_vq *q = &c->ctx.vqs[i];
            off += (size_t)snprintf(ans + off, cap - off,
                                    " q%u completed=%" PRIu64 " read=%" PRIu64 " written=%" PRIu64,
                                    i, __atomic_load_n(&q->completed, __ATOMIC_RELAXED),
                                    __atomic_load_n(&q->bytes_read, __ATOMIC_RELAXED),
                                    __atomic_load_n(&q->bytes_written, __ATOMIC_RELAXED));
        }
    } else if (strcmp(cmd, "hold") == 0 && n == 1) {
        uint64_t one = 1;

        if (strcmp(arg[0], "on") == 0) {
            __atomic_store_n(c->ctx.hold, -1, __ATOMIC_RELEASE);
            snprintf(ans, cap, "ok hold=on");
        } else if (strcmp(arg[0], "off") == 0) {
            __atomic_store_n(c->ctx.hold, 0, __ATOMIC_RELEASE);
            __atomic_fetch_add(c->ctx.release_gen, 1, __ATOMIC_ACQ_REL);
            if (write(c->ctx.hold_efd, &one, sizeof(one)) < 0) {
                snprintf(ans, cap, "error wake-up: %s", strerror(errno));
                return;
            }
            snprintf(ans, cap, "ok hold=off");
        } else if (parse_u64(arg[0], &v[0]) && v[0] <= INT32_MAX) {
            __atomic_store_n(c->ctx.hold, (int)v[0], __ATOMIC_RELEASE);
            snprintf(ans, cap, "ok hold=%d", (int)v[0]);
        } else {
            snprintf(ans, cap, "error usage: hold on|off|N");
        }
    } else if (strcmp(cmd, "held") == 0 && n == 0) {
        char per_q[1024];
        unsigned total = 0;
        size_t off = 0;

        /* Each count read once, so that the total is their sum. */
        per_q[0] = '\0';
        for (unsigned i = 0; i < c->ctx.nq && off < sizeof(per_q); i++) {
            unsigned h = __atomic_load_n(&c->ctx.vqs[i].nheld, __ATOMIC_RELAXED);
            total += h;
            off += (size_t)snprintf(per_q + off, sizeof(per_q) - off, " q%u=%u", i, h);
        }
        snprintf(ans, cap, "ok held=%u%s", total, per_q);
    } else {
        snprintf(ans, cap, "error unknown command or wrong argument count");
    }
}

/* Serve one control client until it hangs up or we are stopped. */
static void serve_client(struct be_control *c, int fd)
{
    char buf[512], ans[2048];
    size_t have = 0;

    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = c->stop_efd, .events = POLLIN}};
        char *nl;
        ssize_t n;

        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (p[1].revents)
            return;
        n = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (n <= 0)
            return;
        have += (size_t)n;
        buf[have] = '\0';
        while ((nl = strchr(buf, '\n'))) {
            size_t used = (size_t)(nl - buf) + 1;
            size_t len;

            *nl = '\0';
            if (nl > buf && nl[-1] == '\r')
                nl[-1] = '\0';
            vuf_log(VUF_LOG_INFO, "control: %s", buf);
            run_command(c, buf, ans, sizeof(ans) - 1);
            len = strlen(ans);
            ans[len++] = '\n';
            if (send(fd, ans, len, MSG_NOSIGNAL) != (ssize_t)len)
                return;
            memmove(buf, buf + used, have - used + 1);
            have -= used;
        }
        if (have == sizeof(buf) - 1) {
            static const char too_long[] = "error line too long\n";
            if (send(fd, too_long, sizeof(too_long) - 1, MSG_NOSIGNAL) < 0)
                return;
            have = 0;
        }
    }
}

static void *control_main(void *arg)
{
    struct be_control *c = arg;

    for (;;) {
        struct pollfd p[2] = {{.fd = c->listen_fd, .events = POLLIN},
                              {.fd = c->stop_efd, .events = POLLIN}};
        int fd;

        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        fd = accept4(c->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve_client(c, fd);
        close(fd);
    }
    return NULL;
}

int be_control_start(const char *path, const struct be_control_ctx *ctx, struct be_control **out)
{
    struct be_control *c = calloc(1, sizeof(*c));
    int r;

    if (!c)
        return -ENOMEM;
    c->ctx = *ctx;
    c->listen_fd = c->stop_efd = -1;
    c->path = strdup(path);
    if (!c->path) {
        free(c);
        return -ENOMEM;
    }
    r = vuf_conn_listen(path, &c->listen_fd);
    if (r < 0) {
        free(c->path);
        free(c);
        return r;
    }
    c->stop_efd = eventfd(0, EFD_CLOEXEC);
    if (c->stop_efd < 0) {
        r = -errno;
        goto fail;
    }
    r = -pthread_create(&c->thread, NULL, control_main, c);
    if (r < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    if (c->stop_efd >= 0)
        close(c->stop_efd);
    close(c->listen_fd);
    unlink(c->path);
    free(c->path);
    free(c);
    return r;
}

void be_control_stop(struct be_control *c)
{
    uint64_t one = 1;

    if (!c)
        return;
    if (write(c->stop_efd, &one, sizeof(one)) < 0)
        vuf_log(VUF_LOG_DEBUG, "control: stop eventfd write failed");
    pthread_join(c->thread, NULL);
    close(c->stop_efd);
    close(c->listen_fd);
    unlink(c->path);
    free(c->path);
    free(c);
}
