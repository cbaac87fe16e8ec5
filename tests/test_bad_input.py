"""Bad input gets one clear line on stderr and a non-zero exit code, never a traceback.

The corpus lives in tests/bad_inputs: ``yaml/*.yaml`` are broken pipelines
files, ``data/*`` broken data files, and ``expected.json`` holds, for each,
the exact message a user sees (``{yaml}``/``{data}`` stand for the file's
absolute path). Lists of available names are compared loosely, so adding a
plugin does not break these tests; everything else is compared exactly.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest

from nlpflow.cli import main

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def _loose(message: str) -> str:
    return re.sub(r"Available: .*?\.(?= Did you mean|$)", "Available: <names>.", message)


def _run_cli(argv, capsys) -> tuple[int, str, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    return code, captured.err, errors


def _assert_one_clear_line(stderr: str, errors: list[str]) -> str:
    assert "Traceback" not in stderr
    assert len(errors) == 1, stderr
    return errors[0]


def test_corpus_is_complete():
    assert sorted(EXPECTED["yaml"]) == sorted(p.name for p in (CORPUS / "yaml").glob("*.yaml"))
    assert sorted(EXPECTED["data"]) == sorted(p.name for p in (CORPUS / "data").iterdir() if p.name != "good.jsonl")


@pytest.mark.parametrize("name", sorted(EXPECTED["yaml"]))
def test_bad_pipelines_file(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a python tag that ran would write pwned.txt here
    path = CORPUS / "yaml" / name
    expected = EXPECTED["yaml"][name]
    code, stderr, errors = _run_cli(["run", "--config", str(path), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    line = _assert_one_clear_line(stderr, errors)
    assert code == expected["exit"] != 0
    message = expected["message"].replace("{yaml}", str(path)).replace("{yaml_dir}", str(path.parent))
    assert _loose(line) == _loose(message)
    assert not (tmp_path / "pwned.txt").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED["yaml"]))
def test_validate_reports_the_same_errors(name, tmp_path, capsys, monkeypatch):
    """validate goes on after a problem to list every one; each of these files has one mistake, and validate says it
    as run does, once (an unknown key that explains a missing one is not said twice)."""
    monkeypatch.chdir(tmp_path)
    path = CORPUS / "yaml" / name
    expected = EXPECTED["yaml"][name]
    code, stderr, errors = _run_cli(["validate", "--config", str(path)], capsys)
    line = _assert_one_clear_line(stderr, errors)
    assert code == expected["exit"]
    message = expected["message"].replace("{yaml}", str(path)).replace("{yaml_dir}", str(path.parent))
    assert _loose(line) == _loose(message)
    assert not (tmp_path / "pwned.txt").exists()


def _data_pipeline(tmp_path: Path, data: Path, on_error: str) -> Path:
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: {json.dumps(str(data))}, on_error: {on_error}}}\n"
        "    report: {formats: [json]}\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize("name", sorted(EXPECTED["data"]))
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_bad_data_file(name, on_error, tmp_path, capsys):
    data = CORPUS / "data" / name
    expected = EXPECTED["data"][name][on_error]
    config = _data_pipeline(tmp_path, data, on_error)
    out = tmp_path / "out"
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(out), "--no-cache"], capsys)
    assert code == expected["exit"], stderr
    assert "Traceback" not in stderr
    if code != 0:
        line = _assert_one_clear_line(stderr, errors)
        assert line == expected["message"].replace("{data}", str(data))
        assert not (out / "t" / "predictions.jsonl").exists()
        assert not (out / "t" / "report.json").exists()
        assert not list((out / "t").glob(".*partial")) if (out / "t").exists() else True
        return
    assert errors == []
    report = json.loads((out / "t" / "report.json").read_text(encoding="utf-8"))
    counts = report["counts"]
    assert {k: counts[k] for k in ("read", "predicted", "skipped")} == expected["counts"]
    assert counts["read"] == counts["predicted"] + counts["skipped"]
    assert [[item["line"], item["reason"]] for item in report["skipped"]] == expected["skipped"]
    predictions = [json.loads(line) for line in (out / "t" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == counts["predicted"]
    skipped_lines = {item["line"] for item in report["skipped"]}
    assert not skipped_lines & {p["line"] for p in predictions}


def test_skip_lists_every_bad_record_with_line_and_reason(tmp_path, capsys):
    lines = [
        '{"text": "good", "label": "positive", "prediction": "positive"}',
        '{"text": 3, "label": "negative", "prediction": "negative"}',
        "not json",
        "",
        '{"text": "", "label": "negative", "prediction": "negative"}',
        '{"label": "negative", "prediction": "negative"}',
        '{"text": "fine", "label": "negative", "prediction": "negative"}',
        '{"text": "also fine", "label": "negative", "prediction": ["negative"]}',
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = _data_pipeline(tmp_path, data, "skip")
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "t" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["read"] == 7  # the blank line is not a record
    assert report["counts"]["predicted"] == 2
    assert report["counts"]["skipped"] == 5
    assert [(s["line"], s["index"]) for s in report["skipped"]] == [(2, 1), (3, 2), (5, 3), (6, 4), (8, 6)]
    assert report["skipped"][0]["reason"] == "field 'text' must be a string, got a number"
    assert report["skipped"][1]["reason"].startswith("malformed JSON:")
    assert report["skipped"][4]["reason"] == "field 'prediction' must be a label (string or integer), got an array"
    assert sum(report["skipped_reasons"].values()) == 5
    assert "2 skipped" not in stderr  # the summary goes to stdout


def test_fail_stops_at_the_first_bad_record_with_its_line(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"text": "good", "label": "positive", "prediction": "positive"}\n'
        '{"text": "fine", "label": "positive", "prediction": "positive"}\n'
        '{"text": {"nested": true}, "label": "positive", "prediction": "positive"}\n'
        "broken\n",
        encoding="utf-8",
    )
    config = _data_pipeline(tmp_path, data, "fail")
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 3
    assert _assert_one_clear_line(stderr, errors) == (
        f"error: {data}:3: pipeline 't': field 'text' must be a string, got an object (set data.on_error: skip to skip such records)"
    )


def test_long_csv_field_is_read_whole(tmp_path, capsys):
    """The csv module refuses fields over 131072 characters by default; a long review is not malformed."""
    text = "word " * 40_000
    data = tmp_path / "long.csv"
    data.write_text(f"text,label,prediction\n{text},positive,positive\nshort,negative,negative\n", encoding="utf-8")
    config = _data_pipeline(tmp_path, data, "fail")
    code, stderr, _ = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "t" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["predicted"] == 2


def test_long_texts_are_truncated_and_counted(tmp_path, capsys, bert_classifier):
    """With a model, texts over the input limit are cut by the tokenizer and counted in counts.truncated."""
    records = [
        {"text": "a short review", "label": "positive"},
        {"text": "terrible " * 3000, "label": "negative"},
        {"text": "fine", "label": "positive"},
        {"text": "great " * 600, "label": "positive"},
        {"text": "", "label": "negative"},
    ]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: {data.name}, on_error: skip}}\n"
        f"    model: {{name_or_path: {json.dumps(str(bert_classifier))}, device: cpu}}\n    report: {{formats: [json]}}\n",
        encoding="utf-8",
    )
    code, stderr, _ = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 0, stderr
    run_dir = tmp_path / "out" / "t"
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["truncated"] == 2
    assert report["counts"]["predicted"] == 4
    assert report["skipped"] == [{"line": 5, "index": 4, "reason": "field 'text' is empty"}]
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [bool(row.get("notes", {}).get("truncated")) for row in rows] == [False, True, False, True]


def test_unknown_pipeline_name_on_the_command_line(tmp_path, capsys):
    config = CORPUS / "yaml" / "unknown_key.yaml"
    good = tmp_path / "p.yaml"
    good.write_text(f"pipelines:\n  reviews:\n    task: sentiment\n    data: {{path: {json.dumps(str(CORPUS / 'data' / 'good.jsonl'))}}}\n")
    code, stderr, errors = _run_cli(["run", "../reviews", "--config", str(good), "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    assert _assert_one_clear_line(stderr, errors) == f"error: {good}: no pipeline named '../reviews'. Available: reviews. Did you mean 'reviews'?"
    assert config.exists()


def test_missing_pipelines_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    code, stderr, errors = _run_cli(["run", "--config", str(path)], capsys)
    assert code == 2
    assert _assert_one_clear_line(stderr, errors) == f"error: {path}: pipelines file not found (looked in {tmp_path})"


def test_pipelines_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"pipelines:\n  t: {task: caf\xe9}\n")
    code, stderr, errors = _run_cli(["run", "--config", str(path)], capsys)
    assert code == 2
    assert _assert_one_clear_line(stderr, errors).startswith(f"error: {path}:2:16: not valid UTF-8: byte 0xe9")


def test_many_pipelines_without_aliases_are_not_an_alias_bomb(tmp_path):
    from nlpflow.config.loader import MAX_NODES, parse_config

    block = (
        "  p{i}:\n    task: sentiment\n    description: d\n    data: {{path: d.jsonl, format: jsonl, on_error: skip}}\n"
        "    fields: {{text: t, label: l}}\n    report: {{formats: [json, markdown], slice_by: [a, b]}}\n"
        "    preprocess: [normalize, lowercase]\n    metrics: [accuracy, macro_f1]\n"
    )
    text = "pipelines:\n" + "".join(block.format(i=i) for i in range(5_000))
    # 25 values a pipeline (mappings, lists and scalars; keys not counted): over MAX_NODES in all
    assert 25 * 5_000 > MAX_NODES
    assert len(parse_config(text, tmp_path / "p.yaml")) == 5_000


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_as_data_says_what_it_is(tmp_path, capsys):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    config = _data_pipeline(tmp_path, fifo, "fail")
    code, stderr, errors = _run_cli(["validate", "--config", str(config)], capsys)
    assert code == 2
    line = _assert_one_clear_line(stderr, errors)
    assert line.endswith(f"pipeline 't': data.path {fifo} is a named pipe (FIFO), which can be read only once, not a data file")


def test_a_task_of_a_disabled_plugin_names_the_block(tmp_path, capsys):
    config = _data_pipeline(tmp_path, CORPUS / "data" / "good.jsonl", "fail")
    code, stderr, errors = _run_cli(["--disable-plugin", "classification", "validate", "--config", str(config)], capsys)
    assert code == 2
    line = _assert_one_clear_line(stderr, errors)
    assert "unknown task 'sentiment'" in line
    assert line.endswith("(plugins disabled with --disable-plugin or $NLPFLOW_DISABLE_PLUGINS that may provide it: 'classification')")


def test_a_mistyped_disabled_plugin_is_a_warning(tmp_path, capsys):
    config = _data_pipeline(tmp_path, CORPUS / "data" / "good.jsonl", "fail")
    code, stderr, errors = _run_cli(["--disable-plugin", "clasification", "validate", "--config", str(config)], capsys)
    assert code == 0 and errors == []
    assert (
        "warning: --disable-plugin/NLPFLOW_DISABLE_PLUGINS names 'clasification', which is not an installed plugin "
        "(`nlpflow plugins` lists them); did you mean 'classification'?"
    ) in stderr


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"text": "abc\n', "malformed JSON: Unterminated string starting at column 10"),
        (b'{"text": "abc", \n', "malformed JSON: Expecting property name enclosed in double quotes at column 17"),
        (gzip.compress(b'{"text": "a", "label": "positive", "prediction": "positive"}\n'),
         "this is a gzip-compressed file, not JSON Lines text; name it data.jsonl.gz so it is decompressed as it is read"),
    ],
    ids=["unterminated-string", "end-of-line", "gzip"],
)
def test_json_lines_messages_say_where_and_what(tmp_path, capsys, content, reason):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    config = _data_pipeline(tmp_path, data, "fail")
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 3
    assert _assert_one_clear_line(stderr, errors) == f"error: {data}:1: pipeline 't': {reason} (set data.on_error: skip to skip such records)"


def test_a_json_object_with_a_key_twice_is_reported(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"text": "a", "label": "positive", "prediction": "positive"}\n'
        '{"text": "b", "label": "negative", "label": "positive", "prediction": "positive"}\n',
        encoding="utf-8",
    )
    config = _data_pipeline(tmp_path, data, "fail")
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 3
    assert _assert_one_clear_line(stderr, errors) == (
        f"error: {data}:2: pipeline 't': the JSON object has the key 'label' twice; which value is meant is unclear "
        "(set data.on_error: skip to skip such records)"
    )


def test_labels_that_differ_only_in_case_or_spaces_are_warned_about_once(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    labels = ["positive", "Positive", "negative", " negative", "positive", "Positive", "negative"]
    data.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": label, "prediction": "positive"}) + "\n" for i, label in enumerate(labels)),
        encoding="utf-8",
    )
    config = _data_pipeline(tmp_path, data, "fail")
    code, stderr, errors = _run_cli(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "differ only in case" in line]
    assert warnings == [
        f"warning: pipeline 't': {data} has labels that differ only in case or surrounding spaces, so they count as "
        "different classes: ' negative' vs 'negative'; 'Positive' vs 'positive'"
    ]


def test_every_skipped_record_is_in_skipped_jsonl_and_report_json_has_a_summary(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": f"t{i}", "label": "positive", "prediction": "positive"}) for i in range(5)]
    lines += ["{not json"] * 30 + [json.dumps({"label": "positive", "prediction": "positive"})] * 5
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = _data_pipeline(tmp_path, data, "skip")
    out = tmp_path / "out"
    code, stderr, _ = _run_cli(["run", "t", "--config", str(config), "--output", str(out), "--no-cache"], capsys)
    assert code == 0, stderr
    skipped = [json.loads(line) for line in (out / "t" / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [item["line"] for item in skipped] == list(range(6, 41))
    report = json.loads((out / "t" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["skipped"] == 35
    assert report["skipped"] == skipped[:20]
    assert report["skipped_file"] == "skipped.jsonl"
    assert sum(report["skipped_reasons"].values()) == 35
    from types import SimpleNamespace

    from nlpflow import RunResult
    from nlpflow.plugins.html_report import HtmlCollector, HtmlReporter

    # the page from the report alone (no examples collected): the skipped table says how many it leaves out
    nothing_collected = HtmlCollector(SimpleNamespace(input_fields=("text",)), [])
    run = RunResult(report=report, directory=out / "t", data_path=data, collected={"html": nothing_collected})
    assert "15 more in skipped.jsonl." in HtmlReporter().render(run)

    # a later run with nothing to skip leaves no skipped.jsonl behind
    data.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    code, stderr, _ = _run_cli(["run", "t", "--config", str(config), "--output", str(out), "--no-cache"], capsys)
    assert code == 0, stderr
    assert not (out / "t" / "skipped.jsonl").exists()
    assert json.loads((out / "t" / "report.json").read_text(encoding="utf-8"))["skipped_file"] is None
