/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the reference back-end,
 * vuf-backend-blk ($VUF_BACKEND_BLK), through the public device API only,
 * the way a VMM drives it. The test plays the VMM (interrupt ops, the
 * shared-memory mapper, the event callback) and the guest (the virtq /
 * virtio-blk driver on the same rings the device hands to the back-end).
 * The back-end's --control socket is the test's handle on what the back-end
 * does by itself (SHMEM_MAP/UNMAP, CONFIG_CHANGE_MSG) and on its counters.
 *
 *   migrate_ram / migrate_file
 *       snapshot on back-end A, restore into a NEW back-end process B;
 *       the state (ring positions, counters, writeback, and the RAM disk with
 *       --state-includes-ram) arrives whole, B's own snapshot equals A's
 *       byte for byte, and I/O carries on from where A stopped.
 *   shmem
 *       the region, a real mapper (the fd is mmap'd into a reserved area),
 *       good and bad SHMEM_MAP/UNMAP, removal on reset and destroy.
 *   config_change
 *       CONFIG_CHANGE_MSG reaches signal_config_changed.
 *   queue_clamp
 *       max_queue_size 300 gives 256 on every queue; 256-entry rings work
 *       across an index wrap.
 *
 * Every test checks that its devices leave no fd and no thread behind and
 * that every back-end exits 0 on SIGTERM; main() checks the same across the
 * whole run. Back-end requests are served only while the device is active
 * (as crosvm), so control commands that reach the front-end are issued
 * while it is. Every wait is bounded.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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
#include "vuf/virtio_blk.h"
#include "vuf/virtq.h"

#define BIT(n) (1ull << (n))
#define NQ 2
#define MAXQ 4 /* the queue_clamp test's back-end has 4 queues (<= TU_VMM_MAXQ) */
#define QSIZE 64u
#define DISK_BYTES (4ull << 20)
#define SHM_BYTES (1ull << 20)
#define GUEST_GPA 0x100000ull
#define GUEST_BYTES (8ull << 20)
#define MAX_DATA (64u * 1024)
#define NREQS 4
#define IO_MS 5000
#define CTL_MS 5000

/* virtio_blk_config.writeback (virtio 1.2 §5.2.4). */
#define CFG_WRITEBACK 32

static const char *backend_bin;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void fill(uint8_t *p, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((i * 167u + seed * 11u + (i >> 9) * 29u) ^ seed);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

/* FNV-1a 64, the back-end blob's checksum (backend/README.md). */
static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* The VMM: interrupts, events, and a shared-memory mapper                  */
/* ------------------------------------------------------------------------ */

/*
 * The mapper: the region is a PROT_NONE reservation of its length in this
 * process; add_mapping mmaps the back-end's fd over it (MAP_FIXED), as a
 * VMM maps it into the guest's BAR, and keeps a dup of the fd so the test
 * can look at the file behind the mapping; remove_mapping puts the
 * reservation back. Every call is recorded. Runs on the worker (and on the
 * caller's thread in reset/destroy): no cmocka assertions in here.
 */
#define TM_MAX_EVENTS 64
#define TM_MAX_LIVE 16

enum tm_kind { TM_ADD = 1, TM_REMOVE };

struct tm_event {
    enum tm_kind kind;
    uint64_t fd_offset, len, shm_offset;
    int prot;
    bool fd_ok;       /* fstat worked on the fd we were given */
    bool fd_regular;  /* ... and it is a regular file (memfd) */
    uint64_t fd_size; /* its size */
    int result;
};

struct tmap {
    pthread_mutex_t lock;
    uint8_t *base;
    uint64_t size;
    struct tm_event ev[TM_MAX_EVENTS];
    unsigned nev;
    struct {
        bool live;
        uint64_t off, len;
        int fd; /* our dup */
    } m[TM_MAX_LIVE];
    int releases;
};

static void tm_record(struct tmap *t, const struct tm_event *e)
{
    if (t->nev < TM_MAX_EVENTS)
        t->ev[t->nev] = *e;
    t->nev++;
}

static int tm_add(void *opaque, int fd, uint64_t fd_offset, uint64_t len, uint64_t shm_offset,
                  int prot)
{
    struct tmap *t = opaque;
    struct tm_event e = {
        .kind = TM_ADD, .fd_offset = fd_offset, .len = len, .shm_offset = shm_offset, .prot = prot};
    struct stat st;
    int slot = -1;

    pthread_mutex_lock(&t->lock);
    if (fstat(fd, &st) == 0) {
        e.fd_ok = true;
        e.fd_regular = S_ISREG(st.st_mode);
        e.fd_size = (uint64_t)st.st_size;
    }
    for (int i = 0; i < TM_MAX_LIVE && slot < 0; i++)
        if (!t->m[i].live)
            slot = i;
    if (slot < 0 || len > t->size || shm_offset > t->size - len) {
        /* The device promised a range within the region. */
        e.result = -ERANGE;
    } else if (mmap(t->base + shm_offset, len, prot, MAP_SHARED | MAP_FIXED, fd,
                    (off_t)fd_offset) == MAP_FAILED) {
        e.result = -errno;
    } else {
        t->m[slot].fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        t->m[slot].live = true;
        t->m[slot].off = shm_offset;
        t->m[slot].len = len;
        e.result = 0;
    }
    tm_record(t, &e);
    pthread_mutex_unlock(&t->lock);
    return e.result;
}

static int tm_remove(void *opaque, uint64_t shm_offset)
{
    struct tmap *t = opaque;
    struct tm_event e = {.kind = TM_REMOVE, .shm_offset = shm_offset, .result = -ENOENT};

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < TM_MAX_LIVE; i++) {
        if (!t->m[i].live || t->m[i].off != shm_offset)
            continue;
        e.len = t->m[i].len;
        if (mmap(t->base + shm_offset, t->m[i].len, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) {
            e.result = -errno;
            break;
        }
        if (t->m[i].fd >= 0)
            close(t->m[i].fd);
        t->m[i].fd = -1;
        t->m[i].live = false;
        e.result = 0;
        break;
    }
    tm_record(t, &e);
    pthread_mutex_unlock(&t->lock);
    return e.result;
}

static void tm_release(void *opaque)
{
    struct tmap *t = opaque;

    pthread_mutex_lock(&t->lock);
    t->releases++;
    pthread_mutex_unlock(&t->lock);
}

static const struct vuf_shm_mapper_ops tmap_ops = {
    .add_mapping = tm_add,
    .remove_mapping = tm_remove,
    .release = tm_release,
};

static unsigned tm_nevents(struct tmap *t)
{
    unsigned n;

    pthread_mutex_lock(&t->lock);
    n = t->nev;
    pthread_mutex_unlock(&t->lock);
    return n;
}

static struct tm_event tm_event_at(struct tmap *t, unsigned i)
{
    struct tm_event e;

    pthread_mutex_lock(&t->lock);
    assert_true(i < TM_MAX_EVENTS && i < t->nev);
    e = t->ev[i];
    pthread_mutex_unlock(&t->lock);
    return e;
}

/* Our dup of the fd behind the live mapping at shm_offset, or -1. */
static int tm_fd_at(struct tmap *t, uint64_t shm_offset)
{
    int fd = -1;

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < TM_MAX_LIVE; i++)
        if (t->m[i].live && t->m[i].off == shm_offset)
            fd = t->m[i].fd;
    pthread_mutex_unlock(&t->lock);
    return fd;
}

static int tm_live(struct tmap *t)
{
    int n = 0;

    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < TM_MAX_LIVE; i++)
        n += t->m[i].live;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Back-end processes and their control sockets                             */
/* ------------------------------------------------------------------------ */

struct be {
    struct tu_proc proc;
    char sock[300], ctl[300], log[300];
    int ctl_fd;
};

struct fx {
    char *dir;
    int fds0, threads0;

    struct be be[2];
    struct tu_vmm vmm; /* queue 0: MSI-X vector 0; the others: INTx */
    struct vuf_interrupt intr;
    struct vuf_device *dev;
    struct tmap map;
    bool have_map;

    unsigned nq; /* queues the test uses */
    unsigned qsize;
    struct vuf_guest_mem *gm;
    struct vuf_virtq *vq[MAXQ];
    struct vuf_blk *blk[MAXQ];
    struct vuf_queue q[MAXQ];
};

/* Start back-end `b` with --socket-path, --control and `args` (NULL-ended). */
static void be_start(struct fx *f, struct be *b, const char *name, ...)
{
    char *argv[20], sockarg[320], ctlarg[320];
    unsigned n = 0;
    const char *a;
    va_list ap;

    snprintf(b->sock, sizeof(b->sock), "%s/%s.sock", f->dir, name);
    snprintf(b->ctl, sizeof(b->ctl), "%s/%s.ctl", f->dir, name);
    snprintf(b->log, sizeof(b->log), "%s/%s.log", f->dir, name);
    snprintf(sockarg, sizeof(sockarg), "--socket-path=%s", b->sock);
    snprintf(ctlarg, sizeof(ctlarg), "--control=%s", b->ctl);
    argv[n++] = (char *)backend_bin;
    argv[n++] = sockarg;
    argv[n++] = ctlarg;
    va_start(ap, name);
    while ((a = va_arg(ap, const char *)) && n < 19)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    b->ctl_fd = -1;
    /* By file: a probe connection would be a front-end of its own. The
     * control socket is set up before the main one listens. */
    tu_spawn_wait_files(&b->proc, argv, b->log, b->sock, b->ctl, name);
}

/* SIGTERM: the back-end must exit 0 and remove its socket. */
static void be_stop(struct be *b)
{
    if (b->ctl_fd >= 0)
        close(b->ctl_fd);
    b->ctl_fd = -1;
    assert_true(b->proc.pid > 0);
    assert_int_equal(waitpid(b->proc.pid, NULL, WNOHANG), 0); /* still running */
    tu_stop_clean(&b->proc, b->sock);
}

/* Send one control command and return its one-line answer. */
static void ctl(struct be *b, const char *cmd, char *ans, size_t cap)
{
    tu_ctl_command(&b->ctl_fd, b->ctl, cmd, ans, cap, CTL_MS);
    print_message("control: %-44s -> %s\n", cmd, ans);
}

/* A command that reaches the front-end: its ack (0 or a negated errno). */
static long long ctl_ack(struct be *b, const char *fmt, ...)
{
    char cmd[200], ans[256], *end;
    long long v;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    ctl(b, cmd, ans, sizeof(ans));
    if (strncmp(ans, "ack ", 4) != 0)
        fail_msg("control '%s' answered '%s', want 'ack N'", cmd, ans);
    errno = 0;
    v = strtoll(ans + 4, &end, 10);
    assert_int_equal(errno, 0);
    assert_true(*end == '\0');
    return v;
}

struct qstats {
    uint64_t completed, read, written;
};

/* `stats` on the control socket, parsed; returns the raw line in `raw`. */
static void ctl_stats(struct be *b, unsigned nq, struct qstats *s, char *raw, size_t cap)
{
    char ans[1024];
    const char *p;

    ctl(b, "stats", ans, sizeof(ans));
    assert_true(strncmp(ans, "ok", 2) == 0);
    p = ans + 2;
    for (unsigned i = 0; i < nq; i++) {
        unsigned idx;
        int used = 0;

        assert_int_equal(sscanf(p,
                                " q%u completed=%" SCNu64 " read=%" SCNu64 " written=%" SCNu64 "%n",
                                &idx, &s[i].completed, &s[i].read, &s[i].written, &used),
                         4);
        assert_int_equal(idx, i);
        p += used;
    }
    assert_true(*p == '\0'); /* no more queues than expected */
    if (raw)
        snprintf(raw, cap, "%s", ans);
}

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    for (unsigned i = 0; i < 2; i++) {
        f->be[i].proc.pid = -1;
        f->be[i].ctl_fd = -1;
    }
    tu_vmm_init(&f->vmm);
    f->nq = NQ;
    f->qsize = QSIZE;
    f->dir = tu_mkdtemp("vuf-fe-ref");
    if (!f->dir) {
        free(f);
        return -1;
    }
    pthread_mutex_init(&f->map.lock, NULL);
    *state = f;
    return 0;
}

