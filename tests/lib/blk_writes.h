/* SPDX-License-Identifier: MIT */
/*
 * The guest's writes in the crash/reconnect tests (test_reconnect_qsd.c,
 * test_inflight_ref.c): each write has its own id, pattern (seed) and
 * sector, is tracked from submission to completion, and is checked on the
 * disk file at the end. Completions are counted per write, so a request
 * completed twice (or never) after a back-end change is caught.
 */
#ifndef VUF_TEST_BLK_WRITES_H
#define VUF_TEST_BLK_WRITES_H

#include <stdbool.h>
#include <stdint.h>

#include "testutil.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define TU_WR_MAX_Q 2u
#define TU_WR_MAX 1024u

struct tu_wr {
    bool issued;
    unsigned queue;
    int completions;
    int result;
    int done_in; /* the writes' phase when it completed */
};

struct tu_writes {
    struct vuf_blk **blk; /* the queues' drivers, [nq] (may be replaced) */
    unsigned nq;
    uint32_t wlen;
    uint64_t sec0; /* write id goes to sec0 + id * wlen / 512 */
    unsigned max;  /* writes, at most (<= TU_WR_MAX) */
    unsigned n;    /* issued so far */
    unsigned pending[TU_WR_MAX_Q];
    int phase; /* recorded in done_in by each completion */
    struct tu_wr w[TU_WR_MAX];
};

void tu_wr_init(struct tu_writes *t, struct vuf_blk **blk, unsigned nq, uint32_t wlen,
                uint64_t sec0, unsigned max);

/* Write id's pattern seed and first sector. */
uint32_t tu_wr_seed(unsigned id);
uint64_t tu_wr_sector(const struct tu_writes *t, unsigned id);

/* Issue one write with its own pattern at its own sector on queue qi
 * (kicked as the device asks; nobody may be listening). */
void tu_wr_submit(struct tu_writes *t, unsigned qi);
/* Account one completion of queue qi and give the request back. */
void tu_wr_complete(struct tu_writes *t, unsigned qi, struct vuf_blk_req *req);
/* Reap what is on queue qi's used ring now; returns how many. */
unsigned tu_wr_reap_now(struct tu_writes *t, unsigned qi);
/* Wait up to wait_ms for a completion on queue qi, then reap the rest;
 * returns how many (0 after a timeout). */
unsigned tu_wr_reap_wait(struct tu_writes *t, unsigned qi, int wait_ms);
/* Wait until nothing is in flight; fails after io_ms. */
void tu_wr_drain(struct tu_writes *t, int io_ms);
/* Every write issued so far completed exactly once, OK, and is in the
 * file disk_fd; the rings vq[nq] agree (nothing in flight, nothing
 * unconsumed, not broken). */
void tu_wr_assert_all_done(struct tu_writes *t, int disk_fd, struct vuf_virtq *const *vq);

#endif
