"""Built-in readers: JSON Lines, CSV and TSV, streamed record by record.

Bad bytes, malformed lines and ragged rows come back as records with
``error`` set and their line number, so the runner can fail or skip them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nlpflow import hookimpl
from nlpflow.types import RawRecord, Reader, json_type


#: the first bytes of every gzip file (RFC 1952)
GZIP_MAGIC = b"\x1f\x8b"


class JsonLinesReader(Reader):
    name = "jsonl"
    description = "JSON Lines: one JSON object per line; blank lines are ignored"
    extensions = (".jsonl", ".ndjson", ".jsonl.txt")

    def read(self, path: Path) -> Iterator[RawRecord]:
        try:
            handle = open(path, "rb")
        except OSError as error:
            yield RawRecord(1, None, f"cannot open the file: {error.strerror or error}")
            return
        with handle:
            number = 0
            while True:
                try:
                    raw = handle.readline()
                except OSError as error:
                    yield RawRecord(number + 1, None, f"cannot read the file: {error.strerror or error}")
                    return
                if not raw:
                    return
                number += 1
                record = self._parse(number, raw)
                if record is not None:
                    yield record

    @staticmethod
    def _parse(number: int, raw: bytes) -> RawRecord | None:
        if number == 1 and raw.startswith(GZIP_MAGIC):
            return RawRecord(number, None, "this is a gzip-compressed file, not JSON Lines text; decompress it first (gunzip)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return RawRecord(number, None, f"not valid UTF-8 (byte {error.start + 1} of the line)")
        # without its line break, an error at the end of the line is at the line's last column, not column 1 of the next
        text = text.rstrip("\r\n")
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            return None
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except DuplicateKey as error:
            return RawRecord(number, None, f"the JSON object has the key {error.args[0]!r} twice; which value is meant is unclear")
        except json.JSONDecodeError as error:
            # some messages end in "at" themselves ("Unterminated string starting at")
            at = "" if error.msg.endswith(" at") else " at"
            return RawRecord(number, None, f"malformed JSON: {error.msg}{at} column {error.colno}")
        except RecursionError:
            return RawRecord(number, None, "malformed JSON: nested too deeply")
        except ValueError as error:  # e.g. an integer with too many digits
            return RawRecord(number, None, f"malformed JSON: {error}")
        if not isinstance(data, dict):
            return RawRecord(number, None, f"expected a JSON object, found {json_type(data)}")
        # a lone surrogate can only come from a \\uD800-\\uDFFF escape (UTF-8 cannot encode one), so a line without
        # "\\ud" (either case) needs no walk over its values
        bad = _unpaired_surrogate(data) if "\\ud" in text or "\\uD" in text else None
        if bad is not None:
            return RawRecord(number, None, f"{bad} contains an unpaired surrogate escape (\\ud800-\\udfff), which is not valid Unicode")
        return RawRecord(number, data)


class DuplicateKey(ValueError):
    """A JSON object with a key twice: json.loads would silently keep the last value."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        raise DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return data


class DelimitedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delimiter: str | None = Field(None, description="field separator; default: comma for csv, tab for tsv")
    quotechar: str = Field('"', description="character that quotes fields containing the delimiter")

    @field_validator("delimiter", "quotechar")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 1 or value in "\r\n"):
            raise ValueError("must be a single character other than a line break")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "DelimitedOptions":
        if self.delimiter is not None and self.delimiter == self.quotechar:
            raise ValueError("delimiter and quotechar must differ")
        return self


#: longest field a delimited file may hold, in characters (the csv module's default is 131072;
#: long texts are read whole and truncated by the task's tokenizer instead)
MAX_FIELD_CHARS = 2**31 - 1


class CsvReader(Reader):
    name = "csv"
    description = "Comma-separated values with a header row"
    extensions = (".csv",)
    Options = DelimitedOptions
    default_delimiter = ","

    def read(self, path: Path) -> Iterator[RawRecord]:
        delimiter = self.options.delimiter or self.default_delimiter
        if csv.field_size_limit() < MAX_FIELD_CHARS:
            csv.field_size_limit(MAX_FIELD_CHARS)
        # surrogateescape keeps going past bad bytes so they can be reported per row
        try:
            handle = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
        except OSError as error:
            yield RawRecord(1, None, f"cannot open the file: {error.strerror or error}")
            return
        with handle:
            rows = csv.reader(handle, delimiter=delimiter, quotechar=self.options.quotechar, strict=True)
            header = None
            while header is None:
                start = rows.line_num + 1
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except (csv.Error, OSError) as error:
                    yield RawRecord(start, None, f"malformed header row: {error}")
                    return
                if row and any(cell.strip() for cell in row):
                    header = row
            header_line = start
            if any(_has_bad_bytes(cell) for cell in header):
                yield RawRecord(header_line, None, "header row is not valid UTF-8")
                return
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                yield RawRecord(header_line, None, f"header row names column(s) {', '.join(map(repr, duplicates))} more than once")
                return
            width = len(header)
            while True:
                start = rows.line_num + 1
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except csv.Error as error:
                    # the reader starts afresh on the next line, so the records after this one are still read
                    yield RawRecord(start, None, f"malformed {self.name.upper()} row: {error}")
                    continue
                except OSError as error:
                    yield RawRecord(start, None, f"cannot read the file: {error.strerror or error}")
                    return
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


def _unpaired_surrogate(value: object, where: str = "") -> str | None:
    """Where a lone UTF-16 surrogate is (JSON allows the escape; UTF-8 cannot encode it), or None."""
    if isinstance(value, str):
        return (where or "a value") if any("\ud800" <= char <= "\udfff" for char in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"field {key!r}" if not where else f"{where}.{key}"
            found = _unpaired_surrogate(key, "a field name") or _unpaired_surrogate(item, name)
            if found:
                return found
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{where or 'a value'}[{position}]")
            if found:
                return found
    return None


@hookimpl
def register_readers(register):
    register(JsonLinesReader)
    register(CsvReader)
    register(TsvReader)
