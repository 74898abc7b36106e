/* SPDX-License-Identifier: MIT */
/*
 * One end of a vhost-user unix stream socket: whole messages with their fds,
 * every call bounded by a deadline.
 *
 * Framing rules (vhost-user.rst, "Communication"): fds ride in SCM_RIGHTS
 * on the sendmsg that carries the first byte of the header, at most 8 per
 * message. The receiver therefore reads the header with a control buffer
 * and the payload without one; an fd that shows up with a payload chunk
 * means the peer broke the framing.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "deadline.h"
#include "vuf/conn.h"
#include "vuf/log.h"

struct vuf_conn {
    int fd;
    int timeout_ms;
    enum vuf_channel channel;
};

/* Control buffer for VUF_MAX_FDS fds: the kernel sets MSG_CTRUNC (and
 * still installs the fds that fit) when a peer sends more. */
#define CMSG_FD_SPACE CMSG_SPACE(sizeof(int) * VUF_MAX_FDS)

static int new_conn(int fd, struct vuf_conn **out)
{
    struct vuf_conn *c = calloc(1, sizeof(*c));

    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    c->timeout_ms = VUF_DEFAULT_TIMEOUT_MS;
    c->channel = VUF_CH_FRONTEND;
    *out = c;
    return 0;
}

static int fill_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (!path)
        return -EINVAL;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -ENAMETOOLONG;
    strcpy(sa->sun_path, path);
    return 0;
}

/* False only when `path` names something other than a socket; a path that
 * vanished in the meantime (a back-end restarting) counts as a socket. */
static bool is_socket_or_gone(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return true;
    return S_ISSOCK(st.st_mode);
}

int vuf_conn_connect(const char *path, int connect_timeout_ms, struct vuf_conn **out)
{
    struct sockaddr_un sa;
    int64_t deadline = vuf_now_ms() + (connect_timeout_ms > 0 ? connect_timeout_ms : 0);
    int ret = out ? fill_addr(path, &sa) : -EINVAL;

    if (ret)
        return ret;
    for (;;) {
        /* Non-blocking: an AF_UNIX connect() to a listener whose backlog is
         * full would otherwise sleep with no limit; it fails with EAGAIN
         * instead, retried below until the deadline. */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0)
                fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
            return new_conn(fd, out);
        }
        ret = -errno;
        close(fd);
        /* Linux refuses a connect() to a file that is not a socket with
         * ECONNREFUSED, the same as a socket with no listener yet; no
         * back-end will ever listen on a regular file or a directory, so
         * waiting out the deadline would only delay the error. */
        if (ret == -ECONNREFUSED && !is_socket_or_gone(path))
            ret = -ENOTSOCK;
        /* The socket file appears at bind(), slightly before listen(): a
         * back-end still starting looks like ENOENT or ECONNREFUSED. */
        if ((ret != -ENOENT && ret != -ECONNREFUSED && ret != -EAGAIN) || vuf_now_ms() >= deadline)
            break;
        usleep(2000);
    }
    if (ret == -EAGAIN)
        ret = -ETIMEDOUT; /* the listener never drained its backlog */
    vuf_log(VUF_LOG_DEBUG, "connect %s: %s", path, strerror(-ret));
    return ret;
}

int vuf_conn_listen(const char *path, int *listen_fd)
{
    struct sockaddr_un sa;
    struct stat st;
    int ret = fill_addr(path, &sa);
    int fd;

    if (ret)
        return ret;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0) {
        ret = -errno;
        close(fd);
        return ret;
    }
    *listen_fd = fd;
    return 0;
}

