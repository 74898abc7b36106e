/* SPDX-License-Identifier: MIT */
/*
 * `vuf relay --listen SOCK_FOR_VMM --connect BACKEND_SOCK [--trace] [--json]`
 *
 * libvuf between a VMM and a back-end: to the VMM (QEMU) the relay is a
 * vhost-user back-end (the library's request server); to the back-end it is
 * a VMM (the library's front-end device, vuf/frontend.h). The VMM's memory
 * table becomes the device's guest memory, imported from the VMM's fds
 * (vuf_guest_mem_import: the same pages, not a copy); the VMM's ring
 * addresses (its own virtual addresses) become GPAs through that table; its
 * kick and call eventfds go to the back-end as they are, so the data path
 * never passes through the relay. docs/relay.md has the mapping of every
 * request and the trace format.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "relay.h"
#include "vuf/breq.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/virtio.h"
#include "vuf/virtq.h"
#include "vuf_tool.h"

#define BIT(n) (1ull << (n))
/* The transport bits the relay lets through: they concern only the driver
 * and the back-end, which share the rings; the relay never reads them.
 * RING_PACKED is not (the device supports split rings only). */
#define RELAY_BASE_FEATURES                                                                       \
    (BIT(24) /* NOTIFY_ON_EMPTY */ | BIT(27) /* ANY_LAYOUT */ | BIT(VUF_VIRTIO_F_INDIRECT_DESC) | \
     BIT(VUF_VIRTIO_F_EVENT_IDX) | BIT(VUF_VIRTIO_F_VERSION_1))
/* The protocol features the relay serves to the VMM (if the back-end has
 * them too). */
#define RELAY_PROTOCOL_FEATURES                                                \
    (VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(CONFIG) | \
     VUF_PROTO_MASK(BACKEND_REQ))
/* Quiet time after the VMM's last ring message before the relay starts the
 * rings on the back-end: QEMU sets up one queue after the other and the
 * device starts them all at once. */
#define ACTIVATE_QUIET_MS 20
/* Ring sizes the relay accepts (the protocol's largest, as the reference
 * back-end's --queue-size-max can go): the back-end's own limit is only
 * learnt when the rings start on it. */
#define RELAY_QUEUE_SIZE_MAX 32768u
/* Reconnect attempts: the first at once, then 10 ms apart doubling to 1 s. */
#define RECONNECT_FIRST_MS 10
#define RECONNECT_MAX_MS 1000

struct rqueue {
    uint16_t size;
    uint16_t base;
    bool has_addr, kicked;
    uint64_t desc, avail, used;             /* GPAs */
    uint64_t uva_desc, uva_avail, uva_used; /* as the VMM sent them */
    int kick_fd, call_fd;
};

struct relay_opts {
    const char *listen, *connect, *control;
    bool trace, json;
    int timeout_ms;
    int reconnect_ms; /* give up on a lost back-end after this; 0: never */
    uint32_t device_type;
    size_t max_state; /* largest device state moved by `replace` */
};

struct relay {
    const struct relay_opts *opts;
    struct vuf_frontend_config fc;
    struct relay_tap *tap;
    struct vuf_device *dev;
    struct vuf_server *srv;
    unsigned nq;
    struct rqueue q[VUF_FRONTEND_MAX_QUEUES];
    /* The VMM's memory table (for its addresses) and its import. */
    struct vuf_mem_region vmm_regions[VUF_MEM_TABLE_MAX];
    unsigned nvmm_regions;
    struct vuf_guest_mem *mem;
    bool active, pending;
    uint64_t vmm_pf;
    struct vuf_conn *vmm_breq; /* the VMM's back-end request channel */
    pthread_mutex_t breq_lock;
    uint64_t vmm_features;       /* what the VMM acked: re-acked after a reconnect */
    char backend_path[PATH_MAX]; /* the back-end's socket: --connect, or the last replacement */
    int control_fd;              /* --control listening socket, or -1 */
    atomic_bool crashed;
    int crash_efd; /* the worker's crash report wakes the main loop */
    /* The last device's offer, answered to the VMM while the back-end is
     * down (rl->dev NULL). */
    uint64_t dev_features, dev_pf;
    /* Back-end lost and not back yet: when, the next attempt, the wait
     * after it, the attempts so far, and the inflight area kept for it. */
    bool down;
    int64_t down_since_ms, next_try_ms;
    int backoff_ms;
    unsigned attempts;
    struct vuf_inflight_area area;
};

static int64_t now_ms(void)
{
    return cli_now_ns() / 1000000;
}

static atomic_bool relay_stop;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&relay_stop, true);
}

/* The library's messages, at most warnings: in the relay they are details
 * of a peer's failure that the relay handles (a back-end that died is
 * reconnected, a bad request is refused). Its verdicts are its own
 * "vuf relay: ..." lines; an outage that ends well prints no error. */
static void relay_log(void *opaque, enum vuf_log_level level, const char *msg)
{
    static const char *const names[] = {"warn", "warn", "info", "debug"};

    (void)opaque;
    fprintf(stderr, "vuf %s: %s\n", names[level <= VUF_LOG_DEBUG ? level : VUF_LOG_DEBUG], msg);
}

/* ---- interrupts: the VMM's call eventfds are the device's irqfds ---------- */

static int relay_irqfd(void *opaque, uint16_t vector)
{
    struct relay *rl = opaque;

    return vector < rl->nq ? rl->q[vector].call_fd : -1;
}

static void relay_signal_used(void *opaque, uint16_t vector)
{
    struct relay *rl = opaque;

    /* Only queues without a call fd get here: nothing to signal the VMM
     * with (QEMU always sends one). */
    (void)rl;
    (void)vector;
}

static void relay_config_changed(void *opaque)
{
    struct relay *rl = opaque;
    int r = -ENOTCONN;

    pthread_mutex_lock(&rl->breq_lock);
    if (rl->vmm_breq)
        r = vuf_breq_config_change(rl->vmm_breq, false, NULL);
    pthread_mutex_unlock(&rl->breq_lock);
    relay_tap_event(rl->tap, "config-change", "relayed to the VMM: %s",
                    r < 0 ? vuf_strerror(r) : "ok");
}

