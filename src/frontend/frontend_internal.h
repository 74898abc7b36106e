/* SPDX-License-Identifier: MIT */
/*
 * Private to the front-end device's five sources: frontend.c (the device
 * operations), worker.c (the worker thread and the back-end request
 * handlers), frontend_mem.c (guest memory as the back-end has it),
 * frontend_log.c (dirty logging) and frontend_inflight.c (the inflight
 * area). The state they share, and what each exports to the others.
 */
#ifndef VUF_FRONTEND_INTERNAL_H
#define VUF_FRONTEND_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vuf/client.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/server.h"

/* One SHMEM_MAP mapping the back-end made (and the mapper holds). */
struct fe_mapping {
    uint64_t shm_offset;
    uint64_t len;
};

/* What GET_SHMEM_CONFIG said, once asked. */
enum fe_shm_state {
    FE_SHM_UNKNOWN = 0, /* not asked yet, or the last query failed transiently */
    FE_SHM_NONE,        /* the back-end has no region */
    FE_SHM_REGION,      /* exactly one region: fe->region */
    FE_SHM_ERROR,       /* a permanent answer we cannot use: fe->shm_err */
};

/* Where the device stands with its inflight area. */
enum fe_inflight_state {
    FE_INFL_UNKNOWN = 0, /* not asked (yet, or since a reset) */
    FE_INFL_NONE,        /* the back-end has none (GET_INFLIGHT_FD said 0) */
    FE_INFL_AREA,        /* inflight_fd / inflight hold the area */
};

/* A queue handed to the back-end, with its index. */
struct fe_sent_queue {
    unsigned index;
    struct vuf_queue q;
};

struct fe_worker;

struct vuf_frontend {
    struct vuf_device dev; /* first: the device handle is a pointer to this */
    struct vuf_frontend_config cfg;
    char label[40];

    struct vuf_client *client; /* the main socket */
    /* Sticky: the main socket's byte stream is out of step with our
     * requests (a reply timed out or was cut, or the back-end sent
     * something unasked). Every later request would read a stale or
     * partial message as its reply, so none is sent. 0 while in step. */
    int stream_err;

    uint64_t avail_features;     /* offered to the driver (never bit 30) */
    uint64_t acked_features;     /* accumulated acks (never bit 30) */
    uint64_t backend_features;   /* GET_FEATURES: what SET_FEATURES may carry */
    bool vhost_protocol;         /* the back-end offers bit 30 (always sent then) */
    uint64_t last_sent_features; /* value of the last SET_FEATURES */
    bool features_sent;          /* a SET_FEATURES went out at least once */
    uint64_t protocol_features;  /* negotiated */

    unsigned num_queues;
    unsigned net_pairs; /* net: rx/tx queue pairs (0 for other devices) */
    int net_ctrl_index; /* net: the control queue, or -1 */
    /* The device status last sent with SET_STATUS (0 after a reset, or
     * when STATUS is not negotiated). */
    uint8_t status;
    uint16_t *queue_sizes; /* num_queues entries, all equal */

    /*
     * The back-end request channel (NULL if BACKEND_REQ was not negotiated
     * or the back-end closed the channel). While the worker runs, the worker
     * owns it and this is NULL; fe_worker_stop() gives it back.
     */
    struct vuf_server *breq;

    /* Shared memory: everything below shm_lock is guarded by it (the worker
     * thread's handlers use it while the caller's thread may query). */
    pthread_mutex_t shm_lock;
    enum fe_shm_state shm_state;
    int shm_err;
    struct vuf_shm_region region;
    bool have_mapper;
    struct vuf_shm_mapper mapper;
    struct fe_mapping *maps;
    unsigned nmaps, maps_cap;

    /* Active (queues started on the back-end). Written only by the caller's
     * thread while the worker is stopped; the worker reads intr. */
    bool active;
    /* Stopped by sleep (or loaded by restore) and not reset since: wake
     * may resume it, and the acked features stay frozen as while active
     * (virtio 1.2 §3.1.1: fixed from FEATURES_OK until reset). */
    bool asleep;
    struct fe_sent_queue *sent;
    unsigned nsent;
    const struct vuf_guest_mem *mem;
    struct vuf_interrupt intr;

    struct fe_worker *worker; /* running worker, or NULL */

    /* Guest memory as the back-end has it (frontend_mem.c): the regions
     * last sent (SET_MEM_TABLE) or added and not removed (ADD/REM_MEM_REG).
     * max_mem_slots: GET_MAX_MEM_SLOTS capped at 512, 0 without
     * CONFIGURE_MEM_SLOTS. Caller's thread only. */
    unsigned max_mem_slots;
    struct fe_mem_slot *mem_slots;
    unsigned nmem_slots;

    /* Dirty logging (frontend_log.c). log_all_offered: the back-end offers
     * VHOST_F_LOG_ALL (kept out of avail_features). The log fields are
     * written by the caller's thread under log_lock; log_sync reads them
     * under it from any thread. log_bits == NULL: not logging. */
    bool log_all_offered;
    pthread_mutex_t log_lock;
    uint64_t *log_bits; /* shared mapping of log_fd */
    size_t log_size;    /* bytes, a multiple of 8 */
    int log_fd;

    /* Inflight area (frontend_inflight.c). inflight_state says whether the
     * back-end was asked: FE_INFL_UNKNOWN (not yet, or freed by reset),
     * FE_INFL_NONE (it answered mmap_size 0: nothing more is sent),
     * FE_INFL_AREA (inflight_fd and inflight hold the area). Caller's
     * thread only. */
    enum fe_inflight_state inflight_state;
    int inflight_fd;
    struct vuf_inflight inflight;
};

