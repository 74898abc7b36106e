/* SPDX-License-Identifier: MIT */
/*
 * vuf/virtio_net.h - a virtio-net driver (virtio 1.2 §5.1) over two
 * vuf_virtq (one queue pair), so the front-end can send and receive frames
 * through a vhost-user-net back-end (e.g. DPDK's vhost PMD) and check them.
 *
 * Queue pairs: pair k uses receiveq k = queue 2k and transmitq k = queue
 * 2k + 1; with CTRL_VQ the control queue follows the last pair, at index
 * 2 * max_virtqueue_pairs (§5.1.2). One vuf_net drives one pair.
 *
 * Frames: every buffer starts with a struct vuf_net_hdr_v1 (12 bytes) when
 * VERSION_1 or MRG_RXBUF is negotiated, else with the legacy 10-byte header
 * (no num_buffers); vuf_net_hdr_len() says which. The driver sends no
 * offloads (header zeroed) and acts on none it receives: only the bits
 * below that change the framing (VERSION_1, MRG_RXBUF, ANY_LAYOUT) are
 * acted on. Do not negotiate HASH_REPORT (a 20-byte header) with it.
 *
 * TX: a vuf_net owns `tx_slots` buffers in guest memory, each the header
 * followed by room for one frame of `tx_frame_max` bytes.
 * vuf_net_tx_burst() copies each frame once, into a free slot, writes a zero
 * header before it and makes it available: one descriptor (header and frame
 * adjacent, VERSION_1 or ANY_LAYOUT) or two (legacy). A slot comes back when
 * the device returns it (vuf_net_tx_reclaim(), also done by tx_burst).
 *
 * RX: a vuf_net owns `rx_bufs` device-writable buffers of `rx_buf_len`
 * bytes (header included). vuf_net_rx_fill() posts every buffer not on the
 * ring; vuf_net_rx_burst() takes completed frames, copies each into the
 * caller's buffer (a frame of several buffers under MRG_RXBUF is
 * reassembled there in order), and posts the buffers again (refill).
 * Without MRG_RXBUF, num_buffers is ignored (DPDK 22.11 leaves it unset);
 * with it, each frame's buffer count is checked against what the device
 * can have written.
 *
 * Trust: as vuf/virtq.h. A used entry with a bad id or a length beyond its
 * buffer breaks the queue (-EPROTO from vuf_virtq_get_used); a first
 * buffer shorter than the header, or a num_buffers of 0 or more than the
 * RX buffers the device holds, breaks the driver: every data-path call then
 * returns -EPROTO until vuf_net_reset().
 *
 * Ownership: a vuf_net borrows its two queues (and their guest memory),
 * which must outlive it; its buffers come from the guest memory's bump
 * allocator and are not given back. The caller's frames are only read
 * (TX) or written (RX) during the call. vuf_net_free() frees neither queue.
 *
 * Thread-safety: none; serialize all calls on a vuf_net and its queues.
 * Different vuf_nets (pairs) may run on different threads.
 */
#ifndef VUF_VIRTIO_NET_H
#define VUF_VIRTIO_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vuf/virtq.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The device's feature bits (VUF_NET_F_*) and config-space offsets
 * (VUF_NET_CFG_*) are in vuf/virtio.h, shared with the front-end device. */

/* ------------------------------------------------------------------------ */
/* Wire format (§5.1.6)                                                     */
/* ------------------------------------------------------------------------ */

#define VUF_NET_HDR_F_NEEDS_CSUM 1u
#define VUF_NET_HDR_F_DATA_VALID 2u
#define VUF_NET_HDR_F_RSC_INFO 4u

#define VUF_NET_HDR_GSO_NONE 0u
#define VUF_NET_HDR_GSO_TCPV4 1u
#define VUF_NET_HDR_GSO_UDP 3u
#define VUF_NET_HDR_GSO_TCPV6 4u
#define VUF_NET_HDR_GSO_UDP_L4 5u
#define VUF_NET_HDR_GSO_ECN 0x80u

