"""Mistakes a newcomer met: a bad record past validate's first look, a model folder beside the pipelines file,
``init`` without a backend choice, ``plugins --json | head``, a half-registered plugin, an empty metric list."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

import nlpflow
from nlpflow import Metric, Task, hookimpl
from nlpflow.cli import main
from nlpflow.config.loader import parse_config
from nlpflow.config.resolve import resolve
from nlpflow.registry import load_registry
from nlpflow.plugins.torch_backend import TorchBackend

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(TorchBackend, "load_head", refuse)


def _bad_seventh_record(write_pipelines, tmp_path):
    good = [json.dumps({"text": f"review {n}", "label": "positive" if n % 2 else "negative"}) for n in range(6)]
    (tmp_path / "data.jsonl").write_text("\n".join([*good, "{not json", ""]), encoding="utf-8")
    return write_pipelines(f"pipelines:\n  s:\n    task: sentiment\n    data: {{path: data.jsonl}}\n    model: {{name_or_path: {MINILM}}}\n")


def test_validate_lists_a_bad_record_past_the_first_ones_with_a_summary(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _bad_seventh_record(write_pipelines, tmp_path)
    assert main(["validate", "-c", str(config)]) == 3
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'data.jsonl'}:7: pipeline 's': " in err, err
    assert f"{config}: 1 of 1 pipeline has problems (1 problem in all)" in err
    assert "Traceback" not in err
    with pytest.raises(nlpflow.ValidationFailed) as caught:
        nlpflow.validate(config)
    [problem] = caught.value.problems
    assert isinstance(problem, nlpflow.DataError) and problem.line == 7


def test_a_local_model_path_is_relative_to_the_pipelines_file(write_pipelines, tmp_path, sentence_encoder, monkeypatch, no_model_loads):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "encoder").symlink_to(sentence_encoder, target_is_directory=True)
    (tmp_path / "data.jsonl").write_text('{"text": "fine", "label": "positive"}\n', encoding="utf-8")
    config = write_pipelines("pipelines:\n  s:\n    task: sentiment\n    data: {path: data.jsonl}\n    model: {name_or_path: models/encoder}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # "models/encoder" is not a folder here: only beside the pipelines file
    [resolved] = nlpflow.validate(config)
    assert resolved.config.model.folder == str(tmp_path / "models" / "encoder")
    assert resolved.config.model.name_or_path == "models/encoder"  # as written, for the report


def test_init_writes_the_backend(tmp_path, capsys):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative"}\n', encoding="utf-8")
    written = tmp_path / "p.yaml"
    assert main(["init", "sentiment", str(data), "-o", str(written), "--backend", "onnxruntime"]) == 0
    [pipeline] = yaml.safe_load(written.read_text(encoding="utf-8"))["pipelines"].values()
    assert pipeline["model"]["backend"] == "onnxruntime" and pipeline["model"]["name_or_path"] == MINILM
    [pipeline] = parse_config(written.read_text(encoding="utf-8"), written).values()
    assert pipeline.model.backend == "onnxruntime"

    capsys.readouterr()
    assert main(["init", "sentiment", str(data), "-o", str(tmp_path / "q.yaml"), "--backend", "onnx"]) == 2
    assert "error: --backend: unknown backend 'onnx'. Available: " in capsys.readouterr().err
    assert not (tmp_path / "q.yaml").exists()


def test_plugins_json_into_a_closed_pipe_ends_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as `| head` is after its lines
    try:
        finished = subprocess.run(
            [sys.executable, "-c", "import sys; from nlpflow.cli import main; sys.exit(main(['plugins', '--json']))"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in finished.stderr and "BrokenPipeError" not in finished.stderr, finished.stderr
    assert finished.returncode == 141  # 128 + SIGPIPE, as a shell reports a command cut off by a pipe


class _Lonely(Task):
    name = "lonely"
    input_fields = ("text",)
    reference_fields = ("label",)
    default_metrics = ()

    def load(self, model, backend):  # pragma: no cover - only resolved here
        raise NotImplementedError


class _HalfBroken:
    """Registers a task, then something that is not a metric."""

    @hookimpl
    def register_tasks(self, register):
        register(_Lonely)

    @hookimpl
    def register_metrics(self, register):
        register(object)


def test_a_plugin_with_a_rejected_registration_is_left_out_whole(capsys):
    registry = load_registry(extra_plugins=[("half", _HalfBroken())])
    [failure] = [f for f in registry.failures if f.plugin == "half"]
    assert "register_metrics registered <class 'object'>" in str(failure)
    assert "half" not in {plugin.name for plugin in registry.plugins}
    assert "lonely" not in registry.names("task")
    assert not registry.plugin_manager.has_plugin("half")


class _LonelyOnly:
    @hookimpl
    def register_tasks(self, register):
        register(_Lonely)


def test_a_task_no_metric_scores_says_so(tmp_path):
    registry = load_registry(extra_plugins=[("lonely", _LonelyOnly())])
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "b", "prediction": "b"}\n', encoding="utf-8")
    text = "pipelines:\n  l:\n    task: lonely\n    data: {path: d.jsonl}\n    metrics: [accuracy]\n"
    [pipeline] = parse_config(text, tmp_path / "p.yaml").values()
    with pytest.raises(nlpflow.ConfigError) as caught:
        resolve(pipeline, registry)
    message = str(caught.value)
    assert "metric 'accuracy' does not apply to task 'lonely'" in message
    assert "No registered metric scores 'lonely'" in message and "Metrics for" not in message
