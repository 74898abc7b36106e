/* SPDX-License-Identifier: MIT */
/* The VMM and guest sides a test plays around a vuf front-end device
 * (vuf/frontend.h): a recording interrupt sink, queue set-up for
 * vuf_device_activate, and hand-built vhost-user messages. */
#ifndef VUF_TEST_FE_HARNESS_H
#define VUF_TEST_FE_HARNESS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/guest_mem.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

/* ---- the VMM's interrupt sink and event callback ------------------------ */

#define TU_VMM_MAXQ 8

/*
 * A VMM that records what the device asks of it. Queue i with
 * msix[i] set has an MSI-X vector i whose irqfd is call_fd[i] (the guest
 * driver's call eventfd, so the back-end signals the driver directly);
 * the other queues share an INTx line: signal_used_queue writes 1 to the
 * call_fd of every queue without a vector, as a guest's shared interrupt
 * handler looks at all of them. call_fd/msix are written by the test while
 * the device is inactive and only read by the device's worker; the fds
 * are borrowed (the virtqs own them), never closed here. The callbacks run
 * on the worker (and on the caller's thread in reset/destroy): they make
 * no cmocka assertions, only count.
 */
struct tu_vmm {
    int call_fd[TU_VMM_MAXQ]; /* -1: none */
    bool msix[TU_VMM_MAXQ];
    atomic_int irqfd_asks;     /* irqfd() calls */
    atomic_int intx;           /* signal_used_queue() calls */
    atomic_int bad_vector;     /* ... with a vector other than VUF_NO_VECTOR */
    atomic_int config_changes; /* signal_config_changed() calls */
    atomic_int crashed;        /* VUF_DEVICE_EVENT_CRASHED events */
    atomic_llong crash_ns;     /* tu_now_ns() of the first crash event, 0 if none */
};

/* Every call_fd -1, every msix false, counters 0. */
void tu_vmm_init(struct tu_vmm *v);

/* Forget queue i (call_fd -1, no vector), e.g. when its virtq is freed. */
void tu_vmm_forget_queue(struct tu_vmm *v, unsigned i);

/* irqfd / signal_used_queue / signal_config_changed on a struct tu_vmm. */
extern const struct vuf_interrupt_ops tu_vmm_intr_ops;

/* The vuf_frontend_config.event callback; opaque is a struct tu_vmm. */
void tu_vmm_event(void *opaque, enum vuf_device_event ev);

/*
 * The driver's feature negotiation on a new front-end device: ack == 0 acks
 * everything `dev` offers; otherwise (a device replacing one the driver
 * already negotiated with) `dev` must offer all of `ack` and exactly that
 * is acked. Acked in two halves (low, then high 32 bits) and checked with
 * vuf_frontend_acked_features(); the test fails otherwise.
 */
void tu_ack_features(struct vuf_device *dev, uint64_t ack);

/* ---- queues for vuf_device_activate ------------------------------------- */

/*
 * vuf_queue_from_virtq(q, vq, vector) (vuf/device.h), and make it queue i
 * of the recording VMM `v`:
 * an MSI-X vector exactly when `vector` is not VUF_NO_VECTOR, and vq's call
 * eventfd (borrowed) as its interrupt fd.
 */
void tu_vmm_add_queue(struct tu_vmm *v, unsigned i, struct vuf_queue *q, struct vuf_virtq *vq,
                      uint16_t vector);

/*
 * Free the driver's queues 0..n-1: vuf_blk_free(blk[i]) (blk may be NULL,
 * for queues without a virtio-blk driver), vuf_virtq_free(vq[i]), both set
 * to NULL, and tu_vmm_forget_queue(v, i). Safe on a half-built or already
 * freed set (both frees accept NULL).
 */
void tu_free_queues(struct tu_vmm *v, struct vuf_blk **blk, struct vuf_virtq **vq, unsigned n);

/*
 * Rings for a 16-entry split queue allocated in `mem` (no driver behind
 * them), ready, with MSI-X `vector` (or VUF_NO_VECTOR) and a fresh
 * non-blocking kick eventfd that the CALLER owns and closes. Fails the
 * test on error.
 */
void tu_ring_queue(struct vuf_guest_mem *mem, struct vuf_queue *q, uint16_t vector);

/* Write the used ring's idx of queue q in mem, as a device would have. */
void tu_set_used_idx(struct vuf_guest_mem *mem, const struct vuf_queue *q, uint16_t v);

/* The guest's virtio-blk driver `blk` reads `len` bytes at `sector`
 * (within timeout_ms) and they equal `want`; the test fails otherwise. */
void tu_assert_blk_reads(struct vuf_blk *blk, uint64_t sector, const uint8_t *want, size_t len,
                         int timeout_ms);

/* ---- data patterns and the back-end's disk image ------------------------ */

/* Fill p[0..len) with a recognisable pattern for `seed` (byte i depends on
 * i and seed; different seeds give different data). */
void tu_fill_pattern(uint8_t *p, size_t len, uint32_t seed);

/* pread `len` bytes at `sector` (VUF_BLK_SECTOR_SIZE units) of the disk
 * image open as `fd` and require them to equal `want`; on a difference the
 * first differing byte is printed ("disk.img differs at ...") and the test
 * fails. */
void tu_assert_file_has(int fd, uint64_t sector, const uint8_t *want, size_t len);

/* ---- hand-built messages ------------------------------------------------ */

/*
 * Send one message built by hand: any code, flags and size (the payload is
 * copied from p), and nfds fds (sent, not closed: the caller still owns
 * them). Returns vuf_conn_send()'s result.
 */
int tu_raw_send(struct vuf_conn *c, uint32_t code, uint32_t flags, const void *p, uint32_t size,
                const int *fds, unsigned nfds);

#endif
