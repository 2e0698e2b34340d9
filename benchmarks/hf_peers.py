"""transformers on the same random OLMoE-1B-7B-shaped model, as the peer of moelab's measurements:
router-only train step (last 5 routers, B=32, T=256), and greedy generate at batch 1.
  python3 benchmarks/hf_peers.py MODEL_DIR  -> one JSON line per measurement"""
import json
import sys
import time

import torch
import transformers

model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda()
routers = [layer.mlp.gate.weight for layer in model.model.layers[-5:]]
for p in model.parameters():
    p.requires_grad_(False)
for w in routers:
    w.requires_grad_(True)
optimizer = torch.optim.AdamW(routers, lr=7e-5, weight_decay=0.01)
g = torch.Generator().manual_seed(0)
ids = torch.randint(2, 1000, (32, 256), generator=g).cuda()
labels = torch.randint(0, 4, (32,)).cuda()


def train_step():
    logits = model(input_ids=ids).logits[:, -1, :4].float()
    loss = torch.nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


for _ in range(3):
    train_step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
start, steps = time.time(), 20
for _ in range(steps):
    train_step()
torch.cuda.synchronize()
elapsed = time.time() - start
print(json.dumps({"impl": "transformers", "what": "router-only train step B=32 T=256", "steps_per_s": steps / elapsed,
                  "tokens_per_s": steps * ids.numel() / elapsed, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30}))

model.eval()
prompt = torch.randint(2, 1000, (1, 16), generator=g).cuda()
with torch.no_grad():
    model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=1)
    torch.cuda.synchronize()
    start = time.time()
    out = model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=1)
    torch.cuda.synchronize()
elapsed = time.time() - start
print(json.dumps({"impl": "transformers", "what": "greedy generate batch 1, 64 new tokens", "tokens_per_s": 64 / elapsed}))
