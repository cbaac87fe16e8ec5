"""The ``mlflow`` reporter: each finished pipeline run logged as one MLflow run, with its parameters, metrics and files.

A :class:`~nlpflow.Publisher`: the runner hands it the run once predictions.jsonl
and every report are in place, so the artifacts logged are the run's final files.
What is logged, all read from report.json's content:

- parameters: pipeline, task, model (name or path, backend, device, dtype), data (path, format, sha256), and the
  task's options flattened to ``options.<key>``; a value longer than MLflow allows is cut, with a note (report.json,
  an artifact, holds it whole);
- metrics: each metric's value and, where it has an interval, ``<metric>_ci_low`` and ``<metric>_ci_high``; each
  slice of report.json's ``analysis.slices`` as ``slice.<column>.<value>.<metric>`` (and its bounds);
- artifacts: the files of :attr:`MlflowOptions.artifacts` that the run wrote.

MLflow is talked to through an explicit ``MlflowClient``, never its process-wide active run, so a run of nlpflow
inside a user's own MLflow run leaves theirs alone. MLflow is an optional extra: ``pip install 'nlpflow[mlflow]'``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nlpflow import ConfigError, OutputError, Publisher, RunResult, hookimpl

logger = logging.getLogger("nlpflow.plugins.mlflow_report")

INSTALL_HINT = "this reporter needs MLflow, an optional extra: pip install 'nlpflow[mlflow]'"
#: MLflow's limits (mlflow.utils.validation), here so that names are made to fit before MLflow is imported
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
#: characters MLflow accepts in a metric or parameter name on every platform (a colon is refused on Windows)
_NAME_UNSAFE = re.compile(r"[^\w.\- /]")
CUT_NOTE = " … (cut; report.json holds the whole value)"


class MlflowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(None, description=(
        "where runs are logged (sqlite:///mlruns.db, http://host:5000, databricks, ...); default: MLflow's own "
        "MLFLOW_TRACKING_URI environment variable, else MLflow's default local store"))
    experiment: str = Field("nlpflow", description="the MLflow experiment the run goes in; created when it does not exist")
    run_name: str | None = Field(None, description="the MLflow run's name; default: the pipeline's name and the run's start time")
    tags: dict[str, str] = Field(default_factory=dict, description="tags set on the MLflow run, next to nlpflow.pipeline and nlpflow.run_folder")
    artifacts: list[str] = Field(
        default_factory=lambda: ["predictions.jsonl", "report.json", "report.md", "report.html", "skipped.jsonl"],
        description="files of the run folder logged as artifacts, those the run wrote (an empty list logs none)")

    @field_validator("artifacts")
    @classmethod
    def _plain_names(cls, names: list[str]) -> list[str]:
        outside = [name for name in names if not name or Path(name).name != name or name in (".", "..")]
        if outside:
            raise ValueError(f"artifacts are names of files in the run folder, not paths: {', '.join(map(repr, outside))}")
        return names


class MlflowReporter(Publisher):
    name = "mlflow"
    description = ("logs each run to MLflow: parameters, metrics with interval bounds and slices, the run's files as artifacts "
                   "(needs pip install 'nlpflow[mlflow]')")
    Options = MlflowOptions

    def __init__(self, options: MlflowOptions | None = None):
        # checked when the pipeline is resolved, so `validate` and a run say so before any record is read
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(INSTALL_HINT)
        super().__init__(options)

    def publish(self, run: RunResult) -> None:
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags

        options = self.options
        report = run.report
        uri = options.tracking_uri or mlflow.get_tracking_uri()
        where = (f"pipeline {report['pipeline']!r}: reporter 'mlflow': cannot log the run to MLflow at {uri} "
                 f"(experiment {options.experiment!r})")
        run_id = None
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(options.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(options.experiment)
            # MLflow's own context tags (user, source, git commit), as its fluent start_run sets them
            tags = resolve_tags({"nlpflow.pipeline": report["pipeline"], "nlpflow.run_folder": str(run.directory), **options.tags})
            run_id = client.create_run(
                experiment_id, start_time=_milliseconds(report, "started"), tags=tags,
                run_name=options.run_name or f"{report['pipeline']} {report['timing']['started']}",
            ).info.run_id
            timestamp = _milliseconds(report, "finished")
            client.log_batch(
                run_id,
                metrics=[Metric(key, value, timestamp, 0) for key, value in run_metrics(report).items()],
                params=[Param(key, value) for key, value in run_params(report).items()],
            )
            for name in options.artifacts:
                path = run.directory / name
                if path.is_file():
                    client.log_artifact(run_id, str(path))
            client.set_terminated(run_id, "FINISHED")
        except Exception as error:
            if run_id is not None:
                _mark_failed(client, run_id)
            raise OutputError(f"{where}: {type(error).__name__}: {_first_line(error)}. The run's files are in place in "
                              f"{run.directory}") from error
        logger.info("pipeline %r: logged to MLflow at %s, experiment %r, run %s", report["pipeline"], uri, options.experiment, run_id)


def run_params(report: dict[str, Any]) -> dict[str, str]:
    """The MLflow parameters of a run, by (valid, unique) name, from report.json's content."""
    model = report.get("model") or {}
    data = report["data"]
    values: dict[str, Any] = {
        "pipeline": report["pipeline"],
        "task": report["task"],
        "model": model.get("name_or_path") or (f"rule: {report['rule']}" if report.get("rule") else "none (scored the records' predictions)"),
        "backend": model.get("backend"),
        "device": model.get("device"),
        "dtype": model.get("dtype"),
        "data.path": data["path"],
        "data.format": data["format"],
        "data.sha256": data["sha256"],
        "preprocess": ",".join(report.get("preprocess") or []),
        "nlpflow_version": report.get("versions", {}).get("nlpflow"),
        **{f"options.{key}": value for key, value in _flattened(report.get("task_options") or {})},
    }
    names = _Names()
    return {names.unique(key): _param_value(value) for key, value in values.items() if value not in (None, "")}


