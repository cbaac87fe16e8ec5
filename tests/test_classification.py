"""Sentiment and text classification: zero-shot, fine-tuned heads, label mapping, and metrics against sklearn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.api import run
from nlpflow.contract.types import ModelConfig
from nlpflow.contract.errors import ModelError
from nlpflow.engine.model_stage import ModelStage
from nlpflow.contract.types import Example
from nlpflow.plugins.classification import Accuracy, ClassificationOptions, MacroF1, Sentiment, TextClassification

from tests.conftest import REPO


def _examples(texts):
    return [Example(index=i, line=i + 1, fields={"text": t}) for i, t in enumerate(texts)]


def test_zero_shot_sentiment_on_the_sample_set(tmp_path):
    """The README's main job: the embedded MiniLM, zero-shot, on the sample reviews, offline."""
    [result] = run(["reviews-sentiment"], REPO / "pipelines.yaml", tmp_path / "out", use_cache=False, interactive=False)
    report = result.report
    assert report["counts"]["read"] == report["counts"]["scored"] >= 60
    accuracy = report["metrics"]["accuracy"]["value"]
    assert accuracy >= 0.70, accuracy
    ci = report["metrics"]["accuracy"]["ci"]
    assert ci["low"] <= accuracy <= ci["high"]
    lines = (result.directory / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(len(lines)))


