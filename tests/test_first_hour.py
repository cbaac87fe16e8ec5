"""What a new user meets in the first hour: `init`'s labels and modes, `--set ...=null`, label_map refusals, and
`compare` with another system's predictions file (ids, exit codes, labels the run does not have)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nlpflow.api import run
from nlpflow.cli import main
from nlpflow.compare import CompareError, compare_runs


# --- compare with a predictions file --------------------------------------------------------------


def _csv_run(tmp_path: Path, n: int = 20) -> tuple[Path, list[dict]]:
    """A prediction-only pos/neg run over a CSV file (so its ids are read as text): right on every third record."""
    records = [{"id": str(i), "text": f"review {i}", "label": ["pos", "neg"][i % 2],
                "prediction": ["pos", "neg"][i % 2] if i % 3 == 0 else ["neg", "pos"][i % 2]} for i in range(1, n + 1)]
    (tmp_path / "data.csv").write_text("id,text,label,prediction\n" + "".join(
        f"{r['id']},{r['text']},{r['label']},{r['prediction']}\n" for r in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text("pipelines:\n  base:\n    task: sentiment\n    data: {path: data.csv}\n    options: {labels: [pos, neg]}\n"
                      "    metrics: [accuracy]\n    report: {formats: [json]}\n", encoding="utf-8")
    [result] = run(["base"], config, tmp_path / "out", use_cache=False)
    return result.directory, records


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_compare_matches_number_ids_to_a_csv_runs_text_ids(tmp_path):
    directory, records = _csv_run(tmp_path)
    other = _write_lines(tmp_path / "numbers.jsonl", [{"id": int(r["id"]), "prediction": r["label"]} for r in records])
    result = compare_runs([directory, other], resamples=50, trials=50)
    assert result["systems"]["numbers.jsonl"]["metrics"]["accuracy"]["value"] == 1.0


def test_compare_says_when_an_unknown_id_is_of_another_type(tmp_path):
    directory, _ = _csv_run(tmp_path)
    other = _write_lines(tmp_path / "other.jsonl", [{"id": 1, "prediction": "pos"}, {"id": 9.5, "prediction": "pos"}])
    with pytest.raises(CompareError, match=r"other\.jsonl:2: id 9\.5 is not a record of the run .*\(this id is a number, "
                                           r"the run's are text, such as '1'\)"):
        compare_runs([directory, other])


def test_compare_input_errors_exit_with_the_documented_input_code_not_the_cache_code(tmp_path, capsys):
    directory, _ = _csv_run(tmp_path)
    assert main(["compare", str(directory), str(tmp_path / "nowhere")]) == 2
    assert "not a run folder (no report.json)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    assert main(["compare", str(directory), str(bad)]) == 2
    assert "bad.jsonl:1: malformed JSON" in capsys.readouterr().err
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    input_row = next(line for line in readme.splitlines() if line.startswith("| 2 |"))
    assert "`compare`" in input_row


def test_compare_refuses_a_predictions_file_in_foreign_labels(tmp_path, capsys):
    directory, records = _csv_run(tmp_path)
    spelled_out = {"pos": "positive", "neg": "negative"}
    other = _write_lines(tmp_path / "other.jsonl", [{"id": r["id"], "prediction": spelled_out[r["label"]]} for r in records])
    assert main(["compare", str(directory), str(other)]) == 2
    error = capsys.readouterr().err
    assert "none of its predicted labels ['negative', 'positive'] is a label of the run ['neg', 'pos']" in error
    assert "negative -> neg, positive -> pos" in error


def test_compare_notes_the_foreign_labels_of_a_partly_foreign_predictions_file(tmp_path):
    directory, records = _csv_run(tmp_path)
    lines = [{"id": r["id"], "prediction": "positive" if i < 3 else r["label"]} for i, r in enumerate(records)]
    result = compare_runs([directory, _write_lines(tmp_path / "other.jsonl", lines)], resamples=50, trials=50)
    assert result["systems"]["other.jsonl"]["metrics"]["accuracy"]["value"] == pytest.approx(17 / 20)
    assert any("not labels of the run" in note and "'positive' (3)" in note for note in result["notes"])


def test_compare_leaves_open_ended_predictions_alone(tmp_path):
    records = [{"id": f"d{i}", "document": f"First sentence {i}. Second one.", "summary": f"First sentence {i}.",
                "prediction": f"First sentence {i}."} for i in range(12)]
    _write_lines(tmp_path / "docs.jsonl", records)
    config = tmp_path / "pipelines.yaml"
    config.write_text("pipelines:\n  base:\n    task: summarization\n    data: {path: docs.jsonl}\n    metrics: [rouge1]\n"
                      "    report: {formats: [json]}\n", encoding="utf-8")
    [result] = run(["base"], config, tmp_path / "out", use_cache=False)
    other = _write_lines(tmp_path / "other.jsonl", [{"id": r["id"], "prediction": "something else entirely"} for r in records])
    compared = compare_runs([result.directory, other], resamples=20, trials=20)
    assert not any("labels" in note for note in compared["notes"])


# --- init: labels ----------------------------------------------------------------------------------


def _init(tmp_path: Path, task: str, data: Path, *extra: str) -> tuple[str, dict]:
    target = tmp_path / f"{task}-{data.stem}.yaml"
    assert main(["init", task, str(data), "-o", str(target), *extra]) == 0
    text = target.read_text(encoding="utf-8")
    [pipeline] = yaml.safe_load(text)["pipelines"].values()
    return text, pipeline


def test_init_reads_the_labels_of_every_record_of_a_file_sorted_by_class(tmp_path, capsys):
    topics = ["business", "health", "sci/tech", "sports", "world"]
    data = tmp_path / "sorted.csv"
    data.write_text("text,topic\n" + "".join(f"item {k} about {topic},{topic}\n" for topic in topics for k in range(400)), encoding="utf-8")
    text, pipeline = _init(tmp_path, "text-classification", data)
    assert list(pipeline["options"]["labels"]) == topics
    assert "the fields below come from its first 1000 records, the labels from all 2000" in text


def test_init_maps_sentiment_names_onto_the_built_in_descriptions(tmp_path, capsys):
    from nlpflow.plugins.classification import SENTIMENT_LABELS

    data = _write_lines(tmp_path / "reviews.jsonl", [{"review": f"review {i}", "label": ["pos", "neg"][i % 2]} for i in range(10)])
    text, pipeline = _init(tmp_path, "sentiment", data)
    # the task's own positive/negative descriptions apply; the data's names are mapped onto them
    assert pipeline["options"] == {"label_map": {"neg": "negative", "pos": "positive"}}
    assert "label_map reads neg as negative, pos as positive: the built-in sentiment descriptions describe them" in text
    assert main(["validate", "-c", str(tmp_path / "sentiment-reviews.yaml")]) == 0
    # text-classification has no descriptions of its own: it takes the sentiment ones for these names
    data = _write_lines(tmp_path / "upper.jsonl", [{"text": f"review {i}", "label": ["POSITIVE", "NEGATIVE", "neutral"][i % 3]} for i in range(9)])
    _, pipeline = _init(tmp_path, "text-classification", data)
    assert pipeline["options"]["labels"] == {**SENTIMENT_LABELS, "neutral": ["neutral"]}
    assert pipeline["options"]["label_map"] == {"NEGATIVE": "negative", "POSITIVE": "positive"}


def test_init_marks_labels_whose_names_say_nothing_and_validate_refuses_them_until_described(tmp_path, capsys):
    data = _write_lines(tmp_path / "stars.jsonl", [{"review": f"review {i}", "stars": str(1 + i % 5)} for i in range(10)]
                        + [{"review": "odd one", "stars": "LABEL_0"}])
    text, pipeline = _init(tmp_path, "sentiment", data)
    labels = pipeline["options"]["labels"]
    assert labels["1"] == ["DESCRIBE: what 1 means"] and labels["LABEL_0"] == ["DESCRIBE: what LABEL_0 means"]
    assert "DESCRIBE: marks what a label's name does not say (1, 2, 3, 4, 5, LABEL_0)" in text
    config = tmp_path / "sentiment-stars.yaml"
    capsys.readouterr()
    assert main(["validate", "-c", str(config)]) == 2
    error = capsys.readouterr().err
    line = next(number for number, content in enumerate(text.splitlines(), start=1) if '"DESCRIBE: what 1 means"' in content)
    assert f"{config}:{line}:" in error and "'DESCRIBE: what 1 means' is a placeholder written by nlpflow init" in error
    # described, it validates
    config.write_text(text.replace('"DESCRIBE: what ', '"reviewed as ').replace(' means"', '"'), encoding="utf-8")
    assert main(["validate", "-c", str(config)]) == 0


# --- init: a causal language model gets the prompted modes -------------------------------------------


def test_init_with_a_causal_lm_writes_loglikelihood_classification_that_runs(tmp_path, gpt2_lm, capsys):
    data = _write_lines(tmp_path / "reviews.jsonl", [{"review": f"review {i}", "label": ["pos", "neg"][i % 2]} for i in range(6)])
    text, pipeline = _init(tmp_path, "sentiment", data, "--model", str(gpt2_lm))
    options = pipeline["options"]
    assert options["mode"] == "loglikelihood" and options["label_map"] == {"neg": "negative", "pos": "positive"}
    assert options["prompting"] == {"prompt": "{{ text }}\nQuestion: Is this text positive or negative?\nAnswer:"}
    assert "is a causal language model: each label is scored as the continuation of the prompt" in text
    [result] = run(None, tmp_path / "sentiment-reviews.yaml", tmp_path / "out", use_cache=False)
    predictions = [json.loads(line)["prediction"]["label"] for line in (result.directory / "predictions.jsonl").read_text().splitlines()]
    assert set(predictions) <= {"pos", "neg"}
    # a topic set: the prompt names the choices
    data = _write_lines(tmp_path / "tickets.jsonl", [{"text": f"ticket {i}", "label": ["billing", "bug"][i % 2]} for i in range(4)])
    _, pipeline = _init(tmp_path, "text-classification", data, "--model", str(gpt2_lm))
    assert pipeline["options"]["labels"] == ["billing", "bug"]
    assert pipeline["options"]["prompting"] == {"prompt": "{{ text }}\nQuestion: Which of these labels fits this text: billing, bug?\nAnswer:"}
    assert main(["validate", "-c", str(tmp_path / "text-classification-tickets.yaml")]) == 0


def test_init_with_a_causal_lm_marks_unclear_labels_in_the_list_and_the_map_and_validate_refuses_them(tmp_path, gpt2_lm, capsys):
    """Log-likelihood labels are a list and label_map's values, not zero-shot's mapping: the refusal walks both."""
    data = _write_lines(tmp_path / "stars.jsonl", [{"review": f"review {i}", "stars": str(1 + i % 2)} for i in range(4)])
    text, pipeline = _init(tmp_path, "sentiment", data, "--model", str(gpt2_lm))
    options = pipeline["options"]
    assert options["labels"] == ["DESCRIBE: a word for 1", "DESCRIBE: a word for 2"]
    assert options["label_map"] == {"1": "DESCRIBE: a word for 1", "2": "DESCRIBE: a word for 2"}
    config = tmp_path / "sentiment-stars.yaml"
    capsys.readouterr()
    assert main(["validate", "-c", str(config)]) == 2
    error = capsys.readouterr().err
    line = next(number for number, content in enumerate(text.splitlines(), start=1) if content.strip().startswith("labels:"))
    assert f"{config}:{line}:" in error and "options.labels.0: 'DESCRIBE: a word for 1' is a placeholder" in error
    # filled in, in both places, it validates
    config.write_text(text.replace("DESCRIBE: a word for 1", "bad").replace("DESCRIBE: a word for 2", "good"), encoding="utf-8")
    assert main(["validate", "-c", str(config)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("task", "record", "field", "method"), [
    ("question-answering", {"context": "Paris is in France.", "question": "Where is Paris?", "answers": ["France"]}, "{{ question }}", "generate"),
    ("translation", {"source": "Good morning", "reference": "Guten Morgen"}, "{{ source }}", None),
    ("summarization", {"document": "A long text. With sentences.", "summary": "A text."}, "{{ document }}", None),
])
def test_init_with_a_causal_lm_writes_a_prompting_block_that_validates(tmp_path, gpt2_lm, capsys, task, record, field, method):
    data = _write_lines(tmp_path / "data.jsonl", [record] * 3)
    text, pipeline = _init(tmp_path, task, data, "--model", str(gpt2_lm))
    assert set(pipeline["options"]) == ({"method", "prompting"} if method else {"prompting"})
    assert pipeline["options"].get("method") == method and field in pipeline["options"]["prompting"]["prompt"]
    assert "        # few_shot: {k: 3}" in text  # under prompting:, where few_shot goes
    capsys.readouterr()
    assert main(["validate", "-c", str(tmp_path / f"{task}-data.yaml")]) == 0, capsys.readouterr().err
    # the hint, uncommented, is a few-shot pool drawn from the same data
    (tmp_path / f"{task}-data.yaml").write_text(text.replace("# few_shot: {k: 3}", "few_shot: {k: 2}"), encoding="utf-8")
    assert main(["validate", "-c", str(tmp_path / f"{task}-data.yaml")]) == 0, capsys.readouterr().err


def test_init_with_a_causal_lm_writes_question_answering_that_runs(tmp_path, gpt2_lm):
    records = [{"context": f"Paris is in France {i}.", "question": "Where is Paris?", "answers": ["France"]} for i in range(3)]
    data = _write_lines(tmp_path / "qa.jsonl", records)
    text, _ = _init(tmp_path, "question-answering", data, "--model", str(gpt2_lm))
    config = tmp_path / "question-answering-qa.yaml"
    config.write_text(text.replace("# few_shot: {k: 3}", "few_shot: {k: 1}").replace("device: auto", "device: cpu"), encoding="utf-8")
    [result] = run(None, config, tmp_path / "out", use_cache=False)
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(row["prediction"], str) and "continuation" in row["details"] for row in rows)
    assert set(result.report["metrics"]) >= {"exact_match", "f1"}


def test_init_with_an_encoder_keeps_the_zero_shot_pipeline(tmp_path, minilm_path):
    data = _write_lines(tmp_path / "reviews.jsonl", [{"review": f"review {i}", "label": ["pos", "neg"][i % 2]} for i in range(4)])
    _, pipeline = _init(tmp_path, "sentiment", data, "--model", str(minilm_path))
    assert "mode" not in pipeline["options"]


# --- --set ...=null and label_map refusals ---------------------------------------------------------


def _zero_shot_pipelines(tmp_path: Path, minilm_path: Path, task: str = "sentiment") -> Path:
    _write_lines(tmp_path / "reviews.jsonl", [{"text": f"review {i}", "label": ["positive", "negative"][i % 2]} for i in range(6)])
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"pipelines:\n  p:\n    task: {task}\n    data: {{path: reviews.jsonl}}\n"
                      f"    options: {{labels: [positive, negative]}}\n"
                      f"    model: {{name_or_path: {json.dumps(str(minilm_path))}, device: cpu}}\n", encoding="utf-8")
    return config


def test_set_null_restores_the_tasks_default(tmp_path, minilm_path, capsys):
    config = _zero_shot_pipelines(tmp_path, minilm_path)
    assert main(["validate", "-c", str(config), "--set", "p.options.labels=null"]) == 0
    assert "pipeline 'p' ok" in capsys.readouterr().out
    from nlpflow.config.loader import load_config
    from nlpflow.run_options import Overrides

    pipeline = load_config(config, Overrides(set=("p.options.labels=null", "p.model.device=null")))["p"]
    assert "labels" not in pipeline.options and pipeline.model.device == "auto"


def test_label_map_onto_labels_the_model_lacks_says_which_it_has_and_how_to_reach_them(tmp_path, minilm_path, capsys):
    config = _zero_shot_pipelines(tmp_path, minilm_path)
    assert main(["validate", "-c", str(config), "--set", "p.options.label_map={positive: good, negative: bad}"]) == 4
    error = capsys.readouterr().err
    assert "maps to model labels ['good', 'bad'] it does not have; its labels (options.labels) are ['positive', 'negative']" in error
    assert "`label_map: {positive: positive}`" in error and "describing them in options.labels" in error
    config = _zero_shot_pipelines(tmp_path, minilm_path, task="text-classification")
    assert main(["validate", "-c", str(config), "--set", "p.options.labels=null", "--set", "p.options.label_map={positive: good}"]) == 4
    error = capsys.readouterr().err
    assert "needs options.labels" in error and "options.label_map maps dataset labels onto these labels, so it needs them too" in error


def test_init_keeps_a_label_with_line_breaks_inside_its_comments(tmp_path, capsys):
    hostile = "good\nhacked: true\u2028x"
    data = _write_lines(tmp_path / "odd.jsonl", [{"text": "a", "label": hostile}, {"text": "b", "label": "bad"}])
    text, pipeline = _init(tmp_path, "text-classification", data)
    assert set(pipeline) == {"task", "data", "fields", "options", "model"}  # nothing leaked out of a comment
    assert list(pipeline["options"]["labels"]) == ["bad", hostile]
    assert "# labels read from the data: bad, good\\nhacked: true\\u2028x" in text
