#!/usr/bin/env bash
# Build the libFuzzer targets (clang) and run each for a bounded time.
#
#   scripts/fuzz.sh [seconds]      default 30 seconds per target
#
# Build dir: build-fuzz (made with `CC=clang meson setup build-fuzz -Dfuzz=true`
# when missing). Corpora live in build-fuzz/corpus/<target> (seeded by the
# target itself from the message table, kept between runs, never committed);
# logs in build-fuzz/fuzz-logs, crash/leak/timeout inputs in
# build-fuzz/fuzz-artifacts. Prints one line per target; exits non-zero if
# any target found something or could not be built or run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

SECONDS_PER_TARGET=${1:-30}
TARGETS=(fuzz_wire fuzz_breq)
BUILD=build-fuzz

case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac

if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found (scripts/setup.sh installs it)" >&2
  exit 1
fi

if [ ! -f "$BUILD/build.ninja" ]; then
  if ! CC=clang meson setup "$BUILD" -Dfuzz=true >"$BUILD.setup.log" 2>&1; then
    cat "$BUILD.setup.log" >&2
    echo "fuzz: meson setup failed" >&2
    exit 1
  fi
  rm -f "$BUILD.setup.log"
elif ! meson configure "$BUILD" | grep -Eq '^ *fuzz +true'; then
  meson configure "$BUILD" -Dfuzz=true >/dev/null || exit 1
fi

ninja_targets=()
for t in "${TARGETS[@]}"; do ninja_targets+=("fuzz/$t"); done
if ! ninja -C "$BUILD" "${ninja_targets[@]}" >"$BUILD/fuzz-build.log" 2>&1; then
  cat "$BUILD/fuzz-build.log" >&2
  echo "fuzz: build failed" >&2
  exit 1
fi

mkdir -p "$BUILD/fuzz-logs" "$BUILD/fuzz-artifacts"
# Leaks are findings; a sanitizer report must end the run with an error.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

status=0
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus/$t"
  log="$BUILD/fuzz-logs/$t.log"
  mkdir -p "$corpus"
  VUF_FUZZ_SEED_DIR="$corpus" "$BUILD/fuzz/$t" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$BUILD/fuzz-artifacts/$t-" "$corpus" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs="?"
  files=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ] && ! grep -q -e '^==[0-9]*==ERROR' -e 'runtime error:' "$log"; then
    echo "$t: ok, $execs execs in ${SECONDS_PER_TARGET}s, corpus $files files"
  else
    status=1
    echo "$t: FAILED (exit $rc) after $execs execs; log $log"
    grep -E -m 5 -e 'ERROR|runtime error|contract broken|fd leak|Test unit written' "$log" |
      sed 's/^/    /'
  fi
done
exit $status
