/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blk_writes.h"
#include "fe_harness.h"

void tu_wr_init(struct tu_writes *t, struct vuf_blk **blk, unsigned nq, uint32_t wlen,
                uint64_t sec0, unsigned max)
{
    assert_true(nq <= TU_WR_MAX_Q && max <= TU_WR_MAX);
    memset(t, 0, sizeof(*t));
    t->blk = blk;
    t->nq = nq;
    t->wlen = wlen;
    t->sec0 = sec0;
    t->max = max;
}

uint32_t tu_wr_seed(unsigned id)
{
    return 0x9e3779b1u * (id + 1);
}

uint64_t tu_wr_sector(const struct tu_writes *t, unsigned id)
{
    return t->sec0 + (uint64_t)id * (t->wlen / VUF_BLK_SECTOR_SIZE);
}

void tu_wr_submit(struct tu_writes *t, unsigned qi)
{
    unsigned id = t->n;
    struct vuf_blk_req *req = vuf_blk_req_get(t->blk[qi]);

    assert_true(id < t->max);
    assert_non_null(req);
    tu_fill_pattern(vuf_blk_req_buf(req, NULL), t->wlen, tu_wr_seed(id));
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_OUT, tu_wr_sector(t, id), t->wlen), 0);
    vuf_blk_req_set_user(req, (void *)(uintptr_t)(id + 1));
    assert_int_equal(vuf_blk_submit(t->blk[qi], req, 0), 0);
    t->w[id] = (struct tu_wr){.issued = true, .queue = qi};
    t->n++;
    t->pending[qi]++;
}

void tu_wr_complete(struct tu_writes *t, unsigned qi, struct vuf_blk_req *req)
{
    uintptr_t u = (uintptr_t)vuf_blk_req_user(req);

    assert_true(u >= 1 && u <= t->n);
    assert_int_equal(t->w[u - 1].queue, qi);
    t->w[u - 1].completions++;
    t->w[u - 1].result = vuf_blk_req_result(req);
    t->w[u - 1].done_in = t->phase;
    assert_int_equal(vuf_blk_req_put(t->blk[qi], req), 0);
    assert_true(t->pending[qi] > 0);
    t->pending[qi]--;
}

unsigned tu_wr_reap_now(struct tu_writes *t, unsigned qi)
{
    struct vuf_blk_req *req;
    unsigned n = 0;
    int r;

    while ((r = vuf_blk_reap(t->blk[qi], &req)) == 0) {
        tu_wr_complete(t, qi, req);
        n++;
    }
    assert_int_equal(r, -EAGAIN);
    return n;
}

unsigned tu_wr_reap_wait(struct tu_writes *t, unsigned qi, int wait_ms)
{
    struct vuf_blk_req *req;
    int r = vuf_blk_wait(t->blk[qi], wait_ms, &req);

    if (r == -ETIMEDOUT)
        return 0;
    assert_int_equal(r, 0);
    tu_wr_complete(t, qi, req);
    return 1 + tu_wr_reap_now(t, qi);
}

void tu_wr_drain(struct tu_writes *t, int io_ms)
{
    int64_t until = tu_now_ms() + io_ms;

    for (;;) {
        unsigned left = 0;

        for (unsigned i = 0; i < t->nq; i++)
            left += t->pending[i];
        if (!left)
            return;
        if (tu_now_ms() >= until) {
            for (unsigned i = 0; i < t->nq; i++)
                print_message("queue %u: %u in flight\n", i, t->pending[i]);
            fail_msg("still in flight after %d ms", io_ms);
        }
        for (unsigned i = 0; i < t->nq; i++)
            if (t->pending[i])
                tu_wr_reap_wait(t, i, 1);
    }
}

void tu_wr_assert_all_done(struct tu_writes *t, int disk_fd, struct vuf_virtq *const *vq)
{
    uint8_t *buf = malloc(t->wlen);

    assert_non_null(buf);
    for (unsigned id = 0; id < t->n; id++) {
        if (t->w[id].completions != 1 || t->w[id].result != 0)
            fail_msg("write %u (queue %u): %d completions, result %d", id, t->w[id].queue,
                     t->w[id].completions, t->w[id].result);
        tu_fill_pattern(buf, t->wlen, tu_wr_seed(id));
        tu_assert_file_has(disk_fd, tu_wr_sector(t, id), buf, t->wlen);
    }
    free(buf);
    for (unsigned i = 0; i < t->nq; i++) {
        assert_int_equal(t->pending[i], 0);
        assert_false(vuf_virtq_broken(vq[i]));
        assert_int_equal(vuf_virtq_num_inflight(vq[i]), 0);
        assert_false(vuf_virtq_has_used(vq[i]));
        assert_int_equal(vuf_virtq_used_idx(vq[i]), vuf_virtq_avail_idx(vq[i]));
    }
}
