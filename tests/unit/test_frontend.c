/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against an in-test back-end built on
 * vuf_server: the back-end thread records every request code, and the tests
 * assert the exact message sequences of crosvm's lifecycle test plus the
 * places where vuf deliberately differs (bounded GET_QUEUE_NUM, checked and
 * non-fatal SHMEM_MAP, mappings removed on reset, bounded state transfer,
 * crash reporting and no leaks).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/breq.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/virtio.h"

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
            int r = vuf_server_process_one(be->srv);

            if (r == -ECONNRESET || r == -ECONNABORTED || r == -EBADMSG)
                break;
        }
    }
    return NULL;
}

static void be_init(struct be *be)
{
    memset(be, 0, sizeof(*be));
    pthread_mutex_init(&be->lock, NULL);
    be->features = F_PROTO | F_EVENT_IDX | F_VERSION_1 | BIT(0);
    be->protocol_features = VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(REPLY_ACK);
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

/* Serve `conn` on a thread. */
static void be_start(struct be *be, struct vuf_conn *conn)
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

/* Stop serving and close our end of the main socket (the "crash"). */
static void be_kill(struct be *be)
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

static void be_fini(struct be *be)
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

static struct vuf_conn *be_breq(struct be *be)
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

static unsigned be_count(struct be *be)
{
    unsigned n;

    pthread_mutex_lock(&be->lock);
    n = be->nrec;
    pthread_mutex_unlock(&be->lock);
    return n;
}

static struct rec be_rec(struct be *be, unsigned i)
{
    struct rec r;

    pthread_mutex_lock(&be->lock);
    r = be->rec[i];
    pthread_mutex_unlock(&be->lock);
    return r;
}

static void print_seq(struct be *be, unsigned from)
{
    unsigned n = be_count(be);

    for (unsigned i = from; i < n; i++)
        print_message("  [%u] %s\n", i, vuf_request_name(be_rec(be, i).code));
}

/*
 * The back-end must have received exactly `codes` since *mark (waiting up to
 * a second for requests that get no reply). Advances *mark.
 */
static void expect_seq_(struct be *be, unsigned *mark, const uint32_t *codes, unsigned n, int line)
{
    int64_t until = tu_now_ms() + 1000;

    while (be_count(be) < *mark + n && tu_now_ms() < until)
        tu_sleep_ms(1);
    tu_sleep_ms(5); /* anything extra would arrive now */
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

/* ------------------------------------------------------------------------ */
/* VMM side: interrupts, mapper, events, guest memory                       */
/* ------------------------------------------------------------------------ */

struct tintr {
    atomic_int used_calls;
    atomic_int last_vector;
    atomic_int config_calls;
    int irqfd1; /* the irqfd of MSI-X vector 1 */
};

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

static const struct vuf_interrupt_ops tintr_ops = {
    .irqfd = ti_irqfd,
    .signal_used_queue = ti_used,
    .signal_config_changed = ti_config,
};

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

static const struct vuf_shm_mapper_ops tmap_ops = {
    .add_mapping = tm_add,
    .remove_mapping = tm_remove,
    .release = tm_release,
};

static int tm_live(struct tmap *t)
{
    int n = 0;

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < MAX_MAPS; i++)
        n += t->m[i].live;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static atomic_int crashes;
static void on_event(void *opaque, enum vuf_device_event ev)
{
    (void)opaque;
    if (ev == VUF_DEVICE_EVENT_CRASHED)
        atomic_fetch_add(&crashes, 1);
}

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

static void fx_begin(struct fx *f)
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

static struct vuf_frontend_config fx_cfg(uint32_t type, uint64_t base)
{
    struct vuf_frontend_config c;

    memset(&c, 0, sizeof(c));
    c.device_type = type;
    c.base_features = base;
    c.event = on_event;
    return c;
}

static int fx_new(struct fx *f, const struct vuf_frontend_config *cfg)
{
    int r = vuf_frontend_new(cfg, f->fe_conn, &f->dev);

    f->fe_conn = NULL; /* taken over either way */
    return r;
}

/* Guest memory with `n` queues of 16 entries, rings in place. Queue 1 (if
 * any) uses MSI-X vector 1, which has an irqfd; the others none. */
static void fx_queues(struct fx *f, unsigned n)
{
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &f->mem), 0);
    f->nq = n;
    for (unsigned i = 0; i < n; i++)
        tu_ring_queue(f->mem, &f->q[i], i == 1 ? 1 : VUF_NO_VECTOR);
    f->intr.irqfd1 = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(f->intr.irqfd1 >= 0);
}

static void fx_end(struct fx *f)
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

static void fx_activate_ok(struct fx *f)
{
    assert_int_equal(vuf_device_activate(f->dev, f->mem, &f->vi, f->q, f->nq), 0);
}

/* Consume the constructor's requests (the last may get no reply, so wait
 * for it rather than trusting the count). */
static void expect_new(struct fx *f)
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

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

static void test_new_sequence_and_features(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    (void)state;
    fx_begin(&f);
    /* Offer device bits, transport bits, packed rings and protocol bits the
     * front-end does not use. */
    f.be.features = F_PROTO | F_EVENT_IDX | F_VERSION_1 | F_PACKED | BIT(0) | BIT(23) | BIT(24) |
                    BIT(50) | BIT(63);
    f.be.protocol_features |= VUF_PROTO_MASK(LOG_SHMFD) | VUF_PROTO_MASK(STATUS) | BIT(40);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES));
    /* Only the allowed protocol bits are acked. */
    assert_int_equal(be_rec(&f.be, 3).u64,
                     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(REPLY_ACK));
    assert_int_equal(vuf_frontend_protocol_features(f.dev),
                     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(REPLY_ACK));
    /* Device-type bits pass, transport bits only from base, bit 30 always. */
    assert_int_equal(vuf_device_features(f.dev),
                     F_PROTO | F_EVENT_IDX | BIT(0) | BIT(23) | BIT(50) | BIT(63));
    /* Bit 30 is acked from the start but nothing was sent. */
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_PROTO);
    assert_false(vuf_frontend_last_sent_features(f.dev, NULL));
    /* Console: 2 queues without MQ, default size 32768. */
    assert_int_equal(vuf_device_num_queues(f.dev), 2);
    assert_int_equal(vuf_device_queue_max_sizes(f.dev)[0], 32768);
    assert_int_equal(vuf_device_queue_max_sizes(f.dev)[1], 32768);
    assert_string_equal(vuf_device_label(f.dev), "vu-console");
    assert_int_equal(vuf_device_type(f.dev), VUF_DEV_CONSOLE);
    assert_true(vuf_device_is_frontend(f.dev));
    /* The driver's acks accumulate and are masked by what is offered. */
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX | F_VERSION_1), 0);
    assert_int_equal(vuf_device_ack_features(f.dev, BIT(63)), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_PROTO | F_EVENT_IDX | BIT(63));
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

static void test_packed_ring_stripped(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1 | F_EVENT_IDX | F_PACKED);

    (void)state;
    fx_begin(&f);
    f.be.features = ~0ull;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_features(f.dev),
                     VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | F_VERSION_1 | F_EVENT_IDX | F_PROTO);
    assert_int_equal(vuf_device_num_queues(f.dev), 1);
    fx_end(&f);
}

static void test_no_protocol_features(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    (void)state;
    fx_begin(&f);
    f.be.features = F_EVENT_IDX | F_VERSION_1;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES));
    assert_int_equal(vuf_frontend_protocol_features(f.dev), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), 0);

    /* Without bit 30: no SET_VRING_ENABLE, and SET_FEATURES is still sent
     * once even though the driver acked nothing (crosvm would skip it). */
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), R(SET_VRING_NUM),
               R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL), R(SET_VRING_KICK),
               R(SET_VRING_NUM), R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL),
               R(SET_VRING_KICK));
    assert_int_equal(f.be.acked, 0);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(GET_VRING_BASE), R(GET_VRING_BASE));
    /* No REPLY_ACK negotiated: no NEED_REPLY anywhere. */
    for (unsigned i = 0; i < f.mark; i++)
        assert_false(be_rec(&f.be, i).flags & VUF_FLAG_NEED_REPLY);
    fx_end(&f);
}

static void test_queue_max_size(void **state)
{
    static const struct {
        uint16_t in, out;
    } cases[] = {{300, 256}, {0, 32768},     {1, 1},        {256, 256},
                 {255, 128}, {32768, 32768}, {65535, 32768}};

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);

        fx_begin(&f);
        cfg.max_queue_size = cases[i].in;
        assert_int_equal(fx_new(&f, &cfg), 0);
        assert_int_equal(vuf_device_num_queues(f.dev), 3);
        for (unsigned q = 0; q < 3; q++)
            assert_int_equal(vuf_device_queue_max_sizes(f.dev)[q], cases[i].out);
        fx_end(&f);
    }
}

static void test_backend_req_and_mq(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, F_VERSION_1);

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(MQ);
    f.be.queue_num = 4;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD), R(GET_QUEUE_NUM));
    assert_int_equal(vuf_device_num_queues(f.dev), 4);
    /* REPLY_ACK is in force after SET_PROTOCOL_FEATURES: our own ack-type
     * requests ask for one. */
    assert_false(be_rec(&f.be, 3).flags & VUF_FLAG_NEED_REPLY);
    assert_true(be_rec(&f.be, 4).flags & VUF_FLAG_NEED_REPLY);
    /* The back-end got a working channel. */
    assert_true(f.be.breq_fd >= 0);
    fx_end(&f);
}

