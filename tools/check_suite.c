/* SPDX-License-Identifier: MIT */
/*
 * The checks of `vuf check` that need no ring: handshake, REPLY_ACK,
 * counts, config, state and robustness; and the suite table.
 * References name sections of QEMU's docs/interop/vhost-user.rst ("vhost-user
 * §...") or of virtio 1.2.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_internal.h"
#include "vuf/guest_mem.h"
#include "vuf/log.h"
#include "vuf/virtio.h"
#include "vuf/virtio_blk.h"

#define F_PROTO VUF_BIT(VUF_VHOST_F_PROTOCOL_FEATURES)
#define REPLY_FLAGS (VUF_VERSION | VUF_FLAG_REPLY)
#define NET_F_MQ 22

/* ---- handshake ------------------------------------------------------------- */

static bool hdr_ok(struct chk_ctx *x, const char *name, uint32_t code, const struct vuf_hdr *h)
{
    chk_ev(x, "%s reply: request %u flags 0x%x size %u", name, h->request, h->flags, h->size);
    if (h->request != code)
        chk_ev(x, "  request code %u, not %u", h->request, code);
    if (h->flags != REPLY_FLAGS)
        chk_ev(x, "  flags 0x%x, not exactly VERSION|REPLY (0x5)", h->flags);
    if (h->size != 8)
        chk_ev(x, "  size %u, not 8", h->size);
    return h->request == code && h->flags == REPLY_FLAGS && h->size == 8;
}

static enum chk_status hs_reply_header(struct chk_ctx *x)
{
    bool ok = hdr_ok(x, "GET_FEATURES", VUF_REQ_GET_FEATURES, &x->hs.feat_hdr);

    if (x->hs.pf_err == 0)
        ok = hdr_ok(x, "GET_PROTOCOL_FEATURES", VUF_REQ_GET_PROTOCOL_FEATURES, &x->hs.pf_hdr) && ok;
    return ok ? CHK_PASS : CHK_FAIL;
}

static enum chk_status hs_set_owner(struct chk_ctx *x)
{
    /* SET_OWNER went first with no NEED_REPLY: no reply is due, so the next
     * message must be GET_FEATURES' reply and the connection must live. */
    chk_ev(x, "-> SET_OWNER flags 0x1 size 0, then GET_FEATURES");
    if (x->hs.feat_hdr.request != VUF_REQ_GET_FEATURES)
        return chk_fail(x, "<- request %u flags 0x%x: SET_OWNER was answered (no reply is due)",
                        x->hs.feat_hdr.request, x->hs.feat_hdr.flags);
    chk_ev(x, "<- GET_FEATURES' reply: SET_OWNER accepted silently");
    return CHK_PASS;
}

static enum chk_status hs_features(struct chk_ctx *x)
{
    chk_ev(x, "GET_FEATURES = 0x%016" PRIx64, x->hs.features);
    if (!(x->hs.features & F_PROTO))
        return chk_fail(x, "bit 30 (VHOST_USER_F_PROTOCOL_FEATURES) not offered");
    return CHK_PASS;
}

static enum chk_status hs_protocol_features(struct chk_ctx *x)
{
    uint64_t f;
    int r;

    if (!(x->hs.features & F_PROTO))
        return chk_skip(x, "PROTOCOL_FEATURES (bit 30) not offered");
    chk_ev(x, "GET_PROTOCOL_FEATURES = 0x%" PRIx64, x->hs.pf_offered);
    chk_ev(x, "SET_PROTOCOL_FEATURES 0x%" PRIx64 ": %s", x->hs.pf_offered & CHK_PF_ACK,
           x->hs.set_pf_err ? vuf_strerror(x->hs.set_pf_err) : "accepted");
    if (x->hs.set_pf_err)
        return chk_fail(x, "SET_PROTOCOL_FEATURES with a subset of the offer was refused");
    /* The subset must now be in force: ask again, the answer is the offer. */
    r = vuf_client_get_protocol_features(x->c, &f);
    if (r < 0)
        return chk_err(x, r, "GET_PROTOCOL_FEATURES after SET");
    chk_ev(x, "GET_PROTOCOL_FEATURES again = 0x%" PRIx64, f);
    if (f != x->hs.pf_offered)
        return chk_fail(x, "the offer changed between two GET_PROTOCOL_FEATURES");
    return CHK_PASS;
}

static enum chk_status hs_unknown_bits(struct chk_ctx *x)
{
    uint64_t unknown = x->hs.pf_offered & ~(uint64_t)VUF_PROTO_KNOWN_MASK;

    if (x->hs.pf_err)
        return chk_skip(x, "PROTOCOL_FEATURES (bit 30) not offered");
    chk_ev(x, "offered 0x%" PRIx64 ", bits the spec defines 0x%" PRIx64, x->hs.pf_offered,
           (uint64_t)VUF_PROTO_KNOWN_MASK);
    if (unknown)
        return chk_fail(x, "undefined protocol bits offered: 0x%" PRIx64, unknown);
    return CHK_PASS;
}

