"""Question answering, translation and summarization by prompting a causal LM: the options, the few-shot
examples, the stop strings and the answer step those three tasks share.

Not a plugin (it registers nothing): each task keeps a :class:`PromptedGeneration` for its ``prompting`` options,
which renders the prompt and the few-shot examples when a record is checked (so ``validate`` reports a template
naming a missing field before any model loads) and loads a :class:`PromptedAnswerer`, the text-generation model
stage with lm-evaluation-harness's few-shot layout, its default stop strings and an answer step.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nlpflow import Backend, ConfigError, Example, ExampleError, ModelConfig, ModelError, Prediction, TaskContext, TaskModel, is_causal_lm
from nlpflow.plugins.prompting import (
    OPTION, FewShotPromptOptions, PromptBuilder, ShotPool, check_pool_size, few_shot_context, read_few_shot_source, sample_shots,
    shots_from_examples,
)
from nlpflow.plugins.text_generation import CausalGenerator, GenerationSettings


class AnswerOptions(BaseModel):
    """How the answer is taken from the continuation, before the task's metrics score it."""

    model_config = ConfigDict(extra="forbid")
    first_line: bool = Field(False, description="keep the continuation's first non-blank line")
    regex: str | None = Field(None, description="a regular expression with one group: the answer is the group of its first match (empty when none)")
    strip: bool = Field(True, description="strip whitespace from both ends of the answer")

    @field_validator("regex")
    @classmethod
    def _one_group(cls, regex: str | None) -> str | None:
        if regex is None:
            return None
        try:
            groups = re.compile(regex).groups
        except re.error as error:
            raise ValueError(f"answer.regex does not compile: {error}") from None
        if groups != 1:
            raise ValueError(f"answer.regex must have exactly one group (the answer); {regex!r} has {groups}")
        return regex


def extract_answer(continuation: str, options: AnswerOptions) -> tuple[str, bool]:
    """The answer in a continuation, and whether ``options.regex`` matched (True without a regex):
    first line, then the regex's group, then strip, in that order."""
    text = continuation
    if options.first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    matched = True
    if options.regex is not None:
        found = re.search(options.regex, text)
        matched = found is not None
        text = (found.group(1) or "") if found else ""
    return (text.strip() if options.strip else text), matched


class PromptedGenerationOptions(GenerationSettings, FewShotPromptOptions):
    """A task's ``prompting`` options: prompt, few-shot examples, generation settings and the answer step."""

    stop: list[str] | None = Field(
        None, description="strings that end a row (besides end-of-sequence and end-of-turn); default: fewshot_delimiter, "
        "or none with a chat template")
    answer: AnswerOptions = Field(default_factory=lambda: AnswerOptions(), description="how the answer is taken from the continuation")

    @field_validator("few_shot")
    @classmethod
    def _no_labels_to_balance(cls, few_shot: Any) -> Any:
        if few_shot.sampler == "balanced":
            raise ValueError("few_shot.sampler 'balanced' takes turns between labels, and generated answers have none; use first or random")
        return few_shot


def first_text(value: str | list[str]) -> str:
    """A reference's first text: the string itself, or a list's first."""
    return value if isinstance(value, str) else value[0]


