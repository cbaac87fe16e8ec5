"""Built-in reporters: report.json and report.md (report.html lives in plugins/html_report.py)."""

from __future__ import annotations

import json
import re

from nlpflow import Reporter, RunResult, hookimpl


class JsonReporter(Reporter):
    name = "json"
    description = "report.json: metrics with confidence intervals, counts, model and run metadata"
    filename = "report.json"

    def render(self, run: RunResult) -> str:
        return json.dumps(run.report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _format_value(entry: dict) -> str:
    value = entry.get("value")
    if value is None:
        return "n/a"
    return f"{value:.2f}" if entry.get("scale") == "0-100" else f"{value:.4f}"


def _format_ci(entry: dict) -> str:
    ci = entry.get("ci")
    if not ci:
        return ""
    fmt = "{:.2f}" if entry.get("scale") == "0-100" else "{:.4f}"
    return f"[{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]"


def _confidence_label(report: dict) -> str:
    """The interval column's header, from the confidence the run used."""
    for entry in report["metrics"].values():
        if entry.get("ci"):
            return f"{entry['ci']['confidence'] * 100:g}% CI"
    return "CI"


#: characters with a meaning inside a Markdown paragraph or table cell (HTML, code, emphasis, links, strikethrough,
#: cell borders); each is written backslash-escaped, which CommonMark renders as the character itself
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~])")
#: line breaks end a table row (CommonMark counts \r alone as one), other control characters are invisible: all
#: are shown as escapes, so ``a\rb`` and ``ab`` read differently
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _inline(text: object) -> str:
    """Text from the run (labels, names, reasons, descriptions) as Markdown that renders as exactly that text, on one line."""
    escaped = _INLINE_SPECIAL.sub(r"\\\1", str(text))
    return _INVISIBLE.sub(lambda match: "\\\\" + repr(match.group())[1:-1].lstrip("\\"), escaped)


def _code(text: object) -> str:
    """A code span that holds any text: fenced by more backticks than the longest run inside it, on one line."""
    text = _INVISIBLE.sub(lambda match: repr(match.group())[1:-1], str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: object) -> str:
    """A table cell: like _inline, and leading or trailing spaces shown as ␠ (``pos`` and `` pos`` are different labels,
    and a table cell drops its surrounding spaces)."""
    text = str(text)
    core = text.strip(" ")
    if not core:
        return "␠" * len(text)
    start = text.index(core)
    return "␠" * start + _inline(core) + "␠" * (len(text) - start - len(core))


