"""report.html (and the JSON report's metric entries): escaping, self-containment, charts, examples and slices.

Runs use the prediction-only path (records carry `prediction`, no model), so
they take a fraction of a second.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nlpflow.api import run

MALICIOUS = "<script>alert(1)</script> and <img src=x onerror=alert(2)>"

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
#: SVG elements written self-closing (<rect .../>)
SVG_EMPTY = {"rect", "line", "circle", "path", "polyline", "polygon", "stop"}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def sentiment_records(n: int = 40) -> list[dict]:
    records = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        wrong = i % 5 == 0
        prediction = ("negative" if label == "positive" else "positive") if wrong else label
        words = " ".join(["word"] * (3 + (i * 7) % 60))
        records.append({"id": f"r{i:03d}", "review": f"Review {i}: {words}.", "stars": label, "prediction": prediction,
                        "domain": ["movies", "products", "restaurants"][i % 3]})
    # the malicious record is misclassified so it shows among the worst examples
    records[0]["review"] = MALICIOUS
    records[0]["domain"] = "<b>bold</b>"
    return records


PIPELINE = """
pipelines:
  scored:
    task: sentiment
    data: {{path: {data}, on_error: skip}}
    fields: {{text: review, label: stars}}
    metrics: [accuracy, macro_f1]
    report: {{formats: [json, markdown, html], slice_by: [domain, missing_column], bootstrap: {{resamples: 200}}}}
"""


@pytest.fixture
def sentiment_run(tmp_path, write_pipelines, cache_dir):
    records = sentiment_records()
    data = write_records(tmp_path / "reviews.jsonl", records)
    with open(data, "a", encoding="utf-8") as handle:
        handle.write('{"id": "bad", "stars": "positive", "prediction": "positive"}\n')  # no text: skipped
        handle.write("{not json <script>\n")  # malformed: skipped
    config = write_pipelines(PIPELINE.format(data=data.name))
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    return result


class StrictChecker(HTMLParser):
    """Collects tags, attributes and text; records unbalanced or mis-nested tags as errors."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> StrictChecker:
    checker = StrictChecker()
    checker.feed(html)
    checker.close()
    if checker.stack:
        checker.errors.append(f"unclosed tags: {checker.stack}")
    return checker


def test_html_reporter_is_registered(registry):
    reporter = registry.get("reporter", "html")
    assert reporter.filename == "report.html"
    assert registry.provider("reporter", "html") == "html_report"


def without_page_script(html: str) -> str:
    """The page less its one script, which must be the table's own code, verbatim (no data in it)."""
    from nlpflow.plugins.html_report import SCRIPT

    assert html.lower().count("<script") == 1 and html.count(f"<script>{SCRIPT}</script>") == 1
    return html.replace(f"<script>{SCRIPT}</script>", "")


def test_report_html_escapes_data_and_parses(sentiment_run):
    html = (sentiment_run.directory / "report.html").read_text(encoding="utf-8")
    checker = parse(html)
    assert checker.errors == []
    html = without_page_script(html)
    checker = parse(html)
    assert "<script" not in html.lower()
    assert "<img" not in html.lower() and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = "".join(checker.text)
    assert MALICIOUS in text, "the record must show as text"
    assert "<b>bold</b>" in text  # slice value from the data, shown as text
    assert not any(tag in {"script", "img", "iframe", "object", "embed", "link"} for tag, _ in checker.tags)


