"""Metrics are stateless: stats computed in chunks, in any order, by separate metric objects concatenate into the same report."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

from nlpflow.engine.report import metric_entry
from nlpflow.engine.stats import collected

KEYWORDS_PLUGIN = Path(__file__).parent.parent / "examples" / "nlpflow-keywords" / "nlpflow_keywords" / "__init__.py"

LABELS = ["positive", "negative", "neutral", "mixed", "é"]
WORDS = "the cat sat on a mat while dogs ran past the old red barn near water".split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def _data(task: str, n: int = 60) -> tuple[list, list]:
    rng = random.Random(7)
    if task in ("sentiment", "text-classification"):
        return [rng.choice(LABELS) for _ in range(n)], [rng.choice(LABELS) for _ in range(n)]
    if task == "multi-label":
        pick = lambda: sorted(rng.sample(LABELS, rng.randint(0, 3)))  # noqa: E731
        return [pick() for _ in range(n)], [pick() or ["mixed"] for _ in range(n)]
    if task == "question-answering":
        return [_sentence(rng) for _ in range(n)], [[_sentence(rng), _sentence(rng)] if i % 7 else [] for i in range(n)]
    if task == "language-modeling":
        from nlpflow.plugins.language_modeling import document_counts

        documents = [_sentence(rng) for _ in range(n)]
        return ([{"loglikelihood": -rng.uniform(1.0, 60.0), "tokens": rng.randint(1, 20)} for _ in documents],
                [document_counts(document) for document in documents])
    if task == "keywords":
        return [rng.sample(WORDS, 3) for _ in range(n)], [rng.sample(WORDS, 2) for _ in range(n)]
    return [_sentence(rng) for _ in range(n)], [_sentence(rng) for _ in range(n)]


def _keyword_metric():
    spec = importlib.util.spec_from_file_location("nlpflow_keywords_for_merge_test", KEYWORDS_PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KeywordF1


def _cases(registry):
    for name in registry.names("metric"):
        cls = registry.get("metric", name)
        tasks = cls.tasks or ("translation",)
        yield pytest.param(cls, tasks[0], id=name)
        if name in ("accuracy", "macro_f1"):
            yield pytest.param(cls, "multi-label", id=f"{name}-multi-label")
    yield pytest.param(_keyword_metric(), "keywords", id="keyword_f1")


def pytest_generate_tests(metafunc):
    if "metric_class" in metafunc.fixturenames:
        from nlpflow.registry import default_registry

        metafunc.parametrize("metric_class,task", list(_cases(default_registry())))


def test_stats_from_shuffled_chunks_and_fresh_objects_give_the_same_report(metric_class, task):
    predictions, references = _data(task)
    whole = metric_class()
    whole_stats = np.asarray(whole.example_stats(predictions, references), dtype=float)
    expected = metric_entry(whole, collected(whole.accepts_counts, whole_stats), 200, 3, 0.95)

    bounds = [0, 5, 6, 19, 33, 34, 50, len(predictions)]
    chunks = list(zip(bounds, bounds[1:]))
    random.Random(1).shuffle(chunks)
    # each chunk by a fresh object, in shuffled order: nothing one call learns may reach the next
    parts = {start: np.asarray(metric_class().example_stats(predictions[start:end], references[start:end]), dtype=float)
             for start, end in chunks}
    rows = collected(whole.accepts_counts, *(parts[start] for start in sorted(parts)))
    assert metric_entry(metric_class(), rows, 200, 3, 0.95) == expected
    assert expected["ci"] is not None and expected["n"] == len(predictions)
    # the stored rows do not depend on the chunking either
    whole_rows = collected(whole.accepts_counts, whole_stats)
    assert np.array_equal(rows.distinct, whole_rows.distinct)
    assert (rows.ids is None and whole_rows.ids is None) or np.array_equal(rows.ids, whole_rows.ids)
    np.testing.assert_array_equal(rows.expanded(), whole_stats)
