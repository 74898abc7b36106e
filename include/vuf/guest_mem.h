/* SPDX-License-Identifier: MIT */
/*
 * vuf/guest_mem.h - "guest memory" for a user-space virtio driver: a set of
 * shared-memory regions, each with a guest-physical address (GPA), that a
 * vhost-user back-end maps from the fds sent with SET_MEM_TABLE (or, one
 * region at a time, with ADD_MEM_REG when CONFIGURE_MEM_SLOTS is
 * negotiated; see vuf/frontend.h).
 *
 * There is no guest: the front-end process itself plays the driver (see
 * vuf/virtq.h), so the same bytes are reachable three ways:
 *   - by GPA: what descriptors carry (virtio 1.2 §2.7.5);
 *   - by this process's virtual address (the "host" mapping): what
 *     SET_MEM_TABLE calls userspace_addr and what SET_VRING_ADDR carries;
 *   - by (fd, fd_offset): what the back-end mmaps.
 *
 * Regions are sorted by GPA, page-aligned, non-overlapping, and never wrap
 * the 64-bit GPA space (gpa + size <= UINT64_MAX). At most
 * VUF_GUEST_MEM_MAX_REGIONS (512, QEMU's cap on memory slots); SET_MEM_TABLE
 * carries only VUF_MEM_TABLE_MAX (8) of them, so more need a back-end with
 * CONFIGURE_MEM_SLOTS. Regions can be removed (vuf_guest_mem_remove()) as
 * well as added, for memory hot-(un)plug.
 *
 * Ownership: a guest_mem owns every region's fd and mapping; vuf_guest_mem_free()
 * unmaps and closes them all. Region fds handed out by the accessors are
 * borrowed (valid until the free); dup them to keep them longer. Host
 * pointers are valid until the free.
 *
 * Thread-safety: building (new/add/remove) and the allocator (alloc/mark/rewind)
 * need external serialization. Once built, the read-only calls
 * (translation, region accessors) may run concurrently from any thread,
 * provided no add/remove/free runs at the same time. The memory itself is shared
 * with the back-end; the virtq layer defines the ordering rules for it.
 */
#ifndef VUF_GUEST_MEM_H
#define VUF_GUEST_MEM_H

#include <stdint.h>

#include "vuf/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most regions of one guest memory: QEMU's cap on vhost-user memory slots.
 * SET_MEM_TABLE carries at most VUF_MEM_TABLE_MAX (8) regions (and 8 fds). */
#define VUF_GUEST_MEM_MAX_REGIONS 512u

struct vuf_guest_mem;

/* One region, as copied out by vuf_guest_mem_region(). */
struct vuf_guest_region {
    uint64_t gpa;       /* first guest-physical address */
    uint64_t size;      /* bytes, a multiple of the page size */
    void *host;         /* this process's mapping of the region */
    int fd;             /* backing fd (borrowed from the guest_mem) */
    uint64_t fd_offset; /* offset of the mapping within fd (mmap_offset) */
};

/* An empty guest memory (no regions). Returns 0 or -ENOMEM. */
int vuf_guest_mem_new(struct vuf_guest_mem **out);

/*
 * The default layout: one memfd region of `size` bytes at `base_gpa`.
 * Returns 0 or a negative errno as vuf_guest_mem_add_memfd().
 */
int vuf_guest_mem_new_simple(uint64_t base_gpa, uint64_t size, struct vuf_guest_mem **out);

/* Unmap every region, close every fd, free. NULL is a no-op. */
void vuf_guest_mem_free(struct vuf_guest_mem *gm);

/*
 * Add a region backed by a new memfd (memfd_create, ftruncate, mmap
 * MAP_SHARED read/write). The memfd is sealed against shrinking and growing
 * so that no peer can truncate it under the mapping (which would SIGBUS us).
 * The memory starts zeroed.
 * Returns 0, or:
 *   -EINVAL   size is 0, gpa or size is not page-aligned, or gpa + size
 *             overflows
 *   -EEXIST   the range overlaps an existing region
 *   -ENOSPC   already VUF_GUEST_MEM_MAX_REGIONS regions
 *   -errno    from memfd_create/ftruncate/mmap (-ENOMEM, -EMFILE, ...)
 */
int vuf_guest_mem_add_memfd(struct vuf_guest_mem *gm, uint64_t gpa, uint64_t size);

/*
 * Add a region backed by the caller's fd, mapped MAP_SHARED read/write from
 * fd_offset. The fd is borrowed: it is dup'd (close-on-exec) and the caller
 * keeps, and must close, its own. fd_offset must be page-aligned; if fd is a
 * regular file (memfd included) it must be at least fd_offset + size long.
 * The fd must be mappable by the back-end too (memfd, hugetlbfs or tmpfs
 * file; not an anonymous mapping). Errors as vuf_guest_mem_add_memfd(),
 * plus -EBADF for a bad fd and -EINVAL for a file that is too short.
 */