static void test_queue_num_bounds(void **state)
{
    static const struct {
        uint64_t n;
        int r;
    } cases[] = {{0, -EPROTO},
                 {100000, -EPROTO},
                 {VUF_FRONTEND_MAX_QUEUES + 1, -EPROTO},
                 {VUF_FRONTEND_MAX_QUEUES, 0},
                 {1, 0}};

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = cases[i].n;
        assert_int_equal(fx_new(&f, &cfg), cases[i].r);
        if (cases[i].r == 0)
            assert_int_equal(vuf_device_num_queues(f.dev), cases[i].n);
        else
            assert_null(f.dev);
        fx_end(&f);
    }
}

/* Lines of the library log that report a clamped net queue-pair count. */
static atomic_int clamp_lines;

static void count_clamp_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    if (strstr(msg, "queue pairs; using"))
        atomic_fetch_add(&clamp_lines, 1);
}

static void quiet_log(void *opaque, enum vuf_log_level level, const char *msg);

/*
 * Net with MQ: GET_QUEUE_NUM counts queue pairs. The device has 2 queues
 * per pair, plus the control queue when the back-end offers CTRL_VQ; an
 * answer that does not fit VUF_FRONTEND_MAX_QUEUES is clamped (logged),
 * not refused (DPDK 22.11 answers 128 and offers CTRL_VQ); 0 is refused.
 */
static void test_net_queue_pairs(void **state)
{
    static const struct {
        uint64_t pairs;
        bool ctrl;
        int r;
        unsigned queues;
        bool clamped;
    } cases[] = {
        {1, false, 0, 2, false},       {1, true, 0, 3, false},       {4, false, 0, 8, false},
        {4, true, 0, 9, false},        {127, true, 0, 255, false},   {128, false, 0, 256, false},
        {128, true, 0, 255, true}, /* DPDK 22.11's answer */
        {129, false, 0, 256, true},    {100000, true, 0, 255, true}, {~0ull, false, 0, 256, true},
        {0, false, -EPROTO, 0, false}, {0, true, -EPROTO, 0, false},
    };
    const uint64_t ctrl_vq = BIT(17); /* VIRTIO_NET_F_CTRL_VQ */

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, F_VERSION_1);
        const uint16_t *sizes;

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = cases[i].pairs;
        if (cases[i].ctrl)
            f.be.features |= ctrl_vq;
        atomic_store(&clamp_lines, 0);
        vuf_log_set(count_clamp_log, NULL, VUF_LOG_DEBUG);
        assert_int_equal(fx_new(&f, &cfg), cases[i].r);
        vuf_log_set(getenv("VUF_LOG") ? NULL : quiet_log, NULL,
                    getenv("VUF_LOG") ? VUF_LOG_DEBUG : VUF_LOG_ERROR);
        print_message("%llu pairs, CTRL_VQ %s: %d, %u queues\n", (unsigned long long)cases[i].pairs,
                      cases[i].ctrl ? "on" : "off", cases[i].r,
                      f.dev ? vuf_device_num_queues(f.dev) : 0);
        if (cases[i].r == 0) {
            assert_int_equal(vuf_device_num_queues(f.dev), cases[i].queues);
            assert_true(vuf_device_num_queues(f.dev) <= VUF_FRONTEND_MAX_QUEUES);
            /* CTRL_VQ is passed to the driver as offered. */
            assert_int_equal(vuf_device_features(f.dev) & ctrl_vq, cases[i].ctrl ? ctrl_vq : 0);
            /* One max size per queue, the last one included. */
            sizes = vuf_device_queue_max_sizes(f.dev);
            assert_int_equal(sizes[cases[i].queues - 1], 32768);
        } else {
            assert_null(f.dev);
        }
        assert_int_equal(atomic_load(&clamp_lines), cases[i].clamped ? 1 : 0);
        fx_end(&f);
    }

    /* Other device types still count queues: 4 is 4 (fs) ... */
    {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_FS, 0);

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(MQ);
        f.be.queue_num = 4;
        f.be.features |= ctrl_vq; /* a device-specific bit of another meaning */
        assert_int_equal(fx_new(&f, &cfg), 0);
        assert_int_equal(vuf_device_num_queues(f.dev), 4);
        fx_end(&f);
    }
    /* ... and without MQ, net keeps crosvm's rx, tx, ctrl. */
    {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_NET, 0);

        fx_begin(&f);
        f.be.queue_num = 64; /* not asked */
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        assert_int_equal(vuf_device_num_queues(f.dev), 3);
        fx_end(&f);
    }
}

static void test_new_errors(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(0x7777, 0);

    (void)state;
    /* Unknown device type without MQ: no queue count. */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), -ENOTSUP);
    fx_end(&f);

    /* Unknown type with MQ is fine. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(MQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_string_equal(vuf_device_label(f.dev), "vu-30583");
    fx_end(&f);

    /* The back-end is gone before we start. */
    fx_begin(&f);
    be_kill(&f.be);
    cfg = fx_cfg(VUF_DEV_BLK, 0);
    assert_true(fx_new(&f, &cfg) < 0);
    fx_end(&f);

    /* Bad arguments. */
    assert_int_equal(vuf_frontend_new(NULL, NULL, NULL), -EINVAL);
}

/* ------------------------------------------------------------------------ */
/* crosvm's lifecycle test                                                  */
/* ------------------------------------------------------------------------ */

static void config_change_ok(struct fx *f)
{
    uint64_t ack = 1;
    int before = atomic_load(&f->intr.config_calls);

    assert_int_equal(vuf_breq_config_change(be_breq(&f->be), true, &ack), 0);
    assert_int_equal(ack, 0);
    assert_int_equal(atomic_load(&f->intr.config_calls), before + 1);
}

static void lifecycle(bool with_backend_req)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    uint8_t buf[12];
    uint8_t *snap = NULL;
    size_t snap_len = 0;

    fx_begin(&f);
    if (with_backend_req)
        f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    if (with_backend_req)
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD));
    else
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES));

    /* read_config */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, sizeof(buf)), 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));
    assert_memory_equal(buf, f.be.config, sizeof(buf));

    /* activate */
    fx_queues(&f, 2);
    vuf_device_ack_features(f.dev, F_EVENT_IDX);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_EVENT_IDX);
    assert_int_equal(f.be.mem_regions, 1);
    assert_int_equal(be_rec(&f.be, f.mark - 1).b, 1); /* ENABLE(1) */
    assert_true(vuf_frontend_is_active(f.dev));
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EBUSY);
    /* Each started ring got one kick after its set-up. */
    for (unsigned i = 0; i < 2; i++) {
        uint64_t kicks = 0;

        assert_int_equal(read(f.q[i].kick_fd, &kicks, sizeof(kicks)), (ssize_t)sizeof(kicks));
        assert_int_equal(kicks, 1);
    }
    /* The back-end state is only defined with the rings stopped. */
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &snap_len), -EBUSY);
    assert_null(snap);
    expect_none(&f.be, &f.mark);

    /* reset */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(be_rec(&f.be, f.mark - 4).b, 0); /* ENABLE(0) */
    assert_int_equal(be_rec(&f.be, f.mark - 4).a, 0);
    assert_int_equal(be_rec(&f.be, f.mark - 2).a, 1);
    assert_false(vuf_frontend_is_active(f.dev));

    /* re-activate: no SET_FEATURES */
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    if (with_backend_req)
        config_change_ok(&f);

    /* sleep: the queues come back, reclaimed */
    tu_set_used_idx(f.mem, &f.q[0], 5);
    tu_set_used_idx(f.mem, &f.q[1], 6);
    f.be.vring_base = 9;
    struct vuf_queue back[MAX_Q];
    memcpy(back, f.q, sizeof(back));
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(back[0].next_avail, 9);
    assert_int_equal(back[0].next_used, 5);
    assert_int_equal(back[1].next_avail, 9);
    assert_int_equal(back[1].next_used, 6);
    assert_int_equal(back[0].kick_fd, f.q[0].kick_fd);
    /* asleep: a second sleep is a no-op */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 0);
    expect_none(&f.be, &f.mark);

    /* snapshot */
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &snap_len), 0);
    expect_seq(&f.be, &f.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_true(snap_len > f.be.state_len);

    /* wake: activate with the reclaimed queues */
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.set_base[0], 9);
    assert_int_equal(f.be.set_base[1], 9);
    if (with_backend_req)
        config_change_ok(&f);
    /* wake(None) */
    assert_int_equal(vuf_device_wake(f.dev, NULL, NULL, NULL, 0), 0);
    expect_none(&f.be, &f.mark);

    /* Dropping the front-end: the back-end sees a hang-up, and the device
     * did not report its own destruction as a crash. */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    {
        int64_t until = tu_now_ms() + 1000;

        while (f.be.running && tu_now_ms() < until) {
            if (pthread_tryjoin_np(f.be.thread, NULL) == 0)
                f.be.running = false;
            else
                tu_sleep_ms(1);
        }
        assert_false(f.be.running); /* the server loop ended on ECONNRESET */
    }
    assert_int_equal(atomic_load(&crashes), 0);

    /* restore on a fresh connection */
    fx_begin(&g);
    if (with_backend_req)
        g.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&g, &cfg), 0);
    if (with_backend_req)
        expect_seq(&g.be, &g.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_BACKEND_REQ_FD));
    else
        expect_seq(&g.be, &g.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES));
    /* sleep before any activation: nothing to hand back */
    assert_int_equal(vuf_device_sleep(g.dev, back, f.nq), 0);
    expect_none(&g.be, &g.mark);
    assert_int_equal(vuf_device_restore(g.dev, snap, snap_len), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_int_equal(g.be.acked, F_PROTO | F_EVENT_IDX);
    assert_int_equal(g.be.loaded_len, f.be.state_len);
    assert_memory_equal(g.be.loaded, f.be.state, f.be.state_len);
    assert_int_equal(vuf_device_wake(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(g.be.set_base[0], 9);
    if (with_backend_req) {
        uint64_t ack = 1;

        assert_int_equal(vuf_breq_config_change(be_breq(&g.be), true, &ack), 0);
        assert_int_equal(atomic_load(&f.intr.config_calls), 3);
    }
    free(snap);
    fx_end(&g);
    fx_end(&f);
}

static void test_lifecycle(void **state)
{
    (void)state;
    lifecycle(false);
}

static void test_lifecycle_with_backend_req(void **state)
{
    (void)state;
    lifecycle(true);
}

/* ------------------------------------------------------------------------ */
/* Queues                                                                   */
/* ------------------------------------------------------------------------ */

static void test_vring_base_too_big(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue back[MAX_Q];

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    f.be.vring_base = 0x10000;
    assert_int_equal(vuf_device_reset(f.dev), -EPROTO);
    /* Both queues were still stopped, the worker is gone, the device is
     * inactive and can start again. */
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1); /* the back-end's only */
    f.be.vring_base = 3;
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);

    /* The same on sleep: the queues still come back (used->idx fallback). */
    tu_set_used_idx(f.mem, &f.q[0], 4);
    tu_set_used_idx(f.mem, &f.q[1], 4);
    f.be.vring_base = 0x10000;
    memcpy(back, f.q, sizeof(back));
    back[0].next_avail = back[1].next_avail = 1;
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), -EPROTO);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(back[0].next_avail, 4);
    assert_int_equal(back[0].next_used, 4);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1);
    fx_end(&f);
}

