"""Multiple-choice questions with a long context paragraph (about 250 tokens with the tiny model's
tokenizer), so RoMA steps on the GPU have the shape of the transformers peer (B=32, T~256).
  python3 benchmarks/make_long_mc.py OUT.jsonl COUNT"""
import json
import random
import sys

out, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
words = ("plants light water energy sun cells roots leaves carbon oxygen heat soil rain cloud river rock "
         "metal magnet force motion gravity planet moon star season animal habitat food chain").split()
with open(out, "w") as f:
    for i in range(count):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        context = " ".join(rng.choice(words) for _ in range(120))
        wrong = sorted({a + b + 1, a + b + 2, a + b + 5, abs(a - b) + 3} - {a + b})[:3]
        gold = i % 4  # balanced answer letters: a model stuck on one letter is right a quarter of the time
        options = wrong[:gold] + [a + b] + wrong[gold:]
        f.write(json.dumps({"id": f"long-{i:04d}", "question": {"stem": f"{context}. What is {a} + {b}?", "choices": [
            {"text": str(o), "label": "ABCD"[k]} for k, o in enumerate(options)]}, "answerKey": "ABCD"[gold]}) + "\n")
