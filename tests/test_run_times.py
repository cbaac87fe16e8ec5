"""The run's times say what they cover: the console's progress is timed from the first record, report.md's time is
the whole run's, model loading included."""

from __future__ import annotations

import json
import logging
import re

from nlpflow.api import run
from nlpflow.contract.progress import Progress


def test_last_progress_line_says_model_loading_is_not_timed(caplog):
    progress = Progress("p", total=None, interactive=False)
    with caplog.at_level(logging.INFO, logger="nlpflow"):
        with progress.running():
            progress.advance("predict", 3)
    done = [record.getMessage() for record in caplog.records if ": done, " in record.getMessage()]
    assert len(done) == 1 and done[0].endswith("timed from the first record read, model loading not included (report.md's time includes it)")


def test_report_md_time_says_it_covers_the_whole_run(tmp_path, write_pipelines):
    (tmp_path / "scored.jsonl").write_text(
        "".join(json.dumps({"text": f"text {i}", "label": "a", "prediction": "ab"[i % 2]}) + "\n" for i in range(4)), encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n  s:\n    task: text-classification\n    data: {path: scored.jsonl}\n    report: {formats: [json, markdown]}\n")
    [result] = run(["s"], config, tmp_path / "out", use_cache=False, interactive=False)
    markdown = (result.directory / "report.md").read_text(encoding="utf-8")
    wall = result.report["timing"]["wall_seconds"]
    assert re.search(rf"^- time: {re.escape(str(wall))} s for the whole run, model loading included \(", markdown, re.M), markdown
