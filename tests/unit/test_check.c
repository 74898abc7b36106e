/* SPDX-License-Identifier: MIT */
/*
 * The `vuf check` engine (tools/check.h), run in-process, against a
 * conforming back-end and against back-ends that each break exactly one
 * rule, so that a check that cannot fail is caught.
 *
 * The conforming back-end is the reference back-end ($VUF_BACKEND_BLK,
 * 16 MiB RAM disk), which passes every applicable check. The rule-breaking
 * ones are the same back-end seen through an in-process proxy that bends
 * one thing: a reply field, an ack, a dropped or injected request, or
 * (being in the checker's own process, where the guest memory addresses of
 * SET_MEM_TABLE and SET_VRING_ADDR are valid pointers) the guest's blk
 * request headers between the driver's kick and the back-end's.
 *
 * Every row asserts the exact status of the one check it runs.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "backends.h"
#include "check.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"
#include "vuf/wire.h"

#define RAM_SECTORS 32768u /* --ram=16M */
#define NQ 8

enum brk {
    B_NONE = 0,
    B_REPLY_FLAGS,     /* GET_FEATURES reply flags carry NEED_REPLY */
    B_OWNER_REPLY,     /* SET_OWNER is answered */
    B_NO_PROTO_BIT,    /* GET_FEATURES without bit 30 */
    B_PF_CHANGES,      /* the second GET_PROTOCOL_FEATURES answers differently */
    B_UNKNOWN_PF_BIT,  /* GET_PROTOCOL_FEATURES with bit 40 */
    B_DOUBLE_ACK,      /* SET_VRING_NUM's ack sent twice */
    B_ACK_ZERO,        /* a SET_VRING_NUM nack turned into ack 0 */
    B_QUEUE_NUM,       /* GET_QUEUE_NUM + 1 */
    B_ZERO_SLOTS,      /* GET_MAX_MEM_SLOTS 0 */
    B_NACK_MEM_TABLE,  /* SET_MEM_TABLE nacked */
    B_NACK_ADD_REG,    /* ADD_MEM_REG nacked */
    B_CONFIG_OFFSET,   /* GET_CONFIG served from offset 0 */
    B_DROP_SET_CONFIG, /* SET_CONFIG acked, not applied */
    B_ENABLE_ON_KICK,  /* a ring is enabled as soon as it has a kick fd */
    B_IGNORE_DISABLE,  /* SET_VRING_ENABLE 0 acked, not applied */
    B_BASE_OFF,        /* GET_VRING_BASE + 1 */
    B_RESTART_BASE0,   /* SET_VRING_BASE n applied as 0 */
    B_NO_CALL,         /* the call eventfd is never signalled */
    B_IN_SECTOR,       /* blk IN requests read 8 sectors lower */
    B_BAD_TYPE,        /* FLUSH, GET_ID, DISCARD, WRITE_ZEROES become type 99 */
    B_PAST_END_OK,     /* an IN at the last sector reads sector 0 */
    B_STATE_FAIL,      /* CHECK_DEVICE_STATE answers 1 */
    B_INFLIGHT_SMALL,  /* GET_INFLIGHT_FD mmap_size 64 */
    B_NO_RECONNECT,    /* a second front-end is accepted but never answered */
    B_HOSTILE_ACK0,    /* malformed requests acked with 0 */
    /* No reference back-end behind: the proxy is an fs or net device. */
    B_FAKE_FS,        /* answers FUSE_INIT */
    B_FAKE_FS_ERR,    /* answers FUSE_INIT with ENOSYS */
    B_FAKE_NET,       /* consumes TX frames */
    B_FAKE_NET_STUCK, /* never consumes TX frames */
};

/* ------------------------------------------------------------------------ */
/* The proxy                                                                */
/* ------------------------------------------------------------------------ */

struct region {
    uint64_t gpa, size, uaddr;
};

struct proxy {
    char path[300];
    const char *backend;
    int lfd, stop_fd;
    pthread_t thread;
    enum brk mode;
    unsigned sessions;

    /* per session */
    struct region reg[VUF_MEM_TABLE_MAX];
    unsigned nreg;
    unsigned qsize[NQ];
    struct vuf_vring_desc *desc[NQ];
    struct vuf_vring_avail *avail[NQ];
    struct vuf_vring_used *used[NQ];
    int call[NQ];
    uint16_t seen[NQ];
    int fe_kick[NQ], be_kick[NQ];
    int swallowed[16];
    unsigned nswallowed;
    unsigned pf_replies;
};

