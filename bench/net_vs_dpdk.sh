#!/usr/bin/env bash
# vhost-user-net benchmark: vuf's front-end and driver against DPDK's own
# front-end (virtio-user), both driving the SAME dpdk-testpmd vhost PMD
# back-end, interleaved in one run (A B A B ...) so that drift on a shared
# machine hits both.
#
# Per case (frame size x mode) one back-end testpmd is started and then
# driven in turn by
#   A  dpdk-testpmd --vdev net_virtio_user0,path=SOCK,queues=1,packed_vq=0|1
#      (a second process; its rate is read from its own --stats-period lines:
#      the mean of the per-second samples after the first, which includes
#      the start; a mean like vuf's own frames / elapsed time, so that a dip
#      on the shared machine counts against both alike)
#   Z  vuf net SOCK bench --busy-poll --zero-copy (bursts of 32): frames
#      built in the TX slots (tx: 26 header bytes written per frame, as
#      txonly writes its headers into prebuilt mbufs; rt: nothing written,
#      as io forwards frames untouched) and received where the device wrote
#      them (counted, not read, as rxonly and io leave mbufs): the case that
#      does what DPDK's front-end does, and the one the target is on
#   B  vuf net SOCK bench --busy-poll: every frame copied in and out
#      (vuf_net_tx_burst / vuf_net_rx_burst), and
#   b  vuf net SOCK bench --zero-copy (eventfd mode; reported, not part of
#      the target)
# Modes:
#   tx  back-end rxonly,  DPDK txonly,           vuf --mode tx  (front-end sends)
#   rx  back-end txonly,  DPDK rxonly,           vuf --mode rx  (front-end receives)
#   rt  back-end macswap, DPDK io + --tx-first,  vuf --mode rt --window 32
#       (32 frames circulating: frames back per second)
# The back-end forwards on CPU 1; both front-ends poll on CPU 0 (DPDK with
# --main-lcore=1, vuf under taskset -c 0), so neither shares a core with the
# back-end's forwarding loop.
# Cost per packet: one polling core per front-end, so CPU cycles per packet
# are the core's clock (from /proc/cpuinfo) divided by the packet rate.
#
# Usage: bench/net_vs_dpdk.sh [--ring split|packed] [BUILD_DIR]   (default split, build)
# Environment: REPS (3), SECS (5), SIZES ("64 1500"), MODES ("tx rx rt"),
#   EVENTFD=0 drops the vuf eventfd runs.
# Needs dpdk-testpmd (Debian dpdk-dev), jq, taskset, a built tree.
set -euo pipefail
cd "$(dirname "$0")/.."

RING=split
BUILD=build
while [ $# -gt 0 ]; do
  case "$1" in
    --ring) RING=${2:?--ring wants split or packed}; shift 2 ;;
    --ring=*) RING=${1#--ring=}; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) BUILD=$1; shift ;;
  esac
done
case "$RING" in
  split) PACKED=0 ;;
  packed) PACKED=1 ;;
  *) echo "bench: --ring wants split or packed, not '$RING'" >&2; exit 2 ;;
esac
REPS=${REPS:-3}
SECS=${SECS:-5}
SIZES=${SIZES:-64 1500}
MODES=${MODES:-tx rx rt}
EVENTFD=${EVENTFD:-1}
VUF=$BUILD/vuf
TESTPMD=${TESTPMD:-dpdk-testpmd}

[ -x "$VUF" ] || { echo "bench: $VUF not built (ninja -C $BUILD)" >&2; exit 1; }
for c in "$TESTPMD" jq taskset; do
  command -v "$c" >/dev/null || { echo "bench: $c not installed" >&2; exit 1; }
done
VUF_RING=()
if [ "$PACKED" = 1 ]; then
  # Until `vuf net bench --ring packed` exists there is nothing to compare.
  if ! "$VUF" net --help 2>&1 | grep -q -- '--ring'; then
    echo "bench: skipped: vuf net has no --ring option yet (packed rings for vuf net bench are not implemented)"
    exit 0
  fi
  VUF_RING=(--ring packed)
fi

