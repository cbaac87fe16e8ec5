"""Text generation with a decoder-only language model: a prompt in, its continuation out.

The prompt is built in two steps. :class:`~nlpflow.plugins.prompting.PromptBuilder` renders the
``prompt`` option, a Jinja2 template over the record's fields, when the
record is checked, and stores the result as the example's ``prompt`` field,
so the prediction cache keys on the rendered text. :class:`CausalGenerator`
then wraps it in the tokenizer's chat template (``chat_template``, with the
``system`` message) or puts ``system`` before it, tokenizes, and cuts a prompt
longer than the context from the left, keeping its end.

A row ends at the tokenizer's end-of-sequence and end-of-turn tokens (always:
a fixed ``"\\n\\n"`` would cut chat models short, lm-evaluation-harness issue
#1837), at any ``stop`` string, or after ``max_new_tokens``. Greedy and beam
search are deterministic; sampling is seeded per batch (see
``causal_generate`` in :mod:`nlpflow.plugins.torch_backend`). With references,
the translation and summarization metrics score the continuation.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from nlpflow import (
    CHARACTERS_PER_TOKEN, Backend, Example, Features, LoadedModel, ModelConfig, ModelError, Prediction,
    TaskModel, hookimpl, input_limit,
)
from nlpflow.plugins.prompting import PromptBuilder, PromptOptions, chat_template_digest, chat_text, uses_chat_template
from nlpflow.plugins.seq2seq import TextToTextTask

log = logging.getLogger("nlpflow.plugins.text_generation")

#: end-of-turn tokens of common chat formats (ChatML, Llama 3, Phi-3, Gemma); each ends a row where the tokenizer has it
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


class GenerationSettings(BaseModel):
    """How a causal LM continues a prompt; shared by every task that generates with one."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: PositiveInt = Field(128, description="most tokens generated per row")
    stop: list[str] = Field([], description="strings that end a row, besides the tokenizer's end-of-sequence and end-of-turn tokens")
    num_beams: PositiveInt = Field(1, description="beam search with this many beams (1: greedy)")
    do_sample: bool = Field(False, description="sample instead of greedy or beam search, seeded by seed")
    temperature: PositiveFloat | None = Field(None, description="sampling temperature (do_sample only)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass (do_sample only)")
    top_k: NonNegativeInt | None = Field(None, description="sample among the k likeliest tokens (do_sample only)")
    seed: int = Field(0, description="seed of sampling; with the batch's inputs it seeds each batch")

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, stop: list[str] | None) -> list[str] | None:
        if stop and any(not text for text in stop):
            raise ValueError("an empty stop string would end every row at once")
        return stop

    @model_validator(mode="after")
    def _sampling_settings_need_sampling(self) -> "GenerationSettings":
        given = [name for name in ("temperature", "top_p", "top_k") if getattr(self, name) is not None]
        if given and not self.do_sample:
            raise ValueError(f"{', '.join(given)} only apply when sampling; set do_sample: true or remove them")
        return self


class TextGenerationOptions(GenerationSettings, PromptOptions):
    prompt: str = Field("{{ prompt }}", description="Jinja2 template over the record's fields (the prompt field and any other column)")


