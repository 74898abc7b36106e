/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) as a virtio-fs device against the
 * real C virtiofsd of QEMU 7.2 (Debian 12, /usr/lib/qemu/virtiofsd): the
 * public device API creates and activates both queues (hiprio + request),
 * and the test, playing the guest's FUSE driver with the virtq driver
 * directly, completes FUSE_INIT and a FUSE_LOOKUP of a file in the shared
 * directory through the request queue (queue 1). Then sleep -> wake keeps
 * the ring positions and the next request completes; destroying the device
 * makes virtiofsd (which serves exactly one connection) exit with rc 0, and
 * nothing leaks.
 *
 * virtiofsd needs root (pid-file directory, namespace sandbox) and serves
 * exactly ONE connection, so it is waited for by socket FILE only. Skips
 * (77) without root; fails without the binary (scripts/setup.sh installs
 * it).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backends.h"
#include "fe_harness.h"
#include "testutil.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtq.h"

#define VIRTIOFSD TU_VIRTIOFSD

#define BIT(n) (1ull << (n))
#define NQ 2 /* hiprio + one request queue */
#define REQ_Q 1
#define QSIZE 64u
#define GUEST_GPA 0x200000ull
#define GUEST_BYTES (4ull << 20)
#define IO_MS 5000

/* ------------------------------------------------------------------------ */
/* FUSE wire format (the subset used here; little-endian)                   */
/* ------------------------------------------------------------------------ */

#define FUSE_LOOKUP 1
#define FUSE_INIT 26
#define FUSE_ROOT_ID 1

struct fuse_in_header {
    uint32_t len;
    uint32_t opcode;
    uint64_t unique;
    uint64_t nodeid;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint32_t padding;
};
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");

struct fuse_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");

struct fuse_init_in {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
};

struct fuse_init_out {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint16_t max_background;
    uint16_t congestion_threshold;
    uint32_t max_write;
    uint32_t time_gran;
    uint16_t max_pages;
    uint16_t map_alignment;
    uint32_t flags2;
    uint32_t unused[7];
};
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");

struct fuse_attr {
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t atime;
    uint64_t mtime;
    uint64_t ctime;
    uint32_t atimensec;
    uint32_t mtimensec;
    uint32_t ctimensec;
    uint32_t mode;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint32_t rdev;
    uint32_t blksize;
    uint32_t flags;
};
_Static_assert(sizeof(struct fuse_attr) == 88, "fuse_attr");

struct fuse_entry_out {
    uint64_t nodeid;
    uint64_t generation;
    uint64_t entry_valid;
    uint64_t attr_valid;
    uint32_t entry_valid_nsec;
    uint32_t attr_valid_nsec;
    struct fuse_attr attr;
};
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

struct fx {
    char *dir;
    char share[300], sock[300], log[300];
    struct tu_proc proc;
    int fds0, threads0;

    struct tu_vmm vmm; /* queue i: MSI-X vector i, its irqfd the driver's call fd */
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[NQ];
    struct vuf_queue q[NQ];
    uint64_t unique;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    f->proc.pid = -1;
    tu_vmm_init(&f->vmm);
    f->dir = tu_mkdtemp("vuf-fe-vfs");
    if (!f->dir) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    vuf_device_destroy(f->dev);
    for (unsigned i = 0; i < NQ; i++)
        vuf_virtq_free(f->vq[i]);
    vuf_guest_mem_free(f->gm);
    if (f->proc.pid > 0)
        tu_stop(&f->proc);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

static void start_virtiofsd(struct fx *f)
{
    char path[400];
    int fd;

    snprintf(f->share, sizeof(f->share), "%s/share", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/vfs.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/virtiofsd.log", f->dir);
    assert_int_equal(mkdir(f->share, 0755), 0);
    /* A file with known size for LOOKUP. */
    snprintf(path, sizeof(path), "%s/hello.txt", f->share);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "hello, vhost-user\n", 18), 18);
    close(fd);
    /* Waited for by file only: virtiofsd serves exactly one connection. */
    tu_start_virtiofsd(&f->proc, f->share, f->sock, f->log);
}

