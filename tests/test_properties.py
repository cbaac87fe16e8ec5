"""Property tests: readers never raise on any bytes; the config loader raises only nlpflow's own errors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpflow.config.loader import parse_config
from nlpflow.contract.errors import NlpflowError
from nlpflow.contract.types import RawRecord
from nlpflow.plugins.readers import CsvReader, JsonLinesReader, ParquetReader, TsvReader

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# bytes that look like the files the readers see: JSON punctuation, quotes, separators, newlines, bad UTF-8
_pieces = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b",", b"\t", b":", b"\n", b"\r\n", b"\r", b" ", b"text", b"label", b"1", b"null",
     b"\\u", b"\\ud800", b"\xff", b"\xc3", b"\xc3\xa9", b"\xef\xbb\xbf", b"\x00", b"'", b"\\"]
)
DATA_BYTES = st.one_of(st.binary(max_size=300), st.lists(_pieces, max_size=60).map(b"".join))


def _write(data: bytes, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)


def _check_records(records: list[RawRecord], data: bytes) -> None:
    last = 0
    for record in records:
        assert isinstance(record, RawRecord)
        assert (record.data is None) != (record.error is None)
        assert record.line >= max(last, 1)
        last = record.line
        if record.data is not None:
            assert isinstance(record.data, dict)
            # whatever a reader lets in can be written back out as UTF-8
            for key, value in record.data.items():
                assert isinstance(key, str)
                str(value).encode("utf-8")
    assert last <= data.count(b"\n") + data.count(b"\r") + 1


@pytest.mark.parametrize("reader_cls, suffix", [(JsonLinesReader, ".jsonl"), (CsvReader, ".csv"), (TsvReader, ".tsv")])
@SETTINGS
@given(data=DATA_BYTES)
def test_readers_never_raise(reader_cls, suffix, data):
    path = _write(data, suffix)
    try:
        records = list(reader_cls().read(path))
    finally:
        path.unlink()
    _check_records(records, data)


def _compress(data: bytes, suffix: str) -> bytes:
    import bz2
    import gzip

    if suffix == ".zst":
        return pytest.importorskip("zstandard").ZstdCompressor().compress(data)
    return {".gz": gzip.compress, ".bz2": bz2.compress}[suffix](data)


@pytest.mark.parametrize("reader_cls, suffix", [(JsonLinesReader, ".jsonl"), (CsvReader, ".csv")])
@pytest.mark.parametrize("compression", [".gz", ".zst", ".bz2"])
@SETTINGS
@given(data=DATA_BYTES, cut=st.integers(min_value=0, max_value=400), garbage=st.binary(max_size=20))
def test_readers_never_raise_on_damaged_compressed_files(reader_cls, suffix, compression, data, cut, garbage):
    """Compressed text cut short or with bytes appended: the reader reports it, whatever the damage."""
    compressed = _compress(data, compression)
    path = _write(compressed[: max(len(compressed) - cut, 0)] + garbage, suffix + compression)
    try:
        records = list(reader_cls().read(path))
    finally:
        path.unlink()
    for record in records:
        assert isinstance(record, RawRecord) and (record.data is None) != (record.error is None)


@SETTINGS
@given(data=st.binary(max_size=300), flip=st.integers(min_value=0, max_value=2000))
def test_parquet_reader_never_raises(data, flip):
    """On arbitrary bytes, and on a real Parquet file with one byte changed anywhere."""
    pyarrow = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as parquet

    buffer = io.BytesIO()
    parquet.write_table(pyarrow.Table.from_pylist([{"text": "a" * (n % 7), "label": str(n)} for n in range(30)]), buffer, row_group_size=10)
    damaged = bytearray(buffer.getvalue())
    damaged[flip % len(damaged)] ^= 0xFF
    for content in (data, bytes(damaged)):
        path = _write(content, ".parquet")
        try:
            records = list(ParquetReader().read(path))
        finally:
            path.unlink()
        for record in records:
            assert isinstance(record, RawRecord) and (record.data is None) != (record.error is None)


# any text but NUL, which the reader refuses as the mark of a damaged or UTF-16 file (tests/test_fault_cases.py)
@SETTINGS
@given(rows=st.lists(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20), min_size=2, max_size=2), min_size=1, max_size=8))
def test_csv_round_trips_what_csv_writes(rows):
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path = _write(buffer.getvalue().encode("utf-8"), ".csv")
    try:
        records = list(CsvReader().read(path))
    finally:
        path.unlink()
    assert all(r.error is None for r in records)
    assert [[r.data["text"], r.data["label"]] for r in records] == rows


@SETTINGS
@given(text=st.text(max_size=400))
def test_parse_config_on_any_text_raises_only_nlpflow_errors(text):
    try:
        parse_config(text, "fuzz.yaml")
    except NlpflowError as error:
        assert str(error)
        assert "\n" not in str(error)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
_keys = st.one_of(
    st.sampled_from(["pipelines", "t", "task", "data", "path", "model", "name_or_path", "metrics", "fields", "options", "report",
                     "formats", "preprocess", "chunk_size", "on_error", "limit", "batch_size", "../x", "sentiment"]),
    st.text(max_size=8),
    st.integers(),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


@SETTINGS
@given(document=st.one_of(_values, st.fixed_dictionaries({"pipelines": st.dictionaries(_keys, _values, max_size=3)})))
def test_parse_config_on_any_structure_raises_only_nlpflow_errors(document):
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        parsed = parse_config(text, "fuzz.yaml")
    except NlpflowError as error:
        message = str(error)
        assert message.startswith("fuzz.yaml")
        assert "\n" not in message
    else:
        for name, pipeline in parsed.items():
            assert pipeline.name == name and "/" not in name and not name.startswith(".")


@SETTINGS
@given(document=st.one_of(_values, st.fixed_dictionaries({"pipelines": st.dictionaries(_keys, _values, max_size=3)})))
def test_listing_every_schema_problem_starts_with_the_one_raised(document):
    """validate's mode (every problem appended to a list) and run's (the first raised) agree: the list starts with the
    error run raises, each entry is one located line, and a file without problems parses the same either way."""
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        first = parse_config(text, "fuzz.yaml")
    except NlpflowError as error:
        first = error
    problems: list[NlpflowError] = []
    try:
        parsed = parse_config(text, "fuzz.yaml", problems=problems)
    except NlpflowError as error:  # the file cannot be parsed at all: the same error either way
        assert str(error) == str(first) and not problems
        return
    if isinstance(first, NlpflowError):
        assert problems and str(problems[0]) == str(first)
        assert all(str(problem).startswith("fuzz.yaml") and "\n" not in str(problem) for problem in problems)
        assert all(pipeline is None or pipeline.name == name for name, pipeline in parsed.items())
    else:
        assert not problems and list(parsed) == list(first)


def _outcome(decode, text):
    try:
        return ("value", decode(text))
    except ValueError as error:  # JSONDecodeError and DuplicateKey
        return (type(error).__name__, str(error))


@SETTINGS
@given(text=st.one_of(
    st.lists(_pieces, min_size=1, max_size=60).map(lambda parts: b"".join(parts).decode("utf-8", "replace")),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=4).map(
        lambda record: json.dumps(record, ensure_ascii=False)),
    st.sampled_from(['{"a": 1, "a": 2}', '{"a": 1}{"b": 2}', '{"a": 1} x', ' {"a": 1}', '{"a": {"b": 1, "b": 2}}', '{"a": 1,}']),
))
def test_the_jsonl_readers_direct_scan_decodes_as_decode_does(text):
    """The reader scans a line that is one bare object directly; what it returns or raises is what decode would."""
    from nlpflow.plugins.readers import _OBJECT_DECODER, _decoded

    if text:
        assert _outcome(_decoded, text) == _outcome(_OBJECT_DECODER.decode, text)


def test_a_bare_object_line_is_scanned_without_decode(monkeypatch):
    """The direct scan is taken for the common line; decode only for the others (here, one with a leading space)."""
    from nlpflow.plugins import readers

    decoded = []
    decode = readers._OBJECT_DECODER.decode
    monkeypatch.setattr(readers._OBJECT_DECODER, "decode", lambda text: decoded.append(text) or decode(text))
    assert readers._decoded('{"text": "fine", "label": "positive"}') == {"text": "fine", "label": "positive"}
    assert decoded == []
    assert readers._decoded(' {"text": "fine"}') == {"text": "fine"}
    assert decoded == [' {"text": "fine"}']


def test_a_key_spelled_like_pydantics_key_marker_is_reported_as_unknown():
    """Pydantic marks a key's own errors with "[key]" in the location; a key the user spelled "[key]" is still theirs
    (found by the fuzz test above: it raised IndexError in both modes)."""
    text = 'pipelines:\n  p: {task: sentiment, data: {path: x.jsonl}}\n"[key]": 1\n'
    with pytest.raises(NlpflowError, match=r"fuzz.yaml:3:1: unknown key '\[key\]'"):
        parse_config(text, "fuzz.yaml")
    problems: list[NlpflowError] = []
    parse_config(text, "fuzz.yaml", problems=problems)
    assert "unknown key '[key]'" in str(problems[0])
