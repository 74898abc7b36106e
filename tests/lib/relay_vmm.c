/* SPDX-License-Identifier: MIT */
/* A VMM played by hand in front of `vuf relay` (relay_vmm.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "relay_vmm.h"
#include "vuf/virtio.h"
#include "vuf/wire.h"

#define MAX_DATA 8192u

void rv_spawn_backend(struct rv_env *e, struct tu_proc *p, const char *sock,
                      const char *const *be_extra)
{
    char sockarg[440], filearg[440];
    char *argv[16] = {(char *)tu_built_exe("VUF_BACKEND_BLK"), sockarg, "--num-queues=1"};
    unsigned n = 3;
    bool ram = false;

    assert_non_null(argv[0]);
    for (unsigned i = 0; be_extra && be_extra[i] && n < 14; i++) {
        argv[n++] = (char *)be_extra[i];
        ram = ram || strncmp(be_extra[i], "--ram", 5) == 0;
    }
    snprintf(filearg, sizeof(filearg), "--file=%s", e->disk);
    if (!ram)
        argv[n++] = filearg;
    argv[n] = NULL;
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", sock);
    snprintf(e->be_log, sizeof(e->be_log), "%s/be%u.log", e->dir, e->be_starts++);
    tu_spawn_wait_file(p, argv, e->be_log, sock);
}

void rv_start_backend(struct rv_env *e, const char *const *be_extra)
{
    rv_spawn_backend(e, &e->be, e->be_sock, be_extra);
}

void rv_env_init(struct rv_env *e, const char *tag, const char *const *be_extra)
{
    memset(e, 0, sizeof(*e));
    e->be.pid = e->relay.pid = -1;
    e->dir = tu_mkdtemp(tag);
    assert_non_null(e->dir);
    snprintf(e->disk, sizeof(e->disk), "%s/disk.img", e->dir);
    snprintf(e->be_sock, sizeof(e->be_sock), "%s/be.sock", e->dir);
    snprintf(e->vmm_sock, sizeof(e->vmm_sock), "%s/relay.sock", e->dir);
    snprintf(e->ctl, sizeof(e->ctl), "%s/relay.ctl", e->dir);
    snprintf(e->trace, sizeof(e->trace), "%s/trace.out", e->dir);
    snprintf(e->relay_log, sizeof(e->relay_log), "%s/relay.log", e->dir);
    e->disk_fd = open(e->disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(e->disk_fd >= 0);
    assert_int_equal(ftruncate(e->disk_fd, (off_t)RV_DISK_BYTES), 0);
    rv_start_backend(e, be_extra);
}

void rv_start_relay(struct rv_env *e, const char *const *extra)
{
    char cmd[4096];
    int n;

    n = snprintf(cmd, sizeof(cmd),
                 "exec '%s' relay --listen '%s' --connect '%s' --control '%s' --trace",
                 tu_built_exe("VUF_TOOL"), e->vmm_sock, e->be_sock, e->ctl);
    for (unsigned i = 0; extra && extra[i]; i++)
        n += snprintf(cmd + n, sizeof(cmd) - (size_t)n, " '%s'", extra[i]);
    snprintf(cmd + n, sizeof(cmd) - (size_t)n, " > '%s'", e->trace);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    assert_int_equal(tu_spawn(&e->relay, argv, e->relay_log), 0);
    if (tu_wait_socket_file(&e->relay, e->vmm_sock, TU_START_MS) != 0) {
        tu_dump_log(&e->relay);
        fail_msg("vuf relay did not listen on %s", e->vmm_sock);
    }
}

void rv_env_fini(struct rv_env *e)
{
    if (e->relay.pid > 0)
        tu_stop(&e->relay);
    if (e->be.pid > 0)
        tu_stop(&e->be);
    if (e->disk_fd >= 0)
        close(e->disk_fd);
    tu_rmtree(e->dir);
}

static int trace_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "re");
    char line[4096];
    int n = 0;

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

void rv_wait_trace(const struct rv_env *e, const char *needle, int count, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;

    while (trace_count(e->trace, needle) < count) {
        if (tu_now_ms() > end) {
            fprintf(stderr, "(trace in %s)\n", e->trace);
            fail_msg("the relay's trace has fewer than %d lines with '%s'", count, needle);
        }
        tu_sleep_ms(5); /* polling the trace file */
    }
}

void rv_wait_active(const struct rv_env *e, int n)
{
    /* The device's last step of an activation: SET_STATUS with DRIVER_OK
     * (status 15), acked. */
    rv_wait_trace(e, "backend > SET_STATUS NEED_REPLY size=8 status=15", n, RV_IO_MS);
    rv_wait_trace(e, "backend < SET_STATUS", 2 * n, RV_IO_MS);
}

