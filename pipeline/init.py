"""``nlpflow init``: a commented pipelines.yaml for one task and one data file, pre-filled from the data.

The data file is read with the reader its extension picks (as ``run`` would); the columns of its first
records fill ``fields:`` and, for classification, the labels of all its records fill ``options.labels``.
Label names whose meaning is not in doubt (``pos``, ``NEGATIVE``) are mapped onto the built-in sentiment
labels and their descriptions; a name that says nothing (``1``, ``LABEL_0``) gets a ``DESCRIBE:``
placeholder that ``validate`` and ``run`` refuse until it is filled in. A causal language model
(``--model``) gets the task's prompted mode: ``loglikelihood`` for classification, ``generate`` for
question answering, translation and summarization. The file is written only if none is there.
"""

from __future__ import annotations

import json
import re
import typing
from itertools import chain, islice
from pathlib import Path
from typing import Any

from nlpflow.config.resolve import PLACEHOLDER_MARK, reader_for_path
from nlpflow.config.schema import PIPELINE_NAME
from nlpflow.contract.errors import ConfigError, Location, NlpflowError, did_you_mean
from nlpflow.contract.hub import checkpoint_config, is_causal_lm
from nlpflow.contract.types import ModelConfig
from nlpflow.registry import Registry

#: records read to find the columns (the labels are read from every record)
SCAN_RECORDS = 1000

#: label names (lower-cased) whose meaning is not in doubt -> the built-in sentiment label they name. Star ratings
#: are left out on purpose: 1..5 is five labels, the built-in ones are two, and where 3 belongs is the user's call
SENTIMENT_NAMES = {"pos": "positive", "positive": "positive", "neg": "negative", "negative": "negative"}

#: a label that reads as words (``billing``, ``sci/tech``, ``not spam``) describes itself well enough to start with
WORDS = re.compile(r"[^\W\d_]{2,}(?:(?:\s*[/&]\s*|[ '-])[^\W\d_]+)*")

#: the prompt ``init`` writes for each task answered by generation with a causal LM (over the task's field names)
GENERATE_PROMPTS = {
    "question-answering": "Context: {{ context }}\nQuestion: {{ question }}\nAnswer:",
    "translation": "Translate the following text.\nText: {{ source }}\nTranslation:",
    "summarization": "Summarize the following text in a few sentences.\n\n{{ document }}\n\nSummary:",
}

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
    # only a model the user names can be a language model; the offline defaults are an encoder or a rule
    causal = model is not None and _is_causal_lm(model)
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
    stream = (record.data for record in registry.get("reader", reader_name)().read(data) if record.data is not None)
    records = list(islice(stream, SCAN_RECORDS))
    if not records:
        raise ConfigError(f"no readable records in the first {SCAN_RECORDS} of {data} (read as {reader_name})", Location(data))
    columns = list(dict.fromkeys(column for record in records for column in record))

    fields = _guess_fields(task_cls, columns, records, data)
    # with a causal LM, the task's offline default method (a rule, a retriever) is not what the model runs
    options = {} if causal else dict(options)
    comments: list[str] = []
    label_column = fields.get("label")
    labels_read = None
    if "labels" in getattr(task_cls.Options, "model_fields", {}) and label_column:
        labels, labels_read = _all_labels(records, stream, label_column, data)
        label_options, comments = _label_options(task_cls, labels, registry, loglikelihood=causal)
        if causal:
            options["mode"] = "loglikelihood"
        options.update(label_options)
    elif causal and task in GENERATE_PROMPTS:
        # a task whose default method already prompts a causal LM (summarization, translation has none) gets none written
        options = {"method": "generate"} if _names_generate_apart(task_cls) else {}
        options["prompting"] = {"prompt": GENERATE_PROMPTS[task]}

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
        f"    # read as {reader_name}; the fields below come from its first {len(records)} records"
        + (f", the labels from all {labels_read}" if labels_read is not None else ""),
        f"    data: {{path: {json.dumps(relative)}}}",
        f"    # task field -> data column (columns: {_one_line(', '.join(columns))})",
        f"    fields: {json.dumps(fields)}",
    ]
    if causal:
        lines.append(f"    # {_one_line(model)} is a causal language model: "
                     + ("each label is scored as the continuation of the prompt (Jinja2 over the task's fields)"
                        if options.get("mode") == "loglikelihood" else "it answers by continuing the prompt (Jinja2 over the task's fields)"))
    if options:
        if "labels" in options and not causal:
            lines.append("    # zero-shot: each label is described by the phrases in its list; write a few that say what it means")
        lines += [f"    # {_one_line(comment)}" for comment in comments]
        lines.append("    options:")
        for key, value in options.items():
            if key != "prompting":
                lines.append(f"      {key}: {_flow(value)}")
                continue
            lines.append("      prompting:")
            lines += [f"        {name}: {_flow(setting)}" for name, setting in value.items()]
            if options.get("mode") != "loglikelihood":
                lines.append("        # few_shot: {k: 3}   # solved examples before each prompt (from the same data unless source: is given)")
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


def _one_line(text: str) -> str:
    """``text`` for a YAML comment: a line break in a data label or column name would end the comment and put the
    rest into the YAML, so each character YAML reads as one is written escaped."""
    return re.sub(r"[\r\n\x85\u2028\u2029]", lambda match: json.dumps(match.group())[1:-1], text)


