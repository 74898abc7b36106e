#!/usr/bin/env bash
# scripts/test.sh's counting, on a copy of it in a temp dir with stand-ins
# for setup.sh, meson and ninja (no build, no apt-get; about a second):
#   - a build that fails counts none of the previous run's results (its
#     testlog.json is deleted before it builds) and counts as a failure;
#   - one line per build ("gcc: ...", "asan+ubsan: ...", "tsan: ...");
#   - a missing clang makes the TSan build, the clang build and the fuzzers
#     failed steps, not silence;
#   - the total comes last, alone: "N passed, N failed, N skipped".
# Usage: check_test_sh.sh SOURCE_ROOT
set -u
src=${1:?usage: check_test_sh.sh SOURCE_ROOT}
t=$(mktemp -d "${TMPDIR:-/tmp}/vuf-check-test-sh.XXXXXX")
trap 'rm -rf "$t"' EXIT

mkdir -p "$t/repo/scripts" "$t/bin"
cp "$src/scripts/test.sh" "$src/scripts/test_summary.py" "$t/repo/scripts/"
printf '#!/bin/sh\nexit 0\n' >"$t/repo/scripts/setup.sh"
printf '#!/bin/sh\necho "fuzz stand-in must not run without clang" >&2\nexit 1\n' \
  >"$t/repo/scripts/fuzz.sh"

# meson: setup/configure make the dir; test writes a testlog with one
# program of 2 passing cmocka cases.
cat >"$t/bin/meson" <<'EOF'
#!/bin/sh
case "$1" in
  setup) mkdir -p "$2" && touch "$2/build.ninja" ;;
  configure) [ -d "$2" ] ;;
  test)
    mkdir -p "$3/meson-logs"
    printf '%s\n' '{"name": "vuf:unit / fake", "result": "OK", "stdout": "[==========] 2 test(s) run.\n[  PASSED  ] 2 test(s).\n"}' \
      >"$3/meson-logs/testlog.json" ;;
esac
EOF
# ninja: the build named in FAKE_NINJA_FAIL fails.
cat >"$t/bin/ninja" <<'EOF'
#!/bin/sh
[ "$2" != "$FAKE_NINJA_FAIL" ]
EOF
chmod +x "$t/bin/meson" "$t/bin/ninja"

# The previous run left 5 passes in build/ (gcc); this run's gcc build fails.
mkdir -p "$t/repo/build/meson-logs"
for i in 1 2 3 4 5; do
  printf '{"name": "vuf:unit / stale%d", "result": "OK", "stdout": ""}\n' "$i"
done >"$t/repo/build/meson-logs/testlog.json"

out=$(cd "$t/repo" && PATH="$t/bin:$PATH" FAKE_NINJA_FAIL=build CLANG=/nonexistent/clang \
  bash scripts/test.sh 2>&1)
rc=$?
printf '%s\n' "$out" | sed 's/^/  | /'

fail=0
want() { # a line that must be in the output, exactly
  printf '%s\n' "$out" | grep -qxF -- "$1" || { echo "MISSING LINE: $1"; fail=1; }
}
want "gcc: 0 passed, 1 failed, 0 skipped"
want "asan+ubsan: 2 passed, 0 failed, 0 skipped"
want "tsan: 0 passed, 1 failed, 0 skipped"
want "FAILED: gcc build"
want "FAILED: clang build"
want "FAILED: fuzz: not run, clang (/nonexistent/clang) is missing"
last=$(printf '%s\n' "$out" | tail -n 1)
# 2 passed (asan+ubsan); failed: gcc build, tsan build, clang build, fuzz.
if [ "$last" != "2 passed, 4 failed, 0 skipped" ]; then
  echo "LAST LINE: '$last', want '2 passed, 4 failed, 0 skipped'"
  fail=1
fi
[ "$rc" -eq 1 ] || { echo "exit status $rc, want 1"; fail=1; }
[ "$fail" -eq 0 ] && echo "check_test_sh: ok"
exit "$fail"
