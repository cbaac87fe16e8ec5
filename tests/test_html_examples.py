"""report.html's table of examples: every example of a small run, the first EXAMPLE_ROWS of a bigger one, escaped,
with each example's scores, errors and confidence as predictions.jsonl has them.

Runs use the prediction-only path (records carry `prediction`, no model).
"""

from __future__ import annotations

import json
import re

import pytest

from nlpflow.api import run
from tests.test_reports import PIPELINE, parse, sentiment_records, without_page_script, write_records


def scored_run(tmp_path, write_pipelines, cache_dir, records):
    data = write_records(tmp_path / "reviews.jsonl", records)
    config = write_pipelines(PIPELINE.format(data=data.name))
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    return result


def table_rows(html: str) -> list[str]:
    table = re.search(r'<table class="examples" id="ex-table">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert table is not None, "no table of examples"
    return re.findall(r"<tr[ >].*?</tr>", table.group(1), re.S)


def cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)


def predictions(result) -> list[dict]:
    return [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_table_lists_every_example_of_a_small_run(tmp_path, write_pipelines, cache_dir):
    result = scored_run(tmp_path, write_pipelines, cache_dir, sentiment_records(40))
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    rows = table_rows(html)
    lines = predictions(result)
    assert len(rows) == len(lines) == result.report["counts"]["predicted"] == 40
    header = re.search(r'<table class="examples".*?<thead><tr>(.*?)</tr>', html, re.S).group(1)
    names = [parse(th).text[0] for th in re.findall(r"<th[^>]*>.*?</th>", header)]
    # macro-F1 has no per-example scores; given predictions have no details, so no confidence
    assert names == ["record", "line", "id", "text", "prediction", "reference", "accuracy"]
    for row, line in zip(rows, lines):
        shown = cells(row)
        assert shown[0] == str(line["index"]) and shown[1] == str(line["line"]) and shown[2] == line["id"]
        assert shown[4] == line["prediction"] and shown[5] == line["reference"]
        # each score with its raw value, which the script sorts and filters by
        assert f'data-v="{line["scores"]["accuracy"]!r}">{line["scores"]["accuracy"]:.4f}</td>' in row
        # an error is an example short of the top of its scale by the ranking metric
        assert ("data-error" in row.split(">", 1)[0]) == (line["scores"]["accuracy"] < 1)
    assert "Every example of the run (40)" in html and "First " not in html


def test_table_of_a_bigger_run_holds_the_first_rows_and_says_so(tmp_path, write_pipelines, cache_dir, monkeypatch):
    from nlpflow.plugins import html_report

    monkeypatch.setattr(html_report, "EXAMPLE_ROWS", 7)
    result = scored_run(tmp_path, write_pipelines, cache_dir, sentiment_records(40))
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    rows = table_rows(html)
    assert [cells(row)[0] for row in rows] == [str(i) for i in range(7)]
    assert "First 7 of 40 examples; all of them are in predictions.jsonl." in " ".join(parse(html).text)
    assert len(predictions(result)) == 40
    assert parse(html).errors == []


def test_table_escapes_text_that_would_end_the_script(tmp_path, write_pipelines, cache_dir):
    records = sentiment_records(10)
    records[3]["review"] = "</script><b>x</b><script>document.title='PWNED'</script>"
    records[4]["id"] = "</script><b>id"
    records[5]["prediction"] = "</SCRIPT><b>x"  # neither label: still shown, escaped
    result = scored_run(tmp_path, write_pipelines, cache_dir, records)
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    assert parse(html).errors == []
    # the only script on the page is its own code, ending at its own </script>
    rest = without_page_script(html)
    assert "<script" not in rest.lower() and "</script" not in rest.lower()
    rows = table_rows(html)
    assert cells(rows[3])[3] == "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;"
    assert cells(rows[4])[2] == "&lt;/script&gt;&lt;b&gt;id"
    assert cells(rows[5])[4] == "&lt;/SCRIPT&gt;&lt;b&gt;x"
    text = "".join(parse(html).text)
    assert records[3]["review"] in text and records[4]["id"] in text


def test_table_shows_each_predictions_confidence(tmp_path, write_pipelines, cache_dir):
    """A prediction's confidence (its details' probability, score or similarity, as report.json's analysis reads it)
    is a sortable column; predictions without one leave the cell empty."""
    from nlpflow.plugins.html_report import HtmlReporter

    result = scored_run(tmp_path, write_pipelines, cache_dir, sentiment_records(12))
    lines = predictions(result)
    for i, line in enumerate(lines):
        if i % 3:
            line["details"] = {"score": round(0.5 + i / 40, 4), "scores": {"positive": 0.1}}
    (result.directory / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    html = HtmlReporter().render(result)
    assert parse(html).errors == []
    assert '<th class="num" data-sort title="score">confidence</th>' in html
    for row, line in zip(table_rows(html), lines):
        value = (line.get("details") or {}).get("score")
        expected = f'<td class="num" data-v="{value!r}" title="score">{value:.4g}</td>' if value is not None else '<td class="num" data-v=""></td>'
        assert row.endswith(expected + "</tr>"), row[-120:]


@pytest.mark.parametrize("rows, expected", [(0, 0), (3, 3)])
def test_collector_keeps_at_most_example_rows(monkeypatch, rows, expected):
    from types import SimpleNamespace

    from nlpflow import Example
    from nlpflow.plugins import html_report

    monkeypatch.setattr(html_report, "EXAMPLE_ROWS", rows)
    collector = html_report.HtmlCollector(SimpleNamespace(input_fields=("text",)), [])
    examples = [Example(index=i, line=i + 1, fields={"text": "x" * 1000}) for i in range(10)]
    collector.add(examples, ["p"] * 10, ["r"] * 10, [{} for _ in range(10)])
    assert len(collector.rows) == expected and collector.total == 10
    assert all(len(row["inputs"][0]) == html_report.MAX_CHARS for row in collector.rows)
