"""Assembling report.json: metric values with bootstrap confidence intervals, and run metadata.

Writing goes through :func:`write_atomic`, so a crash never leaves a
half-written report behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nlpflow.errors import OutputError, PluginError
from nlpflow.stats import MULTINOMIAL_SHARE, MetricRows
from nlpflow.types import Metric

VERSIONED_PACKAGES = ("nlpflow", "torch", "transformers", "tokenizers", "spacy", "sacrebleu", "rouge-score", "pluggy")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    os.replace(stage_file(path, text), path)


def _current_umask() -> int:
    """The process umask; reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stage_file(path: Path, text: str) -> Path:
    """Write ``text`` to a synced temporary file next to ``path`` and return it, for the caller to rename into place.

    A file that cannot be written (disk full, file size limit, no permission) is an :class:`OutputError` naming it
    and its size; ``path`` itself is never touched, so what was there stays whole.
    """
    data = text.encode("utf-8")
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            # tempfile creates files 0600; a report gets the mode any new file gets under the umask, as predictions.jsonl
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({len(data)} bytes): {error.strerror or error}{_STORAGE_HINT.get(error.errno, '')}") from None
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise


#: what to do about the write failures a user can fix
_STORAGE_HINT = {
    errno.ENOSPC: "; free some space or choose another --output",
    errno.EDQUOT: "; the disk quota is used up",
    errno.EFBIG: "; the file is over the size limit for files here (ulimit -f, or the file system's)",
}


def package_versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def handle_sha256(handle: Any) -> str:
    """sha256 of what is left to read in a binary file handle, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle_sha256(handle)


def bootstrap_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``resamples`` arrays of ``n`` example indices drawn with replacement, reproducible from ``seed``.

    Drawn one resample at a time so memory stays O(n), not O(n x resamples).
    """
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n)


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
    block: list[np.ndarray] = []
    for drawn in bootstrap_indices(n, resamples, seed):
        block.append(np.bincount(drawn if rows.ids is None else rows.ids[drawn], minlength=width))
        if len(block) == per_block:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)


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