static void new_device(struct fx *f)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    uint64_t offered;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_FS;
    cfg.base_features_mask = BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX);
    cfg.max_queue_size = 1024;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;

    assert_int_equal(vuf_conn_connect(f->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &f->dev), 0);
    assert_int_equal(vuf_device_type(f->dev), VUF_DEV_FS);
    assert_int_equal(vuf_device_num_queues(f->dev), NQ); /* GET_QUEUE_NUM = 2 */
    offered = vuf_device_features(f->dev);
    /* virtiofsd 7.2 offers 0x175000000: no fs device bits. */
    assert_int_equal(offered, BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX));
    /* of its 0x8c2b: MQ REPLY_ACK BACKEND_REQ (no CONFIG) */
    assert_int_equal(vuf_frontend_protocol_features(f->dev),
                     VUF_PROTO_MASK(MQ) | VUF_PROTO_MASK(REPLY_ACK) | VUF_PROTO_MASK(BACKEND_REQ));
    assert_int_equal(vuf_device_ack_features(f->dev, offered), 0);
    assert_int_equal(vuf_frontend_acked_features(f->dev), offered);
}

static void make_queues(struct fx *f)
{
    uint64_t acked = vuf_frontend_acked_features(f->dev);

    assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < NQ; i++) {
        struct vuf_virtq_opts o = {.size = QSIZE, .index = i, .features = acked};
        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        tu_vmm_add_queue(&f->vmm, i, &f->q[i], f->vq[i], (uint16_t)i);
    }
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
}

/* A buffer in guest memory: host pointer and GPA. */
static void *gm_buf(struct fx *f, size_t len, uint64_t *gpa)
{
    void *p;

    assert_int_equal(vuf_guest_mem_alloc(f->gm, len, 64, gpa), 0);
    p = vuf_guest_mem_to_host(f->gm, *gpa, len);
    assert_non_null(p);
    return p;
}

/*
 * One FUSE request on the request queue: `in` (header + args, readable)
 * and `out_cap` writable bytes. Returns the reply's used length; the reply
 * is at *out.
 */
static uint32_t fuse_call(struct fx *f, const void *in, uint32_t in_len, uint32_t out_cap,
                          void **out)
{
    struct vuf_virtq *vq = f->vq[REQ_Q];
    struct vuf_virtq_buf bufs[2];
    uint64_t in_gpa, out_gpa;
    void *in_host = gm_buf(f, in_len, &in_gpa);
    void *out_host = gm_buf(f, out_cap, &out_gpa);
    void *cookie = NULL;
    uint32_t used_len = 0;
    int r;

    memcpy(in_host, in, in_len);
    memset(out_host, 0xa5, out_cap);
    bufs[0] = (struct vuf_virtq_buf){.gpa = in_gpa, .len = in_len, .writable = false};
    bufs[1] = (struct vuf_virtq_buf){.gpa = out_gpa, .len = out_cap, .writable = true};
    assert_int_equal(vuf_virtq_add(vq, bufs, 2, out_host), 0);
    assert_true(vuf_virtq_kick(vq, 0) >= 0);
    r = vuf_virtq_wait(vq, IO_MS);
    if (r < 0) {
        tu_dump_log(&f->proc);
        fprintf(stderr, "FUSE request got no answer: %s\n", strerror(-r));
    }
    assert_int_equal(r, 0);
    assert_int_equal(vuf_virtq_get_used(vq, &cookie, &used_len), 0);
    assert_ptr_equal(cookie, out_host);
    assert_int_equal(vuf_virtq_num_inflight(vq), 0);
    *out = out_host;
    return used_len;
}

static void fuse_in_hdr(struct fx *f, struct fuse_in_header *h, uint32_t opcode, uint64_t nodeid,
                        uint32_t len)
{
    memset(h, 0, sizeof(*h));
    h->len = len;
    h->opcode = opcode;
    h->unique = ++f->unique * 0x100 + 0x2a; /* distinctive values */
    h->nodeid = nodeid;
    h->uid = (uint32_t)getuid();
    h->gid = (uint32_t)getgid();
    h->pid = (uint32_t)getpid();
}

static void do_fuse_init(struct fx *f)
{
    struct {
        struct fuse_in_header h;
        struct fuse_init_in a;
    } in;
    struct fuse_out_header oh;
    struct fuse_init_out io;
    uint32_t used;
    void *out;

    _Static_assert(sizeof(in) == 56, "FUSE_INIT request");
    fuse_in_hdr(f, &in.h, FUSE_INIT, 0, sizeof(in));
    in.a.major = 7;
    in.a.minor = 31;
    in.a.max_readahead = 128 * 1024;
    in.a.flags = 0;
    used = fuse_call(f, &in, sizeof(in), sizeof(oh) + sizeof(io) + 64, &out);
    memcpy(&oh, out, sizeof(oh));
    memcpy(&io, (uint8_t *)out + sizeof(oh), sizeof(io));
    print_message("FUSE_INIT reply: used %u, len %u, error %d, unique 0x%llx, "
                  "version %u.%u, max_write %u, flags 0x%x\n",
                  used, oh.len, oh.error, (unsigned long long)oh.unique, io.major, io.minor,
                  io.max_write, io.flags);
    assert_int_equal(oh.error, 0);
    assert_int_equal(oh.unique, in.h.unique);
    assert_int_equal(io.major, 7);
    assert_true(io.minor >= 31 || io.minor == in.a.minor);
    /* A 7.23+ client gets the full 64-byte fuse_init_out. */
    assert_int_equal(oh.len, sizeof(oh) + sizeof(io));
    assert_int_equal(used, oh.len);
    assert_true(io.max_write > 0);
}

