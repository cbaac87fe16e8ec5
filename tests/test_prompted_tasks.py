"""Question answering, translation and summarization by prompting a causal LM: greedy continuations equal to
``transformers.pipeline("text-generation")`` on the same prompt, the answer step, default stop strings (the
few-shot delimiter without a chat template, end-of-turn only with one), few-shot rendering as plain text and as
chat turns, the metrics scored from the answers, batch-size independence and the configuration errors."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

import pytest
import sacrebleu
from pydantic import ValidationError
from rouge_score import rouge_scorer

import nlpflow
from nlpflow.cli import main
from nlpflow.contract.errors import ConfigError, ModelError
from nlpflow.contract.types import Example, ModelConfig, TaskContext
from nlpflow.engine.model_stage import ModelStage
from nlpflow.plugins.prompted_generation import AnswerOptions, PromptedAnswerer, extract_answer
from nlpflow.plugins.question_answering import QuestionAnswering, QuestionAnsweringOptions
from nlpflow.plugins.summarization import Summarization, SummarizationOptions
from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.plugins.translation import Translation, TranslationOptions

NEW_TOKENS = 12

QA_RECORDS = [
    {"context": "The cat sat on the mat by the door.", "question": "Where did the cat sit?", "answers": ["on the mat"]},
    {"context": "Paris is the capital of France.", "question": "What is the capital of France?",
     "answers": {"text": ["Paris", "paris"], "answer_start": [0, 0]}},
    {"context": "The river runs north to the sea.", "question": "Where does the river run?", "answers": ["to the sea"]},
    {"context": "Bread and cheese were on the table.", "question": "What was on the table?", "answers": ["bread and cheese"]},
]
TRANSLATION_RECORDS = [
    {"source": "The house is small.", "reference": "Das Haus ist klein."},
    {"source": "Good morning, my friend.", "reference": ["Guten Morgen, mein Freund.", "Morgen, Freund."]},
    {"source": "We went to the market.", "reference": "Wir gingen zum Markt."},
]
SUMMARIZATION_RECORDS = [
    {"document": "The king spoke to his daughter. He told her a long story about the war. She listened.", "summary": "The king told a story."},
    {"document": "We went to the market and bought bread, apples and cheese. Then we went home.", "summary": "We shopped for food."},
    {"document": "The teacher explained the painting. The children asked many questions.", "summary": "A lesson about a painting."},
]

#: each task with its records, its options class and the prompt the default template renders, written out here
TASKS = {
    "question-answering": (QuestionAnswering, QuestionAnsweringOptions, QA_RECORDS, {},
                           lambda r: f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer:"),
    "translation": (Translation, TranslationOptions, TRANSLATION_RECORDS, {"source_lang": "English", "target_lang": "German"},
                    lambda r: f"English phrase: {r['source']}\nGerman phrase:"),
    "summarization": (Summarization, SummarizationOptions, SUMMARIZATION_RECORDS, {},
                      lambda r: f"{r['document']}\n\nTL;DR:"),
}


def prompted(task_name: str, path, prompting: dict | None = None, records: list[dict] = (), **options):
    """The task, prepared as the runner prepares it (``records`` as the pipeline's data), and its loaded model."""
    task_cls, options_cls, _, defaults, _ = TASKS[task_name]
    prompting = {"max_new_tokens": NEW_TOKENS, **(prompting or {})}
    task = task_cls(options_cls(**{**defaults, **options, "prompting": prompting}))
    model, backend = ModelConfig(name_or_path=str(path), device="cpu"), TorchBackend()
    fields = {name: name for name in (*task.input_fields, *task.reference_fields)}
    task.prepare(TaskContext("test", Path("."), fields, lambda: iter(checked(task, records)), model, backend))
    return task, task.load(model, backend)


def checked(task, records: list[dict]) -> list[Example]:
    examples = []
    for index, record in enumerate(records):
        example = Example(index, index + 1, {name: record[name] for name in (*task.input_fields, *task.reference_fields) if name in record}, dict(record))
        task.check_example(example)
        examples.append(example)
    return examples


def predict(task, task_model, records, batch_size="auto") -> list:
    config = ModelConfig(name_or_path=str(task_model.loaded.path), device="cpu", batch_size=batch_size)
    return ModelStage(task_model, config).run(checked(task, records))


def hf_continuations(path, texts: list[str], stop: str | None = None) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    generator = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(path), tokenizer=AutoTokenizer.from_pretrained(path), device="cpu")
    outputs = [generator(text, max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)[0]["generated_text"] for text in texts]
    return [output[: output.index(stop)] if stop and stop in output else output for output in outputs]


