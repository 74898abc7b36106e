/* SPDX-License-Identifier: MIT */
/*
 * vuf/device.h - the virtio device model a VMM plugs in.
 *
 * A VMM's virtio transport (PCI, MMIO) drives a device through the function
 * table `struct vuf_device_ops`, in the manner of kvmtool's virtio_ops. The
 * VMM supplies the other half: queues (plain structs it owns), interrupts
 * (`struct vuf_interrupt_ops`), a mapper for the device's shared-memory
 * region (`struct vuf_shm_mapper_ops`) and an event callback.
 *
 * vuf's own implementation of the table is the vhost-user front-end
 * (vuf/frontend.h); the interface does not depend on it.
 *
 * Threading model
 *   - Every `vuf_device_ops` call on one device must be serialized by the
 *     caller (as a PCI transport's device lock does). Different devices are
 *     independent.
 *   - A device may run a worker thread between activate/wake and
 *     reset/sleep/destroy. From that thread it calls the interrupt ops, the
 *     mapper ops and the event callback, concurrently with whatever the VMM's
 *     own threads do: those callbacks must be thread-safe. A device never
 *     calls them after reset/sleep/destroy has returned, except that reset
 *     and destroy call the mapper's remove_mapping/release on the caller's
 *     thread.
 *
 * Errors: functions return 0 (or a documented positive value) or a negative
 * errno; vuf_strerror() describes them. A device never aborts the process on
 * a peer error.
 */
#ifndef VUF_DEVICE_H
#define VUF_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vuf/guest_mem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Queues                                                                   */
/* ------------------------------------------------------------------------ */

/* "No MSI-X vector" (virtio 1.2 §4.1.4.3, VIRTIO_MSI_NO_VECTOR). */
#define VUF_NO_VECTOR 0xffffu

/* Largest split virtqueue (virtio 1.2 §2.7: Queue Size <= 32768). */
#define VUF_QUEUE_MAX_SIZE 32768u

/*
 * One virtqueue as the driver configured it. The VMM owns these structs and
 * the kick eventfd; a device copies what it needs at activate and never
 * closes `kick_fd`. The VMM must keep `kick_fd` open while the queue is
 * active (the transport normally also registers it as the ioeventfd of the
 * queue's notify address, so guest kicks reach the device directly).
 * The back-end shares the kick fd's open file (flags included); the one
 * kick a device sends after activation cannot block on it whatever the
 * back-end does, and a VMM that writes kick or irqfds itself should not
 * rely on O_NONBLOCK either (the back-end can clear it).
 *
 * Packed rings (the driver acked VIRTIO_F_RING_PACKED, virtio 1.2 §2.8):
 * `packed` is set, desc/avail/used_addr are the descriptor ring, driver
 * area and device area, and next_avail/next_used carry the ring position in
 * bits 0-14 and its wrap counter in bit 15 (the SET/GET_VRING_BASE
 * encoding; a fresh ring is 0x8000 for both).
 */
struct vuf_queue {
    uint16_t size;       /* driver-set size: a power of two, 1..max */
    bool ready;          /* driver wrote queue_enable = 1 */
    uint64_t desc_addr;  /* guest-physical address of the descriptor table */
    uint64_t avail_addr; /* ... of the available (driver) ring */
    uint64_t used_addr;  /* ... of the used (device) ring */
    uint16_t vector;     /* MSI-X vector, VUF_NO_VECTOR for none */
    int kick_fd;         /* eventfd the driver's notifications arrive on (borrowed) */
    uint16_t next_avail; /* next available-ring index the device will process */
    uint16_t next_used;  /* next used-ring index the device will write */
    bool packed;         /* packed layout: must match the acked RING_PACKED */
};

/*
 * Packed queues (q->packed): next_avail = bits 0-15 of `base`, next_used =
 * bits 16-31, or next_avail when those are 0 (a back-end that reports only
 * the avail half, as DPDK does); -EPROTO if a position is not below q->size
 * or avail is not 0..q->size entries ahead of used (wrap counters counted).
 * `mem` is not read.
 *
 * After a device handed a split queue to someone else (a vhost-user back-end)
 * and got it stopped, bring the local copy up to date: next_avail = `base`
 * (what GET_VRING_BASE returned) and next_used = used->idx read from guest
 * memory (the back-end's last published used index). Returns 0, -EINVAL if
 * base does not fit 16 bits, -EFAULT if the used ring is not in `mem` (or
 * its file no longer backs it: the index is read through the region's fd,
 * so a truncated file is an error, not SIGBUS), or -EPROTO if base is more
 * than q->size entries ahead of used->idx (or behind it); the queue is then
 * unchanged. q->size 0 skips that last check (to learn used->idx alone).
 * `mem` is only read.
 */
int vuf_queue_reclaim(struct vuf_queue *q, const struct vuf_guest_mem *mem, uint32_t base);

