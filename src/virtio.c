/* PLACEHOLDER: to be written */
typedef int vuf_placeholder_t;
