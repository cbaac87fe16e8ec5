"""Scoring and writing each chunk: metric stats per example, the predictions.jsonl lines, the analysis and the reporters' collectors."""

from __future__ import annotations

import time
from collections import Counter
from typing import IO, Any, Sequence

import numpy as np

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.types import Example, Prediction, RunCollector
from nlpflow.engine.analysis import ErrorAnalysis
from nlpflow.engine.counts import Counts
from nlpflow.engine.guard import blamed_on, checked_stats
from nlpflow.engine.json_values import JSON_AS_IS, LINE_ENCODER, each_json_ready, json_ready, rounded
from nlpflow.engine.report import metric_entry
from nlpflow.engine.stats import RowCollector

#: columns taken as a record's id when data.id_field is not set, in this order
ID_FIELD_GUESSES = ("id", "_id")


class Scoring:
    """Scores each predicted chunk and writes its lines, keeping what the final metrics and the analysis need."""

    def __init__(self, pipeline: ResolvedPipeline, counts: Counts, seconds: Counter[str]):
        self.pipeline = pipeline
        self.config = pipeline.config
        self.task = pipeline.task
        self.counts = counts
        self.seconds = seconds
        self.metric_rows = [RowCollector(distinct=metric.accepts_counts) for metric in pipeline.metrics]
        inputs = pipeline.task.input_fields
        self.analysis = ErrorAnalysis(
            [metric.name for metric in pipeline.metrics],
            self.config.fields.get(inputs[0], inputs[0]) if inputs else None,
            pipeline.slice_by,
            self.config.report.rank_by,
            ties_by_confidence=pipeline.task.rank_ties_by_confidence,
        )
        #: reporters' collectors by reporter name, fed every written chunk (see ``reporting.start_collectors``)
        self.collectors: dict[str, RunCollector] = {}

    def _metric_plugin(self, name: str) -> str:
        return self.pipeline.providers[("metric", name)]

    def score_and_write(self, chunk: list[Example], predictions: Sequence[Prediction], out: IO[str]) -> None:
        timer = time.perf_counter()
        pipeline, task, config = self.pipeline, self.task, self.config
        references = []
        reference = task.reference
        example = chunk[0]
        with blamed_on(
            pipeline.task_plugin,
            lambda error: f"task {task.name!r} raised in reference() on record {example.index} ({config.data_path}:{example.line})",
        ):
            for example in chunk:
                references.append(reference(example))
        scored = [position for position, reference in enumerate(references) if reference is not None]
        per_example: list[dict[str, float]] = [{} for _ in chunk]
        if scored:
            scored_predictions = [predictions[p].value for p in scored]
            scored_references = [references[p] for p in scored]
            records = f"records {chunk[scored[0]].index}-{chunk[scored[-1]].index} of pipeline {pipeline.name!r}"
            for slot, metric in enumerate(pipeline.metrics):
                provider = self._metric_plugin(metric.name)
                with blamed_on(provider, f"metric {metric.name!r} raised on {records}"):
                    stats = np.asarray(metric.example_stats(scored_predictions, scored_references), dtype=float)
                self.metric_rows[slot].add(checked_stats(stats, len(scored), provider, metric.name))
                with blamed_on(provider, f"metric {metric.name!r} raised in example_scores on {records}"):
                    scores = metric.example_scores(stats)
                    if scores is not None:
                        scores = [float(score) for score in scores]
                if scores is not None:
                    for p, score in zip(scored, scores):
                        per_example[p][metric.name] = rounded(score)
        self.counts.scored += len(scored)
        self.counts.predicted += len(chunk)
        self.counts.truncated += sum(1 for example in chunk if example.notes.get("truncated"))
        prediction_values = each_json_ready([prediction.value for prediction in predictions])
        written_references = each_json_ready(references)
        lines = []
        encode = LINE_ENCODER.encode
        fields = config.fields
        input_columns = [(name, fields.get(name, name)) for name in task.input_fields]
        record_identity = self._record_identity
        add_to_analysis = self.analysis.add
        for example, prediction, value, reference, scores in zip(chunk, predictions, prediction_values, written_references, per_example):
            identity = record_identity(example, input_columns)
            if reference is not None:  # a row of the metric stats, in the same order
                add_to_analysis(
                    example, scores, value, reference, identity,
                    lambda columns=example.columns: {name: json_ready(columns.get(column)) for name, column in input_columns},
                    prediction.details,
                )
            line = {"index": example.index, "line": example.line, **identity, "prediction": value, "reference": reference, "scores": scores}
            if prediction.details:
                line["details"] = prediction.details
            if example.notes:
                line["notes"] = json_ready(example.notes)
            lines.append(encode(line))
        lines.append("")
        out.write("\n".join(lines))
        records = f"records {chunk[0].index}-{chunk[-1].index} of pipeline {pipeline.name!r}"
        for name, collector in self.collectors.items():
            with blamed_on(pipeline.providers[("reporter", name)], f"reporter {name!r} raised collecting {records}"):
                collector.add(chunk, prediction_values, written_references, per_example)
        self.seconds["score and write"] += time.perf_counter() - timer

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
            identity["id"] = value if type(value) in JSON_AS_IS else json_ready(value)
        if config.report.include_inputs:
            identity["inputs"] = {name: json_ready(columns.get(column)) for name, column in input_columns}
        return identity

    def final_metrics(self) -> dict[str, Any]:
        timer = time.perf_counter()
        bootstrap = self.config.report.bootstrap
        results = {}
        for slot, metric in enumerate(self.pipeline.metrics):
            rows = self.metric_rows[slot].result()
            provider = self._metric_plugin(metric.name)
            with blamed_on(provider, f"metric {metric.name!r} raised while scoring"):
                results[metric.name] = metric_entry(metric, rows, bootstrap.resamples, bootstrap.seed, bootstrap.confidence, provider)
        self.seconds["final metrics"] += time.perf_counter() - timer
        return results

    def analysis_summary(self) -> dict[str, Any]:
        bootstrap = self.config.report.bootstrap
        rows = [collector.result() for collector in self.metric_rows]
        return self.analysis.summary(
            self.pipeline.metrics, rows, bootstrap.resamples, bootstrap.seed, bootstrap.confidence,
            blame=lambda metric: blamed_on(
                self._metric_plugin(metric.name), f"metric {metric.name!r} raised while scoring a slice of the data"
            ),
        )
