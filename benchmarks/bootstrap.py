"""Time of the end-of-run metrics (``Runner._final_metrics``: value, bootstrap interval and details per metric).

    python -m benchmarks.bootstrap --records 100000 --repeat 3
    python -m benchmarks.bootstrap --records 1000000 --repeat 1

For generated per-example statistics of a sentiment run (accuracy, macro-F1 over
3 labels) and a QA run (SQuAD exact match and F1), it times, interleaved, three contenders:

- ``rows``: the interval as nlpflow first computed it, ``metric.score(stats[rows])``
  for each of the 1000 index resamples;
- ``counts``: :func:`nlpflow.engine.report.metric_entry` over every row (``MetricRows(stats)``):
  the same index draws as counts, scored with ``Metric.resample_scores``;
- ``distinct``: ``metric_entry`` over the rows as the runner keeps them now
  (:func:`nlpflow.engine.stats.collected`: distinct rows with counts, for metrics that accept
  counts), including the time to collect them; a multinomial draw over distinct rows
  where they are few.

It checks that ``rows`` and ``counts`` give the same interval, that ``distinct`` gives the
same value and an interval within Monte Carlo error of it, and prints the median seconds
per metric over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nlpflow.plugins.classification import Accuracy, MacroF1
from nlpflow.plugins.question_answering import F1, ExactMatch
from nlpflow.engine.report import bootstrap_indices, metric_entry
from nlpflow.engine.stats import MetricRows, collected

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
    # SQuAD F1 scores are ratios of small token counts: a few hundred distinct values
    f1 = np.clip((rng.integers(0, 12, records) / rng.integers(1, 12, records)).round(6), 0, 1)
    no_answer = rng.random(records) < 0.05
    metrics.append((ExactMatch(), np.column_stack([f1 == 1, no_answer]).astype(float)))
    metrics.append((F1(), np.column_stack([f1, no_answer]).astype(float)))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    metrics = workload(args.records)
    intervals: dict[str, tuple] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for metric, stats in metrics:
            started = time.perf_counter()
            old = rows_interval(metric, stats)
            times.setdefault((metric.name, "rows"), []).append(time.perf_counter() - started)
            started = time.perf_counter()
            every = metric_entry(metric, MetricRows(stats), RESAMPLES, SEED, CONFIDENCE)
            times.setdefault((metric.name, "counts"), []).append(time.perf_counter() - started)
            started = time.perf_counter()
            # collected a runner chunk (1024 rows) at a time, as the run does
            distinct = metric_entry(metric, collected(metric.accepts_counts, *np.array_split(stats, max(1, len(stats) // 1024))),
                                    RESAMPLES, SEED, CONFIDENCE)
            times.setdefault((metric.name, "distinct"), []).append(time.perf_counter() - started)
            new = (every["ci"]["low"], every["ci"]["high"])
            assert np.allclose(old, new, rtol=1e-12, atol=1e-12), (metric.name, old, new)
            assert np.isclose(distinct["value"], every["value"], rtol=1e-12), (metric.name, distinct["value"], every["value"])
            half = (new[1] - new[0]) / 2
            assert abs(distinct["ci"]["low"] - new[0]) < 0.2 * half and abs(distinct["ci"]["high"] - new[1]) < 0.2 * half, (
                metric.name, new, distinct["ci"])
            intervals[metric.name] = (new, (distinct["ci"]["low"], distinct["ci"]["high"]))
    print(f"{args.records} records, {RESAMPLES} resamples, median of {args.repeat} interleaved runs (seconds)")
    print(f"{'metric':<14}{'rows (first)':>14}{'counts':>10}{'distinct (now)':>16}{'vs rows':>9}  interval: every row / distinct rows")
    for metric, _ in metrics:
        first = statistics.median(times[(metric.name, "rows")])
        counts = statistics.median(times[(metric.name, "counts")])
        now = statistics.median(times[(metric.name, "distinct")])
        (a, b), (c, d) = intervals[metric.name]
        print(f"{metric.name:<14}{first:>14.2f}{counts:>10.2f}{now:>16.3f}{first / now:>8.0f}x  [{a:.5f}, {b:.5f}] / [{c:.5f}, {d:.5f}]")


if __name__ == "__main__":
    main()
