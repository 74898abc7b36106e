/* SPDX-License-Identifier: MIT */
/* The in-test back-end and fixture of the front-end unit tests (fe_fakebe.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fe_fakebe.h"
#include "fe_harness.h"
#include "vuf/breq.h"

static void be_record(struct be *be, const struct vuf_msg *req)
{
    struct rec r = {.code = req->hdr.request, .flags = req->hdr.flags, .nfds = req->nfds};

    if (req->hdr.size >= 8) {
        memcpy(&r.a, req->payload.raw, 4);
        memcpy(&r.b, req->payload.raw + 4, 4);
        memcpy(&r.u64, req->payload.raw, 8);
    }
    if (req->hdr.size >= 16)
        memcpy(&r.gpa, req->payload.raw + 8, 8);
    pthread_mutex_lock(&be->lock);
    if (be->nrec < MAX_REC)
        be->rec[be->nrec++] = r;
    pthread_mutex_unlock(&be->lock);
}

static int be_handler(void *opaque, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct be *be = opaque;
    uint32_t code = req->hdr.request;

    be_record(be, req);
    if (be->nack_code == code) {
        if (be->nack_skip == 0)
            return -EIO;
        be->nack_skip--;
    }
    switch (code) {
    case VUF_REQ_GET_FEATURES:
        reply->payload.u64 = be->features;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_PROTOCOL_FEATURES:
        reply->payload.u64 = be->protocol_features;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_GET_QUEUE_NUM:
        reply->payload.u64 = be->queue_num;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_SET_FEATURES:
        be->acked = req->payload.u64;
        return 0;
    case VUF_REQ_SET_MEM_TABLE:
        be->mem_regions = req->payload.mem.nregions;
        return req->nfds == req->payload.mem.nregions ? 0 : -EINVAL;
    case VUF_REQ_GET_MAX_MEM_SLOTS:
        reply->payload.u64 = be->max_slots;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_ADD_MEM_REG:
        if (req->nfds != 1 || be->slots_used >= be->max_slots)
            return -EINVAL;
        if (be->read_regions) {
            /* Read the region through the fd it came with, as a back-end
             * doing I/O would: the first u64 must be its GPA. */
            const struct vuf_mem_region *mr = &req->payload.mem_single.region;
            uint64_t *p = mmap(NULL, mr->memory_size, PROT_READ, MAP_SHARED, req->fds[0],
                               (off_t)mr->mmap_offset);

            if (p == MAP_FAILED)
                return -EINVAL;
            if (p[0] == mr->guest_phys_addr)
                be->regions_tagged++;
            munmap(p, mr->memory_size);
        }
        be->slots_used++;
        return 0;
    case VUF_REQ_REM_MEM_REG:
        if (req->nfds != 0 || be->slots_used == 0)
            return -EINVAL;
        be->slots_used--;
        return 0;
    case VUF_REQ_SET_VRING_ADDR:
        if (req->payload.addr.index < MAX_Q)
            be->addr[req->payload.addr.index] = req->payload.addr;
        return 0;
    case VUF_REQ_SET_LOG_BASE: {
        size_t size = (size_t)req->payload.log.mmap_size;
        void *p;

        be->log_nfds = req->nfds;
        be->log_bases++;
        if (req->nfds != 1 || req->payload.log.mmap_offset != 0 || size == 0)
            return -EINVAL;
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, req->fds[0], 0);
        if (p == MAP_FAILED)
            return -errno;
        if (be->log && be->log_page_at_switch) {
            /* A running back-end logs into the old log until it switches. */
            __atomic_fetch_or(&be->log[be->log_page_at_switch / 8],
                              (uint8_t)(1u << (be->log_page_at_switch % 8)), __ATOMIC_SEQ_CST);
            be->log_page_at_switch = 0;
        }
        if (be->log)
            munmap(be->log, be->log_size);
        be->log = p;
        be->log_size = size;
        return 0; /* the server closes the fd: the mapping stays */
    }
    case VUF_REQ_GET_INFLIGHT_FD: {
        uint64_t file = be->infl_file ? be->infl_file : be->infl_offset + be->infl_size;
        struct stat st;
        int fd = -1, sv[2];

        be->infl_get = req->payload.inflight;
        memset(&reply->payload.inflight, 0, sizeof(reply->payload.inflight));
        reply->payload.inflight.mmap_size = be->infl_size;
        reply->payload.inflight.mmap_offset = be->infl_offset;
        reply->hdr.size = sizeof(reply->payload.inflight);
        switch (be->infl_mode) {
        case INFL_NONE:
            reply->payload.inflight.mmap_size = 0;
            return 0;
        case INFL_PIPE:
            if (pipe2(sv, O_CLOEXEC) < 0)
                return -errno;
            close(sv[1]);
            fd = sv[0];
            break;
        case INFL_SOCKET:
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
            close(sv[1]);
            fd = sv[0];
            break;
        case INFL_ZERO_WITH_FD:
            reply->payload.inflight.mmap_size = 0;
            /* fall through */
        case INFL_MEMFD:
            fd = memfd_create("test-inflight", MFD_CLOEXEC);
            if (fd < 0)
                return -errno;
            if (ftruncate(fd, (off_t)file) < 0) {
                close(fd);
                return -errno;
            }
            break;
        }
        if (fstat(fd, &st) == 0)
            be->infl_get_ino = st.st_ino;
        reply->fds[0] = fd; /* the server closes it once sent */
        reply->nfds = 1;
        return 0;
    }
    case VUF_REQ_SET_INFLIGHT_FD: {
        struct stat st;

        be->infl_set = req->payload.inflight;
        be->infl_set_nfds = req->nfds;
        be->infl_set_ino = 0;
        if (req->nfds != 1 || fstat(req->fds[0], &st) < 0)
            return -EINVAL;
        be->infl_set_ino = st.st_ino;
        return 0;
    }
    case VUF_REQ_SET_VRING_BASE:
        if (req->payload.state.index < MAX_Q)
            be->set_base[req->payload.state.index] = req->payload.state.num;
        return 0;
    case VUF_REQ_GET_VRING_BASE:
        reply->payload.state.index = req->payload.state.index;
        reply->payload.state.num = be->vring_base;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_SET_VRING_CALL: {
        unsigned i = (unsigned)(req->payload.u64 & 0xff);

        if (i < MAX_Q && req->nfds == 1) {
            pthread_mutex_lock(&be->lock);
            if (be->call_fd[i] >= 0)
                close(be->call_fd[i]);
            be->call_fd[i] = req->fds[0];
            pthread_mutex_unlock(&be->lock);
            req->fds[0] = -1;
        }
        return 0;
    }
    case VUF_REQ_SET_BACKEND_REQ_FD:
        pthread_mutex_lock(&be->lock);
        if (be->breq_fd >= 0)
            close(be->breq_fd);
        be->breq_fd = req->fds[0];
        pthread_mutex_unlock(&be->lock);
        req->fds[0] = -1;
        return 0;
    case VUF_REQ_GET_CONFIG: {
        struct vuf_config c = req->payload.config;

        if (c.offset + c.size > sizeof(be->config))
            return -EINVAL;
        memcpy(c.region, be->config + c.offset, c.size);
        if (be->config_bad_offset)
            c.offset += 1;
        memcpy(&reply->payload.config, &c, sizeof(c));
        reply->hdr.size = VUF_CONFIG_HDR_SIZE + c.size;
        return 0;
    }
    case VUF_REQ_SET_CONFIG: {
        const struct vuf_config *c = &req->payload.config;

        if (c->offset + c->size > sizeof(be->config))
            return -EINVAL;
        memcpy(be->config + c->offset, c->region, c->size);
        return 0;
    }
    case VUF_REQ_GET_SHMEM_CONFIG:
        memcpy(&reply->payload.shmem, &be->shm, sizeof(be->shm));
        reply->hdr.size = sizeof(be->shm);
        return 0;
    case VUF_REQ_SET_DEVICE_STATE_FD: {
        int fd = req->fds[0];

        if (req->payload.dstate.direction == VUF_STATE_DIR_LOAD) {
            be->load_fd = fd;
            req->fds[0] = -1;
            reply->payload.u64 = VUF_STATE_REPLY_NOFD;
        } else if (be->save_mode == SAVE_SILENT) {
            be->silent_fd = fd;
            req->fds[0] = -1;
            reply->payload.u64 = VUF_STATE_REPLY_NOFD;
        } else if (be->save_mode == SAVE_OWN_FD) {
            int p[2];

            if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
            if (write(p[1], be->state, be->state_len) != (ssize_t)be->state_len) {
                close(p[0]);
                close(p[1]);
                return -EIO;
            }
            close(p[1]);
            reply->fds[0] = p[0];
            reply->nfds = 1;
            reply->payload.u64 = 0;
        } else {
            if (write(fd, be->state, be->state_len) != (ssize_t)be->state_len)
                return -EIO;
            reply->payload.u64 = VUF_STATE_REPLY_NOFD;
        }
        reply->hdr.size = 8;
        return 0;
    }
    case VUF_REQ_CHECK_DEVICE_STATE:
        if (be->load_fd >= 0) {
            ssize_t n;

            be->loaded_len = 0;
            while ((n = read(be->load_fd, be->loaded + be->loaded_len,
                             sizeof(be->loaded) - be->loaded_len)) > 0)
                be->loaded_len += (size_t)n;
            close(be->load_fd);
            be->load_fd = -1;
        }
        reply->payload.u64 = be->check_status;
        reply->hdr.size = 8;
        return 0;
    case VUF_REQ_SET_STATUS:
        be->status = (uint8_t)req->payload.u64;
        return 0;
    case VUF_REQ_GET_STATUS:
        reply->payload.u64 = be->status & ~be->status_clear;
        reply->hdr.size = 8;
        return 0;
    default:
        return 0;
    }
}

