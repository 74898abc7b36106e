/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user front-end as a virtio device (vuf/device.h): every
 * operation of crosvm's VhostUserFrontend, over vuf_client on the main
 * socket and a VUF_CH_BACKEND vuf_server on the back-end request channel.
 * The message sequences are listed in docs/frontend.md; the worker thread and
 * the back-end request handlers are in worker.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "deadline.h"
#include "frontend_internal.h"
#include "peer_eventfd.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))
#define F_PROTOCOL BIT(VUF_VHOST_F_PROTOCOL_FEATURES)

/* The protocol features the front-end can use (crosvm's set). REPLY_ACK is
 * needed for the back-end's SHMEM_MAP acks, and vuf also uses it for its own
 * requests unless crosvm_no_need_reply. */
#define FE_PROTOCOL_FEATURES                                                         \
    (VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ) |  \
     VUF_PROTO_MASK(CONFIG) | VUF_PROTO_MASK(DEVICE_STATE) | VUF_PROTO_MASK(SHMEM) | \
     VUF_PROTO_MASK(STATUS) | VUF_PROTO_MASK(RESET_DEVICE))
/* ... and for net, the two requests a VMM sends through the device. */
#define FE_NET_PROTOCOL_FEATURES (VUF_PROTO_MASK(NET_MTU) | VUF_PROTO_MASK(RARP))

/* Per-message deadline on the back-end request channel. */
#define FE_BREQ_TIMEOUT_MS 1000

/* The virtio-net bits whose meaning is the config space alone. */
#define FE_NET_CONFIG_FEATURES (BIT(VUF_NET_F_MAC) | BIT(VUF_NET_F_STATUS) | BIT(VUF_NET_F_MTU))

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Largest power of two <= v; 0 for 0. */
static uint16_t pow2_le(uint16_t v)
{
    uint16_t p = 1;

    if (v == 0)
        return 0;
    while ((uint32_t)p * 2 <= v)
        p *= 2;
    return p;
}

static bool is_pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

/* Remember an error that put the main socket's stream out of step. */
int fe_stream_note(struct vuf_frontend *fe, int r)
{
    if (vuf_conn_error_is_fatal(r) && !fe->stream_err)
        fe->stream_err = r;
    return r;
}

/*
 * Before an operation sends on the main socket. The back-end never speaks
 * first there, so anything already waiting is unasked-for (a second or a
 * late reply): the next request would take it for its own answer, which
 * the protocol cannot tell apart when the codes match. Fail instead, now
 * and from then on. A hang-up (EOF, no data) is left to the send.
 */
int fe_stream_check(struct vuf_frontend *fe)
{
    struct pollfd p = {.fd = vuf_conn_fd(vuf_client_conn(fe->client)), .events = POLLIN};
    char b;

    if (fe->stream_err)
        return fe->stream_err;
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN) &&
        recv(p.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 1) {
        vuf_log(VUF_LOG_ERROR,
                "%s: unsolicited message from the back-end on the main "
                "socket; treating the connection as failed",
                fe->label);
        fe->stream_err = -EPROTO;
    }
    return fe->stream_err;
}

/*
 * A u16 of guest memory at `off` in region `g`'s file, where pread is
 * refused (a sandbox without it, a file that cannot be read at an offset):
 * read through the mapping, but only after checking that a regular file
 * still backs the bytes.
 */
static int used_idx_mapped(const struct vuf_guest_region *g, uint64_t off, uint16_t *v)
{
    struct stat st;

    if (fstat(g->fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (st.st_size < 0 || (uint64_t)st.st_size < g->fd_offset + off + sizeof(*v)))
        return -EFAULT;
    *v = __atomic_load_n((const uint16_t *)(const void *)((const uint8_t *)g->host + off),
                         __ATOMIC_ACQUIRE);
    return 0;
}

/*
 * used->idx as the back-end last published it, read through the region's
 * fd rather than the mapping: the file belongs to whoever gave us the
 * memory (a VMM, for `vuf relay`) and may have been truncated since; a load
 * from a mapped page past its end is SIGBUS, a pread there is a short read.
 * Only the control path (sleep, reclaim) reads it. -EFAULT if the index is
 * not in `mem`, misaligned, or no longer backed by the file.
 */
static int queue_used_idx(const struct vuf_queue *q, const struct vuf_guest_mem *mem,
                          uint16_t *used)
{
    struct vuf_guest_region g;
    uint64_t gpa, off;
    unsigned n = vuf_guest_mem_nregions(mem);
    ssize_t k;

    /* used->idx is the u16 after used->flags (virtio 1.2 §2.7.8). */
    if (q->used_addr > UINT64_MAX - 2)
        return -EFAULT;
    gpa = q->used_addr + 2;
    for (unsigned i = 0; i < n; i++) {
        if (vuf_guest_mem_region(mem, i, &g) < 0 || gpa < g.gpa || g.size < 2 ||
            gpa - g.gpa > g.size - 2)
            continue;
        off = gpa - g.gpa;
        /* The mapping is page-aligned: the offset's parity is the address's. */
        if ((off & 1) || g.fd_offset > UINT64_MAX - off || g.fd_offset + off > INT64_MAX)
            return -EFAULT;
        do
            k = pread(g.fd, used, sizeof(*used), (off_t)(g.fd_offset + off));
        while (k < 0 && errno == EINTR);
        if (k == (ssize_t)sizeof(*used))
            return 0;
        if (k < 0 && errno != EFAULT && errno != EIO && errno != ENXIO)
            return used_idx_mapped(&g, off, used);
        return -EFAULT;
    }
    return -EFAULT;
}

/* Packed: avail half in bits 0-15, used half in 16-31 (each position |
 * wrap << 15), as QEMU sends and decodes it; a back-end that fills only the
 * avail half (DPDK) had used everything it took when it stopped, and sets
 * used = avail itself on SET_VRING_BASE. */
static int queue_reclaim_packed(struct vuf_queue *q, uint32_t base)
{
    uint16_t avail = (uint16_t)base, used = (uint16_t)(base >> 16);
    uint32_t a = avail & 0x7fff, u = used & 0x7fff, dist;

    if (!(base >> 16)) {
        used = avail;
        u = a;
    }
    if (a >= q->size || u >= q->size)
        return -EPROTO;
    /* The running distance from used to avail, as for split rings: equal
     * wrap counters put avail at or after used in the same lap, different
     * ones one lap ahead; more than a ring's worth in flight, or used
     * ahead of avail, cannot be. */
    dist = (avail ^ used) & 0x8000 ? a + q->size - u : a - u;
    if (dist > q->size)
        return -EPROTO;
    q->next_avail = avail;
    q->next_used = used;
    return 0;
}

int vuf_queue_reclaim(struct vuf_queue *q, const struct vuf_guest_mem *mem, uint32_t base)
{
    uint16_t used;
    int r;

    if (q && mem && q->packed)
        return queue_reclaim_packed(q, base);
    if (!q || !mem || base > 0xffff)
        return -EINVAL;
    r = queue_used_idx(q, mem, &used);
    if (r < 0)
        return r;
    /* At most a queue's worth of buffers is ever in flight (taken from
     * the avail ring, not yet in the used ring); a base further ahead of
     * used->idx, or behind it, would make the driver wait for buffers
     * that cannot exist or skip ones it never got back. */
    if (q->size && (uint16_t)(base - used) > q->size)
        return -EPROTO;
    q->next_used = used;
    q->next_avail = (uint16_t)base;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Features, config                                                         */
/* ------------------------------------------------------------------------ */

static uint32_t fe_device_type(const struct vuf_device *d)
{
    return fe_of_const(d)->cfg.device_type;
}

static const char *fe_debug_label(const struct vuf_device *d)
{
    return fe_of_const(d)->label;
}

static unsigned fe_num_queues(const struct vuf_device *d)
{
    return fe_of_const(d)->num_queues;
}

static const uint16_t *fe_queue_max_sizes(const struct vuf_device *d)
{
    return fe_of_const(d)->queue_sizes;
}

static uint64_t fe_features(const struct vuf_device *d)
{
    return fe_of_const(d)->avail_features;
}

static int fe_ack_features(struct vuf_device *d, uint64_t features)
{
    struct vuf_frontend *fe = fe_of(d);
    uint64_t dropped = features & ~fe->avail_features;
    uint64_t added = features & fe->avail_features & ~fe->acked_features;

    /* Features are fixed from FEATURES_OK until reset (virtio 1.2 §3.1.1);
     * an active or sleeping device is past it. A bit added now would only
     * reach the back-end at the next wake, under a running driver. Acking
     * again what is acked changes nothing and is let through. */
    if (added && (fe->active || fe->asleep)) {
        vuf_log(VUF_LOG_ERROR,
                "%s: driver acked features 0x%llx while the device is %s: features are "
                "fixed until reset",
                fe->label, (unsigned long long)added, fe->active ? "active" : "asleep");
        return -EBUSY;
    }
    /* Only accumulate: the transport acks one 32-bit word at a time, and
     * SET_FEATURES goes out at activation (sending it before the driver is
     * done confuses some back-ends). */
    fe->acked_features |= features & fe->avail_features;
    if (!dropped)
        return 0;
    /* A driver may not accept what was not offered (virtio 1.2 §2.2); the
     * caller learns it here instead of finding out from the data. */
    vuf_log(VUF_LOG_WARN, "%s: driver acked features 0x%llx that are not offered; dropped",
            fe->label, (unsigned long long)dropped);
    return __builtin_popcountll(dropped);
}

/* SET_FEATURES unless the back-end already has exactly these features. We
 * also send it when nothing was ever sent (crosvm skips it then if the
 * driver acked nothing, which leaves bit 30 unacked on the back-end while
 * we go on sending SET_VRING_ENABLE). */
int fe_send_features(struct vuf_frontend *fe)
{
    uint64_t want = fe_features_to_send(fe);
    int r = vuf_client_set_features(fe->client, want);

    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to set features 0x%llx: %s", fe->label,
                (unsigned long long)want, vuf_strerror(r));
        return r;
    }
    fe->last_sent_features = want;
    fe->features_sent = true;
    return 0;
}

