"""report.md's worst examples for classification: the surest mistakes first, with text, reference, prediction and
confidence; other tasks keep their table."""

from __future__ import annotations

import json

from nlpflow.api import run
from nlpflow.engine import analysis

# the first rows are mislabelled on purpose, so in file order the first mistakes are not the surest ones
ROWS = [("it works I suppose", "negative"), ("meh, it is okay", "negative"), ("fine", "negative"),
        ("Excellent, wonderful, highly recommended. I love it!", "negative"),
        ("Awful, disappointing, a waste of money and time. I hate it.", "positive"),
        ("great quality, great experience", "positive"), ("poor quality, bad experience", "negative")]
LONG = "A very long review " + "that goes on and on " * 10


def _run(write_pipelines, tmp_path, rows):
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows), encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n"
        "  zs:\n"
        "    task: sentiment\n"
        "    data: {path: reviews.jsonl}\n"
        "    report: {formats: [json, markdown]}\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )
    [result] = run(["zs"], config, tmp_path / "out", use_cache=False, interactive=False)
    return result


def test_worst_classification_examples_are_the_surest_mistakes(write_pipelines, tmp_path):
    result = _run(write_pipelines, tmp_path, ROWS + [(LONG, "negative")])
    worst = result.report["analysis"]["worst"]
    assert result.report["analysis"]["ties_ranked_by"] == "confidence"
    assert all(item["scores"]["accuracy"] == 0 for item in worst) and len(worst) >= 3
    confidences = [item["confidence"] for item in worst]
    assert confidences == sorted(confidences, reverse=True)
    assert worst[0]["index"] in (3, 4)  # the blatant mislabels, not the first wrong row in the file
    markdown = (result.directory / "report.md").read_text(encoding="utf-8")
    section = markdown.split("## Worst examples by accuracy, the most confident first", 1)[1].split("\n## ", 1)[0]
    header, rule, *rows = section.strip().splitlines()
    assert header == "| index | id | text | reference | prediction | confidence | accuracy |"
    first = [cell.strip() for cell in rows[0].strip("|").split("|")]
    top = worst[0]
    assert first[0] == str(top["index"]) and first[2] == top["inputs"]["text"]
    assert first[3:5] == [top["reference"], top["prediction"]] and first[5] == f"{top['confidence']:.4f} (similarity)"
    long_row = next(row for row in rows if "A very long review" in row)
    shown = long_row.split("|")[3].strip()
    assert len(shown) == 121 and shown.endswith("…")


def test_ties_rank_by_confidence_only_when_asked(monkeypatch):
    monkeypatch.setattr(analysis, "RANKED_EXAMPLES", 2)
    surest, earliest = analysis._Ranked(), analysis._Ranked()
    for index, (score, sure) in enumerate([(0.0, 0.2), (0.0, 0.9), (1.0, 0.7), (0.0, 0.5), (1.0, 0.99)]):
        for ranked, tie in ((surest, sure), (earliest, 0.0)):
            if ranked.note(score, tie, index):
                ranked.offer(score, tie, index, {"index": index})
    assert [item["index"] for item in surest.worst()] == [1, 3]
    assert [item["index"] for item in surest.best()] == [4, 2]
    assert [item["index"] for item in earliest.worst()] == [0, 1]