static void *gpa_host(struct proxy *p, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < p->nreg; i++)
        if (gpa >= p->reg[i].gpa && gpa + len <= p->reg[i].gpa + p->reg[i].size)
            return (void *)(uintptr_t)(p->reg[i].uaddr + (gpa - p->reg[i].gpa));
    return NULL;
}

/* Bend the blk headers the driver published since the last kick. */
static void bend_requests(struct proxy *p, unsigned q)
{
    struct vuf_vring_avail *av = p->avail[q];
    uint16_t idx = __atomic_load_n(&av->idx, __ATOMIC_ACQUIRE);

    for (; p->seen[q] != idx; p->seen[q]++) {
        uint16_t head = av->ring[p->seen[q] % p->qsize[q]];
        struct vuf_vring_desc *d = &p->desc[q][head];
        struct vuf_blk_outhdr *h = gpa_host(p, d->addr, sizeof(*h));

        if (!h)
            continue;
        if (p->mode == B_IN_SECTOR && h->type == VUF_BLK_T_IN && h->sector >= 8)
            h->sector -= 8;
        if (p->mode == B_PAST_END_OK && h->type == VUF_BLK_T_IN && h->sector == RAM_SECTORS - 1)
            h->sector = 0;
        if (p->mode == B_BAD_TYPE &&
            (h->type == VUF_BLK_T_FLUSH || h->type == VUF_BLK_T_GET_ID ||
             h->type == VUF_BLK_T_DISCARD || h->type == VUF_BLK_T_WRITE_ZEROES))
            h->type = 99;
    }
}

static bool bends_requests(const struct proxy *p)
{
    return p->mode == B_IN_SECTOR || p->mode == B_PAST_END_OK || p->mode == B_BAD_TYPE;
}

static int answer_u64(struct vuf_conn *fe, uint32_t code, uint64_t v)
{
    struct vuf_msg r = {.hdr = {.request = code, .flags = VUF_VERSION | VUF_FLAG_REPLY, .size = 8}};

    r.payload.u64 = v;
    return vuf_conn_send(fe, &r);
}

enum act { FWD, ANSWERED, DROPPED };

/* A request on its way to the back-end. */
static enum act bend_request(struct proxy *p, struct vuf_conn *fe, struct vuf_conn *be,
                             struct vuf_msg *m)
{
    uint32_t code = m->hdr.request;
    bool nr = m->hdr.flags & VUF_FLAG_NEED_REPLY;

