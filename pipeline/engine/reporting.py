"""The run's reports: report.json's dict, the reporters' collectors, every report file staged, then put in place, then published."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from nlpflow import __version__
from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import NlpflowError, PluginError
from nlpflow.contract.files import stage_file
from nlpflow.contract.types import Publisher, Reporter, RunCollector, RunResult
from nlpflow.engine.counts import Counts
from nlpflow.engine.guard import blamed_on, checked_text
from nlpflow.engine.report import package_versions
from nlpflow.engine.run_folder import switch

#: every skipped record (line, index, reason), one JSON object a line, in the run folder
SKIPPED_FILE = "skipped.jsonl"
#: skipped records listed in report.json itself
SKIPPED_IN_REPORT = 20


def start_collectors(pipeline: ResolvedPipeline) -> dict[str, RunCollector]:
    """Each reporter's collector (by reporter name), fed every written chunk so reporters need not re-read files."""
    collectors = {}
    for reporter in pipeline.reporters:
        with blamed_on(pipeline.providers[("reporter", reporter.name)], f"reporter {reporter.name!r} raised in collector()"):
            collector = reporter.collector(pipeline.task, pipeline.metrics)
        if collector is not None:
            collectors[reporter.name] = collector
    return collectors


def report_json(
    pipeline: ResolvedPipeline, counts: Counts, seconds: Counter[str], *, metrics: dict[str, Any], analysis: dict[str, Any],
    data_sha256: str, model: dict[str, Any] | None, executor: dict[str, Any], label_warnings: Any,
    started_at: datetime, finished_at: datetime, wall: float,
) -> dict[str, Any]:
    """report.json's content, in its order."""
    config = pipeline.config
    task = pipeline.task
    reasons = Counter(item["reason"].split(";")[0] for item in counts.skipped)
    return {
        "nlpflow_report": 1,
        "pipeline": pipeline.name,
        "description": config.description,
        "task": task.name,
        "task_plugin": pipeline.task_plugin,
        "task_options": task.options.model_dump(mode="json"),
        "config_file": str(config.source),
        "metrics": metrics,
        "analysis": analysis,
        "data": {
            "path": str(config.data_path),
            "format": pipeline.reader.name,
            "sha256": data_sha256,
            "fields": {**{name: config.fields.get(name, name) for name in (*task.input_fields, *task.reference_fields)}},
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
        "preprocess": [step.name for step in pipeline.preprocessors],
        "model": model,
        # a rule-based run has no model either; this tells it apart from scoring the records' own predictions
        "rule": task.rule_name if model is None and task.rule_based else None,
        "label_warnings": label_warnings,
        "executor": executor,
        "timing": {
            "started": started_at.isoformat(timespec="seconds"),
            "finished": finished_at.isoformat(timespec="seconds"),
            "wall_seconds": round(wall, 3),
            "stages_seconds": {name: round(value, 3) for name, value in seconds.items()},
            "records_per_second": round(counts.predicted / wall, 2) if wall > 0 else None,
        },
        "versions": package_versions() | {"nlpflow": __version__},
    }


def stage_reports(pipeline: ResolvedPipeline, directory: Path, result: RunResult, counts: Counts) -> tuple[dict[str, Path], list[PluginError]]:
    """Each reporter's file (and skipped.jsonl) written to a temporary file, by final name, and the reporters that
    failed: one broken reporter must not stop the others."""
    failures = []
    staged: dict[str, Path] = {}
    try:
        for reporter in _file_reporters(pipeline):
            provider = pipeline.providers[("reporter", reporter.name)]
            try:
                with blamed_on(provider, f"reporter {reporter.name!r} raised"):
                    text = reporter.render(result)
                checked_text(text, provider, reporter.name)
            except PluginError as error:
                failures.append(error)
                continue
            except NlpflowError as error:  # nlpflow's own error from a reporter's code is still that reporter's failure
                failures.append(PluginError(f"reporter {reporter.name!r} raised: {type(error).__name__}: {error}", provider))
                continue
            staged[reporter.filename] = stage_file(directory / reporter.filename, text)
        if counts.skipped:
            staged[SKIPPED_FILE] = stage_file(
                directory / SKIPPED_FILE, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in counts.skipped),
            )
    except BaseException:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        raise
    return staged, failures


def put_in_place(directory: Path, predictions: Path, staged: dict[str, Path]) -> None:
    """The finished predictions file and the staged reports made the run folder's set in one step (see
    :func:`nlpflow.engine.run_folder.switch`): a report next to predictions.jsonl always describes it."""
    try:
        switch(directory, {"predictions.jsonl": predictions, **staged})
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


def publish(pipeline: ResolvedPipeline, result: RunResult) -> list[NlpflowError]:
    """Each :class:`Publisher` of the pipeline handed the finished run, whose files are all in place, and the
    publishers that failed: one failing (a tracking server down) must not stop the others, nor touch the files."""
    failures: list[NlpflowError] = []
    for reporter in pipeline.reporters:
        if not isinstance(reporter, Publisher):
            continue
        try:
            with blamed_on(pipeline.providers[("reporter", reporter.name)], f"reporter {reporter.name!r} raised in publish()"):
                reporter.publish(result)
        except NlpflowError as error:
            failures.append(error)
    return failures


def _file_reporters(pipeline: ResolvedPipeline) -> list[Reporter]:
    """The reporters that write a file into the run folder (a Publisher writes none)."""
    return [reporter for reporter in pipeline.reporters if not isinstance(reporter, Publisher)]
