#!/usr/bin/env bash
# A VMM author's view: `meson install` to a prefix, then build a program
# outside the tree with nothing but `pkg-config vuf`, as C11 and as C++17,
# and run it against the installed libvuf.so.0. With an examples directory
# (second argument), build every examples/*.c the same way and run
# blk_vmm against a qemu-storage-daemon file export and net_vmm against
# dpdk-testpmd's vhost PMD (macswap, 2 queue pairs).
set -u
build=$1
examples=${2:-}
cc=${CC:-cc}
cxx=${CXX:-c++}
tmp=$(mktemp -d /tmp/vuf-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" --no-rebuild >"$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log"; echo "FAIL: meson install"; exit 1; }
pc=$(find "$tmp/root" -name vuf.pc | head -n 1)
[ -n "$pc" ] || { echo "FAIL: no vuf.pc installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$tmp/root"
libdir=$(dirname "$(find "$tmp/root" -name 'libvuf.so.0' | head -n 1)")
[ -f "$libdir/libvuf.so.0" ] || { echo "FAIL: libvuf.so.0 not installed"; exit 1; }

cat >"$tmp/vmm.c" <<'C'
#include <errno.h>
#include <string.h>
#include <vuf/vuf.h>
int main(void)
{
    struct vuf_guest_mem *mem = NULL;
    struct vuf_conn *c = NULL;
    int r;

    if (strcmp(vuf_request_name(VUF_REQ_SET_MEM_TABLE), "SET_MEM_TABLE") != 0)
        return 2;
    if (vuf_guest_mem_new_simple(0x100000, 1 << 20, &mem) != 0)
        return 3;
    vuf_guest_mem_free(mem);
    /* No back-end at this path: an immediate, specific error. */
    r = vuf_conn_connect("/nonexistent/vuf.sock", 0, &c);
    return r == -ENOENT ? 0 : 4;
}
C
cp "$tmp/vmm.c" "$tmp/vmm.cc"
flags=$(pkg-config --cflags --libs vuf) || { echo "FAIL: pkg-config vuf"; exit 1; }
$cc -std=c11 -Wall -Wextra -Werror -pedantic "$tmp/vmm.c" -o "$tmp/vmm_c" $flags \
  || { echo "FAIL: C11 build against the installed headers"; exit 1; }
if command -v "$cxx" >/dev/null; then
  $cxx -std=c++17 -Wall -Wextra -Werror -x c++ "$tmp/vmm.cc" -o "$tmp/vmm_cxx" $flags \
    || { echo "FAIL: C++17 build against the installed headers"; exit 1; }
fi
for exe in "$tmp/vmm_c" "$tmp/vmm_cxx"; do
  [ -x "$exe" ] || continue
  LD_LIBRARY_PATH="$libdir" "$exe"; rc=$?
  [ $rc -eq 0 ] || { echo "FAIL: $(basename "$exe") exited $rc"; exit 1; }
  LD_LIBRARY_PATH="$libdir" ldd "$exe" | grep -q "$libdir/libvuf.so.0" \
    || { echo "FAIL: $(basename "$exe") does not use the installed libvuf.so.0"; exit 1; }
done
echo "ok: installed to a prefix; C11 and C++17 programs built with pkg-config and ran"

[ -n "$examples" ] || exit 0
for src in "$examples"/*.c; do
  exe="$tmp/$(basename "$src" .c)"
  $cc -std=c11 -Wall -Wextra -Werror "$src" -o "$exe" $flags \
    || { echo "FAIL: example $(basename "$src") does not build against the installed library"; exit 1; }
done
qsd=$(command -v qemu-storage-daemon) \
  || { echo "FAIL: qemu-storage-daemon missing (scripts/setup.sh installs qemu-system-common)"; exit 1; }
truncate -s 16M "$tmp/disk.img"
"$qsd" --blockdev "driver=file,filename=$tmp/disk.img,node-name=f0" \
  --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$tmp/qsd.sock,writable=on" \
  >"$tmp/qsd.log" 2>&1 &
qsd_pid=$!
trap 'kill $qsd_pid 2>/dev/null; wait $qsd_pid 2>/dev/null; rm -rf "$tmp"' EXIT
LD_LIBRARY_PATH="$libdir" timeout 60 "$tmp/blk_vmm" "$tmp/qsd.sock"; rc=$?
[ $rc -eq 0 ] || { cat "$tmp/qsd.log"; echo "FAIL: examples/blk_vmm exited $rc"; exit 1; }
# The sector blk_vmm wrote is in the file: 512 bytes of 0x5a at offset 0.
want=$(head -c 512 /dev/zero | tr '\0' '\132' | od -An -tx1 | tr -d ' \n')
got=$(head -c 512 "$tmp/disk.img" | od -An -tx1 | tr -d ' \n')
[ "$got" = "$want" ] || { echo "FAIL: disk.img does not hold blk_vmm's sector"; exit 1; }
echo "ok: examples built against the installed library; blk_vmm drove qemu-storage-daemon (data on disk)"

# net_vmm: 2 queue pairs through dpdk-testpmd's vhost PMD in macswap mode.
testpmd=$(command -v dpdk-testpmd) \
  || { echo "FAIL: dpdk-testpmd missing (scripts/setup.sh installs dpdk-dev)"; exit 1; }
"$testpmd" -l 0,1 --no-huge -m 1024 --no-pci --no-shconf --file-prefix "vufex$$" \
  --vdev "net_vhost0,iface=$tmp/net.sock,queues=2" -- --total-num-mbufs=16384 \
  --stats-period=3600 --forward-mode=macswap --nb-cores=1 --rxq=2 --txq=2 -a \
  </dev/null >"$tmp/testpmd.log" 2>&1 &
tp_pid=$!
trap 'kill $qsd_pid $tp_pid 2>/dev/null; wait $qsd_pid $tp_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 300); do
  [ -S "$tmp/net.sock" ] && break
  kill -0 $tp_pid 2>/dev/null || { cat "$tmp/testpmd.log"; echo "FAIL: dpdk-testpmd died"; exit 1; }
  sleep 0.1
done
[ -S "$tmp/net.sock" ] || { cat "$tmp/testpmd.log"; echo "FAIL: dpdk-testpmd made no socket"; exit 1; }
# Its socket is up before it forwards, and it frees what a guest sent in
# between (docs/busy-suite.md): wait for the forwarding start it prints.
for _ in $(seq 1 600); do
  grep -q 'packets/burst=' "$tmp/testpmd.log" && break
  sleep 0.1
done
grep -q 'packets/burst=' "$tmp/testpmd.log" \
  || { cat "$tmp/testpmd.log"; echo "FAIL: dpdk-testpmd did not start forwarding"; exit 1; }
LD_LIBRARY_PATH="$libdir" timeout 60 "$tmp/net_vmm" "$tmp/net.sock" 10000; rc=$?
[ $rc -eq 0 ] || { cat "$tmp/testpmd.log"; echo "FAIL: examples/net_vmm exited $rc"; exit 1; }
echo "ok: net_vmm: 10000 frames per pair through dpdk-testpmd, every byte checked"