static void do_fuse_lookup_hello(struct fx *f)
{
    static const char name[] = "hello.txt";
    struct {
        struct fuse_in_header h;
        char name[sizeof(name)];
    } in;
    struct fuse_out_header oh;
    struct fuse_entry_out e;
    struct stat st;
    char path[400];
    uint32_t used;
    void *out;

    fuse_in_hdr(f, &in.h, FUSE_LOOKUP, FUSE_ROOT_ID, sizeof(in));
    memcpy(in.name, name, sizeof(name));
    used = fuse_call(f, &in, sizeof(in), sizeof(oh) + sizeof(e), &out);
    memcpy(&oh, out, sizeof(oh));
    memcpy(&e, (uint8_t *)out + sizeof(oh), sizeof(e));
    print_message("FUSE_LOOKUP reply: used %u, error %d, nodeid %llu, size %llu, "
                  "mode 0%o\n",
                  used, oh.error, (unsigned long long)e.nodeid, (unsigned long long)e.attr.size,
                  e.attr.mode);
    assert_int_equal(oh.error, 0);
    assert_int_equal(oh.unique, in.h.unique);
    assert_int_equal(oh.len, sizeof(oh) + sizeof(e));
    assert_int_equal(used, oh.len);
    /* The attributes are those of the file in the shared directory. */
    snprintf(path, sizeof(path), "%s/hello.txt", f->share);
    assert_int_equal(stat(path, &st), 0);
    assert_true(e.nodeid != 0 && e.nodeid != FUSE_ROOT_ID);
    assert_int_equal(e.attr.size, 18);
    assert_int_equal(e.attr.ino, st.st_ino);
    assert_int_equal(e.attr.mode, st.st_mode);
}

/* ------------------------------------------------------------------------ */
/* Test                                                                     */
/* ------------------------------------------------------------------------ */

static void test_virtiofsd_fuse_init(void **state)
{
    struct fx *f = *state;
    struct vuf_queue slept[NQ];
    uint16_t avail;

    start_virtiofsd(f);
    f->fds0 = tu_count_fds();
    f->threads0 = tu_count_threads();

    new_device(f);
    make_queues(f);
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1);

    do_fuse_init(f);
    do_fuse_lookup_hello(f);

    /* sleep: the request queue's position comes back from GET_VRING_BASE */
    avail = vuf_virtq_avail_idx(f->vq[REQ_Q]);
    assert_int_equal(avail, 2);
    memcpy(slept, f->q, sizeof(slept));
    assert_int_equal(vuf_device_sleep(f->dev, slept, NQ), 1);
    assert_false(vuf_frontend_is_active(f->dev));
    assert_int_equal(slept[REQ_Q].next_avail, avail);
    assert_int_equal(slept[REQ_Q].next_used, vuf_virtq_used_idx(f->vq[REQ_Q]));
    assert_int_equal(slept[0].next_avail, 0); /* hiprio: never used */
    assert_int_equal(tu_count_threads(), f->threads0);

    /* wake: the same rings go on where they were */
    assert_int_equal(vuf_device_wake(f->dev, f->gm, &f->intr, slept, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    do_fuse_lookup_hello(f);
    assert_int_equal(vuf_virtq_used_idx(f->vq[REQ_Q]), 3);
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);

    /* destroy: virtiofsd sees the hang-up and exits cleanly */
    vuf_device_destroy(f->dev);
    f->dev = NULL;
    for (unsigned i = 0; i < NQ; i++) {
        vuf_virtq_free(f->vq[i]);
        f->vq[i] = NULL;
    }
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);
    assert_int_equal(tu_count_threads(), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0);
    /* virtiofsd exits with rc 0 once its one connection closed. */
    tu_assert_exits_zero(&f->proc, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_virtiofsd_fuse_init, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    if (!tu_backend_installed(VIRTIOFSD, "qemu-system-common"))
        return 1;
    if (geteuid() != 0) {
        fprintf(stderr,
                "SKIP: the C virtiofsd needs root (its pid-file directory and "
                "namespace sandbox); running as uid %u\n",
                (unsigned)geteuid());
        return TEST_SKIP;
    }
    tu_warm_threads();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
