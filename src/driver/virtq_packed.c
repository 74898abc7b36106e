/* SPDX-License-Identifier: MIT */
/*
 * Driver side of a packed virtqueue (virtio 1.2 §2.8) behind the vuf_virtq
 * calls (virtq.c dispatches here when the queue was created packed).
 *
 * Trust: as for split rings, the device writes only used descriptors and
 * the device event suppression area. The driver keeps its own copy of
 * every descriptor it wrote (vq->shadow) and of every chain (vq->slots,
 * indexed by buffer id), so it never reads back a chain from shared memory;
 * a used descriptor is checked (wrap counters, id in flight, length) before
 * anything is freed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "virtq_int.h"
#include "vuf/log.h"

#define PACKED_POS_MASK 0x7fffu

/* AVAIL = wrap, USED = !wrap: "available in the lap with this wrap counter"
 * (§2.8.1); AVAIL = USED = wrap is "used in that lap". */
static inline uint16_t avail_bits(bool wrap)
{
    return wrap ? VUF_VRING_PACKED_DESC_F_AVAIL : VUF_VRING_PACKED_DESC_F_USED;
}

static inline uint16_t used_bits(bool wrap)
{
    return wrap ? (uint16_t)(VUF_VRING_PACKED_DESC_F_AVAIL | VUF_VRING_PACKED_DESC_F_USED) : 0;
}

static inline uint16_t both_bits(uint16_t flags)
{
    return flags & (VUF_VRING_PACKED_DESC_F_AVAIL | VUF_VRING_PACKED_DESC_F_USED);
}

static inline uint16_t encode(uint16_t pos, bool wrap)
{
    return (uint16_t)(pos | (wrap ? VUF_VRING_PACKED_WRAP : 0));
}

static inline uint16_t flags_acquire(const struct vuf_vring_packed_desc *d)
{
    return __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
}

int vqp_alloc(struct vuf_virtq *vq, const struct vuf_virtq_opts *opts)
{
    uint64_t ra = opts->ring_align;
    void *p;
    int r;

    /* Descriptor ring 16, both event areas 4 (§2.8.10.1). */
    r = vq_alloc_part(vq->gm, 16ull * vq->size, ra > 16 ? ra : 16, &vq->desc_gpa, &p);
    if (r < 0)
        return r;
    vq->pdesc = p;
    r = vq_alloc_part(vq->gm, sizeof(struct vuf_vring_packed_event), ra > 4 ? ra : 4,
                      &vq->avail_gpa, &p);
    if (r < 0)
        return r;
    vq->drv_event = p;
    r = vq_alloc_part(vq->gm, sizeof(struct vuf_vring_packed_event), ra > 4 ? ra : 4, &vq->used_gpa,
                      &p);
    if (r < 0)
        return r;
    vq->dev_event = p;
    if (opts->features & (1ull << VUF_VIRTIO_F_INDIRECT_DESC)) {
        unsigned m = opts->indirect_max;

        if (m == 0)
            m = VUF_VIRTQ_INDIRECT_DEFAULT < vq->size ? VUF_VIRTQ_INDIRECT_DEFAULT : vq->size;
        vq->indirect_max = m;
        /* One table per buffer id: an id is in flight at most once. */
        r = vq_alloc_part(vq->gm, 16ull * vq->size * m, 16, &vq->ind_gpa, &p);
        if (r < 0)
            return r;
        vq->ind = p;
    }
    /* The second half is scratch space for vqp_requeue_inflight(). */
    vq->shadow = calloc(2ull * vq->size, sizeof(*vq->shadow));
    return vq->shadow ? 0 : -ENOMEM;
}

