#!/bin/bash
# Builds the libFuzzer targets (fuzz/, clang, build-fuzz) and runs each for SECONDS (default 600):
#   scripts/fuzz.sh [SECONDS] [TARGET...]          targets: safetensors model_config tokenizer_json
#                                                  tokenizer_encode routing_results experiment jsonl
# Seeds come from fuzz/corpus/<target>/ (read only); new corpus entries go to a temporary folder
# ($MOELAB_FUZZ_CORPUS to keep them), findings (crash-*, leak-*, timeout-*, oom-*) to fuzz/artifacts/<target>/.
# The reproducers in fuzz/regressions/<target>/ are replayed too: each that still fails is a finding.
# MOELAB_FUZZ_KEEP_GOING=1 keeps fuzzing after a finding (libFuzzer's fork mode); MOELAB_FUZZ_STRICT=1 also
# counts exceptions other than std::runtime_error (fuzz/fuzz_common.h). Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors model_config tokenizer_json tokenizer_encode routing_results experiment jsonl)
build=$root/build-fuzz

start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DMOELAB_FUZZ=ON -DMOELAB_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -gline-tables-only -DNDEBUG" \
  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer" > /dev/null
cmake --build "$build" --target $(printf 'fuzz_%s ' "${targets[@]}")
echo "== fuzz: build took $(($(date +%s) - start)) s"

corpus=${MOELAB_FUZZ_CORPUS:-$(mktemp -d)}
export ASAN_OPTIONS=detect_leaks=1:detect_odr_violation=0:allocator_may_return_null=0
export LSAN_OPTIONS=suppressions=$root/fuzz/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
mode=()
[ "${MOELAB_FUZZ_KEEP_GOING:-0}" = 1 ] && mode=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
summary=() total_findings=0
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t" "fuzz/artifacts/$t"
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  log=$corpus/$t.log
  echo "== fuzz_$t for $seconds s (log: $log)"
  "$build/bin/fuzz_$t" "$corpus/$t" "fuzz/corpus/$t" "${dict[@]}" "${mode[@]}" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 > "$log" 2>&1 || true
  findings=$(($(ls "fuzz/artifacts/$t" | wc -l) - before))
  # Known crashes (fuzz/regressions/README.md) still crashing count as findings until they are fixed.
  for r in fuzz/regressions/"$t"/*; do
    [ -f "$r" ] || continue
    "$build/bin/fuzz_$t" -timeout=10 -rss_limit_mb=4096 "$r" > "$log.regression" 2>&1 || { findings=$((findings + 1)); echo "   still fails: $r"; }
  done
  total_findings=$((total_findings + findings))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  runs=$(grep -oE '^stat::number_of_executed_runs: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  [ -z "$runs" ] && runs=$(echo "$last" | grep -oE '^#[0-9]+' | tr -d '#')
  cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+')
  summary+=("$(printf '%-17s runs %-9s coverage %-6s findings %s' "$t" "${runs:-0}" "${cov:-?}" "$findings")")
  if [ "$findings" -gt 0 ]; then
    grep -E -m3 'ERROR: |runtime error:|MOELAB_FUZZ_STRICT|differs|does not parse|Test unit written' "$log" | sed 's/^/   /' || true
  fi
done
echo "== fuzz summary ($seconds s each; findings in fuzz/artifacts/)"
printf '%s\n' "${summary[@]}"
[ "$total_findings" -eq 0 ]
