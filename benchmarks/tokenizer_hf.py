"""HF `tokenizers` single-thread encode speed on the tokenizer corpus (the peer of `runexp tokenize --benchmark`):
the corpus lines joined by newlines, repeated 200 times, encoded once.
  python3 benchmarks/tokenizer_hf.py NAME=tokenizer.json ...   -> one JSON line per tokenizer
"""
import json
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
corpus = [json.loads(l)["text"] for l in open(os.path.join(here, "..", "tests", "fixtures", "tokenizers", "corpus.jsonl"), encoding="utf-8")]
big = "\n".join(corpus) * 200
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    tok = Tokenizer.from_file(path)
    start = time.perf_counter()
    n = len(tok.encode(big, add_special_tokens=False).ids)
    seconds = time.perf_counter() - start
    print(json.dumps({"name": name, "impl": "hf-tokenizers", "bytes": len(big.encode()), "tokens": n, "seconds": seconds,
                      "MB_per_s": len(big.encode()) / seconds / 1e6}))
