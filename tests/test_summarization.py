"""Summarization: generation with sentence-level input truncation, the lead and centroid baselines,
and ROUGE equal to rouge-score's RougeScorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spacy
from rouge_score import rouge_scorer

from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.contract.types import ModelConfig
from nlpflow.contract.errors import ModelError
from nlpflow.engine.model_stage import ModelStage
from nlpflow.contract.types import Example
from nlpflow.plugins.seq2seq import Seq2SeqModel
from nlpflow.plugins.summarization import RougeLsum, Rouge1, Rouge2, RougeL, Summarization, SummarizationOptions
from tests.conftest import REPO

NEWS = REPO / "examples/data/news_summaries.jsonl"

PREDICTIONS = [
    "The river flooded three towns. Thousands left their homes!",
    "",
    "Ünïcödé façade: naïve café résumé.",
    "... !!! ???",
    "Profits rose. Shares fell sharply on Monday, analysts said.",
    "running runners ran quickly",
]
REFERENCES = [
    "Floods forced thousands from their homes. Three towns were hit.",
    "A new museum opens next spring.",
    ["A naïve café façade.", "The résumé of a café."],
    "!!!",
    ["Shares fell on Monday. Profits rose in the quarter.", "Record profits; shares down.", "Markets fell."],
    "the runner runs quick",
]


def independent_lines(text: str) -> str:
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return "\n".join(s.text.strip() for s in nlp(text).sents if s.text.strip())


@pytest.mark.parametrize("metric_cls", [Rouge1, Rouge2, RougeL, RougeLsum])
@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_equals_rouge_scorer(metric_cls, use_stemmer):
    # split_summaries: the spaCy split is compared with independent_lines; without it rouge-score is used as is
    metric = metric_cls(metric_cls.Options(use_stemmer=use_stemmer, split_summaries=True))
    stats = np.concatenate([metric.example_stats(PREDICTIONS[:2], REFERENCES[:2]), metric.example_stats(PREDICTIONS[2:], REFERENCES[2:])])
    scorer = rouge_scorer.RougeScorer([metric.rouge_type], use_stemmer=use_stemmer)
    prepare = independent_lines if metric_cls is RougeLsum else (lambda text: text)
    expected = []
    for prediction, reference in zip(PREDICTIONS, REFERENCES):
        references = [reference] if isinstance(reference, str) else reference
        scores = [scorer.score(prepare(r), prepare(prediction))[metric.rouge_type].fmeasure for r in references]
        expected.append(max(scores))
    assert metric.example_scores(stats).tolist() == expected
    assert abs(metric.score(stats) - float(np.mean(expected))) < 1e-12
    assert metric.signature().startswith(f"rouge-score 0.1.2|{metric.rouge_type}|stemmer={use_stemmer}")


def test_rouge_lsum_splits_sentences_onto_lines():
    metric = RougeLsum(RougeLsum.Options(split_summaries=True))
    assert metric.signature().endswith("split=spacy-sentencizer(en)")
    assert metric.prepare(["One sentence. Two sentences! Three?"]) == ["One sentence.\nTwo sentences!\nThree?"]
    # splitting matters: the summary-level LCS differs from ROUGE-L on the same text
    prediction = "Three towns were hit. Floods forced thousands from their homes."
    reference = "Floods forced thousands from their homes. Three towns were hit."
    assert metric.example_stats([prediction], [reference])[0, 0] > RougeL().example_stats([prediction], [reference])[0, 0]


def news(limit=None):
    rows = [json.loads(line) for line in NEWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def examples(documents):
    return [Example(index=i, line=i + 1, fields={"document": d}) for i, d in enumerate(documents)]


# --- generation --------------------------------------------------------------


def test_long_documents_keep_whole_leading_sentences(bart_model):
    limit = 96
    task = Summarization(SummarizationOptions(max_new_tokens=6))
    task_model = task.load(ModelConfig(name_or_path=str(bart_model), device="cpu", max_length=limit), TorchBackend())
    assert isinstance(task_model, Seq2SeqModel)
    documents = [row["document"] for row in news(6)] + ["Short text. Two sentences."]
    batch = examples(documents)
    features = task_model.encode(batch)
    tokenizer = task_model.loaded.tokenizer
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    whole = 0
    for example, feature, document in zip(batch, features, documents):
        ids = feature.inputs["input_ids"]
        assert len(ids) <= limit
        if not example.notes.get("truncated"):
            assert len(tokenizer(document)["input_ids"]) <= limit
            assert tokenizer.decode(ids, skip_special_tokens=True) == document
            continue
        kept = tokenizer.decode(ids, skip_special_tokens=True)
        leading = [document[: s.end_char].rstrip() for s in nlp(document).sents]
        fitting = [text for text in leading if len(tokenizer(text)["input_ids"]) <= limit]
        if fitting:  # the longest run of whole leading sentences that fits
            assert kept == fitting[-1]
            assert len(tokenizer(leading[len(fitting)])["input_ids"]) > limit
            whole += 1
        else:  # the first sentence alone is too long: cut by tokens
            assert leading[0].startswith(kept)
    assert whole >= 3
    assert sum(bool(e.notes.get("truncated")) for e in batch) == 6
    assert not batch[-1].notes


def test_generated_summaries_equal_generate_and_do_not_depend_on_batching(bart_model):
    task = Summarization(SummarizationOptions(max_new_tokens=6, num_beams=2))
    config = ModelConfig(name_or_path=str(bart_model), device="cpu", max_length=64)
    task_model = task.load(config, TorchBackend())
    documents = [row["document"] for row in news(5)] + ["A short one. Two sentences."]
    batched = ModelStage(task_model, config).run(examples(documents))
    single = ModelStage(task_model, config.model_copy(update={"batch_size": 1})).run(examples(documents))
    assert [p.value for p in batched] == [p.value for p in single]

    inputs_text = [task_model.loaded.tokenizer.decode(f.inputs["input_ids"], skip_special_tokens=True)
                   for f in task_model.encode(examples(documents))]
    model, tokenizer = task_model.loaded.handle, task_model.loaded.tokenizer
    expected = []
    for text in inputs_text:
        output = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=6, num_beams=2, do_sample=False)
        expected.append(tokenizer.batch_decode(output, skip_special_tokens=True)[0].strip())
    assert [p.value for p in batched] == expected


# --- baselines ---------------------------------------------------------------


def test_lead_and_centroid_baselines(minilm_path):
    from transformers import AutoModel, AutoTokenizer

    rows = news()
    documents = [row["document"] for row in rows]
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    split = [[s.text.strip() for s in nlp(d).sents if s.text.strip()] for d in documents]
    config = ModelConfig(name_or_path=str(minilm_path), device="cpu")

    lead = Summarization(SummarizationOptions(method="lead", sentences=3))
    assert lead.rule_based
    predictions = lead.predict_by_rule(examples(documents))
    assert [p.value for p in predictions] == [" ".join(s[:3]) for s in split]
    with pytest.raises(ModelError, match="method 'lead' runs no model"):
        lead.load(config, TorchBackend())

    centroid = Summarization(SummarizationOptions(method="centroid", sentences=2)).load(config, TorchBackend())
    assert centroid.loaded.path == str(minilm_path)
    chosen = ModelStage(centroid, config).run(examples(documents[:6]))
    single = ModelStage(centroid, config.model_copy(update={"batch_size": 1})).run(examples(documents[:6]))
    assert [p.value for p in chosen] == [p.value for p in single]

    # the same selection computed directly with transformers
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    import torch

    for prediction, sentences in zip(chosen, split):
        with torch.inference_mode():
            encoded = tokenizer(sentences, padding=True, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).double().numpy()
        centre = embeddings.mean(0)
        similarity = embeddings @ (centre / np.linalg.norm(centre))
        order = np.argsort(-similarity, kind="stable")[:2]
        assert prediction.details["sentences"] == sorted(order.tolist())
        assert prediction.value == " ".join(sentences[i] for i in sorted(order.tolist()))


def test_baseline_and_prediction_only_pipelines(tmp_path, write_pipelines, bart_model):
    from nlpflow.api import run

    scored = tmp_path / "scored.jsonl"
    rows = news(6)
    with open(scored, "w", encoding="utf-8") as handle:
        for row in rows:
            first = row["document"].split(". ")[0] + "."
            handle.write(json.dumps({**row, "prediction": first}, ensure_ascii=False) + "\n")
    config = write_pipelines(
        f"""