int vuf_conn_accept(int listen_fd, int timeout_ms, struct vuf_conn **out)
{
    int ret = vuf_poll_fd(listen_fd, POLLIN, vuf_deadline(timeout_ms));
    int fd;

    if (ret)
        return ret;
    do {
        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    return new_conn(fd, out);
}

int vuf_conn_adopt(int fd, struct vuf_conn **out)
{
    if (fd < 0)
        return -EBADF;
    return new_conn(fd, out);
}

int vuf_conn_pair(struct vuf_conn **a, struct vuf_conn **b)
{
    int sv[2];
    int ret;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    ret = new_conn(sv[0], a);
    if (ret) {
        close(sv[1]);
        return ret;
    }
    ret = new_conn(sv[1], b);
    if (ret) {
        vuf_conn_close(*a);
        *a = NULL;
    }
    return ret;
}

void vuf_conn_close(struct vuf_conn *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

int vuf_conn_fd(const struct vuf_conn *c)
{
    return c->fd;
}

void vuf_conn_set_timeout(struct vuf_conn *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

int vuf_conn_timeout(const struct vuf_conn *c)
{
    return c->timeout_ms;
}

void vuf_conn_set_channel(struct vuf_conn *c, enum vuf_channel ch)
{
    c->channel = ch;
}

void vuf_msg_close_fds(struct vuf_msg *m)
{
    for (unsigned i = 0; i < m->nfds && i < VUF_MAX_FDS; i++) {
        if (m->fds[i] >= 0)
            close(m->fds[i]);
        m->fds[i] = -1;
    }
    m->nfds = 0;
}

/*
 * The one debug line per message (VUF_LOG=debug): every message of every
 * role passes here, so client, server and back-end request code log none
 * of their own. "main"/"backend-req" names the socket, "->" is sent and
 * "<-" received; a u64 payload (features, acks, status) is shown.
 */
static void trace(const struct vuf_conn *c, const char *dir, const struct vuf_msg *m)
{
    char val[32] = "";

    if (vuf_log_level() < VUF_LOG_DEBUG)
        return;
    if (m->hdr.size == 8)
        snprintf(val, sizeof(val), ", u64 0x%llx", (unsigned long long)m->payload.u64);
    /* A reply travels on the channel opposite to its request's sender, but
     * it names the request it answers, so the same table applies. */
    vuf_log(VUF_LOG_DEBUG, "%s: %s %s%s (flags 0x%x, size %u, %u fds%s)",
            c->channel == VUF_CH_BACKEND ? "backend-req" : "main", dir,
            vuf_msg_name(c->channel, m->hdr.request),
            (m->hdr.flags & VUF_FLAG_REPLY) ? " reply" : "", m->hdr.flags, m->hdr.size, m->nfds,
            val);
}

int vuf_conn_send(struct vuf_conn *c, const struct vuf_msg *m)
{
    uint8_t hdr[VUF_HDR_SIZE];
    union {
        char buf[CMSG_FD_SPACE];
        struct cmsghdr align;
    } ctl;
    struct iovec iov[2];
    size_t total, sent = 0;
    int64_t deadline = vuf_deadline(c->timeout_ms);

    if (m->nfds > VUF_MAX_FDS)
        return -E2BIG;
    if (m->hdr.size > VUF_MAX_PAYLOAD)
        return -EMSGSIZE;
    for (unsigned i = 0; i < m->nfds; i++)
        if (m->fds[i] < 0)
            return -EBADF;
    vuf_hdr_encode(hdr, &m->hdr);
    total = VUF_HDR_SIZE + m->hdr.size;
    trace(c, "->", m);

    while (sent < total) {
        struct msghdr mh = {0};
        int n = 0;
        ssize_t r;

        if (sent < VUF_HDR_SIZE) {
            iov[n].iov_base = hdr + sent;
            iov[n++].iov_len = VUF_HDR_SIZE - sent;
            if (m->hdr.size) {
                iov[n].iov_base = (void *)m->payload.raw;
                iov[n++].iov_len = m->hdr.size;
            }
        } else {
            iov[n].iov_base = (void *)(m->payload.raw + (sent - VUF_HDR_SIZE));
            iov[n++].iov_len = total - sent;
        }
        mh.msg_iov = iov;
        mh.msg_iovlen = n;
        if (sent == 0 && m->nfds) {
            struct cmsghdr *cm;
            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * m->nfds);
            cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * m->nfds);
            memcpy(CMSG_DATA(cm), m->fds, sizeof(int) * m->nfds);
        }
        r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            sent += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = vuf_poll_fd(c->fd, POLLOUT, deadline);
            if (w)
                return w;
            continue;
        }
        if (r < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN))
            return -ECONNRESET;
        return r < 0 ? -errno : -EIO;
    }
    return 0;
}

static void close_cmsg_fds(struct msghdr *mh)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[VUF_MAX_FDS + 1];
            if (n > VUF_MAX_FDS + 1)
                n = VUF_MAX_FDS + 1;
            memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
            for (size_t i = 0; i < n; i++)
                close(fds[i]);
        }
    }
}

