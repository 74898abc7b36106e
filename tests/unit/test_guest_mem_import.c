/* SPDX-License-Identifier: MIT */
/*
 * vuf_guest_mem_import(): a guest memory built from fds another process
 * (a VMM) already shares. The imported regions map the same bytes (writes
 * show through both ways), the caller's fds stay the caller's, and every
 * refusal returns its documented errno with nothing left open or mapped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testutil.h"
#include "vuf/guest_mem.h"

#define PS 4096u

static int memfd_of(uint64_t size)
{
    int fd = memfd_create("import-test", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    return fd;
}

/* Two regions of one memfd (as QEMU's RAM below and above the PCI hole),
 * given in descending GPA order. */
static void test_import_shares_bytes(void **state)
{
    (void)state;
    int fd = memfd_of(16 * PS);
    uint8_t *vmm = mmap(NULL, 16 * PS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    struct vuf_mem_region regs[2] = {
        {.guest_phys_addr = 0x100000,
         .memory_size = 8 * PS,
         .userspace_addr = 0xdead0000,
         .mmap_offset = 8 * PS},
        {.guest_phys_addr = 0,
         .memory_size = 4 * PS,
         .userspace_addr = 0xbeef0000,
         .mmap_offset = 0},
    };
    int fds[2] = {fd, fd};
    struct vuf_guest_mem *gm = NULL;
    struct vuf_guest_region r;
    uint8_t *p;

    assert_true(vmm != MAP_FAILED);
    memset(vmm + 8 * PS + 100, 0xab, 16);
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), 0);
    assert_int_equal(vuf_guest_mem_nregions(gm), 2);
    /* Sorted by GPA; the fds are dups, not the caller's. */
    assert_int_equal(vuf_guest_mem_region(gm, 0, &r), 0);
    assert_int_equal(r.gpa, 0);
    assert_int_equal(r.size, 4 * PS);
    assert_int_equal(r.fd_offset, 0);
    assert_int_not_equal(r.fd, fd);
    assert_int_equal(vuf_guest_mem_region(gm, 1, &r), 0);
    assert_int_equal(r.gpa, 0x100000);
    assert_int_equal(r.fd_offset, 8 * PS);
    assert_int_not_equal(r.fd, fd);

    /* The VMM's bytes, at the GPA, not a copy. */
    p = vuf_guest_mem_to_host(gm, 0x100000 + 100, 16);
    assert_non_null(p);
    assert_int_equal(p[0], 0xab);
    assert_int_equal(p[15], 0xab);
    p[0] = 0x5a;
    assert_int_equal(vmm[8 * PS + 100], 0x5a);
    p = vuf_guest_mem_to_host(gm, 3 * PS, 1);
    p[0] = 0x77;
    assert_int_equal(vmm[3 * PS], 0x77);
    /* Between the regions there is nothing. */
    assert_null(vuf_guest_mem_to_host(gm, 4 * PS, 1));

    /* The caller's fd is still its own: closing it keeps the import. */
    munmap(vmm, 16 * PS);
    close(fd);
    p = vuf_guest_mem_to_host(gm, 0x100000 + 100, 1);
    assert_int_equal(p[0], 0x5a);
    vuf_guest_mem_free(gm);
}

static void test_import_refusals(void **state)
{
    (void)state;
    int fd = memfd_of(8 * PS), base = tu_count_fds();
    struct vuf_mem_region ok = {.guest_phys_addr = 0, .memory_size = 4 * PS};
    struct vuf_mem_region regs[2];
    int fds[2] = {fd, fd};
    struct vuf_guest_mem *gm = (struct vuf_guest_mem *)0x1;

    assert_int_equal(vuf_guest_mem_import(&ok, fds, 0, &gm), -EINVAL);
    assert_int_equal(vuf_guest_mem_import(NULL, fds, 1, &gm), -EINVAL);
    assert_int_equal(vuf_guest_mem_import(&ok, NULL, 1, &gm), -EINVAL);
    assert_int_equal(vuf_guest_mem_import(&ok, fds, 1, NULL), -EINVAL);
    assert_int_equal(vuf_guest_mem_import(&ok, fds, VUF_GUEST_MEM_MAX_REGIONS + 1, &gm), -E2BIG);

    /* Overlap in GPA: the second region fails after the first was mapped;
     * the first is undone. */
    regs[0] = ok;
    regs[1] = (struct vuf_mem_region){.guest_phys_addr = 2 * PS, .memory_size = 2 * PS};
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EEXIST);
    assert_int_equal(tu_count_fds(), base);

    /* A file too short for offset + size. */
    regs[1] = (struct vuf_mem_region){
        .guest_phys_addr = 16 * PS, .memory_size = 4 * PS, .mmap_offset = 6 * PS};
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EINVAL);
    assert_int_equal(tu_count_fds(), base);

    /* Misaligned offset and GPA. */
    regs[1] =
        (struct vuf_mem_region){.guest_phys_addr = 16 * PS, .memory_size = PS, .mmap_offset = 100};
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EINVAL);
    regs[1] = (struct vuf_mem_region){.guest_phys_addr = 16 * PS + 8, .memory_size = PS};
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EINVAL);

    /* Bad fds. */
    regs[1] = (struct vuf_mem_region){.guest_phys_addr = 16 * PS, .memory_size = PS};
    fds[1] = -1;
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EBADF);
    fds[1] = 1000;
    assert_int_equal(vuf_guest_mem_import(regs, fds, 2, &gm), -EBADF);
    assert_int_equal(tu_count_fds(), base);
    /* *out untouched on failure. */
    assert_ptr_equal(gm, (struct vuf_guest_mem *)0x1);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_import_shares_bytes),
        cmocka_unit_test(test_import_refusals),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
