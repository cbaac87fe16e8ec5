"""Resolving a checked pipeline against the plugin registry: every name turned into a configured plugin object.

The pipeline's config is read, never changed: what resolving adds (the effective slice columns; the model's folder, in a copy of the config)
is kept in the :class:`ResolvedPipeline`. Unknown names are ConfigErrors with the YAML position and the closest
valid name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from nlpflow.config.loader import clean_message, short_value
from nlpflow.config.schema import DataConfig, PipelineConfig, StepConfig
from nlpflow.config.sources import FileSeriesReader, expand, irregular_kind, is_glob
from nlpflow.contract.errors import ConfigError, Location, NlpflowError, PluginError, Problems, did_you_mean
from nlpflow.contract.types import Backend, Metric, Preprocessor, Reader, Reporter, Task
from nlpflow.registry import DISABLE_ENV, PluginInfo, Registry

#: what ``nlpflow init`` writes where only the user can say what is meant (a label called ``1`` or ``LABEL_0``): an
#: option value starting with it is refused, so an unfilled placeholder never runs as if it were a description
PLACEHOLDER_MARK = "DESCRIBE:"


def refuse_placeholders(value: Any, config: PipelineConfig, *where: Any) -> None:
    """A ConfigError at the first text in ``value`` (a pipeline's options, at YAML path ``where``) that is still an
    ``init`` placeholder."""
    if isinstance(value, str) and value.lstrip().startswith(PLACEHOLDER_MARK):
        raise ConfigError(
            f"{'.'.join(str(part) for part in where)}: {value!r} is a placeholder written by nlpflow init; replace it "
            "with what it asks for (a few phrases that say what the label means, or the label's word)", config.location(*where), config.name,
        )
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        refuse_placeholders(key, config, *where, key)  # a label's name is a key: it may be a placeholder too
        refuse_placeholders(child, config, *where, key)


@dataclass
class ResolvedPipeline:
    """A pipeline with every name turned into a configured plugin object."""

    config: PipelineConfig
    task: Task
    reader: Reader
    preprocessors: list[Preprocessor]
    metrics: list[Metric]
    reporters: list[Reporter]
    #: runs the model; None for a pipeline with no model
    backend: Backend | None
    #: (kind, name) -> the plugin that registered it, for error messages
    providers: dict[tuple[str, str], str]
    #: plugin name -> its name, distribution and version, for each plugin in ``providers``
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    #: the data columns the run's error analysis slices by: ``report.slice_by``, then those named only in a
    #: reporter's own ``slice_by`` option
    slice_by: list[str] = field(default_factory=list)
    #: finds the packaged copy of an embedded model on the disk of the process that calls it (a Ray worker's
    #: own); None when the model is not an embedded one
    locate_model: Callable[[], Any] | None = None

    @property
    def task_plugin(self) -> str:
        return self.providers[("task", self.task.name)]

    @property
    def task_provider(self) -> dict[str, str | None]:
        """The plugin that provides the task, its distribution and version: part of the prediction cache key,
        so upgrading the plugin that makes predictions never serves the old ones."""
        info = self.plugins.get(self.task_plugin)
        return {"plugin": self.task_plugin, "distribution": info.distribution if info else None, "version": info.version if info else None}

    @property
    def name(self) -> str:
        return self.config.name


def build_options(cls: type, options: dict[str, Any], config: PipelineConfig, *where: Any, report: Problems | None = None) -> BaseModel:
    """Validate a plugin's options with its Options model, with the YAML location on error. With a collecting
    ``report``, every option pydantic finds wrong is a problem of its own."""
    try:
        return cls.Options.model_validate(options)
    except ValidationError as error:
        errors = _options_errors(error, cls, config, *where)
    except Exception as error:  # a validator that raises something pydantic does not turn into a ValidationError
        raise ConfigError(f"{cls.name}: invalid options: {type(error).__name__}: {error}", config.location(*where), config.name) from None
    (report or Problems()).fail(errors)


def _options_errors(error: ValidationError, cls: type, config: PipelineConfig, *where: Any) -> list[ConfigError]:
    """One ConfigError per option pydantic finds wrong (a union's members fail one by one: said at once), unknown
    options first."""
    errors = error.errors()
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    found: dict[Any, ConfigError] = {}
    for index, first in enumerate(errors):
        key = first["loc"][0] if first["loc"] else None
        if key is not None and key in found:
            continue
        if first["type"] == "extra_forbidden":
            message = f"{cls.name}: unknown option {key!r}. {did_you_mean(str(key), cls.Options.model_fields)}"
        elif key is None:
            message = f"{cls.name}: options: {clean_message(first['msg'])} (got {short_value(first.get('input'))})"
        else:
            same = [e for e in errors if e["loc"][:1] == (key,)]
            reasons = " or ".join(dict.fromkeys(clean_message(e["msg"]) for e in same))
            message = f"{cls.name}: option {key!r}: {reasons} (got {short_value(first.get('input'))})"
        location = config.location(*where, key) if key is not None else config.location(*where)
        found[key if key is not None else ("options", index)] = ConfigError(message, location, config.name)
    return list(found.values())


def resolve(config: PipelineConfig, registry: Registry, *, problems: list[NlpflowError] | None = None) -> ResolvedPipeline | None:
    """Check every name in a pipeline against the registry and build its plugin objects.

    Raises the first problem; with a ``problems`` list, appends each problem to it instead and returns None if there
    were any. The checks that do not need what a failed one builds still run: an unknown task skips its options,
    fields, preprocessors and metrics, but the data file, the reporters and the model backend are still checked."""
    report = Problems(problems)
    had = len(problems) if problems is not None else 0
    name = config.name
    task_cls = task = None
    with report.check():
        task_cls = _lookup(registry, "task", config.task, config.location("task"), name)
    if task_cls is not None:
        with report.check():
            refuse_placeholders(config.options, config, "options")
            task = _construct(
                task_cls, (build_options(task_cls, config.options, config, "options", report=report),), config, "options",
                plugin=registry.provider("task", config.task),
            )
        known_fields = {*task_cls.input_fields, *task_cls.reference_fields, "prediction"}
        for field_name in config.fields:
            if field_name not in known_fields:
                report.add(ConfigError(
                    f"fields: {field_name!r} is not a field of task {task_cls.name!r}. {did_you_mean(field_name, known_fields)}",
                    config.location("fields", field_name),
                    name,
                ))

    reader = None
    with report.check():
        reader = _resolve_reader(config, registry, report)

    preprocessors = []
    for position, step in enumerate(config.preprocess if task_cls is not None else []):
        with report.check():
            preprocessors.append(_resolve_preprocessor(config, registry, task_cls, position, step, report))

    metrics = []
    metric_steps = [] if task_cls is None else config.metrics if config.metrics is not None else [StepConfig(name=m) for m in task_cls.default_metrics]
    for position, step in enumerate(metric_steps):
        with report.check():
            where = config.location("metrics", position) if config.metrics is not None else config.location("task")
            metric_cls = _lookup(registry, "metric", step.name, where, name)
            if metric_cls.tasks and task_cls.name not in metric_cls.tasks:
                suitable = [m for m in registry.names("metric") if not registry.get("metric", m).tasks or task_cls.name in registry.get("metric", m).tasks]
                listing = f"Metrics for {task_cls.name!r}: {', '.join(suitable)}" if suitable else f"No registered metric scores {task_cls.name!r}"
                raise ConfigError(
                    f"metric {step.name!r} does not apply to task {task_cls.name!r} (it scores {', '.join(metric_cls.tasks)}). {listing}",
                    where,
                    name,
                )
            metric_options = build_options(metric_cls, step.options, config, "metrics", position, report=report)
            metrics.append(_construct(metric_cls, (metric_options,), config, "metrics", position, plugin=registry.provider("metric", step.name)))

    reporters = []
    metric_names = [metric.name for metric in metrics]
    # rank_by names one of the metrics: checked once they all resolved
    if config.report.rank_by is not None and len(metrics) == len(metric_steps) and task_cls is not None and config.report.rank_by not in metric_names:
        report.add(ConfigError(
            f"report.rank_by: {config.report.rank_by!r} is not one of this pipeline's metrics. "
            f"{did_you_mean(config.report.rank_by, metric_names)}",
            config.location("report", "rank_by"), name,
        ))
    for position, step in enumerate(config.report.formats):
        with report.check():
            reporter_cls = _lookup(registry, "reporter", step.name, config.location("report", "formats", position), name)
            options = step.options
            if config.report.slice_by and "slice_by" in reporter_cls.Options.model_fields:
                options.setdefault("slice_by", list(config.report.slice_by))
            reporter_options = build_options(reporter_cls, options, config, "report", "formats", position, report=report)
            reporters.append(
                _construct(reporter_cls, (reporter_options,), config, "report", "formats", position, plugin=registry.provider("reporter", step.name))
            )
    slice_by = _slice_columns(config, reporters)

    backend = None
    if config.model is not None:
        with report.check():
            backend_cls = _lookup(registry, "backend", config.model.backend, config.location("model", "backend"), name)
            backend_options = build_options(backend_cls, config.model.backend_options, config, "model", "backend_options", report=report)
            backend = _construct(backend_cls, (backend_options, registry.heads), config, "model", "backend", plugin=registry.provider("backend", config.model.backend))

    if problems is not None and len(problems) > had:
        return None
    providers = {
        (kind, item.name): registry.provider(kind, item.name)
        for kind, items in (
            ("task", [task]), ("reader", [reader]), ("preprocessor", preprocessors), ("metric", metrics), ("reporter", reporters),
            ("backend", [backend] if backend else []),
        )
        for item in items
    }
    plugins = {plugin: registry.plugin_info(plugin) for plugin in set(providers.values())}
    locate_model = None
    if config.model is not None:
        folder = model_folder(config, registry)
        if folder is not None and not _local_folder(config).is_dir():
            locate_model = registry.embedded_models.get(config.model.name_or_path)
        # a copy: the config given is left as it was read
        config = config.model_copy(update={"model": config.model.in_folder(folder)})
    return ResolvedPipeline(config, task, reader, preprocessors, metrics, reporters, backend, providers, plugins, slice_by, locate_model)


def model_folder(config: PipelineConfig, registry: Registry) -> str | None:
    """The local folder a pipeline's model loads from: ``model.name_or_path`` as a folder (relative to the
    pipelines file, as ``data.path`` is), else the packaged copy of a model a plugin embeds under that name; None
    for a hub name (the Hugging Face cache and the hub are searched when it loads)."""
    name = config.model.name_or_path
    local = _local_folder(config)
    if local.is_dir():
        return str(local)
    locate = registry.embedded_models.get(name)
    if locate is not None:
        try:
            return str(locate())
        except ImportError:
            pass  # the package is gone: fall back to the cache and the hub
    return None


def _local_folder(config: PipelineConfig) -> Path:
    """``model.name_or_path`` as a path, relative to the pipelines file."""
    local = Path(config.model.name_or_path).expanduser()
    return local if local.is_absolute() else config.source.parent / local


def _slice_columns(config: PipelineConfig, reporters: list[Reporter]) -> list[str]:
    """``report.slice_by``, then each column named only in a reporter's own ``slice_by`` option: slices are computed
    once, by the run's error analysis (report.json's ``analysis.slices``, which every report shows)."""
    columns = list(config.report.slice_by)
    for reporter in reporters:
        named = getattr(reporter.options, "slice_by", None)
        columns += [column for column in named if column not in columns] if isinstance(named, (list, tuple)) else []
    return columns


def _resolve_reader(config: PipelineConfig, registry: Registry, report: Problems) -> Reader:
    """The reader for the pipeline's data: the file, folder or glob must exist, and its format be known."""
    name = config.name
    data_path = config.data_path
    folder_reader = _folder_reader(data_path, registry) if data_path.is_dir() else None
    several_files = folder_reader is None and (is_glob(data_path) or data_path.is_dir())
    if several_files:
        reader_name = _reader_for_files(config, data_path, registry)
    elif folder_reader is not None:
        reader_name = config.data.format or folder_reader
    elif not data_path.is_file():
        kind = irregular_kind(data_path) if data_path.exists() or data_path.is_symlink() else None
        if kind is None:
            raise ConfigError(f"data file not found: {data_path}", config.location("data", "path"), name)
        raise ConfigError(f"data.path {data_path} is {kind}, not a data file", config.location("data", "path"), name)
    else:
        reader_name = config.data.format or reader_for_path(data_path, registry)
    if reader_name is None:
        raise ConfigError(
            f"cannot tell the format of {data_path.name!r} from its extension; set data.format. {did_you_mean(data_path.suffix, registry.names('reader'))}",
            config.location("data", "path"),
            name,
        )
    reader_cls = _lookup(registry, "reader", reader_name, config.location("data", "format"), name)
    reader = _construct(
        reader_cls, (build_options(reader_cls, _reader_options(reader_cls, config.data), config, "data", "options", report=report),), config, "data",
        plugin=registry.provider("reader", reader_name),
    )
    return FileSeriesReader(reader) if several_files else reader