/* ---- REPLY_ACK ------------------------------------------------------------- */

/* One request with NEED_REPLY: exactly one well-formed ack; *ack its value. */
static int one_ack(struct chk_ctx *x, uint32_t code, const void *p, uint32_t size, uint64_t *ack)
{
    struct vuf_msg m;
    int r = chk_raw_send(x, code, VUF_VERSION | VUF_FLAG_NEED_REPLY, p, size, NULL, 0);

    if (r < 0)
        return r;
    r = chk_raw_recv(x, &m, x->o->timeout_ms);
    if (r < 0)
        return r;
    vuf_msg_close_fds(&m);
    if (m.hdr.request != code || m.hdr.flags != REPLY_FLAGS || m.hdr.size != 8) {
        chk_ev(x, "   not an ack of %s (want request %u flags 0x5 size 8)", vuf_request_name(code),
               code);
        return -EPROTO;
    }
    *ack = m.payload.u64;
    return 0;
}

static enum chk_status ra_one_ack(struct chk_ctx *x)
{
    struct vuf_vring_state st = {.index = 0, .num = 64};
    /* the offer minus what would change how rings are accessed */
    uint64_t feat = x->hs.features &
                    ~(VUF_BIT(VUF_VHOST_F_LOG_ALL) | VUF_BIT(VUF_VIRTIO_F_ACCESS_PLATFORM)),
             ack;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_REPLY_ACK))
        return chk_skip(x, "REPLY_ACK not offered");
    r = one_ack(x, VUF_REQ_SET_FEATURES, &feat, 8, &ack);
    if (r < 0)
        return chk_err(x, r, "SET_FEATURES with NEED_REPLY");
    if (ack != 0)
        return chk_fail(x, "SET_FEATURES with the offered features was nacked (%" PRIu64 ")", ack);
    r = one_ack(x, VUF_REQ_SET_VRING_NUM, &st, sizeof(st), &ack);
    if (r < 0)
        return chk_err(x, r, "SET_VRING_NUM with NEED_REPLY");
    if (ack != 0)
        return chk_fail(x, "SET_VRING_NUM(0, 64) was nacked (%" PRIu64 ")", ack);
    /* A second ack would now stand where GET_FEATURES' reply belongs. */
    r = chk_sync(x);
    if (r < 0)
        return r == -EPROTO ? chk_fail(x, "a second reply followed the ack")
                            : chk_err(x, r, "sync");
    return CHK_PASS;
}

static enum chk_status ra_reject(struct chk_ctx *x)
{
    uint64_t qn = 0, ack;
    struct vuf_vring_state st;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_REPLY_ACK))
        return chk_skip(x, "REPLY_ACK not offered");
    if (chk_pf(x, VUF_PROTO_F_MQ) && vuf_client_get_queue_num(x->c, &qn) == 0)
        chk_ev(x, "GET_QUEUE_NUM = %" PRIu64, qn);
    /* An index no back-end serves: past any queue count and any 8-bit
     * kick/call index, but in range for a u32. */
    st = (struct vuf_vring_state){.index = 1024, .num = 64};
    r = one_ack(x, VUF_REQ_SET_VRING_NUM, &st, sizeof(st), &ack);
    if (r < 0) {
        /* Here a hang-up or silence is the violation itself, not a reason
         * the rule could not be judged. */
        chk_disconnect(x);
        return chk_fail(x, "no non-zero ack: %s",
                        r == -EPROTO ? "a malformed reply" : vuf_strerror(r));
    }
    if (ack == 0)
        return chk_fail(x, "queue index 1024 accepted (ack 0)");
    r = chk_sync(x);
    if (r < 0)
        return r == -EPROTO ? chk_fail(x, "a second reply followed the nack")
                            : chk_err(x, r, "sync after the nack");
    return CHK_PASS;
}

/* ---- counts ---------------------------------------------------------------- */

/* The config bytes [0, off + width) read from offset 0; the field out. */
static int read_config_at(struct chk_ctx *x, uint32_t off, void *out, uint32_t width)
{
    uint8_t buf[VUF_CONFIG_MAX];
    int r = vuf_client_get_config(x->c, 0, VUF_CONFIG_FLAG_WRITABLE, buf, off + width);

    if (r == 0)
        memcpy(out, buf + off, width);
    return r;
}

static int read_config_u16(struct chk_ctx *x, uint32_t off, uint16_t *v)
{
    return read_config_at(x, off, v, 2);
}

