#!/usr/bin/env python3
"""Checks a moelab run's TensorBoard log (<run>/tb/) with TensorBoard's own reader (EventAccumulator).

    python3 benchmarks/tb_check.py RUN_DIR

Compares, and exits 1 on the first list of mismatches:
- scalars: every numeric field of every metrics.jsonl row and every number of each stage's summary.json,
  mapped to tags and steps by the rules of moelab/lib/tensorboard.h, equal (as float32) to TensorBoard's
  scalars, with no tag missing or extra;
- histograms: those listed in RUN_DIR/tb_expected.json (written by the tensorboard_test end-to-end test)
  equal to TensorFlow's default-bucket histogram of their values, computed here; every other histogram
  (router probabilities, expert load) whole: counts sum to num, limits increasing, each non-empty bucket
  one default bucket;
- images: those in tb_expected.json and every .png in the run's stage folders, byte for byte, with their
  width and height.

Needs the `tensorboard` Python package (pip install tensorboard). Run it on a run folder the test kept:

    MOELAB_TB_CHECK_DIR=/tmp/tb_run build/bin/sdk_test --gtest_filter='TensorBoard.ATinyRun*'
    python3 benchmarks/tb_check.py /tmp/tb_run
"""
import bisect
import json
import math
import pathlib
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

DBL_MAX = sys.float_info.max


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def default_limits():
    positive, v = [], 1e-12
    while v < 1e20:
        positive.append(v)
        v *= 1.1
    return [-DBL_MAX] + [-x for x in reversed(positive)] + [0.0] + positive + [DBL_MAX]


LIMITS = default_limits()


def histogram_of(values):
    """moelab's TensorBoardWriter::add_histogram: finite values, default buckets, runs of empty buckets merged."""
    values = [v for v in values if math.isfinite(v)]
    counts = [0.0] * len(LIMITS)
    total = squares = 0.0
    for v in values:
        total += v
        squares += v * v
        counts[bisect.bisect_right(LIMITS, v)] += 1
    limits, buckets, i = [], [], 0
    while i < len(LIMITS):
        end, count = LIMITS[i], counts[i]
        i += 1
        if count <= 0:
            while i < len(LIMITS) and counts[i] <= 0:
                end = LIMITS[i]
                i += 1
        limits.append(end)
        buckets.append(count)
    return dict(min=min(values), max=max(values), num=float(len(values)), sum=total, sum_squares=squares,
                bucket_limit=limits, bucket=buckets)


def numbers_of(value, prefix, depth, out, null_is_nan=False):
    if isinstance(value, bool):
        return
    if value is None and null_is_nan:  # metrics.jsonl writes a NaN (a skipped step's loss) as null; TensorBoard keeps NaN
        out.append((prefix, math.nan))
    if isinstance(value, (int, float)):
        out.append((prefix, float(value)))
    elif isinstance(value, dict) and depth > 0:
        for key in sorted(value):
            numbers_of(value[key], prefix + "/" + key, depth - 1, out, null_is_nan)


def expected_scalars(run):
    """tag -> sorted [(step, float32 value)] by the rules of TensorBoardWriter::add_metrics_row / add_stage_summary."""
    expected, counters = {}, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        prefix = row["stage"] if isinstance(row.get("stage"), str) else "metrics"
        for key in sorted(row):
            if isinstance(row[key], str) and key not in ("stage", "time"):
                prefix += "/" + row[key]
        step_field = row.get("step", row.get("epoch"))
        has_step = isinstance(step_field, int) and not isinstance(step_field, bool)
        numbers = []
        for key in sorted(row):
            if key in ("attempt", "step") or (key == "epoch" and has_step and "step" not in row):
                continue
            numbers_of(row[key], prefix + "/" + key, 8, numbers, null_is_nan=True)
        for tag, value in numbers:
            if has_step:
                step = step_field
            else:
                step = counters.get(tag, 0)
                counters[tag] = step + 1
            expected.setdefault(tag, []).append((step, f32(value)))
    for stage in stages(run):
        summary = json.loads((run / stage / "summary.json").read_text())
        numbers = []
        for key in sorted(summary):
            numbers_of(summary[key], f"{stage}/summary/{key}", 3, numbers)
        for tag, value in numbers:
            expected.setdefault(tag, []).append((0, f32(value)))
    return {tag: sorted(points, key=sort_key) for tag, points in expected.items()}


def sort_key(point):
    step, value = point
    return (step, math.isnan(value), value if not math.isnan(value) else 0.0)


