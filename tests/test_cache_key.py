"""The prediction cache key names the plugin that makes the predictions: upgrading it never serves old predictions."""

from __future__ import annotations

import json

from nlpflow.api import run
from nlpflow.registry import load_registry


def test_bumping_the_task_plugins_version_misses_the_cache(tmp_path, write_pipelines, cache_dir, bert_classifier):
    (tmp_path / "reviews.jsonl").write_text(
        "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in [("good film", "positive"), ("dull", "negative")])
    )
    config = write_pipelines(
        f"pipelines:\n  reviews:\n    task: sentiment\n    data: {{path: reviews.jsonl}}\n"
        f"    model: {{name_or_path: {str(bert_classifier)!r}}}\n    report: {{formats: [json]}}\n"
    )
    registry = load_registry()
    task_plugin = registry.plugin_info(registry.provider("task", "sentiment"))
    assert task_plugin.distribution == "nlpflow" and task_plugin.version

    def from_cache(output: str) -> int:
        [result] = run(["reviews"], config, tmp_path / output, cache_dir=cache_dir, registry=registry)
        return result.report["counts"]["from_cache"]

    assert from_cache("first") == 0
    assert from_cache("same") == 2
    task_plugin.version += ".post1"
    assert from_cache("bumped") == 0
    assert from_cache("bumped-again") == 2
