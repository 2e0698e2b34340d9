"""Writes the sample multiple-choice sets the default configs run on (ARC JSONL form), deterministically:
  python3 configs/data/make_sample_mc.py   ->   configs/data/arith_train.jsonl, configs/data/arith_eval.jsonl
Small arithmetic and comparison questions with four lettered choices and a balanced answer key."""
import json
import os
import random

here = os.path.dirname(os.path.abspath(__file__))


def question(rng, i):
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    kind = i % 3
    if kind == 0:
        stem, answer = f"What is {a} + {b}?", a + b
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        stem, answer = f"What is {a} - {b}?", a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        stem, answer = f"What is {a} times {b}?", a * b
    wrong = set()
    while len(wrong) < 3:
        w = answer + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
        if w != answer and w >= 0:
            wrong.add(w)
    gold = i % 4
    options = sorted(wrong)
    options.insert(gold, answer)
    labels = "ABCD"
    return {"id": f"arith-{i:03d}", "question": {"stem": stem, "choices": [{"text": str(o), "label": labels[k]} for k, o in enumerate(options)]},
            "answerKey": labels[gold]}


rng = random.Random(7)
rows = [question(rng, i) for i in range(96)]
for name, part in (("arith_train.jsonl", rows[:64]), ("arith_eval.jsonl", rows[64:])):
    with open(os.path.join(here, name), "w") as f:
        for r in part:
            f.write(json.dumps(r) + "\n")
