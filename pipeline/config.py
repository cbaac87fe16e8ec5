"""pipelines.yaml: the schema (pydantic), a safe loader that remembers where every key is, and
name resolution against the plugin registry.

Every problem is raised as a :class:`ConfigError` carrying the YAML file, line
and column, and for unknown names the closest valid one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, Location, did_you_mean
from pipeline.plugins import Registry
from pipeline.types import Metric, Preprocessor, Reader, Reporter, Task

DEFAULT_CONFIG = Path("pipelines.yaml")
PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


class ModelConfig(_Strict):
    name_or_path: str
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: rows per batch at most; "auto" starts from the token budget and halves on out-of-memory
    batch_size: Union[PositiveInt, Literal["auto"]] = "auto"
    #: padded tokens per batch (rows x longest row); default depends on the device
    max_tokens: PositiveInt | None = None
    #: input truncation in tokens; default is the tokenizer's model_max_length
    max_length: PositiveInt | None = None
    trust_remote_code: bool = False
    #: allow pickle-based weight files (.bin); off so only safetensors load
    allow_pickle: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value


class BootstrapConfig(_Strict):
    resamples: PositiveInt = 1000
    seed: int = 12345
    confidence: float = Field(0.95, gt=0, lt=1)


class ReportConfig(_Strict):
    formats: list[str] = Field(default_factory=lambda: ["json", "markdown", "html"])
    #: data columns to break scores down by
    slice_by: list[str] = Field(default_factory=list)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)


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


# --- loading -----------------------------------------------------------------


def load_config(path: Path | str = DEFAULT_CONFIG) -> dict[str, PipelineConfig]:
    """Parse and schema-check a pipelines file; names are resolved later against the registry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipelines file not found (looked in {path.resolve().parent})", Location(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read pipelines file: {error}", Location(path)) from None
    return parse_config(text, path)


def parse_config(text: str, source: Path | str = DEFAULT_CONFIG) -> dict[str, PipelineConfig]:
    source = Path(source)
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        location = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        problem = " ".join(filter(None, [error.context, error.problem]))
        raise ConfigError(f"YAML syntax error: {problem}", location) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"YAML error: {error}", Location(source)) from None

    locations: dict[tuple, tuple[int, int]] = {}
    if node is not None:
        _index_positions(node, (), locations, source)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with a top-level 'pipelines:' key", Location(source, 1, 1))

    try:
        parsed = PipelinesFile.model_validate(data)
    except ValidationError as error:
        raise _config_error(error, source, locations) from None

    for name, pipeline in parsed.pipelines.items():
        where = Location(source, *locations.get(("pipelines", name), (None, None)))
        if not PIPELINE_NAME.fullmatch(name):
            raise ConfigError(
                f"pipeline name {name!r} may contain only letters, digits, '.', '_' and '-' (it names a report folder)", where
            )
        pipeline._name = name
        pipeline._source = source
        pipeline._locations = locations
    return parsed.pipelines


