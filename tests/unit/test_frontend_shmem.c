/* SPDX-License-Identifier: MIT */
/*
 * The front-end device (vuf/frontend.h) against the in-test back-end of
 * tests/lib/fe_fakebe.c. Shared memory: SHMEM_MAP/UNMAP checked against the regions and the VMM's
 * mapper, mappings removed on reset.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fe_harness.h"
#include "testutil.h"
#include "vuf/breq.h"
#include "vuf/conn.h"
#include "vuf/device.h"
#include "vuf/frontend.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/server.h"
#include "vuf/virtio.h"
#include "fe_fakebe.h"

/* Shared memory                                                            */
/* ------------------------------------------------------------------------ */

#define REGION_LEN (1ull << 20)

static void fx_shm_device(struct fx *f, uint8_t shmid)
{
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    struct vuf_shm_mapper m = {&tmap_ops, &f->map};
    struct vuf_shm_region reg;

    f->be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(SHMEM);
    f->be.shm.nregions = 1;
    f->be.shm.memory_sizes[shmid] = REGION_LEN;
    assert_int_equal(fx_new(f, &cfg), 0);
    expect_new(f);
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.id, shmid);
    assert_int_equal(reg.length, REGION_LEN);
    expect_seq(&f->be, &f->mark, R(GET_SHMEM_CONFIG));
    /* Cached: asked once. */
    memset(&reg, 0, sizeof(reg));
    assert_int_equal(vuf_device_get_shm_region(f->dev, &reg), 1);
    assert_int_equal(reg.id, shmid);
    assert_int_equal(vuf_device_set_shm_mapper(f->dev, &m), 0);
    expect_none(&f->be, &f->mark);
    fx_queues(f, 2);
    fx_activate_ok(f);
}

static int map(struct fx *f, int fd, uint8_t shmid, uint64_t off, uint64_t len, uint64_t fd_off,
               bool rw)
{
    struct vuf_shmem_map m = {.shmid = shmid,
                              .fd_offset = fd_off,
                              .shm_offset = off,
                              .len = len,
                              .flags = rw ? VUF_SHMEM_MAP_RW : 0};
    uint64_t ack = 0;
    int r = vuf_breq_shmem_map(be_breq(&f->be), &m, fd, true, &ack);

    return r == 0 ? 0 : (r == -EIO ? (int)(int64_t)ack : r);
}

static int unmap(struct fx *f, uint8_t shmid, uint64_t off, uint64_t len)
{
    struct vuf_shmem_map m = {.shmid = shmid, .shm_offset = off, .len = len};
    uint64_t ack = 0;
    int r = vuf_breq_shmem_unmap(be_breq(&f->be), &m, true, &ack);

    return r == 0 ? 0 : (r == -EIO ? (int)(int64_t)ack : r);
}

/* Send a raw SHMEM_MAP the back-end library would refuse to build, and
 * return the front-end's ack. */
static int64_t raw_map(struct fx *f, int fd, const struct vuf_shmem_map *m)
{
    struct vuf_conn *c = be_breq(&f->be);
    struct vuf_msg msg, reply;

    assert_int_equal(vuf_msg_init(&msg, VUF_BREQ_SHMEM_MAP, VUF_FLAG_NEED_REPLY, m, sizeof(*m)), 0);
    msg.fds[0] = fd;
    msg.nfds = 1;
    assert_int_equal(vuf_conn_send(c, &msg), 0);
    assert_int_equal(vuf_conn_recv(c, &reply), 0);
    assert_int_equal(reply.hdr.request, VUF_BREQ_SHMEM_MAP);
    assert_int_equal(reply.hdr.size, 8);
    vuf_msg_close_fds(&reply);
    return (int64_t)reply.payload.u64;
}

