/* SPDX-License-Identifier: MIT */
/*
 * The engine of `vuf check` (check.h): connections, the evidence log, the
 * run loop and the three output formats.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "check_internal.h"
#include "vuf/log.h"
#include "vuf/virtio.h"

const char *chk_status_name(enum chk_status s)
{
    switch (s) {
    case CHK_PASS:
        return "PASS";
    case CHK_FAIL:
        return "FAIL";
    case CHK_SKIP:
        return "SKIP";
    case CHK_ERROR:
        return "ERROR";
    }
    return "?";
}

unsigned chk_count(void)
{
    return chk_suite_len;
}

const char *chk_id(unsigned i)
{
    return i < chk_suite_len ? chk_suite[i].id : NULL;
}

/* ---- evidence ------------------------------------------------------------ */

static void ev_vappend(struct chk_ctx *x, const char *fmt, va_list ap)
{
    char *buf = x->res->evidence;
    size_t cap = sizeof(x->res->evidence);
    int n;

    if (x->evlen + 1 >= cap)
        return;
    if (x->evlen > 0)
        buf[x->evlen++] = '\n';
    n = vsnprintf(buf + x->evlen, cap - x->evlen, fmt, ap);
    if (n < 0)
        n = 0;
    x->evlen += (size_t)n;
    if (x->evlen >= cap) {
        x->evlen = cap - 1;
        memcpy(buf + cap - 5, "...", 4);
    }
}

void chk_ev(struct chk_ctx *x, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    ev_vappend(x, fmt, ap);
    va_end(ap);
}

enum chk_status chk_skip(struct chk_ctx *x, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    ev_vappend(x, fmt, ap);
    va_end(ap);
    return CHK_SKIP;
}

enum chk_status chk_fail(struct chk_ctx *x, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    ev_vappend(x, fmt, ap);
    va_end(ap);
    return CHK_FAIL;
}

enum chk_status chk_err(struct chk_ctx *x, int err, const char *what)
{
    chk_ev(x, "%s: %s (%d)", what, vuf_strerror(err), err);
    if (vuf_conn_error_is_fatal(err)) {
        chk_disconnect(x);
        return CHK_ERROR;
    }
    return CHK_FAIL;
}

/* ---- raw messages ---------------------------------------------------------- */

static void ev_msg(struct chk_ctx *x, const char *dir, const struct vuf_hdr *h,
                   const union vuf_payload *p, unsigned nfds)
{
    char extra[64] = "";

    if (h->size == 8)
        snprintf(extra, sizeof(extra), " u64 0x%" PRIx64, p->u64);
    else if (h->size == 16 || h->size == 40)
        snprintf(extra, sizeof(extra), " u64[0..1] 0x%" PRIx64 " 0x%" PRIx64, p->u64,
                 ((const uint64_t *)(const void *)p->raw)[1]);
    chk_ev(x, "%s %s (%u) flags 0x%x size %u%s%s", dir, vuf_request_name(h->request), h->request,
           h->flags, h->size, extra, nfds ? (nfds == 1 ? " +1 fd" : " +fds") : "");
}

int chk_raw_send(struct chk_ctx *x, uint32_t code, uint32_t flags, const void *payload,
                 uint32_t size, const int *fds, unsigned nfds)
{
    struct vuf_msg m;
    int r;

    if (!x->c)
        return -ENOTCONN;
    if (size > sizeof(m.payload) || nfds > VUF_MAX_FDS)
        return -EINVAL;
    memset(&m, 0, sizeof(m));
    m.hdr = (struct vuf_hdr){.request = code, .flags = flags, .size = size};
    if (size)
        memcpy(m.payload.raw, payload, size);
    for (unsigned i = 0; i < nfds; i++)
        m.fds[i] = fds[i];
    m.nfds = nfds;
    ev_msg(x, "->", &m.hdr, &m.payload, nfds);
    r = vuf_conn_send(vuf_client_conn(x->c), &m);
    if (r < 0)
        chk_ev(x, "   send: %s", vuf_strerror(r));
    return r;
}

int chk_raw_recv(struct chk_ctx *x, struct vuf_msg *m, int timeout_ms)
{
    struct vuf_conn *conn;
    int old, r;

    if (!x->c)
        return -ENOTCONN;
    conn = vuf_client_conn(x->c);
    old = vuf_conn_timeout(conn);
    vuf_conn_set_timeout(conn, timeout_ms);
    r = vuf_conn_recv(conn, m);
    vuf_conn_set_timeout(conn, old);
    if (r < 0) {
        chk_ev(x, "<- nothing: %s", vuf_strerror(r));
        return r;
    }
    ev_msg(x, "<-", &m->hdr, &m->payload, m->nfds);
    return 0;
}