static int send_features_if_needed(struct vuf_frontend *fe)
{
    if (fe->features_sent && fe_features_to_send(fe) == fe->last_sent_features)
        return 0;
    return fe_send_features(fe);
}

/*
 * Config space reaches the back-end only with CONFIG negotiated: DPDK's
 * vhost closes the socket on a GET_CONFIG it did not agree to, which would
 * take the whole device down on the guest driver's first config read. So
 * without it both accesses are -ENOTSUP, nothing sent (the VMM builds the
 * config space itself, as QEMU does for net).
 */
static int config_negotiated(struct vuf_frontend *fe)
{
    if (vuf_client_protocol_features(fe->client) & VUF_PROTO_MASK(CONFIG))
        return 0;
    vuf_log(VUF_LOG_DEBUG, "%s: config access refused: the back-end did not negotiate CONFIG",
            fe->label);
    return -ENOTSUP;
}

/* A config access's arguments: GET/SET_CONFIG carry 32-bit offsets. */
static int config_args(const struct vuf_frontend *fe, const char *what, const void *data,
                       uint64_t offset, size_t len)
{
    if (!data && len)
        return -EINVAL;
    if (offset > UINT32_MAX || len > UINT32_MAX || offset + len > UINT32_MAX) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to %s config: bad range 0x%llx+%zu", fe->label, what,
                (unsigned long long)offset, len);
        return -EINVAL;
    }
    return 0;
}

/*
 * The config space's size: cfg.config_size, else the device type's
 * (vuf_device_info) grown by the offered features that append fields
 * (virtio 1.2 §5.1.4, §5.2.4). 0: unknown (variable layout), no local
 * bound.
 */
static uint64_t config_size(const struct vuf_frontend *fe)
{
    const struct vuf_device_info *info = vuf_device_info(fe->cfg.device_type);
    uint64_t f = fe->avail_features, size;

    if (fe->cfg.config_size)
        return fe->cfg.config_size;
    size = info ? info->config_size : 0;
    if (fe->cfg.device_type == VUF_DEV_BLK) {
        if (f & BIT(VUF_BLK_F_ZONED))
            size = 96; /* ... + virtio_blk_zoned_characteristics */
        else if (f & BIT(VUF_BLK_F_SECURE_ERASE))
            size = 72; /* ... + the three secure-erase limits */
    } else if (fe->cfg.device_type == VUF_DEV_NET &&
               (f &
                (BIT(VUF_NET_F_SPEED_DUPLEX) | BIT(VUF_NET_F_RSS) | BIT(VUF_NET_F_HASH_REPORT)))) {
        size = 24; /* speed, duplex, the RSS limits, supported_hash_types */
    }
    return size;
}

/* An access past the config space would reach the back-end, which fails
 * it (qemu-storage-daemon answers an empty reply: -EIO) or worse; say
 * where the space ends instead. */
static int config_in_space(const struct vuf_frontend *fe, const char *what, uint64_t offset,
                           size_t len)
{
    uint64_t size = config_size(fe);

    if (!size || offset + len <= size)
        return 0;
    vuf_log(VUF_LOG_ERROR,
            "%s: failed to %s config 0x%llx+%zu: past the end of the %llu-byte config space "
            "[0, 0x%llx)",
            fe->label, what, (unsigned long long)offset, len, (unsigned long long)size,
            (unsigned long long)size);
    return -EINVAL;
}

/* Config messages may go out: CONFIG negotiated and the stream in step. */
static int config_ready(struct vuf_frontend *fe)
{
    int r = config_negotiated(fe);

    return r < 0 ? r : fe_stream_check(fe);
}

/* Whether the device builds the config space itself: net without CONFIG
 * (QEMU does the same for its vhost-user-net). */
static bool net_local_config(const struct vuf_frontend *fe)
{
    return fe->cfg.device_type == VUF_DEV_NET && !(fe->protocol_features & VUF_PROTO_MASK(CONFIG));
}

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* virtio-net's config space (virtio 1.2 §5.1.4) from cfg.net_* and the
 * queue layout. The fields after mtu (speed, RSS), when a feature the
 * back-end offers makes them part of the space, read as zeros. */
static int read_net_config(const struct vuf_frontend *fe, uint64_t offset, void *data, size_t len)
{
    uint8_t c[VUF_NET_CFG_SPEED]; /* mac, status, max_virtqueue_pairs, mtu */

    memset(c, 0, sizeof(c));
    memcpy(c + VUF_NET_CFG_MAC, fe->cfg.net_mac, 6);
    put_le16(c + VUF_NET_CFG_STATUS, fe->cfg.net_link_down ? 0 : VUF_NET_S_LINK_UP);
    put_le16(c + VUF_NET_CFG_MAX_VQ_PAIRS, (uint16_t)fe->net_pairs);
    put_le16(c + VUF_NET_CFG_MTU, fe->cfg.net_mtu);
    memset(data, 0, len);
    if (offset < sizeof(c))
        memcpy(data, c + offset, len < sizeof(c) - offset ? len : sizeof(c) - offset);
    return 0;
}

/*
 * GET_CONFIG/SET_CONFIG carry at most VUF_CONFIG_MAX bytes, so longer
 * accesses are split.
 */
static int fe_read_config(struct vuf_device *d, uint64_t offset, void *data, size_t len)
{
    struct vuf_frontend *fe = fe_of(d);
    uint8_t *tmp;
    size_t done = 0;
    int r = 0;

    r = config_args(fe, "read", data, offset, len);
    if (r < 0 || len == 0)
        return r;
    r = net_local_config(fe) ? 0 : config_ready(fe);
    if (r == 0)
        r = config_in_space(fe, "read", offset, len);
    if (r < 0)
        return r;
    if (net_local_config(fe))
        return read_net_config(fe, offset, data, len);
    /*
     * libvhost-user up to QEMU 7.2 (qemu-storage-daemon, virtiofsd and
     * vhost-user-gpu as Debian 12 ships them) ignores the offset of
     * GET_CONFIG and always returns the config from byte 0; QEMU's own
     * front-end never notices because it reads the whole config at once.
     * So a window that fits one message is read from offset 0 and cut out
     * here, which is correct for every back-end.
     */
    if (offset + len <= VUF_CONFIG_MAX) {
        uint32_t whole = (uint32_t)(offset + len);

        tmp = malloc(whole);
        if (!tmp)
            return -ENOMEM;
        r = fe_stream_note(
            fe, vuf_client_get_config(fe->client, 0, VUF_CONFIG_FLAG_WRITABLE, tmp, whole));
        if (r < 0)
            vuf_log(VUF_LOG_ERROR, "%s: failed to read config 0x%llx+%zu: %s", fe->label,
                    (unsigned long long)offset, len, vuf_strerror(r));
        else
            memcpy(data, tmp + offset, len);
        free(tmp);
        return r;
    }
    /* Read into a scratch buffer: the caller's stays untouched on error. */
    tmp = malloc(len);
    if (!tmp)
        return -ENOMEM;
    while (done < len) {
        uint32_t n = len - done > VUF_CONFIG_MAX ? VUF_CONFIG_MAX : (uint32_t)(len - done);

        r = fe_stream_note(fe, vuf_client_get_config(fe->client, (uint32_t)(offset + done),
                                                     VUF_CONFIG_FLAG_WRITABLE, tmp + done, n));
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to read config at 0x%llx: %s", fe->label,
                    (unsigned long long)(offset + done), vuf_strerror(r));
            break;
        }
        done += n;
    }
    if (r == 0)
        memcpy(data, tmp, len);
    free(tmp);
    return r;
}

static int fe_write_config(struct vuf_device *d, uint64_t offset, const void *data, size_t len)
{
    struct vuf_frontend *fe = fe_of(d);
    size_t done = 0;
    int r;

    r = config_args(fe, "write", data, offset, len);
    if (r < 0 || len == 0)
        return r;
    r = config_ready(fe);
    if (r == 0)
        r = config_in_space(fe, "write", offset, len);
    if (r < 0)
        return r;
    while (done < len) {
        uint32_t n = len - done > VUF_CONFIG_MAX ? VUF_CONFIG_MAX : (uint32_t)(len - done);

        r = fe_stream_note(fe, vuf_client_set_config(fe->client, (uint32_t)(offset + done),
                                                     VUF_CONFIG_FLAG_WRITABLE,
                                                     (const uint8_t *)data + done, n));

        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to write config at 0x%llx: %s", fe->label,
                    (unsigned long long)(offset + done), vuf_strerror(r));
            return r;
        }
        done += n;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Queues: activate, reset, sleep, wake                                     */
/* ------------------------------------------------------------------------ */

