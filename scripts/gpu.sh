#!/bin/bash
# On the GPU box (see ../shared/GPU.md): builds moelab against pip's CUDA LibTorch with the header
# packages carried in .deps/ (third_party/README.md), runs every test plus the CUDA model tests, and
# leaves logs in $OUT, then runs the benchmarks (results: $OUT/benchmarks.jsonl, copied by hand into
# benchmarks/RESULTS.md). Carry .deps (header packages) and .tok.tgz (the npm tokenizer files, made
# here by `tar czf .tok.tgz -C build/tokenizers .`; the box has no npm). Prepare .deps here first:
#   (mkdir -p .deps && cd .deps && apt-get download libboost1.74-dev libtomlplusplus-dev libtomlplusplus3 \
#     libfmt-dev libfmt9 nlohmann-json3-dev libgtest-dev libgmock-dev googletest libpcre2-dev libpcre2-8-0 \
#     libicu-dev libicu72)
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" /tmp/deps
for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
mkdir -p /tmp/tok && tar xzf .tok.tgz -C /tmp/tok
export MOELAB_TOKENIZERS_FROM=/tmp/tok
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cmake -S . -B build-gpu -G Ninja -DMOELAB_CUDA_TESTS=ON \
  "-DCMAKE_PREFIX_PATH=$torch_prefix;/tmp/deps/usr" -DCMAKE_CXX_FLAGS=-I/tmp/deps/usr/include 2>&1 | tee "$OUT/configure.log"
( time cmake --build build-gpu -j 16 ) > "$OUT/build.log" 2>&1 || { grep -E -A3 "error|FAILED" "$OUT/build.log" | head -60; exit 1; }
tail -4 "$OUT/build.log"
status=0
ctest --test-dir build-gpu --output-on-failure -j 8 > "$OUT/ctest.log" 2>&1 || status=$?
grep -E "tests passed|Failed|SegFault" "$OUT/ctest.log" || true
build-gpu/bin/model_cuda_test 2>&1 | grep "bf16:" | tee "$OUT/bf16.txt"

# Benchmarks: each measured next to its peer in the same call.
corpus=tests/fixtures/tokenizers/corpus.jsonl
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/{"device": "/; s/$/"}/'
  python3 -c 'import torch,tokenizers,transformers,json;print(json.dumps({"torch":torch.__version__,"tokenizers":tokenizers.__version__,"transformers":transformers.__version__}))'
  for t in gpt_neox=framework/model/tiny/tokenizer.json qwen3=/tmp/tok/qwen3/tokenizer.json llama3=/tmp/tok/llama3/tokenizer.json deepseek_v3=/tmp/tok/deepseek_v3/tokenizer.json; do
    python3 benchmarks/tokenizer_hf.py "$t"
    build-gpu/bin/runexp tokenize --tokenizer "${t#*=}" --benchmark < $corpus | sed "s/^{/{\"name\":\"${t%%=*}\",\"impl\":\"moelab\",/"
  done
} | tee "$OUT/benchmarks.jsonl"
exit $status