/* ------------------------------------------------------------------------ */
/* Interrupts                                                               */
/* ------------------------------------------------------------------------ */

/*
 * What the VMM's transport implements. All three may be called from a
 * device's worker thread and must be thread-safe.
 */
struct vuf_interrupt_ops {
    /*
     * The irqfd (an eventfd the hypervisor turns into an MSI) for `vector`,
     * or -1 when none is allocated (MSI-X disabled, vector masked, or
     * VUF_NO_VECTOR). The fd stays owned by the VMM; a device only borrows
     * it for the duration of activation (a vhost-user front-end passes it on
     * with SET_VRING_CALL, after which the back-end holds its own copy).
     * Called on the caller's thread during activate/wake only. May be NULL:
     * every queue then uses the non-MSI-X path.
     */
    int (*irqfd)(void *opaque, uint16_t vector);
    /* A used buffer was signalled on a queue that has no irqfd. The device
     * passes VUF_NO_VECTOR when it cannot tell which queue (the vhost-user
     * front-end shares one eventfd between all such queues): an INTx
     * transport sets ISR bit 0 and raises the line. */
    void (*signal_used_queue)(void *opaque, uint16_t vector);
    /* The device configuration changed (ISR bit 1 / the config vector). */
    void (*signal_config_changed)(void *opaque);
};

/* An interrupt sink. Copied by activate/wake; `ops` and `opaque` must stay
 * valid until the next reset, sleep or destroy returns. */
struct vuf_interrupt {
    const struct vuf_interrupt_ops *ops;
    void *opaque;
};

/* ------------------------------------------------------------------------ */
/* Wiring queues driven in this process (vuf/virtq.h)                        */
/* ------------------------------------------------------------------------ */

/*
 * When the "guest" is this process (a tool, a test, a VMM that drives the
 * back-end itself with vuf/virtq.h), every program copies the same fields
 * from its driver's queue into the device's and hands the ring's call
 * eventfd over as the irqfd. These two calls are that code:
 *
 *     for (i = 0; i < n; i++)
 *         vuf_queue_from_virtq(&q[i], vq[i], i);        // vector i
 *     irq = (struct vuf_virtq_irq){.vqs = vq, .n = n};
 *     intr = vuf_virtq_irq_sink(&irq);
 *     vuf_device_activate(dev, mem, &intr, q, n);
 *
 * The back-end then signals each ring's call eventfd directly, and
 * vuf_virtq_wait() sees it. A real VMM's transport fills struct vuf_queue
 * from the guest's register writes instead and implements
 * struct vuf_interrupt_ops over its irqfds (docs/frontend.md).
 */
struct vuf_virtq;

/*
 * q = the queue a transport would hand to activate for the driver's queue
 * `vq`: size, ready, the three ring GPAs, the avail/used positions where vq
 * stands, its kick eventfd (borrowed: vq keeps owning it) and MSI-X
 * `vector` (VUF_NO_VECTOR for none).
 */
void vuf_queue_from_virtq(struct vuf_queue *q, const struct vuf_virtq *vq, uint16_t vector);

/*
 * An interrupt sink for queues set up with vuf_queue_from_virtq(q, vqs[i],
 * i): vector i's irqfd is vqs[i]'s call eventfd (a NULL entry, or a vector
 * >= n, has none). signal_used_queue, for a queue without an irqfd, signals
 * every call eventfd (the device cannot say which queue; a driver re-checks
 * its used ring, so a spurious wake-up costs nothing); config_changed (may
 * be NULL) is called for a config change. The struct and vqs[] are
 * borrowed like the sink's opaque: valid until the next reset, sleep or
 * destroy returns.
 */
struct vuf_virtq_irq {
    struct vuf_virtq *const *vqs;
    unsigned n;
    void (*config_changed)(void *opaque);
    void *opaque;
};

/* Returns: the sink over `irq` (ops are static; opaque = irq). */
struct vuf_interrupt vuf_virtq_irq_sink(struct vuf_virtq_irq *irq);

/* ------------------------------------------------------------------------ */
/* Shared memory (virtio 1.2 §2.10)                                          */
/* ------------------------------------------------------------------------ */

/* The device's shared-memory region: the transport exposes it to the guest
 * (PCI: a BAR plus a VIRTIO_PCI_CAP_SHARED_MEMORY_CFG capability). */
struct vuf_shm_region {
    uint8_t id;      /* shmid */
    uint64_t length; /* bytes */
};

/*
 * Maps files into the region's guest-visible window. Implemented by the
 * VMM; called from a device's worker thread (map/unmap requests of the
 * back-end) and from reset/destroy on the caller's thread, never
 * concurrently by one device.
 */