static enum chk_status cnt_queue_num(struct chk_ctx *x)
{
    uint64_t qn;
    uint16_t cfg;
    uint32_t off;
    unsigned mq_bit;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_MQ))
        return chk_skip(x, "MQ not offered");
    r = vuf_client_get_queue_num(x->c, &qn);
    if (r < 0)
        return chk_err(x, r, "GET_QUEUE_NUM");
    chk_ev(x, "GET_QUEUE_NUM = %" PRIu64, qn);
    if (qn == 0)
        return chk_fail(x, "zero queues");
    if (x->o->device_type == VUF_DEV_BLK) {
        off = 34; /* virtio_blk_config.num_queues */
        mq_bit = VUF_BLK_F_MQ;
    } else if (x->o->device_type == VUF_DEV_NET) {
        off = 8; /* virtio_net_config.max_virtqueue_pairs */
        mq_bit = NET_F_MQ;
    } else {
        return chk_skip(x, "no config field to compare with for this device type");
    }
    if (!chk_pf(x, VUF_PROTO_F_CONFIG))
        return chk_skip(x, "CONFIG not offered: nothing to compare GET_QUEUE_NUM with");
    if (!(x->hs.features & VUF_BIT(mq_bit)))
        return chk_skip(x, "the device's MQ feature not offered: the config field is unset");
    /* Read from offset 0 and slice: a back-end that ignores GET_CONFIG's
     * offset fails config.offset, not this check. */
    r = read_config_u16(x, off, &cfg);
    if (r < 0)
        return chk_err(x, r, "GET_CONFIG of the queue count");
    chk_ev(x, "config %s = %u (offset %u)",
           x->o->device_type == VUF_DEV_NET ? "max_virtqueue_pairs" : "num_queues", cfg, off);
    /* blk: queues; net: GET_QUEUE_NUM counts queue pairs (vhost-user
     * §Multiple queue support, "queue pairs" for net). */
    if (qn != cfg)
        return chk_fail(x, "GET_QUEUE_NUM %" PRIu64 " != config %u", qn, cfg);
    return CHK_PASS;
}

static enum chk_status cnt_max_slots(struct chk_ctx *x)
{
    uint64_t n;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_CONFIGURE_MEM_SLOTS))
        return chk_skip(x, "CONFIGURE_MEM_SLOTS not offered");
    r = vuf_client_get_max_mem_slots(x->c, &n);
    if (r < 0)
        return chk_err(x, r, "GET_MAX_MEM_SLOTS");
    chk_ev(x, "GET_MAX_MEM_SLOTS = %" PRIu64, n);
    if (n == 0)
        return chk_fail(x, "zero memory slots");
    return CHK_PASS;
}

#define REGION_SZ 0x10000ull
#define REGION_GPA(i) (0x100000000ull + (uint64_t)(i)*0x100000ull)

static enum chk_status cnt_mem_table(struct chk_ctx *x)
{
    struct vuf_guest_mem *gm = NULL;
    struct vuf_mem_region regs[VUF_MEM_TABLE_MAX];
    int fds[VUF_MEM_TABLE_MAX];
    unsigned n = VUF_MEM_TABLE_MAX;
    uint64_t slots;
    enum chk_status st;
    int r;

    if (chk_pf(x, VUF_PROTO_F_CONFIGURE_MEM_SLOTS) &&
        vuf_client_get_max_mem_slots(x->c, &slots) == 0 && slots < n)
        n = (unsigned)slots;
    r = vuf_guest_mem_new(&gm);
    for (unsigned i = 0; r == 0 && i < n; i++)
        r = vuf_guest_mem_add_memfd(gm, REGION_GPA(i), REGION_SZ);
    if (r == 0)
        r = vuf_guest_mem_mem_table(gm, regs, fds, n) == (int)n ? 0 : -EINVAL;
    if (r < 0) {
        vuf_guest_mem_free(gm);
        chk_ev(x, "guest memory: %s", vuf_strerror(r));
        return CHK_ERROR;
    }
    chk_ev(x, "-> SET_MEM_TABLE with %u regions (%u fds)%s", n, n,
           chk_pf(x, VUF_PROTO_F_REPLY_ACK) ? " NEED_REPLY" : ", then GET_FEATURES");
    r = vuf_client_set_mem_table(x->c, regs, fds, n);
    if (r == 0 && !chk_pf(x, VUF_PROTO_F_REPLY_ACK))
        r = chk_sync(x);
    st = r == 0 ? CHK_PASS : chk_err(x, r, "SET_MEM_TABLE");
    if (r == 0)
        chk_ev(x, "<- accepted");
    vuf_guest_mem_free(gm);
    return st;
}

/* Region i of gm as the wire describes it; returns its fd (borrowed). */
static int region_of(const struct vuf_guest_mem *gm, unsigned i, struct vuf_mem_region *reg)
{
    struct vuf_guest_region gr;

    vuf_guest_mem_region(gm, i, &gr);
    *reg = (struct vuf_mem_region){.guest_phys_addr = gr.gpa,
                                   .memory_size = gr.size,
                                   .userspace_addr = (uint64_t)(uintptr_t)gr.host,
                                   .mmap_offset = gr.fd_offset};
    return gr.fd;
}

