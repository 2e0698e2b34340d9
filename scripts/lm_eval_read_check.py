#!/usr/bin/env python3
"""Read a moelab evaluate stage's lm-eval files with lm-evaluation-harness's own code.

    pip install lm_eval        # 0.4
    python3 scripts/lm_eval_read_check.py runs/<experiment>/<time>/<stage> [runs/.../<stage>/finetuned]

For each folder: prints lm-eval's results table (lm_eval.utils.make_table) and checks that lm-eval's
file-name helpers find the results and samples files and read the same task and date from them, that
each task's metric equals the mean of its samples' values, and that its stderr is lm-eval's
mean_stderr of them (lm_eval.api.metrics). Exits non-zero on the first mismatch.
"""

import json
import math
import sys
from pathlib import Path

from lm_eval.api.metrics import mean, mean_stderr
from lm_eval.utils import get_file_datetime, get_file_task_name, get_results_filenames, get_sample_results_filenames, make_table


def check(folder):
    names = [str(p) for p in sorted(folder.iterdir())]
    results_files = get_results_filenames(names)
    sample_files = get_sample_results_filenames(names)
    if len(results_files) != 1 or not sample_files:
        sys.exit(f"{folder}: lm-eval finds results files {results_files} and samples files {sample_files}; expected one and at least one")
    results = json.loads(Path(results_files[0]).read_text())
    print(f"{folder}:")
    print(make_table(json.loads(json.dumps(results))))
    results_date = Path(results_files[0]).name[len("results_"):-len(".json")]
    for samples_file in sample_files:
        name = Path(samples_file).name
        task, date = get_file_task_name(name), get_file_datetime(name)
        if date != results_date:
            sys.exit(f"{samples_file}: date {date} is not the results file's {results_date}")
        if task not in results["results"]:
            sys.exit(f"{samples_file}: task {task} is not in {results_files[0]}")
        samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
        if len(samples) != results["n-samples"][task]["effective"]:
            sys.exit(f"{samples_file}: {len(samples)} lines for n-samples {results['n-samples'][task]}")
        for metric in samples[0]["metrics"]:
            values = [s[metric] for s in samples]
            value, stderr = results["results"][task][f"{metric},none"], results["results"][task][f"{metric}_stderr,none"]
            if not math.isclose(value, mean(values), rel_tol=0, abs_tol=1e-12) or not math.isclose(stderr, mean_stderr(values), rel_tol=1e-12):
                sys.exit(f"{task} {metric}: results {value} +- {stderr}, lm-eval from the samples {mean(values)} +- {mean_stderr(values)}")
        print(f"  {task}: {len(samples)} samples; {', '.join(samples[0]['metrics'])} and stderr equal lm-eval's from the samples")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for folder in sys.argv[1:]:
        check(Path(folder))
    print("lm_eval_read_check: ok")
