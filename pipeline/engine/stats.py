"""A metric's per-example statistics as the run collects them: distinct rows, and which one each example has.

Most rows repeat. A sentiment run's accuracy and macro-F1 rows are the cells of a confusion matrix, exact match
is 0 or 1: a million examples have a handful of distinct rows. For a metric that can score rows with their
multiplicities (``Metric.accepts_counts``) the run keeps each distinct row once and, per example, the id of its
row (one byte while there are at most 256), so memory grows by a byte or two per example instead of the row's
width, and the bootstrap can draw counts of distinct rows (:func:`nlpflow.engine.report.bootstrap_counts`) instead of a
million indices per resample.

Rows that hardly repeat (ROUGE's per-example F-measures) would only pay for the bookkeeping, so once a metric has
more than :data:`MAX_DISTINCT_ROWS` distinct rows it keeps its rows as they come, one per example. Which of the two
a metric ends with depends only on its rows, never on how they were cut into chunks.
"""

from __future__ import annotations

import numpy as np

#: distinct rows kept before a metric's rows are stored one per example
MAX_DISTINCT_ROWS = 1 << 16
#: the bootstrap draws counts of distinct rows (a multinomial) when there are at most this share of distinct rows
#: per example: a multinomial costs about ten times an index draw per category, so below it the draw is cheaper
MULTINOMIAL_SHARE = 0.1


class MetricRows:
    """One metric's stats over a set of examples: ``distinct`` rows and, per example in order, its row's id.

    ``ids`` None means one row per example (``distinct[i]`` is example ``i``'s row), unless ``counts`` says how
    many examples have each row: a set of examples whose order no longer matters (a slice drawn by multinomial).
    """

    def __init__(self, distinct: np.ndarray, ids: np.ndarray | None = None, counts: np.ndarray | None = None):
        self.distinct = distinct
        self.ids = ids
        #: whether each example's row is known (not only how many examples have each row)
        self.ordered = ids is not None or counts is None
        self._counts = counts

    @property
    def n(self) -> int:
        """How many examples."""
        if self.ids is not None:
            return len(self.ids)
        return len(self.distinct) if self.ordered else int(self._counts.sum())

    @property
    def counts(self) -> np.ndarray:
        """How many examples have each distinct row."""
        if self._counts is None:
            self._counts = (np.ones(len(self.distinct), dtype=np.int64) if self.ids is None
                            else np.bincount(self.ids, minlength=len(self.distinct)))
        return self._counts

    def expanded(self) -> np.ndarray:
        """Every example's row, in example order (in row order where only the counts are known)."""
        if self.ids is not None:
            return self.distinct[self.ids]
        return self.distinct if self.ordered else np.repeat(self.distinct, self._counts, axis=0)

    def subset(self, selected: np.ndarray) -> MetricRows:
        """The examples where the boolean mask ``selected`` is true, keeping only the distinct rows they use.

        Where those rows are few enough for the bootstrap's multinomial draw, only their counts are kept."""
        if self.ids is None:
            return MetricRows(self.distinct[selected])
        chosen = self.ids[selected]
        counts = np.bincount(chosen, minlength=len(self.distinct))
        used = np.flatnonzero(counts)
        if len(used) <= MULTINOMIAL_SHARE * len(chosen):
            return MetricRows(self.distinct[used], counts=counts[used])
        position = np.zeros(len(self.distinct), dtype=np.int32)
        position[used] = np.arange(len(used), dtype=np.int32)
        return MetricRows(self.distinct[used], position[chosen])


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
        if not self.distinct:
            self.parts.append(stats)
            return
        if not len(stats):
            return
        data = np.ascontiguousarray(stats, dtype=float)
        width = data.shape[1] * data.itemsize
        raw = data.tobytes()
        known, rows = self.known, self.rows
        ids = []
        # rows get ids in the order they first occur in the data, so ids do not depend on the chunking
        for start in range(0, len(raw), width):
            key = raw[start:start + width]
            code = known.get(key)
            if code is None:
                code = known[key] = len(rows)
                rows.append(data[start // width].copy())
            ids.append(code)
        # the smallest integer type that holds the ids so far: a byte per example for up to 256 distinct rows
        id_type = np.uint8 if len(rows) <= 1 << 8 else np.uint16 if len(rows) <= 1 << 16 else np.int32
        self.parts.append(np.array(ids, dtype=id_type))
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
        ids = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.uint8)
        self.parts = [ids]
        distinct = np.stack(self.rows) if self.rows else np.zeros((0, 1))
        return MetricRows(distinct, ids)


def collected(metric_accepts_counts: bool, *chunks: np.ndarray) -> MetricRows:
    """``chunks`` of one metric's stats collected as a run collects them (benchmarks and tests)."""
    collector = RowCollector(distinct=metric_accepts_counts)
    for chunk in chunks:
        collector.add(chunk)
    return collector.result()
