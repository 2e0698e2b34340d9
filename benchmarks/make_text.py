"""Writes a large raw-text file for the GPU benchmarks (calibration text, routing-study sets) by
shuffling the lines of one of configs/data/text/*.txt into paragraphs, seeded, until it holds about
N characters (about N / 4 tokens with the tiny model's tokenizer).
  python3 benchmarks/make_text.py SOURCE_TXT OUT_TXT N_CHARS SEED"""
import random
import sys

source, out, size, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [l.rstrip("\n") for l in open(source, encoding="utf-8") if l.strip()]
rng = random.Random(seed)
written = 0
with open(out, "w", encoding="utf-8") as f:
    while written < size:
        paragraph = "\n".join(rng.sample(lines, min(len(lines), rng.randint(3, 8))))
        f.write(paragraph + "\n\n")
        written += len(paragraph) + 2
print(f"{out}: {written} characters from {source}")
