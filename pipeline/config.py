"""pipelines.yaml: the schema (pydantic), a safe loader that remembers where every key is, and
name resolution against the plugin registry.

Every problem is raised as a :class:`ConfigError` carrying the YAML file, line
and column, and for unknown names the closest valid one.
"""

from __future__ import annotations

import difflib
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationError, field_validator, model_validator

from nlpflow.errors import ConfigError, Location, NlpflowError, PluginError, Problems, did_you_mean
from nlpflow.registry import DISABLE_ENV, PluginInfo, Registry
from nlpflow.sources import FileSeriesReader, expand, is_glob
from nlpflow.types import Backend, Metric, ModelConfig, Preprocessor, Reader, Reporter, Task

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
    #: option of every reporter that has one, and a column named only in such an option is added here
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
    #: YAML path -> the ``--set`` override that gave it its value, which is where its errors point
    _overrides: dict[tuple, str] = PrivateAttr(default_factory=dict)

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
                return Location(f"--set {self._overrides[full]}")
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


def load_config(
    path: Path | str = DEFAULT_CONFIG, overrides: Sequence[str] = (), *, problems: list[NlpflowError] | None = None
) -> dict[str, PipelineConfig | None]:
    """Parse and schema-check a pipelines file, with ``PIPELINE.KEY.PATH=VALUE`` overrides (``--set``) applied;
    names are resolved later against the registry. ``problems``: as :func:`parse_config`'s."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipelines file not found (looked in {path.resolve().parent})", Location(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read pipelines file: {error}", Location(path)) from None
    return parse_config(text, path, overrides, problems=problems)


#: most YAML nodes a pipelines file may expand to (aliases count each time they are used):
#: refuses "billion laughs" files that would take minutes to check
MAX_NODES = 100_000

#: deepest nesting of mappings and lists a pipelines file may have (real ones stay under 10); checked on the
#: parser's event stream before composing, because composing recurses once per level and a file nested tens of
#: thousands deep crashes the C loader instead of raising
MAX_DEPTH = 100


def parse_config(
    text: str, source: Path | str = DEFAULT_CONFIG, overrides: Sequence[str] = (), *, problems: list[NlpflowError] | None = None
) -> dict[str, PipelineConfig | None]:
    """Parse pipelines-file text with a safe YAML loader and check it against the schema.

    Raises only :class:`ConfigError`, with the file, line and column of the problem. With a ``problems`` list, the
    schema's problems are appended to it instead, every one pydantic finds, each with its line (or ``--set`` flag),
    and each pipeline that has one maps to None; the other pipelines are checked as usual. Text that cannot be
    parsed as YAML, or that is not a mapping, is still raised: nothing in it can be checked.
    """
    source = Path(source)
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            locations: dict[tuple, tuple[int, int]] = {}
            if node is not None:
                _index_positions(node, (), locations, source, set(), [0])
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        location = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        problem = _one_line(" ".join(filter(None, [error.context, error.problem])))
        if isinstance(error, yaml.constructor.ConstructorError):
            raise ConfigError(
                f"YAML error: {problem} (pipelines files are read with a safe loader: only plain mappings, lists, "
                "strings, numbers, booleans and null)",
                location,
            ) from None
        if "nesting depth" in problem:  # libyaml's own limit on flow nesting
            raise ConfigError("YAML error: the file is nested too deeply to be a pipelines file", location) from None
        raise ConfigError(f"YAML syntax error: {problem}", location) from None
    except yaml.reader.ReaderError as error:
        before = text[: error.position]
        line = before.count("\n") + 1
        column = error.position - (before.rfind("\n") + 1) + 1
        character = error.character if isinstance(error.character, str) else chr(error.character)
        raise ConfigError(
            f"YAML error: {_one_line(error.reason)} (character U+{ord(character):04X})", Location(source, line, column)
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"YAML error: {_one_line(str(error))}", Location(source)) from None
    except RecursionError:
        raise ConfigError("YAML error: the file is nested too deeply to be a pipelines file", Location(source)) from None

    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"expected a mapping with a top-level 'pipelines:' key, found {found}", Location(source, *locations.get((), (1, 1)))
        )

    report = Problems(problems)
    #: keys of the pipelines that have a problem: left out of the checks that follow
    failed: set[Any] = set()
    checked = _check_schema(data, failed, source, locations, report)
    # the file is checked alone first, so its own mistakes point at its lines and each override's at its flag
    overridden: dict[tuple, str] = {}
    for override in overrides:
        with report.check():
            try:
                overridden[_apply_override(data, override)] = override
            except ConfigError as error:
                if error.pipeline is not None:
                    failed.add(error.pipeline)
                raise
            checked = _check_schema(data, failed, source, locations, report, override)

    pipelines: dict[str, PipelineConfig | None] = {}
    for name, pipeline in (checked.pipelines if checked is not None else {}).items():
        where = Location(source, *locations.get(("pipelines", name), (None, None)))
        if not PIPELINE_NAME.fullmatch(name):
            error = ConfigError(
                f"pipeline name {name!r} may contain only letters, digits, '.', '_' and '-', and must start with a letter "
                "or digit (it names a report folder)",
                where,
            )
            error.pipeline = name  # whose problem it is; the message names it already
            report.add(error)
            failed.add(name)
            continue
        pipeline._name = name
        pipeline._source = source
        pipeline._locations = locations
        pipeline._overrides = overridden
        pipelines[name] = pipeline
    if not failed:
        return pipelines
    every = data.get("pipelines") if isinstance(data.get("pipelines"), dict) else {}
    return {name: pipelines.get(name) for name in every if isinstance(name, str)}


def _check_schema(
    data: dict, failed: set[Any], source: Path, locations: dict, report: Problems, override: str | None = None
) -> PipelinesFile | None:
    """Schema-check the file's data without the pipelines in ``failed``; report each problem (at ``override``'s
    flag, when given) and add its pipeline to ``failed``, then check the pipelines left. None when no pipeline can be
    checked: the file's ``pipelines:`` is missing or not a mapping."""
    pipelines = data.get("pipelines")
    # the file's own check covers its top level; after it, an override's check covers the pipelines left
    checked = data if override is None or not isinstance(pipelines, dict) else _without(pipelines, failed)
    while True:
        try:
            return PipelinesFile.model_validate(checked)
        except ValidationError as error:
            found = _config_errors(error, source, locations, checked)
        except RecursionError:
            raise ConfigError("the file is nested too deeply to be a pipelines file", Location(source)) from None
        if override is not None:
            found = [(key, ConfigError(error.message, Location(f"--set {override}"), error.pipeline)) for key, error in found]
        for _, error in found:
            report.add(error)
        new = {key for key, _ in found if key is not None} - failed
        if not isinstance(pipelines, dict) or (checked is not data and not new):
            return None
        failed |= new
        checked = _without(pipelines, failed)


