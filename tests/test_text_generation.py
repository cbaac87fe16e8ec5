"""Text generation with decoder-only models: greedy equal to ``transformers.pipeline("text-generation")`` at every
batch size, beam search equal to ``generate()``, seeded sampling, stop strings, chat templates, left truncation,
scoring, the located template error from ``validate``, the cache key and a SIGKILLed run's resume."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import sacrebleu
from pydantic import ValidationError

from nlpflow.cli import main
from nlpflow.contract.errors import ModelError
from nlpflow.contract.types import Example, ModelConfig
from nlpflow.engine.model_stage import ModelStage
from nlpflow.plugins.text_generation import CausalGenerator, TextGeneration, TextGenerationOptions
from nlpflow.plugins.torch_backend import TorchBackend

PROMPTS = [
    "The cat",
    "Once upon a time there was a",
    "In the beginning of the long and winding story, the old king said to his daughter that",
    "A",
    "We went to the market and bought bread, apples, cheese and",
    "Hello world",
    "The model reads the text and",
    "Two",
    "Then the teacher explained the strange painting in the library after lunch, and the children",
    "Why",
]
NEW_TOKENS = 12


def task_and_model(path, **options) -> tuple[TextGeneration, CausalGenerator]:
    task = TextGeneration(TextGenerationOptions(**{"max_new_tokens": NEW_TOKENS, **options}))
    return task, task.load(ModelConfig(name_or_path=str(path), device="cpu"), TorchBackend())


def checked_examples(task: TextGeneration, records: list[dict]) -> list[Example]:
    examples = []
    for index, record in enumerate(records):
        example = Example(index, index + 1, {name: record[name] for name in ("prompt", "reference") if name in record}, dict(record))
        task.check_example(example)
        examples.append(example)
    return examples


def generate(task, task_model, prompts, batch_size="auto") -> list:
    config = ModelConfig(name_or_path=str(task_model.loaded.path), device="cpu", batch_size=batch_size)
    return ModelStage(task_model, config).run(checked_examples(task, [{"prompt": p} for p in prompts]))


def hf_pipeline(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    return pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path), device="cpu")


# --- generation ----------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["gpt2_lm", "llama_lm", "qwen2_lm"])
def test_greedy_equals_the_transformers_pipeline_at_batch_sizes_1_8_and_auto(fixture, request):
    path = request.getfixturevalue(fixture)
    task, task_model = task_and_model(path, chat_template=False)
    by_size = {size: [p.value for p in generate(task, task_model, PROMPTS, size)] for size in (1, 8, "auto")}
    generator = hf_pipeline(path)
    expected = [generator(p, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)[0]["generated_text"] for p in PROMPTS]
    assert by_size[1] == expected
    assert by_size[8] == expected
    assert by_size["auto"] == expected
    assert any(value.strip() for value in expected)  # the comparison is between real continuations


def test_beam_search_equals_generate_on_one_row(llama_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task, task_model = task_and_model(llama_lm, num_beams=4)
    (prediction,) = generate(task, task_model, [PROMPTS[2]])
    tokenizer = AutoTokenizer.from_pretrained(llama_lm)
    model = AutoModelForCausalLM.from_pretrained(llama_lm)
    inputs = tokenizer(PROMPTS[2], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, num_beams=4, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert prediction.value == expected


def test_seeded_sampling_reproduces_and_leaves_the_global_generator_alone(gpt2_lm):
    import torch

    task, task_model = task_and_model(gpt2_lm, do_sample=True, temperature=1.0, seed=7)
    state = torch.random.get_rng_state()
    first = [p.value for p in generate(task, task_model, PROMPTS)]
    assert torch.equal(torch.random.get_rng_state(), state)
    second = [p.value for p in generate(*task_and_model(gpt2_lm, do_sample=True, temperature=1.0, seed=7), PROMPTS)]
    other_seed = [p.value for p in generate(*task_and_model(gpt2_lm, do_sample=True, temperature=1.0, seed=8), PROMPTS)]
    greedy = [p.value for p in generate(*task_and_model(gpt2_lm), PROMPTS)]
    assert first == second
    assert first != other_seed
    assert first != greedy


def test_stop_strings_end_each_row_at_its_first_stop(gpt2_lm):
    task, task_model = task_and_model(gpt2_lm, max_new_tokens=24)
    free = generate(task, task_model, PROMPTS)
    # a stop string taken from the middle of one continuation: that row must end there, the others where it first occurs
    text = next(p.value for p in free if len(p.value) > 12)
    stop = text[6:9]
    stopped = generate(*task_and_model(gpt2_lm, max_new_tokens=24, stop=[stop]), PROMPTS)
    for unstopped, prediction in zip(free, stopped):
        if stop in unstopped.value:
            assert prediction.value == unstopped.value[: unstopped.value.index(stop)]
            assert prediction.details["finish"] == "stop"
            assert prediction.details["new_tokens"] < unstopped.details["new_tokens"]
        else:
            assert prediction.value == unstopped.value
    assert any(stop in p.value for p in free)


def test_end_of_turn_tokens_end_rows(qwen2_lm):
    task, task_model = task_and_model(qwen2_lm)
    tokenizer = task_model.loaded.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in task_model.head_options()["eos_token_id"]


def test_chat_template_wraps_the_prompt_with_the_system_message(qwen2_lm):
    task, task_model = task_and_model(qwen2_lm, system="You are brief.")
    assert task_model.use_chat_template  # auto: the tokenizer has one
    examples = checked_examples(task, [{"prompt": PROMPTS[1]}])
    (features,) = task_model.encode(examples)
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": PROMPTS[1]}]
    tokenizer = task_model.loaded.tokenizer
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert features.inputs["input_ids"] == list(expected)
    (prediction,) = generate(task, task_model, [PROMPTS[1]])
    reply = hf_pipeline(qwen2_lm)(messages, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert prediction.value == reply

    plain_task, plain = task_and_model(qwen2_lm, chat_template=False, system="You are brief.")
    (plain_features,) = plain.encode(checked_examples(plain_task, [{"prompt": PROMPTS[1]}]))
    assert plain_features.inputs["input_ids"] == tokenizer("You are brief.\n\n" + PROMPTS[1])["input_ids"]
    # the prediction cache must miss when the template a model reads changes or is turned off
    assert task_model.parameters()["chat_template"] == hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
    assert plain.parameters()["chat_template"] is None


def test_chat_template_true_without_one_is_a_model_error(gpt2_lm):
    with pytest.raises(ModelError, match="has no chat template"):
        task_and_model(gpt2_lm, chat_template=True)


def test_long_prompt_is_cut_from_the_left_counted_and_warned(gpt2_lm, caplog):
    task, task_model = task_and_model(gpt2_lm, max_new_tokens=8)
    limit = task_model.prompt_limit
    assert limit == 128 - 8  # the context keeps room for the new tokens
    long = " ".join(PROMPTS * 10)
    examples = checked_examples(task, [{"prompt": long}, {"prompt": PROMPTS[0]}])
    with caplog.at_level(logging.WARNING, logger="nlpflow.plugins.text_generation"):
        features = task_model.encode(examples)
    full = task_model.loaded.tokenizer(long)["input_ids"]
    assert len(full) > limit
    assert features[0].inputs["input_ids"] == full[-limit:]
    assert examples[0].notes.get("truncated") is True and "truncated" not in examples[1].notes
    assert "1 of 2 prompts" in caplog.text


def test_a_checkpoint_that_is_not_decoder_only_is_refused_by_name(bert_classifier):
    with pytest.raises(ModelError, match=r"is not a causal language model .*Heads that fit it: sequence-classification"):
        task_and_model(bert_classifier)


def test_sampling_settings_without_sampling_and_bad_templates_are_option_errors():
    with pytest.raises(ValidationError, match="only apply when sampling"):
        TextGenerationOptions(temperature=0.7)
    with pytest.raises(ValidationError, match="does not parse"):
        TextGenerationOptions(prompt="{{ prompt ")
    assert TextGeneration(TextGenerationOptions(prompt="Q: {{ question }}\nA: {{ prompt }}")).prompt.variables == ("prompt", "question")


# --- pipelines -----------------------------------------------------------------


def write_pipeline(root: Path, model: Path, records: list[dict], options: str = "", chunk_size: int = 1024) -> Path:
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    config = root / "pipelines.yaml"
    config.write_text(
        "pipelines:\n"
        "  gen:\n"
        "    task: text-generation\n"
        f"    chunk_size: {chunk_size}\n"
        f"    data: {{path: {data.name}}}\n"
        f"    model: {{name_or_path: {json.dumps(str(model))}, device: cpu, batch_size: 4}}\n"
        "    options:\n"
        f"      max_new_tokens: 8\n{options}",
        encoding="utf-8",
    )
    return config


def run_report(config: Path, out: Path, cache: Path) -> tuple[dict, list[dict]]:
    assert main(["run", "gen", "--config", str(config), "--output", str(out), "--cache-dir", str(cache)]) == 0
    report = json.loads((out / "gen" / "report.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "gen" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return report, rows


def test_references_are_scored_with_bleu_chrf_and_rouge_and_truncation_is_counted(gpt2_lm, tmp_path):
    records = [{"prompt": p, "reference": f"the reference continuation {i} of the story"} for i, p in enumerate(PROMPTS)]
    records.append({"prompt": " ".join(PROMPTS * 10), "reference": "a long one"})
    report, rows = run_report(write_pipeline(tmp_path, gpt2_lm, records), tmp_path / "out", tmp_path / "cache")
    predictions = [row["prediction"] for row in rows]
    references = [record["reference"] for record in records]
    assert report["metrics"]["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-6)
    assert report["metrics"]["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score, abs=1e-6)
    assert {"rouge1", "rouge2", "rougeL"} <= set(report["metrics"])
    assert report["counts"]["truncated"] == 1
    assert rows[-1]["notes"] == {"truncated": True}


def test_cache_keys_on_the_rendered_prompt_and_the_seed(gpt2_lm, tmp_path):
    records = [{"prompt": "The story of", "topic": topic} for topic in ("cats", "kings", "bread")]
    options = "      prompt: '{{ prompt }} {{ topic }}'\n"
    config = write_pipeline(tmp_path, gpt2_lm, records, options)
    first, rows = run_report(config, tmp_path / "out", tmp_path / "cache")
    assert first["counts"]["from_cache"] == 0
    assert len({row["prediction"] for row in rows}) > 1  # the same prompt field, rendered differently
    again, _ = run_report(config, tmp_path / "out", tmp_path / "cache")
    assert again["counts"]["from_cache"] == len(records)
    other_topics = [{**record, "topic": record["topic"] + "s"} for record in records]
    changed, _ = run_report(write_pipeline(tmp_path, gpt2_lm, other_topics, options), tmp_path / "out", tmp_path / "cache")
    assert changed["counts"]["from_cache"] == 0
    sampled = options + "      do_sample: true\n      seed: 1\n"
    run_report(write_pipeline(tmp_path, gpt2_lm, records, sampled), tmp_path / "out", tmp_path / "cache")
    reseeded, _ = run_report(write_pipeline(tmp_path, gpt2_lm, records, sampled.replace("seed: 1", "seed: 2")), tmp_path / "out", tmp_path / "cache")
    assert reseeded["counts"]["from_cache"] == 0


def test_validate_reports_a_template_field_the_data_lacks_at_the_options_line_before_any_model_loads(gpt2_lm, tmp_path, capsys, monkeypatch):
    def no_loading(*arguments, **options):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(TorchBackend, "load_head", no_loading)
    config = write_pipeline(tmp_path, gpt2_lm, [{"prompt": "x", "reference": "y"}], "      prompt: 'Q: {{ question }}'\n")
    options_line = config.read_text(encoding="utf-8").splitlines().index("    options:") + 1
    assert main(["validate", "--config", str(config)]) == 2
    message = capsys.readouterr().err
    assert f"{config}:{options_line}" in message
    assert "'question'" in message and "prompts.jsonl:1" in message


# --- resume ----------------------------------------------------------------------


def test_sigkilled_sampling_run_resumes_byte_identical(gpt2_lm, tmp_path):
    from tests.test_resume import killed_and_resumed

    chunk = 8
    records = [{"prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}"} for i in range(48)]
    config = write_pipeline(tmp_path, gpt2_lm, records, "      do_sample: true\n      seed: 3\n", chunk_size=chunk)
    stored = killed_and_resumed(config, "gen", tmp_path, at_least=2 * chunk)
    assert 0 < stored < len(records)
    resumed = json.loads((tmp_path / "out" / "gen" / "report.json").read_text(encoding="utf-8"))
    assert resumed["counts"]["from_cache"] >= stored
    baseline = (tmp_path / "baseline" / "gen" / "predictions.jsonl").read_bytes()
    assert (tmp_path / "out" / "gen" / "predictions.jsonl").read_bytes() == baseline
