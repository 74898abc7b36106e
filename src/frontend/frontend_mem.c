/* SPDX-License-Identifier: MIT */
/*
 * Guest memory for the front-end: SET_MEM_TABLE, or, with
 * VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS, GET_MAX_MEM_SLOTS at
 * construction and REM_MEM_REG/ADD_MEM_REG diffs against a shadow of what
 * the back-end was given (QEMU's scheme), at activation and for memory
 * hot-(un)plug (vuf_frontend_update_memory). The rules are in
 * docs/frontend.md.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "frontend_internal.h"
#include "vuf/log.h"

/* One region as the back-end has it, or as `mem` has it now. */
struct fe_mem_slot {
    struct vuf_mem_region reg;
    int fd;    /* borrowed from the guest memory (new regions only) */
    dev_t dev; /* the backing file: a region whose numbers are unchanged */
    ino_t ino; /* but whose file was replaced is a different region */
};

static bool slot_same(const struct fe_mem_slot *a, const struct fe_mem_slot *b)
{
    return a->reg.guest_phys_addr == b->reg.guest_phys_addr &&
           a->reg.memory_size == b->reg.memory_size &&
           a->reg.userspace_addr == b->reg.userspace_addr &&
           a->reg.mmap_offset == b->reg.mmap_offset && a->dev == b->dev && a->ino == b->ino;
}

static bool slots_mode(const struct vuf_frontend *fe)
{
    return (fe->protocol_features & VUF_PROTO_MASK(CONFIGURE_MEM_SLOTS)) != 0;
}

static unsigned max_regions(const struct vuf_frontend *fe)
{
    return slots_mode(fe) ? fe->max_mem_slots : VUF_MEM_TABLE_MAX;
}

int fe_mem_negotiate(struct vuf_frontend *fe)
{
    uint64_t n = 0;
    int r;

    if (!slots_mode(fe))
        return 0;
    r = vuf_client_get_max_mem_slots(fe->client, &n);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to get max memory slots: %s", fe->label,
                vuf_strerror(r));
        return r;
    }
    if (n == 0) {
        vuf_log(VUF_LOG_ERROR, "%s: back-end reports 0 memory slots", fe->label);
        return -EPROTO;
    }
    /* QEMU's cap; guest memory has no more regions anyway. */
    fe->max_mem_slots = n > VUF_FRONTEND_MAX_MEM_SLOTS ? VUF_FRONTEND_MAX_MEM_SLOTS : (unsigned)n;
    return 0;
}

void fe_mem_fini(struct vuf_frontend *fe)
{
    free(fe->mem_slots);
    fe->mem_slots = NULL;
    fe->nmem_slots = 0;
}

/*
 * `mem` as slots (ascending GPA), in a new array (*out, freed by the
 * caller), after checking it can be handed over: 1..max_regions() regions,
 * each fd stat-able. Logs and returns a negative errno otherwise.
 */
static int describe(struct vuf_frontend *fe, const struct vuf_guest_mem *mem,
                    struct fe_mem_slot **out, unsigned *nout)
{
    unsigned n = vuf_guest_mem_nregions(mem), max = max_regions(fe);
    struct fe_mem_slot *s;

    if (n == 0) {
        vuf_log(VUF_LOG_ERROR, "%s: guest memory has no region", fe->label);
        return -EINVAL;
    }
    if (n > max) {
        if (slots_mode(fe))
            vuf_log(VUF_LOG_ERROR,
                    "%s: guest memory has %u regions, the back-end has %u memory slots", fe->label,
                    n, max);
        else
            vuf_log(VUF_LOG_ERROR,
                    "%s: guest memory has %u regions, SET_MEM_TABLE carries at most %u "
                    "(more need CONFIGURE_MEM_SLOTS: cfg.mem_slots and a back-end "
                    "that offers it)",
                    fe->label, n, max);
        return -E2BIG;
    }
    s = calloc(n, sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        struct vuf_guest_region g;
        struct stat st;

        if (vuf_guest_mem_region(mem, i, &g) < 0 || fstat(g.fd, &st) < 0) {
            free(s);
            return -EBADF;
        }
        s[i].reg = (struct vuf_mem_region){.guest_phys_addr = g.gpa,
                                           .memory_size = g.size,
                                           .userspace_addr = (uint64_t)(uintptr_t)g.host,
                                           .mmap_offset = g.fd_offset};
        s[i].fd = g.fd;
        s[i].dev = st.st_dev;
        s[i].ino = st.st_ino;
    }
    *out = s;
    *nout = n;
    return 0;
}

