/* SPDX-License-Identifier: MIT */
/*
 * vuf-backend-blk - vuf's reference vhost-user-blk back-end.
 *
 * A real device process built on vuf's back-end server (vuf/server.h),
 * offering what the packaged back-ends do not, so that every front-end path
 * has something to talk to: MQ, CONFIG, REPLY_ACK, BACKEND_REQ (+SEND_FD),
 * RESET_DEVICE, CONFIGURE_MEM_SLOTS, STATUS, DEVICE_STATE, SHMEM and
 * INFLIGHT_SHMFD (split and packed layouts).
 *
 * Conventions of real back-ends (qemu-storage-daemon): --socket-path or
 * --fd, a stale socket is replaced, one front-end at a time and the next
 * one accepted when it leaves, logs on stderr, exit 0 on SIGTERM/SIGINT
 * removing the socket, --print-capabilities prints JSON.
 *
 * One thread runs the protocol and the data path (see blk_device.h); handlers
 * change ring and memory state only between requests.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blk_device.h"
#include "peer_eventfd.h"
#include "vuf/log.h"

#define DEFAULT_QUEUES 2u
#define DEFAULT_QUEUE_SIZE_MAX 1024u
/* CHECK_DEVICE_STATE waits this long for a transfer still running. */
#define CHECK_WAIT_MS 3000

/* Protocol features this back-end implements. */
#define BLK_PROTOCOL_FEATURES                                                                      \
    (VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ) |                \
     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(BACKEND_SEND_FD) | VUF_PROTO_MASK(RESET_DEVICE) |     \
     VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) | VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(DEVICE_STATE) | \
     VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(INFLIGHT_SHMFD))

/* ------------------------------------------------------------------------ */
/* Config space                                                             */
/* ------------------------------------------------------------------------ */

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* struct virtio_blk_config (virtio 1.2 §5.2.4), first 60 bytes. */
static void build_config(const struct blk_dev *d, uint8_t cfg[BLK_CONFIG_SIZE])
{
    memset(cfg, 0, BLK_CONFIG_SIZE);
    put_le(cfg + 0, d->capacity, 8);              /* capacity */
    put_le(cfg + 12, d->o.queue_size_max - 2, 4); /* seg_max: queue size - header - status */
    put_le(cfg + 20, BLK_SECTOR, 4);              /* blk_size */
    cfg[BLK_CONFIG_WRITEBACK_OFF] = d->writeback; /* writeback */
    put_le(cfg + 34, d->nq, 2);                   /* num_queues */
    if (!d->o.read_only) {
        put_le(cfg + 36, BLK_MAX_DISCARD_SECTORS, 4); /* max_discard_sectors */
        put_le(cfg + 40, BLK_MAX_DISCARD_SEG, 4);     /* max_discard_seg */
        put_le(cfg + 44, 1, 4);                       /* discard_sector_alignment */
        put_le(cfg + 48, BLK_MAX_DISCARD_SECTORS, 4); /* max_write_zeroes_sectors */
        put_le(cfg + 52, BLK_MAX_DISCARD_SEG, 4);     /* max_write_zeroes_seg */
        cfg[56] = 1;                                  /* write_zeroes_may_unmap */
    }
}

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static struct be_vq *vq_at(struct blk_dev *d, uint32_t index, const char *what)
{
    if (index >= d->nq) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u does not exist (%u queues)", what, index, d->nq);
        return NULL;
    }
    return &d->vqs[index];
}

static bool all_rings_stopped(const struct blk_dev *d)
{
    for (unsigned i = 0; i < d->nq; i++)
        if (d->vqs[i].started)
            return false;
    return true;
}

/* Take request fd i out of the server's hands. */
static int take_fd(struct vuf_msg *req, unsigned i)
{
    int fd = req->fds[i];
    req->fds[i] = -1;
    return fd;
}

/* Decode a vring state request and find its queue (a missing one is
 * logged under the request's name). */
static int vring_state_req(struct blk_dev *d, struct vuf_msg *req, struct vuf_vring_state *s,
                           struct be_vq **vq)
{
    if (vuf_decode_vring_state(req, s) < 0)
        return -EPROTO;
    *vq = vq_at(d, s->index, vuf_request_name(req->hdr.request));
    return *vq ? 0 : -EINVAL;
}

/* The same for a vring file request (KICK, CALL, ERR). */
static int vring_file_req(struct blk_dev *d, struct vuf_msg *req, uint32_t *index, bool *nofd,
                          struct be_vq **vq)
{
    if (vuf_decode_vring_file(req, index, nofd) < 0)
        return -EPROTO;
    *vq = vq_at(d, *index, vuf_request_name(req->hdr.request));
    return *vq ? 0 : -EINVAL;
}

/* Decode a feature mask, refusing bits that were not offered. */
static int decode_offered(struct vuf_msg *req, uint64_t offered, uint64_t *f)
{
    if (vuf_decode_u64(req, f) < 0)
        return -EPROTO;
    if (*f & ~offered) {
        vuf_log(VUF_LOG_ERROR, "%s 0x%" PRIx64 ": bits 0x%" PRIx64 " not offered",
                vuf_request_name(req->hdr.request), *f, *f & ~offered);
        return -EINVAL;
    }
    return 0;
}

static void reply_u64(struct vuf_msg *reply, uint64_t v)
{
    reply->payload.u64 = v;
    reply->hdr.size = sizeof(uint64_t);
}

/* The layout follows the driver's ack of RING_PACKED (set before any ring
 * message, SET_FEATURES being sent first). */
static void sync_layout(struct blk_dev *d, struct be_vq *vq)
{
    bool packed = d->acked_features & (1ull << VUF_VIRTIO_F_RING_PACKED);

    if (vq->packed != packed)
        vq->translated = false;
    vq->packed = packed;
}

static void kick_now(struct blk_dev *d, struct be_vq *vq)
{
    if (be_vq_ready(vq, &d->mem))
        blk_process_vq(d, vq);
}

/* A RAM disk's data moves by memcpy through a shared mapping of its memfd
 * (coherent with the fd: fallocate, state save and load still use it);
 * without the mapping, by pread/pwrite. */
static void map_ram(struct blk_dev *d, bool fresh)
{
    size_t words = (size_t)((d->capacity * BLK_SECTOR / 4096 + 63) / 64);
    struct stat st;
    void *p;

    if (!d->disk_is_ram || d->disk_map || d->capacity == 0)
        return;
    /* A shorter file (a loaded image) would fault past its end: keep the
     * syscalls, which return errors instead. */
    if (fstat(d->disk_fd, &st) < 0 || (uint64_t)st.st_size < d->capacity * BLK_SECTOR)
        return;
    d->disk_touched = calloc(words, sizeof(uint64_t));
    if (!d->disk_touched)
        return;
    /* A loaded image may hold data anywhere. */
    if (!fresh)
        memset(d->disk_touched, 0xff, words * sizeof(uint64_t));
    p = mmap(NULL, d->capacity * BLK_SECTOR, PROT_READ | PROT_WRITE, MAP_SHARED, d->disk_fd, 0);
    if (p == MAP_FAILED) {
        vuf_log(VUF_LOG_WARN, "RAM disk: mmap failed (%s); using pread/pwrite", strerror(errno));
        free(d->disk_touched);
        d->disk_touched = NULL;
    } else {
        d->disk_map = p;
    }
}

