/* SPDX-License-Identifier: MIT */
/* The scripted hostile back-end and its VMM (hostile_harness.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sys/ioctl.h>

#include "hostile_harness.h"
#include "vuf/log.h"
#include "vuf/virtio.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

int raw_reply_u64(struct vuf_conn *c, uint32_t code, uint64_t v)
{
    return tu_raw_send(c, code, REPLY, &v, 8, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* The scripted back-end                                                    */
/* ------------------------------------------------------------------------ */

void hb_keep(struct hb *hb, int fd)
{
    pthread_mutex_lock(&hb->lock);
    if (hb->nkeep < 16)
        hb->keep[hb->nkeep++] = fd;
    else
        close(fd);
    pthread_mutex_unlock(&hb->lock);
}

/* The answer a well-behaved back-end would give. */
void hb_default(struct hb *hb, struct vuf_msg *req)
{
    struct vuf_conn *c = hb->conn;
    uint32_t code = req->hdr.request;
    bool nr = req->hdr.flags & VUF_FLAG_NEED_REPLY;

    switch (code) {
    case VUF_REQ_GET_FEATURES:
        raw_reply_u64(c, code, hb->features);
        return;
    case VUF_REQ_GET_PROTOCOL_FEATURES:
        raw_reply_u64(c, code, hb->protocol_features);
        return;
    case VUF_REQ_GET_QUEUE_NUM:
        raw_reply_u64(c, code, hb->queue_num);
        return;
    case VUF_REQ_SET_BACKEND_REQ_FD:
        pthread_mutex_lock(&hb->lock);
        if (hb->breq_fd >= 0)
            close(hb->breq_fd);
        hb->breq_fd = req->fds[0];
        pthread_mutex_unlock(&hb->lock);
        req->fds[0] = -1;
        break;
    case VUF_REQ_GET_VRING_BASE: {
        struct vuf_vring_state st = {.index = req->payload.state.index, .num = hb->vring_base};

        tu_raw_send(c, code, REPLY, &st, sizeof(st), NULL, 0);
        return;
    }
    case VUF_REQ_GET_CONFIG: {
        struct vuf_config cfg = req->payload.config;

        for (uint32_t i = 0; i < cfg.size && i < VUF_CONFIG_MAX; i++)
            cfg.region[i] = (uint8_t)(cfg.offset + i);
        tu_raw_send(c, code, REPLY, &cfg, VUF_CONFIG_HDR_SIZE + cfg.size, NULL, 0);
        return;
    }
    case VUF_REQ_GET_SHMEM_CONFIG:
        tu_raw_send(c, code, REPLY, &hb->shm, sizeof(hb->shm), NULL, 0);
        return;
    case VUF_REQ_SET_DEVICE_STATE_FD:
        if (req->payload.dstate.direction == VUF_STATE_DIR_SAVE) {
            if (write(req->fds[0], hb->state, hb->state_len) != (ssize_t)hb->state_len) {
                raw_reply_u64(c, code, 1);
                return;
            }
        } else {
            hb_keep(hb, req->fds[0]); /* drained by CHECK_DEVICE_STATE */
            req->fds[0] = -1;
        }
        raw_reply_u64(c, code, VUF_STATE_REPLY_NOFD);
        return;
    case VUF_REQ_CHECK_DEVICE_STATE:
        raw_reply_u64(c, code, 0);
        return;
    default:
        break;
    }
    if (nr)
        raw_reply_u64(c, code, 0);
}

void hb_settle(struct hb *hb)
{
    int64_t end = tu_now_ms() + 10000;

    for (;;) {
        int pending = 0;

        /* Bytes first, then the flag: a message taken off the socket is
         * "busy" until it is counted. */
        if (hb->conn && ioctl(vuf_conn_fd(hb->conn), FIONREAD, &pending) < 0)
            pending = 0;
        if (pending == 0 && !atomic_load(&hb->busy))
            return;
        if (tu_now_ms() > end)
            fail_msg("the scripted back-end did not take what was sent within 10 s");
        tu_sleep_ms(1);
    }
}