/* Everything about one ready queue that can be checked before sending. */
static int check_queue(struct vuf_frontend *fe, const struct vuf_guest_mem *mem, unsigned i,
                       const struct vuf_queue *q)
{
    if (i >= fe->num_queues || i > VUF_VRING_IDX_MASK) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u does not exist (%u queues)", fe->label, i,
                fe->num_queues);
        return -EINVAL;
    }
    if (!is_pow2(q->size) || q->size > fe->queue_sizes[i]) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: bad size %u (max %u)", fe->label, i, q->size,
                fe->queue_sizes[i]);
        return -EINVAL;
    }
    if (q->kick_fd < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: no kick eventfd", fe->label, i);
        return -EBADF;
    }
    if (q->packed != fe_packed(fe)) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u is %s but the driver acked %s rings", fe->label, i,
                q->packed ? "packed" : "split", fe_packed(fe) ? "packed" : "split");
        return -EINVAL;
    }
    if (q->packed) {
        /* §2.8.10.1: descriptor ring 16, both event areas 4. */
        if (!vuf_guest_mem_to_host(mem, q->desc_addr, VUF_VRING_DESC_BYTES(q->size)) ||
            !vuf_guest_mem_to_host(mem, q->avail_addr, 4) ||
            !vuf_guest_mem_to_host(mem, q->used_addr, 4)) {
            vuf_log(VUF_LOG_ERROR, "%s: queue %u: ring not in guest memory", fe->label, i);
            return -EFAULT;
        }
        if ((q->desc_addr & 15) || (q->avail_addr & 3) || (q->used_addr & 3)) {
            vuf_log(VUF_LOG_ERROR, "%s: queue %u: misaligned ring", fe->label, i);
            return -EINVAL;
        }
        return 0;
    }
    if (!vuf_guest_mem_to_host(mem, q->desc_addr, VUF_VRING_DESC_BYTES(q->size)) ||
        !vuf_guest_mem_to_host(mem, q->avail_addr, VUF_VRING_AVAIL_BYTES(q->size)) ||
        !vuf_guest_mem_to_host(mem, q->used_addr, VUF_VRING_USED_BYTES(q->size))) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: ring not in guest memory", fe->label, i);
        return -EFAULT;
    }
    /* The alignments the back-end checks (virtio 1.2 §2.7). */
    if ((q->desc_addr & 15) || (q->avail_addr & 1) || (q->used_addr & 3)) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: misaligned ring", fe->label, i);
        return -EINVAL;
    }
    return 0;
}

void fe_vring_addr(const struct vuf_frontend *fe, const struct vuf_guest_mem *mem, unsigned i,
                   const struct vuf_queue *q, struct vuf_vring_addr *addr)
{
    memset(addr, 0, sizeof(*addr));
    addr->index = i;
    /* Host addresses: the back-end translates them through the
     * userspace_addr of SET_MEM_TABLE. check_queue() already bounds-checked
     * the whole of each ring. */
    addr->desc = (uint64_t)(uintptr_t)vuf_guest_mem_to_host(mem, q->desc_addr,
                                                            VUF_VRING_DESC_BYTES(q->size));
    /* Packed: avail = driver area, used = device area (4 bytes each). */
    addr->used = (uint64_t)(uintptr_t)vuf_guest_mem_to_host(
        mem, q->used_addr, q->packed ? 4 : VUF_VRING_USED_BYTES(q->size));
    addr->avail = (uint64_t)(uintptr_t)vuf_guest_mem_to_host(
        mem, q->avail_addr, q->packed ? 4 : VUF_VRING_AVAIL_BYTES(q->size));
    /* While logging, used-ring writes are logged at this GPA (QEMU sends
     * the used ring's guest-physical address). */
    if (fe->log_bits) {
        addr->flags = VUF_VRING_F_LOG;
        addr->log = q->used_addr;
    }
}

static int activate_vring(struct vuf_frontend *fe, const struct vuf_guest_mem *mem, unsigned i,
                          const struct vuf_queue *q, int call_fd)
{
    struct vuf_vring_addr addr;
    const char *step;
    int r;

    step = "SET_VRING_NUM";
    r = vuf_client_set_vring_num(fe->client, i, q->size);
    if (r < 0)
        goto fail;
    fe_vring_addr(fe, mem, i, q, &addr);
    step = "SET_VRING_ADDR";
    r = vuf_client_set_vring_addr(fe->client, &addr);
    if (r < 0)
        goto fail;
    step = "SET_VRING_BASE";
    /* Packed: the avail position and wrap counter in bits 0-15, the used
     * pair in 16-31 (QEMU's encoding; DPDK reads the low half only). */
    r = vuf_client_set_vring_base(fe->client, i,
                                  q->packed ? (uint32_t)q->next_avail | (uint32_t)q->next_used << 16
                                            : q->next_avail);
    if (r < 0)
        goto fail;
    step = "SET_VRING_CALL";
    r = vuf_client_set_vring_call(fe->client, i, call_fd);
    if (r < 0)
        goto fail;
    step = "SET_VRING_KICK";
    r = vuf_client_set_vring_kick(fe->client, i, q->kick_fd);
    if (r < 0)
        goto fail;
    /* SET_VRING_ENABLE exists only with VHOST_USER_F_PROTOCOL_FEATURES;
     * without it the back-end enables rings on its own. */
    if (fe->vhost_protocol) {
        step = "SET_VRING_ENABLE";
        r = vuf_client_set_vring_enable(fe->client, i, true);
        if (r < 0)
            goto fail;
    }
    /* One kick once the ring is set up (the spec's "should"; newest QEMU
     * always does it): after a wake or a reconnect the avail ring may
     * already hold buffers, and a back-end that only looks on a kick would
     * wait for the next one. The back-end holds the kick fd and could
     * make a write() block (O_NONBLOCK cleared, counter full), so the kick
     * goes through vuf_peer_efd_signal(), which cannot. */
    r = vuf_peer_efd_signal_flags(q->kick_fd, fe->cfg.no_aio ? VUF_PEER_EFD_NO_AIO : 0);
    if (r < 0)
        vuf_log(VUF_LOG_WARN, "%s: queue %u: initial kick failed: %s", fe->label, i, strerror(-r));
    return 0;
fail:
    vuf_log(VUF_LOG_ERROR, "%s: queue %u: %s failed: %s", fe->label, i, step, vuf_strerror(r));
    return r;
}

/*
 * Stop one ring: [SET_VRING_ENABLE(0)], GET_VRING_BASE. *base is valid iff
 * *have_base. *broken is set when the connection can no longer be used. A
 * refused disable does not keep us from stopping the ring.
 */
static int deactivate_vring(struct vuf_frontend *fe, unsigned i, bool packed, uint32_t *base,
                            bool *have_base, bool *broken)
{
    int err = 0, r;

    *have_base = false;
    if (fe->vhost_protocol) {
        r = vuf_client_set_vring_enable(fe->client, i, false);
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: queue %u: disable failed: %s", fe->label, i,
                    vuf_strerror(r));
            err = r;
            if (vuf_conn_error_is_fatal(r)) {
                *broken = true;
                return r;
            }
        }
    }
    r = vuf_client_get_vring_base(fe->client, i, base);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: failed to get vring base: %s", fe->label, i,
                vuf_strerror(r));
        if (vuf_conn_error_is_fatal(r))
            *broken = true;
        return r;
    }
    /* Split rings: the next avail index lives in bits 0-15, the rest is
     * reserved. crosvm calls this VringBaseTooBig. */
    if (!packed && *base > 0xffff) {
        vuf_log(VUF_LOG_ERROR, "%s: queue %u: vring base 0x%x returned by the back-end is too big",
                fe->label, i, *base);
        return -EPROTO;
    }
    *have_base = true;
    return err;
}

/*
 * Stop every sent queue (ascending, as sent). With `reclaim`, bring each
 * local copy up to date from the back-end's base; a queue whose base could
 * not be had falls back to used->idx for both indices, as QEMU does when the
 * back-end is gone (buffers the back-end took but did not use are then
 * lost to the driver - the best that can be done). Returns the first error;
 * every queue is handled either way.
 */
static int stop_queues(struct vuf_frontend *fe, bool reclaim)
{
    int err = fe->nsent ? fe_stream_check(fe) : 0;
    bool broken = err < 0;

    for (unsigned k = 0; k < fe->nsent; k++) {
        struct fe_sent_queue *s = &fe->sent[k];
        bool have_base = false;
        uint32_t base = 0;
        uint16_t used;
        int r = -ECONNRESET;

        if (!broken)
            r = fe_stream_note(
                fe, deactivate_vring(fe, s->index, s->q.packed, &base, &have_base, &broken));
        if (r < 0 && !err)
            err = r;
        if (!reclaim)
            continue;
        if (have_base) {
            int rc = vuf_queue_reclaim(&s->q, fe->mem, base);

            if (rc == 0)
                continue;
            if (rc == -EPROTO) {
                vuf_log(VUF_LOG_ERROR,
                        s->q.packed ? "%s: queue %u: vring base 0x%x names a position past "
                                      "the queue size (%u) or used ahead of avail"
                                    : "%s: queue %u: vring base %u is more than the queue size "
                                      "(%u) from used->idx",
                        fe->label, s->index, base, s->q.size);
                if (!err)
                    err = rc;
            }
        }
        /* A packed ring has no used index in memory to fall back on: the
         * positions stay as they were sent. */
        if (!s->q.packed && queue_used_idx(&s->q, fe->mem, &used) == 0)
            s->q.next_avail = s->q.next_used = used;
        else if (!s->q.packed && have_base && base <= 0xffff)
            /* The used ring is no longer readable (its file was shrunk
             * under us): the back-end's base is all there is. */
            s->q.next_avail = s->q.next_used = (uint16_t)base;
    }
    return err;
}

/* Forget the active state (worker already stopped). */
static void clear_active(struct vuf_frontend *fe)
{
    free(fe->sent);
    fe->sent = NULL;
    fe->nsent = 0;
    fe->active = false;
    fe->mem = NULL;
    memset(&fe->intr, 0, sizeof(fe->intr));
}

