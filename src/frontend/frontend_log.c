/* SPDX-License-Identifier: MIT */
/*
 * Dirty-page logging of the vhost-user front-end (vuf/frontend.h): the
 * shared log bitmap, LOG_SHMFD's SET_LOG_BASE, VHOST_F_LOG_ALL and
 * VHOST_VRING_F_LOG, and fetch-and-clear of the bits the back-end set.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "frontend_internal.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"

#define LOG_ALL (1ull << VUF_VHOST_F_LOG_ALL)

uint64_t fe_features_to_send(const struct vuf_frontend *fe)
{
    /* Only the back-end's own bits: a net device without CONFIG offers
     * MAC/STATUS/MTU from its own config space. */
    return (fe->acked_features & fe->backend_features) |
           (fe->vhost_protocol ? 1ull << VUF_VHOST_F_PROTOCOL_FEATURES : 0) |
           (fe->log_bits ? LOG_ALL : 0);
}

/* Bytes of log covering GPA 0 up to the end of the highest region of
 * `mem`: one bit per page, rounded up to whole 64-bit words. 0 if empty. */
static size_t log_bytes_for(const struct vuf_guest_mem *mem)
{
    uint64_t end = 0, pages;
    unsigned n = vuf_guest_mem_nregions(mem);

    for (unsigned i = 0; i < n; i++) {
        struct vuf_guest_region r;

        if (vuf_guest_mem_region(mem, i, &r) == 0 && r.gpa + r.size > end)
            end = r.gpa + r.size;
    }
    pages = end / VUF_FRONTEND_LOG_PAGE + (end % VUF_FRONTEND_LOG_PAGE ? 1 : 0);
    if ((pages + 63) / 64 > SIZE_MAX / 8)
        return 0;
    return (size_t)((pages + 63) / 64 * 8);
}

/* A zeroed shared log of `size` bytes: a sealed memfd (the back-end cannot
 * shrink it under our mapping) and our mapping of it. */
static int log_alloc(size_t size, int *fd_out, uint64_t **bits_out)
{
    void *p;
    int fd, r;

    fd = memfd_create("vuf-dirty-log", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        r = -errno;
        close(fd);
        return r;
    }
    *fd_out = fd;
    *bits_out = p;
    return 0;
}

/* Install a log (or none: bits NULL) and free the one it replaces. */
static void log_swap(struct vuf_frontend *fe, int fd, uint64_t *bits, size_t size)
{
    uint64_t *old_bits;
    size_t old_size;
    int old_fd;

    pthread_mutex_lock(&fe->log_lock);
    old_bits = fe->log_bits;
    old_size = fe->log_size;
    old_fd = fe->log_fd;
    fe->log_bits = bits;
    fe->log_size = bits ? size : 0;
    fe->log_fd = bits ? fd : -1;
    pthread_mutex_unlock(&fe->log_lock);
    if (old_bits)
        munmap(old_bits, old_size);
    if (old_fd >= 0)
        close(old_fd);
}

void fe_log_release(struct vuf_frontend *fe)
{
    log_swap(fe, -1, NULL, 0);
}

static int send_log_base(struct vuf_frontend *fe)
{
    int r = fe_stream_note(fe, vuf_client_set_log_base(fe->client, fe->log_size, 0, fe->log_fd));

    if (r < 0)
        vuf_log(VUF_LOG_ERROR, "%s: SET_LOG_BASE (%zu bytes) failed: %s", fe->label, fe->log_size,
                vuf_strerror(r));
    return r;
}