static void test_activate_checks(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue bad[MAX_Q];

    (void)state;
    fx_begin(&f);
    cfg.max_queue_size = 64;
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    expect_new(&f);

    memcpy(bad, f.q, sizeof(bad));
    bad[1].size = 12; /* not a power of two */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EINVAL);
    memcpy(bad, f.q, sizeof(bad));
    bad[1].size = 128; /* above the max */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EINVAL);
    memcpy(bad, f.q, sizeof(bad));
    bad[0].used_addr = 0x100000 + (1 << 20) - 8; /* runs off guest memory */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EFAULT);
    memcpy(bad, f.q, sizeof(bad));
    bad[0].desc_addr = 0x10; /* not in guest memory */
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), -EFAULT);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, 3), -EINVAL);
    assert_int_equal(vuf_device_activate(f.dev, NULL, &f.vi, f.q, 2), -EINVAL);
    /* Nothing was sent. */
    expect_none(&f.be, &f.mark);

    /* Only ready queues are sent. */
    memcpy(bad, f.q, sizeof(bad));
    bad[0].ready = false;
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, bad, 2), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(be_rec(&f.be, f.mark - 1).a, 1);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    /* Reset when inactive sends nothing. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

static void test_activate_nack_rolls_back(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    expect_new(&f);
    /* With REPLY_ACK the back-end can refuse queue 1's kick fd. */
    f.be.nack_code = VUF_REQ_SET_VRING_KICK;
    f.be.nack_skip = 1;
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EIO);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, R(SET_VRING_NUM),
               R(SET_VRING_ADDR), R(SET_VRING_BASE), R(SET_VRING_CALL), R(SET_VRING_KICK),
               /* rolled back: both rings stopped again */
               SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0 + 1), f.threads0 + 1);
    f.be.nack_code = 0;
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    fx_end(&f);
}

static void test_need_reply_option(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    for (int crosvm = 0; crosvm < 2; crosvm++) {
        fx_begin(&f);
        cfg.crosvm_no_need_reply = crosvm;
        assert_int_equal(fx_new(&f, &cfg), 0);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE,
                   SEQ_QUEUE);
        for (unsigned i = 4; i < f.mark; i++)
            assert_int_equal(!!(be_rec(&f.be, i).flags & VUF_FLAG_NEED_REPLY), !crosvm);
        fx_end(&f);
    }
}

static void test_interrupts(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint64_t one = 1, v = 0;
    int64_t until;

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    /* Queue 0 has no vector: the shared eventfd -> signal_used_queue(NO_VECTOR). */
    assert_int_equal(write(f.be.call_fd[0], &one, 8), 8);
    until = tu_now_ms() + 1000;
    while (atomic_load(&f.intr.used_calls) == 0 && tu_now_ms() < until)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&f.intr.used_calls), 1);
    assert_int_equal(atomic_load(&f.intr.last_vector), VUF_NO_VECTOR);
    /* Queue 1's call fd is the irqfd of vector 1: straight to the VMM. */
    assert_int_equal(write(f.be.call_fd[1], &one, 8), 8);
    assert_int_equal(read(f.intr.irqfd1, &v, 8), 8);
    assert_int_equal(v, 1);
    tu_sleep_ms(20);
    assert_int_equal(atomic_load(&f.intr.used_calls), 1);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Config space                                                             */
/* ------------------------------------------------------------------------ */

static void test_config(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint8_t buf[300], w[4] = {9, 8, 7, 6};

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);

    assert_int_equal(vuf_device_write_config(f.dev, 4, w, sizeof(w)), 0);
    expect_seq(&f.be, &f.mark, R(SET_CONFIG));
    assert_memory_equal(f.be.config + 4, w, 4);

    /* A reply for another offset is refused; the buffer is untouched. */
    memset(buf, 0xee, sizeof(buf));
    f.be.config_bad_offset = true;
    assert_int_equal(vuf_device_read_config(f.dev, 2, buf, 8), -EPROTO);
    for (unsigned i = 0; i < 8; i++)
        assert_int_equal(buf[i], 0xee);
    f.be.config_bad_offset = false;
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));

    /* The back-end refuses (empty reply): an error, not a crash. */
    assert_true(vuf_device_read_config(f.dev, 510, buf, 10) < 0);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG));

    /* Over 256 bytes: split into two requests. */
    f.be.config[0] = 0x42;
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 300), 0);
    assert_memory_equal(buf, f.be.config, 300);
    expect_seq(&f.be, &f.mark, R(GET_CONFIG), R(GET_CONFIG));
    assert_int_equal(be_rec(&f.be, f.mark - 1).a, 256);
    assert_int_equal(be_rec(&f.be, f.mark - 1).b, 44);
    assert_int_equal(vuf_device_read_config(f.dev, 0x1000, buf, 4), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 1ull << 40, buf, 4), -EINVAL);
    assert_int_equal(vuf_device_read_config(f.dev, 0, buf, 0), 0);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Shared memory                                                            */
/* ------------------------------------------------------------------------ */

#define REGION_LEN (1ull << 20)

static void fx_shm_device(struct fx *f, uint8_t shmid)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    struct vuf_shm_mapper m = {&tmap_ops, &f->map};
    struct vuf_shm_region reg;

    f->be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(SHMEM);
    f->be.shm.nregions = 1;
    f->be.shm.memory_sizes[shmid] = REGION_LEN;
    assert_int_equal(fx_new(f, &cfg), 0);
    expect_new(f);
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.id, shmid);
    assert_int_equal(reg.length, REGION_LEN);
    expect_seq(&f->be, &f->mark, R(GET_SHMEM_CONFIG));
    /* Cached: asked once. */
    memset(&reg, 0, sizeof(reg));
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.id, shmid);
    assert_int_equal(vuf_device_set_shm_mapper(f->dev, &m), 0);
    expect_none(&f->be, &f->mark);
    fx_queues(f, 2);
    fx_activate_ok(f);
}

static int map(struct fx *f, int fd, uint8_t shmid, uint64_t off, uint64_t len, uint64_t fd_off,
               bool rw)
{
    struct vuf_shmem_map m = {.shmid = shmid,
                              .fd_offset = fd_off,
                              .shm_offset = off,
                              .len = len,
                              .flags = rw ? VUF_SHMEM_MAP_RW : 0};
    uint64_t ack = 0;
    int r = vuf_breq_shmem_map(be_breq(&f->be), &m, fd, true, &ack);

    return r == 0 ? 0 : (r == -EIO ? (int)(int64_t)ack : r);
}

static int unmap(struct fx *f, uint8_t shmid, uint64_t off, uint64_t len)
{
    struct vuf_shmem_map m = {.shmid = shmid, .shm_offset = off, .len = len};
    uint64_t ack = 0;
    int r = vuf_breq_shmem_unmap(be_breq(&f->be), &m, true, &ack);

    return r == 0 ? 0 : (r == -EIO ? (int)(int64_t)ack : r);
}

/* Send a raw SHMEM_MAP the back-end library would refuse to build, and
 * return the front-end's ack. */
