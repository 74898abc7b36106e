/* SPDX-License-Identifier: MIT */
/* Device side of a split virtqueue. See vring.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vring.h"
#include "vuf/log.h"

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

int be_vq_init(struct be_vq *vq, unsigned index, unsigned max_segs)
{
    memset(vq, 0, sizeof(*vq));
    vq->index = index;
    vq->kick_fd = vq->call_fd = vq->err_fd = -1;
    vq->max_segs = max_segs;
    vq->seg_buf = calloc(max_segs, sizeof(*vq->seg_buf));
    vq->held = calloc(max_segs, sizeof(*vq->held));
    vq->pk_ndesc = calloc(BE_VQ_MAX_SIZE, sizeof(*vq->pk_ndesc));
    return vq->seg_buf && vq->held && vq->pk_ndesc ? 0 : -ENOMEM;
}

void be_vq_destroy(struct be_vq *vq)
{
    be_vq_reset(vq);
    free(vq->seg_buf);
    vq->seg_buf = NULL;
    free(vq->held);
    vq->held = NULL;
    free(vq->pk_ndesc);
    vq->pk_ndesc = NULL;
}

void be_vq_reset(struct be_vq *vq)
{
    close_fd(&vq->kick_fd);
    close_fd(&vq->call_fd);
    close_fd(&vq->err_fd);
    vq->num = 0;
    memset(&vq->addr, 0, sizeof(vq->addr));
    vq->addr_set = false;
    vq->translated = false;
    vq->desc = NULL;
    vq->avail = NULL;
    vq->used = NULL;
    vq->last_avail = 0;
    vq->used_idx = 0;
    vq->packed = false;
    vq->pdesc = NULL;
    vq->pk_used_base = 0;
    vq->used_idx_valid = false;
    vq->event_idx = false;
    vq->started = vq->enabled = vq->polling = vq->broken = vq->pending = false;
    vq->kicks_off = false;
    /* Held requests stay marked in the inflight area, which is the
     * front-end's: the next back-end instance (or session) recovers them. */
    vq->infl = NULL;
    vq->infl_recover = false;
    __atomic_store_n(&vq->nheld, 0, __ATOMIC_RELAXED);
}

void be_vq_set_kick(struct be_vq *vq, int fd)
{
    close_fd(&vq->kick_fd);
    vq->kick_fd = fd;
}

void be_vq_set_call(struct be_vq *vq, int fd)
{
    close_fd(&vq->call_fd);
    vq->call_fd = fd;
}

void be_vq_set_err(struct be_vq *vq, int fd)
{
    close_fd(&vq->err_fd);
    vq->err_fd = fd;
}

int be_vq_translate(struct be_vq *vq, const struct be_mem *mem)
{
    void *d, *a, *u;

    vq->translated = false;
    vq->mem_gen = mem->generation;
    if (!vq->addr_set || vq->num == 0)
        return -EFAULT;
    if (vq->packed) {
        /* Descriptor ring, then the driver and device event areas (4 bytes
         * each, §2.8.10). */
        d = be_mem_uva_to_host(mem, vq->addr.desc, 16ull * vq->num);
        a = be_mem_uva_to_host(mem, vq->addr.avail, 4);
        u = be_mem_uva_to_host(mem, vq->addr.used, 4);
        if (!d || !a || !u || (uintptr_t)d % 16 || (uintptr_t)a % 4 || (uintptr_t)u % 4) {
            vuf_log(VUF_LOG_ERROR, "vq %u: packed ring outside front-end memory or misaligned",
                    vq->index);
            return -EFAULT;
        }
        vq->pdesc = d;
        vq->desc = NULL;
        vq->avail = a;
        vq->used = u;
        vq->translated = true;
        return 0;
    }
    d = be_mem_uva_to_host(mem, vq->addr.desc, VUF_VRING_DESC_BYTES(vq->num));
    a = be_mem_uva_to_host(mem, vq->addr.avail, VUF_VRING_AVAIL_BYTES(vq->num));
    u = be_mem_uva_to_host(mem, vq->addr.used, VUF_VRING_USED_BYTES(vq->num));
    if (!d || !a || !u) {
        vuf_log(VUF_LOG_ERROR,
                "vq %u: ring outside front-end memory (desc 0x%llx%s, avail 0x%llx%s, "
                "used 0x%llx%s, size %u)",
                vq->index, (unsigned long long)vq->addr.desc, d ? "" : " BAD",
                (unsigned long long)vq->addr.avail, a ? "" : " BAD",
                (unsigned long long)vq->addr.used, u ? "" : " BAD", vq->num);
        return -EFAULT;
    }
    /* The decoder checked the front-end's addresses; a region whose
     * userspace_addr and mmap_offset disagree in alignment could still
     * give us misaligned host pointers, and the index atomics need them
     * aligned. */
    if ((uintptr_t)a % 2 || (uintptr_t)u % 4) {
        vuf_log(VUF_LOG_ERROR, "vq %u: ring misaligned in our mapping of its region", vq->index);
        return -EFAULT;
    }
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    vq->translated = true;
    return 0;
}

