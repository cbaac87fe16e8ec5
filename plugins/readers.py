"""Built-in readers: JSON Lines, CSV and TSV, streamed record by record.

Bad bytes, malformed lines and ragged rows come back as records with
``error`` set and their line number, so the runner can fail or skip them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict

from pipeline import hookimpl
from pipeline.types import RawRecord, Reader


class JsonLinesReader(Reader):
    name = "jsonl"
    description = "JSON Lines: one JSON object per line; blank lines are ignored"
    extensions = (".jsonl", ".ndjson", ".jsonl.txt")

    def read(self, path: Path) -> Iterator[RawRecord]:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield RawRecord(number, None, f"not valid UTF-8 (byte {error.start + 1} of the line)")
                    continue
                if number == 1:
                    text = text.removeprefix("\ufeff")
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as error:
                    yield RawRecord(number, None, f"malformed JSON: {error.msg} at column {error.colno}")
                    continue
                if not isinstance(data, dict):
                    yield RawRecord(number, None, f"expected a JSON object, found {type(data).__name__}")
                    continue
                yield RawRecord(number, data)


class DelimitedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delimiter: str | None = None
    quotechar: str = '"'


class CsvReader(Reader):
    name = "csv"
    description = "Comma-separated values with a header row"
    extensions = (".csv",)
    Options = DelimitedOptions
    default_delimiter = ","

    def read(self, path: Path) -> Iterator[RawRecord]:
        delimiter = self.options.delimiter or self.default_delimiter
        # surrogateescape keeps going past bad bytes so they can be reported per row
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            rows = csv.reader(handle, delimiter=delimiter, quotechar=self.options.quotechar, strict=True)
            try:
                header = next(rows)
            except StopIteration:
                return
            except csv.Error as error:
                yield RawRecord(1, None, f"malformed header row: {error}")
                return
            if any(_has_bad_bytes(cell) for cell in header):
                yield RawRecord(1, None, "header row is not valid UTF-8")
                return
            width = len(header)
            while True:
                start = rows.line_num + 1
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except csv.Error as error:
                    yield RawRecord(start, None, f"malformed {self.name.upper()} row: {error}")
                    return  # the csv module cannot resynchronise after a quoting error
                if not row or all(not cell.strip() for cell in row) and len(row) <= 1:
                    continue
                if len(row) != width:
                    yield RawRecord(start, None, f"row has {len(row)} columns, the header has {width}")
                    continue
                if any(_has_bad_bytes(cell) for cell in row):
                    yield RawRecord(start, None, "not valid UTF-8")
                    continue
                yield RawRecord(start, dict(zip(header, row)))


class TsvReader(CsvReader):
    name = "tsv"
    description = "Tab-separated values with a header row"
    extensions = (".tsv", ".tab")
    default_delimiter = "\t"


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


@hookimpl
def register_readers(register):
    register(JsonLinesReader)
    register(CsvReader)
    register(TsvReader)
