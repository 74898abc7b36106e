/* SPDX-License-Identifier: MIT */
/*
 * The VMM-side wiring of queues that this process drives itself with
 * vuf/virtq.h (vuf/device.h, "Wiring queues driven in this process").
 */
#include <string.h>

#include "peer_eventfd.h"
#include "vuf/device.h"
#include "vuf/virtq.h"

void vuf_queue_from_virtq(struct vuf_queue *q, const struct vuf_virtq *vq, uint16_t vector)
{
    struct vuf_virtq_layout l;

    vuf_virtq_layout(vq, &l);
    memset(q, 0, sizeof(*q));
    q->size = (uint16_t)vuf_virtq_size(vq);
    q->ready = true;
    q->desc_addr = l.desc_gpa;
    q->avail_addr = l.avail_gpa;
    q->used_addr = l.used_gpa;
    q->vector = vector;
    q->packed = l.packed;
    q->kick_fd = vuf_virtq_kick_fd(vq);
    q->next_avail = vuf_virtq_avail_idx(vq);
    /* Packed: position | wrap << 15 both (the driver's own, not read from
     * the device area). */
    q->next_used = l.packed ? vuf_virtq_last_used(vq) : vuf_virtq_used_idx(vq);
}

static int irq_irqfd(void *opaque, uint16_t vector)
{
    const struct vuf_virtq_irq *irq = opaque;

    if (vector >= irq->n || !irq->vqs[vector])
        return -1;
    return vuf_virtq_call_fd(irq->vqs[vector]);
}

static void irq_signal_used(void *opaque, uint16_t vector)
{
    const struct vuf_virtq_irq *irq = opaque;

    (void)vector;
    /* The back-end holds these eventfds too: a plain write could block
     * (peer_eventfd.h). */
    for (unsigned i = 0; i < irq->n; i++)
        if (irq->vqs[i] && vuf_virtq_call_fd(irq->vqs[i]) >= 0)
            vuf_peer_efd_signal_flags(vuf_virtq_call_fd(irq->vqs[i]),
                                      vuf_virtq_efd_flags(irq->vqs[i]));
}

static void irq_config_changed(void *opaque)
{
    const struct vuf_virtq_irq *irq = opaque;

    if (irq->config_changed)
        irq->config_changed(irq->opaque);
}

static const struct vuf_interrupt_ops virtq_irq_ops = {
    .irqfd = irq_irqfd,
    .signal_used_queue = irq_signal_used,
    .signal_config_changed = irq_config_changed,
};

struct vuf_interrupt vuf_virtq_irq_sink(struct vuf_virtq_irq *irq)
{
    struct vuf_interrupt intr = {.ops = &virtq_irq_ops, .opaque = irq};

    return intr;
}
