/* SPDX-License-Identifier: MIT */
/*
 * An in-test back-end for the front-end device's unit tests
 * (tests/unit/test_frontend_*.c): a vuf_server on a thread that records every
 * request (code, flags, first payload words, fds) and answers as its fields
 * say, plus the VMM side a test needs (interrupt sink, shared-memory mapper,
 * crash events) and the fixture `struct fx` that ties them together.
 * The back-end thread owns the server; the test reads the record only
 * through be_count()/be_rec() (locked).
 */
#ifndef VUF_TEST_FE_FAKEBE_H
#define VUF_TEST_FE_FAKEBE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"

#define BIT(n) (1ull << (n))
#define F_PROTO BIT(VUF_VHOST_F_PROTOCOL_FEATURES)
#define F_EVENT_IDX BIT(29)
#define F_VERSION_1 BIT(32)
#define F_PACKED BIT(VUF_VIRTIO_F_RING_PACKED)

#define MAX_REC 1024
#define MAX_Q 8

/* ------------------------------------------------------------------------ */
/* The in-test back-end                                                     */
/* ------------------------------------------------------------------------ */

struct rec {
    uint32_t code;
    uint32_t flags;
    uint32_t a, b; /* first two u32 of the payload */
    uint64_t u64;
    unsigned nfds;
    uint64_t gpa; /* ADD/REM_MEM_REG: the region's guest_phys_addr */
};

/* How the back-end answers GET_INFLIGHT_FD. */
enum infl_mode {
    INFL_MEMFD = 0,    /* a memfd of infl_offset + infl_file bytes (infl_file 0:
                        * infl_size), mmap_size infl_size */
    INFL_NONE,         /* mmap_size 0, no fd */
    INFL_PIPE,         /* mmap_size infl_size with a pipe */
    INFL_SOCKET,       /* mmap_size infl_size with a socket */
    INFL_ZERO_WITH_FD, /* mmap_size 0 with a memfd */
};

enum save_mode {
    SAVE_PIPE = 0, /* write the state into our fd, reply NOFD */
    SAVE_OWN_FD,   /* return a pipe of our own with the state in it */
    SAVE_SILENT,   /* keep the fd open and never write */
};

struct be {
    struct vuf_server *srv;
    pthread_t thread;
    int stop_fd;
    bool running;
    atomic_int busy; /* between taking a message off the socket and recording it */

    pthread_mutex_t lock;
    struct rec rec[MAX_REC];
    unsigned nrec;

    /* answers */
    uint64_t features, protocol_features, queue_num;
    uint32_t vring_base; /* GET_VRING_BASE answer */
    uint8_t config[512];
    bool config_bad_offset; /* GET_CONFIG reply names another offset */
    struct vuf_shmem_config shm;
    uint32_t nack_code; /* ack this request with an error */
    unsigned nack_skip; /* ... after letting this many through */

    /* state transfer */
    enum save_mode save_mode;
    uint8_t state[3000];
    size_t state_len;
    int load_fd, silent_fd;
    uint64_t check_status; /* CHECK_DEVICE_STATE's answer (0 = OK) */
    uint8_t status;        /* the last SET_STATUS (GET_STATUS answers it ... */
    uint8_t status_clear;  /* ... without these bits: a device refusing them) */
    uint8_t loaded[4096];
    size_t loaded_len;

    /* what we were given */
    int breq_fd;
    struct vuf_conn *breq;
    int call_fd[MAX_Q];
    uint64_t acked;
    uint32_t set_base[MAX_Q];
    uint32_t mem_regions;
    uint64_t max_slots;                /* GET_MAX_MEM_SLOTS answer */
    unsigned slots_used;               /* regions held through ADD/REM_MEM_REG */
    bool read_regions;                 /* map each ADD_MEM_REG region and read it: */
    unsigned regions_tagged;           /* ... how many began with their own GPA (u64) */
    struct vuf_vring_addr addr[MAX_Q]; /* last SET_VRING_ADDR per queue */
    uint8_t *log;                      /* our mapping of the dirty log */
    size_t log_size;
    unsigned log_nfds, log_bases; /* fds of the last SET_LOG_BASE, how many */
    uint64_t log_page_at_switch;  /* if non-zero: set in the OLD log while switching */

    /* inflight */
    enum infl_mode infl_mode;
    uint64_t infl_size, infl_offset, infl_file;
    struct vuf_inflight infl_get; /* the last GET_INFLIGHT_FD request */
    ino_t infl_get_ino;           /* the memfd it was answered with */
    struct vuf_inflight infl_set; /* the last SET_INFLIGHT_FD */
    unsigned infl_set_nfds;
    ino_t infl_set_ino; /* the file it came with */
};

