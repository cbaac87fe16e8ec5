"""Bootstrap intervals, paired significance tests, `nlpflow compare` and `nlpflow leaderboard`."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from nlpflow.api import run
from nlpflow.cli import main
from nlpflow.compare import CompareError, approximate_randomization, compare_runs, leaderboard, leaderboard_html, paired_bootstrap
from nlpflow.engine.report import bootstrap_indices, bootstrap_interval
from nlpflow.engine.stats import collected
from nlpflow.plugins.classification import Accuracy, MacroF1

LABELS = ("negative", "positive")


def correctness(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return rng.random(n) < rate


def accuracy_stats(metric: Accuracy, correct: np.ndarray, references: list[str]) -> np.ndarray:
    predictions = [r if ok else LABELS[1 - LABELS.index(r)] for r, ok in zip(references, correct)]
    return metric.example_stats(predictions, references)


def references(rng: np.random.Generator, n: int) -> list[str]:
    return [LABELS[i] for i in rng.integers(0, 2, size=n)]


# --- bootstrap intervals ----------------------------------------------------------------


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        metric = Accuracy()
        refs = references(rng, n)
        stats = accuracy_stats(metric, correctness(rng, n, 0.7), refs)
        value = metric.score(stats)
        ci = bootstrap_interval(metric, collected(True, stats), resamples=400, seed=1, confidence=0.95)
        assert ci["low"] <= value <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 5  # ~ 1/sqrt(n): 10x the data, ~3x narrower


# --- paired tests ---------------------------------------------------------------------------


def planted(seed: int, n: int = 200, rate_a: float = 0.5, rate_b: float = 0.8):
    rng = np.random.default_rng(seed)
    metric = Accuracy()
    refs = references(rng, n)
    return metric, accuracy_stats(metric, correctness(rng, n, rate_a), refs), accuracy_stats(metric, correctness(rng, n, rate_b), refs)


def test_paired_tests_find_planted_difference():
    metric, a, b = planted(seed=3)
    bootstrap = paired_bootstrap(metric.score, a, b, resamples=1000, seed=7)
    randomization = approximate_randomization(metric.score, a, b, trials=2000, seed=7)
    assert bootstrap["difference"] == pytest.approx(metric.score(b) - metric.score(a))
    assert bootstrap["difference"] > 0.2
    assert bootstrap["p_value"] < 0.05
    assert randomization["p_value"] < 0.05
    assert 0 < bootstrap["ci"]["low"] <= bootstrap["difference"] <= bootstrap["ci"]["high"]


def test_paired_tests_on_identical_systems():
    metric, a, _ = planted(seed=4)
    assert paired_bootstrap(metric.score, a, a.copy(), resamples=500, seed=1)["p_value"] == 1.0
    assert approximate_randomization(metric.score, a, a.copy(), trials=500, seed=1)["p_value"] == 1.0


def test_paired_tests_false_positive_rate_near_alpha():
    bootstrap_hits = randomization_hits = 0
    seeds = range(40)
    for seed in seeds:
        metric, a, b = planted(seed=100 + seed, rate_a=0.6, rate_b=0.6)
        bootstrap_hits += paired_bootstrap(metric.score, a, b, resamples=300, seed=seed)["p_value"] < 0.05
        randomization_hits += approximate_randomization(metric.score, a, b, trials=300, seed=seed)["p_value"] < 0.05
    assert bootstrap_hits / len(seeds) <= 0.15
    assert randomization_hits / len(seeds) <= 0.15


def test_paired_bootstrap_p_value_matches_sacrebleu():
    """On continuous scores (no ties) the p-value is exactly sacrebleu's formula on the same resamples."""
    from sacrebleu.significance import _compute_p_value

    rng = np.random.default_rng(11)
    a = rng.random((150, 1))
    b = np.clip(a + rng.normal(0.02, 0.2, size=a.shape), 0, 1)

    def score(stats):
        return float(stats.mean())

    ours = paired_bootstrap(score, a, b, resamples=500, seed=5)
    diffs = np.array([score(b[rows]) - score(a[rows]) for rows in bootstrap_indices(len(a), 500, 5)])
    sample = np.abs(diffs)
    expected = _compute_p_value(sample - sample.mean(), abs(score(b) - score(a)))
    assert ours["p_value"] == pytest.approx(expected)


def test_approximate_randomization_swaps_rows_between_systems():
    """Macro-F1 is not a mean of rows: AR must rescore shuffled systems, and one metric object codes both."""
    rng = np.random.default_rng(2)
    metric = MacroF1()
    refs = references(rng, 120)
    a = accuracy_stats(metric, correctness(rng, 120, 0.55), refs)
    b = accuracy_stats(metric, correctness(rng, 120, 0.9), refs)
    assert approximate_randomization(metric.score, a, b, trials=500, seed=0)["p_value"] < 0.05


