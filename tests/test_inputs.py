"""Inputs people have: compressed text files, Parquet, saved Hugging Face datasets, folders and globs of files.

Each is read as a stream, reports a bad record with where it is, and is fingerprinted in report.json by the
bytes that were read.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from nlpflow.api import run
from nlpflow.cli import main

GOOD = [
    {"text": "fine", "label": "positive", "prediction": "positive"},
    {"text": "bad", "label": "negative", "prediction": "positive"},
    {"text": "great", "label": "positive", "prediction": "positive"},
    {"text": "awful", "label": "negative", "prediction": "negative"},
]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def _csv(records, delimiter=",") -> bytes:
    header = delimiter.join(records[0])
    return (header + "\n" + "".join(delimiter.join(str(v) for v in r.values()) + "\n" for r in records)).encode()


def _pipelines(tmp_path: Path, path: str, on_error: str = "skip", extra: str = "") -> Path:
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: {json.dumps(path)}, on_error: {on_error}{extra}}}\n"
        "    report: {formats: [json]}\n",
        encoding="utf-8",
    )
    return config


def _run(tmp_path: Path, path: str, extra: str = ""):
    [result] = run(["t"], _pipelines(tmp_path, path, extra=extra), tmp_path / "out", use_cache=False)
    return result.report


def _cli_error(tmp_path: Path, path: str, capsys, extra: str = "") -> tuple[int, str]:
    config = _pipelines(tmp_path, path, on_error="fail", extra=extra)
    code = main(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return code, errors[0]


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".zst": _zstd}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv"])
def test_compressed_files_are_read_with_line_numbers_of_the_text(tmp_path, kind, suffix):
    bad_line = {"jsonl": '{"text": "oops",\n', "csv": "x,y\n", "tsv": "x\ty\n"}[kind]
    if kind == "jsonl":
        text = _jsonl(GOOD[:2]) + bad_line.encode() + _jsonl(GOOD[2:])
    else:
        plain = _csv(GOOD, "\t" if kind == "tsv" else ",").decode().splitlines(keepends=True)
        # the bad row is the third line of the text: after the header and one record
        text = "".join(plain[:2] + [bad_line] + plain[2:]).encode()
    data = tmp_path / f"data.{kind}{suffix}"
    data.write_bytes(COMPRESSORS[suffix](text))
    report = _run(tmp_path, str(data))
    assert report["data"]["format"] == kind
    assert report["counts"]["scored"] == 4
    assert [item["line"] for item in report["skipped"]] == [3]
    assert report["metrics"]["accuracy"]["value"] == 0.75
    # the fingerprint is of the bytes read, the compressed file
    assert report["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_a_truncated_compressed_file_is_a_bad_record_not_a_traceback(tmp_path, capsys):
    data = tmp_path / "data.jsonl.gz"
    data.write_bytes(gzip.compress(_jsonl(GOOD * 50))[:-30])
    code, line = _cli_error(tmp_path, str(data), capsys)
    assert code == 3
    assert line.startswith(f"error: {data}:")
    assert "cannot read the file: Compressed file ended before the end-of-stream marker was reached" in line


@pytest.mark.parametrize("suffix, name", [(".gz", "gzip"), (".bz2", "bzip2"), (".zst", "zstandard")])
def test_a_compressed_file_named_as_text_is_told_its_right_name(tmp_path, capsys, suffix, name):
    data = tmp_path / "data.csv"
    data.write_bytes(COMPRESSORS[suffix](_csv(GOOD)))
    code, line = _cli_error(tmp_path, str(data), capsys)
    assert code == 3
    assert line == (
        f"error: {data}:1: pipeline 't': this is a {name}-compressed file, not CSV text; name it data.csv{suffix} so "
        "it is decompressed as it is read (set data.on_error: skip to skip such records)"
    )


def _parquet(path: Path, records, row_group_size: int) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.Table.from_pylist(records), path, row_group_size=row_group_size, write_page_checksum=True)


def test_parquet_is_read_by_row_group_with_global_row_numbers(tmp_path):
    records = GOOD * 3
    records[6] = {**records[6], "text": None}  # row 7, the second row of the third row group
    _parquet(tmp_path / "data.parquet", records, row_group_size=5)
    report = _run(tmp_path, "data.parquet")
    assert report["data"]["format"] == "parquet"
    assert report["counts"]["read"] == 12 and report["counts"]["scored"] == 11
    assert [item["line"] for item in report["skipped"]] == [7]


def test_a_damaged_parquet_row_group_names_the_group_and_the_next_is_read(tmp_path):
    records = [{"text": f"text number {n:04d} " * 20, "label": "positive", "prediction": "positive"} for n in range(40)]
    path = tmp_path / "data.parquet"
    _parquet(path, records, row_group_size=20)
    import pyarrow.parquet as parquet

    column = parquet.ParquetFile(path).metadata.row_group(0).column(0)
    damaged = bytearray(path.read_bytes())
    # into the strings of the text column's dictionary page, which its CRC checksum covers
    inside = column.dictionary_page_offset + 100
    damaged[inside:inside + 8] = b"\xff" * 8
    path.write_bytes(bytes(damaged))
    report = _run(tmp_path, "data.parquet")
    [skipped] = report["skipped"]
    assert skipped["line"] == 1
    assert skipped["reason"].startswith("row group 0 (rows 1-20) cannot be read after its row 0: ")
    assert report["counts"]["scored"] == 20  # the second row group


def test_a_file_that_is_not_parquet_is_one_clear_error(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    (tmp_path / "data.parquet").write_bytes(_jsonl(GOOD))
    code, line = _cli_error(tmp_path, "data.parquet", capsys)
    assert code == 3
    assert line.startswith(f"error: {tmp_path / 'data.parquet'}:1: pipeline 't': not a readable Parquet file: ")


def test_saved_dataset_folder_is_read_and_fingerprinted_by_its_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = [dict(record) for record in GOOD]
    records[1]["text"] = ""  # row 2: an empty text is skipped with its row
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    report = _run(tmp_path, "saved")
    assert report["data"]["format"] == "hf_dataset"
    assert [item["line"] for item in report["skipped"]] == [2]
    assert report["counts"]["scored"] == 3
    files = sorted(p for p in (tmp_path / "saved").rglob("*") if p.is_file())
    expected = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n" for p in files))
    assert report["data"]["sha256"] == expected.hexdigest()


def test_saved_dataset_dict_needs_a_split_and_lists_them(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(GOOD), "test": datasets.Dataset.from_list(GOOD[:2])})
    splits.save_to_disk(str(tmp_path / "saved"))
    code, line = _cli_error(tmp_path, "saved", capsys)
    assert code == 3
    assert "the saved dataset has the splits 'train', 'test'; choose one with data.options.split" in line
    report = _run(tmp_path, "saved", extra=", options: {split: test}")
    assert report["counts"]["scored"] == 2
    assert report["metrics"]["accuracy"]["value"] == 0.5


def test_a_folder_of_files_is_read_in_sorted_order_naming_each_file(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "b.jsonl").write_bytes(_jsonl(GOOD[2:]) + b"{not json\n")
    (shards / "a.jsonl").write_bytes(_jsonl(GOOD[:2]))
    config = _pipelines(tmp_path, "shards")
    config.write_text(config.read_text().replace("formats: [json]", "formats: [json, markdown]"), encoding="utf-8")
    [result] = run(["t"], config, tmp_path / "out", use_cache=False)
    report = result.report
    assert "/b.jsonl:3 | malformed JSON" in (result.directory / "report.md").read_text(encoding="utf-8")
    assert report["counts"]["scored"] == 4
    assert report["skipped"] == [{"line": 3, "index": 4, "reason": report["skipped"][0]["reason"], "file": str(shards / "b.jsonl")}]
    predictions = [json.loads(line) for line in (tmp_path / "out" / "t" / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == [r["prediction"] for r in GOOD]
    # a hash over the files' hashes in reading order
    digests = [hashlib.sha256((shards / name).read_bytes()).hexdigest() for name in ("a.jsonl", "b.jsonl")]
    assert report["data"]["sha256"] == hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()
    code, line = _cli_error(tmp_path, "shards", capsys)
    assert code == 3
    assert line.startswith(f"error: {shards / 'b.jsonl'}:3: pipeline 't': malformed JSON")


def test_a_glob_reads_only_the_files_it_matches(tmp_path):
    (tmp_path / "part-1.csv").write_bytes(_csv(GOOD[:2]))
    (tmp_path / "part-2.csv").write_bytes(_csv(GOOD[2:]))
    (tmp_path / "notes.csv").write_bytes(b"text,label\nignored,positive\n")
    report = _run(tmp_path, "part-*.csv")
    assert report["counts"]["read"] == 4 and report["data"]["format"] == "csv"


def test_a_folder_of_mixed_formats_or_a_glob_matching_nothing_is_a_config_error(tmp_path, capsys):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jsonl").write_bytes(_jsonl(GOOD))
    (tmp_path / "mixed" / "b.csv").write_bytes(_csv(GOOD))
    code, line = _cli_error(tmp_path, "mixed", capsys)
    assert code == 2
    assert line.endswith(
        f"data.path {tmp_path / 'mixed'} holds files in more than one format (csv: 1, jsonl: 1); read one format, "
        f"e.g. with a glob such as {tmp_path / 'mixed' / '*.jsonl'}"
    )
    code, line = _cli_error(tmp_path, "none-*.jsonl", capsys)
    assert code == 2
    assert line.endswith(f"data.path {tmp_path / 'none-*.jsonl'} matches no files")


def _predictions(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "t" / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("column", ["id", "_id"])
def test_predictions_carry_the_records_id_guessed_from_its_column(tmp_path, column):
    (tmp_path / "data.jsonl").write_bytes(_jsonl([{column: f"r{n}", **record} for n, record in enumerate(GOOD)]))
    _run(tmp_path, "data.jsonl")
    assert [line["id"] for line in _predictions(tmp_path)] == ["r0", "r1", "r2", "r3"]


def test_data_id_field_names_the_id_column_and_a_record_without_it_is_reported(tmp_path, capsys):
    records = [{"uid": n * 10, "id": "not this", **record} for n, record in enumerate(GOOD)]
    (tmp_path / "data.jsonl").write_bytes(_jsonl(records))
    _run(tmp_path, "data.jsonl", extra=", id_field: uid")
    assert [line["id"] for line in _predictions(tmp_path)] == [0, 10, 20, 30]
    del records[2]["uid"]
    (tmp_path / "data.jsonl").write_bytes(_jsonl(records))
    code, line = _cli_error(tmp_path, "data.jsonl", capsys, extra=", id_field: uid")
    assert code == 3
    assert line.startswith(f"error: {tmp_path / 'data.jsonl'}:3: pipeline 't': missing field 'uid' (data.id_field)")


def test_without_an_id_column_lines_have_no_id_and_include_inputs_writes_the_inputs_as_read(tmp_path):
    (tmp_path / "data.jsonl").write_bytes(_jsonl([{"review": r["text"], "label": r["label"], "prediction": r["prediction"]} for r in GOOD]))
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "pipelines:\n  t:\n    task: sentiment\n    data: {path: data.jsonl}\n    fields: {text: review}\n"
        "    report: {formats: [json], include_inputs: true}\n",
        encoding="utf-8",
    )
    run(["t"], config, tmp_path / "out", use_cache=False)
    lines = _predictions(tmp_path)
    assert all("id" not in line for line in lines)
    assert [line["inputs"] for line in lines] == [{"text": r["text"]} for r in GOOD]


def test_parquet_typed_values_become_json_and_binary_that_is_not_text_is_a_bad_row(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import datetime
    import decimal

    import pyarrow.parquet as parquet

    table = pyarrow.table({
        "id": [datetime.datetime(2024, 5, 1, 12, 30), datetime.datetime(2024, 5, 2), datetime.datetime(2024, 5, 3)],
        "text": [b"fine", b"\xff\xfe", b"great"],
        "price": [decimal.Decimal("1.50"), decimal.Decimal("2.00"), decimal.Decimal("3.25")],
        "label": ["positive"] * 3,
        "prediction": ["positive"] * 3,
    })
    parquet.write_table(table, tmp_path / "data.parquet")
    report = _run(tmp_path, "data.parquet")
    assert [(item["line"], item["reason"]) for item in report["skipped"]] == [(2, "column 'text' holds binary data that is not UTF-8 text")]
    lines = _predictions(tmp_path)
    assert [line["id"] for line in lines] == ["2024-05-01T12:30:00", "2024-05-03T00:00:00"]


def test_a_file_of_a_folder_changed_during_the_run_is_a_data_error(tmp_path):
    from nlpflow import hookimpl
    from nlpflow.contract.errors import DataError
    from nlpflow.registry import load_registry
    from nlpflow.contract.types import Preprocessor

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_bytes(_jsonl(GOOD[:2]))
    (shards / "b.jsonl").write_bytes(_jsonl(GOOD[2:]))

    class EditsTheData(Preprocessor):
        """Appends to the first file once its records are in: the report would otherwise hash a later version."""

        name = "edit_data"

        def __call__(self, examples):
            with open(shards / "a.jsonl", "ab") as handle:
                handle.write(_jsonl(GOOD[:1]))

    class Plugin:
        @hookimpl
        def register_preprocessors(self, register):
            register(EditsTheData)

    config = tmp_path / "pipelines.yaml"
    config.write_text("pipelines:\n  t:\n    task: sentiment\n    data: {path: shards}\n    preprocess: [edit_data]\n"
                      "    chunk_size: 2\n    report: {formats: [json]}\n", encoding="utf-8")
    registry = load_registry(extra_plugins=[("edits", Plugin())])
    with pytest.raises(DataError, match="this file of the data appeared or changed while the data was being read") as error:
        run(["t"], config, tmp_path / "out", registry=registry, use_cache=False)
    assert error.value.path == shards / "a.jsonl"
