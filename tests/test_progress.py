"""Progress: a "loading model" line, rate and ETA on a terminal and in the periodic plain lines, and
transformers' own bars and notices off in the Python API unless asked."""

from __future__ import annotations

import io
import logging

from nlpflow.contract.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_lines_every_few_seconds_with_rate_and_eta(caplog):
    clock = FakeClock()
    progress = Progress("p", total=100, interactive=False, log_every=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="nlpflow"):
        with progress.running():
            clock.now += 1
            progress.advance("predict", 10)  # 1 s after the start: too soon for a line
            clock.now += 4
            progress.advance("predict", 10)  # 5 s: a line
            clock.now += 1
            progress.advance("predict", 10)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "p: predict 20/100 (5.0s, 4.0 records/s, ETA 20s)"
    assert len(lines) == 2 and lines[1].startswith("p: done, predict 30/100 (6.0s, 5.0 records/s, ETA 14s)")


def test_terminal_bars_show_rate_and_eta():
    from rich.console import Console

    output = io.StringIO()
    progress = Progress("p", total=100, interactive=True, console=Console(file=output, force_terminal=True, width=120))
    with progress.running():
        progress.advance("predict", 40)
    text = output.getvalue()
    assert "40/100" in text and "rec/s" in text and "ETA" in text


def test_loading_model_line_and_quiet_transformers_in_the_api(write_pipelines, tmp_path, minilm_path, caplog, monkeypatch):
    import nlpflow
    from transformers.utils import logging as transformers_logging

    from nlpflow.plugins.torch_backend import TorchBackend
    from tests.conftest import REPO

    config = write_pipelines(
        "pipelines:\n  s:\n    task: sentiment\n"
        f"    data: {{path: {REPO / 'examples/data/reviews.jsonl'}, limit: 3}}\n"
        "    fields: {text: review, label: stars}\n"
        f"    model: {{name_or_path: {minilm_path}}}\n"
    )
    # what transformers' settings are while the model loads
    seen = []
    load_head = TorchBackend.load_head

    def spy(self, *args, **kwargs):
        seen.append((transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()))
        return load_head(self, *args, **kwargs)

    monkeypatch.setattr(TorchBackend, "load_head", spy)
    assert transformers_logging.is_progress_bar_enabled()
    with caplog.at_level(logging.INFO, logger="nlpflow"):
        nlpflow.run(["s"], config, tmp_path / "out", use_cache=False, interactive=False)
    assert seen[-1] == (False, transformers_logging.ERROR)
    assert transformers_logging.is_progress_bar_enabled()  # restored after the run
    assert f"s: loading model {minilm_path}" in [record.getMessage() for record in caplog.records]
    nlpflow.run(["s"], config, tmp_path / "out", use_cache=False, interactive=False, library_logs=True)
    assert seen[-1][0] is True


def test_predict_progress_advances_per_model_batch(tmp_path, bert_classifier, monkeypatch):
    """The predict bar moves as each model batch finishes, not once per chunk, and counts every record once."""
    import json

    from nlpflow.api import run

    calls: list[int] = []
    original = Progress.advance

    def spy(self, stage, count):
        if stage == "predict":
            calls.append(count)
        return original(self, stage, count)

    monkeypatch.setattr(Progress, "advance", spy)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"text number {i}", "label": "positive"}) + "\n" for i in range(40)))
    config = tmp_path / "p.yaml"
    config.write_text(
        "pipelines:\n  t:\n    task: sentiment\n    data: {path: d.jsonl}\n    options: {labels: [negative, positive]}\n"
        f"    model: {{name_or_path: {bert_classifier}, batch_size: 4}}\n    chunk_size: 20\n    report: {{formats: [json]}}\n"
    )
    run(["t"], config, tmp_path / "out", use_cache=False, interactive=False)
    assert sum(calls) == 40
    assert len([count for count in calls if count > 0]) >= 10  # 40 records in batches of 4, over two chunks
