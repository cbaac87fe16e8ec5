"""``nlpflow init``: a commented pipelines.yaml for one task and one data file, pre-filled from the data.

The data file is read with the reader its extension picks (as ``run`` would); its columns fill
``fields:`` and, for classification, its labels fill ``options.labels``. The file is written only
if none is there, and what is written is a pipeline ``nlpflow validate`` accepts.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

from nlpflow.config.schema import PIPELINE_NAME
from nlpflow.config.resolve import reader_for_path
from nlpflow.contract.errors import ConfigError, Location, did_you_mean
from nlpflow.registry import Registry

#: records read to find the columns and the labels
SCAN_RECORDS = 1000

EMBEDDED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

#: built-in tasks that run offline without naming a model: the model (None: a rule) and the options they get
TASK_DEFAULTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "sentiment": (EMBEDDED_ENCODER, {}),
    "text-classification": (EMBEDDED_ENCODER, {}),
    "question-answering": (EMBEDDED_ENCODER, {"method": "sentence-retrieval"}),
    "summarization": (None, {"method": "lead", "sentences": 3}),
}

#: column names that usually hold each task field, for data whose columns are not named after the fields
COLUMN_GUESSES = {
    "text": ("text", "review", "sentence", "content", "body", "comment", "tweet"),
    "label": ("label", "labels", "stars", "sentiment", "category", "class", "target", "topic"),
    "document": ("document", "article", "text", "content", "body"),
    "summary": ("summary", "highlights", "abstract", "headline"),
    "question": ("question", "query"),
    "context": ("context", "passage", "paragraph"),
    "answers": ("answers", "answer"),
    "source": ("source", "src", "en"),
    "target": ("target", "tgt", "reference", "de"),
}

#: more distinct labels than this is not a classification column
MAX_LABELS = 100


def write_pipelines_file(
    task: str, data: Path, output: Path, registry: Registry, name: str | None = None, model: str | None = None, backend: str | None = None
) -> Path:
    """Write a pipelines file for ``task`` over ``data`` at ``output``, its model run by ``backend`` (None: the
    schema's default, left unwritten); a ConfigError if the file exists or the data does not fit."""
    output = Path(output)
    if output.exists():
        raise ConfigError("the file already exists; nlpflow init never overwrites a file (choose another with -o)", Location(output))
    task_cls = registry.get("task", task)
    data = Path(data)
    if not data.is_file():
        raise ConfigError(f"data file {data} not found", Location(data))
    default_model, options = TASK_DEFAULTS.get(task, (None, {}))
    model = model or default_model
    if model is None and task not in TASK_DEFAULTS:
        raise ConfigError(f"task {task!r} has no offline default model; name one with --model NAME_OR_PATH")
    if backend is not None:
        registry.get("backend", backend, Location("--backend"))
        if model is None:
            raise ConfigError(f"task {task!r} runs a rule by default, with no model for a backend to run; name one with --model NAME_OR_PATH", Location("--backend"))

    reader_name = reader_for_path(data, registry)
    if reader_name is None:
        raise ConfigError(f"cannot tell the format of {data.name!r} from its extension. {did_you_mean(data.suffix, registry.names('reader'))}", Location(data))
    records = [record.data for record in islice(registry.get("reader", reader_name)().read(data), SCAN_RECORDS) if record.data is not None]
    if not records:
        raise ConfigError(f"no readable records in the first {SCAN_RECORDS} of {data} (read as {reader_name})", Location(data))
    columns = list(dict.fromkeys(column for record in records for column in record))

    fields = _guess_fields(task_cls, columns, records, data)
    options = dict(options)
    label_column = fields.get("label")
    if "labels" in getattr(task_cls.Options, "model_fields", {}) and label_column:
        labels = sorted({str(value) for record in records for value in _as_list(record.get(label_column)) if value is not None})
        if len(labels) > MAX_LABELS:
            raise ConfigError(f"column {label_column!r} of {data} has {len(labels)} distinct values in its first {len(records)} records; "
                              "that is not a label column (pick one with fields: after init)", Location(data))
        default = task_cls.Options().labels
        if not (isinstance(default, dict) and set(labels) <= set(default)):
            # zero-shot: each label's description is its name; a few phrases per label describe it better
            options["labels"] = {label: [label] for label in labels}

    # relative to the file when the data is under its folder, so the two can move together
    folder = output.resolve().parent
    path = data.resolve()
    relative = str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
    name = name or f"{data.stem}-{task}"
    if not PIPELINE_NAME.fullmatch(name):
        raise ConfigError(f"pipeline name {name!r} may contain only letters, digits, '.', '_' and '-' (give one with --name)")
    lines = [
        f"# Written by `nlpflow init {task} {data}`: check the guesses, then `nlpflow validate` and `nlpflow run`.",
        f"# Paths are relative to this file. Every option of the task: `nlpflow tasks --options {task}`.",
        "pipelines:",
        f"  {name}:",
        f"    task: {task}",
        f"    # read as {reader_name}; the fields and labels below come from its first {len(records)} records",
        f"    data: {{path: {json.dumps(relative)}}}",
        f"    # task field -> data column (columns: {', '.join(columns)})",
        f"    fields: {json.dumps(fields)}",
    ]
    if options:
        if "labels" in options:
            lines.append("    # zero-shot: each label is described by the phrases in its list; write a few that say what it means")
        lines.append("    options:")
        lines += [f"      {key}: {json.dumps(value, ensure_ascii=False)}" for key, value in options.items()]
    if model:
        chosen_backend = f"backend: {json.dumps(backend)}, " if backend is not None else ""
        lines.append(f"    model: {{name_or_path: {json.dumps(model)}, {chosen_backend}device: auto, batch_size: auto}}")
    else:
        lines.append("    # no model: a rule-based baseline; add a model: block to run one")
    text = "\n".join(lines) + "\n"
    try:
        with open(output, "x", encoding="utf-8") as handle:  # "x": a file that appeared meanwhile is not overwritten
            handle.write(text)
    except FileExistsError:
        raise ConfigError("the file already exists; nlpflow init never overwrites a file (choose another with -o)", Location(output)) from None
    except OSError as error:
        raise ConfigError(f"cannot write {output}: {error.strerror or error}", Location(output)) from None
    return output


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _guess_fields(task_cls: type, columns: list[str], records: list[dict], data: Path) -> dict[str, str]:
    """Task field -> column: a column of the field's name, a usual name for it, or (input fields) the first free text column."""
    fields: dict[str, str] = {}
    used: set[str] = set()
    for field in (*task_cls.input_fields, *task_cls.reference_fields):
        lowered = {column.lower(): column for column in columns if column not in used}
        guess = next((lowered[candidate] for candidate in (field, *COLUMN_GUESSES.get(field, ())) if candidate in lowered), None)
        if guess is None and field in task_cls.input_fields:
            guess = next((c for c in columns if c not in used and isinstance(records[0].get(c), str)), None)
        if guess is None and field == "label":
            guess = _label_like_column([c for c in columns if c not in used], records)
        if guess is None:
            if field in task_cls.input_fields:
                raise ConfigError(f"no column of {data} looks like field {field!r} of task {task_cls.name!r}; its columns are "
                                  f"{', '.join(columns)}", Location(data))
            continue  # no reference column: the run predicts without scoring
        fields[field] = guess
        used.add(guess)
    return fields


def _label_like_column(columns: list[str], records: list[dict]) -> str | None:
    """The column with the fewest distinct values, among those that repeat a value (an id column never does)."""
    distinct = {column: len({json.dumps(record.get(column), sort_keys=True) for record in records}) for column in columns}
    repeating = [column for column in columns if distinct[column] < len(records)]
    return min(repeating, key=lambda column: distinct[column]) if repeating else None