/*
 * Everything activate can check before the first message, so that a bad
 * argument leaves the back-end untouched. *nready = the ready queues.
 */
static int check_activation(struct vuf_frontend *fe, const struct vuf_guest_mem *mem,
                            const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                            unsigned nqueues, unsigned *nready)
{
    int r;

    if (fe->active || fe->worker) {
        vuf_log(VUF_LOG_ERROR, "%s: activate while active", fe->label);
        return -EBUSY;
    }
    if (!mem || !intr || !intr->ops || (nqueues && !queues))
        return -EINVAL;
    /* A driver must accept VERSION_1 when a device offers it, and a
     * modern device may refuse to run without it (virtio 1.2 §6.1); a
     * vhost-user back-end does (qemu-storage-daemon aborts on
     * SET_FEATURES without it). */
    if (!fe->cfg.legacy && (fe->avail_features & BIT(VUF_VIRTIO_F_VERSION_1)) &&
        !(fe->acked_features & BIT(VUF_VIRTIO_F_VERSION_1))) {
        vuf_log(VUF_LOG_ERROR,
                "%s: the driver did not accept VIRTIO_F_VERSION_1 (acked 0x%llx): a modern "
                "device requires it (set cfg.legacy for a legacy device)",
                fe->label, (unsigned long long)fe->acked_features);
        return -EINVAL;
    }
    if (nqueues > fe->num_queues) {
        vuf_log(VUF_LOG_ERROR, "%s: %u queues given, the device has %u", fe->label, nqueues,
                fe->num_queues);
        return -EINVAL;
    }
    *nready = 0;
    for (unsigned i = 0; i < nqueues; i++) {
        if (!queues[i].ready)
            continue;
        r = check_queue(fe, mem, i, &queues[i]);
        if (r < 0)
            return r;
        (*nready)++;
    }
    r = fe_mem_check(fe, mem); /* 1..8 regions, or 1..max_mem_slots */
    if (r < 0)
        return r;
    r = fe_inflight_check(fe, queues, nqueues); /* the sizes fit a kept area */
    if (r < 0)
        return r;
    return fe_stream_check(fe);
}

/*
 * Take on the active state and start the worker, before any message.
 * *non_msix = the eventfd shared by every queue without an irqfd (the
 * worker owns it). On failure the device is left inactive.
 */
static int start_worker(struct vuf_frontend *fe, const struct vuf_guest_mem *mem,
                        const struct vuf_interrupt *intr, unsigned nready, int *non_msix)
{
    int r;

    fe->sent = calloc(nready ? nready : 1, sizeof(*fe->sent));
    if (!fe->sent)
        return -ENOMEM;
    fe->nsent = 0;

    /* One eventfd for every queue without an irqfd; the worker turns its
     * signals into signal_used_queue(VUF_NO_VECTOR). */
    *non_msix = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (*non_msix < 0) {
        r = -errno;
        clear_active(fe);
        return r;
    }
    fe->mem = mem;
    fe->intr = *intr;
    /* Start the worker first (crosvm starts it last): with REPLY_ACK we wait
     * for acks here, and a back-end may need a back-end request served
     * before it answers. */
    r = fe_worker_start(fe, *non_msix); /* takes non_msix, also on failure */
    if (r < 0)
        clear_active(fe);
    return r;
}

/* Set up every ready queue on the back-end, ascending. */
static int start_queues(struct vuf_frontend *fe, const struct vuf_guest_mem *mem,
                        const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                        unsigned nqueues, int non_msix)
{
    for (unsigned i = 0; i < nqueues; i++) {
        const struct vuf_queue *q = &queues[i];
        int call_fd = -1, r;

        if (!q->ready)
            continue;
        if (q->vector != VUF_NO_VECTOR && intr->ops->irqfd)
            call_fd = intr->ops->irqfd(intr->opaque, q->vector);
        if (call_fd < 0)
            call_fd = non_msix;
        /* Record it before sending: a partly configured ring must be
         * stopped too if we roll back. */
        fe->sent[fe->nsent].index = i;
        fe->sent[fe->nsent].q = *q;
        fe->nsent++;
        r = activate_vring(fe, mem, i, q, call_fd);
        if (r < 0)
            return r;
    }
    return 0;
}

static bool has_status(const struct vuf_frontend *fe)
{
    return (fe->protocol_features & VUF_PROTO_MASK(STATUS)) != 0;
}

/* SET_STATUS with `bits` added to what the back-end has, when they add
 * anything (QEMU adds them the same way; a wake sends nothing). */
static int add_status(struct vuf_frontend *fe, uint8_t bits)
{
    uint8_t want = fe->status | bits;
    int r;

    if (!has_status(fe) || want == fe->status)
        return 0;
    r = vuf_client_set_status(fe->client, want);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to set status 0x%x: %s", fe->label, want,
                vuf_strerror(r));
        return r;
    }
    fe->status = want;
    return 0;
}

/*
 * The driver's FEATURES_OK step (virtio 1.2 §3.1.1: set it, then re-read
 * the status; a device that cleared it does not accept the features),
 * after SET_FEATURES.
 */
static int features_ok(struct vuf_frontend *fe)
{
    bool fresh = !(fe->status & VUF_STATUS_FEATURES_OK);
    uint8_t st = 0;
    int r;

    r = add_status(fe, VUF_STATUS_ACKNOWLEDGE | VUF_STATUS_DRIVER | VUF_STATUS_FEATURES_OK);
    if (r < 0 || !fresh || !has_status(fe))
        return r;
    r = vuf_client_get_status(fe->client, &st);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get status: %s", fe->label, vuf_strerror(r));
        return r;
    }
    if (!(st & VUF_STATUS_FEATURES_OK)) {
        vuf_log(VUF_LOG_ERROR,
                "%s: the back-end cleared FEATURES_OK (status 0x%x): it does not accept "
                "features 0x%llx",
                fe->label, st, (unsigned long long)fe_features_to_send(fe));
        return -ENOTSUP;
    }
    return 0;
}

static int fe_activate(struct vuf_device *d, const struct vuf_guest_mem *mem,
                       const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                       unsigned nqueues)
{
    struct vuf_frontend *fe = fe_of(d);
    unsigned nready = 0;
    int non_msix, r;

    r = check_activation(fe, mem, intr, queues, nqueues, &nready);
    if (r < 0)
        return r;
    r = start_worker(fe, mem, intr, nready, &non_msix);
    if (r < 0)
        return r;

    r = send_features_if_needed(fe);
    if (r == 0)
        r = features_ok(fe); /* [SET_STATUS, GET_STATUS] */
    /* QEMU's order: the inflight area before the memory and the rings. */
    if (r == 0)
        r = fe_inflight_activate(fe, queues, nqueues); /* [GET_]SET_INFLIGHT_FD */
    if (r == 0)
        r = fe_mem_send(fe, mem); /* SET_MEM_TABLE or the ADD/REM_MEM_REG diff */
    if (r == 0)
        r = fe_log_activate(fe, mem); /* SET_LOG_BASE while logging */
    if (r == 0)
        r = start_queues(fe, mem, intr, queues, nqueues, non_msix);
    if (r == 0)
        r = add_status(fe, VUF_STATUS_DRIVER_OK); /* [SET_STATUS] */
    if (r < 0)
        goto fail;
    /* Only an active device reports a crash (a failed activation reports
     * its error); a hang-up during activation is still seen now. */
    r = fe_worker_watch_backend(fe);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: cannot watch the back-end socket: %s", fe->label,
                vuf_strerror(r));
        goto fail;
    }
    fe->active = true;
    fe->asleep = false;
    return 0;

fail:
    fe_stream_note(fe, r);
    /* crosvm leaves started rings running on the back-end; stop them so it
     * no longer touches guest memory the transport will reset. */
    if (!vuf_conn_error_is_fatal(r))
        stop_queues(fe, false);
    fe_worker_stop(fe);
    clear_active(fe);
    return r;
}

/*
 * The back-end's side of a device reset, after the rings are stopped:
 * SET_STATUS(0) with STATUS, then RESET_DEVICE when negotiated (QEMU's
 * use). Without RESET_DEVICE nothing more is sent: stopping the rings is
 * the reset, as in crosvm (RESET_OWNER is deprecated and never sent).
 * Either message makes the back-end forget the acked features, so the next
 * activation sends SET_FEATURES again.
 */
static int reset_backend(struct vuf_frontend *fe)
{
    bool sent = false;
    int err = 0, r;

    /* A back-end never started (nothing sent since construction or the last
     * reset) has nothing to reset: a transport's reset at guest boot sends
     * nothing. */
    if (!fe->features_sent && !fe->status)
        return 0;
    if (fe_stream_check(fe) < 0) {
        fe->status = 0;
        return 0; /* nothing can be sent; stop_queues reported it */
    }
    if (has_status(fe) && fe->status) {
        r = fe_stream_note(fe, vuf_client_set_status(fe->client, 0));
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to set status 0: %s", fe->label, vuf_strerror(r));
            err = r;
        }
        sent = true;
    }
    fe->status = 0;
    if ((fe->protocol_features & VUF_PROTO_MASK(RESET_DEVICE)) && !fe->stream_err) {
        r = fe_stream_note(fe, vuf_client_reset_device(fe->client));
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to reset the device: %s", fe->label,
                    vuf_strerror(r));
            if (!err)
                err = r;
        }
        sent = true;
    }
    if (sent)
        fe->features_sent = false;
    return err;
}

