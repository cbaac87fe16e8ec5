"""Classification by a causal LM's log-likelihood: equal to a one-forward-per-label loop written with transformers,
the same at every batch size, few-shot sampling, the chat template, accuracy_norm and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nlpflow
from nlpflow import Example, ModelError
from nlpflow.plugins.classification import Accuracy, AccuracyNorm, ClassificationOptions, TextClassification

RECORDS = [
    {"text": "The film was a delight from start to end.", "label": "positive"},
    {"text": "Cold food and a rude waiter.  ", "label": "negative"},
    {"text": "It broke after two days, I want my money back", "label": "negative"},
    {"text": "Lovely staff, lovely room.", "label": "positive"},
    {"text": "Nothing much happens; it is fine.", "label": "neutral"},
]
LABELS = ["positive", "negative", "neutral"]
SHOTS = [
    {"text": "Great value.", "label": "positive"},
    {"text": "Terrible support.", "label": "negative"},
    {"text": "Best purchase this year.", "label": "positive"},
    {"text": "Average in every way.", "label": "neutral"},
    {"text": "It smells bad.", "label": "negative"},
]


def run_pipeline(tmp_path, model_path, name="ll", options: dict | None = None, model: dict | None = None):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS), encoding="utf-8")
    options = {"mode": "loglikelihood", "labels": LABELS, **(options or {})}
    pipeline = {"task": "text-classification", "data": {"path": data.name}, "options": options,
                "metrics": ["accuracy", "accuracy_norm"],
                "model": {"name_or_path": str(model_path), "device": "cpu", **(model or {})}}
    config = tmp_path / f"{name}.yaml"
    config.write_text(json.dumps({"pipelines": {name: pipeline}}), encoding="utf-8")
    [result] = nlpflow.run([name], config=config, output=tmp_path / f"{name}-out", use_cache=False)
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return result, rows


def loop_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """One forward per (record, label), as lm-evaluation-harness's HFLM scores a multiple-choice request."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_length = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[position - 1, whole[position]] for position in range(context_length, len(whole))))


@pytest.mark.parametrize("fixture", ["gpt2_lm", "llama_lm"])
def test_equal_to_one_forward_per_label_loop(tmp_path, request, fixture):
    path = request.getfixturevalue(fixture)
    options = {"prompt": "Review: {{ text }}\nSentiment:", "system": "Classify reviews."}
    _, rows = run_pipeline(tmp_path, path, options=options)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    for record, row in zip(RECORDS, rows):
        context = f"Classify reviews.\n\nReview: {record['text']}\nSentiment:"
        expected = {label: loop_loglikelihood(model, tokenizer, context, " " + label) for label in LABELS}
        got = row["details"]["loglikelihood"]
        for label in LABELS:
            assert got[label] == pytest.approx(expected[label], rel=1e-5)
        assert row["prediction"]["label"] == max(expected, key=expected.get)
        norm = {label: expected[label] / len(" " + label) for label in LABELS}
        assert row["prediction"]["label_norm"] == max(norm, key=norm.get)
        probabilities = np.exp(np.array([expected[label] for label in LABELS]))
        probabilities /= probabilities.sum()
        assert [row["details"]["probability"][label] for label in LABELS] == pytest.approx(probabilities, abs=1e-6)


def test_batch_size_does_not_change_predictions(tmp_path, gpt2_lm):
    runs = [run_pipeline(tmp_path, gpt2_lm, name=f"ll-{size}", model={"batch_size": size})[1] for size in (1, 8, "auto")]
    assert [row["prediction"] for row in runs[0]] == [row["prediction"] for row in runs[1]] == [row["prediction"] for row in runs[2]]
    for rows in runs[1:]:
        for row, single in zip(rows, runs[0]):
            # padding changes float32 summation order, so the last digit may move
            assert row["details"]["loglikelihood"] == pytest.approx(single["details"]["loglikelihood"], rel=1e-5)


def test_chat_template_with_few_shot_turns_equals_the_loop(tmp_path, qwen2_lm):
    source = tmp_path / "shots.jsonl"
    source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
    options = {"chat_template": True, "system": "Answer with one word.", "few_shot": {"k": 2, "source": str(source)}}
    _, rows = run_pipeline(tmp_path, qwen2_lm, options=options)
    model = AutoModelForCausalLM.from_pretrained(qwen2_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen2_lm)
    for record, row in zip(RECORDS[:2], rows):
        messages = [{"role": "system", "content": "Answer with one word."}]
        for shot in SHOTS[:2]:
            messages += [{"role": "user", "content": f"{shot['text']}\nLabel:"}, {"role": "assistant", "content": shot["label"]}]
        messages.append({"role": "user", "content": f"{record['text']}\nLabel:"})
        context = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert context.count("<|im_start|>assistant") == 3
        for label in LABELS:
            # with a chat template the label opens the assistant's turn, without target_delimiter
            expected = loop_loglikelihood(model, tokenizer, context, label)
            assert row["details"]["loglikelihood"][label] == pytest.approx(expected, rel=1e-5)


def _render(task: TextClassification, index: int) -> dict:
    example = Example(index=index, line=index + 1, fields={"text": "Fine.", "label": "neutral"}, columns={"source": "web"})
    task.check_example(example)
    return example.fields