static void free_queues(struct fx *f)
{
    tu_free_queues(&f->vmm, f->blk, f->vq, MAXQ);
}

static void map_close(struct tmap *t)
{
    for (int i = 0; i < TM_MAX_LIVE; i++)
        if (t->m[i].live && t->m[i].fd >= 0) {
            close(t->m[i].fd);
            t->m[i].live = false;
        }
    if (t->base)
        munmap(t->base, t->size);
    t->base = NULL;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    /* Failure paths too: device, then what it borrowed, then processes. */
    vuf_device_destroy(f->dev);
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    map_close(&f->map);
    pthread_mutex_destroy(&f->map.lock);
    for (unsigned i = 0; i < 2; i++) {
        if (f->be[i].ctl_fd >= 0)
            close(f->be[i].ctl_fd);
        if (f->be[i].proc.pid > 0)
            tu_stop(&f->be[i].proc);
    }
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

static void baseline(struct fx *f)
{
    f->threads0 = tu_count_threads();
    f->fds0 = tu_count_fds();
}

static struct vuf_device *connect_device(struct fx *f, struct be *b, uint16_t max_queue_size)
{
    struct vuf_frontend_config cfg;
    struct vuf_conn *conn = NULL;
    struct vuf_device *dev = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.device_type = VUF_DEV_BLK;
    cfg.base_features_mask =
        BIT(VUF_VIRTIO_F_VERSION_1) | BIT(VUF_VIRTIO_F_EVENT_IDX) | BIT(VUF_VIRTIO_F_INDIRECT_DESC);
    cfg.max_queue_size = max_queue_size;
    cfg.event = tu_vmm_event;
    cfg.event_opaque = &f->vmm;
    assert_int_equal(vuf_conn_connect(b->sock, 2000, &conn), 0);
    vuf_conn_set_timeout(conn, IO_MS);
    assert_int_equal(vuf_frontend_new(&cfg, conn, &dev), 0);
    assert_int_equal(vuf_device_type(dev), VUF_DEV_BLK);
    /* The reference back-end offers every protocol feature the front-end
     * uses; the ones these tests rely on: */
    assert_true(vuf_frontend_protocol_features(dev) & VUF_PROTO_MASK(REPLY_ACK));
    assert_true(vuf_frontend_protocol_features(dev) & VUF_PROTO_MASK(BACKEND_REQ));
    assert_true(vuf_frontend_protocol_features(dev) & VUF_PROTO_MASK(DEVICE_STATE));
    assert_true(vuf_frontend_protocol_features(dev) & VUF_PROTO_MASK(SHMEM));
    return dev;
}

/* The driver acks everything offered, in two words like a PCI transport. */
static void ack_all(struct vuf_device *dev)
{
    uint64_t offered = vuf_device_features(dev);

    assert_true(offered & BIT(VUF_VIRTIO_F_VERSION_1));
    assert_true(offered & BIT(VUF_BLK_F_MQ));
    assert_true(offered & BIT(VUF_BLK_F_CONFIG_WCE));
    assert_int_equal(vuf_device_ack_features(dev, offered & 0xffffffffull), 0);
    assert_int_equal(vuf_device_ack_features(dev, offered & ~0xffffffffull), 0);
    assert_int_equal(vuf_frontend_acked_features(dev), offered);
}

/* Driver queues in guest memory and the structs a transport hands over.
 * Queue 0 has MSI-X vector 0 (its irqfd is the driver's call fd); the
 * others have none, so their calls come through the worker as INTx. */
static void make_queues(struct fx *f, unsigned nreqs0, uint32_t max_data0)
{
    uint64_t features = vuf_frontend_acked_features(f->dev);

    if (!f->gm)
        assert_int_equal(vuf_guest_mem_new_simple(GUEST_GPA, GUEST_BYTES, &f->gm), 0);
    for (unsigned i = 0; i < f->nq; i++) {
        struct vuf_virtq_opts o = {.size = f->qsize, .index = i, .features = features};
        struct vuf_queue *q = &f->q[i];

        assert_int_equal(vuf_virtq_new_opts(f->gm, &o, &f->vq[i]), 0);
        assert_int_equal(vuf_blk_new(f->vq[i], i == 0 ? nreqs0 : NREQS,
                                     i == 0 ? max_data0 : MAX_DATA, &f->blk[i]),
                         0);
        tu_vmm_add_queue(&f->vmm, i, q, f->vq[i], i == 0 ? 0 : VUF_NO_VECTOR);
    }
    f->intr.ops = &tu_vmm_intr_ops;
    f->intr.opaque = &f->vmm;
}

static void activate(struct fx *f)
{
    assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, f->q, f->nq), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1); /* the worker */
}

