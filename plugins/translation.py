"""Machine translation with any sequence-to-sequence checkpoint, scored with sacreBLEU's BLEU, chrF and TER.

The model is an ``AutoModelForSeq2SeqLM`` (Marian opus-mt, T5, BART, M2M100,
NLLB, ...) run by :class:`plugins.seq2seq.Seq2SeqModel`. Multilingual models
take ``source_lang``/``target_lang`` (the tokenizer's ``src_lang`` and the
forced first token of the output); T5-style models take a ``prefix``.

A causal LM translates by prompting instead (``options.prompting``, see
:mod:`nlpflow.plugins.prompted_generation`): its default prompt is
lm-evaluation-harness's ``"{source_lang} phrase: {source}\n{target_lang} phrase:"``,
with ``source_lang`` and ``target_lang`` as language names (``English``, ``German``).

The metrics keep sacreBLEU's own per-sentence sufficient statistics (from the
metric's ``_extract_corpus_statistics``, the function ``corpus_score`` itself
uses), so the sum over any set of rows gives exactly ``corpus_score`` on those
sentences, and bootstrap resampling needs no re-tokenisation. A reference may
be one string or a list of strings; examples may have different numbers of
references (sacreBLEU's ``None`` padding).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from nlpflow import Backend, Example, LoadedModel, Metric, ModelConfig, ModelError, TaskContext, TaskModel, hookimpl, is_causal_lm
from nlpflow.plugins.prompted_generation import PromptedGeneration, PromptedGenerationOptions
from nlpflow.plugins.seq2seq import GenerationOptions, Seq2SeqModel, TextToTextTask, check_references, load_seq2seq


class TranslationOptions(GenerationOptions):
    source_lang: str | None = Field(None, description='source language code of a multilingual model (M2M100: "en"; NLLB: "eng_Latn"); sets tokenizer.src_lang')
    target_lang: str | None = Field(None, description="target language code; its token is forced as the first generated token")
    prompting: PromptedGenerationOptions = Field(
        default_factory=lambda: PromptedGenerationOptions(),
        description="a causal LM: the prompt (default \"{source_lang} phrase: {{ source }}\\n{target_lang} phrase:\", "
        "the languages as names), few-shot examples, generation settings and answer step")




class Translation(TextToTextTask):
    name = "translation"
    description = "Translate a source text with a sequence-to-sequence model; BLEU, chrF and TER against one or more references"
    input_fields = ("source",)
    reference_fields = ("reference",)
    default_metrics = ("bleu", "chrf", "ter")
    Options = TranslationOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        options = self.options
        languages = {name: value for name, value in (("source_lang", options.source_lang), ("target_lang", options.target_lang)) if value}
        # a sequence-to-sequence checkpoint ignores the prompt, so it renders (unread) without the language names too
        default = (f"{options.source_lang or 'Source'} phrase: {{{{ source }}}}\n"
                   f"{options.target_lang or 'Target'} phrase:")
        self.prompting = PromptedGeneration(options.prompting, default, "reference", lambda value: check_references(value, "reference"), languages)

    def check_example(self, example: Example) -> None:
        super().check_example(example)
        self.prompting.render(example)

    def prepare(self, context: TaskContext) -> None:
        self.prompting.prepare(context)

    def cache_inputs(self, example: Example) -> Mapping[str, Any]:
        prompted = self.prompting.cache_inputs(example)
        return super().cache_inputs(example) if prompted is None else prompted

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        if is_causal_lm(backend.checkpoint_config(model)):
            if self.options.prompting.prompt is None and not self.options.target_lang:
                raise ModelError(
                    f"model {model.name_or_path!r} is a causal language model, prompted to translate: its default prompt "
                    "names the languages, so set options.target_lang (and source_lang) to language names (German, English), "
                    "or write options.prompting.prompt"
                )
            return self.prompting.load(model, backend)
        loaded = load_seq2seq(model, backend, self.name)
        forced_bos = set_languages(loaded, self.options.source_lang, self.options.target_lang)
        return Seq2SeqModel(loaded, self.options, "source", forced_bos_token_id=forced_bos, source_lang=self.options.source_lang)


def set_languages(loaded: LoadedModel, source_lang: str | None, target_lang: str | None) -> int | None:
    """Set the tokenizer's source language and return the target language's token id (None when not set)."""
    tokenizer = loaded.tokenizer
    name = loaded.name_or_path
    if source_lang is not None:
        if not hasattr(tokenizer, "src_lang"):
            raise ModelError(
                f"model {name!r}: options.source_lang is set but its tokenizer ({type(tokenizer).__name__}) has no language codes; "
                "drop source_lang/target_lang, or use options.prefix for T5-style models"
            )
        try:
            tokenizer.src_lang = source_lang
        except (KeyError, ValueError) as error:
            raise ModelError(f"model {name!r}: unknown source_lang {source_lang!r} ({type(error).__name__}: {error})") from None
    if target_lang is None:
        return None
    token_id = None
    if hasattr(tokenizer, "get_lang_id"):  # M2M100: "de" -> "__de__"
        try:
            token_id = tokenizer.get_lang_id(target_lang)
        except (KeyError, ValueError):
            token_id = None
    if token_id is None:
        token_id = tokenizer.convert_tokens_to_ids(target_lang)  # NLLB, mBART: the code is a token
        if token_id is None or token_id == tokenizer.unk_token_id:
            token_id = None
    if token_id is None:
        raise ModelError(
            f"model {name!r}: target_lang {target_lang!r} is not a language code of its tokenizer "
            f"({type(tokenizer).__name__}); use the model's own codes (M2M100: 'de', NLLB: 'deu_Latn', mBART: 'de_DE')"
        )
    return int(token_id)


# --- metrics -----------------------------------------------------------------


def reference_streams(references: Sequence[Any]) -> list[list[str | None]]:
    """Per-example references (string or list) as sacreBLEU's streams: one list per reference position,
    ``None`` where an example has fewer references."""
    as_lists = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max((len(r) for r in as_lists), default=0)
    return [[refs[i] if i < len(refs) else None for refs in as_lists] for i in range(width)]


def sum_rows(stats: np.ndarray, as_int: bool) -> list[Any]:
    """Column sums equal to sacrebleu.utils.sum_of_lists: exact integers for counts (BLEU, chrF), and
    floats added one row after another (np.cumsum is sequential) for TER, so they round identically.
    Vectorised, because bootstrap intervals and paired tests score thousands of resamples."""
    if as_int:
        return np.rint(stats).astype(np.int64).sum(axis=0).tolist()
    return np.cumsum(stats, axis=0)[-1].tolist()


class _SacreMetric(Metric):
    """A sacreBLEU metric with per-sentence sufficient statistics as the stats rows."""

    tasks = ("translation", "text-generation")
    scale = "0-100"
    #: statistics are integer counts (BLEU, chrF) rather than floats (TER)
    integer_stats: ClassVar[bool] = True

    def __init__(self, options=None):
        super().__init__(options)
        self.metric = self.build()
        self._reference_counts: set[int] = set()

    def build(self):
        raise NotImplementedError

    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        if not len(predictions):
            return np.zeros((0, 1))
        hypotheses = ["" if p is None else str(p) for p in predictions]
        streams = reference_streams(references)
        self._reference_counts |= {1 if isinstance(r, str) else len(r) for r in references}
        stats = self.metric._extract_corpus_statistics(hypotheses, streams)
        return np.asarray(stats, dtype=float)

    def _score_object(self, stats: np.ndarray):
        return self.metric._compute_score_from_stats(sum_rows(stats, self.integer_stats))

    def score(self, stats: np.ndarray) -> float:
        if not len(stats):
            return float("nan")
        return float(self._score_object(stats).score)

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        if not self.integer_stats:
            # TER's float statistics are summed one row after another to match sacrebleu's rounding
            return super().resample_scores(stats, counts)
        # weighted column sums of integer counts are exact: the same totals as summing the drawn rows
        totals = counts @ np.rint(stats).astype(np.int64)
        return np.array([self.metric._compute_score_from_stats(row.tolist()).score for row in totals], dtype=float)

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        return np.array([self._sentence_metric()._compute_score_from_stats(sum_rows(row[None, :], self.integer_stats)).score
                         for row in stats], dtype=float)

    def _sentence_metric(self):
        return self.metric

    def signature(self) -> str:
        counts = self._reference_counts
        self.metric.num_refs = next(iter(counts)) if len(counts) == 1 else (-1 if counts else 1)
        return self.metric.get_signature().format()


class BleuOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenize: Literal["none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab"] = Field("13a", description="sacreBLEU tokenizer")
    lowercase: bool = Field(False, description="lower-case hypotheses and references first")
    smooth_method: Literal["none", "floor", "add-k", "exp"] = Field("exp", description="smoothing of zero n-gram counts")
    smooth_value: float | None = Field(None, description="the floor or add-k value; default: sacreBLEU's")
    max_ngram_order: PositiveInt = Field(4, description="longest n-gram counted")
    effective_order: bool = Field(False, description="for the corpus score; example_scores always use effective order, as sacrebleu.sentence_bleu does")


class Bleu(_SacreMetric):
    """Corpus BLEU; per-example scores are sentence BLEU (sacrebleu.sentence_bleu: effective order, same smoothing)."""

    name = "bleu"
    description = "sacreBLEU corpus BLEU (13a tokenization, exp smoothing by default); per-example sentence BLEU"
    Options = BleuOptions

    def build(self):
        from sacrebleu.metrics import BLEU

        settings = self.options.model_dump(exclude={"effective_order"})
        self._sentence = BLEU(**settings, effective_order=True)
        return BLEU(**settings, effective_order=self.options.effective_order)

    def _sentence_metric(self):
        return self._sentence

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        if not len(stats):
            return {}
        result = self._score_object(stats)
        return {"precisions": [float(p) for p in result.precisions], "bp": float(result.bp), "ratio": float(result.ratio),
                "sys_len": int(result.sys_len), "ref_len": int(result.ref_len)}


class ChrfOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    char_order: PositiveInt = Field(6, description="longest character n-gram")
    word_order: int = Field(0, ge=0, description="2 gives chrF++")
    beta: PositiveInt = Field(2, description="weight of recall over precision")
    lowercase: bool = Field(False, description="lower-case hypotheses and references first")
    whitespace: bool = Field(False, description="keep whitespace in character n-grams")
    eps_smoothing: bool = Field(False, description="sacreBLEU's epsilon smoothing (as chrF++.py) instead of the default")


class Chrf(_SacreMetric):
    name = "chrf"
    description = "sacreBLEU chrF (word_order: 2 for chrF++); per-example sentence chrF"
    Options = ChrfOptions

    def build(self):
        from sacrebleu.metrics import CHRF

        return CHRF(**self.options.model_dump())


class TerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normalized: bool = Field(False, description="tercom normalisation of punctuation and tokens")
    no_punct: bool = Field(False, description="remove punctuation before scoring")
    asian_support: bool = Field(False, description="split Asian characters when normalizing")
    case_sensitive: bool = Field(False, description="count a case change as an edit")


class Ter(_SacreMetric):
    name = "ter"
    description = "sacreBLEU translation edit rate (lower is better); per-example sentence TER"
    higher_is_better = False
    integer_stats = False
    Options = TerOptions

    def build(self):
        from sacrebleu.metrics import TER

        return TER(**self.options.model_dump())


@hookimpl
def register_tasks(register):
    register(Translation)


@hookimpl
def register_metrics(register):
    register(Bleu)
    register(Chrf)
    register(Ter)
