"""`nlpflow run` overrides without editing the YAML: --limit, --device, --batch-size, --model, --set, --json,
--keep-going, and the same keys in nlpflow.run()."""

from __future__ import annotations

import json

import pytest

import nlpflow
from nlpflow.cli import main
from nlpflow.contract.errors import ConfigError, PipelinesFailed

from tests.conftest import REPO

NEWS = REPO / "examples/data/news_summaries.jsonl"
REVIEWS = REPO / "examples/data/reviews.jsonl"


@pytest.fixture
def config(write_pipelines, tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"document": "One. Two.", "summary": "One."}\n{"summary": "no document"}\n', encoding="utf-8")
    return write_pipelines(
        "pipelines:\n"
        "  lead:\n"
        "    task: summarization\n"
        f"    data: {{path: {NEWS}}}\n"
        "    options: {method: lead, sentences: 3}\n"
        "  broken:\n"
        "    task: summarization\n"
        "    data: {path: broken.jsonl}\n"
        "    options: {method: lead}\n"
        "  sentiment:\n"
        "    task: sentiment\n"
        "    default: false\n"
        f"    data: {{path: {REVIEWS}}}\n"
        "    fields: {text: review, label: stars}\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )


def _cli(config, tmp_path, *arguments):
    return main(["run", "-c", str(config), "-o", str(tmp_path / "out"), "--no-cache", *arguments])


def test_limit_reads_only_the_first_records(config, tmp_path):
    [result] = nlpflow.run(["lead"], config, tmp_path / "out", use_cache=False, interactive=False, overrides=nlpflow.Overrides(limit=5))
    assert result.report["counts"]["read"] == 5
    assert _cli(config, tmp_path, "lead", "--limit", "3") == 0
    assert json.loads((tmp_path / "out/lead/report.json").read_text())["counts"]["read"] == 3


def test_set_overrides_a_setting_parsed_as_yaml(config, tmp_path):
    [result] = nlpflow.run(["lead"], config, tmp_path / "out", use_cache=False, interactive=False,
                           overrides=nlpflow.Overrides(set=["lead.options.sentences=1"]))
    assert result.report["rule"] == "lead-1" and result.report["task_options"]["sentences"] == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("lead.options.sentences=zero", "error: --set lead.options.sentences=zero: pipeline 'lead': "),
        ("lead.chunk_size=-1", "error: --set lead.chunk_size=-1: pipeline 'lead': chunk_size: Input should be greater than 0 (got -1)"),
        ("laed.chunk_size=4", "error: --set laed.chunk_size=4: no pipeline named 'laed'. Available: broken, lead, sentiment. Did you mean 'lead'?"),
        ("lead.chunk_size", "error: --set lead.chunk_size: expected PIPELINE.KEY=VALUE"),
        ("lead.task.x=1", "error: --set lead.task.x=1: pipeline 'lead': task is not a mapping, so task.x cannot be set in it"),
    ],
)
def test_set_errors_point_at_the_flag(config, tmp_path, capsys, override, message):
    assert _cli(config, tmp_path, "lead", "--set", override) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error


def test_model_device_and_batch_size_flags(config, tmp_path, minilm_path, capsys):
    [result] = nlpflow.run(["sentiment"], config, tmp_path / "out", use_cache=False, interactive=False,
                           overrides=nlpflow.Overrides(limit=4, model=str(minilm_path), device="cpu", batch_size=2))
    model = result.report["model"]
    assert (model["name_or_path"], model["device"], model["batch_size"]) == (str(minilm_path), "cpu", 2)
    assert _cli(config, tmp_path, "sentiment", "--limit", "2", "--batch-size", "3", "--device", "cpu") == 0
    assert json.loads((tmp_path / "out/sentiment/report.json").read_text())["model"]["batch_size"] == 3
    assert _cli(config, tmp_path, "lead", "--model", str(minilm_path)) == 2
    assert "--model: none of the chosen pipelines (lead) has a model: block" in capsys.readouterr().err
    assert _cli(config, tmp_path, "sentiment", "--batch-size", "many") == 2
    assert "--batch-size must be a number or auto, got 'many'" in capsys.readouterr().err


def test_json_prints_every_pipelines_metrics(config, tmp_path, capsys):
    assert _cli(config, tmp_path, "lead", "--limit", "4", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    [entry] = printed["pipelines"]
    assert entry["pipeline"] == "lead" and set(entry["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert entry["counts"]["read"] == 4 and printed["failed"] == []


def test_keep_going_runs_the_others_then_fails_with_a_summary(config, tmp_path, capsys):
    assert _cli(config, tmp_path, "broken", "lead") == 3  # without it, the first failure stops the run
    assert not (tmp_path / "out/lead/report.json").exists()
    capsys.readouterr()
    assert _cli(config, tmp_path, "broken", "lead", "--keep-going", "--json") == 3
    captured = capsys.readouterr()
    assert (tmp_path / "out/lead/report.json").exists()
    assert "summary:" in captured.err and "lead    ok" in captured.err and "broken  FAILED (exit 3)" in captured.err
    printed = json.loads(captured.out)
    assert [p["pipeline"] for p in printed["pipelines"]] == ["lead"] and printed["failed"][0]["pipeline"] == "broken"
    with pytest.raises(PipelinesFailed) as caught:
        nlpflow.run(["broken", "lead"], config, tmp_path / "out2", use_cache=False, interactive=False, keep_going=True)
    assert [r.report["pipeline"] for r in caught.value.results] == ["lead"] and caught.value.exit_code == 3


def test_a_report_folder_that_cannot_be_created_is_an_output_error(config, tmp_path, capsys):
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    assert main(["run", "-c", str(config), "-o", str(tmp_path / "a-file"), "--no-cache", "lead"]) == 7
    assert "cannot create the report folder" in capsys.readouterr().err
