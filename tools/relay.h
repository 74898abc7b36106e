/* SPDX-License-Identifier: MIT */
/*
 * Private header of `vuf relay` (cmd_relay.c, relay_tap.c): the taps that
 * sit on the relay's two vhost-user streams and trace them.
 *
 * A tap forwards whole messages, fds included, between two connections:
 * `front` sends requests (QEMU; the relay's own front-end device) and
 * `back` answers them (the relay's request server; the real back-end).
 * Forwarding costs one hop per control message only: kick and call eventfds
 * pass through as fds, so the data path never touches the relay.
 */
#ifndef VUF_RELAY_H
#define VUF_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vuf/conn.h"

enum relay_side {
    RELAY_VMM = 0,     /* QEMU <-> the relay's server */
    RELAY_BACKEND = 1, /* the relay's device <-> the back-end */
    RELAY_NEXT = 2,    /* a replacement back-end, negotiated before the switch */
    RELAY_NSIDES = 3,
};

struct relay_tap;

/* Output: per-message lines (`trace`), as JSON objects one per line
 * (`json`), to `out`. device_type names feature bits. */
int relay_tap_new(FILE *out, bool trace, bool json, uint32_t device_type,
                  struct relay_tap **out_tap);

/* Attach a side before relay_tap_start(): takes both conns. */
void relay_tap_attach(struct relay_tap *t, enum relay_side side, struct vuf_conn *front,
                      struct vuf_conn *back);

/* Replace a side while the thread runs (a reconnected back-end): takes
 * both conns; the side's old conns, if still open, are closed. Thread-safe. */
void relay_tap_reattach(struct relay_tap *t, enum relay_side side, struct vuf_conn *front,
                        struct vuf_conn *back);

/* The RELAY_NEXT side becomes the RELAY_BACKEND side (a replacement
 * took over); the back-end side's old conns, if still open, are closed.
 * Thread-safe; takes effect on the tap thread, after anything already
 * handed over with relay_tap_reattach(). */
void relay_tap_promote_next(struct relay_tap *t);

/* Start forwarding on a thread. 0 or a negative errno. */
int relay_tap_start(struct relay_tap *t);

/* A line for the relay's own doings ("activate", ...), in the trace's
 * format. Thread-safe. */
void relay_tap_event(struct relay_tap *t, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stop the thread, close every conn, print the summary (trace/json), free. */
void relay_tap_free(struct relay_tap *t);

#endif
