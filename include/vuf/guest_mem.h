/* PLACEHOLDER header: to be written */
#ifndef VUF_guest_mem_H
#define VUF_guest_mem_H
#endif