bool be_vq_ready(struct be_vq *vq, const struct be_mem *mem)
{
    if (!vq->started || !vq->enabled || vq->broken)
        return false;
    if (!vq->translated || vq->mem_gen != mem->generation) {
        /* Memory changed under the ring (ADD/REM_MEM_REG, a new table):
         * the old pointers may be unmapped. */
        if (vq->mem_gen == mem->generation)
            return false; /* already failed with this memory */
        if (be_vq_translate(vq, mem) < 0)
            return false;
    }
    if (!vq->used_idx_valid && vq->packed) {
        vq->used_idx = vq->pk_used_base;
        vq->used_idx_valid = true;
    }
    if (!vq->used_idx_valid) {
        /* Split rings keep the used index in memory only (spec, "SET_VRING_BASE"). */
        vq->used_idx = __atomic_load_n((uint16_t *)(vq->used + 2), __ATOMIC_ACQUIRE);
        vq->used_idx_valid = true;
    }
    return true;
}

uint16_t be_vq_stop(struct be_vq *vq)
{
    if (vq->packed && vq->used_idx_valid)
        vq->pk_used_base = vq->used_idx;
    vq->started = false;
    vq->polling = false;
    vq->used_idx_valid = false;
    close_fd(&vq->kick_fd);
    return vq->last_avail;
}

static void mark_broken(struct be_vq *vq, const char *why)
{
    vuf_log(VUF_LOG_ERROR, "vq %u: %s; queue stopped until it is set up again", vq->index, why);
    vq->broken = true;
    be_vq_signal_err(vq);
}

static uint16_t avail_idx(const struct be_vq *vq)
{
    return __atomic_load_n(&vq->avail[1], __ATOMIC_ACQUIRE);
}

/* Read descriptor i of the table at gpa `table` (indirect) or of the ring. */
static int read_desc(const struct be_vq *vq, const struct be_mem *mem, uint64_t table,
                     bool indirect, uint32_t i, struct be_desc *out)
{
    if (!indirect) {
        memcpy(out, &vq->desc[i], sizeof(*out));
        return 0;
    }
    return be_mem_read(mem, table + 16ull * i, out, sizeof(*out));
}

/* ------------------------------------------------------------------------ */
/* Packed rings (virtio 1.2 §2.8)                                           */
/* ------------------------------------------------------------------------ */

#define PK_POS(x) ((uint16_t)((x)&0x7fffu))
#define PK_WRAP(x) (((x) >> 15) & 1u)
#define PK_F_BOTH (VUF_VRING_PACKED_DESC_F_AVAIL | VUF_VRING_PACKED_DESC_F_USED)