def _index_positions(node: yaml.Node, path: tuple, out: dict, source: Path) -> None:
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} (first defined on line {seen[key]})",
                    Location(source, key_node.start_mark.line + 1, key_node.start_mark.column + 1),
                )
            seen[key] = key_node.start_mark.line + 1
            _index_positions(value_node, (*path, key), out, source)
            # errors about a key point at the key, not its value
            out[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_positions(item, (*path, index), out, source)


def _config_error(error: ValidationError, source: Path, locations: dict) -> ConfigError:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    # pydantic adds union/tag names to loc; keep the parts that exist in the YAML
    yaml_path = tuple(part for part in loc if not (isinstance(part, str) and ("[" in part or part in {"int", "str", "literal"})))
    position = None
    probe = yaml_path
    while probe:
        if probe in locations:
            position = locations[probe]
            break
        probe = probe[:-1]
    location = Location(source, *position) if position else Location(source)
    pipeline = yaml_path[1] if len(yaml_path) > 1 and yaml_path[0] == "pipelines" else None
    field_path = ".".join(str(p) for p in yaml_path[2:]) if pipeline else ".".join(str(p) for p in yaml_path)
    kind = first["type"]
    if kind == "extra_forbidden":
        parent_model = _model_at(yaml_path[:-1])
        allowed = list(parent_model.model_fields) if parent_model else []
        message = f"unknown key {yaml_path[-1]!r}. {did_you_mean(str(yaml_path[-1]), allowed)}"
    elif kind == "missing":
        message = f"missing required key {field_path!r}"
    else:
        message = f"{field_path or 'value'}: {first['msg']} (got {first.get('input')!r})"
    return ConfigError(message, location, pipeline)


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` (for listing allowed keys)."""
    model: type[BaseModel] | None = PipelinesFile
    parts = list(path)
    if parts[:1] == ["pipelines"]:
        if len(parts) == 1:
            return None
        model, parts = PipelineConfig, parts[2:]
    for part in parts:
        if model is None or isinstance(part, int):
            return model
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        model = next((t for t in _types_in(annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return model


def _types_in(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    found = []
    for arg in args:
        found.extend(_types_in(arg))
    return found


# --- resolving names against the plugin registry ------------------------------


@dataclass
class ResolvedPipeline:
    """A pipeline with every name turned into a configured plugin object."""

    config: PipelineConfig
    task: Task
    reader: Reader
    preprocessors: list[Preprocessor]
    metrics: list[Metric]
    reporters: list[Reporter]
    #: (kind, name) -> the plugin that registered it, for error messages
    providers: dict[tuple[str, str], str]

    @property
    def task_plugin(self) -> str:
        return self.providers[("task", self.task.name)]

    @property
    def name(self) -> str:
        return self.config.name


def build_options(cls: type, options: dict[str, Any], config: PipelineConfig, *where: Any) -> BaseModel:
    """Validate a plugin's options with its Options model, with the YAML location on error."""
    try:
        return cls.Options.model_validate(options)
    except ValidationError as error:
        first = error.errors()[0]
        key = first["loc"][0] if first["loc"] else None
        if first["type"] == "extra_forbidden":
            message = f"{cls.name}: unknown option {key!r}. {did_you_mean(str(key), cls.Options.model_fields)}"
        else:
            message = f"{cls.name}: option {key!r}: {first['msg']} (got {first.get('input')!r})"
        location = config.location(*where, key) if key is not None else config.location(*where)
        raise ConfigError(message, location, config.name) from None


def resolve(config: PipelineConfig, registry: Registry) -> ResolvedPipeline:
    """Check every name in a pipeline against the registry and build its plugin objects."""
    name = config.name
    task_cls = registry.get("task", config.task, config.location("task"), name)
    task = task_cls(build_options(task_cls, config.options, config, "options"))

    known_fields = {*task_cls.input_fields, *task_cls.reference_fields, "prediction"}
    for field_name in config.fields:
        if field_name not in known_fields:
            raise ConfigError(
                f"fields: {field_name!r} is not a field of task {task_cls.name!r}. {did_you_mean(field_name, known_fields)}",
                config.location("fields", field_name),
                name,
            )

    data_path = config.data_path
    if not data_path.is_file():
        raise ConfigError(f"data file not found: {data_path}", config.location("data", "path"), name)
    reader_name = config.data.format or _reader_for(data_path, registry)
    if reader_name is None:
        raise ConfigError(
            f"cannot tell the format of {data_path.name!r} from its extension; set data.format. {did_you_mean(data_path.suffix, registry.names('reader'))}",
            config.location("data", "path"),
            name,
        )
    reader_cls = registry.get("reader", reader_name, config.location("data", "format"), name)
    reader = reader_cls(build_options(reader_cls, config.data.options, config, "data", "options"))

    text_fields = [f for f in task_cls.input_fields]
    preprocessors = []
    for position, step in enumerate(config.preprocess):
        step_cls = registry.get("preprocessor", step.name, config.location("preprocess", position), name)
        options = step.options
        fields = options.pop("fields", None) or text_fields
        unknown = [f for f in fields if f not in task_cls.input_fields]
        if unknown:
            raise ConfigError(
                f"preprocessor {step.name!r}: fields {unknown} are not input fields of task {task_cls.name!r} ({', '.join(task_cls.input_fields)})",
                config.location("preprocess", position),
                name,
            )
        step_options = build_options(step_cls, options, config, "preprocess", position)
        preprocessors.append(_construct(step_cls, (step_options, fields), config, "preprocess", position))

    metric_steps = config.metrics if config.metrics is not None else [StepConfig(name=m) for m in task_cls.default_metrics]
    metrics = []
    for position, step in enumerate(metric_steps):
        where = config.location("metrics", position) if config.metrics is not None else config.location("task")
        metric_cls = registry.get("metric", step.name, where, name)
        if metric_cls.tasks and task_cls.name not in metric_cls.tasks:
            suitable = [m for m in registry.names("metric") if not registry.get("metric", m).tasks or task_cls.name in registry.get("metric", m).tasks]
            raise ConfigError(
                f"metric {step.name!r} does not apply to task {task_cls.name!r} (it scores {', '.join(metric_cls.tasks)}). Metrics for {task_cls.name!r}: {', '.join(suitable)}",
                where,
                name,
            )
        metrics.append(metric_cls(build_options(metric_cls, step.options, config, "metrics", position)))

    reporters = []
    for position, fmt in enumerate(config.report.formats):
        reporter_cls = registry.get("reporter", fmt, config.location("report", "formats", position), name)
        reporters.append(reporter_cls())

    providers = {
        (kind, item.name): registry.provider(kind, item.name)
        for kind, items in (("task", [task]), ("reader", [reader]), ("preprocessor", preprocessors), ("metric", metrics), ("reporter", reporters))
        for item in items
    }
    return ResolvedPipeline(config, task, reader, preprocessors, metrics, reporters, providers)


def _construct(cls: type, arguments: tuple, config: PipelineConfig, *where: Any) -> Any:
    """Build a plugin object; a ConfigError it raises gets this pipeline's YAML location."""
    try:
        return cls(*arguments)
    except ConfigError as error:
        if error.location is not None:
            raise
        raise ConfigError(f"{cls.name}: {error.message}", config.location(*where), config.name) from None


def _reader_for(path: Path, registry: Registry) -> str | None:
    suffixes = "".join(path.suffixes).lower()
    for reader_name in registry.names("reader"):
        cls = registry.get("reader", reader_name)
        if any(suffixes.endswith(ext) for ext in cls.extensions):
            return reader_name
    return None


__all__ = [
    "DEFAULT_CONFIG",
    "ModelConfig",
    "PipelineConfig",
    "ReportConfig",
    "ResolvedPipeline",
    "StepConfig",
    "load_config",
    "parse_config",
    "resolve",
]