static int fe_reset(struct vuf_device *d)
{
    struct vuf_frontend *fe = fe_of(d);
    int err = 0, r;

    if (fe->active)
        err = stop_queues(fe, false);
    /* Stop the worker on every path (crosvm leaves it running when a
     * queue fails to stop). */
    fe_worker_stop(fe);
    r = reset_backend(fe);
    if (r < 0 && !err)
        err = r;
    /* The spec: SHMEM mappings are unmapped by the front-end across a device
     * reset (crosvm has this as a TODO). */
    r = fe_remove_all_mappings(fe);
    if (r < 0 && !err)
        err = r;
    clear_active(fe);
    fe->asleep = false;
    fe_log_release(fe); /* reset ends dirty logging (docs/frontend.md) */
    /* A guest reset: nothing is in flight any more, so the area goes (as
     * QEMU frees it); the next activation asks for a new one. */
    fe_inflight_release(fe);
    return err;
}

static int fe_sleep(struct vuf_device *d, struct vuf_queue *queues, unsigned nqueues)
{
    struct vuf_frontend *fe = fe_of(d);
    int err;

    if (!fe->active)
        return 0;
    for (unsigned k = 0; k < fe->nsent; k++)
        if (fe->sent[k].index >= nqueues || !queues) {
            vuf_log(VUF_LOG_ERROR, "%s: sleep: queue %u has nowhere to go (%u given)", fe->label,
                    fe->sent[k].index, nqueues);
            return -EINVAL;
        }
    err = stop_queues(fe, true);
    fe_worker_stop(fe);
    /* Hand the queues back on every path: losing them would lose the
     * guest's ring positions (crosvm drops them on error). */
    for (unsigned k = 0; k < fe->nsent; k++)
        queues[fe->sent[k].index] = fe->sent[k].q;
    clear_active(fe);
    fe->asleep = true;
    return err < 0 ? err : 1;
}

static int fe_wake(struct vuf_device *d, const struct vuf_guest_mem *mem,
                   const struct vuf_interrupt *intr, const struct vuf_queue *queues,
                   unsigned nqueues)
{
    struct vuf_frontend *fe = fe_of(d);

    /* The back-end kept its state while asleep; wake is activate with the
     * reclaimed queues (SET_VRING_BASE carries next_avail). */
    if (!mem)
        return 0;
    if (fe->active) {
        vuf_log(VUF_LOG_ERROR, "%s: wake while active", fe->label);
        return -EBUSY;
    }
    /* A device that never slept has nothing to resume: starting it here
     * would hide a VMM's lost sleep or a reset in between. */
    if (!fe->asleep) {
        vuf_log(VUF_LOG_ERROR, "%s: wake without sleep or restore (activate starts a device)",
                fe->label);
        return -EINVAL;
    }
    return fe_activate(d, mem, intr, queues, nqueues);
}

/* ------------------------------------------------------------------------ */
/* Snapshot / restore (DEVICE_STATE)                                        */
/* ------------------------------------------------------------------------ */

/*
 * The snapshot blob: a 24-byte header in host (little-endian) order, then
 * the back-end's state bytes.
 */
#define SNAP_MAGIC 0x53465556u /* "VUFS" */
#define SNAP_VERSION 1u
struct snap_hdr {
    uint32_t magic;
    uint32_t version;
    uint64_t acked_features;
    uint64_t state_len;
};
_Static_assert(sizeof(struct snap_hdr) == 24, "snapshot header");

static int64_t state_deadline(const struct vuf_frontend *fe)
{
    int t = fe->cfg.state_timeout_ms;

    if (t < 0)
        return -1;
    return vuf_now_ms() + (t ? t : VUF_FRONTEND_STATE_TIMEOUT_MS);
}

static size_t state_max(const struct vuf_frontend *fe)
{
    size_t max = fe->cfg.max_state_size ? fe->cfg.max_state_size : VUF_FRONTEND_STATE_MAX_SIZE;
    /* read_to_eof adds the blob header and one probe byte to the bound. */
    size_t limit = SIZE_MAX - sizeof(struct snap_hdr) - 1;

    return max > limit ? limit : max;
}

/*
 * The back-end's own state fd shares its file description with the
 * back-end, which can keep a copy: steal the data poll() saw, refill the
 * pipe poll() found room in, clear O_NONBLOCK, or set SO_RCVLOWAT. A read
 * or write after poll() can then block for ever. So a pipe is reopened
 * through /proc/self/fd into a non-blocking description of our own, and a
 * socket is used with MSG_DONTWAIT only; a regular file never blocks.
 * Anything else is refused. Replaces *fd (closing the old one, also on
 * failure) and sets *sock.
 */
static int own_state_fd(int *fd, int mode, bool *sock)
{
    char path[40];
    struct stat st;
    int nfd, acc = fcntl(*fd, F_GETFL) & O_ACCMODE;

    *sock = false;
    /* The end we were given must allow the transfer (a reopen would not
     * care which end of a pipe it came from). */
    if (fstat(*fd, &st) < 0 ||
        !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISREG(st.st_mode)) ||
        acc == (mode == O_RDONLY ? O_WRONLY : O_RDONLY)) {
        close(*fd);
        *fd = -1;
        return -EBADF;
    }
    if (S_ISSOCK(st.st_mode)) {
        *sock = true;
        return 0;
    }
    if (S_ISREG(st.st_mode))
        return 0;
    snprintf(path, sizeof(path), "/proc/self/fd/%d", *fd);
    nfd = open(path, mode | O_NONBLOCK | O_CLOEXEC);
    close(*fd);
    *fd = nfd;
    return nfd < 0 ? -errno : 0;
}

/* One read or write that never blocks, on a pipe/file description of our
 * own or a socket (see own_state_fd). */
static ssize_t read_nowait(int fd, bool sock, void *buf, size_t len)
{
    return sock ? recv(fd, buf, len, MSG_DONTWAIT) : read(fd, buf, len);
}

/*
 * Read fd to EOF into buf (after `hdr` bytes of room), growing it, at most
 * `max` bytes. The fd never blocks (our own pipe end, or own_state_fd).
 */
static int read_to_eof(int fd, bool sock, int64_t deadline, size_t max, size_t room, uint8_t **buf,
                       size_t *len)
{
    size_t cap = 0, n = 0;
    uint8_t *b = NULL;
    int r;

    for (;;) {
        ssize_t got;

        if (room + n >= cap) {
            size_t ncap = cap ? cap * 2 : room + 65536;
            uint8_t *nb;

            if (ncap > room + max + 1)
                ncap = room + max + 1;
            nb = realloc(b, ncap);
            if (!nb) {
                r = -ENOMEM;
                goto fail;
            }
            b = nb;
            cap = ncap;
        }
        r = vuf_poll_fd(fd, POLLIN, deadline);
        if (r < 0)
            goto fail;
        got = read_nowait(fd, sock, b + room + n, cap - room - n);
        if (got == 0)
            break;
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            r = -errno;
            goto fail;
        }
        n += (size_t)got;
        if (n > max) {
            r = -EFBIG;
            goto fail;
        }
    }
    *buf = b;
    *len = n;
    return 0;
fail:
    free(b);
    return r;
}

/* write(2) that turns a closed reader into -EPIPE without a SIGPIPE: the
 * signal is blocked on this thread for the call and a SIGPIPE it raised
 * is consumed. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t len)
{
    sigset_t set, old, pending;
    bool was_pending;
    ssize_t n;
    int e;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    sigpending(&pending);
    was_pending = sigismember(&pending, SIGPIPE);
    n = write(fd, buf, len);
    e = errno;
    if (n < 0 && e == EPIPE && !was_pending) {
        const struct timespec zero = {0, 0};

        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return n;
}

/* Write all of buf before the deadline. The fd never blocks (our own pipe
 * end, or own_state_fd). */
