"""transformers as the peer of moelab's routing collection, on the same random OLMoE-1B-7B-shaped model
and batch shape (8 x 2048 tokens): forward with output_router_logits=True, then per layer the softmax,
top-k ids and weights, entropy and top-1 margin, copied to the host in float16 (moelab also writes
them to disk; this peer does not).
  python3 benchmarks/hf_collect_peer.py MODEL_DIR BATCHES  -> one JSON line"""
import json
import sys
import time

import torch
import transformers

model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda().eval()
batches, k = int(sys.argv[2]), model.config.num_experts_per_tok
g = torch.Generator().manual_seed(0)
ids = torch.randint(2, 1000, (8, 2048), generator=g).cuda()


def collect():
    out = model(input_ids=ids, output_router_logits=True, logits_to_keep=1)
    records = []
    for logits in out.router_logits:  # per layer [tokens, experts]
        p = logits.float().softmax(-1)
        weights, chosen = p.topk(k, -1)
        top2 = p.topk(2, -1).values
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        records.append([chosen.to(torch.int16).cpu(), weights.half().cpu(), entropy.half().cpu(), (top2[:, 0] - top2[:, 1]).half().cpu()])
    return records


with torch.no_grad():
    collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for _ in range(batches):
        collect()
    torch.cuda.synchronize()
elapsed = time.time() - start
print(json.dumps({"impl": "transformers", "what": "routing collection forward, 8 x 2048 tokens per batch, records to host",
                  "tokens": batches * ids.numel(), "tokens_per_s": batches * ids.numel() / elapsed,
                  "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30}))