def write_pipeline(root: Path, task: str, model: Path, records: list[dict], options: dict, batch_size: int | str = 4) -> Path:
    data = root / f"{task}.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    config = root / "pipelines.yaml"
    pipeline = {"task": task, "data": {"path": data.name}, "options": options,
                "model": {"name_or_path": str(model), "device": "cpu", "batch_size": batch_size}}
    config.write_text(json.dumps({"pipelines": {"prompted": pipeline}}, indent=2), encoding="utf-8")  # JSON is YAML
    return config


def run_pipeline(config: Path, out: Path) -> tuple[dict, list[dict]]:
    [result] = nlpflow.run(["prompted"], config, out, use_cache=False, interactive=False)
    rows = [json.loads(line) for line in result.predictions_path.read_text(encoding="utf-8").splitlines()]
    return result.report, rows


# --- the answer step ----------------------------------------------------------------


def test_answer_step_takes_the_first_line_then_the_regex_group_then_strips():
    assert extract_answer("  Paris \n\nMore text", AnswerOptions()) == ("Paris \n\nMore text".strip(), True)
    assert extract_answer("\n  Paris is it \nBerlin", AnswerOptions(first_line=True)) == ("Paris is it", True)
    assert extract_answer("\n  Paris is it \nBerlin", AnswerOptions(first_line=True, strip=False)) == ("  Paris is it ", True)
    assert extract_answer("The answer is: 42. Or 7", AnswerOptions(regex=r"answer is:\s*(\d+)")) == ("42", True)
    # the regex reads the first line only when first_line is set
    assert extract_answer("x\nThe answer is: 42", AnswerOptions(regex=r"answer is: (\d+)", first_line=True)) == ("", False)
    assert extract_answer("no number here", AnswerOptions(regex=r"(\d+)")) == ("", False)


def test_answer_regex_must_compile_with_exactly_one_group():
    with pytest.raises(ValidationError, match="exactly one group"):
        AnswerOptions(regex=r"\d+")
    with pytest.raises(ValidationError, match="exactly one group"):
        AnswerOptions(regex=r"(\d+) (\w+)")
    with pytest.raises(ValidationError, match="does not compile"):
        AnswerOptions(regex=r"(\d+")


# --- generation equals the transformers pipeline, through nlpflow.run ----------------


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's evaluate-v1.1.py normalize_answer, transcribed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, truth: str) -> float:
    predicted, gold = squad_normalize(prediction).split(), squad_normalize(truth).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("task_name", list(TASKS))
