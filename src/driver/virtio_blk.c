/* SPDX-License-Identifier: MIT */
/* virtio-blk driver requests (virtio 1.2 §5.2.6) over a vuf_virtq. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "vuf/log.h"
#include "vuf/virtio_blk.h"

/* Per request, in guest memory: header, one discard/write-zeroes segment,
 * status byte. */
#define META_HDR 0u
#define META_SEG 16u
#define META_STATUS 32u
#define META_SIZE 64u

#define DATA_ALIGN 4096u
/* Preset so that a completion without a status write is caught. */
#define STATUS_UNSET 0xffu

enum req_state {
    RQ_IDLE,     /* in the pool */
    RQ_HELD,     /* borrowed by the caller, not in flight */
    RQ_INFLIGHT, /* on the queue */
    RQ_DONE,     /* completed, not yet given back */
    RQ_ORPHAN,   /* in flight, abandoned by a timed-out exec: back to the
                  * pool on completion */
};

struct vuf_blk_req {
    struct vuf_blk *blk;
    enum req_state state;
    bool prepared;
    struct vuf_blk_outhdr *hdr;
    struct vuf_blk_discard_wz *seg;
    uint8_t *status;
    uint64_t meta_gpa;
    void *data;
    uint64_t data_gpa;
    void *user;
    uint8_t result_status;
    uint32_t used_len;
    unsigned nchain;
    struct vuf_virtq_buf chain[VUF_BLK_MAX_SG + 2];
    struct vuf_blk_req *next; /* idle list or done FIFO */
    bool on_done;             /* queued for vuf_blk_reap() */
};

struct vuf_blk {
    struct vuf_virtq *vq;
    unsigned nreqs;
    uint32_t max_data;
    bool busy_poll;
    unsigned poll_us; /* adaptive: spin this long before sleeping */
    struct vuf_blk_req *reqs;
    struct vuf_blk_req *idle;
    struct vuf_blk_req *done_head, *done_tail;
};

int vuf_blk_status_errno(uint8_t status)
{
    switch (status) {
    case VUF_BLK_S_OK:
        return 0;
    case VUF_BLK_S_IOERR:
        return -EIO;
    case VUF_BLK_S_UNSUPP:
        return -ENOTSUP;
    default:
        return -EPROTO;
    }
}

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

/* Completions that vuf_blk_exec() reaped for other requests wait in a FIFO
 * for vuf_blk_reap(). A caller may also put or re-prepare such a request
 * after checking vuf_blk_req_result() without reaping it; it then leaves
 * the FIFO. */
static void done_push(struct vuf_blk *blk, struct vuf_blk_req *req)
{
    req->next = NULL;
    req->on_done = true;
    if (blk->done_tail)
        blk->done_tail->next = req;
    else
        blk->done_head = req;
    blk->done_tail = req;
}

static struct vuf_blk_req *done_pop(struct vuf_blk *blk)
{
    struct vuf_blk_req *req = blk->done_head;

    if (!req)
        return NULL;
    blk->done_head = req->next;
    if (!blk->done_head)
        blk->done_tail = NULL;
    req->next = NULL;
    req->on_done = false;
    return req;
}

static void done_remove(struct vuf_blk *blk, struct vuf_blk_req *req)
{
    struct vuf_blk_req *prev = NULL;

    if (!req->on_done)
        return;
    for (struct vuf_blk_req *r = blk->done_head; r; prev = r, r = r->next) {
        if (r != req)
            continue;
        if (prev)
            prev->next = r->next;
        else
            blk->done_head = r->next;
        if (blk->done_tail == r)
            blk->done_tail = prev;
        break;
    }
    req->next = NULL;
    req->on_done = false;
}

static void pool_rebuild(struct vuf_blk *blk)
{
    blk->idle = NULL;
    blk->done_head = blk->done_tail = NULL;
    for (unsigned i = blk->nreqs; i-- > 0;) {
        struct vuf_blk_req *req = &blk->reqs[i];

        req->state = RQ_IDLE;
        req->prepared = false;
        req->on_done = false;
        req->user = NULL;
        req->next = blk->idle;
        blk->idle = req;
    }
}

