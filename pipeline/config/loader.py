"""Loading pipelines.yaml: parsed once by a safe YAML loader that remembers where every key is, overrides applied
to the parsed data, and the schema check, every problem a :class:`ConfigError` with its file, line and column (or flag).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nlpflow.config.schema import DEFAULT_CONFIG, PIPELINE_NAME, PipelineConfig, PipelinesFile
from nlpflow.contract.errors import ConfigError, Location, NlpflowError, Problems, did_you_mean
from nlpflow.run_options import Overrides

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(
    path: Path | str = DEFAULT_CONFIG, overrides: Overrides = Overrides(), *, problems: list[NlpflowError] | None = None
) -> dict[str, PipelineConfig | None]:
    """Parse and schema-check a pipelines file, with ``overrides`` applied; names are resolved later against the
    registry. ``problems``: as :func:`parse_config`'s."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"pipelines file not found (looked in {path.resolve().parent})", Location(path)) from None
    except OSError as error:
        raise ConfigError(f"cannot read pipelines file: {error.strerror or error}", Location(path)) from None
    return parse_config(decode_utf8(data, path), path, overrides, problems=problems)


#: what YAML counts as a line break (YAML 1.1, which PyYAML reads), so a line number here is the one its errors give
_YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def decode_utf8(data: bytes, path: Path) -> str:
    """The file's text, or a ConfigError at the line and column of its first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        # everything before the first bad byte decodes, so its lines are the ones an editor shows
        lines = _YAML_LINE_BREAK.split(data[: error.start].decode("utf-8"))
        bad = data[error.start : error.end]
        raise ConfigError(
            f"not valid UTF-8: byte{'s' if len(bad) > 1 else ''} {' '.join(f'0x{byte:02x}' for byte in bad)} ({error.reason}); pipelines files are "
            "read as UTF-8, so save it in that encoding",
            Location(path, len(lines), len(lines[-1]) + 1),
        ) from None


#: most YAML nodes a pipelines file may expand to (aliases count each time they are used):
#: refuses "billion laughs" files that would take minutes to check
MAX_NODES = 100_000

#: deepest nesting of mappings and lists a pipelines file may have (real ones stay under 10); checked on the
#: parser's event stream before composing, because composing recurses once per level and a file nested tens of
#: thousands deep crashes the C loader instead of raising
MAX_DEPTH = 100


#: run flag -> the key it sets in each pipeline that has the key's section (``data:`` every pipeline, ``model:`` some)
FLAG_KEYS = {"--limit": ("data", "limit"), "--device": ("model", "device"), "--batch-size": ("model", "batch_size"), "--model": ("model", "name_or_path")}


def parse_config(
    text: str, source: Path | str = DEFAULT_CONFIG, overrides: Overrides = Overrides(), *, problems: list[NlpflowError] | None = None
) -> dict[str, PipelineConfig | None]:
    """Parse pipelines-file text with a safe YAML loader and check it against the schema.

    ``overrides`` are applied to the parsed data, the typed flag values first and then each ``--set`` text (its
    value parsed as YAML there), each checked by the schema at once, so that its errors name its flag.

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
    #: YAML path -> the flag that set it
    overridden: dict[tuple, str] = {}
    for flag, value in overrides.flags().items():
        for path in _apply_flag(data, failed, FLAG_KEYS[flag], value):
            overridden[path] = flag
        checked = _check_schema(data, failed, source, locations, report, flag)
    for override in overrides.set:
        flag = f"--set {override}"
        with report.check():
            try:
                overridden[_apply_override(data, override)] = flag
            except ConfigError as error:
                if error.pipeline is not None:
                    failed.add(error.pipeline)
                raise
            checked = _check_schema(data, failed, source, locations, report, flag)

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
        pipeline.place(name, source, locations, overridden)
        pipelines[name] = pipeline
    if not failed:
        return pipelines
    every = data.get("pipelines") if isinstance(data.get("pipelines"), dict) else {}
    return {name: pipelines.get(name) for name in every if isinstance(name, str)}


def _check_schema(
    data: dict, failed: set[Any], source: Path, locations: dict, report: Problems, flag: str | None = None
) -> PipelinesFile | None:
    """Schema-check the file's data without the pipelines in ``failed``; report each problem (at ``flag``, the
    override just applied, when given) and add its pipeline to ``failed``, then check the pipelines left. None when
    no pipeline can be checked: the file's ``pipelines:`` is missing or not a mapping."""
    pipelines = data.get("pipelines")
    # the file's own check covers its top level; after it, an override's check covers the pipelines left
    checked = data if flag is None or not isinstance(pipelines, dict) else _without(pipelines, failed)
    while True:
        try:
            return PipelinesFile.model_validate(checked)
        except ValidationError as error:
            found = _config_errors(error, source, locations, checked)
        except RecursionError:
            raise ConfigError("the file is nested too deeply to be a pipelines file", Location(source)) from None
        if flag is not None:
            found = [(key, ConfigError(error.message, Location(flag), error.pipeline)) for key, error in found]
        for _, error in found:
            report.add(error)
        new = {key for key, _ in found if key is not None} - failed
        if not isinstance(pipelines, dict) or (checked is not data and not new):
            return None
        failed |= new
        checked = _without(pipelines, failed)


def _without(pipelines: dict, failed: set[Any]) -> dict:
    return {"pipelines": {name: value for name, value in pipelines.items() if name not in failed}}


def _apply_flag(data: dict, failed: set[Any], key: tuple[str, str], value: Any) -> list[tuple]:
    """Set ``SECTION.KEY`` to ``value`` in every pipeline not in ``failed`` that has the section; returns the YAML
    paths set. The value is typed already: it is placed as it is, for the schema to check."""
    section, name = key
    pipelines = data.get("pipelines")
    paths = []
    for pipeline_name, pipeline in (pipelines if isinstance(pipelines, dict) else {}).items():
        if pipeline_name in failed or not isinstance(pipeline, dict) or not isinstance(pipeline.get(section), dict):
            continue
        pipeline[section][name] = value
        paths.append(("pipelines", pipeline_name, section, name))
    return paths


def _apply_override(data: dict, override: str) -> tuple:
    """Set ``PIPELINE.KEY.PATH=VALUE`` (VALUE read as YAML) in the parsed file's data, or remove the key when VALUE
    is null, so its default applies; returns the YAML path set."""
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
    if value is None:
        # null means "not set": the key goes, so the schema's or the plugin's default applies as if never written
        node.pop(parts[-1], None)
    else:
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
        reasons = list(dict.fromkeys(clean_message(errors[i]["msg"]) for i in same))
        if pipeline and not field_path:
            message = f"a pipeline must be a mapping of settings (task:, data:, ...), got {short_value(first.get('input'))}"
        else:
            message = f"{field_path or 'value'}: {' or '.join(reasons)} (got {short_value(first.get('input'))})"
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
        # a key the user wrote as "[key]" is theirs, not pydantic's marker
        if part == "[key]" and not (isinstance(node, dict) and part in node):
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


def clean_message(message: str) -> str:
    message = re.sub(r" or instance of \w+", "", message)
    return message.replace("Value error, ", "")


def short_value(value: Any, limit: int = 80) -> str:
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