static void assert_reads(struct vuf_blk *blk, uint64_t sector, const uint8_t *want, size_t len)
{
    tu_assert_blk_reads(blk, sector, want, len, IO_MS);
}

static void destroy_device(struct fx *f)
{
    vuf_device_destroy(f->dev);
    f->dev = NULL;
}

/* Everything gone: no fd, no thread of ours left. */
static void check_no_leaks(struct fx *f)
{
    assert_null(f->dev);
    free_queues(f);
    vuf_guest_mem_free(f->gm);
    f->gm = NULL;
    assert_int_equal(tu_count_threads(), f->threads0);
    assert_int_equal(tu_count_fds(), f->fds0);
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);
}

/* ------------------------------------------------------------------------ */
/* Snapshot blobs                                                           */
/* ------------------------------------------------------------------------ */

/*
 * A front-end snapshot is a 24-byte header (magic "VUFS", version 1, the
 * acked features, the state length; src/frontend/frontend.c) followed by the
 * back-end's DEVICE_STATE bytes, here vuf-backend-blk's blob
 * (backend/README.md).
 */
#define FE_HDR 24
#define BE_HDR 48
#define BE_QREC 32

struct parsed_state {
    uint64_t acked;
    uint32_t nq;
    uint64_t capacity;
    uint32_t flags;
    uint8_t writeback;
    uint64_t image_bytes;
    const uint8_t *image;
    uint16_t next_avail[MAXQ];
    struct qstats q[MAXQ];
};

static void parse_snapshot(const uint8_t *b, size_t len, struct parsed_state *s)
{
    const uint8_t *st = b + FE_HDR;
    size_t stlen, heads;

    memset(s, 0, sizeof(*s));
    assert_true(len > FE_HDR + BE_HDR + 8);
    assert_memory_equal(b, "VUFS", 4);
    assert_int_equal(le32(b + 4), 1);
    s->acked = le64(b + 8);
    stlen = (size_t)le64(b + 16);
    assert_int_equal(stlen, len - FE_HDR);

    assert_memory_equal(st, "VUFBLKST", 8);
    assert_int_equal(le32(st + 8), 1);       /* version */
    assert_int_equal(le32(st + 12), BE_HDR); /* header size */
    s->nq = le32(st + 16);
    assert_true(s->nq >= 1 && s->nq <= MAXQ);
    assert_int_equal(le32(st + 20), BE_QREC);
    s->capacity = le64(st + 24);
    s->flags = le32(st + 32);
    s->writeback = st[36];
    assert_true(st[37] == 0 && st[38] == 0 && st[39] == 0);
    s->image_bytes = le64(st + 40);
    heads = BE_HDR + (size_t)s->nq * BE_QREC;
    assert_int_equal(stlen, heads + s->image_bytes + 8);
    for (uint32_t i = 0; i < s->nq; i++) {
        const uint8_t *q = st + BE_HDR + (size_t)i * BE_QREC;

        s->next_avail[i] = le16(q);
        s->q[i].completed = le64(q + 8);
        s->q[i].read = le64(q + 16);
        s->q[i].written = le64(q + 24);
    }
    s->image = s->image_bytes ? st + heads : NULL;
    assert_int_equal(le64(st + stlen - 8), fnv1a(st, stlen - 8));
}

static void assert_stats_equal(const struct qstats *a, const struct qstats *b, unsigned nq)
{
    for (unsigned i = 0; i < nq; i++) {
        assert_int_equal(a[i].completed, b[i].completed);
        assert_int_equal(a[i].read, b[i].read);
        assert_int_equal(a[i].written, b[i].written);
    }
}

static void snapshot(struct vuf_device *dev, uint8_t **blob, size_t *len)
{
    *blob = NULL;
    *len = 0;
    assert_int_equal(vuf_device_snapshot(dev, blob, len), 0);
    assert_non_null(*blob);
}