int chk_sync(struct chk_ctx *x)
{
    struct vuf_msg m;
    int r = chk_raw_send(x, VUF_REQ_GET_FEATURES, VUF_VERSION, NULL, 0, NULL, 0);

    if (r < 0)
        return r;
    r = chk_raw_recv(x, &m, x->o->timeout_ms);
    if (r < 0)
        return r;
    vuf_msg_close_fds(&m);
    if (m.hdr.request != VUF_REQ_GET_FEATURES || m.hdr.size != 8) {
        chk_ev(x, "   expected GET_FEATURES' reply");
        return -EPROTO;
    }
    return 0;
}

/* ---- connections ----------------------------------------------------------- */

void chk_disconnect(struct chk_ctx *x)
{
    vuf_client_free(x->c);
    x->c = NULL;
}

/* One raw request with a u64 reply, its header kept. */
static int hs_get_u64(struct chk_ctx *x, uint32_t code, struct vuf_hdr *hdr, uint64_t *v)
{
    struct vuf_msg m;
    int r = chk_raw_send(x, code, VUF_VERSION, NULL, 0, NULL, 0);

    if (r < 0)
        return r;
    r = chk_raw_recv(x, &m, x->o->timeout_ms);
    if (r < 0)
        return r;
    vuf_msg_close_fds(&m);
    *hdr = m.hdr;
    *v = m.hdr.size >= 8 ? m.payload.u64 : 0;
    return 0;
}

int chk_connect(struct chk_ctx *x)
{
    struct vuf_conn *conn = NULL;
    struct chk_hs *hs = &x->hs;
    int r;

    if (x->c)
        return 0;
    if (x->reconnect_err) {
        chk_ev(x, "not run: the back-end did not accept a new front-end after an earlier one "
                  "disconnected (run it alone: --only ID, on a fresh back-end)");
        return x->reconnect_err;
    }
    memset(hs, 0, sizeof(*hs));
    r = vuf_conn_connect(x->o->socket, x->o->timeout_ms, &conn);
    if (r < 0) {
        chk_ev(x, "connect %s: %s", x->o->socket, vuf_strerror(r));
        if (x->conns > 0) {
            x->reconnect_err = r;
            chk_ev(x, "the back-end did not accept a new front-end after the previous one "
                      "disconnected (it serves one connection?)");
        }
        return r;
    }
    vuf_conn_set_timeout(conn, x->o->timeout_ms);
    r = vuf_client_new(conn, &x->c);
    if (r < 0)
        return r;
    x->conns++;
    chk_ev(x, "connection %u", x->conns);
    hs->owner_err = chk_raw_send(x, VUF_REQ_SET_OWNER, VUF_VERSION, NULL, 0, NULL, 0);
    if (hs->owner_err < 0)
        goto dead;
    hs->feat_err = hs_get_u64(x, VUF_REQ_GET_FEATURES, &hs->feat_hdr, &hs->features);
    if (hs->feat_err < 0)
        goto dead;
    hs->pf_err = -ENOTSUP;
    if (!(hs->features & VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES)))
        return 0;
    hs->pf_err = hs_get_u64(x, VUF_REQ_GET_PROTOCOL_FEATURES, &hs->pf_hdr, &hs->pf_offered);
    if (hs->pf_err < 0)
        goto dead;
    chk_ev(x, "-> SET_PROTOCOL_FEATURES 0x%" PRIx64 " (client)", hs->pf_offered & CHK_PF_ACK);
    hs->set_pf_err = vuf_client_set_protocol_features(x->c, hs->pf_offered & CHK_PF_ACK);
    if (hs->set_pf_err < 0) {
        chk_ev(x, "   %s", vuf_strerror(hs->set_pf_err));
        if (vuf_conn_error_is_fatal(hs->set_pf_err))
            goto dead;
    }
    hs->pf_acked = vuf_client_protocol_features(x->c);
    return 0;
dead:
    r = hs->owner_err  ? hs->owner_err
        : hs->feat_err ? hs->feat_err
        : hs->pf_err   ? hs->pf_err
                       : hs->set_pf_err;
    chk_disconnect(x);
    return r < 0 ? r : -ECONNRESET;
}