static enum chk_status cnt_add_rem(struct chk_ctx *x)
{
    struct vuf_guest_mem *gm = NULL;
    uint64_t slots;
    unsigned n, added = 0;
    enum chk_status st = CHK_PASS;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_CONFIGURE_MEM_SLOTS))
        return chk_skip(x, "CONFIGURE_MEM_SLOTS not offered");
    r = vuf_client_get_max_mem_slots(x->c, &slots);
    if (r < 0)
        return chk_err(x, r, "GET_MAX_MEM_SLOTS");
    n = slots > 512 ? 512 : (unsigned)slots;
    chk_ev(x, "GET_MAX_MEM_SLOTS = %" PRIu64 ": adding %u regions with ADD_MEM_REG", slots, n);
    r = vuf_guest_mem_new(&gm);
    for (unsigned i = 0; r == 0 && i < n; i++)
        r = vuf_guest_mem_add_memfd(gm, REGION_GPA(i), REGION_SZ);
    if (r < 0) {
        vuf_guest_mem_free(gm);
        chk_ev(x, "guest memory: %s", vuf_strerror(r));
        return CHK_ERROR;
    }
    for (unsigned i = 0; i < n; i++) {
        struct vuf_mem_region reg;
        int fd = region_of(gm, i, &reg);

        r = vuf_client_add_mem_reg(x->c, &reg, fd);
        if (r < 0) {
            chk_ev(x, "-> ADD_MEM_REG #%u gpa 0x%" PRIx64 " size 0x%" PRIx64, i + 1,
                   reg.guest_phys_addr, reg.memory_size);
            st = chk_err(x, r, "ADD_MEM_REG");
            goto out;
        }
        added++;
    }
    if (!chk_pf(x, VUF_PROTO_F_REPLY_ACK) && (r = chk_sync(x)) < 0) {
        st = chk_err(x, r, "sync after ADD_MEM_REG");
        goto out;
    }
    chk_ev(x, "<- %u regions accepted", added);
    for (unsigned i = 0; i < added; i++) {
        struct vuf_mem_region reg;

        region_of(gm, i, &reg);
        r = vuf_client_rem_mem_reg(x->c, &reg);
        if (r < 0) {
            chk_ev(x, "-> REM_MEM_REG #%u gpa 0x%" PRIx64, i + 1, reg.guest_phys_addr);
            st = chk_err(x, r, "REM_MEM_REG");
            goto out;
        }
    }
    if (!chk_pf(x, VUF_PROTO_F_REPLY_ACK) && (r = chk_sync(x)) < 0) {
        st = chk_err(x, r, "sync after REM_MEM_REG");
        goto out;
    }
    chk_ev(x, "<- %u regions removed", added);
out:
    vuf_guest_mem_free(gm);
    return st;
}

/* ---- config ---------------------------------------------------------------- */

static enum chk_status cfg_offset(struct chk_ctx *x)
{
    uint8_t full[VUF_CONFIG_MAX], win[VUF_CONFIG_MAX];
    uint32_t len = chk_config_len(x);
    static const uint32_t sizes[] = {1, 2, 4, 8};
    unsigned windows = 0;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_CONFIG))
        return chk_skip(x, "CONFIG not offered");
    if (!len)
        return chk_skip(x, "no config layout known: give --device-type");
    r = vuf_client_get_config(x->c, 0, VUF_CONFIG_FLAG_WRITABLE, full, len);
    if (r < 0)
        return chk_err(x, r, "GET_CONFIG offset 0 whole config");
    chk_ev(x, "GET_CONFIG offset 0 size %u: read", len);
    {
        uint32_t i = 1;

        while (i < len && full[i] == full[0])
            i++;
        if (i == len)
            return chk_skip(x,
                            "every config byte is 0x%02x: a window at the wrong offset would "
                            "read the same, so the rule cannot be observed",
                            full[0]);
    }
    /* Every window of 1, 2, 4 and 8 bytes at every offset must be the
     * matching slice of the whole (vhost-user §GET_CONFIG: "offset within
     * the config space"). */
    for (unsigned s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (uint32_t off = 0; off + sizes[s] <= len; off++) {
            r = vuf_client_get_config(x->c, off, VUF_CONFIG_FLAG_WRITABLE, win, sizes[s]);
            if (r < 0) {
                chk_ev(x, "-> GET_CONFIG offset %u size %u", off, sizes[s]);
                return chk_err(x, r, "GET_CONFIG window");
            }
            windows++;
            if (memcmp(win, full + off, sizes[s]) != 0) {
                char got[40] = "", want[40] = "";

                for (uint32_t i = 0; i < sizes[s]; i++) {
                    snprintf(got + 2 * i, 3, "%02x", win[i]);
                    snprintf(want + 2 * i, 3, "%02x", full[off + i]);
                }
                chk_ev(x, "-> GET_CONFIG offset %u size %u", off, sizes[s]);
                chk_ev(x, "<- bytes %s; the whole config has %s there", got, want);
                if (off > 0 && memcmp(win, full, sizes[s]) == 0)
                    chk_ev(x, "   (the bytes at offset 0: the offset was ignored)");
                return chk_fail(x, "window %u of %u read the wrong bytes", windows, windows);
            }
        }
    }
    chk_ev(x, "%u windows (sizes 1, 2, 4, 8 at every offset) match", windows);
    return CHK_PASS;
}