def _resolve_preprocessor(config: PipelineConfig, registry: Registry, task_cls: type, position: int, step: StepConfig, report: Problems) -> Preprocessor:
    name = config.name
    step_cls = _lookup(registry, "preprocessor", step.name, config.location("preprocess", position), name)
    options = step.options
    fields = options.pop("fields", None) or list(task_cls.input_fields)
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ConfigError(
            f"preprocessor {step.name!r}: fields must be a list of field names (got {fields!r})",
            config.location("preprocess", position, "fields"),
            name,
        )
    unknown = [f for f in fields if f not in task_cls.input_fields]
    if unknown:
        raise ConfigError(
            f"preprocessor {step.name!r}: fields {unknown} are not input fields of task {task_cls.name!r} ({', '.join(task_cls.input_fields)})",
            config.location("preprocess", position),
            name,
        )
    step_options = build_options(step_cls, options, config, "preprocess", position, report=report)
    return _construct(step_cls, (step_options, fields), config, "preprocess", position, plugin=registry.provider("preprocessor", step.name))


def _construct(cls: type, arguments: tuple, config: PipelineConfig, *where: Any, plugin: str | None = None) -> Any:
    """Build a plugin object; a ConfigError it raises gets this pipeline's YAML location, anything else names the plugin."""
    try:
        return cls(*arguments)
    except ConfigError as error:
        if error.location is not None:
            raise
        raise ConfigError(f"{cls.name}: {error.message}", config.location(*where), config.name) from None
    except NlpflowError:
        raise
    except Exception as error:
        raise PluginError(
            f"{cls.__name__} ({cls.name!r}) raised while being set up for pipeline {config.name!r} "
            f"({config.location(*where)}): {type(error).__name__}: {error}",
            plugin,
        ) from error