def test_prompt_renders_over_the_record_and_its_columns(tmp_path):
    source = tmp_path / "shots.jsonl"
    source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS, prompt="Q: {{ text }} ({{ source }})"))
    assert _render(task, 0)["prompt"] == "Q: Fine. (web)"
    # few-shot examples render with the same template over their own fields: a column they lack is named
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS, prompt="Q: {{ text }} ({{ source }})",
                                                    few_shot={"k": 2, "source": str(source)}))
    with pytest.raises(nlpflow.ConfigError, match="'source'"):
        _render(task, 0)


def test_few_shot_samplers_are_seeded_per_record(tmp_path):
    def shots(sampler, index, seed=0, k=4):
        source = tmp_path / "shots.jsonl"
        source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
        task = TextClassification(ClassificationOptions(
            mode="loglikelihood", labels=LABELS, label_map={"neutral": "so-so"},
            few_shot={"k": k, "source": str(source), "sampler": sampler, "seed": seed}))
        return _render(task, index)["few_shot"]

    assert shots("first", 3) == [[f"{shot['text']}\nLabel:", shot["label"].replace("neutral", "so-so")] for shot in SHOTS[:4]]
    assert shots("random", 3) == shots("random", 3)
    assert shots("random", 3) != shots("random", 3, seed=1) or shots("random", 4) != shots("random", 3)
    drawn = {tuple(map(tuple, shots("random", index))) for index in range(6)}
    assert len(drawn) > 1 and all(len(set(shot)) == 4 for shot in drawn)
    for index in range(6):
        balanced = [answer for _, answer in shots("balanced", index, k=3)]
        assert sorted(balanced) == ["negative", "positive", "so-so"]
    assert shots("balanced", 2, k=5) == shots("balanced", 2, k=5)
    with pytest.raises(nlpflow.ConfigError, match="k is 6 but .* has only 5"):
        shots("first", 0, k=6)


def test_context_without_chat_template_joins_shots_with_the_delimiters(tmp_path, gpt2_lm):
    source = tmp_path / "shots.jsonl"
    source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
    options = {"few_shot": {"k": 2, "source": str(source)}, "target_delimiter": " => ", "fewshot_delimiter": "\n###\n"}
    _, rows = run_pipeline(tmp_path, gpt2_lm, options=options)
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_lm)
    record, row = RECORDS[0], rows[0]
    context = f"Great value.\nLabel: => positive\n###\nTerrible support.\nLabel: => negative\n###\n{record['text']}\nLabel:"
    for label in LABELS:
        expected = loop_loglikelihood(model, tokenizer, context, " => " + label)
        assert row["details"]["loglikelihood"][label] == pytest.approx(expected, rel=1e-5)


def test_accuracy_norm_scores_the_per_character_argmax():
    predictions = [{"label": "no", "label_norm": "maybe"}, {"label": "yes", "label_norm": "yes"}]
    references = ["maybe", "yes"]
    accuracy, accuracy_norm = Accuracy(), AccuracyNorm()
    assert accuracy.score(accuracy.example_stats(predictions, references)) == 0.5
    assert accuracy_norm.score(accuracy_norm.example_stats(predictions, references)) == 1.0
    # plain labels (the other modes) score the same under both
    assert accuracy_norm.score(accuracy_norm.example_stats(["no", "yes"], references)) == 0.5


def test_pipeline_reports_accuracy_and_accuracy_norm(tmp_path, gpt2_lm):
    result, rows = run_pipeline(tmp_path, gpt2_lm)
    report = json.loads((result.directory / "report.json").read_text(encoding="utf-8"))
    text = json.dumps(report)
    assert "accuracy_norm" in text
    gold = [record["label"] for record in RECORDS]
    expected = np.mean([row["prediction"]["label"] == label for row, label in zip(rows, gold)])
    expected_norm = np.mean([row["prediction"]["label_norm"] == label for row, label in zip(rows, gold)])
    scores = {metric: value for metric, value in _metric_values(report).items()}
    assert scores["accuracy"] == pytest.approx(expected) and scores["accuracy_norm"] == pytest.approx(expected_norm)


def _metric_values(report: dict) -> dict[str, float]:
    metrics = report["metrics"] if "metrics" in report else report["pipelines"][0]["metrics"]
    return {name: (entry["value"] if isinstance(entry, dict) else entry) for name, entry in metrics.items()}


def test_a_label_that_tokenizes_to_nothing_is_named(tmp_path, gpt2_lm):
    with pytest.raises(ModelError, match="label '' tokenizes to nothing"):
        run_pipeline(tmp_path, gpt2_lm, options={"labels": ["positive", ""], "target_delimiter": ""})


def test_an_encoder_checkpoint_is_refused_naming_the_model(tmp_path, bert_classifier):
    with pytest.raises(ModelError, match=r"is not a causal language model.*token-logprobs"):
        run_pipeline(tmp_path, bert_classifier)


def test_few_shot_needs_a_source():
    with pytest.raises(ValueError, match="few_shot.k > 0 needs few_shot.source"):
        ClassificationOptions(mode="loglikelihood", labels=LABELS, few_shot={"k": 2})