uint32_t chk_config_len(const struct chk_ctx *x)
{
    const struct vuf_device_info *d;

    if (!x->o->device_type)
        return 0;
    d = vuf_device_info(x->o->device_type);
    return d ? d->config_size : 0;
}

/* ---- selection ------------------------------------------------------------- */

/* Does the comma-separated list name id (exactly, or a prefix ending '.')? */
static bool only_matches(const char *only, const char *id, const char **bad, size_t *bad_len)
{
    const char *p = only;

    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);

        if (n > 0) {
            if (id) {
                if ((strlen(id) == n && memcmp(id, p, n) == 0) ||
                    (p[n - 1] == '.' && strncmp(id, p, n) == 0))
                    return true;
            } else {
                bool known = false;

                for (unsigned i = 0; i < chk_suite_len && !known; i++) {
                    const char *cid = chk_suite[i].id;

                    known = (strlen(cid) == n && memcmp(cid, p, n) == 0) ||
                            (p[n - 1] == '.' && strncmp(cid, p, n) == 0);
                }
                if (!known) {
                    *bad = p;
                    *bad_len = n;
                    return false;
                }
            }
        }
        if (!e)
            break;
        p = e + 1;
    }
    return id == NULL;
}

bool chk_only_valid(const char *only, const char **bad, size_t *bad_len)
{
    *bad = NULL;
    *bad_len = 0;
    return only_matches(only, NULL, bad, bad_len);
}

/* ---- the run --------------------------------------------------------------- */

int chk_run(const struct chk_opts *o, struct chk_report *rep)
{
    struct chk_opts opts = *o;
    struct chk_ctx x = {.o = &opts};
    struct chk_result first = {0};
    int r;

    memset(rep, 0, sizeof(*rep));
    if (opts.timeout_ms <= 0)
        opts.timeout_ms = VUF_DEFAULT_TIMEOUT_MS;
    if (opts.settle_ms <= 0)
        opts.settle_ms = 200;
    /* The first connection decides whether there is anything to check. */
    x.res = &first;
    r = chk_connect(&x);
    if (r < 0)
        return r;
    rep->results = calloc(chk_suite_len, sizeof(*rep->results));
    if (!rep->results) {
        chk_disconnect(&x);
        return -ENOMEM;
    }
    rep->n = chk_suite_len;
    for (unsigned i = 0; i < chk_suite_len; i++) {
        const struct chk_def *d = &chk_suite[i];
        struct chk_result *res = &rep->results[i];
        const char *bad;
        size_t bad_len;

        res->id = d->id;
        res->rule = d->rule;
        res->ref = d->ref;
        x.res = res;
        x.evlen = 0;
        x.dirty = false;
        if (opts.only && !only_matches(opts.only, d->id, &bad, &bad_len)) {
            res->status = chk_skip(&x, "not selected (--only)");
        } else if (d->hostile && !opts.hostile) {
            res->status = chk_skip(&x, "robustness check: run with --hostile");
        } else if (chk_connect(&x) < 0) {
            res->status = CHK_ERROR;
        } else {
            x.dirty = d->dirty;
            res->status = d->run(&x);
        }
        if (x.dirty || (x.c && vuf_conn_peer_closed(vuf_client_conn(x.c))))
            chk_disconnect(&x);
        switch (res->status) {
        case CHK_PASS:
            rep->passed++;
            break;
        case CHK_FAIL:
            rep->failed++;
            break;
        case CHK_SKIP:
            rep->skipped++;
            break;
        case CHK_ERROR:
            rep->errors++;
            break;
        }
    }
    chk_disconnect(&x);
    return 0;
}

void chk_report_free(struct chk_report *rep)
{
    free(rep->results);
    memset(rep, 0, sizeof(*rep));
}

const struct chk_result *chk_find(const struct chk_report *rep, const char *id)
{
    for (unsigned i = 0; i < rep->n; i++)
        if (strcmp(rep->results[i].id, id) == 0)
            return &rep->results[i];
    return NULL;
}

/* ---- output ---------------------------------------------------------------- */