void hb_close_conn(struct hb *hb)
{
    vuf_conn_close(hb->conn);
    hb->conn = NULL;
    atomic_store(&hb->hung_up, 1);
}

static void *hb_main(void *arg)
{
    struct hb *hb = arg;

    for (;;) {
        struct pollfd p[2] = {{.fd = vuf_conn_fd(hb->conn), .events = POLLIN},
                              {.fd = hb->stop_fd, .events = POLLIN}};
        struct vuf_msg req;
        enum hb_act a = HB_DEFAULT;

        if (poll(p, 2, -1) < 0)
            continue;
        if (p[1].revents)
            break;
        atomic_store(&hb->busy, 1);
        if (vuf_conn_recv(hb->conn, &req) < 0) {
            atomic_store(&hb->busy, 0);
            break;
        }
        if (req.hdr.request < 64)
            atomic_fetch_add(&hb->seen[req.hdr.request], 1);
        atomic_fetch_add(&hb->nreq, 1);
        atomic_store(&hb->busy, 0);
        if (hb->hook)
            a = hb->hook(hb, &req);
        if (a == HB_DEFAULT)
            hb_default(hb, &req);
        vuf_msg_close_fds(&req);
        if (a == HB_HANGUP) {
            hb_close_conn(hb);
            break;
        }
    }
    return NULL;
}

void hb_init(struct hb *hb, struct vuf_conn *conn)
{
    memset(hb, 0, sizeof(*hb));
    pthread_mutex_init(&hb->lock, NULL);
    hb->conn = conn;
    hb->features = F_PROTO | F_VERSION_1 | BIT(0);
    hb->protocol_features =
        VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(REPLY_ACK);
    hb->queue_num = 2;
    hb->vring_base = 5;
    hb->breq_fd = -1;
    hb->state_len = 40;
    for (unsigned i = 0; i < sizeof(hb->state); i++)
        hb->state[i] = (uint8_t)(i * 7);
}

void hb_start(struct hb *hb)
{
    uint64_t v;

    if (hb->stop_fd <= 0)
        hb->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert_true(hb->stop_fd >= 0);
    while (read(hb->stop_fd, &v, 8) == 8) /* from an earlier hb_stop */
        ;
    assert_int_equal(pthread_create(&hb->thread, NULL, hb_main, hb), 0);
    hb->running = true;
}

void hb_stop(struct hb *hb)
{
    uint64_t one = 1;

    if (hb->running) {
        assert_int_equal(write(hb->stop_fd, &one, 8), 8);
        pthread_join(hb->thread, NULL);
        hb->running = false;
    }
}

void hb_fini(struct hb *hb)
{
    hb_stop(hb);
    if (hb->conn)
        hb_close_conn(hb);
    if (hb->stop_fd > 0)
        close(hb->stop_fd);
    if (hb->breq_fd >= 0)
        close(hb->breq_fd);
    for (unsigned i = 0; i < hb->nkeep; i++)
        close(hb->keep[i]);
    pthread_mutex_destroy(&hb->lock);
}

/* ------------------------------------------------------------------------ */
/* VMM side                                                                 */
/* ------------------------------------------------------------------------ */

atomic_int crashes, config_calls;

static void on_event(void *opaque, enum vuf_device_event ev)
{
    (void)opaque;
    if (ev == VUF_DEVICE_EVENT_CRASHED)
        atomic_fetch_add(&crashes, 1);
}