static uint16_t pk_advance(const struct be_vq *vq, uint16_t x, unsigned n)
{
    unsigned pos = PK_POS(x) + n, wrap = PK_WRAP(x);

    if (pos >= vq->num) {
        pos -= vq->num;
        wrap ^= 1;
    }
    return (uint16_t)(pos | wrap << 15);
}

/* Made available by the driver in the lap of wrap counter `w`. */
static bool pk_avail(uint16_t flags, unsigned w)
{
    return (flags & PK_F_BOTH) ==
           (w ? VUF_VRING_PACKED_DESC_F_AVAIL : VUF_VRING_PACKED_DESC_F_USED);
}

static uint16_t pk_flags(const struct be_vq *vq, uint16_t x)
{
    return __atomic_load_n(&vq->pdesc[PK_POS(x)].flags, __ATOMIC_ACQUIRE);
}

/* One buffer of a packed chain into c; NULL or what is wrong with it. */
static const char *pk_seg(struct be_vq *vq, struct be_chain *c, uint64_t addr, uint32_t len,
                          uint16_t flags, bool *seen_write)
{
    if (c->nout + c->nin >= vq->max_segs)
        return "chain longer than seg_max allows";
    if (flags & VUF_VRING_DESC_F_WRITE) {
        *seen_write = true;
        c->segs[c->nout + c->nin++] = (struct be_seg){addr, len};
        c->in_bytes += len;
    } else {
        if (*seen_write)
            return "device-readable descriptor after a writable one";
        c->segs[c->nout++] = (struct be_seg){addr, len};
        c->out_bytes += len;
    }
    return NULL;
}

static const char *pk_indirect(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c,
                               const struct vuf_vring_packed_desc *d, bool *seen_write)
{
    if (d->flags & VUF_VRING_DESC_F_NEXT)
        return "indirect descriptor inside a chain";
    if (d->len == 0 || d->len % 16 != 0 || d->len / 16 > BE_VQ_MAX_SIZE)
        return "bad indirect table length";
    if (!be_mem_gpa_to_host(mem, d->addr, d->len))
        return "indirect table outside guest memory";
    /* §2.8.7: the table's entries are read in order, its length says how
     * many; NEXT is not used in it. */
    for (uint32_t k = 0; k < d->len / 16; k++) {
        struct vuf_vring_packed_desc t;
        const char *err;

        if (be_mem_read(mem, d->addr + 16ull * k, &t, sizeof(t)) < 0)
            return "indirect table unreadable";
        if (t.flags & VUF_VRING_DESC_F_INDIRECT)
            return "nested indirect descriptor";
        err = pk_seg(vq, c, t.addr, t.len, t.flags, seen_write);
        if (err)
            return err;
    }
    return NULL;
}

static int pk_pop(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c)
{
    uint16_t x = vq->last_avail, id = 0;
    unsigned w = PK_WRAP(x), n = 0;
    const char *err = NULL;
    bool seen_write = false;

    c->segs = vq->seg_buf;
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    if (!pk_avail(pk_flags(vq, x), w))
        return 0;
    for (;;) {
        struct vuf_vring_packed_desc d;

        memcpy(&d, &vq->pdesc[PK_POS(x)], sizeof(d));
        d.flags = pk_flags(vq, x); /* the head's: acquired, re-read for the rest */
        if (!pk_avail(d.flags, PK_WRAP(x))) {
            mark_broken(vq, "packed chain runs into a descriptor that is not available");
            return -EPROTO;
        }
        if (++n > vq->num) {
            mark_broken(vq, "packed chain longer than the ring");
            return -EPROTO;
        }
        if (!err && (d.flags & VUF_VRING_DESC_F_INDIRECT))
            err = n == 1 ? pk_indirect(vq, mem, c, &d, &seen_write)
                         : "indirect descriptor inside a chain";
        else if (!err)
            err = pk_seg(vq, c, d.addr, d.len, d.flags, &seen_write);
        id = d.id; /* §2.8.6: the buffer id is the last descriptor's */
        x = pk_advance(vq, x, 1);
        if (!(d.flags & VUF_VRING_DESC_F_NEXT) || (d.flags & VUF_VRING_DESC_F_INDIRECT))
            break;
    }
    if (id >= vq->num) {
        mark_broken(vq, "packed buffer id beyond the ring size");
        return -EPROTO;
    }
    vq->last_avail = x;
    vq->pk_ndesc[id] = (uint16_t)n;
    c->head = id;
    if (err) {
        vuf_log(VUF_LOG_ERROR, "vq %u: packed chain with id %u: %s; returned with length 0",
                vq->index, id, err);
        be_vq_signal_err(vq);
        c->nout = c->nin = 0;
        c->out_bytes = c->in_bytes = 0;
        return -EBADMSG;
    }
    return 1;
}

