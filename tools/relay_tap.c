/* SPDX-License-Identifier: MIT */
/* `vuf relay`'s taps: forward, decode and time every message (relay.h). */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "relay.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"

#define MAX_PENDING 64

struct code_stats {
    uint64_t count, replies, total_ns, max_ns;
};

struct tap_side {
    struct vuf_conn *front, *back;
    uint64_t pf; /* protocol features the front-end set: the reply rules */
    struct {
        uint32_t code;
        int64_t t0;
    } pend[MAX_PENDING];
    unsigned npend;
    struct code_stats stats[VUF_REQ_MAX + 1];
    uint64_t unknown;
};

struct relay_tap {
    FILE *out;
    bool trace, json;
    uint32_t device_type;
    struct tap_side side[RELAY_NSIDES];
    /* relay_tap_reattach() hands new conns over here (under lock). */
    struct vuf_conn *new_front[RELAY_NSIDES], *new_back[RELAY_NSIDES];
    bool promote; /* relay_tap_promote_next() asked, not yet done */
    int wake_efd;
    pthread_t thread;
    bool started;
    int stop_efd;
    pthread_mutex_t lock; /* output and stats */
    int64_t t0;
};

static const char *const side_names[RELAY_NSIDES] = {"vmm", "backend", "next"};

int relay_tap_new(FILE *out, bool trace, bool json, uint32_t device_type,
                  struct relay_tap **out_tap)
{
    struct relay_tap *t = calloc(1, sizeof(*t));

    if (!t)
        return -ENOMEM;
    t->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    t->wake_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t->stop_efd < 0 || t->wake_efd < 0) {
        int err = -errno;

        if (t->stop_efd >= 0)
            close(t->stop_efd);
        free(t);
        return err;
    }
    t->out = out;
    t->trace = trace || json;
    t->json = json;
    t->device_type = device_type;
    t->t0 = cli_now_ns();
    pthread_mutex_init(&t->lock, NULL);
    *out_tap = t;
    return 0;
}

void relay_tap_attach(struct relay_tap *t, enum relay_side side, struct vuf_conn *front,
                      struct vuf_conn *back)
{
    t->side[side].front = front;
    t->side[side].back = back;
}

void relay_tap_reattach(struct relay_tap *t, enum relay_side side, struct vuf_conn *front,
                        struct vuf_conn *back)
{
    uint64_t one = 1;

    pthread_mutex_lock(&t->lock);
    vuf_conn_close(t->new_front[side]);
    vuf_conn_close(t->new_back[side]);
    t->new_front[side] = front;
    t->new_back[side] = back;
    pthread_mutex_unlock(&t->lock);
    if (write(t->wake_efd, &one, sizeof(one)) < 0) {
        /* cannot fail short of a full counter, which wakes the thread too */
    }
}

void relay_tap_promote_next(struct relay_tap *t)
{
    uint64_t one = 1;

    pthread_mutex_lock(&t->lock);
    t->promote = true;
    pthread_mutex_unlock(&t->lock);
    if (write(t->wake_efd, &one, sizeof(one)) < 0) {
        /* cannot fail short of a full counter, which wakes the thread too */
    }
}

/* On the tap thread: the replacement's stream, with its reply bookkeeping,
 * becomes the back-end side; the per-request counts stay where they were
 * made. Called with the lock held. */
static void promote_next(struct relay_tap *t)
{
    struct tap_side *be = &t->side[RELAY_BACKEND], *nx = &t->side[RELAY_NEXT];

    vuf_conn_close(be->front);
    vuf_conn_close(be->back);
    be->front = nx->front;
    be->back = nx->back;
    be->pf = nx->pf;
    be->npend = nx->npend;
    memcpy(be->pend, nx->pend, sizeof(be->pend));
    nx->front = nx->back = NULL;
    nx->npend = 0;
    nx->pf = 0;
    t->promote = false;
}

/* On the tap thread: take over conns handed in by relay_tap_reattach(). */
static void take_new_sides(struct relay_tap *t)
{
    uint64_t v;

    if (read(t->wake_efd, &v, sizeof(v)) < 0) {
        /* nothing pending */
    }
    pthread_mutex_lock(&t->lock);
    for (int s = 0; s < RELAY_NSIDES; s++) {
        struct tap_side *sd = &t->side[s];

        if (!t->new_front[s])
            continue;
        vuf_conn_close(sd->front);
        vuf_conn_close(sd->back);
        sd->front = t->new_front[s];
        sd->back = t->new_back[s];
        t->new_front[s] = t->new_back[s] = NULL;
        vuf_conn_set_timeout(sd->front, 5000);
        vuf_conn_set_timeout(sd->back, 5000);
        sd->npend = 0;
        sd->pf = 0;
    }
    if (t->promote)
        promote_next(t);
    pthread_mutex_unlock(&t->lock);
}