static const struct vuf_interrupt_ops relay_intr_ops = {
    .irqfd = relay_irqfd,
    .signal_used_queue = relay_signal_used,
    .signal_config_changed = relay_config_changed,
};

static void relay_event(void *opaque, enum vuf_device_event ev)
{
    struct relay *rl = opaque;

    if (ev == VUF_DEVICE_EVENT_CRASHED) {
        uint64_t one = 1;

        atomic_store(&rl->crashed, true);
        relay_tap_event(rl->tap, "crashed", "the back-end hung up while active");
        if (write(rl->crash_efd, &one, sizeof(one)) < 0) {
            /* a full counter wakes the main loop just as well */
        }
    }
}

/* ---- activation ------------------------------------------------------------ */

/* Stop the rings on the back-end and keep their positions: before a change
 * the device cannot take while active. */
static int relay_sleep(struct relay *rl)
{
    struct vuf_queue qs[VUF_FRONTEND_MAX_QUEUES];
    int r;

    if (!rl->active)
        return 0;
    memset(qs, 0, sizeof(qs));
    r = vuf_device_sleep(rl->dev, qs, rl->nq);
    rl->active = false;
    for (unsigned i = 0; i < rl->nq; i++)
        if (qs[i].size)
            rl->q[i].base = qs[i].next_avail;
    relay_tap_event(rl->tap, "sleep", "rings stopped on the back-end: %s",
                    r < 0 ? vuf_strerror(r) : "ok");
    return r < 0 ? r : 0;
}

static int relay_activate(struct relay *rl)
{
    struct vuf_queue qs[VUF_FRONTEND_MAX_QUEUES];
    struct vuf_interrupt intr = {.ops = &relay_intr_ops, .opaque = rl};
    unsigned n = 0, nready = 0;
    int r;

    rl->pending = false;
    /* A back-end that is down gets the rings when it is back. */
    if (rl->active || !rl->mem || !rl->dev)
        return 0;
    memset(qs, 0, sizeof(qs));
    for (unsigned i = 0; i < rl->nq; i++) {
        struct rqueue *q = &rl->q[i];

        qs[i] = (struct vuf_queue){
            .size = q->size,
            .ready = q->kicked && q->has_addr && q->size,
            .desc_addr = q->desc,
            .avail_addr = q->avail,
            .used_addr = q->used,
            .vector = q->call_fd >= 0 ? (uint16_t)i : VUF_NO_VECTOR,
            .kick_fd = q->kick_fd,
            .next_avail = q->base,
            .next_used = q->base,
        };
        if (qs[i].ready) {
            n = i + 1;
            nready++;
        }
    }
    if (!nready)
        return 0;
    relay_tap_event(rl->tap, "activate",
                    "starting %u of %u queue(s) on the back-end, %u memory region(s) imported",
                    nready, rl->nq, vuf_guest_mem_nregions(rl->mem));
    r = vuf_device_activate(rl->dev, rl->mem, &intr, qs, n);
    if (r < 0 && vuf_conn_error_is_fatal(r)) {
        uint64_t one = 1;

        /* The back-end died while its rings were being started, and may
         * have served some requests already: recover as from a crash, each
         * ring from used->idx. */
        for (unsigned i = 0; i < n; i++) {
            struct vuf_queue u = {.used_addr = qs[i].used_addr}; /* size 0: used->idx only */

            if (qs[i].ready && vuf_queue_reclaim(&u, rl->mem, 0) == 0)
                rl->q[i].base = u.next_used;
        }
        relay_tap_event(rl->tap, "activate", "failed: %s", vuf_strerror(r));
        atomic_store(&rl->crashed, true);
        if (write(rl->crash_efd, &one, sizeof(one)) < 0) {
            /* a full counter wakes the main loop just as well */
        }
        return r;
    }
    if (r < 0) {
        relay_tap_event(rl->tap, "activate", "failed: %s", vuf_strerror(r));
        fprintf(stderr, "vuf relay: activating the back-end failed: %s\n", vuf_strerror(r));
        return r;
    }
    rl->active = true;
    return 0;
}

/* A started queue's setup changes: stop, and start again once quiet. */
static int relay_reconfigure(struct relay *rl)
{
    int r = relay_sleep(rl);

    rl->pending = true;
    return r;
}

/* ---- the VMM's requests ---------------------------------------------------- */

static int reply_u64(struct vuf_msg *reply, uint64_t v)
{
    reply->payload.u64 = v;
    reply->hdr.size = 8;
    return 0;
}

/* The reference back-end's answer to a ring index it does not have. */
static int ring_index(struct relay *rl, uint32_t index)
{
    return index < rl->nq ? 0 : -EINVAL;
}

static int h_get_features(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;

    (void)req;
    /* Bit 30 is the relay's own: its server speaks protocol features to the
     * VMM whatever the device shows a driver. */
    return reply_u64(reply, rl->dev_features | BIT(VUF_VHOST_F_PROTOCOL_FEATURES));
}

/* Ack the VMM's features on `dev`, without bit 30 (the relay's own). A
 * bit the device does not offer is refused: -ENOTSUP. */
static int relay_ack(struct vuf_device *dev, uint64_t features)
{
    int r = vuf_device_ack_features(dev, features & ~BIT(VUF_VHOST_F_PROTOCOL_FEATURES));

    if (r < 0)
        return r;
    /* Some library versions return the number of bits dropped. */
    if (r > 0 || (features & ~BIT(VUF_VHOST_F_PROTOCOL_FEATURES) & ~vuf_device_features(dev)))
        return -ENOTSUP;
    return 0;
}

