"""Prompts for causal language models: a Jinja2 template over a record's fields, and the tokenizer's chat template.

Shared by the tasks that prompt a decoder-only model (text generation, classification by log-likelihood, and
question answering, translation and summarization by generation), so the ``prompt``, ``system`` and
``chat_template`` options mean the same thing in each.
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator, model_validator

from nlpflow import ConfigError, LoadedModel, ModelError


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


def is_causal_lm(checkpoint: Any) -> bool:
    """Whether a checkpoint's config describes a decoder-only language model: an architecture transformers maps to
    ``AutoModelForCausalLM`` or named ``*ForCausalLM`` / ``*LMHeadModel``, and no encoder-decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(checkpoint, "is_encoder_decoder", False):
        return False
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return any(
        architecture in causal_classes or architecture.endswith(("ForCausalLM", "LMHeadModel"))
        for architecture in getattr(checkpoint, "architectures", None) or []
    )


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


def uses_chat_template(loaded: LoadedModel, chat_template: Literal["auto", True, False]) -> bool:
    """Whether prompts go through the tokenizer's chat template: ``auto`` when it has one, ``True`` when it must
    (a ModelError if it has none), ``False`` never."""
    has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
    if chat_template is True and not has_template:
        raise ModelError(
            f"model {loaded.name_or_path!r}: options.chat_template is true but its tokenizer has no chat template; "
            "set chat_template: auto or false"
        )
    return has_template and chat_template is not False


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
    source: str | None = Field(None, description="JSON Lines file of solved examples with the data's field names (text, label); needed when k > 0")
    sampler: Literal["first", "random", "balanced"] = Field(
        "first", description="first: the file's first k; random: k drawn per record; balanced: drawn per record, labels taking turns")
    seed: int = Field(0, description="with the record's index, seeds the random and balanced samplers")

    @model_validator(mode="after")
    def _source_when_k(self) -> "FewShotOptions":
        if self.k and not self.source:
            raise ValueError("few_shot.k > 0 needs few_shot.source, a JSON Lines file of solved examples")
        return self


def read_few_shot_source(path: str) -> list[dict[str, Any]]:
    """The solved examples of ``few_shot.source``: JSON Lines records with a non-empty ``text`` and a ``label``."""
    records = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as error:
        raise ConfigError(f"options.few_shot.source: cannot read {path}: {error.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"options.few_shot.source {path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or record.get("label") in (None, ""):
            raise ConfigError(f"options.few_shot.source {path}:{number}: a record needs a string 'text' and a 'label'")
        records.append(record)
    return records


def sample_shots(shots: Sequence[dict[str, Any]], few_shot: FewShotOptions, index: int) -> list[dict[str, Any]]:
    """``few_shot.k`` solved examples for record ``index``; seeded by (seed, index), so the same whatever the batching."""
    if not few_shot.k:
        return []
    if few_shot.sampler == "first":
        return shots[: few_shot.k]
    generator = random.Random(f"{few_shot.seed}:{index}")
    if few_shot.sampler == "random":
        return generator.sample(shots, few_shot.k)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for shot in shots:
        by_label.setdefault(str(shot["label"]), []).append(shot)
    pools = [generator.sample(pool, len(pool)) for _, pool in sorted(by_label.items())]
    generator.shuffle(pools)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < few_shot.k:
        for pool in pools:
            if pool and len(chosen) < few_shot.k:
                chosen.append(pool.pop())
    return chosen


class FewShotPromptOptions(PromptOptions):
    """Prompt options with solved examples before the prompt, joined as lm-evaluation-harness joins them."""

    target_delimiter: str = Field(" ", description="between a few-shot example's prompt and its answer (not used with a chat template)")
    fewshot_delimiter: str = Field("\n\n", description="between few-shot examples and before the prompt (not used with a chat template)")
    few_shot: FewShotOptions = Field(default_factory=lambda: FewShotOptions(), description="solved examples put before each prompt")
