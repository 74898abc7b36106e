/* SPDX-License-Identifier: MIT */
/*
 * Eventfds shared with a back-end, used so that nothing the back-end does
 * to them can block us: see peer_eventfd.h for the why and the how.
 */
#include "peer_eventfd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vuf/log.h"

/* Completion slots per thread; reaped in one call when submission runs out. */
#define AIO_EVENTS 64

/* One per thread that signals: AIO contexts are cheap but not free
 * (they count against fs.aio-max-nr), so not one per queue. */
struct efd_thread {
    int state; /* 0: not set up; 1: AIO ready; -1: AIO unavailable here */
    aio_context_t ctx;
};

static __thread struct efd_thread tls_efd;
static pthread_key_t efd_key;
static pthread_once_t efd_key_once = PTHREAD_ONCE_INIT;
static atomic_bool warned_fallback;

static void efd_thread_release(struct efd_thread *t)
{
    if (t->state == 1)
        syscall(SYS_io_destroy, t->ctx);
    t->state = 0;
    t->ctx = 0;
}

static void efd_thread_exit(void *p)
{
    efd_thread_release(p);
}

/* AIO contexts belong to the address space and do not survive fork(): the
 * child's only thread starts afresh. */
static void efd_after_fork_child(void)
{
    tls_efd.state = 0;
}

static void efd_make_key(void)
{
    if (pthread_key_create(&efd_key, efd_thread_exit) != 0)
        efd_key = (pthread_key_t)-1;
    pthread_atfork(NULL, NULL, efd_after_fork_child);
}

static void warn_fallback(const char *why, int err)
{
    if (!atomic_exchange(&warned_fallback, true))
        vuf_log(VUF_LOG_WARN,
                "eventfd signalling falls back to write() (%s: %s): a back-end that clears "
                "O_NONBLOCK on a shared eventfd at the wrong moment could block a kick",
                why, strerror(err));
}

static struct efd_thread *efd_thread_get(void)
{
    struct efd_thread *t = &tls_efd;

    if (t->state != 0)
        return t;
    pthread_once(&efd_key_once, efd_make_key);
    t->ctx = 0;
    if (syscall(SYS_io_setup, AIO_EVENTS, &t->ctx) < 0) {
        warn_fallback("io_setup", errno);
        t->state = -1;
        return t;
    }
    t->state = 1;
    if (efd_key != (pthread_key_t)-1)
        pthread_setspecific(efd_key, t);
    return t;
}

/* Free the completion slots of finished polls (all of them: they complete
 * inside io_submit, see efd_signal_aio). */
static void efd_reap(struct efd_thread *t)
{
    struct io_event ev[AIO_EVENTS];
    struct timespec zero = {0, 0};

    while (syscall(SYS_io_getevents, t->ctx, 0, AIO_EVENTS, ev, &zero) == AIO_EVENTS)
        ;
}

/* 0 done, 1 "use the fallback", or a negative errno about fd itself. */
static int efd_signal_aio(struct efd_thread *t, int fd)
{
    struct iocb cb;
    struct iocb *cbs[1] = {&cb};

    /* Poll the eventfd itself for "readable or writable": one of the two
     * holds at every count (POLLOUT below the maximum, POLLIN above 0), so
     * the poll completes inside io_submit, and its completion signals the
     * same fd through eventfd_signal(), which never waits. */
    memset(&cb, 0, sizeof(cb));
    cb.aio_lio_opcode = IOCB_CMD_POLL;
    cb.aio_fildes = (uint32_t)fd;
    cb.aio_buf = POLLIN | POLLOUT;
    cb.aio_flags = IOCB_FLAG_RESFD;
    cb.aio_resfd = (uint32_t)fd;
    for (int tries = 0; tries < 3; tries++) {
        if (syscall(SYS_io_submit, t->ctx, 1, cbs) == 1)
            return 0;
        switch (errno) {
        case EINTR:
            break;
        case EAGAIN: /* no free completion slot */
            efd_reap(t);
            break;
        case EBADF: /* fd is not open */
            return -EBADF;
        case EINVAL: /* fd is no eventfd: let write() judge it */
            return 1;
        default:
            return 1;
        }
    }
    return 1;
}

/* O_NONBLOCK back on fd if a peer cleared it; 0 or -errno. */
static int restore_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0)
        return -errno;
    if (!(fl & O_NONBLOCK)) {
        vuf_log(VUF_LOG_WARN, "eventfd %d: O_NONBLOCK was cleared (by the back-end?); restored",
                fd);
        if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return -errno;
    }
    return 0;
}

/* The best a plain write() can do: narrows the window, cannot close it. */
static int efd_signal_write(int fd)
{
    uint64_t one = 1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r = restore_nonblock(fd);

    if (r < 0)
        return r;
    r = poll(&p, 1, 0);
    if (r == 0)
        return 0; /* counter full: the reader wakes anyway */
    if (r < 0)
        return -errno;
    if (p.revents & POLLNVAL)
        return -EBADF;
    for (;;) {
        if (write(fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
            return 0;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -errno;
    }
}

int vuf_peer_efd_signal(int fd)
{
    struct efd_thread *t;

    if (fd < 0)
        return -EBADF;
    t = efd_thread_get();
    if (t->state == 1) {
        int r = efd_signal_aio(t, fd);

        if (r <= 0)
            return r;
    }
    return efd_signal_write(fd);
}

static int efd_take_read(int fd, uint64_t *val)
{
    uint64_t v;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = restore_nonblock(fd);

    if (r < 0)
        return r;
    r = poll(&p, 1, 0);
    if (r == 0)
        return 0;
    if (r < 0)
        return -errno;
    if (p.revents & POLLNVAL)
        return -EBADF;
    for (;;) {
        ssize_t n = read(fd, &v, sizeof(v));

        if (n == (ssize_t)sizeof(v)) {
            if (val)
                *val = v;
            return 1;
        }
        if (n >= 0)
            return -EIO;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN ? 0 : -errno;
    }
}

int vuf_peer_efd_take(int fd, uint64_t *val)
{
    uint64_t v;
    struct iovec iov = {.iov_base = &v, .iov_len = sizeof(v)};

    if (fd < 0)
        return -EBADF;
    for (;;) {
        ssize_t n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);

        if (n == (ssize_t)sizeof(v)) {
            if (val)
                *val = v;
            return 1;
        }
        if (n >= 0)
            return -EIO; /* an eventfd read is all 8 bytes or nothing */
        switch (errno) {
        case EINTR:
            continue;
        case EAGAIN:
            return 0;
        case EOPNOTSUPP: /* kernel < 5.12: eventfd ignores RWF_NOWAIT */
        case ENOSYS:
            warn_fallback("preadv2", errno);
            return efd_take_read(fd, val);
        default:
            return -errno;
        }
    }
}
