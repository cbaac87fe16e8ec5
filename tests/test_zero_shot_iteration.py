"""Zero-shot iteration: the text embeddings are cached apart from the labels, so a change of label descriptions or
template encodes only the descriptions and scores every text from its cached embedding."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from nlpflow.api import run
from nlpflow.engine.cache import PredictionCache, packed_outputs, unpacked_outputs
from nlpflow.plugins.torch_backend import TorchBackend

TEXTS = ["great stuff, I loved it", "awful stuff, never again", "fine I guess", "the best purchase this year",
         "broke after a day", "it works", "terrible support and a late delivery", "wonderful, would buy again"]
TEXTS = [f"{text} (order {number})" for number in range(3) for text in TEXTS]


def _pipeline(write_pipelines, tmp_path, descriptions: str, template: str = "{}", texts: list[str] = TEXTS):
    (tmp_path / "reviews.csv").write_text(
        "text,label\n" + "".join(f'"{text}",{"pos" if i % 2 == 0 else "neg"}\n' for i, text in enumerate(texts)), encoding="utf-8")
    return write_pipelines(
        "pipelines:\n"
        "  zs:\n"
        "    task: sentiment\n"
        "    data: {path: reviews.csv}\n"
        f"    options: {{labels: {descriptions}, template: {template!r}}}\n"
        "    chunk_size: 10\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )


@pytest.fixture
def forward_rows(monkeypatch):
    """Rows computed by the torch backend, per call."""
    rows: list[int] = []
    original = TorchBackend.run

    def counted(self, loaded, prepared, **options):
        rows.append(len(prepared["input_ids"]))
        return original(self, loaded, prepared, **options)

    monkeypatch.setattr(TorchBackend, "run", counted)
    return rows


def test_changed_descriptions_encode_only_the_descriptions(write_pipelines, tmp_path, cache_dir, forward_rows):
    first = _pipeline(write_pipelines, tmp_path, "{pos: [good, lovely], neg: [bad]}")
    run(["zs"], first, tmp_path / "first", interactive=False)
    assert sum(forward_rows) == len(TEXTS) + 3  # every text, and each label's descriptions (2 + 1)
    forward_rows.clear()

    changed = _pipeline(write_pipelines, tmp_path, "{pos: [It was excellent.], neg: [It was a waste of money., I hate it]}",
                        template="A review: {}")
    [warm] = run(["zs"], changed, tmp_path / "warm", interactive=False)
    assert forward_rows == [1, 2]  # the new descriptions of each label, and no text
    assert warm.report["model"]["batches"] == 0
    forward_rows.clear()

    [cold] = run(["zs"], changed, tmp_path / "cold", use_cache=False, interactive=False)
    assert sum(forward_rows) == len(TEXTS) + 3
    assert (tmp_path / "warm" / "zs" / "predictions.jsonl").read_bytes() == (tmp_path / "cold" / "zs" / "predictions.jsonl").read_bytes()
    assert warm.report["metrics"] == cold.report["metrics"]


def test_damaged_cached_outputs_are_recomputed(write_pipelines, tmp_path, cache_dir, forward_rows, caplog):
    config = _pipeline(write_pipelines, tmp_path, "{pos: [good], neg: [bad]}")
    run(["zs"], config, tmp_path / "first", interactive=False)
    with sqlite3.connect(cache_dir / "predictions.sqlite") as connection:
        key, blob = connection.execute("SELECT key, value FROM outputs LIMIT 1").fetchone()
        flipped = bytearray(blob)
        flipped[-1] ^= 0x01
        connection.execute("UPDATE outputs SET value = ? WHERE key = ?", (bytes(flipped), key))
    forward_rows.clear()
    changed = _pipeline(write_pipelines, tmp_path, "{pos: [lovely], neg: [awful]}")
    with caplog.at_level("WARNING"):
        run(["zs"], changed, tmp_path / "second", interactive=False)
    assert "model outputs that do not match their checksum" in caplog.text
    assert sum(forward_rows) > 2  # the damaged text's batch ran again
    [cold] = run(["zs"], changed, tmp_path / "cold", use_cache=False, interactive=False)
    assert (tmp_path / "second" / "zs" / "predictions.jsonl").read_bytes() == (tmp_path / "cold" / "zs" / "predictions.jsonl").read_bytes()


def test_outputs_round_trip_bit_for_bit(tmp_path):
    outputs = {"embedding": np.random.default_rng(0).standard_normal(384).astype(np.float32), "ids": np.arange(6).reshape(2, 3)}
    cache = PredictionCache(tmp_path)
    cache.put_outputs({"k": outputs})
    read = cache.get_outputs(["k", "absent"])
    assert list(read) == ["k"]
    for name, array in outputs.items():
        assert read["k"][name].dtype == array.dtype and np.array_equal(read["k"][name], array)
    assert unpacked_outputs(packed_outputs(outputs))["ids"].shape == (2, 3)
    with pytest.raises(ValueError):
        unpacked_outputs(packed_outputs(outputs) + b"\x00")


def test_a_text_repeated_in_a_chunk_is_embedded_at_each_place(write_pipelines, tmp_path, cache_dir, forward_rows):
    """As with cached predictions: its copies sit in different batches, so a cold run may differ in the last digit."""
    texts = TEXTS[:9] + TEXTS[:1]  # one chunk of 10, the first text twice
    run(["zs"], _pipeline(write_pipelines, tmp_path, "{pos: [good], neg: [bad]}", texts=texts), tmp_path / "first", interactive=False)
    forward_rows.clear()
    changed = _pipeline(write_pipelines, tmp_path, "{pos: [lovely], neg: [awful]}", texts=texts)
    run(["zs"], changed, tmp_path / "warm", interactive=False)
    assert forward_rows[:2] == [1, 1] and sum(forward_rows[2:]) >= 2  # the repeated text's batches ran
    run(["zs"], changed, tmp_path / "cold", use_cache=False, interactive=False)
    assert (tmp_path / "warm" / "zs" / "predictions.jsonl").read_bytes() == (tmp_path / "cold" / "zs" / "predictions.jsonl").read_bytes()
