"""predictions.jsonl bytes stay those of the code before the per-record speed-ups (tests/golden/, written by
tests/golden/make_sentiment_scored.py's data with the runner of commit 0bad74d), chunked and unchunked alike."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nlpflow.api import run
from tests.golden.make_sentiment_scored import write

GOLDEN = Path(__file__).parent / "golden" / "sentiment_scored.predictions.jsonl"


@pytest.mark.parametrize("overlap", ["1", "0"])
def test_predictions_bytes_equal_the_recorded_output(tmp_path, cache_dir, monkeypatch, overlap):
    monkeypatch.setenv("NLPFLOW_OVERLAP", overlap)
    config = write(tmp_path)
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    written = (result.directory / "predictions.jsonl").read_bytes()
    # the one change since the golden file: each line carries the record's id column, right after "line"
    assert written.count(b', "id": ') == GOLDEN.read_bytes().count(b"\n")
    assert re.sub(rb', "id": \d+', b"", written) == GOLDEN.read_bytes()
