#!/usr/bin/env python3
"""The closing line of scripts/test.sh: "N passed, N failed, N skipped".

    test_summary.py FUZZ_PASS FUZZ_FAIL NSTEPS [FAILED_STEP...] -- [LABEL=]BUILD_DIR...

Reads BUILD_DIR/meson-logs/testlog.json of each build dir given (scripts/test.sh
deletes it before each build, so a failed build leaves none to count) and
prints one line per build, "LABEL: N passed, N failed, N skipped" (LABEL
defaults to the dir); a failed step named "LABEL ..." counts as a failure of
that build. The closing line, the total, comes last and alone. Each test
program is a cmocka group (or a plain program): its cases are counted from
cmocka's own output, one by one:
  - a case that called skip() is skipped, and named ("skipped: dir:prog:case");
  - a program whose cases all skipped counts no pass;
  - a failed case is named ("FAILED: dir:prog:case");
  - a program that passes without any cmocka output counts as one pass; one
    that fails without naming a failed case counts as one failure;
  - a program meson reports as SKIP (exit 77) is one skip.
Exits 1 if anything failed or nothing passed.
"""
import json
import os
import re
import sys

SUMMARY = re.compile(r"^\[\s*(PASSED|FAILED|SKIPPED)\s*\] (\d+) test\(s\)", re.M)
CASE = re.compile(r"^\[\s*(SKIPPED|FAILED)\s*\] (\S+)\s*$", re.M)
RUN_COUNT = re.compile(r"^\[=+\] \d+ test\(s\) run\.", re.M)


def program(out):
    """(is_cmocka, passed, failed, skipped, skipped_names, failed_names)."""
    n = {"PASSED": 0, "FAILED": 0, "SKIPPED": 0}
    for tag, count in SUMMARY.findall(out):
        n[tag] += int(count)
    names = {"SKIPPED": [], "FAILED": []}
    for tag, case in CASE.findall(out):
        # cmocka prints each skipped/failed case twice (when it runs and in
        # the closing list): name it once.
        if case not in names[tag]:
            names[tag].append(case)
    is_cmocka = bool(RUN_COUNT.search(out)) or any(n.values())
    return (is_cmocka, n["PASSED"], n["FAILED"], n["SKIPPED"], names["SKIPPED"],
            names["FAILED"])


def count_dir(d):
    """(passed, failed, skipped) of one build dir, naming skips and failures."""
    passed = failed = skipped = 0
    p = os.path.join(d, "meson-logs", "testlog.json")
    if not os.path.exists(p):
        return 0, 0, 0
    for line in open(p):
        r = json.loads(line)
        # meson names a test "project:suite+suite / name"; the build dir
        # and the test's own name are what identify it here.
        res, name = r.get("result"), f'{d}:{r.get("name", "").split(" / ")[-1]}'
        out = (r.get("stdout") or "") + (r.get("stderr") or "")
        is_cmocka, ok, bad, skip, skip_names, bad_names = program(out)
        for case in skip_names:
            print(f"skipped: {name}:{case}")
        if res == "SKIP":
            skipped += 1
            print(f"skipped: {name}")
        elif res in ("OK", "EXPECTEDFAIL"):
            if is_cmocka:
                passed += ok
                skipped += skip
                if ok + skip == 0:
                    failed += 1
                    print(f"FAILED: {name} (ran no test case)")
            else:
                passed += 1
        else:
            passed += ok
            skipped += skip
            for case in bad_names:
                print(f"FAILED: {name}:{case}")
            failed += bad or 1
            print(f"FAILED: {name} ({res})")
    return passed, failed, skipped


def main(argv):
    sep = argv.index("--")
    fuzz_pass, fuzz_fail, nsteps = int(argv[0]), int(argv[1]), int(argv[2])
    steps = argv[3:3 + nsteps]
    builds = [a.split("=", 1) if "=" in a else [a, a] for a in argv[sep + 1:]]
    passed = failed = skipped = 0
    lines = []
    for label, d in builds:
        p, f, s = count_dir(d)
        f += sum(1 for st in steps if st.startswith(label + " "))
        lines.append(f"{label}: {p} passed, {f} failed, {s} skipped")
        passed, skipped = passed + p, skipped + s
        failed += f - sum(1 for st in steps if st.startswith(label + " "))
    for s in steps:
        failed += 1
        print(f"FAILED: {s}")
    passed += fuzz_pass
    failed += fuzz_fail
    if fuzz_fail:
        print("FAILED: fuzzing found a problem (see above)")
    for line in lines:
        print(line)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