void vqp_reset(struct vuf_virtq *vq, uint16_t base)
{
    uint16_t pos = (uint16_t)(base & PACKED_POS_MASK & vq->mask);
    bool wrap = base & VUF_VRING_PACKED_WRAP;

    /* Positions before `pos` were used in this lap, the rest in the last
     * one: neither looks available to the device nor used to us. */
    for (unsigned i = 0; i < vq->size; i++)
        vq->pdesc[i] = (struct vuf_vring_packed_desc){.flags = used_bits(i < pos ? wrap : !wrap)};
    memset(vq->shadow, 0, 2ull * vq->size * sizeof(*vq->shadow));
    *vq->drv_event = (struct vuf_vring_packed_event){.flags = VUF_RING_EVENT_FLAGS_ENABLE};
    *vq->dev_event = (struct vuf_vring_packed_event){.flags = VUF_RING_EVENT_FLAGS_ENABLE};

    for (unsigned i = 0; i < vq->size; i++) {
        vq->free_next[i] = (uint16_t)(i + 1);
        vq->slots[i] = (struct vq_slot){.older = vq->size, .newer = vq->size};
    }
    vq->free_head = 0;
    vq->num_free = vq->size;
    vq->inflight = 0;
    vq->oldest = vq->newest = vq->size;
    vq->p_avail = vq->p_used = pos;
    vq->p_avail_wrap = vq->p_used_wrap = wrap;
    vq->p_kick_added = 0;
    vq->broken = false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

void vqp_layout(const struct vuf_virtq *vq, struct vuf_virtq_layout *out)
{
    *out = (struct vuf_virtq_layout){
        .size = vq->size,
        .packed = true,
        .desc_gpa = vq->desc_gpa,
        .avail_gpa = vq->avail_gpa,
        .used_gpa = vq->used_gpa,
        .pdesc = vq->pdesc,
        .driver_event = vq->drv_event,
        .device_event = vq->dev_event,
    };
}

uint16_t vqp_avail_idx(const struct vuf_virtq *vq)
{
    return encode(vq->p_avail, vq->p_avail_wrap);
}

uint16_t vqp_last_used(const struct vuf_virtq *vq)
{
    return encode(vq->p_used, vq->p_used_wrap);
}

static void advance(const struct vuf_virtq *vq, uint16_t *pos, bool *wrap, unsigned n)
{
    unsigned p = *pos + n;

    if (p >= vq->size) {
        p -= vq->size;
        *wrap = !*wrap;
    }
    *pos = (uint16_t)p;
}

uint16_t vqp_used_idx(const struct vuf_virtq *vq)
{
    uint16_t pos = vq->p_used;
    bool wrap = vq->p_used_wrap;

    /* At most one step per chain in flight: a device repeating ids cannot
     * keep us walking. */
    for (unsigned k = 0; k < vq->inflight; k++) {
        const struct vuf_vring_packed_desc *d = &vq->pdesc[pos];
        uint16_t id;

        if (both_bits(flags_acquire(d)) != used_bits(wrap))
            break;
        id = __atomic_load_n(&d->id, __ATOMIC_RELAXED);
        if (id >= vq->size || !vq->slots[id].inflight)
            break;
        advance(vq, &pos, &wrap, vq->slots[id].ndesc);
    }
    return encode(pos, wrap);
}

/* ------------------------------------------------------------------------ */
/* Adding buffers                                                           */
/* ------------------------------------------------------------------------ */

int vqp_add(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n, void *cookie)
{
    struct vuf_vring_packed_desc head_desc = {0};
    uint16_t head, id;
    uint64_t wlen, tlen;
    bool indirect;
    unsigned need;
    struct vq_slot *s;
    int r;

    r = vq_check_chain(vq, bufs, n, &wlen, &tlen, &indirect);
    if (r < 0)
        return r;
    need = indirect ? 1 : n;
    if (need > vq->num_free)
        return -ENOSPC;

    /* Every chain holds at least one descriptor, so a free descriptor
     * means a free id. */
    id = (uint16_t)vq->free_head;
    vq->free_head = vq->free_next[id];
    head = vq->p_avail;

    if (indirect) {
        struct vuf_vring_packed_desc *t =
            (struct vuf_vring_packed_desc *)(void *)(vq->ind + (size_t)id * vq->indirect_max);

        for (unsigned i = 0; i < n; i++) {
            uint64_t gpa = 0;

            vq_buf_gpa(vq, &bufs[i], &gpa); /* checked above */
            /* §2.8.7: the table is read in order; NEXT is not used in it. */
            t[i] = (struct vuf_vring_packed_desc){
                .addr = gpa,
                .len = bufs[i].len,
                .flags = bufs[i].writable ? VUF_VRING_DESC_F_WRITE : 0,
            };
        }
        head_desc = (struct vuf_vring_packed_desc){
            .addr = vq->ind_gpa + (uint64_t)id * vq->indirect_max * 16u,
            .len = n * 16u,
            .id = id,
            .flags = (uint16_t)(VUF_VRING_DESC_F_INDIRECT | avail_bits(vq->p_avail_wrap)),
        };
        vq->shadow[head] = head_desc;
        advance(vq, &vq->p_avail, &vq->p_avail_wrap, 1);
    } else {
        for (unsigned i = 0; i < n; i++) {
            struct vuf_vring_packed_desc d = {.len = bufs[i].len, .id = id};
            uint16_t pos = vq->p_avail;

            vq_buf_gpa(vq, &bufs[i], &d.addr);
            d.flags =
                (uint16_t)((bufs[i].writable ? VUF_VRING_DESC_F_WRITE : 0) |
                           (i + 1 < n ? VUF_VRING_DESC_F_NEXT : 0) | avail_bits(vq->p_avail_wrap));
            vq->shadow[pos] = d;
            if (i == 0)
                head_desc = d;
            else
                vq->pdesc[pos] = d;
            advance(vq, &vq->p_avail, &vq->p_avail_wrap, 1);
        }
    }
    vq->num_free -= need;
    vq->p_kick_added += need;

    s = &vq->slots[id];
    s->cookie = cookie;
    s->wlen = wlen;
    s->tlen = tlen;
    s->ndesc = (uint16_t)need;
    s->head = head;
    vq_inflight_push(vq, id);

    /* The head's flags make the whole chain available: everything else
     * must be visible first (§2.8.21). */
    vq->pdesc[head].addr = head_desc.addr;
    vq->pdesc[head].len = head_desc.len;
    vq->pdesc[head].id = head_desc.id;
    __atomic_store_n(&vq->pdesc[head].flags, head_desc.flags, __ATOMIC_RELEASE);
    return 0;
}

int vqp_add_one(struct vuf_virtq *vq, uint64_t gpa, uint32_t len, bool writable, void *cookie)
{
    struct vuf_vring_packed_desc d = {.addr = gpa, .len = len};
    uint16_t head = vq->p_avail;
    struct vq_slot *s;

    if (vq->broken)
        return -EPROTO;
    if (vq->num_free == 0)
        return -ENOSPC;
    d.id = (uint16_t)vq->free_head;
    vq->free_head = vq->free_next[d.id];
    d.flags = (uint16_t)((writable ? VUF_VRING_DESC_F_WRITE : 0) | avail_bits(vq->p_avail_wrap));
    vq->shadow[head] = d;
    advance(vq, &vq->p_avail, &vq->p_avail_wrap, 1);
    vq->num_free--;
    vq->p_kick_added++;
    s = &vq->slots[d.id];
    s->cookie = cookie;
    s->wlen = writable ? len : 0;
    s->tlen = len;
    s->ndesc = 1;
    s->head = head;
    vq_inflight_push(vq, d.id);
    vq->pdesc[head].addr = d.addr;
    vq->pdesc[head].len = d.len;
    vq->pdesc[head].id = d.id;
    __atomic_store_n(&vq->pdesc[head].flags, d.flags, __ATOMIC_RELEASE);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Notifications (§2.8.10)                                                  */
/* ------------------------------------------------------------------------ */

static struct vuf_vring_packed_event load_event(const struct vuf_vring_packed_event *e)
{
    /* One load: flags and off_wrap from the same device write. */
    uint32_t v = __atomic_load_n((const uint32_t *)(const void *)e, __ATOMIC_RELAXED);

    return (struct vuf_vring_packed_event){.off_wrap = (uint16_t)v, .flags = (uint16_t)(v >> 16)};
}

bool vqp_kick_needed(struct vuf_virtq *vq)
{
    unsigned added = vq->p_kick_added;
    struct vuf_vring_packed_event ev;
    uint16_t new_idx, old_idx, event;

    /* Store-load: the descriptors before the device's suppression state. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vq->p_kick_added = 0;
    if (added == 0)
        return false;
    ev = load_event(vq->dev_event);
    if (!vq->event_idx || ev.flags != VUF_RING_EVENT_FLAGS_DESC)
        return ev.flags != VUF_RING_EVENT_FLAGS_DISABLE;
    if (added >= vq->size)
        return true;
    /* Positions as a running count: one lap back is `size` lower. */
    new_idx = vq->p_avail;
    old_idx = (uint16_t)(new_idx - added);
    event = ev.off_wrap & PACKED_POS_MASK;
    if (!!(ev.off_wrap & VUF_VRING_PACKED_WRAP) != vq->p_avail_wrap)
        event = (uint16_t)(event - vq->size);
    return vuf_vring_need_event(event, new_idx, old_idx);
}

bool vqp_enable_cb(struct vuf_virtq *vq)
{
    if (vq->event_idx) {
        __atomic_store_n(&vq->drv_event->off_wrap, encode(vq->p_used, vq->p_used_wrap),
                         __ATOMIC_RELAXED);
        /* The offset before the flags that make the device read it. */
        __atomic_store_n(&vq->drv_event->flags, VUF_RING_EVENT_FLAGS_DESC, __ATOMIC_RELEASE);
    } else {
        __atomic_store_n(&vq->drv_event->flags, VUF_RING_EVENT_FLAGS_ENABLE, __ATOMIC_RELAXED);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return vqp_has_used(vq);
}

void vqp_disable_cb(struct vuf_virtq *vq)
{
    __atomic_store_n(&vq->drv_event->flags, VUF_RING_EVENT_FLAGS_DISABLE, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------ */
/* Used descriptors                                                         */
/* ------------------------------------------------------------------------ */

bool vqp_has_used(const struct vuf_virtq *vq)
{
    return both_bits(flags_acquire(&vq->pdesc[vq->p_used])) == used_bits(vq->p_used_wrap);
}

static int broken(struct vuf_virtq *vq)
{
    vq->broken = true;
    return -EPROTO;
}

int vqp_get_used(struct vuf_virtq *vq, void **cookie, uint32_t *len)
{
    const struct vuf_vring_packed_desc *d = &vq->pdesc[vq->p_used];
    uint16_t f, id, pos = vq->p_used;
    uint32_t ulen;
    struct vq_slot *s;

    if (vq->broken)
        return -EPROTO;
    f = both_bits(flags_acquire(d));
    if (vq->inflight == 0) {
        if (f != used_bits(vq->p_used_wrap))
            return -EAGAIN;
        vuf_log(VUF_LOG_ERROR, "virtq %u: used descriptor at %u with nothing in flight", vq->index,
                pos);
        return broken(vq);
    }
    /* This position holds a chain we made available in the lap of
     * p_used_wrap: it is still available or used in that lap, nothing else. */
    if (f == avail_bits(vq->p_used_wrap))
        return -EAGAIN;
    if (f != used_bits(vq->p_used_wrap)) {
        vuf_log(VUF_LOG_ERROR,
                "virtq %u: descriptor %u has flags 0x%x, neither available nor used with wrap "
                "counter %u",
                vq->index, pos, f, vq->p_used_wrap);
        return broken(vq);
    }
    id = __atomic_load_n(&d->id, __ATOMIC_RELAXED);
    ulen = __atomic_load_n(&d->len, __ATOMIC_RELAXED);
    if (id >= vq->size || !vq->slots[id].inflight) {
        vuf_log(VUF_LOG_ERROR, "virtq %u: used descriptor %u has id %u, not a buffer in flight",
                vq->index, pos, id);
        return broken(vq);
    }
    s = &vq->slots[id];
    /* DPDK's vhost PMD (22.11) reports the bytes it read of a device-readable
     * chain (TX) on packed rings. Tolerated up to the chain's size, and
     * returned as 0: nothing was written. */
    if (s->wlen == 0 && ulen <= s->tlen)
        ulen = 0;
    if (ulen > s->wlen) {
        vuf_log(VUF_LOG_ERROR,
                "virtq %u: used descriptor %u (id %u) claims %u bytes written, buffer has %llu "
                "writable",
                vq->index, pos, id, ulen, (unsigned long long)s->wlen);
        return broken(vq);
    }
    vq_inflight_unlink(vq, id);
    vq->free_next[id] = (uint16_t)vq->free_head;
    vq->free_head = id;
    vq->num_free += s->ndesc;
    /* The device skips the chain's descriptors (§2.8.6). */
    advance(vq, &vq->p_used, &vq->p_used_wrap, s->ndesc);
    if (cookie)
        *cookie = s->cookie;
    if (len)
        *len = ulen;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Hand-over to another back-end                                            */
/* ------------------------------------------------------------------------ */

int vqp_requeue_inflight(struct vuf_virtq *vq, uint16_t *base)
{
    struct vuf_vring_packed_desc *tmp = vq->shadow + vq->size;
    unsigned n = 0, total = vq->size - vq->num_free;
    uint16_t pos = vq->p_used;
    bool wrap = vq->p_used_wrap;

    if (vq->broken)
        return -EPROTO;
    if (vq->inflight && vqp_has_used(vq))
        return -EBUSY;
    /* Completions out of order left holes and used descriptors among the
     * chains still in flight: lay them out again, oldest first, from
     * last_used on, from our own copy. */
    for (unsigned h = vq->oldest; h != vq->size; h = vq->slots[h].newer)
        for (unsigned k = 0; k < vq->slots[h].ndesc && n < vq->size; k++)
            tmp[n++] = vq->shadow[(vq->slots[h].head + k) & vq->mask];
    if (n != total) { /* unreachable unless state is corrupt */
        vuf_log(VUF_LOG_ERROR, "virtq %u: %u descriptors in flight but %u counted", vq->index,
                total, n);
        return broken(vq);
    }
    n = 0;
    for (unsigned h = vq->oldest; h != vq->size; h = vq->slots[h].newer) {
        vq->slots[h].head = pos;
        for (unsigned k = 0; k < vq->slots[h].ndesc; k++) {
            struct vuf_vring_packed_desc d = tmp[n++];

            d.flags = (uint16_t)((d.flags &
                                  ~(VUF_VRING_PACKED_DESC_F_AVAIL | VUF_VRING_PACKED_DESC_F_USED)) |
                                 avail_bits(wrap));
            vq->shadow[pos] = d;
            vq->pdesc[pos] = d;
            advance(vq, &pos, &wrap, 1);
        }
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vq->p_kick_added = 0;
    if (base)
        *base = encode(vq->p_used, vq->p_used_wrap);
    return 0;
}
