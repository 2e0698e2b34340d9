"""One JSON line of figures from a moelab run folder (the newest run under EXPERIMENT_DIR).
  python3 benchmarks/summarize_run.py roma|roe|quant|collect EXPERIMENT_DIR PEAK_GPU_MIB"""
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
elif kind == "quant":
    st = summary["stages"]
    q, r = st["quantize"], st["recover"]
    print(json.dumps({"impl": "moelab", "what": "quantization recovery: alpha, MXFP4/MXFP8 plan, GPTQ 128x2048 calibration, router finetune",
                      "alpha_s": st["alpha"]["seconds"], "gptq_s": q["seconds"], "matrices": q["matrices"], "formats": q["formats"],
                      "packed_gb": q["packed_bytes"] / 1e9, "bf16_gb": q["bf16_bytes"] / 1e9, "bits_per_weight": q["bits_per_weight"],
                      "rtn_fallbacks": q["rtn_fallbacks"], "router_finetune_s": r["seconds"], "router_finetune_steps": r["steps"],
                      "report": st["report"]["rows"], "peak_gpu_mib": peak}))
elif kind == "collect":
    c = summary["stages"]["study"]["collection"]["primary"]
    print(json.dumps({"impl": "moelab", "what": "routing collection, 3 text sets, top-k + entropy + margin, float16", "tokens": c["tokens"],
                      "tokens_per_s": c["tokens_per_second"], "disk_bytes_per_token": c["disk_bytes_per_token"], "chunks": c["chunks"],
                      "seconds": c["seconds"], "peak_gpu_mib": peak}))
else:
    g = summary["stages"]["generate"]
    print(json.dumps({"impl": "moelab", "what": "generate batch 1, 64 new tokens", "greedy_tokens_per_s": g["greedy"]["tokens_per_second"],
                      "roe_k8_tokens_per_s": g["roe"]["tokens_per_second"], "peak_gpu_mib": peak}))
