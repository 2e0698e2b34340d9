"""transformers' side of benchmarks/bench_model.cpp (moelab_bench): the same measures on the same model
folder and shapes, one JSON line each, plus a `profile` line per measure with every GPU kernel's name,
launches and microseconds per call (torch.profiler; benchmarks/profile_table.py groups them).
  python3 benchmarks/hf_profile.py MODEL_DIR RUN_ID [B T ITERS TRAIN_B TRAIN_T TRAIN_LAST]"""
import json
import sys
import time
from collections import defaultdict

import torch
import transformers

folder, run = sys.argv[1], sys.argv[2]
B, T, iters, train_b, train_t, train_last = (int(a) for a in (sys.argv[3:9] or [8, 2048, 10, 32, 256, 5]))
model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda()
torch.manual_seed(0)


def line(**figures):
    print(json.dumps({"run": run, "impl": "transformers", **figures}), flush=True)


def seconds_per_call(f):
    f()
    f()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def kernel_table(f, calls=3):
    f()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            f()
        torch.cuda.synchronize()
    table = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            table[e.name][0] += 1
            table[e.name][1] += e.time_range.elapsed_us()
    return [{"name": n, "launches": c / calls, "us": us / calls} for n, (c, us) in sorted(table.items())]


def forward_flops_per_token(seq):
    c = model.config
    weights = attention_width = 0.0
    for name, w in model.named_parameters():
        if w.dim() < 2 or name == "model.embed_tokens.weight":
            continue
        n = w.numel()
        if ".experts." in name:
            n *= c.num_experts_per_tok / c.num_experts
        weights += n
        if name.endswith("self_attn.q_proj.weight"):
            attention_width += w.shape[0]
    if c.tie_word_embeddings:
        weights += c.vocab_size * c.hidden_size
    return 2 * weights + 2 * 2 * attention_width * seq / 2


model.eval()
ids = torch.randint(2, 1000, (B, T)).cuda()
with torch.no_grad():
    forward = lambda: model(input_ids=ids).logits
    s = seconds_per_call(forward)
    line(measure="forward", batch=B, seq=T, ms=s * 1e3, tokens_per_s=B * T / s, mfu=B * T / s * forward_flops_per_token(T) / 790e12)
    last_only = lambda: model(input_ids=ids, logits_to_keep=1).logits
    s = seconds_per_call(last_only)
    line(measure="forward_last_only", batch=B, seq=T, ms=s * 1e3, tokens_per_s=B * T / s)
    line(measure="profile", of="forward", kernels=kernel_table(forward))

# benchmarks/hf_peers.py's router-only step: last N routers, CE over 4 ids at the last position, AdamW.
routers = [layer.mlp.gate.weight for layer in model.model.layers[-train_last:]]
for p in model.parameters():
    p.requires_grad_(False)
for w in routers:
    w.requires_grad_(True)
optimizer = torch.optim.AdamW(routers, lr=7e-5, weight_decay=0.01)
train_ids = torch.randint(2, 1000, (train_b, train_t)).cuda()
labels = torch.randint(0, 4, (train_b,)).cuda()


def step():
    logits = model(input_ids=train_ids, logits_to_keep=1).logits[:, -1, :4].float()
    loss = torch.nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


torch.cuda.reset_peak_memory_stats()
s = seconds_per_call(step)
line(measure="train_step", batch=train_b, seq=train_t, train_last=train_last, ms=s * 1e3, tokens_per_s=train_b * train_t / s,
     peak_alloc_mib=torch.cuda.max_memory_allocated() / 2**20)
line(measure="profile", of="train_step", kernels=kernel_table(step))
