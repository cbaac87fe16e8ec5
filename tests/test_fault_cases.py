"""The last bad-input fault cases: a NUL byte in a CSV field, a pipelines file that is not UTF-8, a FIFO among a
glob's files, a model whose only weights are a pickle, a model folder whose config.json does not parse. Each is
refused with one line naming the file (and line and column where there is one) and the documented exit code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nlpflow.cli import main


def _cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    code = main(argv)
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    return code, [line for line in stderr.splitlines() if line.startswith("error:")], stderr


def _run_or_validate(command: str, config: Path, tmp_path: Path) -> list[str]:
    """The CLI arguments of ``run`` (into tmp_path/out, no cache) or ``validate`` of ``config``."""
    return [command, "-c", str(config)] + (["-o", str(tmp_path / "out"), "--no-cache"] if command == "run" else [])


def _given_predictions(tmp_path: Path, data: str, on_error: str = "fail") -> Path:
    """A pipeline that scores the data's own ``prediction`` column: no model, so only the data is checked."""
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: {json.dumps(data)}, on_error: {on_error}}}\n"
        "    report: {formats: [json]}\n",
        encoding="utf-8",
    )
    return config


# -- a NUL byte in a CSV field -------------------------------------------------------------------------------------

NUL_REASON = (
    "column 'text' holds a NUL byte (\\x00); text never holds one, so the file is damaged or not UTF-8 "
    "(UTF-16 has a NUL in every other byte)"
)


def _nul_csv(tmp_path: Path) -> Path:
    data = tmp_path / "d.csv"
    data.write_bytes(
        b"text,label,prediction\n"
        b"good,positive,positive\n"
        b'"two\nlines",negative,negative\n'
        b"ba\x00d,negative,negative\n"
        b"fine,positive,positive\n"
    )
    return data


def test_a_nul_byte_in_a_csv_field_fails_the_run_at_its_line(tmp_path, capsys):
    data = _nul_csv(tmp_path)
    out = tmp_path / "out"
    code, errors, _ = _cli(["run", "t", "-c", str(_given_predictions(tmp_path, str(data))), "-o", str(out), "--no-cache"], capsys)
    assert code == 3
    assert errors == [f"error: {data}:5: pipeline 't': {NUL_REASON} (set data.on_error: skip to skip such records)"]
    assert not (out / "t" / "report.json").exists()


