"""A chunk's predictions: from the cache, from the model stage through the executor, given in the data, or by the task's rule."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Iterable

import numpy as np

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import ConfigError, DataError, ModelError, NlpflowError
from nlpflow.contract.progress import Progress
from nlpflow.contract.types import Example, ExampleError, Prediction, TaskModel
from nlpflow.engine.cache import PredictionCache, example_key
from nlpflow.engine.counts import Counts
from nlpflow.engine.guard import blamed_on, checked_count, checked_instance, checked_prediction
from nlpflow.engine.json_values import json_ready
from nlpflow.engine.model_stage import Compute, DecodeError, ModelStage, run_key as run_key_of
from nlpflow.engine.reading import PREDICTION_FIELD

log = logging.getLogger("nlpflow")


def load_model(pipeline: ResolvedPipeline) -> tuple[ModelStage, str]:
    """The task's model in its model stage, and the cache key part shared by every record of this run."""
    config = pipeline.config
    task = pipeline.task
    where = f"{config.location('model')}: pipeline {pipeline.name!r}"
    # a model can take minutes to load; say which one before the wait
    log.info("%s: loading model %s", pipeline.name, config.model.name_or_path)
    try:
        task_model = task.load(config.model, pipeline.backend)
    except ModelError as error:
        raise ModelError(f"{where}: {error}") from None
    except ConfigError as error:  # a task option that only shows its problem at load time
        raise ConfigError(error.message, error.location or config.location("options"), pipeline.name) from None
    except NlpflowError:
        raise
    except Exception as error:
        raise ModelError(
            f"{where}: task {task.name!r} could not load model {config.model.name_or_path!r}: {type(error).__name__}: {error}"
        ) from error
    checked_instance(task_model, TaskModel, pipeline.task_plugin, lambda found: f"task {task.name!r}: load() returned {found}, expected a TaskModel")
    return ModelStage(task_model, config.model), run_key_of(task, task_model, pipeline.task_provider)


class Predictor:
    """Predicts chunks one way, chosen once: a model stage (``stage``, with the cache under ``run_key`` and the
    executor's ``compute``), the task's rule, or the predictions given in the data."""

    def __init__(
        self, pipeline: ResolvedPipeline, counts: Counts, seconds: Counter[str], cache: PredictionCache | None = None,
        stage: ModelStage | None = None, run_key: str | None = None, compute: Compute | None = None,
    ):
        self.pipeline = pipeline
        self.task = pipeline.task
        self.counts = counts
        self.seconds = seconds
        self.cache = cache
        self.stage = stage
        self.run_key = run_key
        self.compute = compute

    def _where(self, example: Example) -> Callable[[], str]:
        """A record as error messages name it: its index and its place in the data file (built only for a message)."""
        return lambda: f"record {example.index} ({self.pipeline.config.data_path}:{example.line})"

    def predict(self, chunk: list[Example], progress: Progress | None = None) -> list[Prediction]:
        """The chunk's predictions, in order; ``progress`` advances as each model batch finishes (the rest at the end)."""
        advanced = [0]  # records the model batches already counted

        def batch_done(count: int) -> None:
            if progress is not None:
                progress.advance("predict", count)
                advanced[0] += count

        timer = time.perf_counter()
        if self.stage is not None:
            predictions = self._by_model(chunk, batch_done)
            self.seconds["model"] += time.perf_counter() - timer
        elif self.task.rule_based:
            predictions = self._by_rule(chunk)
            self.seconds["rule"] += time.perf_counter() - timer
        else:
            predictions = self._given(chunk)
            self.seconds["predictions given"] += time.perf_counter() - timer
        if progress is not None:
            progress.advance("predict", len(chunk) - advanced[0])
        return predictions

    def _by_rule(self, chunk: list[Example]) -> list[Prediction]:
        task, plugin = self.task, self.pipeline.task_plugin
        with blamed_on(
            plugin,
            f"task {task.name!r} raised in predict_by_rule on records {chunk[0].index}-{chunk[-1].index} "
            f"(lines {chunk[0].line}-{chunk[-1].line} of {self.pipeline.config.data_path})",
        ):
            predictions = task.predict_by_rule(chunk)
        checked_count(predictions, chunk, plugin, task.name, "predict_by_rule")
        return [checked_prediction(prediction, self._where(example), plugin, task.name, "predict_by_rule")
                for prediction, example in zip(predictions, chunk)]

    def _given(self, chunk: list[Example]) -> list[Prediction]:
        task, plugin, config = self.task, self.pipeline.task_plugin, self.pipeline.config
        parse = task.parse_prediction
        predictions = []
        example = chunk[0]
        guarded_parse = blamed_on(plugin, lambda error: f"task {task.name!r} raised in parse_prediction on {self._where(example)()}").call
        for example in chunk:
            try:
                prediction = guarded_parse(parse, example.fields[PREDICTION_FIELD])
            except ExampleError as error:
                raise DataError(f"field 'prediction': {error}", config.data_path, example.line, self.pipeline.name) from None
            predictions.append(checked_prediction(prediction, self._where(example), plugin, task.name, "parse_prediction"))
        return predictions

    def _by_model(self, chunk: list[Example], batch_done: Callable[[int], None]) -> list[Prediction]:
        task, plugin, config, stage = self.task, self.pipeline.task_plugin, self.pipeline.config, self.stage
        keys = [example_key(self.run_key, task.cache_inputs(example)) for example in chunk]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        cached = {key: value for key, value in cached.items() if isinstance(value, dict) and "value" in value}
        # A text that repeats within the chunk is computed at each place, as a run without a cache does
        # (its copies may sit in batches of different shapes, whose last digits can differ).
        repeated = {key for key, count in Counter(keys).items() if count > 1}
        misses = [position for position, key in enumerate(keys) if key not in cached or key in repeated]
        results: list[Prediction | None] = [None] * len(chunk)
        reused_before = self.counts.reusable
        if misses:
            missed = set(misses)
            rerun = RerunReuse(len(chunk), misses)

            def planned(example_of: np.ndarray, batches: list[list[int]]) -> None:
                rerun.planned(example_of, batches)
                self.counts.reusable = reused_before + rerun.count()

            def store(finished: list[tuple[int, Prediction]]) -> None:
                """Check one model batch's finished predictions and store the cache misses among them at once."""
                for position, prediction in finished:
                    results[position] = checked_prediction(prediction, self._where(chunk[position]), plugin, task.name, "decode")
                if self.cache is not None:
                    fresh = {
                        keys[p]: {"value": json_ready(results[p].value, exact=True), "details": results[p].details, "notes": chunk[p].notes}
                        for p, _ in finished
                        if p in missed
                    }
                    self.cache.put_many(fresh)
                    rerun.stored(p for p, _ in finished if p in missed and keys[p] not in repeated)
                    self.counts.reusable = reused_before + rerun.count()
                batch_done(len(finished))

            def failure(error: BaseException) -> str:
                if isinstance(error, DecodeError):
                    example = error.example
                    return (f"task {task.name!r} raised in decode on record {example.index} ({config.data_path}:{example.line}) "
                            f"in pipeline {self.pipeline.name!r}")
                return (f"task {task.name!r} failed on records {chunk[0].index}-{chunk[-1].index} (lines {chunk[0].line}-"
                        f"{chunk[-1].line} of {config.data_path}) in pipeline {self.pipeline.name!r}")

            with blamed_on(plugin, failure):
                computed = stage.run(chunk, needed=misses, on_batch=store, compute=self.compute,
                                     on_plan=planned if self.cache is not None else None,
                                     outputs_cache=self.cache if stage.task_model.caches_outputs else None)
            checked_count(computed, chunk, plugin, task.name, "the model stage")
        else:
            stage.skip(chunk)
            self.counts.reusable = reused_before + len(chunk)
        # what was not computed (its planned batches held cache hits only) comes from the cache
        for position, key in enumerate(keys):
            if results[position] is None:
                stored = cached[key]
                results[position] = Prediction(stored["value"], stored.get("details") or {})
                chunk[position].notes.update(stored.get("notes") or {})
                self.counts.from_cache += 1
        return results  # type: ignore[return-value]