int chk_print_human(FILE *f, const struct chk_report *rep, const char *socket, bool verbose)
{
    fprintf(f, "vuf check %s: %u checks\n", socket, rep->n);
    for (unsigned i = 0; i < rep->n; i++) {
        const struct chk_result *r = &rep->results[i];
        bool show = verbose || r->status == CHK_FAIL || r->status == CHK_ERROR;
        const char *p = r->evidence;

        fprintf(f, "%-5s %-26s %s [%s]\n", chk_status_name(r->status), r->id, r->rule, r->ref);
        if (r->status == CHK_SKIP) {
            /* a skip's reason is its last line */
            const char *nl = strrchr(p, '\n');

            fprintf(f, "      (%s)\n", nl ? nl + 1 : p);
            continue;
        }
        if (!show || !*p)
            continue;
        while (*p) {
            const char *nl = strchr(p, '\n');
            int n = nl ? (int)(nl - p) : (int)strlen(p);

            fprintf(f, "      | %.*s\n", n, p);
            p += n + (nl ? 1 : 0);
        }
    }
    fprintf(f, "%u passed, %u failed, %u skipped, %u errors\n", rep->passed, rep->failed,
            rep->skipped, rep->errors);
    return fflush(f) == 0 && !ferror(f) ? 0 : -EIO;
}

int chk_print_json(FILE *f, const struct chk_report *rep, const char *socket)
{
    json_object *root = json_object_new_object(), *arr = json_object_new_array();
    int r;

    json_object_object_add(root, "socket", json_object_new_string(socket));
    for (unsigned i = 0; i < rep->n; i++) {
        const struct chk_result *res = &rep->results[i];
        json_object *o = json_object_new_object();

        json_object_object_add(o, "id", json_object_new_string(res->id));
        json_object_object_add(o, "rule", json_object_new_string(res->rule));
        json_object_object_add(o, "ref", json_object_new_string(res->ref));
        json_object_object_add(o, "status", json_object_new_string(chk_status_name(res->status)));
        json_object_object_add(o, "evidence", json_object_new_string(res->evidence));
        json_object_array_add(arr, o);
    }
    json_object_object_add(root, "checks", arr);
    json_object_object_add(root, "passed", json_object_new_int((int)rep->passed));
    json_object_object_add(root, "failed", json_object_new_int((int)rep->failed));
    json_object_object_add(root, "skipped", json_object_new_int((int)rep->skipped));
    json_object_object_add(root, "errors", json_object_new_int((int)rep->errors));
    fprintf(f, "%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
    json_object_put(root);
    r = fflush(f);
    return r == 0 && !ferror(f) ? 0 : -EIO;
}

/* XML text: the five entities, and control bytes other than \n and \t
 * (invalid in XML 1.0) as '?'. */
static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;

        switch (ch) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        case '\'':
            fputs("&apos;", f);
            break;
        default:
            fputc(ch < 0x20 && ch != '\n' && ch != '\t' ? '?' : ch, f);
        }
    }
}

int chk_print_junit(FILE *f, const struct chk_report *rep, const char *socket)
{
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<testsuites tests=\"%u\" failures=\"%u\" errors=\"%u\" skipped=\"%u\">\n", rep->n,
            rep->failed, rep->errors, rep->skipped);
    fprintf(f, "  <testsuite name=\"vuf check ");
    xml_text(f, socket);
    fprintf(f, "\" tests=\"%u\" failures=\"%u\" errors=\"%u\" skipped=\"%u\">\n", rep->n,
            rep->failed, rep->errors, rep->skipped);
    for (unsigned i = 0; i < rep->n; i++) {
        const struct chk_result *r = &rep->results[i];
        const char *el = r->status == CHK_FAIL    ? "failure"
                         : r->status == CHK_ERROR ? "error"
                         : r->status == CHK_SKIP  ? "skipped"
                                                  : NULL;

        fprintf(f, "    <testcase classname=\"vuf.check\" name=\"");
        xml_text(f, r->id);
        fprintf(f, "\">\n");
        if (el) {
            fprintf(f, "      <%s message=\"", el);
            xml_text(f, r->rule);
            fprintf(f, " [");
            xml_text(f, r->ref);
            fprintf(f, "]\">");
            xml_text(f, r->evidence);
            fprintf(f, "</%s>\n", el);
        }
        fprintf(f, "      <system-out>");
        xml_text(f, r->rule);
        fprintf(f, " [");
        xml_text(f, r->ref);
        fprintf(f, "]\n");
        xml_text(f, r->evidence);
        fprintf(f, "</system-out>\n    </testcase>\n");
    }
    fprintf(f, "  </testsuite>\n</testsuites>\n");
    return fflush(f) == 0 && !ferror(f) ? 0 : -EIO;
}
