#!/usr/bin/env bash
# The main job on its embedded default: set up, build, and run `vuf demo`,
# which starts vuf's reference vhost-user-blk back-end in a temp dir and
# walks a device's whole life cycle (negotiate, activate, I/O, sleep,
# snapshot, restore into a fresh back-end, wake, I/O, reset). It cleans up
# after itself and exits 0 only if every step's check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

exec ./build/vuf demo "$@"