def _without(pipelines: dict, failed: set[Any]) -> dict:
    return {"pipelines": {name: value for name, value in pipelines.items() if name not in failed}}


def _apply_override(data: dict, override: str) -> tuple:
    """Set ``PIPELINE.KEY.PATH=VALUE`` (VALUE read as YAML) in the parsed file's data; returns the YAML path set."""
    where = Location(f"--set {override}")
    key, equals, text = override.partition("=")
    if not equals or not key:
        raise ConfigError("expected PIPELINE.KEY=VALUE, for instance reviews-sentiment.model.batch_size=16", where)
    pipelines = data.get("pipelines")
    names = [name for name in (pipelines if isinstance(pipelines, dict) else {}) if isinstance(name, str)]
    # pipeline names may contain dots: the longest name that prefixes the key wins
    matching = [name for name in names if key.startswith(name + ".")]
    if not matching:
        raise ConfigError(f"no pipeline named {key.split('.')[0]!r}. {did_you_mean(key.split('.')[0], names)}", where)
    name = max(matching, key=len)
    parts = key[len(name) + 1:].split(".")
    if not all(parts):
        raise ConfigError(f"empty key in {key!r}; expected PIPELINE.KEY.PATH=VALUE", where, name)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"the value {text!r} is not valid YAML: {_one_line(str(error))}", where, name) from None
    node = pipelines[name]
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None and isinstance(node, dict):
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])} is not a mapping, so {'.'.join(parts)} cannot be set in it", where, name)
        node = child
    if not isinstance(node, dict):
        raise ConfigError(f"pipeline {name!r} is not a mapping", where, name)
    node[parts[-1]] = value
    return ("pipelines", name, *parts)