static int h_set_features(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;

    int r;

    (void)reply;
    /* The back-end is down: checked against its last offer, acked to it
     * when it is back. */
    if (!rl->dev) {
        if (req->payload.u64 & ~BIT(VUF_VHOST_F_PROTOCOL_FEATURES) & ~rl->dev_features)
            return -ENOTSUP;
        rl->vmm_features |= req->payload.u64;
        return 0;
    }
    rl->vmm_features |= req->payload.u64;
    r = relay_ack(rl->dev, req->payload.u64);
    /* New bits while the rings are stopped: the guest reset the device and
     * negotiated again (firmware, then the kernel), which QEMU shows only
     * this way. The device's features are fixed until a reset: reset it. */
    if (r == -EBUSY && !rl->active) {
        relay_tap_event(rl->tap, "reset", "the VMM acks new features: the guest reset the device");
        vuf_device_reset(rl->dev);
        r = relay_ack(rl->dev, req->payload.u64);
    }
    return r;
}

static int h_get_protocol_features(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;

    (void)req;
    return reply_u64(reply, rl->dev_pf & RELAY_PROTOCOL_FEATURES);
}

static int h_set_protocol_features(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint64_t offered = rl->dev_pf & RELAY_PROTOCOL_FEATURES;

    (void)reply;
    if (req->payload.u64 & ~offered)
        return -EINVAL;
    rl->vmm_pf = req->payload.u64;
    return 0;
}

static int h_ok(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    (void)o;
    (void)req;
    (void)reply;
    return 0;
}

static int h_get_queue_num(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;

    (void)req;
    return reply_u64(reply, rl->nq);
}

/* The VMM's virtual addresses [uva, uva + len) of a ring area -> its GPA,
 * by the VMM's table: the whole area inside one region, or -EFAULT. */
static int vmm_uva_to_gpa(const struct relay *rl, uint64_t uva, uint64_t len, uint64_t *gpa)
{
    for (unsigned i = 0; i < rl->nvmm_regions; i++) {
        const struct vuf_mem_region *r = &rl->vmm_regions[i];

        if (uva >= r->userspace_addr && len <= r->memory_size &&
            uva - r->userspace_addr <= r->memory_size - len) {
            *gpa = r->guest_phys_addr + (uva - r->userspace_addr);
            return 0;
        }
    }
    return -EFAULT;
}

/* A split ring's three areas (desc 16 * num, avail 6 + 2 * num, used
 * 6 + 8 * num bytes, virtio 1.2 §2.7) in the VMM's memory, as the
 * reference back-end checks them; the GPAs in q. Before SET_VRING_NUM only
 * the first byte of each can be checked. */
static int ring_translate(const struct relay *rl, struct rqueue *q)
{
    uint64_t n = q->size;

    if (vmm_uva_to_gpa(rl, q->uva_desc, n ? VUF_VRING_DESC_BYTES(n) : 1, &q->desc) < 0 ||
        vmm_uva_to_gpa(rl, q->uva_avail, n ? VUF_VRING_AVAIL_BYTES(n) : 1, &q->avail) < 0 ||
        vmm_uva_to_gpa(rl, q->uva_used, n ? VUF_VRING_USED_BYTES(n) : 1, &q->used) < 0) {
        q->has_addr = false;
        return -EFAULT;
    }
    q->has_addr = true;
    return 0;
}

/* Is `t` (with its fds) the memory already imported, region for region? */
static bool same_memory(const struct relay *rl, const struct vuf_mem_table *t, const int *fds)
{
    if (!rl->mem || vuf_guest_mem_nregions(rl->mem) != t->nregions)
        return false;
    for (unsigned i = 0; i < t->nregions; i++) {
        const struct vuf_mem_region *w = &t->regions[i];
        struct vuf_guest_region g;
        struct stat a, b;
        bool found = false;

        for (unsigned k = 0; !found && k < t->nregions; k++)
            found = vuf_guest_mem_region(rl->mem, k, &g) == 0 && g.gpa == w->guest_phys_addr &&
                    g.size == w->memory_size && g.fd_offset == w->mmap_offset;
        if (!found || fstat(fds[i], &a) < 0 || fstat(g.fd, &b) < 0 || a.st_dev != b.st_dev ||
            a.st_ino != b.st_ino)
            return false;
    }
    return true;
}

static int h_set_mem_table(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    struct vuf_mem_table t;
    struct vuf_guest_mem *gm = NULL;
    int r;

    (void)reply;
    r = vuf_decode_mem_table(req, &t);
    if (r < 0)
        return r;
    /* QEMU sends the same table at every start. Keeping the import keeps
     * our addresses, which the back-end may still hold for its rings:
     * libvhost-user remaps its rings through each new table and gives up
     * on the connection if their old addresses are gone. */
    if (same_memory(rl, &t, req->fds)) {
        memcpy(rl->vmm_regions, t.regions, t.nregions * sizeof(t.regions[0]));
        return 0;
    }
    r = vuf_guest_mem_import(t.regions, req->fds, t.nregions, &gm);
    if (r < 0)
        return r;
    if (rl->active) {
        r = vuf_frontend_update_memory(rl->dev, gm);
        if (r < 0) {
            vuf_guest_mem_free(gm);
            return r;
        }
    }
    vuf_guest_mem_free(rl->mem);
    rl->mem = gm;
    memcpy(rl->vmm_regions, t.regions, t.nregions * sizeof(t.regions[0]));
    rl->nvmm_regions = t.nregions;
    relay_tap_event(rl->tap, "memory", "%u region(s) imported from the VMM's fds", t.nregions);
    return 0;
}

/*
 * The ring messages are checked here by the reference back-end's rules and
 * answered with its errno (-EINVAL, -EBUSY for a started ring, -EFAULT for
 * a ring outside memory): what the relay acks, the back-end must take when
 * the rings start on it, long after the VMM could have been told.
 */