static void *be_main(void *arg)
{
    struct be *be = arg;

    for (;;) {
        struct pollfd p[2] = {{.fd = vuf_server_fd(be->srv), .events = POLLIN},
                              {.fd = be->stop_fd, .events = POLLIN}};

        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents)
            break;
        if (p[0].revents) {
            int r;

            atomic_store(&be->busy, 1);
            r = vuf_server_process_one(be->srv);
            atomic_store(&be->busy, 0);

            if (r == -ECONNRESET || r == -ECONNABORTED || r == -EBADMSG)
                break;
        }
    }
    return NULL;
}

void be_init(struct be *be)
{
    memset(be, 0, sizeof(*be));
    pthread_mutex_init(&be->lock, NULL);
    be->features = F_PROTO | F_EVENT_IDX | F_VERSION_1 | BIT(0);
    be->protocol_features =
        VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(REPLY_ACK);
    be->queue_num = 3;
    be->vring_base = 7;
    be->breq_fd = -1;
    be->load_fd = -1;
    be->silent_fd = -1;
    for (int i = 0; i < MAX_Q; i++)
        be->call_fd[i] = -1;
    for (unsigned i = 0; i < sizeof(be->config); i++)
        be->config[i] = (uint8_t)(i * 3 + 1);
    be->state_len = 100;
    be->infl_size = 4096;
    be->infl_offset = 0;
    for (unsigned i = 0; i < sizeof(be->state); i++)
        be->state[i] = (uint8_t)(i ^ 0x5a);
}

