/* SPDX-License-Identifier: MIT */
/*
 * backend/control.h - vuf-backend-blk's test hook: a unix socket
 * (--control=PATH) taking one text command per line and answering one
 * line, so that a test can make the back-end send back-end requests.
 *
 * Commands (numbers in decimal or 0x hex):
 *   map SHMID FD_OFFSET SHM_OFFSET LEN rw|ro   BACKEND_SHMEM_MAP with the shm fd
 *   unmap SHMID SHM_OFFSET LEN                 BACKEND_SHMEM_UNMAP
 *   config-change                              BACKEND_CONFIG_CHANGE_MSG
 *   stats                                      per-queue counters
 *   hold on|N|off                              keep popped requests in flight:
 *                                              all, the next N; off: process
 *                                              the held ones
 *   held                                       requests held: total, per queue
 *   ping
 * Answers:
 *   ack N      the front-end's u64 reply as a signed decimal (0 = accepted);
 *              the request carried NEED_REPLY (REPLY_ACK negotiated)
 *   sent       sent without NEED_REPLY (REPLY_ACK not negotiated)
 *   ok ...     stats / hold / held / ping
 *   error TEXT nothing was sent, or the channel failed
 *
 * The requests go out from the control thread, so the main loop keeps
 * serving the front-end while the back-end waits for its ack (a front-end
 * that serves its back-end channel from the thread that waits for our
 * replies would otherwise deadlock with us). The hook does not check
 * whether the device is suspended: a test may want exactly that case.
 */
#ifndef VUF_BACKEND_CONTROL_H
#define VUF_BACKEND_CONTROL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vring.h"
#include "vuf/conn.h"

/*
 * The back-end request channel, shared by the main thread (which installs
 * and drops it) and the control thread (which borrows it to send).
 */
struct be_breq_slot {
    pthread_mutex_t mu;
    struct vuf_conn *conn;   /* current channel, or NULL */
    struct vuf_conn *lent;   /* borrowed by the control thread, or NULL */
    struct vuf_conn *zombie; /* replaced while lent: the borrower frees it */
    uint64_t protocol_features;
};

void be_breq_slot_init(struct be_breq_slot *s);
/* Main thread: install a new channel (owned) or NULL, dropping the old. */
void be_breq_slot_set(struct be_breq_slot *s, struct vuf_conn *conn);
void be_breq_slot_set_features(struct be_breq_slot *s, uint64_t protocol_features);
/* Free everything (no borrower may be running). */
void be_breq_slot_destroy(struct be_breq_slot *s);

struct be_control_ctx {
    struct be_breq_slot *slot;
    int shm_fd; /* borrowed; -1 when there is no shared memory */
    struct be_vq *vqs;
    unsigned nq;
    int *hold;             /* the main loop's hold budget (atomic) */
    unsigned *release_gen; /* bumped on "hold off" (atomic) */
    int hold_efd;          /* written on "hold off" to wake the main loop */
};

struct be_control;

/* Listen on path (a stale socket is replaced) and serve it from a thread.
 * The ctx is copied; what it points to must outlive the control. */
int be_control_start(const char *path, const struct be_control_ctx *ctx, struct be_control **out);
/* Stop the thread, close, unlink the path, free. NULL is a no-op. */
void be_control_stop(struct be_control *c);

#endif