# --- runs: nlpflow compare ------------------------------------------------------------------


PIPELINE = """
pipelines:
{entries}
"""
ENTRY = """
  {name}:
    task: sentiment
    data: {{path: {data}{limit}}}
    metrics: [accuracy, macro_f1]
    report: {{formats: [json], bootstrap: {{resamples: 100}}}}
"""


def make_runs(tmp_path: Path, write_pipelines, systems: dict[str, tuple[float, int]], n: int = 200, limit: dict | None = None,
              refs_seed: int = 0) -> dict[str, Path]:
    """One prediction-only run per system: (accuracy rate, seed) -> run folder."""
    rng = np.random.default_rng(refs_seed)
    refs = references(rng, n)
    entries = []
    for name, (rate, seed) in systems.items():
        correct = correctness(np.random.default_rng(seed), n, rate)
        records = [{"text": f"example {i}", "label": r, "prediction": r if ok else LABELS[1 - LABELS.index(r)]}
                   for i, (r, ok) in enumerate(zip(refs, correct))]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records), encoding="utf-8")
        extra = f", limit: {limit[name]}" if limit and name in limit else ""
        entries.append(ENTRY.format(name=name, data=f"{name}.jsonl", limit=extra))
    config = write_pipelines(PIPELINE.format(entries="".join(entries)), name=f"pipelines-{refs_seed}.yaml")
    results = run(list(systems), config=config, output=tmp_path / "out", use_cache=False)
    return {result.report["pipeline"]: result.directory for result in results}


def test_compare_runs_finds_planted_difference(tmp_path, write_pipelines):
    runs = make_runs(tmp_path, write_pipelines, {"base": (0.5, 1), "better": (0.8, 2), "same": (0.5, 3)})
    result = compare_runs([runs["base"], runs["better"], runs["same"]], resamples=500, trials=1000)
    assert result["baseline"] == "base"
    by = {(c["system"], c["metric"]): c for c in result["comparisons"]}
    assert set(by) == {("better", "accuracy"), ("better", "macro_f1"), ("same", "accuracy"), ("same", "macro_f1")}
    better = by[("better", "accuracy")]
    assert better["bootstrap"]["p_value"] < 0.05 and better["approximate_randomization"]["p_value"] < 0.05
    base_value = json.loads((runs["base"] / "report.json").read_text())["metrics"]["accuracy"]["value"]
    better_value = json.loads((runs["better"] / "report.json").read_text())["metrics"]["accuracy"]["value"]
    assert better["difference"] == pytest.approx(better_value - base_value)
    assert by[("better", "macro_f1")]["bootstrap"]["p_value"] < 0.05
    # prediction-only runs read different files; accepted because the references match, and said so
    assert any("references match" in note for note in result["notes"])
    assert not any("recomputed" in note for note in result["notes"])


