/* SPDX-License-Identifier: MIT */
/*
 * vuf/log.h - logging and error strings.
 *
 * The library never writes to stderr on its own except through the default
 * log sink, which prints messages at or above the level named by the
 * environment variable VUF_LOG (error|warn|info|debug; default warn).
 * At debug level every message sent and received is traced by name.
 *
 * Thread-safety: vuf_log_set() should be called before other threads use the
 * library; the sink itself may be called from any thread (the worker thread
 * included) and must be thread-safe.
 */
#ifndef VUF_LOG_H
#define VUF_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

enum vuf_log_level {
    VUF_LOG_ERROR = 0,
    VUF_LOG_WARN = 1,
    VUF_LOG_INFO = 2,
    VUF_LOG_DEBUG = 3,
};

typedef void (*vuf_log_fn)(void *opaque, enum vuf_log_level level, const char *msg);

/* Install a sink (NULL restores the default stderr sink). `opaque` is
 * passed back unchanged and is not owned. `max_level` filters before
 * formatting. */
void vuf_log_set(vuf_log_fn fn, void *opaque, enum vuf_log_level max_level);

/* The level currently in force. */
enum vuf_log_level vuf_log_level(void);

/* Log through the installed sink (printf format). */
void vuf_log(enum vuf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Describe a negative errno returned by vuf in this library's terms, e.g.
 * -ECONNRESET -> "back-end hung up". Never NULL; static storage. Any int
 * is accepted (INT_MIN and unknown values included).
 */
const char *vuf_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