/* ---- decoding ------------------------------------------------------------- */

static json_object *bit_names(uint64_t v, bool protocol, uint32_t device_type)
{
    json_object *a = json_object_new_array();

    for (unsigned b = 0; b < 64; b++) {
        const char *n;
        char unk[16];

        if (!(v & (1ull << b)))
            continue;
        n = protocol ? vuf_protocol_feature_name(b) : vuf_virtio_feature_name(device_type, b);
        if (!n) {
            snprintf(unk, sizeof(unk), "bit%u", b);
            n = unk;
        }
        json_object_array_add(a, json_object_new_string(n));
    }
    return a;
}

static void put_u64(json_object *o, const char *k, uint64_t v)
{
    json_object_object_add(o, k, json_object_new_uint64(v));
}

static void put_hex(json_object *o, const char *k, const uint8_t *p, size_t n)
{
    char buf[2 * 64 + 4];
    size_t i, m = n < 64 ? n : 64;

    for (i = 0; i < m; i++)
        snprintf(buf + 2 * i, 3, "%02x", p[i]);
    if (m < n)
        strcpy(buf + 2 * m, "...");
    json_object_object_add(o, k, json_object_new_string(buf));
}

static void put_region(json_object *o, const struct vuf_mem_region *r)
{
    put_u64(o, "gpa", r->guest_phys_addr);
    put_u64(o, "size", r->memory_size);
    put_u64(o, "uva", r->userspace_addr);
    put_u64(o, "mmap_offset", r->mmap_offset);
}

static void put_features(struct relay_tap *t, json_object *o, const char *k, uint64_t v, bool pf)
{
    char names[64];

    put_u64(o, k, v);
    snprintf(names, sizeof(names), "%s_names", k);
    json_object_object_add(o, names, bit_names(v, pf, t->device_type));
}

/* A reply's fields by name. Sizes are checked before each struct is read:
 * a tap must survive whatever a peer sends. */
static void decode_reply(struct relay_tap *t, const struct vuf_msg *m, json_object *o)
{
    const union vuf_payload *p = &m->payload;
    uint32_t sz = m->hdr.size, code = m->hdr.request;
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_FRONTEND, code);

    if (sz == 8 && code == VUF_REQ_GET_FEATURES)
        put_features(t, o, "features", p->u64, false);
    else if (sz == 8 && code == VUF_REQ_GET_PROTOCOL_FEATURES)
        put_features(t, o, "protocol_features", p->u64, true);
    else if (sz == 8 && code == VUF_REQ_GET_QUEUE_NUM)
        put_u64(o, "queues", p->u64);
    else if (sz == 8 && code == VUF_REQ_GET_MAX_MEM_SLOTS)
        put_u64(o, "slots", p->u64);
    else if (sz == 8 && code == VUF_REQ_GET_VRING_BASE) {
        put_u64(o, "index", p->state.index);
        put_u64(o, "base", p->state.num);
    } else if (code == VUF_REQ_GET_CONFIG && sz >= VUF_CONFIG_HDR_SIZE) {
        put_u64(o, "offset", p->config.offset);
        put_u64(o, "size", p->config.size);
        put_u64(o, "flags", p->config.flags);
        put_hex(o, "bytes", p->config.region, sz - VUF_CONFIG_HDR_SIZE);
    } else if (code == VUF_REQ_GET_CONFIG && sz == 0)
        json_object_object_add(o, "error", json_object_new_string("empty reply"));
    else if (sz == 24 && code == VUF_REQ_GET_INFLIGHT_FD) {
        put_u64(o, "mmap_size", p->inflight.mmap_size);
        put_u64(o, "mmap_offset", p->inflight.mmap_offset);
        put_u64(o, "num_queues", p->inflight.num_queues);
        put_u64(o, "queue_size", p->inflight.queue_size);
    } else if (sz == 8 && rule && rule->reply == VUF_REPLY_ACK)
        json_object_object_add(o, "ack", json_object_new_int64((int64_t)p->u64));
    else if (sz == 8)
        put_u64(o, "u64", p->u64);
    else if (sz)
        put_hex(o, "bytes", p->raw, sz);
}