static int64_t raw_map(struct fx *f, int fd, const struct vuf_shmem_map *m)
{
    struct vuf_conn *c = be_breq(&f->be);
    struct vuf_msg msg, reply;

    assert_int_equal(vuf_msg_init(&msg, VUF_BREQ_SHMEM_MAP, VUF_FLAG_NEED_REPLY, m, sizeof(*m)), 0);
    msg.fds[0] = fd;
    msg.nfds = 1;
    assert_int_equal(vuf_conn_send(c, &msg), 0);
    assert_int_equal(vuf_conn_recv(c, &reply), 0);
    assert_int_equal(reply.hdr.request, VUF_BREQ_SHMEM_MAP);
    assert_int_equal(reply.hdr.size, 8);
    vuf_msg_close_fds(&reply);
    return (int64_t)reply.payload.u64;
}

static void test_shmem_map(void **state)
{
    struct fx f;
    struct vuf_shmem_map raw;
    int fd;

    (void)state;
    fx_begin(&f);
    fx_shm_device(&f, 2);
    fd = memfd_create("shm", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);

    /* A good map reaches the mapper. */
    assert_int_equal(map(&f, fd, 2, 0x1000, 0x2000, 0x3000, true), 0);
    assert_int_equal(f.map.adds, 1);
    assert_int_equal(f.map.m[0].off, 0x1000);
    assert_int_equal(f.map.m[0].len, 0x2000);
    assert_int_equal(f.map.m[0].fd_off, 0x3000);
    assert_int_equal(f.map.m[0].prot, PROT_READ | PROT_WRITE);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Bad maps get an error ack and change nothing. */
    assert_int_equal(map(&f, fd, 1, 0x10000, 0x1000, 0, true), -EINVAL); /* shmid */
    assert_int_equal(map(&f, fd, 2, REGION_LEN - 0x1000, 0x2000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, REGION_LEN, 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, 0, REGION_LEN + 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, UINT64_MAX - 0x1fff, 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, 0x2000, 0x1000, 0, true), -EEXIST);  /* inside */
    assert_int_equal(map(&f, fd, 2, 0x0, 0x2000, 0, true), -EEXIST);     /* head */
    assert_int_equal(map(&f, fd, 2, 0x2fff, 0x1000, 0, true), -EEXIST);  /* tail */
    assert_int_equal(map(&f, fd, 2, 0x0, REGION_LEN, 0, true), -EEXIST); /* around */
    memset(&raw, 0, sizeof(raw));
    raw.shmid = 2;
    raw.shm_offset = UINT64_MAX - 0x10; /* shm_offset + len overflows */
    raw.len = 0x1000;
    assert_true(raw_map(&f, fd, &raw) < 0);
    raw.shm_offset = 0x100000 - 0x1000;
    raw.fd_offset = UINT64_MAX - 0x10; /* fd_offset + len overflows */
    assert_true(raw_map(&f, fd, &raw) < 0);
    raw.fd_offset = 0;
    raw.len = 0; /* empty */
    assert_true(raw_map(&f, fd, &raw) < 0);
    assert_int_equal(f.map.adds, 1);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Adjacent is fine; the worker went on after all those refusals. */
    assert_int_equal(map(&f, fd, 2, 0x3000, 0x1000, 0, false), 0);
    assert_int_equal(f.map.m[1].prot, PROT_READ);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 2);
    /* A failing mapper is an error ack too. */
    f.map.fail_add = ENOMEM;
    assert_int_equal(map(&f, fd, 2, 0x8000, 0x1000, 0, true), -ENOMEM);
    f.map.fail_add = 0;
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 2);

    /* Unmap must match one mapping exactly. */
    assert_int_equal(unmap(&f, 2, 0x1000, 0x1000), -ENOENT);
    assert_int_equal(unmap(&f, 2, 0x2000, 0x1000), -ENOENT);
    assert_int_equal(unmap(&f, 3, 0x1000, 0x2000), -EINVAL);
    assert_int_equal(f.map.removes, 0);
    assert_int_equal(unmap(&f, 2, 0x1000, 0x2000), 0);
    assert_int_equal(f.map.removes, 1);
    assert_int_equal(tm_live(&f.map), 1);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Reset removes every mapping that is left. */
    assert_int_equal(map(&f, fd, 2, 0x10000, 0x1000, 0, true), 0);
    assert_int_equal(tm_live(&f.map), 2);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_int_equal(tm_live(&f.map), 0);
    assert_int_equal(f.map.removes, 3);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 0);

    /* The channel survives reset: map again after re-activation. */
    fx_activate_ok(&f);
    assert_int_equal(map(&f, fd, 2, 0x1000, 0x2000, 0, true), 0);
    assert_int_equal(tm_live(&f.map), 1);
    close(fd);
    /* destroy removes the rest and releases the mapper */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    assert_int_equal(tm_live(&f.map), 0);
    assert_int_equal(f.map.releases, 1);
    fx_end(&f);
}

static void test_shmem_region_cases(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    struct vuf_shm_mapper m = {&tmap_ops, &f.map};
    struct vuf_shm_region reg;

    (void)state;
    /* No SHMEM: no region, no message; no BACKEND_REQ: no mapper. */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENOTSUP);
    expect_none(&f.be, &f.mark);
    fx_end(&f);

    /* Two regions: an error, cached. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ);
    f.be.shm.nregions = 2;
    f.be.shm.memory_sizes[0] = 4096;
    f.be.shm.memory_sizes[5] = 8192;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), -ENOTSUP);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), -ENOTSUP);
    expect_seq(&f.be, &f.mark, R(GET_SHMEM_CONFIG));
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENOTSUP);
    fx_end(&f);

    /* No region: cached "none"; a mapper has nothing to map. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    expect_seq(&f.be, &f.mark, R(GET_SHMEM_CONFIG));
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENODEV);
    fx_end(&f);
}

static void test_map_before_mapper(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    int fd;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(SHMEM);
    f.be.shm.nregions = 1;
    f.be.shm.memory_sizes[0] = REGION_LEN;
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    fd = memfd_create("shm", MFD_CLOEXEC);
    assert_true(fd >= 0);
    /* No mapper yet (and the region was never asked for): refused, and the
     * device lives on. */
    assert_int_equal(map(&f, fd, 0, 0, 0x1000, 0, true), -ENODEV);
    config_change_ok(&f);
    close(fd);
    /* Unknown back-end requests are refused without killing anything. */
    {
        uint8_t uuid[16] = {0};
        uint64_t ack = 0;

        assert_int_equal(vuf_breq_send(be_breq(&f.be), VUF_BREQ_SHARED_OBJECT_ADD, uuid,
                                       sizeof(uuid), NULL, 0, true, &ack),
                         -EIO);
        assert_true(ack != 0);
    }
    config_change_ok(&f);
    assert_int_equal(atomic_load(&crashes), 0);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Snapshot / restore edge cases                                            */
/* ------------------------------------------------------------------------ */

static void test_snapshot_variants(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    uint8_t *snap = NULL;
    size_t len = 0;
    int64_t t0;

    (void)state;
    /* The back-end hands us its own fd to read from; a big state. */
    fx_begin(&f);
    f.be.save_mode = SAVE_OWN_FD;
    f.be.state_len = sizeof(f.be.state);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), 0);
    expect_seq(&f.be, &f.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));

    /* Restore onto a back-end that lacks an acked feature: refused. */
    fx_begin(&g);
    g.be.features = F_PROTO;
    assert_int_equal(fx_new(&g, &cfg), 0);
    vuf_device_ack_features(f.dev, BIT(0));
    free(snap);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_restore(g.dev, snap, len), -ENOTSUP);
    /* A damaged blob. */
    snap[0] ^= 1;
    assert_int_equal(vuf_device_restore(g.dev, snap, len), -EINVAL);
    snap[0] ^= 1;
    assert_int_equal(vuf_device_restore(g.dev, snap, len - 1), -EINVAL);
    assert_int_equal(vuf_device_restore(g.dev, snap, 3), -EINVAL);
    expect_none(&g.be, &g.mark);
    fx_end(&g);

    /* A back-end that rejects the loaded state: the restore fails and the
     * acked features stay as they were (SET_FEATURES went out, so the next
     * activation sends the old set again). */
    fx_begin(&g);
    g.be.check_status = 1;
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    {
        uint64_t before = vuf_frontend_acked_features(g.dev);

        assert_int_equal(vuf_device_restore(g.dev, snap, len), -EIO);
        expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
        assert_int_equal(vuf_frontend_acked_features(g.dev), before);
    }
    fx_end(&g);

    /* A matching back-end takes the big state. */
    fx_begin(&g);
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_restore(g.dev, snap, len), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    assert_int_equal(g.be.acked, F_PROTO | BIT(0));
    assert_int_equal(g.be.loaded_len, sizeof(f.be.state));
    assert_memory_equal(g.be.loaded, f.be.state, sizeof(f.be.state));
    /* A second restore with the same features: no SET_FEATURES. */
    assert_int_equal(vuf_device_restore(g.dev, snap, len), 0);
    expect_seq(&g.be, &g.mark, R(SET_DEVICE_STATE_FD), R(CHECK_DEVICE_STATE));
    fx_end(&g);
    free(snap);
    snap = NULL;

    /* Larger than allowed. */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    fx_end(&f);
    fx_begin(&f);
    cfg.max_state_size = 1000;
    f.be.state_len = 2000;
    assert_int_equal(fx_new(&f, &cfg), 0);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -EFBIG);
    assert_null(snap);
    fx_end(&f);

    /* A silent back-end: bounded by the timeout. */
    fx_begin(&f);
    cfg.max_state_size = 0;
    cfg.state_timeout_ms = 200;
    f.be.save_mode = SAVE_SILENT;
    assert_int_equal(fx_new(&f, &cfg), 0);
    t0 = tu_now_ms();
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -ETIMEDOUT);
    assert_true(tu_now_ms() - t0 < 2000);
    fx_end(&f);

    /* No DEVICE_STATE. */
    fx_begin(&f);
    f.be.protocol_features = VUF_PROTO_MASK(CONFIG);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_snapshot(f.dev, &snap, &len), -ENOTSUP);
    assert_int_equal(vuf_device_restore(f.dev, (const uint8_t *)"x", 1), -ENOTSUP);
    expect_none(&f.be, &f.mark);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Crash                                                                    */
