"""The runner: reader -> preprocessors -> model stage (or given predictions) -> metrics -> reporters.

Records stream through in chunks of ``chunk_size``: only one chunk of
examples is in memory at a time, predictions are appended to a temporary
``predictions.jsonl`` per chunk and stored in the cache as each model batch
finishes, and metrics keep a few numbers per example. The runner knows no task: it calls
the plugins' objects and wraps their failures with the plugin, pipeline and
example they concern.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from nlpflow import __version__
from nlpflow.engine.analysis import ErrorAnalysis
from nlpflow.engine.cache import PredictionCache, example_key
from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import ConfigError, DataError, ModelError, NlpflowError, OutputError, PluginError, Problems, RunInterrupted
from nlpflow.engine.labels import LabelCheck
from nlpflow.engine.model_stage import DecodeError, ModelStage, run_key as run_key_of
from nlpflow.contract.progress import Progress
from nlpflow.contract.files import handle_sha256, stage_file
from nlpflow.engine.report import metric_entry, package_versions
from nlpflow.engine.stats import RowCollector
from nlpflow.engine.run_folder import record_run_files, remove_previous_run
from nlpflow.contract.types import Example, ExampleError, Executor, Prediction, RawRecord, RunCollector, RunResult, TaskModel

log = logging.getLogger("nlpflow")

PREDICTION_FIELD = "prediction"
#: every skipped record (line, index, reason), one JSON object a line, in the run folder
SKIPPED_FILE = "skipped.jsonl"
#: skipped records listed in report.json itself
SKIPPED_IN_REPORT = 20
#: columns taken as a record's id when data.id_field is not set, in this order
ID_FIELD_GUESSES = ("id", "_id")


@dataclass
class Counts:
    read: int = 0
    predicted: int = 0
    scored: int = 0
    from_cache: int = 0
    #: predictions stored in the cache by this run (each model batch's, as soon as it finishes)
    saved: int = 0
    truncated: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def safe_run_directory(output_dir: Path, pipeline_name: str) -> Path:
    """``output_dir / pipeline_name``, refusing anything that would land outside ``output_dir``."""
    root = output_dir.resolve()
    target = (root / pipeline_name).resolve()
    if target.parent != root:
        raise OutputError(f"pipeline name {pipeline_name!r} would write outside the output directory {root}")
    return target


#: records ``validate`` reads from each data file
PREFLIGHT_RECORDS = 5


class Runner:
    """Runs one resolved pipeline and writes its run folder."""

    def __init__(
        self, pipeline: ResolvedPipeline, output_dir: Path, cache: PredictionCache | None = None, interactive: bool | None = None,
        executor: Executor | None = None, overlap: bool | None = None,
    ):
        self.pipeline = pipeline
        #: computes the model stage's planned batches; None: in this process (the local executor's path)
        self.executor = executor
        self.config = pipeline.config
        self.task = pipeline.task
        self.directory = safe_run_directory(output_dir, pipeline.name)
        self.cache = cache
        self.interactive = interactive
        #: read/preprocess, model and score/write of successive chunks in three threads (NLPFLOW_OVERLAP=1), or one
        #: after another (NLPFLOW_OVERLAP=0); None: overlapped when a model stage runs
        self.overlap = {"1": True, "0": False}.get(os.environ.get("NLPFLOW_OVERLAP", "")) if overlap is None else overlap
        self.counts = Counts()
        self.stage_seconds: Counter[str] = Counter()
        self.metric_rows = [RowCollector(distinct=metric.accepts_counts) for metric in pipeline.metrics]
        inputs = pipeline.task.input_fields
        self.analysis = ErrorAnalysis(
            [metric.name for metric in pipeline.metrics],
            self.config.fields.get(inputs[0], inputs[0]) if inputs else None,
            self.config.report.slice_by,
            self.config.report.rank_by,
        )
        #: set by :meth:`check_labels` before the model loads; None for open-ended tasks
        self.label_check: LabelCheck | None = None
        #: reporters' collectors by reporter name, made as the run starts
        self.collectors: dict[str, RunCollector] = {}

    # -- reading ----------------------------------------------------------

    def _fail_or_skip(self, message: str, line: int, index: int | None, source: str | None = None) -> None:
        """``source``: the file the record is in, where the data is several files."""
        if self.config.data.on_error == "fail":
            raise DataError(
                f"{message} (set data.on_error: skip to skip such records)", source or self.config.data_path, line, self.pipeline.name
            )
        self.counts.skipped.append({"line": line, "index": index, "reason": message, **({"file": source} if source else {})})

    def examples(self) -> Iterator[Example]:
        """Examples in file order, with fields mapped and checked by the task; bad records fail or are skipped."""
        config = self.config
        task = self.task
        mapping = {name: config.fields.get(name, name) for name in (*task.input_fields, *task.reference_fields)}
        prediction_column = config.fields.get(PREDICTION_FIELD, PREDICTION_FIELD)
        needs_prediction = config.model is None and not task.rule_based
        records: Iterable[RawRecord] = self._read_records()
        if config.data.limit:
            records = islice(records, config.data.limit)
        label_fields = [mapping[name] for name in task.reference_fields] + ([prediction_column] if needs_prediction else [])
        #: label with case and surrounding spaces folded -> the spellings seen, to warn about look-alike labels
        spellings: dict[str, set[str]] = {}
        seen_labels: set[Any] = set()
        check_example = task.check_example
        data_path = config.data_path  # a property that builds a Path: once, not per record
        input_columns = [(name, column) for name, column in mapping.items() if name in task.input_fields]
        id_field = config.data.id_field
        #: the columns every record must have (checked first in one pass; the message is built only when one is missing)
        required = [column for _, column in input_columns] + ([prediction_column] if needs_prediction else []) + ([id_field] if id_field else [])
        mapped = list(mapping.items())
        counts = self.counts
        index = -1
        for record in records:
            index += 1
            counts.read += 1
            data = record.data
            if data is None:
                self._fail_or_skip(record.error or "unreadable record", record.line, index, record.source)
                continue
            for column in required:
                if column not in data:
                    self._fail_or_skip(self._missing_fields(data, input_columns, needs_prediction, prediction_column), record.line, index, record.source)
                    break
            else:
                for column in label_fields:
                    values = data.get(column)
                    for value in values if isinstance(values, list) else (values,):
                        if isinstance(value, str) and value not in seen_labels:
                            seen_labels.add(value)
                            spellings.setdefault(value.strip().casefold(), set()).add(value)
                fields = {name: data[column] for name, column in mapped if data.get(column) is not None}
                if needs_prediction:
                    fields[PREDICTION_FIELD] = data[prediction_column]
                example = Example(index, record.line, fields, data)
                try:
                    check_example(example)
                except ExampleError as error:
                    self._fail_or_skip(str(error), record.line, index, record.source)
                    continue
                except ConfigError as error:  # a task option whose problem shows on a record (a template naming a missing field)
                    raise ConfigError(f"{error.message} (record {index}, {data_path}:{record.line})",
                                      error.location or config.location("options"), self.pipeline.name) from None
                except NlpflowError:
                    raise
                except Exception as error:
                    raise PluginError(
                        f"task {task.name!r} raised in check_example on record {index} ({data_path}:{record.line}): {type(error).__name__}: {error}",
                        self.pipeline.task_plugin,
                    ) from error
                if self.label_check is not None:
                    self.label_check.see(example)
                yield example
        look_alikes = sorted(sorted(group) for group in spellings.values() if len(group) > 1)
        if look_alikes:
            log.warning(
                "warning: pipeline %r: %s has labels that differ only in case or surrounding spaces, so they count as "
                "different classes: %s",
                self.pipeline.name, config.data_path, "; ".join(" vs ".join(map(repr, group)) for group in look_alikes[:20]),
            )

    def _missing_fields(self, data: dict, input_columns: Sequence[tuple[str, str]], needs_prediction: bool, prediction_column: str) -> str:
        """What a record lacks, for the skip or failure message."""
        missing = [f"{name!r} (column {column!r})" if column != name else repr(name) for name, column in input_columns
                   if column not in data]
        if needs_prediction and prediction_column not in data:
            missing.append(f"{PREDICTION_FIELD!r} (needed because the pipeline has no model)")
        id_field = self.config.data.id_field
        if id_field and id_field not in data:
            missing.append(f"{id_field!r} (data.id_field)")
        return f"missing field {', '.join(missing)}; the record has {', '.join(map(repr, data)) or 'no fields'}"

    def preflight(self, records: int = PREFLIGHT_RECORDS, *, problems: list[NlpflowError] | None = None) -> None:
        """What ``validate`` checks without running the model: the data file opens with its reader and its first
        ``records`` records have the mapped fields, the model's config resolves (no weights are read), and the
        model's labels meet the data's.

        Raises the first problem; with a ``problems`` list, appends each to it instead. The data and the model are
        checked either way, each without the other; the labels need both, so they are checked only when both pass."""
        config = self.config
        report = Problems(problems)
        data_ok = model_ok = False
        with report.check():
            self._check_first_records(records)
            data_ok = True
        with report.check():
            if config.model is not None and self.pipeline.backend is not None:
                try:
                    self.pipeline.backend.checkpoint_config(config.model)
                except ModelError as error:
                    raise ModelError(f"{config.location('model')}: pipeline {self.pipeline.name!r}: {error}") from None
            model_ok = True
        if data_ok and model_ok:
            self.check_labels()

    def _check_first_records(self, records: int) -> None:
        """The data's first ``records`` records are read and mapped, as the run will (a DataError if none can be)."""
        config = self.config
        counts, self.counts = self.counts, Counts()
        examples = self.examples()
        try:
            first = list(islice(examples, records))
            if not first and self.counts.skipped:
                skipped = self.counts.skipped[0]
                raise DataError(f"the first {self.counts.read} records were all skipped; first: {skipped['reason']}",
                                config.data_path, skipped["line"], self.pipeline.name)
            if not first:
                raise DataError("the data file has no records", config.data_path, None, self.pipeline.name)
        finally:
            examples.close()
            self.counts = counts
            if getattr(self, "_data_file", None) is not None:
                self._data_file.close()

    def check_labels(self) -> None:
        """Compare the labels the model can predict with the first chunk's reference labels, before the model loads
        (so a mismatch costs no model load and no forward pass); a ConfigError when no reference label is predictable."""
        check = LabelCheck.for_pipeline(self.pipeline)
        if check is None:
            return
        counts, self.counts = self.counts, Counts()  # the first chunk is read again by the run itself
        examples = self.examples()
        try:
            check.check_first_chunk(list(islice(examples, self.config.chunk_size)))
        finally:
            examples.close()
            self.counts = counts
            if getattr(self, "_data_file", None) is not None:
                self._data_file.close()  # the run holds the file again as it reads it
        self.label_check = check

    def _read_records(self) -> Iterator[RawRecord]:
        """The reader's records; a reader that raises (they must not) is reported as its plugin's bug."""
        reader = self.pipeline.reader
        provider = self.pipeline.providers.get(("reader", reader.name), "?")
        last_line = 0
        self._hold_data_file()
        try:
            for record in reader.read(self.config.data_path):
                if not isinstance(record, RawRecord):
                    raise PluginError(
                        f"reader {reader.name!r} yielded {type(record).__name__} after line {last_line} of "
                        f"{self.config.data_path}, expected RawRecord",
                        provider,
                    )
                last_line = record.line
                yield record
        except NlpflowError:
            raise
        except Exception as error:
            raise PluginError(
                f"reader {reader.name!r} raised after line {last_line} of {self.config.data_path}: {type(error).__name__}: {error}",
                provider,
            ) from error

    def _hold_data_file(self) -> None:
        """Open the data file as the reader starts, so the report hashes the very file that was read (a file
        replaced by path, ``mv new data.jsonl``, is noticed rather than hashed in its place)."""
        path = self.config.data_path
        self._source_identities: dict[Path, tuple[int, int, int, int]] | None = None
        if not path.is_file():
            # several files (a folder, a glob, a saved dataset): each one's version as reading starts, checked
            # again as each is hashed; a file that cannot be stat'ed is reported by the reader, with its line
            self._data_file = None
            self._source_identities = {}
            for source in self.pipeline.reader.sources(path):
                try:
                    self._source_identities[source] = _identity(os.stat(source))
                except OSError:
                    pass
            return
        try:
            self._data_file = open(path, "rb")
            self._data_identity = _identity(os.fstat(self._data_file.fileno()))
        except OSError:
            self._data_file = None  # the reader reports why the file cannot be read, with its line

    def _data_sha256(self) -> str:
        """sha256 of the data file that was read, after checking it is still the same, unchanged file."""
        path = self.config.data_path
        handle = getattr(self, "_data_file", None)
        if handle is None and getattr(self, "_source_identities", None) is not None:
            return self._sources_sha256()
        if handle is None:
            raise DataError("the data file could not be opened again to fingerprint it", path, None, self.pipeline.name)
        with handle:
            try:
                now_at_path = _identity(os.stat(path))
            except FileNotFoundError:
                raise DataError(
                    "the data file was deleted while it was being read; the records read may not be all of it, so no "
                    "report is written", path, None, self.pipeline.name,
                ) from None
            except OSError as error:
                raise DataError(f"cannot check the data file after reading it: {error.strerror or error}", path, None, self.pipeline.name) from None
            if _identity(os.fstat(handle.fileno())) != self._data_identity or now_at_path[:2] != self._data_identity[:2]:
                raise DataError(
                    "the data file changed while it was being read (it was modified, or replaced by another file); the "
                    "records read do not come from one version of it, so no report is written. Run again once the file "
                    "stays as it is",
                    path, None, self.pipeline.name,
                )
            return handle_sha256(handle)

    def _sources_sha256(self) -> str:
        """sha256 over the sha256 of each file read, in reading order (so reordered files differ too), after
        checking each is the version that was there as reading started."""
        digest = hashlib.sha256()
        for source in self.pipeline.reader.sources(self.config.data_path):
            try:
                with open(source, "rb") as handle:
                    if _identity(os.fstat(handle.fileno())) != self._source_identities.get(source):
                        raise DataError(
                            "this file of the data appeared or changed while the data was being read; the records read "
                            "do not come from one version of the data, so no report is written. Run again once the "
                            "files stay as they are",
                            source, None, self.pipeline.name,
                        )
                    file_digest = handle_sha256(handle)
            except OSError as error:
                raise DataError(
                    f"cannot read this file of the data again to fingerprint it: {error.strerror or error}", source, None, self.pipeline.name
                ) from None
            digest.update(file_digest.encode() + b"\n")
        return digest.hexdigest()

    # -- running ----------------------------------------------------------

    def run(self) -> RunResult:
        config = self.config
        started_at = datetime.now(timezone.utc)
        started = time.perf_counter()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"pipeline {self.pipeline.name!r}: cannot create the report folder {self.directory}: {error.strerror or error}") from None

        self.check_labels()
        stage, run_key = self._load_model() if config.model is not None else (None, None)
        try:
            if stage is not None and self.executor is not None:
                timer = time.perf_counter()
                self.executor.start(self.task, config.model, self.pipeline.backend, run_key, self.pipeline.task_provider)
                self.stage_seconds["start executor"] += time.perf_counter() - timer
            return self._run_loaded(stage, run_key, started_at, started)
        finally:
            if self.executor is not None:
                self.executor.close()

    def _run_loaded(self, stage: ModelStage | None, run_key: str | None, started_at: datetime, started: float) -> RunResult:
        config = self.config

        interactive = sys.stderr.isatty() if self.interactive is None else self.interactive
        # a bar needs a total; plain log lines do not, and then the file is not read an extra time for it
        total = self.pipeline.reader.count_hint(config.data_path) if interactive else None
        if total is not None and config.data.limit:
            total = min(total, config.data.limit)
        # a name of its own, so two runs writing the same folder never share a partial file; the finished
        # file replaces predictions.jsonl in one rename, so a killed run never leaves it half-written
        _remove_stale_partials(self.directory)
        partial = self.directory / f".predictions.jsonl.{os.getpid()}.{id(self):x}.partial"
        progress = Progress(self.pipeline.name, total, interactive)
        self.collectors = self._start_collectors()
        try:
            with progress.running(), open(partial, "w", encoding="utf-8") as predictions_file:
                # reading and scoring are Python code that holds the GIL: in threads they pay for switching and
                # gain nothing unless a model stage (tokenizers, torch: released GIL) runs between them
                if self.overlap if self.overlap is not None else stage is not None:
                    self._run_overlapped(stage, run_key, progress, predictions_file)
                else:
                    for chunk in self._prepared_chunks():
                        progress.advance("read", len(chunk))
                        progress.advance("preprocess", len(chunk))
                        predictions = self._predict(chunk, stage, run_key, progress)
                        self._score_and_write(chunk, predictions, predictions_file)
                predictions_file.flush()
                os.fsync(predictions_file.fileno())
            if self.counts.read == 0:
                raise DataError("the data file has no records", config.data_path, None, self.pipeline.name)
            if self.counts.predicted == 0:
                raise DataError(
                    f"every one of the {self.counts.read} records was skipped; first: line {self.counts.skipped[0]['line']}: "
                    f"{self.counts.skipped[0]['reason']}",
                    config.data_path,
                    None,
                    self.pipeline.name,
                )

            timer = time.perf_counter()
            metrics = self._final_metrics()
            self.stage_seconds["final metrics"] += time.perf_counter() - timer
            finished_at = datetime.now(timezone.utc)
            wall = time.perf_counter() - started
            report = self._report(metrics, stage, started_at, finished_at, wall)
            result = RunResult(
                report=report, directory=self.directory, data_path=config.data_path, reader=self.pipeline.reader, task=self.task,
                predictions_file=partial, collected=self.collectors,
            )
            # every report is rendered and written to a temporary file before the previous run's files are touched,
            # so a full disk or a failing write leaves the previous run whole
            staged, failures = self._stage_reports(result)
            try:
                if self.counts.skipped:
                    staged[SKIPPED_FILE] = stage_file(
                        self.directory / SKIPPED_FILE,
                        "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.counts.skipped),
                    )
                # reports from an earlier run go first (those of formats no longer configured too): a report present
                # next to predictions.jsonl always describes it
                remove_previous_run(self.directory, [reporter.filename for reporter in self.pipeline.reporters], keep=staged.values())
                partial.replace(self.directory / "predictions.jsonl")
                result.predictions_file = None
                for name, temporary in staged.items():
                    os.replace(temporary, self.directory / name)
            finally:
                for temporary in staged.values():
                    temporary.unlink(missing_ok=True)
        except OSError as error:
            partial.unlink(missing_ok=True)
            # writing the predictions file, or renaming files into place (reports raise OutputError themselves)
            raise OutputError(
                f"pipeline {self.pipeline.name!r}: cannot write the run's files in {self.directory} (predictions of "
                f"{self.counts.read} records so far, in {partial.name}): {error.strerror or error}"
            ) from None
        except KeyboardInterrupt as interrupt:
            partial.unlink(missing_ok=True)
            raise RunInterrupted(self.pipeline.name, self.counts.saved, self.cache is not None) from interrupt
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        record_run_files(self.directory, ["predictions.jsonl", *staged])
        if failures:
            raise failures[0]
        return result

    def _prepared_chunks(self) -> Iterator[list[Example]]:
        """Chunks of read, checked and preprocessed examples, in file order."""
        chunks = _chunks(self.examples(), self.config.chunk_size)
        while True:
            timer = time.perf_counter()
            chunk = next(chunks, None)
            self.stage_seconds["read"] += time.perf_counter() - timer
            if chunk is None:
                return
            self._preprocess(chunk)
            yield chunk

    def _run_overlapped(self, stage: ModelStage | None, run_key: str | None, progress: Progress, predictions_file) -> None:
        """The chunk loop with its stages overlapped: a reader thread reads, checks and preprocesses the next chunk and
        a writer thread scores and writes the previous one while this thread runs the model on the current one (the
        tokenizer, numpy and torch release the GIL). Queues of one chunk keep memory flat; the writer takes chunks in
        order, so the output is the sequential loop's. A worker's exception is raised here as it was raised there;
        on any exit (an error, Ctrl-C, SIGTERM, both of which arrive in this thread) the workers are told to stop
        and joined."""
        stop = threading.Event()
        prepared = _Handoff(stop)
        to_write = _Handoff(stop)

        def read() -> None:
            try:
                for chunk in self._prepared_chunks():
                    if not prepared.put(chunk):
                        return
                prepared.put(_END)
            except BaseException as error:  # handed to the main thread, which raises it
                prepared.put(_Failure(error))

        def write() -> None:
            try:
                while (item := to_write.get()) is not _END and item is not None:
                    self._score_and_write(*item, predictions_file)
            except BaseException as error:
                to_write.failure = error
                stop.set()

        workers = [threading.Thread(target=read, name="nlpflow-read", daemon=True),
                   threading.Thread(target=write, name="nlpflow-write", daemon=True)]
        for worker in workers:
            worker.start()
        try:
            while True:
                item = prepared.get()
                if to_write.failure is not None:
                    raise to_write.failure
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                progress.advance("read", len(item))
                progress.advance("preprocess", len(item))
                predictions = self._predict(item, stage, run_key, progress)
                if not to_write.put((item, predictions)) and to_write.failure is not None:
                    raise to_write.failure
            to_write.put(_END)
            workers[1].join()
            if to_write.failure is not None:
                raise to_write.failure
        finally:
            stop.set()
            for worker in workers:
                # a worker stops at its next hand-off; one in the middle of a long chunk is left (a daemon) after
                # a few seconds rather than holding up Ctrl-C
                worker.join(timeout=5)

    def _load_model(self) -> tuple[ModelStage, str]:
        """The task's model in its model stage, and the cache key part shared by every record of this run."""
        config = self.config
        timer = time.perf_counter()
        where = f"{config.location('model')}: pipeline {self.pipeline.name!r}"
        # a model can take minutes to load; say which one before the wait
        log.info("%s: loading model %s", self.pipeline.name, config.model.name_or_path)
        try:
            task_model = self.task.load(config.model, self.pipeline.backend)
        except ModelError as error:
            raise ModelError(f"{where}: {error}") from None
        except ConfigError as error:  # a task option that only shows its problem at load time
            raise ConfigError(error.message, error.location or config.location("options"), self.pipeline.name) from None
        except NlpflowError:
            raise
        except Exception as error:
            raise ModelError(
                f"{where}: task {self.task.name!r} could not load model {config.model.name_or_path!r}: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(task_model, TaskModel):
            raise PluginError(
                f"task {self.task.name!r}: load() returned {type(task_model).__name__}, expected a TaskModel",
                self.pipeline.task_plugin,
            )
        run_key = run_key_of(self.task, task_model, self.pipeline.task_provider)
        self.stage_seconds["load model"] += time.perf_counter() - timer
        return ModelStage(task_model, config.model), run_key

    def _preprocess(self, chunk: list[Example]) -> None:
        for step in self.pipeline.preprocessors:
            timer = time.perf_counter()
            with blamed_on(
                self.pipeline.providers[("preprocessor", step.name)],
                f"preprocessor {step.name!r} raised on records {chunk[0].index}-{chunk[-1].index} of pipeline {self.pipeline.name!r}",
            ):
                step(chunk)
            self.stage_seconds[f"preprocess:{step.name}"] += time.perf_counter() - timer

    def _predict(self, chunk: list[Example], stage: ModelStage | None, run_key: str | None, progress: Progress | None = None) -> list[Prediction]:
        """The chunk's predictions, in order; ``progress`` advances as each model batch finishes (the rest at the end)."""
        advanced = [0]  # records the model batches already counted

        def batch_done(count: int) -> None:
            if progress is not None:
                progress.advance("predict", count)
                advanced[0] += count

        predictions = self._predictions(chunk, stage, run_key, batch_done)
        if progress is not None:
            progress.advance("predict", len(chunk) - advanced[0])
        return predictions

    def _predictions(self, chunk: list[Example], stage: ModelStage | None, run_key: str | None, batch_done: Callable[[int], None]) -> list[Prediction]:
        timer = time.perf_counter()
        if stage is None and self.task.rule_based:
            with blamed_on(
                self.pipeline.task_plugin,
                f"task {self.task.name!r} raised in predict_by_rule on records {chunk[0].index}-{chunk[-1].index} "
                f"(lines {chunk[0].line}-{chunk[-1].line} of {self.config.data_path})",
            ):
                predictions = self.task.predict_by_rule(chunk)
            self._check_count(predictions, chunk, "predict_by_rule")
            self.stage_seconds["rule"] += time.perf_counter() - timer
            return [self._checked(prediction, example, "predict_by_rule") for prediction, example in zip(predictions, chunk)]
        if stage is None:
            predictions = []
            for example in chunk:
                try:
                    prediction = self.task.parse_prediction(example.fields[PREDICTION_FIELD])
                except ExampleError as error:
                    raise DataError(f"field 'prediction': {error}", self.config.data_path, example.line, self.pipeline.name) from None
                except NlpflowError:
                    raise
                except Exception as error:  # the message is built only on failure, not per record
                    raise PluginError(
                        f"task {self.task.name!r} raised in parse_prediction on {_where(example, self.config)}: {type(error).__name__}: {error}",
                        self.pipeline.task_plugin,
                    ) from error
                predictions.append(self._checked(prediction, example, "parse_prediction"))
            self.stage_seconds["predictions given"] += time.perf_counter() - timer
            return predictions

        keys = [example_key(run_key, {name: example.fields.get(name) for name in self.task.input_fields}) for example in chunk]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        cached = {key: value for key, value in cached.items() if isinstance(value, dict) and "value" in value}
        # A text that repeats within the chunk is computed at each place, as a run without a cache does
        # (its copies may sit in batches of different shapes, whose last digits can differ).
        repeated = {key for key, count in Counter(keys).items() if count > 1}
        misses = [position for position, key in enumerate(keys) if key not in cached or key in repeated]
        results: list[Prediction | None] = [None] * len(chunk)
        if misses:
            missed = set(misses)

            def store(finished: list[tuple[int, Prediction]]) -> None:
                """Check one model batch's finished predictions and store the cache misses among them at once."""
                for position, prediction in finished:
                    results[position] = self._checked(prediction, chunk[position], "decode")
                if self.cache is not None:
                    fresh = {
                        keys[p]: {"value": _json_ready(results[p].value), "details": results[p].details, "notes": chunk[p].notes}
                        for p, _ in finished
                        if p in missed
                    }
                    self.cache.put_many(fresh)
                    self.counts.saved += len(fresh)
                batch_done(len(finished))

            try:
                computed = stage.run(chunk, needed=misses, on_batch=store, executor=self.executor)
            except NlpflowError:
                raise
            except DecodeError as error:
                example = error.example
                cause = error.__cause__
                raise PluginError(
                    f"task {self.task.name!r} raised in decode on record {example.index} "
                    f"({self.config.data_path}:{example.line}) in pipeline {self.pipeline.name!r}: {type(cause).__name__}: {cause}",
                    self.pipeline.task_plugin,
                ) from cause
            except Exception as error:
                raise PluginError(
                    f"task {self.task.name!r} failed on records {chunk[0].index}-{chunk[-1].index} "
                    f"(lines {chunk[0].line}-{chunk[-1].line} of {self.config.data_path}) in pipeline "
                    f"{self.pipeline.name!r}: {type(error).__name__}: {error}",
                    self.pipeline.task_plugin,
                ) from error
            self._check_count(computed, chunk, "the model stage")
        # what was not computed (its planned batches held cache hits only) comes from the cache
        for position, key in enumerate(keys):
            if results[position] is None:
                stored = cached[key]
                results[position] = Prediction(stored["value"], stored.get("details") or {})
                chunk[position].notes.update(stored.get("notes") or {})
                self.counts.from_cache += 1
        self.stage_seconds["model"] += time.perf_counter() - timer
        return results  # type: ignore[return-value]

    def _check_count(self, predictions: Any, examples: list[Example], source: str) -> None:
        """One prediction per example, or the task plugin is named for returning too few or too many."""
        if not isinstance(predictions, list) or len(predictions) != len(examples):
            found = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
            raise PluginError(
                f"task {self.task.name!r}: {source} returned {found} predictions for {len(examples)} records "
                f"(records {examples[0].index}-{examples[-1].index})",
                self.pipeline.task_plugin,
            )

    def _checked(self, prediction: Any, example: Example, method: str) -> Prediction:
        """A task's prediction, made JSON-ready; anything else is the task plugin's bug, named with the record."""
        if not isinstance(prediction, Prediction):
            raise PluginError(
                f"task {self.task.name!r}: {method} returned {type(prediction).__name__} for {_where(example, self.config)}, expected Prediction",
                self.pipeline.task_plugin,
            )
        details = prediction.details if prediction.details is not None else {}
        if not isinstance(details, dict):
            raise PluginError(
                f"task {self.task.name!r}: {method} returned details of type {type(details).__name__} for {_where(example, self.config)}, expected a dict",
                self.pipeline.task_plugin,
            )
        prediction.details = _json_ready(details) if details else details
        if _plainly_writable(prediction.value, prediction.details):
            return prediction
        try:
            json.dumps([_json_ready(prediction.value), prediction.details], ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as error:
            raise PluginError(
                f"task {self.task.name!r}: {method} returned a prediction for {_where(example, self.config)} that cannot be written as JSON: {error}",
                self.pipeline.task_plugin,
            ) from None
        return prediction

    def _score_and_write(self, chunk: list[Example], predictions: Sequence[Prediction], out) -> None:
        timer = time.perf_counter()
        references = []
        reference = self.task.reference
        example = chunk[0]
        try:
            for example in chunk:
                references.append(reference(example))
        except (NlpflowError, ExampleError):
            raise
        except Exception as error:
            raise PluginError(
                f"task {self.task.name!r} raised in reference() on record {example.index} ({self.config.data_path}:{example.line}): "
                f"{type(error).__name__}: {error}",
                self.pipeline.task_plugin,
            ) from error
        scored = [position for position, reference in enumerate(references) if reference is not None]
        per_example: list[dict[str, float]] = [{} for _ in chunk]
        if scored:
            scored_predictions = [predictions[p].value for p in scored]
            scored_references = [references[p] for p in scored]
            records = f"records {chunk[scored[0]].index}-{chunk[scored[-1]].index} of pipeline {self.pipeline.name!r}"
            for slot, metric in enumerate(self.pipeline.metrics):
                provider = self.pipeline.providers[("metric", metric.name)]
                with blamed_on(provider, f"metric {metric.name!r} raised on {records}"):
                    stats = np.asarray(metric.example_stats(scored_predictions, scored_references), dtype=float)
                if stats.ndim != 2 or len(stats) != len(scored):
                    raise PluginError(
                        f"metric {metric.name!r}: example_stats returned shape {stats.shape}, expected ({len(scored)}, k)",
                        self.pipeline.providers[("metric", metric.name)],
                    )
                self.metric_rows[slot].add(stats)
                with blamed_on(provider, f"metric {metric.name!r} raised in example_scores on {records}"):
                    scores = metric.example_scores(stats)
                    if scores is not None:
                        scores = [float(score) for score in scores]
                if scores is not None:
                    for p, score in zip(scored, scores):
                        per_example[p][metric.name] = _round(score)
        self.counts.scored += len(scored)
        self.counts.predicted += len(chunk)
        self.counts.truncated += sum(1 for example in chunk if example.notes.get("truncated"))
        prediction_values = _each_json_ready([prediction.value for prediction in predictions])
        written_references = _each_json_ready(references)
        lines = []
        encode = _LINE_ENCODER.encode
        fields = self.config.fields
        input_columns = [(name, fields.get(name, name)) for name in self.task.input_fields]
        record_identity = self._record_identity
        add_to_analysis = self.analysis.add
        for example, prediction, value, reference, scores in zip(chunk, predictions, prediction_values, written_references, per_example):
            identity = record_identity(example, input_columns)
            if reference is not None:  # a row of the metric stats, in the same order
                add_to_analysis(
                    example, scores, value, reference, identity,
                    lambda columns=example.columns: {name: _json_ready(columns.get(column)) for name, column in input_columns},
                    prediction.details,
                )
            line = {"index": example.index, "line": example.line, **identity, "prediction": value, "reference": reference, "scores": scores}
            if prediction.details:
                line["details"] = prediction.details
            if example.notes:
                line["notes"] = _json_ready(example.notes)
            lines.append(encode(line))
        lines.append("")
        out.write("\n".join(lines))
        records = f"records {chunk[0].index}-{chunk[-1].index} of pipeline {self.pipeline.name!r}"
        for name, collector in self.collectors.items():
            with blamed_on(self.pipeline.providers[("reporter", name)], f"reporter {name!r} raised collecting {records}"):
                collector.add(chunk, prediction_values, written_references, per_example)
        self.stage_seconds["score and write"] += time.perf_counter() - timer

    def _record_identity(self, example: Example, input_columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """The record's ``id`` (data.id_field, else an ``id`` or ``_id`` column) and, with report.include_inputs, its
        task inputs as read: what error analysis needs without joining predictions.jsonl to the data by line."""
        columns = example.columns
        identity: dict[str, Any] = {}
        config = self.config
        id_field = config.data.id_field
        if id_field is None:
            for guess in ID_FIELD_GUESSES:
                if guess in columns:
                    id_field = guess
                    break
        if id_field is not None and id_field in columns:
            value = columns[id_field]
            identity["id"] = value if type(value) in _JSON_AS_IS else _json_ready(value)
        if config.report.include_inputs:
            identity["inputs"] = {name: _json_ready(columns.get(column)) for name, column in input_columns}
        return identity

    def _analysis(self) -> dict[str, Any]:
        bootstrap = self.config.report.bootstrap
        rows = [collector.result() for collector in self.metric_rows]
        return self.analysis.summary(
            self.pipeline.metrics, rows, bootstrap.resamples, bootstrap.seed, bootstrap.confidence,
            blame=lambda metric: blamed_on(
                self.pipeline.providers[("metric", metric.name)], f"metric {metric.name!r} raised while scoring a slice of the data"
            ),
        )

    def _final_metrics(self) -> dict[str, Any]:
        bootstrap = self.config.report.bootstrap
        results = {}
        for slot, metric in enumerate(self.pipeline.metrics):
            rows = self.metric_rows[slot].result()
            provider = self.pipeline.providers[("metric", metric.name)]
            with blamed_on(provider, f"metric {metric.name!r} raised while scoring"):
                results[metric.name] = metric_entry(metric, rows, bootstrap.resamples, bootstrap.seed, bootstrap.confidence, provider)
        return results

    def _report(self, metrics: dict, stage: ModelStage | None, started_at: datetime, finished_at: datetime, wall: float) -> dict[str, Any]:
        config = self.config
        counts = self.counts
        reasons = Counter(item["reason"].split(";")[0] for item in counts.skipped)
        return {
            "nlpflow_report": 1,
            "pipeline": self.pipeline.name,
            "description": config.description,
            "task": self.task.name,
            "task_plugin": self.pipeline.task_plugin,
            "task_options": self.task.options.model_dump(mode="json"),
            "config_file": str(config.source),
            "metrics": metrics,
            "analysis": self._analysis(),
            "data": {
                "path": str(config.data_path),
                "format": self.pipeline.reader.name,
                "sha256": self._data_sha256(),
                "fields": {**{name: config.fields.get(name, name) for name in (*self.task.input_fields, *self.task.reference_fields)}},
            },
            "counts": {
                "read": counts.read,
                "predicted": counts.predicted,
                "scored": counts.scored,
                "skipped": len(counts.skipped),
                "truncated": counts.truncated,
                "from_cache": counts.from_cache,
            },
            # the first few, for a glance; every one is in skipped.jsonl next to the report
            "skipped": counts.skipped[:SKIPPED_IN_REPORT],
            "skipped_reasons": dict(reasons),
            "skipped_file": SKIPPED_FILE if counts.skipped else None,
            "preprocess": [step.name for step in self.pipeline.preprocessors],
            "model": stage.describe() if stage else None,
            # a rule-based run has no model either; this tells it apart from scoring the records' own predictions
            "rule": self.task.rule_name if stage is None and self.task.rule_based else None,
            "label_warnings": self.label_check.report() if self.label_check else None,
            "executor": self.executor.describe() if self.executor is not None and stage is not None else {"name": "local"},
            "timing": {
                "started": started_at.isoformat(timespec="seconds"),
                "finished": finished_at.isoformat(timespec="seconds"),
                "wall_seconds": round(wall, 3),
                "stages_seconds": {name: round(seconds, 3) for name, seconds in self.stage_seconds.items()},
                "records_per_second": round(counts.predicted / wall, 2) if wall > 0 else None,
            },
            "versions": package_versions() | {"nlpflow": __version__},
        }

    def _start_collectors(self) -> dict[str, RunCollector]:
        """Each reporter's collector (by reporter name), fed every written chunk so reporters need not re-read files."""
        collectors = {}
        for reporter in self.pipeline.reporters:
            with blamed_on(self.pipeline.providers[("reporter", reporter.name)], f"reporter {reporter.name!r} raised in collector()"):
                collector = reporter.collector(self.task, self.pipeline.metrics)
            if collector is not None:
                collectors[reporter.name] = collector
        return collectors

    def _stage_reports(self, result: RunResult) -> tuple[dict[str, Path], list[PluginError]]:
        """Each reporter's file written to a temporary file (by final name), and the reporters that failed: one broken
        reporter must not stop the others."""
        errors = []
        staged: dict[str, Path] = {}
        try:
            for reporter in self.pipeline.reporters:
                try:
                    text = reporter.render(result)
                except Exception as error:
                    errors.append(
                        PluginError(f"reporter {reporter.name!r} raised: {type(error).__name__}: {error}", self.pipeline.providers[("reporter", reporter.name)])
                    )
                    continue
                if not isinstance(text, str):
                    errors.append(
                        PluginError(f"reporter {reporter.name!r} returned {type(text).__name__}, expected str", self.pipeline.providers[("reporter", reporter.name)])
                    )
                    continue
                staged[reporter.filename] = stage_file(self.directory / reporter.filename, text)
        except BaseException:
            for temporary in staged.values():
                temporary.unlink(missing_ok=True)
            raise
        return staged, errors


def _where(example: Example, config) -> str:
    """A record as error messages name it: its index and its place in the data file (built only for a message)."""
    return f"record {example.index} ({config.data_path}:{example.line})"


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file version from another: device and inode (a replaced file), size and mtime (an edited one)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


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


@contextmanager
def blamed_on(plugin: str, what: str) -> Iterator[None]:
    """Turn an unexpected exception in a plugin's code into a PluginError naming the plugin and what it was doing.

    nlpflow's own errors and ExampleError (a task's verdict on a record, which
    the caller handles) pass through unchanged.
    """
    try:
        yield
    except (NlpflowError, ExampleError):
        raise
    except Exception as error:
        raise PluginError(f"{what}: {type(error).__name__}: {error}", plugin) from error


_END = object()  # the last item through a hand-off queue


class _Failure:
    """An exception raised in a worker thread, travelling to the main thread in the worker's queue."""

    def __init__(self, error: BaseException):
        self.error = error


class _Handoff:
    """A queue of one item between two stages that gives up when ``stop`` is set, so neither side waits forever
    on a stage that has failed or been interrupted."""

    def __init__(self, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = stop
        #: the consumer's exception, when the consumer is a worker thread
        self.failure: BaseException | None = None

    def put(self, item: Any) -> bool:
        """Hand ``item`` over; False if the run stopped first."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        """The next item; None if the run stopped first."""
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


def _chunks(items: Iterator[Example], size: int) -> Iterator[list[Example]]:
    while True:
        chunk = list(islice(items, size))
        if not chunk:
            return
        yield chunk


#: one encoder for every predictions.jsonl line: ``json.dumps`` with options builds a new encoder per call
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)


#: types written to JSON as they are (bool and int exactly, not subclasses such as numpy's)
_JSON_AS_IS = frozenset({str, int, bool, type(None)})


def _plainly_writable(value: Any, details: dict) -> bool:
    """True for the common prediction (a label or text, details of numbers and strings) that JSON surely writes;
    anything else gets a full trial encoding."""
    for item in (value, *details.values()):
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False  # a lone surrogate would not encode as UTF-8: let the trial encoding find it
        elif kind not in _JSON_AS_IS and kind is not float:
            return False
    return True


def _round(value: float) -> float | None:
    """Scores rounded so a resumed run (batched differently) writes the same bytes."""
    return round(value, 6) if math.isfinite(value) else None


def _each_json_ready(values: Sequence[Any]) -> list[Any]:
    """:func:`_json_ready` of each value, without a call for the plain ones (a chunk's labels, texts and ids)."""
    return [value if type(value) in _JSON_AS_IS else _json_ready(value) for value in values]


def _json_ready(value: Any) -> Any:
    if type(value) in _JSON_AS_IS:  # most values (labels, texts, ids): no walk
        return value
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, (np.floating,)):
        return _round(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