def end_token_ids(loaded: LoadedModel) -> list[int]:
    """The ids that end a row: the tokenizer's and checkpoint's end-of-sequence ids and the end-of-turn tokens it has."""
    tokenizer = loaded.tokenizer
    configured = getattr(loaded.checkpoint, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    vocabulary = tokenizer.get_vocab()
    ids += [vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary]
    return sorted({int(token) for token in ids if token is not None})


class TextGeneration(TextToTextTask):
    name = "text-generation"
    description = "Continue a prompt (a Jinja2 template over the record) with a decoder-only language model; BLEU, chrF and ROUGE against a reference"
    input_fields = ("prompt",)
    reference_fields = ("reference",)
    default_metrics = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
    Options = TextGenerationOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.prompt = PromptBuilder(self.options.prompt)

    def check_example(self, example: Example) -> None:
        super().check_example(example)
        # the record's columns, with the mapped fields under their task names (``prompt`` for the prompt column)
        fields = {**example.columns, **example.fields}
        example.fields["prompt"] = self.prompt.render(fields)

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        # the backend refuses a checkpoint that is not a causal LM, naming the heads it fits
        return CausalGenerator(backend.load(model, "causal-generation", require_fast_tokenizer=False), self.options)


class CausalGenerator(TaskModel):
    """Wraps each rendered prompt for the model, cuts it from the left to the context, and decodes the new tokens.

    Subclasses change what the model reads (:meth:`model_text`), which strings end a row (:meth:`stop_strings`)
    and what is made of the continuation (:meth:`decode`)."""

    #: where the options sit in the task's options, for error messages
    options_at: ClassVar[str] = "options"

    def __init__(self, loaded: LoadedModel, options: GenerationSettings | TextGenerationOptions):
        super().__init__(loaded)
        self.options = options
        tokenizer = loaded.tokenizer
        self.use_chat_template = uses_chat_template(loaded, options.chat_template, f"{self.options_at}.chat_template")
        # the window holds the prompt and the tokens generated after it
        self.prompt_limit = max(1, input_limit(loaded) - options.max_new_tokens)
        self.end_ids = end_token_ids(loaded)
        if not self.end_ids:
            raise ModelError(f"model {loaded.name_or_path!r}: its tokenizer has no end-of-sequence token, so a row could never end before max_new_tokens")
        pad = tokenizer.pad_token_id
        self.generate_options: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "num_beams": options.num_beams,
            "do_sample": options.do_sample,
            "eos_token_id": self.end_ids,
            "pad_token_id": int(pad) if pad is not None else self.end_ids[0],
        }
        if options.do_sample:
            sampling = {name: getattr(options, name) for name in ("temperature", "top_p", "top_k") if getattr(options, name) is not None}
            self.generate_options.update(sampling, seed=options.seed)
        self.stop = self.stop_strings()
        if self.stop:
            self.generate_options["stop_strings"] = list(self.stop)

    def stop_strings(self) -> list[str]:
        """The strings that end a row (the end-of-sequence and end-of-turn tokens always do)."""
        return list(self.options.stop)

    def parameters(self) -> dict[str, Any]:
        return {
            "prompt_limit": self.prompt_limit,
            "truncate": "left",
            "chat_template": chat_template_digest(self.loaded, self.use_chat_template),
        }

    def head_options(self) -> dict[str, Any]:
        return self.generate_options

    def model_text(self, example: Example) -> str:
        """The rendered prompt as the model reads it: in the chat template, or after the system message."""
        system, prompt = self.options.system, example.fields["prompt"]
        if self.use_chat_template:
            return chat_text(self.loaded, system, [], prompt)
        return f"{system}\n\n{prompt}" if system else prompt

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        limit = self.prompt_limit
        usable = limit * CHARACTERS_PER_TOKEN
        texts = [self.model_text(example) for example in examples]
        # a huge prompt is cut to its last characters first: only its last ``limit`` tokens are kept anyway
        shortened = [len(text) > usable for text in texts]
        texts = [text[-usable:] if cut else text for text, cut in zip(texts, shortened)]
        # the chat template already holds the special tokens the model expects
        encoded = self.loaded.tokenizer(texts, add_special_tokens=not self.use_chat_template, truncation=False, padding=False)
        features, truncated = [], 0
        for position, (example, ids, cut) in enumerate(zip(examples, encoded["input_ids"], shortened)):
            if cut or len(ids) > limit:
                ids = ids[-limit:]
                example.notes["truncated"] = True
                truncated += 1
            features.append(Features(position, {"input_ids": list(ids), "attention_mask": [1] * len(ids)}))
        if truncated:
            log.warning(
                "warning: %d of %d prompts (records %d-%d) are longer than the %d tokens the model's context leaves "
                "after max_new_tokens; their beginnings were cut", truncated, len(examples), examples[0].index, examples[-1].index, limit,
            )
        return features

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        ids = outputs[0]["sequences"]
        text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
        found = [position for position in (text.find(stop) for stop in self.stop) if position >= 0]
        if found:
            return Prediction(text[: min(found)], {"finish": "stop", "new_tokens": len(ids)})
        finish = "length" if len(ids) >= self.options.max_new_tokens else "stop"
        return Prediction(text, {"finish": finish, "new_tokens": len(ids)})


@hookimpl
def register_tasks(register):
    register(TextGeneration)
