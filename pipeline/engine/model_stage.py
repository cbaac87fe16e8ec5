"""The model stage: running any task's model over a chunk of examples, on any backend.

This is the hot path, shared by every task and backend. Features are sorted
by length within the chunk (a bounded window), packed into batches under a
token budget (padded length x rows), padded once with numpy, prepared by the
backend (pinned tensors on CUDA, on a worker thread while the current batch
runs) and computed. The plan covers every example of the chunk, cached or
not, so cache state never changes what shares a batch (see ``run``). Outputs
are put back in input order. With
``batch_size: auto`` a batch that runs out of memory is split in half and
retried, never skipped, and the smaller size is kept for the rest.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nlpflow.contract.errors import ModelError
from nlpflow.contract.hub import input_limit
from nlpflow.contract.types import Example, Executor, Features, ModelConfig, Prediction, Task, TaskModel

log = logging.getLogger("nlpflow.engine.model_stage")

#: default padded-token budget per batch (rows x longest row) and row cap, for ``batch_size: auto``.
#: CPU: measured with all-MiniLM-L6-v2 on heavy-tailed texts (BENCHMARKS.md): 8-16 rows were
#: fastest with 1 and 2 threads, 64 rows 20-30% slower (more padding inside a batch, worse cache use).
DEFAULT_MAX_TOKENS = {"cpu": 4_096, "cuda": 262_144, "mps": 65_536}
DEFAULT_MAX_ROWS = {"cpu": 16, "cuda": 1024, "mps": 256}


class DecodeError(Exception):
    """A task model's ``decode`` failed; names the example so the runner's error can point at its line."""

    def __init__(self, example: Example, error: Exception):
        self.example = example
        super().__init__(f"decode failed on record {example.index} (line {example.line}): {type(error).__name__}: {error}")


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


@dataclass
class PlannedChunk:
    """The planned batches of one chunk that must be computed, in plan order, and how to collate each.

    What an :class:`Executor` receives: the batches were planned over the whole
    chunk on the driver, so a batch holds the same features wherever it runs.
    """

    stage: "ModelStage"
    features: Sequence[Features]
    lengths: np.ndarray
    #: feature indices of each batch to compute; batches whose examples all came from the cache are left out
    batches: list[list[int]]

    def collate(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The padded int64 inputs of one batch, ready to ship to a worker."""
        return self.stage.collate(self.features, indices)


