/* SPDX-License-Identifier: MIT */
/*
 * The inflight area of the vhost-user front-end (vuf/frontend.h),
 * VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD as QEMU's vhost-user-blk uses it for
 * reconnect: GET_INFLIGHT_FD once, SET_INFLIGHT_FD at every activation
 * before the memory, the area kept across sleep/wake and handed from a
 * crashed back-end's device to the restarted one's (export, then
 * cfg.inflight_area), freed by reset.
 *
 * The area is the back-end's file; vuf only keeps its fd and never maps it,
 * so a back-end that later shrinks the file cannot fault the VMM.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frontend_internal.h"
#include "vuf/log.h"

static bool negotiated(const struct vuf_frontend *fe)
{
    return (fe->protocol_features & VUF_PROTO_MASK(INFLIGHT_SHMFD)) != 0;
}

/*
 * The most an area for `num_queues` queues of `queue_size` entries can
 * need: per queue a header (at most 64 bytes) and at most 32 bytes per
 * descriptor (the packed layout's descriptor state; the split one has 16),
 * rounded up to a page per queue; and never more than
 * VUF_FRONTEND_INFLIGHT_MAX_SIZE.
 */
static uint64_t area_bound(uint16_t num_queues, uint16_t queue_size)
{
    uint64_t per_queue = (64 + 32ull * queue_size + 4095) & ~4095ull;
    uint64_t need = per_queue * num_queues;

    return need < VUF_FRONTEND_INFLIGHT_MAX_SIZE ? need : VUF_FRONTEND_INFLIGHT_MAX_SIZE;
}

/*
 * Is `a` with `fd` an area we can keep: a sane size for its queues, and a
 * regular file (a memfd) holding [mmap_offset, mmap_offset + mmap_size)?
 * `whose` names it in the log. 0, -EINVAL (the numbers) or -EBADF (the fd).
 */
static int check_area(const struct vuf_frontend *fe, const struct vuf_inflight *a, int fd,
                      const char *whose)
{
    struct stat st;

    if (a->num_queues == 0 || a->queue_size == 0 || a->mmap_size == 0) {
        vuf_log(VUF_LOG_ERROR, "%s: %s inflight area: %u queues of %u, size %llu", fe->label, whose,
                a->num_queues, a->queue_size, (unsigned long long)a->mmap_size);
        return -EINVAL;
    }
    if (a->mmap_size > area_bound(a->num_queues, a->queue_size)) {
        vuf_log(VUF_LOG_ERROR,
                "%s: %s inflight area of %llu bytes is too large for %u queues of %u "
                "(at most %llu)",
                fe->label, whose, (unsigned long long)a->mmap_size, a->num_queues, a->queue_size,
                (unsigned long long)area_bound(a->num_queues, a->queue_size));
        return -EINVAL;
    }
    if (a->mmap_offset > (uint64_t)INT64_MAX - a->mmap_size) {
        vuf_log(VUF_LOG_ERROR, "%s: %s inflight area: bad offset 0x%llx", fe->label, whose,
                (unsigned long long)a->mmap_offset);
        return -EINVAL;
    }
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        vuf_log(VUF_LOG_ERROR, "%s: %s inflight area: the fd is not a regular file or memfd",
                fe->label, whose);
        return -EBADF;
    }
    if ((uint64_t)st.st_size < a->mmap_offset + a->mmap_size) {
        vuf_log(VUF_LOG_ERROR,
                "%s: %s inflight area: the file has %lld bytes, [0x%llx, +%llu) does not fit",
                fe->label, whose, (long long)st.st_size, (unsigned long long)a->mmap_offset,
                (unsigned long long)a->mmap_size);
        return -EBADF;
    }
    return 0;
}

/* Keep `fd` (taken) as the device's area. */
static void keep_area(struct vuf_frontend *fe, const struct vuf_inflight *a, int fd)
{
    fe_inflight_release(fe);
    memset(&fe->inflight, 0, sizeof(fe->inflight));
    fe->inflight.mmap_size = a->mmap_size;
    fe->inflight.mmap_offset = a->mmap_offset;
    fe->inflight.num_queues = a->num_queues;
    fe->inflight.queue_size = a->queue_size;
    fe->inflight_fd = fd;
    fe->inflight_state = FE_INFL_AREA;
}