void be_start(struct be *be, struct vuf_conn *conn)
{
    struct vuf_server_config cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.channel = VUF_CH_FRONTEND;
    cfg.opaque = be;
    for (unsigned c = 1; c <= VUF_SERVER_MAX_CODE; c++)
        cfg.handlers[c] = be_handler;
    assert_int_equal(vuf_server_new(conn, &cfg, &be->srv), 0);
    be->stop_fd = eventfd(0, EFD_CLOEXEC);
    assert_true(be->stop_fd >= 0);
    assert_int_equal(pthread_create(&be->thread, NULL, be_main, be), 0);
    be->running = true;
}

void be_kill(struct be *be)
{
    uint64_t one = 1;

    if (be->running) {
        assert_int_equal(write(be->stop_fd, &one, 8), 8);
        pthread_join(be->thread, NULL);
        be->running = false;
    }
    vuf_server_free(be->srv);
    be->srv = NULL;
}

void be_fini(struct be *be)
{
    be_kill(be);
    if (be->stop_fd > 0)
        close(be->stop_fd);
    be->stop_fd = -1;
    if (be->breq)
        vuf_conn_close(be->breq);
    else if (be->breq_fd >= 0)
        close(be->breq_fd);
    be->breq = NULL;
    be->breq_fd = -1;
    for (int i = 0; i < MAX_Q; i++)
        if (be->call_fd[i] >= 0)
            close(be->call_fd[i]);
    if (be->load_fd >= 0)
        close(be->load_fd);
    if (be->silent_fd >= 0)
        close(be->silent_fd);
    if (be->log)
        munmap(be->log, be->log_size);
    be->log = NULL;
    pthread_mutex_destroy(&be->lock);
}