def test_report_html_is_self_contained(sentiment_run):
    import base64
    import hashlib

    from nlpflow.plugins.html_report import SCRIPT

    html = (sentiment_run.directory / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "url(" not in html and "@import" not in html
    checker = parse(html)
    for tag, attrs in checker.tags:
        for name in ("src", "href", "srcset", "action", "xlink:href", "poster", "data"):
            assert name not in attrs, f"<{tag} {name}=...> would load something"
        assert not any(name.startswith("on") for name in attrs), f"<{tag}> has an event handler"
    # the script loads nothing and builds no markup from strings
    for word in ("fetch(", "XMLHttpRequest", "import(", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                 "eval(", "Function(", "setTimeout(", "WebSocket", "sendBeacon", "src", "href", "://"):
        assert word not in SCRIPT, word
    # and the page's policy forbids every request and any script but that one
    [policy] = [attrs["content"] for tag, attrs in checker.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == f"'sha256-{digest}'"
    assert set(directives) == {"default-src", "style-src", "script-src", "base-uri", "form-action"}


def test_report_html_contents(sentiment_run):
    report = sentiment_run.report
    html = (sentiment_run.directory / "report.html").read_text(encoding="utf-8")
    checker = parse(html)
    text = " ".join(checker.text)
    # header
    assert "scored" in text and "sentiment" in text and report["data"]["sha256"][:16] in html
    # metrics with intervals and signatures
    for name, entry in report["metrics"].items():
        assert f"{entry['value']:.4f}" in text
        assert f"{entry['ci']['low']:.4f} – {entry['ci']['high']:.4f}" in text
        assert entry["signature"] in text
    # confusion matrix heatmap: one rect per cell, counts as text
    matrix = report["metrics"]["macro_f1"]["confusion_matrix"]
    svg = re.search(r'<svg class="confusion".*?</svg>', html, re.S)
    assert svg is not None
    assert svg.group(0).count("<rect") == len(matrix["labels"]) ** 2
    for row in matrix["matrix"]:
        for count in row:
            assert f">{count}</text>" in svg.group(0)
    # per-class table
    for label, scores in report["metrics"]["macro_f1"]["per_class"].items():
        assert f"{scores['f1']:.4f}" in text
    # histogram of per-example accuracy: errors at 0, correct at 1
    histogram = re.search(r'<svg class="histogram".*?</svg>', html, re.S)
    assert histogram is not None and histogram.group(0).count("<rect") == 2
    # worst examples are the misclassified ones, with their text
    worst = html[html.index("<h3>Worst</h3>"):html.index("<h3>Best</h3>")]
    assert "Review 5:" in worst and "&lt;script&gt;" in worst
    assert "Review 1:" not in worst  # a correct one
    # slices: by length (words), by domain, and a missing column
    assert "By input length (words of 'review')" in text
    assert "By domain" in text and "restaurants" in text
    assert "(missing)" in text
    # skipped records table
    assert report["counts"]["skipped"] == 2
    assert "missing field" in text and "malformed JSON" in text


def test_report_html_size(sentiment_run):
    size = (sentiment_run.directory / "report.html").stat().st_size
    assert size < 100_000, size


def test_json_report_metric_entries(sentiment_run):
    saved = json.loads((sentiment_run.directory / "report.json").read_text(encoding="utf-8"))
    for entry in saved["metrics"].values():
        assert {"value", "ci", "scale", "signature", "higher_is_better", "n"} <= set(entry)
        assert entry["ci"]["resamples"] == 200 and entry["ci"]["seed"] == 12345
        assert entry["ci"]["low"] <= entry["value"] <= entry["ci"]["high"]


def text_of(fragment: str) -> str:
    return "".join(parse(fragment).text).strip()


def slice_tables(html: str) -> dict[str, list[list[str]]]:
    """The page's slice tables by heading: each row's cell texts, the header row first."""
    tables = {}
    for heading, body in re.findall(r"<h3>By (.*?)</h3>\s*<table class=\"slices\">(.*?)</table>", html, re.S):
        rows = []
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
            cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", re.sub(r"<svg.*?</svg>", "", row, flags=re.S), re.S)
            rows.append([text_of(cell) for cell in cells])
        tables[text_of(heading)] = rows
    return tables


def expected_slice_tables(report: dict, columns=None) -> dict[str, list[list[str]]]:
    """report.json's analysis.slices as the page should show them: value and interval on the metric's scale, n."""
    def shown(value, scale):
        return "n/a" if value is None else f"{value:.2f}" if scale == "0-100" else f"{value:.4f}"

    tables = {}
    for table in report["analysis"]["slices"]:
        if columns is not None and table["column"] != "length" and table["column"] not in columns:
            continue
        names = list(report["metrics"])
        rank = report["analysis"]["rank_by"]
        rows = [[table["column"], "n", *[h for name in names for h in (name, "95% CI")], f"{rank} on its scale"]]
        for row in table["slices"]:
            cells = [row["value"], str(row["n"])]
            for name in names:
                entry, scale = row["metrics"][name], report["metrics"][name]["scale"]
                ci = entry["ci"]
                cells += [shown(entry["value"], scale), f"{shown(ci['low'], scale)} – {shown(ci['high'], scale)}" if ci else "n/a"]
            rows.append(cells + [""])
        title = f"input length ({table['unit']})" if table["column"] == "length" else table["column"]
        tables[title] = rows
    return tables


def test_slice_tables_show_report_json_analysis_slices(sentiment_run):
    """One way to compute slices: the page shows report.json's analysis.slices (each metric recomputed on the slice,
    with its interval, and each slice's n), not means of per-example scores of its own."""
    saved = json.loads((sentiment_run.directory / "report.json").read_text(encoding="utf-8"))
    html = (sentiment_run.directory / "report.html").read_text(encoding="utf-8")
    expected = expected_slice_tables(saved)
    assert list(expected) == ["input length (words of 'review')", "domain", "missing_column"]
    assert slice_tables(html) == expected
    # the length buckets count whitespace-separated words of the first input field
    from nlpflow.engine.analysis import length_bucket

    counts: dict[str, int] = {}
    for record in sentiment_records():
        counts[length_bucket(len(record["review"].split()))] = counts.get(length_bucket(len(record["review"].split())), 0) + 1
    assert {row[0]: int(row[1]) for row in expected["input length (words of 'review')"][1:]} == counts
    # and an interval drawn for the ranking metric on each slice
    table = html[html.index("<h3>By domain</h3>"):]
    table = table[:table.index("</table>")]
    assert table.count('role="img"') == len(saved["analysis"]["slices"][1]["slices"])


@pytest.mark.parametrize("formats, slice_by, shown", [
    # a column named only in the html option is sliced by the run's analysis, so every report shows it
    ("[json, markdown, {html: {slice_by: [domain]}}]", "[]", ["domain"]),
    # the html option picks which of the analysed columns the page shows
    ("[json, markdown, {html: {slice_by: []}}]", "[domain]", []),
    ("[json, markdown, {html: {slice_by: [domain]}}]", "[missing_column]", ["domain"]),
])
def test_html_slice_by_option_and_report_slice_by_agree(tmp_path, write_pipelines, cache_dir, formats, slice_by, shown):
    data = write_records(tmp_path / "reviews.jsonl", sentiment_records())
    config = write_pipelines(
        "pipelines:\n  scored:\n    task: sentiment\n    data: {path: %s}\n    fields: {text: review, label: stars}\n"
        "    report: {formats: %s, slice_by: %s, bootstrap: {resamples: 50}}\n" % (data.name, formats, slice_by)
    )
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    saved = json.loads((result.directory / "report.json").read_text(encoding="utf-8"))
    analysed = [table["column"] for table in saved["analysis"]["slices"]]
    assert set(shown) <= set(analysed)
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    expected = expected_slice_tables(saved, shown)
    assert list(expected) == ["input length (words of 'review')", *shown]
    assert slice_tables(html) == expected
    markdown = (result.directory / "report.md").read_text(encoding="utf-8")
    for column in analysed[1:]:
        assert "## Slices by " + column.replace("_", "\\_") in markdown


def test_html_report_does_not_read_the_data_file_again(tmp_path, write_pipelines, cache_dir, monkeypatch):
    """The page's examples and slices come from the run itself: the reader reads the data file once."""
    from nlpflow.plugins import readers

    reads = []
    original = readers.JsonLinesReader.read

    def counted(self, path):
        reads.append(path)
        yield from original(self, path)

    monkeypatch.setattr(readers.JsonLinesReader, "read", counted)
    data = write_records(tmp_path / "reviews.jsonl", sentiment_records())
    config = write_pipelines(PIPELINE.format(data=data.name))
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    assert "Review 5:" in html and "restaurants" in html
    assert len(reads) == 1


def test_all_equal_scores_show_no_worst_best(tmp_path, write_pipelines, cache_dir):
    records = [{"review": f"text {i}", "stars": "positive", "prediction": "positive"} for i in range(6)]
    write_records(tmp_path / "same.jsonl", records)
    config = write_pipelines(PIPELINE.format(data="same.jsonl"))
    [result] = run(["scored"], config=config, output=tmp_path / "out", cache_dir=cache_dir)
    html = (result.directory / "report.html").read_text(encoding="utf-8")
    assert "Every example has the same accuracy" in html
    assert parse(html).errors == []


def test_report_rendered_after_the_data_file_is_gone_still_shows_input_text(sentiment_run):
    from nlpflow.plugins.html_report import HtmlReporter

    sentiment_run.data_path.unlink()
    sentiment_run.data_path = Path("/nonexistent/file.jsonl")
    html = HtmlReporter().render(sentiment_run)
    assert parse(html).errors == []
    # the worst examples come from report.json's analysis, gathered during the run: their text needs no data file
    worst = html[html.index("<h3>Worst</h3>"):html.index("<h3>Best</h3>")]
    assert "Review 5:" in worst and "input text unavailable" not in html


def test_markdown_report_has_metrics_per_class_and_confusion_matrix(sentiment_run):
    text = (sentiment_run.directory / "report.md").read_text(encoding="utf-8")
    report = sentiment_run.report
    accuracy = report["metrics"]["accuracy"]
    assert f"| accuracy | {accuracy['value']:.4f} | [{accuracy['ci']['low']:.4f}, {accuracy['ci']['high']:.4f}] |" in text
    matrix = report["metrics"]["macro_f1"]["confusion_matrix"]
    header = "| | " + " | ".join(matrix["labels"]) + " |"
    assert header in text
    for label, row in zip(matrix["labels"], matrix["matrix"]):
        assert f"| **{label}** | " + " | ".join(map(str, row)) + " |" in text
    assert "## Skipped records (2)" in text
    assert "<script>" not in text.split("## Skipped records")[0]  # data never reaches the summary above the skip list


def test_markdown_report_is_safe_markdown_whatever_the_labels(tmp_path):
    from types import SimpleNamespace

    from markdown_it import MarkdownIt

    from nlpflow.plugins.reports import MarkdownReporter

    labels = ["pos", " pos", "neg\r", "<img src=x onerror=alert(3)>", "a|b\\", "x\ny", "`tick`"]
    per_class = {label: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1} for label in labels}
    report = {
        "pipeline": "p",
        "description": "<img src=x onerror=alert(3)> and <script>alert(1)</script>",
        "task": "sentiment",
        "task_plugin": "nlpflow.plugins.classification",
        "data": {"path": "data`<b>.jsonl", "format": "jsonl", "sha256": "0" * 64},
        "model": None,
        "counts": {"read": 7, "scored": 7, "skipped": 1, "truncated": 0, "from_cache": 0},
        "timing": {"wall_seconds": 1, "records_per_second": 7},
        "metrics": {
            "macro_f1": {
                "value": 0.5, "n": 7, "per_class": per_class,
                "confusion_matrix": {"labels": labels, "matrix": [[1] * len(labels) for _ in labels]},
            }
        },
        "skipped": [{"line": 3, "reason": "label '<b>bold</b>\r' | not allowed"}],
    }
    text = MarkdownReporter().render(SimpleNamespace(report=report))
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert [t.type for t in tokens if t.type in ("html_inline", "html_block")] == []
    for child in (c for t in tokens if t.children for c in t.children):
        assert child.type != "html_inline"

    def tables():
        rows, current = [], None
        for token in tokens:
            if token.type == "table_open":
                current = []
            elif token.type == "tr_open" and current is not None:
                current.append([])
            elif token.type == "inline" and current is not None and current:
                current[-1].append(token.content)
            elif token.type == "table_close":
                rows.append(current)
                current = None
        return rows

    metrics_table, per_class_table, matrix_table, skipped_table = tables()
    assert len(per_class_table) == 1 + len(labels) and all(len(row) == 5 for row in per_class_table)
    assert len(matrix_table) == 1 + len(labels) and all(len(row) == 1 + len(labels) for row in matrix_table)
    assert len(skipped_table) == 2 and all(len(row) == 2 for row in skipped_table)
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert "<img" not in rendered and "<script" not in rendered and "<b>" not in rendered
    assert "&lt;img src=x onerror=alert(3)&gt;" in rendered  # shown, as text
    first_cells = [row[0] for row in per_class_table[1:]]
    assert len(set(first_cells)) == len(labels)  # 'pos' and ' pos' stay apart
    assert "␠pos" in first_cells


def test_a_scale_such_as_minus_one_to_one_is_drawn_and_formatted():
    from nlpflow.plugins.html_report import interval_bar, scale_range

    assert scale_range("-1..1") == (-1.0, 1.0) and scale_range("0-100") == (0.0, 100.0) and scale_range("0-1") == (0.0, 1.0)
    bar = interval_bar({"value": 0.0, "scale": "-1..1", "ci": {"low": -0.5, "high": 1.0}}, width=100)
    assert (bar["x"], bar["low"], bar["high"]) == (50.0, 25.0, 100.0)


def test_report_html_shows_confidence_axis_labels_and_task_options_as_a_table(sentiment_run):
    from nlpflow.plugins.html_report import HtmlReporter

    report = sentiment_run.report
    report["analysis"]["worst"][0].update(confidence=0.9731, confidence_of="score")
    html = HtmlReporter().render(sentiment_run)
    assert parse(html).errors == []
    worst = html[html.index("<h3>Worst</h3>"):html.index("<h3>Best</h3>")]
    assert "confidence 0.9731 (score)" in worst
    charts = re.findall(r'<svg[^>]*role="img".*?</svg>', html, re.S)
    assert charts
    for chart in charts:
        # every chart says what its axes are: text marked as an axis label, or its two scale ends
        assert chart.count('class="axis"') >= 2, chart[:200]
    histogram = next(chart for chart in charts if 'class="histogram"' in chart)
    assert ">examples</text>" in histogram and "per example</text>" in histogram
    confusion = next(chart for chart in charts if 'class="confusion"' in chart)
    assert "prediction →" in confusion and "reference ↓" in confusion
    options = report["task_options"]
    assert options
    table = html[html.index('<table class="options small">'):]
    table = table[:table.index("</table>")]
    for name in options:
        assert f"<th>{name}</th>" in table
    assert json.dumps(options) not in html.replace("&#34;", '"')


def test_report_files_get_the_umask_mode_like_predictions(tmp_path):
    import os
    import stat

    from tests.conftest import REPO

    previous = os.umask(0o027)
    try:
        [result] = run(["news-summarization-lead3"], REPO / "pipelines.yaml", tmp_path / "out", use_cache=False, interactive=False)
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in result.directory.iterdir() if not path.name.startswith(".")}
    assert modes["report.json"] == modes["report.md"] == modes["predictions.jsonl"] == 0o640, modes