static inline struct vuf_frontend *fe_of(struct vuf_device *d)
{
    return (struct vuf_frontend *)d;
}
static inline const struct vuf_frontend *fe_of_const(const struct vuf_device *d)
{
    return (const struct vuf_frontend *)d;
}

/* The driver acked packed rings: every queue is packed (virtio 1.2 §2.8). */
static inline bool fe_packed(const struct vuf_frontend *fe)
{
    return fe->acked_features & (1ull << VUF_VIRTIO_F_RING_PACKED);
}

/* ---- worker.c ---------------------------------------------------------- */

/* Install the back-end request handlers (opaque = fe) in a server config. */
void fe_breq_handlers(struct vuf_frontend *fe, struct vuf_server_config *cfg);

/*
 * Start the worker thread. It takes `non_msix_fd` (closed by
 * fe_worker_stop, or here on failure) and fe->breq (returned by
 * fe_worker_stop). fe->intr must be set. 0 or a negative errno.
 */
int fe_worker_start(struct vuf_frontend *fe, int non_msix_fd);

/*
 * Start watching the main socket for a hang-up (reported as
 * VUF_DEVICE_EVENT_CRASHED). Called when activation has succeeded, so that
 * a back-end that dies during a failed activate/wake is reported only by
 * that call's error. 0 or a negative errno.
 */
int fe_worker_watch_backend(struct vuf_frontend *fe);

/* Stop and join the worker (if any), close its fds, give fe->breq back. */
void fe_worker_stop(struct vuf_frontend *fe);

/* Remove every SHMEM mapping through the mapper (caller's thread, worker
 * stopped). Returns 0 or the first mapper error; the table is emptied
 * either way. */
int fe_remove_all_mappings(struct vuf_frontend *fe);

/* ---- frontend_log.c ---------------------------------------------------- */

/* The features SET_FEATURES carries: the acked ones the back-end offers,
 * bit 30 when it offers that, plus LOG_ALL while logging. */
uint64_t fe_features_to_send(const struct vuf_frontend *fe);

/* While logging, at activation after SET_MEM_TABLE: grow the log to cover
 * `mem` if needed and send SET_LOG_BASE. 0 when not logging. */
int fe_log_activate(struct vuf_frontend *fe, const struct vuf_guest_mem *mem);

/* End logging without messages (reset, destroy). */
void fe_log_release(struct vuf_frontend *fe);

/* ---- frontend.c (for frontend_log.c, frontend_mem.c) -------------------- */

/* SET_FEATURES with fe_features_to_send() (always sent), recorded as the
 * last value sent; logs and returns the error. */
int fe_send_features(struct vuf_frontend *fe);

/* frontend.c: refuse to send once the main socket's stream is out of step
 * (fe_stream_check), and note errors that put it so (fe_stream_note). */
int fe_stream_check(struct vuf_frontend *fe);
int fe_stream_note(struct vuf_frontend *fe, int r);

/* SET_VRING_ADDR for ready queue i (host addresses), with the LOG flag and
 * the used ring's GPA while logging. The queue was checked already. */
void fe_vring_addr(const struct vuf_frontend *fe, const struct vuf_guest_mem *mem, unsigned i,
                   const struct vuf_queue *q, struct vuf_vring_addr *addr);

/* ---- frontend_inflight.c ----------------------------------------------- */

/* At construction, after negotiation: adopt a dup of `area`
 * (cfg.inflight_area, borrowed; NULL: nothing) after checking it, when
 * INFLIGHT_SHMFD was negotiated. -EINVAL / -EBADF for an area that does
 * not fit the device or whose fd is not a large enough regular file. */
int fe_inflight_init(struct vuf_frontend *fe, const struct vuf_inflight_area *area);

/* Can the ready queues use the device's area (sizes within its
 * queue_size)? Sends nothing. 0 when there is no area. */
int fe_inflight_check(struct vuf_frontend *fe, const struct vuf_queue *queues, unsigned nqueues);

/* Activation's inflight step (after SET_FEATURES, before the memory):
 * GET_INFLIGHT_FD if the device has no area yet, then SET_INFLIGHT_FD
 * while it has one. 0 without INFLIGHT_SHMFD. */
int fe_inflight_activate(struct vuf_frontend *fe, const struct vuf_queue *queues, unsigned nqueues);

/* Free the area without messages (reset, destroy): the next activation
 * asks for a new one. */
void fe_inflight_release(struct vuf_frontend *fe);

/* ---- frontend_mem.c ---------------------------------------------------- */

/* GET_MAX_MEM_SLOTS when CONFIGURE_MEM_SLOTS was negotiated (construction). */
int fe_mem_negotiate(struct vuf_frontend *fe);

/* Can `mem` be handed over (1 .. 8 or max_mem_slots regions)? Logs why
 * not: -EINVAL (no region), -E2BIG (too many), -EBADF, -ENOMEM. Sends
 * nothing. */
int fe_mem_check(struct vuf_frontend *fe, const struct vuf_guest_mem *mem);

/* Activation's memory step: SET_MEM_TABLE, or with CONFIGURE_MEM_SLOTS the
 * REM_MEM_REG/ADD_MEM_REG diff against what the back-end has. */
int fe_mem_send(struct vuf_frontend *fe, const struct vuf_guest_mem *mem);

/* Forget the shadow table (destroy). */
void fe_mem_fini(struct vuf_frontend *fe);

#endif