static enum chk_status cfg_set(struct chk_ctx *x)
{
    uint8_t old, want, got;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_CONFIG))
        return chk_skip(x, "CONFIG not offered");
    if (x->o->device_type != VUF_DEV_BLK)
        return chk_skip(x, "no writable config field known for this device type");
    if (!(x->hs.features & VUF_BIT(VUF_BLK_F_CONFIG_WCE)))
        return chk_skip(x, "blk CONFIG_WCE not offered: no writable field");
    /* virtio 1.2 §5.2.4: writeback (offset 32) is writable with CONFIG_WCE. */
    r = read_config_at(x, 32, &old, 1);
    if (r < 0)
        return chk_err(x, r, "GET_CONFIG writeback");
    want = old ? 0 : 1;
    chk_ev(x, "writeback = %u; -> SET_CONFIG offset 32 size 1 value %u", old, want);
    r = vuf_client_set_config(x->c, 32, VUF_CONFIG_FLAG_WRITABLE, &want, 1);
    if (r == 0 && !chk_pf(x, VUF_PROTO_F_REPLY_ACK))
        r = chk_sync(x);
    if (r < 0)
        return chk_err(x, r, "SET_CONFIG writeback");
    r = read_config_at(x, 32, &got, 1);
    if (r < 0)
        return chk_err(x, r, "GET_CONFIG after SET_CONFIG");
    chk_ev(x, "<- GET_CONFIG offset 0 size 33: writeback = %u", got);
    vuf_client_set_config(x->c, 32, VUF_CONFIG_FLAG_WRITABLE, &old, 1);
    if (got != want)
        return chk_fail(x, "SET_CONFIG accepted but the field kept %u", got);
    return CHK_PASS;
}

/* ---- state ----------------------------------------------------------------- */

static int read_all(int fd, uint8_t **buf, size_t *len, int timeout_ms)
{
    size_t cap = 4096;

    *len = 0;
    *buf = malloc(cap);
    if (!*buf)
        return -ENOMEM;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, timeout_ms) <= 0)
            return -ETIMEDOUT;
        if (*len == cap) {
            uint8_t *nb = cap > (64u << 20) ? NULL : realloc(*buf, cap * 2);

            if (!nb)
                return -ENOMEM;
            *buf = nb;
            cap *= 2;
        }
        n = read(fd, *buf + *len, cap - *len);
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        *len += (size_t)n;
    }
}

static int transfer(struct chk_ctx *x, uint32_t dir, uint8_t **data, size_t *len)
{
    int p[2], bfd = -1, r;

    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    r = vuf_client_set_device_state_fd(x->c, dir, VUF_STATE_PHASE_STOPPED,
                                       dir == VUF_STATE_DIR_SAVE ? p[1] : p[0], &bfd);
    chk_ev(x, "-> SET_DEVICE_STATE_FD %s: %s%s", dir == VUF_STATE_DIR_SAVE ? "save" : "load",
           r ? vuf_strerror(r) : "accepted", bfd >= 0 ? " (back-end's own fd)" : "");
    if (dir == VUF_STATE_DIR_SAVE) {
        close(p[1]);
        if (r == 0) {
            r = read_all(bfd >= 0 ? bfd : p[0], data, len, x->o->timeout_ms);
            chk_ev(x, "   read %zu state bytes: %s", *len, r ? vuf_strerror(r) : "EOF");
        }
        close(p[0]);
    } else {
        close(p[0]);
        if (r == 0) {
            int wfd = bfd >= 0 ? bfd : p[1];
            size_t off = 0;

            while (off < *len) {
                ssize_t n = write(wfd, *data + off, *len - off);

                if (n <= 0) {
                    r = -errno;
                    break;
                }
                off += (size_t)n;
            }
            chk_ev(x, "   wrote %zu state bytes", off);
        }
        close(p[1]);
    }
    if (bfd >= 0)
        close(bfd);
    if (r < 0)
        return r;
    r = vuf_client_check_device_state(x->c);
    chk_ev(x, "-> CHECK_DEVICE_STATE: %s", r ? vuf_strerror(r) : "0 (OK)");
    return r;
}