/* ------------------------------------------------------------------------ */

static void test_backend_crash(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);
    struct vuf_queue back[MAX_Q];
    int64_t t0;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    tu_set_used_idx(f.mem, &f.q[0], 11);
    tu_set_used_idx(f.mem, &f.q[1], 12);

    t0 = tu_now_ms();
    be_kill(&f.be);
    while (atomic_load(&crashes) == 0 && tu_now_ms() - t0 < 1000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), 1);
    assert_true(tu_now_ms() - t0 < 1000);
    tu_sleep_ms(20);
    assert_int_equal(atomic_load(&crashes), 1); /* once */

    /* Sleep fails fast but still hands the queues back (used->idx). */
    memcpy(back, f.q, sizeof(back));
    assert_true(vuf_device_sleep(f.dev, back, f.nq) < 0);
    assert_int_equal(back[0].next_avail, 11);
    assert_int_equal(back[1].next_avail, 12);
    assert_false(vuf_frontend_is_active(f.dev));
    /* Activation against a dead back-end fails cleanly. */
    assert_true(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq) < 0);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_true(vuf_device_reset(f.dev) == 0);
    fx_end(&f); /* fds and threads back to where they were */
}

static void test_crash_during_reset_path(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_BLK, 0);

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 1);
    fx_activate_ok(&f);
    be_kill(&f.be);
    /* reset reports the dead back-end, stops the worker anyway. */
    assert_true(vuf_device_reset(f.dev) < 0);
    assert_false(vuf_frontend_is_active(f.dev));
    assert_int_equal(tu_threads_settle(f.threads0), f.threads0);
    fx_end(&f);
}

/*
 * Reconnect (docs/reconnect.md): after a crash, sleep hands the queues back
 * resynced from used->idx; they start the rings of a NEW front-end on a
 * new back-end as they are: SET_FEATURES carries the re-acked features and
 * SET_VRING_BASE the used index.
 */
static void test_reconnect_new_backend(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    struct vuf_queue back[MAX_Q];
    uint64_t acked;
    int64_t t0;

    (void)state;
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 2);
    assert_int_equal(vuf_device_ack_features(f.dev, F_EVENT_IDX), 0);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    tu_set_used_idx(f.mem, &f.q[0], 7);
    tu_set_used_idx(f.mem, &f.q[1], 0xfffe);

    t0 = tu_now_ms();
    be_kill(&f.be);
    while (atomic_load(&crashes) == 0 && tu_now_ms() - t0 < 1000)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&crashes), 1);
    memcpy(back, f.q, sizeof(back));
    back[0].next_avail = back[1].next_avail = 1;
    {
        int r = vuf_device_sleep(f.dev, back, f.nq);

        assert_true(r < 0);
        assert_int_not_equal(r, -EINVAL); /* the queues came back */
    }
    assert_int_equal(back[0].next_avail, 7);
    assert_int_equal(back[0].next_used, 7);
    assert_int_equal(back[1].next_avail, 0xfffe);
    assert_int_equal(back[1].next_used, 0xfffe);
    assert_int_equal(back[1].used_addr, f.q[1].used_addr);
    assert_int_equal(back[1].kick_fd, f.q[1].kick_fd);
    acked = vuf_frontend_acked_features(f.dev);
    assert_int_equal(acked, F_PROTO | F_EVENT_IDX);
    vuf_device_destroy(f.dev);
    f.dev = NULL;

    /* The restarted back-end: a new connection, a new device. */
    fx_begin(&g);
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    assert_int_equal(vuf_device_features(g.dev) & acked, acked);
    assert_int_equal(vuf_device_ack_features(g.dev, acked), 0);
    assert_int_equal(vuf_frontend_acked_features(g.dev), acked);
    assert_int_equal(vuf_device_wake(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(g.be.acked, acked);
    assert_int_equal(g.be.set_base[0], 7);
    assert_int_equal(g.be.set_base[1], 0xfffe);
    assert_true(vuf_frontend_is_active(g.dev));
    assert_int_equal(atomic_load(&crashes), 0); /* fx_begin(&g) cleared it; none since */
    fx_end(&g);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Dirty logging                                                            */
/* ------------------------------------------------------------------------ */

#define F_LOG_ALL BIT(VUF_VHOST_F_LOG_ALL)

/* The back-end logs `page` as libvhost-user does (atomic byte OR). */
static void be_log_page(struct be *be, uint64_t page)
{
    assert_non_null(be->log);
    assert_true(page / 8 < be->log_size);
    __atomic_fetch_or(&be->log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_SEQ_CST);
}

/* Request `back` records ago, counted from the end. */
static struct rec be_rec_back(struct be *be, unsigned mark, unsigned back)
{
    return be_rec(be, mark - back);
}

struct pages {
    uint64_t p[16];
    unsigned n;
    unsigned stop_after; /* 0: never */
};

static int collect(void *opaque, uint64_t page)
{
    struct pages *ps = opaque;

    if (ps->n < 16)
        ps->p[ps->n] = page;
    ps->n++;
    return ps->stop_after && ps->n == ps->stop_after ? 7 : 0;
}

static void test_dirty_log(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX | F_LOG_ALL);
    struct vuf_queue back[MAX_Q];
    uint8_t bm[80];
    uint64_t n = 99;
    struct pages ps;
    /* Guest memory is [0x100000, 0x200000): 512 pages from GPA 0 = 64 bytes. */
    const size_t log_bytes = 64;
    const uint64_t dirty[] = {0x100, 0x137, 0x1ff};

    (void)state;
    cfg.dirty_log = true;
    fx_begin(&f);
    f.be.features |= F_LOG_ALL;
    f.be.protocol_features |= VUF_PROTO_MASK(LOG_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(LOG_SHMFD));
    /* LOG_ALL is never offered to the driver, even when base asks for it. */
    assert_int_equal(vuf_device_features(f.dev) & F_LOG_ALL, 0);
    assert_int_equal(vuf_device_ack_features(f.dev, F_LOG_ALL | F_EVENT_IDX), 0);
    assert_int_equal(vuf_frontend_acked_features(f.dev), F_PROTO | F_EVENT_IDX);

    /* Not active: nothing to size the log by. */
    assert_int_equal(vuf_frontend_log_start(f.dev), -EINVAL);
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, NULL), -EINVAL);
    assert_int_equal(vuf_frontend_log_stop(f.dev), -EINVAL);
    assert_false(vuf_frontend_log_is_active(f.dev));
    expect_none(&f.be, &f.mark);

    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.addr[0].flags, 0);

    /* start: SET_LOG_BASE + fd, SET_FEATURES | LOG_ALL, SET_VRING_ADDR with
     * LOG and the used ring's GPA per started ring, each acked. */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    assert_int_equal(vuf_frontend_log_start(f.dev), -EALREADY);
    assert_true(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_bytes(f.dev), log_bytes);
    assert_int_equal(be_rec_back(&f.be, f.mark, 4).u64, log_bytes);
    assert_int_equal(f.be.log_nfds, 1);
    assert_int_equal(f.be.log_size, log_bytes);
    assert_int_equal(be_rec_back(&f.be, f.mark, 3).u64, F_PROTO | F_EVENT_IDX | F_LOG_ALL);
    assert_int_equal(f.be.acked, F_PROTO | F_EVENT_IDX | F_LOG_ALL);
    assert_true(be_rec_back(&f.be, f.mark, 3).flags & VUF_FLAG_NEED_REPLY);
    for (unsigned i = 0; i < 2; i++) {
        assert_true(be_rec_back(&f.be, f.mark, 2 - i).flags & VUF_FLAG_NEED_REPLY);
        assert_int_equal(f.be.addr[i].flags, VUF_VRING_F_LOG);
        assert_int_equal(f.be.addr[i].log, f.q[i].used_addr);
        assert_int_equal(f.be.addr[i].used,
                         (uint64_t)(uintptr_t)vuf_guest_mem_to_host(f.mem, f.q[i].used_addr, 8));
    }
    /* Nothing logged yet. */
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 0);

    /* The back-end's bits come back exactly, and are cleared. */
    for (unsigned i = 0; i < 3; i++)
        be_log_page(&f.be, dirty[i]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, 8, &n), -ENOSPC);
    memset(bm, 0xee, sizeof(bm));
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 3);
    for (uint64_t p = 0; p < sizeof(bm) * 8; p++) {
        bool want = p == dirty[0] || p == dirty[1] || p == dirty[2];

        assert_int_equal(!!(bm[p / 8] & (1u << (p % 8))), want);
    }
    for (size_t i = 0; i < log_bytes; i++)
        assert_int_equal(f.be.log[i], 0);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 0);

    /* Iterating: ascending page numbers; a stop keeps the rest. */
    for (unsigned i = 0; i < 3; i++)
        be_log_page(&f.be, dirty[2 - i]);
    memset(&ps, 0, sizeof(ps));
    ps.stop_after = 2;
    assert_int_equal(vuf_frontend_log_for_each_dirty(f.dev, collect, &ps), 7);
    assert_int_equal(ps.n, 2);
    assert_int_equal(ps.p[0], dirty[0]);
    assert_int_equal(ps.p[1], dirty[1]);
    memset(&ps, 0, sizeof(ps));
    assert_int_equal(vuf_frontend_log_for_each_dirty(f.dev, collect, &ps), 0);
    assert_int_equal(ps.n, 1);
    assert_int_equal(ps.p[0], dirty[2]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, &n), 0);
    assert_int_equal(n, 0);
    expect_none(&f.be, &f.mark);

    /* sleep keeps logging (nothing sent about it); bits stay syncable. */
    be_log_page(&f.be, dirty[1]);
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_true(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, &n), 0);
    assert_int_equal(n, 1);
    /* wake re-sends the log and the flags (SET_FEATURES is unchanged). */
    memset(f.be.addr, 0, sizeof(f.be.addr));
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.log_bases, 2);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(f.be.addr[i].flags, VUF_VRING_F_LOG);
        assert_int_equal(f.be.addr[i].log, f.q[i].used_addr);
    }
    be_log_page(&f.be, dirty[0]);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(bm[dirty[0] / 8], 1u << (dirty[0] % 8));

    /* Hot-adding memory above the log's end while the rings run grows the
     * log: bits the back-end sets in the old log (before the update, and
     * while it switches to the new one) are all kept. */
    {
        uint8_t big[160];
        const uint64_t at_switch = 0x150, high = 0x480;

        be_log_page(&f.be, dirty[2]);
        f.be.log_page_at_switch = at_switch;
        assert_int_equal(vuf_guest_mem_add_memfd(f.mem, 0x400000, 0x100000), 0);
        assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE));
        /* GPA 0 .. 0x500000: 1280 pages, 160 bytes. */
        assert_int_equal(vuf_frontend_log_bytes(f.dev), 160);
        assert_int_equal(f.be.log_size, 160);
        be_log_page(&f.be, high);
        assert_int_equal(vuf_frontend_log_sync(f.dev, big, sizeof(big), &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(big[dirty[2] / 8], 1u << (dirty[2] % 8));
        assert_int_equal(big[at_switch / 8], 1u << (at_switch % 8));
        assert_int_equal(big[high / 8], 1u << (high % 8));
        /* And back: the log keeps its size, the table shrinks. */
        assert_int_equal(vuf_guest_mem_remove(f.mem, 0x400000), 0);
        assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), R(SET_LOG_BASE));
    }

    /* stop reverses start; the log is gone. */
    assert_int_equal(vuf_frontend_log_stop(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_VRING_ADDR), R(SET_VRING_ADDR));
    assert_int_equal(f.be.acked, F_PROTO | F_EVENT_IDX);
    for (unsigned i = 0; i < 2; i++) {
        assert_int_equal(f.be.addr[i].flags, 0);
        assert_int_equal(f.be.addr[i].log, 0);
    }
    assert_false(vuf_frontend_log_is_active(f.dev));
    assert_int_equal(vuf_frontend_log_bytes(f.dev), 0);
    assert_int_equal(vuf_frontend_log_sync(f.dev, bm, sizeof(bm), &n), -EINVAL);
    assert_int_equal(vuf_frontend_log_stop(f.dev), -EINVAL);

    /* reset ends logging without messages; the next activation's
     * SET_FEATURES drops LOG_ALL and no SET_LOG_BASE goes out. */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_false(vuf_frontend_log_is_active(f.dev));
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.acked, F_PROTO | F_EVENT_IDX);
    assert_int_equal(f.be.addr[0].flags, 0);

    /* Logging at destroy: released with the device (no fd leak). */
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(SET_VRING_ADDR));
    fx_end(&f);
}

