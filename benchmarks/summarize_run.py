"""One JSON line of figures from a moelab run folder (the newest run under EXPERIMENT_DIR).
  python3 benchmarks/summarize_run.py roma|roe EXPERIMENT_DIR PEAK_GPU_MIB"""
import glob
import json
import os
import sys

kind, experiment, peak = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = sorted(glob.glob(os.path.join(experiment, "*")))[-1]
summary = json.load(open(os.path.join(run, "summary.json")))
if kind == "roma":
    train = summary["stages"]["train"]
    print(json.dumps({"impl": "moelab", "what": "RoMA finetune (last 5 routers, B=32, T~256, bf16, fp32 routers)", "steps": train["steps"],
                      "steps_per_s": train["steps_per_second"], "tokens_per_s": train["tokens_per_second"],
                      "reg_by_epoch": [e.get("reg") for e in train["epochs"]], "peak_gpu_mib": peak,
                      "eval": {k: summary["stages"]["eval"]["base"]["letter"]["accuracy"] for k in ["base_accuracy"]}}))
else:
    g = summary["stages"]["generate"]
    print(json.dumps({"impl": "moelab", "what": "generate batch 1, 64 new tokens", "greedy_tokens_per_s": g["greedy"]["tokens_per_second"],
                      "roe_k8_tokens_per_s": g["roe"]["tokens_per_second"], "peak_gpu_mib": peak}))
