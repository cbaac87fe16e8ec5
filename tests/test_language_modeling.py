"""Language modeling: perplexity equal to the transformers docs' strided loop and to lm-evaluation-harness's rolling
windows, the same log-likelihoods at every batch size, on GPT-2, Llama and Qwen2; intervals over documents; the cache
key, a SIGKILLed run's byte-identical resume and the Ray executor's bytes."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nlpflow
from nlpflow import ModelError
from nlpflow.plugins.language_modeling import (
    BitsPerByte,
    BytePerplexity,
    Perplexity,
    WordPerplexity,
    disjoint_windows,
    document_counts,
    strided_windows,
)
from tests.conftest import REPO

HELDOUT = REPO / "examples/data/shakespeare_heldout.jsonl"
WINDOW = 48


def documents(limit: int = 6) -> list[str]:
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines()][:limit]
    # a short document (one window) and an empty one next to the long ones
    return [row["text"] for row in rows] + ["To be, or not to be.", ""]


def run_pipeline(tmp_path, model_path, texts, name="lm", options: dict | None = None, model: dict | None = None, cache=None):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    model_section = {"name_or_path": str(model_path), "device": "cpu", "max_length": WINDOW, **(model or {})}
    pipeline = {"task": "language-modeling", "data": {"path": data.name}, "model": model_section, "options": options or {}}
    config = tmp_path / f"{name}.yaml"
    config.write_text(json.dumps({"pipelines": {name: pipeline}}), encoding="utf-8")
    [result] = nlpflow.run([name], config=config, output=tmp_path / f"{name}-out",
                           cache_dir=cache, use_cache=cache is not None)
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return result, rows


def prefixed_tokens(tokenizer, text: str) -> list[int]:
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]


def docs_loop(model, sequence: list[int], max_length: int, stride: int) -> tuple[float, int, int]:
    """The loop of the transformers docs' "Perplexity of fixed-length models" (docs/source/en/perplexity.md), one
    window per forward, over one sequence. Returns the summed negative log-likelihood, the exact number of tokens the
    loss averaged over (the labels left after the model's internal shift), and the docs' own count, which subtracts one
    per window for the shift even where the shift only drops a masked label."""
    encodings = torch.tensor([sequence])
    seq_len = encodings.size(1)
    nll_sum, exact_tokens, docs_tokens = 0.0, 0, 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        shifted_valid = int((target_ids[:, 1:] != -100).sum())
        if shifted_valid:
            nll_sum += float(loss) * shifted_valid
        exact_tokens += shifted_valid
        docs_tokens += int((target_ids != -100).sum()) - target_ids.size(0)
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, exact_tokens, docs_tokens


# lm-evaluation-harness, lm_eval/utils.py (EleutherAI/lm-evaluation-harness): get_rolling_token_windows and
# make_disjoint_window, transcribed; HFLM.loglikelihood_rolling calls them with context_len=1 and its prefix token.
def harness_rolling_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield token_list[window_end - max_seq_len - 1 : window_end - 1], token_list[window_end - window_pred_len : window_end]
        predicted += window_pred_len


def harness_disjoint(pair):
    context, continuation = pair
    return context[: len(context) - (len(continuation) - 1)], continuation


def harness_loglikelihood(model, tokens: list[int], prefix: int, max_seq_len: int) -> float:
    """HFLM's scoring of one disjoint window, one window per forward: the model reads (context + continuation)[:-1]
    and the continuation's log-probabilities are the last len(continuation) positions' log-softmax."""
    total = 0.0
    for context, continuation in map(harness_disjoint, harness_rolling_windows(tokens, prefix, max_seq_len, 1)):
        inputs = torch.tensor([(context + continuation)[:-1]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(inputs).logits[0].float(), dim=-1)[-len(continuation):]
        total += float(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum())
    return total


# --- windows -----------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 2, 3, 8])
@pytest.mark.parametrize("length", [0, 1, 2, 7, 8, 9, 16, 17, 30])
def test_disjoint_windows_are_lm_evaluation_harness_windows(window, length):
    tokens = list(range(100, 100 + length))
    expected = [(context + continuation, len(context) - 1)
                for context, continuation in map(harness_disjoint, harness_rolling_windows(tokens, 7, window, 1))]
    assert disjoint_windows(tokens, 7, window) == expected
    # every token is predicted exactly once, and the model never reads more than the window
    assert [t for sequence, first in expected for t in sequence[1:][first:]] == tokens
    assert all(len(sequence) - 1 <= window for sequence, _ in expected)


@pytest.mark.parametrize(("window", "stride"), [(8, 8), (8, 4), (8, 1), (8, 7), (3, 2)])
@pytest.mark.parametrize("length", [0, 1, 6, 7, 8, 9, 25])
def test_strided_windows_score_each_token_after_the_first_of_its_window_once(window, stride, length):
    tokens = list(range(100, 100 + length))
    windows = strided_windows(tokens, 7, window, stride)
    scored = [t for sequence, first in windows for t in sequence[1:][first:]]
    assert len(scored) == len(set(scored)) and all(len(sequence) <= window for sequence, _ in windows)
    if stride < window:
        assert scored == tokens  # overlapping windows leave no token without context
    else:
        # disjoint windows: a window's first token has nothing before it in its window
        assert scored == [t for i, t in enumerate([7, *tokens]) if i % window][: len(scored)]


# --- the loops users compare with ----------------------------------------------


@pytest.mark.parametrize("stride", [WINDOW, WINDOW // 2])
def test_perplexity_equals_the_transformers_docs_loop(tmp_path, gpt2_lm, stride):
    texts = documents(3)
    result, rows = run_pipeline(tmp_path, gpt2_lm, texts, options={"stride": stride})
    tokenizer = AutoTokenizer.from_pretrained(gpt2_lm)
    model = AutoModelForCausalLM.from_pretrained(gpt2_lm).eval()
    total_nll, total_tokens = 0.0, 0
    for text, row in zip(texts, rows):
        nll, exact, docs_count = docs_loop(model, prefixed_tokens(tokenizer, text), WINDOW, stride)
        assert row["prediction"]["tokens"] == exact
        assert row["prediction"]["loglikelihood"] == pytest.approx(-nll, rel=1e-6, abs=1e-9)
        windows = len(strided_windows(tokenizer(text, add_special_tokens=False)["input_ids"], 0, WINDOW, stride))
        # the docs' count is one short per window after the first wherever windows overlap
        assert exact - docs_count == (max(windows - 1, 0) if stride < WINDOW else 0) or exact == 0
        total_nll, total_tokens = total_nll + nll, total_tokens + exact
    assert result.report["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-6)


def test_default_windows_equal_lm_evaluation_harness_loglikelihood_rolling(tmp_path, llama_lm):
    texts = documents(4)
    result, rows = run_pipeline(tmp_path, llama_lm, texts)
    tokenizer = AutoTokenizer.from_pretrained(llama_lm)
    model = AutoModelForCausalLM.from_pretrained(llama_lm).eval()
    loglikelihoods = []
    for text, row in zip(texts, rows):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = harness_loglikelihood(model, tokens, tokenizer.bos_token_id, WINDOW)
        assert row["prediction"] == {"loglikelihood": pytest.approx(expected, rel=1e-6, abs=1e-9), "tokens": len(tokens)}
        assert row["reference"] == {"words": len(re.split(r"\s+", text)), "bytes": len(text.encode("utf-8"))}
        loglikelihoods.append(expected)
    # lm-evaluation-harness's aggregations: weighted_perplexity over words and bytes, bits_per_byte
    words = sum(row["reference"]["words"] for row in rows)
    utf8 = sum(row["reference"]["bytes"] for row in rows)
    metrics = result.report["metrics"]
    assert metrics["word_perplexity"]["value"] == pytest.approx(math.exp(-sum(loglikelihoods) / words), rel=1e-6)
    assert metrics["byte_perplexity"]["value"] == pytest.approx(math.exp(-sum(loglikelihoods) / utf8), rel=1e-6)
    assert metrics["bits_per_byte"]["value"] == pytest.approx(-sum(loglikelihoods) / utf8 / math.log(2), rel=1e-6)


@pytest.mark.parametrize("fixture", ["gpt2_lm", "llama_lm", "qwen2_lm"])
def test_every_architecture_runs_and_batch_size_does_not_change_loglikelihoods(tmp_path, request, fixture):
    path = request.getfixturevalue(fixture)
    texts = documents(5)
    by_batch = {}
    for batch_size in (1, 8, "auto"):
        _, rows = run_pipeline(tmp_path, path, texts, name=f"lm-{batch_size}", model={"batch_size": batch_size})
        by_batch[batch_size] = np.array([row["prediction"]["loglikelihood"] for row in rows])
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert [row["prediction"]["tokens"] for row in rows] == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    for batch_size in (8, "auto"):
        np.testing.assert_allclose(by_batch[batch_size], by_batch[1], rtol=1e-5, atol=1e-9)
    assert (by_batch[1][:-1] < 0).all() and by_batch[1][-1] == 0.0  # the empty document has nothing to score


def test_trained_model_has_a_far_lower_perplexity_than_an_untrained_one(tmp_path, trained_gpt2_lm, gpt2_lm):
    texts = documents()
    trained, _ = run_pipeline(tmp_path, trained_gpt2_lm, texts, name="trained")
    untrained, _ = run_pipeline(tmp_path, gpt2_lm, texts, name="untrained")
    # bytes, not tokens: the two tokenizers differ, the text does not
    assert trained.report["metrics"]["byte_perplexity"]["value"] * 4 < untrained.report["metrics"]["byte_perplexity"]["value"]
    assert trained.report["metrics"]["bits_per_byte"]["value"] < 3.5


# --- metrics ---------------------------------------------------------------------


def test_metrics_are_ratios_of_sums_over_documents_and_resample_documents():
    predictions = [{"loglikelihood": -120.0, "tokens": 40}, {"loglikelihood": -10.0, "tokens": 10}, {"loglikelihood": -300.0, "tokens": 50}]
    texts = ["a b  c\td", "ünï code", "x " * 30]
    references = [document_counts(t) for t in texts]
    assert references[0] == {"words": 4, "bytes": 8} and references[1]["bytes"] == 10 and references[2]["words"] == 31
    counts = np.array([[1, 1, 1], [3, 0, 0], [0, 2, 1], [1, 0, 2]])
    for metric, unit, of in [(Perplexity(), "tokens", math.exp), (WordPerplexity(), "words", math.exp),
                             (BytePerplexity(), "bytes", math.exp), (BitsPerByte(), "bytes", lambda x: x / math.log(2))]:
        stats = metric.example_stats(predictions, references)
        sizes = [(p if unit == "tokens" else r)[unit] for p, r in zip(predictions, references)]
        assert metric.score(stats) == pytest.approx(of(-sum(p["loglikelihood"] for p in predictions) / sum(sizes)), rel=1e-12)
        expected = [of(-sum(c * p["loglikelihood"] for c, p in zip(row, predictions)) / sum(c * s for c, s in zip(row, sizes)))
                    for row in counts]
        np.testing.assert_allclose(metric.resample_scores(stats, counts), expected, rtol=1e-12)
        assert metric.score(np.concatenate([stats[:1], stats[1:]])) == metric.score(stats)
        assert not metric.higher_is_better
    # not the mean of per-document perplexities (HF evaluate's mean_perplexity)
    stats = Perplexity().example_stats(predictions, references)
    assert Perplexity().score(stats) != pytest.approx(float(np.mean(Perplexity().example_scores(stats))))


def test_interval_is_a_bootstrap_over_documents(tmp_path, gpt2_lm):
    texts = documents()
    result, rows = run_pipeline(tmp_path, gpt2_lm, texts)
    entry = result.report["metrics"]["perplexity"]
    assert entry["n"] == len(texts) and "over examples" in entry["ci"]["method"]
    assert entry["ci"]["low"] < entry["value"] < entry["ci"]["high"]
    assert [row["scores"]["perplexity"] for row in rows[:-1]] == [
        pytest.approx(math.exp(-row["prediction"]["loglikelihood"] / row["prediction"]["tokens"]), rel=1e-6) for row in rows[:-1]]


# --- bad input, cache ---------------------------------------------------------------


def test_encoder_checkpoint_for_language_modeling_is_one_model_error(tmp_path, bert_classifier):
    with pytest.raises(ModelError) as raised:
        run_pipeline(tmp_path, bert_classifier, ["Some text."])
    message = str(raised.value)
    assert str(bert_classifier) in message and "not a causal language model" in message
    assert "BertForSequenceClassification" in message and "sequence-classification" in message


def test_causal_checkpoint_for_an_encoder_head_is_one_model_error(tmp_path, gpt2_lm, write_pipelines):
    config = write_pipelines(
        "pipelines:\n  zero:\n    task: text-classification\n    data: {path: docs.jsonl}\n"
        f"    model: {{name_or_path: {json.dumps(str(gpt2_lm))}, device: cpu}}\n"
        "    options: {mode: zero-shot, labels: {good: a good thing, bad: a bad thing}}\n"
    )
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "fine", "label": "good"}) + "\n", encoding="utf-8")
    with pytest.raises(ModelError) as raised:
        nlpflow.run(["zero"], config=config, output=tmp_path / "out", use_cache=False)
    message = str(raised.value)
    assert str(gpt2_lm) in message and "is a causal language model (GPT2LMHeadModel)" in message and "token-logprobs" in message


def test_stride_longer_than_the_window_is_refused(tmp_path, gpt2_lm):
    with pytest.raises(ModelError, match="stride 64 is longer than the window"):
        run_pipeline(tmp_path, gpt2_lm, ["Some text."], options={"stride": 64})


def test_cached_rerun_writes_identical_predictions(tmp_path, gpt2_lm):
    texts = documents(3)
    cache = tmp_path / "cache"
    first, _ = run_pipeline(tmp_path, gpt2_lm, texts, name="first", cache=cache, options={"stride": 16})
    second, _ = run_pipeline(tmp_path, gpt2_lm, texts, name="first", cache=cache, options={"stride": 16})
    assert (first.report["counts"]["from_cache"], second.report["counts"]["from_cache"]) == (0, len(texts))
    assert (first.directory / "predictions.jsonl").read_bytes() == (second.directory / "predictions.jsonl").read_bytes()


def test_plan_batches_windows_scored_alike_together(gpt2_lm):
    """Overlapping windows of one width score either all their positions (a document's first window) or only the
    new ones: the plan keeps the two kinds apart, so the head's vocabulary projection runs where rows need it."""
    from nlpflow import Example, ModelConfig
    from nlpflow.engine.model_stage import ModelStage
    from nlpflow.plugins.language_modeling import LanguageModeling, LanguageModelingOptions
    from nlpflow.plugins.torch_backend import TorchBackend

    config = ModelConfig(name_or_path=str(gpt2_lm), device="cpu", max_length=WINDOW, batch_size=3)
    task = LanguageModeling(LanguageModelingOptions(stride=WINDOW // 2))
    stage = ModelStage(task.load(config, TorchBackend()), config)
    examples = [Example(i, i + 1, {"text": text}, {"text": text}) for i, text in enumerate(many_documents(12))]
    features = stage.task_model.encode(examples)
    batches = stage.plan(features)

    def kind(index):
        inputs = features[index].inputs
        return len(inputs["input_ids"]), inputs["target_ids"].count(-100)

    kinds = [kind(index) for batch in batches for index in batch]
    assert kinds == sorted(kinds, key=lambda pair: (-pair[0], pair[1]))  # longest first, then by unscored context
    mixed = sum(len({kind(index) for index in batch}) > 1 for batch in batches)
    assert len(set(kinds)) > 2 and mixed <= len(set(kinds)) - 1  # only where one kind ends and the next begins
    kept = []
    module = stage.loaded.handle
    original = module.forward

    def recording(*args, logits_to_keep=0, **kwargs):
        kept.append(len(logits_to_keep))
        return original(*args, logits_to_keep=logits_to_keep, **kwargs)

    module.forward = recording
    predictions = list(stage.run(examples))
    assert len(kept) == len(batches)  # one forward per planned batch, in plan order
    for batch, columns in zip(batches, kept):
        if len({kind(index) for index in batch}) == 1:  # a batch of one kind projects exactly what its rows score
            width, unscored = kind(batch[0])
            assert columns == width - unscored
    assert len(predictions) == len(examples)


def test_head_gives_float32_logprobs_from_a_bfloat16_model(gpt2_lm):
    from nlpflow import ModelConfig
    from nlpflow.plugins.torch_backend import TorchBackend

    loaded = TorchBackend().load(ModelConfig(name_or_path=str(gpt2_lm), device="cpu", dtype="bfloat16"), "token-logprobs")
    ids = np.array([[0, 5, 9, 12]])
    out = loaded.run({"input_ids": ids[:, :-1], "attention_mask": np.ones((1, 3), dtype=np.int64), "target_ids": ids[:, 1:]})
    assert out["logprobs"].dtype == np.float32 and out["logprobs"].shape == (1, 3) and (out["logprobs"] < 0).all()


# --- cache and resume -------------------------------------------------------------


def many_documents(count: int = 40) -> list[str]:
    """Pieces of the held-out text of varied lengths (one to several windows each)."""
    text = " ".join(json.loads(line)["text"] for line in HELDOUT.read_text(encoding="utf-8").splitlines())
    pieces, start = [], 0
    for i in range(count):
        length = 60 + (i * 97) % 400
        pieces.append(text[start : start + length].strip())
        start += length
    assert all(pieces) and start < len(text)
    return pieces


def lm_config(tmp_path, model_path, texts, chunk_size: int, batch_size: int):
    data = tmp_path / "lm.jsonl"
    data.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    pipeline = {"task": "language-modeling", "data": {"path": data.name}, "chunk_size": chunk_size,
                "model": {"name_or_path": str(model_path), "device": "cpu", "max_length": WINDOW, "batch_size": batch_size}}
    config = tmp_path / "lm.yaml"
    config.write_text(json.dumps({"pipelines": {"lm": pipeline}}), encoding="utf-8")
    return config


def test_sigkilled_run_resumes_byte_identical(tmp_path, trained_gpt2_lm):
    from tests.test_resume import killed_and_resumed

    chunk = 5
    texts = many_documents()
    config = lm_config(tmp_path, trained_gpt2_lm, texts, chunk_size=chunk, batch_size=3)
    stored = killed_and_resumed(config, "lm", tmp_path, at_least=2 * chunk)
    assert 0 < stored < len(texts)
    resumed = json.loads((tmp_path / "out" / "lm" / "report.json").read_text(encoding="utf-8"))
    baseline = json.loads((tmp_path / "baseline" / "lm" / "report.json").read_text(encoding="utf-8"))
    assert resumed["counts"]["from_cache"] >= stored
    assert resumed["model"]["batches"] < baseline["model"]["batches"]  # the finished windows were not scored again
    assert (tmp_path / "out" / "lm" / "predictions.jsonl").read_bytes() == (tmp_path / "baseline" / "lm" / "predictions.jsonl").read_bytes()
    assert resumed["metrics"] == baseline["metrics"]


def test_cache_key_holds_the_windows_and_the_weights(tmp_path, gpt2_lm):
    """A change of stride or window, or new weights in the same folder, is a cache miss; the same run again hits."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(gpt2_lm, model)
    texts = documents(3)
    cache = tmp_path / "cache"

    def from_cache(options=None, max_length=WINDOW) -> int:
        result, _ = run_pipeline(tmp_path, model, texts, options=options, model={"max_length": max_length}, cache=cache)
        return result.report["counts"]["from_cache"]

    assert from_cache() == 0
    assert from_cache() == len(texts)
    assert from_cache(options={"stride": 16}) == 0
    assert from_cache(options={"stride": 24}) == 0
    assert from_cache(max_length=WINDOW // 2) == 0
    weights = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        weights.get_output_embeddings().weight.mul_(1.5)
    weights.save_pretrained(model)
    assert from_cache() == 0
    assert from_cache() == len(texts)


@pytest.mark.parametrize("stop_at_batch", [4, 9], ids=["first-chunk", "second-chunk"])
def test_an_interrupted_run_says_how_many_documents_the_rerun_takes_from_the_cache(tmp_path, gpt2_lm, monkeypatch, capsys, stop_at_batch):
    """Documents of several windows span batches: one is reused only when none of its windows' batches is rerun (in
    the first chunk, stopped part-way, no document has all its windows in finished batches that a rerun skips)."""
    import nlpflow.engine.batches as batches
    from nlpflow.cli import main
    from tests.test_resume import _cached_rows

    texts = many_documents(16)
    texts[3] = texts[2]  # a repeat within the first chunk: computed again at each place, so never counted
    config = lm_config(tmp_path, gpt2_lm, texts, chunk_size=8, batch_size=3)
    original = batches.ChunkPlan.collate
    calls = []

    def interrupted(self, indices):
        calls.append(len(indices))
        if len(calls) == stop_at_batch:
            raise KeyboardInterrupt
        return original(self, indices)

    monkeypatch.setattr(batches.ChunkPlan, "collate", interrupted)
    arguments = ["run", "lm", "--config", str(config), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(arguments) == 130
    said = int(capsys.readouterr().err.split("a rerun will take ")[1].split(" predictions")[0])
    monkeypatch.setattr(batches.ChunkPlan, "collate", original)
    assert main(arguments) == 0
    report = json.loads((tmp_path / "out" / "lm" / "report.json").read_text(encoding="utf-8"))
    assert said == report["counts"]["from_cache"]
    assert (said > 0) == (stop_at_batch == 9)
    assert _cached_rows(tmp_path / "cache") > 0  # what the old count said: predictions stored, though not reused