static int write_all(int fd, bool sock, const uint8_t *buf, size_t len, int64_t deadline)
{
    const size_t chunk = 65536;

    while (len) {
        ssize_t n;
        int r = vuf_poll_fd(fd, POLLOUT, deadline);

        if (r < 0)
            return r;
        if (sock)
            n = send(fd, buf, len < chunk ? len : chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
        else
            n = write_nosigpipe(fd, buf, len < chunk ? len : chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A pipe whose end `ours` (0 read, 1 write) is non-blocking; the other end
 * (sent to the back-end) keeps the back-end's expected blocking mode. */
static int make_pipe(int p[2], int ours)
{
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    if (fcntl(p[ours], F_SETFL, O_NONBLOCK) < 0) {
        int r = -errno;

        close(p[0]);
        close(p[1]);
        return r;
    }
    return 0;
}

static int require_device_state(const struct vuf_frontend *fe, const char *what)
{
    if (!(fe->protocol_features & VUF_PROTO_MASK(DEVICE_STATE))) {
        vuf_log(VUF_LOG_ERROR, "%s: %s requires VHOST_USER_PROTOCOL_F_DEVICE_STATE", fe->label,
                what);
        return -ENOTSUP;
    }
    return 0;
}

/* Open the state channel for `dir`: a pipe whose far end goes to the
 * back-end with SET_DEVICE_STATE_FD and is closed here. *ours is our end
 * (the read end to save, the write end to load), *backend_fd the
 * back-end's own fd or -1. */
static int open_state_channel(struct vuf_frontend *fe, uint32_t dir, int *ours, int *backend_fd)
{
    int end = dir == VUF_STATE_DIR_SAVE ? 0 : 1, p[2], r;

    r = make_pipe(p, end);
    if (r < 0)
        return r;
    r = fe_stream_note(fe, vuf_client_set_device_state_fd(fe->client, dir, VUF_STATE_PHASE_STOPPED,
                                                          p[1 - end], backend_fd));
    /* Saving, EOF ends the state, so our write end must be gone before we
     * read. Loading, the back-end has its own copy of the read end; without
     * ours, a back-end that stops reading makes our write fail instead of
     * block. */
    close(p[1 - end]);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to negotiate device state fd: %s", fe->label,
                vuf_strerror(r));
        close(p[end]);
        return r;
    }
    *ours = p[end];
    return 0;
}

/* CHECK_DEVICE_STATE once the state went through the channel. */
static int check_state_transfer(struct vuf_frontend *fe)
{
    int r = fe_stream_note(fe, vuf_client_check_device_state(fe->client));

    if (r < 0)
        vuf_log(VUF_LOG_ERROR, "%s: failed to transfer device state: %s", fe->label,
                vuf_strerror(r));
    return r;
}

static int fe_snapshot(struct vuf_device *d, uint8_t **data, size_t *len)
{
    struct vuf_frontend *fe = fe_of(d);
    struct snap_hdr h;
    uint8_t *buf = NULL;
    size_t n = 0;
    int pipe_fd, backend_fd = -1, r;
    bool sock = false;

    if (!data || !len)
        return -EINVAL;
    if (fe->active) {
        /* The state is only defined with every ring stopped (spec:
         * "Migrating back-end state"); sleep first. */
        vuf_log(VUF_LOG_ERROR, "%s: snapshot while active", fe->label);
        return -EBUSY;
    }
    r = require_device_state(fe, "snapshot");
    if (r == 0)
        r = fe_stream_check(fe);
    if (r == 0)
        r = open_state_channel(fe, VUF_STATE_DIR_SAVE, &pipe_fd, &backend_fd);
    if (r < 0)
        return r;
    r = backend_fd >= 0 ? own_state_fd(&backend_fd, O_RDONLY, &sock) : 0;
    if (r == 0)
        r = read_to_eof(backend_fd >= 0 ? backend_fd : pipe_fd, sock, state_deadline(fe),
                        state_max(fe), sizeof(h), &buf, &n);
    close(pipe_fd);
    if (backend_fd >= 0)
        close(backend_fd);
    if (r < 0) {
        /* No CHECK_DEVICE_STATE: a back-end that did not finish writing
         * cannot vouch for the state, and a silent one would only make us
         * wait again. */
        vuf_log(VUF_LOG_ERROR, "%s: failed to read device state: %s", fe->label,
                r == -EFBIG ? "larger than the limit" : vuf_strerror(r));
        return r;
    }
    r = check_state_transfer(fe);
    if (r < 0) {
        free(buf);
        return r;
    }
    h.magic = SNAP_MAGIC;
    h.version = SNAP_VERSION;
    h.acked_features = fe->acked_features;
    h.state_len = n;
    memcpy(buf, &h, sizeof(h));
    *data = buf;
    *len = sizeof(h) + n;
    return 0;
}

static int fe_restore(struct vuf_device *d, const uint8_t *data, size_t len)
{
    struct vuf_frontend *fe = fe_of(d);
    struct snap_hdr h;
    int pipe_fd, backend_fd = -1, r;
    uint64_t missing, old_acked;
    bool sock = false;

    r = require_device_state(fe, "restore");
    if (r < 0)
        return r;
    if (fe->active) {
        vuf_log(VUF_LOG_ERROR, "%s: restore while active", fe->label);
        return -EBUSY;
    }
    if (!data || len < sizeof(h))
        return -EINVAL;
    memcpy(&h, data, sizeof(h));
    if (h.magic != SNAP_MAGIC || h.version != SNAP_VERSION || h.state_len != len - sizeof(h)) {
        vuf_log(VUF_LOG_ERROR, "%s: not a vuf front-end snapshot (or a damaged one)", fe->label);
        return -EINVAL;
    }
    /* Snapshots made before bit 30 left the acked set may carry it. */
    h.acked_features &= ~F_PROTOCOL;
    missing = h.acked_features & ~fe->avail_features;
    if (missing) {
        vuf_log(VUF_LOG_ERROR,
                "%s: the back-end does not offer every feature acked by the source, "
                "missing 0x%llx",
                fe->label, (unsigned long long)missing);
        return -ENOTSUP;
    }
    r = fe_stream_check(fe);
    if (r < 0)
        return r;
    /* Bit 30 is sent whenever this back-end offers it (fe->vhost_protocol):
     * it decides whether the rings wait for SET_VRING_ENABLE. A failed
     * restore leaves the acked set as it was (the next activation then
     * re-sends it). */
    old_acked = fe->acked_features;
    fe->acked_features = h.acked_features;
    r = fe_stream_note(fe, send_features_if_needed(fe));
    if (r < 0)
        goto fail;

    r = open_state_channel(fe, VUF_STATE_DIR_LOAD, &pipe_fd, &backend_fd);
    if (r < 0)
        goto fail;
    if (backend_fd >= 0) {
        r = own_state_fd(&backend_fd, O_WRONLY, &sock);
        if (r == 0)
            r = write_all(backend_fd, sock, data + sizeof(h), (size_t)h.state_len,
                          state_deadline(fe));
    } else {
        r = write_all(pipe_fd, false, data + sizeof(h), (size_t)h.state_len, state_deadline(fe));
    }
    /* EOF marks the end of the state. */
    close(pipe_fd);
    if (backend_fd >= 0)
        close(backend_fd);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to write device state: %s", fe->label, vuf_strerror(r));
        goto fail;
    }
    r = check_state_transfer(fe);
    if (r == 0) {
        fe->asleep = true; /* where sleep leaves a device: wake resumes it */
        return 0;
    }
fail:
    fe->acked_features = old_acked;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Shared memory                                                            */
/* ------------------------------------------------------------------------ */

static int fe_get_shm_region(struct vuf_device *d, struct vuf_shm_region *out)
{
    struct vuf_frontend *fe = fe_of(d);
    struct vuf_shmem_config *cfg;
    struct vuf_shm_region reg = {0, 0};
    unsigned count = 0;
    int r;

    if (!(fe->protocol_features & VUF_PROTO_MASK(SHMEM)))
        return 0;

    pthread_mutex_lock(&fe->shm_lock);
    switch (fe->shm_state) {
    case FE_SHM_NONE:
        r = 0;
        break;
    case FE_SHM_REGION:
        if (out)
            *out = fe->region;
        r = 1;
        break;
    case FE_SHM_ERROR:
        r = fe->shm_err;
        break;
    default:
        r = -EAGAIN;
        break;
    }
    pthread_mutex_unlock(&fe->shm_lock);
    if (r != -EAGAIN)
        return r;

    r = fe_stream_check(fe);
    if (r < 0)
        return r;
    cfg = malloc(sizeof(*cfg)); /* 2 KiB: keep it off the stack */
    if (!cfg)
        return -ENOMEM;
    r = fe_stream_note(fe, vuf_client_get_shmem_config(fe->client, cfg));
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get shared memory config: %s", fe->label,
                vuf_strerror(r));
    } else {
        /* The region id is its index; holes (size 0) are skipped. */
        for (unsigned i = 0; i < VUF_SHMEM_MAX_REGIONS; i++) {
            if (!cfg->memory_sizes[i])
                continue;
            if (count++ == 0) {
                reg.id = (uint8_t)i;
                reg.length = cfg->memory_sizes[i];
            }
        }
        if (count > 1) {
            vuf_log(VUF_LOG_ERROR, "%s: too many shmem regions: %u > 1", fe->label, count);
            r = -ENOTSUP;
        } else if (count == 1 && (reg.length & ((uint64_t)sysconf(_SC_PAGESIZE) - 1))) {
            /* The spec: region sizes are multiples of the mmap page size;
             * a VMM could not map anything else into a guest window. */
            vuf_log(VUF_LOG_ERROR, "%s: shmem region %u size 0x%llx is not page aligned", fe->label,
                    reg.id, (unsigned long long)reg.length);
            r = -EPROTO;
        }
    }
    free(cfg);

    pthread_mutex_lock(&fe->shm_lock);
    if (r == 0 && count == 0) {
        fe->shm_state = FE_SHM_NONE;
    } else if (r == 0) {
        fe->shm_state = FE_SHM_REGION;
        fe->region = reg;
        if (out)
            *out = reg;
        r = 1;
    } else if (r != -ETIMEDOUT && r != -ENOMEM && r != -EINTR) {
        /* The configuration is fixed for the life of the connection: an
         * answer we cannot use will not get better by asking again (crosvm
         * asks on every call). A timeout may. */
        fe->shm_state = FE_SHM_ERROR;
        fe->shm_err = r;
    }
    pthread_mutex_unlock(&fe->shm_lock);
    return r;
}