static int h_set_vring_num(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t num = req->payload.state.num;
    int r = ring_index(rl, req->payload.state.index);
    struct rqueue *q;
    uint16_t old;

    (void)reply;
    if (r < 0)
        return r;
    q = &rl->q[req->payload.state.index];
    if (num == 0 || num > RELAY_QUEUE_SIZE_MAX || (num & (num - 1)))
        return -EINVAL;
    if (q->kicked)
        return -EBUSY;
    old = q->size;
    q->size = (uint16_t)num;
    /* Addresses sent first: now the whole areas can be checked. A refused
     * size leaves the ring as it was. */
    if (q->has_addr && ring_translate(rl, q) < 0) {
        q->size = old;
        ring_translate(rl, q);
        return -EFAULT;
    }
    return 0;
}

static int h_set_vring_base(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t num = req->payload.state.num;
    int r = ring_index(rl, req->payload.state.index);

    (void)reply;
    if (r < 0)
        return r;
    /* Split rings (the only ones the relay offers): bits 16-31 are
     * reserved. */
    if (num > 0xffff)
        return -EINVAL;
    if (rl->q[req->payload.state.index].kicked)
        return -EBUSY;
    rl->q[req->payload.state.index].base = (uint16_t)num;
    return 0;
}

static int h_set_vring_addr(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    struct vuf_vring_addr a;
    struct rqueue *q;
    int r;

    (void)reply;
    r = vuf_decode_vring_addr(req, &a);
    if (r == 0)
        r = ring_index(rl, a.index);
    if (r < 0)
        return r;
    q = &rl->q[a.index];
    /* QEMU sends its own virtual addresses (no GPA_ADDRESSES). */
    q->uva_desc = a.desc;
    q->uva_avail = a.avail;
    q->uva_used = a.used;
    return ring_translate(rl, q);
}

/* The ring index of a KICK/CALL/ERR message in *index; returns its fd (still
 * the server's), -1 for NOFD, or a negative errno below -1. */
static int ring_fd(struct relay *rl, struct vuf_msg *req, uint32_t *index)
{
    bool nofd;
    int r = vuf_decode_vring_file(req, index, &nofd);

    if (r == 0)
        r = ring_index(rl, *index);
    if (r < 0)
        return r;
    return nofd ? -1 : req->fds[0];
}

static int h_set_vring_kick(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t i = 0;
    int fd = ring_fd(rl, req, &i);

    (void)reply;
    if (fd < -1)
        return fd;
    /* Without a kick fd the back-end would have to poll the ring; the
     * device always hands one over. */
    if (fd < 0)
        return -ENOTSUP;
    if (rl->active)
        relay_reconfigure(rl);
    if (rl->q[i].kick_fd >= 0)
        close(rl->q[i].kick_fd);
    rl->q[i].kick_fd = fd;
    req->fds[0] = -1;
    rl->q[i].kicked = true;
    rl->pending = true;
    return 0;
}

static int h_set_vring_call(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t i = 0;
    int fd = ring_fd(rl, req, &i);

    (void)reply;
    if (fd < -1)
        return fd;
    /* A new call fd for a started ring: the back-end must get it too. */
    if (rl->active && rl->q[i].kicked)
        relay_reconfigure(rl);
    if (rl->q[i].call_fd >= 0)
        close(rl->q[i].call_fd);
    rl->q[i].call_fd = fd;
    if (fd >= 0)
        req->fds[0] = -1;
    return 0;
}

static int h_set_vring_err(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t i = 0;
    int fd = ring_fd(rl, req, &i);

    (void)reply;
    /* Not passed on (the device has no error eventfd); the server closes it. */
    return fd < -1 ? fd : 0;
}

static int h_set_vring_enable(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;

    (void)reply;
    /* The device enables the rings it starts; QEMU disables them just
     * before GET_VRING_BASE, which stops them. */
    if (req->payload.state.num > 1)
        return -EINVAL; /* neither enable nor disable */
    return ring_index(rl, req->payload.state.index);
}

static int h_get_vring_base(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    uint32_t i = req->payload.state.index;
    int r = ring_index(rl, i);

    if (r < 0)
        return r;
    /* The VMM stops its rings one at a time; the device stops all of them
     * at once, and the later GET_VRING_BASEs are answered from its result. */
    if (rl->active)
        relay_sleep(rl);
    rl->q[i].kicked = false;
    rl->pending = false;
    for (unsigned k = 0; k < rl->nq; k++)
        if (rl->q[k].kicked)
            rl->pending = true;
    reply->payload.state.index = i;
    reply->payload.state.num = rl->q[i].base;
    reply->hdr.size = 8;
    return 0;
}

static int h_get_config(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    struct vuf_config c;
    int r = vuf_decode_config(req, &c);

    if (r < 0)
        return r;
    if (!rl->dev)
        return -ENOTCONN; /* the back-end is down */
    r = vuf_device_read_config(rl->dev, c.offset, reply->payload.config.region, c.size);
    if (r < 0)
        return r;
    reply->payload.config.offset = c.offset;
    reply->payload.config.size = c.size;
    reply->payload.config.flags = c.flags;
    reply->hdr.size = VUF_CONFIG_HDR_SIZE + c.size;
    return 0;
}

static int h_set_config(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    struct vuf_config c;
    int r = vuf_decode_config(req, &c);

    (void)reply;
    if (r < 0)
        return r;
    if (!rl->dev)
        return -ENOTCONN; /* the back-end is down */
    return vuf_device_write_config(rl->dev, c.offset, c.region, c.size);
}

static int h_set_backend_req_fd(void *o, struct vuf_msg *req, struct vuf_msg *reply)
{
    struct relay *rl = o;
    struct vuf_conn *c = NULL;
    int r;

    (void)reply;
    r = vuf_conn_adopt(req->fds[0], &c);
    if (r < 0)
        return r;
    req->fds[0] = -1;
    vuf_conn_set_channel(c, VUF_CH_BACKEND);
    pthread_mutex_lock(&rl->breq_lock);
    vuf_conn_close(rl->vmm_breq);
    rl->vmm_breq = c;
    pthread_mutex_unlock(&rl->breq_lock);
    return 0;
}