static void assert_blob_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    assert_int_equal(alen, blen);
    if (memcmp(a, b, alen) != 0) {
        size_t i = 0;

        while (a[i] == b[i])
            i++;
        fail_msg("snapshots differ at byte %zu (of %zu): 0x%02x vs 0x%02x", i, alen, a[i], b[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* 1. Snapshot on A, restore into a new back-end process B                  */
/* ------------------------------------------------------------------------ */

#define SEC_A 0ull
#define SEC_B 2048ull /* 1 MiB */
#define SEC_C 4096ull /* 2 MiB */
#define SEC_D 6000ull
#define LEN_A (64u * 1024) /* one request */
#define LEN_B (96u * 1024) /* two requests (max_data 64 KiB) */

static void assert_file_has(const char *path, uint64_t sector, const uint8_t *want, size_t len)
{
    uint8_t *got = malloc(len);
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    assert_non_null(got);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, got, len, (off_t)(sector * VUF_BLK_SECTOR_SIZE)), (ssize_t)len);
    close(fd);
    assert_memory_equal(got, want, len);
    free(got);
}

/*
 * ram: a RAM disk whose content travels in the state (--state-includes-ram);
 * file: both back-ends open the same --file (shared storage, not streamed),
 * and a request the driver made while A was asleep crosses the migration
 * on the ring and is completed by B, exactly once.
 */
static void migrate(struct fx *f, bool ram)
{
    char ramarg[32], filearg[340], disk[320], statsA[1024], statsB[1024];
    struct qstats sA[NQ], sB[NQ];
    struct parsed_state pA, pB;
    struct vuf_queue slept[NQ], slept2[NQ];
    struct vuf_blk_req *pending = NULL, *done = NULL;
    uint8_t *blobA, *blobB, *a, *b, *c, *d, wb;
    size_t lenA, lenB;
    uint64_t ackedA;
    unsigned nreq[NQ] = {0, 0};
    uint64_t nread[NQ] = {0, 0}, nwritten[NQ] = {0, 0};

    baseline(f);
    a = malloc(LEN_A);
    b = malloc(LEN_B);
    c = malloc(LEN_A);
    d = malloc(4096);
    assert_true(a && b && c && d);
    fill(a, LEN_A, 0xa1);
    fill(b, LEN_B, 0xb2);
    fill(c, LEN_A, 0xc3);
    fill(d, 4096, 0xd4);

    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    snprintf(disk, sizeof(disk), "%s/disk.img", f->dir);
    snprintf(filearg, sizeof(filearg), "--file=%s", disk);
    if (!ram) {
        int fd = open(disk, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t)DISK_BYTES), 0);
        close(fd);
    }

    /* --- A: activate, I/O on both queues, a non-default writeback ------ */
    if (ram)
        be_start(f, &f->be[0], "A", ramarg, "--state-includes-ram", NULL);
    else
        be_start(f, &f->be[0], "A", filearg, NULL);
    f->dev = connect_device(f, &f->be[0], 256);
    assert_int_equal(vuf_device_num_queues(f->dev), NQ);
    ack_all(f->dev);
    ackedA = vuf_frontend_acked_features(f->dev);
    /* The driver switches the cache to writethrough (SET_CONFIG): state
     * that must travel too. */
    wb = 0;
    assert_int_equal(vuf_device_write_config(f->dev, CFG_WRITEBACK, &wb, 1), 0);
    wb = 0xff;
    assert_int_equal(vuf_device_read_config(f->dev, CFG_WRITEBACK, &wb, 1), 0);
    assert_int_equal(wb, 0);
    make_queues(f, NREQS, MAX_DATA);
    activate(f);

    assert_int_equal(vuf_blk_write(f->blk[0], SEC_A, a, LEN_A, IO_MS), 0);
    nreq[0] += 1, nwritten[0] += LEN_A;
    assert_int_equal(vuf_blk_write(f->blk[1], SEC_B, b, LEN_B, IO_MS), 0);
    nreq[1] += 2, nwritten[1] += LEN_B;
    assert_reads(f->blk[0], SEC_B, b, LEN_B);
    nreq[0] += 2, nread[0] += LEN_B;
    assert_reads(f->blk[1], SEC_A, a, LEN_A);
    nreq[1] += 1, nread[1] += LEN_A;
    assert_int_equal(vuf_blk_flush(f->blk[1], IO_MS), 0);
    nreq[1] += 1;

    ctl_stats(&f->be[0], NQ, sA, NULL, 0);
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(sA[i].completed, nreq[i]);
        assert_int_equal(sA[i].read, nread[i]);
        assert_int_equal(sA[i].written, nwritten[i]);
        assert_int_equal(vuf_virtq_used_idx(f->vq[i]), nreq[i]);
    }

    /* --- A sleeps; the device hands the queues back -------------------- */
    memcpy(slept, f->q, sizeof(slept));
    assert_int_equal(vuf_device_sleep(f->dev, slept, NQ), 1);
    assert_int_equal(tu_count_threads(), f->threads0);
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(slept[i].next_avail, nreq[i]);
        assert_int_equal(slept[i].next_used, nreq[i]);
    }
    if (!ram) {
        /* The guest makes a request while the device sleeps: it is on the
         * ring, and kicked, but A does not take it. */
        pending = vuf_blk_req_get(f->blk[0]);
        assert_non_null(pending);
        memcpy(vuf_blk_req_buf(pending, NULL), d, 4096);
        assert_int_equal(vuf_blk_req_prep(pending, VUF_BLK_T_OUT, SEC_D, 4096), 0);
        assert_int_equal(vuf_blk_submit(f->blk[0], pending, 0), 0);
        assert_int_equal(vuf_virtq_notify(f->vq[0]), 0);
        assert_int_equal(vuf_blk_wait(f->blk[0], 200, &done), -ETIMEDOUT);
        assert_int_equal(vuf_virtq_avail_idx(f->vq[0]), (uint16_t)(nreq[0] + 1));
    }

    /* --- snapshot A ----------------------------------------------------- */
    snapshot(f->dev, &blobA, &lenA);
    parse_snapshot(blobA, lenA, &pA);
    print_message("snapshot A: %zu bytes, next_avail %u/%u, completed %" PRIu64 "/%" PRIu64
                  ", image %" PRIu64 " bytes\n",
                  lenA, pA.next_avail[0], pA.next_avail[1], pA.q[0].completed, pA.q[1].completed,
                  pA.image_bytes);
    assert_int_equal(pA.acked, ackedA);
    assert_int_equal(pA.nq, NQ);
    assert_int_equal(pA.capacity, DISK_BYTES / VUF_BLK_SECTOR_SIZE);
    assert_int_equal(pA.writeback, 0);
    for (unsigned i = 0; i < NQ; i++) {
        /* Where A stopped: ring positions and counters, all non-zero. */
        assert_int_equal(pA.next_avail[i], slept[i].next_avail);
        assert_true(pA.next_avail[i] > 0);
        assert_true(pA.q[i].completed > 0 && pA.q[i].read > 0 && pA.q[i].written > 0);
    }
    assert_stats_equal(pA.q, sA, NQ);
    if (ram) {
        assert_int_equal(pA.flags, 1);
        assert_int_equal(pA.image_bytes, DISK_BYTES);
        assert_memory_equal(pA.image + SEC_A * VUF_BLK_SECTOR_SIZE, a, LEN_A);
        assert_memory_equal(pA.image + SEC_B * VUF_BLK_SECTOR_SIZE, b, LEN_B);
    } else {
        assert_int_equal(pA.flags, 0);
        assert_int_equal(pA.image_bytes, 0);
    }
    /* A snapshot changes nothing: a second one is the same. */
    snapshot(f->dev, &blobB, &lenB);
    assert_blob_equal(blobA, lenA, blobB, lenB);
    free(blobB);
    ctl_stats(&f->be[0], NQ, sA, statsA, sizeof(statsA));

    /* --- A goes away ---------------------------------------------------- */
    destroy_device(f);
    be_stop(&f->be[0]);
    assert_int_equal(tu_count_threads(), f->threads0);

    /* --- B: a new process, a new front-end, restore --------------------- */
    if (ram)
        be_start(f, &f->be[1], "B", ramarg, "--state-includes-ram", NULL);
    else
        be_start(f, &f->be[1], "B", filearg, NULL);
    f->dev = connect_device(f, &f->be[1], 256);
    /* Fresh: nothing counted, default writeback. */
    ctl_stats(&f->be[1], NQ, sB, NULL, 0);
    for (unsigned i = 0; i < NQ; i++)
        assert_int_equal(sB[i].completed, 0);
    assert_int_equal(vuf_device_restore(f->dev, blobA, lenA), 0);
    /* The driver's features come with the snapshot. */
    assert_int_equal(vuf_frontend_acked_features(f->dev), ackedA);
    ctl_stats(&f->be[1], NQ, sB, statsB, sizeof(statsB));
    assert_string_equal(statsB, statsA);
    wb = 0xff;
    assert_int_equal(vuf_device_read_config(f->dev, CFG_WRITEBACK, &wb, 1), 0);
    assert_int_equal(wb, 0);
    /* B's state right after the restore is A's, byte for byte. */
    snapshot(f->dev, &blobB, &lenB);
    assert_blob_equal(blobA, lenA, blobB, lenB);
    free(blobB);

    /* --- B wakes with the queues A handed back -------------------------- */
    assert_int_equal(vuf_device_wake(f->dev, f->gm, &f->intr, slept, NQ), 0);
    assert_true(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0 + 1);
    if (!ram) {
        /* The request made while A slept completes on B, once. */
        assert_int_equal(vuf_blk_wait(f->blk[0], IO_MS, &done), 0);
        assert_ptr_equal(done, pending);
        assert_int_equal(vuf_blk_req_result(pending), 0);
        assert_int_equal(vuf_blk_req_put(f->blk[0], pending), 0);
        nreq[0] += 1, nwritten[0] += 4096;
        assert_int_equal(vuf_virtq_used_idx(f->vq[0]), nreq[0]);
        assert_file_has(disk, SEC_D, d, 4096);
        assert_int_equal(vuf_blk_wait(f->blk[0], 100, &done), -ETIMEDOUT);
    } else {
        /* Asleep again at once: the ring positions went through B
         * unchanged, and B's snapshot is still A's, byte for byte. */
        memcpy(slept2, slept, sizeof(slept2));
        assert_int_equal(vuf_device_sleep(f->dev, slept2, NQ), 1);
        for (unsigned i = 0; i < NQ; i++) {
            assert_int_equal(slept2[i].next_avail, slept[i].next_avail);
            assert_int_equal(slept2[i].next_used, slept[i].next_used);
        }
        snapshot(f->dev, &blobB, &lenB);
        assert_blob_equal(blobA, lenA, blobB, lenB);
        free(blobB);
        assert_int_equal(vuf_device_wake(f->dev, f->gm, &f->intr, slept2, NQ), 0);
    }

    /* --- I/O continues on both queues from where A stopped -------------- */
    assert_reads(f->blk[0], SEC_A, a, LEN_A); /* written on A */
    nreq[0] += 1, nread[0] += LEN_A;
    assert_reads(f->blk[1], SEC_B, b, LEN_B);
    nreq[1] += 2, nread[1] += LEN_B;
    assert_int_equal(vuf_blk_write(f->blk[1], SEC_C, c, LEN_A, IO_MS), 0);
    nreq[1] += 1, nwritten[1] += LEN_A;
    assert_reads(f->blk[0], SEC_C, c, LEN_A);
    nreq[0] += 1, nread[0] += LEN_A;
    if (!ram) {
        assert_reads(f->blk[1], SEC_D, d, 4096);
        nreq[1] += 1, nread[1] += 4096;
        assert_file_has(disk, SEC_A, a, LEN_A);
        assert_file_has(disk, SEC_C, c, LEN_A);
    }
    ctl_stats(&f->be[1], NQ, sB, NULL, 0);
    for (unsigned i = 0; i < NQ; i++) {
        /* The used ring carried on from A's index, and B's counters from
         * A's values. */
        assert_int_equal(vuf_virtq_used_idx(f->vq[i]), nreq[i]);
        assert_int_equal(vuf_virtq_avail_idx(f->vq[i]), nreq[i]);
        assert_false(vuf_virtq_broken(f->vq[i]));
        assert_int_equal(sB[i].completed, nreq[i]);
        assert_int_equal(sB[i].read, nread[i]);
        assert_int_equal(sB[i].written, nwritten[i]);
    }

    /* --- B's own snapshot shows the continued state --------------------- */
    memcpy(slept2, f->q, sizeof(slept2));
    assert_int_equal(vuf_device_sleep(f->dev, slept2, NQ), 1);
    snapshot(f->dev, &blobB, &lenB);
    parse_snapshot(blobB, lenB, &pB);
    for (unsigned i = 0; i < NQ; i++) {
        assert_int_equal(pB.next_avail[i], nreq[i]);
        assert_int_equal(slept2[i].next_avail, nreq[i]);
    }
    assert_stats_equal(pB.q, sB, NQ);
    assert_int_equal(pB.writeback, 0);
    if (ram) {
        assert_memory_equal(pB.image + SEC_A * VUF_BLK_SECTOR_SIZE, a, LEN_A);
        assert_memory_equal(pB.image + SEC_C * VUF_BLK_SECTOR_SIZE, c, LEN_A);
    }
    free(blobB);

    destroy_device(f);
    be_stop(&f->be[1]);
    check_no_leaks(f);
    free(blobA);
    free(a);
    free(b);
    free(c);
    free(d);
}

