"""Comparing runs: a table of systems by metric, paired significance tests, and a leaderboard.

``nlpflow compare RUN RUN ...`` loads each run folder's report.json and
predictions.jsonl, refuses runs that scored different data, prints the
systems' metric values with their intervals, and tests every system against
the first (the baseline) with two paired tests over examples:

- **paired bootstrap resampling**, as ``sacrebleu/significance.py`` does it
  (after Koehn 2004 and Moses' bootstrap-hypothesis-difference-significance):
  draw example indices with replacement, score both systems on each resample,
  centre the absolute differences on their mean and count how often they reach
  the observed absolute difference; ``p = (count + 1) / (resamples + 1)``. The
  percentile interval of the signed differences is reported too.
- **approximate randomization** (Noreen 1989; Riezler & Maxwell 2005): swap
  each example's outputs between the systems with probability 0.5, score the
  two pseudo-systems, and count trials whose absolute difference reaches the
  observed one; ``p = (count + 1) / (trials + 1)``.

One deliberate difference from sacrebleu: a resampled statistic that *equals*
the observed one counts ("reaches", ``>=``, as in Riezler & Maxwell).
sacrebleu counts only strictly greater ones, which gives two identical systems
``p = 1 / (R + 1)``, a "significant" difference of exactly zero.

Metrics are recomputed from per-example statistics: the metric class is taken
from the plugin registry by name, built with the options recorded in
report.json (its signature must match the one recorded there), and its
``example_stats`` is called on the stored predictions and references. One
metric object scores all systems, so label codes and other state are shared.

Another system's outputs on the same data need no run of their own: after the
baseline run folder, ``compare`` takes a predictions file (JSON Lines, each line
``{"id": ..., "prediction": ...}`` or ``{"index": ..., "prediction": ...}``),
joins it to the run's records by id (predictions.jsonl's ``id``, see
``data.id_field``) or by record index, and scores it with the run's metrics.

When the two tests disagree at the 0.05 level (or the bootstrap interval and its
own p-value do), the comparison says so and why, in one sentence.

``nlpflow leaderboard DIR`` finds every run under a folder (each folder with a
report.json) and tabulates systems by metric, grouped by task and data hash,
as Markdown or a self-contained HTML page.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from nlpflow.contract.errors import NlpflowError
from nlpflow.engine.report import bootstrap_indices
from nlpflow.contract.types import ExampleError, Metric, Task

#: the significance level the disagreement between the two tests is judged at
ALPHA = 0.05

#: predictions turned into statistics per call of example_stats
STATS_CHUNK = 1024


class CompareError(NlpflowError):
    """Runs that cannot be compared: missing files, different data, different tasks, a predictions file that does not
    fit the baseline. A mistake in the command's inputs, so it exits as the other input errors do."""

    exit_code = 2


