/* PLACEHOLDER */
typedef int vuf_placeholder_t;
