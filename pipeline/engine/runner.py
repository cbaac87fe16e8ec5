"""The runner: one pipeline's run as its phases, read -> preprocess -> predict -> score and write -> report.

Records stream through in chunks of ``chunk_size``: only one chunk of
examples is in memory at a time, predictions are appended to a temporary
``predictions.jsonl`` per chunk and stored in the cache as each model batch
finishes, and metrics keep a few numbers per example. Each phase lives in a
module of its own (``reading``, ``preprocessing``, ``predicting``,
``scoring``, ``reporting``, with ``overlap`` running the chunk loop); the
runner knows no task, and owns the run folder and the run's errors.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import ConfigError, DataError, ModelError, NlpflowError, OutputError, Problems, RunInterrupted
from nlpflow.contract.progress import Progress
from nlpflow.contract.types import Example, Executor, Prediction, RunResult, TaskContext
from nlpflow.engine import overlap as chunk_loop
from nlpflow.engine import reporting
from nlpflow.engine.cache import PredictionCache
from nlpflow.engine.counts import Counts
from nlpflow.engine.executing import StageSpec, make_executor
from nlpflow.engine.fingerprint import DataFingerprint
from nlpflow.engine.guard import blamed_on
from nlpflow.engine.labels import LabelCheck
from nlpflow.engine.model_stage import ModelStage
from nlpflow.engine.predicting import Predictor, load_model
from nlpflow.engine.preprocessing import Preprocessing
from nlpflow.engine.reading import ExampleReader
from nlpflow.engine.scoring import Scoring
from nlpflow.registry import default_registry

#: records ``validate`` reads from each data file
PREFLIGHT_RECORDS = 5


def safe_run_directory(output_dir: Path, pipeline_name: str) -> Path:
    """``output_dir / pipeline_name``, refusing anything that would land outside ``output_dir``."""
    root = output_dir.resolve()
    target = (root / pipeline_name).resolve()
    if target.parent != root:
        raise OutputError(f"pipeline name {pipeline_name!r} would write outside the output directory {root}")
    return target


class Runner:
    """Runs one resolved pipeline and writes its run folder.

    ``executor`` computes the model stage's planned batches (the ``local``
    executor when not given); ``overlap``: read/preprocess, model and
    score/write of successive chunks in three threads (True) or one after
    another (False); None: overlapped when a model stage runs.
    """

    def __init__(
        self, pipeline: ResolvedPipeline, output_dir: Path, cache: PredictionCache | None = None, interactive: bool | None = None,
        executor: Executor | None = None, overlap: bool | None = None,
    ):
        self.pipeline = pipeline
        self.config = pipeline.config
        self.task = pipeline.task
        self.directory = safe_run_directory(output_dir, pipeline.name)
        self.cache = cache
        self.interactive = interactive
        self.executor = executor if executor is not None else make_executor(default_registry(), "local")
        self.overlap = overlap
        self.counts = Counts()
        #: seconds per stage of the run, for the report
        self.stage_seconds: Counter[str] = Counter()
        self.fingerprint = DataFingerprint(pipeline)
        self.reader = ExampleReader(pipeline, self.fingerprint)
        self.preprocessing = Preprocessing(pipeline, self.stage_seconds)
        self.scoring = Scoring(pipeline, self.counts, self.stage_seconds)
        #: set by :meth:`check_labels` before the model loads; None for open-ended tasks
        self.label_check: LabelCheck | None = None

    # -- before the run: what validate checks too ------------------------------------------------

    def preflight(self, records: int = PREFLIGHT_RECORDS, *, problems: list[NlpflowError] | None = None) -> None:
        """What ``validate`` checks without running the model: the data file opens with its reader and its first
        ``records`` records have the mapped fields, the model's config resolves and its backend's other checks pass
        (``Backend.check_model``: no weights are read), and the model's labels meet the data's.

        Raises the first problem; with a ``problems`` list, appends each to it instead. The data and the model are
        checked either way, each without the other; the labels need both, so they are checked only when both pass."""
        config = self.config
        report = Problems(problems)
        data_ok = model_ok = False
        with report.check():
            # the whole data, as the run hands it: a pool cut to the first records would fail a k the data allows
            self.prepare_task()
            self._check_first_records(records)
            data_ok = True
        with report.check():
            if config.model is not None and self.pipeline.backend is not None:
                try:
                    self.pipeline.backend.check_model(config.model)
                except ModelError as error:
                    raise ModelError(f"{config.location('model')}: pipeline {self.pipeline.name!r}: {error}") from None
            model_ok = True
        if data_ok and model_ok:
            self.check_labels()

    def prepare_task(self) -> None:
        """Call the task's ``prepare`` once, before any record is checked (by the run, and by ``validate``)."""
        config, pipeline = self.config, self.pipeline
        task = self.task

        def examples() -> Iterator[Example]:
            read = self.reader.examples(Counts())  # the first pass counts apart from the run
            try:
                yield from read
            finally:
                read.close()
                self.fingerprint.close()

        fields = {name: config.fields.get(name, name) for name in (*task.input_fields, *task.reference_fields)}
        context = TaskContext(pipeline.name, config.source.parent, fields, examples, config.model, pipeline.backend)
        with blamed_on(pipeline.task_plugin, f"task {task.name!r} raised in prepare for pipeline {pipeline.name!r}"):
            try:
                task.prepare(context)
            except ConfigError as error:
                if error.location is not None:
                    raise
                raise ConfigError(error.message, config.location("options"), pipeline.name) from None

    def _check_first_records(self, records: int) -> None:
        """The data's first ``records`` records are read and mapped, as the run will (a DataError if none can be)."""
        config = self.config
        first, counts = self.reader.first(records)
        if not first and counts.skipped:
            skipped = counts.skipped[0]
            raise DataError(f"the first {counts.read} records were all skipped; first: {skipped['reason']}",
                            config.data_path, skipped["line"], self.pipeline.name)
        if not first:
            raise DataError("the data file has no records", config.data_path, None, self.pipeline.name)

    def check_labels(self) -> None:
        """Compare the labels the model can predict with the first chunk's reference labels, before the model loads
        (so a mismatch costs no model load and no forward pass); a ConfigError when no reference label is predictable."""
        check = LabelCheck.for_pipeline(self.pipeline)
        if check is None:
            return
        first, _ = self.reader.first(self.config.chunk_size)  # the first chunk is read again by the run itself
        check.check_first_chunk(first)
        self.label_check = check

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started_at = datetime.now(timezone.utc)
        started = time.perf_counter()
        self._make_folder()
        self.prepare_task()
        self.check_labels()
        stage, run_key = self._load_model() if self.config.model is not None else (None, None)
        try:
            predictor = self._predictor(stage, run_key)
            return self._run_phases(predictor, stage, started_at, started)
        finally:
            self.executor.close()

    def _run_phases(self, predictor: Predictor, stage: ModelStage | None, started_at: datetime, started: float) -> RunResult:
        """read -> preprocess -> predict -> score and write, chunk by chunk, into a partial predictions file; then the
        reports, staged, and every file put in place at once. On any failure the partial file is removed and the
        previous run's files are left whole."""
        partial = self._partial_file()
        try:
            self.scoring.collectors = reporting.start_collectors(self.pipeline)
            with open(partial, "w", encoding="utf-8") as predictions_file:
                self._predict_and_write(predictor, stage is not None, predictions_file)
            self._check_counts()
            result = self._result(stage, partial, started_at, started)
            # every report is rendered and written to a temporary file before the previous run's files are touched,
            # so a full disk or a failing write leaves the previous run whole
            staged, failures = reporting.stage_reports(self.pipeline, self.directory, result, self.counts)
            reporting.put_in_place(self.directory, partial, staged)
            result.predictions_file = None
        except OSError as error:
            partial.unlink(missing_ok=True)
            # writing the predictions file, or renaming files into place (reports raise OutputError themselves)
            raise OutputError(
                f"pipeline {self.pipeline.name!r}: cannot write the run's files in {self.directory} (predictions of "
                f"{self.counts.read} records so far, in {partial.name}): {error.strerror or error}"
            ) from None
        except KeyboardInterrupt as interrupt:
            partial.unlink(missing_ok=True)
            raise RunInterrupted(self.pipeline.name, self.counts.reusable, self.cache is not None) from interrupt
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        failures += reporting.publish(self.pipeline, result)
        if failures:
            raise failures[0]
        return result

    def _make_folder(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"pipeline {self.pipeline.name!r}: cannot create the report folder {self.directory}: {error.strerror or error}") from None

    def _load_model(self) -> tuple[ModelStage, str]:
        timer = time.perf_counter()
        stage, run_key = load_model(self.pipeline)
        self.stage_seconds["load model"] += time.perf_counter() - timer
        return stage, run_key

    def _predictor(self, stage: ModelStage | None, run_key: str | None) -> Predictor:
        """How chunks are predicted; with a model, the executor is started with the spec of the stage just loaded."""
        if stage is None:
            return Predictor(self.pipeline, self.counts, self.stage_seconds)
        timer = time.perf_counter()
        pipeline = self.pipeline
        spec = StageSpec.of(self.task, self.config.model, pipeline.backend, pipeline.task_provider, loaded_here=(stage.computer, run_key),
                             locate_model=pipeline.locate_model)
        self.executor.start(spec, run_key)
        self.stage_seconds["start executor"] += time.perf_counter() - timer
        return Predictor(pipeline, self.counts, self.stage_seconds, self.cache, stage, run_key, self.executor.compute)

    def _partial_file(self) -> Path:
        """A name of its own, so two runs writing the same folder never share a partial file; the finished file
        replaces predictions.jsonl in one rename, so a killed run never leaves it half-written."""
        _remove_stale_partials(self.directory)
        return self.directory / f".predictions.jsonl.{os.getpid()}.{id(self):x}.partial"

    def _predict_and_write(self, predictor: Predictor, has_model: bool, predictions_file: IO[str]) -> None:
        """The chunk loop: each chunk read and preprocessed, predicted, then scored and written."""
        config = self.config
        interactive = sys.stderr.isatty() if self.interactive is None else self.interactive
        # a bar needs a total; plain log lines do not, and then the file is not read an extra time for it
        total = self.pipeline.reader.count_hint(config.data_path) if interactive else None
        if total is not None and config.data.limit:
            total = min(total, config.data.limit)
        progress = Progress(self.pipeline.name, total, interactive)

        def predict(chunk: list[Example]) -> list[Prediction]:
            progress.advance("read", len(chunk))
            progress.advance("preprocess", len(chunk))
            return predictor.predict(chunk, progress)

        def write(chunk: list[Example], predictions: list[Prediction]) -> None:
            self.scoring.score_and_write(chunk, predictions, predictions_file)

        chunks = self.preprocessing.prepared_chunks(self.reader.examples(self.counts, self.label_check))
        with progress.running():
            # reading and scoring are Python code that holds the GIL: in threads they pay for switching and
            # gain nothing unless a model stage (tokenizers, torch: released GIL) runs between them
            if self.overlap if self.overlap is not None else has_model:
                chunk_loop.run_overlapped(chunks, predict, write)
            else:
                chunk_loop.run_in_sequence(chunks, predict, write)
            predictions_file.flush()
            os.fsync(predictions_file.fileno())

    def _check_counts(self) -> None:
        """A run that read nothing, or skipped everything it read, writes no report."""
        counts = self.counts
        if counts.read == 0:
            raise DataError("the data file has no records", self.config.data_path, None, self.pipeline.name)
        if counts.predicted == 0:
            raise DataError(
                f"every one of the {counts.read} records was skipped; first: line {counts.skipped[0]['line']}: "
                f"{counts.skipped[0]['reason']}",
                self.config.data_path, None, self.pipeline.name,
            )

    def _result(self, stage: ModelStage | None, partial: Path, started_at: datetime, started: float) -> RunResult:
        """The run's result, with report.json's content, before any report file is written."""
        metrics = self.scoring.final_metrics()
        report = reporting.report_json(
            self.pipeline, self.counts, self.stage_seconds,
            metrics=metrics,
            analysis=self.scoring.analysis_summary(),
            data_sha256=self.fingerprint.sha256(),
            model=stage.describe() if stage else None,
            executor=self.executor.describe() if stage is not None else {"name": "local"},
            label_warnings=self.label_check.report() if self.label_check else None,
            started_at=started_at,
            finished_at=datetime.now(timezone.utc),
            wall=time.perf_counter() - started,
        )
        return RunResult(
            report=report, directory=self.directory, data_path=self.config.data_path, reader=self.pipeline.reader, task=self.task,
            predictions_file=partial, collected=self.scoring.collectors,
        )


def _remove_stale_partials(directory: Path) -> None:
    """Delete partial prediction files left by runs that were killed (their process is gone)."""
    for path in directory.glob(".predictions.jsonl.*.partial"):
        parts = path.name.split(".")
        try:
            pid = int(parts[3])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # alive, or not ours to ask about: leave it