/* -ENOTSUP unless cfg.dirty_log, LOG_SHMFD and LOG_ALL all hold. */
static void test_dirty_log_not_supported(void **state)
{
    (void)state;
    for (int c = 0; c < 3; c++) {
        struct fx f;
        struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

        fx_begin(&f);
        cfg.dirty_log = c != 0;
        f.be.features |= c == 1 ? 0 : F_LOG_ALL;
        f.be.protocol_features |= c == 2 ? 0 : VUF_PROTO_MASK(LOG_SHMFD);
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        /* Without cfg.dirty_log, LOG_SHMFD is not negotiated. */
        assert_int_equal(!!(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(LOG_SHMFD)), c == 1);
        assert_int_equal(vuf_device_features(f.dev) & F_LOG_ALL, 0);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_frontend_log_start(f.dev), -ENOTSUP);
        assert_false(vuf_frontend_log_is_active(f.dev));
        assert_int_equal(vuf_frontend_log_sync(f.dev, NULL, 0, NULL), -EINVAL);
        expect_none(&f.be, &f.mark);
        assert_int_equal(f.be.acked & F_LOG_ALL, 0);
        fx_end(&f);
    }
}

/* Without REPLY_ACK, a GET_FEATURES is the barrier after the log changes. */
static void test_dirty_log_barrier(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, 0);

    (void)state;
    cfg.dirty_log = true;
    fx_begin(&f);
    f.be.features |= F_LOG_ALL;
    f.be.protocol_features = VUF_PROTO_MASK(LOG_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    fx_queues(&f, 1);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(vuf_frontend_log_start(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_LOG_BASE), R(SET_FEATURES), R(SET_VRING_ADDR),
               R(GET_FEATURES));
    assert_int_equal(f.be.log_nfds, 1);
    assert_int_equal(vuf_frontend_log_stop(f.dev), 0);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_VRING_ADDR), R(GET_FEATURES));
    fx_end(&f);
}

static void *noop_thread(void *arg)
{
    return arg;
}

static void quiet_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    (void)opaque;
    (void)level;
    (void)msg;
}

/* ------------------------------------------------------------------------ */
/* Memory slots (CONFIGURE_MEM_SLOTS) and memory updates                    */
/* ------------------------------------------------------------------------ */

#define MS_BASE 0x10000000ull /* extra regions: one page each, 1 MiB apart */
#define MS_GPA(i) (MS_BASE + (uint64_t)(i)*0x100000)

/* Add `n` one-page regions MS_GPA(from) .. MS_GPA(from + n - 1). */
static void ms_add(struct vuf_guest_mem *mem, unsigned from, unsigned n)
{
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    for (unsigned i = from; i < from + n; i++)
        assert_int_equal(vuf_guest_mem_add_memfd(mem, MS_GPA(i), ps), 0);
}

/* The last `n` requests are `code`, each with exactly `nfds` fds; returns
 * the GPA of the first. */
static uint64_t ms_check(struct fx *f, unsigned n, uint32_t code, unsigned nfds)
{
    for (unsigned i = 0; i < n; i++) {
        struct rec r = be_rec(&f->be, f->mark - n + i);

        assert_int_equal(r.code, code);
        assert_int_equal(r.nfds, nfds);
        assert_true(r.flags & VUF_FLAG_NEED_REPLY);
    }
    return n ? be_rec(&f->be, f->mark - n).gpa : 0;
}

static struct vuf_frontend_config ms_cfg(void)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    cfg.mem_slots = true;
    return cfg;
}