/* Collect SCM_RIGHTS fds into m; returns -ETOOMANYREFS (all closed) if the
 * kernel truncated the control data. */
static int take_fds(struct msghdr *mh, struct vuf_msg *m)
{
    if (mh->msg_flags & MSG_CTRUNC) {
        close_cmsg_fds(mh);
        return -ETOOMANYREFS;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int fds[VUF_MAX_FDS];
        if (n > VUF_MAX_FDS - m->nfds) {
            close_cmsg_fds(mh);
            vuf_msg_close_fds(m);
            return -ETOOMANYREFS;
        }
        memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
        for (size_t i = 0; i < n; i++)
            m->fds[m->nfds++] = fds[i];
    }
    return 0;
}

/* Read exactly len bytes into buf. While reading the header, fds may arrive
 * with its first byte; anywhere else they break the framing. EOF is
 * classified by where it happens (see conn.h). */
static int read_full(struct vuf_conn *c, uint8_t *buf, size_t len, struct vuf_msg *m, bool header,
                     int64_t deadline)
{
    size_t got = 0;

    while (got < len) {
        union {
            char buf[CMSG_FD_SPACE];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {.iov_base = buf + got, .iov_len = len - got};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r;
        int ret;

        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        r = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ret = vuf_poll_fd(c->fd, POLLIN, deadline);
                if (ret)
                    return ret;
                continue;
            }
            if (errno == ECONNRESET || errno == EPIPE)
                return (header && got == 0) ? -ECONNRESET : -ECONNABORTED;
            return -errno;
        }
        if (mh.msg_controllen > 0 || (mh.msg_flags & MSG_CTRUNC)) {
            if (!header || got > 0) {
                /* fds must ride on the first byte of the header: the
                 * rest of this message is unread, the framing is lost */
                close_cmsg_fds(&mh);
                return -EBADMSG;
            }
            ret = take_fds(&mh, m);
            if (ret)
                return ret;
        }
        if (r == 0) {
            if (header)
                return got == 0 ? -ECONNRESET : -EBADMSG;
            return -ECONNABORTED;
        }
        got += (size_t)r;
    }
    return 0;
}

int vuf_conn_recv(struct vuf_conn *c, struct vuf_msg *m)
{
    uint8_t hdr[VUF_HDR_SIZE];
    int64_t deadline = vuf_deadline(c->timeout_ms);
    int ret;

    m->nfds = 0;
    for (unsigned i = 0; i < VUF_MAX_FDS; i++)
        m->fds[i] = -1;
    ret = read_full(c, hdr, VUF_HDR_SIZE, m, true, deadline);
    if (ret)
        goto fail;
    vuf_hdr_decode(hdr, sizeof(hdr), &m->hdr);
    if (m->hdr.size > VUF_MAX_PAYLOAD) {
        /* Do not read on: the peer's framing cannot be trusted. */
        ret = -EMSGSIZE;
        goto fail;
    }
    if (m->hdr.size) {
        ret = read_full(c, m->payload.raw, m->hdr.size, m, false, deadline);
        if (ret)
            goto fail;
    }
    trace(c, "<-", m);
    return 0;
fail:
    vuf_msg_close_fds(m);
    if (ret != -ECONNRESET)
        vuf_log(VUF_LOG_DEBUG, "recv failed: %s", vuf_strerror(ret));
    return ret;
}

bool vuf_conn_peer_closed(const struct vuf_conn *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    char b;

    if (poll(&p, 1, 0) <= 0)
        return false;
    if (!(p.revents & (POLLHUP | POLLERR | POLLRDHUP)))
        return false;
    /* A unix peer's close() raises POLLHUP even while its last messages are
     * still queued; those must be read first, so unread data means "not
     * closed yet" (conn.h: HUP/ERR and no data). */
    if ((p.revents & POLLIN) && recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
        return false;
    return true;
}

bool vuf_conn_error_is_fatal(int err)
{
    switch (-err) {
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
    case ECONNABORTED:
    case ETIMEDOUT:
    case EBADMSG:
    case EMSGSIZE:
    case ETOOMANYREFS:
        return true;
    default:
        return false;
    }
}