/* The process's state letter in /proc (Z once it exited, unreaped). */
static char proc_state(pid_t pid)
{
    char path[64], st[512], *rp;
    FILE *f;
    char c = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    if (fgets(st, sizeof(st), f) && (rp = strrchr(st, ')')) && rp[1] == ' ')
        c = rp[2];
    fclose(f);
    return c;
}

bool rv_relay_alive(struct rv_env *e)
{
    char c = e->relay.pid > 0 ? proc_state(e->relay.pid) : 0;

    return c && c != 'Z';
}

int rv_relay_wait(struct rv_env *e, int timeout_ms)
{
    int64_t end = tu_now_ms() + timeout_ms;

    while (rv_relay_alive(e) && tu_now_ms() < end)
        tu_sleep_ms(5); /* polling /proc: the status stays for tu_stop */
    if (rv_relay_alive(e)) {
        tu_stop(&e->relay);
        return -1;
    }
    return tu_stop(&e->relay);
}

/* ---- messages -------------------------------------------------------------- */

static void recv_reply(struct rv_vmm *v, uint32_t code, struct vuf_msg *m)
{
    int r = vuf_conn_recv(v->c, m);

    if (r < 0)
        fail_msg("no reply to %s: %s", vuf_request_name(code), vuf_strerror(r));
    assert_int_equal(m->hdr.request, code);
    assert_true(m->hdr.flags & VUF_FLAG_REPLY);
    for (unsigned i = 0; i < m->nfds; i++)
        close(m->fds[i]);
}

int64_t rv_ask(struct rv_vmm *v, uint32_t code, const void *payload, uint32_t size, const int *fds,
               unsigned nfds)
{
    static struct vuf_msg m;

    assert_int_equal(
        tu_raw_send(v->c, code, VUF_VERSION | VUF_FLAG_NEED_REPLY, payload, size, fds, nfds), 0);
    recv_reply(v, code, &m);
    assert_int_equal(m.hdr.size, 8);
    return (int64_t)m.payload.u64;
}

static uint64_t get_u64(struct rv_vmm *v, uint32_t code)
{
    static struct vuf_msg m;

    assert_int_equal(tu_raw_send(v->c, code, VUF_VERSION, NULL, 0, NULL, 0), 0);
    recv_reply(v, code, &m);
    assert_int_equal(m.hdr.size, 8);
    return m.payload.u64;
}

int64_t rv_state(struct rv_vmm *v, uint32_t code, uint32_t index, uint32_t num)
{
    struct vuf_vring_state s = {.index = index, .num = num};

    return rv_ask(v, code, &s, sizeof(s), NULL, 0);
}