def test_compare_cli_markdown_and_json(tmp_path, write_pipelines, capsys):
    runs = make_runs(tmp_path, write_pipelines, {"base": (0.5, 1), "better": (0.8, 2)})
    assert main(["compare", str(runs["base"]), str(runs["better"]), "--resamples", "200", "--trials", "300", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "| system | n | accuracy | macro_f1 |" in out
    assert "| better | accuracy |" in out and "p (paired bootstrap)" in out
    assert main(["compare", str(runs["base"]), str(runs["better"]), "--json", "--resamples", "200", "--trials", "300"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["comparisons"][0]["bootstrap"]["resamples"] == 200
    assert data["comparisons"][0]["approximate_randomization"]["trials"] == 300


def test_compare_refuses_different_data(tmp_path, write_pipelines, capsys):
    first = make_runs(tmp_path / "a", write_pipelines_in(tmp_path / "a"), {"one": (0.6, 1)}, refs_seed=0)["one"]
    second = make_runs(tmp_path / "b", write_pipelines_in(tmp_path / "b"), {"two": (0.6, 2)}, refs_seed=1)["two"]
    with pytest.raises(CompareError, match="different references"):
        compare_runs([first, second], resamples=10, trials=10)
    # runs with a model must have read the same file
    for directory in (first, second):
        report = json.loads((directory / "report.json").read_text())
        report["model"] = {"name_or_path": "some/model"}
        (directory / "report.json").write_text(json.dumps(report))
    with pytest.raises(CompareError, match="different data.*sha256"):
        compare_runs([first, second], resamples=10, trials=10)
    assert main(["compare", str(first), str(second)]) == CompareError.exit_code
    assert "runs scored different data" in capsys.readouterr().err


def test_compare_refuses_different_records(tmp_path, write_pipelines):
    runs = make_runs(tmp_path, write_pipelines, {"full": (0.6, 1), "part": (0.6, 2)}, limit={"part": 150})
    with pytest.raises(CompareError, match="different records.*200.*150"):
        compare_runs([runs["full"], runs["part"]], resamples=10, trials=10)


def test_compare_refuses_a_folder_without_report(tmp_path):
    with pytest.raises(CompareError, match="no report.json"):
        compare_runs([tmp_path, tmp_path], resamples=10, trials=10)


def write_pipelines_in(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)

    def write(text: str, name: str = "pipelines.yaml") -> Path:
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


# --- leaderboard ------------------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_leaderboard_groups_and_renders(tmp_path, write_pipelines, capsys):
    runs = make_runs(tmp_path, write_pipelines, {"base": (0.5, 1), "better": (0.8, 2)})
    other = make_runs(tmp_path / "x", write_pipelines_in(tmp_path / "x"), {"elsewhere": (0.7, 5)}, n=50, refs_seed=9)
    # a model name with markup must come out escaped
    report_path = runs["better"] / "report.json"
    report = json.loads(report_path.read_text())
    report["model"] = {"name_or_path": "<script>alert(1)</script>"}
    report_path.write_text(json.dumps(report))

    groups = leaderboard(tmp_path)
    # prediction-only runs each read their own file, so each is its own group here
    assert sum(len(g["rows"]) for g in groups) == 3
    assert all(g["task"] == "sentiment" for g in groups)

    assert main(["leaderboard", str(tmp_path)]) == 0
    markdown = capsys.readouterr().out
    assert "# Leaderboard" in markdown and "| 1 | better |" in markdown and "elsewhere" in markdown

    target = tmp_path / "board.html"
    assert main(["leaderboard", str(tmp_path), "--format", "html", "-o", str(target)]) == 0
    html = target.read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html
    parser = _Collect()
    parser.feed(html)
    assert not any(name in attrs for _, attrs in parser.tags for name in ("src", "href"))
    assert "<script>alert(1)</script>" in "".join(parser.text)
    assert other["elsewhere"].exists()


def test_leaderboard_sorts_systems_of_one_group(tmp_path):
    def fake(name: str, accuracy: float):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({
            "pipeline": name, "task": "sentiment", "data": {"path": "d.jsonl", "sha256": "abc"}, "model": {"name_or_path": f"m/{name}"},
            "counts": {"scored": 10},
            "metrics": {"accuracy": {"value": accuracy, "ci": None, "scale": "0-1", "higher_is_better": True}},
        }))

    fake("low", 0.5)
    fake("high", 0.9)
    fake("mid", 0.7)
    [group] = leaderboard(tmp_path)
    assert [row["system"] for row in group["rows"]] == ["high", "mid", "low"]
    assert "<table>" in leaderboard_html([group])


def test_compare_two_models_on_the_sentiment_sample(tmp_path, write_pipelines, bert_classifier, capsys):
    """The issue's acceptance check: two runs of the sentiment sample with different models, compared by the CLI."""
    reviews = Path(__file__).resolve().parent.parent / "examples" / "data" / "reviews.jsonl"
    config = write_pipelines(
        f"""
pipelines:
  minilm-zero-shot:
    task: sentiment
    data: {{path: {reviews}}}
    fields: {{text: review, label: stars}}
    model: {{name_or_path: sentence-transformers/all-MiniLM-L6-v2}}
    report: {{formats: [json], bootstrap: {{resamples: 200}}}}
  tiny-bert:
    task: sentiment
    data: {{path: {reviews}}}
    fields: {{text: review, label: stars}}
    options: {{labels: [negative, positive]}}
    model: {{name_or_path: {bert_classifier}}}
    report: {{formats: [json], bootstrap: {{resamples: 200}}}}
"""
    )
    zero_shot, tiny = run(["minilm-zero-shot", "tiny-bert"], config, tmp_path / "out", use_cache=False)
    assert zero_shot.report["data"]["sha256"] == tiny.report["data"]["sha256"]
    assert main(["compare", str(zero_shot.directory), str(tiny.directory), "--json", "--resamples", "300", "--trials", "300"]) == 0
    result = json.loads(capsys.readouterr().out)
    by = {(c["system"], c["metric"]): c for c in result["comparisons"]}
    accuracy = by[("tiny-bert", "accuracy")]
    assert accuracy["difference"] == pytest.approx(tiny.report["metrics"]["accuracy"]["value"] - zero_shot.report["metrics"]["accuracy"]["value"])
    assert 0 < accuracy["bootstrap"]["p_value"] <= 1 and 0 < accuracy["approximate_randomization"]["p_value"] <= 1
    low, high = accuracy["bootstrap"]["ci"]["low"], accuracy["bootstrap"]["ci"]["high"]
    assert low <= accuracy["difference"] <= high


# --- another system's predictions file --------------------------------------------------------


def _baseline_with_ids(tmp_path: Path, n: int = 20) -> tuple[Path, list[dict]]:
    """A prediction-only run whose records have ids: correct on the first n/2 records only."""
    records = [{"id": f"r{i}", "text": f"review {i}", "label": LABELS[i % 2], "prediction": LABELS[i % 2] if i < n // 2 else LABELS[1 - i % 2]}
               for i in range(n)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text("pipelines:\n  base:\n    task: sentiment\n    data: {path: data.jsonl}\n    metrics: [accuracy]\n"
                      "    report: {formats: [json]}\n", encoding="utf-8")
    [result] = run(["base"], config, tmp_path / "out", use_cache=False)
    return result.directory, records


def test_compare_scores_a_predictions_file_joined_by_id(tmp_path, capsys):
    directory, records = _baseline_with_ids(tmp_path)
    other = tmp_path / "other.jsonl"
    # every record right; the lines in another order, joined by id, not by position
    other.write_text("".join(json.dumps({"id": r["id"], "prediction": r["label"]}) + "\n" for r in reversed(records)), encoding="utf-8")
    result = compare_runs([directory, other], resamples=200, trials=2000)
    assert result["systems"]["other.jsonl"]["metrics"]["accuracy"]["value"] == 1.0
    [comparison] = result["comparisons"]
    assert comparison["difference"] == pytest.approx(0.5)
    assert comparison["approximate_randomization"]["p_value"] < 0.01
    assert main(["compare", str(directory), str(other)]) == 0
    assert "| other.jsonl | 20 | 1.0000 |" in capsys.readouterr().out


def test_compare_joins_by_index_and_refuses_incomplete_or_unknown_predictions(tmp_path, capsys):
    directory, records = _baseline_with_ids(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"index": i, "prediction": r["label"]}) + "\n" for i, r in enumerate(records)), encoding="utf-8")
    assert compare_runs([directory, other], resamples=50, trials=50)["systems"]["other.jsonl"]["metrics"]["accuracy"]["value"] == 1.0
    other.write_text(json.dumps({"id": "r0", "prediction": "positive"}) + "\n" + json.dumps({"id": "nope", "prediction": "positive"}) + "\n")
    with pytest.raises(CompareError, match=r"other\.jsonl:2: id 'nope' is not a record of the run"):
        compare_runs([directory, other])
    other.write_text(json.dumps({"id": "r0", "prediction": "positive"}) + "\n")
    with pytest.raises(CompareError, match=r"no prediction for 19 of the 20 records the run .* scored \(the first: id 'r1'\)"):
        compare_runs([directory, other])
    assert main(["compare", str(other), str(directory)]) != 0
    assert "the first argument is the baseline and must be a run folder" in capsys.readouterr().err


def test_disagreeing_tests_are_explained_in_one_sentence():
    from nlpflow.compare import explain_disagreement

    # B is right on 4 more of 20 examples and never worse: every resample's difference is >= 0 and the interval
    # excludes 0, but only 4 examples differ, so randomization's p is 2/16 (exactly: 2 of 16 swap patterns)
    metric = Accuracy()
    refs = [LABELS[i % 2] for i in range(20)]
    a = accuracy_stats(metric, np.array([i >= 4 for i in range(20)]), refs)
    b = accuracy_stats(metric, np.ones(20, dtype=bool), refs)
    bootstrap = paired_bootstrap(metric.score, a, b, resamples=1000, seed=1)
    randomization = approximate_randomization(metric.score, a, b, trials=4000, seed=1)
    assert bootstrap["ci"]["low"] > 0 and randomization["p_value"] == pytest.approx(0.125, abs=0.02)
    sentence = explain_disagreement(bootstrap, randomization)
    assert sentence.startswith(f"The tests disagree at 0.05: the bootstrap interval of the difference [{bootstrap['ci']['low']:+.4g}, ")
    assert "excludes 0" in sentence and f"approximate randomization p = {randomization['p_value']:.4f}" in sentence
    assert sentence.endswith(".") and ". " not in sentence  # one sentence
    # the planted large difference: both tests agree, nothing to explain
    metric, a, b = planted(3)
    assert explain_disagreement(paired_bootstrap(metric.score, a, b, 300, 1), approximate_randomization(metric.score, a, b, 1000, 1)) is None
