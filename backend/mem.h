/* SPDX-License-Identifier: MIT */
/*
 * backend/mem.h - the back-end's view of the front-end's memory: the regions
 * of SET_MEM_TABLE / ADD_MEM_REG, mmap'd from their fds, and the address
 * translations the protocol needs.
 *
 * Two address spaces reach the same bytes (vhost-user spec, "Memory"):
 *   - front-end user virtual addresses (userspace_addr): what SET_VRING_ADDR
 *     carries;
 *   - guest-physical addresses (guest_phys_addr): what descriptors carry.
 * Every translation checks the whole range, overflow-safe; a failed one
 * returns NULL / -EFAULT and never touches memory.
 *
 * Regions are validated before they are mapped: non-zero size, no u64
 * overflow, a regular file (memfd, tmpfs, hugetlbfs) at least
 * mmap_offset + memory_size long (mapping past EOF would SIGBUS us on first
 * touch), no GPA overlap with another region.
 *
 * A front-end can still shrink the file after handing it over (QEMU's and
 * vuf's own memfds are sealed against that; a hostile one need not be).
 * Every mapping of a front-end's file is therefore registered with a guard
 * (be_guard_*): the SIGBUS handler the program installs
 * (be_guard_install) replaces a guarded mapping that faults with anonymous
 * zero pages at the same address and marks it lost, and the access that
 * faulted goes on reading zeros. A lost region translates no address any
 * more (requests get -EFAULT, so IOERR; a ring in it is broken, see
 * be_mem_lost_check). A SIGBUS anywhere else is left to the previous
 * handler (by default the process dies). The data path pays one relaxed
 * load per translation.
 *
 * Ownership: a be_mem owns its mappings; the fds are closed as soon as the
 * mapping exists (the mapping keeps the memory alive).
 *
 * Thread-safety: none; the main thread owns it.
 */
#ifndef VUF_BACKEND_MEM_H
#define VUF_BACKEND_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "vuf/wire.h"

/* Slots offered with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS). */
#define BE_MEM_MAX_SLOTS 32u

struct be_region {
    const _Atomic int *lost; /* set by the SIGBUS guard; NULL: unguarded */
    uint64_t gpa;
    uint64_t size;
    uint64_t uva;
    uint64_t mmap_offset;
    void *map_base; /* what mmap returned */
    size_t map_len;
    uint8_t *host; /* the byte at gpa / uva */
};

struct be_mem {
    struct be_region r[BE_MEM_MAX_SLOTS];
    unsigned n;
    uint64_t generation;  /* bumped on every change: cached ring pointers are stale */
    uint64_t faults_seen; /* be_guard_faults() at the last be_mem_lost_check */
};

/* Install the SIGBUS guard (once per process, before any mapping is
 * touched). 0 or -errno. */
int be_guard_install(void);
/* Guard [base, base + len), a MAP_SHARED mapping of a front-end's file.
 * Returns the flag the guard sets when the mapping is lost, or NULL when
 * every guard slot is taken (then it is not guarded; logged). */
const _Atomic int *be_guard_add(void *base, size_t len);
/* Before munmap: forget the guard of the mapping at base. */
void be_guard_del(void *base);
/* Mappings lost so far (ever). */
uint64_t be_guard_faults(void);

/* True once after guarded mappings of m were lost (the guard fired since
 * the last call): the lost regions are logged and m->generation bumped, so
 * rings re-translate and those in a lost region fail. */
bool be_mem_lost_check(struct be_mem *m);

void be_mem_init(struct be_mem *m);
/* Unmap every region. */
void be_mem_clear(struct be_mem *m);

/* Replace the whole table. fds[i] backs regions[i]; they are borrowed (the
 * caller closes them). On failure the old table is kept. 0 or -errno. */
int be_mem_set_table(struct be_mem *m, const struct vuf_mem_region *regions, const int *fds,
                     unsigned n);
/* Add one region (fd borrowed). -ENOSPC when full, -EEXIST on overlap. */
int be_mem_add(struct be_mem *m, const struct vuf_mem_region *reg, int fd);
/* Remove the region matching gpa, uva and size (mmap_offset ignored, as
 * the spec says). -ENOENT if none. */
int be_mem_remove(struct be_mem *m, const struct vuf_mem_region *reg);

/* [uva, uva + len) inside one region -> host pointer, else NULL. */
void *be_mem_uva_to_host(const struct be_mem *m, uint64_t uva, uint64_t len);
/* [gpa, gpa + len) inside one region -> host pointer, else NULL. */
void *be_mem_gpa_to_host(const struct be_mem *m, uint64_t gpa, uint64_t len);
/* The contiguous piece starting at gpa: host pointer and how many of the
 * `len` bytes it covers (<= len). NULL if gpa is in no region. */
void *be_mem_gpa_piece(const struct be_mem *m, uint64_t gpa, uint64_t len, uint64_t *piece);

/* Copy between guest memory and a buffer; the range may span adjacent
 * regions. 0 or -EFAULT (nothing guaranteed about partial copies). */
int be_mem_read(const struct be_mem *m, uint64_t gpa, void *buf, size_t len);
int be_mem_write(const struct be_mem *m, uint64_t gpa, const void *buf, size_t len);

#endif