static void unmap_ram(struct blk_dev *d)
{
    if (d->disk_map)
        munmap(d->disk_map, d->capacity * BLK_SECTOR);
    d->disk_map = NULL;
    free(d->disk_touched);
    d->disk_touched = NULL;
}

/* Finish the running state transfer (if any); apply a successful load. */
static void finish_xfer(struct blk_dev *d, int timeout_ms)
{
    struct blk_loaded l;
    int r;

    if (!d->xfer)
        return;
    r = blk_xfer_finish(d->xfer, timeout_ms, &l);
    d->xfer = NULL;
    if (r == 0 && d->xfer_is_load) {
        if (!all_rings_stopped(d)) {
            vuf_log(VUF_LOG_ERROR, "device state load: a ring was started during the "
                                   "transfer; state not applied");
            r = -EBUSY;
        } else {
            d->writeback = l.st.writeback;
            for (unsigned i = 0; i < d->nq; i++) {
                struct be_vq *vq = &d->vqs[i];
                sync_layout(d, vq);
                vq->last_avail = l.st.q[i].next_avail;
                /* Completions are synchronous: at a save every chain taken
                 * was used, so the used position is the avail one. */
                vq->pk_used_base = vq->last_avail;
                __atomic_store_n(&vq->completed, l.st.q[i].completed, __ATOMIC_RELAXED);
                __atomic_store_n(&vq->bytes_read, l.st.q[i].bytes_read, __ATOMIC_RELAXED);
                __atomic_store_n(&vq->bytes_written, l.st.q[i].bytes_written, __ATOMIC_RELAXED);
            }
            if (l.image_fd >= 0) {
                unmap_ram(d);
                close(d->disk_fd);
                d->disk_fd = l.image_fd;
                l.image_fd = -1;
                map_ram(d, false);
            }
            vuf_log(VUF_LOG_INFO, "device state loaded");
        }
    }
    blk_loaded_free(&l);
    d->xfer_result = r;
}

/* Stop and forget every ring (RESET_DEVICE, RESET_OWNER, disconnect). */
static void reset_rings(struct blk_dev *d)
{
    for (unsigned i = 0; i < d->nq; i++)
        be_vq_reset(&d->vqs[i]);
}

/* ------------------------------------------------------------------------ */
/* Inflight area (INFLIGHT_SHMFD)                                           */
/* ------------------------------------------------------------------------ */

void *blk_infl_region(struct blk_dev *d, unsigned i)
{
    if (!d->infl_base || i >= d->infl_nq)
        return NULL;
    return d->infl_base + d->infl_region * i;
}

/*
 * Bytes per queue of an area for `nq` queues of `qsize` entries: the
 * packed layout's when the driver acked RING_PACKED, and also when no
 * SET_FEATURES has come yet (QEMU asks for the area before it sends the
 * features), the split one's only when the features say split. A split
 * ring fits in a packed-sized region.
 */
static uint64_t infl_region_for(const struct blk_dev *d, uint16_t qsize)
{
    if (d->features_set && !(d->acked_features & (1ull << VUF_VIRTIO_F_RING_PACKED)))
        return be_infl_region_size(qsize);
    return be_inflpk_region_size(qsize);
}

static void infl_unmap(struct blk_dev *d)
{
    for (unsigned i = 0; i < d->nq; i++)
        be_vq_infl_attach(&d->vqs[i], NULL, 0, 0);
    if (d->infl_map) {
        be_guard_del(d->infl_map);
        munmap(d->infl_map, d->infl_map_len);
    }
    d->infl_map = NULL;
    d->infl_base = NULL;
    d->infl_map_len = 0;
    d->infl_nq = d->infl_qsize = 0;
}

/* Map [offset, offset + size) of fd as the inflight area of `nq` regions
 * of `region` bytes, replacing the current one. `fresh`: write the headers
 * (a new zeroed memfd); otherwise every region's header must already say
 * version 1 and desc_num (at the same offsets in both layouts). */
static int infl_map(struct blk_dev *d, int fd, uint64_t offset, uint64_t size, uint16_t nq,
                    uint16_t qsize, uint64_t region, bool fresh)
{
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), delta = offset % page;
    void *m;

    if (size > SIZE_MAX - delta)
        return -EINVAL;
    m = mmap(NULL, (size_t)(size + delta), PROT_READ | PROT_WRITE, MAP_SHARED, fd,
             (off_t)(offset - delta));
    if (m == MAP_FAILED) {
        int e = errno;
        vuf_log(VUF_LOG_ERROR, "inflight area: mmap: %s", strerror(e));
        return -e;
    }
    /* The front-end's file may shrink under us too (mem.h). */
    be_guard_add(m, (size_t)(size + delta));
    for (unsigned i = 0; i < nq; i++) {
        struct be_infl_hdr *h = (struct be_infl_hdr *)((uint8_t *)m + delta + region * i);
        if (fresh) {
            h->version = BE_INFL_VERSION;
            h->desc_num = qsize;
        } else if (h->version != BE_INFL_VERSION || h->desc_num != qsize) {
            vuf_log(VUF_LOG_ERROR,
                    "SET_INFLIGHT_FD: queue %u region has version %u, desc_num %u "
                    "(want %u, %u)",
                    i, h->version, h->desc_num, BE_INFL_VERSION, qsize);
            be_guard_del(m);
            munmap(m, (size_t)(size + delta));
            return -EINVAL;
        }
    }
    infl_unmap(d);
    d->infl_map = m;
    d->infl_map_len = (size_t)(size + delta);
    d->infl_base = (uint8_t *)m + delta;
    d->infl_nq = nq;
    d->infl_qsize = qsize;
    d->infl_region = region;
    return 0;
}

