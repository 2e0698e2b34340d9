#!/usr/bin/env python3
"""Export an lm-evaluation-harness task's Hugging Face dataset to the JSON Lines file moelab reads.

    python3 scripts/hf_to_moelab_jsonl.py arc_challenge /data/arc_challenge_test.jsonl
    runexp configs/roma_last5.toml --set data.eval.path=/data/arc_challenge_test.jsonl --set eval.task=arc_challenge

The task names, Hugging Face datasets and splits are lm-eval's (lm_eval/tasks/*/<task>.yaml); the split
is the one lm-eval scores (test_split, else validation_split) unless --split says otherwise. Rows are
written as the dataset has them: moelab's jsonl dataset recognizes each of these layouts and prepares
it as lm-eval's task YAML does (doc_to_text, doc_to_choice, doc_to_target; HellaSwag's preprocess,
Winogrande's partial scoring). --preview N prints lm-eval's context, choices and target of the first N
rows, computed here in Python from the task definitions, to compare with moelab's samples_<task>_*.jsonl.
--input reads rows from a local JSON Lines file instead of the Hugging Face hub (offline machines).

Needs the `datasets` package unless --input is given.
"""

import argparse
import json
import re
import sys

# lm-eval 0.4 task -> (dataset_path, dataset_name, evaluated split), from its task YAMLs.
TASKS = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "openbookqa": ("allenai/openbookqa", "main", "test"),
    "sciq": ("allenai/sciq", None, "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "piqa": ("baber/piqa", None, "validation"),
}


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def lm_eval_view(task, doc):
    """(contexts, choices, gold index) as lm-eval's task definition builds them for `doc`."""
    if task in ("arc_easy", "arc_challenge"):
        return ["Question: " + doc["question"] + "\nAnswer:"], doc["choices"]["text"], doc["choices"]["label"].index(doc["answerKey"])
    if task == "openbookqa":
        return [doc["question_stem"]], doc["choices"]["text"], doc["choices"]["label"].index(doc["answerKey"].lstrip())
    if task == "sciq":
        context = doc["support"].lstrip() + "\nQuestion: " + doc["question"] + "\nAnswer:"
        return [context], [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]], 3
    if task == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return [hellaswag_preprocess(doc["activity_label"] + ": " + ctx)], [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"])
    if task == "winogrande":
        blank = doc["sentence"].index("_")
        contexts = [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
        return contexts, [doc["sentence"][blank + 1:].strip()], {"1": 0, "2": 1}[doc["answer"]]
    if task == "piqa":
        return ["Question: " + doc["goal"] + "\nAnswer:"], [doc["sol1"], doc["sol2"]], int(doc["label"])
    raise KeyError(task)


def rows_of(args):
    if args.input:
        with open(args.input, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    try:
        import datasets
    except ImportError:
        sys.exit("hf_to_moelab_jsonl: the `datasets` package is needed to read the hub (pip install datasets), or give --input FILE.jsonl")
    path, name, split = TASKS[args.task]
    return datasets.load_dataset(path, name, split=args.split or split)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="lm-eval task name: " + ", ".join(TASKS))
    parser.add_argument("output", help="the .jsonl file to write ('-': standard output)")
    parser.add_argument("--split", help="dataset split (default: the one lm-eval scores)")
    parser.add_argument("--limit", type=int, default=0, help="write at most this many rows (0: all)")
    parser.add_argument("--input", help="read the rows from this JSON Lines file instead of the Hugging Face hub")
    parser.add_argument("--preview", type=int, default=0, metavar="N", help="print lm-eval's context, choices and target of the first N rows")
    args = parser.parse_args()
    if args.task not in TASKS:
        parser.error(f"task {args.task!r} is not one of {', '.join(TASKS)}")

    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    written = 0
    for i, row in enumerate(rows_of(args)):
        if args.limit and written >= args.limit:
            break
        row = dict(row)
        lm_eval_view(args.task, row)  # a row lm-eval could not read fails here, naming the task
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
        if i < args.preview:
            contexts, choices, gold = lm_eval_view(args.task, row)
            print(json.dumps({"doc_id": i, "contexts": contexts, "choices": choices, "target": gold}, ensure_ascii=False), file=sys.stderr)
    if out is not sys.stdout:
        out.close()
    print(f"hf_to_moelab_jsonl: {written} {args.task} rows -> {args.output}; evaluate with "
          f"--set data.<table>.path={args.output} --set <eval stage>.task={args.task}", file=sys.stderr)


if __name__ == "__main__":
    main()
