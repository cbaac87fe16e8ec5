"""A metric's per-example statistics as the run collects them: distinct rows, and which one each example has.

Most rows repeat. A sentiment run's accuracy and macro-F1 rows are the cells of a confusion matrix, exact match
is 0 or 1: a million examples have a handful of distinct rows. For a metric that can score rows with their
multiplicities (``Metric.accepts_counts``) the run keeps each distinct row once and, per example, a 4-byte id of
its row, so memory grows by 4 bytes per example instead of the row's width, and the bootstrap can draw counts of
distinct rows (:func:`nlpflow.report.bootstrap_counts`) instead of a million indices per resample.

Rows that hardly repeat (ROUGE's per-example F-measures) would only pay for the bookkeeping, so once a metric has
more than :data:`MAX_DISTINCT_ROWS` distinct rows it keeps its rows as they come, one per example. Which of the two
a metric ends with depends only on its rows, never on how they were cut into chunks.
"""

from __future__ import annotations

import numpy as np

#: distinct rows kept before a metric's rows are stored one per example
MAX_DISTINCT_ROWS = 1 << 16


class MetricRows:
    """One metric's stats over a set of examples: ``distinct`` rows and, per example in order, its row's id.

    ``ids`` None means one row per example (``distinct[i]`` is example ``i``'s row).
    """

    def __init__(self, distinct: np.ndarray, ids: np.ndarray | None = None):
        self.distinct = distinct
        self.ids = ids

    @property
    def n(self) -> int:
        """How many examples."""
        return len(self.distinct) if self.ids is None else len(self.ids)

    @property
    def counts(self) -> np.ndarray:
        """How many examples have each distinct row."""
        if self.ids is None:
            return np.ones(len(self.distinct), dtype=np.int64)
        return np.bincount(self.ids, minlength=len(self.distinct))

    def expanded(self) -> np.ndarray:
        """Every example's row, in example order."""
        return self.distinct if self.ids is None else self.distinct[self.ids]

    def subset(self, selected: np.ndarray) -> MetricRows:
        """The examples where the boolean mask ``selected`` is true, keeping only the distinct rows they use."""
        if self.ids is None:
            return MetricRows(self.distinct[selected])
        used, ids = np.unique(self.ids[selected], return_inverse=True)
        return MetricRows(self.distinct[used], ids.astype(np.int32))


class RowCollector:
    """Collects a metric's stats chunk by chunk, in example order, into :class:`MetricRows`.

    ``distinct``: keep distinct rows with per-example ids (for metrics that accept counts); otherwise every row.
    """

    def __init__(self, distinct: bool):
        self.distinct = distinct
        self.parts: list[np.ndarray] = []  # stored rows, or the ids of the examples of each chunk
        self.rows: list[np.ndarray] = []  # distinct rows, in order of first occurrence
        self.known: dict[bytes, int] = {}

    def add(self, stats: np.ndarray) -> None:
        if not self.distinct or not len(stats):
            self.parts.append(stats)
            return
        chunk_rows, first, inverse = np.unique(stats, axis=0, return_index=True, return_inverse=True)
        global_ids = np.empty(len(chunk_rows), dtype=np.int32)
        # new rows get ids in the order they first occur in the data, so ids do not depend on the chunking
        for position in np.argsort(first, kind="stable"):
            key = chunk_rows[position].tobytes()
            code = self.known.get(key)
            if code is None:
                code = self.known[key] = len(self.rows)
                self.rows.append(chunk_rows[position])
            global_ids[position] = code
        self.parts.append(global_ids[inverse.reshape(-1)])
        if len(self.rows) > MAX_DISTINCT_ROWS:
            # too many distinct rows to pay off: from here on one row per example, in order
            self.parts = [np.stack(self.rows)[np.concatenate(self.parts)]]
            self.distinct, self.rows, self.known = False, [], {}

    def result(self) -> MetricRows:
        """The collected rows; the collector's own copies are released."""
        if not self.distinct:
            rows = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts) if self.parts else np.zeros((0, 1))
            self.parts = [rows]
            return MetricRows(rows)
        ids = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int32)
        self.parts = [ids]
        distinct = np.stack(self.rows) if self.rows else np.zeros((0, 1))
        return MetricRows(distinct, ids)


def collected(metric_accepts_counts: bool, *chunks: np.ndarray) -> MetricRows:
    """``chunks`` of one metric's stats collected as a run collects them (benchmarks and tests)."""
    collector = RowCollector(distinct=metric_accepts_counts)
    for chunk in chunks:
        collector.add(chunk)
    return collector.result()