/* A request's fields by name (sizes checked as for replies). */
static void decode_request(struct relay_tap *t, const struct vuf_msg *m, json_object *o)
{
    const union vuf_payload *p = &m->payload;
    uint32_t sz = m->hdr.size, code = m->hdr.request;

    switch (code) {
    case VUF_REQ_SET_FEATURES:
        if (sz == 8)
            put_features(t, o, "features", p->u64, false);
        break;
    case VUF_REQ_SET_PROTOCOL_FEATURES:
        if (sz == 8)
            put_features(t, o, "protocol_features", p->u64, true);
        break;
    case VUF_REQ_SET_MEM_TABLE:
        if (sz >= 8) {
            json_object *a = json_object_new_array();
            uint32_t n = p->mem.nregions;

            put_u64(o, "nregions", n);
            for (uint32_t i = 0; i < n && i < VUF_MEM_TABLE_MAX && VUF_MEM_TABLE_SIZE(i + 1) <= sz;
                 i++) {
                json_object *r = json_object_new_object();

                put_region(r, &p->mem.regions[i]);
                json_object_array_add(a, r);
            }
            json_object_object_add(o, "regions", a);
        }
        break;
    case VUF_REQ_ADD_MEM_REG:
    case VUF_REQ_REM_MEM_REG:
        if (sz == sizeof(struct vuf_mem_single))
            put_region(o, &p->mem_single.region);
        break;
    case VUF_REQ_SET_VRING_NUM:
    case VUF_REQ_SET_VRING_BASE:
    case VUF_REQ_GET_VRING_BASE:
    case VUF_REQ_SET_VRING_ENABLE:
        if (sz == 8) {
            put_u64(o, "index", p->state.index);
            if (code != VUF_REQ_GET_VRING_BASE)
                put_u64(o,
                        code == VUF_REQ_SET_VRING_NUM    ? "num"
                        : code == VUF_REQ_SET_VRING_BASE ? "base"
                                                         : "enable",
                        p->state.num);
        }
        break;
    case VUF_REQ_SET_VRING_ADDR:
        if (sz == sizeof(struct vuf_vring_addr)) {
            put_u64(o, "index", p->addr.index);
            put_u64(o, "flags", p->addr.flags);
            put_u64(o, "desc", p->addr.desc);
            put_u64(o, "used", p->addr.used);
            put_u64(o, "avail", p->addr.avail);
            put_u64(o, "log", p->addr.log);
        }
        break;
    case VUF_REQ_SET_VRING_KICK:
    case VUF_REQ_SET_VRING_CALL:
    case VUF_REQ_SET_VRING_ERR:
        if (sz == 8) {
            put_u64(o, "index", p->u64 & VUF_VRING_IDX_MASK);
            json_object_object_add(o, "nofd",
                                   json_object_new_boolean((p->u64 & VUF_VRING_NOFD) != 0));
        }
        break;
    case VUF_REQ_GET_CONFIG:
    case VUF_REQ_SET_CONFIG:
        if (sz >= VUF_CONFIG_HDR_SIZE) {
            put_u64(o, "offset", p->config.offset);
            put_u64(o, "size", p->config.size);
            put_u64(o, "flags", p->config.flags);
            if (code == VUF_REQ_SET_CONFIG)
                put_hex(o, "bytes", p->config.region, sz - VUF_CONFIG_HDR_SIZE);
        }
        break;
    case VUF_REQ_SET_LOG_BASE:
        if (sz == sizeof(struct vuf_log)) {
            put_u64(o, "mmap_size", p->log.mmap_size);
            put_u64(o, "mmap_offset", p->log.mmap_offset);
        }
        break;
    case VUF_REQ_GET_INFLIGHT_FD:
    case VUF_REQ_SET_INFLIGHT_FD:
        if (sz == sizeof(struct vuf_inflight)) {
            put_u64(o, "mmap_size", p->inflight.mmap_size);
            put_u64(o, "mmap_offset", p->inflight.mmap_offset);
            put_u64(o, "num_queues", p->inflight.num_queues);
            put_u64(o, "queue_size", p->inflight.queue_size);
        }
        break;
    case VUF_REQ_SET_DEVICE_STATE_FD:
        if (sz == sizeof(struct vuf_device_state)) {
            put_u64(o, "direction", p->dstate.direction);
            put_u64(o, "phase", p->dstate.phase);
        }
        break;
    case VUF_REQ_SET_STATUS:
        if (sz == 8)
            put_u64(o, "status", p->u64);
        break;
    default:
        if (sz == 8)
            put_u64(o, "u64", p->u64);
        else if (sz)
            put_hex(o, "bytes", p->raw, sz);
        break;
    }
}

