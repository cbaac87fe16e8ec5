"""One huge record cannot exhaust memory: JSON Lines records over data.max_record_bytes are bad records read in
bounded blocks, and texts are cut to what the model can use before they are tokenized."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from nlpflow.cli import main
from tests.conftest import REPO


def _pipeline(tmp_path, extra: str = "") -> str:
    config = tmp_path / "p.yaml"
    config.write_text(
        "pipelines:\n  t:\n    task: sentiment\n    data: {path: d.jsonl, on_error: skip" + extra + "}\n"
        "    report: {formats: [json]}\n"
    )
    return str(config)


def test_a_record_over_max_record_bytes_is_skipped_with_its_line(tmp_path):
    big = "x" * 3000
    rows = [
        {"text": "fine", "label": "positive", "prediction": "positive"},
        {"text": big, "label": "negative", "prediction": "negative"},
        {"text": "also fine", "label": "negative", "prediction": "negative"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _pipeline(tmp_path, ", max_record_bytes: 1000")
    assert main(["run", "t", "--config", config, "--output", str(tmp_path / "out"), "--no-cache"]) == 0
    report = json.loads((tmp_path / "out" / "t" / "report.json").read_text())
    assert report["counts"]["skipped"] == 1 and report["counts"]["scored"] == 2
    [skipped] = report["skipped"]
    assert skipped["line"] == 2
    assert "over data.max_record_bytes (1,000)" in skipped["reason"]


READ_HUGE = """
import resource, sys
from pathlib import Path
from nlpflow.plugins.readers import JsonLinesReader
records = list(JsonLinesReader().read(Path(sys.argv[1])))
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(len(records), records[0].error is not None, records[1].data is not None, round(peak_mib))
"""


def test_a_30_mb_line_is_never_held_whole(tmp_path):
    path = tmp_path / "d.jsonl"
    with open(path, "w") as handle:
        handle.write('{"text": "' + "y" * (30 * 1024 * 1024) + '", "label": "positive"}\n')
        handle.write('{"text": "small", "label": "positive"}\n')
    baseline = subprocess.run([sys.executable, "-c", READ_HUGE.replace("list(JsonLinesReader().read(Path(sys.argv[1])))", "[None, None]").replace(
        "records[0].error is not None, records[1].data is not None", "True, True"), str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    result = subprocess.run([sys.executable, "-c", READ_HUGE, str(path)], cwd=REPO, capture_output=True, text=True, check=True)
    count, first_is_error, second_is_read, peak = result.stdout.split()
    assert (count, first_is_error, second_is_read) == ("2", "True", "True")
    # the 30 MiB line in 1 MiB blocks, against the same process reading nothing (the default limit is 10 MiB)
    assert int(peak) - int(baseline.stdout.split()[-1]) < 20, (peak, baseline.stdout)


def test_texts_are_cut_before_tokenizing_and_count_as_truncated(bert_classifier):
    from nlpflow import ModelConfig, tokenize
    from nlpflow.contract.hub import CHARACTERS_PER_TOKEN
    from nlpflow.plugins.torch_backend import TorchBackend

    loaded = TorchBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    seen = []
    original = loaded.tokenizer.__class__.__call__

    def spy(self, texts, *args, **kwargs):
        seen.extend(len(text) for text in texts)
        return original(self, texts, *args, **kwargs)

    loaded.tokenizer.__class__.__call__ = spy
    try:
        rows, truncated = tokenize(loaded, ["short text", "word " * 2_000_000], 32)
    finally:
        loaded.tokenizer.__class__.__call__ = original
    assert max(seen) == 32 * CHARACTERS_PER_TOKEN
    assert truncated == [False, True]
    assert len(rows[1]["input_ids"]) == 32