def test_greedy_answers_equal_the_transformers_pipeline_and_are_scored(task_name, gpt2_lm, tmp_path):
    _, _, records, defaults, render = TASKS[task_name]
    options = {**defaults, "prompting": {"max_new_tokens": NEW_TOKENS, "answer": {"first_line": True}}}
    report, rows = run_pipeline(write_pipeline(tmp_path, task_name, gpt2_lm, records, options), tmp_path / "out")
    continuations = [row["details"]["continuation"] for row in rows]
    assert continuations == hf_continuations(gpt2_lm, [render(record) for record in records], stop="\n\n")
    answers = [row["prediction"] for row in rows]
    assert answers == [extract_answer(text, AnswerOptions(first_line=True))[0] for text in continuations]
    assert any(answers)  # the comparison is between real answers
    metrics = report["metrics"]
    if task_name == "question-answering":
        golds = [r["answers"] if isinstance(r["answers"], list) else r["answers"]["text"] for r in records]
        exact = sum(max(float(squad_normalize(a) == squad_normalize(g)) for g in gold) for a, gold in zip(answers, golds)) / len(records)
        f1 = sum(max(squad_f1(a, g) for g in gold) for a, gold in zip(answers, golds)) / len(records)
        assert metrics["exact_match"]["value"] == pytest.approx(100 * exact)  # SQuAD's 0-100 scale
        assert metrics["f1"]["value"] == pytest.approx(100 * f1)
    elif task_name == "translation":
        streams = [[r["reference"] if isinstance(r["reference"], str) else r["reference"][0] for r in records],
                   [None if isinstance(r["reference"], str) else r["reference"][1] for r in records]]
        assert metrics["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(answers, streams).score, abs=1e-6)
    else:
        scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)  # nlpflow's default, as rouge-score's option
        scores = [scorer.score(r["summary"], answer) for r, answer in zip(records, answers)]
        assert metrics["rouge1"]["value"] == pytest.approx(sum(s["rouge1"].fmeasure for s in scores) / len(scores))
        assert metrics["rougeL"]["value"] == pytest.approx(sum(s["rougeL"].fmeasure for s in scores) / len(scores))


@pytest.mark.parametrize("task_name", ["question-answering", "translation"])
def test_chat_model_answers_equal_the_transformers_pipeline_on_the_chat_messages(task_name, qwen2_lm, tmp_path):
    from transformers import pipeline

    _, _, records, defaults, render = TASKS[task_name]
    options = {**defaults, "prompting": {"max_new_tokens": NEW_TOKENS, "system": "Be brief."}}
    _, rows = run_pipeline(write_pipeline(tmp_path, task_name, qwen2_lm, records, options), tmp_path / "out")
    assert not any(row.get("notes") for row in rows)  # no prompt was cut, so the pipeline reads the same text
    generator = pipeline("text-generation", model=str(qwen2_lm), device="cpu")
    expected = [generator([{"role": "system", "content": "Be brief."}, {"role": "user", "content": render(record)}],
                          max_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)[0]["generated_text"] for record in records]
    assert [row["details"]["continuation"] for row in rows] == expected
    assert [row["prediction"] for row in rows] == [text.strip() for text in expected]


def test_exact_match_counts_answers_equal_to_a_gold_answer(gpt2_lm, tmp_path):
    """Half the questions get their model's own answer as a gold one: exact match is then exactly one half."""
    _, rows = run_pipeline(write_pipeline(tmp_path, "question-answering", gpt2_lm, QA_RECORDS, {"prompting": {"max_new_tokens": NEW_TOKENS}}), tmp_path / "first")
    answers = [row["prediction"] for row in rows]
    assert all(squad_normalize(answer) for answer in answers[:2])
    records = [{**record, "answers": [answers[i], "an answer nobody gives"]} if i < 2 else {**record, "answers": ["zzz qqq"]}
               for i, record in enumerate(QA_RECORDS)]
    report, again = run_pipeline(write_pipeline(tmp_path, "question-answering", gpt2_lm, records, {"prompting": {"max_new_tokens": NEW_TOKENS}}), tmp_path / "second")
    assert [row["prediction"] for row in again] == answers
    assert report["metrics"]["exact_match"]["value"] == 50.0


@pytest.mark.parametrize("task_name", list(TASKS))
def test_greedy_answers_do_not_depend_on_batch_size(task_name, gpt2_lm):
    task, task_model = prompted(task_name, gpt2_lm)
    records = TASKS[task_name][2] * 3
    by_size = {size: [(p.value, p.details["continuation"]) for p in predict(task, task_model, records, size)] for size in (1, 8, "auto")}
    assert by_size[1] == by_size[8] == by_size["auto"]


# --- stop strings ------------------------------------------------------------------