def _lookup(registry: Registry, kind: str, name: str, location: Location, pipeline: str) -> type:
    """``registry.get``, adding to an unknown-name error which plugins failed to load (one may provide the name)."""
    try:
        return registry.get(kind, name, location, pipeline)
    except ConfigError as error:
        notes = []
        if registry.failures:
            notes.append(f"plugins that failed to load and may provide it: {', '.join(sorted({repr(f.plugin) for f in registry.failures}))}")
        if registry.blocked:
            notes.append(
                f"plugins disabled with --disable-plugin or ${DISABLE_ENV} that may provide it: {', '.join(map(repr, registry.blocked))}"
            )
        if not notes:
            raise
        raise ConfigError(f"{error.message} ({'; '.join(notes)})", location, pipeline) from None


def _folder_reader(path: Path, registry: Registry) -> str | None:
    """The reader that reads this folder whole (a saved dataset, by the files it holds), or None."""
    for reader_name in registry.names("reader"):
        markers = getattr(registry.get("reader", reader_name), "folder_markers", ())
        if any((path / marker).is_file() for marker in markers):
            return reader_name
    return None


def _reader_for_files(config: PipelineConfig, path: Path, registry: Registry) -> str:
    """The one reader for every file of a folder or glob: data.format, or the one their extensions share."""
    name = config.name
    where = config.location("data", "path")
    try:
        files = expand(path)
    except OSError as error:
        raise ConfigError(f"cannot list the folder data.path {path}: {error.strerror or error}", where, name) from None
    if not files:
        what = "matches no files" if is_glob(path) else "is an empty folder"
        raise ConfigError(f"data.path {path} {what}", where, name)
    for file in files:
        kind = irregular_kind(file)
        if kind is not None:
            # left out, it would leave the run and data.sha256 short of a file the user meant to be read
            raise ConfigError(
                f"data.path {path} {'matches' if is_glob(path) else 'holds'} {file}, which is {kind}, not a data file; "
                f"remove it, or leave it out with a narrower glob",
                where, name,
            )
    if config.data.format:
        return config.data.format
    by_reader: dict[str | None, list[Path]] = {}
    for file in files:
        by_reader.setdefault(reader_for_path(file, registry), []).append(file)
    if None in by_reader:
        unknown = by_reader[None][0]
        raise ConfigError(
            f"data.path {path}: cannot tell the format of {unknown.name!r} from its extension; set data.format, or "
            f"leave such files out with a glob such as {path / '*.jsonl' if path.is_dir() else path}",
            where, name,
        )
    if len(by_reader) > 1:
        counts = ", ".join(f"{reader_name}: {len(group)}" for reader_name, group in sorted(by_reader.items()))
        raise ConfigError(
            f"data.path {path} holds files in more than one format ({counts}); read one format, e.g. with a glob "
            f"such as {(path if path.is_dir() else path.parent) / ('*' + by_reader[next(iter(by_reader))][0].suffix)}",
            where, name,
        )
    return next(iter(by_reader))


def _reader_options(reader_cls: type, data: DataConfig) -> dict[str, Any]:
    """``data.options``, with ``data.max_record_bytes`` for readers that have that option."""
    options = dict(data.options)
    if data.max_record_bytes is not None and "max_record_bytes" in reader_cls.Options.model_fields:
        options.setdefault("max_record_bytes", data.max_record_bytes)
    return options


def reader_for_path(path: Path, registry: Registry) -> str | None:
    """The reader whose extensions the file's name ends with (``.jsonl.gz`` counts whole), or None."""
    suffixes = "".join(path.suffixes).lower()
    for reader_name in registry.names("reader"):
        cls = registry.get("reader", reader_name)
        if any(suffixes.endswith(ext) for ext in cls.extensions):
            return reader_name
    return None
