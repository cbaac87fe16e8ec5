"""report.html: one self-contained page (inline CSS and SVG, one inline script of ours, no external requests).

The page shows the run's header (pipeline, task, model, data, counts, timing),
the metrics with their confidence intervals and signatures, the confusion
matrix and per-class scores when a metric reports them, the distribution of
per-example scores, the worst and best examples of report.json's ``analysis``
next to their references, the slices of report.json's ``analysis`` (each metric with its interval on each
input-length bucket and each value of the ``slice_by`` columns, as report.md
shows them), a table of the run's first :data:`EXAMPLE_ROWS` examples, and the
skipped records.

The per-example sections are gathered while the run writes each chunk (the
reporter's ``HtmlCollector``), so the data file is not read again; only
histogram counts and the table's rows are kept in memory. Of predictions.jsonl,
only the table's lines are read back, for what a collector is not handed: each
record's id and its prediction's confidence.

Templates are rendered by Jinja2 with autoescaping on; no string from the data
is ever marked safe, so a record holding ``<script>...</script>`` shows as text.
The table's rows are HTML (the page works without JavaScript); its filter and
sort are :data:`SCRIPT`, which holds no data and reads the rows from the DOM.
The page's Content-Security-Policy allows that script by its hash and no
request of any kind.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import jinja2
import markupsafe
from pydantic import BaseModel, ConfigDict, Field

from nlpflow import MAX_SLICE_VALUES, OTHER, Metric, Reporter, RunCollector, RunResult, Task, confidence, hookimpl

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: characters of an input, prediction or reference shown per example
MAX_CHARS = 400
#: histogram bins over a metric's scale
BINS = 20
#: skipped records listed
SHOWN_SKIPPED = 100
#: examples in the page's table of examples: the run's first ones (every one is in predictions.jsonl)
EXAMPLE_ROWS = 2000
#: the table's filter and sort, run in the page; our own code (no data in it), allowed by the page's CSP hash
SCRIPT = (TEMPLATES / "examples.js").read_text(encoding="utf-8")
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --- formatting ----------------------------------------------------------------


def format_value(value: float | None, scale: str | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if scale == "0-100" else f"{value:.4f}"


def shown_text(value: Any, limit: int = MAX_CHARS) -> str:
    """A data value as plain text for the page: strings as they are, anything else as compact JSON, cut at ``limit``."""
    if value is None:
        text = "—"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scale_range(scale: str | None) -> tuple[float, float]:
    """The (lowest, highest) value of a metric's scale: "0-1", "0-100", or any "LOW..HIGH" such as "-1..1".

    A scale string in another form (a plugin's own words) is drawn as 0-1.
    """
    if scale == "0-100":
        return 0.0, 100.0
    low, separator, high = (scale or "").partition("..")
    try:
        bounds = (float(low), float(high)) if separator else (0.0, 1.0)
    except ValueError:
        return 0.0, 1.0
    return bounds if bounds[0] < bounds[1] else (0.0, 1.0)


# --- charts (geometry here, drawing in the template) -----------------------------------------


def interval_bar(entry: dict, width: int = 160) -> dict | None:
    """Where a metric's value and CI fall on its scale, in pixels of a ``width``-wide strip."""
    value = entry.get("value")
    if value is None:
        return None
    low, high = scale_range(entry.get("scale"))

    def x(v: float) -> float:
        return round(min(max((v - low) / (high - low), 0.0), 1.0) * width, 1)

    ci = entry.get("ci")
    return {"width": width, "x": x(value), "low": x(ci["low"]) if ci else None, "high": x(ci["high"]) if ci else None,
            # the strip's ends, labelled under it
            "bottom": f"{low:g}", "top": f"{high:g}"}


def heatmap(confusion: dict, cell: int = 44) -> dict:
    """Cells of a confusion-matrix heatmap: rows are references, columns predictions; colour by row share."""
    labels = [str(label) for label in confusion["labels"]]
    matrix = confusion["matrix"]
    k = len(labels)
    longest = max((len(label) for label in labels), default=1)
    margin = min(8 + 7 * min(longest, 18), 140)
    cells = []
    for r, row in enumerate(matrix):
        total = sum(row) or 1
        for c, count in enumerate(row):
            share = count / total
            # white -> blue on the diagonal, white -> red elsewhere
            if r == c:
                fill = _mix((255, 255, 255), (37, 99, 235), share)
            else:
                fill = _mix((255, 255, 255), (220, 38, 38), share)
            cells.append({"x": margin + c * cell, "y": margin + r * cell, "count": count, "fill": fill, "dark": share > 0.55,
                          "title": f"reference {labels[r]}, predicted {labels[c]}: {count} ({share:.0%} of the row)"})
    return {
        "labels": [shown_text(label, 18) for label in labels],
        "cells": cells,
        "cell": cell,
        "margin": margin,
        "width": margin + k * cell + 4,
        "height": margin + k * cell + 4,
        "k": k,
    }


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> str:
    t = min(max(t, 0.0), 1.0)
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def histogram(counts: list[int], bounds: tuple[float, float], outside: int, width: int = 420, height: int = 120) -> dict:
    """Bars for a histogram of per-example scores over ``[bottom, top]`` = ``bounds``."""
    bottom, top = bounds
    peak = max(counts) or 1
    bar = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = round(count / peak * (height - 4), 1)
        low, high = bottom + (top - bottom) * i / len(counts), bottom + (top - bottom) * (i + 1) / len(counts)
        bars.append({"x": round(i * bar, 1), "w": round(bar - 1, 1), "y": round(height - h, 1), "h": h, "count": count,
                     "title": f"{low:g}–{high:g}: {count}"})
    return {"bars": bars, "width": width, "height": height, "bottom": bottom, "top": top, "total": sum(counts), "outside": outside}


# --- gathered during the run ----------------------------------------------------------------


class HtmlCollector(RunCollector):
    """What the page shows about single examples, gathered as the run writes each chunk: score histograms and the
    first :data:`EXAMPLE_ROWS` examples (texts cut at :data:`MAX_CHARS`) for the table of examples. Memory is bounded
    by the bins and that many rows. (The worst and best examples and the slices are report.json's ``analysis``,
    computed once for every report.)"""

    def __init__(self, task: Task, metrics: Sequence[Metric]):
        self.inputs = list(task.input_fields)
        self.metric_names = [metric.name for metric in metrics]
        self.scales = {metric.name: scale_range(metric.scale) for metric in metrics}
        self.seen_metrics: dict[str, None] = {}
        self.histograms: dict[str, list[int]] = {}
        self.outside: dict[str, int] = defaultdict(int)
        self.primary: str | None = None
        #: the first EXAMPLE_ROWS examples, as the table shows them; ``total``: how many examples the run wrote
        self.rows: list[dict[str, Any]] = []
        self.total = 0

    def add(self, examples, predictions, references, scores) -> None:
        for example, prediction, reference, example_scores in zip(examples, predictions, references, scores):
            if len(self.rows) >= EXAMPLE_ROWS:
                break
            self.rows.append({
                "index": example.index, "line": example.line,
                "inputs": [shown_text(example.fields.get(name)) for name in self.inputs],
                "prediction": shown_text(prediction), "reference": shown_text(reference), "scores": dict(example_scores),
            })
        self.total += len(examples)
        histograms = self.histograms
        for example_scores in scores:
            for name, value in example_scores.items():
                if value is None:
                    continue
                bins = histograms.get(name)
                if bins is None:  # the metric's first score: the page lists metrics in this order
                    self.seen_metrics.setdefault(name, None)
                    bins = histograms[name] = [0] * BINS
                    if self.primary is None:
                        self.primary = next((metric for metric in self.metric_names if example_scores.get(metric) is not None), name)
                low, high = self.scales.get(name, (0.0, 1.0))
                if value < low or value > high:
                    self.outside[name] += 1
                    value = min(max(value, low), high)
                bins[min(int((value - low) / (high - low) * BINS), BINS - 1)] += 1

    def summary(self, metric_entries: dict[str, dict]) -> dict[str, Any]:
        """The page's example sections, with the metrics' scales as report.json states them."""
        primary = self.primary
        shown_metrics = [name for name in metric_entries if name in self.seen_metrics]
        scale_of = {name: metric_entries.get(name, {}).get("scale") for name in shown_metrics}
        return {
            "primary": primary,
            "primary_scale": scale_of.get(primary) if primary else None,
            "histograms": [
                {"metric": name, "scale": scale_of[name],
                 **histogram(self.histograms[name], scale_range(scale_of[name]), self.outside[name])}
                for name in shown_metrics
            ],
            # filled from report.json's analysis by ranked_like_report_json where it ranked examples
            "worst": [], "best": [], "all_equal": True, "lowest": None,
        }


# --- the reporter --------------------------------------------------------------------


def ranked_like_report_json(report: dict, examples: dict[str, Any]) -> None:
    """Show the worst and best examples that report.json's ``analysis`` ranked (by report.rank_by, else the first metric
    whose per-example scores vary), with each prediction's confidence, so the page and report.json agree."""
    analysis = report.get("analysis") or {}
    rank = analysis.get("rank_by")
    if rank is None or analysis.get("rank_by_range") is None:
        return
    scale = report["metrics"].get(rank, {}).get("scale")

    def shown(item: dict) -> dict:
        confidence = item.get("confidence")
        return {
            "index": item["index"],
            "line": item.get("line"),
            "id": shown_text(item["id"], 80) if item.get("id") is not None else None,
            "score": item["scores"].get(rank),
            "inputs": [(name, shown_text(value)) for name, value in (item.get("inputs") or {}).items() if value is not None],
            "prediction": shown_text(item.get("prediction")),
            "reference": shown_text(item.get("reference")),
            "confidence": f"{confidence:.4g}" if confidence is not None else None,
            "confidence_of": item.get("confidence_of"),
        }

    lowest, highest = analysis["rank_by_range"]
    examples.update(
        primary=rank, primary_scale=scale, worst=[shown(item) for item in analysis.get("worst", [])],
        best=[shown(item) for item in analysis.get("best", [])], all_equal=lowest == highest, lowest=lowest, has_text=True,
    )


def slice_tables(report: dict, columns: Sequence[str] | None) -> list[dict]:
    """report.json's ``analysis.slices`` as the page's tables: each slice's n and each metric's value and interval,
    formatted on the metric's scale as report.md does, so the three reports agree. The length table always; of the
    ``slice_by`` columns, those in ``columns`` (None: all)."""
    analysis = report.get("analysis") or {}
    metrics = report["metrics"]
    primary = analysis.get("rank_by") or next(iter(metrics), None)
    tables = []
    for table in analysis.get("slices", []):
        length = "unit" in table  # the input-length table, the only one analysis gives a unit
        if not length and columns is not None and table["column"] not in columns:
            continue
        names = [name for name in metrics if any(name in row["metrics"] for row in table["slices"])]
        rows = []
        for row in table["slices"]:
            cells = []
            for name in names:
                entry = {**row["metrics"].get(name, {}), "scale": metrics[name].get("scale")}
                ci = entry.get("ci")
                cells.append({
                    "value": format_value(entry.get("value"), entry["scale"]),
                    "ci": f"{format_value(ci['low'], entry['scale'])} – {format_value(ci['high'], entry['scale'])}" if ci else "n/a",
                })
            bar = None
            if primary in names:
                bar = interval_bar({**row["metrics"].get(primary, {}), "scale": metrics[primary].get("scale")}, width=120)
            if bar is not None:
                shown = cells[names.index(primary)]
                bar["label"] = f"{primary} on {row['value']}: {shown['value']}, interval {shown['ci']}"
            rows.append({"label": row["value"], "n": row["n"], "cells": cells, "bar": bar})
        tables.append({
            "column": table["column"],
            "title": f"input length ({table['unit']})" if length else table["column"],
            "metrics": names,
            "primary": primary if primary in names else None,
            "rows": rows,
            "not_reported": table.get("not_reported", 0),
            "pooled": any(row["value"] == OTHER for row in table["slices"]),
        })
    return tables


def _identities(run: RunResult, count: int) -> dict[int, dict[str, Any]]:
    """Each of the first ``count`` lines of predictions.jsonl's ``id`` and confidence, by record index: what a
    collector is not handed (the runner picks the id column; the confidence is in the prediction's details)."""
    found: dict[int, dict[str, Any]] = {}
    if count:
        try:
            for item in itertools.islice(run.iter_predictions(), count):
                found[item["index"]] = {"id": item.get("id"), **confidence(item.get("details"))}
        except FileNotFoundError:  # a page rendered from a report alone: no ids or confidences to show
            pass
    return found


def _column(name: str, sort: bool = False, metric: bool = False, title: str = "") -> dict[str, Any]:
    """A column of the table of examples; ``sort``: numeric, sorted by clicking its name; ``metric``: a score."""
    return {"name": name, "sort": sort, "metric": metric, "title": title}


def _cell(text: Any, number: float | int | None = None, numeric: bool = False, long: bool = False, title: str = "") -> dict[str, Any]:
    """A cell of the table of examples; a ``numeric`` one carries its raw ``number`` (or "" for none) for the script."""
    return {"text": text, "v": ("" if number is None else repr(number)) if numeric else None, "long": long, "title": title}


def example_table(run: RunResult, examples: HtmlCollector, primary: str | None) -> dict[str, Any] | None:
    """The table of the run's first examples: record, line, id, inputs, prediction, reference, each per-example
    score (with its raw value, which the page's script sorts and filters by) and the confidence where the prediction
    has one. A row is an error when its ``primary`` score is short of the best its scale allows."""
    if not examples.rows:
        return None
    metrics = run.report["metrics"]
    names = [name for name in metrics if name in examples.seen_metrics]
    if primary not in names:
        primary = names[0] if names else None
    identities = _identities(run, len(examples.rows))
    has_id = any(identity.get("id") is not None for identity in identities.values())
    kinds = sorted({identity["confidence_of"] for identity in identities.values() if "confidence_of" in identity})

    columns = [_column("record", sort=True), _column("line")] + ([_column("id")] if has_id else [])
    columns += [_column(name) for name in [*examples.inputs, "prediction", "reference"]]
    columns += [_column(name, sort=True, metric=True) for name in names]
    columns += [_column("confidence", sort=True, title=", ".join(kinds))] if kinds else []
    for position, column in enumerate(columns):
        column["position"] = position  # its cell in each row: what the score limit's choice names

    error_rule, low, high, better = None, 0.0, 1.0, True
    if primary is not None:
        low, high = scale_range(metrics[primary].get("scale"))
        better = metrics[primary].get("higher_is_better", True)
        error_rule = f"{primary} {'<' if better else '>'} {high if better else low:g}"

    rows = []
    for row in examples.rows:
        identity = identities.get(row["index"], {})
        cells = [_cell(row["index"], row["index"], numeric=True), _cell("" if row["line"] is None else row["line"])]
        if has_id:
            cells.append(_cell("" if identity.get("id") is None else shown_text(identity["id"], 80)))
        cells += [_cell(text, long=True) for text in [*row["inputs"], row["prediction"], row["reference"]]]
        for name in names:
            value = row["scores"].get(name)
            cells.append(_cell("" if value is None else format_value(value, metrics[name].get("scale")), value, numeric=True))
        if kinds:
            value = identity.get("confidence")
            cells.append(_cell("" if value is None else f"{value:.4g}", value, numeric=True, title=identity.get("confidence_of", "")))
        score = row["scores"].get(primary) if primary else None
        rows.append({"cells": cells, "error": score is not None and (score < high if better else score > low)})
    return {
        "columns": columns, "rows": rows, "shown": len(rows), "total": examples.total, "primary": primary,
        "error_rule": error_rule, "errors": sum(row["error"] for row in rows),
    }


def page_context(run: RunResult, examples: HtmlCollector, slice_by: Sequence[str] | None = None) -> dict[str, Any]:
    report = run.report
    metrics = []
    confusion = []
    per_class = []
    for name, entry in report["metrics"].items():
        ci = entry.get("ci")
        metrics.append({
            "name": name,
            "value": format_value(entry.get("value"), entry.get("scale")),
            "ci": f"{format_value(ci['low'], entry.get('scale'))} – {format_value(ci['high'], entry.get('scale'))}" if ci else "n/a",
            "ci_note": f"{ci['confidence']:.0%}, {ci['resamples']} resamples, seed {ci['seed']}" if ci else "",
            "scale": entry.get("scale", ""),
            "higher": entry.get("higher_is_better", True),
            "n": entry.get("n", ""),
            "signature": entry.get("signature", ""),
            "bar": interval_bar(entry),
        })
        if entry.get("confusion_matrix") and entry["confusion_matrix"].get("labels"):
            confusion.append({"metric": name, **heatmap(entry["confusion_matrix"])})
        if entry.get("per_class"):
            per_class.append({"metric": name, "rows": [
                {"label": shown_text(label, 80), "precision": f"{v['precision']:.4f}", "recall": f"{v['recall']:.4f}", "f1": f"{v['f1']:.4f}",
                 "support": v.get("support", "")}
                for label, v in entry["per_class"].items()
            ]})
    model = report.get("model")
    skipped = report.get("skipped") or []
    confidence = next((e["ci"]["confidence"] for e in report["metrics"].values() if e.get("ci")), 0.95)
    context = {
        "report": report,
        "model": model,
        "metrics": metrics,
        "confidence": f"{confidence:.0%}",
        "confusion": confusion[:1],
        "per_class": per_class[:1],
        "skipped": [{"line": item.get("line"), "index": item.get("index"), "reason": shown_text(item.get("reason"), 300)} for item in skipped[:SHOWN_SKIPPED]],
        # report.json lists the first few skipped records only; the count says how many there were
        "skipped_more": max(report.get("counts", {}).get("skipped", len(skipped)) - min(len(skipped), SHOWN_SKIPPED), 0),
        "stages": sorted(report.get("timing", {}).get("stages_seconds", {}).items(), key=lambda item: -item[1]),
        "versions": [(name, value) for name, value in (report.get("versions") or {}).items() if value],
        "examples": examples.summary(report["metrics"]),
        "slices": slice_tables(report, slice_by),
        "max_slice_values": MAX_SLICE_VALUES,
        "max_chars": MAX_CHARS,
        "task_options": [(name, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)
                         for name, value in (report.get("task_options") or {}).items()],
    }
    ranked_like_report_json(report, context["examples"])
    context["table"] = example_table(run, examples, context["examples"]["primary"])
    return context


class HtmlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slice_by: list[str] | None = Field(None, description=(
        "data columns whose slice tables the page shows, next to the input-length one: each metric with its interval on "
        "each value, from report.json's analysis.slices; a column named here is sliced there too (report.slice_by sets "
        "it; default: every report.slice_by column)"))


class HtmlReporter(Reporter):
    name = "html"
    description = ("report.html: one self-contained page with metrics, intervals, confusion matrix, score distribution, worst and "
                   "best examples, slices and a filterable table of examples")
    filename = "report.html"
    Options = HtmlOptions

    def collector(self, task: Task, metrics: Sequence[Metric]) -> HtmlCollector:
        return HtmlCollector(task, metrics)

    def render(self, run: RunResult) -> str:
        context = page_context(run, run.collected[self.name], self.options.slice_by)
        # the one script the page may run: ours, not data, allowed by its hash in the page's CSP
        context.update(script=markupsafe.Markup(SCRIPT), script_hash=SCRIPT_HASH)
        return _environment().get_template("report.html.j2").render(context)


@hookimpl
def register_reporters(register):
    register(HtmlReporter)