static void pk_push(struct be_vq *vq, uint16_t id, uint32_t len)
{
    struct vuf_vring_packed_desc *e = &vq->pdesc[PK_POS(vq->used_idx)];
    unsigned n = id < vq->num && vq->pk_ndesc[id] ? vq->pk_ndesc[id] : 1;

    __atomic_store_n(&e->id, id, __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, len, __ATOMIC_RELAXED);
    /* The flags publish the entry (AVAIL = USED = our wrap counter). */
    __atomic_store_n(&e->flags, PK_WRAP(vq->used_idx) ? PK_F_BOTH : 0, __ATOMIC_RELEASE);
    vq->used_idx = pk_advance(vq, vq->used_idx, n);
    __atomic_fetch_add(&vq->completed, 1, __ATOMIC_RELAXED);
}

/* Driver event suppression (§2.8.10): fire iff the driver did not disable
 * calls, and with DESC, iff its named position lies in [old, now). */
static bool pk_want_call(const struct be_vq *vq, uint16_t old_used)
{
    uint16_t flags = __atomic_load_n(&vq->avail[1], __ATOMIC_RELAXED);
    uint16_t off_wrap = __atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED);
    uint16_t now = vq->used_idx, new_i, old_i, event;
    unsigned dist;

    if (flags == VUF_RING_EVENT_FLAGS_DISABLE)
        return false;
    if (!vq->event_idx || flags != VUF_RING_EVENT_FLAGS_DESC)
        return true;
    dist = PK_POS(now) + (PK_WRAP(now) != PK_WRAP(old_used) ? vq->num : 0) - PK_POS(old_used);
    new_i = PK_POS(now);
    old_i = (uint16_t)(new_i - dist);
    event = PK_POS(off_wrap);
    if (PK_WRAP(off_wrap) != PK_WRAP(now))
        event = (uint16_t)(event - vq->num);
    return (uint16_t)(new_i - event - 1) < (uint16_t)(new_i - old_i);
}

int be_vq_pop(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c)
{
    uint16_t avail, pending;

    if (vq->packed)
        return pk_pop(vq, mem, c);
    avail = avail_idx(vq);
    pending = (uint16_t)(avail - vq->last_avail);
    c->segs = vq->seg_buf;
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    if (pending == 0)
        return 0;
    if (pending > vq->num) {
        mark_broken(vq, "avail->idx is more than the ring size ahead");
        return -EPROTO;
    }
    /* avail_idx() was an acquire load: the ring entry is at least that new. */
    c->head = __atomic_load_n(&vq->avail[2 + vq->last_avail % vq->num], __ATOMIC_RELAXED);
    if (c->head >= vq->num) {
        mark_broken(vq, "avail ring names a descriptor beyond the ring size");
        return -EPROTO;
    }
    vq->last_avail++;
    if (vq->infl) {
        /* In flight from now on: the counter first, then the flag that
         * makes the entry count (README.md, "Inflight tracking"). */
        struct be_infl_desc *e = &vq->infl->desc[c->head];
        __atomic_store_n(&e->counter, ++vq->infl_seq, __ATOMIC_RELAXED);
        __atomic_store_n(&e->next, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&e->inflight, 1, __ATOMIC_RELEASE);
    }
    return be_vq_chain_at(vq, mem, c->head, c);
}

