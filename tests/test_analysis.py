"""Error analysis in report.json and report.md: examples ranked by a metric that varies, slices with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlpflow.api import run
from nlpflow.cli import main


def _qa_run(tmp_path: Path, report: str = "{formats: [json, markdown]}"):
    # exact match is 0 on every record; F1 tells the near misses (q1: 0.67, q3: 0.5) from the miss (q2: 0)
    records = [
        {"id": "q1", "context": "Paris is the capital of France.", "question": "Capital?", "answers": ["Paris"], "prediction": "Paris is"},
        {"id": "q2", "context": "The sky is blue today.", "question": "Colour?", "answers": ["blue"], "prediction": "green"},
        {"id": "q3", "context": "Water boils at one hundred degrees.", "question": "When?", "answers": ["one hundred degrees"], "prediction": "hundred"},
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"pipelines:\n  qa:\n    task: question-answering\n    data: {{path: qa.jsonl}}\n    report: {report}\n", encoding="utf-8"
    )
    [result] = run(["qa"], config, tmp_path / "out", use_cache=False)
    return result


def test_examples_are_ranked_by_the_first_metric_whose_scores_vary(tmp_path):
    analysis = _qa_run(tmp_path).report["analysis"]
    assert analysis["rank_by"] == "f1" and analysis["rank_by_varies"] is True
    # the top scorer is not among the worst, nor the lowest among the best
    assert [item["id"] for item in analysis["worst"]] == ["q2", "q3"]
    assert [item["id"] for item in analysis["best"]] == ["q1", "q3"]
    assert analysis["worst"][0]["inputs"] == {"context": "The sky is blue today.", "question": "Colour?"}
    assert analysis["worst"][0]["prediction"] == "green"


def test_rank_by_picks_the_metric_and_an_unknown_one_is_a_config_error(tmp_path, capsys):
    analysis = _qa_run(tmp_path, "{formats: [json], rank_by: exact_match}").report["analysis"]
    # all exact matches are 0: nothing to rank, so no worst/best lists rather than an arbitrary order
    assert analysis["rank_by"] == "exact_match" and analysis["rank_by_varies"] is False and analysis["worst"] == []
    config = tmp_path / "pipelines.yaml"
    config.write_text(config.read_text().replace("rank_by: exact_match", "rank_by: f2"), encoding="utf-8")
    assert main(["validate", "--config", str(config)]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error == [
        f"error: {config}:5:31: pipeline 'qa': report.rank_by: 'f2' is not one of this pipeline's metrics. "
        "Available: exact_match, f1. Did you mean 'f1'?"
    ]


def test_slices_are_the_metric_on_each_slices_rows_with_an_interval(tmp_path):
    texts = ["good"] * 6 + ["this one is a much longer review text"] * 4
    records = [
        {"text": text, "label": "positive", "prediction": "positive" if n % 2 == 0 or n < 6 else "negative",
         "domain": "books" if n < 6 else "films"}
        for n, text in enumerate(texts)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "pipelines:\n  t:\n    task: sentiment\n    data: {path: data.jsonl}\n    metrics: [accuracy]\n"
        "    report: {formats: [json, markdown], slice_by: [domain]}\n",
        encoding="utf-8",
    )
    [result] = run(["t"], config, tmp_path / "out", use_cache=False)
    length, domain = result.report["analysis"]["slices"]
    assert length["column"] == "length" and length["unit"] == "words of 'text'"
    assert [(s["value"], s["n"], s["metrics"]["accuracy"]["value"]) for s in length["slices"]] == [("0-4", 6, 1.0), ("5-9", 4, 0.5)]
    assert [(s["value"], s["n"], s["metrics"]["accuracy"]["value"]) for s in domain["slices"]] == [("books", 6, 1.0), ("films", 4, 0.5)]
    films = domain["slices"][1]["metrics"]["accuracy"]["ci"]
    assert films["low"] < 0.5 < films["high"]
    markdown = (result.directory / "report.md").read_text(encoding="utf-8")
    assert "## Slices by domain" in markdown
    assert "| films | 4 | 0.5000 [" in markdown
    assert "## Worst examples by accuracy" in markdown


def test_confidence_is_the_first_numeric_confidence_detail():
    from nlpflow.contract.report_terms import confidence

    # QA's span probability over its raw span score; a zero-shot classifier's similarity; nothing numeric: none
    assert confidence({"score": 3.2, "probability": 0.8, "start": 0}) == {"confidence": 0.8, "confidence_of": "probability"}
    assert confidence({"similarity": 0.41, "scores": {"a": 0.41}}) == {"confidence": 0.41, "confidence_of": "similarity"}
    assert confidence({"probability": None, "score": True}) == {}
    assert confidence(None) == {}


def test_ranked_keeps_extremes_earliest_first(monkeypatch):
    from nlpflow.engine import analysis

    monkeypatch.setattr(analysis, "RANKED_EXAMPLES", 3)
    ranked = analysis._Ranked()
    kept = []
    for index, score in enumerate([0.5, 0.1, 0.9, 0.1, 0.3, 1.0, 0.9, 0.1, 0.2, 0.9]):
        if ranked.note(score, 0.0, index):
            kept.append(index)
            ranked.offer(score, 0.0, index, {"index": index, "score": score})
    assert [item["index"] for item in ranked.worst()] == [1, 3, 7]
    assert [item["index"] for item in ranked.best()] == [5, 2, 6]
    # after the heaps fill, only strictly better scores are offered: not 0.2 (index 8) nor a third 0.9
    assert 8 not in kept and 9 not in kept and ranked.minimum == 0.1 and ranked.maximum == 1.0