class RerunReuse:
    """How many of a chunk's records a rerun over the same data takes from the cache, kept current as each model
    batch is stored, for the message of an interrupted run.

    A rerun plans the chunk's batches as this run did and computes every batch that holds a feature of a record it
    needs (not cached, or a text repeated within the chunk); a record any of whose features sits in a batch it
    skips comes from the cache. So stored predictions a rerun computes again anyway are not counted.
    """

    def __init__(self, records: int, needed: Iterable[int]):
        self.needed = np.zeros(records, dtype=bool)
        self.needed[list(needed)] = True
        self.reused = 0
        self.example_of: np.ndarray | None = None
        self.batches: list[list[int]] = []

    def planned(self, example_of: np.ndarray, batches: list[list[int]]) -> None:
        # kept up to date batch by batch: recounting every batch after each one costs seconds per chunk at batch_size 1
        self.example_of = example_of
        self.batches = batches
        self.batch_of = np.empty(len(example_of), dtype=np.int64)
        for number, batch in enumerate(batches):
            self.batch_of[batch] = number
        #: per batch, its features of needed records: the batch is skipped by a rerun once none is left
        self.pending = np.bincount(self.batch_of[self.needed[example_of]], minlength=len(batches))
        #: per record, whether a feature of it sits in a batch a rerun skips
        self.from_cache = np.zeros(len(self.needed), dtype=bool)
        self.from_cache[example_of[self.pending[self.batch_of] == 0]] = True
        self.reused = int(np.count_nonzero(self.from_cache))
        self.features_of: list[list[int]] = [[] for _ in self.needed]
        for feature, record in enumerate(example_of.tolist()):
            self.features_of[record].append(feature)

    def stored(self, positions: Iterable[int]) -> None:
        """Records whose prediction is now in the cache under a key no other record of the chunk has."""
        for position in positions:
            if not self.needed[position]:
                continue
            self.needed[position] = False
            if self.example_of is None:
                continue  # stored before the plan (from the outputs cache): planned() counts it
            for feature in self.features_of[position]:
                number = self.batch_of[feature]
                self.pending[number] -= 1
                if self.pending[number] == 0:
                    for record in self.example_of[self.batches[number]].tolist():
                        if not self.from_cache[record]:
                            self.from_cache[record] = True
                            self.reused += 1

    def count(self) -> int:
        return self.reused
