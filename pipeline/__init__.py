"""nlpflow: plugin-based NLP task pipelines.

This module is the whole public surface, for plugin authors and for Python
users; everything else in the package is internal and may move::

    from nlpflow import hookimpl, Task, TaskModel, Metric

    results = nlpflow.run(["reviews-sentiment"], config="pipelines.yaml")

Importing it is light (no torch, no transformers): the runner behind
:func:`run` and :func:`validate` is imported on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nlpflow.errors import ConfigError, DataError, ModelError, NlpflowError, PluginError
from nlpflow.hookspecs import hookimpl
from nlpflow.hub import has_head, input_limit, tokenize
from nlpflow.types import (
    HEADS,
    Backend,
    Example,
    ExampleError,
    Executor,
    Features,
    Head,
    LoadedModel,
    Metric,
    ModelConfig,
    NoOptions,
    Prediction,
    Preprocessor,
    RawRecord,
    Reader,
    Reporter,
    RunCollector,
    RunResult,
    Task,
    TaskModel,
    json_type,
)

try:
    __version__ = version("nlpflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = [
    # hooks
    "hookimpl",
    # what plugins subclass
    "Task", "TaskModel", "Metric", "Preprocessor", "Reader", "Reporter", "RunCollector", "Backend", "Executor", "NoOptions",
    # records passed between stages
    "Example", "Features", "Prediction", "RawRecord", "RunResult", "LoadedModel", "ModelConfig", "Head", "HEADS",
    # errors a plugin may raise
    "NlpflowError", "ConfigError", "DataError", "ModelError", "PluginError", "ExampleError",
    # helpers for task models
    "tokenize", "input_limit", "has_head", "json_type",
    # running pipelines from Python
    "run", "validate",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("run", "validate"):
        from nlpflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'nlpflow' has no attribute {name!r}")
