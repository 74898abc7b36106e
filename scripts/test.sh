#!/usr/bin/env bash
# The project's whole test command (README: `make test`; CI: .ci/run).
#   1. install dependencies (scripts/setup.sh, apt-get)
#   2. gcc build with -Werror, every unit and integration test
#   3. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. a clang build (warnings are errors there too) and a clang-format check
#   5. each libFuzzer target for a bounded time (FUZZ_SECONDS, default 30)
# Ends with one line "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
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
  echo "== $name: build =="
  if ! ninja -C "$dir" -j "$JOBS"; then
    failed_steps+=("$name build"); return
  fi
  echo "== $name: tests =="
  meson test -C "$dir" --print-errorlogs --num-processes 1 || true
}

configure build -Dwerror=true
run_suite "gcc" build

configure build-san -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
run_suite "asan+ubsan" build-san

echo "== clang: build =="
if CC=clang configure build-clang -Dwerror=true && ninja -C build-clang -j "$JOBS" >/dev/null; then
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
if command -v clang >/dev/null; then
  echo "== fuzz (${FUZZ_SECONDS}s per target) =="
  fuzz_out=$(bash scripts/fuzz.sh "$FUZZ_SECONDS" 2>&1); fuzz_rc=$?
  printf '%s\n' "$fuzz_out"
  # one line per target: "fuzz_x: ok, ..." or a failure line
  fuzz_pass=$(printf '%s\n' "$fuzz_out" | grep -c '^fuzz_[a-z_]*: ok' || true)
  fuzz_fail=$(printf '%s\n' "$fuzz_out" | grep -Ec '^fuzz_[a-z_]*: (FAIL|fail|crash|error)' || true)
  if [ "$fuzz_rc" -ne 0 ] && [ "$fuzz_fail" -eq 0 ]; then fuzz_fail=1; fi
fi

python3 - "$fuzz_pass" "$fuzz_fail" "${#failed_steps[@]}" "${failed_steps[@]}" <<'PY'
import json, sys, os
fuzz_pass, fuzz_fail, nsteps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
steps = sys.argv[4:4 + nsteps]
passed = failed = skipped = 0
import re
# Each test program is a cmocka group: count its cases from cmocka's own
# summary lines; a program that died before printing them counts as one.
def cases(out, tag):
    m = re.findall(r"^\[\s*" + tag + r"\s*\] (\d+) test", out or "", re.M)
    return sum(int(x) for x in m)
for d in ("build", "build-san"):
    p = os.path.join(d, "meson-logs", "testlog.json")
    if not os.path.exists(p):
        continue
    for line in open(p):
        r = json.loads(line)
        res, name = r.get("result"), f'{d}:{r.get("name")}'
        out = (r.get("stdout") or "") + (r.get("stderr") or "")
        ok, bad = cases(out, "PASSED"), cases(out, "FAILED")
        if res in ("OK", "EXPECTEDFAIL"):
            passed += ok or 1
        elif res == "SKIP":
            skipped += 1
            print(f"skipped: {name}")
        else:
            passed += ok
            failed += bad or 1
            print(f"FAILED: {name} ({res})")
for s in steps:
    failed += 1
    print(f"FAILED: {s}")
passed += fuzz_pass
failed += fuzz_fail
if fuzz_fail:
    print("FAILED: fuzzing found a problem (see above)")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
PY