    if (p->mode == B_HOSTILE_ACK0 && (code == 200 || (m->hdr.flags & VUF_FLAG_REPLY) ||
                                      (code == VUF_REQ_SET_VRING_CALL && m->nfds > 1))) {
        vuf_msg_close_fds(m);
        answer_u64(fe, code, 0);
        return ANSWERED;
    }
    switch (code) {
    case VUF_REQ_SET_OWNER:
        if (p->mode == B_OWNER_REPLY)
            answer_u64(fe, code, 0);
        break;
    case VUF_REQ_SET_MEM_TABLE:
        p->nreg = m->payload.mem.nregions <= VUF_MEM_TABLE_MAX ? m->payload.mem.nregions : 0;
        for (unsigned i = 0; i < p->nreg; i++)
            p->reg[i] = (struct region){m->payload.mem.regions[i].guest_phys_addr,
                                        m->payload.mem.regions[i].memory_size,
                                        m->payload.mem.regions[i].userspace_addr};
        break;
    case VUF_REQ_SET_VRING_NUM:
        if (m->payload.state.index < NQ)
            p->qsize[m->payload.state.index] = m->payload.state.num;
        break;
    case VUF_REQ_SET_VRING_ADDR:
        if (m->payload.addr.index < NQ) {
            p->desc[m->payload.addr.index] = (void *)(uintptr_t)m->payload.addr.desc;
            p->avail[m->payload.addr.index] = (void *)(uintptr_t)m->payload.addr.avail;
            p->used[m->payload.addr.index] = (void *)(uintptr_t)m->payload.addr.used;
        }
        break;
    case VUF_REQ_SET_VRING_BASE:
        if (p->mode == B_RESTART_BASE0)
            m->payload.state.num = 0;
        if (m->payload.state.index < NQ)
            p->seen[m->payload.state.index] = (uint16_t)m->payload.state.num;
        break;
    case VUF_REQ_SET_VRING_KICK: {
        unsigned q = (unsigned)(m->payload.u64 & VUF_VRING_IDX_MASK);

        if (bends_requests(p) && m->nfds == 1 && q < NQ) {
            if (p->fe_kick[q] >= 0)
                close(p->fe_kick[q]);
            if (p->be_kick[q] < 0)
                p->be_kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            p->fe_kick[q] = m->fds[0];
            m->fds[0] = dup(p->be_kick[q]);
        }
        if (p->mode == B_ENABLE_ON_KICK) {
            struct vuf_msg en = {
                .hdr = {.request = VUF_REQ_SET_VRING_ENABLE, .flags = VUF_VERSION, .size = 8}};

            en.payload.state = (struct vuf_vring_state){.index = q, .num = 1};
            vuf_conn_send(be, m);
            vuf_msg_close_fds(m);
            vuf_conn_send(be, &en);
            return ANSWERED;
        }
        break;
    }
    case VUF_REQ_SET_VRING_CALL:
        if (p->mode == B_NO_CALL && m->nfds == 1 && p->nswallowed < 16) {
            p->swallowed[p->nswallowed++] = m->fds[0];
            m->fds[0] = eventfd(0, EFD_CLOEXEC);
            p->swallowed[p->nswallowed < 16 ? p->nswallowed++ : 15] = m->fds[0];
            vuf_conn_send(be, m);
            m->nfds = 0;
            return ANSWERED;
        }
        break;
    case VUF_REQ_SET_VRING_ENABLE:
        if (p->mode == B_IGNORE_DISABLE && m->payload.state.num == 0) {
            if (nr)
                answer_u64(fe, code, 0);
            return DROPPED;
        }
        break;
    case VUF_REQ_SET_CONFIG:
        if (p->mode == B_DROP_SET_CONFIG) {
            if (nr)
                answer_u64(fe, code, 0);
            return DROPPED;
        }
        break;
    case VUF_REQ_GET_CONFIG:
        if (p->mode == B_CONFIG_OFFSET)
            m->payload.config.offset = 0;
        break;
    default:
        break;
    }
    return FWD;
}

/* A reply on its way to the front-end; returns how often to send it. */
static int bend_reply(struct proxy *p, struct vuf_msg *m)
{
    switch (m->hdr.request) {
    case VUF_REQ_GET_FEATURES:
        if (p->mode == B_REPLY_FLAGS)
            m->hdr.flags |= VUF_FLAG_NEED_REPLY;
        if (p->mode == B_NO_PROTO_BIT)
            m->payload.u64 &= ~VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES);
        break;
    case VUF_REQ_GET_PROTOCOL_FEATURES:
        if (p->mode == B_UNKNOWN_PF_BIT)
            m->payload.u64 |= VUF_BIT(40);
        if (p->mode == B_PF_CHANGES && ++p->pf_replies == 2)
            m->payload.u64 ^= VUF_PROTO_MASK(MQ);
        break;
    case VUF_REQ_SET_VRING_NUM:
        if (p->mode == B_DOUBLE_ACK)
            return 2;
        if (p->mode == B_ACK_ZERO)
            m->payload.u64 = 0;
        break;
    case VUF_REQ_GET_QUEUE_NUM:
        if (p->mode == B_QUEUE_NUM)
            m->payload.u64++;
        break;
    case VUF_REQ_GET_MAX_MEM_SLOTS:
        if (p->mode == B_ZERO_SLOTS)
            m->payload.u64 = 0;
        break;
    case VUF_REQ_SET_MEM_TABLE:
        if (p->mode == B_NACK_MEM_TABLE)
            m->payload.u64 = 1;
        break;
    case VUF_REQ_ADD_MEM_REG:
        if (p->mode == B_NACK_ADD_REG)
            m->payload.u64 = 1;
        break;
    case VUF_REQ_GET_VRING_BASE:
        if (p->mode == B_BASE_OFF)
            m->payload.state.num++;
        break;
    case VUF_REQ_CHECK_DEVICE_STATE:
        if (p->mode == B_STATE_FAIL)
            m->payload.u64 = 1;
        break;
    case VUF_REQ_GET_INFLIGHT_FD:
        if (p->mode == B_INFLIGHT_SMALL)
            m->payload.inflight.mmap_size = 64;
        break;
    default:
        break;
    }
    return 1;
}