static int fe_set_shm_mapper(struct vuf_device *d, const struct vuf_shm_mapper *m)
{
    struct vuf_frontend *fe = fe_of(d);
    struct vuf_shm_mapper old = {NULL, NULL};
    bool had_old;
    int r;

    if (!m || !m->ops || !m->ops->add_mapping || !m->ops->remove_mapping)
        return -EINVAL;
    /* Mappings are requested on the back-end channel: without it the
     * mapper would never be used. */
    if (!(fe->protocol_features & VUF_PROTO_MASK(BACKEND_REQ))) {
        vuf_log(VUF_LOG_ERROR,
                "%s: error setting shared memory mapper: protocol feature is not "
                "negotiated: BACKEND_REQ",
                fe->label);
        return -ENOTSUP;
    }
    r = fe_get_shm_region(d, NULL);
    if (r < 0)
        return r;
    if (r == 0) {
        vuf_log(VUF_LOG_ERROR,
                "%s: shared memory mapper given, but the back-end has no "
                "shared memory region",
                fe->label);
        return -ENODEV;
    }
    pthread_mutex_lock(&fe->shm_lock);
    if (fe->nmaps) {
        pthread_mutex_unlock(&fe->shm_lock);
        vuf_log(VUF_LOG_ERROR, "%s: cannot replace the mapper while %u mappings exist", fe->label,
                fe->nmaps);
        return -EBUSY;
    }
    had_old = fe->have_mapper;
    old = fe->mapper;
    fe->mapper = *m;
    fe->have_mapper = true;
    pthread_mutex_unlock(&fe->shm_lock);
    if (had_old && old.ops->release)
        old.ops->release(old.opaque);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Construction and destruction                                             */
/* ------------------------------------------------------------------------ */

static void fe_destroy(struct vuf_device *d)
{
    struct vuf_frontend *fe = fe_of(d);

    if (!fe)
        return;
    /* No messages (crosvm sends none either): the back-end sees EOF. */
    fe_worker_stop(fe);
    if (fe->have_mapper) {
        fe_remove_all_mappings(fe);
        if (fe->mapper.ops->release)
            fe->mapper.ops->release(fe->mapper.opaque);
        fe->have_mapper = false;
    }
    clear_active(fe);
    fe_log_release(fe);
    fe_inflight_release(fe);
    vuf_server_free(fe->breq);
    vuf_client_free(fe->client);
    free(fe->maps);
    free(fe->queue_sizes);
    pthread_mutex_destroy(&fe->shm_lock);
    pthread_mutex_destroy(&fe->log_lock);
    fe_mem_fini(fe);
    free(fe);
}

static const struct vuf_device_ops frontend_ops = {
    .device_type = fe_device_type,
    .debug_label = fe_debug_label,
    .num_queues = fe_num_queues,
    .queue_max_sizes = fe_queue_max_sizes,
    .features = fe_features,
    .ack_features = fe_ack_features,
    .read_config = fe_read_config,
    .write_config = fe_write_config,
    .activate = fe_activate,
    .reset = fe_reset,
    .get_shared_memory_region = fe_get_shm_region,
    .set_shared_memory_mapper = fe_set_shm_mapper,
    .sleep = fe_sleep,
    .wake = fe_wake,
    .snapshot = fe_snapshot,
    .restore = fe_restore,
    .destroy = fe_destroy,
};

bool vuf_device_is_frontend(const struct vuf_device *dev)
{
    return dev && dev->ops == &frontend_ops;
}

uint64_t vuf_frontend_protocol_features(const struct vuf_device *dev)
{
    return vuf_device_is_frontend(dev) ? fe_of_const(dev)->protocol_features : 0;
}

uint64_t vuf_frontend_acked_features(const struct vuf_device *dev)
{
    return vuf_device_is_frontend(dev) ? fe_of_const(dev)->acked_features : 0;
}

bool vuf_frontend_last_sent_features(const struct vuf_device *dev, uint64_t *features)
{
    const struct vuf_frontend *fe;

    if (!vuf_device_is_frontend(dev))
        return false;
    fe = fe_of_const(dev);
    if (features)
        *features = fe->last_sent_features;
    return fe->features_sent;
}

int vuf_frontend_get_status(struct vuf_device *dev, uint8_t *status)
{
    struct vuf_frontend *fe;
    int r;

    if (!vuf_device_is_frontend(dev) || !status)
        return -EINVAL;
    fe = fe_of(dev);
    if (!has_status(fe))
        return -ENOTSUP;
    r = fe_stream_check(fe);
    if (r < 0)
        return r;
    return fe_stream_note(fe, vuf_client_get_status(fe->client, status));
}

int vuf_frontend_net_layout(const struct vuf_device *dev, unsigned *pairs, int *ctrl_index)
{
    const struct vuf_frontend *fe;

    if (!vuf_device_is_frontend(dev))
        return -EINVAL;
    fe = fe_of_const(dev);
    if (fe->cfg.device_type != VUF_DEV_NET)
        return -ENOTSUP;
    if (pairs)
        *pairs = fe->net_pairs;
    if (ctrl_index)
        *ctrl_index = fe->net_ctrl_index;
    return 0;
}

/* A net request through the device: refused here (before the client's
 * own check) for another device type, so that nothing is sent. */
static int net_request(struct vuf_device *dev, struct vuf_frontend **out)
{
    if (!vuf_device_is_frontend(dev))
        return -EINVAL;
    *out = fe_of(dev);
    if ((*out)->cfg.device_type != VUF_DEV_NET)
        return -ENOTSUP;
    return fe_stream_check(*out);
}

int vuf_frontend_net_set_mtu(struct vuf_device *dev, uint16_t mtu)
{
    struct vuf_frontend *fe = NULL;
    int r;

    if (mtu == 0)
        return -EINVAL;
    r = net_request(dev, &fe);
    if (r < 0)
        return r;
    r = fe_stream_note(fe, vuf_client_net_set_mtu(fe->client, mtu));
    if (r < 0 && r != -ENOTSUP)
        vuf_log(VUF_LOG_ERROR, "%s: failed to set MTU %u: %s", fe->label, mtu, vuf_strerror(r));
    return r;
}

int vuf_frontend_send_rarp(struct vuf_device *dev, const uint8_t mac[6])
{
    struct vuf_frontend *fe = NULL;
    int r;

    if (!mac)
        return -EINVAL;
    r = net_request(dev, &fe);
    if (r < 0)
        return r;
    r = fe_stream_note(fe, vuf_client_send_rarp(fe->client, mac));
    if (r < 0 && r != -ENOTSUP)
        vuf_log(VUF_LOG_ERROR, "%s: failed to send RARP: %s", fe->label, vuf_strerror(r));
    return r;
}

bool vuf_frontend_is_active(const struct vuf_device *dev)
{
    return vuf_device_is_frontend(dev) && fe_of_const(dev)->active;
}

unsigned vuf_frontend_num_mappings(const struct vuf_device *dev)
{
    struct vuf_frontend *fe;
    unsigned n;

    if (!vuf_device_is_frontend(dev))
        return 0;
    fe = (struct vuf_frontend *)dev;
    pthread_mutex_lock(&fe->shm_lock);
    n = fe->nmaps;
    pthread_mutex_unlock(&fe->shm_lock);
    return n;
}

/*
 * The queue count of a net device whose back-end answered GET_QUEUE_NUM
 * with `pairs` (>= 1) queue pairs: rx/tx per pair, plus the control queue
 * (index 2 * pairs) when the back-end offers VIRTIO_NET_F_CTRL_VQ. The
 * answer is the most pairs the back-end can serve (the driver picks how
 * many it uses), so a larger one is clamped to what fits the ring index
 * space rather than refused.
 */
static unsigned net_queues(const struct vuf_frontend *fe, uint64_t pairs)
{
    unsigned ctrl = (fe->avail_features & BIT(VUF_NET_F_CTRL_VQ)) ? 1 : 0;
    unsigned max_pairs = (VUF_FRONTEND_MAX_QUEUES - ctrl) / 2;

    if (pairs > max_pairs) {
        vuf_log(VUF_LOG_INFO,
                "%s: back-end reports %llu queue pairs; using %u (at most %u queues%s)", fe->label,
                (unsigned long long)pairs, max_pairs, VUF_FRONTEND_MAX_QUEUES,
                ctrl ? " with the control queue" : "");
        pairs = max_pairs;
    }
    return (unsigned)pairs * 2 + ctrl;
}

/* The net layout: queue pairs, then the control queue if CTRL_VQ is offered. */
static void net_set_layout(struct vuf_frontend *fe, uint64_t pairs)
{
    fe->num_queues = net_queues(fe, pairs);
    fe->net_pairs = fe->num_queues / 2;
    fe->net_ctrl_index = (fe->num_queues & 1) ? (int)fe->num_queues - 1 : -1;
}

/* SET_OWNER, GET_FEATURES: what the driver may be offered. */
static int negotiate_features(struct vuf_frontend *fe)
{
    uint64_t base = fe->cfg.base_features_mask, features = 0, allow;
    int r;

    r = vuf_client_set_owner(fe->client);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to set owner: %s", fe->label, vuf_strerror(r));
        return r;
    }
    r = vuf_client_get_features(fe->client, &features);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get features: %s", fe->label, vuf_strerror(r));
        return r;
    }
    if (!fe->cfg.legacy)
        base |= BIT(VUF_VIRTIO_F_VERSION_1);
    /* Packed rings need the back-end's side too (wrap counters in
     * SET/GET_VRING_BASE, §2.8 ring walking); say so when the VMM wanted
     * them and this back-end cannot. */
    if ((base & BIT(VUF_VIRTIO_F_RING_PACKED)) && !(features & BIT(VUF_VIRTIO_F_RING_PACKED)))
        vuf_log(VUF_LOG_WARN,
                "%s: VIRTIO_F_RING_PACKED requested, but the back-end does not offer it; "
                "split rings only",
                fe->label);
    /* Device-type bits pass as offered; transport bits only if the VMM
     * supports them. Bit 30 (vhost-user's own) and LOG_ALL (dirty logging)
     * are never the driver's. */
    allow = VUF_DEVICE_TYPE_SPECIFIC_FEATURES_MASK | base;
    allow &= ~(BIT(VUF_VHOST_F_LOG_ALL) | F_PROTOCOL);
    if (fe->cfg.device_type == VUF_DEV_NET && !fe->cfg.net_ctrl_vq)
        allow &= ~VUF_NET_CTRL_VQ_FEATURES_MASK;
    fe->backend_features = features;
    fe->avail_features = allow & features;
    fe->vhost_protocol = (features & F_PROTOCOL) != 0;
    fe->log_all_offered = (features & BIT(VUF_VHOST_F_LOG_ALL)) != 0;
    fe->acked_features = 0;
    return 0;
}