static void test_migrate_ram(void **state)
{
    migrate(*state, true);
}

static void test_migrate_file(void **state)
{
    migrate(*state, false);
}

/* ------------------------------------------------------------------------ */
/* 2. SHMEM: region, mapper, map/unmap via the back-end, reset               */
/* ------------------------------------------------------------------------ */

/* The back-end's shm memfd holds byte[i] = i % 251. */
static void assert_pattern(const uint8_t *p, uint64_t fd_offset, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)((fd_offset + i) % 251))
            fail_msg("mapping byte %" PRIu64 " (fd offset %" PRIu64 "): 0x%02x, want 0x%02x", i,
                     fd_offset + i, p[i], (unsigned)((fd_offset + i) % 251));
}

/* One good map: the mapper saw exactly it and the bytes are the fd's. */
static void good_map(struct fx *f, uint64_t fd_offset, uint64_t shm_offset, uint64_t len, bool rw)
{
    unsigned nev = tm_nevents(&f->map), nmaps = vuf_frontend_num_mappings(f->dev);
    struct tm_event e;

    assert_int_equal(ctl_ack(&f->be[0], "map 0 %" PRIu64 " %" PRIu64 " %" PRIu64 " %s", fd_offset,
                             shm_offset, len, rw ? "rw" : "ro"),
                     0);
    assert_int_equal(tm_nevents(&f->map), nev + 1);
    e = tm_event_at(&f->map, nev);
    assert_int_equal(e.kind, TM_ADD);
    assert_int_equal(e.result, 0);
    assert_true(e.fd_ok);
    assert_true(e.fd_regular);
    assert_int_equal(e.fd_size, SHM_BYTES);
    assert_int_equal(e.fd_offset, fd_offset);
    assert_int_equal(e.shm_offset, shm_offset);
    assert_int_equal(e.len, len);
    assert_int_equal(e.prot, rw ? (PROT_READ | PROT_WRITE) : PROT_READ);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), nmaps + 1);
    assert_pattern(f->map.base + shm_offset, fd_offset, len);
}

