#!/usr/bin/env bash
# vhost-user-blk benchmark: qemu-storage-daemon vs vuf's reference back-end,
# both driven by `vuf blk bench` (vuf as the VMM, a user-space virtio-blk
# driver in the same process), measured in ONE run so the two are compared
# on the same machine state.
#
#   qsd: --blockdev null-co, 1 GiB, --export vhost-user-blk, 1 queue
#   ref: vuf-backend-blk --ram=1G --num-queues=1
#
# For each repetition and each back-end (interleaved, so drift hits both):
#   randread 4 KiB at QD1 (latency) and at QD$DEPTH (IOPS), $SECS seconds each.
# Prints every run, then per back-end and depth the medians over the
# repetitions, and the ratio ref/qsd.
#
# Usage: bench/run.sh [BUILD_DIR]        (default: build)
# Environment: REPS (5), SECS (3), DEPTH (32), BUSY=1 adds busy-poll QD1 runs,
# FLOOR=1 adds, per repetition, the notification round trip with no protocol
# (build/bench/vuf-floor: eventfd, and spinning on shared memory) and prints
# each back-end's QD1 median latency as a ratio to it. POLL=US adds adaptive
# QD1 runs (the driver spins US microseconds before sleeping: --poll-us);
# REF_POLL=US starts the reference back-end with --poll-us=US (it spins on
# its rings with kicks suppressed before sleeping; default 0, off).
# cpu_us: the driver process's user+sys CPU time per request.
# Needs: qemu-storage-daemon, jq; a built tree (ninja -C BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build}
REPS=${REPS:-5}
SECS=${SECS:-3}
DEPTH=${DEPTH:-32}
BUSY=${BUSY:-0}
FLOOR=${FLOOR:-0}
POLL=${POLL:-0}
REF_POLL=${REF_POLL:-0}
VUF=$BUILD/vuf
FLOOR_EXE=$BUILD/bench/vuf-floor
BE=$BUILD/backend/vuf-backend-blk
QSD=${QSD:-qemu-storage-daemon}

for x in "$VUF" "$BE" $([ "$FLOOR" = 1 ] && echo "$FLOOR_EXE"); do
  [ -x "$x" ] || { echo "bench: $x not built (ninja -C $BUILD)" >&2; exit 1; }