/* The header of every buffer with VERSION_1 (or legacy with MRG_RXBUF).
 * Little-endian fields. */
struct vuf_net_hdr_v1 {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers; /* buffers of this frame (MRG_RXBUF); 1 otherwise */
};
VUF_STATIC_ASSERT(sizeof(struct vuf_net_hdr_v1) == 12, "virtio_net_hdr_v1");

/* The legacy header without MRG_RXBUF: no num_buffers. */
#define VUF_NET_HDR_LEGACY_LEN 10u
#define VUF_NET_HDR_V1_LEN 12u

/* Header bytes for negotiated `features`: 12 with VERSION_1 or MRG_RXBUF,
 * else 10. */
unsigned vuf_net_hdr_len(uint64_t features);

/* Queue indices (§5.1.2). */
static inline unsigned vuf_net_rx_index(unsigned pair)
{
    return 2 * pair;
}
static inline unsigned vuf_net_tx_index(unsigned pair)
{
    return 2 * pair + 1;
}
static inline unsigned vuf_net_ctrl_index(unsigned max_pairs)
{
    return 2 * max_pairs;
}

/* ------------------------------------------------------------------------ */
/* Config space (§5.1.4)                                                    */
/* ------------------------------------------------------------------------ */

/* Decoded config; a field is meaningful only if its bit in `valid` is set. */
#define VUF_NET_CFG_HAS_MAC 0x01u
#define VUF_NET_CFG_HAS_STATUS 0x02u
#define VUF_NET_CFG_HAS_MAX_VQ_PAIRS 0x04u
#define VUF_NET_CFG_HAS_MTU 0x08u
#define VUF_NET_CFG_HAS_SPEED_DUPLEX 0x10u
#define VUF_NET_CFG_HAS_RSS 0x20u        /* rss_max_* (RSS) */
#define VUF_NET_CFG_HAS_HASH_TYPES 0x40u /* supported_hash_types (RSS or HASH_REPORT) */

struct vuf_net_config {
    unsigned valid; /* VUF_NET_CFG_HAS_* */
    uint8_t mac[6];
    uint16_t status; /* VUF_NET_S_* */
    uint16_t max_virtqueue_pairs;
    uint16_t mtu;
    uint32_t speed; /* Mbit/s; 0xffffffff unknown */
    uint8_t duplex; /* 0 half, 1 full, 0xff unknown */
    uint8_t rss_max_key_size;
    uint16_t rss_max_indirection_table_length;
    uint32_t supported_hash_types;
};

/*
 * Decode `len` bytes of a net config space read from offset 0, for the
 * negotiated `features`: a field counts only if its feature is negotiated
 * (MAC, STATUS, MQ or RSS, MTU, SPEED_DUPLEX, RSS / HASH_REPORT) and it lies wholly
 * inside `len`. Fields not valid are zero. Returns 0 or -EINVAL (NULL
 * pointers). Pure; thread-safe.
 */
int vuf_net_config_decode(const uint8_t *buf, size_t len, uint64_t features,
                          struct vuf_net_config *out);

/* ------------------------------------------------------------------------ */
/* Driver (one queue pair)                                                  */
/* ------------------------------------------------------------------------ */

struct vuf_net;

/* Largest Ethernet frame without FCS, with one VLAN tag. */
#define VUF_NET_FRAME_DEFAULT 1518u
/* Largest frame the driver handles (a 64 KiB GSO frame plus headers). */
#define VUF_NET_FRAME_MAX 65550u

struct vuf_net_opts {
    uint64_t features;     /* negotiated: the driver acts on VERSION_1,
                            * MRG_RXBUF and ANY_LAYOUT */
    unsigned rx_bufs;      /* RX buffers, 1..rx queue size; 0 = queue size */
    uint32_t rx_buf_len;   /* bytes per RX buffer, header included; 0 =
                            * header + VUF_NET_FRAME_DEFAULT. Without
                            * MRG_RXBUF a frame must fit one buffer. */
    unsigned tx_slots;     /* TX buffers, 1..tx queue size; 0 = queue size */
    uint32_t tx_frame_max; /* largest frame sent, 1..VUF_NET_FRAME_MAX;
                            * 0 = VUF_NET_FRAME_DEFAULT */
};