struct vuf_conn *be_breq(struct be *be)
{
    if (!be->breq) {
        assert_true(be->breq_fd >= 0);
        assert_int_equal(vuf_conn_adopt(be->breq_fd, &be->breq), 0);
        be->breq_fd = -1;
        vuf_conn_set_channel(be->breq, VUF_CH_BACKEND);
        vuf_conn_set_timeout(be->breq, 2000);
    }
    return be->breq;
}

unsigned be_count(struct be *be)
{
    unsigned n;

    pthread_mutex_lock(&be->lock);
    n = be->nrec;
    pthread_mutex_unlock(&be->lock);
    return n;
}

struct rec be_rec(struct be *be, unsigned i)
{
    struct rec r;

    pthread_mutex_lock(&be->lock);
    r = be->rec[i];
    pthread_mutex_unlock(&be->lock);
    return r;
}

void print_seq(struct be *be, unsigned from)
{
    unsigned n = be_count(be);

    for (unsigned i = from; i < n; i++)
        print_message("  [%u] %s\n", i, vuf_request_name(be_rec(be, i).code));
}

/*
 * Everything the front-end has sent so far has been recorded: nothing is
 * left in the back-end's socket and the thread is not between taking a
 * message and recording it. The library sends on the caller's thread
 * before the call returns, so once this holds an extra message cannot
 * still be on its way. FIONREAD is read before busy: a message the thread
 * has taken off the socket (FIONREAD 0) was taken with busy set.
 */
static bool be_drained(struct be *be)
{
    int pending = 0;

    if (!be->running || !be->srv)
        return true;
    if (ioctl(vuf_server_fd(be->srv), FIONREAD, &pending) < 0)
        return true;
    return pending == 0 && atomic_load(&be->busy) == 0;
}

void expect_seq_(struct be *be, unsigned *mark, const uint32_t *codes, unsigned n, int line)
{
    int64_t until = tu_now_ms() + 10000;

    /* Generous: a loaded machine may deschedule the back-end thread. */
    while ((be_count(be) < *mark + n || !be_drained(be)) && tu_now_ms() < until)
        tu_sleep_ms(1);
    if (be_count(be) != *mark + n) {
        print_message("line %d: expected %u requests, got %u:\n", line, n, be_count(be) - *mark);
        print_seq(be, *mark);
        fail();
    }
    for (unsigned i = 0; i < n; i++) {
        uint32_t got = be_rec(be, *mark + i).code;

        if (got != codes[i]) {
            print_message("line %d: request %u is %s, expected %s\n", line, i,
                          vuf_request_name(got), vuf_request_name(codes[i]));
            print_seq(be, *mark);
            fail();
        }
    }
    *mark += n;
}

static int ti_irqfd(void *opaque, uint16_t vector)
{
    struct tintr *t = opaque;

    return vector == 1 ? t->irqfd1 : -1;
}

static void ti_used(void *opaque, uint16_t vector)
{
    struct tintr *t = opaque;

    atomic_store(&t->last_vector, vector);
    atomic_fetch_add(&t->used_calls, 1);
}

static void ti_config(void *opaque)
{
    struct tintr *t = opaque;

    atomic_fetch_add(&t->config_calls, 1);
}

const struct vuf_interrupt_ops tintr_ops = {
    .irqfd = ti_irqfd,
    .signal_used_queue = ti_used,
    .signal_config_changed = ti_config,
};

static int tm_add(void *opaque, int fd, uint64_t fd_offset, uint64_t len, uint64_t shm_offset,
                  int prot)
{
    struct tmap *t = opaque;
    int r = -ENOSPC;

    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    pthread_mutex_lock(&t->lock);
    if (t->fail_add) {
        r = -t->fail_add;
        goto out;
    }
    for (int i = 0; i < MAX_MAPS; i++) {
        if (!t->m[i].live) {
            t->m[i].off = shm_offset;
            t->m[i].len = len;
            t->m[i].fd_off = fd_offset;
            t->m[i].prot = prot;
            t->m[i].live = true;
            t->adds++;
            r = 0;
            break;
        }
    }
out:
    pthread_mutex_unlock(&t->lock);
    return r;
}

