"""A broken plugin is named in the error, and the other plugins keep working."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nlpflow import hookimpl
from nlpflow.cli import main
from nlpflow.contract.errors import PluginError
from nlpflow.registry import load_registry
import numpy as np

from nlpflow import Backend, Example, Features, LoadedModel, Metric, Prediction, Task, TaskModel

DATA = '{"text": "good", "label": "positive", "prediction": "positive"}\n{"text": "bad", "label": "negative", "prediction": "negative"}\n'


def _install_plugin(root: Path, monkeypatch, name: str, module_name: str, source: str) -> None:
    """Install a third-party plugin the way pip would: a module plus a dist-info with an nlpflow entry point."""
    (root / f"{module_name}.py").write_text(source, encoding="utf-8")
    dist = root / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[nlpflow]\n{name} = {module_name}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module_name, raising=False)


def _sentiment_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "d.jsonl").write_text(DATA, encoding="utf-8")
    config = tmp_path / "p.yaml"
    config.write_text(f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: d.jsonl}}\n    report: {{formats: [json]}}\n{extra}", encoding="utf-8")
    return config


BROKEN_PLUGINS = {
    "import_error": ("import nonexistent_module_xyz\n", 'Error importing plugin "broken": ModuleNotFoundError: No module named \'nonexistent_module_xyz\''),
    "raises_in_hook": (
        "from nlpflow import hookimpl\n@hookimpl\ndef register_tasks(register):\n    raise RuntimeError('boom')\n",
        "plugin 'broken': raised in register_tasks: RuntimeError: boom",
    ),
    "wrong_type": (
        "from nlpflow import hookimpl\n@hookimpl\ndef register_metrics(register):\n    register(object)\n",
        "plugin 'broken': register_metrics registered <class 'object'>, which is not a subclass of nlpflow.Metric",
    ),
    "misspelled_hook": (
        "from nlpflow import hookimpl\n@hookimpl\ndef register_taskz(register):\n    pass\n",
        "plugin 'broken': rejected: unknown hook 'register_taskz'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_PLUGINS))
def test_broken_third_party_plugin_is_named_and_sentiment_still_runs(kind, tmp_path, monkeypatch, capsys):
    source, expected = BROKEN_PLUGINS[kind]
    (tmp_path / "site").mkdir()
    _install_plugin(tmp_path / "site", monkeypatch, "broken", f"nlpflow_broken_{kind}", source)
    registry = load_registry()
    failures = [f for f in registry.failures if f.plugin == "broken"]
    assert len(failures) == 1
    assert expected in str(failures[0])
    assert registry.provider("task", "sentiment") == "classification"

    config = _sentiment_config(tmp_path)
    assert main(["run", "t", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {failures[0]}" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "out" / "t" / "report.json").read_text())["counts"]["predicted"] == 2

    # --disable-plugin and the environment variable block it: no warning at all
    assert main(["--disable-plugin", "broken", "run", "t", "--config", str(config), "--output", str(tmp_path / "out2"), "--no-cache"]) == 0
    assert "broken" not in capsys.readouterr().err
    monkeypatch.setenv("NLPFLOW_DISABLE_PLUGINS", "other, broken")
    assert main(["run", "t", "--config", str(config), "--output", str(tmp_path / "out3"), "--no-cache"]) == 0
    assert "broken" not in capsys.readouterr().err


def test_third_party_plugin_cannot_take_over_a_builtin_name(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()
    source = (
        "from nlpflow import hookimpl\nfrom plugins.classification import Sentiment\n"
        "class Again(Sentiment):\n    pass\n@hookimpl\ndef register_tasks(register):\n    register(Again)\n"
    )
    _install_plugin(tmp_path / "site", monkeypatch, "broken", "nlpflow_broken_duplicate", source)
    registry = load_registry()
    assert registry.provider("task", "sentiment") == "classification"
    assert [str(f) for f in registry.failures if f.plugin == "broken"] == [
        "plugin 'broken': task 'sentiment' is already registered by plugin 'classification'"
    ]


def test_unknown_task_mentions_plugins_that_failed(tmp_path, monkeypatch, capsys):
    (tmp_path / "site").mkdir()
    _install_plugin(tmp_path / "site", monkeypatch, "ner", "nlpflow_ner_broken", "raise ImportError('needs torch-crf')\n")
    config = tmp_path / "p.yaml"
    (tmp_path / "d.jsonl").write_text(DATA)
    config.write_text("pipelines:\n  t:\n    task: ner\n    data: {path: d.jsonl}\n")
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if l.startswith("error:")][0]
    assert line.startswith(f"error: {config}:3:5: pipeline 't': unknown task 'ner'.")
    assert line.endswith("(plugins that failed to load and may provide it: 'ner')")


def test_disabling_a_builtin_plugin(tmp_path, capsys):
    config = _sentiment_config(tmp_path)
    assert main(["--disable-plugin", "classification", "run", "--config", str(config), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"error: {config}:3:5: pipeline 't': unknown task 'sentiment'." in err


# --- a task whose model stages misbehave -------------------------------------------------------


class FakeModel(TaskModel):
    def __init__(self, loaded, fault: str):
        super().__init__(loaded)
        self.fault = fault

    def encode(self, examples):
        if self.fault == "encode":
            raise RuntimeError("tokenizer exploded")
        return [Features(i, {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}) for i, _ in enumerate(examples)]

    def decode(self, example, features, outputs):
        if self.fault == "decode-type" and example.index == 1:
            return "positive"
        if self.fault == "decode-json" and example.index == 1:
            return Prediction("positive", {"bad": {1, 2}})
        return Prediction("positive")


def _faulty_plugin(fault: str) -> tuple[type[Task], type[Backend]]:
    """A task and a backend (no torch, no checkpoint) that fail at the step named by ``fault``."""

    class FakeBackend(Backend):
        name = "fake"
        heads = ("sequence-classification",)

        def load_head(self, model, head, *, require_fast_tokenizer=True):
            tokenizer = type("Tokenizer", (), {"pad_token_id": 0, "model_max_length": 8})()
            return LoadedModel(tokenizer=tokenizer, checkpoint=None, config=model, head=head, backend=self, handle=None,
                               name_or_path=model.name_or_path, path=model.name_or_path, fingerprint="fake")

        def run(self, loaded, prepared, **options):
            if fault == "forward":
                raise ValueError("shape mismatch")
            return {"logits": np.zeros((len(prepared["input_ids"]), 2), dtype=np.float32)}

    class Faulty(Task):
        name = "faulty"
        input_fields = ("text",)
        reference_fields = ("label",)
        default_metrics = ("same",)

        def check_example(self, example: Example) -> None:
            if fault == "check" and example.index == 1:
                raise KeyError("oops")
            super().check_example(example)

        def load(self, model, backend):
            if fault == "load":
                raise RuntimeError("no weights here")
            return FakeModel(backend.load(model, "sequence-classification"), fault)

    return Faulty, FakeBackend


class Same(Metric):
    name = "same"

    def example_stats(self, predictions, references):
        return np.array([[float(p == r)] for p, r in zip(predictions, references)]).reshape(-1, 1)

    def score(self, stats):
        return float(stats.mean())


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("check", "plugin 'faulty_plugin': task 'faulty' raised in check_example on record 1 ({data}:2): KeyError: 'oops'"),
        ("encode", "plugin 'faulty_plugin': task 'faulty' failed on records 0-1 (lines 1-2 of {data}) in pipeline 't': RuntimeError: tokenizer exploded"),
        ("forward", "plugin 'faulty_plugin': task 'faulty' failed on records 0-1 (lines 1-2 of {data}) in pipeline 't': ValueError: shape mismatch"),
        ("decode-type", "plugin 'faulty_plugin': task 'faulty': decode returned str for record 1 ({data}:2), expected Prediction"),
        ("decode-json", "plugin 'faulty_plugin': task 'faulty': decode returned a prediction for record 1 ({data}:2) that cannot be written as JSON"),
        ("load", "error: {config}:5:5: pipeline 't': task 'faulty' could not load model 'm': RuntimeError: no weights here"),
    ],
)
def test_task_faults_name_plugin_task_and_record(fault, expected, tmp_path, monkeypatch, capsys):
    task, backend = _faulty_plugin(fault)

    class Plugin:
        @hookimpl
        def register_tasks(self, register):
            register(task)

        @hookimpl
        def register_backends(self, register):
            register(backend)

        @hookimpl
        def register_metrics(self, register):
            register(Same)

    registry = load_registry(extra_plugins=[("faulty_plugin", Plugin())])
    data = tmp_path / "d.jsonl"
    data.write_text(DATA)
    config = tmp_path / "p.yaml"
    config.write_text("pipelines:\n  t:\n    task: faulty\n    data: {path: d.jsonl}\n    model: {name_or_path: m, backend: fake}\n    report: {formats: [json]}\n")
    from nlpflow.cli import _parser, _run

    # the command line as parsed, so every run flag has its default
    args = _parser().parse_args(["run", "t", "-c", str(config), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(Exception) as caught:
        _run(args, registry)
    message = str(caught.value)
    if fault == "load":
        assert f"error: {message}" == expected.format(config=config)
    else:
        assert isinstance(caught.value, PluginError)
        assert message.startswith(expected.format(data=data))
    assert not (tmp_path / "out" / "t" / "predictions.jsonl").exists()
    assert not list((tmp_path / "out" / "t").glob(".*partial"))


def test_an_exception_in_decode_names_the_record_and_line(bert_classifier, tmp_path, write_pipelines, monkeypatch):
    from nlpflow.plugins.classification import SequenceClassifier

    original = SequenceClassifier.decode

    def failing_decode(self, example, features, outputs):
        if example.index == 2:
            raise KeyError("boom")
        return original(self, example, features, outputs)

    monkeypatch.setattr(SequenceClassifier, "decode", failing_decode)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "text number {i}", "label": "positive"}}\n' for i in range(5)))
    config = write_pipelines(
        f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: d.jsonl}}\n    options: {{labels: [negative, positive]}}\n"
        f"    model: {{name_or_path: {bert_classifier}}}\n    report: {{formats: [json]}}\n"
    )
    from nlpflow.api import run
    from nlpflow.contract.errors import PluginError

    with pytest.raises(PluginError) as caught:
        run(["t"], config, tmp_path / "out", use_cache=False)
    assert str(caught.value) == (
        f"plugin 'classification': task 'sentiment' raised in decode on record 2 ({data}:3) in pipeline 't': KeyError: 'boom'"
    )


@pytest.mark.parametrize("key", ["value", "ci", "n", "scale", "higher_is_better", "signature", "options"])
def test_details_cannot_overwrite_core_keys_of_a_metric_entry(key, tmp_path, write_pipelines):
    from nlpflow.api import run

    class Overreaching(Metric):
        name = "overreaching"
        tasks = ("sentiment",)

        def example_stats(self, predictions, references):
            return np.array([[float(p == r)] for p, r in zip(predictions, references)])

        def score(self, stats):
            return float(stats[:, 0].mean())

        def details(self, stats):
            return {key: 1.0, "extra": "fine"}

    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register(Overreaching)

    (tmp_path / "scored.csv").write_text("text,label,prediction\nnice,positive,positive\nawful,negative,positive\n")
    config = write_pipelines(
        "pipelines:\n  scored:\n    task: sentiment\n    data: {path: scored.csv}\n    metrics: [accuracy, overreaching]\n"
        "    report: {formats: [json]}\n"
    )
    registry = load_registry(extra_plugins=[("overreaching_plugin", Plugin())])
    with pytest.raises(PluginError) as caught:
        run(["scored"], config, tmp_path / "out", use_cache=False, registry=registry)
    message = str(caught.value)
    assert caught.value.plugin == "overreaching_plugin"
    assert message.startswith("plugin 'overreaching_plugin': metric 'overreaching' (")
    assert f"details() returned {key!r}, which nlpflow computes itself" in message