/* A map or unmap the front-end must refuse: a negated errno comes back,
 * the mapper sees nothing, the mapping count stays. */
static void bad_request(struct fx *f, const char *cmd)
{
    unsigned nev = tm_nevents(&f->map), nmaps = vuf_frontend_num_mappings(f->dev);
    long long ack = ctl_ack(&f->be[0], "%s", cmd);

    assert_true(ack < 0 && ack >= -4095);
    assert_int_equal(tm_nevents(&f->map), nev);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), nmaps);
    assert_true(vuf_frontend_is_active(f->dev));
}

/*
 * A request whose ranges wrap u64 (or are empty): the back-end's sender
 * (vuf_breq_send runs the receiver's decoder checks first) refuses it, so
 * it never reaches the front-end: the control hook answers "error", the
 * mapper sees nothing, and the channel stays usable. The front-end's own
 * refusal of such a message is covered by the unit test with a raw sender.
 */
static void unsendable_request(struct fx *f, const char *cmd)
{
    unsigned nev = tm_nevents(&f->map), nmaps = vuf_frontend_num_mappings(f->dev);
    char ans[256];

    ctl(&f->be[0], cmd, ans, sizeof(ans));
    assert_true(strncmp(ans, "error ", 6) == 0);
    assert_int_equal(tm_nevents(&f->map), nev);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), nmaps);
    assert_true(vuf_frontend_is_active(f->dev));
}

static void good_unmap(struct fx *f, uint64_t shm_offset, uint64_t len)
{
    unsigned nev = tm_nevents(&f->map), nmaps = vuf_frontend_num_mappings(f->dev);
    struct tm_event e;

    assert_int_equal(ctl_ack(&f->be[0], "unmap 0 %" PRIu64 " %" PRIu64, shm_offset, len), 0);
    assert_int_equal(tm_nevents(&f->map), nev + 1);
    e = tm_event_at(&f->map, nev);
    assert_int_equal(e.kind, TM_REMOVE);
    assert_int_equal(e.shm_offset, shm_offset);
    assert_int_equal(e.len, len);
    assert_int_equal(e.result, 0);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), nmaps - 1);
}

static void test_shmem(void **state)
{
    struct fx *f = *state;
    struct vuf_shm_region reg = {0xff, 0};
    struct vuf_shm_mapper m = {&tmap_ops, &f->map};
    char shmarg[32], ramarg[32], cmd[200];
    uint8_t blk4k[4096];
    bool removed[3] = {false, false, false};
    unsigned nev;
    int fd;

    baseline(f);
    snprintf(shmarg, sizeof(shmarg), "--shm-size=%llu", SHM_BYTES);
    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    be_start(f, &f->be[0], "shm", ramarg, shmarg, NULL);
    f->dev = connect_device(f, &f->be[0], 256);
    ack_all(f->dev);

    /* The region: id 0 of --shm-size bytes (asked once, then cached). */
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.id, 0);
    assert_int_equal(reg.length, SHM_BYTES);
    memset(&reg, 0, sizeof(reg));
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.length, SHM_BYTES);

    /* The VMM reserves the region's window and installs the mapper. */
    f->map.size = reg.length;
    f->map.base =
        mmap(NULL, reg.length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(f->map.base != MAP_FAILED);
    assert_int_equal(vuf_device_set_shm_mapper(f->dev, &m), 0);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), 0);

    make_queues(f, NREQS, MAX_DATA);
    activate(f);

    /* --- a good rw map, then a good ro map at a non-zero fd offset ----- */
    good_map(f, 0, 0, 4096, true);
    /* RW really is the back-end's file: a write through the mapping shows
     * in the fd behind it (then the pattern is put back). */
    fd = tm_fd_at(&f->map, 0);
    assert_true(fd >= 0);
    {
        uint8_t old = f->map.base[100], got = 0;

        f->map.base[100] = (uint8_t)~old;
        assert_int_equal(pread(fd, &got, 1, 100), 1);
        assert_int_equal(got, (uint8_t)~old);
        f->map.base[100] = old;
    }
    good_map(f, 8192, 0x10000, 8192, false);
    assert_int_equal(tm_live(&f->map), 2);

    /* --- requests the front-end refuses ---------------------------------- */
    /* past the end of the region */
    snprintf(cmd, sizeof(cmd), "map 0 0 %llu 8192 rw", SHM_BYTES - 4096);
    bad_request(f, cmd);
    snprintf(cmd, sizeof(cmd), "map 0 0 %llu 4096 rw", SHM_BYTES);
    bad_request(f, cmd);
    /* far beyond it, without wrapping u64 */
    bad_request(f, "map 0 0 0xffffffffffffe000 0x1000 rw");
    bad_request(f, "map 0 0 0x7fffffffffff0000 0x10000 rw");
    bad_request(f, "map 0 0 0 0x200000 rw"); /* longer than the region */
    /* shm_offset + len and fd_offset + len overflowing u64: not sendable */
    unsendable_request(f, "map 0 0 0xfffffffffffff000 0x2000 rw");
    unsendable_request(f, "map 0 0xfffffffffffff000 0x20000 0x2000 rw");
    unsendable_request(f, "map 0 0 0x20000 0 rw");
    unsendable_request(f, "unmap 0 0xfffffffffffff000 0x2000");
    /* overlapping an existing mapping: inside, across the start, across
     * the end, and enclosing both */
    bad_request(f, "map 0 0 0x800 0x800 rw");
    bad_request(f, "map 0 0 0xf000 0x2000 rw");
    bad_request(f, "map 0 0 0x11000 0x2000 ro");
    snprintf(cmd, sizeof(cmd), "map 0 0 0 %llu rw", SHM_BYTES);
    bad_request(f, cmd);
    /* a region that does not exist */
    bad_request(f, "map 1 0 0x20000 4096 rw");
    bad_request(f, "map 255 0 0x20000 4096 rw");
    /* unmaps that do not match exactly one mapping, or a wrong shmid */
    bad_request(f, "unmap 0 0 8192");
    bad_request(f, "unmap 0 0x20000 4096");
    bad_request(f, "unmap 0 0x11000 4096");
    bad_request(f, "unmap 1 0 4096");
    assert_int_equal(tm_live(&f->map), 2);
    assert_int_equal(atomic_load(&f->vmm.crashed), 0);

    /* --- the device keeps working -------------------------------------- */
    good_map(f, 0x20000, 0x20000, 0x4000, true); /* adjacent ranges are fine */
    good_map(f, 4096, 4096, 4096, false);        /* right after the first one */
    fill(blk4k, sizeof(blk4k), 0x5a);
    assert_int_equal(vuf_blk_write(f->blk[0], 8, blk4k, sizeof(blk4k), IO_MS), 0);
    assert_reads(f->blk[1], 8, blk4k, sizeof(blk4k));

    /* --- unmap; the range can be mapped again --------------------------- */
    good_unmap(f, 0, 4096);
    good_unmap(f, 0x20000, 0x4000);
    bad_request(f, "unmap 0 0 4096"); /* already gone */
    good_map(f, 0x40000, 0, 4096, true);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), 3);
    assert_int_equal(tm_live(&f->map), 3);

    /* --- reset removes what is left, on the mapper --------------------- */
    nev = tm_nevents(&f->map);
    assert_int_equal(vuf_device_reset(f->dev), 0);
    assert_false(vuf_frontend_is_active(f->dev));
    assert_int_equal(tu_count_threads(), f->threads0);
    assert_int_equal(vuf_frontend_num_mappings(f->dev), 0);
    assert_int_equal(tm_live(&f->map), 0);
    assert_int_equal(tm_nevents(&f->map), nev + 3);
    for (unsigned i = nev; i < nev + 3; i++) {
        struct tm_event e = tm_event_at(&f->map, i);
        static const uint64_t left[3] = {0x10000, 4096, 0};
        bool known = false;

        assert_int_equal(e.kind, TM_REMOVE);
        assert_int_equal(e.result, 0);
        for (unsigned k = 0; k < 3; k++)
            if (e.shm_offset == left[k]) {
                assert_false(removed[k]); /* each one once */
                removed[k] = known = true;
            }
        if (!known)
            fail_msg("reset removed an unexpected mapping at 0x%" PRIx64, e.shm_offset);
    }
    assert_true(removed[0] && removed[1] && removed[2]);
    assert_int_equal(f->map.releases, 0); /* the mapper stays installed */

    /* --- activate again: the mapper still serves; destroy removes and
     * releases --------------------------------------------------------- */
    free_queues(f);
    make_queues(f, NREQS, MAX_DATA);
    activate(f);
    good_map(f, 0, 0x30000, 4096, true);
    nev = tm_nevents(&f->map);
    destroy_device(f);
    assert_int_equal(tm_nevents(&f->map), nev + 1);
    assert_int_equal(tm_event_at(&f->map, nev).kind, TM_REMOVE);
    assert_int_equal(tm_event_at(&f->map, nev).shm_offset, 0x30000);
    assert_int_equal(tm_live(&f->map), 0);
    assert_int_equal(f->map.releases, 1);
    map_close(&f->map);
    be_stop(&f->be[0]);
    check_no_leaks(f);
}

