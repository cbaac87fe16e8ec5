"""The schema of pipelines.yaml: pydantic models for a pipelines file and each pipeline in it.

Defaults live here, once; the loader fills these models and the resolver reads them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, model_validator

from nlpflow.contract.errors import Location
from nlpflow.contract.types import ModelConfig

DEFAULT_CONFIG = Path("pipelines.yaml")
PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepConfig(_Strict):
    """A named plugin with options: ``normalize`` or ``{name: truncate, max_tokens: 400}`` or ``{truncate: {max_tokens: 400}}``."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value and len(value) == 1:
            (name, options), = value.items()
            if options is None or isinstance(options, dict):
                return {"name": name, **(options or {})}
        if not isinstance(value, dict):
            raise ValueError("expected a name, or a mapping such as {name: NAME, option: value}")
        return value

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(_Strict):
    path: Path
    #: reader name; by default picked from the file extension
    format: str | None = None
    #: options passed to the reader's Options model
    options: dict[str, Any] = Field(default_factory=dict)
    on_error: Literal["fail", "skip"] = "fail"
    #: read only the first N records
    limit: PositiveInt | None = None
    #: column holding each record's id, written as ``id`` in predictions.jsonl; default: ``id`` or ``_id`` where a record has one
    id_field: str | None = None
    #: longest record in bytes, for readers that take a max_record_bytes option (JSON Lines: 10 MiB by default);
    #: a longer record fails or is skipped with its line, and is never held whole in memory
    max_record_bytes: PositiveInt | None = None


class BootstrapConfig(_Strict):
    resamples: PositiveInt = 1000
    seed: int = 12345
    confidence: float = Field(0.95, gt=0, lt=1)


class ReportConfig(_Strict):
    #: reporter names, optionally with options: ``[json, {html: {slice_by: [domain]}}]``
    formats: list[StepConfig] = Field(default_factory=lambda: [StepConfig(name=n) for n in ("json", "markdown", "html")])
    #: data columns to break scores down by (report.json's ``analysis.slices``); also the default of the ``slice_by``
    #: option of every reporter that has one (a column named only in such an option is sliced too, after these)
    slice_by: list[str] = Field(default_factory=list)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    #: write the task's input fields, as read, as ``inputs`` in each line of predictions.jsonl
    include_inputs: bool = False
    #: the metric that ranks the worst and best examples; default: the first whose per-example scores vary
    rank_by: str | None = None


class PipelineConfig(_Strict):
    task: str
    description: str = ""
    #: run when `nlpflow run` is given no pipeline names
    default: bool = True
    data: DataConfig
    #: canonical task field -> column in the data
    fields: dict[str, str] = Field(default_factory=dict)
    #: task options, validated by the task's Options model
    options: dict[str, Any] = Field(default_factory=dict)
    preprocess: list[StepConfig] = Field(default_factory=list)
    #: no model means: score the `prediction` already in each record
    model: ModelConfig | None = None
    #: default: the task's default metrics
    metrics: list[StepConfig] | None = None
    report: ReportConfig = Field(default_factory=ReportConfig)
    #: records read, preprocessed, predicted and written per step; bounds memory
    chunk_size: PositiveInt = 1024

    _name: str = PrivateAttr("")
    _source: Path = PrivateAttr(DEFAULT_CONFIG)
    _locations: dict[tuple, tuple[int, int]] = PrivateAttr(default_factory=dict)
    #: YAML path -> the flag that gave it its value (``--device``, ``--set PIPELINE.KEY=VALUE``), where its errors point
    _overrides: dict[tuple, str] = PrivateAttr(default_factory=dict)

    def place(self, name: str, source: Path, locations: dict[tuple, tuple[int, int]], overrides: dict[tuple, str]) -> None:
        """Say where this pipeline was read: its name, its file, the position of every key in the file, and the
        keys an override set (what the loader knows once it has checked the pipeline)."""
        self._name, self._source, self._locations, self._overrides = name, source, locations, overrides

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> Path:
        return self._source

    def location(self, *path: Any) -> Location:
        """The YAML position of ``pipelines.<name>.<path...>``, or the nearest enclosing key."""
        full = ("pipelines", self._name, *path)
        while full:
            if full in self._overrides:
                return Location(self._overrides[full])
            if full in self._locations:
                line, column = self._locations[full]
                return Location(self._source, line, column)
            full = full[:-1]
        return Location(self._source)

    @property
    def data_path(self) -> Path:
        path = self.data.path.expanduser()
        return path if path.is_absolute() else self._source.parent / path


class PipelinesFile(_Strict):
    pipelines: dict[str, PipelineConfig]
