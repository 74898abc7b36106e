/* SPDX-License-Identifier: MIT */
/* Device side of a split virtqueue. See vring.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "peer_eventfd.h"
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

static void infl_detach(struct be_vq *vq)
{
    vq->infl = NULL;
    vq->pk_infl = NULL;
    vq->infl_recover = false;
    free(vq->pk_next); /* pk_last and pk_slot share its block */
    vq->pk_next = vq->pk_last = vq->pk_slot = NULL;
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
    infl_detach(vq);
    vq->pk_unsignalled = 0;
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
        vq->pk_unsignalled = 0;
        /* A back-end that died polling left DISABLE in the device area:
         * the driver would never kick this one. */
        if (!vq->kicks_off)
            __atomic_store_n((uint32_t *)(void *)vq->used, VUF_RING_EVENT_FLAGS_ENABLE << 16,
                             __ATOMIC_RELAXED);
    }
    if (!vq->used_idx_valid) {
        /* Split rings keep the used index in memory only (spec, "SET_VRING_BASE"). */
        vq->used_idx = __atomic_load_n((uint16_t *)(vq->used + 2), __ATOMIC_ACQUIRE);
        vq->used_idx_valid = true;
        /* A back-end that died polling left kicks suppressed: NO_NOTIFY in
         * used->flags, or avail_event one behind. Without EVENT_IDX the
         * driver would never kick this one; with it, not for 65535
         * requests. */
        if (!vq->kicks_off) {
            if (vq->event_idx)
                __atomic_store_n((uint16_t *)(vq->used + 4 + 8u * vq->num), vq->last_avail,
                                 __ATOMIC_RELAXED);
            else
                __atomic_store_n(
                    (uint16_t *)vq->used,
                    (uint16_t)(__atomic_load_n((uint16_t *)vq->used, __ATOMIC_RELAXED) &
                               ~VUF_VRING_USED_F_NO_NOTIFY),
                    __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
        }
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

void be_vq_break(struct be_vq *vq, const char *why)
{
    mark_broken(vq, why);
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

/* ---- packed inflight tracking: the update side ---------------------------- */

#define PKI_STORE16(p, v) __atomic_store_n((p), (uint16_t)(v), __ATOMIC_RELAXED)

/* Record ring descriptor `d` of the chain being popped (`first`: its head)
 * in the next free entry. False when the pool is exhausted: more
 * descriptors in flight than the ring holds. */
static bool pki_take(struct be_vq *vq, const struct vuf_vring_packed_desc *d, bool first)
{
    struct be_inflpk_hdr *h = vq->pk_infl;
    uint16_t e = vq->pk_free, head = vq->pk_free_old;
    struct be_inflpk_desc *x;

    if (e >= vq->infl_desc_num)
        return false;
    x = &h->desc[e];
    if (first) {
        /* The documented order: the head counts as in flight before its
         * copy exists; an uncommitted head is rolled back by recovery. */
        PKI_STORE16(&h->desc[head].num, 0);
        __atomic_store_n(&h->desc[head].counter, ++vq->infl_seq, __ATOMIC_RELAXED);
        __atomic_store_n(&h->desc[head].inflight, 1, __ATOMIC_RELEASE);
    }
    PKI_STORE16(&x->id, d->id);
    PKI_STORE16(&x->flags, d->flags);
    __atomic_store_n(&x->len, d->len, __ATOMIC_RELAXED);
    __atomic_store_n(&x->addr, d->addr, __ATOMIC_RELAXED);
    PKI_STORE16(&h->desc[head].num, __atomic_load_n(&h->desc[head].num, __ATOMIC_RELAXED) + 1);
    PKI_STORE16(&h->desc[head].last, e);
    vq->pk_last[head] = e;
    vq->pk_free = vq->pk_next[e];
    __atomic_store_n(&h->free_head, vq->pk_free, __ATOMIC_RELEASE);
    return true;
}

/* The chain is whole: commit it (old_free_head), and map its id. */
static void pki_commit_pop(struct be_vq *vq, uint16_t id)
{
    vq->pk_slot[id] = (uint16_t)(vq->pk_free_old + 1);
    vq->pk_free_old = vq->pk_free;
    __atomic_store_n(&vq->pk_infl->old_free_head, vq->pk_free, __ATOMIC_RELEASE);
}

/* A chain that broke the queue half-way: as recovery would, forget what
 * was taken of it (nothing if the first entry could not be). */
static void pki_abort_pop(struct be_vq *vq)
{
    struct be_inflpk_hdr *h = vq->pk_infl;

    if (!h || vq->pk_free == vq->pk_free_old)
        return;
    __atomic_store_n(&h->desc[vq->pk_free_old].inflight, 0, __ATOMIC_RELAXED);
    vq->pk_free = vq->pk_free_old;
    __atomic_store_n(&h->free_head, vq->pk_free, __ATOMIC_RELEASE);
}

/* Buffer `id` is done and `used` (position | wrap) is where the used
 * pointer goes: its entries back to the free list and the region's used
 * position, before the used descriptor is published. */
static void pki_push_begin(struct be_vq *vq, uint16_t id, uint16_t used)
{
    struct be_inflpk_hdr *h = vq->pk_infl;
    uint16_t e = id < vq->num && vq->pk_slot[id] ? (uint16_t)(vq->pk_slot[id] - 1) : 0xffff;

    if (e != 0xffff) {
        uint16_t last = vq->pk_last[e];

        vq->pk_next[last] = vq->pk_free;
        PKI_STORE16(&h->desc[last].next, vq->pk_free);
        vq->pk_free = e;
        __atomic_store_n(&h->free_head, e, __ATOMIC_RELEASE);
    }
    PKI_STORE16(&h->used_idx, PK_POS(used));
    __atomic_store_n(&h->used_wrap_counter, (uint8_t)PK_WRAP(used), __ATOMIC_RELEASE);
}

/* ... and after it: the head no longer in flight, the step committed. */
static void pki_push_end(struct be_vq *vq, uint16_t id)
{
    struct be_inflpk_hdr *h = vq->pk_infl;

    if (id < vq->num && vq->pk_slot[id]) {
        __atomic_store_n(&h->desc[vq->pk_slot[id] - 1].inflight, 0, __ATOMIC_RELEASE);
        vq->pk_slot[id] = 0;
    }
    vq->pk_free_old = vq->pk_free;
    PKI_STORE16(&h->old_free_head, vq->pk_free);
    PKI_STORE16(&h->old_used_idx, PK_POS(vq->used_idx));
    __atomic_store_n(&h->old_used_wrap_counter, (uint8_t)PK_WRAP(vq->used_idx), __ATOMIC_RELEASE);
}

/* One descriptor of a chain into c (the indirect table, or one buffer);
 * sets *err for a malformed chain. */
static void pk_take_desc(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c,
                         const struct vuf_vring_packed_desc *d, unsigned n, bool *seen_write,
                         const char **err)
{
    if (*err)
        return;
    if (d->flags & VUF_VRING_DESC_F_INDIRECT)
        *err =
            n == 1 ? pk_indirect(vq, mem, c, d, seen_write) : "indirect descriptor inside a chain";
    else
        *err = pk_seg(vq, c, d->addr, d->len, d->flags, seen_write);
}

static int pk_bad_chain(struct be_vq *vq, struct be_chain *c, uint16_t id, const char *err)
{
    vuf_log(VUF_LOG_ERROR, "vq %u: packed chain with id %u: %s; returned with length 0", vq->index,
            id, err);
    be_vq_signal_err(vq);
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    return -EBADMSG;
}

static int pk_pop(struct be_vq *vq, const struct be_mem *mem, struct be_chain *c)
{
    uint16_t x = vq->last_avail, id = 0;
    unsigned n = 0;
    const char *err = NULL;
    bool seen_write = false;

    c->segs = vq->seg_buf;
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    if (!pk_avail(pk_flags(vq, x), PK_WRAP(x)))
        return 0;
    for (;;) {
        struct vuf_vring_packed_desc d;
        const char *why = NULL;

        memcpy(&d, &vq->pdesc[PK_POS(x)], sizeof(d));
        d.flags = pk_flags(vq, x); /* the head's: acquired, re-read for the rest */
        if (!pk_avail(d.flags, PK_WRAP(x)))
            why = "packed chain runs into a descriptor that is not available";
        else if (++n > vq->num)
            why = "packed chain longer than the ring";
        else if (vq->pk_infl && !pki_take(vq, &d, n == 1))
            why = "more packed descriptors in flight than the ring holds";
        if (why) {
            pki_abort_pop(vq);
            mark_broken(vq, why);
            return -EPROTO;
        }
        pk_take_desc(vq, mem, c, &d, n, &seen_write, &err);
        id = d.id; /* §2.8.6: the buffer id is the last descriptor's */
        x = pk_advance(vq, x, 1);
        if (!(d.flags & VUF_VRING_DESC_F_NEXT) || (d.flags & VUF_VRING_DESC_F_INDIRECT))
            break;
    }
    if (id >= vq->num || (vq->pk_infl && vq->pk_slot[id])) {
        pki_abort_pop(vq);
        mark_broken(vq, id >= vq->num ? "packed buffer id beyond the ring size"
                                      : "packed buffer id already in flight");
        return -EPROTO;
    }
    if (vq->pk_infl)
        pki_commit_pop(vq, id);
    vq->last_avail = x;
    vq->pk_ndesc[id] = (uint16_t)n;
    c->head = id;
    return err ? pk_bad_chain(vq, c, id, err) : 1;
}

/* A popped chain again, from the copies in the inflight region (held and
 * recovered requests: the ring's descriptors may be used ones by now). */
static int pk_chain_from_region(struct be_vq *vq, const struct be_mem *mem, uint16_t id,
                                struct be_chain *c)
{
    const struct be_inflpk_hdr *h = vq->pk_infl;
    const char *err = NULL;
    bool seen_write = false;
    uint16_t e;

    c->segs = vq->seg_buf;
    c->nout = c->nin = 0;
    c->out_bytes = c->in_bytes = 0;
    c->head = id;
    if (!h || id >= vq->num || !vq->pk_slot[id])
        return pk_bad_chain(vq, c, id, "not in flight");
    e = (uint16_t)(vq->pk_slot[id] - 1);
    for (unsigned n = 1; n <= vq->pk_ndesc[id]; n++) {
        struct vuf_vring_packed_desc d = {
            .addr = __atomic_load_n(&h->desc[e].addr, __ATOMIC_RELAXED),
            .len = __atomic_load_n(&h->desc[e].len, __ATOMIC_RELAXED),
            .id = id,
            .flags = __atomic_load_n(&h->desc[e].flags, __ATOMIC_RELAXED),
        };

        pk_take_desc(vq, mem, c, &d, n, &seen_write, &err);
        e = vq->pk_next[e];
    }
    return err ? pk_bad_chain(vq, c, id, err) : 1;
}

static void pk_push(struct be_vq *vq, uint16_t id, uint32_t len)
{
    struct vuf_vring_packed_desc *e = &vq->pdesc[PK_POS(vq->used_idx)];
    unsigned n = id < vq->num && vq->pk_ndesc[id] ? vq->pk_ndesc[id] : 1;
    uint16_t next = pk_advance(vq, vq->used_idx, n);

    if (vq->pk_infl)
        pki_push_begin(vq, id, next);
    __atomic_store_n(&e->id, id, __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, len, __ATOMIC_RELAXED);
    /* The flags publish the entry (AVAIL = USED = our wrap counter). */
    __atomic_store_n(&e->flags, PK_WRAP(vq->used_idx) ? PK_F_BOTH : 0, __ATOMIC_RELEASE);
    vq->used_idx = next;
    if (vq->pk_infl)
        pki_push_end(vq, id);
    vq->pk_unsignalled += n;
    __atomic_fetch_add(&vq->completed, 1, __ATOMIC_RELAXED);
}

/* Driver event suppression (§2.8.10): fire iff the driver did not disable
 * calls, and with DESC, iff its named position lies among the
 * pk_unsignalled descriptors used since the last decision. */
static bool pk_want_call(const struct be_vq *vq)
{
    uint32_t ev = __atomic_load_n((const uint32_t *)(const void *)vq->avail, __ATOMIC_RELAXED);
    uint16_t flags = (uint16_t)(ev >> 16), off_wrap = (uint16_t)ev;
    uint16_t now = vq->used_idx, new_i, old_i, event;

    if (flags == VUF_RING_EVENT_FLAGS_DISABLE)
        return false;
    if (!vq->event_idx || flags != VUF_RING_EVENT_FLAGS_DESC || vq->pk_unsignalled >= vq->num)
        return true;
    /* Positions as a running count: one lap back is `num` lower. */
    new_i = PK_POS(now);
    old_i = (uint16_t)(new_i - vq->pk_unsignalled);
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

    if (vq->packed)
        return pk_chain_from_region(vq, mem, head, c);
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

void be_vq_infl_attach(struct be_vq *vq, void *region, uint16_t desc_num, uint64_t bytes)
{
    infl_detach(vq);
    if (!region)
        return;
    if (vq->num > desc_num) {
        vuf_log(VUF_LOG_ERROR,
                "vq %u: ring size %u exceeds the inflight region's %u entries; "
                "not tracked",
                vq->index, vq->num, desc_num);
        return;
    }
    if (vq->packed) {
        if (bytes < be_inflpk_region_size(desc_num)) {
            vuf_log(VUF_LOG_ERROR,
                    "vq %u: the inflight area was laid out for split rings (%llu bytes per "
                    "queue); packed ring not tracked",
                    vq->index, (unsigned long long)bytes);
            return;
        }
        vq->pk_next = calloc(3 * (size_t)desc_num, sizeof(uint16_t));
        if (!vq->pk_next) {
            vuf_log(VUF_LOG_ERROR, "vq %u: out of memory; packed ring not tracked", vq->index);
            return;
        }
        vq->pk_last = vq->pk_next + desc_num;
        vq->pk_slot = vq->pk_last + desc_num;
        vq->pk_infl = region;
    } else {
        vq->infl = region;
    }
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

/* ---- packed inflight tracking: recovery ----------------------------------- */

/* Make the region a fresh one at the ring's current positions: every entry
 * free (next = i + 1, the list ending at desc_num), nothing in flight. */
static void pki_reset(struct be_vq *vq)
{
    struct be_inflpk_hdr *h = vq->pk_infl;
    uint16_t dn = vq->infl_desc_num;

    for (unsigned i = 0; i < dn; i++) {
        vq->pk_next[i] = (uint16_t)(i + 1);
        PKI_STORE16(&h->desc[i].next, i + 1);
        __atomic_store_n(&h->desc[i].inflight, 0, __ATOMIC_RELAXED);
    }
    memset(vq->pk_slot, 0, sizeof(*vq->pk_slot) * dn);
    vq->pk_free = vq->pk_free_old = 0;
    PKI_STORE16(&h->free_head, 0);
    PKI_STORE16(&h->old_free_head, 0);
    PKI_STORE16(&h->used_idx, PK_POS(vq->used_idx));
    PKI_STORE16(&h->old_used_idx, PK_POS(vq->used_idx));
    __atomic_store_n(&h->used_wrap_counter, (uint8_t)PK_WRAP(vq->used_idx), __ATOMIC_RELAXED);
    __atomic_store_n(&h->old_used_wrap_counter, (uint8_t)PK_WRAP(vq->used_idx), __ATOMIC_RELEASE);
    vq->infl_seq = 0;
}

struct pki_head {
    uint64_t counter;
    uint16_t entry, id, num;
};

static int pki_by_counter(const void *a, const void *b)
{
    const struct pki_head *x = a, *y = b;

    if (x->counter != y->counter)
        return x->counter < y->counter ? -1 : 1;
    return x->entry < y->entry ? -1 : x->entry > y->entry;
}

/*
 * Read the region after the roll-forward/back: the chains in flight into
 * heads[] (capacity desc_num) and *ndesc, our next[]/last[]/slot[] copies,
 * and a free list rebuilt of every other entry (which also takes back
 * entries an interrupted step left on no list). mark[] is desc_num zeroes
 * of scratch. NULL, or what makes the region untrustworthy.
 */
static const char *pki_scan(struct be_vq *vq, struct pki_head *heads, unsigned *nheads,
                            unsigned *ndesc, uint8_t *mark)
{
    struct be_inflpk_hdr *h = vq->pk_infl;
    uint16_t dn = vq->infl_desc_num, e = __atomic_load_n(&h->free_head, __ATOMIC_RELAXED);
    unsigned steps = 0, n = 0, total = 0;
    uint16_t prev = 0xffff;

    /* 1: the free list; its entries are not in flight, whatever they say. */
    while (e != dn) {
        if (e > dn || mark[e] || ++steps > dn)
            return "free list out of range or looping";
        mark[e] = 1;
        e = __atomic_load_n(&h->desc[e].next, __ATOMIC_RELAXED);
    }
    /* 2: the heads in flight and their chains (num entries along next). */
    for (uint16_t i = 0; i < dn; i++) {
        uint16_t num, last, id, x = i;

        if (mark[i] == 1 || !__atomic_load_n(&h->desc[i].inflight, __ATOMIC_ACQUIRE))
            continue;
        num = __atomic_load_n(&h->desc[i].num, __ATOMIC_RELAXED);
        last = __atomic_load_n(&h->desc[i].last, __ATOMIC_RELAXED);
        if (num == 0 || num > vq->num || (total += num) > vq->num)
            return "more descriptors in flight than the ring holds";
        for (unsigned k = 0; k < num; k++) {
            if (x >= dn || mark[x])
                return "chain runs into a free or shared entry";
            mark[x] = 2;
            vq->pk_next[x] = __atomic_load_n(&h->desc[x].next, __ATOMIC_RELAXED);
            if (k + 1 < num)
                x = vq->pk_next[x];
        }
        id = __atomic_load_n(&h->desc[x].id, __ATOMIC_RELAXED);
        if (x != last)
            return "chain does not end at its last entry";
        if (id >= vq->num || vq->pk_slot[id])
            return "buffer id beyond the ring or in flight twice";
        vq->pk_last[i] = last;
        vq->pk_slot[id] = (uint16_t)(i + 1);
        vq->pk_ndesc[id] = num;
        heads[n++] =
            (struct pki_head){__atomic_load_n(&h->desc[i].counter, __ATOMIC_RELAXED), i, id, num};
    }
    /* 3: everything else (free, or a stale head) is the new free list. */
    for (uint16_t i = dn; i-- > 0;) {
        if (mark[i] == 2)
            continue;
        __atomic_store_n(&h->desc[i].inflight, 0, __ATOMIC_RELAXED);
        vq->pk_next[i] = prev == 0xffff ? dn : prev;
        PKI_STORE16(&h->desc[i].next, vq->pk_next[i]);
        prev = i;
    }
    vq->pk_free = vq->pk_free_old = prev == 0xffff ? dn : prev;
    PKI_STORE16(&h->free_head, vq->pk_free);
    __atomic_store_n(&h->old_free_head, vq->pk_free, __ATOMIC_RELEASE);
    *nheads = n;
    *ndesc = total;
    return NULL;
}

static unsigned pki_recover(struct be_vq *vq)
{
    struct be_inflpk_hdr *h = vq->pk_infl;
    uint16_t dn = vq->infl_desc_num;
    uint16_t used = __atomic_load_n(&h->used_idx, __ATOMIC_ACQUIRE);
    uint16_t old_used = __atomic_load_n(&h->old_used_idx, __ATOMIC_RELAXED);
    uint8_t wrap = __atomic_load_n(&h->used_wrap_counter, __ATOMIC_RELAXED);
    uint8_t old_wrap = __atomic_load_n(&h->old_used_wrap_counter, __ATOMIC_RELAXED);
    struct pki_head *heads = NULL;
    uint8_t *mark = NULL;
    const char *bad = NULL;
    unsigned n = 0, ndesc = 0;
    uint16_t pos;

    vq->infl_recover = false;
    /* Never used: desc[0].next is 0 only before the first reset (later it
     * links to another entry or ends the list at desc_num >= 1). */
    if (__atomic_load_n(&h->desc[0].next, __ATOMIC_RELAXED) == 0) {
        pki_reset(vq);
        return 0;
    }
    if (used >= vq->num || old_used >= vq->num || wrap > 1 || old_wrap > 1) {
        bad = "positions beyond the ring";
        goto reset;
    }
    /* A completion was in progress: committed iff its used descriptor was
     * published, i.e. the one at old_used is no longer the driver's
     * available descriptor of that lap. */
    if (used != old_used || wrap != old_wrap) {
        uint16_t f = pk_flags(vq, (uint16_t)(old_used | old_wrap << 15));

        if (!pk_avail(f, old_wrap)) {
            __atomic_store_n(&h->old_free_head, __atomic_load_n(&h->free_head, __ATOMIC_RELAXED),
                             __ATOMIC_RELAXED);
            old_used = used;
            old_wrap = wrap;
        }
    }
    /* Roll back whatever is not committed (a pop or a completion). */
    PKI_STORE16(&h->free_head, __atomic_load_n(&h->old_free_head, __ATOMIC_RELAXED));
    PKI_STORE16(&h->used_idx, old_used);
    PKI_STORE16(&h->old_used_idx, old_used);
    __atomic_store_n(&h->used_wrap_counter, old_wrap, __ATOMIC_RELAXED);
    __atomic_store_n(&h->old_used_wrap_counter, old_wrap, __ATOMIC_RELEASE);
    pos = (uint16_t)(old_used | old_wrap << 15);

    heads = calloc(dn, sizeof(*heads));
    mark = calloc(dn, 1);
    if (!heads || !mark) {
        bad = "out of memory";
        goto reset;
    }
    memset(vq->pk_slot, 0, sizeof(*vq->pk_slot) * dn);
    bad = pki_scan(vq, heads, &n, &ndesc, mark);
    /* The buffers in flight start at the used position, never written
     * since they were taken: the descriptor there is still available. */
    if (!bad && n && !pk_avail(pk_flags(vq, pos), PK_WRAP(pos)))
        bad = "the ring at its used position is not what the region says";
    if (bad)
        goto reset;
    qsort(heads, n, sizeof(*heads), pki_by_counter);
    vq->infl_seq = 0;
    for (unsigned k = 0; k < n; k++) {
        vq->held[k] = heads[k].id;
        if (heads[k].counter > vq->infl_seq)
            vq->infl_seq = heads[k].counter;
    }
    free(heads);
    free(mark);
    __atomic_store_n(&vq->nheld, n, __ATOMIC_RELAXED);
    if (vq->used_idx != pos || vq->last_avail != pk_advance(vq, pos, ndesc))
        vuf_log(VUF_LOG_INFO,
                "vq %u: packed positions avail 0x%04x used 0x%04x replaced by 0x%04x 0x%04x "
                "(%u buffers, %u descriptors in flight)",
                vq->index, vq->last_avail, vq->used_idx, pk_advance(vq, pos, ndesc), pos, n, ndesc);
    vq->used_idx = pos;
    vq->last_avail = pk_advance(vq, pos, ndesc);
    vq->pk_unsignalled = 0;
    if (n)
        vuf_log(VUF_LOG_INFO, "vq %u: %u requests in flight recovered from the inflight area",
                vq->index, n);
    return n;

reset:
    free(heads);
    free(mark);
    vuf_log(VUF_LOG_WARN,
            "vq %u: packed inflight region not usable (%s); reset, positions from "
            "SET_VRING_BASE kept",
            vq->index, bad);
    memset(vq->pk_slot, 0, sizeof(*vq->pk_slot) * dn);
    pki_reset(vq);
    return 0;
}

static unsigned split_recover(struct be_vq *vq)
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

/* The device event area (§2.8.10) in one store: the driver reads it with
 * one load, so it never pairs a new offset with old flags. */
static void pk_dev_event(struct be_vq *vq, uint16_t flags, uint16_t off_wrap)
{
    __atomic_store_n((uint32_t *)(void *)vq->used, (uint32_t)off_wrap | (uint32_t)flags << 16,
                     __ATOMIC_RELAXED);
}

unsigned be_vq_infl_recover(struct be_vq *vq)
{
    if (vq->pk_infl)
        return pki_recover(vq);
    if (vq->infl)
        return split_recover(vq);
    vq->infl_recover = false;
    return 0;
}

bool be_vq_more(struct be_vq *vq)
{
    if (vq->packed) {
        /* With EVENT_IDX a kick is wanted only for the descriptor at
         * last_avail (without, the area stays ENABLE). Look again after
         * the store-load fence. */
        if (vq->event_idx && !vq->kicks_off)
            pk_dev_event(vq, VUF_RING_EVENT_FLAGS_DESC, vq->last_avail);
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
    if (!vq->used || vq->kicks_off == !on)
        return;
    vq->kicks_off = !on;
    if (vq->packed) {
        /* Off: DISABLE, whatever EVENT_IDX says (DESC could only name one
         * position, a lap at most ahead); on: as be_vq_more leaves it. */
        if (!on)
            pk_dev_event(vq, VUF_RING_EVENT_FLAGS_DISABLE, 0);
        else if (vq->event_idx)
            pk_dev_event(vq, VUF_RING_EVENT_FLAGS_DESC, vq->last_avail);
        else
            pk_dev_event(vq, VUF_RING_EVENT_FLAGS_ENABLE, 0);
    } else if (vq->event_idx) {
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
    if (vq->packed)
        return vq->pdesc && pk_avail(pk_flags(vq, vq->last_avail), PK_WRAP(vq->last_avail));
    return vq->avail && avail_idx(vq) != vq->last_avail;
}

void be_vq_notify(struct be_vq *vq, uint16_t old_used)
{
    uint16_t now = vq->used_idx;
    bool fire;

    /* Packed: a whole lap used leaves the position where it was. */
    if (vq->packed ? vq->pk_unsignalled == 0 : now == old_used)
        return;
    if (vq->call_fd < 0) {
        vq->pk_unsignalled = 0;
        return;
    }
    /* used->idx is stored; order it before reading the driver's wishes. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (vq->packed) {
        fire = pk_want_call(vq);
        vq->pk_unsignalled = 0;
    } else if (vq->event_idx) {
        uint16_t used_event = __atomic_load_n(&vq->avail[2 + vq->num], __ATOMIC_RELAXED);
        /* virtio 1.2 §2.7.10: notify iff used_event lies in (old, now]. */
        fire = (uint16_t)(now - used_event - 1) < (uint16_t)(now - old_used);
    } else {
        fire = !(__atomic_load_n(&vq->avail[0], __ATOMIC_RELAXED) & VUF_VRING_AVAIL_F_NO_INTERRUPT);
    }
    /* The front-end shares the eventfd's file description: it may have
     * made it blocking and filled the counter, so never write() it. */
    if (fire && vuf_peer_efd_signal(vq->call_fd) < 0)
        vuf_log(VUF_LOG_DEBUG, "vq %u: call eventfd signal failed", vq->index);
}

void be_vq_signal_err(struct be_vq *vq)
{
    if (vq->err_fd >= 0 && vuf_peer_efd_signal(vq->err_fd) < 0)
        vuf_log(VUF_LOG_DEBUG, "vq %u: err eventfd signal failed", vq->index);
}