static json_object *decode(struct relay_tap *t, const struct vuf_msg *m, bool reply)
{
    json_object *o = json_object_new_object();

    if (reply)
        decode_reply(t, m, o);
    else
        decode_request(t, m, o);
    return o;
}

/* ---- output ----------------------------------------------------------------- */

static void text_value(FILE *f, json_object *v)
{
    if (json_object_is_type(v, json_type_int)) {
        uint64_t u = json_object_get_uint64(v);
        int64_t s = json_object_get_int64(v);

        if (s < 0)
            fprintf(f, "%" PRId64, s);
        else if (u > 9999)
            fprintf(f, "0x%" PRIx64, u);
        else
            fprintf(f, "%" PRIu64, u);
    } else if (json_object_is_type(v, json_type_array)) {
        size_t n = json_object_array_length(v);

        fputc('[', f);
        for (size_t i = 0; i < n; i++) {
            if (i)
                fputc(json_object_is_type(json_object_array_get_idx(v, i), json_type_object) ? ' '
                                                                                             : ',',
                      f);
            text_value(f, json_object_array_get_idx(v, i));
        }
        fputc(']', f);
    } else if (json_object_is_type(v, json_type_object)) {
        bool first = true;

        fputc('{', f);
        json_object_object_foreach(v, k, x)
        {
            fprintf(f, "%s%s=", first ? "" : " ", k);
            text_value(f, x);
            first = false;
        }
        fputc('}', f);
    } else if (json_object_is_type(v, json_type_string)) {
        fputs(json_object_get_string(v), f);
    } else {
        fputs(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), f);
    }
}

/* One message: "T side > NAME flags size fields fds [latency]". Called
 * with the lock held. */
static void emit_msg(struct relay_tap *t, enum relay_side s, const struct vuf_msg *m, bool reply,
                     int64_t latency_ns)
{
    double ts = (double)(cli_now_ns() - t->t0) / 1e9;
    const char *name = vuf_request_name(m->hdr.request);
    json_object *fields = decode(t, m, reply), *flags = json_object_new_array();

    if (m->hdr.flags & VUF_FLAG_REPLY)
        json_object_array_add(flags, json_object_new_string("REPLY"));
    if (m->hdr.flags & VUF_FLAG_NEED_REPLY)
        json_object_array_add(flags, json_object_new_string("NEED_REPLY"));
    if (t->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "t", json_object_new_double(ts));
        json_object_object_add(o, "side", json_object_new_string(side_names[s]));
        json_object_object_add(o, "dir", json_object_new_string(reply ? "reply" : "request"));
        json_object_object_add(o, "msg", json_object_new_string(name));
        json_object_object_add(o, "code", json_object_new_int((int)m->hdr.request));
        json_object_object_add(o, "flags", flags);
        json_object_object_add(o, "size", json_object_new_int((int)m->hdr.size));
        json_object_object_add(o, "fields", fields);
        json_object_object_add(o, "fds", json_object_new_int((int)m->nfds));
        if (latency_ns >= 0)
            json_object_object_add(o, "latency_us",
                                   json_object_new_double((double)latency_ns / 1e3));
        fprintf(t->out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        fprintf(t->out, "%10.6f %-7s %s %s", ts, side_names[s], reply ? "<" : ">", name);
        if (m->hdr.flags & VUF_FLAG_NEED_REPLY)
            fputs(" NEED_REPLY", t->out);
        fprintf(t->out, " size=%u", m->hdr.size);
        json_object_object_foreach(fields, k, v)
        {
            fprintf(t->out, " %s=", k);
            text_value(t->out, v);
        }
        if (m->nfds)
            fprintf(t->out, " fds=%u", m->nfds);
        if (latency_ns >= 0)
            fprintf(t->out, " (%.0f us)", (double)latency_ns / 1e3);
        fputc('\n', t->out);
        json_object_put(fields);
        json_object_put(flags);
    }
    fflush(t->out);
}