def test_a_nul_byte_in_a_csv_field_is_skipped_with_its_line(tmp_path, capsys):
    data = _nul_csv(tmp_path)
    out = tmp_path / "out"
    code, errors, _ = _cli(["run", "t", "-c", str(_given_predictions(tmp_path, str(data), "skip")), "-o", str(out), "--no-cache"], capsys)
    assert (code, errors) == (0, [])
    report = json.loads((out / "t" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["predicted"] == 3
    assert [(item["line"], item["reason"]) for item in report["skipped"]] == [(5, NUL_REASON)]


def test_a_utf16_csv_is_refused_at_its_header(tmp_path):
    from nlpflow.plugins.readers import CsvReader

    data = tmp_path / "d.csv"
    data.write_bytes("text,label\ngood,positive\n".encode("utf-16-le"))
    records = list(CsvReader().read(data))
    assert [(record.line, record.data) for record in records] == [(1, None)]
    assert records[0].error.startswith("header row holds a NUL byte (\\x00); text never holds one")


# -- a pipelines file that is not UTF-8 ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_pipelines_file_that_is_not_utf8_names_the_line_and_column_of_the_bad_byte(command, tmp_path, capsys):
    config = tmp_path / "pipelines.yaml"
    config.write_bytes(b"pipelines:\n  t:\n    description: caf\xe9 reviews\n    task: sentiment\n")
    code, errors, _ = _cli([command, "-c", str(config)], capsys)
    assert code == 2
    assert errors == [
        f"error: {config}:3:21: not valid UTF-8: byte 0xe9 (invalid continuation byte); pipelines files are read as "
        "UTF-8, so save it in that encoding"
    ]


def test_the_column_counts_characters_and_a_cut_sequence_shows_its_bytes(tmp_path, capsys):
    config = tmp_path / "pipelines.yaml"
    # "é" before the bad bytes is two bytes but one column; the euro sign cut after two of its three bytes
    config.write_bytes(b"pipelines:\r\n  t:\r\n    description: \xc3\xa9 \xe2\x82 x\r\n")
    code, errors, _ = _cli(["run", "-c", str(config)], capsys)
    assert code == 2
    assert errors[0].startswith(f"error: {config}:3:20: not valid UTF-8: bytes 0xe2 0x82 (invalid continuation byte)")


# -- a FIFO among a glob's or a folder's files ---------------------------------------------------------------------

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")

GOOD_RECORD = '{"text": "good", "label": "positive", "prediction": "positive"}\n'


def _data_with_a_fifo(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text(GOOD_RECORD, encoding="utf-8")
    os.mkfifo(folder / "b.jsonl")
    (folder / "c.jsonl").write_text(GOOD_RECORD, encoding="utf-8")
    return folder


@needs_fifo
@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("pattern, verb", [("data/*.jsonl", "matches"), ("data", "holds")])
def test_a_fifo_among_the_data_files_is_refused_by_name(command, pattern, verb, tmp_path, capsys):
    folder = _data_with_a_fifo(tmp_path)
    config = _given_predictions(tmp_path, pattern)
    code, errors, _ = _cli(_run_or_validate(command, config, tmp_path), capsys)
    assert code == 2
    assert errors == [
        f"error: {config}:4:12: pipeline 't': data.path {tmp_path / pattern} {verb} {folder / 'b.jsonl'}, which is a "
        "named pipe (FIFO), which can be read only once, not a data file; remove it, or leave it out with a narrower glob"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_data_path_that_is_a_dangling_link_says_so(command, tmp_path, capsys):
    (tmp_path / "records.jsonl").symlink_to(tmp_path / "moved-away.jsonl")
    config = _given_predictions(tmp_path, "records.jsonl")
    code, errors, _ = _cli(_run_or_validate(command, config, tmp_path), capsys)
    assert code == 2
    assert errors == [
        f"error: {config}:4:12: pipeline 't': data.path {tmp_path / 'records.jsonl'} is a symbolic link to a missing file, "
        "not a data file"
    ]


@needs_fifo
def test_a_fifo_put_among_the_files_after_the_check_is_a_bad_record_not_a_hang(tmp_path):
    """Between validate (or the resolve step) and the read, a named pipe may appear: opening it would wait for a
    writer, so the reader reports it at line 1 of that file and goes on with the others."""
    from nlpflow.config.sources import FileSeriesReader
    from nlpflow.plugins.readers import JsonLinesReader

    folder = _data_with_a_fifo(tmp_path)
    records = list(FileSeriesReader(JsonLinesReader()).read(folder / "*.jsonl"))
    assert [(record.source, record.line, record.error) for record in records] == [
        (str(folder / "a.jsonl"), 1, None),
        (str(folder / "b.jsonl"), 1, "this is a named pipe (FIFO), which can be read only once, not a data file"),
        (str(folder / "c.jsonl"), 1, None),
    ]


# -- models: pickle-only weights, a config.json that does not parse ------------------------------------------------

@pytest.fixture(scope="module")
def pickle_only(tmp_path_factory, bert_classifier):
    """The tiny classifier with its weights as pytorch_model.bin only (torch.save: transformers writes safetensors)."""
    import torch
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("pickle-only")
    for file in Path(bert_classifier).iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, path / file.name)
    torch.save(load_file(Path(bert_classifier) / "model.safetensors"), path / "pytorch_model.bin")
    return path


@pytest.fixture
def no_model_loads(monkeypatch):
    from nlpflow.plugins.torch_backend import TorchBackend

    def refuse(self, *args, **kwargs):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(TorchBackend, "load_head", refuse)


def _model_pipeline(tmp_path: Path, model: Path, extra: str = "") -> Path:
    (tmp_path / "d.jsonl").write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative"}\n', encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: d.jsonl}}\n"
        f"    model: {{name_or_path: {json.dumps(str(model))}, device: cpu{extra}}}\n    report: {{formats: [json]}}\n",
        encoding="utf-8",
    )
    return config


def test_validate_refuses_pickle_only_weights_as_run_does(pickle_only, tmp_path, capsys, no_model_loads):
    config = _model_pipeline(tmp_path, pickle_only)
    refusal = (
        f"error: {config}:5:5: pipeline 't': model {str(pickle_only)!r} has no safetensors weights in {pickle_only}; "
        "only safetensors load by default. Convert it, or set model.allow_pickle: true if you trust the files."
    )
    code, errors, _ = _cli(["validate", "-c", str(config)], capsys)
    assert (code, errors) == (4, [refusal])


def test_run_refuses_pickle_only_weights_with_the_same_words(pickle_only, tmp_path, capsys):
    config = _model_pipeline(tmp_path, pickle_only)
    code, errors, _ = _cli(["run", "-c", str(config), "-o", str(tmp_path / "out"), "--no-cache"], capsys)
    assert code == 4
    assert errors == [
        f"error: {config}:5:5: pipeline 't': model {str(pickle_only)!r} has no safetensors weights in {pickle_only}; "
        "only safetensors load by default. Convert it, or set model.allow_pickle: true if you trust the files."
    ]


def test_validate_accepts_pickle_weights_with_allow_pickle(pickle_only, tmp_path, capsys, no_model_loads):
    config = _model_pipeline(tmp_path, pickle_only, ", allow_pickle: true")
    code, errors, _ = _cli(["validate", "-c", str(config)], capsys)
    assert (code, errors) == (0, [])


def test_the_weight_check_leaves_an_onnx_checkpoint_with_its_own_graph_alone(pickle_only, tmp_path):
    """onnxruntime runs a shipped model.onnx without loading the torch weights; without one it exports from them."""
    from nlpflow import ModelConfig, ModelError
    from nlpflow.plugins.onnx_backend import OnnxRuntimeBackend

    folder = tmp_path / "with-graph"
    shutil.copytree(pickle_only, folder)
    model = ModelConfig(name_or_path=str(folder))
    with pytest.raises(ModelError, match="has no safetensors weights"):
        OnnxRuntimeBackend().check_model(model)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"")
    OnnxRuntimeBackend().check_model(model)


def _corrupted_config(tmp_path: Path, bert_classifier: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(bert_classifier, folder)
    text = (folder / "config.json").read_text(encoding="utf-8")
    (folder / "config.json").write_text(text[: len(text) // 2], encoding="utf-8")  # cut short, as by a full disk
    return folder


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_model_folder_whose_config_json_does_not_parse_says_so(command, bert_classifier, tmp_path, capsys):
    folder = _corrupted_config(tmp_path, bert_classifier)
    config = _model_pipeline(tmp_path, folder)
    code, errors, _ = _cli(_run_or_validate(command, config, tmp_path), capsys)
    assert code == 4
    [line] = errors
    with pytest.raises(json.JSONDecodeError) as parser:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    reason = f"{parser.value.msg} at line {parser.value.lineno} column {parser.value.colno}"
    assert line == (
        f"error: {config}:5:5: pipeline 't': model {str(folder)!r}: its config.json ({folder / 'config.json'}) could not "
        f"be parsed: {reason}. The file is damaged or was cut short; replace it with a good copy (save_pretrained writes one)"
    )
    assert "not available" not in line and "hf download" not in line


def test_a_cached_hub_model_whose_config_json_does_not_parse_says_so(bert_classifier, tmp_path, monkeypatch):
    """In the Hugging Face cache the way out is fetching the file again, not fetching a model said to be missing."""
    from huggingface_hub import constants

    from nlpflow import ModelConfig, ModelError
    from nlpflow.plugins.torch_backend import TorchBackend

    snapshot = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(_corrupted_config(tmp_path, bert_classifier), snapshot)
    (tmp_path / "hub" / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny" / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as caught:
        TorchBackend().checkpoint_config(ModelConfig(name_or_path="someone/tiny"))
    message = str(caught.value)
    assert message.startswith(f"model 'someone/tiny': its config.json ({snapshot / 'config.json'}) could not be parsed: ")
    assert message.endswith("fetch it again with `hf download someone/tiny --force-download`")


@needs_fifo
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_fifo_that_slips_past_the_check_stops_the_run_without_hanging(on_error, tmp_path, capsys, monkeypatch):
    """As if the pipe appeared after the pipeline was resolved: the reader reports it (a bad record), and a run that
    skips it still writes no report, since data.sha256 cannot cover it; neither opens the pipe, which would wait."""
    import signal

    import nlpflow.config.resolve

    folder = _data_with_a_fifo(tmp_path)
    monkeypatch.setattr(nlpflow.config.resolve, "irregular_kind", lambda path: None)
    config = _given_predictions(tmp_path, "data/*.jsonl", on_error)
    out = tmp_path / "out"

    def hung(*_):
        raise AssertionError("the run opened the named pipe and waited for a writer")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        code, errors, _ = _cli(["run", "t", "-c", str(config), "-o", str(out), "--no-cache"], capsys)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    fifo = folder / "b.jsonl"
    assert code == 3
    assert errors == [
        f"error: {fifo}:1: pipeline 't': this is a named pipe (FIFO), which can be read only once, not a data file "
        "(set data.on_error: skip to skip such records)"
        if on_error == "fail" else
        f"error: {fifo}: pipeline 't': this file of the data is a named pipe (FIFO), which can be read only once, not a "
        "data file, so the data cannot be fingerprinted"
    ]
    assert not (out / "t" / "report.json").exists()
