/* SPDX-License-Identifier: MIT */
/*
 * vuf-backend-blk's data path: virtio-blk requests (virtio 1.2 §5.2.6) on
 * one queue. Data moves straight between the disk fd and the mapped guest
 * buffers (pread/pwrite on the host pointers), never through a bounce
 * buffer; every guest address is translated piece by piece, so a bad one
 * gives IOERR, never a fault.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "blk_device.h"
#include "vuf/log.h"

struct blk_req_hdr {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

struct blk_dwz_seg {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

typedef int (*piece_fn)(void *opaque, uint8_t *host, size_t len, uint64_t pos);

/*
 * Call fn for each host-contiguous piece of the byte range [skip, skip+len)
 * of the concatenated segments. `pos` is the piece's offset from `skip`.
 * -EFAULT if a part is outside guest memory or past the segments.
 */
static int for_each_piece(const struct be_mem *mem, const struct be_seg *segs, unsigned n,
                          uint64_t skip, uint64_t len, piece_fn fn, void *opaque)
{
    uint64_t pos = 0;

    for (unsigned i = 0; i < n && len > 0; i++) {
        uint64_t gpa = segs[i].gpa, slen = segs[i].len;

        if (skip >= slen) {
            skip -= slen;
            continue;
        }
        gpa += skip;
        slen -= skip;
        skip = 0;
        if (slen > len)
            slen = len;
        if (gpa + slen < gpa)
            return -EFAULT;
        while (slen > 0) {
            uint64_t piece;
            uint8_t *host = be_mem_gpa_piece(mem, gpa, slen, &piece);
            int r;

            if (!host)
                return -EFAULT;
            r = fn(opaque, host, (size_t)piece, pos);
            if (r < 0)
                return r;
            gpa += piece;
            slen -= piece;
            len -= piece;
            pos += piece;
        }
    }
    return len == 0 ? 0 : -EFAULT;
}

struct copy_ctx {
    uint8_t *buf;
    bool to_guest;
};

static int copy_piece(void *opaque, uint8_t *host, size_t len, uint64_t pos)
{
    struct copy_ctx *c = opaque;

    if (c->to_guest)
        memcpy(host, c->buf + pos, len);
    else
        memcpy(c->buf + pos, host, len);
    return 0;
}

static int gather(const struct be_mem *mem, const struct be_seg *segs, unsigned n, uint64_t skip,
                  void *buf, size_t len)
{
    struct copy_ctx c = {buf, false};
    return for_each_piece(mem, segs, n, skip, len, copy_piece, &c);
}

static int scatter(const struct be_mem *mem, const struct be_seg *segs, unsigned n, const void *buf,
                   size_t len)
{
    struct copy_ctx c = {(uint8_t *)buf, true};
    return for_each_piece(mem, segs, n, 0, len, copy_piece, &c);
}

struct disk_ctx {
    int fd;
    uint64_t offset;
    bool write;        /* pwrite the pieces, else pread them */
    uint8_t *map;      /* the RAM disk mapped: copy instead */
    uint64_t *touched; /* with map: pages that may hold data (blk_device.h) */
};

static bool page_touched(const uint64_t *bits, uint64_t page)
{
    return (bits[page / 64] >> (page % 64)) & 1;
}

/* Copy between the mapped RAM disk at `at` and `host`; a read of a page
 * never written is a memset (no fault, no page allocated). */
static void map_copy(struct disk_ctx *c, uint8_t *host, size_t len, uint64_t at)
{
    while (len > 0) {
        uint64_t page = at / 4096;
        size_t n = (size_t)(4096 - at % 4096);

        if (n > len)
            n = len;
        if (c->write) {
            c->touched[page / 64] |= 1ull << (page % 64);
            memcpy(c->map + at, host, n);
        } else if (page_touched(c->touched, page)) {
            memcpy(host, c->map + at, n);
        } else {
            memset(host, 0, n);
        }
        host += n;
        len -= n;
        at += n;
    }
}