def run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a run, by (valid, unique) name: each metric's value and interval bounds, overall and on
    each slice of report.json's ``analysis.slices``. A metric with no value (nothing to score) is left out."""
    names = _Names()
    metrics: dict[str, float] = {}
    for prefix, entries in _metric_groups(report):
        for metric, entry in entries.items():
            for suffix, value in _values(entry):
                metrics[names.unique(f"{prefix}{metric}{suffix}")] = float(value)
    return metrics


def _metric_groups(report: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "", report["metrics"]
    for table in (report.get("analysis") or {}).get("slices", []):
        for row in table["slices"]:
            yield f"slice.{table['column']}.{row['value']}.", row["metrics"]


def _values(entry: dict[str, Any]) -> Iterator[tuple[str, float]]:
    if entry.get("value") is None:
        return
    yield "", entry["value"]
    interval = entry.get("ci")
    if interval:
        yield "_ci_low", interval["low"]
        yield "_ci_high", interval["high"]


def _flattened(options: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested option mappings as dotted keys; lists and other values as they are (written as JSON)."""
    for key, value in options.items():
        if isinstance(value, dict) and value:
            yield from _flattened(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) <= MAX_PARAM_LENGTH:
        return text
    return text[:MAX_PARAM_LENGTH - len(CUT_NOTE)] + CUT_NOTE


class _Names:
    """MLflow names made from the run's own text (metric names, slice values): characters MLflow refuses become
    ``_``, a name too long or one that two different texts turn into is told apart by a short hash of its text."""

    def __init__(self):
        self.given: dict[str, str] = {}

    def unique(self, text: str) -> str:
        name = _NAME_UNSAFE.sub("_", text)
        # MLflow also refuses names that change as paths: "a//b", "a/./b", "/a", "a/"
        name = "/".join(part if part not in ("", ".", "..") else part.replace(".", "_") or "_" for part in name.split("/"))
        if len(name) > MAX_KEY_LENGTH or self.given.get(name, text) != text:
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
            name = f"{name[:MAX_KEY_LENGTH - 9]}_{digest}"
        self.given[name] = text
        return name


def _milliseconds(report: dict[str, Any], moment: str) -> int:
    """report.json's ``timing.started`` or ``timing.finished`` as MLflow's timestamps, milliseconds since the epoch."""
    return int(datetime.fromisoformat(report["timing"][moment]).timestamp() * 1000)


def _mark_failed(client: Any, run_id: str) -> None:
    try:
        client.set_terminated(run_id, "FAILED")
    except Exception:  # the store that just failed may fail again; the error raised is the first one
        logger.debug("could not mark MLflow run %s as failed", run_id, exc_info=True)


def _first_line(error: Exception) -> str:
    """An exception's message without the SQL statement or traceback text some stores append on later lines."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else repr(error)


@hookimpl
def register_reporters(register):
    register(MlflowReporter)
