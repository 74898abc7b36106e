// SPDX-License-Identifier: MIT
// The public headers as a C++ VMM sees them: every header compiles as
// C++17 with warnings as errors, and the C API links from C++ (extern "C").
#include <vuf/vuf.h>

#include <cerrno>
#include <cstring>

int main()
{
    // A few calls across the layers, resolved against libvuf: a name
    // mangled by a missing extern "C" would fail to link.
    const char *name = vuf_request_name(VUF_REQ_GET_FEATURES);
    const char *err = vuf_strerror(-ECONNRESET);
    struct vuf_guest_mem *mem = nullptr;

    if (!name || std::strcmp(name, "GET_FEATURES") != 0 || !err)
        return 1;
    if (vuf_guest_mem_new_simple(0x100000, 1 << 20, &mem) != 0)
        return 1;
    vuf_guest_mem_free(mem);
    return 0;
}
