#!/bin/bash
# On the GPU box (see ../shared/GPU.md): builds moelab against pip's CUDA LibTorch with the header
# packages carried in .deps/ (third_party/README.md), runs every test plus the CUDA model tests, and
# leaves logs in $OUT. Prepare .deps here first:
#   (mkdir -p .deps && cd .deps && apt-get download libboost1.74-dev libtomlplusplus-dev libtomlplusplus3 \
#     libfmt-dev libfmt9 nlohmann-json3-dev libgtest-dev libgmock-dev googletest libpcre2-dev libpcre2-8-0)
set -euo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" /tmp/deps
for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cmake -S . -B build-gpu -G Ninja -DMOELAB_CUDA_TESTS=ON \
  "-DCMAKE_PREFIX_PATH=$torch_prefix;/tmp/deps/usr" -DCMAKE_CXX_FLAGS=-I/tmp/deps/usr/include 2>&1 | tee "$OUT/configure.log"
( time cmake --build build-gpu -j 16 ) > "$OUT/build.log" 2>&1 || { grep -E -A3 "error|FAILED" "$OUT/build.log" | head -60; exit 1; }
tail -4 "$OUT/build.log"
status=0
ctest --test-dir build-gpu --output-on-failure -j 8 > "$OUT/ctest.log" 2>&1 || status=$?
grep -E "tests passed|Failed|SegFault" "$OUT/ctest.log" || true
build-gpu/bin/model_cuda_test 2>&1 | grep "bf16:" | tee "$OUT/bf16.txt"
exit $status