/*
 * A driver on queue pair (rx, tx) (borrowed; both in the same guest memory).
 * Allocates its buffers in guest memory; posts nothing yet (vuf_net_rx_fill).
 * Returns 0, -EINVAL (NULL, bad options, queues in different guest
 * memories, a buffer too small for the header) or -ENOMEM (heap, or no room
 * in guest memory; what it took is given back on failure).
 */
int vuf_net_new(struct vuf_virtq *rx, struct vuf_virtq *tx, const struct vuf_net_opts *opts,
                struct vuf_net **out);

/* Free the driver (not the queues). Stop the back-end first: buffers still
 * on the rings are abandoned. NULL is a no-op. */
void vuf_net_free(struct vuf_net *net);

struct vuf_virtq *vuf_net_rx_virtq(const struct vuf_net *net);
struct vuf_virtq *vuf_net_tx_virtq(const struct vuf_net *net);
unsigned vuf_net_get_hdr_len(const struct vuf_net *net);
/* The largest frame one RX burst can return whole: rx_buf_len - header
 * without MRG_RXBUF, else VUF_NET_FRAME_MAX. */
uint32_t vuf_net_rx_frame_max(const struct vuf_net *net);

/*
 * Spin instead of asking for calls (default off): on, both queues are
 * asked not to signal (vuf_virtq_disable_cb); off, RX asks again. Waiting
 * is the caller's (vuf_virtq_wait, a vuf_virtq_set, or polling the burst
 * calls).
 */
void vuf_net_set_busy_poll(struct vuf_net *net, bool on);

/*
 * Start over: every buffer back to the driver, both queues
 * vuf_virtq_reset(vq, base), the broken state cleared. Only while no
 * back-end uses the rings. Post RX buffers again with vuf_net_rx_fill().
 */
void vuf_net_reset(struct vuf_net *net, uint16_t base);

/* Whether the driver (not only a queue) saw the device misbehave. */
bool vuf_net_broken(const struct vuf_net *net);

/* --- RX ----------------------------------------------------------------- */

/*
 * Post every RX buffer the ring does not hold and kick if the device wants
 * it (the buffers' headers are left as they are: the device writes them). Returns the number posted
 * (>= 0) or -EPROTO (broken), or an error of vuf_virtq_add.
 */
int vuf_net_rx_fill(struct vuf_net *net);

/* One frame for the burst calls. */
struct vuf_net_frame {
    void *data;   /* TX: the frame (only read); RX: where it is copied */
    uint32_t len; /* TX: frame bytes; RX: in, the room at data; out, the
                   * frame's full length (copied: min(in, out)) */
};

/*
 * Take up to n received frames without waiting, copy each into
 * frames[i].data and set frames[i].len to its length (a frame longer than
 * the room is cut; len still says how long it was). Header offloads are
 * dropped. The buffers go back on the ring (and the device is kicked if it
 * wants it) before returning once a batch of them is free (a quarter of
 * the pool, at most 32) or the device holds fewer than that; at any time
 * vuf_net_rx_fill() posts them all. A frame whose buffers the device has not all
 * returned yet (MRG_RXBUF) is finished by a later call.
 * Returns the number of frames (0: none), -EINVAL (frames NULL), or -EPROTO: the queue or the
 * driver is broken (frames taken before the fault in this call are
 * returned first; the next call reports it).
 */
int vuf_net_rx_burst(struct vuf_net *net, struct vuf_net_frame *frames, unsigned n);