static enum chk_status st_device_state(struct chk_ctx *x)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int r;

    if (!chk_pf(x, VUF_PROTO_F_DEVICE_STATE))
        return chk_skip(x, "DEVICE_STATE not offered");
    r = transfer(x, VUF_STATE_DIR_SAVE, &data, &len);
    if (r < 0) {
        free(data);
        return chk_err(x, r, "save");
    }
    chk_disconnect(x);
    r = chk_connect(x);
    if (r < 0) {
        free(data);
        return CHK_ERROR;
    }
    if (!chk_pf(x, VUF_PROTO_F_DEVICE_STATE)) {
        free(data);
        return chk_fail(x, "the second connection no longer offers DEVICE_STATE");
    }
    r = transfer(x, VUF_STATE_DIR_LOAD, &data, &len);
    free(data);
    if (r < 0)
        return chk_err(x, r, "load into a second connection");
    return CHK_PASS;
}

static enum chk_status st_inflight(struct chk_ctx *x)
{
    struct vuf_inflight in;
    uint64_t qn = 1, want;
    struct stat sb;
    int fd = -1, r;

    if (!chk_pf(x, VUF_PROTO_F_INFLIGHT_SHMFD))
        return chk_skip(x, "INFLIGHT_SHMFD not offered");
    if (chk_pf(x, VUF_PROTO_F_MQ))
        vuf_client_get_queue_num(x->c, &qn);
    if (qn > 64)
        qn = 64;
    r = vuf_client_get_inflight_fd(x->c, (uint16_t)qn, 128, &in, &fd);
    if (r < 0)
        return chk_err(x, r, "GET_INFLIGHT_FD");
    /* vhost-user §Inflight I/O tracking: per queue a 16-byte header and a
     * 16-byte descriptor state per ring entry (split layout). */
    want = qn * (16 + 16 * 128);
    chk_ev(x, "-> GET_INFLIGHT_FD num_queues %" PRIu64 " queue_size 128", qn);
    chk_ev(x, "<- mmap_size %" PRIu64 " mmap_offset %" PRIu64 " fd %s", in.mmap_size,
           in.mmap_offset, fd >= 0 ? "yes" : "none");
    if (fd < 0)
        return chk_fail(x, "no inflight area although INFLIGHT_SHMFD was negotiated");
    r = fstat(fd, &sb);
    close(fd);
    if (in.mmap_size < want)
        return chk_fail(x,
                        "area of %" PRIu64 " bytes, %" PRIu64 " queues x 128 entries need %" PRIu64,
                        in.mmap_size, qn, want);
    if (r < 0 || (uint64_t)sb.st_size < in.mmap_offset + in.mmap_size)
        return chk_fail(x, "the fd holds %lld bytes, less than offset + size",
                        (long long)sb.st_size);
    return CHK_PASS;
}

static enum chk_status st_reconnect(struct chk_ctx *x)
{
    struct vuf_conn *conn = NULL;
    uint64_t f;
    int r;

    chk_disconnect(x);
    chk_ev(x, "closed the connection; connecting again");
    r = vuf_conn_connect(x->o->socket, x->o->timeout_ms, &conn);
    if (r < 0) {
        chk_ev(x, "connect: %s", vuf_strerror(r));
        /* Not a spec rule: some back-ends serve one front-end and exit. */
        x->reconnect_err = r;
        return chk_skip(x, "the back-end does not accept a new front-end after the first "
                           "disconnects (it serves one connection)");
    }
    vuf_conn_set_timeout(conn, x->o->timeout_ms);
    r = vuf_client_new(conn, &x->c);
    if (r < 0)
        return CHK_ERROR;
    x->conns++;
    memset(&x->hs, 0, sizeof(x->hs));
    r = vuf_client_get_features(x->c, &f);
    if (r < 0)
        return chk_err(x, r, "GET_FEATURES on the new connection");
    chk_ev(x, "<- GET_FEATURES 0x%" PRIx64 " on the new connection", f);
    x->dirty = true; /* this connection skipped the handshake */
    return CHK_PASS;
}

/* ---- robustness (--hostile) ------------------------------------------------ */

/* After a hostile message: the back-end answered with an error, ignored it
 * or closed; then a new front-end must still be served. */
static enum chk_status hostile_after(struct chk_ctx *x, uint32_t code, bool expect_ack,
                                     bool nack_possible)
{
    struct vuf_msg m;
    int r = chk_raw_recv(x, &m, expect_ack ? x->o->timeout_ms : x->o->settle_ms);
    enum chk_status st = CHK_PASS;

    if (r == 0) {
        vuf_msg_close_fds(&m);
        if (nack_possible && m.hdr.request == code && m.hdr.size == 8 && m.payload.u64 != 0) {
            chk_ev(x, "   answered with an error");
        } else {
            chk_ev(x, "   answered as if the message were valid");
            st = CHK_FAIL;
        }
    } else if (r == -ECONNRESET || r == -ECONNABORTED) {
        chk_ev(x, "   the back-end closed the connection");
    } else if (r == -ETIMEDOUT && expect_ack) {
        chk_ev(x, "   no answer to NEED_REPLY and the connection stays open");
        st = CHK_FAIL;
    } else if (r != -ETIMEDOUT) {
        st = CHK_FAIL;
    }
    chk_disconnect(x);
    r = chk_connect(x);
    if (r < 0) {
        chk_ev(x, "a new front-end is not served afterwards");
        return x->reconnect_err && st == CHK_PASS ? CHK_ERROR : CHK_FAIL;
    }
    chk_ev(x, "a new front-end is served afterwards");
    return st;
}