done
command -v "$QSD" >/dev/null || { echo "bench: $QSD not installed" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench: jq not installed" >&2; exit 1; }

T=$(mktemp -d /tmp/vuf-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_sock() { # PATH PID
  for _ in $(seq 1 500); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench: back-end for $1 died:" >&2; cat "$T"/*.log >&2; exit 1; }
    sleep 0.01
  done
  echo "bench: no socket $1" >&2; exit 1
}

"$QSD" --blockdev driver=null-co,node-name=null0,size=1073741824 \
  --export type=vhost-user-blk,id=exp0,node-name=null0,addr.type=unix,addr.path="$T/qsd.sock",writable=on,num-queues=1 \
  >"$T/qsd.log" 2>&1 &
PIDS+=($!); wait_sock "$T/qsd.sock" $!
"$BE" --socket-path="$T/ref.sock" --ram=1G --num-queues=1 --poll-us="$REF_POLL" >"$T/ref.log" 2>&1 &
PIDS+=($!); wait_sock "$T/ref.sock" $!

echo "# machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
echo "# $("$QSD" --version | head -1)"
BT=$(jq -r '.[] | select(.name=="buildtype") | .value' "$BUILD/meson-info/intro-buildoptions.json" 2>/dev/null || echo '?')
echo "# vuf $(git describe --always --dirty 2>/dev/null || echo '?'), build dir $BUILD (buildtype $BT)"
echo "# reps $REPS, $SECS s per run, randread 4 KiB, QD1 and QD$DEPTH, 1 queue, wait: eventfd$([ "$BUSY" = 1 ] && echo ' + busy-poll at QD1')$([ "$POLL" != 0 ] && echo " + adaptive ($POLL us) at QD1"); ref back-end --poll-us=$REF_POLL"
echo "# command per run: $VUF blk SOCKET bench --rw randread --bs 4096 --iodepth QD --seconds $SECS --json"
printf '%-4s %-4s %-9s %6s %10s %10s %10s %10s %8s\n' rep be wait qd iops med_us mean_us p99_us cpu_us

RES="$T/results.txt"
: >"$RES"
run() { # REP NAME SOCK QD WAIT
  local extra=()
  [ "$5" = busy ] && extra=(--busy-poll)
  [ "$5" = adaptive ] && extra=(--poll-us "$POLL")
  local j
  j=$("$VUF" blk "$3" bench --rw randread --bs 4096 --iodepth "$4" --seconds "$SECS" --json "${extra[@]}")
  local line
  line=$(jq -r --arg be "$2" --arg w "$5" --arg rep "$1" \
    '[$rep, $be, $w, .iodepth, (.iops|floor), (.latency_ns.median/1000), (.latency_ns.mean/1000), (.latency_ns.p99/1000), (.cpu_ns_per_io/1000)] | @tsv' <<<"$j")
  echo "$line" >>"$RES"
  awk -F'\t' '{printf "%-4s %-4s %-9s %6s %10d %10.1f %10.1f %10.1f %8.1f\n", $1,$2,$3,$4,$5,$6,$7,$8,$9}' <<<"$line"
}

floor_run() { # REP MODE: the floor's median (us) as a result row
  local j
  j=$("$FLOOR_EXE" --mode "$2" --rounds 20000 --json)
  local line
  line=$(jq -r --arg rep "$1" --arg m "$2" \
    '[$rep, "floor", $m, 1, 0, (.median_ns/1000), (.mean_ns/1000), (.p99_ns/1000)] | @tsv' <<<"$j")
  echo "$line" >>"$RES"
  awk -F'\t' '{printf "%-4s %-4s %-9s %6s %10s %10.2f %10.1f %10.1f\n", $1,$2,$3,$4,"-",$6,$7,$8}' <<<"$line"
}

for rep in $(seq 1 "$REPS"); do
  for be in qsd ref; do
    run "$rep" "$be" "$T/$be.sock" 1 eventfd
    run "$rep" "$be" "$T/$be.sock" "$DEPTH" eventfd
    [ "$BUSY" = 1 ] && run "$rep" "$be" "$T/$be.sock" 1 busy
    [ "$POLL" != 0 ] && run "$rep" "$be" "$T/$be.sock" 1 adaptive
  done
  if [ "$FLOOR" = 1 ]; then
    floor_run "$rep" eventfd
    [ "$BUSY" = 1 ] && floor_run "$rep" spin
  fi
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { # BE WAIT QD COLUMN -> median of that column
  awk -F'\t' -v be="$1" -v w="$2" -v qd="$3" -v c="$4" '$2==be && $3==w && $4==qd {print $c}' "$RES" | median
}

echo
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# medians over $REPS runs"
printf '%-4s %-9s %6s %10s %10s %10s %10s %8s\n' be wait qd iops med_us mean_us p99_us cpu_us
waits=(eventfd); [ "$BUSY" = 1 ] && waits+=(busy); [ "$POLL" != 0 ] && waits+=(adaptive)
for w in "${waits[@]}"; do
  for qd in 1 "$DEPTH"; do
    [ "$w" != eventfd ] && [ "$qd" != 1 ] && continue
    for be in qsd ref; do
      printf '%-4s %-9s %6s %10.0f %10.1f %10.1f %10.1f %8.1f\n' "$be" "$w" "$qd" \
        "$(col $be $w $qd 5)" "$(col $be $w $qd 6)" "$(col $be $w $qd 7)" "$(col $be $w $qd 8)" "$(col $be $w $qd 9)"
    done
    awk -v a="$(col ref $w $qd 5)" -v b="$(col qsd $w $qd 5)" -v c="$(col ref $w $qd 6)" -v d="$(col qsd $w $qd 6)" -v w="$w" -v qd="$qd" \
      'BEGIN {printf "ratio ref/qsd (%s, QD%s): IOPS %.2fx, median latency %.2fx\n", w, qd, a/b, c/d}'
  done
done

if [ "$FLOOR" = 1 ]; then
  echo
  echo "# the floor (median round trip, us): eventfd $(col floor eventfd 1 6)$([ "$BUSY" = 1 ] && echo ", spin $(col floor spin 1 6)")"
  for be in qsd ref; do
    awk -v a="$(col $be eventfd 1 6)" -v f="$(col floor eventfd 1 6)" -v be="$be" \
      'BEGIN {printf "ratio %s QD1 eventfd median latency / eventfd floor: %.2fx\n", be, a/f}'
    if [ "$BUSY" = 1 ]; then
      awk -v a="$(col $be busy 1 6)" -v f="$(col floor eventfd 1 6)" -v s="$(col floor spin 1 6)" -v be="$be" \
        'BEGIN {printf "ratio %s QD1 busy-poll median latency / eventfd floor: %.2fx (/ spin floor: %.1fx)\n", be, a/f, a/s}'
    fi
    if [ "$POLL" != 0 ]; then
      awk -v a="$(col $be adaptive 1 6)" -v f="$(col floor eventfd 1 6)" -v be="$be" \
        'BEGIN {printf "ratio %s QD1 adaptive median latency / eventfd floor: %.2fx\n", be, a/f}'
    fi
  done
fi
