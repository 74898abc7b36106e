/* SPDX-License-Identifier: MIT */
/* vuf-backend-blk device state: blob codec and transfer thread. See state.h. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "state.h"
#include "vuf/log.h"

/* A peer that stops moving the pipe for this long fails the transfer. */
#define XFER_IDLE_TIMEOUT_MS 30000
#define XFER_CHUNK (64u * 1024u)

struct blk_xfer {
    pthread_t thread;
    bool save;
    bool sock; /* fd is a socket: send/recv with MSG_DONTWAIT */
    int fd, image_fd, cancel_efd, done_efd;
    /* save */
    uint8_t *head;
    size_t head_len;
    uint64_t image_bytes;
    /* load */
    uint32_t num_queues;
    uint64_t capacity;
    bool accept_image;
    /* result, written by the thread before done_efd */
    int result;
    struct blk_loaded loaded;
    uint64_t hash;
};

/* ---- little-endian codec and FNV-1a ------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

void blk_loaded_free(struct blk_loaded *l)
{
    if (!l)
        return;
    free(l->st.q);
    l->st.q = NULL;
    if (l->image_fd >= 0)
        close(l->image_fd);
    l->image_fd = -1;
}

/* ---- cancellable I/O on the transfer fd ---------------------------------- */

static int wait_io(struct blk_xfer *x, short events)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = x->fd, .events = events},
                              {.fd = x->cancel_efd, .events = POLLIN}};
        int r = poll(p, 2, XFER_IDLE_TIMEOUT_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ETIMEDOUT;
        if (p[1].revents)
            return -ECANCELED;
        return 0; /* ready, or HUP/ERR: the next call says which */
    }
}

static int write_all(struct blk_xfer *x, const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t n =
            x->sock ? send(x->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) : write(x->fd, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            int r = wait_io(x, POLLOUT);
            if (r < 0)
                return r;
            continue;
        }
        return n < 0 ? -errno : -EIO;
    }
    return 0;
}

/* Read up to len bytes: the count, 0 at EOF, or a negative errno. */
static ssize_t read_some(struct blk_xfer *x, uint8_t *buf, size_t len)
{
    for (;;) {
        ssize_t n = x->sock ? recv(x->fd, buf, len, MSG_DONTWAIT) : read(x->fd, buf, len);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            int r = wait_io(x, POLLIN);
            if (r < 0)
                return r;
            continue;
        }
        return -errno;
    }
}

