"""The model stage batches however it likes, and the answers do not change.

Every batching path (row caps 1 / 3 / auto, token budgets from tiny to the
default, chunks of any size) must give the same predictions, in input order, as
running each example alone through the task model with no padding at all. An
out-of-memory error with ``batch_size: auto`` must shrink the batches, never
skip an example; with a fixed ``batch_size`` it must fail with a ModelError
that says what to change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.data import texts as generated_texts
from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.contract.types import ModelConfig
from nlpflow.contract.errors import ModelError
from nlpflow.engine.model_stage import ModelStage
from nlpflow.contract.types import Example
from nlpflow.plugins.classification import TextClassification

#: heavy-tailed lengths (1 to ~20 sentences), a few very long texts that get truncated, and one-word texts
TEXTS = (
    generated_texts(27, seed=3)
    + ["ok", "Great!", "no"]
    + [" ".join(generated_texts(40, seed=4))]  # far past 512 tokens: truncated
    + generated_texts(9, seed=5)
)


def _examples(texts):
    return [Example(index=i, line=i + 1, fields={"text": text}) for i, text in enumerate(texts)]


def one_at_a_time(task_model, texts):
    """The reference: each example encoded, run and decoded alone, with no padding and no ModelStage."""
    predictions = []
    for example in _examples(texts):
        features = task_model.encode([example])
        outputs = []
        for feature in features:
            batch = {key: np.asarray([values], dtype=np.int64) for key, values in feature.inputs.items()}
            result = task_model.loaded.run(batch, **task_model.head_options())
            outputs.append({name: value[0] for name, value in result.items()})
        predictions.append(task_model.decode(example, features, outputs))
    return predictions


def staged(task_model, config, texts, chunk_size=None):
    """ModelStage over the texts in chunks of ``chunk_size`` (all at once by default), as the runner calls it."""
    stage = ModelStage(task_model, config)
    examples = _examples(texts)
    size = chunk_size or len(examples)
    predictions = []
    for start in range(0, len(examples), size):
        predictions.extend(stage.run(examples[start : start + size]))
    return predictions, stage


def assert_same(batched, reference, atol=1e-5):
    assert len(batched) == len(reference)
    assert [p.value for p in batched] == [p.value for p in reference]
    for position, (ours, theirs) in enumerate(zip(batched, reference)):
        assert ours.details.keys() == theirs.details.keys(), position
        for label, score in theirs.details["scores"].items():
            assert ours.details["scores"][label] == pytest.approx(score, abs=atol), (position, label)


def load(path, **options):
    task = TextClassification(TextClassification.Options(**options))
    return task.load(ModelConfig(name_or_path=str(path), device="cpu"), TorchBackend())


@pytest.fixture(scope="module")
def classifier(bert_classifier):
    return load(bert_classifier, mode="sequence-classification")


@pytest.fixture(scope="module")
def classifier_reference(classifier):
    return one_at_a_time(classifier, TEXTS)


BATCHING_PATHS = [
    pytest.param({"batch_size": 1}, None, id="rows1"),
    pytest.param({"batch_size": 3}, None, id="rows3"),
    pytest.param({"batch_size": "auto"}, None, id="auto"),
    pytest.param({"batch_size": "auto", "max_tokens": 64}, None, id="auto-64-tokens"),  # long rows alone, short rows in groups
    pytest.param({"batch_size": 3, "max_tokens": 1}, None, id="budget-below-one-row"),
    pytest.param({"batch_size": "auto", "max_tokens": 2000}, 7, id="auto-chunks-of-7"),
    pytest.param({"batch_size": 3}, 1, id="rows3-chunks-of-1"),
    pytest.param({"batch_size": 64}, 16, id="rows64-chunks-of-16"),
]


@pytest.mark.parametrize("settings, chunk_size", BATCHING_PATHS)
def test_sequence_classifier_batching_matches_one_at_a_time(bert_classifier, classifier, classifier_reference, settings, chunk_size):
    config = ModelConfig(name_or_path=str(bert_classifier), device="cpu", **settings)
    predictions, stage = staged(classifier, config, TEXTS, chunk_size)
    assert_same(predictions, classifier_reference)
    described = stage.describe()
    assert described["oom_retries"] == 0
    if settings.get("batch_size") == 1 or settings.get("max_tokens") == 1:
        assert described["largest_batch_rows"] == 1
    elif chunk_size != 1:
        assert described["largest_batch_rows"] > 1  # it really batched


def test_truncation_is_flagged_the_same_way_batched_and_alone(classifier):
    examples = _examples(TEXTS)
    ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu", batch_size=8)).run(examples)
    flagged = [e.index for e in examples if e.notes.get("truncated")]
    alone = []
    for example in _examples(TEXTS):
        classifier.encode([example])
        if example.notes.get("truncated"):
            alone.append(example.index)
    assert flagged == alone
    assert 30 in flagged


@pytest.mark.parametrize("settings", [{"batch_size": 1}, {"batch_size": 5}, {"batch_size": "auto", "max_tokens": 100}])
def test_zero_shot_with_tiny_encoder_matches_one_at_a_time(sentence_encoder, settings):
    task_model = load(sentence_encoder, mode="zero-shot", labels=["sports", "business", "weather"])
    reference = one_at_a_time(task_model, TEXTS)
    predictions, _ = staged(task_model, ModelConfig(name_or_path=str(sentence_encoder), device="cpu", **settings), TEXTS, 11)
    assert_same(predictions, reference)


def test_real_minilm_zero_shot_batching_matches_one_at_a_time(minilm_path):
    """The embedded all-MiniLM-L6-v2 (real weights) as a zero-shot sentiment classifier."""
    texts = generated_texts(14, seed=7) + ["Absolutely loved it, would go again.", "Broke after two days. Avoid."]
    task_model = load(minilm_path, mode="zero-shot", labels={"positive": "A happy, positive review.", "negative": "An unhappy, negative review."})
    reference = one_at_a_time(task_model, texts)
    assert [p.value for p in reference[-2:]] == ["positive", "negative"]  # the real weights mean something
    for settings, chunk_size in (({"batch_size": "auto"}, None), ({"batch_size": 3}, 5), ({"batch_size": "auto", "max_tokens": 96}, None)):
        predictions, stage = staged(task_model, ModelConfig(name_or_path=str(minilm_path), device="cpu", **settings), texts, chunk_size)
        assert_same(predictions, reference)
        assert stage.describe()["attention"] == "sdpa"


# --- planning and collation ------------------------------------------------------


def test_plan_sorts_longest_first_covers_every_feature_once_and_respects_both_limits(classifier):
    examples = _examples(TEXTS)
    features = classifier.encode(examples)
    stage = ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu", batch_size=4, max_tokens=300))
    batches = stage.plan(features)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(features)))
    lengths = [features[i].length for i in flat]
    assert lengths == sorted(lengths, reverse=True)
    for batch in batches:
        width = max(features[i].length for i in batch)
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * width <= 300
    # batches are as full as the limits allow: a batch ends only because the next row would break one
    for batch, following in zip(batches, batches[1:]):
        width = features[batch[0]].length
        assert len(batch) == 4 or (len(batch) + 1) * width > 300


def test_collate_pads_like_the_tokenizer(classifier):
    features = classifier.encode(_examples(TEXTS[:6]))
    stage = ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu"))
    indices = [3, 0, 5]
    batch = stage.chunk_plan(features, [indices]).collate(indices)
    expected = classifier.loaded.tokenizer.pad([features[i].inputs for i in indices], return_tensors="np")
    assert batch.keys() == set(features[0].inputs)
    for key in batch:
        assert batch[key].dtype == np.int64
        assert np.array_equal(batch[key], expected[key].astype(np.int64)), key


# --- out of memory ------------------------------------------------------------------


class OutOfMemoryAbove:
    """Wraps a backend's run: a batch with more than ``limit`` rows raises CUDA's out-of-memory error."""

    def __init__(self, task_model, limit, error=torch.cuda.OutOfMemoryError):
        self.limit = limit
        self.error = error
        self.original = task_model.loaded.backend.run
        self.attempts: list[int] = []

    def __call__(self, loaded, prepared, **options):
        rows = prepared["input_ids"].shape[0]
        self.attempts.append(rows)
        if rows > self.limit:
            raise self.error(f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {rows} rows)")
        return self.original(loaded, prepared, **options)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, lambda message: RuntimeError(f"DefaultCPUAllocator: {message.lower()}")])
def test_auto_batch_size_backs_off_on_out_of_memory_and_predicts_every_example(
    bert_classifier, classifier, classifier_reference, monkeypatch, error
):
    wrapper = OutOfMemoryAbove(classifier, limit=5, error=error)
    monkeypatch.setattr(classifier.loaded.backend, "run", wrapper)
    predictions, stage = staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size="auto"), TEXTS, 20)
    assert_same(predictions, classifier_reference)  # none skipped, same answers, input order
    described = stage.describe()
    assert described["oom_retries"] >= 1
    assert 1 <= described["batch_size_that_worked"] <= 5
    assert described["batch_size"] == "auto"
    assert described["largest_batch_rows"] <= 5
    assert described["batches"] >= len(TEXTS) / 5
    # once it has backed off it never tries a bigger batch again (the second chunk starts small); the first batches,
    # of the longest texts, may fit the limit before a batch of shorter ones runs out of memory
    first_failure = next(i for i, rows in enumerate(wrapper.attempts) if rows > 5)
    recovered = next(i for i in range(first_failure, len(wrapper.attempts)) if wrapper.attempts[i] <= 5)
    assert all(rows <= 5 for rows in wrapper.attempts[recovered:])
    assert max(wrapper.attempts) > 5


def test_fixed_batch_size_out_of_memory_raises_a_helpful_model_error(bert_classifier, classifier, monkeypatch):
    monkeypatch.setattr(classifier.loaded.backend, "run", OutOfMemoryAbove(classifier, limit=2))
    with pytest.raises(ModelError) as caught:
        staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size=8), TEXTS)
    message = str(caught.value)
    assert "out of memory" in message
    assert "batch of 8 rows" in message
    assert "batch_size: auto" in message
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)


def test_out_of_memory_on_a_single_example_is_a_model_error(bert_classifier, classifier, monkeypatch):
    monkeypatch.setattr(classifier.loaded.backend, "run", OutOfMemoryAbove(classifier, limit=0))
    with pytest.raises(ModelError, match="single example"):
        staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size="auto"), TEXTS[:4])


def test_other_errors_in_forward_are_not_retried(bert_classifier, classifier, monkeypatch):
    calls = []

    def broken(loaded, prepared, **options):
        calls.append(len(prepared["input_ids"]))
        raise ValueError("shape mismatch in the head")

    monkeypatch.setattr(classifier.loaded.backend, "run", broken)
    with pytest.raises(ValueError, match="shape mismatch"):
        staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size="auto"), TEXTS)
    assert len(calls) == 1


def test_forward_returning_the_wrong_number_of_rows_is_a_model_error(bert_classifier, classifier, monkeypatch):
    original = classifier.loaded.backend.run
    monkeypatch.setattr(classifier.loaded.backend, "run", lambda loaded, prepared, **options: {"logits": original(loaded, prepared)["logits"][:-1]})
    with pytest.raises(ModelError, match="returned 2 rows of 'logits' for a batch of 3"):
        staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size=3), TEXTS[:3])


def test_padding_ratio_reflects_length_sorting(bert_classifier, classifier):
    _, stage = staged(classifier, ModelConfig(name_or_path=str(bert_classifier), device="cpu", batch_size=8), TEXTS)
    ratio = stage.describe()["padding_ratio"]
    features = classifier.encode(_examples(TEXTS))
    lengths = np.array([f.length for f in features])
    unsorted = sum(lengths[i : i + 8].max() * len(lengths[i : i + 8]) for i in range(0, len(lengths), 8)) / lengths.sum()
    assert 1.0 <= ratio < unsorted


def test_fixed_batch_size_means_that_many_rows_unless_max_tokens_is_set(classifier):
    features = classifier.encode(_examples(TEXTS))
    fixed = ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu", batch_size=16)).plan(features)
    assert [len(batch) for batch in fixed] == [16, 16, 8]  # the long rows too: no default token budget cuts them
    capped = ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu", batch_size=16, max_tokens=600)).plan(features)
    assert len(capped[0]) < 16
    auto = ModelStage(classifier, ModelConfig(name_or_path="x", device="cpu", batch_size="auto"))
    assert auto.computer.max_tokens < auto.computer.max_rows * 512  # auto keeps the measured CPU budget
