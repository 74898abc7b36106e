/* SPDX-License-Identifier: MIT */
/*
 * The front-end's worker thread and its back-end request handlers.
 *
 * The worker runs while the device is active (activate/wake until
 * reset/sleep/destroy) and waits on:
 *   - a stop eventfd (fe_worker_stop);
 *   - the shared "non-MSI-X" call eventfd of the queues that had no irqfd:
 *     each signal becomes signal_used_queue(VUF_NO_VECTOR);
 *   - the back-end request channel: one request served per wake-up;
 *   - a dup of the main socket, watched for hang-up only: the back-end
 *     went away, which is reported once as VUF_DEVICE_EVENT_CRASHED.
 *
 * Unlike crosvm, a back-end request that fails (a rejected SHMEM_MAP, an
 * unsupported code) is answered with an error and the worker goes on: the
 * back-end asked for something we refused, which is not a dead device.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "frontend_internal.h"
#include "peer_eventfd.h"
#include "vuf/log.h"

struct fe_worker {
    pthread_t thread;
    struct vuf_frontend *fe;
    int epfd;
    int stop_fd;
    int non_msix_fd;
    int main_fd; /* dup of the main socket: hang-up watch only */
    struct vuf_server *breq;
    char name[16]; /* thread names are at most 15 bytes */
};

enum { TOK_STOP = 1, TOK_NON_MSIX, TOK_BREQ, TOK_MAIN };

/* ------------------------------------------------------------------------ */
/* Back-end request handlers (run on the worker thread)                      */
/* ------------------------------------------------------------------------ */

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    /* Both ranges are known not to wrap (checked against the region). */
    return a < b + blen && b < a + alen;
}

/* Checks shared by map and unmap; called with shm_lock held. */
static int check_shmem_request(struct vuf_frontend *fe, const char *what,
                               const struct vuf_shmem_map *m)
{
    if (!fe->have_mapper) {
        vuf_log(VUF_LOG_ERROR, "%s: %s before a shared memory mapper was set", fe->label, what);
        return -ENODEV;
    }
    if (fe->shm_state != FE_SHM_REGION) {
        vuf_log(VUF_LOG_ERROR, "%s: %s but the back-end has no shared memory region", fe->label,
                what);
        return -ENODEV;
    }
    if (m->shmid != fe->region.id) {
        vuf_log(VUF_LOG_ERROR, "%s: %s: bad shmid %u, expected %u", fe->label, what, m->shmid,
                fe->region.id);
        return -EINVAL;
    }
    /* Overflow-safe "[shm_offset, shm_offset + len) within [0, length)". */
    if (m->len == 0 || m->len > fe->region.length || m->shm_offset > fe->region.length - m->len) {
        vuf_log(VUF_LOG_ERROR, "%s: %s: range 0x%llx+0x%llx outside the region (length 0x%llx)",
                fe->label, what, (unsigned long long)m->shm_offset, (unsigned long long)m->len,
                (unsigned long long)fe->region.length);
        return -ERANGE;
    }
    if (m->fd_offset > UINT64_MAX - m->len) {
        vuf_log(VUF_LOG_ERROR, "%s: %s: fd_offset + len overflows", fe->label, what);
        return -EOVERFLOW;
    }
    return 0;
}

