"""Translation: seq2seq loading and generation (batched == unbatched == model.generate), and
BLEU/chrF/TER equal to sacreBLEU's corpus and sentence functions."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sacrebleu
from pydantic import ValidationError

from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.contract.types import ModelConfig
from nlpflow.contract.errors import ModelError
from nlpflow.engine.model_stage import ModelStage
from nlpflow.contract.types import Example
from nlpflow.plugins.seq2seq import Seq2SeqModel
from nlpflow.plugins.translation import Bleu, Chrf, Ter, Translation, TranslationOptions, reference_streams

SOURCES = [
    "The weather is very nice today.",
    "Berlin is the capital of Germany.",
    "Can you help me, please?",
    "The children play football in the garden, and the teacher explained the strange painting in the library after lunch.",
    "Thank you.",
    "We bought a new car.",
]

HYPOTHESES = [
    "Das ist ein Test.",
    "",
    "Grüße aus Köln! Straße, Maß & Fußball.",
    "...",
    "Hallo Welt",
    "the cat sat on the mat .",
    "東京は日本の首都です。",
    "Ein Satz mit einer Zahl 3.14 und 50%.",
]
REFERENCES = [
    ["Das ist ein Test.", "Dies ist ein Test."],
    "Etwas",
    ["Grüße aus Köln!", "Viele Grüße aus Köln.", "Straße und Maß."],
    "!!!",
    ["Hallo, Welt!", "Hallo Welt"],
    "The cat sat on the mat.",
    "東京は日本の首都である。",
    ["Ein Satz mit der Zahl 3.14 und 50 %."],
]


@pytest.fixture(scope="module")
def marian_model(models_dir):
    pytest.importorskip("sentencepiece")
    from tests.model_factory import build_marian

    return build_marian(models_dir / "marian")


def examples(texts):
    return [Example(index=i, line=i + 1, fields={"source": text}) for i, text in enumerate(texts)]


def load(path, **options) -> Seq2SeqModel:
    return Translation(TranslationOptions(**options)).load(ModelConfig(name_or_path=str(path), device="cpu"), TorchBackend())


# --- model -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["t5_model", "bart_model", "marian_model"])
def test_seq2seq_checkpoints_load_and_batching_does_not_change_outputs(fixture, request):
    path = request.getfixturevalue(fixture)
    task_model = load(path, max_new_tokens=8)
    assert isinstance(task_model, Seq2SeqModel)
    config = ModelConfig(name_or_path=str(path), device="cpu")

    batched = ModelStage(task_model, config).run(examples(SOURCES))
    one_at_a_time = ModelStage(task_model, config.model_copy(update={"batch_size": 1})).run(examples(SOURCES))
    tight_budget = ModelStage(task_model, config.model_copy(update={"max_tokens": 40})).run(examples(SOURCES))
    assert [p.value for p in batched] == [p.value for p in one_at_a_time] == [p.value for p in tight_budget]
    assert all(isinstance(p.value, str) and p.value for p in batched)

    # the same text model.generate gives for each input alone
    model, tokenizer = task_model.loaded.handle, task_model.loaded.tokenizer
    expected = []
    for text in SOURCES:
        inputs = tokenizer([text], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected.append(tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=True)[0].strip())
    assert [p.value for p in batched] == expected


def test_generation_options_reach_generate_and_the_cache_key(t5_model):
    task_model = load(t5_model, num_beams=3, max_new_tokens=5, no_repeat_ngram_size=2, prefix="translate English to German: ")
    parameters = task_model.parameters()
    assert parameters["generate"] == {"do_sample": False, "max_new_tokens": 5, "no_repeat_ngram_size": 2, "num_beams": 3}
    assert parameters["prefix"] == "translate English to German: "
    prediction = ModelStage(task_model, ModelConfig(name_or_path=str(t5_model), device="cpu")).run(examples(SOURCES[:2]))
    tokenizer, model = task_model.loaded.tokenizer, task_model.loaded.handle
    inputs = tokenizer(["translate English to German: " + SOURCES[0]], return_tensors="pt")
    output = model.generate(**inputs, num_beams=3, max_new_tokens=5, no_repeat_ngram_size=2, do_sample=False)
    assert prediction[0].value == tokenizer.batch_decode(output, skip_special_tokens=True)[0].strip()
    assert output.shape[1] <= 1 + 5  # the decoder start token and at most max_new_tokens


def test_sampling_is_refused():
    with pytest.raises(ValidationError):
        TranslationOptions(do_sample=True)
    with pytest.raises(ValidationError):
        TranslationOptions(temperature=0.7)


def test_long_sources_are_truncated_and_counted(t5_model, marian_model):
    for path in (t5_model, marian_model):
        task_model = Translation().load(ModelConfig(name_or_path=str(path), device="cpu", max_length=8), TorchBackend())
        batch = examples([SOURCES[3], SOURCES[4]])
        features = task_model.encode(batch)
        assert [len(f.inputs["input_ids"]) <= 8 for f in features] == [True, True]
        assert batch[0].notes.get("truncated") is True
        assert "truncated" not in batch[1].notes


def test_wrong_head_and_unknown_languages_are_model_errors(bert_classifier, t5_model):
    with pytest.raises(ModelError, match="not a sequence-to-sequence"):
        Translation().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), TorchBackend())
    with pytest.raises(ModelError, match="source_lang"):
        load(t5_model, source_lang="en", target_lang="de")
    with pytest.raises(ModelError, match="target_lang 'xx_YY'"):
        load(t5_model, target_lang="xx_YY")


def test_hub_model_not_available_offline_names_model_and_fetch_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        Translation().load(ModelConfig(name_or_path="Helsinki-NLP/opus-mt-en-de", device="cpu"), TorchBackend())
    message = str(error.value)
    assert "Helsinki-NLP/opus-mt-en-de" in message
    assert "hf download Helsinki-NLP/opus-mt-en-de" in message


# --- metrics -----------------------------------------------------------------


def sacre_refs(references):
    return [[r] if isinstance(r, str) else r for r in references]


CASES = [
    (Bleu, {}, sacrebleu.corpus_bleu, sacrebleu.sentence_bleu, {}),
    (Bleu, {"lowercase": True, "tokenize": "intl", "smooth_method": "floor", "smooth_value": 0.2},
     sacrebleu.corpus_bleu, sacrebleu.sentence_bleu, {"lowercase": True, "tokenize": "intl", "smooth_method": "floor", "smooth_value": 0.2}),
    (Bleu, {"tokenize": "char", "smooth_method": "add-k"}, sacrebleu.corpus_bleu, sacrebleu.sentence_bleu,
     {"tokenize": "char", "smooth_method": "add-k"}),
    (Chrf, {}, sacrebleu.corpus_chrf, sacrebleu.sentence_chrf, {}),
    (Chrf, {"word_order": 2}, sacrebleu.corpus_chrf, sacrebleu.sentence_chrf, {"word_order": 2}),
    (Ter, {}, sacrebleu.corpus_ter, sacrebleu.sentence_ter, {}),
    (Ter, {"case_sensitive": True, "no_punct": True}, sacrebleu.corpus_ter, sacrebleu.sentence_ter,
     {"case_sensitive": True, "no_punct": True}),
]


@pytest.mark.parametrize("metric_cls, options, corpus_fn, sentence_fn, kwargs", CASES)
def test_metrics_equal_sacrebleu(metric_cls, options, corpus_fn, sentence_fn, kwargs):
    metric = metric_cls(metric_cls.Options(**options))
    # stats computed in two chunks, as the runner does, then concatenated
    stats = np.concatenate([metric.example_stats(HYPOTHESES[:3], REFERENCES[:3]), metric.example_stats(HYPOTHESES[3:], REFERENCES[3:])])
    expected = corpus_fn(HYPOTHESES, reference_streams(REFERENCES), **kwargs)
    assert metric.score(stats) == expected.score
    sentence = [sentence_fn(h, r, **kwargs).score for h, r in zip(HYPOTHESES, sacre_refs(REFERENCES))]
    assert np.allclose(metric.example_scores(stats), sentence, rtol=0, atol=1e-12)
    # any subset (a bootstrap resample) scores as sacreBLEU scores those sentences
    rng = random.Random(0)
    for _ in range(5):
        rows = [rng.randrange(len(HYPOTHESES)) for _ in HYPOTHESES]
        subset = corpus_fn([HYPOTHESES[i] for i in rows], reference_streams([REFERENCES[i] for i in rows]), **kwargs)
        assert metric.score(stats[rows]) == subset.score
    # the signature is sacreBLEU's own, as its metric object reports it after scoring the same references
    reference_metric = type(metric.metric)(**metric.options.model_dump())
    reference_metric.corpus_score(HYPOTHESES, reference_streams(REFERENCES))
    assert metric.signature() == reference_metric.get_signature().format()


def test_signature_counts_references():
    metric = Bleu()
    metric.example_stats(["a b c"], ["a b c"])
    metric.example_stats(["d e"], [["d e"]])
    assert metric.signature().startswith("nrefs:1|")
    metric.example_stats(["f"], [["f", "g"]])
    assert metric.signature().startswith("nrefs:var|")
    assert Ter.higher_is_better is False and Bleu.scale == "0-100"


def test_references_are_checked():
    from nlpflow.contract.types import ExampleError

    task = Translation()
    for bad in ([], [1, 2], 3):
        with pytest.raises(ExampleError, match="reference"):
            task.check_example(Example(0, 1, {"source": "x", "reference": bad}))
    with pytest.raises(ExampleError, match="source"):
        task.check_example(Example(0, 1, {"source": "  "}))


# --- pipelines ---------------------------------------------------------------


def test_yaml_pipeline_with_local_model_and_prediction_only(tmp_path, write_pipelines, t5_model):
    from nlpflow.api import run
    from tests.conftest import REPO

    records = [json.loads(line) for line in (REPO / "examples/data/en_de.jsonl").read_text(encoding="utf-8").splitlines()[:8]]
    scored = tmp_path / "scored.jsonl"
    hypotheses = ["Guten Morgen zusammen.", "Wo ist der Bahnhof?", "", "Ich möchte Kaffee."] + ["Hallo"] * 4
    with open(scored, "w", encoding="utf-8") as handle:
        for record, hypothesis in zip(records, hypotheses):
            handle.write(json.dumps({**record, "output": hypothesis}, ensure_ascii=False) + "\n")
    config = write_pipelines(
        f"""