@dataclass
class Run:
    """One run folder: its report and where it lives."""

    directory: Path
    report: dict[str, Any]
    name: str = ""

    @property
    def predictions_path(self) -> Path:
        return self.directory / "predictions.jsonl"

    def iter_predictions(self) -> Iterator[dict[str, Any]]:
        with open(self.predictions_path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise CompareError(f"{self.predictions_path}:{number}: malformed JSON: {error.msg}") from None


def load_run(directory: Path | str) -> Run:
    directory = Path(directory)
    path = directory / "report.json"
    if not path.is_file():
        raise CompareError(f"{directory}: not a run folder (no report.json)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompareError(f"{path}: cannot read report: {error}") from None
    for key in ("pipeline", "task", "metrics", "data"):
        if key not in report:
            raise CompareError(f"{path}: not an nlpflow report (no {key!r})")
    return Run(directory, report)


@dataclass
class PredictionsFile(Run):
    """Another system's predictions joined to a run's records: scored as a run with the run's references and metrics."""

    lines: list[dict[str, Any]] | None = None
    #: what joining the file found worth saying (labels the run does not know)
    notes: list[str] | None = None

    def iter_predictions(self) -> Iterator[dict[str, Any]]:
        return iter(self.lines or [])


def load_predictions_file(path: Path, base: Run, registry) -> PredictionsFile:
    """Join ``path``'s lines (``id`` or ``index``, and ``prediction``) to ``base``'s records; every scored record needs one."""
    base_lines = list(base.iter_predictions())
    by_key: dict[str, dict[Any, dict]] = {"index": {line["index"]: line for line in base_lines}, "id": {}}
    for line in base_lines:
        if "id" in line:
            by_key["id"][_hashable(line["id"])] = line
    task = _task_for(base, registry)
    joined: dict[int, Any] = {}
    join_by = None
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise CompareError(f"{path}: cannot read the predictions file: {error.strerror or error}") from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise CompareError(f"{where}: malformed JSON: {error.msg} at column {error.colno}") from None
            except UnicodeDecodeError:
                raise CompareError(f"{where}: not valid UTF-8") from None
            kind = next((key for key in ("id", "index") if isinstance(record, dict) and key in record), None)
            if kind is None or "prediction" not in record:
                raise CompareError(f"{where}: expected a JSON object with 'prediction' and 'id' or 'index'")
            if join_by is None:
                join_by = kind
                if kind == "id" and not by_key["id"]:
                    raise CompareError(
                        f"{where}: predictions are joined by 'id', but {base.predictions_path} has no ids (give the data an "
                        "'id' column or set data.id_field in the pipeline and run it again, or join by 'index')"
                    )
            elif kind != join_by:
                raise CompareError(f"{where}: this line has {kind!r} but the file's first line is joined by {join_by!r}; use one")
            target = _find_record(by_key[kind], record[kind])
            if target is None:
                raise CompareError(f"{where}: {kind} {record[kind]!r} is not a record of the run {base.directory}"
                                   f"{_key_types_note(by_key[kind], record[kind], kind)}")
            if target["index"] in joined:
                raise CompareError(f"{where}: a second prediction for {kind} {record[kind]!r}")
            try:
                joined[target["index"]] = task.parse_prediction(record["prediction"]).value
            except ExampleError as error:
                raise CompareError(f"{where}: {error}") from None
    scored = [line for line in base_lines if line.get("reference") is not None]
    missing = [line for line in scored if line["index"] not in joined]
    if missing:
        first = missing[0].get(join_by or "index", missing[0]["index"])
        raise CompareError(
            f"{path}: no prediction for {len(missing)} of the {len(scored)} records the run {base.directory} scored "
            f"(the first: {join_by or 'index'} {first!r}); a paired comparison needs every one"
        )
    run_labels = [line["reference"] for line in scored] + [line.get("prediction") for line in base_lines]
    notes = _foreign_label_notes(task, path, [joined[line["index"]] for line in scored], run_labels)
    report = {
        **base.report,
        "pipeline": path.name,
        "model": None,
        # scored below with the run's metrics; nothing was recorded for this file
        "metrics": {name: {**entry, "value": None, "ci": None} for name, entry in base.report["metrics"].items()},
        "counts": {"scored": len(scored)},
    }
    lines = [{"index": line["index"], "prediction": joined[line["index"]], "reference": line["reference"]} for line in scored]
    return PredictionsFile(path, report, lines=lines, notes=notes)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _find_record(records: dict[Any, dict], key: Any) -> dict | None:
    """The run's record with ``key``; a number and its decimal text name the same record (a CSV run reads every id as
    text, a JSON writer often writes it as a number), unless the run has both spellings, when only the exact one does."""
    found = records.get(_hashable(key))
    if found is not None:
        return found
    if isinstance(key, int) and not isinstance(key, bool):
        return records.get(str(key))
    if isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key):
        return records.get(int(key))
    return None


def _key_types_note(records: dict[Any, dict], key: Any, kind: str) -> str:
    """Why an id may not have matched: the run's ids are of another JSON type than this one."""
    run_types = {_json_type_name(value) for value in records}
    if not run_types or _json_type_name(_hashable(key)) in run_types:
        return ""
    example = next(iter(records))
    return f" (this {kind} is {_json_type_name(_hashable(key))}, the run's are {' or '.join(sorted(run_types))}, such as {example!r})"


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "text" if isinstance(value, str) else "a JSON value"


def _foreign_label_notes(task, path: Path, predictions: list[Any], run_labels: list[Any]) -> list[str]:
    """``run``'s label check, for a predictions file of a task that predicts from a fixed label set: refuse a file
    none of whose labels is a label of the run (its references and its own predictions), as it would score 0 while
    looking like a result, and note the labels the run does not have, since every prediction with one scores as wrong."""
    if type(task).output_labels is Task.output_labels:
        return []  # open-ended predictions (text, spans): any value is a fair answer
    known = set(_labels_in(run_labels))
    predicted = Counter(_labels_in(predictions))
    foreign = {label: count for label, count in sorted(predicted.items()) if label not in known}
    if not foreign:
        return []
    if predicted and len(foreign) == len(predicted):
        pairs = {label: (difflib.get_close_matches(label, sorted(known), n=1, cutoff=0) or sorted(known) or ["?"])[0] for label in foreign}
        raise CompareError(
            f"{path}: none of its predicted labels {sorted(foreign)} is a label of the run {sorted(known)}, so every "
            f"prediction would score 0; write the predictions in the run's labels (for instance "
            + ", ".join(f"{label} -> {reference}" for label, reference in pairs.items()) + ")"
        )
    listed = ", ".join(f"{label!r} ({count})" for label, count in foreign.items())
    return [(f"{path.name}: predicted labels that are not labels of the run, so those predictions score as wrong: "
             f"{listed}; the run's labels are {sorted(known)}")]


def _labels_in(values: list[Any]) -> list[str]:
    """Each label in ``values`` (one label, or a list of them: multi-label), as text. A label is text or a number;
    other values (log-likelihood mode's ``{"label", "label_norm"}``) are not compared."""
    return [str(label) for value in values for label in (value if isinstance(value, list) else [value])
            if isinstance(label, (str, int)) and not isinstance(label, bool)]


def _task_for(run: Run, registry):
    """The run's task with its recorded options, to read another system's predictions as the run read its own."""
    name = run.report["task"]
    try:
        cls = registry.get("task", name)
        return cls(cls.Options.model_validate(run.report.get("task_options") or {}))
    except (NlpflowError, ValueError) as error:
        raise CompareError(f"cannot rebuild task {name!r} of the run {run.directory} to read a predictions file: {error}") from None


def explain_disagreement(bootstrap: dict[str, Any], randomization: dict[str, Any], alpha: float = ALPHA) -> str | None:
    """One sentence on why the paired bootstrap and approximate randomization disagree at ``alpha``, or None if they agree."""
    low, high = bootstrap["ci"]["low"], bootstrap["ci"]["high"]
    interval_excludes_zero = low > 0 or high < 0
    bootstrap_significant = bootstrap["p_value"] < alpha
    randomization_significant = randomization["p_value"] < alpha
    if interval_excludes_zero == bootstrap_significant == randomization_significant:
        return None
    interval = f"the bootstrap interval of the difference [{low:+.4g}, {high:+.4g}] {'excludes' if interval_excludes_zero else 'touches'} 0"
    tests = (f"the paired bootstrap gives p = {bootstrap['p_value']:.4f} and approximate randomization "
             f"p = {randomization['p_value']:.4f}")
    return (
        f"The tests disagree at {alpha:g}: {interval}, {tests}; the bootstrap measures how the difference varies when "
        "the examples are resampled, randomization only whether the systems' outputs are exchangeable on the examples "
        "where they differ, so a difference resting on a few such examples is borderline, and more data would settle it."
    )


def _name_runs(runs: list[Run]) -> None:
    """Systems are named by pipeline; runs of the same pipeline by their folder path instead."""
    names = [run.report["pipeline"] for run in runs]
    for run, name in zip(runs, names):
        run.name = name if names.count(name) == 1 else str(run.directory)


# --- the statistical tests ---------------------------------------------------------


def paired_bootstrap(
    score: Callable[[np.ndarray], float], stats_a: np.ndarray, stats_b: np.ndarray, resamples: int = 1000, seed: int = 12345,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap test of ``score(B) - score(A)`` over examples, sacrebleu-style (see the module doc)."""
    n = len(stats_a)
    observed = score(stats_b) - score(stats_a)
    differences = np.empty(resamples)
    for position, rows in enumerate(bootstrap_indices(n, resamples, seed)):
        differences[position] = score(stats_b[rows]) - score(stats_a[rows])
    differences = differences[np.isfinite(differences)]
    absolute = np.abs(differences)
    centred = absolute - absolute.mean()
    count = int(np.sum(centred >= abs(observed)))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    return {
        "difference": float(observed),
        "p_value": (count + 1) / (len(differences) + 1),
        "ci": {"low": float(low), "high": float(high), "confidence": confidence},
        "resamples": resamples,
        "seed": seed,
    }


def approximate_randomization(
    score: Callable[[np.ndarray], float], stats_a: np.ndarray, stats_b: np.ndarray, trials: int = 10000, seed: int = 12345,
) -> dict[str, Any]:
    """Paired approximate randomization test: swap each example's outputs with probability 0.5, ``trials`` times."""
    n = len(stats_a)
    observed = abs(score(stats_b) - score(stats_a))
    rng = np.random.default_rng(seed)
    count = 0
    done = 0
    for _ in range(trials):
        swap = rng.integers(0, 2, size=n).astype(bool)[:, None]
        difference = abs(score(np.where(swap, stats_a, stats_b)) - score(np.where(swap, stats_b, stats_a)))
        if math.isfinite(difference):
            done += 1
            # a small tolerance so float noise in an equal difference does not decide the count
            count += difference >= observed - 1e-12
    return {"p_value": (count + 1) / (done + 1), "trials": trials, "seed": seed}


# --- comparing runs ---------------------------------------------------------------------


def build_metric(registry, run: Run, name: str) -> tuple[Metric | None, str | None]:
    """A metric object equal to the one that scored ``run`` (same signature), or None and the reason."""
    try:
        cls = registry.get("metric", name)
    except NlpflowError as error:
        return None, str(error)
    entry = run.report["metrics"][name]
    wanted = entry.get("signature")
    try:
        metric = cls(cls.Options.model_validate(entry.get("options") or {}))
    except ValueError as error:
        return None, f"cannot rebuild metric {name!r} from the options in report.json: {error}"
    if wanted is not None and metric.signature() != wanted:
        return None, f"metric {name!r} now has signature {metric.signature()!r}, the run used {wanted!r} (another library version?)"
    return metric, None


def _scored(run: Run) -> tuple[list[int], list[Any], list[Any]]:
    indices, predictions, references = [], [], []
    for line in run.iter_predictions():
        if line.get("reference") is None:
            continue
        indices.append(line["index"])
        predictions.append(line.get("prediction"))
        references.append(line["reference"])
    return indices, predictions, references


def _stats(metric: Metric, predictions: list[Any], references: list[Any]) -> np.ndarray:
    parts = [
        np.asarray(metric.example_stats(predictions[start:start + STATS_CHUNK], references[start:start + STATS_CHUNK]), dtype=float)
        for start in range(0, len(predictions), STATS_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 1))


def check_comparable(runs: list[Run], scored: list[tuple[list[int], list[Any], list[Any]]]) -> list[str]:
    """Refuse runs of different tasks, on different data, or scored on different records; return notes.

    Runs on the same data file (equal sha256) must have scored the same record
    indices. Prediction-only runs (no model) read each system's outputs from
    its own data file, so their files differ by construction: they are
    accepted when they scored the same indices with equal references.
    """
    notes = []
    first, (base_indices, _, base_references) = runs[0], scored[0]
    for run, (indices, _, references) in zip(runs[1:], scored[1:]):
        if run.report["task"] != first.report["task"]:
            raise CompareError(
                f"runs are of different tasks: {first.directory} is {first.report['task']!r}, {run.directory} is {run.report['task']!r}"
            )
        a, b = first.report["data"].get("sha256"), run.report["data"].get("sha256")
        prediction_only = first.report.get("model") is None and run.report.get("model") is None
        if a != b and not prediction_only:
            raise CompareError(
                f"runs scored different data: {first.directory} read {first.report['data'].get('path')} (sha256 {str(a)[:12]}), "
                f"{run.directory} read {run.report['data'].get('path')} (sha256 {str(b)[:12]}); paired comparisons need the same examples"
            )
        if indices != base_indices:
            only_a = len(set(base_indices) - set(indices))
            only_b = len(set(indices) - set(base_indices))
            raise CompareError(
                f"runs scored different records: {first.directory} scored {len(base_indices)}, {run.directory} scored "
                f"{len(indices)} ({only_a} only in the first, {only_b} only in the second; check data.limit and skipped records)"
            )
        if a != b:
            mismatch = next((i for i, (x, y) in enumerate(zip(base_references, references)) if x != y), None)
            if mismatch is not None:
                raise CompareError(
                    f"runs scored different data: {first.directory} ({first.report['data'].get('path')}) and {run.directory} "
                    f"({run.report['data'].get('path')}) have different references for record {base_indices[mismatch]}"
                )
            notes.append(f"{run.name}: prediction-only runs on different files ({first.report['data'].get('path')}, "
                         f"{run.report['data'].get('path')}); their references match on all {len(indices)} scored records")
    if not base_indices:
        raise CompareError(f"{first.directory}: no scored records (no references) to compare")
    return notes


def compare_runs(
    directories: Iterable[Path | str], registry=None, resamples: int = 1000, seed: int = 12345, trials: int | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Load runs, check they are comparable, and test each system against the first on every shared metric."""
    from nlpflow.registry import default_registry

    registry = registry or default_registry()
    directories = [Path(d) for d in directories]
    if directories and directories[0].is_file():
        raise CompareError(f"{directories[0]}: the first argument is the baseline and must be a run folder (its data and metrics score the predictions files)")
    runs: list[Run] = []
    for directory in directories:
        runs.append(load_predictions_file(directory, runs[0], registry) if directory.is_file() else load_run(directory))
    if len(runs) < 2:
        raise CompareError("compare needs at least two run folders")
    _name_runs(runs)
    metric_names = [name for name in runs[0].report["metrics"] if all(name in run.report["metrics"] for run in runs[1:])]
    table = {
        run.name: {
            "directory": str(run.directory),
            "model": (run.report.get("model") or {}).get("name_or_path"),
            "n": run.report.get("counts", {}).get("scored"),
            "metrics": {name: _brief(entry) for name, entry in run.report["metrics"].items()},
        }
        for run in runs
    }
    result: dict[str, Any] = {"task": runs[0].report["task"], "data": runs[0].report["data"], "baseline": runs[0].name,
                              "systems": table, "metrics": metric_names, "comparisons": [], "notes": []}

    scored = [_scored(run) for run in runs]
    result["notes"] += check_comparable(runs, scored)
    result["notes"] += [note for run in runs if isinstance(run, PredictionsFile) for note in run.notes or []]
    base_indices = scored[0][0]

    for name in metric_names:
        metric, problem = build_metric(registry, runs[0], name)
        if metric is None:
            result["notes"].append(f"{name}: no significance test: {problem}")
            continue
        wanted = runs[0].report["metrics"][name].get("signature")
        other = [run for run in runs[1:] if run.report["metrics"][name].get("signature") != wanted]
        if other:
            result["notes"].append(f"{name}: no significance test: {other[0].name} used a different signature "
                                   f"({other[0].report['metrics'][name].get('signature')!r} vs {wanted!r})")
            continue
        stats = [_stats(metric, predictions, references) for _, predictions, references in scored]
        for run, system_stats in zip(runs, stats):
            reported = run.report["metrics"][name].get("value")
            recomputed = metric.score(system_stats)
            if isinstance(run, PredictionsFile):
                table[run.name]["metrics"][name]["value"] = float(recomputed) if math.isfinite(recomputed) else None
            elif reported is not None and not math.isclose(recomputed, reported, rel_tol=1e-6, abs_tol=1e-6):
                result["notes"].append(f"{name}: recomputed {recomputed:.6g} for {run.name}, report.json says {reported:.6g}")
        for run, system_stats in zip(runs[1:], stats[1:]):
            bootstrap = paired_bootstrap(metric.score, stats[0], system_stats, resamples, seed, confidence)
            randomization = approximate_randomization(metric.score, stats[0], system_stats, trials or 10 * resamples, seed)
            result["comparisons"].append({
                "metric": name,
                "baseline": runs[0].name,
                "system": run.name,
                "higher_is_better": metric.higher_is_better,
                "scale": metric.scale,
                "n": len(base_indices),
                "difference": bootstrap["difference"],
                "bootstrap": bootstrap,
                "approximate_randomization": randomization,
                "disagreement": explain_disagreement(bootstrap, randomization),
            })
    return result


def _brief(entry: dict) -> dict:
    return {key: entry.get(key) for key in ("value", "ci", "scale", "higher_is_better", "signature", "n")}


# --- formatting ---------------------------------------------------------------------------


def _fmt(value: float | None, scale: str | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if scale == "0-100" else f"{value:.4f}"


def _fmt_entry(entry: dict | None) -> str:
    if not entry:
        return "—"
    text = _fmt(entry.get("value"), entry.get("scale"))
    ci = entry.get("ci")
    if ci:
        text += f" [{_fmt(ci['low'], entry.get('scale'))}, {_fmt(ci['high'], entry.get('scale'))}]"
    return text


def _cell(text: object) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _difference_confidence(result: dict[str, Any]) -> str:
    for comparison in result["comparisons"]:
        if comparison.get("bootstrap", {}).get("ci"):
            return f"{comparison['bootstrap']['ci']['confidence'] * 100:g}%"
    return ""


def comparison_markdown(result: dict[str, Any]) -> str:
    metrics = result["metrics"] or sorted({m for s in result["systems"].values() for m in s["metrics"]})
    lines = [
        f"Task `{result['task']}`, data `{result['data'].get('path')}` (sha256 `{str(result['data'].get('sha256'))[:12]}`); "
        "values with the bootstrap intervals recorded in each run.",
        "",
        "| system | n | " + " | ".join(_cell(m) for m in metrics) + " |",
        "|---|---:|" + "---|" * len(metrics),
    ]
    for name, system in result["systems"].items():
        lines.append(f"| {_cell(name)} | {system['n']} | " + " | ".join(_fmt_entry(system["metrics"].get(m)) for m in metrics) + " |")
    if result["comparisons"]:
        lines += [
            "",
            f"Paired tests against `{_cell(result['baseline'])}` (difference = system - baseline):",
            "",
            f"| system | metric | difference | {_difference_confidence(result)} bootstrap CI | p (paired bootstrap) | p (approx. randomization) |",
            "|---|---|---:|---|---:|---:|",
        ]
        for c in result["comparisons"]:
            ci = c["bootstrap"]["ci"]
            better = (c["difference"] > 0) == c["higher_is_better"] and c["difference"] != 0
            mark = " (better)" if better and c["bootstrap"]["p_value"] < 0.05 else " (worse)" if not better and c["difference"] != 0 and c["bootstrap"]["p_value"] < 0.05 else ""
            lines.append(
                f"| {_cell(c['system'])} | {_cell(c['metric'])} | {c['difference']:+.4f}{mark} | [{ci['low']:+.4f}, {ci['high']:+.4f}] | "
                f"{c['bootstrap']['p_value']:.4f} | {c['approximate_randomization']['p_value']:.4f} |"
            )
        for c in result["comparisons"]:
            if c.get("disagreement"):
                lines += ["", f"{_cell(c['system'])}, {_cell(c['metric'])}: {c['disagreement']}"]
        first = result["comparisons"][0]
        lines += ["", f"Paired bootstrap: {first['bootstrap']['resamples']} resamples; approximate randomization: "
                      f"{first['approximate_randomization']['trials']} trials; seed {first['bootstrap']['seed']}."]
    for note in result["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


# --- leaderboard -------------------------------------------------------------------------------


def find_runs(root: Path | str) -> list[Run]:
    """Every run folder (one holding report.json) under ``root``, skipping hidden folders and unreadable reports."""
    root = Path(root)
    if not root.is_dir():
        raise CompareError(f"{root}: not a folder")
    runs = []
    for path in sorted(root.rglob("report.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
            continue
        try:
            runs.append(load_run(path.parent))
        except CompareError:
            continue
    return runs


def leaderboard(root: Path | str) -> list[dict[str, Any]]:
    """Runs under ``root`` grouped by (task, data sha256), each group's systems sorted by its first metric."""
    runs = find_runs(root)
    root = Path(root)
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.report["task"], run.report["data"].get("sha256", "")), []).append(run)
    result = []
    for (task, sha), members in sorted(groups.items()):
        metrics: list[str] = []
        for run in members:
            metrics += [m for m in run.report["metrics"] if m not in metrics]
        first = metrics[0] if metrics else None

        def key(run: Run):
            entry = run.report["metrics"].get(first) or {}
            value = entry.get("value")
            if value is None:
                return (1, 0.0)
            return (0, -value if entry.get("higher_is_better", True) else value)

        rows = []
        for run in sorted(members, key=key):
            model = run.report.get("model")
            rows.append({
                "system": run.report["pipeline"],
                "model": model.get("name_or_path") if model else rule_or_given(run.report),
                "run": str(run.directory.relative_to(root)) if run.directory != root else ".",
                "n": run.report.get("counts", {}).get("scored"),
                "finished": run.report.get("timing", {}).get("finished", ""),
                "cells": [_fmt_entry(run.report["metrics"].get(m)) for m in metrics],
            })
        data = members[0].report["data"]
        result.append({"task": task, "sha256": sha, "data": data.get("path", ""), "metrics": metrics,
                       "sorted_by": first, "rows": rows})
    return result


def leaderboard_markdown(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "No runs found.\n"
    lines = ["# Leaderboard", ""]
    for group in groups:
        lines += [
            f"## {_cell(group['task'])} · `{_cell(Path(group['data']).name)}` (sha256 `{group['sha256'][:12]}`)",
            "",
            f"Sorted by {_cell(group['sorted_by'])}; values with the bootstrap intervals recorded in each run.",
            "",
            "| # | system | model | n | " + " | ".join(_cell(m) for m in group["metrics"]) + " | run |",
            "|---:|---|---|---:|" + "---|" * len(group["metrics"]) + "---|",
        ]
        for rank, row in enumerate(group["rows"], start=1):
            lines.append(f"| {rank} | {_cell(row['system'])} | {_cell(row['model'])} | {row['n']} | "
                         + " | ".join(row["cells"]) + f" | {_cell(row['run'])} |")
        lines.append("")
    return "\n".join(lines)


LEADERBOARD_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nlpflow leaderboard</title>
<style>
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937}
main{max-width:1180px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left}
th{background:#f9fafb}td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#6b7280;font-size:12px}
tr:first-child+tr td{font-weight:600}
</style>
</head>
<body>
<main>
<h1>Leaderboard</h1>
{% if not groups %}<p>No runs found.</p>{% endif %}
{% for g in groups %}
<h2>{{ g.task }} · <code>{{ g.data }}</code> <span class="muted">sha256 {{ g.sha256[:12] }}</span></h2>
<p class="muted">Sorted by {{ g.sorted_by }}; values with the bootstrap intervals recorded in each run.</p>
<table>
<tr><th>#</th><th>system</th><th>model</th><th>n</th>{% for m in g.metrics %}<th>{{ m }}</th>{% endfor %}<th>run</th><th>finished</th></tr>
{% for row in g.rows %}
<tr><td class="num">{{ loop.index }}</td><td>{{ row.system }}</td><td><code>{{ row.model }}</code></td><td class="num">{{ row.n }}</td>
{% for cell in row.cells %}<td class="num">{{ cell }}</td>{% endfor %}<td><code>{{ row.run }}</code></td><td class="muted">{{ row.finished }}</td></tr>
{% endfor %}
</table>
{% endfor %}
</main>
</body>
</html>
"""


def leaderboard_html(groups: list[dict[str, Any]]) -> str:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(LEADERBOARD_TEMPLATE).render(groups=groups)


def rule_or_given(report: dict) -> str:
    """What made a model-less run's predictions: its rule (``rule-based: lead-3``), or the data's own."""
    return f"(rule-based: {report['rule']})" if report.get("rule") else "(predictions given)"
