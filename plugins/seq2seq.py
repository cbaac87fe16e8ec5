"""The sequence-to-sequence model shared by translation and summarization: encode, generate, decode.

Not a plugin (it registers nothing): :mod:`nlpflow.plugins.translation` and
:mod:`nlpflow.plugins.summarization` build a :class:`Seq2SeqModel` in their ``load``.
Generation is deterministic (greedy or beam search; sampling is refused), so a
prediction depends only on the weights, the input and :meth:`Seq2SeqModel.parameters`,
which is what the prediction cache keys on.

Inputs longer than the model window are cut in one of two ways:

- by tokens (translation): the tokenizer truncates, and the example is marked
  ``notes["truncated"]``;
- by whole sentences (summarization): spaCy's rule-based sentencizer splits the
  text and the longest run of leading sentences that fits the window is kept;
  only a first sentence that alone is too long is cut by tokens.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from nlpflow import (
    Backend, Example, ExampleError, Features, LoadedModel, ModelConfig, ModelError, Prediction, Task, TaskModel, input_limit, json_type, tokenize,
)

#: option name -> ``generate()`` keyword; only options the pipeline sets are passed
GENERATION_OPTIONS = ("num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size", "early_stopping")


class GenerationOptions(BaseModel):
    """Generation settings; unset ones keep the checkpoint's ``generation_config``."""

    model_config = ConfigDict(extra="forbid")
    num_beams: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: NonNegativeInt | None = None
    early_stopping: bool | None = None
    # sampling would make predictions (and the cache) non-deterministic: only false is accepted
    do_sample: Literal[False] = Field(False, description="must be false: nlpflow generates with greedy or beam search")
    prefix: str = Field("", description='text put before every input (T5 style, e.g. "translate English to German: ")')

    def generation_kwargs(self) -> dict[str, Any]:
        chosen = {name: getattr(self, name) for name in GENERATION_OPTIONS if getattr(self, name) is not None}
        return {**chosen, "do_sample": False}


class TextToTextTask(Task):
    """Field checks shared by tasks that turn one text into another (translation, summarization).

    The single input field must be a non-empty string; the reference a string
    or a non-empty list of strings; a given ``prediction`` a string (empty is
    allowed: it scores zero) or null.
    """

    def check_example(self, example: Example) -> None:
        (source,) = self.input_fields
        (reference,) = self.reference_fields
        check_text(example.fields.get(source), source)
        if example.fields.get(reference) is not None:
            example.fields[reference] = check_references(example.fields[reference], reference)
        if example.fields.get("prediction") is not None:
            check_text(example.fields["prediction"], "prediction", allow_empty=True)

    def parse_prediction(self, value: Any) -> Prediction:
        if value is None:
            return Prediction("")
        if not isinstance(value, str):
            raise ExampleError(f"must be a string, got {json_type(value)}")
        return Prediction(value)