static void test_mem_slots(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = ms_cfg();
    struct vuf_guest_mem *other;
    struct vuf_queue back[MAX_Q];
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
    f.be.max_slots = 16;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
               R(SET_PROTOCOL_FEATURES), R(GET_MAX_MEM_SLOTS));
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f.dev), 16);

    /* 12 regions (more than SET_MEM_TABLE's 8): the rings' one + 11. */
    fx_queues(&f, 2);
    ms_add(f.mem, 0, 11);
    /* Not active: nothing is sent. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG),
               R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG),
               R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG), SEQ_QUEUE,
               SEQ_QUEUE);
    for (unsigned i = 0; i < 12; i++) {
        struct rec r = be_rec(&f.be, f.mark - 24 + i);

        assert_int_equal(r.nfds, 1);
        assert_true(r.flags & VUF_FLAG_NEED_REPLY);
        assert_true(i == 0 ? r.gpa == 0x100000 : r.gpa == MS_GPA(i - 1));
    }
    assert_int_equal(f.be.slots_used, 12);

    /* Unchanged: nothing. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);

    /* Hot-add: only ADD_MEM_REG for the new region, with its fd. */
    ms_add(f.mem, 20, 1);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(ADD_MEM_REG), 1), MS_GPA(20));

    /* Hot-remove: only REM_MEM_REG, no fd. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(3)), 0);
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(3)), -ENOENT);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(REM_MEM_REG), 0), MS_GPA(3));
    assert_int_equal(f.be.slots_used, 12);

    /* Replaced (same GPA and size, new memfd) plus one new: REM first,
     * then both ADDs in GPA order. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(5)), 0);
    assert_int_equal(vuf_guest_mem_add_memfd(f.mem, MS_GPA(5), ps), 0);
    ms_add(f.mem, 3, 1);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG));
    assert_int_equal(be_rec(&f.be, f.mark - 3).gpa, MS_GPA(5));
    assert_int_equal(be_rec(&f.be, f.mark - 2).gpa, MS_GPA(3));
    assert_int_equal(be_rec(&f.be, f.mark - 1).gpa, MS_GPA(5));
    assert_int_equal(f.be.slots_used, 13);

    /* More regions than slots: refused before anything is sent, and the
     * back-end keeps what it had. */
    ms_add(f.mem, 30, 4); /* 17 */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), -E2BIG);
    expect_none(&f.be, &f.mark);
    for (unsigned i = 30; i < 34; i++)
        assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(i)), 0);

    /* The rings must stay where they are: another guest memory maps them
     * elsewhere. */
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &other), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, other), -EBUSY);
    expect_none(&f.be, &f.mark);
    vuf_guest_mem_free(other);
    assert_int_equal(vuf_frontend_update_memory(f.dev, NULL), -EINVAL);

    /* A refused ADD: the error is returned and the next update resumes
     * the diff where it stopped. */
    ms_add(f.mem, 40, 2);
    f.be.nack_code = R(ADD_MEM_REG);
    f.be.nack_skip = 1;
    assert_true(vuf_frontend_update_memory(f.dev, f.mem) < 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG), R(ADD_MEM_REG));
    f.be.nack_code = 0;
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(ADD_MEM_REG));
    assert_int_equal(ms_check(&f, 1, R(ADD_MEM_REG), 1), MS_GPA(41));

    /* Sleep / wake with the same memory: the back-end kept its regions, so
     * no memory message at all. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    /* Asleep: an update is for the next wake. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(40)), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(REM_MEM_REG), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&f);
}

static void test_mem_slots_limits(void **state)
{
    static const struct {
        uint64_t answer;
        int ret;
        unsigned max;
    } cases[] = {{0, -EPROTO, 0}, {1, 0, 1}, {512, 0, 512}, {100000, 0, 512}};
    struct vuf_frontend_config cfg = ms_cfg();

    (void)state;
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
        f.be.max_slots = cases[i].answer;
        assert_int_equal(fx_new(&f, &cfg), cases[i].ret);
        if (f.dev)
            assert_int_equal(vuf_frontend_max_mem_regions(f.dev), cases[i].max);
        fx_end(&f);
    }

    /* More regions than slots at activation: nothing is sent. */
    {
        struct fx f;

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
        f.be.max_slots = 4;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_seq(&f.be, &f.mark, R(SET_OWNER), R(GET_FEATURES), R(GET_PROTOCOL_FEATURES),
                   R(SET_PROTOCOL_FEATURES), R(GET_MAX_MEM_SLOTS));
        fx_queues(&f, 1);
        ms_add(f.mem, 0, 4);
        assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -E2BIG);
        expect_none(&f.be, &f.mark);
        assert_false(vuf_frontend_is_active(f.dev));
        /* A refused ADD fails the activation; the next one sends only the
         * regions the back-end lacks. */
        assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(0)), 0);
        f.be.nack_code = R(ADD_MEM_REG);
        f.be.nack_skip = 2;
        assert_true(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq) < 0);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(ADD_MEM_REG), R(ADD_MEM_REG), R(ADD_MEM_REG));
        assert_false(vuf_frontend_is_active(f.dev));
        f.be.nack_code = 0;
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(ADD_MEM_REG), R(ADD_MEM_REG), SEQ_QUEUE);
        assert_int_equal(f.be.slots_used, 4);
        fx_end(&f);
    }
}

static void test_mem_table_limits(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);
    uint64_t ps = (uint64_t)sysconf(_SC_PAGESIZE);

    (void)state;
    fx_begin(&f);
    /* Offered, but not asked for (cfg.mem_slots false): crosvm's set. */
    f.be.protocol_features |= VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_false(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    assert_int_equal(vuf_frontend_max_mem_regions(f.dev), 8);

    /* 9 regions: refused before anything is sent. */
    fx_queues(&f, 1);
    ms_add(f.mem, 0, 8);
    assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -E2BIG);
    expect_none(&f.be, &f.mark);
    /* 8 work. */
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(7)), 0);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE);
    assert_int_equal(f.be.mem_regions, 8);
    /* Updates: SET_MEM_TABLE with everything when something changed. */
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_guest_mem_add_memfd(f.mem, MS_GPA(7), ps), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), -E2BIG);
    expect_none(&f.be, &f.mark);
    assert_int_equal(vuf_guest_mem_remove(f.mem, MS_GPA(2)), 0);
    assert_int_equal(vuf_frontend_update_memory(f.dev, f.mem), 0);
    expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE));
    assert_int_equal(f.be.mem_regions, 8);
    assert_int_equal(be_rec(&f.be, f.mark - 1).nfds, 8);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */
/* Inflight area (INFLIGHT_SHMFD)                                           */
/* ------------------------------------------------------------------------ */

static struct vuf_frontend_config infl_cfg(void)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_CONSOLE, F_EVENT_IDX);

    cfg.inflight = true;
    return cfg;
}

static ino_t fd_ino(int fd)
{
    struct stat st;

    assert_int_equal(fstat(fd, &st), 0);
    return st.st_ino;
}

/* The last SET_INFLIGHT_FD carried the area the last GET handed out. */
static void expect_set_of_get(struct be *be, uint16_t nq)
{
    assert_int_equal(be->infl_set_nfds, 1);
    assert_int_equal(be->infl_set_ino, be->infl_get_ino);
    assert_int_equal(be->infl_set.mmap_size, be->infl_size);
    assert_int_equal(be->infl_set.mmap_offset, be->infl_offset);
    assert_int_equal(be->infl_set.num_queues, nq);
    assert_int_equal(be->infl_set.queue_size, 16);
}

/*
 * GET_INFLIGHT_FD once, after SET_FEATURES; SET_INFLIGHT_FD with the same
 * file, size and offset at every activation and wake, before
 * SET_MEM_TABLE; reset frees the area and the next activation asks again.
 */
static void test_inflight_sequence(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area a;
    struct vuf_queue back[MAX_Q];
    uint16_t nq;
    ino_t first;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    f.be.infl_offset = 8192; /* the area need not start the file */
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_true(be_rec(&f.be, 3).u64 & VUF_PROTO_MASK(INFLIGHT_SHMFD));
    assert_true(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(INFLIGHT_SHMFD));
    nq = (uint16_t)vuf_device_num_queues(f.dev);
    fx_queues(&f, 2);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
    assert_int_equal(vuf_frontend_inflight_export(NULL, &a), -EINVAL);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, NULL), -EINVAL);

    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD),
               R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    /* Asked for every queue of the device, sized as the started ones. */
    assert_int_equal(f.be.infl_get.num_queues, nq);
    assert_int_equal(f.be.infl_get.queue_size, 16);
    assert_int_equal(be_rec(&f.be, f.mark - 15).nfds, 0); /* GET: no fd */
    expect_set_of_get(&f.be, nq);
    first = f.be.infl_get_ino;

    /* Export: a dup of the same file, with the area's values. */
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), 0);
    assert_true(a.fd >= 0);
    assert_int_equal(fd_ino(a.fd), first);
    assert_true(fcntl(a.fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(a.mmap_size, 4096);
    assert_int_equal(a.mmap_offset, 8192);
    assert_int_equal(a.num_queues, nq);
    assert_int_equal(a.queue_size, 16);
    close(a.fd);

    /* Sleep keeps the area (nothing sent for it); wake hands it back. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    f.be.infl_set_ino = 0;
    /* A queue larger than the area's queues is refused before anything
     * is sent. */
    back[0].size = 32;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EINVAL);
    expect_none(&f.be, &f.mark);
    back[0].size = 16;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    expect_set_of_get(&f.be, nq);
    assert_int_equal(f.be.infl_set_ino, first);

    /* A refused SET_INFLIGHT_FD fails the activation; the area stays. */
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    f.be.nack_code = R(SET_INFLIGHT_FD);
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), -EIO);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD));
    f.be.nack_code = 0;
    assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&f.be, &f.mark, R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    assert_int_equal(f.be.infl_set_ino, first);

    /* Reset frees it: the next activation asks for a new one. */
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
               SEQ_QUEUE);
    assert_int_not_equal(f.be.infl_get_ino, first);
    expect_set_of_get(&f.be, nq);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&f);
}

/*
 * Reconnect: the area of the first device goes to a second one (another
 * back-end), which sends no GET_INFLIGHT_FD, only SET_INFLIGHT_FD with the
 * same file before its rings.
 */