def _flow(value: Any) -> str:
    """``value`` as YAML flow text (JSON), readable in any script; the characters YAML breaks lines at are escaped,
    since a quoted scalar would be folded there."""
    return re.sub("[\x85\u2028\u2029]", lambda match: f"\\u{ord(match.group()):04x}", json.dumps(value, ensure_ascii=False))


def _names_generate_apart(task_cls: type) -> bool:
    """Whether a task's ``method`` option takes ``generate`` without defaulting to it (question answering's auto)."""
    field = getattr(task_cls.Options, "model_fields", {}).get("method")
    return field is not None and field.default != "generate" and "generate" in typing.get_args(field.annotation)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _all_labels(first: list[dict], rest, column: str, data: Path) -> tuple[list[str], int]:
    """Every distinct label of ``column`` in the records read so far and the ones left (a file sorted by label has
    some only at its end), and how many records there were; a ConfigError past MAX_LABELS."""
    labels: set[str] = set()
    count = 0
    for record in chain(first, rest):
        count += 1
        labels.update(str(value) for value in _as_list(record.get(column)) if value is not None)
        if len(labels) > MAX_LABELS:
            raise ConfigError(f"column {column!r} of {data} has more than {MAX_LABELS} distinct values (in its first {count} "
                              "records); that is not a label column (pick one with fields: after init)", Location(data))
    return sorted(labels), count


def _label_options(task_cls: type, labels: list[str], registry: Registry, loglikelihood: bool) -> tuple[dict[str, Any], list[str]]:
    """The classification options for the data's labels, and comments saying what was decided.

    A name of a built-in sentiment label (``pos``, ``Negative``) is mapped onto it with ``label_map``, so it gets its
    built-in descriptions (zero-shot) or is scored as that word (log-likelihood); a name that reads as words stands
    for itself; any other name (``1``, ``LABEL_0``) gets a ``DESCRIBE:`` placeholder, refused until filled in."""
    task_default = task_cls.Options().labels
    builtin = task_default if isinstance(task_default, dict) else _sentiment_descriptions(registry)
    label_map: dict[str, str] = {}
    own: dict[str, list[str] | str] = {}  # a model label -> its descriptions (zero-shot) or the word scored (log-likelihood)
    unclear: list[str] = []
    for label in labels:
        canonical = label if label in builtin else SENTIMENT_NAMES.get(label.lower())
        if canonical in builtin and canonical not in label_map.values() and canonical not in own:
            if canonical != label:
                label_map[label] = canonical
            own[canonical] = builtin[canonical]
        elif WORDS.fullmatch(label):
            own[label] = [label]
        else:
            unclear.append(label)
            word = f"{PLACEHOLDER_MARK} a word for {label}" if loglikelihood else f"{PLACEHOLDER_MARK} what {label} means"
            if loglikelihood:
                label_map[label] = word
                own[word] = [word]
            else:
                own[label] = [word]
    options: dict[str, Any] = {}
    comments: list[str] = [f"labels read from the data: {', '.join(labels)}"]
    only_builtin = isinstance(task_default, dict) and set(own) <= set(task_default)
    if not only_builtin:
        options["labels"] = list(own) if loglikelihood else own
    if label_map:
        options["label_map"] = label_map
    mapped = {label: word for label, word in label_map.items() if label not in unclear}
    if mapped:
        named = ", ".join(f"{label} as {word}" for label, word in mapped.items())
        comments.append(f"label_map reads {named}: " + ("the word scored for each" if loglikelihood else
                        "the built-in sentiment descriptions describe them (`nlpflow tasks --options sentiment`)"))
    if unclear:
        comments.append(f"{PLACEHOLDER_MARK} marks what a label's name does not say ({', '.join(unclear)}): replace each with "
                        + ("the word the model should score for it, in labels and label_map alike" if loglikelihood
                           else "a few phrases saying what it means")
                        + "; validate and run refuse the file until then")
    if loglikelihood:
        words = [word for word in own if not word.startswith(PLACEHOLDER_MARK)]
        if isinstance(task_default, dict) or unclear or any("{" in word or "}" in word for word in words):
            prompt = task_cls.Options().prompting.prompt
        else:  # naming the choices in the question lets the model weigh them against each other
            prompt = "{{ text }}\nQuestion: Which of these labels fits this text: " + ", ".join(words) + "?\nAnswer:"
        options["prompting"] = {"prompt": prompt}
    return options, comments


def _sentiment_descriptions(registry: Registry) -> dict[str, Any]:
    """The sentiment task's built-in label descriptions, for a task with none of its own (text-classification)."""
    try:
        default = registry.get("task", "sentiment").Options().labels
    except NlpflowError:
        return {}
    return default if isinstance(default, dict) else {}


def _is_causal_lm(model: str) -> bool:
    """Whether ``model``'s config.json describes a causal language model (:func:`nlpflow.contract.hub.is_causal_lm`).
    A model whose config cannot be read (not downloaded, offline) is taken as not one; ``validate`` says what is
    wrong with it."""
    try:
        return is_causal_lm(checkpoint_config(ModelConfig(name_or_path=model)))
    except NlpflowError:
        return False


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
