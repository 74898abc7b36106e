/* PLACEHOLDER header: to be written */
#ifndef VUF_virtq_H
#define VUF_virtq_H
#endif