static void test_shmem_map(void **state)
{
    struct fx f;
    struct vuf_shmem_map raw;
    int fd;

    (void)state;
    fx_begin(&f);
    fx_shm_device(&f, 2);
    fd = memfd_create("shm", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);

    /* A good map reaches the mapper. */
    assert_int_equal(map(&f, fd, 2, 0x1000, 0x2000, 0x3000, true), 0);
    assert_int_equal(f.map.adds, 1);
    assert_int_equal(f.map.m[0].off, 0x1000);
    assert_int_equal(f.map.m[0].len, 0x2000);
    assert_int_equal(f.map.m[0].fd_off, 0x3000);
    assert_int_equal(f.map.m[0].prot, PROT_READ | PROT_WRITE);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Bad maps get an error ack and change nothing. */
    assert_int_equal(map(&f, fd, 1, 0x10000, 0x1000, 0, true), -EINVAL); /* shmid */
    assert_int_equal(map(&f, fd, 2, REGION_LEN - 0x1000, 0x2000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, REGION_LEN, 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, 0, REGION_LEN + 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, UINT64_MAX - 0x1fff, 0x1000, 0, true), -ERANGE);
    assert_int_equal(map(&f, fd, 2, 0x2000, 0x1000, 0, true), -EEXIST);  /* inside */
    assert_int_equal(map(&f, fd, 2, 0x0, 0x2000, 0, true), -EEXIST);     /* head */
    assert_int_equal(map(&f, fd, 2, 0x2fff, 0x1000, 0, true), -EEXIST);  /* tail */
    assert_int_equal(map(&f, fd, 2, 0x0, REGION_LEN, 0, true), -EEXIST); /* around */
    memset(&raw, 0, sizeof(raw));
    raw.shmid = 2;
    raw.shm_offset = UINT64_MAX - 0x10; /* shm_offset + len overflows */
    raw.len = 0x1000;
    assert_true(raw_map(&f, fd, &raw) < 0);
    raw.shm_offset = 0x100000 - 0x1000;
    raw.fd_offset = UINT64_MAX - 0x10; /* fd_offset + len overflows */
    assert_true(raw_map(&f, fd, &raw) < 0);
    raw.fd_offset = 0;
    raw.len = 0; /* empty */
    assert_true(raw_map(&f, fd, &raw) < 0);
    assert_int_equal(f.map.adds, 1);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Adjacent is fine; the worker went on after all those refusals. */
    assert_int_equal(map(&f, fd, 2, 0x3000, 0x1000, 0, false), 0);
    assert_int_equal(f.map.m[1].prot, PROT_READ);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 2);
    /* A failing mapper is an error ack too. */
    f.map.fail_add = ENOMEM;
    assert_int_equal(map(&f, fd, 2, 0x8000, 0x1000, 0, true), -ENOMEM);
    f.map.fail_add = 0;
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 2);

    /* Unmap must match one mapping exactly. */
    assert_int_equal(unmap(&f, 2, 0x1000, 0x1000), -ENOENT);
    assert_int_equal(unmap(&f, 2, 0x2000, 0x1000), -ENOENT);
    assert_int_equal(unmap(&f, 3, 0x1000, 0x2000), -EINVAL);
    assert_int_equal(f.map.removes, 0);
    assert_int_equal(unmap(&f, 2, 0x1000, 0x2000), 0);
    assert_int_equal(f.map.removes, 1);
    assert_int_equal(tm_live(&f.map), 1);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 1);

    /* Reset removes every mapping that is left. */
    assert_int_equal(map(&f, fd, 2, 0x10000, 0x1000, 0, true), 0);
    assert_int_equal(tm_live(&f.map), 2);
    assert_int_equal(vuf_device_reset(f.dev), 0);
    assert_int_equal(tm_live(&f.map), 0);
    assert_int_equal(f.map.removes, 3);
    assert_int_equal(vuf_frontend_num_mappings(f.dev), 0);

    /* The channel survives reset: map again after re-activation. */
    fx_activate_ok(&f);
    assert_int_equal(map(&f, fd, 2, 0x1000, 0x2000, 0, true), 0);
    assert_int_equal(tm_live(&f.map), 1);
    close(fd);
    /* destroy removes the rest and releases the mapper */
    vuf_device_destroy(f.dev);
    f.dev = NULL;
    assert_int_equal(tm_live(&f.map), 0);
    assert_int_equal(f.map.releases, 1);
    fx_end(&f);
}

static void test_shmem_region_cases(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    struct vuf_shm_mapper m = {&tmap_ops, &f.map};
    struct vuf_shm_region reg;

    (void)state;
    /* No SHMEM: no region, no message; no BACKEND_REQ: no mapper. */
    fx_begin(&f);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENOTSUP);
    expect_none(&f.be, &f.mark);
    fx_end(&f);

    /* Two regions: an error, cached. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ);
    f.be.shm.nregions = 2;
    f.be.shm.memory_sizes[0] = 4096;
    f.be.shm.memory_sizes[5] = 8192;
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), -ENOTSUP);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), -ENOTSUP);
    expect_seq(&f.be, &f.mark, R(GET_SHMEM_CONFIG));
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENOTSUP);
    fx_end(&f);

    /* No region: cached "none"; a mapper has nothing to map. */
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(SHMEM) | VUF_PROTO_MASK(BACKEND_REQ);
    assert_int_equal(fx_new(&f, &cfg), 0);
    expect_new(&f);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    assert_int_equal(vuf_device_get_shm_region(f.dev, &reg), 0);
    expect_seq(&f.be, &f.mark, R(GET_SHMEM_CONFIG));
    m.opaque = &f.map;
    assert_int_equal(vuf_device_set_shm_mapper(f.dev, &m), -ENODEV);
    fx_end(&f);
}

static void test_map_before_mapper(void **state)
{
    struct fx f;
    struct vuf_frontend_config cfg = fx_cfg(VUF_DEV_GPU, 0);
    int fd;

    (void)state;
    fx_begin(&f);
    f.be.protocol_features |= VUF_PROTO_MASK(BACKEND_REQ) | VUF_PROTO_MASK(SHMEM);
    f.be.shm.nregions = 1;
    f.be.shm.memory_sizes[0] = REGION_LEN;
    assert_int_equal(fx_new(&f, &cfg), 0);
    fx_queues(&f, 2);
    fx_activate_ok(&f);
    fd = memfd_create("shm", MFD_CLOEXEC);
    assert_true(fd >= 0);
    /* No mapper yet (and the region was never asked for): refused, and the
     * device lives on. */
    assert_int_equal(map(&f, fd, 0, 0, 0x1000, 0, true), -ENODEV);
    config_change_ok(&f);
    close(fd);
    /* Unknown back-end requests are refused without killing anything. */
    {
        uint8_t uuid[16] = {0};
        uint64_t ack = 0;

        assert_int_equal(vuf_breq_send(be_breq(&f.be), VUF_BREQ_SHARED_OBJECT_ADD, uuid,
                                       sizeof(uuid), NULL, 0, true, &ack),
                         -EIO);
        assert_true(ack != 0);
    }
    config_change_ok(&f);
    assert_int_equal(atomic_load(&crashes), 0);
    fx_end(&f);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shmem_map),
        cmocka_unit_test(test_shmem_region_cases),
        cmocka_unit_test(test_map_before_mapper),
    };

    fe_test_prepare();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