class PromptedGeneration:
    """One task's prompting: the template (its ``prompt`` option, else the task's default) and the few-shot pool.

    ``answer_field`` names the record field whose first text answers a few-shot example (QA: ``answers``,
    translation: ``reference``, summarization: ``summary``); ``normalise`` turns a shot's value of it into the
    task's form (a string or list of strings), raising ExampleError for one it cannot take. ``constants`` are
    extra template variables every record has (translation's language names).

    ``active`` says whether the task prompts at all: :meth:`prepare` sets it from the pipeline's model (a causal
    LM, or the task's method saying so); None until then, when records are rendered anyway so a template naming
    a missing field is reported."""

    def __init__(self, options: PromptedGenerationOptions, default_prompt: str, answer_field: str,
                 normalise: Callable[[Any], Any], constants: Mapping[str, Any] | None = None):
        self.options = options
        self.builder = PromptBuilder(options.prompt or default_prompt, option=f"{OPTION}.prompt")
        self.answer_field = answer_field
        self.normalise = normalise
        self.constants = dict(constants or {})
        self.active: bool | None = None
        #: the few-shot pool; None until :meth:`prepare` has read it (no few-shot examples are rendered before)
        self.shots: list[dict[str, Any]] | None = None if options.few_shot.k else []

    def prepare(self, context: TaskContext, *, method_prompts: bool = False) -> None:
        """Decides :attr:`active` (``method_prompts``: the task's method prompts whatever the checkpoint), then
        reads the few-shot pool: ``few_shot.source`` relative to the pipelines file, with the pipeline's field
        names, or without a source the pipeline's own examples (a record is never its own shot)."""
        if context.model is None:
            self.active = False  # no model: the data's own predictions are scored, nothing is prompted
        elif method_prompts:
            self.active = True
        elif context.backend is not None:
            try:
                self.active = is_causal_lm(context.backend.checkpoint_config(context.model))
            except ModelError:
                self.active = None  # a checkpoint that cannot be read is reported where the model loads
        few_shot = self.options.few_shot
        if self.active is False or not few_shot.k:
            return
        self.shots = None
        if few_shot.source is not None:
            needed = [name for name in self.builder.variables if name not in self.constants]
            pool = read_few_shot_source(few_shot.source, fields=context.fields, required=(*needed, self.answer_field), folder=context.folder)
            for shot, place in zip(pool, pool.places):
                try:
                    shot[self.answer_field] = self.normalise(shot[self.answer_field])
                except ExampleError as error:
                    raise ConfigError(f"{OPTION}.few_shot.source {place}: {error}") from None
                if not shot[self.answer_field]:
                    raise ConfigError(f"{OPTION}.few_shot.source {place}: field {self.answer_field!r} has no answer to show")
        else:
            # check_example has normalised each answer; a record answered by nothing (SQuAD 2.0) shows no answer
            own = shots_from_examples(context.examples(), required=(self.answer_field,))
            kept = [position for position, shot in enumerate(own) if shot[self.answer_field]]
            pool = ShotPool([own[position] for position in kept], [own.record_indices[position] for position in kept])
        check_pool_size(pool, few_shot, answer=f"a non-empty {self.answer_field!r}")
        self.shots = pool

    def render(self, example: Example) -> None:
        """The record's prompt and its few-shot examples (each a rendered prompt and its answer), stored in its
        fields for :class:`PromptedAnswerer`; nothing when the task does not prompt."""
        if self.active is False:
            return
        fields = {**self.constants, **example.columns, **example.fields}
        example.fields["prompt"] = self.builder.render(fields)
        if self.shots is not None:
            example.fields["few_shot"] = [
                [self.builder.render({**self.constants, **shot}), first_text(shot[self.answer_field])]
                for shot in sample_shots(self.shots, self.options.few_shot, example.index)
            ]

    def cache_inputs(self, example: Example) -> Mapping[str, Any] | None:
        """What the model reads of a prompted record, for the prediction cache's key: the rendered prompt and
        few-shot examples (which depend on the record's index and, drawn from the data itself, on the other
        records); None when the task does not prompt."""
        if not self.active:
            return None
        return {name: example.fields.get(name) for name in ("prompt", "few_shot")}

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        # the backend refuses a checkpoint that is not a causal LM, naming the heads it fits
        loaded = backend.load(model, "causal-generation", require_fast_tokenizer=False)
        return PromptedAnswerer(loaded, self.options)


def refuse_causal_lm(model: ModelConfig, backend: Backend, task: str, method: str) -> None:
    """A ModelError when a task's encoder method is given a causal LM, naming the method that fits it."""
    checkpoint = backend.checkpoint_config(model)
    if is_causal_lm(checkpoint):
        found = ", ".join(getattr(checkpoint, "architectures", None) or [])
        raise ModelError(
            f"task {task!r}: model {model.name_or_path!r} is a causal language model ({found}); method {method!r} needs an encoder "
            "checkpoint. Methods that fit it: generate (prompting it; method auto picks it)"
        )


class PromptedAnswerer(CausalGenerator):
    """The causal-generation model stage, reading the few-shot examples before the prompt and answering from the
    continuation.

    Without a chat template, the model reads the system message, then each few-shot example (its prompt,
    ``target_delimiter`` and its answer) and the prompt, joined by ``fewshot_delimiter``; rows stop at
    ``fewshot_delimiter`` too, since a base model goes on to write the next example. With a chat template, each
    example is a user and an assistant turn and rows stop at end-of-turn only (a fixed "\\n\\n" cuts chat models
    short: lm-evaluation-harness issue #1837)."""

    options: PromptedGenerationOptions
    options_at = OPTION

    def stop_strings(self) -> list[str]:
        if self.options.stop is not None:
            return list(self.options.stop)
        return [] if self.use_chat_template else [self.options.fewshot_delimiter]

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "stop": self.stop}

    def model_text(self, example: Example) -> str:
        return few_shot_context(self.loaded, self.options, self.use_chat_template, example)

    def decode(self, example: Example, features, outputs) -> Prediction:
        generated = super().decode(example, features, outputs)
        answer, matched = extract_answer(generated.value, self.options.answer)
        details = {"continuation": generated.value, **generated.details}
        if not matched:
            details["answer_matched"] = False
        return Prediction(answer, details)