int64_t rv_addr(struct rv_vmm *v, uint32_t index, uint64_t desc, uint64_t avail, uint64_t used)
{
    struct vuf_vring_addr a = {.index = index, .desc = desc, .used = used, .avail = avail};

    return rv_ask(v, VUF_REQ_SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
}

bool rv_get_base(struct rv_vmm *v, uint32_t index, uint32_t *out_index, uint32_t *num)
{
    struct vuf_vring_state s = {.index = index};
    static struct vuf_msg m;

    if (tu_raw_send(v->c, VUF_REQ_GET_VRING_BASE, VUF_VERSION, &s, sizeof(s), NULL, 0) < 0 ||
        vuf_conn_recv(v->c, &m) < 0)
        return false;
    assert_int_equal(m.hdr.request, VUF_REQ_GET_VRING_BASE);
    assert_int_equal(m.hdr.size, 8);
    *out_index = m.payload.state.index;
    *num = m.payload.state.num;
    return true;
}

uint64_t rv_uva(const struct rv_vmm *v, uint64_t off)
{
    struct vuf_guest_region g;

    assert_int_equal(vuf_guest_mem_region(v->gm, 0, &g), 0);
    return (uint64_t)(uintptr_t)g.host + off;
}

void rv_connect(struct rv_vmm *v, const struct rv_env *e, uint64_t mem_bytes)
{
    struct vuf_mem_region reg;
    uint64_t pf, u;
    struct vuf_mem_table t;
    int fd;

    memset(v, 0, sizeof(*v));
    v->memfd = memfd_create("rv-guest", MFD_CLOEXEC); /* no seals: the test may shrink it */
    assert_true(v->memfd >= 0);
    assert_int_equal(ftruncate(v->memfd, (off_t)mem_bytes), 0);
    v->mem_bytes = mem_bytes;
    assert_int_equal(vuf_guest_mem_new(&v->gm), 0);
    assert_int_equal(vuf_guest_mem_add_fd(v->gm, 0, mem_bytes, v->memfd, 0), 0);
    assert_int_equal(vuf_conn_connect(e->vmm_sock, 2000, &v->c), 0);
    vuf_conn_set_timeout(v->c, RV_IO_MS);

    assert_int_equal(tu_raw_send(v->c, VUF_REQ_SET_OWNER, VUF_VERSION, NULL, 0, NULL, 0), 0);
    v->features = get_u64(v, VUF_REQ_GET_FEATURES);
    assert_true(v->features & VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES));
    assert_true(v->features & VUF_BIT(VUF_VIRTIO_F_VERSION_1));
    u = VUF_BIT(VUF_VIRTIO_F_VERSION_1) | VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES);
    assert_int_equal(tu_raw_send(v->c, VUF_REQ_SET_FEATURES, VUF_VERSION, &u, 8, NULL, 0), 0);
    pf = get_u64(v, VUF_REQ_GET_PROTOCOL_FEATURES);
    assert_true(pf & VUF_PROTO_MASK(REPLY_ACK));
    u = VUF_PROTO_MASK(REPLY_ACK);
    assert_int_equal(tu_raw_send(v->c, VUF_REQ_SET_PROTOCOL_FEATURES, VUF_VERSION, &u, 8, NULL, 0),
                     0);
    assert_int_equal(vuf_guest_mem_mem_table(v->gm, &reg, &fd, 1), 1);
    memset(&t, 0, sizeof(t));
    t.nregions = 1;
    t.regions[0] = reg;
    assert_int_equal(rv_ask(v, VUF_REQ_SET_MEM_TABLE, &t, VUF_MEM_TABLE_SIZE(1), &fd, 1), 0);
}

void rv_close(struct rv_vmm *v)
{
    vuf_conn_close(v->c);
    v->c = NULL;
    /* The driver's frees touch no ring memory. */
    vuf_blk_free(v->blk);
    vuf_virtq_free(v->vq);
    vuf_guest_mem_free(v->gm);
    if (v->memfd >= 0)
        close(v->memfd);
    memset(v, 0, sizeof(*v));
    v->memfd = -1;
}

void rv_start_ring(struct rv_vmm *v, unsigned qsize)
{
    struct vuf_vring_addr a;
    int fd;

    assert_int_equal(vuf_virtq_new(v->gm, qsize, VUF_BIT(VUF_VIRTIO_F_VERSION_1), &v->vq), 0);
    assert_int_equal(vuf_blk_new(v->vq, 8, MAX_DATA, &v->blk), 0);
    vuf_virtq_vring_addr(v->vq, &a);
    assert_int_equal(rv_state(v, VUF_REQ_SET_VRING_NUM, 0, qsize), 0);
    assert_int_equal(rv_state(v, VUF_REQ_SET_VRING_BASE, 0, 0), 0);
    assert_int_equal(rv_addr(v, 0, a.desc, a.avail, a.used), 0);
    fd = vuf_virtq_kick_fd(v->vq);
    assert_int_equal(rv_ask(v, VUF_REQ_SET_VRING_KICK, &(uint64_t){0}, 8, &fd, 1), 0);
    fd = vuf_virtq_call_fd(v->vq);
    assert_int_equal(rv_ask(v, VUF_REQ_SET_VRING_CALL, &(uint64_t){0}, 8, &fd, 1), 0);
}

struct vuf_blk_req *rv_submit_write(struct rv_vmm *v, uint64_t sector, uint32_t len, uint32_t seed)
{
    struct vuf_blk_req *req = vuf_blk_req_get(v->blk);
    uint64_t gpa;

    assert_non_null(req);
    assert_true(len <= MAX_DATA);
    assert_int_equal(vuf_blk_req_prep(req, VUF_BLK_T_OUT, sector, len), 0);
    tu_fill_pattern(vuf_blk_req_buf(req, &gpa), len, seed);
    assert_int_equal(vuf_blk_submit(v->blk, req, 0), 0);
    return req;
}

int rv_wait(struct rv_vmm *v, struct vuf_blk_req *req, int timeout_ms)
{
    struct vuf_blk_req *done = NULL;
    int r = vuf_blk_wait(v->blk, timeout_ms, &done);

    if (r < 0)
        return r;
    assert_ptr_equal(done, req);
    r = vuf_blk_req_result(done);
    vuf_blk_req_put(v->blk, done);
    return r;
}