static int handle_shmem_map(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct vuf_frontend *fe = opaque;
    struct vuf_shmem_map m;
    int r;

    (void)reply;
    r = vuf_decode_shmem_map(req, &m);
    if (r < 0)
        return r;
    if (req->nfds != 1 || req->fds[0] < 0)
        return -EBADF;

    pthread_mutex_lock(&fe->shm_lock);
    r = check_shmem_request(fe, "SHMEM_MAP", &m);
    if (r < 0)
        goto out;
    for (unsigned i = 0; i < fe->nmaps; i++) {
        if (ranges_overlap(m.shm_offset, m.len, fe->maps[i].shm_offset, fe->maps[i].len)) {
            vuf_log(
                VUF_LOG_ERROR, "%s: SHMEM_MAP 0x%llx+0x%llx overlaps the mapping at 0x%llx+0x%llx",
                fe->label, (unsigned long long)m.shm_offset, (unsigned long long)m.len,
                (unsigned long long)fe->maps[i].shm_offset, (unsigned long long)fe->maps[i].len);
            r = -EEXIST;
            goto out;
        }
    }
    if (fe->nmaps == fe->maps_cap) {
        unsigned cap = fe->maps_cap ? fe->maps_cap * 2 : 8;
        struct fe_mapping *n;

        if (fe->nmaps >= VUF_FRONTEND_MAX_MAPPINGS) {
            vuf_log(VUF_LOG_ERROR, "%s: SHMEM_MAP: already %u mappings", fe->label, fe->nmaps);
            r = -ENOSPC;
            goto out;
        }
        if (cap > VUF_FRONTEND_MAX_MAPPINGS)
            cap = VUF_FRONTEND_MAX_MAPPINGS;
        n = realloc(fe->maps, cap * sizeof(*n));
        if (!n) {
            r = -ENOMEM;
            goto out;
        }
        fe->maps = n;
        fe->maps_cap = cap;
    }
    r = fe->mapper.ops->add_mapping(fe->mapper.opaque, req->fds[0], m.fd_offset, m.len,
                                    m.shm_offset,
                                    PROT_READ | ((m.flags & VUF_SHMEM_MAP_RW) ? PROT_WRITE : 0));
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: SHMEM_MAP 0x%llx+0x%llx: mapper failed: %s", fe->label,
                (unsigned long long)m.shm_offset, (unsigned long long)m.len, vuf_strerror(r));
        goto out;
    }
    if (r > 0)
        r = 0;
    fe->maps[fe->nmaps].shm_offset = m.shm_offset;
    fe->maps[fe->nmaps].len = m.len;
    fe->nmaps++;
    vuf_log(VUF_LOG_DEBUG, "%s: mapped 0x%llx+0x%llx (%s)", fe->label,
            (unsigned long long)m.shm_offset, (unsigned long long)m.len,
            (m.flags & VUF_SHMEM_MAP_RW) ? "rw" : "ro");
out:
    pthread_mutex_unlock(&fe->shm_lock);
    return r;
}

static int handle_shmem_unmap(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct vuf_frontend *fe = opaque;
    struct vuf_shmem_map m;
    unsigned i;
    int r;

    (void)reply;
    r = vuf_decode_shmem_map(req, &m);
    if (r < 0)
        return r;

    pthread_mutex_lock(&fe->shm_lock);
    r = check_shmem_request(fe, "SHMEM_UNMAP", &m);
    if (r < 0)
        goto out;
    /* The spec: the range must be exactly one existing mapping. */
    for (i = 0; i < fe->nmaps; i++)
        if (fe->maps[i].shm_offset == m.shm_offset && fe->maps[i].len == m.len)
            break;
    if (i == fe->nmaps) {
        vuf_log(VUF_LOG_ERROR, "%s: SHMEM_UNMAP 0x%llx+0x%llx matches no mapping", fe->label,
                (unsigned long long)m.shm_offset, (unsigned long long)m.len);
        r = -ENOENT;
        goto out;
    }
    r = fe->mapper.ops->remove_mapping(fe->mapper.opaque, m.shm_offset);
    if (r < 0) {
        /* Keep it in the table: reset will try again. */
        vuf_log(VUF_LOG_ERROR, "%s: SHMEM_UNMAP 0x%llx: mapper failed: %s", fe->label,
                (unsigned long long)m.shm_offset, vuf_strerror(r));
        goto out;
    }
    r = 0;
    fe->maps[i] = fe->maps[fe->nmaps - 1];
    fe->nmaps--;
out:
    pthread_mutex_unlock(&fe->shm_lock);
    return r;
}

static int handle_config_change(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct vuf_frontend *fe = opaque;

    (void)req;
    (void)reply;
    /* Only served by the worker, which runs only with an interrupt set. */
    if (!fe->intr.ops || !fe->intr.ops->signal_config_changed)
        return -ENOSYS;
    vuf_log(VUF_LOG_DEBUG, "%s: back-end config changed", fe->label);
    fe->intr.ops->signal_config_changed(fe->intr.opaque);
    return 0;
}