int fe_log_activate(struct vuf_frontend *fe, const struct vuf_guest_mem *mem)
{
    size_t need, old_size;
    uint64_t *bits, *old_bits;
    int fd, old_fd, r;

    if (!fe->log_bits)
        return 0;
    need = log_bytes_for(mem);
    if (need <= fe->log_size)
        return send_log_base(fe);

    /*
     * More guest memory than the log covers. The rings may be running
     * (vuf_frontend_update_memory), so the back-end can set bits in the old
     * log until it has switched: keep the old log mapped, hand over the new
     * one, and only once SET_LOG_BASE's reply says the back-end switched
     * (LOG_SHMFD: the reply is always awaited) fold the old bits into the
     * new log and free the old one. On failure the old log stays in force.
     */
    r = log_alloc(need, &fd, &bits);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: cannot grow the dirty log to %zu bytes: %s", fe->label, need,
                vuf_strerror(r));
        return r;
    }
    r = fe_stream_note(fe, vuf_client_set_log_base(fe->client, need, 0, fd));
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: SET_LOG_BASE (%zu bytes) failed: %s", fe->label, need,
                vuf_strerror(r));
        munmap(bits, need);
        close(fd);
        return r;
    }
    pthread_mutex_lock(&fe->log_lock);
    old_bits = fe->log_bits;
    old_size = fe->log_size;
    old_fd = fe->log_fd;
    for (size_t i = 0; i < old_size / 8; i++)
        __atomic_fetch_or(&bits[i], __atomic_exchange_n(&old_bits[i], 0, __ATOMIC_SEQ_CST),
                          __ATOMIC_SEQ_CST);
    fe->log_bits = bits;
    fe->log_size = need;
    fe->log_fd = fd;
    pthread_mutex_unlock(&fe->log_lock);
    munmap(old_bits, old_size);
    close(old_fd);
    return 0;
}

/*
 * SET_FEATURES with the current value to send, then SET_VRING_ADDR for
 * every started queue (its flags follow fe->log_bits). Without acks for
 * them (no REPLY_ACK, or crosvm_no_need_reply), a GET_FEATURES follows as
 * the barrier, as QEMU does.
 */
static int send_log_state(struct vuf_frontend *fe)
{
    uint64_t dummy;
    int r;

    r = fe_stream_note(fe, fe_send_features(fe));
    if (r < 0)
        return r;
    for (unsigned k = 0; fe->active && k < fe->nsent; k++) {
        struct vuf_vring_addr addr;

        fe_vring_addr(fe, fe->mem, fe->sent[k].index, &fe->sent[k].q, &addr);
        r = fe_stream_note(fe, vuf_client_set_vring_addr(fe->client, &addr));
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: queue %u: SET_VRING_ADDR (log %s) failed: %s", fe->label,
                    fe->sent[k].index, addr.flags ? "on" : "off", vuf_strerror(r));
            return r;
        }
    }
    if (!(fe->protocol_features & VUF_PROTO_MASK(REPLY_ACK)) || fe->cfg.crosvm_no_need_reply) {
        r = fe_stream_note(fe, vuf_client_get_features(fe->client, &dummy));
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: GET_FEATURES (barrier) failed: %s", fe->label,
                    vuf_strerror(r));
            return r;
        }
    }
    return 0;
}

static struct vuf_frontend *log_fe(struct vuf_device *dev)
{
    return vuf_device_is_frontend(dev) ? fe_of(dev) : NULL;
}

int vuf_frontend_log_start(struct vuf_device *dev)
{
    struct vuf_frontend *fe = log_fe(dev);
    uint64_t *bits;
    size_t size;
    int fd, r;

    if (!fe)
        return -EINVAL;
    if (!(fe->protocol_features & VUF_PROTO_MASK(LOG_SHMFD)) || !fe->log_all_offered) {
        vuf_log(VUF_LOG_ERROR, "%s: dirty logging needs LOG_SHMFD%s and VHOST_F_LOG_ALL", fe->label,
                fe->cfg.dirty_log ? "" : " (cfg.dirty_log)");
        return -ENOTSUP;
    }
    if (fe->log_bits)
        return -EALREADY;
    if (!fe->active || !fe->mem) {
        vuf_log(VUF_LOG_ERROR, "%s: dirty logging starts on an active device", fe->label);
        return -EINVAL;
    }
    r = fe_stream_check(fe);
    if (r < 0)
        return r;
    size = log_bytes_for(fe->mem);
    if (!size)
        return -EINVAL;
    r = log_alloc(size, &fd, &bits);
    if (r < 0)
        return r;
    log_swap(fe, fd, bits, size);
    r = send_log_base(fe);
    if (r == 0)
        r = send_log_state(fe);
    if (r < 0) {
        /* The back-end may keep LOG_ALL and the flags until the next
         * activation; it logs into its own mapping, which we no longer
         * read. */
        fe_log_release(fe);
        return r;
    }
    vuf_log(VUF_LOG_INFO, "%s: dirty logging started (%zu bytes of log)", fe->label, size);
    return 0;
}

