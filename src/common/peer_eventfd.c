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
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "vuf/log.h"

/* Completion slots per thread; reaped in one call when submission runs out. */
#define AIO_EVENTS 64

/* One per thread that signals: AIO contexts are cheap but not free
 * (they count against fs.aio-max-nr), so not one per queue. What a
 * thread learnt the kernel (or a seccomp filter) refuses stays learnt for
 * the thread's life: a sandbox does not change its mind, and asking again
 * on every kick would cost a failing syscall each time. */
struct efd_thread {
    bool init;      /* env read, fork handler and key set up */
    bool no_aio;    /* VUF_NO_AIO=1: neither AIO nor preadv2 */
    int aio;        /* 0: not tried; 1: context ready; -1: do not use AIO */
    bool no_nowait; /* preadv2(RWF_NOWAIT) refused here */
    bool ctx_live;  /* a context to io_destroy at thread exit */
    aio_context_t ctx;
};

static __thread struct efd_thread tls_efd;
static pthread_key_t efd_key;
static pthread_once_t efd_key_once = PTHREAD_ONCE_INIT;
static bool efd_key_ok;
static atomic_bool warned_fallback;
static atomic_uint_fast64_t st_signal_write, st_take_read, st_refused, st_no_aio;

static void efd_thread_release(struct efd_thread *t)
{
    if (t->ctx_live)
        syscall(SYS_io_destroy, t->ctx);
    memset(t, 0, sizeof(*t));
}

static void efd_thread_exit(void *p)
{
    efd_thread_release(p);
}

/* AIO contexts belong to the address space and do not survive fork(): the
 * child's only thread starts afresh (and reads VUF_NO_AIO again, which a
 * child about to enter a sandbox may just have set). */
static void efd_after_fork_child(void)
{
    memset(&tls_efd, 0, sizeof(tls_efd));
}

static void efd_make_key(void)
{
    efd_key_ok = pthread_key_create(&efd_key, efd_thread_exit) == 0;
    pthread_atfork(NULL, NULL, efd_after_fork_child);
}

/* VUF_NO_AIO set to anything but "" or "0". */
static bool env_no_aio(void)
{
    const char *v = getenv("VUF_NO_AIO");

    return v && *v && strcmp(v, "0") != 0;
}

static struct efd_thread *efd_thread_get(void)
{
    struct efd_thread *t = &tls_efd;

    if (t->init)
        return t;
    pthread_once(&efd_key_once, efd_make_key);
    t->init = true;
    if (env_no_aio()) {
        t->no_aio = true;
        t->aio = -1;
        t->no_nowait = true;
        atomic_fetch_add_explicit(&st_no_aio, 1, memory_order_relaxed);
        vuf_log(VUF_LOG_DEBUG, "eventfds: VUF_NO_AIO set: this thread uses poll/read/write only");
    }
    return t;
}

/* The errnos that say "this kernel (or this sandbox) will not do it":
 * seccomp filters answer EPERM or EACCES (or ENOSYS, as if the call did
 * not exist), AIO compiled out gives ENOSYS, an eventfd without
 * RWF_NOWAIT support EOPNOTSUPP (glibc also maps preadv2's ENOSYS to it
 * when flags are given). */
static bool is_refusal(int err)
{
    return err == EPERM || err == EACCES || err == ENOSYS || err == EOPNOTSUPP;
}

static void warn_fallback(const char *why, int err)
{
    if (!atomic_exchange(&warned_fallback, true))
        vuf_log(VUF_LOG_WARN,
                "eventfds fall back to poll() and read()/write() (%s: %s): a back-end that clears "
                "O_NONBLOCK on a shared eventfd at the wrong moment could block a kick",
                why, strerror(err));
}

/* A refused call: counted, logged once per process, remembered by the
 * caller in its thread state. */
static void note_refusal(const char *call, int err)
{
    atomic_fetch_add_explicit(&st_refused, 1, memory_order_relaxed);
    vuf_log(VUF_LOG_DEBUG, "eventfds: %s refused (%s): this thread falls back for good", call,
            strerror(err));
    warn_fallback(call, err);
}

