#!/usr/bin/env python3
"""Checks the export_hf stage against transformers: the exported folder, loaded with from_pretrained, gives
moelab's logits (and router logits) within 1e-4 in float32; so does the base model with the router patch
loaded over it.

    python3 benchmarks/hf_export_check.py --runexp build/bin/runexp [--model builtin:tiny-olmoe] [--device cuda] [--keep DIR]

Steps (each runexp run in DIR, a temporary folder unless --keep):
1. writes ids.safetensors: input_ids int64 [2, 24] drawn with a fixed seed below the model's vocabulary;
2. runexp: router-only finetuning (task_ce on configs/data/arith_train.jsonl, the last 2 MoE layers, a large
   lr so the routers move), then export_hf twice: mode = "full" (hf/) and mode = "patch" (patch/);
3. runexp: dump_logits on the exported folder (model.path = .../export/hf), float32: moelab's logits of the
   model with the finetuned routers;
4. transformers: AutoModelForCausalLM.from_pretrained(hf/, torch_dtype=float32) on the same ids: logits and
   router logits (output_router_logits) against the dump, max |difference| <= 1e-4; then the base model with
   router_patch.safetensors loaded over it (load_state_dict(strict=False), every patch tensor an existing
   parameter of the same shape) against the same dump.
Exits 1 with the numbers on any mismatch. Needs torch, transformers and safetensors (the GPU box has them).
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

TOL = 1e-4
REPO = pathlib.Path(__file__).resolve().parent.parent

TRAIN_AND_EXPORT = """
name = "hf_export_check"
seed = 0
run_dir = "{run_dir}"
stages = ["train", "export", "patch"]

[model]
path = "{model}"
device = "{device}"
dtype = "float32"

[data]
plugin = "jsonl"
path = "{data}"

[task]
plugin = "task_ce"

[train]
plugin = "finetune"
dataset = "data"
objective = "task"
last_layers = 2
epochs = 1
batch_size = 16
lr = 0.05

[export]
plugin = "export_hf"
checkpoint = "@train/routers.safetensors"
mode = "full"
router_dtype = "float32"

[patch]
plugin = "export_hf"
checkpoint = "@train/routers.safetensors"
mode = "patch"
router_dtype = "float32"
"""

DUMP = """
name = "hf_export_dump"
run_dir = "{run_dir}"
stages = ["dump"]

[model]
path = "{model}"
device = "{device}"
dtype = "float32"

[dump]
plugin = "dump_logits"
input = "{ids}"
"""


def newest_run(root: pathlib.Path) -> pathlib.Path:
    runs = sorted(p for p in root.iterdir() if (p / "summary.json").exists())
    if not runs:
        sys.exit(f"no run folder in {root}")
    return runs[-1]


def runexp(binary: str, toml: pathlib.Path) -> None:
    print("+", binary, toml, flush=True)
    subprocess.run([binary, str(toml)], check=True)


def hf_outputs(model, ids: torch.Tensor, device: str):
    with torch.no_grad():
        out = model(input_ids=ids.to(device), output_router_logits=True)
    routers = [r.float().cpu() for r in out.router_logits] if getattr(out, "router_logits", None) is not None else []
    return out.logits.float().cpu(), routers


def compare(label: str, logits: torch.Tensor, routers, dump: dict, moe_layers) -> list:
    failures = []
    diff = (logits - dump["logits"]).abs().max().item()
    print(f"{label}: logits max |diff| = {diff:.3e}")
    if not diff <= TOL:
        failures.append(f"{label}: logits differ by {diff:.3e} > {TOL}")
    if routers:
        if len(routers) != len(moe_layers):
            failures.append(f"{label}: transformers returned {len(routers)} router logits, moelab {len(moe_layers)} MoE layers")
        for r, layer in zip(routers, moe_layers):
            d = (r.reshape(dump[f"router_logits.{layer}"].shape) - dump[f"router_logits.{layer}"]).abs().max().item()
            print(f"{label}: router logits of decoder layer {layer}: max |diff| = {d:.3e}")
            if not d <= TOL:
                failures.append(f"{label}: router logits of layer {layer} differ by {d:.3e} > {TOL}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runexp", required=True, help="the runexp binary (build/bin/runexp)")
    ap.add_argument("--model", default="builtin:tiny-olmoe", help="[model] path: builtin:tiny-olmoe or a HF model folder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep", help="work in this folder and keep it")
    args = ap.parse_args()

    work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="hf_export_check_"))
    work.mkdir(parents=True, exist_ok=True)
    train = work / "train_export.toml"
    train.write_text(TRAIN_AND_EXPORT.format(run_dir=work / "runs", model=args.model, device=args.device,
                                             data=REPO / "configs" / "data" / "arith_train.jsonl"))
    runexp(args.runexp, train)
    run = newest_run(work / "runs" / "hf_export_check")
    hf_dir, patch_dir = run / "export" / "hf", run / "patch" / "hf"
    about = json.loads((patch_dir / "router_patch.json").read_text())
    base_dir = pathlib.Path(about["apply_to"]["path"])

    config = json.loads((hf_dir / "config.json").read_text())
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config["vocab_size"], (2, 24), generator=generator, dtype=torch.int64)
    save_file({"input_ids": ids}, str(work / "ids.safetensors"))
    dump_toml = work / "dump.toml"
    dump_toml.write_text(DUMP.format(run_dir=work / "runs", model=hf_dir, device=args.device, ids=work / "ids.safetensors"))
    runexp(args.runexp, dump_toml)
    dump = load_file(str(newest_run(work / "runs" / "hf_export_dump") / "dump" / "logits.safetensors"))
    moe_layers = sorted(int(k.split(".")[1]) for k in dump if k.startswith("router_logits."))

    failures = []
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).to(args.device).eval()
    failures += compare("full export", *hf_outputs(model, ids, args.device), dump, moe_layers)
    del model

    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).to(args.device).eval()
    patch = load_file(str(patch_dir / "router_patch.safetensors"))
    params = dict(base.named_parameters())
    for name, tensor in patch.items():
        if name not in params:
            failures.append(f"patch: {name} is not a parameter of the base model")
        elif params[name].shape != tensor.shape:
            failures.append(f"patch: {name} has shape {list(tensor.shape)}, the base model's {list(params[name].shape)}")
    missing_before = set(params)
    result = base.load_state_dict(patch, strict=False)
    if result.unexpected_keys:
        failures.append(f"patch: tensors transformers does not know: {result.unexpected_keys}")
    if len(missing_before) - len(result.missing_keys) != len(patch):
        failures.append(f"patch: {len(patch)} tensors, but {len(missing_before) - len(result.missing_keys)} parameters were loaded")
    failures += compare("base + router patch", *hf_outputs(base, ids, args.device), dump, moe_layers)

    print(f"work folder: {work}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"OK: transformers' logits of the exported folder and of base + patch equal moelab's within {TOL} (float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
