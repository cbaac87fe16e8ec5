"""The overlapped chunk loop (reader and writer threads around the model stage): the same bytes as the sequential
loop, and a worker thread's failure reaches the caller with its message while the workers stop."""

from __future__ import annotations

import json
import threading

import pytest

from nlpflow.api import run
from nlpflow.contract.errors import DataError, PluginError

PIPELINE = """
pipelines:
  scored:
    task: sentiment
    chunk_size: 16
    data: {{path: reviews.jsonl, on_error: {on_error}}}
    report: {{formats: [json, html], bootstrap: {{resamples: 20}}}}
"""


def write_data(tmp_path, write_pipelines, on_error="fail", bad_line=None):
    lines = []
    for i in range(200):
        label = "positive" if i % 3 else "negative"
        lines.append(json.dumps({"text": f"text {i}" + " more" * (i % 5), "label": label, "prediction": "positive"}))
    if bad_line is not None:
        lines[bad_line - 1] = "{not json"
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write_pipelines(PIPELINE.format(on_error=on_error))


def worker_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("nlpflow-")]


def test_overlapped_run_writes_the_sequential_bytes(tmp_path, write_pipelines, cache_dir, monkeypatch):
    config = write_data(tmp_path, write_pipelines, on_error="skip", bad_line=77)
    outputs = {}
    for overlap in ("0", "1"):
        monkeypatch.setenv("NLPFLOW_OVERLAP", overlap)
        [result] = run(["scored"], config=config, output=tmp_path / f"out{overlap}", cache_dir=cache_dir)
        outputs[overlap] = (result.directory / "predictions.jsonl").read_bytes(), (result.directory / "report.html").read_text(encoding="utf-8")
    assert outputs["0"][0] == outputs["1"][0]
    # the pages differ only in the run's timing
    assert outputs["0"][1].count("Review") == outputs["1"][1].count("Review")


def test_a_data_error_in_the_reader_thread_keeps_its_line(tmp_path, write_pipelines, cache_dir, monkeypatch):
    monkeypatch.setenv("NLPFLOW_OVERLAP", "1")
    config = write_data(tmp_path, write_pipelines, bad_line=150)
    with pytest.raises(DataError) as raised:
        run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    assert raised.value.line == 150 and "malformed JSON" in str(raised.value)
    assert worker_threads() == []
    assert not list((tmp_path / "out" / "scored").glob(".*partial"))


def test_a_plugin_error_in_the_writer_thread_names_its_record(tmp_path, write_pipelines, cache_dir, monkeypatch):
    from nlpflow.plugins.classification import TextClassification

    monkeypatch.setenv("NLPFLOW_OVERLAP", "1")
    original = TextClassification.reference

    def reference(self, example):
        if example.index == 123:
            raise RuntimeError("no reference for this one")
        return original(self, example)

    monkeypatch.setattr(TextClassification, "reference", reference)
    config = write_data(tmp_path, write_pipelines)
    with pytest.raises(PluginError) as raised:
        run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    assert "raised in reference() on record 123" in str(raised.value) and "no reference for this one" in str(raised.value)
    assert worker_threads() == []


def test_a_run_without_a_model_stage_runs_its_stages_one_after_another(tmp_path, write_pipelines, cache_dir, monkeypatch):
    """Reading and scoring given predictions is Python holding the GIL: threads would only add switching. Unset,
    NLPFLOW_OVERLAP overlaps the stages only around a model stage; set, it forces either way."""
    from nlpflow.engine import overlap

    overlapped = []
    original = overlap.run_overlapped
    monkeypatch.setattr(overlap, "run_overlapped", lambda *args: overlapped.append(True) or original(*args))
    config = write_data(tmp_path, write_pipelines)
    monkeypatch.delenv("NLPFLOW_OVERLAP", raising=False)
    run(["scored"], config=config, output=tmp_path / "auto", cache_dir=cache_dir)
    assert overlapped == []
    monkeypatch.setenv("NLPFLOW_OVERLAP", "1")
    run(["scored"], config=config, output=tmp_path / "forced", cache_dir=cache_dir)
    assert overlapped == [True]


def test_a_run_with_a_model_stage_overlaps_its_stages_by_default(tmp_path, bert_classifier, cache_dir, monkeypatch):
    from nlpflow.engine import overlap
    from tests.conftest import write_reviews_workload

    overlapped = []
    original = overlap.run_overlapped
    monkeypatch.setattr(overlap, "run_overlapped", lambda *args: overlapped.append(True) or original(*args))
    monkeypatch.delenv("NLPFLOW_OVERLAP", raising=False)
    config = write_reviews_workload(tmp_path, bert_classifier, records=40, chunk=16, formats="json", words_per_text=(2, 5))
    [result] = run(["reviews"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    assert overlapped == [True] and result.report["counts"]["predicted"] == 40