def _check_depth(text: str, source: Path) -> None:
    """Refuse a file nested deeper than MAX_DEPTH, at the first value past the limit (the parser itself is iterative)."""
    loader = _Loader(text)
    try:
        depth = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(
                        f"YAML error: the file is nested more than {MAX_DEPTH} levels deep; a pipelines file never needs "
                        "that many, so it is refused",
                        Location(source, event.start_mark.line + 1, event.start_mark.column + 1),
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    finally:
        loader.dispose()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_key_constructor = yaml.constructor.SafeConstructor()


def _key_of(node: yaml.Node) -> Any:
    """The Python value of a mapping key node, as the loader will build it (``1:`` is the int 1)."""
    if isinstance(node, yaml.ScalarNode):
        try:
            value = _key_constructor.construct_object(node, deep=True)
            hash(value)
            return value
        except Exception:  # the loader reports bad keys itself, with their position
            return node.value
    return f"<{node.id} at line {node.start_mark.line + 1}>"


def _index_positions(
    node: yaml.Node, path: tuple, out: dict, source: Path, ancestors: set[int], counter: list, via_alias: bool = False
) -> None:
    """Record the line and column of every key and value; refuse duplicate keys, recursive aliases and alias bombs.

    ``counter`` is ``[values reached through aliases, ids of nodes seen]``: only alias expansions count towards
    MAX_NODES, so a large file with no aliases is read whatever its size."""
    if len(counter) == 1:
        counter.append(set())
    via_alias = via_alias or id(node) in counter[1]
    counter[1].add(id(node))
    if via_alias:
        counter[0] += 1
    if counter[0] > MAX_NODES:
        raise ConfigError(
            f"YAML error: the file expands to more than {MAX_NODES} values through aliases (*name); refusing to read it",
            Location(source, node.start_mark.line + 1, node.start_mark.column + 1),
        )
    if id(node) in ancestors:
        raise ConfigError(
            "YAML error: an alias refers to a value that contains it (a recursive structure)",
            Location(source, node.start_mark.line + 1, node.start_mark.column + 1),
        )
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        ancestors.add(id(node))
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _key_of(key_node)
            if key in seen and key != "<<":
                raise ConfigError(
                    f"duplicate key {key!r} (first defined on line {seen[key]})",
                    Location(source, key_node.start_mark.line + 1, key_node.start_mark.column + 1),
                )
            seen[key] = key_node.start_mark.line + 1
            _index_positions(value_node, (*path, key), out, source, ancestors, counter, via_alias)
            # errors about a key point at the key, not its value
            out[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        ancestors.discard(id(node))
    elif isinstance(node, yaml.SequenceNode):
        ancestors.add(id(node))
        for index, item in enumerate(node.value):
            _index_positions(item, (*path, index), out, source, ancestors, counter, via_alias)
        ancestors.discard(id(node))


def _config_errors(error: ValidationError, source: Path, locations: dict, data: Any = None) -> list[tuple[Any, ConfigError]]:
    """A ConfigError for each of pydantic's problems, located in the YAML and worded for users, with the key of the
    pipeline it is in (None: outside any pipeline)."""
    errors = error.errors()
    # an unknown key usually explains a missing one ("pipeline:" for "pipelines:"), so report it first
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    found: dict[str, tuple[Any, ConfigError]] = {}
    covered: set[int] = set()
    #: required keys that an unknown key beside them is a misspelling of ("dataa:" for "data:"): said once, by it
    explained: set[tuple] = set()
    for index, first in enumerate(errors):
        if index in covered:
            continue
        yaml_path, _ = _yaml_path(first["loc"], data, first["type"] == "missing", _hashable(first.get("input")))
        if first["type"] == "extra_forbidden" and yaml_path:
            parent_model = _model_at(yaml_path[:-1])
            close = difflib.get_close_matches(str(yaml_path[-1]), list(parent_model.model_fields) if parent_model else [], n=1, cutoff=0.5)
            explained.update((*yaml_path[:-1], name) for name in close)
        elif first["type"] == "missing" and yaml_path in explained:
            continue
        key, located, same = _config_error(index, errors, source, locations, data)
        covered.update(same)
        found.setdefault(str(located), (key, located))
    return list(found.values())


def _config_error(index: int, errors: list[dict], source: Path, locations: dict, data: Any) -> tuple[Any, ConfigError, list[int]]:
    """The ConfigError for ``errors[index]``, the key of its pipeline (None: outside the pipelines), and which of
    ``errors`` it words (a union's members fail one by one: they are said at once)."""
    first = errors[index]
    yaml_path, is_key = _yaml_path(first["loc"], data, first["type"] == "missing", _hashable(first.get("input")))
    key = yaml_path[1] if len(yaml_path) > 1 and yaml_path[0] == "pipelines" else None
    same = [index]
    position = None
    probe = yaml_path
    while True:
        if probe in locations:
            position = locations[probe]
            break
        if not probe:
            break
        probe = probe[:-1]
    location = Location(source, *position) if position else Location(source)
    pipeline = str(key) if key is not None else None
    parts = yaml_path[2:] if pipeline else yaml_path
    field_path = ".".join(str(p) for p in parts)
    kind = first["type"]
    if kind == "extra_forbidden":
        parent_model = _model_at(yaml_path[:-1])
        allowed = list(parent_model.model_fields) if parent_model else []
        message = f"unknown key {yaml_path[-1]!r}. {did_you_mean(str(yaml_path[-1]), allowed)}"
    elif kind == "missing":
        message = f"missing required key {field_path!r}"
    elif is_key:
        what = "pipeline name" if len(yaml_path) == 2 and yaml_path[0] == "pipelines" else "key"
        message = f"{what} {first.get('input')!r} must be a string (quote it)"
        pipeline = None
    else:
        # a union (batch_size: int or "auto") fails once per member: say all of them at once
        same = [i for i, e in enumerate(errors) if _yaml_path(e["loc"], data, False, _hashable(e.get("input"))) == (yaml_path, is_key)]
        reasons = list(dict.fromkeys(_clean_message(errors[i]["msg"]) for i in same))
        if pipeline and not field_path:
            message = f"a pipeline must be a mapping of settings (task:, data:, ...), got {_short(first.get('input'))}"
        else:
            message = f"{field_path or 'value'}: {' or '.join(reasons)} (got {_short(first.get('input'))})"
    return key, ConfigError(message, location, pipeline), same


def _yaml_path(loc: tuple, data: Any, missing: bool = False, key_input: Any = None) -> tuple[tuple, bool]:
    """The part of a pydantic error location that exists in the YAML data, and whether it points at a mapping key.

    Pydantic adds union member names (``constrained-int``, ``literal['auto']``) and
    ``[key]`` markers to locations; they are not keys in the file.
    """
    path: list[Any] = []
    node = data
    is_key = False
    for position, part in enumerate(loc):
        if part == "[key]":
            is_key = True
            if isinstance(node, dict) and key_input in node:
                path.append(key_input)
            break
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif missing and position == len(loc) - 1:
            path.append(part)  # the missing key itself
            node = None
        # anything else is a union member or tag name: skip it
    return tuple(path), is_key


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return None
    return value


def _clean_message(message: str) -> str:
    message = re.sub(r" or instance of \w+", "", message)
    return message.replace("Value error, ", "")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    #: runs the model; None for a pipeline with no model
    backend: Backend | None
    #: (kind, name) -> the plugin that registered it, for error messages
    providers: dict[tuple[str, str], str]
    #: plugin name -> its name, distribution and version, for each plugin in ``providers``
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

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
            message = f"{cls.name}: options: {_clean_message(first['msg'])} (got {_short(first.get('input'))})"
        else:
            same = [e for e in errors if e["loc"][:1] == (key,)]
            reasons = " or ".join(dict.fromkeys(_clean_message(e["msg"]) for e in same))
            message = f"{cls.name}: option {key!r}: {reasons} (got {_short(first.get('input'))})"
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
                raise ConfigError(
                    f"metric {step.name!r} does not apply to task {task_cls.name!r} (it scores {', '.join(metric_cls.tasks)}). Metrics for {task_cls.name!r}: {', '.join(suitable)}",
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
    # slices are computed once, by the run's error analysis (report.json's ``analysis.slices``, which every report
    # shows): a column named only in a reporter's own slice_by option is sliced there too, after report.slice_by's
    for reporter in reporters:
        columns = getattr(reporter.options, "slice_by", None)
        for column in columns if isinstance(columns, (list, tuple)) else ():
            if column not in config.report.slice_by:
                config.report.slice_by.append(column)

    backend = None
    if config.model is not None:
        with report.check():
            backend_cls = _lookup(registry, "backend", config.model.backend, config.location("model", "backend"), name)
            backend = _construct(backend_cls, (), config, "model", "backend", plugin=registry.provider("backend", config.model.backend))

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
    return ResolvedPipeline(config, task, reader, preprocessors, metrics, reporters, backend, providers, plugins)


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
        kind = _file_kind(data_path)
        if kind is None:
            raise ConfigError(f"data file not found: {data_path}", config.location("data", "path"), name)
        raise ConfigError(f"data.path {data_path} is {kind}, not a data file", config.location("data", "path"), name)
    else:
        reader_name = config.data.format or _reader_for(data_path, registry)
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


def _file_kind(path: Path) -> str | None:
    """What a path that is not a regular file is, in words; None if nothing is there."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO), which can be read only once"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((words for test, words in kinds if test(mode)), "not a regular file")


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
    if config.data.format:
        return config.data.format
    by_reader: dict[str | None, list[Path]] = {}
    for file in files:
        by_reader.setdefault(_reader_for(file, registry), []).append(file)
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
