"""`nlpflow init`: a commented pipelines.yaml from a task and a data file, which validates; never overwrites."""

from __future__ import annotations

import yaml

from nlpflow.cli import main

from tests.conftest import REPO


def test_init_fills_fields_and_labels_from_the_data_and_validates(tmp_path, capsys):
    (tmp_path / "tickets.csv").write_text("id,body,queue\n1,my card was charged twice,billing\n2,app crashes on start,bug\n"
                                          "3,refund please,billing\n", encoding="utf-8")
    target = tmp_path / "pipelines.yaml"
    assert main(["init", "text-classification", str(tmp_path / "tickets.csv"), "-o", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# Written by `nlpflow init text-classification")
    pipeline = yaml.safe_load(text)["pipelines"]["tickets-text-classification"]
    assert pipeline["data"] == {"path": "tickets.csv"}
    assert pipeline["fields"] == {"text": "body", "label": "queue"}
    assert pipeline["options"] == {"labels": {"billing": ["billing"], "bug": ["bug"]}}
    assert pipeline["model"]["name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    capsys.readouterr()
    assert main(["validate", "-c", str(target)]) == 0
    assert "pipeline 'tickets-text-classification' ok" in capsys.readouterr().out


def test_init_keeps_default_sentiment_labels_and_rule_based_summaries(tmp_path, capsys):
    target = tmp_path / "sentiment.yaml"
    assert main(["init", "sentiment", str(REPO / "examples/data/reviews.jsonl"), "-o", str(target)]) == 0
    pipeline = yaml.safe_load(target.read_text())["pipelines"]["reviews-sentiment"]
    assert pipeline["fields"] == {"text": "review", "label": "stars"} and "options" not in pipeline  # positive/negative: defaults
    target = tmp_path / "news.yaml"
    assert main(["init", "summarization", str(REPO / "examples/data/news_summaries.jsonl"), "-o", str(target), "--name", "news"]) == 0
    pipeline = yaml.safe_load(target.read_text())["pipelines"]["news"]
    assert pipeline["options"] == {"method": "lead", "sentences": 3} and "model" not in pipeline
    assert main(["validate", "-c", str(target)]) == 0


def test_init_never_overwrites(tmp_path, capsys):
    target = tmp_path / "pipelines.yaml"
    target.write_text("# mine\n", encoding="utf-8")
    assert main(["init", "sentiment", str(REPO / "examples/data/reviews.jsonl"), "-o", str(target)]) == 2
    assert f"error: {target}: the file already exists; nlpflow init never overwrites a file" in capsys.readouterr().err
    assert target.read_text() == "# mine\n"


def test_init_names_the_columns_when_no_input_column_fits(tmp_path, capsys):
    (tmp_path / "numbers.jsonl").write_text('{"a": 1, "b": 2}\n', encoding="utf-8")
    assert main(["init", "sentiment", str(tmp_path / "numbers.jsonl"), "-o", str(tmp_path / "p.yaml")]) == 2
    assert "looks like field 'text' of task 'sentiment'; its columns are a, b" in capsys.readouterr().err and not (tmp_path / "p.yaml").exists()
