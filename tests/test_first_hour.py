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
    directory, records = _csv_run(tmp_path)
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
