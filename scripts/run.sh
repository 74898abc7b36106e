#!/usr/bin/env bash
# The main job on its embedded default: set up, build, start a
# qemu-storage-daemon vhost-user-blk back-end in a temp dir, and probe it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

T=$(mktemp -d /tmp/vuf-run.XXXXXX)
QSD_PID=
cleanup() {
  [ -n "$QSD_PID" ] && kill "$QSD_PID" 2>/dev/null && wait "$QSD_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

echo "starting qemu-storage-daemon (null-co, 1 GiB, 4 queues) on $T/qsd.sock"
qemu-storage-daemon \
  --blockdev driver=null-co,node-name=null0,size=1073741824 \
  --export type=vhost-user-blk,id=exp0,node-name=null0,addr.type=unix,addr.path="$T/qsd.sock",writable=on,num-queues=4 \
  >"$T/qsd.log" 2>&1 &
QSD_PID=$!

./build/vuf probe "$T/qsd.sock" --device-type blk --timeout-ms 5000 "$@"