def test_the_few_shot_delimiter_stops_a_plain_prompt_and_a_given_stop_replaces_it(gpt2_lm):
    records = QA_RECORDS
    free = [p.details["continuation"] for p in predict(*prompted("question-answering", gpt2_lm, {"stop": []}), records)]
    assert prompted("question-answering", gpt2_lm)[1].head_options()["stop_strings"] == ["\n\n"]
    text = next(continuation for continuation in free if len(continuation) > 10)
    cut = text[4:7]  # a delimiter taken from the middle of one continuation: that row must end there
    delimited = predict(*prompted("question-answering", gpt2_lm, {"fewshot_delimiter": cut}), records)
    stopped = predict(*prompted("question-answering", gpt2_lm, {"stop": [cut]}), records)
    for unstopped, by_delimiter, by_stop in zip(free, delimited, stopped):
        expected = unstopped[: unstopped.index(cut)] if cut in unstopped else unstopped
        assert by_delimiter.details["continuation"] == expected
        assert by_stop.details["continuation"] == expected
    assert any(cut in continuation for continuation in free)


def test_with_a_chat_template_rows_stop_at_end_of_turn_only(qwen2_lm):
    task, task_model = prompted("question-answering", qwen2_lm)
    assert task_model.use_chat_template
    options = task_model.head_options()
    assert "stop_strings" not in options  # not "\n\n": lm-evaluation-harness #1837
    assert task_model.loaded.tokenizer.convert_tokens_to_ids("<|im_end|>") in options["eos_token_id"]
    free = [p.details["continuation"] for p in predict(task, task_model, QA_RECORDS)]
    text = next(continuation for continuation in free if len(continuation) > 10)
    # the few-shot delimiter is no stop string with a chat template
    same = predict(*prompted("question-answering", qwen2_lm, {"fewshot_delimiter": text[4:7]}), QA_RECORDS)
    assert [p.details["continuation"] for p in same] == free


# --- few-shot -------------------------------------------------------------------------


def write_shots(root: Path, name: str, records: list[dict]) -> str:
    path = root / name
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def test_few_shot_examples_join_prompt_delimiter_and_first_gold_answer(gpt2_lm, tmp_path):
    shots = [{"context": "Sky is blue.", "question": "Color?", "answers": {"text": ["blue", "Blue"], "answer_start": [7, 7]}},
             {"context": "Tom ran.", "question": "Who ran?", "answers": ["Tom", "tom"]}, {"context": "x", "question": "y", "answers": "z"}]
    source = write_shots(tmp_path, "shots.jsonl", shots)
    prompting = {"few_shot": {"k": 2, "source": source}, "target_delimiter": " ", "fewshot_delimiter": "\n###\n", "system": "Be brief."}
    task, task_model = prompted("question-answering", gpt2_lm, prompting)
    record = {"context": "Cats sleep.", "question": "Who sleeps?", "answers": ["Cats"]}
    [example] = checked(task, [record])
    render = TASKS["question-answering"][4]
    expected = ("Be brief.\n\n" + render(shots[0]) + " blue" + "\n###\n" + render(shots[1]) + " Tom"
                + "\n###\n" + render(record))
    assert task_model.model_text(example) == expected
    [features] = task_model.encode([example])
    assert features.inputs["input_ids"] == task_model.loaded.tokenizer(expected)["input_ids"]
    assert "truncated" not in example.notes
    [prediction] = predict(task, task_model, [record])
    assert prediction.details["continuation"] == hf_continuations(gpt2_lm, [expected], stop="\n###\n")[0]


def test_few_shot_examples_become_chat_turns(qwen2_lm, tmp_path):
    shots = [{"document": "Day ended.", "summary": ["It ended.", "Over."]}, {"document": "Rain fell.", "summary": "Rain."}]
    source = write_shots(tmp_path, "shots.jsonl", shots)
    # two new tokens leave the tiny model's context to the turns
    task, task_model = prompted("summarization", qwen2_lm, {"few_shot": {"k": 2, "source": source}, "system": "Be brief.", "max_new_tokens": 2})
    record = {"document": "Kings spoke.", "summary": "Talk."}
    [example] = checked(task, [record])
    render = TASKS["summarization"][4]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": render(shots[0])}, {"role": "assistant", "content": "It ended."},
                {"role": "user", "content": render(shots[1])}, {"role": "assistant", "content": "Rain."},
                {"role": "user", "content": render(record)}]
    tokenizer = task_model.loaded.tokenizer
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    [features] = task_model.encode([example])
    assert features.inputs["input_ids"] == list(expected)
    assert "truncated" not in example.notes