static bool fake(const struct proxy *p)
{
    return p->mode >= B_FAKE_FS;
}

/* The fake device's answer to every request (bend_request has recorded the
 * memory and ring addresses). */
static void fake_request(struct proxy *p, struct vuf_conn *fe, struct vuf_msg *m)
{
    uint32_t code = m->hdr.request;
    unsigned q = (unsigned)(m->payload.u64 & VUF_VRING_IDX_MASK);

    switch (code) {
    case VUF_REQ_GET_FEATURES:
        answer_u64(fe, code,
                   VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES));
        return;
    case VUF_REQ_GET_PROTOCOL_FEATURES:
        answer_u64(fe, code, VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK));
        return;
    case VUF_REQ_GET_QUEUE_NUM:
        answer_u64(fe, code, 2);
        return;
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL:
        if (q < NQ && m->nfds == 1) {
            int *slot = code == VUF_REQ_SET_VRING_KICK ? &p->fe_kick[q] : &p->call[q];

            if (*slot >= 0)
                close(*slot);
            *slot = m->fds[0];
            m->nfds = 0;
        }
        break;
    default:
        break;
    }
    vuf_msg_close_fds(m);
    if (m->hdr.flags & VUF_FLAG_NEED_REPLY)
        answer_u64(fe, code, 0);
}

/* The fake device processes queue q: fs answers FUSE requests on queue 1,
 * net consumes TX frames on queue 1. */
static void fake_process(struct proxy *p, unsigned q)
{
    struct vuf_vring_avail *av = p->avail[q];
    struct vuf_vring_used *u = p->used[q];
    uint16_t idx = __atomic_load_n(&av->idx, __ATOMIC_ACQUIRE);
    uint64_t one = 1;

    if (q != 1 || p->mode == B_FAKE_NET_STUCK)
        return;
    for (; p->seen[q] != idx; p->seen[q]++) {
        uint16_t head = av->ring[p->seen[q] % p->qsize[q]];
        struct vuf_vring_desc *d = &p->desc[q][head];
        uint32_t len = 0;

        if (p->mode == B_FAKE_FS || p->mode == B_FAKE_FS_ERR) {
            const uint64_t *unique = gpa_host(p, d->addr + 8, 8);
            struct vuf_vring_desc *w = &p->desc[q][d->next];
            struct {
                uint32_t len;
                int32_t error;
                uint64_t unique;
                uint32_t major, minor;
            } *out = gpa_host(p, w->addr, 24);

            if (unique && out && (d->flags & VUF_VRING_DESC_F_NEXT)) {
                *out = (__typeof__(*out)){24, p->mode == B_FAKE_FS_ERR ? -38 : 0, *unique, 7, 31};
                len = 24;
            }
        }
        u->ring[u->idx % p->qsize[q]] = (struct vuf_vring_used_elem){head, len};
        __atomic_store_n(&u->idx, (uint16_t)(u->idx + 1), __ATOMIC_RELEASE);
    }
    if (p->call[q] >= 0 && write(p->call[q], &one, sizeof(one)) < 0)
        return;
}

static void session_reset(struct proxy *p)
{
    for (unsigned q = 0; q < NQ; q++) {
        if (p->fe_kick[q] >= 0)
            close(p->fe_kick[q]);
        if (p->be_kick[q] >= 0)
            close(p->be_kick[q]);
        p->fe_kick[q] = p->be_kick[q] = -1;
        p->seen[q] = 0;
        p->qsize[q] = 0;
        p->desc[q] = NULL;
        p->avail[q] = NULL;
        p->used[q] = NULL;
        if (p->call[q] >= 0)
            close(p->call[q]);
        p->call[q] = -1;
    }
    for (unsigned i = 0; i < p->nswallowed; i++)
        close(p->swallowed[i]);
    p->nswallowed = 0;
    p->nreg = 0;
    p->pf_replies = 0;
}

