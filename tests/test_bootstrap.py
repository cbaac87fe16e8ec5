"""Bootstrap intervals from count matrices, over every row or over distinct rows.

``bootstrap_counts`` draws a resample as counts per stored row. Over rows that
are mostly distinct it draws the same example indices as nlpflow always did, so
each ``Metric.resample_scores`` override must give the values of scoring the
resampled rows one at a time (the old loop), up to the order of float
additions. Over few distinct rows (confusion-matrix cells) it draws one
multinomial instead: the same distribution, which these tests check
statistically, at a cost that does not grow with the data.
"""

from __future__ import annotations

import numpy as np
import pytest

from nlpflow.engine import stats as stats_module
from nlpflow.plugins.classification import Accuracy, MacroF1
from nlpflow.plugins.question_answering import F1
from nlpflow.plugins.summarization import Rouge1
from nlpflow.plugins.translation import Bleu, Chrf, Ter
from nlpflow.engine.report import bootstrap_counts, bootstrap_indices, bootstrap_interval, metric_entry
from nlpflow.engine.stats import MetricRows, RowCollector, collected

RESAMPLES = 120
SEED = 7


def _words(rng, n):
    vocabulary = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    return [" ".join(rng.choice(vocabulary, size=rng.integers(1, 9))) for _ in range(n)]


def _stats(name, rng, n=150):
    labels = ["red", "green", "blue", "grey"]
    if name in ("accuracy", "macro_f1"):
        metric = Accuracy() if name == "accuracy" else MacroF1()
        predicted = [labels[i] for i in rng.integers(0, 4, n)]
        gold = [labels[i] for i in rng.integers(0, 3, n)]  # "grey" only ever predicted: a class absent from some resamples
        return metric, metric.example_stats(predicted, gold)
    if name == "macro_f1-multi-label":
        metric = MacroF1()
        sets = [[labels[j] for j in range(4) if rng.random() < 0.4] for _ in range(2 * n)]
        sets[7] = ["rare"]  # a class in one example only: absent from about a third of the resamples
        return metric, metric.example_stats(sets[:n], sets[n:])
    if name == "squad-f1":
        return F1(), np.column_stack([rng.random(n).round(3), rng.random(n) < 0.1]).astype(float)
    if name == "rouge1":
        return Rouge1(), rng.random((n, 1))
    metric = {"bleu": Bleu, "chrf": Chrf, "ter": Ter}[name]()
    return metric, metric.example_stats(_words(rng, n), _words(rng, n))


NAMES = ["accuracy", "macro_f1", "macro_f1-multi-label", "squad-f1", "rouge1", "bleu", "chrf", "ter"]