int vuf_guest_mem_add_fd(struct vuf_guest_mem *gm, uint64_t gpa, uint64_t size, int fd,
                         uint64_t fd_offset);

/*
 * A guest memory made of memory someone else already shares: the regions
 * of a VMM's SET_MEM_TABLE (or ADD_MEM_REG), each mapped MAP_SHARED from
 * fds[i] at regions[i].mmap_offset, so this process reads and writes the
 * very bytes the VMM's guest sees (nothing is copied). The region's gpa and
 * size are guest_phys_addr and memory_size; userspace_addr is the VMM's own
 * address and is not used (translate it with the caller's copy of the
 * table). The fds are borrowed as with vuf_guest_mem_add_fd(): each is
 * dup'd (close-on-exec) and the caller still owns, and closes, its own.
 * Regions may come in any order. On success *out is a guest_mem of n
 * regions (free it with vuf_guest_mem_free()); on failure nothing is left
 * mapped or open.
 * Returns 0, or:
 *   -EINVAL   out, regions or fds NULL, n 0, or a region that
 *             vuf_guest_mem_add_fd() refuses (alignment, overflow, a file
 *             shorter than mmap_offset + memory_size)
 *   -E2BIG    n > VUF_GUEST_MEM_MAX_REGIONS
 *   -EEXIST   two regions overlap in GPA
 *   -EBADF    a negative or closed fd
 *   -errno    from fstat/dup/mmap
 */
int vuf_guest_mem_import(const struct vuf_mem_region *regions, const int *fds, unsigned n,
                         struct vuf_guest_mem **out);

/*
 * Remove the region that starts at `gpa`: unmap it and close its fd. Host
 * pointers into it become invalid; GPAs in it no longer translate. Other
 * regions (and their host mappings) are untouched; the allocator's position
 * is kept. The caller guarantees that nothing still uses the region: no
 * ring, no buffer in flight. A back-end that was given the region keeps
 * its own mapping until told (vuf_frontend_update_memory()).
 * 0, -EINVAL (gm NULL) or -ENOENT (no region starts at gpa).
 */
int vuf_guest_mem_remove(struct vuf_guest_mem *gm, uint64_t gpa);

/* Number of regions. */
unsigned vuf_guest_mem_nregions(const struct vuf_guest_mem *gm);

/* Copy region i (in ascending GPA order) to *out. 0, or -ERANGE if i is out
 * of range. */
int vuf_guest_mem_region(const struct vuf_guest_mem *gm, unsigned i, struct vuf_guest_region *out);

/*
 * Fill SET_MEM_TABLE arguments: regions[i] = {gpa, size, userspace_addr =
 * host VA, mmap_offset = fd_offset} and fds[i] its fd (borrowed), ready for
 * vuf_client_set_mem_table(). Returns the number of regions (>= 0), or
 * -E2BIG if more than `max` would be needed.
 */
int vuf_guest_mem_mem_table(const struct vuf_guest_mem *gm, struct vuf_mem_region *regions,
                            int *fds, unsigned max);

/*
 * Translate [gpa, gpa + len) to this process's address. The whole range
 * must lie within ONE region (a range straddling two adjacent regions is
 * rejected: their mappings are not contiguous). len 0 checks that gpa itself
 * lies in a region. Overflow-safe for any gpa and len.
 * vuf_guest_mem_to_host() returns the pointer or NULL;
 * vuf_guest_mem_translate() returns 0 and sets *host, or -EFAULT.
 */
void *vuf_guest_mem_to_host(const struct vuf_guest_mem *gm, uint64_t gpa, uint64_t len);
int vuf_guest_mem_translate(const struct vuf_guest_mem *gm, uint64_t gpa, uint64_t len,
                            void **host);

/* The reverse: [host, host + len) must lie within one region's mapping.
 * 0 and *gpa, or -EFAULT. */
int vuf_guest_mem_to_gpa(const struct vuf_guest_mem *gm, const void *host, uint64_t len,
                         uint64_t *gpa);

/*
 * Bump allocator over the regions, in GPA order: carve `size` bytes aligned
 * to `align` (a power of two; 0 means 1) and return the GPA in *gpa. The
 * range lies within one region and is zeroed. There is no free; see
 * vuf_guest_mem_alloc_rewind(). Returns 0, -EINVAL (size 0, align not a
 * power of two) or -ENOMEM (no region has room left).
 */
int vuf_guest_mem_alloc(struct vuf_guest_mem *gm, uint64_t size, uint64_t align, uint64_t *gpa);

/* The allocator's position: the lowest GPA the next allocation may use. */
uint64_t vuf_guest_mem_alloc_mark(const struct vuf_guest_mem *gm);

/* Give back everything allocated since `mark` (a value from
 * vuf_guest_mem_alloc_mark() at or below the current position). The caller
 * guarantees nothing, the back-end included, still uses that memory.
 * 0 or -EINVAL. */
int vuf_guest_mem_alloc_rewind(struct vuf_guest_mem *gm, uint64_t mark);

#ifdef __cplusplus
}
#endif
#endif