class ModelStage:
    """Runs a :class:`TaskModel` over chunks of examples with length-sorted, token-budgeted batches.

    The stage never changes torch's global thread count: on a CPU shared with
    other work, set ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` in the
    process that runs it (see BENCHMARKS.md).
    """

    def __init__(self, task_model: TaskModel, config: ModelConfig):
        self.task_model = task_model
        loaded = task_model.loaded
        self.loaded = loaded
        self.backend = loaded.backend
        kind = loaded.device.split(":")[0]
        self.auto = config.batch_size == "auto"
        self.max_rows = DEFAULT_MAX_ROWS.get(kind, 64) if self.auto else int(config.batch_size)
        default_tokens = DEFAULT_MAX_TOKENS.get(kind, 16_384)
        if not self.auto:
            # a fixed batch_size means that many rows, even of the longest inputs, unless max_tokens says otherwise
            default_tokens = max(default_tokens, self.max_rows * input_limit(loaded))
        self.max_tokens = config.max_tokens or default_tokens
        self.pad_multiple = 8 if kind == "cuda" else 1
        tokenizer = loaded.tokenizer
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "labels": -100,
        }
        self.token_outputs = [name for name, shape in loaded.head.outputs.items() if shape == "token"]
        self.head_options = task_model.head_options()
        self.stats = StageStats()
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nlpflow-collate") if kind == "cuda" else None

    # -- planning ---------------------------------------------------------

    def plan(self, features: Sequence[Features]) -> list[list[int]]:
        """Batches of feature indices: longest first, each under the row cap and the token budget.

        Ties keep input order (a stable sort), so the plan is the same on every run.
        """
        lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        order = np.argsort(-lengths, kind="stable")
        return self._pack(order.tolist(), lengths)

    def _pack(self, order: Sequence[int], lengths: np.ndarray) -> list[list[int]]:
        """Cut indices already sorted longest first into batches under ``max_rows`` and ``max_tokens``.

        Because the first row of each batch is its longest, a batch holds
        ``max_tokens // padded(first length)`` rows (at least one, at most ``max_rows``).
        """
        batches: list[list[int]] = []
        position, total = 0, len(order)
        while position < total:
            width = self._padded(int(lengths[order[position]]))
            rows = max(1, min(self.max_rows, self.max_tokens // max(width, 1)))
            batches.append(list(order[position : position + rows]))
            position += rows
        return batches

    def _padded(self, length: int) -> int:
        multiple = self.pad_multiple
        return -(-length // multiple) * multiple

    # -- running ----------------------------------------------------------

    def collate(self, features: Sequence[Features], indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Pad the features at ``indices`` into int64 arrays.

        One flat numpy copy per input name: every row's values land in the
        positions where ``arange(width) < length``, which in row-major order are
        exactly the rows' values one after another.
        """
        rows = [features[i].inputs for i in indices]
        lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))
        width = self._padded(int(lengths.max()))
        filled = np.arange(width) < lengths[:, None]
        total = int(lengths.sum())
        batch = {}
        for key in rows[0]:
            array = np.full((len(rows), width), self.pad_values.get(key, 0), dtype=np.int64)
            array[filled] = np.fromiter(chain.from_iterable(r[key] for r in rows), dtype=np.int64, count=total)
            batch[key] = array
        return batch

    def _prepared(self, features: Sequence[Features], indices: Sequence[int]) -> Any:
        return self.backend.prepare(self.loaded, self.collate(features, indices))

    def compute_batch(self, collated: dict[str, np.ndarray]) -> dict[str, Any]:
        """The head's outputs for one planned batch of collated inputs: what a remote worker runs per batch.

        Out of memory with ``batch_size: auto``, the rows are computed in two
        halves (recursively) and their outputs joined: the batch stays the
        driver's unit of work, whose plan the worker cannot change.
        """
        started = time.perf_counter()
        try:
            results = self.backend.run(self.loaded, self.backend.prepare(self.loaded, collated), **self.head_options)
        except Exception as error:
            if not self.backend.is_out_of_memory(error):
                raise
            rows = len(collated["input_ids"])
            self._back_off(range(rows), error)  # raises unless batch_size is auto and there are rows to split
            half = rows // 2
            first = self.compute_batch({name: values[:half] for name, values in collated.items()})
            second = self.compute_batch({name: values[half:] for name, values in collated.items()})
            # lists of rows: generated sequences of the two halves may differ in length
            return {name: list(first[name]) + list(second[name]) for name in first}
        self.stats.forward_seconds += time.perf_counter() - started
        return results

    def run(
        self,
        examples: Sequence[Example],
        needed: Iterable[int] | None = None,
        on_batch: Callable[[list[tuple[int, Prediction]]], None] | None = None,
        executor: Executor | None = None,
    ) -> list[Prediction | None]:
        """Predict the examples of a chunk; the result is in the same order as ``examples``.

        The batches are planned over *every* example of the chunk, whatever
        ``needed`` says, so an example is always computed in the batch an
        uninterrupted run over the same chunk puts it in (float results depend
        on what shares a batch). ``needed`` lists the positions that must be
        predicted (the cache misses; all when None): a planned batch is run
        when it holds a feature of a needed example, whole, and skipped
        otherwise. Every example whose features all ran is decoded, needed or
        not; the others are None. ``on_batch`` receives, after each batch, the
        ``(position, prediction)`` pairs of the examples that batch completed,
        so the caller can store them before the next batch starts.

        ``executor`` computes the planned batches (in this process when None);
        encoding, planning and decoding stay here, so every executor decodes
        the same outputs in the same order.
        """
        if not examples:
            return []
        features = self.task_model.encode(examples)
        lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        example_of = np.fromiter((f.example for f in features), dtype=np.int64, count=len(features))
        wanted = np.ones(len(examples), dtype=bool)
        if needed is not None:
            wanted[:] = False
            wanted[list(needed)] = True
        # features still to run, per example: an example is decoded when its count reaches zero
        remaining = np.bincount(example_of, minlength=len(examples))
        per_example: list[list[int]] = [[] for _ in examples]
        for index, owner in enumerate(example_of.tolist()):
            per_example[owner].append(index)
        outputs: list[Any] = [None] * len(features)
        predictions: list[Prediction | None] = [None] * len(examples)
        planned = self.plan(features)
        to_run = [indices for indices in planned if wanted[example_of[indices]].any()]
        self.stats.skipped_batches += len(planned) - len(to_run)
        chunk = PlannedChunk(self, features, lengths, to_run)
        computed = executor.compute(chunk) if executor is not None else self.compute_in_process(chunk)
        for indices, results in computed:
            self._split(results, indices, lengths, outputs)
            rows = len(indices)
            stats = self.stats
            stats.batches += 1
            stats.rows += rows
            stats.largest_batch_rows = max(stats.largest_batch_rows, rows)
            stats.padded_tokens += rows * self._padded(int(lengths[indices[0]]))
            stats.real_tokens += int(lengths[indices].sum())

            owners = example_of[indices]
            np.subtract.at(remaining, owners, 1)
            finished = []
            for position in sorted(set(owners[remaining[owners] == 0].tolist())):
                predictions[position] = self._decode(examples[position], features, outputs, per_example[position])
                finished.append((position, predictions[position]))
            if on_batch is not None and finished:
                on_batch(finished)
        # an example with no features (nothing to run) is decoded from no outputs
        featureless = [(p, self._decode(examples[p], features, outputs, [])) for p, mine in enumerate(per_example) if not mine]
        for position, prediction in featureless:
            predictions[position] = prediction
        if on_batch is not None and featureless:
            on_batch(featureless)
        return predictions

    def compute_in_process(self, chunk: "PlannedChunk") -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """The local executor: each planned batch computed here, in plan order, as ``(indices, outputs)``.

        On CUDA the next batch is collated (and pinned) on a worker thread while
        the current one runs. A batch that runs out of memory (``batch_size:
        auto``) is re-planned with every batch after it under halved limits.
        """
        features, lengths = chunk.features, chunk.lengths
        pending = list(chunk.batches)
        pending.reverse()  # a stack: pop() takes the next batch in plan order
        prepared = None
        while pending:
            indices = pending.pop()
            batch = prepared.result() if prepared is not None else self._prepared(features, indices)
            prepared = None
            if self._prefetch is not None and pending:
                # collate (and pin) the next batch on a worker thread while this one runs on the device
                prepared = self._prefetch.submit(self._prepared, features, pending[-1])
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
                remaining_features = list(indices) + [i for group in reversed(pending) for i in group]
                pending = self._pack(remaining_features, lengths)
                pending.reverse()
                continue
            yield indices, results

    def _decode(self, example: Example, features: Sequence[Features], outputs: list[Any], mine: list[int]) -> Prediction:
        try:
            return self.task_model.decode(example, [features[i] for i in mine], [outputs[i] for i in mine])
        except Exception as error:
            raise DecodeError(example, error) from error

    def _split(self, results: Any, indices: Sequence[int], lengths: np.ndarray, outputs: list[Any]) -> None:
        """Per-row output dicts from one batch's outputs, "token" outputs cut to each row's own length."""
        expected = self.loaded.head.outputs
        if not isinstance(results, dict) or set(results) != set(expected):
            found = sorted(results) if isinstance(results, dict) else type(results).__name__
            raise ModelError(f"backend {self.backend.name!r} returned {found} for head {self.loaded.head.name!r}, expected {sorted(expected)}")
        for name, values in results.items():
            if len(values) != len(indices):
                raise ModelError(f"backend {self.backend.name!r} returned {len(values)} rows of {name!r} for a batch of {len(indices)}")
        token = self.token_outputs
        for row, index in enumerate(indices):
            outputs[index] = {
                name: values[row][: lengths[index]] if name in token else values[row] for name, values in results.items()
            }

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

    def describe(self) -> dict[str, Any]:
        loaded = self.loaded
        handle_config = getattr(loaded.handle, "config", None)
        return {
            "name_or_path": loaded.name_or_path,
            "path": loaded.path,
            "fingerprint": loaded.fingerprint,
            "backend": self.backend.name,
            "head": loaded.head.name,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "attention": getattr(handle_config, "_attn_implementation", None),
            "batch_size": "auto" if self.auto else self.max_rows,
            "batch_size_that_worked": self.max_rows,
            "max_tokens": self.max_tokens,
            "batches": self.stats.batches,
            "batches_skipped_as_cached": self.stats.skipped_batches,
            "largest_batch_rows": self.stats.largest_batch_rows,
            "padding_ratio": round(self.stats.padded_tokens / self.stats.real_tokens, 4) if self.stats.real_tokens else None,
            "oom_retries": self.stats.oom_retries,
            "forward_seconds": round(self.stats.forward_seconds, 4),
            "parameters": self.task_model.parameters(),
        }


def cache_key_parameters(task_model: TaskModel) -> str:
    """Model weights and settings that change predictions, as one string for the cache key.

    The backend, dtype and kind of device are part of it: bfloat16 and
    float32, a GPU and a CPU, or torch and onnxruntime give slightly different
    scores for the same weights.
    """
    loaded = task_model.loaded
    return json.dumps(
        {
            "fingerprint": loaded.fingerprint,
            "backend": loaded.backend.cache_identity(loaded),
            "parameters": task_model.parameters(),
            "head_options": task_model.head_options(),
        },
        sort_keys=True,
        default=str,
    )


def run_key(task: Task, task_model: TaskModel, task_provider: dict[str, Any]) -> str:
    """The cache key part shared by every record of a run: task, options, model settings and the task's plugin.

    A remote worker computes it from the model it loaded, so a worker whose
    weights, backend or task plugin differ from the driver's is refused.
    """
    return json.dumps(
        {"task": task.name, "options": task.options.model_dump(mode="json"), "model": cache_key_parameters(task_model),
         "plugin": task_provider},
        sort_keys=True,
    )
