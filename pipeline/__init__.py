"""nlpflow: plugin-based NLP task pipelines.

This module is the whole public surface, for plugin authors of every kind (tasks, metrics, readers,
preprocessors, reporters, backends, executors) and for Python users; everything else in the package is
internal and may move::

    from nlpflow import hookimpl, Task, TaskModel, Metric

    results = nlpflow.run(["reviews-sentiment"], config="pipelines.yaml")

Importing it is light (no torch, no transformers): the runner behind :func:`run` and :func:`validate` is
imported on first use, and the model-loading helpers import transformers only when called.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from nlpflow.contract.errors import (
    CacheError,
    ConfigError,
    DataError,
    Location,
    ModelError,
    NlpflowError,
    OutputError,
    PipelinesFailed,
    PluginError,
    ValidationFailed,
)
from nlpflow.contract.files import default_cache_dir, file_sha256, handle_sha256, stage_file, write_atomic
from nlpflow.contract.hub import (
    CHARACTERS_PER_TOKEN,
    check_weight_format,
    checkpoint_config,
    checkpoint_directory,
    files_fingerprint,
    has_head,
    hub_arguments,
    is_causal_lm,
    hub_offline,
    input_limit,
    load_tokenizer,
    not_found_message,
    require_head,
    resolve_model_path,
    tokenize,
)
from nlpflow.contract.progress import count_lines
from nlpflow.contract.report_terms import CONFIDENCE_DETAILS, MAX_SLICE_VALUES, MISSING, OTHER, confidence
from nlpflow.contract.transformers_backend import (
    OpenedModel,
    TransformersBackend,
    TransformersHead,
    load_module,
    parameters_fingerprint,
    resolve_device,
    resolve_dtype,
)
from nlpflow.contract.types import (
    HEADS,
    OUTPUT_SHAPES,
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
    Publisher,
    RawRecord,
    Reader,
    Reporter,
    RunCollector,
    RunResult,
    Task,
    TaskContext,
    TaskModel,
    json_type,
)
from nlpflow.hookspecs import hookimpl
from nlpflow.run_options import Overrides, RunOptions

try:
    __version__ = version("nlpflow")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = [
    # hooks
    "hookimpl",
    # what plugins subclass
    "Task", "TaskModel", "Metric", "Preprocessor", "Reader", "Reporter", "Publisher", "RunCollector", "Backend", "Executor", "NoOptions",
    # records passed between stages
    "Example", "Features", "Prediction", "RawRecord", "RunResult", "LoadedModel", "ModelConfig", "TaskContext",
    # heads: what a task asks a backend to compute (the built-in ones; plugins declare more with register_heads)
    "Head", "HEADS", "OUTPUT_SHAPES",
    # errors a plugin may raise, and those nlpflow.run and nlpflow.validate raise
    "NlpflowError", "ConfigError", "DataError", "ModelError", "PluginError", "OutputError", "CacheError", "ExampleError",
    "Location", "PipelinesFailed", "ValidationFailed",
    # helpers for task models
    "tokenize", "input_limit", "has_head", "is_causal_lm", "json_type", "CHARACTERS_PER_TOKEN",
    # helpers for backends that load transformers checkpoints
    "resolve_model_path", "hub_arguments", "hub_offline", "checkpoint_config", "checkpoint_directory", "load_tokenizer",
    "require_head", "not_found_message", "files_fingerprint", "check_weight_format",
    # the toolkit for transformers-based backends: subclass TransformersBackend, write open() and run()
    "TransformersBackend", "TransformersHead", "OpenedModel", "resolve_device", "resolve_dtype", "load_module",
    "parameters_fingerprint",
    # files: atomic writes, fingerprints, nlpflow's cache folder
    "write_atomic", "stage_file", "file_sha256", "handle_sha256", "default_cache_dir",
    # readers' and reporters' helpers: counting records, report.json's analysis terms
    "count_lines", "confidence", "CONFIDENCE_DETAILS", "MAX_SLICE_VALUES", "OTHER", "MISSING",
    # running pipelines from Python
    "run", "validate", "RunOptions", "Overrides",
    # what an executor receives: how to build the model's batch computer, and each chunk's planned batches
    "StageSpec", "ChunkPlan",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("run", "validate"):
        from nlpflow import api

        return getattr(api, name)
    if name in ("StageSpec", "ChunkPlan"):  # engine modules: imported when an executor first asks
        from nlpflow.engine import batches, executing

        return {"StageSpec": executing.StageSpec, "ChunkPlan": batches.ChunkPlan}[name]
    raise AttributeError(f"module 'nlpflow' has no attribute {name!r}")
