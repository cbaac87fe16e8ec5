"""Plugin discovery, registration, blocking, the example third-party package, and README/hookspec sync."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nlpflow import hookimpl, hookspecs
from nlpflow.contract.errors import ConfigError, ValidationFailed
from nlpflow.registry import KINDS, load_registry
from nlpflow.contract.types import Metric, Task

from tests.conftest import REPO

BUILTIN_PLUGINS = {"readers", "reports", "spacy_steps", "classification", "translation", "question_answering", "summarization"}


def test_every_hookspec_has_a_docstring_and_a_kind(pm):
    specs = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert set(specs) == set(KINDS) | {"register_embedded_models", "register_heads"}
    for name in specs:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "Called" in doc, f"{name} needs a docstring saying when it is called"
        assert pm.hook.__dict__.get(name) is not None or hasattr(pm.hook, name)


def test_readme_documents_exactly_the_hooks_in_hookspecs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- hooks:start -->")[1].split("<!-- hooks:end -->")[0]
    documented = set(re.findall(r"`(register_\w+)\(register\)`", table))
    specs = {name for name in dir(hookspecs) if name.startswith("register_")}
    assert documented == specs
    import inspect

    for name in specs:
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == ["register"]


def test_builtin_plugins_load_through_entry_points(registry):
    loaded = {p.name for p in registry.plugins}
    assert BUILTIN_PLUGINS <= loaded, f"missing: {BUILTIN_PLUGINS - loaded}; failures: {registry.failures}"
    assert not [f for f in registry.failures if f.plugin in BUILTIN_PLUGINS]
    for task in ("sentiment", "text-classification", "translation", "question-answering", "summarization"):
        assert task in registry.names("task")
    for metric in ("accuracy", "macro_f1", "bleu", "chrf", "ter", "exact_match", "f1", "rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert metric in registry.names("metric")
    assert {"jsonl", "csv", "tsv"} <= set(registry.names("reader"))
    assert {"json", "markdown", "html"} <= set(registry.names("reporter"))
    assert {"normalize", "sentences", "truncate", "lemmas", "entities"} <= set(registry.names("preprocessor"))


class Echo(Task):
    name = "echo"
    input_fields = ("text",)
    reference_fields = ("label",)
    default_metrics = ("exact",)

    def load(self, model, backend):  # pragma: no cover - echo is only scored from given predictions
        raise NotImplementedError


class Exact(Metric):
    name = "exact"

    def example_stats(self, predictions, references):
        import numpy as np

        return np.array([[float(p == r)] for p, r in zip(predictions, references)]).reshape(-1, 1)

    def score(self, stats):
        return float(stats.mean())


class InlinePlugin:
    """A plugin defined in Python, with a hook implementation taking the spec's argument."""

    @hookimpl
    def register_tasks(self, register):
        register(Echo)

    @hookimpl
    def register_metrics(self, register):
        register(Exact)


def test_inline_plugin_registers_and_runs(tmp_path, write_pipelines):
    registry = load_registry(extra_plugins=[("inline", InlinePlugin())])
    assert registry.provider("task", "echo") == "inline"
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x", "prediction": "x"}\n{"text": "b", "label": "y", "prediction": "z"}\n')
    config = write_pipelines("pipelines:\n  p:\n    task: echo\n    data: {path: d.jsonl}\n    report: {formats: [json]}\n")
    from nlpflow.api import run

    [result] = run(["p"], config, tmp_path / "out", registry=registry, use_cache=False)
    assert result.report["metrics"]["exact"]["value"] == 0.5
    assert result.report["task_plugin"] == "inline"


def test_hook_implementation_may_take_fewer_arguments(pm):
    class NoArgs:
        @hookimpl
        def register_tasks(self):
            self.called = True

    plugin = NoArgs()
    registry = load_registry(extra_plugins=[("noargs", plugin)])
    assert plugin.called
    assert "noargs" in {p.name for p in registry.plugins}


def test_misspelled_hook_is_rejected_by_name_and_others_keep_working():
    class Misspelled:
        @hookimpl
        def register_taskz(self, register):
            pass

    registry = load_registry(extra_plugins=[("typo", Misspelled())])
    assert any(f.plugin == "typo" and "register_taskz" in str(f) for f in registry.failures)
    assert "sentiment" in registry.names("task")


def test_registering_a_taken_name_names_both_plugins():
    class Clash:
        @hookimpl
        def register_tasks(self, register):
            class Fake(Echo):
                name = "sentiment"

            register(Fake)

    registry = load_registry(extra_plugins=[("clash", Clash())])
    [failure] = [f for f in registry.failures if f.plugin == "clash"]
    assert "already registered by plugin 'classification'" in str(failure)


def test_disable_plugin_by_argument_and_environment(monkeypatch):
    registry = load_registry(disabled=["summarization"])
    assert "summarization" not in registry.names("task")
    monkeypatch.setenv("NLPFLOW_DISABLE_PLUGINS", "translation, question_answering")
    registry = load_registry()
    assert "translation" not in registry.names("task")
    assert "question-answering" not in registry.names("task")
    assert "sentiment" in registry.names("task")


def test_unknown_task_suggests_the_closest(registry, write_pipelines, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    config = write_pipelines("pipelines:\n  p:\n    task: sentimnet\n    data: {path: d.jsonl}\n")
    from nlpflow.api import validate

    with pytest.raises(ValidationFailed) as caught:
        validate(config, registry=registry)
    [problem] = caught.value.problems
    assert isinstance(problem, ConfigError)
    assert re.match(rf"{re.escape(str(config))}:3:\d+: pipeline 'p': unknown task 'sentimnet'\.", str(problem))
    assert "Did you mean 'sentiment'?" in str(problem)


def test_cli_plugins_and_tasks_json(capsys):
    from nlpflow.cli import main

    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert by_name["classification"]["version"]
    assert by_name["classification"]["hooks"] == ["register_metrics", "register_tasks"]
    assert main(["tasks", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert {"name": "sentiment", "plugin": "classification"}.items() <= next(t for t in tasks["task"] if t["name"] == "sentiment").items()


@pytest.fixture(scope="module")
def keywords_installed():
    """Install examples/nlpflow-keywords into this environment with pip, as a user would; remove it after."""
    package = REPO / "examples" / "nlpflow-keywords"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(package)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    yield package
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "nlpflow-keywords"], check=True, capture_output=True)


def _nlpflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "nlpflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_example_plugin_is_discovered_listed_and_runs_from_yaml(keywords_installed, tmp_path):
    plugins = _nlpflow("plugins", "--json", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    by_name = {p["name"]: p for p in json.loads(plugins.stdout)["plugins"]}
    assert by_name["keywords"]["version"] == "0.1.0"
    assert by_name["keywords"]["hooks"] == ["register_metrics", "register_tasks"]

    tasks = json.loads(_nlpflow("tasks", "--json", cwd=tmp_path).stdout)
    assert {"name": "keywords", "plugin": "keywords"}.items() <= next(t for t in tasks["task"] if t["name"] == "keywords").items()

    result = _nlpflow("run", "--config", str(keywords_installed / "pipelines.yaml"), "--output", str(tmp_path / "out"), "--no-cache", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "keywords-demo" / "report.json").read_text())
    assert report["task_plugin"] == "keywords"
    assert 0 < report["metrics"]["keyword_f1"]["value"] <= 1
    lines = (tmp_path / "out" / "keywords-demo" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(12))
    assert all(len(json.loads(line)["prediction"]) == 3 for line in lines)