/* Checks shared by GET and SET_INFLIGHT_FD. */
static int infl_request_ok(struct blk_dev *d, struct vuf_msg *req, struct vuf_inflight *in)
{
    const char *what = vuf_request_name(req->hdr.request);

    if (vuf_decode_inflight(req, in) < 0)
        return -EPROTO;
    if (!(d->acked_protocol & VUF_PROTO_MASK(INFLIGHT_SHMFD))) {
        vuf_log(VUF_LOG_ERROR, "%s: INFLIGHT_SHMFD was not negotiated", what);
        return -ENOTSUP;
    }
    if (in->num_queues > d->nq || in->queue_size > d->o.queue_size_max) {
        vuf_log(VUF_LOG_ERROR, "%s: %u queues of %u entries (limits: %u queues of %u)", what,
                in->num_queues, in->queue_size, d->nq, d->o.queue_size_max);
        return -EINVAL;
    }
    if (!all_rings_stopped(d)) {
        vuf_log(VUF_LOG_ERROR, "%s: a ring is started", what);
        return -EBUSY;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Handlers (vuf_server_handler)                                            */
/* ------------------------------------------------------------------------ */

static int h_set_features(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    uint64_t f;
    int r = decode_offered(req, d->features, &f);

    if (r < 0)
        return r;
    d->acked_features = f;
    d->features_set = true;
    /* Without PROTOCOL_FEATURES rings start enabled (spec, "Ring states"). */
    if (!(f & (1ull << VUF_VHOST_F_PROTOCOL_FEATURES)))
        for (unsigned i = 0; i < d->nq; i++)
            d->vqs[i].enabled = true;
    return 0;
}

static int h_set_protocol_features(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    uint64_t f;
    int r = decode_offered(req, d->protocol_features, &f);

    if (r < 0)
        return r;
    d->acked_protocol = f;
    be_breq_slot_set_features(&d->slot, f);
    return 0;
}

static void reset_device(struct blk_dev *d)
{
    finish_xfer(d, 0);
    reset_rings(d);
    d->acked_features = 0;
    d->features_set = false;
    d->status = 0;
}

static int h_reset(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;

    vuf_log(VUF_LOG_INFO, "%s: rings reset", vuf_request_name(req->hdr.request));
    reset_device(d);
    return 0;
}

static int h_set_mem_table(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_mem_table t;
    int r;

    if (vuf_decode_mem_table(req, &t) < 0)
        return -EPROTO;
    r = be_mem_set_table(&d->mem, t.regions, req->fds, t.nregions);
    if (r < 0)
        return r;
    /* Started rings re-translate now, so a table that drops them is logged
     * at once rather than at the next kick. */
    for (unsigned i = 0; i < d->nq; i++)
        if (d->vqs[i].addr_set && d->vqs[i].num)
            be_vq_translate(&d->vqs[i], &d->mem);
    return 0;
}

static int h_get_max_mem_slots(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    reply_u64(reply, BE_MEM_MAX_SLOTS);
    return 0;
}

static int h_add_mem_reg(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_mem_region r;

    if (vuf_decode_mem_single(req, &r) < 0 || req->nfds != 1)
        return -EPROTO;
    return be_mem_add(&d->mem, &r, req->fds[0]);
}

static int h_rem_mem_reg(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_mem_region r;

    if (vuf_decode_mem_single(req, &r) < 0)
        return -EPROTO;
    return be_mem_remove(&d->mem, &r); /* an fd sent anyway is closed by the server */
}

static int h_set_vring_num(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_vring_state s;
    struct be_vq *vq;
    int r = vring_state_req(d, req, &s, &vq);

    if (r < 0)
        return r;
    if (s.num == 0 || s.num > d->o.queue_size_max || (s.num & (s.num - 1))) {
        vuf_log(VUF_LOG_ERROR, "SET_VRING_NUM %u: size %u is not a power of 2 in 1..%u", s.index,
                s.num, d->o.queue_size_max);
        return -EINVAL;
    }
    if (vq->started) {
        vuf_log(VUF_LOG_ERROR, "SET_VRING_NUM %u: ring is started", s.index);
        return -EBUSY;
    }
    vq->num = s.num;
    sync_layout(d, vq);
    if (vq->addr_set)
        be_vq_translate(vq, &d->mem);
    return 0;
}

static int h_set_vring_addr(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_vring_addr a;
    struct be_vq *vq;

    if (vuf_decode_vring_addr(req, &a) < 0)
        return -EPROTO;
    if (!(vq = vq_at(d, a.index, "SET_VRING_ADDR")))
        return -EINVAL;
    vq->addr = a;
    vq->addr_set = true;
    vq->broken = false;
    sync_layout(d, vq);
    if (vq->num == 0)
        return 0; /* checked once SET_VRING_NUM gives the size */
    if (be_vq_translate(vq, &d->mem) < 0)
        return -EFAULT;
    if (vq->started)
        kick_now(d, vq);
    return 0;
}

static int h_set_vring_base(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_vring_state s;
    struct be_vq *vq;
    int r = vring_state_req(d, req, &s, &vq);

    if (r < 0)
        return r;
    sync_layout(d, vq);
    if (vq->packed) {
        /* Bits 0-15: avail position | wrap << 15; 16-31 the used pair, or 0
         * from a front-end that sends the avail half only (as DPDK reads
         * it): used = avail then. */
        uint16_t avail = (uint16_t)s.num, used = (uint16_t)(s.num >> 16);

        if (!used)
            used = avail;
        if (vq->started) {
            vuf_log(VUF_LOG_ERROR, "SET_VRING_BASE %u: ring is started", s.index);
            return -EBUSY;
        }
        if ((avail & 0x7fff) >= BE_VQ_MAX_SIZE || (vq->num && (avail & 0x7fff) >= vq->num) ||
            (vq->num && (used & 0x7fff) >= vq->num)) {
            vuf_log(VUF_LOG_ERROR, "SET_VRING_BASE %u: 0x%x names a position past the ring",
                    s.index, s.num);
            return -EINVAL;
        }
        vq->last_avail = avail;
        vq->pk_used_base = used;
        vq->used_idx_valid = false;
        vq->broken = false;
        return 0;
    }
    if (s.num > 0xffff) {
        /* Split ring: bits 16-31 are reserved. */
        vuf_log(VUF_LOG_ERROR, "SET_VRING_BASE %u: 0x%x has reserved bits set", s.index, s.num);
        return -EINVAL;
    }
    if (vq->started) {
        vuf_log(VUF_LOG_ERROR, "SET_VRING_BASE %u: ring is started", s.index);
        return -EBUSY;
    }
    vq->last_avail = (uint16_t)s.num;
    vq->broken = false;
    return 0;
}

static int h_get_vring_base(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_vring_state s;
    struct be_vq *vq;
    int r = vring_state_req(d, req, &s, &vq);

    if (r < 0)
        return r;
    /* Requests complete synchronously; only held ones (the control hook)
     * are in flight, and a stopped ring has none. */
    if (vq->started)
        blk_drain_held(d, vq);
    reply->payload.state.index = s.index;
    reply->payload.state.num = be_vq_stop(vq);
    /* Packed: the used position | wrap in bits 16-31 (QEMU's encoding). */
    if (vq->packed)
        reply->payload.state.num |= (uint32_t)vq->pk_used_base << 16;
    reply->hdr.size = sizeof(reply->payload.state);
    vuf_log(VUF_LOG_INFO, "vq %u stopped at avail index %u", s.index, reply->payload.state.num);
    return 0;
}

static int h_set_vring_kick(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct be_vq *vq;
    uint32_t index;
    bool nofd;
    int r = vring_file_req(d, req, &index, &nofd, &vq);

    if (r < 0)
        return r;
    be_vq_set_kick(vq, nofd ? -1 : take_fd(req, 0));
    vq->polling = nofd;
    sync_layout(d, vq);
    if (!vq->started) {
        vq->used_idx_valid = false; /* re-read used->idx from memory */
        /* Requests the area records as in flight are recovered when the
         * ring is first ready (blk_process_vq). */
        be_vq_infl_attach(vq, blk_infl_region(d, index), d->infl_qsize, d->infl_region);
    }
    vq->started = true;
    vq->broken = false;
    vuf_log(VUF_LOG_INFO, "vq %u started (%s)", index, nofd ? "polling" : "kick eventfd");
    /* Buffers may already be waiting (after migration or a reconnect). */
    kick_now(d, vq);
    return 0;
}

static int h_set_vring_call(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct be_vq *vq;
    uint32_t index;
    bool nofd;
    int r = vring_file_req(d, req, &index, &nofd, &vq);

    if (r < 0)
        return r;
    if (req->hdr.request == VUF_REQ_SET_VRING_CALL)
        be_vq_set_call(vq, nofd ? -1 : take_fd(req, 0));
    else
        be_vq_set_err(vq, nofd ? -1 : take_fd(req, 0));
    return 0;
}

static int h_get_queue_num(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;

    reply_u64(reply, d->nq);
    return 0;
}

static int h_set_vring_enable(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_vring_state s;
    struct be_vq *vq;
    int r = vring_state_req(d, req, &s, &vq);

    if (r < 0)
        return r;
    if (s.num > 1) {
        vuf_log(VUF_LOG_ERROR, "SET_VRING_ENABLE %u: %u is neither 0 nor 1", s.index, s.num);
        return -EINVAL;
    }
    vq->enabled = s.num == 1;
    if (vq->enabled)
        kick_now(d, vq);
    return 0;
}

static int h_set_backend_req_fd(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_conn *c;
    int r = vuf_conn_adopt(take_fd(req, 0), &c);

    if (r < 0)
        return r;
    vuf_conn_set_channel(c, VUF_CH_BACKEND);
    be_breq_slot_set(&d->slot, c);
    vuf_log(VUF_LOG_INFO, "back-end request channel installed");
    return 0;
}

/* Does [offset, offset + size) lie within the config space, size > 0? */
static bool config_in_range(const struct vuf_config *c)
{
    return c->size != 0 && c->offset <= BLK_CONFIG_SIZE && c->size <= BLK_CONFIG_SIZE - c->offset;
}

static int h_get_config(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    uint8_t cfg[BLK_CONFIG_SIZE];
    struct vuf_config c;

    if (vuf_decode_config(req, &c) < 0)
        return -EPROTO;
    if (!config_in_range(&c)) {
        /* The protocol's refusal is an empty reply (the server sends it). */
        vuf_log(VUF_LOG_WARN, "GET_CONFIG offset %u size %u: outside the %u-byte config", c.offset,
                c.size, BLK_CONFIG_SIZE);
        return -EINVAL;
    }
    build_config(d, cfg);
    reply->payload.config.offset = c.offset;
    reply->payload.config.size = c.size;
    reply->payload.config.flags = c.flags;
    memcpy(reply->payload.config.region, cfg + c.offset, c.size);
    reply->hdr.size = VUF_CONFIG_HDR_SIZE + c.size;
    return 0;
}

static int h_set_config(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    uint8_t cfg[BLK_CONFIG_SIZE];
    struct vuf_config c;
    bool wb_in = false;

    if (vuf_decode_config(req, &c) < 0)
        return -EPROTO;
    if (!config_in_range(&c)) {
        vuf_log(VUF_LOG_ERROR, "SET_CONFIG offset %u size %u: outside the config", c.offset,
                c.size);
        return -EINVAL;
    }
    build_config(d, cfg);
    /* Only writeback is driver-writable (§5.2.4). Other bytes may come
     * along unchanged; with the migration flag their values are ignored. */
    for (uint32_t i = 0; i < c.size; i++) {
        uint32_t off = c.offset + i;
        if (off == BLK_CONFIG_WRITEBACK_OFF) {
            wb_in = true;
            if (c.region[i] > 1) {
                vuf_log(VUF_LOG_ERROR, "SET_CONFIG: writeback %u is not 0 or 1", c.region[i]);
                return -EINVAL;
            }
        } else if (c.region[i] != cfg[off] && c.flags != VUF_CONFIG_FLAG_MIGRATION) {
            vuf_log(VUF_LOG_ERROR, "SET_CONFIG: byte %u is read-only", off);
            return -EPERM;
        }
    }
    if (wb_in) {
        d->writeback = c.region[BLK_CONFIG_WRITEBACK_OFF - c.offset];
        vuf_log(VUF_LOG_INFO, "writeback cache %s", d->writeback ? "on" : "off");
    }
    return 0;
}

static int h_set_status(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    uint64_t v;

    if (vuf_decode_u64(req, &v) < 0)
        return -EPROTO;
    if (v > 0xff) {
        vuf_log(VUF_LOG_ERROR, "SET_STATUS 0x%" PRIx64 ": not a status byte", v);
        return -EINVAL;
    }
    /* A driver only adds bits; 0 is the one way back (virtio 1.2 §2.1). */
    if (v && (d->status & ~v)) {
        vuf_log(VUF_LOG_ERROR, "SET_STATUS 0x%" PRIx64 " clears bits of 0x%x (only 0 resets)", v,
                d->status);
        return -EINVAL;
    }
    /* DRIVER_OK before FEATURES_OK skips the feature negotiation. */
    if ((v & VUF_STATUS_DRIVER_OK) && !(v & VUF_STATUS_FEATURES_OK)) {
        vuf_log(VUF_LOG_ERROR, "SET_STATUS 0x%" PRIx64 ": DRIVER_OK without FEATURES_OK", v);
        return -EINVAL;
    }
    if (v != d->status)
        vuf_log(VUF_LOG_DEBUG, "status 0x%x -> 0x%" PRIx64, d->status, v);
    d->status = (uint8_t)v;
    return 0;
}

static int h_get_status(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;

    reply_u64(reply, d->status);
    return 0;
}

static int h_set_device_state_fd(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_device_state ds;
    int r, err = 0;

    if (vuf_decode_device_state(req, &ds) < 0)
        return -EPROTO;
    finish_xfer(d, 0); /* a new transfer replaces an unfinished one */
    if (!all_rings_stopped(d)) {
        vuf_log(VUF_LOG_ERROR, "SET_DEVICE_STATE_FD: the device is not suspended");
        err = EBUSY;
    } else if (ds.direction == VUF_STATE_DIR_SAVE) {
        struct blk_state st = {
            .num_queues = d->nq, .capacity = d->capacity, .writeback = d->writeback};
        bool image = d->disk_is_ram && d->o.state_includes_ram;

        st.q = calloc(d->nq, sizeof(*st.q));
        if (!st.q)
            return -ENOMEM;
        for (unsigned i = 0; i < d->nq; i++) {
            const struct be_vq *vq = &d->vqs[i];
            st.q[i].next_avail = vq->last_avail;
            st.q[i].completed = __atomic_load_n(&vq->completed, __ATOMIC_RELAXED);
            st.q[i].bytes_read = __atomic_load_n(&vq->bytes_read, __ATOMIC_RELAXED);
            st.q[i].bytes_written = __atomic_load_n(&vq->bytes_written, __ATOMIC_RELAXED);
        }
        r = blk_xfer_start_save(take_fd(req, 0), &st, image ? d->disk_fd : -1,
                                image ? d->capacity * BLK_SECTOR : 0, &d->xfer);
        free(st.q);
        err = r < 0 ? -r : 0;
    } else {
        r = blk_xfer_start_load(take_fd(req, 0), d->nq, d->capacity, d->disk_is_ram, &d->xfer);
        err = r < 0 ? -r : 0;
    }
    d->xfer_is_load = ds.direction == VUF_STATE_DIR_LOAD;
    d->xfer_result = err ? -err : -EINPROGRESS;
    /* We use the front-end's fd: never one of our own. */
    reply_u64(reply, VUF_STATE_REPLY_NOFD | (uint64_t)(err & 0xff));
    return 0;
}

static int h_check_device_state(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;

    finish_xfer(d, CHECK_WAIT_MS);
    reply_u64(reply, d->xfer_result == 0 ? 0 : (uint64_t)(-d->xfer_result));
    return 0;
}

static int h_get_shmem_config(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;

    memset(&reply->payload.shmem, 0, sizeof(reply->payload.shmem));
    if (d->o.shm_size) {
        reply->payload.shmem.nregions = 1;
        reply->payload.shmem.memory_sizes[0] = d->o.shm_size;
    }
    reply->hdr.size = sizeof(reply->payload.shmem);
    return 0;
}

static int h_get_inflight_fd(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_inflight in;
    uint64_t size, region;
    int fd, r = infl_request_ok(d, req, &in);

    if (r < 0)
        return r;
    region = infl_region_for(d, in.queue_size);
    size = region * in.num_queues;
    fd = memfd_create("vuf-blk-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0) {
        r = -errno;
        vuf_log(VUF_LOG_ERROR, "GET_INFLIGHT_FD: memfd of %" PRIu64 " bytes: %s", size,
                strerror(-r));
        if (fd >= 0)
            close(fd);
        return r;
    }
    r = infl_map(d, fd, 0, size, in.num_queues, in.queue_size, region, true);
    if (r < 0) {
        close(fd);
        return r;
    }
    reply->payload.inflight = (struct vuf_inflight){.mmap_size = size,
                                                    .mmap_offset = 0,
                                                    .num_queues = in.num_queues,
                                                    .queue_size = in.queue_size};
    reply->hdr.size = sizeof(reply->payload.inflight);
    reply->fds[0] = fd; /* the server closes it once sent; our mapping stays */
    reply->nfds = 1;
    vuf_log(VUF_LOG_INFO, "inflight area: %u queues of %u entries, %" PRIu64 " bytes (new, %s)",
            in.num_queues, in.queue_size, size,
            region == be_infl_region_size(in.queue_size) ? "split" : "packed-sized");
    return 0;
}

static int h_set_inflight_fd(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct blk_dev *d = opaque;
    struct vuf_inflight in;
    struct stat st;
    uint64_t need, region;
    int r = infl_request_ok(d, req, &in);

    if (r < 0)
        return r;
    /* Our GET made it one of two sizes: packed-sized regions if it holds
     * them, else split ones. */
    region = be_inflpk_region_size(in.queue_size);
    if (in.mmap_size < region * in.num_queues)
        region = be_infl_region_size(in.queue_size);
    need = region * in.num_queues;
    if (req->nfds != 1 || req->fds[0] < 0 || fstat(req->fds[0], &st) < 0) {
        vuf_log(VUF_LOG_ERROR, "SET_INFLIGHT_FD: no usable fd");
        return -EBADF;
    }
    if (in.mmap_size < need || in.mmap_offset % BE_INFL_ALIGN ||
        in.mmap_offset > UINT64_MAX - in.mmap_size || st.st_size < 0 ||
        (uint64_t)st.st_size < in.mmap_offset + in.mmap_size) {
        vuf_log(VUF_LOG_ERROR,
                "SET_INFLIGHT_FD: size %" PRIu64 " at offset %" PRIu64 " in a file of %lld "
                "bytes; %u queues of %u entries need %" PRIu64 " bytes, %u-aligned",
                in.mmap_size, in.mmap_offset, (long long)st.st_size, in.num_queues, in.queue_size,
                need, BE_INFL_ALIGN);
        return -EINVAL;
    }
    r = infl_map(d, req->fds[0], in.mmap_offset, in.mmap_size, in.num_queues, in.queue_size, region,
                 false);
    if (r < 0)
        return r;
    /* The server closes the fd; the mapping keeps the memory. */
    vuf_log(VUF_LOG_INFO, "inflight area: %u queues of %u entries, %" PRIu64 " bytes (set)",
            in.num_queues, in.queue_size, in.mmap_size);
    return 0;
}

static void fill_server_config(struct blk_dev *d, struct vuf_server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->channel = VUF_CH_FRONTEND;
    cfg->features = d->features;
    cfg->protocol_features = d->protocol_features;
    cfg->opaque = d;
    cfg->handlers[VUF_REQ_SET_FEATURES] = h_set_features;
    cfg->handlers[VUF_REQ_SET_PROTOCOL_FEATURES] = h_set_protocol_features;
    cfg->handlers[VUF_REQ_RESET_OWNER] = h_reset;
    cfg->handlers[VUF_REQ_RESET_DEVICE] = h_reset;
    cfg->handlers[VUF_REQ_SET_MEM_TABLE] = h_set_mem_table;
    cfg->handlers[VUF_REQ_GET_MAX_MEM_SLOTS] = h_get_max_mem_slots;
    cfg->handlers[VUF_REQ_ADD_MEM_REG] = h_add_mem_reg;
    cfg->handlers[VUF_REQ_REM_MEM_REG] = h_rem_mem_reg;
    cfg->handlers[VUF_REQ_SET_VRING_NUM] = h_set_vring_num;
    cfg->handlers[VUF_REQ_SET_VRING_ADDR] = h_set_vring_addr;
    cfg->handlers[VUF_REQ_SET_VRING_BASE] = h_set_vring_base;
    cfg->handlers[VUF_REQ_GET_VRING_BASE] = h_get_vring_base;
    cfg->handlers[VUF_REQ_SET_VRING_KICK] = h_set_vring_kick;
    cfg->handlers[VUF_REQ_SET_VRING_CALL] = h_set_vring_call;
    cfg->handlers[VUF_REQ_SET_VRING_ERR] = h_set_vring_call;
    cfg->handlers[VUF_REQ_GET_QUEUE_NUM] = h_get_queue_num;
    cfg->handlers[VUF_REQ_SET_VRING_ENABLE] = h_set_vring_enable;
    cfg->handlers[VUF_REQ_SET_BACKEND_REQ_FD] = h_set_backend_req_fd;
    cfg->handlers[VUF_REQ_GET_CONFIG] = h_get_config;
    cfg->handlers[VUF_REQ_SET_CONFIG] = h_set_config;
    cfg->handlers[VUF_REQ_SET_STATUS] = h_set_status;
    cfg->handlers[VUF_REQ_GET_STATUS] = h_get_status;
    cfg->handlers[VUF_REQ_SET_DEVICE_STATE_FD] = h_set_device_state_fd;
    cfg->handlers[VUF_REQ_CHECK_DEVICE_STATE] = h_check_device_state;
    cfg->handlers[VUF_REQ_GET_SHMEM_CONFIG] = h_get_shmem_config;
    cfg->handlers[VUF_REQ_GET_INFLIGHT_FD] = h_get_inflight_fd;
    cfg->handlers[VUF_REQ_SET_INFLIGHT_FD] = h_set_inflight_fd;
}

/* ------------------------------------------------------------------------ */
/* Main loop                                                                */
/* ------------------------------------------------------------------------ */

static void end_connection(struct blk_dev *d)
{
    finish_xfer(d, 0);
    reset_rings(d);
    be_mem_clear(&d->mem);
    infl_unmap(d); /* the front-end keeps it (and what is marked in it) */
    be_breq_slot_set(&d->slot, NULL);
    be_breq_slot_set_features(&d->slot, 0);
    d->acked_features = d->acked_protocol = 0;
    d->features_set = false;
    d->status = 0;
    vuf_server_free(d->srv);
    d->srv = NULL;
}

/*
 * Drain a kick eventfd; false if it is dead (error, hang-up, not an
 * eventfd). The front-end holds the same file description: a thread of its
 * own may read the count between our poll() and our read(), or two queues
 * may share one eventfd, and the front-end may have cleared O_NONBLOCK, so a
 * read() could wait for ever: vuf_peer_efd_take never waits.
 */
static bool drain_kick(struct be_vq *vq, short revents)
{
    int r;

    if (revents & (POLLERR | POLLNVAL))
        return false;
    if (!(revents & POLLIN))
        return !(revents & POLLHUP);
    r = vuf_peer_efd_take(vq->kick_fd, NULL);
    return r >= 0;
}

/* Guest memory lost to a shrunk file (mem.h): a ring in it is broken
 * (logged, err eventfd), the others go on. */
static void check_lost(struct blk_dev *d)
{
    if (!be_mem_lost_check(&d->mem))
        return;
    for (unsigned i = 0; i < d->nq; i++) {
        struct be_vq *vq = &d->vqs[i];

        if (vq->started && !vq->broken && vq->addr_set && vq->num &&
            be_vq_translate(vq, &d->mem) < 0)
            be_vq_break(vq, "its ring lies in guest memory that was lost");
    }
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool ring_live(const struct be_vq *vq)
{
    return vq->started && vq->enabled && !vq->broken && vq->kick_fd >= 0;
}

/*
 * Adaptive polling (--poll-us, like QEMU's poll-max-ns): before sleeping
 * in poll(), spin on the live rings' avail indexes for up to poll_us with
 * the driver's kicks suppressed, so that a request arriving soon after the
 * last costs neither side a syscall. The front-end socket waits at most
 * poll_us. True if a ring has work (kicks stay off: the caller processes
 * it and spins again); false once kicks are back on and the rings idle.
 */
static bool poll_rings(struct blk_dev *d)
{
    int64_t end;
    unsigned live = 0;

    if (!d->o.poll_us)
        return false;
    for (unsigned i = 0; i < d->nq; i++)
        if (ring_live(&d->vqs[i]) && d->vqs[i].used) {
            be_vq_set_kicks(&d->vqs[i], false);
            live++;
        }
    if (!live)
        return false;
    end = mono_ns() + (int64_t)d->o.poll_us * 1000;
    for (unsigned spins = 0;; spins++) {
        for (unsigned i = 0; i < d->nq; i++)
            if (ring_live(&d->vqs[i]) && be_vq_has_avail(&d->vqs[i]))
                return true;
        if ((spins & 63) == 63 && mono_ns() >= end)
            break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    for (unsigned i = 0; i < d->nq; i++)
        be_vq_set_kicks(&d->vqs[i], true);
    /* A request added before the wish was visible sent no kick. */
    for (unsigned i = 0; i < d->nq; i++)
        if (ring_live(&d->vqs[i]) && be_vq_has_avail(&d->vqs[i]))
            return true;
    return false;
}

/* Serve one front-end until it leaves (0) or a signal asks us to stop (1). */
static int serve(struct blk_dev *d, struct vuf_conn *conn, int sig_fd)
{
    struct pollfd *pfd = calloc(3 + d->nq, sizeof(*pfd));
    unsigned *which = calloc(3 + d->nq, sizeof(*which));
    struct vuf_server_config cfg;
    int ret = 0, r;

    fill_server_config(d, &cfg);
    if (!pfd || !which) {
        free(pfd);
        free(which);
        vuf_conn_close(conn);
        return 0;
    }
    r = vuf_server_new(conn, &cfg, &d->srv);
    if (r < 0) {
        free(pfd);
        free(which);
        return 0;
    }
    vuf_log(VUF_LOG_INFO, "front-end connected");
    int64_t last_look = mono_ns();
    for (;;) {
        unsigned n = 3;
        int timeout = -1;

        check_lost(d);
        if (poll_rings(d)) {
            for (unsigned i = 0; i < d->nq; i++)
                if (ring_live(&d->vqs[i]))
                    blk_process_vq(d, &d->vqs[i]);
            /* The socket and signals get a look every millisecond, not
             * a poll() per batch. */
            if (mono_ns() - last_look < 1000000)
                continue;
            timeout = 0;
        }
        last_look = mono_ns();

        pfd[0] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = vuf_server_fd(d->srv), .events = POLLIN};
        pfd[2] = (struct pollfd){.fd = d->hold_efd, .events = POLLIN};
        for (unsigned i = 0; i < d->nq; i++) {
            struct be_vq *vq = &d->vqs[i];
            if (!vq->started || !vq->enabled || vq->broken)
                continue;
            if (vq->pending)
                timeout = 0;
            else if (vq->polling && timeout != 0)
                timeout = 1;
            if (vq->kick_fd >= 0) {
                which[n] = i;
                pfd[n++] = (struct pollfd){.fd = vq->kick_fd, .events = POLLIN};
            }
        }
        r = poll(pfd, n, timeout);
        if (r < 0 && errno != EINTR) {
            vuf_log(VUF_LOG_ERROR, "poll: %s", strerror(errno));
            break;
        }
        if (r > 0 && pfd[0].revents) {
            ret = 1;
            break;
        }
        if (r > 0 && pfd[1].revents) {
            /* Serve the front-end first; kick fds may change under us, so
             * they wait for the next round. */
            r = vuf_server_process_one(d->srv);
            if (vuf_conn_error_is_fatal(r)) {
                if (r != -ECONNRESET)
                    vuf_log(VUF_LOG_WARN, "front-end connection failed: %s", vuf_strerror(r));
                break;
            }
            continue;
        }
        if (r > 0 && pfd[2].revents) {
            /* "hold off": the held requests are processed below. */
            uint64_t v;
            if (read(d->hold_efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                vuf_log(VUF_LOG_DEBUG, "hold eventfd read failed");
            for (unsigned i = 0; i < d->nq; i++)
                if (d->vqs[i].nheld)
                    d->vqs[i].pending = true;
        }
        for (unsigned k = 3; r > 0 && k < n; k++) {
            struct be_vq *vq = &d->vqs[which[k]];
            if (!pfd[k].revents)
                continue;
            if (!drain_kick(vq, pfd[k].revents)) {
                vuf_log(VUF_LOG_ERROR, "vq %u: kick fd hung up; waiting for a new one", vq->index);
                be_vq_set_kick(vq, -1);
            }
            blk_process_vq(d, vq);
        }
        for (unsigned i = 0; i < d->nq; i++) {
            struct be_vq *vq = &d->vqs[i];
            if (vq->started && vq->enabled && (vq->pending || vq->polling))
                blk_process_vq(d, vq);
        }
    }
    vuf_log(VUF_LOG_INFO, "front-end gone");
    end_connection(d);
    free(pfd);
    free(which);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                    */
/* ------------------------------------------------------------------------ */

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    uint64_t v, mul = 1;

    if (!s || !*s || *s == '-')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -EINVAL;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mul = 1ull << 10;
        end++;
        break;
    case 'm':
    case 'M':
        mul = 1ull << 20;
        end++;
        break;
    case 'g':
    case 'G':
        mul = 1ull << 30;
        end++;
        break;
    case 't':
    case 'T':
        mul = 1ull << 40;
        end++;
        break;
    default:
        return -EINVAL;
    }
    if (*end != '\0' || (v && mul > UINT64_MAX / v))
        return -EINVAL;
    *out = v * mul;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: vuf-backend-blk --socket-path=PATH | --fd=N\n"
               "                       --file=IMAGE | --ram=BYTES\n"
               "                       [--num-queues=N (2)] [--queue-size-max=N (1024)]\n"
               "                       [--read-only] [--shm-size=BYTES (0)] [--shm-file=PATH]\n"
               "                       [--control=PATH] [--state-includes-ram]\n"
               "                       [--protocol-features=MASK] [--poll-us=N (0)]\n"
               "       vuf-backend-blk --print-capabilities\n"
               "BYTES take K, M, G, T suffixes (binary). VUF_LOG=debug traces every message.\n");
}

static void print_capabilities(void)
{
    /* The vhost-user.json convention (docs/interop/vhost-user.json). */
    printf("{\n  \"type\": \"block\",\n  \"features\": [\n    \"read-only\",\n"
           "    \"blk-file\"\n  ]\n}\n");
}

enum {
    OPT_SOCKET = 256,
    OPT_FD,
    OPT_FILE,
    OPT_RAM,
    OPT_NUM_QUEUES,
    OPT_QSIZE,
    OPT_RO,
    OPT_SHM_SIZE,
    OPT_SHM_FILE,
    OPT_CAPS,
    OPT_CONTROL,
    OPT_STATE_RAM,
    OPT_PF_MASK,
    OPT_POLL_US,
    OPT_HELP,
};

static int parse_args(int argc, char **argv, struct blk_opts *o, bool *caps)
{
    static const struct option longopts[] = {
        {"socket-path", required_argument, NULL, OPT_SOCKET},
        {"fd", required_argument, NULL, OPT_FD},
        {"file", required_argument, NULL, OPT_FILE},
        {"ram", required_argument, NULL, OPT_RAM},
        {"num-queues", required_argument, NULL, OPT_NUM_QUEUES},
        {"queue-size-max", required_argument, NULL, OPT_QSIZE},
        {"read-only", no_argument, NULL, OPT_RO},
        {"shm-size", required_argument, NULL, OPT_SHM_SIZE},
        {"shm-file", required_argument, NULL, OPT_SHM_FILE},
        {"print-capabilities", no_argument, NULL, OPT_CAPS},
        {"control", required_argument, NULL, OPT_CONTROL},
        {"state-includes-ram", no_argument, NULL, OPT_STATE_RAM},
        {"protocol-features", required_argument, NULL, OPT_PF_MASK},
        {"poll-us", required_argument, NULL, OPT_POLL_US},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    uint64_t v;
    int c;

    memset(o, 0, sizeof(*o));
    o->fd = -1;
    o->num_queues = DEFAULT_QUEUES;
    o->queue_size_max = DEFAULT_QUEUE_SIZE_MAX;
    o->protocol_mask = ~0ull;
    *caps = false;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET:
            o->socket_path = optarg;
            break;
        case OPT_FD:
            if (parse_size(optarg, &v) < 0 || v > INT32_MAX)
                goto bad;
            o->fd = (int)v;
            break;
        case OPT_FILE:
            o->file = optarg;
            break;
        case OPT_RAM:
            if (parse_size(optarg, &o->ram) < 0 || o->ram == 0 || o->ram % BLK_SECTOR) {
                fprintf(stderr, "vuf-backend-blk: --ram must be a non-zero multiple of 512\n");
                return -1;
            }
            break;
        case OPT_NUM_QUEUES:
            if (parse_size(optarg, &v) < 0 || v == 0 || v > BLK_MAX_QUEUES) {
                fprintf(stderr, "vuf-backend-blk: --num-queues must be 1..%u\n", BLK_MAX_QUEUES);
                return -1;
            }
            o->num_queues = (unsigned)v;
            break;
        case OPT_QSIZE:
            if (parse_size(optarg, &v) < 0 || v < 4 || v > BE_VQ_MAX_SIZE || (v & (v - 1))) {
                fprintf(stderr, "vuf-backend-blk: --queue-size-max must be a power of 2 in "
                                "4..32768\n");
                return -1;
            }
            o->queue_size_max = (unsigned)v;
            break;
        case OPT_RO:
            o->read_only = true;
            break;
        case OPT_SHM_SIZE:
            if (parse_size(optarg, &o->shm_size) < 0 ||
                o->shm_size % (uint64_t)sysconf(_SC_PAGESIZE)) {
                fprintf(stderr, "vuf-backend-blk: --shm-size must be a multiple of the "
                                "page size\n");
                return -1;
            }
            break;
        case OPT_SHM_FILE:
            o->shm_file = optarg;
            break;
        case OPT_CAPS:
            *caps = true;
            break;
        case OPT_CONTROL:
            o->control_path = optarg;
            break;
        case OPT_STATE_RAM:
            o->state_includes_ram = true;
            break;
        case OPT_PF_MASK:
            if (parse_size(optarg, &o->protocol_mask) < 0)
                goto bad;
            break;
        case OPT_POLL_US:
            if (parse_size(optarg, &v) < 0 || v > 1000000) {
                fprintf(stderr, "vuf-backend-blk: --poll-us must be 0..1000000\n");
                return -1;
            }
            o->poll_us = (unsigned)v;
            break;
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            goto bad;
        }
    }
    if (*caps)
        return 0;
    if (optind < argc || (!o->socket_path) == (o->fd < 0) || (!o->file) == (o->ram == 0))
        goto bad;
    return 0;
bad:
    usage(stderr);
    return -1;
}

static int open_disk(struct blk_dev *d)
{
    uint64_t bytes;
    struct stat st;

    if (d->o.file) {
        d->disk_fd = open(d->o.file, (d->o.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (d->disk_fd < 0 || fstat(d->disk_fd, &st) < 0) {
            fprintf(stderr, "vuf-backend-blk: %s: %s\n", d->o.file, strerror(errno));
            return -1;
        }
        if (S_ISBLK(st.st_mode)) {
            if (ioctl(d->disk_fd, BLKGETSIZE64, &bytes) < 0) {
                fprintf(stderr, "vuf-backend-blk: %s: %s\n", d->o.file, strerror(errno));
                return -1;
            }
        } else if (S_ISREG(st.st_mode)) {
            bytes = (uint64_t)st.st_size;
        } else {
            fprintf(stderr, "vuf-backend-blk: %s: not a file or block device\n", d->o.file);
            return -1;
        }
    } else {
        d->disk_is_ram = true;
        bytes = d->o.ram;
        d->disk_fd = memfd_create("vuf-blk-ram", MFD_CLOEXEC);
        if (d->disk_fd < 0 || ftruncate(d->disk_fd, (off_t)bytes) < 0) {
            fprintf(stderr, "vuf-backend-blk: RAM disk of %" PRIu64 " bytes: %s\n", bytes,
                    strerror(errno));
            return -1;
        }
    }
    d->capacity = bytes / BLK_SECTOR;
    map_ram(d, true);
    return 0;
}

/* Byte i of the internal shared-memory pattern: i mod 251 (a prime, so
 * page-shifted views differ). */
static int open_shm(struct blk_dev *d)
{
    d->shm_fd = -1;
    if (d->o.shm_file) {
        d->shm_fd = open(d->o.shm_file, O_RDWR | O_CLOEXEC);
        if (d->shm_fd < 0) {
            fprintf(stderr, "vuf-backend-blk: %s: %s\n", d->o.shm_file, strerror(errno));
            return -1;
        }
        return 0;
    }
    if (d->o.shm_size == 0)
        return 0;
    d->shm_fd = memfd_create("vuf-blk-shm", MFD_CLOEXEC);
    if (d->shm_fd < 0 || ftruncate(d->shm_fd, (off_t)d->o.shm_size) < 0) {
        fprintf(stderr, "vuf-backend-blk: shared memory: %s\n", strerror(errno));
        return -1;
    }
    uint8_t *p = mmap(NULL, d->o.shm_size, PROT_READ | PROT_WRITE, MAP_SHARED, d->shm_fd, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "vuf-backend-blk: shared memory: %s\n", strerror(errno));
        return -1;
    }
    for (uint64_t i = 0; i < d->o.shm_size; i++)
        p[i] = (uint8_t)(i % 251);
    munmap(p, d->o.shm_size);
    return 0;
}

static int setup(struct blk_dev *d)
{
    unsigned max_segs = d->o.queue_size_max;

    d->nq = d->o.num_queues;
    d->writeback = 1;
    d->xfer_result = -ENODATA; /* no transfer yet */
    d->hold_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->hold_efd < 0) {
        perror("vuf-backend-blk: eventfd");
        return -1;
    }
    be_mem_init(&d->mem);
    be_breq_slot_init(&d->slot);
    if (open_disk(d) < 0 || open_shm(d) < 0)
        return -1;
    d->features = (1ull << VUF_VIRTIO_F_VERSION_1) | (1ull << VUF_VIRTIO_F_EVENT_IDX) |
                  (1ull << VUF_VIRTIO_F_INDIRECT_DESC) | (1ull << VUF_VIRTIO_F_RING_PACKED) |
                  (1ull << VUF_VHOST_F_PROTOCOL_FEATURES) | (1ull << VUF_BLK_F_SEG_MAX) |
                  (1ull << VUF_BLK_F_BLK_SIZE) | (1ull << VUF_BLK_F_FLUSH) |
                  (1ull << VUF_BLK_F_CONFIG_WCE) | (1ull << VUF_BLK_F_MQ);
    if (d->o.read_only)
        d->features |= 1ull << VUF_BLK_F_RO;
    else
        d->features |= (1ull << VUF_BLK_F_DISCARD) | (1ull << VUF_BLK_F_WRITE_ZEROES);
    d->protocol_features = BLK_PROTOCOL_FEATURES & d->o.protocol_mask;
    d->vqs = calloc(d->nq, sizeof(*d->vqs));
    if (!d->vqs)
        return -1;
    for (unsigned i = 0; i < d->nq; i++)
        if (be_vq_init(&d->vqs[i], i, max_segs) < 0) {
            d->nq = i + 1; /* teardown destroys only what was initialised */
            return -1;
        }
    if (d->o.control_path) {
        struct be_control_ctx ctx = {.slot = &d->slot,
                                     .shm_fd = d->shm_fd,
                                     .vqs = d->vqs,
                                     .nq = d->nq,
                                     .hold = &d->hold,
                                     .release_gen = &d->release_gen,
                                     .hold_efd = d->hold_efd};
        int r = be_control_start(d->o.control_path, &ctx, &d->control);
        if (r < 0) {
            fprintf(stderr, "vuf-backend-blk: control socket %s: %s\n", d->o.control_path,
                    strerror(-r));
            return -1;
        }
    }
    return 0;
}

static void teardown(struct blk_dev *d)
{
    be_breq_slot_set(&d->slot, NULL); /* wakes a control request in progress */
    be_control_stop(d->control);
    be_breq_slot_destroy(&d->slot);
    if (d->vqs)
        for (unsigned i = 0; i < d->nq; i++)
            be_vq_destroy(&d->vqs[i]);
    free(d->vqs);
    be_mem_clear(&d->mem);
    unmap_ram(d);
    if (d->disk_fd >= 0)
        close(d->disk_fd);
    if (d->shm_fd >= 0)
        close(d->shm_fd);
    if (d->hold_efd >= 0)
        close(d->hold_efd);
}

int main(int argc, char **argv)
{
    struct blk_dev d;
    bool caps, listening = true;
    int sig_fd = -1, listen_fd = -1, rc = 1, r;
    socklen_t len = sizeof(int);
    sigset_t set;

    memset(&d, 0, sizeof(d));
    d.disk_fd = d.shm_fd = d.hold_efd = -1;
    if (parse_args(argc, argv, &d.o, &caps) < 0)
        return 2;
    if (caps) {
        print_capabilities();
        return 0;
    }

    /* Signals arrive on a signalfd in the main loop; every thread inherits
     * the mask, so none of them is interrupted. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    sig_fd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sig_fd < 0) {
        perror("vuf-backend-blk: signalfd");
        return 1;
    }

    /* Before any front-end memory is mapped (mem.h). */
    r = be_guard_install();
    if (r < 0) {
        fprintf(stderr, "vuf-backend-blk: SIGBUS handler: %s\n", strerror(-r));
        goto out;
    }
    if (setup(&d) < 0)
        goto out;

    if (d.o.socket_path) {
        r = vuf_conn_listen(d.o.socket_path, &listen_fd);
        if (r < 0) {
            fprintf(stderr, "vuf-backend-blk: listen on %s: %s\n", d.o.socket_path, strerror(-r));
            goto out;
        }
    } else {
        int acc = 0;
        /* --fd: a listening socket is served like --socket-path; a
         * connected one is served once. */
        if (getsockopt(d.o.fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0) {
            fprintf(stderr, "vuf-backend-blk: --fd=%d: %s\n", d.o.fd, strerror(errno));
            goto out;
        }
        listen_fd = d.o.fd;
        listening = acc != 0;
    }
    vuf_log(VUF_LOG_INFO,
            "vuf-backend-blk: %s %s, %" PRIu64 " sectors%s, %u queues, features 0x%" PRIx64
            ", protocol features 0x%" PRIx64,
            listening ? "listening on" : "serving fd", d.o.socket_path ? d.o.socket_path : "(--fd)",
            d.capacity, d.o.read_only ? " read-only" : "", d.nq, d.features, d.protocol_features);

    if (!listening) {
        struct vuf_conn *c;
        listen_fd = -1;
        r = vuf_conn_adopt(d.o.fd, &c);
        if (r == 0)
            serve(&d, c, sig_fd);
        rc = 0;
        goto out;
    }
    for (;;) {
        struct pollfd p[2] = {{.fd = sig_fd, .events = POLLIN},
                              {.fd = listen_fd, .events = POLLIN}};
        struct vuf_conn *c;

        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents)
            break;
        r = vuf_conn_accept(listen_fd, 0, &c);
        if (r < 0) {
            vuf_log(VUF_LOG_WARN, "accept: %s", vuf_strerror(r));
            continue;
        }
        if (serve(&d, c, sig_fd) == 1)
            break;
    }
    vuf_log(VUF_LOG_INFO, "vuf-backend-blk: exiting");
    rc = 0;
out:
    if (listen_fd >= 0)
        close(listen_fd);
    if (d.o.socket_path && listen_fd >= 0)
        unlink(d.o.socket_path);
    teardown(&d);
    close(sig_fd);
    return rc;
}