pipelines:
  mt-local:
    task: translation
    data: {{path: {REPO / 'examples/data/en_de.jsonl'}, limit: 8}}
    options: {{prefix: "translate English to German: ", max_new_tokens: 6}}
    model: {{name_or_path: {t5_model}, device: cpu, batch_size: 3}}
    metrics: [bleu, {{chrf: {{word_order: 2}}}}, ter]
    report: {{formats: [json], bootstrap: {{resamples: 50}}}}
  mt-given:
    task: translation
    data: {{path: {scored}}}
    fields: {{prediction: output}}
    report: {{formats: [json], bootstrap: {{resamples: 50}}}}
"""
    )
    local, given = run(["mt-local", "mt-given"], config=config, output=tmp_path / "out", cache_dir=tmp_path / "cache")

    lines = [json.loads(line) for line in (local.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["index"] for line in lines] == list(range(8))
    task_model = load(t5_model, prefix="translate English to German: ", max_new_tokens=6)
    direct = ModelStage(task_model, ModelConfig(name_or_path=str(t5_model), device="cpu", batch_size=1)).run(
        examples([r["source"] for r in records])
    )
    assert [line["prediction"] for line in lines] == [p.value for p in direct]
    references = [r["reference"] for r in records]
    predictions = [line["prediction"] for line in lines]
    assert local.report["metrics"]["bleu"]["value"] == sacrebleu.corpus_bleu(predictions, reference_streams(references)).score
    assert local.report["metrics"]["chrf"]["value"] == sacrebleu.corpus_chrf(predictions, reference_streams(references), word_order=2).score
    assert local.report["model"]["parameters"]["generate"]["max_new_tokens"] == 6

    assert given.report["model"] is None
    assert given.report["metrics"]["bleu"]["value"] == sacrebleu.corpus_bleu(hypotheses, reference_streams(references)).score
    assert given.report["metrics"]["ter"]["value"] == sacrebleu.corpus_ter(hypotheses, reference_streams(references)).score
    assert given.report["metrics"]["ter"]["higher_is_better"] is False
    assert given.report["metrics"]["bleu"]["signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:")