def test_random_few_shot_is_seeded_per_record_and_a_record_keeps_its_shots(gpt2_lm, tmp_path):
    source = write_shots(tmp_path, "shots.jsonl", TRANSLATION_RECORDS * 3)
    task, _ = prompted("translation", gpt2_lm, {"few_shot": {"k": 2, "source": source, "sampler": "random", "seed": 3}})
    first = [example.fields["few_shot"] for example in checked(task, TRANSLATION_RECORDS * 2)]
    again = [example.fields["few_shot"] for example in checked(task, TRANSLATION_RECORDS * 2)]
    assert first == again
    assert len({json.dumps(shots) for shots in first}) > 1
    assert all(answer in {"Das Haus ist klein.", "Guten Morgen, mein Freund.", "Wir gingen zum Markt."} for shots in first for _, answer in shots)


def test_the_cache_keys_on_the_shots_a_record_reads_from_the_few_shot_file(gpt2_lm, tmp_path):
    source = Path(write_shots(tmp_path, "shots.jsonl", TRANSLATION_RECORDS[:1]))
    options = {"source_lang": "English", "target_lang": "German", "prompting": {"max_new_tokens": 4, "few_shot": {"k": 1, "source": str(source)}}}
    config = write_pipeline(tmp_path, "translation", gpt2_lm, TRANSLATION_RECORDS, options)

    def from_cache() -> int:
        [result] = nlpflow.run(["prompted"], config, tmp_path / "out", cache_dir=tmp_path / "cache", interactive=False)
        return result.report["counts"]["from_cache"]

    assert from_cache() == 0
    assert from_cache() == len(TRANSLATION_RECORDS)
    write_shots(tmp_path, "shots.jsonl", TRANSLATION_RECORDS[1:2])
    assert from_cache() == 0


@pytest.mark.parametrize("sampler", ["first", "random"])
def test_few_shot_from_the_same_data_never_shows_a_record_itself(gpt2_lm, sampler):
    render = TASKS["question-answering"][4]
    task, _ = prompted("question-answering", gpt2_lm, {"few_shot": {"k": 3, "sampler": sampler}}, records=QA_RECORDS)
    for record, example in zip(QA_RECORDS, checked(task, QA_RECORDS)):
        shown = [question for question, _ in example.fields["few_shot"]]
        assert len(shown) == 3 and render(record) not in shown
        assert set(shown) == {render(other) for other in QA_RECORDS if other is not record}


def test_same_data_few_shot_counts_only_records_with_an_answer(gpt2_lm):
    unanswered = [{"source": record["source"]} for record in TRANSLATION_RECORDS]
    with pytest.raises(ConfigError, match=r"options.prompting.few_shot: k is 1 but the data has 0 examples with a non-empty 'reference', so 0"):
        prompted("translation", gpt2_lm, {"few_shot": {"k": 1}}, records=unanswered)
    # a record without a reference is predicted, never shown: record 0 is shown record 1's first reference
    records = [unanswered[0], *TRANSLATION_RECORDS[1:]]
    task, _ = prompted("translation", gpt2_lm, {"few_shot": {"k": 1}}, records=records)
    assert [shots[0][1] for shots in (example.fields["few_shot"] for example in checked(task, records))] == [
        "Guten Morgen, mein Freund.", "Wir gingen zum Markt.", "Guten Morgen, mein Freund."]


