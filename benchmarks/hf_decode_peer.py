"""transformers' side of issue #16's decoding measures (moelab_bench_decode), on the same model and shapes:
greedy `generate` at batch 1 (decode_b1), over many prompts in batches (decode_batched), and the time to
the first token of a long prompt (ttft_2k). RoE has no transformers counterpart.
  python3 benchmarks/hf_decode_peer.py MODEL_DIR RUN_ID [--prompt 128] [--new 256] [--batched-prompts 256]
                                       [--batch 64] [--ttft-prompt 2048]
One JSON line per measure: run, measure, impl = transformers, tokens_per_s (ms for ttft_2k)."""
import argparse
import json
import time

import torch
import transformers

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("run")
parser.add_argument("--prompt", type=int, default=128)
parser.add_argument("--new", type=int, default=256)
parser.add_argument("--batched-prompts", type=int, default=256)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--ttft-prompt", type=int, default=2048)
args = parser.parse_args()

model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda().eval()
vocab = min(1000, model.config.vocab_size)
g = torch.Generator().manual_seed(0)


def ids(rows, length):
    return torch.randint(2, vocab, (rows, length), generator=g).cuda()


def generate_seconds(prompt, new_tokens):
    torch.cuda.synchronize()
    start = time.time()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=1)
    torch.cuda.synchronize()
    return time.time() - start


def line(measure, **figures):
    print(json.dumps({"run": args.run, "measure": measure, "impl": "transformers", **figures}), flush=True)


with torch.no_grad():
    generate_seconds(ids(1, args.prompt), 8)  # warm-up
    seconds = generate_seconds(ids(1, args.prompt), args.new)
    line("decode_b1", prompt=args.prompt, new_tokens=args.new, tokens_per_s=args.new / seconds)

    total = 0.0
    for done in range(0, args.batched_prompts, args.batch):
        rows = min(args.batch, args.batched_prompts - done)
        total += generate_seconds(ids(rows, args.prompt), args.new)
    line("decode_batched", prompts=args.batched_prompts, batch=args.batch, prompt=args.prompt, new_tokens=args.new,
         tokens_per_s=args.batched_prompts * args.new / total)

    prompt = ids(1, args.ttft_prompt)
    generate_seconds(prompt, 1)
    line("ttft_2k", prompt=args.ttft_prompt, ms=generate_seconds(prompt, 1) * 1e3)