void be_init(struct be *be);
/* Serve `conn` (taken over) on a thread. */
void be_start(struct be *be, struct vuf_conn *conn);
/* Stop serving and close our end of the main socket (the "crash"). */
void be_kill(struct be *be);
void be_fini(struct be *be);
/* The back-end request channel the front-end handed over (adopted once). */
struct vuf_conn *be_breq(struct be *be);
unsigned be_count(struct be *be);
struct rec be_rec(struct be *be, unsigned i);
void print_seq(struct be *be, unsigned from);

/*
 * The back-end must have received exactly `codes` since *mark. Waits (up to
 * 10 s) until it has recorded at least that many and nothing more is on its
 * socket, so an unexpected extra request is always seen, however slowly the
 * back-end thread runs. Advances *mark.
 */
void expect_seq_(struct be *be, unsigned *mark, const uint32_t *codes, unsigned n, int line);
#define expect_seq(be, mark, ...)                                                    \
    do {                                                                             \
        const uint32_t codes_[] = {__VA_ARGS__};                                     \
        expect_seq_(be, mark, codes_, sizeof(codes_) / sizeof(codes_[0]), __LINE__); \
    } while (0)
#define expect_none(be, mark) expect_seq_(be, mark, NULL, 0, __LINE__)

#define SEQ_NEW SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES
#define R(x) VUF_REQ_##x
#define SEQ_QUEUE                                                                                 \
    R(SET_VRING_NUM), R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL), R(SET_VRING_KICK), \
        R(SET_VRING_ENABLE)
#define SEQ_STOP R(SET_VRING_ENABLE), R(GET_VRING_BASE)

/* ---- VMM side: interrupts, mapper, events -------------------------------- */

struct tintr {
    atomic_int used_calls;
    atomic_int last_vector;
    atomic_int config_calls;
    int irqfd1; /* the irqfd of MSI-X vector 1 */
};
extern const struct vuf_interrupt_ops tintr_ops;

#define MAX_MAPS 16
struct tmap {
    pthread_mutex_t lock;
    struct {
        uint64_t off, len, fd_off;
        int prot;
        bool live;
    } m[MAX_MAPS];
    int adds, removes, releases;
    int fail_add;
};
extern const struct vuf_shm_mapper_ops tmap_ops;
/* Mappings currently live. */
int tm_live(struct tmap *t);

/* VUF_DEVICE_EVENT_CRASHED events since the last fx_begin(). */
extern atomic_int crashes;
void on_event(void *opaque, enum vuf_device_event ev);

/* Everything one test needs. */
struct fx {
    struct be be;
    struct vuf_conn *fe_conn;
    struct vuf_device *dev;
    struct vuf_guest_mem *mem;
    struct tintr intr;
    struct vuf_interrupt vi;
    struct tmap map;
    struct vuf_queue q[MAX_Q];
    unsigned nq;
    int fds0, threads0;
    unsigned mark;
};

void fx_begin(struct fx *f);
struct vuf_frontend_config fx_cfg(uint32_t type, uint64_t base);
/* vuf_frontend_new() on the fixture's connection (taken over either way). */
int fx_new(struct fx *f, const struct vuf_frontend_config *cfg);
/* Guest memory with `n` queues of 16 entries, rings in place. Queue 1 (if
 * any) uses MSI-X vector 1, which has an irqfd; the others none. With a
 * device, also fx_ack_version_1 (the driver negotiated first). */
void fx_queues(struct fx *f, unsigned n);
/* Destroy everything; no fd and no thread may outlive the device. */
void fx_end(struct fx *f);
/* The driver's ack of VERSION_1 when the device offers it, as a driver
 * must (virtio 1.2 §6.1): a modern device does not activate without. */
void fx_ack_version_1(struct fx *f);
/* fx_ack_version_1, then activate with f->q; must succeed. */
void fx_activate_ok(struct fx *f);
/* Consume the constructor's requests (the last may get no reply, so wait
 * for it rather than trusting the count). */
void expect_new(struct fx *f);
/* The back-end sends CONFIG_CHANGE_MSG with NEED_REPLY: acked with 0, and
 * the VMM's config interrupt fired once. */
void config_change_ok(struct fx *f);

/* A log callback that drops everything. */
void quiet_log(void *opaque, enum vuf_log_level level, const char *msg);
/* Call at the start of main(): starts (and joins) one thread so that a
 * sanitizer runtime's helper thread exists before any test counts threads,
 * and silences the library's log unless VUF_LOG is set (refusals are
 * expected in these tests). */
void fe_test_prepare(void);

#endif