T=$(mktemp -d /tmp/vuf-netbench.XXXXXX)
BE_PID=
cleanup() {
  [ -n "$BE_PID" ] && { kill -INT "$BE_PID" 2>/dev/null || true; wait "$BE_PID" 2>/dev/null || true; }
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g'; }

# Back-end for MODE and SIZE on $T/vh.sock, forwarding on lcore 1.
be_start() { # MODE SIZE
  local fwd
  case "$1" in tx) fwd=rxonly ;; rx) fwd=txonly ;; rt) fwd=macswap ;; esac
  rm -f "$T/vh.sock"
  "$TESTPMD" -l 0,1 --main-lcore=0 --no-huge -m 1024 --no-pci --no-shconf \
    --file-prefix="vufnb-be-$$" --vdev "net_vhost0,iface=$T/vh.sock,queues=1" \
    -- --total-num-mbufs=16384 --stats-period=3600 --forward-mode=$fwd \
    --txpkts="$2" --nb-cores=1 -a >"$T/be.log" 2>&1 &
  BE_PID=$!
  for _ in $(seq 1 1000); do
    [ -S "$T/vh.sock" ] && return 0
    kill -0 "$BE_PID" 2>/dev/null || { echo "bench: back-end testpmd died:" >&2; cat "$T/be.log" >&2; exit 1; }
    sleep 0.01
  done
  echo "bench: back-end testpmd made no socket" >&2; exit 1
}

be_stop() {
  kill -INT "$BE_PID" 2>/dev/null || true
  wait "$BE_PID" 2>/dev/null || true
  BE_PID=
}

# DPDK virtio-user for SECS (+3 s to start): prints its packet rate (pps).
dpdk_run() { # MODE SIZE
  local fwd extra=() col
  case "$1" in
    tx) fwd=txonly; col=Tx-pps ;;
    rx) fwd=rxonly; col=Rx-pps ;;
    rt) fwd=io; col=Rx-pps; extra=(--tx-first) ;;
  esac
  timeout -s INT "$((SECS + 3))" "$TESTPMD" -l 0,1 --main-lcore=1 --no-huge -m 1024 --no-pci \
    --no-shconf --single-file-segments --file-prefix="vufnb-vu-$$" \
    --vdev "net_virtio_user0,path=$T/vh.sock,queues=1,packed_vq=$PACKED" \
    -- --total-num-mbufs=16384 --stats-period=1 --forward-mode=$fwd --txpkts="$2" \
    --nb-cores=1 -a "${extra[@]}" >"$T/fe.log" 2>&1 || true
  # Per-second samples (testpmd times them itself); the first, since the
  # start, dropped; their mean.
  strip_ansi <"$T/fe.log" | awk -v c="$col:" '$1==c {print $2}' | sed '1d' |
    awk '{s += $1} END {print NR ? s / NR : 0}'
}

# vuf net bench on CPU 0: prints its packet rate (pps).
vuf_run() { # MODE SIZE WAIT COPY
  local extra=()
  [ "$3" = busy ] && extra+=(--busy-poll)
  [ "$4" = zc ] && extra+=(--zero-copy)
  [ "$1" = rt ] && extra+=(--window 32)
  taskset -c 0 "$VUF" net "$T/vh.sock" bench --mode "$1" --size "$2" --seconds "$SECS" \
    --json "${VUF_RING[@]}" "${extra[@]}" | jq -r '.pps'
}

MHZ=$(awk -F: '/^cpu MHz/ {printf "%.0f", $2; exit}' /proc/cpuinfo)
echo "# machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), ${MHZ} MHz), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
BT=$(jq -r '.[] | select(.name=="buildtype") | .value' "$BUILD/meson-info/intro-buildoptions.json" 2>/dev/null || echo '?')
echo "# vuf $(git describe --always --dirty 2>/dev/null || echo '?'), build dir $BUILD (buildtype $BT); $(dpkg-query -W -f='dpdk-dev ${Version}' dpdk-dev 2>/dev/null || echo 'dpdk ?')"
echo "# ring $RING, reps $REPS, $SECS s per run, sizes $SIZES, modes $MODES; back-end on lcore 1, front-ends on CPU 0"
echo "# A: $TESTPMD --vdev net_virtio_user0,path=SOCK,queues=1,packed_vq=$PACKED -- --forward-mode=txonly|rxonly|io(--tx-first) --txpkts=SIZE"
echo "# Z: taskset -c 0 $VUF net SOCK bench --mode tx|rx|rt --size SIZE --seconds $SECS --json --zero-copy --busy-poll [--window 32 in rt]"
echo "# B: the same without --zero-copy (frames copied); b: Z without --busy-poll (eventfd)"
printf '%-4s %-5s %-4s %-6s %-8s %10s\n' rep size mode fe wait mpps

