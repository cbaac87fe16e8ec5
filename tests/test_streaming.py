"""Records stream through the runner in chunks: memory is bounded by chunk_size, not by the data file."""

from __future__ import annotations

import json
from pathlib import Path

from nlpflow import hookimpl
from nlpflow.api import run
from nlpflow.registry import load_registry
from nlpflow.contract.types import Preprocessor, RawRecord, Reader


class CountingReader(Reader):
    """Generates records on demand and remembers how far ahead of the runner it was asked to go."""

    name = "counting"
    extensions = (".count",)
    produced = 0

    def read(self, path: Path):
        total = int(path.read_text())
        for number in range(total):
            CountingReader.produced += 1
            yield RawRecord(number + 1, {"text": f"record {number}", "label": "a", "prediction": "a" if number % 3 else "b"})


class ChunkWatcher(Preprocessor):
    """Checks at each chunk how many records the reader has produced beyond those already processed."""

    name = "watch"
    seen = 0
    largest_chunk = 0
    most_ahead = 0

    def __call__(self, examples):
        ChunkWatcher.seen += len(examples)
        ChunkWatcher.largest_chunk = max(ChunkWatcher.largest_chunk, len(examples))
        ChunkWatcher.most_ahead = max(ChunkWatcher.most_ahead, CountingReader.produced - ChunkWatcher.seen)


class StreamingPlugin:
    @hookimpl
    def register_readers(self, register):
        register(CountingReader)

    @hookimpl
    def register_preprocessors(self, register):
        register(ChunkWatcher)


def test_runner_reads_one_chunk_at_a_time(tmp_path, write_pipelines):
    (tmp_path / "data.count").write_text("5000")
    config = write_pipelines(
        "pipelines:\n  stream:\n    task: sentiment\n    data: {path: data.count}\n    preprocess: [watch]\n"
        "    chunk_size: 64\n    report: {formats: [json]}\n"
    )
    registry = load_registry(extra_plugins=[("streaming", StreamingPlugin())])
    [result] = run(["stream"], config, tmp_path / "out", registry=registry, use_cache=False)
    assert ChunkWatcher.seen == 5000
    assert ChunkWatcher.largest_chunk == 64
    # the reader is never more than one record ahead of what has been processed (islice pulls lazily)
    assert ChunkWatcher.most_ahead <= 1
    lines = (result.directory / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5000
    assert [json.loads(line)["index"] for line in lines[:3]] == [0, 1, 2]
    assert result.report["metrics"]["accuracy"]["value"] == (5000 - 1667) / 5000