static int ti_irqfd(void *opaque, uint16_t vector)
{
    (void)opaque;
    (void)vector;
    return -1;
}
static void ti_used(void *opaque, uint16_t vector)
{
    (void)opaque;
    (void)vector;
}
static void ti_config(void *opaque)
{
    (void)opaque;
    atomic_fetch_add(&config_calls, 1);
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
    void *p;
    int ms = atomic_load(&t->slow_ms);

    atomic_fetch_add(&t->entered, 1);
    if (ms)
        tu_sleep_ms(ms);
    if (fd_offset > (uint64_t)INT64_MAX)
        return -EINVAL;
    p = mmap(t->window + shm_offset, len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)fd_offset);
    if (p == MAP_FAILED) {
        int e = -errno;
        /* MAP_FIXED failed: the old window part may be gone; put it back */
        mmap(t->window + shm_offset, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
             0);
        return e;
    }
    pthread_mutex_lock(&t->lock);
    t->live++;
    t->adds++;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static int tm_remove(void *opaque, uint64_t shm_offset)
{
    struct tmap *t = opaque;

    (void)shm_offset;
    pthread_mutex_lock(&t->lock);
    t->live--;
    t->removes++;
    pthread_mutex_unlock(&t->lock);
    return 0;
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

void fx_begin(struct fx *f)
{
    struct vuf_conn *a, *b;

    memset(f, 0, sizeof(*f));
    /* Runtimes that start a helper thread with the first pthread_create
     * (ThreadSanitizer's) must have done so before the baseline. */
    tu_warm_threads();
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();
    atomic_store(&crashes, 0);
    atomic_store(&config_calls, 0);
    assert_int_equal(vuf_conn_pair(&a, &b), 0);
    f->fe_conn = a;
    hb_init(&f->hb, b);
    f->vi.ops = &tintr_ops;
    f->cfg.device_type = VUF_DEV_CONSOLE;
    f->cfg.base_features_mask = F_VERSION_1;
    f->cfg.event = on_event;
    pthread_mutex_init(&f->map.lock, NULL);
    f->map.window = mmap(NULL, REGION_LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(f->map.window != MAP_FAILED);
}

int fx_new(struct fx *f)
{
    int r;

    hb_start(&f->hb);
    r = vuf_frontend_new(&f->cfg, f->fe_conn, &f->dev);
    f->fe_conn = NULL;
    if (r < 0)
        f->dev = NULL;
    return r;
}

void fx_queues(struct fx *f, unsigned n)
{
    assert_int_equal(vuf_guest_mem_new_simple(0x100000, 1 << 20, &f->mem), 0);
    f->nq = n;
    for (unsigned i = 0; i < n; i++)
        tu_ring_queue(f->mem, &f->q[i], VUF_NO_VECTOR);
}

/* The back-end's side of its request channel (after construction). */
struct vuf_conn *fx_breq(struct fx *f)
{
    if (!f->breq) {
        int fd;

        pthread_mutex_lock(&f->hb.lock);
        fd = f->hb.breq_fd;
        f->hb.breq_fd = -1;
        pthread_mutex_unlock(&f->hb.lock);
        assert_true(fd >= 0);
        assert_int_equal(vuf_conn_adopt(fd, &f->breq), 0);
        vuf_conn_set_channel(f->breq, VUF_CH_BACKEND);
        vuf_conn_set_timeout(f->breq, 3000);
    }
    return f->breq;
}

void fx_end(struct fx *f)
{
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    vuf_conn_close(f->fe_conn);
    vuf_conn_close(f->breq);
    hb_fini(&f->hb);
    for (unsigned i = 0; i < f->nq; i++)
        close(f->q[i].kick_fd);
    vuf_guest_mem_free(f->mem);
    assert_int_equal(f->map.live, 0);
    munmap(f->map.window, REGION_LEN);
    pthread_mutex_destroy(&f->map.lock);
    /* No fd and no thread outlives the device. */
    assert_int_equal(tu_count_fds(), f->fds0);
    assert_int_equal(tu_threads_settle(f->threads0), f->threads0);
}

int fx_activate(struct fx *f)
{
    /* The driver accepts VERSION_1 when offered (virtio 1.2 §6.1). */
    if (vuf_device_features(f->dev) & F_VERSION_1)
        vuf_device_ack_features(f->dev, F_VERSION_1);
    return vuf_device_activate(f->dev, f->mem, &f->vi, f->q, f->nq);
}