static int read_exact(struct blk_xfer *x, uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read_some(x, buf, len);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ENODATA;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- save --------------------------------------------------------------- */

static size_t blob_head_len(uint32_t nq)
{
    return BLK_STATE_HEADER_SIZE + (size_t)nq * BLK_STATE_QUEUE_SIZE;
}

static uint8_t *encode_head(const struct blk_state *st, uint64_t image_bytes, size_t *len)
{
    size_t n = blob_head_len(st->num_queues);
    uint8_t *b = calloc(1, n);

    if (!b)
        return NULL;
    memcpy(b, BLK_STATE_MAGIC, 8);
    put32(b + 8, BLK_STATE_VERSION);
    put32(b + 12, BLK_STATE_HEADER_SIZE);
    put32(b + 16, st->num_queues);
    put32(b + 20, BLK_STATE_QUEUE_SIZE);
    put64(b + 24, st->capacity);
    put32(b + 32, image_bytes ? BLK_STATE_F_IMAGE : 0);
    b[36] = st->writeback;
    put64(b + 40, image_bytes);
    for (uint32_t i = 0; i < st->num_queues; i++) {
        uint8_t *q = b + BLK_STATE_HEADER_SIZE + (size_t)i * BLK_STATE_QUEUE_SIZE;
        put16(q, st->q[i].next_avail);
        put64(q + 8, st->q[i].completed);
        put64(q + 16, st->q[i].bytes_read);
        put64(q + 24, st->q[i].bytes_written);
    }
    *len = n;
    return b;
}

static int do_save(struct blk_xfer *x)
{
    uint8_t *chunk = NULL, sum[8];
    uint64_t h = FNV_OFFSET;
    int r;

    h = fnv(h, x->head, x->head_len);
    r = write_all(x, x->head, x->head_len);
    if (r < 0)
        return r;
    if (x->image_bytes) {
        chunk = malloc(XFER_CHUNK);
        if (!chunk)
            return -ENOMEM;
        for (uint64_t off = 0; off < x->image_bytes;) {
            size_t want =
                x->image_bytes - off < XFER_CHUNK ? (size_t)(x->image_bytes - off) : XFER_CHUNK;
            ssize_t n = pread(x->image_fd, chunk, want, (off_t)off);
            if (n <= 0) {
                r = n < 0 ? -errno : -EIO;
                break;
            }
            h = fnv(h, chunk, (size_t)n);
            r = write_all(x, chunk, (size_t)n);
            if (r < 0)
                break;
            off += (uint64_t)n;
        }
        free(chunk);
        if (r < 0)
            return r;
    }
    put64(sum, h);
    x->hash = h;
    return write_all(x, sum, sizeof(sum));
}

/* ---- load --------------------------------------------------------------- */

static int fail(const char *why)
{
    vuf_log(VUF_LOG_ERROR, "device state load: %s", why);
    return -EINVAL;
}

static int do_load(struct blk_xfer *x)
{
    uint8_t hdr[BLK_STATE_HEADER_SIZE], rec[BLK_STATE_QUEUE_SIZE], sum[8], extra;
    uint64_t h = FNV_OFFSET, image_bytes;
    uint32_t flags;
    struct blk_loaded *l = &x->loaded;
    int r;

    r = read_exact(x, hdr, sizeof(hdr));
    if (r < 0)
        return r == -ENODATA ? fail("truncated header") : r;
    h = fnv(h, hdr, sizeof(hdr));
    if (memcmp(hdr, BLK_STATE_MAGIC, 8) != 0)
        return fail("bad magic");
    if (get32(hdr + 8) != BLK_STATE_VERSION)
        return fail("unsupported version");
    if (get32(hdr + 12) != BLK_STATE_HEADER_SIZE || get32(hdr + 20) != BLK_STATE_QUEUE_SIZE)
        return fail("unexpected header or queue record size");
    if (get32(hdr + 16) != x->num_queues)
        return fail("queue count differs from this device's");
    if (get64(hdr + 24) != x->capacity)
        return fail("capacity differs from this device's");
    flags = get32(hdr + 32);
    image_bytes = get64(hdr + 40);
    if ((flags & ~BLK_STATE_F_IMAGE) || hdr[36] > 1 || hdr[37] || hdr[38] || hdr[39])
        return fail("unknown flags or reserved bytes set");
    if ((flags & BLK_STATE_F_IMAGE) ? image_bytes != x->capacity * 512 : image_bytes != 0)
        return fail("image size does not match the flags and capacity");
    if (image_bytes && !x->accept_image)
        return fail("blob carries a disk image but this device's disk is a file");

    l->st.num_queues = x->num_queues;
    l->st.capacity = x->capacity;
    l->st.writeback = hdr[36];
    l->st.q = calloc(x->num_queues, sizeof(*l->st.q));
    if (!l->st.q)
        return -ENOMEM;
    for (uint32_t i = 0; i < x->num_queues; i++) {
        r = read_exact(x, rec, sizeof(rec));
        if (r < 0)
            return r == -ENODATA ? fail("truncated queue records") : r;
        h = fnv(h, rec, sizeof(rec));
        if (get16(rec + 2) || get32(rec + 4))
            return fail("reserved queue record bytes set");
        l->st.q[i].next_avail = get16(rec);
        l->st.q[i].completed = get64(rec + 8);
        l->st.q[i].bytes_read = get64(rec + 16);
        l->st.q[i].bytes_written = get64(rec + 24);
    }
    if (image_bytes) {
        uint8_t *chunk = malloc(XFER_CHUNK);
        l->image_fd = memfd_create("vuf-blk-image", MFD_CLOEXEC);
        if (!chunk || l->image_fd < 0 || ftruncate(l->image_fd, (off_t)image_bytes) < 0) {
            r = chunk ? -errno : -ENOMEM;
            free(chunk);
            return r;
        }
        for (uint64_t off = 0; off < image_bytes;) {
            size_t want = image_bytes - off < XFER_CHUNK ? (size_t)(image_bytes - off) : XFER_CHUNK;
            ssize_t n = read_some(x, chunk, want);
            if (n <= 0) {
                r = n < 0 ? (int)n : fail("truncated disk image");
                break;
            }
            h = fnv(h, chunk, (size_t)n);
            if (pwrite(l->image_fd, chunk, (size_t)n, (off_t)off) != n) {
                r = -EIO;
                break;
            }
            off += (uint64_t)n;
        }
        free(chunk);
        if (r < 0)
            return r;
    }
    r = read_exact(x, sum, sizeof(sum));
    if (r < 0)
        return r == -ENODATA ? fail("truncated checksum") : r;
    if (get64(sum) != h)
        return fail("checksum mismatch");
    /* The writer closes its end when done: anything more is garbage. */
    r = (int)read_some(x, &extra, 1);
    if (r < 0)
        return r;
    if (r > 0)
        return fail("trailing bytes after the checksum");
    x->hash = h;
    return 0;
}

/* ---- thread ------------------------------------------------------------- */

static void *xfer_main(void *arg)
{
    struct blk_xfer *x = arg;
    uint64_t one = 1;
    int r;

    r = x->save ? do_save(x) : do_load(x);
    /* Closing our end is what tells the reader it has everything. */
    close(x->fd);
    x->fd = -1;
    if (r < 0) {
        vuf_log(VUF_LOG_WARN, "device state %s failed: %s", x->save ? "save" : "load",
                vuf_strerror(r));
        blk_loaded_free(&x->loaded);
    } else {
        vuf_log(VUF_LOG_INFO, "device state %s done (checksum 0x%016llx)",
                x->save ? "save" : "load", (unsigned long long)x->hash);
    }
    x->result = r;
    if (write(x->done_efd, &one, sizeof(one)) < 0)
        vuf_log(VUF_LOG_DEBUG, "device state: done eventfd write failed");
    return NULL;
}

static void xfer_free(struct blk_xfer *x)
{
    if (x->fd >= 0)
        close(x->fd);
    if (x->image_fd >= 0)
        close(x->image_fd);
    if (x->cancel_efd >= 0)
        close(x->cancel_efd);
    if (x->done_efd >= 0)
        close(x->done_efd);
    blk_loaded_free(&x->loaded);
    free(x->head);
    free(x);
}

/*
 * An fd the transfer can never block on, whatever the front-end does to its
 * flags. O_NONBLOCK lives on the open file description, which the front-end
 * shares (SCM_RIGHTS) and may clear at any moment, so setting it is not
 * enough:
 *   - a pipe or FIFO is opened again through /proc/self/fd: a description of
 *     our own, O_NONBLOCK, same access mode; the original is closed;
 *   - a socket is used with MSG_DONTWAIT, which ignores the flag;
 *   - a regular file or block device does not wait for the peer.
 * Anything else (a tty, an eventfd, ...) is refused: -EINVAL. Takes fd.
 */
static int private_nonblock(int fd, bool *sock)
{
    struct stat st;
    char path[64];
    int fl, nfd;

    *sock = false;
    if (fstat(fd, &st) < 0 || (fl = fcntl(fd, F_GETFL)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
        return fd;
    if (S_ISSOCK(st.st_mode)) {
        *sock = true;
        return fd;
    }
    if (!S_ISFIFO(st.st_mode)) {
        vuf_log(VUF_LOG_ERROR, "device state: the fd is not a pipe, socket or file (mode 0%o)",
                (unsigned)st.st_mode);
        close(fd);
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    /* A write end opens without a reader only to ENXIO: the transfer could
     * not have gone anywhere either. */
    nfd = open(path, (fl & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC);
    if (nfd < 0) {
        int e = errno;
        vuf_log(VUF_LOG_ERROR, "device state: reopening the pipe: %s", strerror(e));
        close(fd);
        return -e;
    }
    close(fd);
    return nfd;
}

static int xfer_new(int fd, struct blk_xfer **out)
{
    struct blk_xfer *x = calloc(1, sizeof(*x));

    if (!x) {
        close(fd);
        return -ENOMEM;
    }
    fd = private_nonblock(fd, &x->sock);
    if (fd < 0) {
        free(x);
        return fd;
    }
    x->fd = fd;
    x->image_fd = -1;
    x->loaded.image_fd = -1;
    x->cancel_efd = eventfd(0, EFD_CLOEXEC);
    x->done_efd = eventfd(0, EFD_CLOEXEC);
    if (x->cancel_efd < 0 || x->done_efd < 0) {
        int e = errno;
        xfer_free(x);
        return -e;
    }
    *out = x;
    return 0;
}

static int xfer_run(struct blk_xfer *x, struct blk_xfer **out)
{
    int r = pthread_create(&x->thread, NULL, xfer_main, x);

    if (r != 0) {
        xfer_free(x);
        return -r;
    }
    *out = x;
    return 0;
}

int blk_xfer_start_save(int fd, const struct blk_state *st, int image_fd, uint64_t image_bytes,
                        struct blk_xfer **out)
{
    struct blk_xfer *x;
    int r = xfer_new(fd, &x);

    if (r < 0)
        return r;
    x->save = true;
    x->head = encode_head(st, image_fd >= 0 ? image_bytes : 0, &x->head_len);
    if (!x->head) {
        xfer_free(x);
        return -ENOMEM;
    }
    if (image_fd >= 0 && image_bytes) {
        x->image_fd = fcntl(image_fd, F_DUPFD_CLOEXEC, 3);
        if (x->image_fd < 0) {
            r = -errno;
            xfer_free(x);
            return r;
        }
        x->image_bytes = image_bytes;
    }
    return xfer_run(x, out);
}

int blk_xfer_start_load(int fd, uint32_t num_queues, uint64_t capacity, bool accept_image,
                        struct blk_xfer **out)
{
    struct blk_xfer *x;
    int r = xfer_new(fd, &x);

    if (r < 0)
        return r;
    x->save = false;
    x->num_queues = num_queues;
    x->capacity = capacity;
    x->accept_image = accept_image;
    return xfer_run(x, out);
}

bool blk_xfer_done(const struct blk_xfer *x)
{
    struct pollfd p = {.fd = x->done_efd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

int blk_xfer_finish(struct blk_xfer *x, int timeout_ms, struct blk_loaded *loaded)
{
    struct pollfd p = {.fd = x->done_efd, .events = POLLIN};
    bool timed_out = false;
    uint64_t one = 1;
    int r;

    if (loaded) {
        memset(loaded, 0, sizeof(*loaded));
        loaded->image_fd = -1;
    }
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r <= 0) {
        timed_out = true;
        if (write(x->cancel_efd, &one, sizeof(one)) < 0)
            vuf_log(VUF_LOG_DEBUG, "device state: cancel eventfd write failed");
    }
    pthread_join(x->thread, NULL);
    r = timed_out ? -ETIMEDOUT : x->result;
    if (r == 0 && !x->save && loaded) {
        *loaded = x->loaded;
        x->loaded.st.q = NULL;
        x->loaded.image_fd = -1;
    }
    xfer_free(x);
    return r;
}