struct vuf_shm_mapper_ops {
    /*
     * Map [fd_offset, fd_offset + len) of `fd` at `shm_offset` in the region
     * with `prot` (PROT_READ, optionally | PROT_WRITE, as for mmap(2)). The
     * device has already checked that the range lies within the region and
     * overlaps no existing mapping. `fd` is borrowed for the call: mmap it
     * or dup it to keep it. 0 or a negative errno.
     */
    int (*add_mapping)(void *opaque, int fd, uint64_t fd_offset, uint64_t len, uint64_t shm_offset,
                       int prot);
    /* Remove the mapping that starts at `shm_offset` (exactly one that
     * add_mapping made). 0 or a negative errno. */
    int (*remove_mapping)(void *opaque, uint64_t shm_offset);
    /* The device will not use the mapper again (destroy, or a new mapper
     * replaced it). May be NULL. */
    void (*release)(void *opaque);
};

struct vuf_shm_mapper {
    const struct vuf_shm_mapper_ops *ops;
    void *opaque;
};

/* ------------------------------------------------------------------------ */
/* Events                                                                   */
/* ------------------------------------------------------------------------ */

enum vuf_device_event {
    /* The device is dead: for the vhost-user front-end, the back-end hung up
     * (or the worker failed) while the device was active. crosvm exits the
     * VM on this; the VMM decides. Reported at most once per activation. */
    VUF_DEVICE_EVENT_CRASHED = 1,
};

/* Called from the device's worker thread: must be thread-safe and must not
 * call back into the device (the device lock may be held elsewhere). */
typedef void (*vuf_device_event_fn)(void *opaque, enum vuf_device_event ev);

/* ------------------------------------------------------------------------ */
/* The device interface                                                     */
/* ------------------------------------------------------------------------ */

struct vuf_device;

struct vuf_device_ops {
    /* Virtio device id (enum vuf_device_type). */
    uint32_t (*device_type)(const struct vuf_device *dev);
    /* "vu-blk"; static or owned by the device, valid until destroy. */
    const char *(*debug_label)(const struct vuf_device *dev);
    /* Number of queues, and their maximum sizes (array of num_queues
     * entries, owned by the device, valid until destroy). */
    unsigned (*num_queues)(const struct vuf_device *dev);
    const uint16_t *(*queue_max_sizes)(const struct vuf_device *dev);
    /* Feature bits offered to the driver. */
    uint64_t (*features)(const struct vuf_device *dev);
    /* The driver acked `features` (may be called once per 32-bit word;
     * bits accumulate). Bits not offered are dropped, not acked.
     * Features are fixed from FEATURES_OK until reset (virtio 1.2 §3.1.1):
     * from a successful activate until reset, sleep and wake included (a
     * restore counts as a sleep), a bit not acked yet is refused with
     * -EBUSY and nothing changes; acking again what is acked is allowed.
     * Returns: 0 when every bit was offered; else the number (> 0) of bits
     * dropped (a driver that accepts what was not offered breaks virtio
     * 1.2 §2.2: the transport may fail FEATURES_OK); -EBUSY as above; or a
     * negative errno. */
    int (*ack_features)(struct vuf_device *dev, uint64_t features);
    /* Device-specific configuration space. On error `data` is unchanged.
     * An access past the device's config space is -EINVAL (vuf/frontend.h:
     * cfg.config_size). */
    int (*read_config)(struct vuf_device *dev, uint64_t offset, void *data, size_t len);
    int (*write_config)(struct vuf_device *dev, uint64_t offset, const void *data, size_t len);
    /*
     * Start the device. queues[i] is queue i (nqueues <= num_queues); those
     * with ready == false are skipped. The device copies the queue structs;
     * `mem` and `intr` are borrowed until the next reset/sleep/destroy
     * returns (the device reads guest memory at sleep).
     * `intr` and intr->ops are required (a started queue must have
     * somewhere to signal); each op may be NULL (no irqfd: every queue
     * takes signal_used_queue; a NULL signal op drops that signal).
     * Returns: 0; -EBUSY if already active; -EINVAL for mem, intr or
     * intr->ops NULL, queues NULL with nqueues > 0, nqueues > num_queues,
     * a ready queue whose size is not a power of two up to its maximum, or
     * (a modern device, one offering VIRTIO_F_VERSION_1) a driver that did
     * not ack VERSION_1 (virtio 1.2 §6.1);
     * -EFAULT for a ready queue's rings outside `mem`; or the device's own
     * errors (vuf/frontend.h: the vuf/client.h error of a failing request).
     */
    int (*activate)(struct vuf_device *dev, const struct vuf_guest_mem *mem,
                    const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                    unsigned nqueues);
    /* Stop the device; the driver will start over. A no-op if not active.
     * Always leaves the device inactive (no worker running), also when it
     * returns an error. */
    int (*reset)(struct vuf_device *dev);
    /*
     * The device's shared-memory region: returns 1 and fills *out, 0 if the
     * device has none, or a negative errno.
     */
    int (*get_shared_memory_region)(struct vuf_device *dev, struct vuf_shm_region *out);
    /* Install the mapper for the region (copied; see release). */
    int (*set_shared_memory_mapper)(struct vuf_device *dev, const struct vuf_shm_mapper *m);
    /*
     * Suspend: stop the queues and hand them back. Returns 1 when the
     * device was active: queues[i] (i < nqueues) of every queue it had
     * started is overwritten with its up-to-date state (next_avail,
     * next_used); 0 when it was not active (nothing changed). After either,
     * the device is inactive. On an error while stopping, the queues are
     * still handed back as well as can be done and the device is inactive;
     * only -EINVAL (queues too short for a started queue) changes nothing.
     */
    int (*sleep)(struct vuf_device *dev, struct vuf_queue *queues, unsigned nqueues);
    /* Resume after sleep (or restore): like activate with the queues sleep
     * handed back. mem == NULL means "nothing to resume" (a no-op returning
     * 0). Returns activate's errors, and -EBUSY if active, -EINVAL if the
     * device is not asleep (never slept, or reset since): use activate to
     * start a device. A failed wake leaves it asleep (wake may be retried). */
    int (*wake)(struct vuf_device *dev, const struct vuf_guest_mem *mem,
                const struct vuf_interrupt *intr, const struct vuf_queue *queues, unsigned nqueues);
    /* Save the device's state (call while asleep). *data is malloc'd; the
     * caller frees it. */
    int (*snapshot)(struct vuf_device *dev, uint8_t **data, size_t *len);
    /* Load a state made by snapshot (before wake). `data` is borrowed. */
    int (*restore)(struct vuf_device *dev, const uint8_t *data, size_t len);
    /* Stop everything and free the device (and everything it owns). */
    void (*destroy)(struct vuf_device *dev);
};

