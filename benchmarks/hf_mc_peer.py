"""lm-evaluation-harness-style multiple-choice scoring by transformers, the peer of moelab's evaluate
stage with loglik scoring: every (context, choice) pair is its own row (context "Question: STEM\nAnswer:",
continuation " CHOICE"), rows sorted by length and batched, the whole row through the model and lm_head,
the continuation's log-probabilities summed. One JSON line: questions/s.
  python3 benchmarks/hf_mc_peer.py MODEL_DIR QUESTIONS.jsonl RUN_ID [ROWS_PER_BATCH]"""
import json
import sys
import time

import torch
import transformers

folder, data, run = sys.argv[1], sys.argv[2], sys.argv[3]
rows_per_batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
questions = [json.loads(l) for l in open(data)]

requests = []  # (context ids, continuation ids, question index)
for qi, q in enumerate(questions):
    context = f"Question: {q['question']['stem']}\nAnswer:"
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    for choice in q["question"]["choices"]:
        whole = tokenizer(context + " " + choice["text"], add_special_tokens=False).input_ids
        requests.append((context_ids, whole[len(context_ids):], qi))


def score_all():
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    logliks = [0.0] * len(requests)
    for start in range(0, len(order), rows_per_batch):
        batch = [requests[i] for i in order[start:start + rows_per_batch]]
        rows = [(c + k)[:-1] for c, k, _ in batch]  # the last token is only predicted
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids.cuda()).logits.float(), -1)
        for r, (c, k, _) in enumerate(batch):
            positions = torch.arange(len(c) - 1, len(c) - 1 + len(k))
            logliks[order[start + r]] = logprobs[r, positions.cuda(), torch.tensor(k).cuda()].sum().item()
    return logliks


score_all()  # warm-up
torch.cuda.synchronize()
start = time.perf_counter()
score_all()
torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(json.dumps({"run": run, "impl": "transformers", "measure": "mc_eval", "questions": len(questions), "requests": len(requests),
                  "rows_per_batch": rows_per_batch, "seconds": seconds, "questions_per_s": len(questions) / seconds}), flush=True)
