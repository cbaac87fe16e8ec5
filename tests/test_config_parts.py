"""The config's parts keep to their jobs: the file is parsed once with every override applied to it as a typed
value, resolving reads a pipeline's config without changing it, and loading plugins changes nothing outside the
registry it returns."""

from __future__ import annotations

import dataclasses

import pytest

import nlpflow
from nlpflow import Overrides, RunOptions
from nlpflow.cli import main
from nlpflow.config import loader
from nlpflow.config.loader import parse_config
from nlpflow.config.resolve import resolve
from nlpflow.contract import hub
from nlpflow.registry import load_registry

from tests.conftest import REPO

NEWS = REPO / "examples/data/news_summaries.jsonl"


@pytest.fixture
def config(write_pipelines):
    return write_pipelines(
        "pipelines:\n"
        "  lead:\n"
        "    task: summarization\n"
        f"    data: {{path: {NEWS}, limit: 6}}\n"
        "    options: {method: lead}\n"
        "  sentiment:\n"
        "    task: sentiment\n"
        "    default: false\n"
        f"    data: {{path: {REPO / 'examples/data/reviews.jsonl'}}}\n"
        "    fields: {text: review, label: stars}\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )


def test_the_file_is_parsed_once_with_flags_and_sets(config, tmp_path, monkeypatch):
    parsed = []
    real = loader.parse_config
    monkeypatch.setattr(loader, "parse_config", lambda *args, **kwargs: parsed.append(args) or real(*args, **kwargs))
    overrides = Overrides(limit=3, set=["lead.options.sentences=1"])
    [result] = nlpflow.run(["lead"], config, tmp_path / "out", options=RunOptions(use_cache=False, interactive=False, overrides=overrides))
    assert len(parsed) == 1
    assert result.report["counts"]["read"] == 3 and result.report["task_options"]["sentences"] == 1


def test_set_is_applied_after_the_flags(config, tmp_path):
    overrides = Overrides(limit=4, set=["lead.data.limit=2"])
    [result] = nlpflow.run(["lead"], config, tmp_path / "out", use_cache=False, interactive=False, overrides=overrides)
    assert result.report["counts"]["read"] == 2


@pytest.mark.parametrize("arguments, message", [
    (["sentiment", "--device", "gpu"], "error: --device: pipeline 'sentiment': model.device: must be auto, cpu, mps, cuda or cuda:N (got 'gpu')"),
    (["lead", "--limit", "0"], "error: --limit: pipeline 'lead': data.limit: Input should be greater than 0 (got 0)"),
    (["sentiment", "--batch-size", "0"], "error: --batch-size: pipeline 'sentiment': model.batch_size: "),
    (["lead", "--device", "cpu"], "error: --device: none of the chosen pipelines (lead) has a model: block"),
])
def test_a_bad_flag_value_is_an_error_at_its_flag(config, tmp_path, capsys, arguments, message):
    assert main(["run", "-c", str(config), "-o", str(tmp_path / "out"), "--no-cache", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "--set" not in err  # a flag is never turned into --set text


def test_run_keywords_are_run_options_fields(config, tmp_path):
    with pytest.raises(TypeError, match="unknown options limit; the options are RunOptions' fields: .*overrides"):
        nlpflow.run(["lead"], config, tmp_path / "out", limit=2)
    options = RunOptions(use_cache=False, overrides=Overrides(set=["lead.options.sentences=2"]))
    assert dataclasses.replace(options, interactive=False).overrides.set == ("lead.options.sentences=2",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.use_cache = True  # type: ignore[misc]


def test_resolve_leaves_the_config_as_it_was(tmp_path, registry):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "positive", "domain": "x", "lang": "en"}\n', encoding="utf-8")
    text = (
        "pipelines:\n  s:\n    task: sentiment\n    data: {path: d.jsonl}\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
        "    report: {formats: [json, {html: {slice_by: [domain, lang]}}], slice_by: [lang]}\n"
    )
    [pipeline] = parse_config(text, tmp_path / "p.yaml").values()
    before = pipeline.model_dump()
    first, second = resolve(pipeline, registry), resolve(pipeline, registry)
    assert pipeline.model_dump() == before and pipeline.report.slice_by == ["lang"] and pipeline.model.folder is None
    assert first.slice_by == second.slice_by == ["lang", "domain"]


def test_embedded_models_come_from_the_registry_and_loading_writes_no_other_module(tmp_path, minilm_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "positive"}\n', encoding="utf-8")
    text = "pipelines:\n  s:\n    task: sentiment\n    data: {path: d.jsonl}\n    model: {name_or_path: all-MiniLM-L6-v2}\n"
    [pipeline] = parse_config(text, tmp_path / "p.yaml").values()
    hub_globals = {name: repr(value) for name, value in vars(hub).items()}
    with_embedded = load_registry()
    without = load_registry(["embedded_models"])
    assert {name: repr(value) for name, value in vars(hub).items()} == hub_globals
    assert resolve(pipeline, with_embedded).config.model.folder == str(minilm_path)
    # the registry loaded last has no embedded models, and it alone decides
    assert resolve(pipeline, without).config.model.folder is None
    assert hub.resolve_model_path(resolve(pipeline, with_embedded).config.model) == str(minilm_path)
