"""Classification by a causal LM's log-likelihood: equal to a one-forward-per-label loop written with transformers,
the same at every batch size, few-shot sampling, the chat template, accuracy_norm and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nlpflow
from nlpflow import Example, ModelError, TaskContext
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


@pytest.mark.parametrize("fixture", ["gpt2_lm", "llama_lm", "qwen2_lm"])
def test_equal_to_one_forward_per_label_loop(tmp_path, request, fixture):
    path = request.getfixturevalue(fixture)
    options = {"prompting": {"prompt": "Review: {{ text }}\nSentiment:", "system": "Classify reviews.", "chat_template": False}}
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
        assert set(row["details"]["greedy"]) == set(LABELS)
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
    options = {"prompting": {"chat_template": True, "system": "Answer with one word.", "few_shot": {"k": 2, "source": str(source)}}}
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
    task.prepare(TaskContext("test", Path("."), {"text": "text", "label": "label"}, lambda: iter(())))
    example = Example(index=index, line=index + 1, fields={"text": "Fine.", "label": "neutral"}, columns={"source": "web"})
    task.check_example(example)
    return example.fields


def test_prompt_renders_over_the_record_and_its_columns(tmp_path):
    source = tmp_path / "shots.jsonl"
    source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS, prompting={"prompt": "Q: {{ text }} ({{ source }})"}))
    assert _render(task, 0)["prompt"] == "Q: Fine. (web)"
    # few-shot examples render with the same template over their own fields: a column they lack is named
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS,
                                                    prompting={"prompt": "Q: {{ text }} ({{ source }})", "few_shot": {"k": 2, "source": str(source)}}))
    with pytest.raises(nlpflow.ConfigError, match="'source'"):
        _render(task, 0)


def test_few_shot_samplers_are_seeded_per_record(tmp_path):
    def shots(sampler, index, seed=0, k=4):
        source = tmp_path / "shots.jsonl"
        source.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS), encoding="utf-8")
        task = TextClassification(ClassificationOptions(
            mode="loglikelihood", labels=LABELS, label_map={"neutral": "so-so"},
            prompting={"few_shot": {"k": k, "source": str(source), "sampler": sampler, "seed": seed}}))
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
    options = {"prompting": {"few_shot": {"k": 2, "source": str(source)}, "target_delimiter": " => ", "fewshot_delimiter": "\n###\n"}}
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
        run_pipeline(tmp_path, gpt2_lm, options={"labels": ["positive", ""], "prompting": {"target_delimiter": ""}})


def test_an_encoder_checkpoint_is_refused_naming_the_model(tmp_path, bert_classifier):
    with pytest.raises(ModelError, match=r"is not a causal language model.*choice-logprobs"):
        run_pipeline(tmp_path, bert_classifier)




def _loop_choice(model, context_ids: list[int], choice_ids: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = model(torch.tensor([(context_ids + choice_ids)[:-1]])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)[len(context_ids) - 1:]
    targets = torch.tensor(choice_ids)
    return float(logprobs.gather(-1, targets[:, None]).sum()), bool((logprobs.argmax(-1) == targets).all())


@pytest.mark.parametrize("fixture", ["gpt2_lm", "llama_lm", "qwen2_lm"])
def test_choice_logprobs_head_equals_one_forward_per_choice(request, fixture):
    """Rows of different context lengths and numbers of choices, choices of one to four tokens, in one padded batch."""
    from nlpflow.plugins.torch_backend import choice_logprobs

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(fixture)).eval()
    vocabulary = model.config.vocab_size
    generator = np.random.default_rng(7)
    rows = [([int(t) for t in generator.integers(5, vocabulary, size)],
             [[int(t) for t in generator.integers(5, vocabulary, n)] for n in lengths])
            for size, lengths in [(9, [1, 3, 2]), (3, [4, 1]), (14, [2, 2, 1, 3]), (1, [1])]]
    width = max(len(context) + sum(map(len, choices)) for context, choices in rows)
    batch = {name: torch.zeros((len(rows), width), dtype=torch.long) for name in ("input_ids", "attention_mask", "choice_index")}
    for row, (context, choices) in enumerate(rows):
        ids = context + [t for choice in choices for t in choice]
        segments = [0] * len(context) + [k for k, choice in enumerate(choices, 1) for _ in choice]
        batch["input_ids"][row, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][row, : len(ids)] = 1
        batch["choice_index"][row, : len(ids)] = torch.tensor(segments)
    with torch.inference_mode():
        loglikelihoods, greedy = choice_logprobs(model, batch)
    for row, (context, choices) in enumerate(rows):
        expected = [_loop_choice(model, context, choice) for choice in choices]
        assert loglikelihoods[row].tolist() == pytest.approx([value for value, _ in expected], rel=1e-5)
        assert greedy[row].tolist() == [is_greedy for _, is_greedy in expected]
    # a choice made of the model's own greedy continuation is greedy
    context = rows[0][0]
    with torch.no_grad():
        first = int(model(torch.tensor([context])).logits[0, -1].argmax())
        second = int(model(torch.tensor([context + [first]])).logits[0, -1].argmax())
    ids = context + [first, second] + rows[0][1][1]
    single = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
              "choice_index": torch.tensor([[0] * len(context) + [1, 1] + [2] * len(rows[0][1][1])])}
    with torch.inference_mode():
        assert choice_logprobs(model, single)[1][0].tolist() == [True, False]


def test_a_long_prompt_is_cut_from_the_left_so_the_longest_label_fits(tmp_path, gpt2_lm):
    window = 12
    labels = ["positive", "negative", "so very very neutral"]
    result, rows = run_pipeline(tmp_path, gpt2_lm, options={"labels": labels}, model={"max_length": window})
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_lm)
    for record, row in zip(RECORDS, rows):
        context = record["text"] + "\nLabel:"
        context = context.rstrip()
        spaces = len(record["text"] + "\nLabel:") - len(context)
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        label_ids = {label: tokenizer(context + " " * spaces + " " + label, add_special_tokens=False)["input_ids"][len(context_ids):]
                     for label in labels}
        kept = context_ids[-(window + 1 - max(map(len, label_ids.values()))):]
        for label in labels:
            assert len(kept) + len(label_ids[label]) - 1 <= window
            expected, _ = _loop_choice(model, kept, label_ids[label])
            assert row["details"]["loglikelihood"][label] == pytest.approx(expected, rel=1e-5)
    report = json.loads((result.directory / "report.json").read_text(encoding="utf-8"))
    assert "truncated" in json.dumps(report)


def _plain_context(shots: list[dict], record: dict) -> str:
    parts = [f"{shot['text']}\nLabel: {shot['label']}" for shot in shots] + [f"{record['text']}\nLabel:"]
    return "\n\n".join(parts)


def test_few_shot_from_the_same_data_never_shows_a_record_itself(tmp_path, gpt2_lm):
    result, rows = run_pipeline(tmp_path, gpt2_lm, options={"prompting": {"few_shot": {"k": 2}}})
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_lm)
    for position, (record, row) in enumerate(zip(RECORDS, rows)):
        # sampler first: the data's first two records, leaving the record itself out
        shots = [other for index, other in enumerate(RECORDS) if index != position][:2]
        context = _plain_context(shots, record)
        for label in LABELS:
            expected = loop_loglikelihood(model, tokenizer, context, " " + label)
            assert row["details"]["loglikelihood"][label] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("sampler", ["first", "random", "balanced"])
def test_a_same_data_pool_gives_every_sampler_other_records_only(sampler):
    records = [{"text": f"text {index}", "label": LABELS[index % 3]} for index in range(9)]
    examples = [Example(index=index, line=index + 1, fields=dict(record)) for index, record in enumerate(records)]
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS,
                                                    prompting={"few_shot": {"k": 4, "sampler": sampler}}))
    task.prepare(TaskContext("test", Path("."), {"text": "text", "label": "label"}, lambda: iter(examples)))
    for index, record in enumerate(records):
        example = Example(index=index, line=index + 1, fields=dict(record))
        task.check_example(example)
        shown = [question for question, _ in example.fields["few_shot"]]
        assert len(shown) == 4 and len(set(shown)) == 4
        assert f"{record['text']}\nLabel:" not in shown
    # k must leave one record out for each: 9 labelled records give 8
    task = TextClassification(ClassificationOptions(mode="loglikelihood", labels=LABELS, prompting={"few_shot": {"k": 9}}))
    with pytest.raises(nlpflow.ConfigError, match="k is 9 but the data has 9 examples with a label, so 8 for each record"):
        task.prepare(TaskContext("test", Path("."), {"text": "text", "label": "label"}, lambda: iter(examples)))


def test_few_shot_source_is_read_beside_the_pipelines_file_with_its_field_names(tmp_path, gpt2_lm, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "shots.jsonl").write_text("".join(json.dumps({"review": s["text"], "sentiment": s["label"]}) + "\n" for s in SHOTS),
                                        encoding="utf-8")
    (folder / "data.jsonl").write_text("".join(json.dumps({"review": r["text"], "sentiment": r["label"]}) + "\n" for r in RECORDS),
                                       encoding="utf-8")
    pipeline = {"task": "text-classification", "data": {"path": "data.jsonl"}, "fields": {"text": "review", "label": "sentiment"},
                "options": {"mode": "loglikelihood", "labels": LABELS, "prompting": {"prompt": "{{ review }}\nLabel:",
                                                                                "few_shot": {"k": 2, "source": "shots.jsonl"}}},
                "model": {"name_or_path": str(gpt2_lm), "device": "cpu"}}
    config = folder / "pipelines.yaml"
    config.write_text(json.dumps({"pipelines": {"fields": pipeline}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the pipelines file's folder
    nlpflow.validate(config, ["fields"])
    [result] = nlpflow.run(["fields"], config=config, output=tmp_path / "out", use_cache=False)
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_lm)
    context = _plain_context(SHOTS[:2], RECORDS[0])
    for label in LABELS:
        assert rows[0]["details"]["loglikelihood"][label] == pytest.approx(
            loop_loglikelihood(model, tokenizer, context, " " + label), rel=1e-5)
    # a shot lacking the mapped label column is named by its column
    (folder / "shots.jsonl").write_text(json.dumps({"review": "Fine."}) + "\n", encoding="utf-8")
    with pytest.raises(nlpflow.ConfigError, match=r"shots.jsonl:1: a record needs a non-empty 'sentiment'"):
        nlpflow.run(["fields"], config=config, output=tmp_path / "out", use_cache=False)
    # and one lacking a field the prompt names, at its line of the shots file, before any record is read
    (folder / "shots.jsonl").write_text(json.dumps({"text": "Fine.", "sentiment": "positive"}) + "\n", encoding="utf-8")
    with pytest.raises(nlpflow.ValidationFailed, match=r"shots.jsonl:1: a record needs a non-empty 'review'"):
        nlpflow.validate(config, ["fields"])


def test_same_data_few_shot_validates_pickles_and_keys_the_cache_on_the_shots(tmp_path, gpt2_lm):
    import pickle

    options = {"prompting": {"few_shot": {"k": 2, "sampler": "random", "seed": 3}}}
    data = tmp_path / "cached.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS), encoding="utf-8")
    pipeline = {"task": "text-classification", "data": {"path": data.name}, "metrics": ["accuracy"],
                "options": {"mode": "loglikelihood", "labels": LABELS, **options},
                "model": {"name_or_path": str(gpt2_lm), "device": "cpu"}}
    config = tmp_path / "cached.yaml"
    config.write_text(json.dumps({"pipelines": {"cached": pipeline}}), encoding="utf-8")
    [resolved] = nlpflow.validate(config, ["cached"])
    cache = tmp_path / "cache"

    def predictions():
        [result] = nlpflow.run(["cached"], config=config, output=tmp_path / "out", cache_dir=cache)
        return (result.directory / "predictions.jsonl").read_bytes()

    first = predictions()
    assert predictions() == first  # from the cache, byte for byte
    # the prepared task travels pickled (the Ray executor's workers) and renders the same few-shot examples
    task = resolved.task
    task.prepare(TaskContext("cached", tmp_path, {"text": "text", "label": "label"},
                             lambda: iter(Example(i, i + 1, dict(r)) for i, r in enumerate(RECORDS))))
    copy = pickle.loads(pickle.dumps(task))
    for index, record in enumerate(RECORDS):
        mine, theirs = Example(index, index + 1, dict(record)), Example(index, index + 1, dict(record))
        task.check_example(mine)
        copy.check_example(theirs)
        assert mine.fields == theirs.fields
    # another record's text changes the pool: the records that show it as a shot are predicted again, not read back
    changed = [dict(record) for record in RECORDS]
    changed[4]["text"] = "Everything about it was wonderful."
    data.write_text("".join(json.dumps(record) + "\n" for record in changed), encoding="utf-8")
    fresh = [json.loads(line) for line in predictions().decode().splitlines()]
    [uncached] = nlpflow.run(["cached"], config=config, output=tmp_path / "out2", use_cache=False)
    expected = [json.loads(line) for line in (uncached.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["details"] for row in fresh] == [row["details"] for row in expected]
    assert [row["details"] for row in fresh[:4]] != [json.loads(line)["details"] for line in first.decode().splitlines()[:4]]


def test_mode_auto_scores_a_causal_lm_by_loglikelihood(tmp_path, gpt2_lm):
    _, auto = run_pipeline(tmp_path, gpt2_lm, name="auto", options={"mode": "auto", "prompting": {"chat_template": False}})
    _, explicit = run_pipeline(tmp_path, gpt2_lm, name="explicit", options={"prompting": {"chat_template": False}})
    assert [row["details"] for row in auto] == [row["details"] for row in explicit]
    assert "loglikelihood" in auto[0]["details"]


def test_a_loglikelihood_run_reads_downstream_as_any_classification_run(tmp_path, gpt2_lm, capsys):
    """The prediction's value is {"label", "label_norm"}: report.json, report.md (per-class scores, confusion matrix,
    slices), report.html, `nlpflow compare` and a no-model pipeline scoring the run's predictions.jsonl all read it."""
    from nlpflow.cli import main

    records = [{**record, "domain": ["web", "shop"][index % 2], "id": f"r{index}"} for index, record in enumerate(RECORDS)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    metrics = ["accuracy", "accuracy_norm", "macro_f1"]
    run = {"task": "text-classification", "data": {"path": "data.jsonl", "id_field": "id"}, "metrics": metrics,
           "options": {"mode": "loglikelihood", "labels": LABELS, "prompting": {"few_shot": {"k": 1}}},
           "model": {"name_or_path": str(gpt2_lm), "device": "cpu"},
           "report": {"formats": ["json", "markdown", "html"], "slice_by": ["domain"]}}
    rescored = {"task": "text-classification", "data": {"path": "rescored.jsonl"}, "metrics": metrics,
                "options": {"labels": LABELS}}
    config = tmp_path / "pipelines.yaml"
    config.write_text(json.dumps({"pipelines": {"ll": run, "rescored": rescored}}), encoding="utf-8")
    [result] = nlpflow.run(["ll"], config=config, output=tmp_path / "out", use_cache=False)
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    gold = [record["label"] for record in records]
    predicted = [row["prediction"]["label"] for row in rows]
    report = json.loads((result.directory / "report.json").read_text(encoding="utf-8"))
    confusion = report["metrics"]["macro_f1"]["confusion_matrix"]
    assert set(report["metrics"]["macro_f1"]["per_class"]) == set(gold) | set(predicted)
    for reference in set(gold):
        for prediction in set(predicted):
            count = sum(1 for g, p in zip(gold, predicted) if (g, p) == (reference, prediction))
            assert confusion["matrix"][confusion["labels"].index(reference)][confusion["labels"].index(prediction)] == count
    markdown = (result.directory / "report.md").read_text(encoding="utf-8")
    assert "Confusion matrix" in markdown and "## Slices by domain" in markdown and "| accuracy\\_norm |" in markdown
    assert "Confusion" in (result.directory / "report.html").read_text(encoding="utf-8")
    # a no-model pipeline scoring the run's predictions as given ones gives the same values
    for row, record in zip(rows, records):
        assert row["reference"] == record["label"]
    rescored_data = tmp_path / "rescored.jsonl"
    rescored_data.write_text("".join(json.dumps({"text": record["text"], "label": record["label"], "prediction": row["prediction"]}) + "\n"
                                     for record, row in zip(records, rows)), encoding="utf-8")
    [again] = nlpflow.run(["rescored"], config=config, output=tmp_path / "again", use_cache=False)
    scores = json.loads((again.directory / "report.json").read_text(encoding="utf-8"))["metrics"]
    assert {name: scores[name]["value"] for name in metrics} == {name: report["metrics"][name]["value"] for name in metrics}
    # compare: another system's predictions joined by id, in the same {"label", "label_norm"} shape
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"id": record["id"], "prediction": {"label": record["label"], "label_norm": "neutral"}}) + "\n"
                             for record in records), encoding="utf-8")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "out" / "ll"), str(other), "--json", "--resamples", "50", "--trials", "50"]) == 0
    compared = json.loads(capsys.readouterr().out)
    text = json.dumps(compared)
    assert "accuracy_norm" in text and "other.jsonl" in text


def test_validate_checks_a_same_data_pool_against_the_whole_data(tmp_path, gpt2_lm):
    records = [{"text": f"Review {index}.", "label": LABELS[index % 3]} for index in range(8)]
    (tmp_path / "eight.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")

    def validate(k: int):
        pipeline = {"task": "text-classification", "data": {"path": "eight.jsonl"},
                    "options": {"mode": "loglikelihood", "labels": LABELS, "prompting": {"few_shot": {"k": k}}},
                    "model": {"name_or_path": str(gpt2_lm), "device": "cpu"}}
        config = tmp_path / "eight.yaml"
        config.write_text(json.dumps({"pipelines": {"eight": pipeline}}), encoding="utf-8")
        return nlpflow.validate(config, ["eight"])

    validate(7)  # more than the records validate itself checks
    with pytest.raises(nlpflow.ValidationFailed, match=r"eight.yaml.*options.*k is 8 but the data has 8 examples with a label, so 7"):
        validate(8)
