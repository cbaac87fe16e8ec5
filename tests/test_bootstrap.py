"""Bootstrap intervals from count matrices equal the ones from resampled rows.

``bootstrap_interval`` draws the same example indices as before and turns each
resample into counts; metrics that override ``Metric.resample_scores`` score
all resamples in a block with one matrix product. Each override must give the
values of scoring the resampled rows one at a time (the old loop), up to the
order of float additions, and so the same interval.
"""

from __future__ import annotations

import numpy as np
import pytest

from nlpflow.plugins.classification import Accuracy, MacroF1
from nlpflow.plugins.question_answering import F1
from nlpflow.plugins.summarization import Rouge1
from nlpflow.plugins.translation import Bleu, Chrf, Ter
from nlpflow.report import bootstrap_counts, bootstrap_indices, bootstrap_interval

RESAMPLES = 120
SEED = 7


def _words(rng, n):
    vocabulary = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    return [" ".join(rng.choice(vocabulary, size=rng.integers(1, 9))) for _ in range(n)]


def _stats(name, rng):
    n = 150
    labels = ["red", "green", "blue", "grey"]
    if name in ("accuracy", "macro_f1"):
        metric = Accuracy() if name == "accuracy" else MacroF1()
        predicted = [labels[i] for i in rng.integers(0, 4, n)]
        gold = [labels[i] for i in rng.integers(0, 3, n)]  # "grey" only ever predicted: a class absent from some resamples
        return metric, metric.example_stats(predicted, gold)
    if name == "macro_f1-multi-label":
        metric = MacroF1()
        sets = [[labels[j] for j in range(4) if rng.random() < 0.4] for _ in range(2 * n)]
        return metric, metric.example_stats(sets[:n], sets[n:])
    if name == "squad-f1":
        return F1(), np.column_stack([rng.random(n).round(3), rng.random(n) < 0.1]).astype(float)
    if name == "rouge1":
        return Rouge1(), rng.random((n, 1))
    metric = {"bleu": Bleu, "chrf": Chrf, "ter": Ter}[name]()
    return metric, metric.example_stats(_words(rng, n), _words(rng, n))


@pytest.mark.parametrize("name", ["accuracy", "macro_f1", "macro_f1-multi-label", "squad-f1", "rouge1", "bleu", "chrf", "ter"])
def test_resample_scores_equal_scoring_the_resampled_rows(name):
    metric, stats = _stats(name, np.random.default_rng(1))
    looped = np.array([metric.score(stats[rows]) for rows in bootstrap_indices(len(stats), RESAMPLES, SEED)])
    # small blocks, so several blocks (and a short last one) are exercised
    blocked = np.concatenate([metric.resample_scores(stats, counts) for counts in bootstrap_counts(len(stats), RESAMPLES, SEED, block_cells=7 * len(stats))])
    assert looped.std() > 0  # the resamples really differ
    np.testing.assert_allclose(blocked, looped, rtol=1e-12, atol=1e-12)

    interval = bootstrap_interval(metric, stats, RESAMPLES, SEED, 0.9)
    low, high = np.nanquantile(looped, [0.05, 0.95])
    assert interval["low"] == pytest.approx(low, rel=1e-12, abs=1e-12)
    assert interval["high"] == pytest.approx(high, rel=1e-12, abs=1e-12)


def test_count_blocks_are_the_index_resamples():
    n = 37
    blocks = list(bootstrap_counts(n, 10, SEED, block_cells=3 * n))
    assert [len(block) for block in blocks] == [3, 3, 3, 1]
    for counts, rows in zip(np.concatenate(blocks), bootstrap_indices(n, 10, SEED)):
        assert counts.tolist() == np.bincount(rows, minlength=n).tolist()
