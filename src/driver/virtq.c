/* SPDX-License-Identifier: MIT */
/* Driver side of a split virtqueue (virtio 1.2 §2.7) in vuf guest memory. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "deadline.h"
#include "peer_eventfd.h"
#include "vuf/log.h"
#include "virtq_int.h"
#include "vuf/virtq.h"

/* ------------------------------------------------------------------------ */
/* Shared-memory accessors: every field the device may write is read once,  */
/* through an atomic, so a racing device cannot make us see two values.      */
/* ------------------------------------------------------------------------ */

static inline uint16_t load16(const uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint32_t load32(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void store16(uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline uint16_t used_idx_acquire(const struct vuf_virtq *vq)
{
    return __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
}

static void mark_broken(struct vuf_virtq *vq)
{
    vq->broken = true;
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                 */
/* ------------------------------------------------------------------------ */

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

int vq_alloc_part(struct vuf_guest_mem *gm, uint64_t bytes, uint64_t align, uint64_t *gpa,
                  void **host)
{
    int r;

    /* Each part on cache lines of its own: a line the device writes (used
     * ring, device area) that also held what the driver writes (avail ring,
     * descriptors, the next queue's rings) would move between the two cores
     * on every write of either side. */
    if (align < VQ_LINE)
        align = VQ_LINE;
    bytes = (bytes + VQ_LINE - 1) & ~(uint64_t)(VQ_LINE - 1);
    r = vuf_guest_mem_alloc(gm, bytes, align, gpa);

    if (r < 0)
        return r;
    return vuf_guest_mem_translate(gm, *gpa, bytes, host);
}

static void vq_close_fds(struct vuf_virtq *vq)
{
    if (vq->kick_fd >= 0)
        close(vq->kick_fd);
    if (vq->call_fd >= 0)
        close(vq->call_fd);
    vq->kick_fd = vq->call_fd = -1;
}

static void apply_features(struct vuf_virtq *vq, uint64_t features)
{
    vq->features = features;
    vq->event_idx = features & (1ull << VUF_VIRTIO_F_EVENT_IDX);
    vq->use_indirect = vq->ind && (features & (1ull << VUF_VIRTIO_F_INDIRECT_DESC));
}

int vuf_virtq_new_opts(struct vuf_guest_mem *gm, const struct vuf_virtq_opts *opts,
                       struct vuf_virtq **out)
{
    struct vuf_virtq *vq;
    uint64_t mark, ra;
    void *p;
    int r;

    if (!gm || !opts || !out)
        return -EINVAL;
    if (opts->size == 0 || opts->size > VUF_VIRTQ_MAX_SIZE || !is_pow2(opts->size))
        return -EINVAL;
    if (opts->ring_align && !is_pow2(opts->ring_align))
        return -EINVAL;
    if (opts->indirect_max > opts->size)
        return -EINVAL;
    ra = opts->ring_align;

    vq = calloc(1, sizeof(*vq));
    if (!vq)
        return -ENOMEM;
    vq->gm = gm;
    vq->size = opts->size;
    vq->mask = opts->size - 1;
    vq->index = opts->index;
    vq->no_aio = opts->no_aio;
    vq->kick_fd = vq->call_fd = -1;
    vq->free_next = calloc(vq->size, sizeof(*vq->free_next));
    vq->slots = calloc(vq->size, sizeof(*vq->slots));
    if (!vq->free_next || !vq->slots) {
        r = -ENOMEM;
        goto fail_heap;
    }

    mark = vuf_guest_mem_alloc_mark(gm);
    vq->packed = opts->packed || (opts->features & (1ull << VUF_VIRTIO_F_RING_PACKED));
    if (vq->packed) {
        r = vqp_alloc(vq, opts);
        if (r < 0)
            goto fail;
        goto fds;
    }
    r = vq_alloc_part(gm, VUF_VRING_DESC_BYTES(vq->size), ra > 16 ? ra : 16, &vq->desc_gpa, &p);
    if (r < 0)
        goto fail;
    vq->desc = p;
    r = vq_alloc_part(gm, VUF_VRING_AVAIL_BYTES(vq->size), ra > 2 ? ra : 2, &vq->avail_gpa, &p);
    if (r < 0)
        goto fail;
    vq->avail = p;
    r = vq_alloc_part(gm, VUF_VRING_USED_BYTES(vq->size), ra > 4 ? ra : 4, &vq->used_gpa, &p);
    if (r < 0)
        goto fail;
    vq->used = p;
    vq->used_event = vuf_vring_used_event(vq->avail, vq->size);
    vq->avail_event = vuf_vring_avail_event(vq->used, vq->size);

    if (opts->features & (1ull << VUF_VIRTIO_F_INDIRECT_DESC)) {
        unsigned m = opts->indirect_max;

        if (m == 0)
            m = VUF_VIRTQ_INDIRECT_DEFAULT < vq->size ? VUF_VIRTQ_INDIRECT_DEFAULT : vq->size;
        vq->indirect_max = m;
        r = vq_alloc_part(gm, VUF_VRING_DESC_BYTES((uint64_t)vq->size * m), 16, &vq->ind_gpa, &p);
        if (r < 0)
            goto fail;
        vq->ind = p;
    }
fds:
    vq->indirect_min = opts->indirect_min ? opts->indirect_min : 2;

    vq->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (vq->kick_fd < 0) {
        r = -errno;
        goto fail;
    }
    vq->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (vq->call_fd < 0) {
        r = -errno;
        goto fail;
    }
    apply_features(vq, opts->features);
    vuf_virtq_reset(vq, vq->packed && !opts->base ? VUF_VRING_PACKED_BASE_INIT : opts->base);
    *out = vq;
    return 0;

fail:
    if (r == -EFAULT) /* cannot happen: alloc returns translatable ranges */
        r = -ENOMEM;
    vq_close_fds(vq);
    vuf_guest_mem_alloc_rewind(gm, mark);
fail_heap:
    free(vq->free_next);
    free(vq->slots);
    free(vq->shadow);
    free(vq);
    return r;
}

int vuf_virtq_new(struct vuf_guest_mem *gm, unsigned size, uint64_t features,
                  struct vuf_virtq **out)
{
    struct vuf_virtq_opts o = {.size = size, .features = features};

    return vuf_virtq_new_opts(gm, &o, out);
}

void vuf_virtq_free(struct vuf_virtq *vq)
{
    if (!vq)
        return;
    vq_close_fds(vq);
    free(vq->free_next);
    free(vq->slots);
    free(vq->shadow);
    free(vq);
}

void vuf_virtq_reset(struct vuf_virtq *vq, uint16_t base)
{
    if (!vq)
        return;
    if (vq->packed) {
        vqp_reset(vq, base);
        return;
    }
    memset(vq->desc, 0, VUF_VRING_DESC_BYTES(vq->size));
    memset(vq->avail, 0, VUF_VRING_AVAIL_BYTES(vq->size));
    memset(vq->used, 0, VUF_VRING_USED_BYTES(vq->size));
    /* The used ring belongs to the device, but a back-end that is (re)started
     * reads used->idx to learn where it left off; it must agree with the
     * base we send with SET_VRING_BASE. */
    store16(&vq->used->idx, base);
    store16(vq->avail_event, base);
    store16(vq->used_event, base);
    store16(&vq->avail->idx, base);

    for (unsigned i = 0; i < vq->size; i++) {
        vq->free_next[i] = (uint16_t)(i + 1); /* size (== none) fits: <= 32768 */
        vq->slots[i] = (struct vq_slot){.older = vq->size, .newer = vq->size};
    }
    vq->free_head = 0;
    vq->free_tail = vq->size - 1;
    vq->num_free = vq->size;
    vq->inflight = 0;
    vq->oldest = vq->newest = vq->size;
    vq->avail_idx = vq->avail_pub = vq->last_used = vq->used_seen = vq->kick_prev = base;
    vq->broken = false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

unsigned vuf_virtq_size(const struct vuf_virtq *vq)
{
    return vq->size;
}

struct vuf_guest_mem *vuf_virtq_guest_mem(const struct vuf_virtq *vq)
{
    return vq->gm;
}

unsigned vuf_virtq_index(const struct vuf_virtq *vq)
{
    return vq->index;
}

uint64_t vuf_virtq_features(const struct vuf_virtq *vq)
{
    return vq->features;
}

bool vuf_virtq_packed(const struct vuf_virtq *vq)
{
    return vq->packed;
}

int vuf_virtq_set_features(struct vuf_virtq *vq, uint64_t features)
{
    if (vq->inflight)
        return -EBUSY;
    apply_features(vq, features);
    return 0;
}

void vuf_virtq_layout(const struct vuf_virtq *vq, struct vuf_virtq_layout *out)
{
    if (vq->packed) {
        vqp_layout(vq, out);
        return;
    }
    *out = (struct vuf_virtq_layout){
        .size = vq->size,
        .desc_gpa = vq->desc_gpa,
        .avail_gpa = vq->avail_gpa,
        .used_gpa = vq->used_gpa,
        .desc = vq->desc,
        .avail = vq->avail,
        .used = vq->used,
    };
}

void vuf_virtq_vring_addr(const struct vuf_virtq *vq, struct vuf_vring_addr *out)
{
    *out = (struct vuf_vring_addr){
        .index = vq->index,
        .flags = 0,
        .desc = (uint64_t)(uintptr_t)(vq->packed ? (void *)vq->pdesc : (void *)vq->desc),
        .used = (uint64_t)(uintptr_t)(vq->packed ? (void *)vq->dev_event : (void *)vq->used),
        .avail = (uint64_t)(uintptr_t)(vq->packed ? (void *)vq->drv_event : (void *)vq->avail),
        .log = 0,
    };
}

unsigned vuf_virtq_efd_flags(const struct vuf_virtq *vq)
{
    return vq->no_aio ? VUF_PEER_EFD_NO_AIO : 0;
}

int vuf_virtq_kick_fd(const struct vuf_virtq *vq)
{
    return vq->kick_fd;
}

int vuf_virtq_call_fd(const struct vuf_virtq *vq)
{
    return vq->call_fd;
}

void vuf_virtq_set_kick_fd(struct vuf_virtq *vq, int fd)
{
    if (vq->kick_fd >= 0 && vq->kick_fd != fd)
        close(vq->kick_fd);
    vq->kick_fd = fd < 0 ? -1 : fd;
}

void vuf_virtq_set_call_fd(struct vuf_virtq *vq, int fd)
{
    if (vq->call_fd >= 0 && vq->call_fd != fd)
        close(vq->call_fd);
    vq->call_fd = fd < 0 ? -1 : fd;
}

uint16_t vuf_virtq_avail_idx(const struct vuf_virtq *vq)
{
    if (vq->packed)
        return vqp_avail_idx(vq);
    return vq->avail_idx;
}

uint16_t vuf_virtq_used_idx(const struct vuf_virtq *vq)
{
    if (vq->packed)
        return vqp_used_idx(vq);
    return used_idx_acquire(vq);
}

uint16_t vuf_virtq_last_used(const struct vuf_virtq *vq)
{
    if (vq->packed)
        return vqp_last_used(vq);
    return vq->last_used;
}

unsigned vuf_virtq_num_free(const struct vuf_virtq *vq)
{
    return vq->num_free;
}

unsigned vuf_virtq_num_inflight(const struct vuf_virtq *vq)
{
    return vq->inflight;
}

bool vuf_virtq_broken(const struct vuf_virtq *vq)
{
    return vq->broken;
}

unsigned vuf_virtq_inflight(const struct vuf_virtq *vq, void **cookies, unsigned max)
{
    unsigned n = 0;

    for (unsigned h = vq->oldest; h != vq->size && n < max; h = vq->slots[h].newer)
        cookies[n++] = vq->slots[h].cookie;
    return vq->inflight;
}

/* ------------------------------------------------------------------------ */
/* Adding buffers                                                           */
/* ------------------------------------------------------------------------ */

void vq_inflight_push(struct vuf_virtq *vq, unsigned id)
{
    struct vq_slot *s = &vq->slots[id];

    s->inflight = true;
    s->newer = vq->size;
    s->older = vq->newest;
    if (vq->newest != vq->size)
        vq->slots[vq->newest].newer = id;
    else
        vq->oldest = id;
    vq->newest = id;
    vq->inflight++;
}

void vq_inflight_unlink(struct vuf_virtq *vq, unsigned id)
{
    struct vq_slot *s = &vq->slots[id];

    s->inflight = false;
    if (s->older != vq->size)
        vq->slots[s->older].newer = s->newer;
    else
        vq->oldest = s->newer;
    if (s->newer != vq->size)
        vq->slots[s->newer].older = s->older;
    else
        vq->newest = s->older;
    vq->inflight--;
}

/* Resolve a buffer to a GPA inside guest memory. */
int vq_buf_gpa(const struct vuf_virtq *vq, const struct vuf_virtq_buf *b, uint64_t *gpa)
{
    if (b->host)
        return vuf_guest_mem_to_gpa(vq->gm, b->host, b->len, gpa);
    if (!vuf_guest_mem_to_host(vq->gm, b->gpa, b->len))
        return -EFAULT;
    *gpa = b->gpa;
    return 0;
}

/* The checks every chain passes before either layout adds it: not broken,
 * 1..size buffers (unless indirect), no empty buffer, every range in guest
 * memory, and (virtio 1.2 §2.7.4.2, §2.8.4) device-writable buffers after
 * all readable ones. Sums the writable and total bytes, and says whether
 * the chain goes indirect. */
int vq_check_chain(const struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n,
                   uint64_t *wlen, uint64_t *tlen, bool *indirect)
{
    bool seen_writable = false;

    if (vq->broken)
        return -EPROTO;
    if (n == 0 || !bufs)
        return -EINVAL;
    *wlen = *tlen = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t gpa;

        if (bufs[i].len == 0)
            return -EINVAL;
        if (bufs[i].writable)
            seen_writable = true;
        else if (seen_writable)
            return -EINVAL;
        if (vq_buf_gpa(vq, &bufs[i], &gpa) < 0)
            return -EFAULT;
        if (bufs[i].writable)
            *wlen += bufs[i].len;
        *tlen += bufs[i].len;
    }
    *indirect = vq->use_indirect && n >= vq->indirect_min && n <= vq->indirect_max;
    if (!*indirect && n > vq->size)
        return -EINVAL;
    return 0;
}

static void fill_desc(struct vuf_vring_desc *d, uint64_t gpa, const struct vuf_virtq_buf *b,
                      bool more, uint16_t next)
{
    d->addr = gpa;
    d->len = b->len;
    d->flags =
        (uint16_t)((b->writable ? VUF_VRING_DESC_F_WRITE : 0) | (more ? VUF_VRING_DESC_F_NEXT : 0));
    d->next = more ? next : 0;
}

/* The chain at head (its last descriptor `last`, `need` ring descriptors)
 * goes in flight and into the next avail entry; published later. */
static void split_make_avail(struct vuf_virtq *vq, unsigned head, unsigned last, unsigned need,
                             uint64_t wlen, void *cookie)
{
    struct vq_slot *s = &vq->slots[head];
    uint16_t *entry = &vq->avail->ring[vq->avail_idx & vq->mask];

    s->cookie = cookie;
    s->wlen = wlen;
    s->ndesc = (uint16_t)need;
    s->last = (uint16_t)last;
    vq_inflight_push(vq, head);
    /* The device only reads this line; storing the value it already holds
     * would still take the line away from the device's core. A driver that
     * recycles descriptors in ring order (as the net pools do) finds the
     * entry already right after the first lap. */
    if (load16(entry) != head)
        store16(entry, (uint16_t)head);
    vq->avail_idx++;
}

static int split_add(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n,
                     void *cookie)
{
    uint64_t wlen, tlen;
    bool indirect;
    unsigned need, head, last;
    int r;

    r = vq_check_chain(vq, bufs, n, &wlen, &tlen, &indirect);
    if (r < 0)
        return r;
    need = indirect ? 1 : n;
    if (need > vq->num_free)
        return -ENOSPC;

    head = vq->free_head;
    if (indirect) {
        struct vuf_vring_desc *t = vq->ind + (size_t)head * vq->indirect_max;
        uint64_t tgpa = vq->ind_gpa + (uint64_t)head * vq->indirect_max * 16u;

        for (unsigned i = 0; i < n; i++) {
            uint64_t gpa = 0;

            vq_buf_gpa(vq, &bufs[i], &gpa); /* checked above */
            fill_desc(&t[i], gpa, &bufs[i], i + 1 < n, (uint16_t)(i + 1));
        }
        /* §2.7.5.3.1: INDIRECT alone; the device ignores WRITE here. */
        vq->desc[head] = (struct vuf_vring_desc){
            .addr = tgpa, .len = n * 16u, .flags = VUF_VRING_DESC_F_INDIRECT, .next = 0};
        last = head;
    } else {
        unsigned d = head;

        last = head;
        for (unsigned i = 0; i < n; i++) {
            uint64_t gpa = 0;

            vq_buf_gpa(vq, &bufs[i], &gpa);
            /* The chain follows the free list, whose links stay intact
             * while the chain is in flight: freeing it is a splice. */
            fill_desc(&vq->desc[d], gpa, &bufs[i], i + 1 < n, vq->free_next[d]);
            last = d;
            d = vq->free_next[d];
        }
    }
    vq->free_head = vq->free_next[last];
    vq->num_free -= need;

    split_make_avail(vq, head, last, need, wlen, cookie);
    return 0;
}

int vq_add_one(struct vuf_virtq *vq, uint64_t gpa, uint32_t len, bool writable, void *cookie)
{
    unsigned head;

    if (vq->packed)
        return vqp_add_one(vq, gpa, len, writable, cookie);
    if (vq->broken)
        return -EPROTO;
    if (vq->num_free == 0)
        return -ENOSPC;
    head = vq->free_head;
    vq->desc[head] = (struct vuf_vring_desc){
        .addr = gpa, .len = len, .flags = writable ? VUF_VRING_DESC_F_WRITE : 0};
    vq->free_head = vq->free_next[head];
    vq->num_free--;
    split_make_avail(vq, head, head, 1, writable ? len : 0, cookie);
    return 0;
}

void vuf_virtq_publish(struct vuf_virtq *vq)
{
    if (vq->packed || vq->avail_pub == vq->avail_idx)
        return;
    vq->avail_pub = vq->avail_idx;
    /* Descriptors and ring entries must be visible before the index. */
    __atomic_store_n(&vq->avail->idx, vq->avail_idx, __ATOMIC_RELEASE);
}

int vuf_virtq_add_deferred(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n,
                           void *cookie)
{
    if (vq->packed)
        return vqp_add(vq, bufs, n, cookie);
    return split_add(vq, bufs, n, cookie);
}

int vuf_virtq_add(struct vuf_virtq *vq, const struct vuf_virtq_buf *bufs, unsigned n, void *cookie)
{
    int r = vuf_virtq_add_deferred(vq, bufs, n, cookie);

    if (r == 0)
        vuf_virtq_publish(vq);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Notifications                                                            */
/* ------------------------------------------------------------------------ */

bool vuf_virtq_kick_needed(struct vuf_virtq *vq)
{
    uint16_t old_idx = vq->kick_prev, new_idx = vq->avail_idx;

    if (vq->packed)
        return vqp_kick_needed(vq);
    vuf_virtq_publish(vq);
    /* The avail->idx store must be globally visible before we read the
     * device's suppression state (store-load ordering needs a full fence),
     * or both sides could decide the other will act. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vq->kick_prev = new_idx;
    if (old_idx == new_idx)
        return false;
    if (vq->event_idx)
        return vuf_vring_need_event(load16(vq->avail_event), new_idx, old_idx);
    return !(load16(&vq->used->flags) & VUF_VRING_USED_F_NO_NOTIFY);
}

static int signal_kick(struct vuf_virtq *vq)
{
    if (vq->kick_fd < 0)
        return -EBADF;
    /* The back-end holds this eventfd too: a plain write() would block
     * forever if it cleared O_NONBLOCK and filled the counter. */
    return vuf_peer_efd_signal_flags(vq->kick_fd, vuf_virtq_efd_flags(vq));
}

int vuf_virtq_notify(struct vuf_virtq *vq)
{
    /* A kick for chains the device cannot see yet (add_deferred) would
     * wake it for nothing, and nothing would wake it again for them. */
    vuf_virtq_publish(vq);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vq->kick_prev = vq->avail_idx;
    vq->p_kick_added = 0;
    return signal_kick(vq);
}

int vuf_virtq_kick(struct vuf_virtq *vq, unsigned flags)
{
    int r;

    if (flags & VUF_VIRTQ_KICK_FORCE)
        r = vuf_virtq_notify(vq);
    else if (!vuf_virtq_kick_needed(vq))
        return 0;
    else
        r = signal_kick(vq);
    return r < 0 ? r : 1;
}

bool vuf_virtq_enable_cb(struct vuf_virtq *vq)
{
    if (vq->packed)
        return vqp_enable_cb(vq);
    if (vq->event_idx)
        store16(vq->used_event, vq->last_used);
    else
        store16(&vq->avail->flags, 0);
    /* Publish the request before re-reading used->idx (store-load). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return vuf_virtq_has_used(vq);
}

void vuf_virtq_disable_cb(struct vuf_virtq *vq)
{
    if (vq->packed) {
        vqp_disable_cb(vq);
        return;
    }
    if (vq->event_idx)
        /* The device calls only when used->idx passes used_event; one behind
         * what we consumed is 65535 entries away, more than can be in flight.
         * With EVENT_IDX the driver must leave avail->flags at 0 (§2.7.10). */
        store16(vq->used_event, (uint16_t)(vq->last_used - 1));
    else
        store16(&vq->avail->flags, VUF_VRING_AVAIL_F_NO_INTERRUPT);
}

/* ------------------------------------------------------------------------ */
/* Used ring                                                                */
/* ------------------------------------------------------------------------ */

bool vuf_virtq_has_used(const struct vuf_virtq *vq)
{
    if (vq->packed)
        return vqp_has_used(vq);
    return vq->used_seen != vq->last_used || used_idx_acquire(vq) != vq->last_used;
}

int vuf_virtq_get_used(struct vuf_virtq *vq, void **cookie, uint32_t *len)
{
    const struct vuf_vring_used_elem *e;
    uint16_t idx, pending;
    uint32_t id, ulen;
    struct vq_slot *s;

    if (vq->packed)
        return vqp_get_used(vq, cookie, len);
    if (vq->broken)
        return -EPROTO;
    if (vq->used_seen == vq->last_used) {
        /* Entries up to a checked used->idx need no reload of its line,
         * which the device keeps writing: one load per burst, not per
         * entry. Every entry consumed since retired one chain in flight,
         * so the check below holds for the rest of the snapshot. */
        idx = used_idx_acquire(vq);
        if (idx == vq->last_used)
            return -EAGAIN;
        pending = (uint16_t)(idx - vq->last_used);
        if (pending > vq->inflight) {
            vuf_log(VUF_LOG_ERROR,
                    "virtq %u: device moved used idx to %u, %u entries past %u with only %u in "
                    "flight",
                    vq->index, idx, pending, vq->last_used, vq->inflight);
            mark_broken(vq);
            return -EPROTO;
        }
        vq->used_seen = idx;
    }
    e = &vq->used->ring[vq->last_used & vq->mask];
    id = load32(&e->id);
    ulen = load32(&e->len);
    if (id >= vq->size || !vq->slots[id].inflight) {
        vuf_log(VUF_LOG_ERROR, "virtq %u: used entry %u has id %u, not a chain in flight",
                vq->index, vq->last_used, id);
        mark_broken(vq);
        return -EPROTO;
    }
    s = &vq->slots[id];
    if (ulen > s->wlen) {
        vuf_log(VUF_LOG_ERROR,
                "virtq %u: used entry %u (id %u) claims %u bytes written, chain has %llu writable",
                vq->index, vq->last_used, id, ulen, (unsigned long long)s->wlen);
        mark_broken(vq);
        return -EPROTO;
    }

    /* Splice the chain onto the tail of the free list (private links
     * only). First in, first out: a device that completes in order gets the
     * descriptors back in ring order, so each avail ring entry keeps its
     * value from lap to lap and its line is never written again. */
    if (vq->num_free == 0)
        vq->free_head = id;
    else
        vq->free_next[vq->free_tail] = (uint16_t)id;
    vq->free_tail = s->last;
    vq->num_free += s->ndesc;
    vq_inflight_unlink(vq, id);
    vq->last_used++;
    if (cookie)
        *cookie = s->cookie;
    if (len)
        *len = ulen;
    return 0;
}

int vuf_virtq_wait(struct vuf_virtq *vq, int timeout_ms)
{
    int64_t deadline = vuf_deadline(timeout_ms);

    for (;;) {
        struct pollfd pfd;
        int r;

        if (vq->broken)
            return -EPROTO;
        if (vuf_virtq_has_used(vq))
            return 0;
        if (vq->call_fd < 0)
            return -EBADF;
        if (vuf_virtq_enable_cb(vq))
            return 0;
        pfd = (struct pollfd){.fd = vq->call_fd, .events = POLLIN};
        r = poll(&pfd, 1, vuf_ms_left(deadline));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0) {
            if (deadline >= 0 && vuf_now_ms() >= deadline)
                return vuf_virtq_has_used(vq) ? 0 : -ETIMEDOUT;
            continue;
        }
        if (pfd.revents & POLLNVAL)
            return -EBADF;
        /* Never read(): a back-end thread blocked in read() on its copy
         * may take the count first, and ours would then wait for the
         * next signal, past the deadline. Nothing taken: look again. */
        if (pfd.revents & POLLIN)
            vuf_peer_efd_take_flags(vq->call_fd, NULL, vuf_virtq_efd_flags(vq));
        else if (pfd.revents & POLLERR)
            return -EIO;
    }
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

int vuf_virtq_wait_busy(struct vuf_virtq *vq, int timeout_ms)
{
    int64_t deadline = vuf_deadline(timeout_ms);

    for (unsigned spins = 0;; spins++) {
        if (vq->broken)
            return -EPROTO;
        if (vuf_virtq_has_used(vq))
            return 0;
        if ((spins & 1023) == 1023 && deadline >= 0 && vuf_now_ms() >= deadline)
            return vuf_virtq_has_used(vq) ? 0 : -ETIMEDOUT;
        cpu_relax();
    }
}

/* ------------------------------------------------------------------------ */
/* Hand-over to another back-end                                            */
/* ------------------------------------------------------------------------ */

int vuf_virtq_requeue_inflight(struct vuf_virtq *vq, uint16_t *base)
{
    uint16_t pos = vq->last_used;

    if (vq->packed)
        return vqp_requeue_inflight(vq, base);
    if (vq->broken)
        return -EPROTO;
    if (used_idx_acquire(vq) != vq->last_used)
        return -EBUSY;
    /* Each used entry retired one avail entry, so exactly the chains in
     * flight fill [last_used, avail_idx); but completions may have been out
     * of order, so the old ring contents there are not those chains. */
    for (unsigned h = vq->oldest; h != vq->size; h = vq->slots[h].newer)
        store16(&vq->avail->ring[pos++ & vq->mask], (uint16_t)h);
    if (pos != vq->avail_idx) { /* unreachable unless state is corrupt */
        vuf_log(VUF_LOG_ERROR, "virtq %u: %u in flight but avail %u - used %u", vq->index,
                vq->inflight, vq->avail_idx, vq->last_used);
        mark_broken(vq);
        return -EPROTO;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    vq->kick_prev = vq->last_used;
    if (base)
        *base = vq->last_used;
    return 0;
}