/* ------------------------------------------------------------------------ */
/* 3. CONFIG_CHANGE_MSG                                                      */
/* ------------------------------------------------------------------------ */

static void wait_config_changes(struct fx *f, int want)
{
    int64_t end = tu_now_ms() + IO_MS;

    while (atomic_load(&f->vmm.config_changes) < want && tu_now_ms() < end)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&f->vmm.config_changes), want);
}

static void test_config_change(void **state)
{
    struct fx *f = *state;
    char ramarg[32];
    uint64_t cap = 0;

    baseline(f);
    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    be_start(f, &f->be[0], "cfg", ramarg, NULL);
    f->dev = connect_device(f, &f->be[0], 256);
    ack_all(f->dev);
    make_queues(f, NREQS, MAX_DATA);
    activate(f);

    assert_int_equal(atomic_load(&f->vmm.config_changes), 0);
    /* The ack follows the callback (the worker calls it, then answers). */
    assert_int_equal(ctl_ack(&f->be[0], "config-change"), 0);
    wait_config_changes(f, 1);
    assert_int_equal(ctl_ack(&f->be[0], "config-change"), 0);
    wait_config_changes(f, 2);
    /* No stray one later, and the device is fine. */
    tu_sleep_ms(50);
    assert_int_equal(atomic_load(&f->vmm.config_changes), 2);
    assert_int_equal(vuf_device_read_config(f->dev, 0, &cap, sizeof(cap)), 0);
    assert_int_equal(cap, DISK_BYTES / VUF_BLK_SECTOR_SIZE);
    assert_int_equal(vuf_blk_flush(f->blk[0], IO_MS), 0);
    assert_true(vuf_frontend_is_active(f->dev));

    destroy_device(f);
    be_stop(&f->be[0]);
    check_no_leaks(f);
}

/*
 * STATUS and RESET_DEVICE (issue 7 §5): the reference back-end offers both
 * and records the status. Activation leaves it at ACKNOWLEDGE | DRIVER |
 * FEATURES_OK | DRIVER_OK; reset clears it and resets the device, which
 * forgets the acked features; the next activation negotiates them again
 * and I/O works.
 */
static void test_status_reset(void **state)
{
    struct fx *f = *state;
    char ramarg[32];
    uint8_t st = 0xee, buf[4096], got[4096];
    const uint8_t running =
        VUF_STATUS_ACKNOWLEDGE | VUF_STATUS_DRIVER | VUF_STATUS_FEATURES_OK | VUF_STATUS_DRIVER_OK;

    baseline(f);
    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    be_start(f, &f->be[0], "st", ramarg, NULL);
    f->dev = connect_device(f, &f->be[0], 256);
    assert_true(vuf_frontend_protocol_features(f->dev) & VUF_PROTO_MASK(STATUS));
    assert_true(vuf_frontend_protocol_features(f->dev) & VUF_PROTO_MASK(RESET_DEVICE));
    ack_all(f->dev);
    assert_int_equal(vuf_frontend_get_status(f->dev, &st), 0);
    assert_int_equal(st, 0); /* nothing set before activation */
    make_queues(f, NREQS, MAX_DATA);
    activate(f);
    assert_int_equal(vuf_frontend_get_status(f->dev, &st), 0);
    assert_int_equal(st, running);
    tu_fill_pattern(buf, sizeof(buf), 5);
    assert_int_equal(vuf_blk_write(f->blk[0], 8, buf, sizeof(buf), IO_MS), 0);

    assert_int_equal(vuf_device_reset(f->dev), 0);
    assert_false(vuf_frontend_is_active(f->dev));
    assert_int_equal(vuf_frontend_get_status(f->dev, &st), 0);
    assert_int_equal(st, 0);

    /* The driver starts over with new rings. */
    free_queues(f);
    make_queues(f, NREQS, MAX_DATA);
    activate(f);
    assert_int_equal(vuf_frontend_get_status(f->dev, &st), 0);
    assert_int_equal(st, running);
    assert_int_equal(vuf_blk_read(f->blk[0], 8, got, sizeof(got), IO_MS), 0);
    assert_memory_equal(got, buf, sizeof(buf));

    destroy_device(f);
    be_stop(&f->be[0]);
    check_no_leaks(f);
}

/*
 * Issue 7 §3: `vuf probe` and a device negotiate the same protocol features
 * with the same back-end: the probe's device_protocol_features is what
 * vuf_frontend_new() then acknowledges, and the probe acknowledges more
 * only where its output names the config flag (CONFIGURE_MEM_SLOTS).
 */