static void install_handlers(struct vuf_server_config *sc)
{
    sc->handlers[VUF_REQ_GET_FEATURES] = h_get_features;
    sc->handlers[VUF_REQ_SET_FEATURES] = h_set_features;
    sc->handlers[VUF_REQ_SET_OWNER] = h_ok;
    sc->handlers[VUF_REQ_RESET_OWNER] = h_ok;
    sc->handlers[VUF_REQ_GET_PROTOCOL_FEATURES] = h_get_protocol_features;
    sc->handlers[VUF_REQ_SET_PROTOCOL_FEATURES] = h_set_protocol_features;
    sc->handlers[VUF_REQ_GET_QUEUE_NUM] = h_get_queue_num;
    sc->handlers[VUF_REQ_SET_MEM_TABLE] = h_set_mem_table;
    sc->handlers[VUF_REQ_SET_VRING_NUM] = h_set_vring_num;
    sc->handlers[VUF_REQ_SET_VRING_BASE] = h_set_vring_base;
    sc->handlers[VUF_REQ_SET_VRING_ADDR] = h_set_vring_addr;
    sc->handlers[VUF_REQ_SET_VRING_KICK] = h_set_vring_kick;
    sc->handlers[VUF_REQ_SET_VRING_CALL] = h_set_vring_call;
    sc->handlers[VUF_REQ_SET_VRING_ERR] = h_set_vring_err;
    sc->handlers[VUF_REQ_SET_VRING_ENABLE] = h_set_vring_enable;
    sc->handlers[VUF_REQ_GET_VRING_BASE] = h_get_vring_base;
    sc->handlers[VUF_REQ_GET_CONFIG] = h_get_config;
    sc->handlers[VUF_REQ_SET_CONFIG] = h_set_config;
    sc->handlers[VUF_REQ_SET_BACKEND_REQ_FD] = h_set_backend_req_fd;
}

/* ---- back-end restart -------------------------------------------------------- */

/* A new device on a new connection to the back-end's socket, through the
 * tap's `side`: connect (waiting up to connect_ms for the socket; 0: one
 * try) and negotiate, each reply within --timeout-ms. Nothing printed: the
 * callers say what a failure means to them. */
static int relay_connect_backend(struct relay *rl, const char *path, int connect_ms,
                                 enum relay_side side, struct vuf_device **dev)
{
    struct vuf_conn *be = NULL, *dev_end = NULL, *tap_be = NULL;
    int r = vuf_conn_connect(path, connect_ms, &be);

    if (r < 0)
        return r;
    r = vuf_conn_pair(&dev_end, &tap_be);
    if (r < 0) {
        vuf_conn_close(be);
        return r;
    }
    relay_tap_reattach(rl->tap, side, tap_be, be);
    /* A socket that accepts and never answers costs at most this per
     * message, not the library's 5 s. */
    if (rl->opts->timeout_ms > 0)
        vuf_conn_set_timeout(dev_end, rl->opts->timeout_ms);
    return vuf_frontend_new(&rl->fc, dev_end, dev); /* takes dev_end */
}

/* What the VMM is answered from while the back-end is down. */
static void relay_take_device(struct relay *rl, struct vuf_device *dev)
{
    rl->dev = dev;
    rl->dev_features = vuf_device_features(dev);
    rl->dev_pf = vuf_frontend_protocol_features(dev);
}

/* A device for the driver the VMM already negotiated with: as many queues
 * and every feature it acked, or -EPROTO / -ENOTSUP. */
static int relay_fits_driver(struct relay *rl, struct vuf_device *dev)
{
    if (vuf_device_num_queues(dev) < rl->nq)
        return -EPROTO;
    return relay_ack(dev, rl->vmm_features);
}

/*
 * One attempt to bring a lost back-end back (one connect, no waiting for
 * the socket): 0 when it is back (the rings restarted) or when it is worth
 * another try (rl->next_try_ms set, with backoff); a negative errno once
 * --reconnect-ms has passed. A killed back-end's listening socket can still
 * accept for a moment while the process is torn down: that connection then
 * hangs up mid-handshake, and a later attempt finds the restarted one.
 */
static int relay_retry(struct relay *rl)
{
    struct vuf_device *dev = NULL;
    int64_t now;
    int r;

    rl->attempts++;
    rl->fc.inflight_area = rl->area.fd >= 0 ? &rl->area : NULL;
    r = relay_connect_backend(rl, rl->backend_path, 0, RELAY_BACKEND, &dev);
    rl->fc.inflight_area = NULL;
    if (r == 0)
        r = relay_fits_driver(rl, dev);
    now = now_ms();
    if (r == 0) {
        relay_take_device(rl, dev);
        rl->down = false;
        atomic_store(&rl->crashed, false);
        if (rl->area.fd >= 0)
            close(rl->area.fd);
        rl->area.fd = -1;
        fprintf(stderr, "vuf relay: back-end on %s is back after %lld ms (attempt %u)\n",
                rl->backend_path, (long long)(now - rl->down_since_ms), rl->attempts);
        relay_tap_event(rl->tap, "reconnect", "back-end is back after %lld ms (attempt %u)",
                        (long long)(now - rl->down_since_ms), rl->attempts);
        return relay_activate(rl);
    }
    if (dev)
        vuf_device_destroy(dev);
    if (rl->opts->reconnect_ms > 0 && now - rl->down_since_ms >= rl->opts->reconnect_ms) {
        fprintf(stderr,
                "vuf relay: back-end on %s not back after %lld ms (%u attempts, last: %s); "
                "giving up (--reconnect-ms %d)\n",
                rl->backend_path, (long long)(now - rl->down_since_ms), rl->attempts,
                vuf_strerror(r), rl->opts->reconnect_ms);
        relay_tap_event(rl->tap, "reconnect", "failed: %s", vuf_strerror(r));
        return r;
    }
    fprintf(stderr,
            "vuf relay: warning: back-end on %s not back yet (%s); attempt %u, next in %d ms\n",
            rl->backend_path, vuf_strerror(r), rl->attempts, rl->backoff_ms);
    relay_tap_event(rl->tap, "reconnect", "attempt %u: %s; next in %d ms", rl->attempts,
                    vuf_strerror(r), rl->backoff_ms);
    rl->next_try_ms = now + rl->backoff_ms;
    rl->backoff_ms = rl->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : rl->backoff_ms * 2;
    return 0;
}

