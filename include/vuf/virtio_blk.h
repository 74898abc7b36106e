/* PLACEHOLDER header: to be written */
#ifndef VUF_virtio_blk_H
#define VUF_virtio_blk_H
#endif
