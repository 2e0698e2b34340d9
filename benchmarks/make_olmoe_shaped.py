"""Writes a random-weight model with OLMoE-1B-7B-0125-Instruct's shapes (16 layers, hidden 2048, 64
experts of intermediate 1024, top-8, vocab 50304) in Hugging Face layout, bf16, with transformers'
save_pretrained and the built-in tiny model's tokenizer.json (its ids are a subset of the vocab).
  python3 benchmarks/make_olmoe_shaped.py OUT_DIR TOKENIZER_JSON"""
import shutil
import sys

import torch
import transformers

out, tokenizer = sys.argv[1], sys.argv[2]
config = transformers.OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                                  num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                                  norm_topk_prob=False, clip_qkv=None, rope_theta=10000.0, max_position_embeddings=4096,
                                  rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, eos_token_id=50279, bos_token_id=None)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = transformers.OlmoeForCausalLM(config).eval()
model.save_pretrained(out, safe_serialization=True, max_shard_size="4GB")
shutil.copy(tokenizer, f"{out}/tokenizer.json")
print("olmoe-shaped model:", sum(p.numel() for p in model.parameters()) / 1e9, "B parameters ->", out)