/* A net device without CONFIG offers the config-space bits of the config
 * it builds (cfg.net_*), not the back-end's. */
static void net_config_features(struct vuf_frontend *fe)
{
    static const uint8_t zero_mac[6];

    if (!net_local_config(fe))
        return;
    fe->avail_features &= ~FE_NET_CONFIG_FEATURES;
    fe->avail_features |= BIT(VUF_NET_F_STATUS);
    if (memcmp(fe->cfg.net_mac, zero_mac, 6) != 0)
        fe->avail_features |= BIT(VUF_NET_F_MAC);
    if (fe->cfg.net_mtu)
        fe->avail_features |= BIT(VUF_NET_F_MTU);
}

uint64_t vuf_frontend_protocol_mask(const struct vuf_frontend_config *cfg)
{
    if (!cfg)
        return 0;
    return FE_PROTOCOL_FEATURES | (cfg->dirty_log ? VUF_PROTO_MASK(LOG_SHMFD) : 0) |
           (cfg->mem_slots ? VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS) : 0) |
           (cfg->inflight ? VUF_PROTO_MASK(INFLIGHT_SHMFD) : 0) |
           (cfg->device_type == VUF_DEV_NET ? FE_NET_PROTOCOL_FEATURES : 0);
}

/* GET/SET_PROTOCOL_FEATURES, when the back-end offers bit 30. */
static int negotiate_protocol(struct vuf_frontend *fe)
{
    uint64_t pf = 0;
    int r;

    /* Every later SET_FEATURES carries bit 30 (fe_features_to_send), but
     * none is sent now: GET/SET_PROTOCOL_FEATURES are legal before it. */
    if (!fe->vhost_protocol)
        return 0;
    r = vuf_client_get_protocol_features(fe->client, &pf);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get protocol features: %s", fe->label,
                vuf_strerror(r));
        return r;
    }
    fe->protocol_features = pf & vuf_frontend_protocol_mask(&fe->cfg);
    r = vuf_client_set_protocol_features(fe->client, fe->protocol_features);
    if (r < 0)
        vuf_log(VUF_LOG_ERROR, "%s: failed to set protocol features: %s", fe->label,
                vuf_strerror(r));
    return r;
}

/* SET_BACKEND_REQ_FD with one end of a new back-end request channel. */
static int open_backend_channel(struct vuf_frontend *fe)
{
    struct vuf_server_config scfg;
    int peer = -1, r;

    if (!(fe->protocol_features & VUF_PROTO_MASK(BACKEND_REQ)))
        return 0;
    memset(&scfg, 0, sizeof(scfg));
    fe_breq_handlers(fe, &scfg);
    r = vuf_server_new_backend_channel(&scfg, &fe->breq, &peer);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: could not create the back-end request channel: %s", fe->label,
                vuf_strerror(r));
        return r;
    }
    /* Acks to the back-end's requests follow its REPLY_ACK. */
    vuf_server_set_protocol_features(fe->breq, fe->protocol_features);
    /* The worker reads a request only once epoll says it is there, so
     * this bounds how long a half-sent one can hold the worker (and a
     * reset or sleep waiting to stop it). */
    vuf_conn_set_timeout(vuf_server_conn(fe->breq), FE_BREQ_TIMEOUT_MS);
    r = vuf_client_set_backend_req_fd(fe->client, peer);
    /* The back-end has its own copy now. */
    close(peer);
    if (r < 0)
        vuf_log(VUF_LOG_ERROR, "%s: failed to set device request channel: %s", fe->label,
                vuf_strerror(r));
    return r;
}

/* The queue count: GET_QUEUE_NUM with MQ, else the device type's. */
static int negotiate_queue_count(struct vuf_frontend *fe)
{
    const struct vuf_device_info *info = vuf_device_info(fe->cfg.device_type);
    uint64_t n = 0;
    int r;

    if (!(fe->protocol_features & VUF_PROTO_MASK(MQ))) {
        /* Net without MQ: one pair (crosvm's rx, tx, ctrl when the control
         * queue is offered). */
        if (fe->cfg.device_type == VUF_DEV_NET) {
            net_set_layout(fe, 1);
            return 0;
        }
        if (!info) {
            vuf_log(VUF_LOG_ERROR, "%s: unknown device type and no MQ: queue count unknown",
                    fe->label);
            return -ENOTSUP;
        }
        fe->num_queues = info->min_queues;
        return 0;
    }
    r = vuf_client_get_queue_num(fe->client, &n);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get number of queues: %s", fe->label,
                vuf_strerror(r));
        return r;
    }
    /* crosvm takes any answer; 0 makes a useless device and a huge one
     * a huge allocation. */
    if (fe->cfg.device_type == VUF_DEV_NET && n > 0) {
        net_set_layout(fe, n);
    } else if (n == 0 || n > VUF_FRONTEND_MAX_QUEUES) {
        vuf_log(VUF_LOG_ERROR, "%s: back-end reports %llu queues (must be 1..%u)", fe->label,
                (unsigned long long)n, VUF_FRONTEND_MAX_QUEUES);
        return -EPROTO;
    } else {
        fe->num_queues = (unsigned)n;
    }
    return 0;
}

/* The constructor's negotiation (crosvm's VhostUserFrontend::new), step by
 * step in the order of its messages. */
static int negotiate(struct vuf_frontend *fe)
{
    uint16_t qsize;
    int r;

    r = negotiate_features(fe);
    if (r == 0)
        r = negotiate_protocol(fe);
    if (r == 0)
        net_config_features(fe);
    if (r == 0)
        r = open_backend_channel(fe);
    if (r == 0)
        r = negotiate_queue_count(fe);
    if (r == 0)
        r = fe_mem_negotiate(fe); /* GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS */
    if (r < 0)
        return r;

    qsize = pow2_le(fe->cfg.max_queue_size);
    if (qsize == 0)
        qsize = VUF_QUEUE_MAX_SIZE;
    fe->queue_sizes = malloc(fe->num_queues * sizeof(*fe->queue_sizes));
    if (!fe->queue_sizes)
        return -ENOMEM;
    for (unsigned i = 0; i < fe->num_queues; i++)
        fe->queue_sizes[i] = qsize;

    /* Nothing was sent, but as far as "did the driver's set change" goes,
     * the back-end starts from this. */
    fe->last_sent_features = fe_features_to_send(fe);
    fe->features_sent = false;
    vuf_log(VUF_LOG_INFO,
            "%s: vhost-user front-end with %u queues x %u entries, "
            "features 0x%llx, protocol features 0x%llx",
            fe->label, fe->num_queues, qsize, (unsigned long long)fe->avail_features,
            (unsigned long long)fe->protocol_features);
    return 0;
}

int vuf_frontend_new(const struct vuf_frontend_config *cfg, struct vuf_conn *conn,
                     struct vuf_device **out)
{
    const struct vuf_device_info *info;
    struct vuf_frontend *fe;
    int r;

    /* An inflight area is only for a device that uses inflight. */
    if (!cfg || !conn || !out ||
        (cfg->inflight_area && (!cfg->inflight || cfg->inflight_area->fd < 0)) ||
        (cfg->legacy && (cfg->base_features_mask & BIT(VUF_VIRTIO_F_VERSION_1)))) {
        vuf_conn_close(conn);
        return -EINVAL;
    }
    fe = calloc(1, sizeof(*fe));
    if (!fe) {
        vuf_conn_close(conn);
        return -ENOMEM;
    }
    fe->dev.ops = &frontend_ops;
    fe->cfg = *cfg;
    fe->cfg.inflight_area = NULL; /* borrowed for this call only */
    info = vuf_device_info(cfg->device_type);
    if (info)
        snprintf(fe->label, sizeof(fe->label), "%s", info->label);
    else
        snprintf(fe->label, sizeof(fe->label), "vu-%u", cfg->device_type);
    fe->log_fd = -1;
    fe->inflight_fd = -1;
    fe->net_ctrl_index = -1;
    r = pthread_mutex_init(&fe->shm_lock, NULL);
    if (r) {
        vuf_conn_close(conn);
        free(fe);
        return -r;
    }
    r = pthread_mutex_init(&fe->log_lock, NULL);
    if (r) {
        pthread_mutex_destroy(&fe->shm_lock);
        vuf_conn_close(conn);
        free(fe);
        return -r;
    }
    r = vuf_client_new(conn, &fe->client); /* owns conn from here on */
    if (r < 0) {
        pthread_mutex_destroy(&fe->shm_lock);
        pthread_mutex_destroy(&fe->log_lock);
        free(fe);
        return r;
    }
    vuf_client_set_need_reply(fe->client, !cfg->crosvm_no_need_reply);

    /* Bytes already waiting before our first request can only be a
     * back-end speaking out of turn; read as the GET_FEATURES answer they
     * would set the device's features. */
    r = fe_stream_check(fe);
    if (r == 0)
        r = negotiate(fe);
    if (r == 0)
        r = fe_inflight_init(fe, cfg->inflight_area); /* adopt a dup of it */
    if (r < 0) {
        fe_destroy(&fe->dev);
        return r;
    }
    *out = &fe->dev;
    return 0;
}