static void test_inflight_export_import(void **state)
{
    struct fx f, g;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area a, b;
    struct vuf_queue back[MAX_Q];
    uint16_t nq;
    ino_t ino;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    nq = (uint16_t)vuf_device_num_queues(f.dev);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD),
               R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
    ino = f.be.infl_get_ino;
    assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
    expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
    assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), 0);
    vuf_device_destroy(f.dev); /* the area lives on in the export */
    f.dev = NULL;
    be_kill(&f.be); /* its thread is gone before g counts threads */

    fx_begin(&g); /* counts the export's fd: closed after fx_end(&g) */
    g.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    cfg.inflight_area = &a;
    assert_int_equal(fx_new(&g, &cfg), 0);
    expect_new(&g);
    /* The area is the device's from the start. */
    assert_int_equal(vuf_frontend_inflight_export(g.dev, &b), 0);
    assert_int_equal(fd_ino(b.fd), ino);
    assert_int_equal(b.mmap_size, a.mmap_size);
    assert_int_equal(b.mmap_offset, a.mmap_offset);
    assert_int_equal(b.num_queues, nq);
    assert_int_equal(b.queue_size, 16);
    close(b.fd);
    assert_int_equal(vuf_device_wake(g.dev, f.mem, &f.vi, back, f.nq), 0);
    expect_seq(&g.be, &g.mark, R(SET_FEATURES), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
               SEQ_QUEUE);
    assert_int_equal(g.be.infl_set_nfds, 1);
    assert_int_equal(g.be.infl_set_ino, ino);
    assert_int_equal(g.be.infl_set.mmap_size, 4096);
    assert_int_equal(g.be.infl_set.mmap_offset, 0);
    assert_int_equal(g.be.infl_set.num_queues, nq);
    assert_int_equal(g.be.infl_set.queue_size, 16);
    assert_int_equal(vuf_device_reset(g.dev), 0);
    expect_seq(&g.be, &g.mark, SEQ_STOP, SEQ_STOP);
    fx_end(&g);
    close(a.fd); /* borrowed by vuf_frontend_new: still ours */
    fx_end(&f);
}

/* vuf_frontend_new with `area` on a fresh back-end (offering
 * INFLIGHT_SHMFD if `offer`): its result; no fd or thread leaks. */
static int try_import(const struct vuf_inflight_area *area, bool inflight, bool offer)
{
    struct fx f;
    struct vuf_frontend_config cfg = infl_cfg();
    struct vuf_inflight_area x;
    int r;

    fx_begin(&f);
    if (offer)
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
    cfg.inflight = inflight;
    cfg.inflight_area = area;
    r = fx_new(&f, &cfg);
    if (r == 0) {
        int e = vuf_frontend_inflight_export(f.dev, &x);

        if (e == 0)
            close(x.fd);
        else
            assert_int_equal(e, -ENOENT);
        /* Ignored without INFLIGHT_SHMFD. */
        assert_int_equal(e == 0, offer && inflight);
    } else {
        f.dev = NULL;
    }
    fx_end(&f);
    return r;
}

static void test_inflight_import_checks(void **state)
{
    struct vuf_inflight_area a;
    int mfd = memfd_create("area", MFD_CLOEXEC), p[2];

    (void)state;
    assert_true(mfd >= 0);
    assert_int_equal(ftruncate(mfd, 8192), 0);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    /* The console has 2 queues here (no MQ). */
    a = (struct vuf_inflight_area){mfd, 4096, 4096, 2, 16};
    assert_int_equal(try_import(&a, true, true), 0);
    assert_int_equal(try_import(&a, true, false), 0); /* ignored */
    assert_int_equal(try_import(&a, false, true), -EINVAL);
    a.num_queues = 3;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.num_queues = 2;
    a.mmap_size = 8192; /* beyond the file */
    assert_int_equal(try_import(&a, true, true), -EBADF);
    a.mmap_size = 1ull << 40; /* too large */
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.mmap_size = 0;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    a.mmap_size = 4096;
    a.fd = p[0];
    assert_int_equal(try_import(&a, true, true), -EBADF);
    a.fd = -1;
    assert_int_equal(try_import(&a, true, true), -EINVAL);
    close(p[0]);
    close(p[1]);
    close(mfd);
}

/*
 * Answers that cannot be an area are refused (the activation fails, the
 * fd is closed, the next activation asks again); mmap_size 0 means the
 * back-end has none: nothing more is sent until a reset.
 */
static void test_inflight_bad_answers(void **state)
{
    static const struct {
        enum infl_mode mode;
        uint64_t size, file;
    } bad[] = {
        {INFL_MEMFD, 1ull << 30, 4096},  /* huge (the file is small too) */
        {INFL_MEMFD, 64ull << 20, 0},    /* the 64 MiB cap, file as large */
        {INFL_MEMFD, 3 * 4096 + 1, 0},   /* more than 2 queues of 16 need */
        {INFL_MEMFD, 8192, 4096},        /* the file is too small */
        {INFL_PIPE, 4096, 0},            /* not a file */
        {INFL_SOCKET, 4096, 0},          /* not a file */
        {INFL_ZERO_WITH_FD, 4096, 4096}, /* mmap_size 0 with an fd */
    };
    struct vuf_inflight_area a;
    struct vuf_queue back[MAX_Q];

    (void)state;
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        f.be.infl_mode = bad[i].mode;
        f.be.infl_size = bad[i].size;
        f.be.infl_file = bad[i].file;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        fx_queues(&f, 2);
        assert_int_equal(vuf_device_activate(f.dev, f.mem, &f.vi, f.q, f.nq), -EPROTO);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD));
        assert_false(vuf_frontend_is_active(f.dev));
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        /* The connection is still in step: a good answer now works. */
        f.be.infl_mode = INFL_MEMFD;
        f.be.infl_size = 4096;
        f.be.infl_file = 0;
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_INFLIGHT_FD), R(SET_MEM_TABLE),
                   SEQ_QUEUE, SEQ_QUEUE);
        expect_set_of_get(&f.be, 2);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_end(&f); /* no fd left behind */
    }

    /* No area: one GET, then nothing until a reset. */
    {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();

        fx_begin(&f);
        f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        f.be.infl_mode = INFL_NONE;
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(GET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE,
                   SEQ_QUEUE);
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        assert_int_equal(vuf_device_sleep(f.dev, back, f.nq), 1);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        assert_int_equal(vuf_device_wake(f.dev, f.mem, &f.vi, back, f.nq), 0);
        expect_seq(&f.be, &f.mark, R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(GET_INFLIGHT_FD), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        fx_end(&f);
    }
}

/* Off by default: a back-end's INFLIGHT_SHMFD is not acked and nothing
 * inflight is sent; on, a back-end without it gets nothing either. */
static void test_inflight_off(void **state)
{
    for (int on = 0; on < 2; on++) {
        struct fx f;
        struct vuf_frontend_config cfg = infl_cfg();
        struct vuf_inflight_area a;

        (void)state;
        cfg.inflight = on;
        fx_begin(&f);
        if (!on)
            f.be.protocol_features |= VUF_PROTO_MASK(INFLIGHT_SHMFD);
        assert_int_equal(fx_new(&f, &cfg), 0);
        expect_new(&f);
        assert_false(be_rec(&f.be, 3).u64 & VUF_PROTO_MASK(INFLIGHT_SHMFD));
        assert_false(vuf_frontend_protocol_features(f.dev) & VUF_PROTO_MASK(INFLIGHT_SHMFD));
        fx_queues(&f, 2);
        fx_activate_ok(&f);
        expect_seq(&f.be, &f.mark, R(SET_FEATURES), R(SET_MEM_TABLE), SEQ_QUEUE, SEQ_QUEUE);
        assert_int_equal(vuf_frontend_inflight_export(f.dev, &a), -ENOENT);
        assert_int_equal(vuf_device_reset(f.dev), 0);
        expect_seq(&f.be, &f.mark, SEQ_STOP, SEQ_STOP);
        fx_end(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_sequence_and_features),
        cmocka_unit_test(test_packed_ring_stripped),
        cmocka_unit_test(test_no_protocol_features),
        cmocka_unit_test(test_queue_max_size),
        cmocka_unit_test(test_backend_req_and_mq),
        cmocka_unit_test(test_queue_num_bounds),
        cmocka_unit_test(test_net_queue_pairs),
        cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_lifecycle_with_backend_req),
        cmocka_unit_test(test_vring_base_too_big),
        cmocka_unit_test(test_activate_checks),
        cmocka_unit_test(test_activate_nack_rolls_back),
        cmocka_unit_test(test_need_reply_option),
        cmocka_unit_test(test_interrupts),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_shmem_map),
        cmocka_unit_test(test_shmem_region_cases),
        cmocka_unit_test(test_map_before_mapper),
        cmocka_unit_test(test_snapshot_variants),
        cmocka_unit_test(test_backend_crash),
        cmocka_unit_test(test_crash_during_reset_path),
        cmocka_unit_test(test_reconnect_new_backend),
        cmocka_unit_test(test_mem_slots),
        cmocka_unit_test(test_mem_slots_limits),
        cmocka_unit_test(test_mem_table_limits),
        cmocka_unit_test(test_dirty_log),
        cmocka_unit_test(test_dirty_log_not_supported),
        cmocka_unit_test(test_dirty_log_barrier),
        cmocka_unit_test(test_inflight_sequence),
        cmocka_unit_test(test_inflight_export_import),
        cmocka_unit_test(test_inflight_import_checks),
        cmocka_unit_test(test_inflight_bad_answers),
        cmocka_unit_test(test_inflight_off),
    };

    /* Sanitizer runtimes start a helper thread with the first
     * pthread_create; have that happen before any thread is counted. */
    {
        pthread_t t;

        if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
            pthread_join(t, NULL);
    }
    /* Refusals are expected here: keep quiet unless VUF_LOG asks. */
    if (!getenv("VUF_LOG"))
        vuf_log_set(quiet_log, NULL, VUF_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