static uint32_t nr_flag(struct chk_ctx *x)
{
    return chk_pf(x, VUF_PROTO_F_REPLY_ACK) ? VUF_FLAG_NEED_REPLY : 0;
}

static enum chk_status h_unknown(struct chk_ctx *x)
{
    uint64_t v = 0;
    int r = chk_raw_send(x, 200, VUF_VERSION | nr_flag(x), &v, 8, NULL, 0);

    if (r < 0)
        return chk_err(x, r, "send");
    return hostile_after(x, 200, nr_flag(x) != 0, true);
}

static enum chk_status h_oversized(struct chk_ctx *x)
{
    static uint8_t buf[VUF_HDR_SIZE + 65536];
    struct vuf_hdr h = {
        .request = VUF_REQ_SET_VRING_NUM, .flags = VUF_VERSION | nr_flag(x), .size = 65536};
    int fd = vuf_conn_fd(vuf_client_conn(x->c));
    size_t off = 0;

    memcpy(buf, &h, sizeof(h));
    chk_ev(x, "-> SET_VRING_NUM flags 0x%x size 65536 (the request takes 8)", h.flags);
    while (off < sizeof(buf)) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        ssize_t n;

        if (poll(&p, 1, x->o->timeout_ms) <= 0 || !(p.revents & POLLOUT))
            break;
        n = send(fd, buf + off, sizeof(buf) - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    chk_ev(x, "   %zu of %zu bytes went out", off, sizeof(buf));
    return hostile_after(x, VUF_REQ_SET_VRING_NUM, nr_flag(x) != 0 && off == sizeof(buf), true);
}

static enum chk_status h_fd_count(struct chk_ctx *x)
{
    int fds[3];
    uint64_t v = 0; /* index 0, with fd */
    enum chk_status st;
    int r;

    for (int i = 0; i < 3; i++)
        fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r = chk_raw_send(x, VUF_REQ_SET_VRING_CALL, VUF_VERSION | nr_flag(x), &v, 8, fds, 3);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    if (r < 0)
        return chk_err(x, r, "send");
    chk_ev(x, "   (SET_VRING_CALL takes at most one fd)");
    st = hostile_after(x, VUF_REQ_SET_VRING_CALL, nr_flag(x) != 0, true);
    return st;
}

static enum chk_status h_stray_reply(struct chk_ctx *x)
{
    int r = chk_raw_send(x, VUF_REQ_GET_FEATURES, VUF_VERSION | VUF_FLAG_REPLY, NULL, 0, NULL, 0);