/* The base of every device: implementations embed it first. */
struct vuf_device {
    const struct vuf_device_ops *ops;
};

/* Convenience wrappers: same contracts as the ops above. */
static inline uint32_t vuf_device_type(const struct vuf_device *d)
{
    return d->ops->device_type(d);
}
static inline const char *vuf_device_label(const struct vuf_device *d)
{
    return d->ops->debug_label(d);
}
static inline unsigned vuf_device_num_queues(const struct vuf_device *d)
{
    return d->ops->num_queues(d);
}
static inline const uint16_t *vuf_device_queue_max_sizes(const struct vuf_device *d)
{
    return d->ops->queue_max_sizes(d);
}
static inline uint64_t vuf_device_features(const struct vuf_device *d)
{
    return d->ops->features(d);
}
static inline int vuf_device_ack_features(struct vuf_device *d, uint64_t f)
{
    return d->ops->ack_features(d, f);
}
static inline int vuf_device_read_config(struct vuf_device *d, uint64_t off, void *data, size_t len)
{
    return d->ops->read_config(d, off, data, len);
}
static inline int vuf_device_write_config(struct vuf_device *d, uint64_t off, const void *data,
                                          size_t len)
{
    return d->ops->write_config(d, off, data, len);
}
static inline int vuf_device_activate(struct vuf_device *d, const struct vuf_guest_mem *mem,
                                      const struct vuf_interrupt *intr,
                                      const struct vuf_queue *queues, unsigned n)
{
    return d->ops->activate(d, mem, intr, queues, n);
}
static inline int vuf_device_reset(struct vuf_device *d)
{
    return d->ops->reset(d);
}
static inline int vuf_device_get_shm_region(struct vuf_device *d, struct vuf_shm_region *out)
{
    return d->ops->get_shared_memory_region(d, out);
}
static inline int vuf_device_set_shm_mapper(struct vuf_device *d, const struct vuf_shm_mapper *m)
{
    return d->ops->set_shared_memory_mapper(d, m);
}
static inline int vuf_device_sleep(struct vuf_device *d, struct vuf_queue *queues, unsigned n)
{
    return d->ops->sleep(d, queues, n);
}
static inline int vuf_device_wake(struct vuf_device *d, const struct vuf_guest_mem *mem,
                                  const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                                  unsigned n)
{
    return d->ops->wake(d, mem, intr, queues, n);
}
static inline int vuf_device_snapshot(struct vuf_device *d, uint8_t **data, size_t *len)
{
    return d->ops->snapshot(d, data, len);
}
static inline int vuf_device_restore(struct vuf_device *d, const uint8_t *data, size_t len)
{
    return d->ops->restore(d, data, len);
}
/* NULL is a no-op. */
static inline void vuf_device_destroy(struct vuf_device *d)
{
    if (d)
        d->ops->destroy(d);
}

#ifdef __cplusplus
}
#endif
#endif