/*
 * The back-end died while the rings ran (docs/reconnect.md): take the rings
 * back (sleep cannot ask the dead back-end, so each restarts from used->idx:
 * requests it had taken but not completed are taken again), keep its
 * inflight area, and try to reach a back-end restarted on its socket
 * (relay_retry, from the main loop, which goes on serving the VMM
 * meanwhile). The VMM keeps its connection and sees nothing.
 */
static int relay_recover(struct relay *rl)
{
    struct vuf_queue qs[VUF_FRONTEND_MAX_QUEUES];
    uint64_t v;
    int r;

    if (read(rl->crash_efd, &v, sizeof(v)) < 0) {
        /* already drained */
    }
    if (!atomic_load(&rl->crashed) || !rl->dev)
        return 0;
    memset(qs, 0, sizeof(qs));
    r = vuf_device_sleep(rl->dev, qs, rl->nq);
    for (unsigned i = 0; i < rl->nq; i++)
        if (qs[i].size)
            rl->q[i].base = qs[i].next_avail;
    rl->active = false;
    fprintf(stderr, "vuf relay: back-end on %s lost (%s); reconnecting %s\n", rl->backend_path,
            vuf_strerror(r),
            rl->opts->reconnect_ms > 0 ? "until --reconnect-ms has passed" : "until it is back");
    relay_tap_event(rl->tap, "reconnect",
                    "back-end lost (%s); rings taken back from used->idx, waiting %s for %s",
                    vuf_strerror(r), rl->opts->reconnect_ms > 0 ? "a while" : "for ever",
                    rl->backend_path);
    /* With INFLIGHT_SHMFD the restarted back-end resubmits, from the area
     * the old one kept, what it had taken but not completed. */
    if (rl->area.fd >= 0)
        close(rl->area.fd);
    rl->area.fd = -1;
    if (vuf_frontend_inflight_export(rl->dev, &rl->area) == 0)
        relay_tap_event(rl->tap, "reconnect",
                        "inflight area kept (%llu bytes) for the new back-end",
                        (unsigned long long)rl->area.mmap_size);
    else
        rl->area.fd = -1;
    vuf_device_destroy(rl->dev);
    rl->dev = NULL;
    rl->down = true;
    rl->down_since_ms = now_ms();
    rl->attempts = 0;
    rl->backoff_ms = RECONNECT_FIRST_MS;
    return relay_retry(rl);
}

/* ---- live back-end replacement ---------------------------------------------- */

/*
 * Move the device to the back-end on `path` while the guest runs: connect
 * and negotiate with the new back-end first (the rings still run on the old
 * one: a socket that does not answer costs the guest nothing), then sleep
 * (rings stopped, positions kept), save the old back-end's state with
 * DEVICE_STATE, load it into the new one, and start the rings there; the
 * old back-end's connection is closed. If anything fails before the switch
 * the old back-end goes on (woken again if it was put to sleep).
 */
static int relay_replace(struct relay *rl, const char *path)
{
    struct vuf_device *old = rl->dev, *nd = NULL;
    bool was_active = rl->active;
    uint8_t *state = NULL;
    size_t len = 0;
    int r;

    if (!old)
        return -ENOTCONN; /* the back-end is down: reconnecting */
    if (!(vuf_frontend_protocol_features(old) & VUF_PROTO_MASK(DEVICE_STATE)))
        return -ENOTSUP;
    relay_tap_event(rl->tap, "replace", "moving the device from %s to %s", rl->backend_path, path);
    r = relay_connect_backend(rl, path, 0, RELAY_NEXT, &nd);
    if (r == 0 && !(vuf_frontend_protocol_features(nd) & VUF_PROTO_MASK(DEVICE_STATE)))
        r = -ENOTSUP;
    if (r == 0)
        r = relay_fits_driver(rl, nd);
    if (r < 0) {
        if (nd)
            vuf_device_destroy(nd);
        relay_tap_event(rl->tap, "replace", "failed before stopping anything: %s", vuf_strerror(r));
        return r;
    }
    relay_tap_event(rl->tap, "replace", "%s negotiated; stopping the rings", path);
    r = relay_sleep(rl);
    if (r == 0)
        r = vuf_device_snapshot(old, &state, &len);
    if (r == 0)
        relay_tap_event(rl->tap, "replace", "%zu bytes of device state saved", len);
    if (r == 0)
        r = vuf_device_restore(nd, state, len);
    free(state);
    if (r < 0) {
        vuf_device_destroy(nd);
        rl->pending = was_active; /* the old back-end goes on */
        relay_tap_event(rl->tap, "replace", "failed: %s; %s goes on", vuf_strerror(r),
                        rl->backend_path);
        return r;
    }
    vuf_device_destroy(old);
    relay_tap_promote_next(rl->tap);
    relay_take_device(rl, nd);
    snprintf(rl->backend_path, sizeof(rl->backend_path), "%s", path);
    /* Restore leaves the acked set as it was: ack the driver's again. */
    r = relay_ack(nd, rl->vmm_features);
    relay_tap_event(rl->tap, "replace", "state loaded into %s", path);
    if (r == 0 && was_active)
        r = relay_activate(rl);
    return r;
}

/* One command per connection on --control: "replace SOCKET" -> "ok" or
 * "error: ...". */
