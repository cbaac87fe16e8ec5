"""Error analysis for report.json and report.md, gathered during the run from each chunk's scores.

Two views users ask for after the headline numbers:

- **ranked examples**: the worst and best scored examples by one per-example metric. By default the first
  metric whose per-example scores vary (a QA run's exact match is often all 0 or 1 on the hardest examples,
  while F1 separates them); ``report.rank_by`` picks one. For a task that ranks ties by confidence
  (classification: every mistake scores 0), the surest wrong prediction comes first.
- **slices**: each metric recomputed, with its bootstrap interval, on the examples of each input-length bucket
  and of each value of the ``report.slice_by`` columns. A slice's value is the metric on that slice's rows
  (macro-F1 or BLEU of the slice), not a mean of per-example scores.

Memory: per slice column, a one-byte code of each scored example's slice; k examples per metric.
"""

from __future__ import annotations

import bisect
import heapq
import math
from array import array
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from nlpflow.engine.report import bootstrap_interval, metric_value
from nlpflow.contract.report_terms import MAX_SLICE_VALUES, MISSING, OTHER, REPORTED_SLICES, confidence
from nlpflow.engine.stats import MetricRows
from nlpflow.contract.types import Example, Metric

#: worst and best examples kept per metric
RANKED_EXAMPLES = 10
#: lower edges of the input-length buckets, in whitespace-separated words (1-2-5 steps)
LENGTH_EDGES = (0, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
#: characters of a text kept in a ranked example
SHOWN_CHARS = 300


def length_bucket(words: int) -> str:
    """The label of the length bucket holding ``words``: ``"10-19"``, or ``"10000+"`` for the last."""
    position = bisect.bisect_right(LENGTH_EDGES, words) - 1
    low = LENGTH_EDGES[position]
    return f"{low}-{LENGTH_EDGES[position + 1] - 1}" if position + 1 < len(LENGTH_EDGES) else f"{low}+"


def _shown(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return value[:SHOWN_CHARS] + "…"
    return value


class _Ranked:
    """The k lowest and k highest scored examples of one metric, in O(k) memory. Among equal scores, the example with
    the higher ``tie`` value is the more extreme (a confident mistake is worse than a hesitant one), then the earlier."""

    def __init__(self) -> None:
        self.low: list[tuple[float, float, int, dict]] = []  # min-heap of the k lowest, by badness (-score, tie, -index)
        self.high: list[tuple[float, float, int, dict]] = []  # min-heap of the k highest, by (score, tie, -index)
        self.minimum = math.inf
        self.maximum = -math.inf

    def note(self, score: float, tie: float, index: int) -> bool:
        """Count ``score`` in the range; True if :meth:`offer` would keep its example in either heap. Scores repeat
        (0/1 matches), and a later example enters a full heap only with a strictly more extreme key."""
        if score < self.minimum:
            self.minimum = score
        if score > self.maximum:
            self.maximum = score
        low, high = self.low, self.high
        return (len(low) < RANKED_EXAMPLES or len(high) < RANKED_EXAMPLES
                or (-score, tie, -index) > low[0][:3] or (score, tie, -index) > high[0][:3])

    def offer(self, score: float, tie: float, index: int, item: dict) -> None:
        """Keep the example's ``item`` if it is among the k lowest or k highest so far (after :meth:`note`)."""
        for heap, key in ((self.low, (-score, tie, -index)), (self.high, (score, tie, -index))):
            if len(heap) < RANKED_EXAMPLES:
                heapq.heappush(heap, (*key, item))
            elif key > heap[0][:3]:
                heapq.heapreplace(heap, (*key, item))

    @property
    def varies(self) -> bool:
        return self.minimum < self.maximum

    # an example is among the worst only if some example scored higher, among the best only if some scored lower

    def worst(self) -> list[dict]:
        return [entry[3] for entry in sorted(self.low, key=lambda entry: entry[:3], reverse=True) if -entry[0] < self.maximum]

    def best(self) -> list[dict]:
        return [entry[3] for entry in sorted(self.high, key=lambda entry: entry[:3], reverse=True) if entry[0] > self.minimum]


class ErrorAnalysis:
    """Fed each chunk's scored examples by the runner; summarised once for report.json."""

    def __init__(self, metric_names: Sequence[str], length_column: str | None, slice_by: Sequence[str], rank_by: str | None,
                 ties_by_confidence: bool = False):
        self.metric_names = list(metric_names)
        #: among equally scored examples, rank the surest prediction first (the task's ``rank_ties_by_confidence``)
        self.ties_by_confidence = ties_by_confidence
        self.length_column = length_column
        self.slice_by = list(slice_by)
        self.rank_by = rank_by
        self.ranked: dict[str, _Ranked] = {name: _Ranked() for name in self.metric_names}
        #: per slice column ("length" first), each scored example's slice as a code into ``names``, in the order of
        #: the metric stats rows
        # a byte each: a column has at most MAX_SLICE_VALUES slices and "(other)"
        self.codes: dict[str, array] = {column: array("B") for column in ["length", *self.slice_by]}
        #: per slice column, the code of each slice name
        self.names: dict[str, dict[str, int]] = {column: {} for column in self.codes}
        #: the length slice's code by word count (a bucket's label is built once, not per example)
        self._length_code: dict[int, int] = {}

    def add(
        self, example: Example, scores: dict[str, float | None], prediction: Any, reference: Any, identity: dict,
        inputs: Callable[[], dict[str, Any]], details: dict[str, Any],
    ) -> None:
        """One scored example (one row of each metric's stats), with its per-example scores, its task inputs as read
        (``inputs()``, called only for an example that is kept) and the prediction's details (its confidence)."""
        columns = example.columns
        text = columns.get(self.length_column) if self.length_column else None
        if isinstance(text, str):
            words = len(text.split())
            code = self._length_code.get(words)
            if code is None:
                code = self._length_code[words] = self._code("length", length_bucket(words))
        else:
            code = self._code("length", MISSING)
        codes = self.codes
        codes["length"].append(code)
        for column in self.slice_by:
            value = columns.get(column)
            codes[column].append(self._code(column, MISSING if value is None else str(value)[:60]))
        item = None
        tie = 0.0
        if self.ties_by_confidence:
            # a prediction without a confidence ranks after every one with it
            tie = confidence(details).get("confidence", -math.inf)
        for name, score in scores.items():
            ranked = self.ranked.get(name)
            if score is None or ranked is None or not ranked.note(score, tie, example.index):
                continue
            if item is None:  # one entry per example, shared by the metrics that keep it
                item = {"index": example.index, "line": example.line, **identity, "scores": scores,
                        "inputs": {name: _shown(value) for name, value in inputs().items()},
                        "prediction": _shown(prediction), "reference": _shown(reference), **confidence(details)}
            ranked.offer(score, tie, example.index, item)

    def _code(self, column: str, key: str) -> int:
        """The code of slice ``key`` of ``column``; a new key past MAX_SLICE_VALUES is pooled as "(other)"."""
        names = self.names[column]
        code = names.get(key)
        if code is None:
            if len(names) >= MAX_SLICE_VALUES:
                key = OTHER
            code = names.setdefault(key, len(names))
        return code

    def ranking_metric(self) -> str | None:
        """report.rank_by, else the first metric whose per-example scores vary, else the first with any."""
        if self.rank_by is not None:
            return self.rank_by
        with_scores = [name for name in self.metric_names if math.isfinite(self.ranked[name].minimum)]
        return next((name for name in with_scores if self.ranked[name].varies), with_scores[0] if with_scores else None)

    def summary(
        self, metrics: Sequence[Metric], stats: Sequence[MetricRows], resamples: int, seed: int, confidence: float,
        blame: Callable[[Metric], ContextManager[None]],
    ) -> dict[str, Any]:
        """report.json's ``analysis``: the ranked examples and, per slice column, each slice's metric values.

        ``blame(metric)`` wraps each metric's scoring, so a metric that raises is reported as its plugin's bug."""
        rank = self.ranking_metric()
        ranked = self.ranked.get(rank) if rank else None
        slices = []
        for column, column_codes in self.codes.items():
            if not column_codes:
                continue
            code_array = np.frombuffer(column_codes, dtype=np.uint8)
            code_counts = np.bincount(code_array, minlength=len(self.names[column]))
            counts = {key: int(code_counts[code]) for key, code in self.names[column].items() if code_counts[code]}
            if column == "length":
                order = sorted(counts, key=lambda key: (key == MISSING, int(key.split("-")[0].rstrip("+")) if key != MISSING else 0))
            else:
                order = sorted(counts, key=lambda key: (-counts[key], key))
            rows = []
            for key in order[:REPORTED_SLICES]:
                selected = code_array == self.names[column][key]
                values = {}
                for metric, metric_rows in zip(metrics, stats):
                    subset = metric_rows.subset(selected)
                    with blame(metric):
                        value = metric_value(metric, subset)
                        interval = bootstrap_interval(metric, subset, resamples, seed, confidence)
                    values[metric.name] = {"value": value if math.isfinite(value) else None, "ci": interval}
                rows.append({"value": key, "n": counts[key], "metrics": values})
            slices.append({
                "column": column,
                **({"unit": "words of " + repr(self.length_column)} if column == "length" else {}),
                "slices": rows,
                "not_reported": max(len(order) - REPORTED_SLICES, 0),
            })
        return {
            "rank_by": rank,
            "rank_by_varies": bool(ranked.varies) if ranked else None,
            # the lowest and highest per-example score of that metric (equal: nothing to rank)
            "rank_by_range": [ranked.minimum, ranked.maximum] if ranked and math.isfinite(ranked.minimum) else None,
            # only where it applies, so other tasks' report.json is unchanged
            **({"ties_ranked_by": "confidence"} if self.ties_by_confidence else {}),
            "worst": ranked.worst() if ranked and ranked.varies else [],
            "best": ranked.best() if ranked and ranked.varies else [],
            "slices": slices,
        }

