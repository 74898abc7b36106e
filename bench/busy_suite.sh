#!/usr/bin/env bash
# The suite on a busy machine (issue 14 §3): `make test` from a fresh clone,
# N times (default 5), while two CPU hogs (`sh -c 'while :; do :; done'`,
# nice 0) keep the cores busy. Per run: the load average before and after,
# the elapsed time and the suite's closing line ("N passed, N failed, N
# skipped"); then a summary. The hogs are killed on every way out (normal
# end, error, Ctrl-C, SIGTERM).
#
#   bench/busy_suite.sh [N]
#
# Environment:
#   BUSY_SUITE_REPO  what to clone (default: this checkout; its HEAD commit,
#                    so commit first)
#   BUSY_SUITE_DIR   where the clones and logs go (default: a new temp dir,
#                    kept: each run's full output is run-K.log there)
#   BUSY_SUITE_CMD   the command run in each clone (default: make test); for
#                    trying this script without the 10+ minute suite
#   BUSY_SUITE_HOGS  number of CPU hogs (default 2)
# Exit status: 0 if every run's closing line says 0 failed, else 1.
set -uo pipefail

n=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
repo=${BUSY_SUITE_REPO:-$here}
cmd=${BUSY_SUITE_CMD:-make test}
nhogs=${BUSY_SUITE_HOGS:-2}
dir=${BUSY_SUITE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/vuf-busy-suite.XXXXXX")}
case $n in '' | *[!0-9]* | 0) echo "usage: $0 [N >= 1]" >&2; exit 2 ;; esac
mkdir -p "$dir" || exit 1

hogs=()
run_pid= # the suite run in progress: its own session, killed as a group
stop_all() {
  local h
  if [ -n "$run_pid" ]; then
    kill -TERM -- "-$run_pid" 2>/dev/null
    wait "$run_pid" 2>/dev/null
    run_pid=
  fi
  for h in "${hogs[@]}"; do
    kill "$h" 2>/dev/null && wait "$h" 2>/dev/null
  done
  hogs=()
}
# The run goes in the background and is waited for, so that a signal is
# handled at once (bash runs a trap only after a foreground child ends).
trap stop_all EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "busy suite: $n run(s) of '$cmd' on fresh clones of $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "with $nhogs CPU hog(s) on $(nproc) core(s); logs in $dir"
for _ in $(seq "$nhogs"); do
  sh -c 'while :; do :; done' &
  hogs+=($!)
done
echo "hogs: ${hogs[*]}"

summary=()
ok=0
for k in $(seq "$n"); do
  clone="$dir/clone-$k"
  log="$dir/run-$k.log"
  rm -rf "$clone"
  before=$(load)
  start=$(date +%s)
  if git clone --quiet "$repo" "$clone" >"$log" 2>&1; then
    (cd "$clone" && exec setsid bash -c "$cmd") >>"$log" 2>&1 </dev/null &
    run_pid=$!
    wait "$run_pid"
    rc=$?
    run_pid=
  else
    rc=1
    echo "clone failed" >>"$log"
  fi
  elapsed=$(($(date +%s) - start))
  after=$(load)
  closing=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n 1)
  [ -n "$closing" ] || closing="(no closing line; exit $rc)"
  # Hogs that died would make the load a lie: say so.
  for h in "${hogs[@]}"; do kill -0 "$h" 2>/dev/null || closing="$closing [hog $h died]"; done
  line="run $k: $closing | ${elapsed} s | load before $before, after $after"
  echo "$line"
  summary+=("$line")
  case $closing in *" 0 failed,"*) [ "$rc" -eq 0 ] && ok=$((ok + 1)) ;; esac
  rm -rf "$clone" # the logs stay; a clone is a few hundred MB once built
done
stop_all

echo
echo "== busy suite: $ok of $n runs passed ($nhogs hogs, $(nproc) cores) =="
printf '%s\n' "${summary[@]}"
[ "$ok" -eq "$n" ]
