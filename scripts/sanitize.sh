#!/bin/sh
# Builds moelab and its tests with AddressSanitizer + UndefinedBehaviorSanitizer (gcc, the compiler
# LibTorch was built with) in build-asan, runs ctest under them and prints every report, one block each.
#   scripts/sanitize.sh [CTEST_ARGS...]      e.g. scripts/sanitize.sh -R Tokenizer
# Reports go to build-asan/sanitizer-logs/ (one file per process, subprocesses such as runexp included).
# scripts/sanitize/*.supp suppress LibTorch-internal reports only. Offline, set MOELAB_TOKENIZERS_FROM
# (tests/fixtures/tokenizers/fetch.sh). Exits non-zero on a build error, a failed test or any report.
set -eu
cd "$(dirname "$0")/.."
root=$PWD
build=$root/build-asan
logs=$build/sanitizer-logs
supp=$root/scripts/sanitize
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
asan_common="halt_on_error=1:detect_odr_violation=0:suppressions=$supp/asan.supp"
ubsan="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp"

start=$(date +%s)
# -O1 -g1: line tables for file:line in stacks at a fraction of full debug info's build time.
cmake -S . -B "$build" -G Ninja -DMOELAB_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -g1 -DNDEBUG" "-DCMAKE_CXX_FLAGS=$san" \
  "-DCMAKE_EXE_LINKER_FLAGS=$san" "-DCMAKE_SHARED_LINKER_FLAGS=$san" "-DCMAKE_MODULE_LINKER_FLAGS=$san" > /dev/null
# The build runs test binaries (gtest discovery): no leak check there, ctest runs them all again with it.
# A target that fails to build is reported, and the tests that did build still run (-k 0).
build_status=0
ASAN_OPTIONS="$asan_common:detect_leaks=0" UBSAN_OPTIONS="$ubsan" cmake --build "$build" -- -k 0 > "$build/build.log" 2>&1 ||
  build_status=$?
built=$(date +%s)

rm -rf "$logs" && mkdir -p "$logs"
status=0
ASAN_OPTIONS="$asan_common:detect_leaks=1:log_path=$logs/asan" \
LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0" \
UBSAN_OPTIONS="$ubsan:log_path=$logs/ubsan" \
  ctest --test-dir "$build" --output-on-failure "$@" > "$build/ctest.log" 2>&1 || status=$?
done_at=$(date +%s)

echo "== sanitizer reports (build-asan/sanitizer-logs) =="
reports=0
for f in "$logs"/*; do
  [ -e "$f" ] || continue
  reports=$((reports + 1))
  echo "-- $f"
  # The error line, then the first frames in moelab code (path under this tree).
  grep -m1 -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$f" || head -3 "$f"
  grep -E "^ +#[0-9]+ " "$f" | grep -F "$root/" | grep -v -F "$root/build-asan/" | head -4
done
failed=$(grep -cE "^ *[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Child aborted|Exception)" "$build/ctest.log" || true)
echo "== $(grep -E "tests passed|tests failed" "$build/ctest.log" | tail -1)"
build_failures=$(grep -c '^FAILED: ' "$build/build.log" || true)
[ "$build_status" -ne 0 ] && { echo "== build errors (build-asan/build.log):"; grep -A1 -E '^FAILED: |error:' "$build/build.log" | grep -E 'error' | sort -u | head -20; }
echo "== sanitize: build $((built - start)) s ($build_failures failed step(s)), tests $((done_at - built)) s, $reports report file(s), $failed failed test(s); ctest log: build-asan/ctest.log"
[ "$build_status" -eq 0 ] && [ "$status" -eq 0 ] && [ "$reports" -eq 0 ]