RES="$T/results.txt"
: >"$RES"
record() { # REP SIZE MODE FE WAIT PPS
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RES"
  awk -v r="$1" -v s="$2" -v m="$3" -v f="$4" -v w="$5" -v p="$6" \
    'BEGIN {printf "%-4s %-5s %-4s %-6s %-8s %10.3f\n", r, s, m, f, w, p/1e6}'
}

for rep in $(seq 1 "$REPS"); do
  for size in $SIZES; do
    for mode in $MODES; do
      be_start "$mode" "$size"
      record "$rep" "$size" "$mode" dpdk busy "$(dpdk_run "$mode" "$size")"
      record "$rep" "$size" "$mode" vuf-zc busy "$(vuf_run "$mode" "$size" busy zc)"
      record "$rep" "$size" "$mode" vuf busy "$(vuf_run "$mode" "$size" busy copy)"
      [ "$EVENTFD" = 1 ] && record "$rep" "$size" "$mode" vuf-zc eventfd "$(vuf_run "$mode" "$size" eventfd zc)"
      be_stop
    done
  done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { # SIZE MODE FE WAIT -> median pps of the runs that reported a rate
  awk -F'\t' -v s="$1" -v m="$2" -v f="$3" -v w="$4" '$2==s && $3==m && $4==f && $5==w && $6 > 0 {print $6}' "$RES" | median
}

echo
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
failed=$(awk -F'\t' '$6 == 0' "$RES" | wc -l)
[ "$failed" != 0 ] && echo "# $failed run(s) reported no rate (0.000 above: testpmd too slow to start, or a failure); left out of the medians"
echo "# medians over $REPS runs; cycles/pkt = ${MHZ} MHz / rate (one polling core each)"
# Per rep, vuf and DPDK drove the same back-end one after the other: their
# ratio within a rep is paired, and its median over the reps (paired) is
# less moved by swings of the machine between reps than the ratio of the
# two medians.
paired() { # SIZE MODE -> median over reps of vuf-zc / dpdk on the same back-end
  awk -F'\t' -v s="$1" -v m="$2" '$2==s && $3==m && $5=="busy" && $6 > 0 {
      if ($4=="dpdk") d[$1]=$6; else if ($4=="vuf-zc") z[$1]=$6 }
    END {for (r in d) if (r in z) print z[r]/d[r]}' "$RES" | median
}
printf '%-5s %-4s %10s %10s %10s %10s %10s %8s %8s %8s %12s\n' size mode dpdk_mpps zc_mpps copy_mpps dpdk_cyc zc_cyc zc/dpdk paired copy/dpdk zc_evt_mpps
miss=0
pmiss=0
for size in $SIZES; do
  for mode in $MODES; do
    a=$(col "$size" "$mode" dpdk busy)
    z=$(col "$size" "$mode" vuf-zc busy)
    b=$(col "$size" "$mode" vuf busy)
    e=$( [ "$EVENTFD" = 1 ] && col "$size" "$mode" vuf-zc eventfd || echo 0)
    pr=$(paired "$size" "$mode")
    awk -v s="$size" -v m="$mode" -v a="$a" -v z="$z" -v b="$b" -v e="$e" -v p="$pr" -v hz="$MHZ" 'BEGIN {
      ca = a > 0 ? hz * 1e6 / a : 0; cz = z > 0 ? hz * 1e6 / z : 0
      rz = a > 0 ? z / a : 0; rb = a > 0 ? b / a : 0
      note = (a > 0 && rz < 0.9) ? "  (below 0.9x)" : ""
      if (p > 0 && p < 0.9) note = note "  (paired below 0.9x)"
      printf "%-5s %-4s %10.3f %10.3f %10.3f %10.0f %10.0f %7.2fx %7.2fx %7.2fx %12.3f%s\n", s, m, a/1e6, z/1e6, b/1e6, ca, cz, rz, p, rb, e/1e6, note}'
    awk -v a="$a" -v b="$z" 'BEGIN {exit !(a > 0 && b/a < 0.9)}' && miss=$((miss + 1))
    awk -v p="$pr" 'BEGIN {exit !(p > 0 && p < 0.9)}' && pmiss=$((pmiss + 1))
  done
done
echo "# zc/dpdk = vuf busy-poll zero-copy / DPDK virtio-user (ratio of the medians); target >= 0.9x in every case: $([ $miss = 0 ] && echo met || echo "missed in $miss case(s)")"
echo "# paired = median over reps of that ratio within a rep; >= 0.9x in every case: $([ $pmiss = 0 ] && echo yes || echo "no, below in $pmiss case(s)")"
echo "# copy/dpdk = vuf busy-poll with every frame copied in and out / DPDK (reported, no target)"