/* Serve one front-end until it (or the back-end) leaves. */
static void session(struct proxy *p, struct vuf_conn *fe)
{
    struct vuf_conn *be = NULL;
    bool done = false;

    if (p->mode == B_NO_RECONNECT && p->sessions++ > 0) {
        struct pollfd pf[2] = {{vuf_conn_fd(fe), POLLRDHUP, 0}, {p->stop_fd, POLLIN, 0}};

        poll(pf, 2, 30000); /* hold it open, answer nothing */
        vuf_conn_close(fe);
        return;
    }
    if (!fake(p)) {
        if (vuf_conn_connect(p->backend, 5000, &be) < 0) {
            vuf_conn_close(fe);
            return;
        }
        vuf_conn_set_timeout(be, 5000);
    }
    vuf_conn_set_timeout(fe, 5000);
    while (!done) {
        struct pollfd pf[3 + NQ];
        struct vuf_msg m;
        unsigned n = 3;

        pf[0] = (struct pollfd){.fd = vuf_conn_fd(fe), .events = POLLIN};
        pf[1] = (struct pollfd){.fd = be ? vuf_conn_fd(be) : -1, .events = POLLIN};
        pf[2] = (struct pollfd){.fd = p->stop_fd, .events = POLLIN};
        for (unsigned q = 0; q < NQ; q++)
            if (p->fe_kick[q] >= 0)
                pf[n++] = (struct pollfd){.fd = p->fe_kick[q], .events = POLLIN};
        if (poll(pf, n, -1) < 0)
            break;
        if (pf[2].revents)
            break;
        for (unsigned i = 3; i < n; i++) {
            if (!(pf[i].revents & POLLIN))
                continue;
            for (unsigned q = 0; q < NQ; q++) {
                uint64_t v;

                if (p->fe_kick[q] != pf[i].fd)
                    continue;
                /* our own process's non-blocking eventfd */
                if (read(pf[i].fd, &v, sizeof(v)) != (ssize_t)sizeof(v) || !p->avail[q])
                    continue;
                if (fake(p)) {
                    fake_process(p, q);
                } else if (p->be_kick[q] >= 0) {
                    bend_requests(p, q);
                    v = 1;
                    if (write(p->be_kick[q], &v, sizeof(v)) < 0)
                        done = true;
                }
            }
        }
        if (pf[0].revents) {
            int r = vuf_conn_recv(fe, &m);

            if (r == -EMSGSIZE && p->mode == B_HOSTILE_ACK0) {
                answer_u64(fe, VUF_REQ_SET_VRING_NUM, 0);
                r = -EMSGSIZE;
            }
            if (r < 0)
                break;
            if (fake(p)) {
                bend_request(p, fe, be, &m);
                fake_request(p, fe, &m);
            } else if (bend_request(p, fe, be, &m) == FWD) {
                r = vuf_conn_send(be, &m);
                vuf_msg_close_fds(&m);
                if (r < 0)
                    break;
            }
        }
        if (pf[1].revents) {
            int times;

            if (vuf_conn_recv(be, &m) < 0)
                break;
            times = bend_reply(p, &m);
            for (int i = 0; i < times; i++)
                if (vuf_conn_send(fe, &m) < 0)
                    done = true;
            vuf_msg_close_fds(&m);
        }
    }
    vuf_conn_close(be);
    vuf_conn_close(fe);
    session_reset(p);
}

