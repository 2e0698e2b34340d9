#!/usr/bin/env bash
# GPU check of issue #17 (not run in CI; needs one CUDA GPU and a LibTorch with c10d NCCL):
#  1. configs/roma_last5.toml under torchrun with NCCL at world size 1 gives the non-distributed run's
#     routers (within 1e-5) and the same per-question answers;
#  2. the distributed wrapper's per-step cost of router training at world size 1 (target: < 3%), from
#     the train stage's steps_per_second of the two runs (MODEL=/models/OLMoE-1B-7B-0125-Instruct for a
#     step of realistic length; the built-in tiny model's steps are too short to say much).
# usage: tests/distributed/gpu_check.sh [BUILD_DIR] [OUT_DIR]     (env: MODEL, DTYPE, REPEATS)
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-/tmp/moelab_gpu_check}
MODEL=${MODEL:-builtin:tiny-olmoe}
DTYPE=${DTYPE:-float32}
REPEATS=${REPEATS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNEXP="$BUILD/bin/runexp"
COMMON=(--set model.device=cuda --set "model.path=\"$MODEL\"" --set "model.dtype=\"$DTYPE\"")
rm -rf "$OUT" && mkdir -p "$OUT"

launch_world1() {  # torchrun when it is installed, else the same variables by hand
  if command -v torchrun >/dev/null; then
    torchrun --standalone --nproc_per_node=1 --no-python "$RUNEXP" "$@"
  else
    RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 "$RUNEXP" "$@"
  fi
}

for i in $(seq 1 "$REPEATS"); do
  "$RUNEXP" "$ROOT/configs/roma_last5.toml" "${COMMON[@]}" --set "run_dir=\"$OUT/one_$i\""
  launch_world1 "$ROOT/configs/roma_last5.toml" "${COMMON[@]}" --set 'distributed.backend="nccl"' --set "run_dir=\"$OUT/nccl_$i\""
done
# The process group is made before the run folder exists; summary.json records it.
python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("distributed", {}).get("backend") != "nccl")' \
  "$(ls -d "$OUT"/nccl_1/roma_last5/*/ | head -1)summary.json" || { echo "FAIL: the world-size-1 run made no NCCL process group"; exit 1; }

python3 - "$OUT" "$REPEATS" <<'PY'
import glob, json, statistics, struct, sys
out, repeats = sys.argv[1], int(sys.argv[2])

def run(kind, i):
    return glob.glob(f"{out}/{kind}_{i}/roma_last5/*")[0]

def tensors(path):  # safetensors without numpy/torch: header + little-endian floats
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    fmt = {"F32": "f", "F64": "d", "BF16": None}
    result = {}
    for name, t in header.items():
        if name == "__metadata__": continue
        b, e = t["data_offsets"]
        raw = data[8 + n + b:8 + n + e]
        if t["dtype"] == "BF16":
            result[name] = [struct.unpack("<f", b"\0\0" + raw[k:k + 2])[0] for k in range(0, len(raw), 2)]
        else:
            result[name] = list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt[t["dtype"]]), fmt[t["dtype"]]), raw))
    return result

a, b = tensors(run("one", 1) + "/train/routers.safetensors"), tensors(run("nccl", 1) + "/train/routers.safetensors")
worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
pa = json.load(open(run("one", 1) + "/eval/predictions.json"))
pb = json.load(open(run("nccl", 1) + "/eval/predictions.json"))
answers_equal = [(q["base"]["letter"], q["finetuned"]["letter"]) == (r["base"]["letter"], r["finetuned"]["letter"]) for q, r in zip(pa, pb)]
print(f"routers: max |one process - NCCL world 1| = {worst:.3g} (limit 1e-5)")
print(f"evaluation: {sum(answers_equal)}/{len(answers_equal)} questions with identical answers")
speed = {k: [json.load(open(run(k, i) + "/summary.json"))["stages"]["train"]["steps_per_second"] for i in range(1, repeats + 1)]
         for k in ("one", "nccl")}
one, nccl = statistics.median(speed["one"]), statistics.median(speed["nccl"])
overhead = one / nccl - 1
print(f"train steps/s, median of {repeats}: one process {one:.3f}, NCCL world 1 {nccl:.3f}: wrapper overhead {100 * overhead:+.2f}% per step (target < 3%)")
ok = worst <= 1e-5 and all(answers_equal) and overhead < 0.03
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
