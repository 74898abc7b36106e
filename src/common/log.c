/* SPDX-License-Identifier: MIT */
/* Logging sink and error strings. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vuf/log.h"

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static vuf_log_fn log_fn;
static void *log_opaque;
static int log_max = -1; /* -1: not yet read from VUF_LOG */
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    const char *e = getenv("VUF_LOG");
    int lvl = VUF_LOG_WARN;

    if (e) {
        for (int i = 0; i <= VUF_LOG_DEBUG; i++)
            if (strcasecmp(e, level_names[i]) == 0)
                lvl = i;
    }
    if (log_max < 0)
        log_max = lvl;
}

void vuf_log_set(vuf_log_fn fn, void *opaque, enum vuf_log_level max_level)
{
    pthread_once(&env_once, read_env);
    log_fn = fn;
    log_opaque = opaque;
    log_max = (int)max_level;
}

enum vuf_log_level vuf_log_level(void)
{
    pthread_once(&env_once, read_env);
    return (enum vuf_log_level)log_max;
}

void vuf_log(enum vuf_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if ((int)level > (int)vuf_log_level())
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(log_opaque, level, buf);
        return;
    }
    /* One fprintf per line keeps lines from different threads whole. */
    fprintf(stderr, "vuf %s: %s\n", level_names[level], buf);
}

const char *vuf_strerror(int err)
{
    /* -INT_MIN overflows; no errno is that large anyway. */
    if (err == INT_MIN)
        return "unknown error";
    switch (-err) {
    case 0:
        return "success";
    case ETIMEDOUT:
        return "timed out waiting for the peer";
    case ECONNRESET:
        return "peer hung up";
    case ECONNABORTED:
        return "peer hung up in the middle of a message";
    case EBADMSG:
        return "truncated message header";
    case EMSGSIZE:
        return "message size out of bounds";
    case ETOOMANYREFS:
        return "too many file descriptors attached to a message";
    case E2BIG:
        return "too many file descriptors to send";
    case EPROTO:
        return "protocol violation by the peer";
    case EIO:
        return "peer reported failure";
    case ENOTSUP:
        return "not supported or not negotiated";
    case EBADF:
        return "wrong number of file descriptors";
    case EINVAL:
        return "invalid argument";
    case ENOTSOCK:
        return "not a socket";
    default:
        return strerror(-err);
    }
}