int be_vq_chain_at(struct be_vq *vq, const struct be_mem *mem, uint16_t head, struct be_chain *c)
{
    uint64_t table = 0;
    bool indirect = false, seen_write = false;
    uint32_t table_len = vq->num, i, visited = 0;
    struct be_desc d;
    const char *err = NULL;

    c->segs = vq->seg_buf;
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    c->head = head;
    if (head >= vq->num) {
        err = "head beyond the ring";
        goto bad;
    }
    i = c->head;
    read_desc(vq, mem, 0, false, i, &d);
    if (d.flags & VUF_VRING_DESC_F_INDIRECT) {
        /* One table per chain, described by the head (virtio 1.2 §2.7.5.3). */
        if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > BE_VQ_MAX_SIZE) {
            err = "bad indirect table length";
            goto bad;
        }
        if (!be_mem_gpa_to_host(mem, d.addr, d.len)) {
            err = "indirect table outside guest memory";
            goto bad;
        }
        indirect = true;
        table = d.addr;
        table_len = d.len / 16;
        i = 0;
        if (read_desc(vq, mem, table, true, i, &d) < 0) {
            err = "indirect table unreadable";
            goto bad;
        }
    }
    for (;;) {
        if (++visited > table_len) {
            err = "descriptor loop";
            goto bad;
        }
        if (d.flags & VUF_VRING_DESC_F_INDIRECT) {
            err = indirect ? "nested indirect descriptor" : "indirect descriptor inside a chain";
            goto bad;
        }
        if (c->nout + c->nin >= vq->max_segs) {
            err = "chain longer than seg_max allows";
            goto bad;
        }
        if (d.flags & VUF_VRING_DESC_F_WRITE) {
            seen_write = true;
            c->segs[c->nout + c->nin++] = (struct be_seg){d.addr, d.len};
            c->in_bytes += d.len;
        } else {
            if (seen_write) {
                err = "device-readable descriptor after a writable one";
                goto bad;
            }
            c->segs[c->nout++] = (struct be_seg){d.addr, d.len};
            c->out_bytes += d.len;
        }
        if (!(d.flags & VUF_VRING_DESC_F_NEXT))
            break;
        i = d.next;
        if (i >= table_len) {
            err = "next index beyond the table";
            goto bad;
        }
        if (read_desc(vq, mem, table, indirect, i, &d) < 0) {
            err = "indirect table unreadable";
            goto bad;
        }
    }
    return 1;

bad:
    vuf_log(VUF_LOG_ERROR, "vq %u: chain at head %u: %s; returned with length 0", vq->index,
            c->head, err);
    be_vq_signal_err(vq);
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    return -EBADMSG;
}

void be_vq_push(struct be_vq *vq, uint16_t head, uint32_t len)
{
    uint8_t *elem;
    uint32_t id = head;

    if (vq->packed) {
        pk_push(vq, head, len);
        return;
    }
    elem = vq->used + 4 + 8u * (vq->used_idx % vq->num);
    memcpy(elem, &id, 4);
    memcpy(elem + 4, &len, 4);
    vq->used_idx++;
    /* The element must be visible before the index that publishes it. */
    __atomic_store_n((uint16_t *)(vq->used + 2), vq->used_idx, __ATOMIC_RELEASE);
    if (vq->infl && head < vq->infl_desc_num) {
        /* Completed: the used ring first, then the entry, then the
         * region's used_idx. A crash between any two steps leaves a used
         * ring at most one element ahead of the region, which recovery
         * reconciles (README.md, "Inflight tracking"). */
        __atomic_store_n(&vq->infl->desc[head].inflight, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&vq->infl->last_batch_head, head, __ATOMIC_RELAXED);
        __atomic_store_n(&vq->infl->used_idx, vq->used_idx, __ATOMIC_RELEASE);
    }
    __atomic_fetch_add(&vq->completed, 1, __ATOMIC_RELAXED);
}