def test_sequence_classifier_matches_direct_model_calls(bert_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = Sentiment(ClassificationOptions(labels=["negative", "positive"]))
    task_model = task.load(ModelConfig(name_or_path=str(bert_classifier)), TorchBackend())
    texts = ["a fine film", "terrible food and slow service " * 5, "ok", "I loved every minute of it, truly"]
    predictions = ModelStage(task_model, ModelConfig(name_or_path=str(bert_classifier), batch_size=2)).run(_examples(texts))

    tokenizer = AutoTokenizer.from_pretrained(bert_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(bert_classifier).eval()
    for text, prediction in zip(texts, predictions):
        with torch.inference_mode():
            probabilities = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits, -1)[0]
        assert prediction.value == model.config.id2label[int(probabilities.argmax())]
        assert prediction.details["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_label_map_translates_model_labels(bert_classifier):
    options = ClassificationOptions(labels=["bad", "good"], label_map={"bad": "negative", "good": "positive"})
    task_model = TextClassification(options).load(ModelConfig(name_or_path=str(bert_classifier)), TorchBackend())
    assert task_model.labels == ["bad", "good"]


def test_unmappable_labels_name_both_sides(bert_classifier):
    options = ClassificationOptions(labels=["1 star", "5 stars"])
    with pytest.raises(ModelError) as caught:
        TextClassification(options).load(ModelConfig(name_or_path=str(bert_classifier)), TorchBackend())
    message = str(caught.value)
    assert "['1 star', '5 stars']" in message and "['negative', 'positive']" in message and "label_map" in message


def test_wrong_head_is_refused(bert_qa):
    with pytest.raises(ModelError, match="wrong task head: expected a \\*ForSequenceClassification checkpoint, found BertForQuestionAnswering"):
        TextClassification(ClassificationOptions(mode="sequence-classification")).load(ModelConfig(name_or_path=str(bert_qa)), TorchBackend())


def test_zero_shot_without_labels_is_a_clear_error(minilm_path):
    with pytest.raises(ModelError, match="needs options.labels"):
        TextClassification().load(ModelConfig(name_or_path=str(minilm_path)), TorchBackend())


def test_multi_label_threshold(bert_classifier):
    options = ClassificationOptions(multi_label=True, threshold=0.0)
    task_model = TextClassification(options).load(ModelConfig(name_or_path=str(bert_classifier)), TorchBackend())
    [prediction] = ModelStage(task_model, ModelConfig(name_or_path=str(bert_classifier))).run(_examples(["anything"]))
    assert prediction.value == ["negative", "positive"]  # every sigmoid probability is >= 0


CASES = [
    (["a", "b", "a", "c", "b"], ["a", "b", "b", "c", "c"]),
    (["pos"] * 6, ["pos", "neg", "pos", "neg", "pos", "neg"]),
    (["x", "y", "z", "é", "x"], ["é", "y", "z", "x", "q"]),  # a reference label never predicted, a prediction never gold
    (["1", "2"], ["1", "2"]),
]


@pytest.mark.parametrize("predictions,references", CASES)
def test_label_metrics_equal_sklearn(predictions, references):
    accuracy, macro = Accuracy(), MacroF1()
    assert accuracy.score(accuracy.example_stats(predictions, references)) == accuracy_score(references, predictions)
    stats = macro.example_stats(predictions, references)
    assert macro.score(stats) == pytest.approx(f1_score(references, predictions, average="macro", zero_division=0), abs=1e-12)
    details = macro.details(stats)
    labels = sorted(set(references) | set(predictions))
    precision, recall, f1, support = precision_recall_fscore_support(references, predictions, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert details["per_class"][label] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )
    assert details["confusion_matrix"]["labels"] == labels
    assert details["confusion_matrix"]["matrix"] == confusion_matrix(references, predictions, labels=labels).tolist()


def test_macro_f1_streams_across_chunks():
    predictions, references = CASES[2]
    metric = MacroF1()
    stats = np.concatenate([metric.example_stats(predictions[:2], references[:2]), metric.example_stats(predictions[2:], references[2:])])
    assert metric.score(stats) == pytest.approx(f1_score(references, predictions, average="macro", zero_division=0), abs=1e-12)


def test_multi_label_metrics_equal_sklearn():
    from sklearn.preprocessing import MultiLabelBinarizer

    predictions = [["a"], ["a", "b"], [], ["c"]]
    references = [["a"], ["b"], ["c"], ["c", "a"]]
    metric = MacroF1()
    binarizer = MultiLabelBinarizer().fit(predictions + references)
    expected = f1_score(binarizer.transform(references), binarizer.transform(predictions), average="macro", zero_division=0)
    assert metric.score(metric.example_stats(predictions, references)) == pytest.approx(expected, abs=1e-12)
    accuracy = Accuracy()
    assert accuracy.score(accuracy.example_stats(predictions, references)) == 0.25


def test_scoring_given_predictions_from_csv(tmp_path, write_pipelines):
    (tmp_path / "scored.csv").write_text("text,gold,system\nnice,positive,positive\nawful,negative,positive\nmeh,negative,negative\n")
    config = write_pipelines(
        "pipelines:\n  scored:\n    task: sentiment\n    data: {path: scored.csv}\n"
        "    fields: {label: gold, prediction: system}\n    report: {formats: [json]}\n"
    )
    [result] = run(["scored"], config, tmp_path / "out", use_cache=False)
    assert result.report["metrics"]["accuracy"]["value"] == pytest.approx(2 / 3)
    assert result.report["model"] is None


# --- labels the model can predict vs the data's labels ----------------------------


def _pos_neg_pipeline(write_pipelines, tmp_path, options="", rows=None):
    rows = rows or [("great stuff", "pos"), ("awful stuff", "neg")] * 20
    (tmp_path / "reviews.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows), encoding="utf-8")
    return write_pipelines(
        "pipelines:\n"
        "  pn:\n"
        "    task: sentiment\n"
        "    data: {path: reviews.csv}\n"
        f"{options}"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )


def test_disjoint_labels_fail_before_any_forward_pass(write_pipelines, tmp_path, monkeypatch, capsys):
    from nlpflow.cli import main

    config = _pos_neg_pipeline(write_pipelines, tmp_path)
    forward_calls = []
    monkeypatch.setattr(TorchBackend, "run", lambda self, *a, **k: forward_calls.append(1))
    monkeypatch.setattr(TorchBackend, "load_head", lambda self, *a, **k: forward_calls.append("load"))
    assert main(["run", "-c", str(config), "--no-cache", "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert forward_calls == []
    assert f"{config}:" in error and "pipeline 'pn'" in error
    assert "Data labels: ['neg', 'pos']; labels the model predicts: ['positive', 'negative']" in error
    assert "label_map: {neg: negative, pos: positive}" in error and "options.labels" in error


def test_label_map_maps_data_labels_to_zero_shot_labels(write_pipelines, tmp_path):
    config = _pos_neg_pipeline(write_pipelines, tmp_path, "    options: {label_map: {pos: positive, neg: negative}}\n")
    [result] = run(["pn"], config, tmp_path / "out", use_cache=False, interactive=False)
    assert result.report["metrics"]["accuracy"]["value"] > 0.9
    assert result.report["label_warnings"] is None
    predicted = {json.loads(line)["prediction"] for line in (result.directory / "predictions.jsonl").read_text().splitlines()}
    assert predicted == {"pos", "neg"}


def test_partly_predictable_labels_warn_once_and_are_reported(write_pipelines, tmp_path, caplog):
    rows = [("great stuff", "positive"), ("awful stuff", "negative"), ("meh", "neutral")] * 3 + [("so so", "mixed")] * 2
    config = _pos_neg_pipeline(write_pipelines, tmp_path, "    chunk_size: 4\n", rows)
    with caplog.at_level("WARNING", logger="nlpflow"):
        [result] = run(["pn"], config, tmp_path / "out", use_cache=False, interactive=False)
    warnings = [r.getMessage() for r in caplog.records if "not among the labels the model can predict" in r.getMessage()]
    assert len(warnings) == 2 and "['neutral']" in warnings[0] and "['mixed']" in warnings[1]
    assert result.report["label_warnings"] == {
        "model_labels": ["positive", "negative"],
        "unpredictable_reference_labels": {"mixed": {"examples": 2, "first_line": 11}, "neutral": {"examples": 3, "first_line": 4}},
    }
