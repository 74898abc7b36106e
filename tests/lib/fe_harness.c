/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fe_harness.h"
#include "vuf/frontend.h"

void tu_vmm_init(struct tu_vmm *v)
{
    memset(v, 0, sizeof(*v));
    for (unsigned i = 0; i < TU_VMM_MAXQ; i++)
        v->call_fd[i] = -1;
}

void tu_vmm_forget_queue(struct tu_vmm *v, unsigned i)
{
    v->call_fd[i] = -1;
    v->msix[i] = false;
}

static int vmm_irqfd(void *opaque, uint16_t vector)
{
    struct tu_vmm *v = opaque;

    atomic_fetch_add(&v->irqfd_asks, 1);
    if (vector < TU_VMM_MAXQ && v->msix[vector])
        return v->call_fd[vector];
    return -1;
}

/* INTx: the transport cannot tell which queue; wake every queue without a
 * vector. No cmocka assertion here: this runs on the worker thread. */
static void vmm_signal_used(void *opaque, uint16_t vector)
{
    struct tu_vmm *v = opaque;
    uint64_t one = 1;

    if (vector != VUF_NO_VECTOR)
        atomic_fetch_add(&v->bad_vector, 1);
    atomic_fetch_add(&v->intx, 1);
    for (unsigned i = 0; i < TU_VMM_MAXQ; i++)
        if (!v->msix[i] && v->call_fd[i] >= 0 &&
            write(v->call_fd[i], &one, sizeof(one)) != (ssize_t)sizeof(one))
            fprintf(stderr, "forwarding INTx to queue %u: %s\n", i, strerror(errno));
}

static void vmm_config_changed(void *opaque)
{
    struct tu_vmm *v = opaque;

    atomic_fetch_add(&v->config_changes, 1);
}

const struct vuf_interrupt_ops tu_vmm_intr_ops = {
    .irqfd = vmm_irqfd,
    .signal_used_queue = vmm_signal_used,
    .signal_config_changed = vmm_config_changed,
};

void tu_vmm_event(void *opaque, enum vuf_device_event ev)
{
    struct tu_vmm *v = opaque;
    long long zero = 0;

    if (ev != VUF_DEVICE_EVENT_CRASHED)
        return;
    atomic_compare_exchange_strong(&v->crash_ns, &zero, (long long)tu_now_ns());
    atomic_fetch_add(&v->crashed, 1);
}

void tu_ring_queue(struct vuf_guest_mem *mem, struct vuf_queue *q, uint16_t vector)
{
    memset(q, 0, sizeof(*q));
    q->size = 16;
    q->ready = true;
    assert_int_equal(vuf_guest_mem_alloc(mem, 16 * 16, 16, &q->desc_addr), 0);
    assert_int_equal(vuf_guest_mem_alloc(mem, 6 + 2 * 16, 2, &q->avail_addr), 0);
    assert_int_equal(vuf_guest_mem_alloc(mem, 6 + 8 * 16, 4, &q->used_addr), 0);
    q->vector = vector;
    q->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(q->kick_fd >= 0);
}

void tu_set_used_idx(struct vuf_guest_mem *mem, const struct vuf_queue *q, uint16_t v)
{
    uint16_t *p = vuf_guest_mem_to_host(mem, q->used_addr + 2, 2);

    assert_non_null(p);
    *p = v;
}

int tu_raw_send(struct vuf_conn *c, uint32_t code, uint32_t flags, const void *p, uint32_t size,
                const int *fds, unsigned nfds)
{
    struct vuf_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.request = code;
    m.hdr.flags = flags;
    m.hdr.size = size;
    if (size)
        memcpy(m.payload.raw, p, size);
    for (unsigned i = 0; i < nfds; i++)
        m.fds[i] = fds[i];
    m.nfds = nfds;
    return vuf_conn_send(c, &m);
}

void tu_assert_blk_reads(struct vuf_blk *blk, uint64_t sector, const uint8_t *want, size_t len,
                         int timeout_ms)
{
    uint8_t *got = malloc(len);

    assert_non_null(got);
    memset(got, 0xee, len);
    assert_int_equal(vuf_blk_read(blk, sector, got, len, timeout_ms), 0);
    assert_memory_equal(got, want, len);
    free(got);
}

void tu_vmm_add_queue(struct tu_vmm *v, unsigned i, struct vuf_queue *q, struct vuf_virtq *vq,
                      uint16_t vector)
{
    assert_true(i < TU_VMM_MAXQ);
    vuf_queue_from_virtq(q, vq, vector);
    v->msix[i] = vector != VUF_NO_VECTOR;
    v->call_fd[i] = vuf_virtq_call_fd(vq);
}

void tu_free_queues(struct tu_vmm *v, struct vuf_blk **blk, struct vuf_virtq **vq, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (blk) {
            vuf_blk_free(blk[i]);
            blk[i] = NULL;
        }
        vuf_virtq_free(vq[i]);
        vq[i] = NULL;
        tu_vmm_forget_queue(v, i);
    }
}

void tu_fill_pattern(uint8_t *p, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((i * 131u + seed * 7u + (i >> 9) * 13u) ^ seed);
}

void tu_assert_file_has(int fd, uint64_t sector, const uint8_t *want, size_t len)
{
    uint8_t *got = malloc(len);

    assert_non_null(got);
    assert_int_equal(pread(fd, got, len, (off_t)(sector * VUF_BLK_SECTOR_SIZE)), (ssize_t)len);
    if (memcmp(got, want, len) != 0) {
        size_t i = 0;

        while (i < len && got[i] == want[i])
            i++;
        fprintf(stderr, "disk.img differs at sector %llu + byte %zu: 0x%02x, want 0x%02x\n",
                (unsigned long long)sector, i, got[i], want[i]);
        free(got);
        fail();
    }
    free(got);
}

void tu_ack_features(struct vuf_device *dev, uint64_t ack)
{
    uint64_t offered = vuf_device_features(dev);

    if (!ack)
        ack = offered;
    assert_int_equal(offered & ack, ack);
    assert_int_equal(vuf_device_ack_features(dev, ack & 0xffffffffull), 0);
    assert_int_equal(vuf_device_ack_features(dev, ack & ~0xffffffffull), 0);
    assert_int_equal(vuf_frontend_acked_features(dev), ack);
}
