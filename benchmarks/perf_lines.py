"""The issue-#15 measures of one device call as raw lines for benchmarks/results_gpu.jsonl: each carries
`run`, `measure`, `impl` and its figures, from moelab's run folders (the newest run under each) and the
peers' JSON lines. Measures: forward, train_epoch1, train_epoch2plus, mc_eval, collect.
  python3 benchmarks/perf_lines.py RUN_ID PROFILE.jsonl RUNS_DIR [PEER.jsonl...]   -> JSON lines on stdout"""
import glob
import json
import os
import sys

run, profile, runs = sys.argv[1], sys.argv[2], sys.argv[3]
peers = sys.argv[4:]


def newest(experiment):
    found = sorted(glob.glob(os.path.join(runs, experiment, "*", "summary.json")))
    return json.load(open(found[-1])) if found else None


def emit(measure, impl, **figures):
    print(json.dumps({"run": run, "measure": measure, "impl": impl, **figures}))


lines = [json.loads(l) for l in open(profile) if l.strip().startswith("{")]
peak = {l["impl"]: l["peak_gpu_mib"] for l in lines if l.get("measure") == "process_peak"}
for l in lines:
    if l.get("measure") == "forward":
        emit("forward", l["impl"], batch=l["batch"], seq=l["seq"], tokens_per_s=l["tokens_per_s"], mfu=l.get("mfu"))
    if l.get("measure") == "train_step" and l["impl"] == "transformers":
        # transformers' router-only step caches nothing: every epoch costs this.
        emit("train_epoch1", "transformers", batch=l["batch"], seq=l["seq"], train_last=l["train_last"],
             tokens_per_s=l["tokens_per_s"], peak_gpu_mib=peak.get("transformers"), peak_alloc_mib=l.get("peak_alloc_mib"),
             what="router-only step, CE at the last position (benchmarks/hf_profile.py)")
    if l.get("measure") == "train_step" and l["impl"] == "moelab":
        emit("train_step_bare", "moelab", batch=l["batch"], seq=l["seq"], train_last=l["train_last"], tokens_per_s=l["tokens_per_s"],
             what="the same bare router-only step through moelab's Model (moelab_bench)")

roma = newest("roma_last5")
if roma:
    train = roma["stages"]["train"]
    speeds = [e["tokens_per_second"] if isinstance(e, dict) else e for e in train.get("epoch_tokens_per_second") or []]
    peak_roma = json.load(open(os.path.join(runs, "roma_peak.json")))["peak_gpu_mib"] if os.path.exists(os.path.join(runs, "roma_peak.json")) else None
    what = "RoMA finetune (configs/roma_last5.toml: last 5 routers, task CE + live manifold term, B=32, T~256)"
    if speeds:
        emit("train_epoch1", "moelab", tokens_per_s=speeds[0], peak_gpu_mib=peak_roma, what=what)
    if len(speeds) > 1:
        emit("train_epoch2plus", "moelab", tokens_per_s=sum(speeds[1:]) / len(speeds[1:]), epochs=len(speeds) - 1,
             peak_gpu_mib=peak_roma, what=what, reg_by_epoch=[e.get("reg") for e in train.get("epochs", [])],
             cache_hidden=train.get("cache_hidden"))

mc = newest("mc_eval")
if mc:
    for stage, mode in (("shared", "shared question prefix"), ("separate", "one row per choice")):
        s = mc["stages"][stage]
        emit("mc_eval", "moelab", questions=s["questions"], seconds=s["seconds"], questions_per_s=s["questions"] / s["seconds"],
             scoring=mode, acc=s["base"]["acc"]["accuracy"], variant=stage)

study = newest("routing_study")
if study:
    c = study["stages"]["study"]["collection"]["primary"]
    emit("collect", "moelab", tokens=c["tokens"], tokens_per_s=c["tokens_per_second"],
         **{k: c[k] for k in ("forward_tokens_per_second", "forwards", "mean_tokens_per_forward", "forward_seconds") if k in c})

for p in peers:
    for l in open(p):
        if l.strip().startswith("{"):
            j = json.loads(l)
            j.setdefault("run", run)
            if j.get("measure") in ("mc_eval", "collect") or "measure" not in j:
                j.setdefault("measure", "collect")
                print(json.dumps(j))