static void test_probe_agrees(void **state)
{
    struct fx *f = *state;
    static struct tu_run run;
    /* The tool is built with the test: its absence is a failure. */
    const char *tool = tu_built_exe("VUF_TOOL");
    char ramarg[32];
    const char *pos;
    unsigned long long dev_pf = 0, probe_pf = 0;

    assert_non_null(tool);
    baseline(f);
    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    be_start(f, &f->be[0], "probe", ramarg, NULL);
    tu_run_capture(
        &run, tool,
        (const char *const[]){"probe", "--json", "--device-type", "blk", f->be[0].sock, NULL},
        10000);
    printf("%s", run.out);
    assert_int_equal(tu_exit_code(&run), 0);
    pos = strstr(run.out, "\"device_protocol_features\":");
    assert_non_null(pos);
    assert_int_equal(sscanf(strchr(pos, ':') + 1, " %llu", &dev_pf), 1);
    pos = strstr(run.out, "\"protocol_features\":");
    assert_non_null(pos);
    assert_int_equal(sscanf(strchr(pos, ':') + 1, " %llu", &probe_pf), 1);
    assert_int_equal(probe_pf & ~dev_pf, VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS));
    run.out[0] = '\0';
    tu_run_capture(&run, tool,
                   (const char *const[]){"probe", "--device-type", "blk", f->be[0].sock, NULL},
                   10000);
    assert_int_equal(tu_exit_code(&run), 0);
    assert_non_null(strstr(run.out, "CONFIGURE_MEM_SLOTS   acknowledged by the probe only (a "
                                    "device asks for it with cfg.mem_slots)"));

    f->dev = connect_device(f, &f->be[0], 256);
    assert_int_equal(vuf_frontend_protocol_features(f->dev), dev_pf);
    destroy_device(f);
    be_stop(&f->be[0]);
    check_no_leaks(f);
}

/* ------------------------------------------------------------------------ */
/* 4. Queue size clamp                                                       */
/* ------------------------------------------------------------------------ */

#define CLAMP_NQ 4u
#define CLAMP_QSIZE 256u

static void test_queue_clamp(void **state)
{
    struct fx *f = *state;
    char ramarg[32], nqarg[32];
    const uint16_t *max;
    struct vuf_blk_req *reqs[CLAMP_QSIZE];
    struct vuf_queue big;
    uint8_t blk4k[4096];
    struct qstats st[CLAMP_NQ];

    baseline(f);
    snprintf(ramarg, sizeof(ramarg), "--ram=%llu", DISK_BYTES);
    snprintf(nqarg, sizeof(nqarg), "--num-queues=%u", CLAMP_NQ);
    be_start(f, &f->be[0], "clamp", ramarg, nqarg, NULL);
    f->dev = connect_device(f, &f->be[0], 300);
    assert_int_equal(vuf_device_num_queues(f->dev), CLAMP_NQ);
    max = vuf_device_queue_max_sizes(f->dev);
    assert_non_null(max);
    for (unsigned i = 0; i < CLAMP_NQ; i++)
        assert_int_equal(max[i], 256); /* 300 rounded down to a power of two */
    ack_all(f->dev);

    f->nq = CLAMP_NQ;
    f->qsize = CLAMP_QSIZE;
    /* Queue 0 gets a pool that fills the whole ring. */
    make_queues(f, CLAMP_QSIZE, 4096);

    /* Above the clamp: refused before anything reaches the back-end. */
    big = f->q[1];
    big.size = 512;
    {
        struct vuf_queue qs[CLAMP_NQ];

        memcpy(qs, f->q, sizeof(qs));
        qs[1] = big;
        assert_int_equal(vuf_device_activate(f->dev, f->gm, &f->intr, qs, CLAMP_NQ), -EINVAL);
        assert_false(vuf_frontend_is_active(f->dev));
        assert_int_equal(tu_count_threads(), f->threads0);
    }

    activate(f);
    /* 256 requests in flight at once fill queue 0's ring; three rounds wrap
     * its ring positions (768 > 256). */
    for (unsigned round = 0; round < 3; round++) {
        unsigned got = 0;

        for (unsigned i = 0; i < CLAMP_QSIZE; i++) {
            reqs[i] = vuf_blk_req_get(f->blk[0]);
            assert_non_null(reqs[i]);
            fill(vuf_blk_req_buf(reqs[i], NULL), 4096, round * 1000 + i);
            assert_int_equal(vuf_blk_req_prep(reqs[i], VUF_BLK_T_OUT, (uint64_t)i * 8, 4096), 0);
            assert_int_equal(vuf_blk_submit(f->blk[0], reqs[i], VUF_BLK_SUBMIT_NO_KICK), 0);
        }
        assert_int_equal(vuf_virtq_num_inflight(f->vq[0]), CLAMP_QSIZE);
        assert_true(vuf_blk_kick(f->blk[0]) >= 0);
        assert_int_equal(vuf_virtq_notify(f->vq[0]), 0);
        while (got < CLAMP_QSIZE) {
            struct vuf_blk_req *done = NULL;

            assert_int_equal(vuf_blk_wait(f->blk[0], IO_MS, &done), 0);
            assert_int_equal(vuf_blk_req_result(done), 0);
            assert_int_equal(vuf_blk_req_put(f->blk[0], done), 0);
            got++;
        }
        assert_int_equal(vuf_virtq_num_inflight(f->vq[0]), 0);
    }
    assert_int_equal(vuf_virtq_used_idx(f->vq[0]), 3 * CLAMP_QSIZE);
    /* The last round is on disk, read back through the other queues. */
    for (unsigned i = 0; i < CLAMP_QSIZE; i += 37) {
        fill(blk4k, sizeof(blk4k), 2000 + i);
        assert_reads(f->blk[1 + i % (CLAMP_NQ - 1)], (uint64_t)i * 8, blk4k, sizeof(blk4k));
    }
    for (unsigned i = 1; i < CLAMP_NQ; i++)
        assert_int_equal(vuf_blk_flush(f->blk[i], IO_MS), 0);
    ctl_stats(&f->be[0], CLAMP_NQ, st, NULL, 0);
    assert_int_equal(st[0].completed, 3 * CLAMP_QSIZE);
    assert_int_equal(st[0].written, 3ull * CLAMP_QSIZE * 4096);
    for (unsigned i = 1; i < CLAMP_NQ; i++)
        assert_true(st[i].completed >= 2);

    destroy_device(f);
    be_stop(&f->be[0]);
    check_no_leaks(f);
}

/* ------------------------------------------------------------------------ */
/* 5. The whole run: no fd, no thread left                                  */
/* ------------------------------------------------------------------------ */

static int run_fds0, run_threads0;

static int group_setup(void **state)
{
    (void)state;
    run_threads0 = tu_count_threads();
    run_fds0 = tu_count_fds();
    return 0;
}

static int group_teardown(void **state)
{
    int fds = tu_count_fds(), threads = tu_count_threads();

    (void)state;
    if (fds != run_fds0 || threads != run_threads0) {
        fprintf(stderr, "leak across the run: fds %d -> %d, threads %d -> %d\n", run_fds0, fds,
                run_threads0, threads);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_migrate_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shmem, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_agrees, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_clamp, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    backend_bin = tu_built_exe("VUF_BACKEND_BLK");
    if (!backend_bin)
        return 1;
    vuf_log_set(tu_log_to_stderr, NULL, VUF_LOG_INFO);
    tu_warm_threads();
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
