"""Groups the kernel tables of moelab_bench and benchmarks/hf_profile.py (their `profile` lines, same run)
into blocks and prints a Markdown table per profiled measure: GPU milliseconds per call by block, both
sides, then each side's heaviest kernels.
  python3 benchmarks/profile_table.py RESULTS.jsonl [RUN_ID]   (default: the last run in the file)"""
import json
import re
import sys
from collections import defaultdict

# First match wins: a kernel name -> the block it belongs to.
BLOCKS = [
    ("attention (SDPA / flash)", r"flash|fmha|attention|sdpa|cutlassF|efficient"),
    ("expert GEMMs (grouped)", r"grouped|Grouped|GroupProblem|ptr_array|PtrArray"),
    ("optimizer", r"multi_tensor|[Aa]dam|foreach"),
    ("GEMMs (attention projections, router, lm_head)", r"gemm|Gemm|GEMM|xmma|nvjet|cublas|cutlass|gemv|matmul|splitK"),
    ("sort / top-k / scan / histogram", r"[Ss]ort|topk|TopK|radix|[Ss]can|cub::|bitonic|histogram|bincount"),
    ("gather / scatter / index", r"[Ii]ndex|gather|scatter|embedding"),
    ("softmax / log-softmax / loss", r"softmax|nll_loss|cross_entropy"),
    ("reductions (norm means, sums)", r"reduce_kernel|[Rr]educe"),
    ("elementwise (norm math, SiLU, RoPE, casts, adds)", r"elementwise|vectorized|unrolled|Elementwise|silu|rms|rope"),
    ("copies / fills / cat", r"[Cc]opy|Memcpy|Memset|fill|CatArray|cat_"),
]


def block_of(name):
    for block, pattern in BLOCKS:
        if re.search(pattern, name):
            return block
    return "other"


def main():
    lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    runs = [l["run"] for l in lines if "run" in l]
    run = sys.argv[2] if len(sys.argv) > 2 else runs[-1]
    profiles = [l for l in lines if l.get("run") == run and l.get("measure") == "profile"]
    for of in dict.fromkeys(p["of"] for p in profiles):
        sides = {p["impl"]: p["kernels"] for p in profiles if p["of"] == of}
        impls = [i for i in ("moelab", "transformers") if i in sides]
        by_block = {i: defaultdict(float) for i in impls}
        launches = {i: defaultdict(float) for i in impls}
        for i in impls:
            for k in sides[i]:
                by_block[i][block_of(k["name"])] += k["us"] / 1e3
                launches[i][block_of(k["name"])] += k["launches"]
        print(f"\n#### GPU time per call of `{of}` by block (run {run}), ms (kernel launches)\n")
        print("| block | " + " | ".join(impls) + " |")
        print("| --- |" + " --- |" * len(impls))
        blocks = [b for b, _ in BLOCKS] + ["other"]
        for b in blocks:
            if any(by_block[i][b] for i in impls):
                print(f"| {b} | " + " | ".join(f"{by_block[i][b]:.2f} ({launches[i][b]:.0f})" for i in impls) + " |")
        print("| **total** | " + " | ".join(f"**{sum(by_block[i].values()):.2f}** ({sum(launches[i].values()):.0f})" for i in impls) + " |")
        for i in impls:
            print(f"\n{i}: heaviest kernels of `{of}` (ms per call, launches)\n")
            for k in sorted(sides[i], key=lambda k: -k["us"])[:8]:
                print(f"- {k['us'] / 1e3:.2f} ms x{k['launches']:.0f} `{k['name'][:110]}` ({block_of(k['name'])})")


if __name__ == "__main__":
    main()
