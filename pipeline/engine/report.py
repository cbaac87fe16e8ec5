"""Assembling report.json: metric values with bootstrap confidence intervals, and run metadata.

Writing goes through :func:`write_atomic`, so a crash never leaves a
half-written report behind.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator

import numpy as np

from nlpflow.contract.errors import PluginError
from nlpflow.engine.stats import MULTINOMIAL_SHARE, MetricRows
from nlpflow.contract.types import Metric

VERSIONED_PACKAGES = ("nlpflow", "torch", "transformers", "tokenizers", "spacy", "sacrebleu", "rouge-score", "pluggy")


def package_versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``resamples`` arrays of ``n`` example indices drawn with replacement, reproducible from ``seed``.

    Drawn one resample at a time so memory stays O(n), not O(n x resamples).
    """
    for block in bootstrap_index_blocks(n, resamples, seed):
        yield from block


def bootstrap_index_blocks(n: int, resamples: int, seed: int, block_cells: int = 1 << 22) -> Iterator[np.ndarray]:
    """The draws of :func:`bootstrap_indices` (the same numbers: numpy's generator fills a (k, n) array in the order
    k draws of n would), a block of at most ``block_cells`` indices at a time: one call per block, not per resample."""
    rng = np.random.default_rng(seed)
    per_block = max(1, min(resamples, block_cells // max(n, 1)))
    for start in range(0, resamples, per_block):
        yield rng.integers(0, n, size=(min(per_block, resamples - start), n))


def bootstrap_counts(rows: MetricRows, resamples: int, seed: int, block_cells: int = 1 << 22) -> Iterator[np.ndarray]:
    """Bootstrap resamples of the examples of ``rows`` as count matrices, a block of resamples at a time.

    Row ``j`` of a block says how many times each distinct row of ``rows`` is drawn in resample ``j``. Two ways
    to draw, the same distribution (n examples drawn uniformly with replacement), chosen by the shape of the data
    alone so a run's intervals are reproducible:

    - rows with few distinct values (confusion-matrix cells, 0/1 scores: at most ``MULTINOMIAL_SHARE`` of the
      examples): one multinomial draw of n over the distinct rows' shares, at a cost that does not grow with n;
    - otherwise n example indices per resample (:func:`bootstrap_indices`), counted per distinct row: the draws
      nlpflow made before distinct rows were kept, so these intervals are unchanged.

    A block holds at most ``block_cells`` counts (32 MiB), whatever the size of the data.
    """
    n, width = rows.n, len(rows.distinct)
    per_block = max(1, min(resamples, block_cells // max(width, 1)))
    if width <= MULTINOMIAL_SHARE * n or not rows.ordered:
        rng = np.random.default_rng(seed)
        shares = rows.counts / n
        for start in range(0, resamples, per_block):
            yield rng.multinomial(n, shares, size=min(per_block, resamples - start))
        return
    for drawn in bootstrap_index_blocks(n, resamples, seed, block_cells):
        distinct = drawn if rows.ids is None else rows.ids[drawn]
        # one bincount for the whole block: resample j's rows are counted in cells j * width ... (j + 1) * width - 1
        offsets = np.arange(len(drawn))[:, None] * width
        yield np.bincount((distinct + offsets).ravel(), minlength=len(drawn) * width).reshape(len(drawn), width)


def bootstrap_interval(metric: Metric, rows: MetricRows, resamples: int, seed: int, confidence: float) -> dict[str, Any] | None:
    """Percentile bootstrap interval of ``metric`` over examples; None with fewer than two examples."""
    if rows.n < 2:
        return None
    values = np.concatenate([
        np.asarray(metric.resample_scores(rows.distinct, counts), dtype=float) for counts in bootstrap_counts(rows, resamples, seed)
    ])
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    return {
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "method": "percentile bootstrap over examples",
        "resamples": resamples,
        "seed": seed,
    }


def _scored_as(metric: Metric, rows: MetricRows) -> tuple:
    """What ``score`` and ``details`` take for ``rows``: distinct rows and counts where the metric accepts counts,
    else every example's row."""
    return (rows.distinct, rows.counts) if metric.accepts_counts else (rows.expanded(),)


def metric_value(metric: Metric, rows: MetricRows) -> float:
    """The metric over all examples of ``rows``."""
    return float(metric.score(*_scored_as(metric, rows))) if rows.n else float("nan")


#: the keys of a metric entry that nlpflow computes; a metric's details() may not replace them
CORE_METRIC_KEYS = ("value", "ci", "scale", "higher_is_better", "signature", "options", "n")


def metric_entry(
    metric: Metric, rows: MetricRows, resamples: int, seed: int, confidence: float, plugin: str | None = None
) -> dict[str, Any]:
    """One entry of report.json's ``metrics``: value, interval, scale, signature and details.

    ``plugin`` (the plugin that registered the metric) is named in the error if details() returns a core key.
    """
    entry: dict[str, Any] = {
        "value": _finite(metric_value(metric, rows)),
        "ci": bootstrap_interval(metric, rows, resamples, seed, confidence),
        "scale": metric.scale,
        "higher_is_better": metric.higher_is_better,
        "signature": metric.signature(),
        "options": metric.options.model_dump(mode="json"),
        "n": rows.n,
    }
    if rows.n:
        details = metric.details(*_scored_as(metric, rows))
        clashes = [key for key in CORE_METRIC_KEYS if key in details]
        if clashes:
            raise PluginError(
                f"metric {metric.name!r} ({type(metric).__module__}.{type(metric).__qualname__}): details() returned "
                f"{', '.join(map(repr, clashes))}, which nlpflow computes itself; the keys {', '.join(CORE_METRIC_KEYS)} "
                "are reserved, so rename these in details()",
                plugin,
            )
        entry.update(details)
    return entry


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
