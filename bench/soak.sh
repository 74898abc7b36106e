#!/usr/bin/env bash
# The soak and scale runs recorded in docs/soak.md, with the machine state
# around them:
#   vuf-soak cycles --backend ref   ($CYCLES life cycles, sample every $EVERY)
#   vuf-soak cycles --backend qsd
#   vuf-soak scale --devices $DEVICES (4 queues each)
# Usage: bench/soak.sh [BUILD_DIR]        (default: build)
# Environment: CYCLES (1000), EVERY (100), DEVICES (64).
# Exit status: non-zero if any run failed (each run still happens).
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
CYCLES=${CYCLES:-1000}
EVERY=${EVERY:-100}
DEVICES=${DEVICES:-64}
SOAK=$BUILD/bench/vuf-soak
[ -x "$SOAK" ] || { echo "soak: $SOAK not built (ninja -C $BUILD)" >&2; exit 1; }

echo "# machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
BT=$(jq -r '.[] | select(.name=="buildtype") | .value' "$BUILD/meson-info/intro-buildoptions.json" 2>/dev/null || echo '?')
echo "# vuf $(git describe --always --dirty 2>/dev/null || echo '?'), build dir $BUILD (buildtype $BT)"
echo "# $(qemu-storage-daemon --version | head -1)"
echo "# uptime before: $(uptime)"
rc=0
run() {
  echo
  echo "\$ $*"
  "$@" || { echo "exit status $?"; rc=1; }
}
run "$SOAK" cycles --backend ref --cycles "$CYCLES" --every "$EVERY"
run "$SOAK" cycles --backend qsd --cycles "$CYCLES" --every "$EVERY"
run "$SOAK" scale --devices "$DEVICES" --queues 4
echo
echo "# uptime after: $(uptime)"
exit $rc