void fe_breq_handlers(struct vuf_frontend *fe, struct vuf_server_config *cfg)
{
    cfg->channel = VUF_CH_BACKEND;
    cfg->opaque = fe;
    cfg->handlers[VUF_BREQ_SHMEM_MAP] = handle_shmem_map;
    cfg->handlers[VUF_BREQ_SHMEM_UNMAP] = handle_shmem_unmap;
    cfg->handlers[VUF_BREQ_CONFIG_CHANGE_MSG] = handle_config_change;
}

int fe_remove_all_mappings(struct vuf_frontend *fe)
{
    int err = 0;

    pthread_mutex_lock(&fe->shm_lock);
    for (unsigned i = 0; i < fe->nmaps; i++) {
        int r = fe->mapper.ops->remove_mapping(fe->mapper.opaque, fe->maps[i].shm_offset);

        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: removing mapping at 0x%llx: %s", fe->label,
                    (unsigned long long)fe->maps[i].shm_offset, vuf_strerror(r));
            if (!err)
                err = r;
        }
    }
    fe->nmaps = 0;
    pthread_mutex_unlock(&fe->shm_lock);
    return err;
}

/* ------------------------------------------------------------------------ */
/* The thread                                                               */
/* ------------------------------------------------------------------------ */

static void drop_breq(struct fe_worker *w, int why)
{
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, vuf_server_fd(w->breq), NULL);
    if (why == -ECONNRESET)
        vuf_log(VUF_LOG_WARN, "%s: back-end request channel closed by the back-end", w->fe->label);
    else
        vuf_log(VUF_LOG_ERROR, "%s: back-end request channel broken (%s); dropping it",
                w->fe->label, vuf_strerror(why));
    /* crosvm drops it for good too: only the constructor sends
     * SET_BACKEND_REQ_FD. */
    vuf_server_free(w->breq);
    w->breq = NULL;
}

static void report_crash(struct fe_worker *w, const char *why)
{
    struct vuf_frontend *fe = w->fe;

    vuf_log(VUF_LOG_ERROR, "%s: vhost-user worker: %s; device crashed", fe->label, why);
    if (fe->cfg.event)
        fe->cfg.event(fe->cfg.event_opaque, VUF_DEVICE_EVENT_CRASHED);
}

/*
 * The back-end holds this fd (it is the queues' call fd) and may take the
 * count first, with O_NONBLOCK cleared: a read() here could block the
 * worker, and with it reset, sleep and destroy. Nothing taken: nothing to
 * do. The fd is level-triggered: a count that cannot be taken would wake
 * us at once, for ever (a spinning thread, no interrupt); peer_eventfd.c
 * falls back when a sandbox refuses its calls, so only an fd that is no
 * longer readable at all gets here, and is then dropped from the set.
 */
static void drain_non_msix(struct fe_worker *w)
{
    struct vuf_frontend *fe = w->fe;
    uint64_t cnt;
    int r = vuf_peer_efd_take_flags(w->non_msix_fd, &cnt, fe->cfg.no_aio ? VUF_PEER_EFD_NO_AIO : 0);

    if (r == 1) {
        if (fe->intr.ops->signal_used_queue)
            fe->intr.ops->signal_used_queue(fe->intr.opaque, VUF_NO_VECTOR);
        return;
    }
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR,
                "%s: the shared interrupt eventfd cannot be read (%s): queues without an irqfd "
                "get no more interrupts",
                fe->label, vuf_strerror(r));
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->non_msix_fd, NULL);
    }
}

static void *worker_main(void *arg)
{
    struct fe_worker *w = arg;
    struct vuf_frontend *fe = w->fe;
    struct epoll_event evs[8];

    /* Named from inside: prctl(PR_SET_NAME). Naming it from the creator
     * opens and writes /proc/self/task/TID/comm, which a VMM's sandbox
     * (no /proc in its jail, no openat in its filter) does not allow. */
    pthread_setname_np(pthread_self(), w->name);
    for (;;) {
        int n = epoll_wait(w->epfd, evs, 8, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            report_crash(w, "epoll_wait failed");
            return NULL;
        }
        /* Stop wins over everything else in the batch. */
        for (int i = 0; i < n; i++)
            if (evs[i].data.u32 == TOK_STOP)
                return NULL;
        for (int i = 0; i < n; i++) {
            switch (evs[i].data.u32) {
            case TOK_NON_MSIX:
                drain_non_msix(w);
                break;
            case TOK_BREQ: {
                int r;

                if (!w->breq)
                    break;
                r = vuf_server_process_one(w->breq);
                if (vuf_conn_error_is_fatal(r))
                    drop_breq(w, r);
                else if (r < 0)
                    vuf_log(VUF_LOG_WARN, "%s: back-end request refused: %s", fe->label,
                            vuf_strerror(r));
                break;
            }
            case TOK_MAIN:
                /* Registered for hang-up only: any event here means the
                 * back-end's end of the main socket is gone (or the socket
                 * failed, which leaves it just as unusable). */
                report_crash(w, (evs[i].events & (EPOLLHUP | EPOLLRDHUP))
                                    ? "back-end disconnected"
                                    : "error on the back-end socket");
                return NULL;
            default:
                break;
            }
        }
    }
}

