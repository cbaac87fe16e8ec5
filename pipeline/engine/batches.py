"""Computing a chunk's planned batches on a backend, under the one out-of-memory policy every executor shares.

A :class:`ChunkPlan` is what an executor receives per chunk: each feature's
token ids and the batches planned over the whole chunk on the driver. It is
plain data (lists and numpy arrays), so it pickles to a remote worker, and
it collates a batch only when asked. A :class:`BatchComputer` is what an
executor computes a plan with, in the driver's process (``local``) or in a
worker's (``ray``): the backend, the loaded model and the batch limits. With
``batch_size: auto``, a batch that runs out of memory is split under halved
limits and retried, never skipped, and the smaller limits are kept for the
rest of the run, wherever it computes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from nlpflow.contract.errors import ModelError
from nlpflow.contract.hub import input_limit
from nlpflow.contract.types import Head, LoadedModel, ModelConfig, TaskModel

log = logging.getLogger("nlpflow.engine.model_stage")

#: ``batch_size: auto``'s row cap and padded-token budget per batch (rows x longest row), by device kind and by
#: whether the head generates (its outputs are token ids, one decoding step per new token) or runs one forward.
#: CPU, one forward: what a batch holds must stay in cache, so the token budget binds, not the rows: 1,024 tokens
#: measured fastest for a GPT-2 (4 x 256) scoring heavy-tailed documents, 15-20% faster than 16 rows x 4,096, and
#: level with it for all-MiniLM-L6-v2 (BENCHMARKS.md). CPU, generating: every step costs per batch as well as per
#: row, so rows matter more than cache; 16 rows x 4,096 input tokens (an earlier MiniLM measurement found 64 rows x
#: 16,384 tokens 20-30% slower than 8-16 rows).
AUTO_LIMITS: dict[tuple[str, bool], tuple[int, int]] = {
    ("cpu", False): (64, 1_024),
    ("cpu", True): (16, 4_096),
    ("cuda", False): (1024, 262_144),
    ("cuda", True): (1024, 262_144),
    ("mps", False): (256, 65_536),
    ("mps", True): (256, 65_536),
}
#: for a device kind missing from AUTO_LIMITS
OTHER_DEVICE_LIMITS = (64, 16_384)


def generates(head: Head) -> bool:
    """Whether ``head`` decodes token by token (an ``ids`` output) rather than running one forward per batch."""
    return "ids" in head.outputs.values()


@dataclass
class StageStats:
    """What the model stage did, for the report."""

    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    forward_seconds: float = 0.0
    oom_retries: int = 0
    largest_batch_rows: int = 0
    #: planned batches not run because every example in them came from the cache
    skipped_batches: int = 0


def padded(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (8 on CUDA, where tensor cores like it)."""
    return -(-length // multiple) * multiple


def pack(order: Sequence[int], lengths: Sequence[int] | Mapping[int, int], max_rows: int, max_tokens: int, pad_multiple: int) -> list[list[int]]:
    """Cut indices already sorted longest first into batches under ``max_rows`` and ``max_tokens``.

    Because the first row of each batch is its longest, a batch holds
    ``max_tokens // padded(first length)`` rows (at least one, at most ``max_rows``).
    """
    batches: list[list[int]] = []
    position, total = 0, len(order)
    while position < total:
        width = padded(int(lengths[order[position]]), pad_multiple)
        rows = max(1, min(max_rows, max_tokens // max(width, 1)))
        batches.append(list(order[position : position + rows]))
        position += rows
    return batches


@dataclass(frozen=True)
class ChunkPlan:
    """The planned batches of one chunk that must be computed, in plan order, and the token ids to collate them from.

    ``rows`` and ``lengths`` are indexed by feature index (a list for a whole
    chunk, a dict for the part of it one batch needs); ``batches`` lists the
    feature indices of each batch, longest first, leaving out the batches whose
    examples all came from the cache.
    """

    rows: Sequence[Mapping[str, Sequence[int]]] | Mapping[int, Mapping[str, Sequence[int]]]
    lengths: np.ndarray | Mapping[int, int]
    batches: list[list[int]]
    #: the value each input is padded with (``input_ids``: the tokenizer's pad id; others 0)
    pad_values: Mapping[str, int] = field(default_factory=dict)
    pad_multiple: int = 1

    def only(self, position: int) -> "ChunkPlan":
        """The plan of the ``position``-th batch alone, carrying only its own rows: what one remote worker is sent."""
        indices = self.batches[position]
        return ChunkPlan({i: self.rows[i] for i in indices}, {i: int(self.lengths[i]) for i in indices}, [indices],
                         self.pad_values, self.pad_multiple)

    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Pad the rows at ``indices`` into int64 arrays.

        One flat numpy copy per input name: every row's values land in the
        positions where ``arange(width) < length``, which in row-major order are
        exactly the rows' values one after another.
        """
        rows = [self.rows[i] for i in indices]
        lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))
        width = padded(int(lengths.max()), self.pad_multiple)
        filled = np.arange(width) < lengths[:, None]
        total = int(lengths.sum())
        batch = {}
        for key in rows[0]:
            array = np.full((len(rows), width), self.pad_values.get(key, 0), dtype=np.int64)
            array[filled] = np.fromiter(chain.from_iterable(r[key] for r in rows), dtype=np.int64, count=total)
            batch[key] = array
        return batch


class BatchComputer:
    """Computes the batches of a :class:`ChunkPlan` with one loaded model, in plan order, as ``(indices, outputs)``.

    The one out-of-memory policy: with ``batch_size: auto``, a batch that runs
    out of memory is cut again, with every batch after it, under halved limits
    (kept for the rest of the run), and retried; with a fixed batch size it is a
    ModelError saying what to change. On CUDA the next batch is collated (and
    pinned) on a worker thread while the current one runs.
    """

    def __init__(self, task_model: TaskModel, config: ModelConfig):
        loaded = task_model.loaded
        self.task_model = task_model
        self.loaded: LoadedModel = loaded
        self.backend = loaded.backend
        kind = loaded.device.split(":")[0]
        self.auto = config.batch_size == "auto"
        auto_rows, default_tokens = AUTO_LIMITS.get((kind, generates(loaded.head)), OTHER_DEVICE_LIMITS)
        self.max_rows = auto_rows if self.auto else int(config.batch_size)
        if not self.auto:
            # a fixed batch_size means that many rows, even of the longest inputs, unless max_tokens says otherwise
            default_tokens = max(default_tokens, self.max_rows * input_limit(loaded))
        self.max_tokens = config.max_tokens or default_tokens
        self.pad_multiple = 8 if kind == "cuda" else 1
        self.head_options = task_model.head_options()
        self.stats = StageStats()
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nlpflow-collate") if kind == "cuda" else None

    def pack(self, order: Sequence[int], lengths: Sequence[int] | Mapping[int, int]) -> list[list[int]]:
        """Indices sorted longest first, cut into batches under the current limits."""
        return pack(order, lengths, self.max_rows, self.max_tokens, self.pad_multiple)

    def _prepared(self, plan: ChunkPlan, indices: Sequence[int]) -> Any:
        return self.backend.prepare(self.loaded, plan.collate(indices))

    def compute(self, plan: ChunkPlan) -> Iterator[tuple[list[int], Mapping[str, Any]]]:
        """Each planned batch's head outputs, in plan order; a batch cut after running out of memory yields its parts."""
        pending = [list(indices) for indices in plan.batches]
        pending.reverse()  # a stack: pop() takes the next batch in plan order
        prepared = None
        while pending:
            indices = pending.pop()
            batch = prepared.result() if prepared is not None else self._prepared(plan, indices)
            prepared = None
            if self._prefetch is not None and pending:
                # collate (and pin) the next batch on a worker thread while this one runs on the device
                prepared = self._prefetch.submit(self._prepared, plan, pending[-1])
            try:
                started = time.perf_counter()
                results = self.backend.run(self.loaded, batch, **self.head_options)
                self.stats.forward_seconds += time.perf_counter() - started
            except Exception as error:
                if not self.backend.is_out_of_memory(error):
                    raise
                if prepared is not None and not prepared.cancel():
                    prepared.exception()  # already running: let it finish (without raising) before re-planning
                prepared = None
                del batch
                self._back_off(indices, error)
                # re-plan this batch and every pending one under the smaller limits, keeping the order
                remaining = list(indices) + [i for group in reversed(pending) for i in group]
                pending = self.pack(remaining, plan.lengths)
                pending.reverse()
                continue
            yield indices, results

    def _back_off(self, indices: Sequence[int], error: BaseException) -> None:
        if not self.auto:
            raise ModelError(
                f"out of memory on {self.loaded.device} with a batch of {len(indices)} rows (model.batch_size: {self.max_rows}, "
                f"model.max_tokens: {self.max_tokens}); set model.batch_size: auto to halve the batch on out-of-memory, "
                "or lower model.batch_size / model.max_tokens"
            ) from error
        if len(indices) <= 1:
            raise ModelError(
                f"out of memory on {self.loaded.device} with a single example of {self.task_model.__class__.__name__}; "
                "lower model.max_length or use a device with more memory"
            ) from error
        self.backend.release_memory(self.loaded)
        self.max_rows = max(1, min(self.max_rows, len(indices) // 2))
        self.max_tokens = max(1, self.max_tokens // 2)
        self.stats.oom_retries += 1
        log.warning("out of memory with %d rows; retrying in smaller batches, at most %d rows from now on", len(indices), self.max_rows)