    if (r < 0)
        return chk_err(x, r, "send");
    chk_ev(x, "   (a front-end request with the REPLY flag)");
    /* Any answer is one too many: GET_FEATURES' answer cannot be told from
     * an error code. */
    return hostile_after(x, VUF_REQ_GET_FEATURES, false, false);
}

/* ---- the suite ------------------------------------------------------------- */

#define VU "vhost-user "
const struct chk_def chk_suite[] = {
    {"handshake.reply-header",
     "a reply has flags VERSION|REPLY, the request's code and its exact size",
     VU "§Message Specification / Header", hs_reply_header, false, false},
    {"handshake.set-owner", "SET_OWNER without NEED_REPLY is accepted and not answered",
     VU "§VHOST_USER_SET_OWNER", hs_set_owner, false, false},
    {"handshake.features", "GET_FEATURES offers VHOST_USER_F_PROTOCOL_FEATURES (bit 30)",
     VU "§Protocol features", hs_features, false, false},
    {"handshake.protocol-features", "GET/SET_PROTOCOL_FEATURES: a subset of the offer is accepted",
     VU "§Protocol features", hs_protocol_features, false, false},
    {"handshake.unknown-bits", "no protocol feature bit the spec does not define is offered",
     VU "§Protocol features", hs_unknown_bits, false, false},
    {"reply-ack.one-ack", "a request with NEED_REPLY gets exactly one u64 ack, 0 on success",
     VU "§REPLY_ACK", ra_one_ack, true, false},
    {"counts.queue-num", "GET_QUEUE_NUM equals the config's queue count (net: pairs)",
     VU "§Multiple queue support; virtio 1.2 §5.1.4, §5.2.4", cnt_queue_num, false, false},
    {"counts.max-mem-slots", "GET_MAX_MEM_SLOTS answers a non-zero count",
     VU "§VHOST_USER_GET_MAX_MEM_SLOTS", cnt_max_slots, false, false},
    {"counts.mem-table", "SET_MEM_TABLE with min(8, max slots) regions is accepted",
     VU "§VHOST_USER_SET_MEM_TABLE", cnt_mem_table, true, false},
    {"counts.add-rem-mem-reg", "ADD_MEM_REG up to GET_MAX_MEM_SLOTS regions, then REM_MEM_REG each",
     VU "§VHOST_USER_ADD_MEM_REG, §VHOST_USER_REM_MEM_REG", cnt_add_rem, true, false},
    {"config.offset", "GET_CONFIG returns the bytes at the requested offset and size, every window",
     VU "§VHOST_USER_GET_CONFIG", cfg_offset, false, false},
    {"config.set-writable", "SET_CONFIG on a writable field (blk writeback) takes effect",
     VU "§VHOST_USER_SET_CONFIG; virtio 1.2 §5.2.6", cfg_set, true, false},
    {"ring.start",
     "a ring runs once kicked and enabled; started but disabled it completes no request",
     VU "§Ring states", chk_ring_start, true, false},
    {"ring.disable", "after SET_VRING_ENABLE 0 no request completes (no side effects); 1 resumes",
     VU "§Ring states", chk_ring_disable, true, false},
    {"ring.get-base", "GET_VRING_BASE stops the ring and returns the next avail index",
     VU "§VHOST_USER_GET_VRING_BASE; §Ring states", chk_ring_get_base, true, false},
    {"ring.restart", "after SET_VRING_BASE the restarted ring continues from that index",
     VU "§VHOST_USER_SET_VRING_BASE", chk_ring_restart, true, false},
    {"ring.event-idx", "with EVENT_IDX a call when the used entry lands at used_event",
     "virtio 1.2 §2.7.10", chk_ring_event_idx, true, false},
    {"io.blk-rw", "blk: a write then a read of the same sectors returns the data",
     "virtio 1.2 §5.2.6", chk_io_blk_rw, true, false},
    {"io.blk-flush", "blk: FLUSH completes with OK when VIRTIO_BLK_F_FLUSH is offered",
     "virtio 1.2 §5.2.6", chk_io_blk_flush, true, false},
    {"io.blk-get-id", "blk: GET_ID returns up to 20 bytes with OK", "virtio 1.2 §5.2.6",
     chk_io_blk_get_id, true, false},
    {"io.blk-discard", "blk: DISCARD of one sector completes with OK when offered",
     "virtio 1.2 §5.2.6", chk_io_blk_discard, true, false},
    {"io.blk-write-zeroes", "blk: WRITE_ZEROES zeroes the sectors when offered",
     "virtio 1.2 §5.2.6", chk_io_blk_write_zeroes, true, false},
    {"io.blk-past-end", "blk: a read past the capacity completes with IOERR", "virtio 1.2 §5.2.6.1",
     chk_io_blk_past_end, true, false},
    {"io.fs-init", "fs: FUSE_INIT on request queue 1 is answered (7.x, no error)",
     "virtio 1.2 §5.11.6", chk_io_fs_init, true, false},
    {"io.net-tx", "net: a frame on the TX queue is consumed (a frame back on RX is reported)",
     "virtio 1.2 §5.1.6.2", chk_io_net_tx, true, false},
    {"state.device-state", "DEVICE_STATE: saved state loads into a second connection",
     VU "§Migrating back-end state", st_device_state, true, false},
    {"state.inflight", "GET_INFLIGHT_FD returns an area of at least queues x (16 + 16 x size)",
     VU "§Inflight I/O tracking", st_inflight, true, false},
    {"state.reconnect", "a new front-end is served after the first disconnects",
     VU "§Communication (not a MUST)", st_reconnect, true, false},
    /* Late: a back-end that does not check the index may crash here. */
    {"reply-ack.reject", "a rejected request (queue index out of range) gets a non-zero ack",
     VU "§REPLY_ACK", ra_reject, true, false},
    {"hostile.unknown-code", "an unknown request code gets an error or a close; reconnect works",
     VU "§Message types", h_unknown, true, true},
    {"hostile.oversized", "a payload larger than the request's gets an error or a close",
     VU "§Message Specification", h_oversized, true, true},
    {"hostile.fd-count", "a request with more fds than it takes gets an error or a close",
     VU "§VHOST_USER_SET_VRING_CALL", h_fd_count, true, true},
    {"hostile.stray-reply",
     "a request with the REPLY flag (only replies carry it) is refused, ignored or closed",
     VU "§Message Specification / Header", h_stray_reply, true, true},
};
const unsigned chk_suite_len = sizeof(chk_suite) / sizeof(chk_suite[0]);