pipelines:
  lead3:
    task: summarization
    data: {{path: {NEWS}}}
    options: {{method: lead, sentences: 3}}
    report: {{formats: [json], bootstrap: {{resamples: 50}}}}
  bart:
    task: summarization
    data: {{path: {NEWS}, limit: 3}}
    options: {{max_new_tokens: 5}}
    model: {{name_or_path: {bart_model}, device: cpu, max_length: 64}}
    metrics: [rouge1, {{rougeLsum: {{use_stemmer: false}}}}]
    report: {{formats: [json], bootstrap: {{resamples: 50}}}}
  given:
    task: summarization
    data: {{path: {scored}}}
    report: {{formats: [json], bootstrap: {{resamples: 50}}}}
"""
    )
    lead, bart, given = run(["lead3", "bart", "given"], config=config, output=tmp_path / "out", cache_dir=tmp_path / "cache")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    lines = [json.loads(line) for line in (lead.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = np.mean([scorer.score(r["summary"], line["prediction"])["rouge1"].fmeasure for r, line in zip(news(), lines)])
    assert abs(lead.report["metrics"]["rouge1"]["value"] - expected) < 1e-12
    assert lead.report["counts"]["scored"] == len(news())

    assert bart.report["counts"]["truncated"] == 3
    assert set(bart.report["metrics"]) == {"rouge1", "rougeLsum"}
    assert "stemmer=False" in bart.report["metrics"]["rougeLsum"]["signature"]

    assert given.report["model"] is None
    expected = np.mean([scorer.score(r["summary"], r["document"].split(". ")[0] + ".")["rouge2"].fmeasure for r in rows])
    assert abs(given.report["metrics"]["rouge2"]["value"] - expected) < 1e-12


def test_rouge_lsum_keeps_newlines_as_given_like_rouge_score():
    """rouge-score's default (split_summaries=False): sentences are the text's lines, not re-split."""
    reference, prediction = "First sentence. Second Sentence.", "Second sentence. First Sentence."
    expected = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True).score(reference, prediction)["rougeLsum"].fmeasure
    assert expected == pytest.approx(0.5)
    metric = RougeLsum()
    assert metric.example_stats([prediction], [reference])[0, 0] == expected
    assert metric.signature().endswith("|split=newlines")
    lines = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True).score("a b\nc d", "c d\na b")["rougeLsum"].fmeasure
    assert metric.example_stats(["c d\na b"], ["a b\nc d"])[0, 0] == lines == 1.0


@pytest.mark.parametrize("metric_cls", [Rouge1, Rouge2, RougeL, RougeLsum])
def test_unicode_tokenizer_scores_non_english_text(metric_cls):
    pairs = [("Москва — столица России.", "Москва — столица России."), ("我爱北京天安门", "我爱北京天安门")]
    default = metric_cls()
    assert default.example_stats([p for p, _ in pairs], [r for _, r in pairs])[:, 0].tolist() == [0.0, 0.0]
    unicode = metric_cls(metric_cls.Options(tokenizer="unicode"))
    assert unicode.example_stats([p for p, _ in pairs], [r for _, r in pairs])[:, 0].tolist() == [1.0, 1.0]
    assert "|tokenizer=unicode|" in unicode.signature()
    # partial overlap is counted per CJK character: 4 of 7 characters in common
    tokenizer = unicode.scorer._tokenizer
    assert tokenizer.tokenize("我爱北京天安门") == list("我爱北京天安门")
    if metric_cls is Rouge1:
        expected = rouge_scorer.RougeScorer(["rouge1"], tokenizer=tokenizer).score("我爱北京天安门", "我爱北京")["rouge1"]
        assert unicode.example_stats(["我爱北京"], ["我爱北京天安门"])[0].tolist() == [expected.fmeasure, expected.precision, expected.recall]
        assert expected.precision == 1.0 and expected.recall == pytest.approx(4 / 7)


def test_rouge_details_report_precision_and_recall():
    metric = Rouge1()
    stats = metric.example_stats(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    best = [max((scorer.score(r, p)["rouge1"] for r in ([ref] if isinstance(ref, str) else ref)), key=lambda s: s.fmeasure)
            for p, ref in zip(PREDICTIONS, REFERENCES)]
    assert metric.details(stats) == {
        "precision": pytest.approx(np.mean([s.precision for s in best]), abs=1e-12),
        "recall": pytest.approx(np.mean([s.recall for s in best]), abs=1e-12),
    }


def test_lead_k_is_reported_as_rule_based(tmp_path):
    from nlpflow.api import run
    from nlpflow.compare import leaderboard

    [result] = run(["news-summarization-lead3"], REPO / "pipelines.yaml", tmp_path / "out", use_cache=False, interactive=False)
    assert result.report["model"] is None and result.report["rule"] == "lead-3"
    assert "- model: none (rule-based: lead-3)" in (result.directory / "report.md").read_text(encoding="utf-8")
    [group] = leaderboard(tmp_path / "out")
    assert [row["model"] for row in group["rows"]] == ["(rule-based: lead-3)"]