static int add_fd(int epfd, int fd, uint32_t events, uint32_t tok)
{
    struct epoll_event ev = {.events = events, .data.u32 = tok};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void worker_free(struct fe_worker *w)
{
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    if (w->non_msix_fd >= 0)
        close(w->non_msix_fd);
    if (w->main_fd >= 0)
        close(w->main_fd);
    free(w);
}

int fe_worker_start(struct vuf_frontend *fe, int non_msix_fd)
{
    struct fe_worker *w;
    int r;

    if (fe->worker) {
        close(non_msix_fd);
        return -EBUSY;
    }
    w = calloc(1, sizeof(*w));
    if (!w) {
        close(non_msix_fd);
        return -ENOMEM;
    }
    w->fe = fe;
    w->non_msix_fd = non_msix_fd;
    w->stop_fd = -1;
    w->main_fd = -1;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0)
        goto fail_errno;
    w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->stop_fd < 0)
        goto fail_errno;
    w->main_fd = fcntl(vuf_conn_fd(vuf_client_conn(fe->client)), F_DUPFD_CLOEXEC, 0);
    if (w->main_fd < 0)
        goto fail_errno;

    /* The main socket's hang-up watch is added by fe_worker_watch_backend()
     * once activation succeeded. */
    r = add_fd(w->epfd, w->stop_fd, EPOLLIN, TOK_STOP);
    if (!r)
        r = add_fd(w->epfd, w->non_msix_fd, EPOLLIN, TOK_NON_MSIX);
    if (!r && fe->breq)
        r = add_fd(w->epfd, vuf_server_fd(fe->breq), EPOLLIN | EPOLLRDHUP, TOK_BREQ);
    if (r)
        goto fail;

    {
        size_t n = strnlen(fe->label, sizeof(w->name) - 1);

        memcpy(w->name, fe->label, n);
        w->name[n] = '\0';
    }
    w->breq = fe->breq;
    fe->breq = NULL;
    r = pthread_create(&w->thread, NULL, worker_main, w);
    if (r) {
        fe->breq = w->breq;
        r = -r;
        goto fail;
    }
    fe->worker = w;
    return 0;

fail_errno:
    r = -errno;
fail:
    vuf_log(VUF_LOG_ERROR, "%s: cannot start the worker: %s", fe->label, vuf_strerror(r));
    worker_free(w);
    return r;
}

int fe_worker_watch_backend(struct vuf_frontend *fe)
{
    struct fe_worker *w = fe->worker;

    if (!w)
        return -EINVAL;
    /* No read interest: the main socket belongs to the caller's thread; we
     * only want to hear that the peer hung up (HUP/ERR are always
     * reported). Level-triggered, so a hang-up that came during activation
     * is reported at once. epoll_ctl is safe while the worker waits. */
    return add_fd(w->epfd, w->main_fd, EPOLLRDHUP, TOK_MAIN);
}

void fe_worker_stop(struct vuf_frontend *fe)
{
    struct fe_worker *w = fe->worker;
    uint64_t one = 1;

    if (!w)
        return;
    /* An eventfd write of 1 cannot fail short of a counter overflow, and
     * the thread may already have exited on its own (crash): join works
     * either way. */
    if (write(w->stop_fd, &one, sizeof(one)) < 0)
        vuf_log(VUF_LOG_WARN, "%s: waking the worker: %s", fe->label, strerror(errno));
    pthread_join(w->thread, NULL);
    fe->breq = w->breq;
    fe->worker = NULL;
    worker_free(w);
}