void relay_tap_event(struct relay_tap *t, const char *event, const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    if (!t->trace)
        return;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&t->lock);
    double ts = (double)(cli_now_ns() - t->t0) / 1e9;
    if (t->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "t", json_object_new_double(ts));
        json_object_object_add(o, "side", json_object_new_string("relay"));
        json_object_object_add(o, "event", json_object_new_string(event));
        json_object_object_add(o, "detail", json_object_new_string(detail));
        fprintf(t->out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    } else {
        fprintf(t->out, "%10.6f relay   * %s: %s\n", ts, event, detail);
    }
    fflush(t->out);
    pthread_mutex_unlock(&t->lock);
}

/* ---- forwarding ------------------------------------------------------------- */

static void note_request(struct tap_side *sd, const struct vuf_msg *m)
{
    const struct vuf_msg_rule *rule = vuf_msg_rule(VUF_CH_FRONTEND, m->hdr.request);

    if (!rule) {
        sd->unknown++;
        return;
    }
    sd->stats[m->hdr.request].count++;
    if (vuf_msg_expects_reply(rule, m->hdr.flags, sd->pf) && sd->npend < MAX_PENDING) {
        sd->pend[sd->npend].code = m->hdr.request;
        sd->pend[sd->npend].t0 = cli_now_ns();
        sd->npend++;
    }
    /* Takes effect for the requests after it. */
    if (m->hdr.request == VUF_REQ_SET_PROTOCOL_FEATURES && m->hdr.size == 8)
        sd->pf = m->payload.u64;
}

/* The oldest request of that code still waiting: replies come in order. */
static int64_t note_reply(struct tap_side *sd, const struct vuf_msg *m)
{
    for (unsigned i = 0; i < sd->npend; i++) {
        if (sd->pend[i].code != m->hdr.request)
            continue;
        int64_t lat = cli_now_ns() - sd->pend[i].t0;
        struct code_stats *cs = &sd->stats[m->hdr.request];

        memmove(&sd->pend[i], &sd->pend[i + 1], (sd->npend - i - 1) * sizeof(sd->pend[0]));
        sd->npend--;
        cs->replies++;
        cs->total_ns += (uint64_t)lat;
        if ((uint64_t)lat > cs->max_ns)
            cs->max_ns = (uint64_t)lat;
        return lat;
    }
    return -1;
}

static void close_fds(struct vuf_msg *m)
{
    for (unsigned i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    m->nfds = 0;
}

/* Hang-up on either end: close both, so that the far peer of the other end
 * sees it too (QEMU gone -> the server reads EOF; back-end gone -> the
 * device's worker reports a crash). */
static void side_down(struct relay_tap *t, enum relay_side s, const char *who, int err)
{
    struct tap_side *sd = &t->side[s];

    vuf_conn_close(sd->front);
    vuf_conn_close(sd->back);
    sd->front = sd->back = NULL;
    relay_tap_event(t, "hangup", "%s side: %s (%s)", side_names[s], who, vuf_strerror(err));
}

/* Forward one message from `from` to `to`. */
static void forward(struct relay_tap *t, enum relay_side s, bool from_front)
{
    struct tap_side *sd = &t->side[s];
    struct vuf_conn *from = from_front ? sd->front : sd->back,
                    *to = from_front ? sd->back : sd->front;
    static struct vuf_msg m; /* only the tap thread forwards */
    int r = vuf_conn_recv(from, &m);
    int64_t lat = -1;

    if (r < 0) {
        side_down(t, s, from_front ? "front-end hung up" : "back-end hung up", r);
        return;
    }
    pthread_mutex_lock(&t->lock);
    if (from_front)
        note_request(sd, &m);
    else
        lat = note_reply(sd, &m);
    if (t->trace)
        emit_msg(t, s, &m, !from_front, lat);
    pthread_mutex_unlock(&t->lock);
    r = vuf_conn_send(to, &m);
    close_fds(&m);
    if (r < 0)
        side_down(t, s,
                  from_front ? "cannot forward to the back end" : "cannot forward to the front end",
                  r);
}

static void *tap_thread(void *arg)
{
    struct relay_tap *t = arg;

    for (;;) {
        struct pollfd pfd[2 + 2 * RELAY_NSIDES];
        struct {
            enum relay_side s;
            bool front;
        } who[2 + 2 * RELAY_NSIDES];
        unsigned n = 2;

        pfd[0] = (struct pollfd){.fd = t->stop_efd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = t->wake_efd, .events = POLLIN};
        for (int s = 0; s < RELAY_NSIDES; s++) {
            if (!t->side[s].front)
                continue;
            who[n].s = (enum relay_side)s;
            who[n].front = true;
            pfd[n++] = (struct pollfd){.fd = vuf_conn_fd(t->side[s].front), .events = POLLIN};
            who[n].s = (enum relay_side)s;
            who[n].front = false;
            pfd[n++] = (struct pollfd){.fd = vuf_conn_fd(t->side[s].back), .events = POLLIN};
        }
        if (poll(pfd, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents)
            break;
        for (unsigned i = 2; i < n; i++) {
            enum relay_side s = who[i].s;

            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) || !t->side[s].front)
                continue;
            forward(t, s, who[i].front);
        }
        /* After the forwarding: a side replaced meanwhile must not be
         * served with the old side's poll results. */
        if (pfd[1].revents)
            take_new_sides(t);
    }
    return NULL;
}

