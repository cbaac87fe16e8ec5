"""Built-in readers: JSON Lines, CSV and TSV (plain or compressed), Parquet and saved Hugging Face datasets,
streamed record by record.

Bad bytes, malformed lines and ragged rows come back as records with
``error`` set and their line number, so the runner can fail or skip them.
Compressed files (``data.jsonl.gz``, ``.zst``, ``.bz2``) are decompressed as
they are read; line numbers are those of the uncompressed text.
"""

from __future__ import annotations

import bz2
import csv
import datetime
import decimal
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from nlpflow import RawRecord, Reader, count_lines, hookimpl, json_type


#: the first bytes of every gzip file (RFC 1952)
GZIP_MAGIC = b"\x1f\x8b"

#: file name suffix -> (the first bytes of such a file, the compression's name)
COMPRESSIONS = {".gz": (GZIP_MAGIC, "gzip"), ".zst": (b"\x28\xb5\x2f\xfd", "zstandard"), ".bz2": (b"BZh", "bzip2")}


def compressed_too(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """The extensions, and each with every compression suffix after it (``.jsonl.gz``)."""
    return extensions + tuple(extension + suffix for extension in extensions for suffix in COMPRESSIONS)


def open_decompressed(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as they are read when its name ends in a compression suffix."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".zst":
        import zstandard  # imported here: only .zst files need it

        # its stream has no readline; a buffered reader over it has
        return io.BufferedReader(zstandard.open(path, "rb"))
    return open(path, "rb")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or truncated compressed file raises (gzip: OSError, EOFError or zlib.error; bz2: OSError, EOFError)."""
    try:
        import zstandard
    except ImportError:
        return (OSError, EOFError, zlib.error)
    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


def _misnamed_compression(path: Path, kind: str) -> str | None:
    """Why a file named as plain text cannot be read, when its first bytes say it is compressed."""
    if path.suffix.lower() in COMPRESSIONS:
        return None
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        return None  # the reader itself reports why the file cannot be opened
    for suffix, (magic, compression) in COMPRESSIONS.items():
        if start.startswith(magic):
            return (
                f"this is a {compression}-compressed file, not {kind} text; name it {path.name}{suffix} "
                f"so it is decompressed as it is read"
            )
    return None


#: plain-text files up to this size are counted ahead for the progress bar (a larger one costs a noticeable extra read)
COUNT_LINES_UP_TO_BYTES = 1 << 30


def _count_plain_lines(path: Path) -> int | None:
    """Lines of an uncompressed text file, for a progress bar total; None for a compressed or very large one."""
    if path.suffix.lower() in COMPRESSIONS:
        return None
    try:
        if path.stat().st_size >= COUNT_LINES_UP_TO_BYTES:
            return None
        return count_lines(path)
    except OSError:
        return None


def _open_error(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


#: records longer than this (in bytes of the file's text) are bad records, read in bounded blocks and never held whole
DEFAULT_MAX_RECORD_BYTES = 10 * 1024 * 1024


class JsonLinesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_record_bytes: PositiveInt = Field(
        DEFAULT_MAX_RECORD_BYTES,
        description="longest record (line) in bytes; a longer one is a bad record (failed or skipped with its line), "
        "and is never read whole into memory. data.max_record_bytes sets it too",
    )


class JsonLinesReader(Reader):
    name = "jsonl"
    description = "JSON Lines: one JSON object per line; blank lines are ignored"
    extensions = compressed_too((".jsonl", ".ndjson", ".jsonl.txt"))
    Options = JsonLinesOptions

    def count_hint(self, path: Path) -> int | None:
        return _count_plain_lines(path)

    def read(self, path: Path) -> Iterator[RawRecord]:
        misnamed = _misnamed_compression(path, "JSON Lines")
        if misnamed:
            yield RawRecord(1, None, misnamed)
            return
        try:
            handle = open_decompressed(path)
        except OSError as error:
            yield RawRecord(1, None, f"cannot open the file: {_open_error(error)}")
            return
        errors = _decompression_errors()
        limit = self.options.max_record_bytes
        with handle:
            number = 0
            while True:
                try:
                    raw = handle.readline(limit + 1)
                    length = len(raw)
                    too_long = length > limit
                    while too_long and not raw.endswith(b"\n"):
                        # the rest of an oversized line, in blocks, so memory stays bounded whatever its size
                        raw = handle.readline(1 << 20)
                        if not raw:
                            break
                        length += len(raw)
                except errors as error:
                    yield RawRecord(number + 1, None, f"cannot read the file: {_open_error(error)}")
                    return
                if not raw and not too_long:
                    return
                number += 1
                if too_long:
                    yield RawRecord(
                        number, None,
                        f"the record is {length:,} bytes, over data.max_record_bytes ({limit:,}); raise data.max_record_bytes "
                        "if records this large are meant to be read",
                    )
                    continue
                record = self._parse(number, raw)
                if record is not None:
                    yield record

    @staticmethod
    def _parse(number: int, raw: bytes) -> RawRecord | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return RawRecord(number, None, f"not valid UTF-8 (byte {error.start + 1} of the line)")
        # without its line break, an error at the end of the line is at the line's last column, not column 1 of the next
        text = text.rstrip("\r\n")
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text or text.isspace():
            return None
        try:
            data = _decoded(text)
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


#: one decoder for every line: json.loads with a hook builds a new JSONDecoder per call
_OBJECT_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_SCAN_OBJECT = _OBJECT_DECODER.scan_once


def _decoded(text: str) -> Any:
    """``_OBJECT_DECODER.decode(text)``, scanning a line that is one object with no surrounding spaces directly
    (decode's two whitespace matches cost as much as a short record's fields); anything else, errors included,
    goes through decode itself, so the values and messages are decode's."""
    if text[0] == "{" and text[-1] == "}":
        try:
            data, end = _SCAN_OBJECT(text, 0)
        except (StopIteration, json.JSONDecodeError):
            pass
        else:
            if end == len(text):
                return data
    return _OBJECT_DECODER.decode(text)


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


#: why a NUL byte in delimited text is refused rather than kept: text never holds one (JSON Lines refuses it as an
#: invalid control character), so it marks a UTF-16 file or a damaged one, and a tokenizer would read it as text
NUL_HINT = "text never holds one, so the file is damaged or not UTF-8 (UTF-16 has a NUL in every other byte)"


class CsvReader(Reader):
    name = "csv"
    description = "Comma-separated values with a header row"
    extensions = compressed_too((".csv",))
    Options = DelimitedOptions
    default_delimiter = ","

    def count_hint(self, path: Path) -> int | None:
        lines = _count_plain_lines(path)
        return None if lines is None else max(lines - 1, 0)  # the header row

    def read(self, path: Path) -> Iterator[RawRecord]:
        delimiter = self.options.delimiter or self.default_delimiter
        if csv.field_size_limit() < MAX_FIELD_CHARS:
            csv.field_size_limit(MAX_FIELD_CHARS)
        misnamed = _misnamed_compression(path, self.name.upper())
        if misnamed:
            yield RawRecord(1, None, misnamed)
            return
        # surrogateescape keeps going past bad bytes so they can be reported per row
        try:
            handle = io.TextIOWrapper(open_decompressed(path), encoding="utf-8-sig", errors="surrogateescape", newline="")
        except OSError as error:
            yield RawRecord(1, None, f"cannot open the file: {_open_error(error)}")
            return
        errors = _decompression_errors()
        with handle:
            rows = csv.reader(handle, delimiter=delimiter, quotechar=self.options.quotechar, strict=True)
            header = None
            while header is None:
                start = rows.line_num + 1
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except (csv.Error, *errors) as error:
                    yield RawRecord(start, None, f"malformed header row: {error}")
                    return
                if row and any(cell.strip() for cell in row):
                    header = row
            header_line = start
            if any(_has_bad_bytes(cell) for cell in header):
                yield RawRecord(header_line, None, "header row is not valid UTF-8")
                return
            if any("\x00" in cell for cell in header):
                yield RawRecord(header_line, None, f"header row holds a NUL byte (\\x00); {NUL_HINT}")
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
                except errors as error:
                    yield RawRecord(start, None, f"cannot read the file: {_open_error(error)}")
                    return
                if not row or all(not cell.strip() for cell in row) and len(row) <= 1:
                    continue
                if len(row) != width:
                    yield RawRecord(start, None, f"row has {len(row)} columns, the header has {width}")
                    continue
                if any(_has_bad_bytes(cell) for cell in row):
                    yield RawRecord(start, None, "not valid UTF-8")
                    continue
                if "\x00" in "".join(row):  # joined: one search per row, not one per field
                    column = next(name for name, cell in zip(header, row) if "\x00" in cell)
                    yield RawRecord(start, None, f"column {column!r} holds a NUL byte (\\x00); {NUL_HINT}")
                    continue
                yield RawRecord(start, dict(zip(header, row)))


class TsvReader(CsvReader):
    name = "tsv"
    description = "Tab-separated values with a header row"
    extensions = compressed_too((".tsv", ".tab"))
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


class NotJsonValue(ValueError):
    """A column value of a typed file (Parquet, Arrow) that has no JSON form: binary data that is not UTF-8 text."""


def _json_values(row: dict[str, Any]) -> dict[str, Any]:
    """A typed file's row with JSON-writable values: timestamps and dates as ISO 8601 text, decimals as text,
    durations in seconds, UTF-8 bytes as text; predictions.jsonl and the report write them as they are."""
    return {str(key): _json_value(value, repr(key)) for key, value in row.items()}


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{position}]") for position, item in enumerate(value)]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise NotJsonValue(f"column {where} holds binary data that is not UTF-8 text") from None
    return str(value)


#: rows converted to Python at a time: memory stays flat however large a row group is
PARQUET_BATCH_ROWS = 1024


class ParquetReader(Reader):
    name = "parquet"
    description = "Apache Parquet, read a batch of rows at a time (needs pyarrow: pip install 'nlpflow[parquet]')"
    extensions = (".parquet", ".pq")

    def count_hint(self, path: Path) -> int | None:
        try:
            import pyarrow.parquet as parquet

            return parquet.ParquetFile(path).metadata.num_rows
        except Exception:  # the read itself reports why the file cannot be read
            return None

    def read(self, path: Path) -> Iterator[RawRecord]:
        try:
            import pyarrow
            import pyarrow.parquet as parquet
        except ImportError:
            yield RawRecord(1, None, "reading Parquet needs pyarrow: pip install 'nlpflow[parquet]'")
            return
        try:
            # page checksums, where the writer stored them, turn a damaged page into an error instead of wrong values
            file = parquet.ParquetFile(path, page_checksum_verification=True)
        except (OSError, ValueError, pyarrow.ArrowException) as error:  # ValueError: names in its schema that are not UTF-8
            yield RawRecord(1, None, f"not a readable Parquet file: {error}")
            return
        with file:
            row = 0  # rows before the current row group
            for group in range(file.num_row_groups):
                group_rows = file.metadata.row_group(group).num_rows
                done = 0
                try:
                    for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                        for data in batch.to_pylist():
                            done += 1
                            try:
                                yield RawRecord(row + done, _json_values(data))
                            except NotJsonValue as error:
                                yield RawRecord(row + done, None, str(error))
                except (OSError, ValueError, pyarrow.ArrowException) as error:
                    # ValueError: a string column whose bytes are not UTF-8. The rest of this row group cannot be decoded; the next group may still be read
                    yield RawRecord(
                        row + done + 1, None,
                        f"row group {group} (rows {row + 1}-{row + group_rows}) cannot be read after its row "
                        f"{done}: {error}",
                    )
                row += group_rows


class SavedDatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: str | None = Field(None, description="which split of a saved DatasetDict to read (required when it has several)")


class SavedDatasetReader(Reader):
    name = "hf_dataset"
    description = (
        "a Hugging Face datasets folder written by save_to_disk, read row by row from its memory-mapped Arrow files "
        "(needs datasets: pip install 'nlpflow[datasets]'); picked for a folder holding dataset_info.json or state.json"
    )
    Options = SavedDatasetOptions
    # dataset_dict.json: a DatasetDict; the others: a Dataset
    folder_markers = ("dataset_info.json", "state.json", "dataset_dict.json")

    def read(self, path: Path) -> Iterator[RawRecord]:
        try:
            import datasets
        except ImportError:
            yield RawRecord(1, None, "reading a saved Hugging Face dataset needs datasets: pip install 'nlpflow[datasets]'")
            return
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=False)
        except Exception as error:  # datasets raises many types (FileNotFoundError, JSONDecodeError, ArrowInvalid)
            yield RawRecord(1, None, f"cannot load the saved dataset: {type(error).__name__}: {error}")
            return
        if isinstance(loaded, datasets.DatasetDict):
            splits = ", ".join(map(repr, loaded))
            split = self.options.split
            if split is None and len(loaded) == 1:
                split = next(iter(loaded))
            if split is None:
                yield RawRecord(1, None, f"the saved dataset has the splits {splits}; choose one with data.options.split")
                return
            if split not in loaded:
                yield RawRecord(1, None, f"the saved dataset has no split {split!r}; it has {splits}")
                return
            loaded = loaded[split]
        elif self.options.split is not None:
            yield RawRecord(1, None, f"data.options.split is {self.options.split!r}, but the saved dataset is a single Dataset without splits")
            return
        row = 0
        try:
            for batch in loaded.iter(batch_size=PARQUET_BATCH_ROWS):
                columns = list(batch)
                for values in zip(*(batch[column] for column in columns)):
                    row += 1
                    try:
                        yield RawRecord(row, _json_values(dict(zip(columns, values))))
                    except NotJsonValue as error:
                        yield RawRecord(row, None, str(error))
        except Exception as error:  # a damaged Arrow file raises pyarrow's or datasets' own errors
            yield RawRecord(row + 1, None, f"cannot read the saved dataset after row {row}: {type(error).__name__}: {error}")

    def sources(self, path: Path) -> list[Path]:
        """Every file of the saved dataset (or of the chosen split and the dataset_dict.json naming it), in path order."""
        if self.options.split is not None and (path / "dataset_dict.json").is_file() and (path / self.options.split).is_dir():
            return [path / "dataset_dict.json", *sorted(p for p in (path / self.options.split).rglob("*") if p.is_file())]
        return sorted(p for p in path.rglob("*") if p.is_file())


@hookimpl
def register_readers(register):
    register(JsonLinesReader)
    register(CsvReader)
    register(TsvReader)
    register(ParquetReader)
    register(SavedDatasetReader)