static void relay_control(struct relay *rl)
{
    char line[PATH_MAX] = "", ans[160];
    struct timeval tv = {.tv_sec = 2};
    size_t n = 0;
    int c = accept4(rl->control_fd, NULL, NULL, SOCK_CLOEXEC), r;

    if (c < 0)
        return;
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (n + 1 < sizeof(line)) {
        ssize_t k = read(c, line + n, 1);

        if (k <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    if (strncmp(line, "replace ", 8) == 0 && !rl->dev) {
        snprintf(ans, sizeof(ans), "error: the back-end is down (reconnecting)\n");
    } else if (strncmp(line, "replace ", 8) == 0 &&
               strlen(line + 8) < sizeof(rl->backend_path) - 8) {
        r = relay_replace(rl, line + 8);
        snprintf(ans, sizeof(ans), r < 0 ? "error: %s\n" : "ok\n", vuf_strerror(r));
    } else {
        snprintf(ans, sizeof(ans), "error: unknown command '%.64s' (want: replace SOCKET)\n", line);
    }
    if (send(c, ans, strlen(ans), MSG_NOSIGNAL) < 0) {
        /* the asker left */
    }
    close(c);
}

/* ---- main loop ----------------------------------------------------------- */

static int serve(struct relay *rl)
{
    for (;;) {
        struct pollfd p[3] = {{.fd = vuf_server_fd(rl->srv), .events = POLLIN},
                              {.fd = rl->crash_efd, .events = POLLIN},
                              {.fd = rl->control_fd, .events = POLLIN}};
        int wait = rl->pending ? ACTIVATE_QUIET_MS : 200, r;

        if (atomic_load(&relay_stop))
            return 0;
        if (rl->down) {
            int64_t left = rl->next_try_ms - now_ms();

            if (left <= 0) {
                r = relay_retry(rl);
                if (r < 0)
                    return r;
                continue;
            }
            if (left < wait)
                wait = (int)left;
        }
        r = poll(p, 3, wait);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r > 0 && p[2].revents && !p[1].revents) {
            relay_control(rl);
            continue;
        }
        if (r > 0 && p[1].revents) {
            r = relay_recover(rl);
            if (r < 0)
                return r;
            continue;
        }
        if (r <= 0) {
            if (rl->pending)
                relay_activate(rl);
            continue;
        }
        r = vuf_server_process_one(rl->srv);
        if (r == -ECONNRESET)
            return 0; /* the VMM left */
        if (r < 0 && vuf_conn_error_is_fatal(r))
            return r;
    }
}

static void relay_teardown(struct relay *rl)
{
    if (rl->dev) {
        if (rl->active)
            vuf_device_reset(rl->dev);
        vuf_device_destroy(rl->dev);
    }
    vuf_server_free(rl->srv);
    relay_tap_free(rl->tap);
    vuf_guest_mem_free(rl->mem);
    for (unsigned i = 0; i < VUF_FRONTEND_MAX_QUEUES; i++) {
        if (rl->q[i].kick_fd >= 0)
            close(rl->q[i].kick_fd);
        if (rl->q[i].call_fd >= 0)
            close(rl->q[i].call_fd);
    }
    vuf_conn_close(rl->vmm_breq);
    pthread_mutex_destroy(&rl->breq_lock);
    if (rl->area.fd >= 0)
        close(rl->area.fd);
    if (rl->crash_efd >= 0)
        close(rl->crash_efd);
    if (rl->control_fd >= 0) {
        close(rl->control_fd);
        unlink(rl->opts->control);
    }
}

static int relay_run(const struct relay_opts *o)
{
    static struct relay rl;
    struct vuf_conn *vmm = NULL, *srv_end = NULL, *tap_vmm = NULL;
    struct vuf_server_config sc = {.channel = VUF_CH_FRONTEND, .opaque = &rl};
    struct vuf_device *dev = NULL;
    int lfd = -1, r;

    memset(&rl, 0, sizeof(rl));
    rl.opts = o;
    rl.fc = (struct vuf_frontend_config){
        .device_type = o->device_type,
        .base_features_mask = RELAY_BASE_FEATURES,
        .event = relay_event,
        .event_opaque = &rl,
        /* Kept for a back-end restart (relay_recover). */
        .inflight = true,
        .max_state_size = o->max_state,
    };
    rl.area.fd = -1;
    pthread_mutex_init(&rl.breq_lock, NULL);
    for (unsigned i = 0; i < VUF_FRONTEND_MAX_QUEUES; i++)
        rl.q[i].kick_fd = rl.q[i].call_fd = -1;
    rl.control_fd = -1;
    rl.crash_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (rl.crash_efd < 0) {
        r = -errno;
        goto out;
    }
    r = relay_tap_new(stdout, o->trace, o->json, o->device_type, &rl.tap);
    if (r < 0)
        goto out;
    if (o->control) {
        r = vuf_conn_listen(o->control, &rl.control_fd);
        if (r < 0) {
            fprintf(stderr, "vuf relay: cannot listen on %s: %s\n", o->control, vuf_strerror(r));
            goto out;
        }
    }
    r = vuf_conn_listen(o->listen, &lfd);
    if (r < 0) {
        fprintf(stderr, "vuf relay: cannot listen on %s: %s\n", o->listen, vuf_strerror(r));
        goto out;
    }
    /* One VMM connection; the back-end is dialled once it is there, so
     * that a back-end serving one client at a time is not held idle. */
    do /* in slices, so that SIGTERM/SIGINT end the wait */
        r = vuf_conn_accept(lfd, 200, &vmm);
    while (r == -ETIMEDOUT && !atomic_load(&relay_stop));
    close(lfd);
    unlink(o->listen);
    if (r == -ETIMEDOUT) {
        r = 0; /* stopped before a VMM came */
        goto out;
    }
    if (r < 0) {
        fprintf(stderr, "vuf relay: accept on %s: %s\n", o->listen, vuf_strerror(r));
        goto out;
    }
    r = vuf_conn_pair(&srv_end, &tap_vmm);
    if (r < 0) {
        vuf_conn_close(vmm);
        goto out;
    }
    relay_tap_attach(rl.tap, RELAY_VMM, vmm, tap_vmm);
    r = relay_tap_start(rl.tap);
    if (r < 0) {
        vuf_conn_close(srv_end);
        goto out;
    }
    relay_tap_event(rl.tap, "connect", "VMM on %s, back-end %s", o->listen, o->connect);
    snprintf(rl.backend_path, sizeof(rl.backend_path), "%s", o->connect);
    r = relay_connect_backend(&rl, rl.backend_path, o->timeout_ms, RELAY_BACKEND, &dev);
    if (r < 0) {
        fprintf(stderr, "vuf relay: cannot connect to and negotiate with %s: %s\n", o->connect,
                vuf_strerror(r));
        vuf_conn_close(srv_end);
        goto out;
    }
    relay_take_device(&rl, dev);
    rl.nq = vuf_device_num_queues(rl.dev);
    relay_tap_event(rl.tap, "negotiated",
                    "back-end: %u queue(s), features 0x%llx, protocol features 0x%llx", rl.nq,
                    (unsigned long long)vuf_device_features(rl.dev),
                    (unsigned long long)vuf_frontend_protocol_features(rl.dev));
    install_handlers(&sc);
    r = vuf_server_new(srv_end, &sc, &rl.srv); /* takes srv_end */
    if (r < 0)
        goto out;
    vuf_conn_set_timeout(vuf_server_conn(rl.srv), 5000);
    r = serve(&rl);
    if (r < 0)
        fprintf(stderr, "vuf relay: %s\n", vuf_strerror(r));
    else
        relay_tap_event(rl.tap, "exit", "the VMM disconnected");
out:
    if (r == 0 && atomic_load(&rl.crashed))
        r = -ECONNRESET;
    relay_teardown(&rl);
    return r < 0 ? VUF_EXIT_FAIL : VUF_EXIT_OK;
}

void cmd_relay_usage(FILE *f)
{
    fprintf(f, "usage: vuf relay --listen SOCK_FOR_VMM --connect BACKEND_SOCK [options]\n"
               "\n"
               "Serve a VMM (QEMU) as a vhost-user back-end on SOCK_FOR_VMM and drive the\n"
               "back-end on BACKEND_SOCK with libvuf's front-end device. Guest memory is\n"
               "imported from the VMM's fds, kick and call eventfds go to the back-end as\n"
               "they are: the data path bypasses the relay. Serves one VMM connection and\n"
               "exits when it ends (status 1 if the back-end died and could not be\n"
               "restored).\n"
               "\n"
               "options:\n"
               "  --trace             print every message on both sides, decoded, with\n"
               "                      reply latencies, and a summary at exit (stdout)\n"
               "  --json              the same as one JSON object per line\n"
               "  --device-type T     blk (default), net, fs, ...: names feature bits\n"
               "  --timeout-ms N      wait up to N ms for the back-end socket, and for each\n"
               "                      of its replies (default 5000)\n"
               "  --reconnect-ms N    when the back-end dies, the rings resume on the\n"
               "                      back-end restarted on its socket: try (10 ms apart,\n"
               "                      doubling to 1 s, a warning each) for as long as the\n"
               "                      VMM stays connected (default; 0 or 'forever' says\n"
               "                      so), or give up and exit after N ms\n"
               "  --max-state-bytes N largest device state 'replace' moves (suffix K, M, G;\n"
               "                      default 64M)\n"
               "  --control PATH      a unix socket taking one command per connection:\n"
               "                      'replace SOCKET' moves the device, its state\n"
               "                      (DEVICE_STATE) and its rings to the back-end on\n"
               "                      SOCKET while the guest runs; answers 'ok' or 'error: ...'\n"
               "  -h, --help          this help\n");
}

int cmd_relay(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"connect", required_argument, NULL, 'c'},
        {"trace", no_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"device-type", required_argument, NULL, 'd'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"reconnect-ms", required_argument, NULL, 'R'},
        {"max-state-bytes", required_argument, NULL, 'S'},
        {"control", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct relay_opts o = {
        .timeout_ms = 5000, .device_type = VUF_DEV_BLK, .max_state = VUF_FRONTEND_STATE_MAX_SIZE};
    unsigned u;
    uint64_t bytes;
    const struct vuf_device_info *di;
    struct sigaction sa = {.sa_handler = on_signal};
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'l':
            o.listen = optarg;
            break;
        case 'c':
            o.connect = optarg;
            break;
        case 't':
            o.trace = true;
            break;
        case 'j':
            o.json = true;
            break;
        case 'd':
            di = vuf_device_by_name(optarg);
            if (!di) {
                fprintf(stderr, "vuf relay: unknown device type '%s'\n", optarg);
                return VUF_EXIT_USAGE;
            }
            o.device_type = di->type;
            break;
        case 'T':
            if (!cli_parse_uint(optarg, 1, INT_MAX, &u)) {
                fprintf(stderr, "vuf relay: --timeout-ms wants a number of ms, not '%s'\n", optarg);
                return VUF_EXIT_USAGE;
            }
            o.timeout_ms = (int)u;
            break;
        case 'R':
            if (strcmp(optarg, "forever") == 0) {
                o.reconnect_ms = 0;
            } else if (cli_parse_uint(optarg, 0, INT_MAX, &u)) {
                o.reconnect_ms = (int)u;
            } else {
                fprintf(stderr,
                        "vuf relay: --reconnect-ms wants a number of ms or 'forever', not '%s'\n",
                        optarg);
                return VUF_EXIT_USAGE;
            }
            break;
        case 'S':
            if (!cli_parse_bytes(optarg, &bytes) || bytes == 0 || bytes > SIZE_MAX / 2) {
                fprintf(stderr, "vuf relay: --max-state-bytes wants a size, not '%s'\n", optarg);
                return VUF_EXIT_USAGE;
            }
            o.max_state = (size_t)bytes;
            break;
        case 'C':
            o.control = optarg;
            break;
        case 'h':
            cmd_relay_usage(stdout);
            return VUF_EXIT_OK;
        default:
            cmd_relay_usage(stderr);
            return VUF_EXIT_USAGE;
        }
    }
    if (!o.listen || !o.connect || optind != argc) {
        cmd_relay_usage(stderr);
        return VUF_EXIT_USAGE;
    }
    vuf_log_set(relay_log, NULL, vuf_log_level());
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return relay_run(&o);
}
