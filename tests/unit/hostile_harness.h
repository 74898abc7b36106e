/* SPDX-License-Identifier: MIT */
/*
 * The scripted hostile back-end and the VMM around a front-end device,
 * shared by the test_hostile_*.c programs.
 *
 * The back-end is scripted at the message level: a thread reads each
 * request from the raw main socket and either gives a sane default answer
 * or lets the test's hook misbehave (lie, stall, dribble, hang up, attach
 * fds, answer twice). No cmocka assertion runs on the back-end thread
 * (cmocka's longjmp is not thread-safe): the thread only records, the test
 * thread checks.
 */
#ifndef VUF_TEST_HOSTILE_HARNESS_H
#define VUF_TEST_HOSTILE_HARNESS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"

#define BIT(n) (1ull << (n))
#define F_PROTO BIT(VUF_VHOST_F_PROTOCOL_FEATURES)
#define F_VERSION_1 BIT(32)
#define REPLY (VUF_VERSION | VUF_FLAG_REPLY)
#define REQ VUF_VERSION
#define REQ_NR (VUF_VERSION | VUF_FLAG_NEED_REPLY)
#define MAX_Q 4
#define REGION_LEN (1ull << 20)

enum hb_act {
    HB_DEFAULT = 0, /* give the default answer */
    HB_DONE,        /* the hook answered (or chose not to) */
    HB_HANGUP,      /* close the main socket and stop */
};

struct hb;
typedef enum hb_act (*hb_hook)(struct hb *hb, struct vuf_msg *req);

struct hb {
    struct vuf_conn *conn; /* back-end end of the main socket */
    pthread_t thread;
    int stop_fd;
    bool running;

    uint64_t features, protocol_features, queue_num;
    uint32_t vring_base;
    struct vuf_shmem_config shm;
    uint8_t state[256];
    size_t state_len;

    hb_hook hook;
    void *ctx;           /* for the hook */
    atomic_int nreq;     /* requests seen */
    atomic_int seen[64]; /* per code */
    atomic_int hung_up;
    atomic_int busy; /* between poll() saying readable and nreq counting it */

    pthread_mutex_t lock;
    int breq_fd;  /* from SET_BACKEND_REQ_FD */
    int keep[16]; /* fds the back-end holds on to */
    unsigned nkeep;
};

/* Keep an fd the back-end received (closed by hb_fini). */
void hb_keep(struct hb *hb, int fd);
/* The answer a well-behaved back-end would give. */
void hb_default(struct hb *hb, struct vuf_msg *req);
/* Close the back-end's end of the main socket (a hang-up). */
void hb_close_conn(struct hb *hb);
/* Defaults: features VERSION_1|PROTOCOL_FEATURES|bit 0, CONFIG,
 * DEVICE_STATE and REPLY_ACK, 2 queues, vring base 5. */
void hb_init(struct hb *hb, struct vuf_conn *conn);
/* Start / stop (and join) the back-end thread; a stopped back-end can be
 * restarted, and its socket scripted by hand meanwhile. */
void hb_start(struct hb *hb);
void hb_stop(struct hb *hb);
void hb_fini(struct hb *hb);
/* Wait (up to 10 s, failing the test after) until every byte the front-end
 * sent has been read and counted in nreq/seen. */
void hb_settle(struct hb *hb);
/* A u64 reply with the REPLY flag. */
int raw_reply_u64(struct vuf_conn *c, uint32_t code, uint64_t v);

/* Crash events and config-change signals seen by the VMM (reset by
 * fx_begin). */
extern atomic_int crashes, config_calls;
extern const struct vuf_interrupt_ops tintr_ops;

/* A mapper that really mmaps (so a non-mmappable fd fails) into a reserved
 * window, as a VMM would. */
struct tmap {
    pthread_mutex_t lock;
    uint8_t *window;
    int live, adds, removes, releases;
    atomic_int slow_ms; /* add_mapping sleeps this long */
    atomic_int entered; /* add_mapping calls begun */
};
extern const struct vuf_shm_mapper_ops tmap_ops;

struct fx {
    struct hb hb;
    struct vuf_conn *fe_conn;
    struct vuf_device *dev;
    struct vuf_frontend_config cfg;
    struct vuf_guest_mem *mem;
    struct vuf_interrupt vi;
    struct vuf_queue q[MAX_Q];
    unsigned nq;
    struct tmap map;
    struct vuf_conn *breq; /* back-end side of the request channel */
    int fds0, threads0;
};

/* Counts fds and threads, makes a socketpair, the back-end on one end, a
 * console device config; nothing is started. */
void fx_begin(struct fx *f);
/* Start the back-end and vuf_frontend_new() on the other end. */
int fx_new(struct fx *f);
/* Guest memory and n split rings. */
void fx_queues(struct fx *f, unsigned n);
/* The back-end's side of its request channel (after construction). */
struct vuf_conn *fx_breq(struct fx *f);
/* Destroy everything; asserts no fd and no thread outlived the device. */
void fx_end(struct fx *f);
int fx_activate(struct fx *f);

#endif