int relay_tap_start(struct relay_tap *t)
{
    for (int s = 0; s < RELAY_NSIDES; s++)
        if (t->side[s].front) {
            vuf_conn_set_timeout(t->side[s].front, 5000);
            vuf_conn_set_timeout(t->side[s].back, 5000);
        }
    int r = pthread_create(&t->thread, NULL, tap_thread, t);

    if (r)
        return -r;
    t->started = true;
    return 0;
}

/* ---- summary ---------------------------------------------------------------- */

static void summary(struct relay_tap *t)
{
    json_object *root = json_object_new_object(), *sides = json_object_new_object();
    uint64_t total = 0;

    for (int s = 0; s < RELAY_NSIDES; s++) {
        json_object *o;
        bool used = t->side[s].unknown != 0;

        for (unsigned c = 0; c <= VUF_REQ_MAX && !used; c++)
            used = t->side[s].stats[c].count != 0;
        /* A replacement that never came has nothing to report. */
        if (s == RELAY_NEXT && !used)
            continue;
        o = json_object_new_object();
        if (!t->json)
            fprintf(t->out, "summary %s: %-24s %7s %7s %10s %10s\n", side_names[s], "request",
                    "count", "replies", "avg_us", "max_us");
        for (unsigned c = 0; c <= VUF_REQ_MAX; c++) {
            const struct code_stats *cs = &t->side[s].stats[c];
            double avg = cs->replies ? (double)cs->total_ns / (double)cs->replies / 1e3 : 0;

            if (!cs->count)
                continue;
            total += cs->count;
            if (t->json) {
                json_object *e = json_object_new_object();

                put_u64(e, "count", cs->count);
                put_u64(e, "replies", cs->replies);
                json_object_object_add(e, "avg_us", json_object_new_double(avg));
                json_object_object_add(e, "max_us",
                                       json_object_new_double((double)cs->max_ns / 1e3));
                json_object_object_add(o, vuf_request_name(c), e);
            } else {
                fprintf(t->out, "summary %s: %-24s %7" PRIu64 " %7" PRIu64 " %10.1f %10.1f\n",
                        side_names[s], vuf_request_name(c), cs->count, cs->replies, avg,
                        (double)cs->max_ns / 1e3);
            }
        }
        if (t->side[s].unknown && !t->json)
            fprintf(t->out, "summary %s: %" PRIu64 " unknown requests\n", side_names[s],
                    t->side[s].unknown);
        put_u64(o, "unknown", t->side[s].unknown);
        json_object_object_add(sides, side_names[s], o);
    }
    if (t->json) {
        put_u64(root, "messages", total);
        json_object_object_add(root, "summary", sides);
        fprintf(t->out, "%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
    } else {
        fprintf(t->out, "summary: %" PRIu64 " requests relayed or sent\n", total);
        json_object_put(sides);
    }
    json_object_put(root);
    fflush(t->out);
}

void relay_tap_free(struct relay_tap *t)
{
    if (!t)
        return;
    if (t->started) {
        uint64_t one = 1;

        if (write(t->stop_efd, &one, sizeof(one)) < 0) {
            /* an eventfd write of 1 cannot fail short of a full counter */
        }
        pthread_join(t->thread, NULL);
    }
    for (int s = 0; s < RELAY_NSIDES; s++) {
        vuf_conn_close(t->side[s].front);
        vuf_conn_close(t->side[s].back);
        vuf_conn_close(t->new_front[s]);
        vuf_conn_close(t->new_back[s]);
    }
    if (t->trace)
        summary(t);
    close(t->stop_efd);
    close(t->wake_efd);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