/*
 * Zero-copy receive: up to n frames, each handed to fn in place, as the
 * pieces of guest memory the device wrote it into (niov 1, or the
 * buffers of a merged frame with MRG_RXBUF; the header is not included)
 * and its length. The pieces are valid only during the call: the buffers
 * go back to the device afterwards, and refilled as in vuf_net_rx_burst().
 * The memory is shared with the back-end: a misbehaving one could still
 * write it, so copy what must be checked before checking it. fn must not
 * call into this vuf_net. Returns the number of frames (0: none), -EINVAL
 * (no fn), or -EPROTO as vuf_net_rx_burst().
 */
struct iovec;
typedef void (*vuf_net_rx_fn)(void *opaque, const struct iovec *iov, unsigned niov, uint32_t len);
int vuf_net_rx_burst_zc(struct vuf_net *net, vuf_net_rx_fn fn, void *opaque, unsigned n);

/* --- TX ----------------------------------------------------------------- */

/*
 * Take back every TX slot the device returned. Returns how many, or
 * -EPROTO (broken queue).
 */
int vuf_net_tx_reclaim(struct vuf_net *net);

/* Queue frames without kicking (batch several bursts, then vuf_net_tx_kick). */
#define VUF_NET_TX_NO_KICK 0x1u

/*
 * Send up to n frames: reclaim if slots are short, copy each frame into a
 * free slot behind a zero header, make it available, then kick once if the
 * device wants it (unless VUF_NET_TX_NO_KICK). Stops at the first frame
 * without a free slot or ring room, or whose len is 0 or above
 * tx_frame_max. Returns the number queued (0: no room now; retry after the
 * device returns some); when nothing was queued, -EMSGSIZE (frames[0] has
 * a bad length), -EPROTO (broken) or another vuf_virtq_add error.
 */
int vuf_net_tx_burst(struct vuf_net *net, const struct vuf_net_frame *frames, unsigned n,
                     unsigned flags);
/*
 * Zero-copy send, in two steps. vuf_net_tx_slots() reclaims if slots are
 * short and stores in data[0..k) where k (the return, <= n) free slots'
 * frame bytes go, each with room for tx_frame_max bytes; the caller builds
 * frames there. A slot keeps what the last frame sent from it left there,
 * so a caller that sends frames of one shape may rewrite only what changes.
 * vuf_net_tx_commit() then sends the first n of them, frame i being
 * lens[i] bytes at data[i], as vuf_net_tx_burst() would (header, publish,
 * kick). Slots lent and not committed stay free. A commit, and any call
 * that reclaims or sends (vuf_net_tx_reclaim, vuf_net_tx_burst,
 * vuf_net_tx_slots again, vuf_net_reset), takes back what was lent: a
 * later commit then returns -EINVAL.
 * vuf_net_tx_slots: k >= 0 or -EPROTO (broken). vuf_net_tx_commit: the
 * number sent, or when none was, -EINVAL (n more than lent), -EMSGSIZE
 * (lens[0] is 0 or above tx_frame_max), -EPROTO.
 */
int vuf_net_tx_slots(struct vuf_net *net, void **data, unsigned n);
int vuf_net_tx_commit(struct vuf_net *net, const uint32_t *lens, unsigned n, unsigned flags);

/* Kick TX for frames queued with VUF_NET_TX_NO_KICK: vuf_virtq_kick(tx, 0). */
int vuf_net_tx_kick(struct vuf_net *net);
/* TX slots in flight (sent, not yet reclaimed). */
unsigned vuf_net_tx_inflight(const struct vuf_net *net);

/* --- counters ------------------------------------------------------------ */

struct vuf_net_stats {
    uint64_t rx_frames, rx_bytes; /* frames delivered; frame bytes (no header) */
    uint64_t rx_merged;           /* frames that spanned several buffers */
    uint64_t rx_truncated;        /* frames cut to the caller's room */
    uint64_t tx_frames, tx_bytes; /* frames queued; frame bytes */
    uint64_t tx_done;             /* slots reclaimed */
};
void vuf_net_stats(const struct vuf_net *net, struct vuf_net_stats *out);

#ifdef __cplusplus
}
#endif
#endif
