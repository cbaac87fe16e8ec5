"""Records to examples: the reader's records with the pipeline's field mapping, checked by the task, bad ones failed or skipped."""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Iterable, Iterator, Sequence

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.errors import ConfigError, DataError
from nlpflow.contract.types import Example, ExampleError, RawRecord
from nlpflow.engine.counts import Counts
from nlpflow.engine.fingerprint import DataFingerprint
from nlpflow.engine.guard import blamed_on, checked_instance
from nlpflow.engine.labels import LabelCheck

log = logging.getLogger("nlpflow")

PREDICTION_FIELD = "prediction"


class ExampleReader:
    """Reads a pipeline's data as examples in file order, holding the data file in ``fingerprint`` as it reads."""

    def __init__(self, pipeline: ResolvedPipeline, fingerprint: DataFingerprint):
        self.pipeline = pipeline
        self.config = pipeline.config
        self.task = pipeline.task
        self.fingerprint = fingerprint

    def fail_or_skip(self, counts: Counts, message: str, line: int, index: int | None, source: str | None = None) -> None:
        """``source``: the file the record is in, where the data is several files."""
        if self.config.data.on_error == "fail":
            raise DataError(
                f"{message} (set data.on_error: skip to skip such records)", source or self.config.data_path, line, self.pipeline.name
            )
        counts.skipped.append({"line": line, "index": index, "reason": message, **({"file": source} if source else {})})

    def examples(self, counts: Counts, label_check: LabelCheck | None = None) -> Iterator[Example]:
        """Examples in file order, with fields mapped and checked by the task; bad records fail or are skipped
        (counted in ``counts``); ``label_check`` sees each example."""
        config = self.config
        task = self.task
        mapping = {name: config.fields.get(name, name) for name in (*task.input_fields, *task.reference_fields)}
        prediction_column = config.fields.get(PREDICTION_FIELD, PREDICTION_FIELD)
        needs_prediction = config.model is None and not task.rule_based
        records: Iterable[RawRecord] = self._records()
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
        index = -1
        record: RawRecord | None = None
        guarded_check = blamed_on(
            self.pipeline.task_plugin,
            lambda error: f"task {task.name!r} raised in check_example on record {index} ({data_path}:{record.line})",
        ).call
        for record in records:
            index += 1
            counts.read += 1
            data = record.data
            if data is None:
                self.fail_or_skip(counts, record.error or "unreadable record", record.line, index, record.source)
                continue
            for column in required:
                if column not in data:
                    self.fail_or_skip(counts, self._missing_fields(data, input_columns, needs_prediction, prediction_column), record.line, index, record.source)
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
                    guarded_check(check_example, example)
                except ExampleError as error:
                    self.fail_or_skip(counts, str(error), record.line, index, record.source)
                    continue
                except ConfigError as error:  # a task option whose problem shows on a record (a template naming a missing field)
                    raise ConfigError(f"{error.message} (record {index}, {data_path}:{record.line})",
                                      error.location or config.location("options"), self.pipeline.name) from None
                if label_check is not None:
                    label_check.see(example)
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

    def _records(self) -> Iterator[RawRecord]:
        """The reader's records; a reader that raises (they must not) or yields anything else is its plugin's bug."""
        reader = self.pipeline.reader
        provider = self.pipeline.providers.get(("reader", reader.name), "?")
        data_path = self.config.data_path
        last_line = 0

        def wrong_type(found: str) -> str:
            return f"reader {reader.name!r} yielded {found} after line {last_line} of {data_path}, expected RawRecord"

        self.fingerprint.hold()
        with blamed_on(provider, lambda error: f"reader {reader.name!r} raised after line {last_line} of {data_path}"):
            for record in reader.read(data_path):
                if not isinstance(record, RawRecord):  # checked here first: the guard's call costs more, per record
                    checked_instance(record, RawRecord, provider, wrong_type)
                last_line = record.line
                yield record

    def first(self, count: int) -> tuple[list[Example], Counts]:
        """The first ``count`` examples, read as the run will read them, and what reading them counted (apart from
        the run's counts); the data file is let go afterwards (the run holds it again as it reads it)."""
        counts = Counts()
        examples = self.examples(counts)
        try:
            return list(islice(examples, count)), counts
        finally:
            examples.close()
            self.fingerprint.close()
