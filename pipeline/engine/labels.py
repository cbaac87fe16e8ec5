"""Checks that the labels a model can predict are the labels the data's references use.

A reference label the model can never predict scores 0 on every example that has it, and when no
reference label is predictable the whole run scores 0 while looking successful. The runner compares
the two sets on the first chunk, before the model is loaded, and fails when they are disjoint; labels
that first appear later are warned about once each and listed in report.json's ``label_warnings``.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from typing import Any

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import ConfigError, ModelError
from nlpflow.contract.types import Example

log = logging.getLogger("nlpflow")


class LabelCheck:
    """The model's predictable labels, and the reference labels seen so far that are not among them."""

    def __init__(self, pipeline: ResolvedPipeline, predictable: list[str]):
        self.pipeline = pipeline
        self.predictable = predictable
        self._predictable = set(predictable)
        self.seen: set[str] = set()
        #: reference label the model cannot predict -> number of examples that have it
        self.unpredictable: Counter[str] = Counter()
        self._first_line: dict[str, int] = {}
        #: after the first chunk, each new unpredictable label is warned about as it appears
        self._checked = False

    @classmethod
    def for_pipeline(cls, pipeline: ResolvedPipeline) -> LabelCheck | None:
        """The check for a pipeline whose task predicts from a fixed label set; None for open-ended tasks or no model."""
        config = pipeline.config
        if config.model is None or pipeline.backend is None:
            return None
        try:
            labels = pipeline.task.output_labels(config.model, pipeline.backend)
        except ModelError as error:
            raise ModelError(f"{config.location('model')}: pipeline {pipeline.name!r}: {error}") from None
        return None if labels is None else cls(pipeline, [str(label) for label in labels])

    def see(self, example: Example) -> None:
        """Note the example's reference labels; warns the first time a label the model cannot predict appears."""
        value = self.pipeline.task.reference(example)
        for label in value if isinstance(value, list) else [value]:
            if label is None:
                continue
            label = str(label)
            self.seen.add(label)
            if label in self._predictable:
                continue
            self.unpredictable[label] += 1
            if label not in self._first_line:
                self._first_line[label] = example.line
                if self._checked:
                    self._warn([label])

    def check_first_chunk(self, examples: list[Example]) -> None:
        """Fail when none of the first chunk's reference labels can be predicted; warn when some cannot."""
        for example in examples:
            self.see(example)
        self._checked = True
        if not self.seen:
            return
        if not self.seen & self._predictable:
            raise ConfigError(self._disjoint_message(len(examples)), self._options_location(), self.pipeline.name)
        if self.unpredictable:
            self._warn(sorted(self.unpredictable))
        self.unpredictable.clear()  # the run reads the first chunk again and counts it then

    def report(self) -> dict[str, Any] | None:
        """report.json's ``label_warnings``: None when every reference label can be predicted."""
        if not self.unpredictable:
            return None
        return {
            "model_labels": self.predictable,
            "unpredictable_reference_labels": {
                label: {"examples": count, "first_line": self._first_line[label]} for label, count in sorted(self.unpredictable.items())
            },
        }

    def _options_location(self):
        config = self.pipeline.config
        return config.location("options") if config.options else config.location("task")

    def _warn(self, labels: list[str]) -> None:
        config = self.pipeline.config
        log.warning(
            "warning: pipeline %r: %s: reference labels %s (first at line %s) are not among the labels the model can "
            "predict %s, so those examples always score as wrong; map them with options.label_map (dataset label -> model label)",
            self.pipeline.name, config.data_path, labels, ", ".join(str(self._first_line[label]) for label in labels), self.predictable,
        )

    def _disjoint_message(self, records: int) -> str:
        config = self.pipeline.config
        data_labels = sorted(self.seen)
        pairs = {label: (difflib.get_close_matches(label, self.predictable, n=1, cutoff=0) or self.predictable)[0] for label in data_labels}
        example_map = ", ".join(f"{label}: {model_label}" for label, model_label in pairs.items())
        message = (
            f"none of the reference labels in the first {records} records of {config.data_path} can be predicted, so every "
            f"example would score 0. Data labels: {data_labels}; labels the model predicts: {self.predictable}. "
            f"Map them with options.label_map (dataset label -> model label), for instance `label_map: {{{example_map}}}`"
        )
        if hasattr(self.pipeline.task.options, "labels"):
            first = data_labels[0]
            message += (
                f"; with a zero-shot model, you can instead describe the data's own labels in options.labels, for "
                f"instance `labels: {{{first}: [\"a description of {first}\"], ...}}`"
            )
        return message