/* 1 when this thread may use its AIO context, setting it up on first use. */
static bool efd_aio_ready(struct efd_thread *t)
{
    if (t->aio != 0)
        return t->aio == 1;
    t->ctx = 0;
    if (syscall(SYS_io_setup, AIO_EVENTS, &t->ctx) < 0) {
        int err = errno;

        /* Whatever the reason (a refusal, or fs.aio-max-nr reached), this
         * thread does without. */
        if (is_refusal(err))
            note_refusal("io_setup", err);
        else
            warn_fallback("io_setup", err);
        t->aio = -1;
        return false;
    }
    t->aio = 1;
    t->ctx_live = true;
    if (efd_key_ok)
        pthread_setspecific(efd_key, t);
    return true;
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
        if (is_refusal(errno)) {
            /* The context stays until the thread exits (io_destroy may be
             * refused as well, and costs nothing to keep). */
            note_refusal("io_submit", errno);
            t->aio = -1;
            return 1;
        }
        switch (errno) {
        case EINTR:
            break;
        case EAGAIN: /* no free completion slot */
            efd_reap(t);
            break;
        case EBADF: /* fd is not open */
            return -EBADF;
        default: /* EINVAL: fd is no eventfd (or no IOCB_CMD_POLL before
                  * 4.18): let write() judge it */
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

/* The best a plain write() can do: narrows the window, cannot close it
 * (README.md, "Syscalls and sandboxes"). */
static int efd_signal_write(int fd)
{
    uint64_t one = 1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r = restore_nonblock(fd);

    if (r < 0)
        return r;
    atomic_fetch_add_explicit(&st_signal_write, 1, memory_order_relaxed);
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

int vuf_peer_efd_signal_flags(int fd, unsigned flags)
{
    struct efd_thread *t;

    if (fd < 0)
        return -EBADF;
    if (!(flags & VUF_PEER_EFD_NO_AIO)) {
        t = efd_thread_get();
        if (efd_aio_ready(t)) {
            int r = efd_signal_aio(t, fd);

            if (r <= 0)
                return r;
        }
    }
    return efd_signal_write(fd);
}

int vuf_peer_efd_signal(int fd)
{
    return vuf_peer_efd_signal_flags(fd, 0);
}

static int efd_take_read(int fd, uint64_t *val)
{
    uint64_t v;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = restore_nonblock(fd);

    if (r < 0)
        return r;
    atomic_fetch_add_explicit(&st_take_read, 1, memory_order_relaxed);
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

int vuf_peer_efd_take_flags(int fd, uint64_t *val, unsigned flags)
{
    struct efd_thread *t;
    uint64_t v;
    struct iovec iov = {.iov_base = &v, .iov_len = sizeof(v)};

    if (fd < 0)
        return -EBADF;
    if (flags & VUF_PEER_EFD_NO_AIO)
        return efd_take_read(fd, val);
    t = efd_thread_get();
    if (t->no_nowait)
        return efd_take_read(fd, val);
    for (;;) {
        ssize_t n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);

        if (n == (ssize_t)sizeof(v)) {
            if (val)
                *val = v;
            return 1;
        }
        if (n >= 0)
            return -EIO; /* an eventfd read is all 8 bytes or nothing */
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        if (is_refusal(errno)) {
            /* EOPNOTSUPP: kernel < 5.12, whose eventfd ignores
             * RWF_NOWAIT; the others: a sandbox. */
            note_refusal("preadv2", errno);
            t->no_nowait = true;
            return efd_take_read(fd, val);
        }
        return -errno;
    }
}

int vuf_peer_efd_take(int fd, uint64_t *val)
{
    return vuf_peer_efd_take_flags(fd, val, 0);
}

void vuf_peer_efd_get_stats(struct vuf_peer_efd_stats *out)
{
    out->signal_write = atomic_load_explicit(&st_signal_write, memory_order_relaxed);
    out->take_read = atomic_load_explicit(&st_take_read, memory_order_relaxed);
    out->refused = atomic_load_explicit(&st_refused, memory_order_relaxed);
    out->no_aio = atomic_load_explicit(&st_no_aio, memory_order_relaxed);
}