static int tm_remove(void *opaque, uint64_t shm_offset)
{
    struct tmap *t = opaque;
    int r = -ENOENT;

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < MAX_MAPS; i++) {
        if (t->m[i].live && t->m[i].off == shm_offset) {
            t->m[i].live = false;
            t->removes++;
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

static void tm_release(void *opaque)
{
    struct tmap *t = opaque;

    t->releases++;
}

const struct vuf_shm_mapper_ops tmap_ops = {
    .add_mapping = tm_add,
    .remove_mapping = tm_remove,
    .release = tm_release,
};

int tm_live(struct tmap *t)
{
    int n = 0;

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < MAX_MAPS; i++)
        n += t->m[i].live;
    pthread_mutex_unlock(&t->lock);
    return n;
}

atomic_int crashes;
void on_event(void *opaque, enum vuf_device_event ev)
{
    (void)opaque;
    if (ev == VUF_DEVICE_EVENT_CRASHED)
        atomic_fetch_add(&crashes, 1);
}

void fx_begin(struct fx *f)
{
    struct vuf_conn *a, *b;

    memset(f, 0, sizeof(*f));
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();
    atomic_store(&crashes, 0);
    be_init(&f->be);
    assert_int_equal(vuf_conn_pair(&a, &b), 0);
    f->fe_conn = a;
    be_start(&f->be, b);
    pthread_mutex_init(&f->map.lock, NULL);
    f->intr.irqfd1 = -1;
    f->vi.ops = &tintr_ops;
    f->vi.opaque = &f->intr;
}

struct vuf_frontend_config fx_cfg(uint32_t type, uint64_t base)
{
    struct vuf_frontend_config c;

    memset(&c, 0, sizeof(c));
    c.device_type = type;
    c.base_features_mask = base;
    c.event = on_event;
    return c;
}

int fx_new(struct fx *f, const struct vuf_frontend_config *cfg)
{
    int r = vuf_frontend_new(cfg, f->fe_conn, &f->dev);

    f->fe_conn = NULL; /* taken over either way */
    return r;
}

void fx_queues(struct fx *f, unsigned n)
{
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &f->mem), 0);
    f->nq = n;
    for (unsigned i = 0; i < n; i++)
        tu_ring_queue(f->mem, &f->q[i], i == 1 ? 1 : VUF_NO_VECTOR);
    f->intr.irqfd1 = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(f->intr.irqfd1 >= 0);
    /* The driver that set up the queues negotiated first. */
    if (f->dev)
        fx_ack_version_1(f);
}

void fx_end(struct fx *f)
{
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    vuf_conn_close(f->fe_conn);
    be_fini(&f->be);
    for (unsigned i = 0; i < f->nq; i++)
        close(f->q[i].kick_fd);
    if (f->intr.irqfd1 >= 0)
        close(f->intr.irqfd1);
    vuf_guest_mem_free(f->mem);
    pthread_mutex_destroy(&f->map.lock);
    /* No fd and no thread outlives the device. */
    assert_int_equal(tu_count_fds(), f->fds0);
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
}

void fx_ack_version_1(struct fx *f)
{
    if (vuf_device_features(f->dev) & F_VERSION_1)
        assert_int_equal(vuf_device_ack_features(f->dev, F_VERSION_1), 0);
}

void fx_activate_ok(struct fx *f)
{
    fx_ack_version_1(f);
    assert_int_equal(vuf_device_activate(f->dev, f->mem, &f->vi, f->q, f->nq), 0);
}

void expect_new(struct fx *f)
{
    uint64_t pf = f->be.protocol_features;
    uint32_t codes[6] = {R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                         R(SET_PROTOCOL_FEATURES)};
    unsigned n = 4;

    if (pf & VUF_PROTO_MASK(BACKEND_REQ))
        codes[n++] = R(SET_BACKEND_REQ_FD);
    if (pf & VUF_PROTO_MASK(MQ))
        codes[n++] = R(GET_QUEUE_NUM);
    expect_seq_(&f->be, &f->mark, codes, n, __LINE__);
}

void config_change_ok(struct fx *f)
{
    uint64_t ack = 1;
    int before = atomic_load(&f->intr.config_calls);

    assert_int_equal(vuf_breq_config_change(be_breq(&f->be), true, &ack), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(atomic_load(&f->intr.config_calls), before + 1);
}

void quiet_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    (void)msg;
}

static void *noop_thread(void *arg)
{
    return arg;
}

void fe_test_prepare(void)
{
    pthread_t t;

    if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
        pthread_join(t, NULL);
    if (!getenv("VUF_LOG"))
        vuf_log_set(quiet_log, NULL, VUF_LOG_ERROR);
}