def test_same_data_few_shot_keys_the_cache_on_the_other_records_answers(gpt2_lm, tmp_path):
    options = {"prompting": {"max_new_tokens": 4, "few_shot": {"k": 1}}}
    # one record a batch: a hit batched with a miss is computed again (batch shapes change the last digits)
    config = write_pipeline(tmp_path, "question-answering", gpt2_lm, QA_RECORDS, options, batch_size=1)

    def from_cache() -> int:
        [result] = nlpflow.run(["prompted"], config, tmp_path / "out", cache_dir=tmp_path / "cache", interactive=False)
        return result.report["counts"]["from_cache"]

    assert from_cache() == 0
    assert from_cache() == len(QA_RECORDS)
    # with k 1 and the first sampler, record 0 shows record 1 and every other record shows record 0
    changed = [QA_RECORDS[0], {**QA_RECORDS[1], "answers": ["under the table"]}, *QA_RECORDS[2:]]
    write_pipeline(tmp_path, "question-answering", gpt2_lm, changed, options, batch_size=1)
    assert from_cache() == len(QA_RECORDS) - 1


# --- errors ------------------------------------------------------------------------------


def test_validate_reports_a_template_field_the_data_lacks_before_any_model_loads(gpt2_lm, tmp_path, capsys, monkeypatch):
    def no_loading(*arguments, **options):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(TorchBackend, "load_head", no_loading)
    config = write_pipeline(tmp_path, "summarization", gpt2_lm, SUMMARIZATION_RECORDS, {"prompting": {"prompt": "{{ document }} by {{ author }}"}})
    options_line = next(number for number, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1) if '"options"' in line)
    assert main(["validate", "--config", str(config)]) == 2
    message = capsys.readouterr().err
    assert f"{config}:{options_line}" in message
    assert "options.prompting.prompt" in message and "'author'" in message and "summarization.jsonl:1" in message


def test_an_encoder_checkpoint_in_generate_mode_is_refused_naming_what_fits(bert_classifier, bert_qa):
    with pytest.raises(ModelError, match=r"is not a causal language model .*Heads that fit it: sequence-classification"):
        prompted("question-answering", bert_classifier, method="generate")
    with pytest.raises(ModelError, match=r"not a sequence-to-sequence generation checkpoint .*nor a causal language model"):
        prompted("summarization", bert_classifier)
    with pytest.raises(ModelError, match=r"not a sequence-to-sequence generation checkpoint .*nor a causal language model"):
        prompted("translation", bert_qa)


def test_a_causal_checkpoint_in_an_encoder_mode_is_refused_naming_what_fits(gpt2_lm):
    for task_name, method in (("question-answering", "span"), ("question-answering", "sentence-retrieval"), ("summarization", "centroid")):
        with pytest.raises(ModelError, match=rf"is a causal language model .*method {method!r} needs an encoder .*Methods that fit it: generate"):
            prompted(task_name, gpt2_lm, method=method)


def test_auto_picks_generate_for_a_causal_lm_and_span_for_a_qa_head(gpt2_lm, bert_qa):
    assert isinstance(prompted("question-answering", gpt2_lm)[1], PromptedAnswerer)
    assert not isinstance(prompted("question-answering", bert_qa)[1], PromptedAnswerer)


def test_translation_without_language_names_or_prompt_is_refused(gpt2_lm):
    with pytest.raises(ModelError, match="set options.target_lang"):
        prompted("translation", gpt2_lm, source_lang=None, target_lang=None)
    _, model = prompted("translation", gpt2_lm, {"prompt": "{{ source }} =>"}, source_lang=None, target_lang=None)
    assert isinstance(model, PromptedAnswerer)


def test_few_shot_source_records_are_checked_with_their_file_and_line(tmp_path, gpt2_lm):
    source = write_shots(tmp_path, "shots.jsonl", [QA_RECORDS[0], {"context": "c", "answers": ["a"]}])
    with pytest.raises(ConfigError, match=r"options.prompting.few_shot.source .*shots.jsonl:2: a record needs a non-empty 'question'"):
        prompted("question-answering", gpt2_lm, {"few_shot": {"k": 1, "source": source}})
    bad = write_shots(tmp_path, "bad.jsonl", [{**QA_RECORDS[0], "answers": []}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: field 'answers' is empty"):
        prompted("question-answering", gpt2_lm, {"few_shot": {"k": 1, "source": bad}})
    with pytest.raises(ValidationError, match="balanced"):
        QuestionAnsweringOptions(prompting={"few_shot": {"k": 1, "source": source, "sampler": "balanced"}})
