"""Prompts for causal language models: a Jinja2 template over a record's fields, the tokenizer's chat template, and
the few-shot pool (a file, or the pipeline's own data) with its samplers.

Shared by the tasks that prompt a decoder-only model (text generation, classification by log-likelihood, and
question answering, translation and summarization by generation), so the ``prompt``, ``system`` and
``chat_template`` options mean the same thing in each.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator

from nlpflow import ConfigError, Example, LoadedModel, ModelError

#: where the prompting options sit in every prompting task's options, for error messages
OPTION = "options.prompting"


class PromptBuilder:
    """A Jinja2 prompt template over a record's fields, checked when it is built and when each record is rendered.

    ``variables`` are the fields the template names; :meth:`render` raises a
    ConfigError when a record lacks one of them (the runner adds the options'
    YAML line and the record's data line), since a misspelled field is the
    pipeline's mistake, not the record's.
    """

    def __init__(self, template: str, option: str = "options.prompt"):
        import jinja2
        from jinja2 import meta

        self.source = template
        #: where the template is set, for the error a record without one of its fields raises
        self.option = option
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        try:
            self.variables = tuple(sorted(meta.find_undeclared_variables(environment.parse(template))))
            self.template = environment.from_string(template)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"the prompt template does not parse: {error.message} (template line {error.lineno})") from None

    def __reduce__(self):
        # a compiled Jinja2 template does not pickle; the task travels to Ray workers, which compile it again
        return PromptBuilder, (self.source, self.option)

    def render(self, fields: Mapping[str, Any]) -> str:
        missing = [name for name in self.variables if fields.get(name) is None]
        if missing:
            raise ConfigError(
                f"{self.option}: the template names {', '.join(map(repr, missing))}, which the record does not have; "
                f"it has {', '.join(map(repr, sorted(fields))) or 'no fields'}"
            )
        return self.template.render(**fields)


class PromptOptions(BaseModel):
    """The options of every task that prompts a causal LM: the template, the system message, the chat template."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, description="Jinja2 template over the record's fields; default: the task's own")
    system: str | None = Field(None, description="system message: in the chat template, or else put before the prompt with a blank line")
    chat_template: Literal["auto", True, False] = Field(
        "auto", description="wrap the prompt in the tokenizer's chat template: auto (when it has one), true (it must), false")

    @field_validator("prompt")
    @classmethod
    def _template_parses(cls, template: str | None) -> str | None:
        if template is not None:
            PromptBuilder(template)
        return template


def uses_chat_template(loaded: LoadedModel, chat_template: Literal["auto", True, False], option: str = f"{OPTION}.chat_template") -> bool:
    """Whether prompts go through the tokenizer's chat template: ``auto`` when it has one, ``True`` when it must
    (a ModelError naming ``option`` if it has none), ``False`` never."""
    has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
    if chat_template is True and not has_template:
        raise ModelError(
            f"model {loaded.name_or_path!r}: {option} is true but its tokenizer has no chat template; "
            "set chat_template: auto or false"
        )
    return has_template and chat_template is not False


def chat_template_digest(loaded: LoadedModel, use_chat_template: bool) -> str | None:
    """The chat template's SHA-256 when prompts go through it, else None: for a task model's ``parameters``, so the
    prediction cache misses when a tokenizer's template changes."""
    template = loaded.tokenizer.chat_template if use_chat_template else None
    return hashlib.sha256(template.encode()).hexdigest() if template else None


def chat_text(loaded: LoadedModel, system: str | None, turns: Sequence[tuple[str, str]], prompt: str) -> str:
    """The chat template over the system message, earlier ``(user, assistant)`` turns (few-shot examples) and the
    prompt as the last user turn, ending with the generation prompt (the assistant's turn opening)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": prompt})
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class FewShotOptions(BaseModel):
    """Solved examples put before each prompt (lm-evaluation-harness's num_fewshot and fewshot sampler)."""

    model_config = ConfigDict(extra="forbid")
    k: NonNegativeInt = Field(0, description="how many solved examples go before each prompt")
    source: str | None = Field(
        None, description="JSON Lines file of solved examples with the data's field names, relative to the pipelines file; "
        "none: the pipeline's own data, without the record itself")
    sampler: Literal["first", "random", "balanced"] = Field(
        "first", description="first: the pool's first k; random: k drawn per record; balanced: drawn per record, labels taking turns")
    seed: int = Field(0, description="with the record's index, seeds the random and balanced samplers")


class ShotPool(list):
    """Solved examples to draw few-shot examples from, each a dict of fields (a list, as a file's records are).

    ``record_indices``, for a pool drawn from the pipeline's own data, holds
    each shot's record index: :func:`sample_shots` then never gives a record
    itself as one of its shots. ``places``, for a pool read from a file, holds
    each shot's ``file:line``, for errors a task finds in a shot later. Shots
    are grouped by label once, for the balanced sampler.
    """

    def __init__(
        self, shots: Sequence[dict[str, Any]] = (), record_indices: Sequence[int] | None = None, label_field: str = "label",
        places: Sequence[str] | None = None,
    ):
        super().__init__(shots)
        self.record_indices = list(record_indices) if record_indices is not None else None
        self.places = list(places) if places is not None else None
        self.position_of = {index: position for position, index in enumerate(self.record_indices or ())}
        self.by_label: dict[str, list[int]] = {}
        for position, shot in enumerate(self):
            self.by_label.setdefault(str(shot.get(label_field)), []).append(position)


def read_few_shot_source(
    path: str | Path | None, *, fields: Mapping[str, str] | None = None, required: Sequence[str] = ("text", "label"),
    folder: str | Path | None = None,
) -> ShotPool:
    """The solved examples of ``few_shot.source``: JSON Lines records, each a non-empty value in every ``required``
    field. ``fields`` maps canonical field names to the file's columns (the pipeline's ``fields:`` mapping): each
    record keeps its columns and gets each mapped value under its canonical name. A relative ``path`` is read from
    ``folder`` (the pipelines file's folder) when given."""
    if path is None:
        raise ConfigError(f"{OPTION}.few_shot.source is not set: a pool from the pipeline's own data is read in the task's "
                          "prepare, with shots_from_examples(context.examples())")
    fields = dict(fields or {})
    location = Path(path).expanduser()
    if folder is not None and not location.is_absolute():
        location = Path(folder) / location
    records, places = [], []
    try:
        lines = location.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"{OPTION}.few_shot.source: cannot read {location}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{OPTION}.few_shot.source: {location} is not UTF-8 text ({error.reason})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{OPTION}.few_shot.source {location}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{OPTION}.few_shot.source {location}:{number}: a record must be a JSON object")
        shot = {**record, **{name: record[column] for name, column in fields.items() if column in record}}
        missing = [name for name in required if not _present(shot.get(name))]
        if missing:
            named = ", ".join(repr(fields.get(name, name)) for name in missing)
            raise ConfigError(f"{OPTION}.few_shot.source {location}:{number}: a record needs a non-empty {named}")
        records.append(shot)
        places.append(f"{location}:{number}")
    return ShotPool(records, places=places)


def shots_from_examples(examples: Iterable[Example], required: Sequence[str] = ("text", "label")) -> ShotPool:
    """The pipeline's own examples as a pool (``few_shot.source`` absent): each example's columns and fields, the
    examples lacking a ``required`` field left out (a record without a label cannot show the answer)."""
    shots, indices = [], []
    for example in examples:
        if all(_present(example.fields.get(name)) for name in required):
            shots.append({**example.columns, **example.fields})
            indices.append(example.index)
    return ShotPool(shots, indices)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def check_pool_size(shots: Sequence[dict[str, Any]], few_shot: FewShotOptions, answer: str = "a label") -> None:
    """A ConfigError when the pool cannot give ``few_shot.k`` shots to every record (one fewer where the pool is
    the data itself: a record is never its own shot); ``answer`` names what a record of the data needs to be one."""
    own = isinstance(shots, ShotPool) and shots.record_indices is not None
    available = max(0, len(shots) - own)
    if few_shot.k > available:
        where = "the data has" if own else f"{few_shot.source} has"
        usable = f"{len(shots)} examples with {answer}, so {available} for each record" if own else f"only {len(shots)} examples"
        raise ConfigError(f"{OPTION}.few_shot: k is {few_shot.k} but {where} {usable}")


def sample_shots(shots: Sequence[dict[str, Any]], few_shot: FewShotOptions, index: int) -> list[dict[str, Any]]:
    """``few_shot.k`` solved examples for record ``index``; seeded by (seed, index), so the same whatever the
    batching. From a :class:`ShotPool` of the data itself, record ``index`` is never among them."""
    if not few_shot.k:
        return []
    pool = shots if isinstance(shots, ShotPool) else ShotPool(shots)
    own = pool.position_of.get(index)
    if few_shot.sampler == "first":
        return [shot for position, shot in enumerate(pool[: few_shot.k + 1]) if position != own][: few_shot.k]
    generator = random.Random(f"{few_shot.seed}:{index}")
    if few_shot.sampler == "random":
        # drawn among the positions without the record's own; those after it move up by one
        drawn = generator.sample(range(len(pool) - (own is not None)), few_shot.k)
        return [pool[position + (own is not None and position >= own)] for position in drawn]
    # balanced: each label's pool in a random order, the labels in a random order, taking turns
    queues = []
    for _, positions in sorted(pool.by_label.items()):
        drawn = generator.sample(positions, min(len(positions), few_shot.k + 1))
        queues.append([position for position in drawn if position != own][: few_shot.k])
    generator.shuffle(queues)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < few_shot.k and any(queues):
        for queue in queues:
            if queue and len(chosen) < few_shot.k:
                chosen.append(pool[queue.pop(0)])
    return chosen


class FewShotPromptOptions(PromptOptions):
    """Prompt options with solved examples before the prompt, joined as lm-evaluation-harness joins them."""

    target_delimiter: str = Field(" ", description="between a few-shot example's prompt and its answer (not used with a chat template)")
    fewshot_delimiter: str = Field("\n\n", description="between few-shot examples and before the prompt (not used with a chat template)")
    few_shot: FewShotOptions = Field(default_factory=lambda: FewShotOptions(), description="solved examples put before each prompt")


def few_shot_context(loaded: LoadedModel, options: FewShotPromptOptions, use_chat_template: bool, example: Example) -> str:
    """What the model reads before its answer: the system message, the record's few-shot examples (each a rendered
    prompt and its answer, as the task's ``check_example`` stored them) and its prompt; as chat turns
    (:func:`chat_text`), or joined as lm-evaluation-harness joins them: ``target_delimiter`` between an example's
    prompt and its answer, ``fewshot_delimiter`` between examples and before the prompt, and the system message
    before all with a blank line."""
    if "few_shot" not in example.fields:
        raise ModelError(f"record {example.index} was checked before the task's few-shot pool was read: call Task.prepare "
                         "before check_example (the runner does)")
    prompt, shots = example.fields["prompt"], [(question, answer) for question, answer in example.fields["few_shot"]]
    if use_chat_template:
        return chat_text(loaded, options.system, shots, prompt)
    text = options.fewshot_delimiter.join([f"{question}{options.target_delimiter}{answer}" for question, answer in shots] + [prompt])
    return f"{options.system}\n\n{text}" if options.system else text