def _per_class_lines(name: str, entry: dict) -> list[str]:
    """Per-class precision/recall/F1 and the confusion matrix, for metrics that report them."""
    lines: list[str] = []
    per_class = entry.get("per_class")
    if per_class:
        lines += ["", f"Per class ({name}):", "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {_cell(label)} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
            for label, row in per_class.items()
        ]
    matrix = entry.get("confusion_matrix")
    if matrix:
        labels = matrix["labels"]
        lines += ["", "Confusion matrix (rows: reference, columns: prediction):", ""]
        lines += ["| | " + " | ".join(_cell(label) for label in labels) + " |", "|---|" + "---:|" * len(labels)]
        lines += [f"| **{_cell(label)}** | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, matrix["matrix"])]
    return lines


def _analysis_lines(report: dict) -> list[str]:
    """Slices (each metric with its interval on each slice's rows) and the worst examples, from report.json's ``analysis``."""
    analysis = report.get("analysis") or {}
    metrics = report["metrics"]
    lines: list[str] = []
    for table in analysis.get("slices", []):
        names = [name for name in metrics if any(name in row["metrics"] for row in table["slices"])]
        title = f"input length ({_inline(table['unit'])})" if table["column"] == "length" else _inline(table["column"])
        lines += ["", f"## Slices by {title}", "", f"| {_cell(table['column'])} | n | " + " | ".join(
            f"{_cell(name)} [{_confidence_label(report)}]" for name in names) + " |", "|---|---:|" + "---|" * len(names)]
        for row in table["slices"]:
            cells = []
            for name in names:
                entry = {**row["metrics"].get(name, {}), "scale": metrics[name].get("scale")}
                cells.append(f"{_format_value(entry)} {_format_ci(entry)}".strip())
            lines.append(f"| {_cell(row['value'])} | {row['n']} | " + " | ".join(cells) + " |")
        if table.get("not_reported"):
            lines.append(f"| … | {table['not_reported']} smaller slices not shown | " + " | " * len(names))
    rank = analysis.get("rank_by")
    if analysis.get("worst") and analysis.get("ties_ranked_by") == "confidence":
        lines += _surest_mistakes_lines(rank, analysis["worst"])
    elif analysis.get("worst"):
        lines += ["", f"## Worst examples by {_inline(rank)}", "", f"| index | id | {_cell(rank)} | prediction | reference |", "|---:|---|---:|---|---|"]
        for item in analysis["worst"]:
            lines.append(
                f"| {item['index']} | {_cell(item.get('id', ''))} | {item['scores'][rank]} | "
                f"{_cell(json.dumps(item['prediction'], ensure_ascii=False))} | {_cell(json.dumps(item['reference'], ensure_ascii=False))} |"
            )
    elif rank is not None and analysis.get("rank_by_varies") is False:
        lines += ["", f"Every example scored the same {_inline(rank)}, so no example is worse than another by it."]
    return lines


#: characters of an input text shown in report.md's table of worst examples
TABLE_TEXT_CHARS = 120


def _surest_mistakes_lines(rank: str, worst: list[dict]) -> list[str]:
    """The worst examples of a task whose equally scored examples rank by confidence (classification): the surest
    wrong predictions first, each with its text, reference, prediction and the model's confidence in it."""
    lines = ["", f"## Worst examples by {_inline(rank)}, the most confident first", "",
             f"| index | id | text | reference | prediction | confidence | {_cell(rank)} |", "|---:|---|---|---|---|---:|---:|"]
    for item in worst:
        text = " ".join(str(value) for value in (item.get("inputs") or {}).values() if value is not None)
        if len(text) > TABLE_TEXT_CHARS:
            text = text[:TABLE_TEXT_CHARS].rstrip("…") + "…"
        sure = item.get("confidence")
        shown_confidence = f"{sure:.4f} ({_inline(item['confidence_of'])})" if sure is not None else "n/a"
        lines.append(
            f"| {item['index']} | {_cell(item.get('id', ''))} | {_cell(text)} | {_cell(_label(item['reference']))} | "
            f"{_cell(_label(item['prediction']))} | {shown_confidence} | {item['scores'][rank]} |"
        )
    return lines


def _label(value: object) -> str:
    """A label as written; a multi-label set (or anything else that is not a string) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class MarkdownReporter(Reporter):
    name = "markdown"
    description = "report.md: a summary for a terminal or a pull request"
    filename = "report.md"

    def render(self, run: RunResult) -> str:
        report = run.report
        counts = report["counts"]
        model = report.get("model")
        lines = [f"# {_inline(report['pipeline'])}", ""]
        if report.get("description"):
            lines += [_inline(report["description"]), ""]
        lines += [
            f"- task: {_code(report['task'])} (plugin {_code(report['task_plugin'])})",
            f"- data: {_code(report['data']['path'])} ({_inline(report['data']['format'])}, sha256 `{report['data']['sha256'][:12]}`)",
            f"- model: {_code(model['name_or_path'])} on {model['device']} ({model['dtype']}), batch size {model['batch_size_that_worked']}"
            if model else f"- model: none (rule-based: {_inline(report['rule'])})" if report.get("rule")
            else "- model: none (scored the `prediction` field of each record)",
            f"- records: {counts['read']} read, {counts['scored']} scored, {counts['skipped']} skipped, "
            f"{counts['truncated']} truncated, {counts['from_cache']} from cache",
            f"- time: {report['timing']['wall_seconds']} s for the whole run, model loading included "
            f"({report['timing']['records_per_second']} records/s)",
            "",
            f"| metric | value | {_confidence_label(report)} | n |",
            "|---|---:|---|---:|",
        ]
        for name, entry in report["metrics"].items():
            lines.append(f"| {_cell(name)} | {_format_value(entry)} | {_format_ci(entry)} | {entry.get('n', '')} |")
        for name, entry in report["metrics"].items():
            lines += _per_class_lines(name, entry)
        signatures = [(name, entry["signature"]) for name, entry in report["metrics"].items() if entry.get("signature")]
        if signatures:
            lines += ["", "Signatures:", ""] + [f"- {_inline(name)}: {_code(signature)}" for name, signature in signatures]
        lines += _analysis_lines(report)
        if report.get("skipped"):
            lines += ["", f"## Skipped records ({counts['skipped']})", "", "| line | reason |", "|---:|---|"]
            # a record of data given as several files (a folder, a glob) is at a line of one of them
            lines += [f"| {_cell(item['file']) + ':' if item.get('file') else ''}{item['line']} | {_cell(item['reason'])} |"
                      for item in report["skipped"]]
            if counts["skipped"] > len(report["skipped"]):
                lines.append(f"| … | {counts['skipped'] - len(report['skipped'])} more in {_inline(report.get('skipped_file'))} |")
        return "\n".join(lines) + "\n"


@hookimpl
def register_reporters(register):
    register(JsonReporter)
    register(MarkdownReporter)
