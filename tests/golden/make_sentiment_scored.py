"""Writes the data and pipeline file of tests/test_prediction_bytes.py into a folder (run by the test, and once with
the code before the per-record changes to produce sentiment_scored.predictions.jsonl)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PIPELINE = """
pipelines:
  scored:
    task: sentiment
    chunk_size: 64
    data: {path: reviews.jsonl, on_error: skip}
    fields: {text: review, label: stars}
    metrics: [accuracy, macro_f1]
    report: {formats: [json], bootstrap: {resamples: 50}}
"""


def records() -> list[dict]:
    labels = ["positive", "negative", "neutral", "Positive "]
    found = []
    for i in range(300):
        label = labels[i % 3]
        prediction = labels[(i * 7) % 4] if i % 4 == 0 else label
        text = f"Review {i}: {'déjà vu ' * (i % 9)}\u00e9\u4e2d \"quoted\" \\ back\tslash {'<b>' if i % 11 == 0 else ''}"
        found.append({"id": i, "review": text, "stars": label, "prediction": prediction, "extra": {"n": i / 7}})
    found[17]["review"] = ""
    del found[33]["review"]  # skipped: no text
    return found


def write(folder: Path) -> Path:
    with open(folder / "reviews.jsonl", "w", encoding="utf-8") as handle:
        for record in records():
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.write("{not json\n")
    (folder / "pipelines.yaml").write_text(PIPELINE, encoding="utf-8")
    return folder / "pipelines.yaml"


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