void be_vq_infl_attach(struct be_vq *vq, struct be_infl_hdr *region, uint16_t desc_num)
{
    vq->infl = NULL;
    vq->infl_recover = false;
    if (!region)
        return;
    if (vq->packed) {
        vuf_log(VUF_LOG_WARN, "vq %u: packed ring: inflight tracking not supported", vq->index);
        return;
    }
    if (vq->num > desc_num) {
        vuf_log(VUF_LOG_ERROR,
                "vq %u: ring size %u exceeds the inflight region's %u entries; "
                "not tracked",
                vq->index, vq->num, desc_num);
        return;
    }
    vq->infl = region;
    vq->infl_desc_num = desc_num;
    vq->infl_recover = true;
}

struct infl_entry {
    uint64_t counter;
    uint16_t head;
};

static int by_counter(const void *a, const void *b)
{
    const struct infl_entry *x = a, *y = b;

    if (x->counter != y->counter)
        return x->counter < y->counter ? -1 : 1;
    return x->head < y->head ? -1 : x->head > y->head;
}

unsigned be_vq_infl_recover(struct be_vq *vq)
{
    struct be_infl_hdr *h = vq->infl;
    uint16_t used = vq->used_idx; /* loaded from used->idx by be_vq_ready */
    uint16_t rused = __atomic_load_n(&h->used_idx, __ATOMIC_ACQUIRE);
    uint16_t ahead = (uint16_t)(used - rused);
    struct infl_entry *e;
    unsigned n = 0;
    uint64_t seq = 0;

    vq->infl_recover = false;
    if (ahead > vq->num) {
        /* Not a crash window: an area that did not follow this ring
         * (another ring, a reset driver). Nothing in it can be trusted. */
        vuf_log(VUF_LOG_WARN,
                "vq %u: inflight region used_idx %u vs used->idx %u; region reset, "
                "next avail index %u kept",
                vq->index, rused, used, vq->last_avail);
        for (unsigned i = 0; i < vq->infl_desc_num; i++)
            __atomic_store_n(&h->desc[i].inflight, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->used_idx, used, __ATOMIC_RELEASE);
        vq->infl_seq = 0;
        return 0;
    }
    /* Completions published in the used ring but not yet in the region
     * (a crash inside be_vq_push): their heads are done, whatever their
     * entries say. */
    for (uint16_t k = rused; k != used; k++) {
        uint32_t id;
        memcpy(&id, vq->used + 4 + 8u * (k % vq->num), 4);
        if (id < vq->infl_desc_num)
            __atomic_store_n(&h->desc[id].inflight, 0, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&h->used_idx, used, __ATOMIC_RELEASE);

    e = calloc(vq->num, sizeof(*e));
    for (unsigned i = 0; i < vq->infl_desc_num; i++) {
        uint64_t ctr = __atomic_load_n(&h->desc[i].counter, __ATOMIC_RELAXED);
        if (ctr > seq)
            seq = ctr;
        if (!__atomic_load_n(&h->desc[i].inflight, __ATOMIC_ACQUIRE))
            continue;
        if (i >= vq->num || !e) {
            vuf_log(VUF_LOG_ERROR, "vq %u: in-flight entry %u %s; dropped", vq->index, i,
                    e ? "beyond the ring" : "not recoverable (out of memory)");
            __atomic_store_n(&h->desc[i].inflight, 0, __ATOMIC_RELAXED);
            continue;
        }
        e[n++] = (struct infl_entry){ctr, (uint16_t)i};
    }
    vq->infl_seq = seq;
    if (n)
        qsort(e, n, sizeof(*e), by_counter);
    for (unsigned k = 0; k < n; k++)
        vq->held[k] = e[k].head;
    free(e);
    __atomic_store_n(&vq->nheld, n, __ATOMIC_RELAXED);
    if (vq->last_avail != (uint16_t)(used + n))
        vuf_log(VUF_LOG_INFO, "vq %u: next avail index %u replaced by %u (used %u + %u in flight)",
                vq->index, vq->last_avail, (uint16_t)(used + n), used, n);
    vq->last_avail = (uint16_t)(used + n);
    if (n)
        vuf_log(VUF_LOG_INFO, "vq %u: %u requests in flight recovered from the inflight area",
                vq->index, n);
    return n;
}

bool be_vq_more(struct be_vq *vq)
{
    if (vq->packed) {
        /* The device area stays at ENABLE (the driver's reset value): every
         * kick wanted. Look again after the store-load fence. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return pk_avail(pk_flags(vq, vq->last_avail), PK_WRAP(vq->last_avail));
    }
    if (vq->event_idx && !vq->kicks_off) {
        uint16_t *avail_event = (uint16_t *)(vq->used + 4 + 8u * vq->num);
        __atomic_store_n(avail_event, vq->last_avail, __ATOMIC_RELAXED);
        /* Publish avail_event before looking at avail->idx again, or a
         * kick the driver suppresses because of the old value is lost. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return avail_idx(vq) != vq->last_avail;
}

void be_vq_set_kicks(struct be_vq *vq, bool on)
{
    /* Packed rings: this back-end never writes the device event
     * suppression area (every kick stays wanted), so polling just spins. */
    if (!vq->used || vq->packed || vq->kicks_off == !on)
        return;
    vq->kicks_off = !on;
    if (vq->event_idx) {
        /* Off: avail_event one behind last_avail (and left there while
         * last_avail moves on), so the driver's kicks are suppressed for
         * the next 65535 requests; on: ask for the next one. */
        __atomic_store_n((uint16_t *)(vq->used + 4 + 8u * vq->num),
                         (uint16_t)(on ? vq->last_avail : vq->last_avail - 1), __ATOMIC_RELAXED);
    } else {
        uint16_t *flags = (uint16_t *)vq->used;
        uint16_t f = __atomic_load_n(flags, __ATOMIC_RELAXED);
        f = on ? (uint16_t)(f & ~VUF_VRING_USED_F_NO_NOTIFY)
               : (uint16_t)(f | VUF_VRING_USED_F_NO_NOTIFY);
        __atomic_store_n(flags, f, __ATOMIC_RELAXED);
    }
    /* The wish must be visible before the caller's last look at avail->idx. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

bool be_vq_has_avail(const struct be_vq *vq)
{
    return vq->avail && avail_idx(vq) != vq->last_avail;
}

void be_vq_notify(struct be_vq *vq, uint16_t old_used)
{
    uint16_t now = vq->used_idx;
    bool fire;

    if (now == old_used || vq->call_fd < 0)
        return;
    /* used->idx is stored; order it before reading the driver's wishes. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (vq->packed) {
        fire = pk_want_call(vq, old_used);
    } else if (vq->event_idx) {
        uint16_t used_event = __atomic_load_n(&vq->avail[2 + vq->num], __ATOMIC_RELAXED);
        /* virtio 1.2 §2.7.10: notify iff used_event lies in (old, now]. */
        fire = (uint16_t)(now - used_event - 1) < (uint16_t)(now - old_used);
    } else {
        fire = !(__atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED) & VUF_VRING_AVAIL_F_NO_INTERRUPT);
    }
    if (fire) {
        uint64_t one = 1;
        if (write(vq->call_fd, &one, sizeof(one)) < 0)
            vuf_log(VUF_LOG_DEBUG, "vq %u: call eventfd write failed", vq->index);
    }
}

void be_vq_signal_err(struct be_vq *vq)
{
    uint64_t one = 1;

    if (vq->err_fd >= 0 && write(vq->err_fd, &one, sizeof(one)) < 0)
        vuf_log(VUF_LOG_DEBUG, "vq %u: err eventfd write failed", vq->index);
}