def check_text(value: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ExampleError(f"field {field!r} must be a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise ExampleError(f"field {field!r} is empty")
    return value


def check_references(value: Any, field: str) -> str | list[str]:
    """One reference string, or a non-empty list of them."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and not value:
        raise ExampleError(f"field {field!r} is an empty list; give at least one reference")
    raise ExampleError(f"field {field!r} must be a string or a list of strings, got {json_type(value)}")




def is_seq2seq_architecture(architecture: str) -> bool:
    """True for a generation checkpoint: ``*ForConditionalGeneration``, Marian's ``*MTModel``, or any
    class transformers lists for ``AutoModelForSeq2SeqLM``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return (
        architecture.endswith("ForConditionalGeneration")
        or architecture.endswith("MTModel")
        or architecture in set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values())
    )


def load_seq2seq(model: ModelConfig, backend: Backend, task: str) -> LoadedModel:
    """A generation checkpoint on ``backend``, refused with a ModelError when it has no generation head."""
    architectures = list(backend.checkpoint_config(model).architectures or [])
    if not any(is_seq2seq_architecture(a) for a in architectures):
        found = ", ".join(architectures) or "no architectures in config.json"
        raise ModelError(
            f"task {task!r}: model {model.name_or_path!r} is not a sequence-to-sequence generation checkpoint "
            f"(expected *ForConditionalGeneration or *MTModel, found {found}), nor a causal language model to prompt "
            "(*ForCausalLM, *LMHeadModel)"
        )
    # generation needs no character offsets, so python tokenizers (MarianTokenizer) are fine
    return backend.load(model, "generation", require_fast_tokenizer=False)


class Seq2SeqModel(TaskModel):
    """Encodes one text field (with ``prefix``), has the backend generate on each batch, decodes the text.

    ``field`` is the example field to read; ``by_sentences`` switches input
    truncation from tokens to whole leading sentences (spaCy sentencizer,
    ``lang``). ``forced_bos_token_id`` selects the target language of
    multilingual models (M2M100, NLLB, mBART).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        options: GenerationOptions,
        field: str,
        *,
        by_sentences: bool = False,
        lang: str = "en",
        forced_bos_token_id: int | None = None,
        source_lang: str | None = None,
    ):
        super().__init__(loaded)
        self.options = options
        self.field = field
        self.by_sentences = by_sentences
        self.lang = lang
        self.max_length = input_limit(loaded)
        self.source_lang = source_lang
        self.generate_kwargs = options.generation_kwargs()
        if forced_bos_token_id is not None:
            self.generate_kwargs["forced_bos_token_id"] = int(forced_bos_token_id)
        self._nlp = None

    def parameters(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "prefix": self.options.prefix,
            "generate": dict(sorted(self.generate_kwargs.items())),
            "source_lang": self.source_lang,
            "truncate": f"sentences ({self.lang} sentencizer)" if self.by_sentences else "tokens",
        }

    # -- encode -------------------------------------------------------------

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        texts = [self.options.prefix + example.fields[self.field] for example in examples]
        rows, truncated = self._tokenize_by_sentences(examples, texts) if self.by_sentences else self._tokenize(texts)
        for example, cut in zip(examples, truncated):
            if cut:
                example.notes["truncated"] = True
        return [Features(position, inputs) for position, inputs in enumerate(rows)]

    def _tokenize(self, texts: Sequence[str]) -> tuple[list[dict[str, list[int]]], list[bool]]:
        """Token-truncated inputs; python tokenizers (no overflow mapping) are measured, then cut."""
        tokenizer = self.loaded.tokenizer
        if getattr(tokenizer, "is_fast", False):
            return tokenize(self.loaded, texts, self.max_length)
        full = tokenizer(list(texts), truncation=False, padding=False)
        names = [name for name in tokenizer.model_input_names if name in full]
        truncated = [len(ids) > self.max_length for ids in full["input_ids"]]
        long = [i for i, cut in enumerate(truncated) if cut]
        rows = [{name: list(full[name][i]) for name in names} for i in range(len(texts))]
        if long:
            cut = tokenizer([texts[i] for i in long], truncation=True, max_length=self.max_length, padding=False)
            for position, i in enumerate(long):
                rows[i] = {name: list(cut[name][position]) for name in names}
        return rows, truncated

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.loaded.tokenizer(list(texts), add_special_tokens=True, truncation=False, padding=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _tokenize_by_sentences(self, examples: Sequence[Example], texts: list[str]) -> tuple[list[dict[str, list[int]]], list[bool]]:
        """Inputs that fit are tokenized once; longer ones are cut to their leading whole sentences that fit
        (spaCy sentencizer) and tokenized again, and only those count as truncated."""
        tokenizer = self.loaded.tokenizer
        full = tokenizer(texts, truncation=False, padding=False)
        names = [name for name in tokenizer.model_input_names if name in full]
        rows = [{name: list(full[name][i]) for name in names} for i in range(len(texts))]
        truncated = [len(ids) > self.max_length for ids in full["input_ids"]]
        long = [i for i, cut in enumerate(truncated) if cut]
        if long:
            if self._nlp is None:
                from nlpflow.plugins.spacy_steps import load_spacy

                self._nlp = load_spacy(self.lang, None, ("senter",))
            documents = (examples[i].fields[self.field] for i in long)
            shortened = [self._leading_sentences(self.options.prefix, doc) for doc in self._nlp.pipe(documents)]
            for i, inputs in zip(long, self._tokenize(shortened)[0]):
                rows[i] = inputs
        return rows, truncated

    def _leading_sentences(self, prefix: str, doc) -> str:
        """The most leading whole sentences whose tokenization fits the window.

        Per-sentence token counts give a first guess, which is then checked
        against the tokenization of the joined text (subword merges across a
        sentence boundary can change the count by a token or two). When not even
        the first sentence fits, it is returned whole and the tokenizer cuts it.
        """
        text = doc.text
        ends = [sentence.end_char for sentence in doc.sents]
        pieces = [text[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        tokenizer = self.loaded.tokenizer
        counts = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]] if pieces else []
        budget = self.max_length - tokenizer.num_special_tokens_to_add(pair=False) - len(
            tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        )
        keep, used = 0, 0
        for count in counts:
            if used + count > budget:
                break
            keep, used = keep + 1, used + count

        def candidate(k: int) -> str:
            return prefix + text[: ends[k - 1]].rstrip()

        def fits(k: int) -> bool:
            return self._token_counts([candidate(k)])[0] <= self.max_length

        while keep > 1 and not fits(keep):
            keep -= 1
        while 0 < keep < len(ends) and fits(keep + 1):
            keep += 1
        return candidate(max(keep, 1))

    # -- forward and decode ----------------------------------------------------

    def head_options(self) -> dict[str, Any]:
        return self.generate_kwargs

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        text = self.loaded.tokenizer.decode(outputs[0]["sequences"], skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return Prediction(text.strip())
