#!/usr/bin/env bash
# The project's whole test command (README: `make test`; CI: .ci/run).
#   1. install dependencies (scripts/setup.sh, apt-get)
#   2. gcc build with -Werror, every unit and integration test
#   3. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer,
#      and the threaded ones under ThreadSanitizer (clang, build-tsan)
#   4. a clang build (warnings are errors there too) and a clang-format check
#   5. each libFuzzer target for a bounded time (FUZZ_SECONDS, default 30)
# Ends with one line per build ("gcc: N passed, N failed, N skipped", then
# asan+ubsan and tsan) and, last and alone, the total "N passed, N failed,
# N skipped". A build that fails counts its stale results from no earlier
# run: each build's testlog.json is deleted before it builds. Without clang
# (CLANG, default clang) the TSan build, the clang build and the fuzzers are
# failed steps, not silence. Test timeouts are multiplied by
# TEST_TIMEOUT_MULTIPLIER (default 3): they catch hangs, and on a busy
# machine a test takes several times as long as on an idle one.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CLANG=${CLANG:-clang}
TEST_TIMEOUT_MULTIPLIER=${TEST_TIMEOUT_MULTIPLIER:-3}
JOBS=$(nproc 2>/dev/null || echo 2)
failed_steps=()
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}

configure() { # dir, extra meson args...
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

run_suite() { # name dir
  local name=$1 dir=$2
  rm -f "$dir/meson-logs/testlog.json"
  echo "== $name: build =="
  if ! ninja -C "$dir" -j "$JOBS"; then
    failed_steps+=("$name build"); return
  fi
  echo "== $name: tests =="
  meson test -C "$dir" --print-errorlogs --num-processes 1 \
    --timeout-multiplier "$TEST_TIMEOUT_MULTIPLIER" || true
}

configure build -Dwerror=true
run_suite "gcc" build

configure build-san -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
run_suite "asan+ubsan" build-san

# ThreadSanitizer (clang: gcc's -fsanitize=thread with -Werror rejects the
# atomic_thread_fence in src/virtq.c) on the tests that run threads against
# the library (`suite : 'threads'` in tests/meson.build); meson builds only
# what those tests need. Suppressions, each with its reason: tests/tsan.supp.
have_clang=true
command -v "$CLANG" >/dev/null || { have_clang=false; echo "clang ($CLANG) is missing"; }
echo "== tsan: build and tests (suite threads) =="
rm -f build-tsan/meson-logs/testlog.json
if $have_clang && CC=$CLANG configure build-tsan -Dwerror=true \
    -Db_sanitize=thread -Db_lundef=false; then
  TSAN_OPTIONS=${TSAN_OPTIONS:-suppressions=$PWD/tests/tsan.supp:second_deadlock_stack=1} \
    meson test -C build-tsan --suite threads --print-errorlogs --num-processes 1 \
    --timeout-multiplier "$TEST_TIMEOUT_MULTIPLIER" || true
  [ -f build-tsan/meson-logs/testlog.json ] || failed_steps+=("tsan build")
else
  failed_steps+=("tsan build")
fi

echo "== clang: build =="
if $have_clang && CC=$CLANG configure build-clang -Dwerror=true && ninja -C build-clang -j "$JOBS" >/dev/null; then
  echo "clang build: ok"
else
  failed_steps+=("clang build")
fi

echo "== clang-format =="
unformatted=()
while IFS= read -r f; do
  clang-format --style=file "$f" | cmp -s - "$f" || unformatted+=("$f")
done < <(git ls-files '*.c' '*.h' 2>/dev/null || find src include tools tests backend fuzz -name '*.[ch]')
if [ ${#unformatted[@]} -eq 0 ]; then
  echo "clang-format: ok"
else
  echo "clang-format: not formatted (run 'make format'): ${unformatted[*]}"
  failed_steps+=("clang-format")
fi

fuzz_pass=0; fuzz_fail=0
if ! $have_clang; then
  failed_steps+=("fuzz: not run, clang ($CLANG) is missing")
else
  echo "== fuzz (${FUZZ_SECONDS}s per target) =="
  fuzz_out=$(bash scripts/fuzz.sh "$FUZZ_SECONDS" 2>&1); fuzz_rc=$?
  printf '%s\n' "$fuzz_out"
  # one line per target: "fuzz_x: ok, ..." or a failure line
  fuzz_pass=$(printf '%s\n' "$fuzz_out" | grep -c '^fuzz_[a-z_]*: ok' || true)
  fuzz_fail=$(printf '%s\n' "$fuzz_out" | grep -Ec '^fuzz_[a-z_]*: (FAIL|fail|crash|error)' || true)
  if [ "$fuzz_rc" -ne 0 ] && [ "$fuzz_fail" -eq 0 ]; then fuzz_fail=1; fi
fi

# Cases are counted one by one from cmocka's output (a skip() is a skip,
# named); see scripts/test_summary.py.
python3 scripts/test_summary.py "$fuzz_pass" "$fuzz_fail" "${#failed_steps[@]}" "${failed_steps[@]}" \
  -- gcc=build asan+ubsan=build-san tsan=build-tsan
