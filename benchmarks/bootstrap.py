"""Time of the end-of-run metrics (``Runner._final_metrics``: value, bootstrap interval and details per metric).

    python -m benchmarks.bootstrap --records 100000 --repeat 3
    python -m benchmarks.bootstrap --records 1000000 --repeat 1

For generated per-example statistics of a sentiment run (accuracy, macro-F1 over
3 labels) and a QA run (SQuAD F1), it times, interleaved, two contenders:

- ``rows``: the interval as before this change, ``metric.score(stats[rows])``
  for each of the 1000 index resamples;
- ``counts``: :func:`nlpflow.report.metric_entry` as the runner calls it now
  (the same draws as counts, scored with ``Metric.resample_scores``).

It checks that both give the same interval and prints the median seconds per
metric over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nlpflow.plugins.classification import Accuracy, MacroF1
from nlpflow.plugins.question_answering import F1
from nlpflow.report import bootstrap_indices, metric_entry

RESAMPLES, SEED, CONFIDENCE = 1000, 0, 0.95


def rows_interval(metric, stats) -> tuple[float, float]:
    """The interval as computed before resample_scores: one fancy-indexed copy and one score per resample."""
    values = np.array([metric.score(stats[rows]) for rows in bootstrap_indices(len(stats), RESAMPLES, SEED)], dtype=float)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def workload(records: int):
    rng = np.random.default_rng(0)
    labels = ["negative", "neutral", "positive"]
    predicted = [labels[i] for i in rng.integers(0, 3, records)]
    gold = [p if rng.random() < 0.7 else labels[rng.integers(0, 3)] for p in predicted]
    metrics = []
    for metric in (Accuracy(), MacroF1()):
        metrics.append((metric, metric.example_stats(predicted, gold)))
    metrics.append((F1(), np.column_stack([rng.random(records).round(3), rng.random(records) < 0.05]).astype(float)))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    metrics = workload(args.records)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for metric, stats in metrics:
            started = time.perf_counter()
            old = rows_interval(metric, stats)
            times.setdefault((metric.name, "rows"), []).append(time.perf_counter() - started)
            started = time.perf_counter()
            entry = metric_entry(metric, stats, RESAMPLES, SEED, CONFIDENCE)
            times.setdefault((metric.name, "counts"), []).append(time.perf_counter() - started)
            new = (entry["ci"]["low"], entry["ci"]["high"])
            assert np.allclose(old, new, rtol=1e-12, atol=1e-12), (metric.name, old, new)
    print(f"{args.records} records, {RESAMPLES} resamples, median of {args.repeat} interleaved runs (seconds)")
    print(f"{'metric':<14}{'rows (before)':>15}{'counts (now)':>15}{'speed-up':>10}")
    for metric, _ in metrics:
        before = statistics.median(times[(metric.name, "rows")])
        after = statistics.median(times[(metric.name, "counts")])
        print(f"{metric.name:<14}{before:>15.2f}{after:>15.2f}{before / after:>9.1f}x")


if __name__ == "__main__":
    main()