int fe_mem_check(struct vuf_frontend *fe, const struct vuf_guest_mem *mem)
{
    struct fe_mem_slot *s;
    unsigned n;
    int r = describe(fe, mem, &s, &n);

    if (r == 0)
        free(s);
    return r;
}

static int find_slot(const struct fe_mem_slot *s, unsigned n, const struct fe_mem_slot *want)
{
    for (unsigned i = 0; i < n; i++)
        if (slot_same(&s[i], want))
            return (int)i;
    return -1;
}

/* SET_MEM_TABLE with all of `s`; the shadow becomes `s` (taken over). */
static int send_table(struct vuf_frontend *fe, struct fe_mem_slot *s, unsigned n)
{
    struct vuf_mem_region regions[VUF_MEM_TABLE_MAX] = {{0, 0, 0, 0}};
    int fds[VUF_MEM_TABLE_MAX] = {-1, -1, -1, -1, -1, -1, -1, -1}, r;

    for (unsigned i = 0; i < n; i++) {
        regions[i] = s[i].reg;
        fds[i] = s[i].fd;
    }
    r = vuf_client_set_mem_table(fe->client, regions, fds, n);
    if (r < 0) {
        vuf_log(VUF_LOG_ERROR, "%s: failed to set memory map regions: %s", fe->label,
                vuf_strerror(r));
        free(s);
        return r;
    }
    for (unsigned i = 0; i < n; i++)
        s[i].fd = -1; /* the shadow keeps no fd */
    free(fe->mem_slots);
    fe->mem_slots = s;
    fe->nmem_slots = n;
    return 0;
}

/*
 * The diff: REM_MEM_REG for every shadow region `s` lacks, then ADD_MEM_REG
 * for every region of `s` the shadow lacks, both in ascending GPA order.
 * The shadow follows each acknowledged message, so after an error it still
 * says what the back-end has. Frees `s`.
 */
static int send_diff(struct vuf_frontend *fe, struct fe_mem_slot *s, unsigned n)
{
    struct fe_mem_slot *sh;
    int r = 0;

    /* Room for the old and new regions: REMs go first, so the shadow never
     * holds more than max(old, new) <= max_mem_slots, but a failed REM
     * leaves its region in. */
    sh = realloc(fe->mem_slots, (fe->nmem_slots + n) * sizeof(*sh));
    if (!sh) {
        free(s);
        return -ENOMEM;
    }
    fe->mem_slots = sh;
    for (unsigned i = 0; i < fe->nmem_slots;) {
        if (find_slot(s, n, &fe->mem_slots[i]) >= 0) {
            i++;
            continue;
        }
        r = vuf_client_rem_mem_reg(fe->client, &fe->mem_slots[i].reg);
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to remove memory region 0x%llx+0x%llx: %s",
                    fe->label, (unsigned long long)fe->mem_slots[i].reg.guest_phys_addr,
                    (unsigned long long)fe->mem_slots[i].reg.memory_size, vuf_strerror(r));
            goto out;
        }
        memmove(&fe->mem_slots[i], &fe->mem_slots[i + 1],
                (fe->nmem_slots - i - 1) * sizeof(fe->mem_slots[0]));
        fe->nmem_slots--;
    }
    for (unsigned i = 0; i < n; i++) {
        if (find_slot(fe->mem_slots, fe->nmem_slots, &s[i]) >= 0)
            continue;
        r = vuf_client_add_mem_reg(fe->client, &s[i].reg, s[i].fd);
        if (r < 0) {
            vuf_log(VUF_LOG_ERROR, "%s: failed to add memory region 0x%llx+0x%llx: %s", fe->label,
                    (unsigned long long)s[i].reg.guest_phys_addr,
                    (unsigned long long)s[i].reg.memory_size, vuf_strerror(r));
            goto out;
        }
        fe->mem_slots[fe->nmem_slots] = s[i];
        fe->mem_slots[fe->nmem_slots].fd = -1;
        fe->nmem_slots++;
    }