def stages(run):
    return [s for s, info in json.loads((run / "summary.json").read_text())["stages"].items()
            if "error" not in info and (run / s / "summary.json").exists()]


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = pathlib.Path(sys.argv[1])
    tb = run / "tb"
    if not any(tb.glob("events.out.tfevents.*")):
        sys.exit(f"{tb}: no events.out.tfevents.* file")
    acc = ea.EventAccumulator(str(tb), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.COMPRESSED_HISTOGRAMS: 0,
                                                      ea.TENSORS: 0},
                              purge_orphaned_data=False)
    acc.Reload()
    tags = acc.Tags()
    problems = []

    want = expected_scalars(run)
    for tag in sorted(set(want) | set(tags["scalars"])):
        if tag not in tags["scalars"]:
            problems.append(f"scalar {tag}: in metrics.jsonl/summary.json, not in TensorBoard")
            continue
        if tag not in want:
            problems.append(f"scalar {tag}: in TensorBoard, not in metrics.jsonl/summary.json")
            continue
        got = sorted(((e.step, e.value) for e in acc.Scalars(tag)), key=sort_key)
        if len(got) != len(want[tag]) or not all(g[0] == w[0] and same(g[1], w[1]) for g, w in zip(got, want[tag])):
            problems.append(f"scalar {tag}: TensorBoard has {got[:5]}... ({len(got)}), moelab logged {want[tag][:5]}... ({len(want[tag])})")
    scalar_count = sum(len(v) for v in want.values())

    sidecar = json.loads((run / "tb_expected.json").read_text()) if (run / "tb_expected.json").exists() else {}
    listed = {h["tag"] for h in sidecar.get("histograms", [])}
    for h in sidecar.get("histograms", []):
        events = [e for e in acc.Histograms(h["tag"])] if h["tag"] in tags["histograms"] else []
        at = [e.histogram_value for e in events if e.step == h["step"]]
        if len(at) != 1:
            problems.append(f"histogram {h['tag']} step {h['step']}: {len(at)} events in TensorBoard, expected 1")
            continue
        want_h, got_h = histogram_of(h["values"]), at[0]
        for field in ("min", "max", "num", "sum", "sum_squares"):
            if getattr(got_h, field) != want_h[field]:
                problems.append(f"histogram {h['tag']}: {field} {getattr(got_h, field)!r}, expected {want_h[field]!r}")
        for field in ("bucket_limit", "bucket"):
            if list(getattr(got_h, field)) != want_h[field]:
                problems.append(f"histogram {h['tag']}: {field} {list(getattr(got_h, field))}, expected {want_h[field]}")
    histogram_count = 0
    for tag in tags["histograms"]:
        for e in acc.Histograms(tag):
            histogram_count += 1
            if tag in listed:
                continue
            h = e.histogram_value
            limits, counts = list(h.bucket_limit), list(h.bucket)
            where = f"histogram {tag} step {e.step}"
            if len(limits) != len(counts) or not counts:
                problems.append(f"{where}: {len(limits)} limits, {len(counts)} buckets")
                continue
            if sum(counts) != h.num or not h.min <= h.max or limits[-1] != DBL_MAX:
                problems.append(f"{where}: counts sum to {sum(counts)}, num {h.num}, min {h.min}, max {h.max}, last limit {limits[-1]}")
            if any(a >= b for a, b in zip(limits, limits[1:])):
                problems.append(f"{where}: bucket limits not increasing")
            for i, (limit, count) in enumerate(zip(limits, counts)):
                if count > 0 and i > 0:
                    k = bisect.bisect_left(LIMITS, limit)
                    if k == 0 or k == len(LIMITS) or LIMITS[k] != limit or LIMITS[k - 1] != limits[i - 1]:
                        problems.append(f"{where}: non-empty bucket ({limits[i - 1]}, {limit}] is not a default bucket")

    images = [dict(i, file=run / i["file"]) for i in sidecar.get("images", [])]
    for stage in stages(run):
        for png in sorted((run / stage).rglob("*.png")):
            images.append(dict(tag=f"{stage}/{png.relative_to(run / stage).with_suffix('').as_posix()}", step=0, file=png))
    for image in images:
        got = [e for e in acc.Images(image["tag"]) if e.step == image["step"]] if image["tag"] in tags["images"] else []
        if len(got) != 1:
            problems.append(f"image {image['tag']} step {image['step']}: {len(got)} events in TensorBoard, expected 1")
            continue
        data = image["file"].read_bytes()
        if got[0].encoded_image_string != data:
            problems.append(f"image {image['tag']}: {len(got[0].encoded_image_string)} bytes differ from {image['file']} ({len(data)} bytes)")
        width, height = struct.unpack(">II", data[16:24])
        if (got[0].width, got[0].height) != (width, height):
            problems.append(f"image {image['tag']}: {got[0].width}x{got[0].height}, the PNG is {width}x{height}")

    if problems:
        print(f"{len(problems)} mismatches between {tb} and what moelab logged:")
        for p in problems[:50]:
            print("  " + p)
        sys.exit(1)
    print(f"ok: {len(want)} scalar tags ({scalar_count} points), {histogram_count} histograms ({len(listed)} recomputed), "
          f"{len(images)} images match what moelab logged")


if __name__ == "__main__":
    main()
