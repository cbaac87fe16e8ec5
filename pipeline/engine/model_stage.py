"""The model stage: encoding a chunk of examples for any task's model, planning its batches and decoding their outputs.

This is the hot path, shared by every task and backend. Features are sorted
by length within the chunk (a bounded window) and packed into batches under a
token budget (padded length x rows); an executor computes the planned batches
(see ``batches.py``: collated once with numpy, prepared by the backend, the
one out-of-memory policy) and their outputs are put back in input order and
decoded. The plan covers every example of the chunk, cached or not, so cache
state never changes what shares a batch (see ``run``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from nlpflow.contract.errors import ModelError
from nlpflow.contract.types import Example, Features, ModelConfig, Prediction, Task, TaskModel
from nlpflow.engine.batches import BatchComputer, ChunkPlan, StageStats, padded
from nlpflow.engine.guard import Relayed

#: transformers' ignore index: a position of ``labels`` or ``target_ids`` with no target (also their padding)
IGNORE_INDEX = -100
#: the inputs whose ignore-index positions carry no target
TARGET_INPUTS = ("labels", "target_ids")

#: computes a chunk's plan, yielding ``(indices, outputs)`` in plan order: an executor's ``compute``
Compute = Callable[[ChunkPlan], Iterator[tuple[list[int], Mapping[str, Any]]]]


class DecodeError(Relayed):
    """A task model's ``decode`` failed; names the example so the runner's error can point at its line."""

    def __init__(self, example: Example, error: Exception):
        self.example = example
        super().__init__(f"decode failed on record {example.index} (line {example.line}): {type(error).__name__}: {error}")


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
        #: computes planned batches in this process: what the ``local`` executor uses, and its batch limits
        self.computer = BatchComputer(task_model, config)
        tokenizer = loaded.tokenizer
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "labels": IGNORE_INDEX,
            "target_ids": IGNORE_INDEX,  # the token-logprobs head's "not scored"
        }
        self.token_outputs = [name for name, shape in loaded.head.outputs.items() if shape == "token"]

    @property
    def stats(self) -> StageStats:
        return self.computer.stats

    # -- planning ---------------------------------------------------------

    def plan(self, features: Sequence[Features]) -> list[list[int]]:
        """Batches of feature indices: longest first, each under the row cap and the token budget.

        Among rows of one length, those with as many target-less positions (the ignore index -100 in ``labels`` or
        ``target_ids``: an overlapping window's context) go together, so a head that computes only where some row
        of the batch has a target (``token-logprobs``) computes no more than its rows need. Remaining ties keep
        input order (a stable sort), so the plan is the same on every run.
        """
        lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        target_less = np.fromiter((self._target_less(f.inputs) for f in features), dtype=np.int64, count=len(features))
        order = np.lexsort((target_less, -lengths))  # the last key sorts first; lexsort is stable
        return self.computer.pack(order.tolist(), lengths)

    @staticmethod
    def _target_less(inputs: Mapping[str, Any]) -> int:
        """How many positions of a row have no target (the ignore index), over its ``labels`` and ``target_ids``."""
        return sum(
            int(np.count_nonzero(np.asarray(inputs[name]) == IGNORE_INDEX)) for name in TARGET_INPUTS if name in inputs
        )

    def chunk_plan(self, features: Sequence[Features], batches: list[list[int]], lengths: np.ndarray | None = None) -> ChunkPlan:
        """What an executor is handed for ``batches`` of ``features``: their token ids and how to pad them."""
        if lengths is None:
            lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        return ChunkPlan([f.inputs for f in features], lengths, batches, self.pad_values, self.computer.pad_multiple)

    def skip(self, examples: Sequence[Example]) -> None:
        """Count the planned batches of a chunk whose every prediction came from the cache, as ``run`` counts those
        it skips (the chunk is encoded and planned, nothing is computed)."""
        if examples:
            self.stats.skipped_batches += len(self.plan(self.task_model.encode(examples)))

    # -- running ----------------------------------------------------------

    def run(
        self,
        examples: Sequence[Example],
        needed: Iterable[int] | None = None,
        on_batch: Callable[[list[tuple[int, Prediction]]], None] | None = None,
        compute: Compute | None = None,
        on_plan: Callable[[np.ndarray, list[list[int]]], None] | None = None,
        outputs_cache: OutputsCache | None = None,
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
        so the caller can store them before the next batch starts. ``on_plan``
        receives, before any batch runs, each feature's example position and
        the planned batches (of feature indices), every one of them whether it
        runs or not.

        ``compute`` is the executor's: it computes the :class:`ChunkPlan`
        (this stage's own :class:`BatchComputer` when not given); encoding,
        planning and decoding stay here, so every executor decodes the same
        outputs in the same order.

        ``outputs_cache`` (for a task model that :attr:`~TaskModel.caches_outputs`)
        holds features' outputs by :func:`outputs_key` and their token ids: a
        needed example whose every feature is there is decoded from them at
        once, and a planned batch runs only for features not there; the
        outputs of every batch run are stored in it.
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
        # features whose outputs came from the outputs cache: not counted again when a batch that runs holds them
        known = np.zeros(len(features), dtype=bool)
        feature_keys: list[str] = []
        if outputs_cache is not None:
            base = outputs_key(self.task_model)
            feature_keys = [feature_output_key(base, feature.inputs) for feature in features]
            # a feature repeated within the chunk is computed at each place, as the predictions' cache does (its
            # copies may sit in batches of different shapes, whose last digits can differ)
            repeated = {key for key, count in Counter(feature_keys).items() if count > 1}
            asked = [index for index in range(len(features)) if wanted[example_of[index]] and feature_keys[index] not in repeated]
            stored = outputs_cache.get_outputs(feature_keys[index] for index in asked)
            for index in asked:
                if feature_keys[index] in stored:
                    outputs[index] = stored[feature_keys[index]]
                    known[index] = True
            np.subtract.at(remaining, example_of[known], 1)
            from_outputs = [position for position in np.flatnonzero(wanted & (remaining == 0)).tolist() if per_example[position]]
            decoded = [(position, self._decode(examples[position], features, outputs, per_example[position])) for position in from_outputs]
            for position, prediction in decoded:
                predictions[position] = prediction
            if on_batch is not None and decoded:
                on_batch(decoded)
        planned = self.plan(features)
        if on_plan is not None:
            on_plan(example_of, planned)
        to_run = [indices for indices in planned if (wanted[example_of[indices]] & ~known[indices]).any()]
        self.stats.skipped_batches += len(planned) - len(to_run)
        computed = (compute or self.computer.compute)(self.chunk_plan(features, to_run, lengths))
        pad_multiple = self.computer.pad_multiple
        for indices, results in computed:
            self._split(results, indices, lengths, outputs)
            rows = len(indices)
            stats = self.stats
            stats.batches += 1
            stats.rows += rows
            stats.largest_batch_rows = max(stats.largest_batch_rows, rows)
            stats.padded_tokens += rows * padded(int(lengths[indices[0]]), pad_multiple)
            stats.real_tokens += int(lengths[indices].sum())

            fresh = [index for index in indices if not known[index]]
            if outputs_cache is not None:
                outputs_cache.put_outputs({feature_keys[index]: outputs[index] for index in fresh})
            owners = example_of[fresh]
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

    def describe(self) -> dict[str, Any]:
        loaded = self.loaded
        computer = self.computer
        stats = self.stats
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
            "batch_size": "auto" if computer.auto else computer.max_rows,
            "batch_size_that_worked": computer.max_rows,
            "max_tokens": computer.max_tokens,
            "batches": stats.batches,
            "batches_skipped_as_cached": stats.skipped_batches,
            "largest_batch_rows": stats.largest_batch_rows,
            "padding_ratio": round(stats.padded_tokens / stats.real_tokens, 4) if stats.real_tokens else None,
            "oom_retries": stats.oom_retries,
            "forward_seconds": round(stats.forward_seconds, 4),
            "parameters": self.task_model.parameters(),
        }


class OutputsCache(Protocol):
    """Where :meth:`ModelStage.run` keeps features' model outputs (the prediction cache's ``outputs`` table)."""

    def get_outputs(self, keys: Iterable[str]) -> dict[str, dict[str, np.ndarray]]: ...

    def put_outputs(self, items: Mapping[str, Mapping[str, Any]]) -> None: ...


def outputs_key(task_model: TaskModel) -> str:
    """The part of a feature's outputs key shared by a run: the weights, the backend (with dtype and kind of device)
    and the head with its options; not the task's options, which only :meth:`TaskModel.decode` reads."""
    loaded = task_model.loaded
    return json.dumps(
        {"fingerprint": loaded.fingerprint, "backend": loaded.backend.cache_identity(loaded), "head": loaded.head.name,
         "head_options": task_model.head_options()},
        sort_keys=True,
        default=str,
    )


def feature_output_key(base: str, inputs: Mapping[str, Any]) -> str:
    """One feature's outputs key: ``base`` and the token ids (and any other inputs) the model reads."""
    digest = hashlib.sha256(base.encode("utf-8"))
    for name in sorted(inputs):
        array = np.asarray(inputs[name])
        digest.update(f"\x00{name}:{array.dtype.str}:{array.shape}\x00".encode("utf-8"))
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


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