@pytest.mark.parametrize("name", NAMES)
def test_resample_scores_equal_scoring_the_resampled_rows(name):
    metric, stats = _stats(name, np.random.default_rng(1))
    looped = np.array([metric.score(stats[rows]) for rows in bootstrap_indices(len(stats), RESAMPLES, SEED)])
    # small blocks, so several blocks (and a short last one) are exercised
    every_row = MetricRows(stats)
    blocked = np.concatenate([metric.resample_scores(stats, counts) for counts in bootstrap_counts(every_row, RESAMPLES, SEED, block_cells=7 * len(stats))])
    assert looped.std() > 0  # the resamples really differ
    np.testing.assert_allclose(blocked, looped, rtol=1e-12, atol=1e-12)

    every_row.counts  # asking for the counts must not change how the resamples are drawn
    interval = bootstrap_interval(metric, every_row, RESAMPLES, SEED, 0.9)
    low, high = np.nanquantile(looped, [0.05, 0.95])
    assert interval["low"] == pytest.approx(low, rel=1e-12, abs=1e-12)
    assert interval["high"] == pytest.approx(high, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", ["accuracy", "macro_f1", "macro_f1-multi-label", "squad-f1"])
def test_distinct_rows_with_counts_score_as_every_row(name):
    """Metrics that accept counts give the same value and details from distinct rows with counts as from all rows,
    and, where the rows are too varied for a multinomial, the very same interval (the same index draws)."""
    metric, stats = _stats(name, np.random.default_rng(2))
    assert metric.accepts_counts
    rows = collected(True, stats[:40], stats[40:])
    assert len(rows.distinct) < len(stats) and rows.counts.sum() == len(stats)
    assert metric.score(rows.distinct, rows.counts) == pytest.approx(metric.score(stats), rel=1e-12)
    assert _rounded(metric.details(rows.distinct, rows.counts)) == _rounded(metric.details(stats))
    if len(rows.distinct) > 0.1 * len(stats):
        assert _rounded(bootstrap_interval(metric, rows, RESAMPLES, SEED, 0.9)) == _rounded(
            bootstrap_interval(metric, MetricRows(stats), RESAMPLES, SEED, 0.9))


def _rounded(value):
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return round(value, 12) if isinstance(value, float) else value


def test_count_blocks_are_the_index_resamples():
    n = 37
    blocks = list(bootstrap_counts(MetricRows(np.arange(n, dtype=float)[:, None]), 10, SEED, block_cells=3 * n))
    assert [len(block) for block in blocks] == [3, 3, 3, 1]
    for counts, rows in zip(np.concatenate(blocks), bootstrap_indices(n, 10, SEED)):
        assert counts.tolist() == np.bincount(rows, minlength=n).tolist()


def test_multinomial_counts_follow_the_rows_shares():
    # 3 distinct rows over 3,000 examples: counts drawn per distinct row, each resample n examples in all
    rows = MetricRows(np.array([[0.0], [1.0], [2.0]]), np.repeat(np.arange(3, dtype=np.int32), [1500, 1000, 500]))
    draws = np.concatenate(list(bootstrap_counts(rows, 2000, SEED, block_cells=3 * 300)))
    assert draws.shape == (2000, 3) and (draws.sum(axis=1) == 3000).all()
    # mean and spread of a multinomial(n, p): n p and sqrt(n p (1 - p)), as drawing n examples with replacement gives
    expected = np.array([1500, 1000, 500])
    p = expected / 3000
    np.testing.assert_allclose(draws.mean(axis=0), expected, atol=4 * np.sqrt(3000 * p * (1 - p) / 2000).max())
    np.testing.assert_allclose(draws.std(axis=0), np.sqrt(3000 * p * (1 - p)), rtol=0.08)


def test_multinomial_interval_matches_index_resampling():
    """Accuracy and macro-F1 of 20,000 examples: the interval over distinct rows (multinomial) and over every row
    (index draws, as before) agree to Monte Carlo error, and match the normal approximation for accuracy."""
    rng = np.random.default_rng(3)
    labels = np.array(["a", "b", "c"])
    gold = labels[rng.integers(0, 3, 20_000)]
    predicted = np.where(rng.random(20_000) < 0.7, gold, labels[rng.integers(0, 3, 20_000)])
    for metric in (Accuracy(), MacroF1()):
        stats = metric.example_stats(list(predicted), list(gold))
        distinct = collected(True, stats)
        assert len(distinct.distinct) == 9  # the confusion matrix's cells: the multinomial path
        by_cells = metric_entry(metric, distinct, 1000, SEED, 0.95)
        by_rows = metric_entry(metric, MetricRows(stats), 1000, SEED, 0.95)
        assert by_cells["value"] == pytest.approx(by_rows["value"], rel=1e-12)
        half_width = (by_rows["ci"]["high"] - by_rows["ci"]["low"]) / 2
        assert by_cells["ci"]["low"] == pytest.approx(by_rows["ci"]["low"], abs=0.15 * half_width)
        assert by_cells["ci"]["high"] == pytest.approx(by_rows["ci"]["high"], abs=0.15 * half_width)
        if metric.name == "accuracy":
            value = by_rows["value"]
            assert half_width == pytest.approx(1.96 * np.sqrt(value * (1 - value) / 20_000), rel=0.1)


def test_collected_rows_do_not_depend_on_the_chunking(monkeypatch):
    rng = np.random.default_rng(4)
    stats = rng.integers(0, 6, size=(500, 2)).astype(float)
    one = collected(True, stats)
    many = collected(True, *np.array_split(stats, [1, 1, 2, 77, 300, 301]))  # an empty chunk too
    assert np.array_equal(one.distinct, many.distinct) and np.array_equal(one.ids, many.ids)
    # distinct rows are numbered in order of first occurrence
    assert np.array_equal(one.distinct[0], stats[0]) and one.ids[0] == 0
    np.testing.assert_array_equal(many.expanded(), stats)

    # past MAX_DISTINCT_ROWS the rows are kept one per example, in order, however the chunks fell
    monkeypatch.setattr(stats_module, "MAX_DISTINCT_ROWS", 20)
    for chunks in ([stats], np.array_split(stats, [3, 40, 41, 499])):
        collector = RowCollector(distinct=True)
        for chunk in chunks:
            collector.add(chunk)
        rows = collector.result()
        assert rows.ids is None
        np.testing.assert_array_equal(rows.distinct, stats)


def test_subsets_keep_only_the_rows_they_use():
    stats = np.array([[0.0], [1.0], [0.0], [2.0], [1.0], [0.0]])
    rows = collected(True, stats)
    subset = rows.subset(np.array([True, False, True, False, True, False]))
    assert subset.n == 3 and subset.counts.tolist() == [2, 1]
    np.testing.assert_array_equal(subset.expanded(), stats[[0, 2, 4]])
    np.testing.assert_array_equal(MetricRows(stats).subset(stats[:, 0] > 0).expanded(), stats[stats[:, 0] > 0])


def test_a_large_subset_of_few_rows_keeps_only_counts():
    stats = np.tile(np.array([[0.0], [1.0], [2.0]]), (100, 1))  # 300 examples, 3 distinct rows
    rows = collected(True, stats)
    assert rows.ids.dtype == np.uint8  # a byte per example while there are few distinct rows
    subset = rows.subset(stats[:, 0] < 2)
    assert subset.ids is None and not subset.ordered and subset.n == 200 and subset.counts.tolist() == [100, 100]
    metric = Accuracy()
    labels = metric.example_stats(["a", "b", "a", "a"] * 50, ["a", "a", "b", "a"] * 50)
    kept = collected(True, labels).subset(np.ones(200, dtype=bool))
    assert not kept.ordered
    interval = bootstrap_interval(metric, kept, 200, SEED, 0.9)
    assert interval["low"] < metric.score(labels) < interval["high"]