static int disk_piece(void *opaque, uint8_t *host, size_t len, uint64_t pos)
{
    struct disk_ctx *c = opaque;

    if (c->map) {
        /* range_ok() bounded offset + len by the capacity, the map's size. */
        map_copy(c, host, len, c->offset + pos);
        return 0;
    }
    while (len > 0) {
        off_t at = (off_t)(c->offset + pos);
        ssize_t n = c->write ? pwrite(c->fd, host, len, at) : pread(c->fd, host, len, at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        host += n;
        len -= (size_t)n;
        pos += (uint64_t)n;
    }
    return 0;
}

static bool acked(const struct blk_dev *d, unsigned bit)
{
    return (d->acked_features >> bit) & 1;
}

/* Writes reach stable storage before completion unless the driver runs
 * the cache in writeback mode (§5.2.6.3: without FLUSH, or with WCE and
 * writeback = 0, the device is writethrough). */
static bool writethrough(const struct blk_dev *d)
{
    if (!acked(d, VUF_BLK_F_FLUSH))
        return true;
    return acked(d, VUF_BLK_F_CONFIG_WCE) && d->writeback == 0;
}

static bool range_ok(const struct blk_dev *d, uint64_t sector, uint64_t bytes)
{
    uint64_t n = bytes / BLK_SECTOR;
    return sector <= d->capacity && n <= d->capacity - sector;
}

static int zero_range(int fd, uint64_t off, uint64_t len, bool may_unmap)
{
    static const uint8_t zeros[64 * 1024];

    if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;
    if (may_unmap &&
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return 0;
    while (len > 0) {
        size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
        ssize_t w = pwrite(fd, zeros, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

static uint8_t discard_or_zero(struct blk_dev *d, const struct be_chain *c, uint32_t type)
{
    struct blk_dwz_seg segs[BLK_MAX_DISCARD_SEG];
    uint64_t bytes = c->out_bytes - sizeof(struct blk_req_hdr);
    unsigned n;

    if (!acked(d, type == VUF_BLK_T_DISCARD ? VUF_BLK_F_DISCARD : VUF_BLK_F_WRITE_ZEROES))
        return VUF_BLK_S_UNSUPP;
    if (d->o.read_only)
        return VUF_BLK_S_IOERR;
    if (bytes == 0 || bytes % sizeof(segs[0]) != 0 || bytes / sizeof(segs[0]) > BLK_MAX_DISCARD_SEG)
        return VUF_BLK_S_IOERR;
    n = (unsigned)(bytes / sizeof(segs[0]));
    if (gather(&d->mem, c->segs, c->nout, sizeof(struct blk_req_hdr), segs, n * sizeof(segs[0])) <
        0)
        return VUF_BLK_S_IOERR;
    /* Check every segment before touching the disk. */
    for (unsigned i = 0; i < n; i++) {
        uint32_t known = type == VUF_BLK_T_WRITE_ZEROES ? VUF_BLK_WZ_F_UNMAP : 0;
        if (segs[i].flags & ~known)
            return VUF_BLK_S_UNSUPP; /* §5.2.6.2: unknown flags, unmap on discard */
        if (segs[i].num_sectors > BLK_MAX_DISCARD_SECTORS ||
            !range_ok(d, segs[i].sector, (uint64_t)segs[i].num_sectors * BLK_SECTOR))
            return VUF_BLK_S_IOERR;
    }
    for (unsigned i = 0; i < n; i++) {
        uint64_t off = segs[i].sector * BLK_SECTOR;
        uint64_t len = (uint64_t)segs[i].num_sectors * BLK_SECTOR;
        if (len == 0)
            continue;
        if (type == VUF_BLK_T_DISCARD) {
            /* Advisory: a file system without hole punching just keeps the data. */
            if (fallocate(d->disk_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                          (off_t)len) < 0 &&
                errno != EOPNOTSUPP)
                return VUF_BLK_S_IOERR;
        } else if (zero_range(d->disk_fd, off, len, segs[i].flags & VUF_BLK_WZ_F_UNMAP) < 0) {
            return VUF_BLK_S_IOERR;
        }
    }
    if (writethrough(d) && fdatasync(d->disk_fd) < 0)
        return VUF_BLK_S_IOERR;
    return VUF_BLK_S_OK;
}

/* Find the GPA of the last device-writable byte: the status. */
static bool status_gpa(const struct be_chain *c, uint64_t *gpa)
{
    for (unsigned i = c->nout + c->nin; i > c->nout; i--) {
        const struct be_seg *s = &c->segs[i - 1];
        if (s->len > 0) {
            if (s->gpa + s->len - 1 < s->gpa)
                return false;
            *gpa = s->gpa + s->len - 1;
            return true;
        }
    }
    return false;
}

/* Execute one request; returns the used length. */
static uint32_t handle_request(struct blk_dev *d, struct be_vq *vq, const struct be_chain *c)
{
    const struct be_seg *in = c->segs + c->nout;
    struct blk_req_hdr h;
    uint64_t st_gpa, data;
    uint32_t used_len = 1;
    uint8_t status = VUF_BLK_S_OK;

    if (!status_gpa(c, &st_gpa)) {
        vuf_log(VUF_LOG_ERROR, "vq %u: request at head %u has no status byte", vq->index, c->head);
        return 0;
    }
    if (c->out_bytes < sizeof(h) || gather(&d->mem, c->segs, c->nout, 0, &h, sizeof(h)) < 0) {
        vuf_log(VUF_LOG_WARN, "vq %u: request at head %u: unreadable header", vq->index, c->head);
        status = VUF_BLK_S_IOERR;
        goto done;
    }

    switch (h.type) {
    case VUF_BLK_T_IN: {
        struct disk_ctx dc = {d->disk_fd, h.sector * BLK_SECTOR, false, d->disk_map,
                              d->disk_touched};
        data = c->in_bytes - 1;
        if (data % BLK_SECTOR || data > UINT32_MAX - 1 || !range_ok(d, h.sector, data)) {
            status = VUF_BLK_S_IOERR;
            break;
        }
        if (for_each_piece(&d->mem, in, c->nin, 0, data, disk_piece, &dc) < 0) {
            vuf_log(VUF_LOG_WARN, "vq %u: read sector %llu +%llu failed", vq->index,
                    (unsigned long long)h.sector, (unsigned long long)data);
            status = VUF_BLK_S_IOERR;
            break;
        }
        used_len = (uint32_t)data + 1;
        __atomic_fetch_add(&vq->bytes_read, data, __ATOMIC_RELAXED);
        break;
    }
    case VUF_BLK_T_OUT: {
        struct disk_ctx dc = {d->disk_fd, h.sector * BLK_SECTOR, true, d->disk_map,
                              d->disk_touched};
        data = c->out_bytes - sizeof(h);
        if (d->o.read_only || data % BLK_SECTOR || !range_ok(d, h.sector, data)) {
            status = VUF_BLK_S_IOERR;
            break;
        }
        if (for_each_piece(&d->mem, c->segs, c->nout, sizeof(h), data, disk_piece, &dc) < 0 ||
            (writethrough(d) && !d->disk_is_ram && fdatasync(d->disk_fd) < 0)) {
            vuf_log(VUF_LOG_WARN, "vq %u: write sector %llu +%llu failed", vq->index,
                    (unsigned long long)h.sector, (unsigned long long)data);
            status = VUF_BLK_S_IOERR;
            break;
        }
        __atomic_fetch_add(&vq->bytes_written, data, __ATOMIC_RELAXED);
        break;
    }
    case VUF_BLK_T_FLUSH:
        if (fdatasync(d->disk_fd) < 0)
            status = VUF_BLK_S_IOERR;
        break;
    case VUF_BLK_T_GET_ID: {
        char id[VUF_BLK_ID_BYTES] = {0};
        size_t n = c->in_bytes - 1 < sizeof(id) ? (size_t)(c->in_bytes - 1) : sizeof(id);
        memcpy(id, BLK_ID_STRING, strlen(BLK_ID_STRING));
        if (scatter(&d->mem, in, c->nin, id, n) < 0) {
            status = VUF_BLK_S_IOERR;
            break;
        }
        used_len = (uint32_t)n + 1;
        break;
    }
    case VUF_BLK_T_DISCARD:
    case VUF_BLK_T_WRITE_ZEROES:
        status = discard_or_zero(d, c, h.type);
        break;
    default:
        status = VUF_BLK_S_UNSUPP;
        break;
    }

done:
    if (status != VUF_BLK_S_OK)
        used_len = 1;
    if (be_mem_write(&d->mem, st_gpa, &status, 1) < 0) {
        vuf_log(VUF_LOG_ERROR, "vq %u: status byte of head %u outside guest memory", vq->index,
                c->head);
        return 0;
    }
    return used_len;
}

/* Should the request just popped be held? Takes one from a "hold N". */
static bool take_hold(struct blk_dev *d)
{
    int h = __atomic_load_n(&d->hold, __ATOMIC_ACQUIRE);

    for (;;) {
        if (h == 0)
            return false;
        if (h < 0)
            return true;
        if (__atomic_compare_exchange_n(&d->hold, &h, h - 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return true;
    }
}

/* Process and complete the held requests in order. */
static void run_held(struct blk_dev *d, struct be_vq *vq)
{
    unsigned n = __atomic_load_n(&vq->nheld, __ATOMIC_RELAXED);
    struct be_chain c;

    for (unsigned k = 0; k < n; k++) {
        uint16_t head = vq->held[k];
        int r = be_vq_chain_at(vq, &d->mem, head, &c);

        be_vq_push(vq, head, r == 1 ? handle_request(d, vq, &c) : 0);
    }
    __atomic_store_n(&vq->nheld, 0, __ATOMIC_RELAXED);
}

/* Keep a popped (marked) request for later: the control hook's "hold on". */
static void hold_head(struct be_vq *vq, uint16_t head)
{
    unsigned n = vq->nheld;

    vq->held[n] = head;
    __atomic_store_n(&vq->nheld, n + 1, __ATOMIC_RELAXED);
}

void blk_drain_held(struct blk_dev *d, struct be_vq *vq)
{
    uint16_t old_used;

    if (__atomic_load_n(&vq->nheld, __ATOMIC_RELAXED) == 0)
        return;
    if (vq->broken || ((!vq->translated || vq->mem_gen != d->mem.generation) &&
                       be_vq_translate(vq, &d->mem) < 0)) {
        vuf_log(VUF_LOG_ERROR, "vq %u: %u held requests cannot complete (ring unusable)", vq->index,
                vq->nheld);
        return;
    }
    if (!vq->used_idx_valid) {
        vq->used_idx = vq->packed ? vq->pk_used_base
                                  : __atomic_load_n((uint16_t *)(vq->used + 2), __ATOMIC_ACQUIRE);
        vq->used_idx_valid = true;
    }
    vq->event_idx = acked(d, VUF_VIRTIO_F_EVENT_IDX);
    old_used = vq->used_idx;
    run_held(d, vq);
    be_vq_notify(vq, old_used);
}

void blk_process_vq(struct blk_dev *d, struct be_vq *vq)
{
    struct be_chain c;
    uint16_t old_used;
    unsigned budget, recovered;

    vq->pending = false;
    if (!be_vq_ready(vq, &d->mem))
        return;
    vq->event_idx = acked(d, VUF_VIRTIO_F_EVENT_IDX);
    /* Requests left in flight by a previous back-end come first (unless
     * everything is held); then those a "hold off" released. Recovery
     * may move a packed ring's used position: old_used after it. */
    recovered = vq->infl_recover ? be_vq_infl_recover(vq) : 0;
    old_used = vq->used_idx;
    if (recovered && __atomic_load_n(&d->hold, __ATOMIC_ACQUIRE) >= 0)
        run_held(d, vq);
    if (vq->release_seen != __atomic_load_n(&d->release_gen, __ATOMIC_ACQUIRE)) {
        vq->release_seen = __atomic_load_n(&d->release_gen, __ATOMIC_ACQUIRE);
        run_held(d, vq);
    }
    /* One ring's worth per pass keeps the front-end socket served. */
    budget = vq->num;
    for (;;) {
        int r;

        /* A driver never has more than a ring's worth in flight. */
        if (__atomic_load_n(&d->hold, __ATOMIC_RELAXED) != 0 &&
            __atomic_load_n(&vq->nheld, __ATOMIC_RELAXED) >= vq->num)
            break;
        r = be_vq_pop(vq, &d->mem, &c);
        /* Held requests are re-read later: from the ring (split), or
         * from the inflight region (packed: the ring's descriptors are
         * overwritten by used ones), so an untracked packed ring holds
         * nothing. */
        if (r == 1 && (!vq->packed || vq->pk_infl) && take_hold(d))
            hold_head(vq, c.head);
        else if (r == 1)
            be_vq_push(vq, c.head, handle_request(d, vq, &c));
        else if (r == -EBADMSG)
            be_vq_push(vq, c.head, 0);
        else if (r == 0 && be_vq_more(vq))
            continue;
        else
            break;
        if (--budget == 0) {
            vq->pending = true;
            break;
        }
    }
    be_vq_notify(vq, old_used);
}
