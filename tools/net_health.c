/* SPDX-License-Identifier: MIT */
#include "net_health.h"

#include <errno.h>
#include <stdio.h>

int net_health(struct vuf_net *net, const struct vuf_virtq *rx, const struct vuf_virtq *tx,
               char *why, size_t len)
{
    int r;

    /* A reclaim that took entries before a bad one returns their count;
     * the next one reports the fault. */
    while ((r = vuf_net_tx_reclaim(net)) > 0)
        ;
    if (r < 0 || vuf_virtq_broken(tx)) {
        snprintf(why, len, "the TX queue is broken (the device returned an invalid used entry)");
        return -EPROTO;
    }
    if (vuf_virtq_broken(rx)) {
        snprintf(why, len, "the RX queue is broken (the device returned an invalid used entry)");
        return -EPROTO;
    }
    if (vuf_net_broken(net)) {
        snprintf(why, len, "the driver is broken (the device wrote an invalid RX header)");
        return -EPROTO;
    }
    return 0;
}