out:
    free(s);
    return r;
}

/* The diff with slots; without, SET_MEM_TABLE when `always` or when
 * anything changed. Frees `s`. */
static int send_mem(struct vuf_frontend *fe, struct fe_mem_slot *s, unsigned n, bool always)
{
    if (slots_mode(fe))
        return send_diff(fe, s, n);
    if (!always && n == fe->nmem_slots) {
        bool same = true;

        for (unsigned i = 0; i < n && same; i++)
            same = slot_same(&s[i], &fe->mem_slots[i]);
        if (same) {
            free(s);
            return 0;
        }
    }
    return send_table(fe, s, n);
}

int fe_mem_send(struct vuf_frontend *fe, const struct vuf_guest_mem *mem)
{
    struct fe_mem_slot *s;
    unsigned n;
    int r = describe(fe, mem, &s, &n);

    if (r < 0)
        return r;
    return send_mem(fe, s, n, true);
}

/*
 * Is [gpa, gpa + len) inside one region the back-end has and `now` still
 * has, unchanged? Then the host address sent for it stays right.
 */
static bool kept(const struct vuf_frontend *fe, const struct fe_mem_slot *now, unsigned n,
                 uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < n; i++) {
        const struct vuf_mem_region *g = &now[i].reg;

        if (gpa >= g->guest_phys_addr && gpa - g->guest_phys_addr < g->memory_size &&
            len <= g->memory_size - (gpa - g->guest_phys_addr))
            return find_slot(fe->mem_slots, fe->nmem_slots, &now[i]) >= 0;
    }
    return false;
}

int vuf_frontend_update_memory(struct vuf_device *dev, const struct vuf_guest_mem *mem)
{
    struct vuf_frontend *fe;
    struct fe_mem_slot *s;
    unsigned n;
    int r;

    if (!vuf_device_is_frontend(dev) || !mem)
        return -EINVAL;
    fe = fe_of(dev);
    /* Not active: the back-end gets this memory with the next activate or
     * wake (which are given it). */
    if (!fe->active)
        return 0;
    r = describe(fe, mem, &s, &n);
    if (r < 0)
        return r;
    /* The started rings were sent as host addresses in regions the
     * back-end has: they must stay where they are. */
    for (unsigned k = 0; k < fe->nsent; k++) {
        const struct vuf_queue *q = &fe->sent[k].q;

        if (!kept(fe, s, n, q->desc_addr, 16ull * q->size) ||
            !kept(fe, s, n, q->avail_addr, q->packed ? 4 : 6ull + 2ull * q->size) ||
            !kept(fe, s, n, q->used_addr, q->packed ? 4 : 6ull + 8ull * q->size)) {
            vuf_log(VUF_LOG_ERROR, "%s: memory update would move or remove the rings of queue %u",
                    fe->label, fe->sent[k].index);
            free(s);
            return -EBUSY;
        }
    }
    r = fe_stream_check(fe);
    if (r < 0) {
        free(s);
        return r;
    }
    r = fe_stream_note(fe, send_mem(fe, s, n, false));
    if (r < 0)
        return r;
    fe->mem = mem;
    /* A log that must cover more guest memory grows (frontend_log.c). */
    if (fe->log_bits)
        r = fe_stream_note(fe, fe_log_activate(fe, mem));
    return r;
}

unsigned vuf_frontend_max_mem_regions(const struct vuf_device *dev)
{
    return vuf_device_is_frontend(dev) ? max_regions(fe_of_const(dev)) : 0;
}
