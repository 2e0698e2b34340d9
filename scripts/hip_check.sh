#!/bin/bash
# CI compile check of moelab's GPU kernels (framework/kernels/*.cu) for AMD GPUs with hipcc (Debian's
# hipcc 5.2: `apt-get install hipcc`), without LibTorch: gfx90a (MI200) and each MI300 target (gfx940,
# gfx941, gfx942) this hipcc knows; with nvcc too (sm_90) when one is installed. -Werror: a warning fails.
# Objects go to a temporary folder. Exits non-zero when a file does not compile.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hipcc > /dev/null || { echo "hip_check: hipcc not found (apt-get install hipcc)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -Wall -Wextra -Werror -Iframework/kernels)

# hipcc asks rocm_agent_enumerator for the local GPU unless a target is named; every call names one.
echo 'int probe;' > "$out/probe.hip"
archs=(gfx90a)
for arch in gfx940 gfx941 gfx942; do
  hipcc -x hip --offload-arch=$arch -c "$out/probe.hip" -o "$out/probe.o" 2> /dev/null && archs+=("$arch")
done
version=$(hipcc --version 2> /dev/null || true)
echo "hip_check: $(grep -m1 'HIP version' <<< "$version" || echo 'HIP version unknown'), targets: ${archs[*]}"
offload=()
for arch in "${archs[@]}"; do offload+=("--offload-arch=$arch"); done

nvcc=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)
status=0
for f in framework/kernels/*.cu; do
  name=$(basename "$f" .cu)
  hipcc -x hip "${offload[@]}" "${flags[@]}" -c "$f" -o "$out/$name.hip.o" || { echo "hip_check: $f FAILED with hipcc" >&2; status=1; }
  if [ -n "$nvcc" ]; then
    "$nvcc" -arch=sm_90 -std=c++17 -Iframework/kernels -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror -c "$f" -o "$out/$name.cuda.o" ||
      { echo "hip_check: $f FAILED with nvcc" >&2; status=1; }
  fi
done
[ $status -eq 0 ] && echo "hip_check: $(ls framework/kernels/*.cu | wc -l) kernel files compile for ${archs[*]}${nvcc:+ and sm_90 (nvcc)}"
exit $status