int vuf_blk_new(struct vuf_virtq *vq, unsigned nreqs, uint32_t max_data, struct vuf_blk **out)
{
    struct vuf_guest_mem *gm;
    struct vuf_blk *blk;
    uint64_t mark, meta_gpa, data_gpa = 0, stride = 0;
    uint8_t *meta, *data = NULL;
    int r;

    if (!vq || !out || nreqs == 0 || nreqs > VUF_VIRTQ_MAX_SIZE)
        return -EINVAL;
    gm = vuf_virtq_guest_mem(vq);
    blk = calloc(1, sizeof(*blk));
    if (!blk)
        return -ENOMEM;
    blk->reqs = calloc(nreqs, sizeof(*blk->reqs));
    if (!blk->reqs) {
        free(blk);
        return -ENOMEM;
    }
    blk->vq = vq;
    blk->nreqs = nreqs;
    blk->max_data = max_data;

    mark = vuf_guest_mem_alloc_mark(gm);
    r = vuf_guest_mem_alloc(gm, (uint64_t)nreqs * META_SIZE, META_SIZE, &meta_gpa);
    if (r < 0)
        goto fail;
    meta = vuf_guest_mem_to_host(gm, meta_gpa, (uint64_t)nreqs * META_SIZE);
    if (max_data) {
        stride = ((uint64_t)max_data + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN;
        r = vuf_guest_mem_alloc(gm, stride * nreqs, DATA_ALIGN, &data_gpa);
        if (r < 0)
            goto fail;
        data = vuf_guest_mem_to_host(gm, data_gpa, stride * nreqs);
    }
    if (!meta || (max_data && !data)) {
        r = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < nreqs; i++) {
        struct vuf_blk_req *req = &blk->reqs[i];
        uint8_t *m = meta + (size_t)i * META_SIZE;

        req->blk = blk;
        req->meta_gpa = meta_gpa + (uint64_t)i * META_SIZE;
        req->hdr = (struct vuf_blk_outhdr *)(void *)(m + META_HDR);
        req->seg = (struct vuf_blk_discard_wz *)(void *)(m + META_SEG);
        req->status = m + META_STATUS;
        if (max_data) {
            req->data = data + (size_t)(stride * i);
            req->data_gpa = data_gpa + stride * i;
        }
    }
    pool_rebuild(blk);
    *out = blk;
    return 0;

fail:
    vuf_guest_mem_alloc_rewind(gm, mark);
    free(blk->reqs);
    free(blk);
    return r == -EINVAL ? -ENOMEM : r;
}

void vuf_blk_free(struct vuf_blk *blk)
{
    if (!blk)
        return;
    free(blk->reqs);
    free(blk);
}

struct vuf_virtq *vuf_blk_virtq(const struct vuf_blk *blk)
{
    return blk->vq;
}

void vuf_blk_set_busy_poll(struct vuf_blk *blk, bool on)
{
    blk->busy_poll = on;
    /* A spinning driver has no use for calls; the device saves a syscall
     * per completion. Sleeping waits re-enable them as they need. */
    if (on)
        vuf_virtq_disable_cb(blk->vq);
    else
        vuf_virtq_enable_cb(blk->vq);
}

void vuf_blk_set_poll_us(struct vuf_blk *blk, unsigned us)
{
    blk->poll_us = us;
}

void vuf_blk_reset(struct vuf_blk *blk, uint16_t base)
{
    vuf_virtq_reset(blk->vq, base);
    pool_rebuild(blk);
}

uint32_t vuf_blk_max_data(const struct vuf_blk *blk)
{
    return blk->max_data;
}

struct vuf_blk_req *vuf_blk_req_get(struct vuf_blk *blk)
{
    struct vuf_blk_req *req = blk->idle;

    if (!req)
        return NULL;
    blk->idle = req->next;
    req->next = NULL;
    req->state = RQ_HELD;
    req->prepared = false;
    req->user = NULL;
    return req;
}

int vuf_blk_req_put(struct vuf_blk *blk, struct vuf_blk_req *req)
{
    if (!req || req->blk != blk)
        return -EINVAL;
    if (req->state == RQ_INFLIGHT || req->state == RQ_ORPHAN)
        return -EBUSY;
    if (req->state == RQ_IDLE)
        return 0;
    done_remove(blk, req);
    req->state = RQ_IDLE;
    req->next = blk->idle;
    blk->idle = req;
    return 0;
}

void *vuf_blk_req_buf(const struct vuf_blk_req *req, uint64_t *gpa)
{
    if (gpa)
        *gpa = req->data_gpa;
    return req->data;
}

void vuf_blk_req_set_user(struct vuf_blk_req *req, void *user)
{
    req->user = user;
}

void *vuf_blk_req_user(const struct vuf_blk_req *req)
{
    return req->user;
}

/* ------------------------------------------------------------------------ */
/* Preparing                                                                */
/* ------------------------------------------------------------------------ */

static bool can_prep(const struct vuf_blk_req *req)
{
    return req->state == RQ_HELD || req->state == RQ_DONE;
}

/* header | data[0..n) | status */
static void set_chain(struct vuf_blk_req *req, uint32_t type, uint64_t sector,
                      const struct vuf_virtq_buf *data, unsigned n)
{
    done_remove(req->blk, req);
    req->hdr->type = type;
    req->hdr->ioprio = 0;
    req->hdr->sector = sector;
    req->chain[0] = (struct vuf_virtq_buf){.gpa = req->meta_gpa + META_HDR,
                                           .len = sizeof(struct vuf_blk_outhdr)};
    for (unsigned i = 0; i < n; i++)
        req->chain[1 + i] = data[i];
    req->chain[1 + n] =
        (struct vuf_virtq_buf){.gpa = req->meta_gpa + META_STATUS, .len = 1, .writable = true};
    req->nchain = n + 2;
    req->state = RQ_HELD;
    req->prepared = true;
}

int vuf_blk_req_prep(struct vuf_blk_req *req, uint32_t type, uint64_t sector, uint32_t len)
{
    const struct vuf_blk *blk;
    struct vuf_virtq_buf d = {0};

    if (!req)
        return -EINVAL;
    if (!can_prep(req))
        return -EBUSY;
    blk = req->blk;
    d.gpa = req->data_gpa;
    switch (type) {
    case VUF_BLK_T_IN:
    case VUF_BLK_T_OUT:
        if (len == 0 || len % VUF_BLK_SECTOR_SIZE || len > blk->max_data)
            return -EINVAL;
        d.len = len;
        d.writable = type == VUF_BLK_T_IN;
        break;
    case VUF_BLK_T_FLUSH:
        if (len || sector)
            return -EINVAL;
        set_chain(req, type, 0, NULL, 0);
        return 0;
    case VUF_BLK_T_GET_ID:
        if (blk->max_data < VUF_BLK_ID_BYTES)
            return -EINVAL;
        d.len = VUF_BLK_ID_BYTES;
        d.writable = true;
        break;
    case VUF_BLK_T_DISCARD:
    case VUF_BLK_T_WRITE_ZEROES:
        return -EINVAL;
    default:
        if (len > blk->max_data)
            return -EINVAL;
        if (len == 0) {
            set_chain(req, type, sector, NULL, 0);
            return 0;
        }
        d.len = len;
        break;
    }
    set_chain(req, type, sector, &d, 1);
    return 0;
}

int vuf_blk_req_prep_sg(struct vuf_blk_req *req, uint32_t type, uint64_t sector,
                        const struct vuf_virtq_buf *data, unsigned n)
{
    if (!req || !data || n == 0 || n > VUF_BLK_MAX_SG)
        return -EINVAL;
    if (!can_prep(req))
        return -EBUSY;
    set_chain(req, type, sector, data, n);
    return 0;
}

int vuf_blk_req_prep_range(struct vuf_blk_req *req, uint32_t type, uint64_t sector,
                           uint32_t num_sectors, uint32_t flags)
{
    struct vuf_virtq_buf d;

    if (!req || (type != VUF_BLK_T_DISCARD && type != VUF_BLK_T_WRITE_ZEROES))
        return -EINVAL;
    if (flags & ~VUF_BLK_WZ_F_UNMAP)
        return -EINVAL;
    /* §5.2.6.2: unmap is meaningful for WRITE_ZEROES only. */
    if (type == VUF_BLK_T_DISCARD && flags)
        return -EINVAL;
    if (!can_prep(req))
        return -EBUSY;
    req->seg->sector = sector;
    req->seg->num_sectors = num_sectors;
    req->seg->flags = flags;
    d = (struct vuf_virtq_buf){.gpa = req->meta_gpa + META_SEG,
                               .len = sizeof(struct vuf_blk_discard_wz)};
    set_chain(req, type, 0, &d, 1);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Submitting and completing                                                */
/* ------------------------------------------------------------------------ */

int vuf_blk_submit(struct vuf_blk *blk, struct vuf_blk_req *req, unsigned flags)
{
    int r;

    if (!req || req->blk != blk)
        return -EINVAL;
    if (req->state == RQ_INFLIGHT || req->state == RQ_ORPHAN)
        return -EBUSY;
    if (!req->prepared || req->state == RQ_IDLE)
        return -EINVAL;
    done_remove(blk, req);
    *req->status = STATUS_UNSET;
    /* Published by the kick, here or in vuf_blk_kick(): one store of
     * avail->idx for a batch. */
    r = vuf_virtq_add_deferred(blk->vq, req->chain, req->nchain, req);
    if (r < 0)
        return r;
    req->state = RQ_INFLIGHT;
    req->used_len = 0;
    req->result_status = STATUS_UNSET;
    if (!(flags & VUF_BLK_SUBMIT_NO_KICK)) {
        r = vuf_virtq_kick(blk->vq, 0);
        if (r < 0)
            vuf_log(VUF_LOG_ERROR, "virtio-blk queue %u: kick failed: %s", vuf_virtq_index(blk->vq),
                    vuf_strerror(r));
    }
    return 0;
}

int vuf_blk_kick(struct vuf_blk *blk)
{
    return vuf_virtq_kick(blk->vq, 0);
}

/* One entry off the used ring. Orphans go straight back to the pool and
 * yield *done = NULL. */
static int reap_ring(struct vuf_blk *blk, struct vuf_blk_req **done)
{
    void *cookie;
    uint32_t len;
    struct vuf_blk_req *req;
    int r = vuf_virtq_get_used(blk->vq, &cookie, &len);

    if (r < 0)
        return r;
    req = cookie;
    req->used_len = len;
    /* Ordered after the device's writes by get_used's acquire load. */
    req->result_status = __atomic_load_n(req->status, __ATOMIC_RELAXED);
    if (req->result_status != VUF_BLK_S_OK && req->result_status != VUF_BLK_S_IOERR &&
        req->result_status != VUF_BLK_S_UNSUPP)
        vuf_log(VUF_LOG_WARN, "virtio-blk queue %u: request type %u completed with status %u",
                vuf_virtq_index(blk->vq), req->hdr->type, req->result_status);
    if (req->state == RQ_ORPHAN) {
        req->state = RQ_HELD;
        vuf_blk_req_put(blk, req);
        *done = NULL;
        return 0;
    }
    req->state = RQ_DONE;
    *done = req;
    return 0;
}

int vuf_blk_reap(struct vuf_blk *blk, struct vuf_blk_req **done)
{
    struct vuf_blk_req *req = done_pop(blk);

    if (req) {
        *done = req;
        return 0;
    }
    for (;;) {
        int r = reap_ring(blk, done);

        if (r < 0 || *done)
            return r;
    }
}

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The adaptive spin before a sleeping wait: true if the used ring moved
 * (or the queue broke: the wait that follows reports it). Bounded by
 * poll_us, and by the caller's timeout through the wait after it. */
static bool spin_used(struct vuf_blk *blk)
{
    int64_t end = mono_ns() + (int64_t)blk->poll_us * 1000;

    for (unsigned spins = 0;; spins++) {
        if (vuf_virtq_has_used(blk->vq) || vuf_virtq_broken(blk->vq))
            return true;
        if ((spins & 63) == 63 && mono_ns() >= end)
            return false;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

static int wait_ring(struct vuf_blk *blk, int timeout_ms)
{
    if (blk->busy_poll)
        return vuf_virtq_wait_busy(blk->vq, timeout_ms);
    if (blk->poll_us && spin_used(blk))
        return vuf_virtq_broken(blk->vq) ? -EPROTO : 0;
    return vuf_virtq_wait(blk->vq, timeout_ms);
}

int vuf_blk_wait(struct vuf_blk *blk, int timeout_ms, struct vuf_blk_req **done)
{
    int64_t deadline = vuf_deadline(timeout_ms);

    for (;;) {
        int r = vuf_blk_reap(blk, done);

        if (r != -EAGAIN)
            return r;
        r = wait_ring(blk, vuf_ms_left(deadline));
        if (r < 0)
            return r;
    }
}

int vuf_blk_req_result(const struct vuf_blk_req *req)
{
    if (req->state != RQ_DONE)
        return -EINPROGRESS;
    return vuf_blk_status_errno(req->result_status);
}

uint8_t vuf_blk_req_status(const struct vuf_blk_req *req)
{
    return req->result_status;
}

uint32_t vuf_blk_req_used_len(const struct vuf_blk_req *req)
{
    return req->used_len;
}

int vuf_blk_exec(struct vuf_blk *blk, struct vuf_blk_req *req, int timeout_ms)
{
    int64_t deadline = vuf_deadline(timeout_ms);
    int r = vuf_blk_submit(blk, req, 0);

    if (r < 0)
        return r;
    for (;;) {
        struct vuf_blk_req *done;

        r = reap_ring(blk, &done);
        if (r == 0) {
            if (done == req)
                return vuf_blk_req_result(req);
            if (done)
                done_push(blk, done);
            continue;
        }
        if (r != -EAGAIN)
            return r;
        r = wait_ring(blk, vuf_ms_left(deadline));
        if (r == -ETIMEDOUT)
            req->state = RQ_ORPHAN;
        if (r < 0)
            return r;
    }
}

/* ------------------------------------------------------------------------ */
/* Synchronous helpers                                                      */
/* ------------------------------------------------------------------------ */

/* Give a request back unless it is still on the queue (timed out: it will
 * come back by itself; broken queue: vuf_blk_reset() reclaims it). */
static void sync_release(struct vuf_blk *blk, struct vuf_blk_req *req)
{
    if (req->state == RQ_HELD || req->state == RQ_DONE)
        vuf_blk_req_put(blk, req);
}

static int sync_rw(struct vuf_blk *blk, uint32_t type, uint64_t sector, uint8_t *buf, size_t len,
                   int timeout_ms)
{
    uint32_t chunk = blk->max_data / VUF_BLK_SECTOR_SIZE * VUF_BLK_SECTOR_SIZE;
    struct vuf_blk_req *req;
    int r = 0;

    if (len % VUF_BLK_SECTOR_SIZE || (len && !buf) || (len && chunk == 0))
        return -EINVAL;
    if (len == 0)
        return 0;
    req = vuf_blk_req_get(blk);
    if (!req)
        return -EBUSY;
    while (len) {
        uint32_t n = len < chunk ? (uint32_t)len : chunk;

        if (type == VUF_BLK_T_OUT)
            memcpy(req->data, buf, n);
        r = vuf_blk_req_prep(req, type, sector, n);
        if (r == 0)
            r = vuf_blk_exec(blk, req, timeout_ms);
        if (r < 0)
            break;
        if (type == VUF_BLK_T_IN)
            memcpy(buf, req->data, n);
        buf += n;
        len -= n;
        sector += n / VUF_BLK_SECTOR_SIZE;
    }
    sync_release(blk, req);
    return r;
}

int vuf_blk_read(struct vuf_blk *blk, uint64_t sector, void *buf, size_t len, int timeout_ms)
{
    return sync_rw(blk, VUF_BLK_T_IN, sector, buf, len, timeout_ms);
}

int vuf_blk_write(struct vuf_blk *blk, uint64_t sector, const void *buf, size_t len, int timeout_ms)
{
    /* The buffer is only read from (copied into guest memory). */
    return sync_rw(blk, VUF_BLK_T_OUT, sector, (uint8_t *)(uintptr_t)buf, len, timeout_ms);
}

static int sync_simple(struct vuf_blk *blk, uint32_t type, uint64_t sector, uint32_t num_sectors,
                       uint32_t flags, void *out, int timeout_ms)
{
    struct vuf_blk_req *req = vuf_blk_req_get(blk);
    int r;

    if (!req)
        return -EBUSY;
    if (type == VUF_BLK_T_DISCARD || type == VUF_BLK_T_WRITE_ZEROES)
        r = vuf_blk_req_prep_range(req, type, sector, num_sectors, flags);
    else
        r = vuf_blk_req_prep(req, type, 0, 0);
    if (r == 0)
        r = vuf_blk_exec(blk, req, timeout_ms);
    if (r == 0 && out)
        memcpy(out, req->data, VUF_BLK_ID_BYTES);
    sync_release(blk, req);
    return r;
}

int vuf_blk_flush(struct vuf_blk *blk, int timeout_ms)
{
    return sync_simple(blk, VUF_BLK_T_FLUSH, 0, 0, 0, NULL, timeout_ms);
}

int vuf_blk_get_id(struct vuf_blk *blk, char id[VUF_BLK_ID_BYTES], int timeout_ms)
{
    if (!id)
        return -EINVAL;
    return sync_simple(blk, VUF_BLK_T_GET_ID, 0, 0, 0, id, timeout_ms);
}

int vuf_blk_discard(struct vuf_blk *blk, uint64_t sector, uint32_t num_sectors, int timeout_ms)
{
    return sync_simple(blk, VUF_BLK_T_DISCARD, sector, num_sectors, 0, NULL, timeout_ms);
}

int vuf_blk_write_zeroes(struct vuf_blk *blk, uint64_t sector, uint32_t num_sectors, bool unmap,
                         int timeout_ms)
{
    return sync_simple(blk, VUF_BLK_T_WRITE_ZEROES, sector, num_sectors,
                       unmap ? VUF_BLK_WZ_F_UNMAP : 0, NULL, timeout_ms);
}