static void *proxy_main(void *arg)
{
    struct proxy *p = arg;

    for (;;) {
        struct pollfd pf[2] = {{p->lfd, POLLIN, 0}, {p->stop_fd, POLLIN, 0}};
        struct vuf_conn *fe;

        if (poll(pf, 2, -1) < 0 || pf[1].revents)
            break;
        if (vuf_conn_accept(p->lfd, 0, &fe) == 0)
            session(p, fe);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

static char *dir;
static char be_sock[300];
static struct tu_proc be_proc = {.pid = -1};
static struct proxy px;

static void proxy_start(enum brk mode)
{
    memset(&px, 0, sizeof(px));
    snprintf(px.path, sizeof(px.path), "%s/proxy.sock", dir);
    px.backend = be_sock;
    px.mode = mode;
    for (unsigned q = 0; q < NQ; q++)
        px.fe_kick[q] = px.be_kick[q] = px.call[q] = -1;
    assert_int_equal(vuf_conn_listen(px.path, &px.lfd), 0);
    px.stop_fd = eventfd(0, EFD_CLOEXEC);
    assert_true(px.stop_fd >= 0);
    assert_int_equal(pthread_create(&px.thread, NULL, proxy_main, &px), 0);
}

static void proxy_stop(void)
{
    uint64_t one = 1;

    assert_int_equal(write(px.stop_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
    pthread_join(px.thread, NULL);
    session_reset(&px);
    close(px.stop_fd);
    close(px.lfd);
    unlink(px.path);
}

static int group_setup(void **state)
{
    const char *bin = tu_built_exe("VUF_BACKEND_BLK");
    char sockarg[320];
    char *argv[] = {(char *)bin, sockarg, "--ram=16M", "--num-queues=2", NULL};
    char log[320];

    if (!bin)
        return -1;
    dir = tu_mkdtemp("vuf-check");
    if (!dir)
        return -1;
    snprintf(be_sock, sizeof(be_sock), "%s/ref.sock", dir);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", be_sock);
    snprintf(log, sizeof(log), "%s/ref.log", dir);
    if (tu_spawn(&be_proc, argv, log) < 0 || tu_wait_socket_file(&be_proc, be_sock, 10000) < 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    tu_stop(&be_proc);
    tu_rmtree(dir);
    return 0;
}

/* Run the engine through a proxy in `mode`, `only` the given ids. */
static void run_dev(enum brk mode, uint32_t type, const char *only, bool hostile,
                    struct chk_report *rep)
{
    struct chk_opts o = {.device_type = type,
                         .only = only,
                         .timeout_ms = 1500,
                         .hostile = hostile,
                         .settle_ms = 100};

    proxy_start(mode);
    o.socket = px.path;
    assert_int_equal(chk_run(&o, rep), 0);
    proxy_stop();
}

static void run(enum brk mode, const char *only, bool hostile, struct chk_report *rep)
{
    run_dev(mode, VUF_DEV_BLK, only, hostile, rep);
}

static void print_report(const struct chk_report *rep)
{
    chk_print_human(stderr, rep, "proxy", true);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* The conforming back-end passes every check (the whole suite at once). */
static void test_conforming_passes_all(void **state)
{
    struct chk_report rep;

    run(B_NONE, NULL, true, &rep);
    if (rep.failed || rep.errors || rep.skipped != 2)
        print_report(&rep);
    assert_int_equal(rep.n, chk_count());
    /* all but the fs and net I/O checks, which a blk device skips */
    assert_int_equal(rep.passed, chk_count() - 2);
    assert_string_equal(chk_status_name(chk_find(&rep, "io.fs-init")->status), "SKIP");
    assert_string_equal(chk_status_name(chk_find(&rep, "io.net-tx")->status), "SKIP");
    assert_int_equal(rep.failed + rep.errors, 0);
    chk_report_free(&rep);
}

struct row {
    const char *id;
    enum brk mode;
    enum chk_status want;
    uint32_t type; /* 0: blk */
};

/* Each check against a back-end that breaks exactly its rule. */
static const struct row rows[] = {
    {"handshake.reply-header", B_REPLY_FLAGS, CHK_FAIL, 0},
    {"handshake.set-owner", B_OWNER_REPLY, CHK_FAIL, 0},
    {"handshake.features", B_NO_PROTO_BIT, CHK_FAIL, 0},
    {"handshake.protocol-features", B_PF_CHANGES, CHK_FAIL, 0},
    {"handshake.unknown-bits", B_UNKNOWN_PF_BIT, CHK_FAIL, 0},
    {"reply-ack.one-ack", B_DOUBLE_ACK, CHK_FAIL, 0},
    {"counts.queue-num", B_QUEUE_NUM, CHK_FAIL, 0},
    {"counts.max-mem-slots", B_ZERO_SLOTS, CHK_FAIL, 0},
    {"counts.mem-table", B_NACK_MEM_TABLE, CHK_FAIL, 0},
    {"counts.add-rem-mem-reg", B_NACK_ADD_REG, CHK_FAIL, 0},
    {"config.offset", B_CONFIG_OFFSET, CHK_FAIL, 0},
    {"config.set-writable", B_DROP_SET_CONFIG, CHK_FAIL, 0},
    {"ring.start", B_ENABLE_ON_KICK, CHK_FAIL, 0},
    {"ring.disable", B_IGNORE_DISABLE, CHK_FAIL, 0},
    {"ring.get-base", B_BASE_OFF, CHK_FAIL, 0},
    {"ring.restart", B_RESTART_BASE0, CHK_FAIL, 0},
    {"ring.event-idx", B_NO_CALL, CHK_FAIL, 0},
    {"io.blk-rw", B_IN_SECTOR, CHK_FAIL, 0},
    {"io.blk-flush", B_BAD_TYPE, CHK_FAIL, 0},
    {"io.blk-get-id", B_BAD_TYPE, CHK_FAIL, 0},
    {"io.blk-discard", B_BAD_TYPE, CHK_FAIL, 0},
    {"io.blk-write-zeroes", B_BAD_TYPE, CHK_FAIL, 0},
    {"io.blk-past-end", B_PAST_END_OK, CHK_FAIL, 0},
    {"io.fs-init", B_FAKE_FS, CHK_PASS, VUF_DEV_FS},
    {"io.fs-init", B_FAKE_FS_ERR, CHK_FAIL, VUF_DEV_FS},
    {"io.net-tx", B_FAKE_NET, CHK_PASS, VUF_DEV_NET},
    {"io.net-tx", B_FAKE_NET_STUCK, CHK_FAIL, VUF_DEV_NET},
    {"state.device-state", B_STATE_FAIL, CHK_FAIL, 0},
    {"state.inflight", B_INFLIGHT_SMALL, CHK_FAIL, 0},
    /* not a MUST of the spec: a front-end that is never answered is an
     * ERROR (a back-end that refuses the connection is a SKIP) */
    {"state.reconnect", B_NO_RECONNECT, CHK_ERROR, 0},
    {"reply-ack.reject", B_ACK_ZERO, CHK_FAIL, 0},
    {"hostile.unknown-code", B_HOSTILE_ACK0, CHK_FAIL, 0},
    {"hostile.oversized", B_HOSTILE_ACK0, CHK_FAIL, 0},
    {"hostile.fd-count", B_HOSTILE_ACK0, CHK_FAIL, 0},
    {"hostile.stray-reply", B_HOSTILE_ACK0, CHK_FAIL, 0},
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static void test_breaker(void **state)
{
    const struct row *r = *state;
    const struct chk_result *res;
    struct chk_report rep;

    run_dev(r->mode, r->type ? r->type : VUF_DEV_BLK, r->id, true, &rep);
    res = chk_find(&rep, r->id);
    assert_non_null(res);
    if (res->status != r->want || getenv("VUF_CHECK_SHOW"))
        print_report(&rep);
    assert_string_equal(chk_status_name(res->status), chk_status_name(r->want));
    /* every other check was not selected */
    assert_int_equal(rep.skipped, chk_count() - 1);
    chk_report_free(&rep);
}

/* Every check of the suite has a breaking row, and no row is stale. */
static void test_every_check_can_fail(void **state)
{
    for (unsigned i = 0; i < chk_count(); i++) {
        bool found = false;

        for (unsigned j = 0; j < NROWS && !found; j++)
            found = strcmp(rows[j].id, chk_id(i)) == 0 && rows[j].want != CHK_PASS;
        if (!found)
            fail_msg("check %s has no case that fails it", chk_id(i));
    }
    /* one failing row per check, plus the fs and net conforming fakes */
    assert_int_equal(NROWS, chk_count() + 2);
}

/* --only names checks and prefixes; anything else is refused. */
static void test_only_parsing(void **state)
{
    const char *bad;
    size_t n;

    assert_true(chk_only_valid("ring.", &bad, &n));
    assert_true(chk_only_valid("config.offset,ring.start", &bad, &n));
    assert_false(chk_only_valid("config.offset,ring.nope", &bad, &n));
    assert_int_equal(n, strlen("ring.nope"));
    assert_int_equal(strncmp(bad, "ring.nope", n), 0);
    assert_false(chk_only_valid("config", &bad, &n));
}

/* Nothing listening: no report, the connect error. */
static void test_nothing_listening(void **state)
{
    struct chk_opts o = {.socket = "/nonexistent/vuf-check.sock", .timeout_ms = 100};
    struct chk_report rep;

    assert_int_equal(chk_run(&o, &rep), -ENOENT);
    assert_int_equal(rep.n, 0);
}

int main(void)
{
    static struct CMUnitTest tests[4 + NROWS];
    static char names[NROWS][80];
    unsigned n = 0;

    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_every_check_can_fail);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_only_parsing);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_nothing_listening);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_conforming_passes_all);
    for (unsigned i = 0; i < NROWS; i++) {
        snprintf(names[i], sizeof(names[i]), "%s_%s",
                 rows[i].want == CHK_PASS ? "conforms" : "breaks", rows[i].id);
        tests[n++] = (struct CMUnitTest){
            .name = names[i], .test_func = test_breaker, .initial_state = (void *)&rows[i]};
    }
    signal(SIGPIPE, SIG_IGN);
    return _cmocka_run_group_tests("check", tests, n, group_setup, group_teardown);
}