int fe_inflight_init(struct vuf_frontend *fe, const struct vuf_inflight_area *area)
{
    struct vuf_inflight a;
    int fd, r;

    if (!area)
        return 0;
    if (!negotiated(fe)) {
        vuf_log(VUF_LOG_WARN,
                "%s: the back-end does not offer INFLIGHT_SHMFD; the inflight area given is "
                "not used",
                fe->label);
        return 0;
    }
    memset(&a, 0, sizeof(a));
    a.mmap_size = area->mmap_size;
    a.mmap_offset = area->mmap_offset;
    a.num_queues = area->num_queues;
    a.queue_size = area->queue_size;
    if (a.num_queues != fe->num_queues) {
        vuf_log(VUF_LOG_ERROR, "%s: the inflight area given is for %u queues, the device has %u",
                fe->label, a.num_queues, fe->num_queues);
        return -EINVAL;
    }
    r = check_area(fe, &a, area->fd, "given");
    if (r < 0)
        return r;
    fd = fcntl(area->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    keep_area(fe, &a, fd);
    return 0;
}

int fe_inflight_check(struct vuf_frontend *fe, const struct vuf_queue *queues, unsigned nqueues)
{
    if (!negotiated(fe) || fe->inflight_state != FE_INFL_AREA)
        return 0;
    for (unsigned i = 0; i < nqueues; i++) {
        if (queues[i].ready && queues[i].size > fe->inflight.queue_size) {
            vuf_log(VUF_LOG_ERROR,
                    "%s: queue %u: size %u does not fit the inflight area (queues of %u); "
                    "reset the device for a new area",
                    fe->label, i, queues[i].size, fe->inflight.queue_size);
            return -EINVAL;
        }
    }
    return 0;
}

/* GET_INFLIGHT_FD for the device's queues, sized for the largest ready
 * queue (none ready: the device's size). */
static int get_area(struct vuf_frontend *fe, const struct vuf_queue *queues, unsigned nqueues)
{
    struct vuf_inflight a;
    uint16_t qsize = 0;
    int fd = -1, r;

    for (unsigned i = 0; i < nqueues; i++)
        if (queues[i].ready && queues[i].size > qsize)
            qsize = queues[i].size;
    if (qsize == 0)
        qsize = fe->queue_sizes[0];
    memset(&a, 0, sizeof(a));
    r = vuf_client_get_inflight_fd(fe->client, (uint16_t)fe->num_queues, qsize, &a, &fd);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get the inflight area: %s", fe->label,
                vuf_strerror(r));
        return r;
    }
    if (a.mmap_size == 0) {
        /* The client already refused an fd with it. */
        vuf_log(VUF_LOG_INFO, "%s: the back-end has no inflight area", fe->label);
        fe->inflight_state = FE_INFL_NONE;
        return 0;
    }
    /* The area is for what we asked (QEMU also keeps its own values). */
    a.num_queues = (uint16_t)fe->num_queues;
    a.queue_size = qsize;
    r = check_area(fe, &a, fd, "back-end's");
    if (r < 0) {
        close(fd);
        return -EPROTO;
    }
    keep_area(fe, &a, fd);
    vuf_log(VUF_LOG_INFO, "%s: inflight area of %llu bytes for %u queues of %u", fe->label,
            (unsigned long long)a.mmap_size, a.num_queues, a.queue_size);
    return 0;
}

int fe_inflight_activate(struct vuf_frontend *fe, const struct vuf_queue *queues, unsigned nqueues)
{
    int r;

    if (!negotiated(fe))
        return 0;
    if (fe->inflight_state == FE_INFL_UNKNOWN) {
        r = get_area(fe, queues, nqueues);
        if (r < 0)
            return r;
    }
    if (fe->inflight_state != FE_INFL_AREA)
        return 0;
    r = vuf_client_set_inflight_fd(fe->client, &fe->inflight, fe->inflight_fd);
    if (r < 0)
        vuf_log(VUF_LOG_ERROR, "%s: failed to set the inflight area: %s", fe->label,
                vuf_strerror(r));
    return r;
}

void fe_inflight_release(struct vuf_frontend *fe)
{
    if (fe->inflight_fd >= 0)
        close(fe->inflight_fd);
    fe->inflight_fd = -1;
    memset(&fe->inflight, 0, sizeof(fe->inflight));
    fe->inflight_state = FE_INFL_UNKNOWN;
}

int vuf_frontend_inflight_export(struct vuf_device *dev, struct vuf_inflight_area *out)
{
    struct vuf_frontend *fe;
    int fd;

    if (!vuf_device_is_frontend(dev) || !out)
        return -EINVAL;
    fe = fe_of(dev);
    if (fe->inflight_state != FE_INFL_AREA)
        return -ENOENT;
    fd = fcntl(fe->inflight_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    out->fd = fd;
    out->mmap_size = fe->inflight.mmap_size;
    out->mmap_offset = fe->inflight.mmap_offset;
    out->num_queues = fe->inflight.num_queues;
    out->queue_size = fe->inflight.queue_size;
    return 0;
}