int vuf_frontend_log_stop(struct vuf_device *dev)
{
    struct vuf_frontend *fe = log_fe(dev);
    int r;

    if (!fe || !fe->log_bits)
        return -EINVAL;
    /* Released first, so that what is sent says "no logging". */
    fe_log_release(fe);
    r = fe_stream_check(fe);
    if (r == 0)
        r = send_log_state(fe);
    if (r == 0)
        vuf_log(VUF_LOG_INFO, "%s: dirty logging stopped", fe->label);
    return r;
}

bool vuf_frontend_log_is_active(const struct vuf_device *dev)
{
    struct vuf_frontend *fe = log_fe((struct vuf_device *)dev);
    bool on;

    if (!fe)
        return false;
    pthread_mutex_lock(&fe->log_lock);
    on = fe->log_bits != NULL;
    pthread_mutex_unlock(&fe->log_lock);
    return on;
}

size_t vuf_frontend_log_bytes(const struct vuf_device *dev)
{
    struct vuf_frontend *fe = log_fe((struct vuf_device *)dev);
    size_t n;

    if (!fe)
        return 0;
    pthread_mutex_lock(&fe->log_lock);
    n = fe->log_size;
    pthread_mutex_unlock(&fe->log_lock);
    return n;
}

int vuf_frontend_log_sync(struct vuf_device *dev, uint8_t *bitmap, size_t len, uint64_t *ndirty)
{
    struct vuf_frontend *fe = log_fe(dev);
    uint64_t count = 0;

    if (!fe || (!bitmap && len))
        return -EINVAL;
    pthread_mutex_lock(&fe->log_lock);
    if (!fe->log_bits) {
        pthread_mutex_unlock(&fe->log_lock);
        return -EINVAL;
    }
    if (bitmap && len < fe->log_size) {
        pthread_mutex_unlock(&fe->log_lock);
        return -ENOSPC;
    }
    for (size_t i = 0; i < fe->log_size / 8; i++) {
        /* The back-end sets bits with atomic byte ORs; one exchange takes
         * a word's bits and clears them without losing a concurrent one.
         * memcpy keeps the bytes in the log's (byte) order. */
        uint64_t w = __atomic_exchange_n(&fe->log_bits[i], 0, __ATOMIC_SEQ_CST);

        count += (uint64_t)__builtin_popcountll(w);
        if (bitmap)
            memcpy(bitmap + i * 8, &w, 8);
    }
    if (bitmap && len > fe->log_size)
        memset(bitmap + fe->log_size, 0, len - fe->log_size);
    pthread_mutex_unlock(&fe->log_lock);
    if (ndirty)
        *ndirty = count;
    return 0;
}

int vuf_frontend_log_for_each_dirty(struct vuf_device *dev, int (*fn)(void *opaque, uint64_t page),
                                    void *opaque)
{
    struct vuf_frontend *fe = log_fe(dev);
    int r = 0;

    if (!fe || !fn)
        return -EINVAL;
    pthread_mutex_lock(&fe->log_lock);
    if (!fe->log_bits) {
        pthread_mutex_unlock(&fe->log_lock);
        return -EINVAL;
    }
    for (size_t i = 0; i < fe->log_size / 8 && r == 0; i++) {
        uint64_t w = __atomic_exchange_n(&fe->log_bits[i], 0, __ATOMIC_SEQ_CST);
        uint8_t b[8];

        if (!w)
            continue;
        memcpy(b, &w, 8);
        for (unsigned byte = 0; byte < 8 && r == 0; byte++) {
            for (unsigned bit = 0; bit < 8; bit++) {
                if (!(b[byte] & (1u << bit)))
                    continue;
                b[byte] &= (uint8_t) ~(1u << bit);
                r = fn(opaque, (uint64_t)i * 64 + byte * 8 + bit);
                if (r != 0)
                    break;
            }
        }
        if (r != 0) {
            /* Put back the bits not reported yet. */
            uint64_t rest;

            memcpy(&rest, b, 8);
            __atomic_fetch_or(&fe->log_bits[i], rest, __ATOMIC_SEQ_CST);
        }
    }
    pthread_mutex_unlock(&fe->log_lock);
    return r;
}
