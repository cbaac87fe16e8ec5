"""A pipeline sets its backend's own options under model.backend_options, validated by the backend's Options model."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict, Field

from nlpflow import ConfigError, ValidationFailed, hookimpl
from nlpflow.api import validate
from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.registry import load_registry


class TunedTorchBackend(TorchBackend):
    """The torch backend with an option of its own, as a third-party backend has."""

    name = "torch-tuned"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        threads: int = Field(1, ge=1, description="intra-op threads")


class TunedPlugin:
    @hookimpl
    def register_backends(self, register):
        register(TunedTorchBackend)


def pipelines(bert_classifier, tmp_path, backend: str, options: str) -> str:
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": "good", "label": "positive"}) + "\n", encoding="utf-8")
    return (
        "pipelines:\n  p:\n    task: sentiment\n    data: {path: data.jsonl}\n    model:\n"
        f"      name_or_path: {bert_classifier}\n      backend: {backend}\n"
        f"      backend_options: {options}\n"
    )


def test_backend_options_reach_the_backend_validated(bert_classifier, tmp_path, write_pipelines):
    registry = load_registry(extra_plugins=[("tuned", TunedPlugin())])
    config = write_pipelines(pipelines(bert_classifier, tmp_path, "torch-tuned", "{threads: 3}"))
    [resolved] = validate(config, ["p"], registry)
    assert isinstance(resolved.backend, TunedTorchBackend)
    assert resolved.backend.options.threads == 3


def test_a_wrong_backend_option_is_a_config_error_at_its_line(bert_classifier, tmp_path, write_pipelines):
    registry = load_registry(extra_plugins=[("tuned", TunedPlugin())])
    config = write_pipelines(pipelines(bert_classifier, tmp_path, "torch-tuned", "{threads: 0}"))
    with pytest.raises(ValidationFailed) as failed:
        validate(config, ["p"], registry)
    [problem] = failed.value.problems
    assert isinstance(problem, ConfigError)
    assert "torch-tuned: option 'threads'" in str(problem)
    assert f"{config}:8:" in str(problem)  # the line of backend_options


def test_the_torch_backend_takes_no_options_and_says_so(bert_classifier, tmp_path, write_pipelines):
    config = write_pipelines(pipelines(bert_classifier, tmp_path, "torch", "{threads: 2}"))
    with pytest.raises(ValidationFailed) as failed:
        validate(config, ["p"], load_registry())
    assert "torch: unknown option 'threads'" in str(failed.value.problems[0])
