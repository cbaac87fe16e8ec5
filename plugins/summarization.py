"""Summarization: abstractive with a sequence-to-sequence model, or extractive baselines; ROUGE metrics.

``options.method`` picks how a summary is made:

- ``generate`` (default): any ``AutoModelForSeq2SeqLM`` checkpoint (BART, T5,
  Pegasus, ...) run by :class:`plugins.seq2seq.Seq2SeqModel`. A document longer
  than the model window keeps its leading whole sentences that fit (spaCy
  sentencizer) and is counted as truncated. A causal LM instead continues a
  prompt (``options.prompting``, default :data:`DEFAULT_PROMPT`; see
  :mod:`nlpflow.plugins.prompted_generation`), whose beginning is cut when it
  is too long.
- ``centroid``: a sentence encoder (the embedded all-MiniLM-L6-v2 works
  offline) embeds every sentence of the document; the ``sentences`` closest
  (cosine) to the mean of the document's sentence embeddings are returned in
  document order.
- ``lead``: the first ``sentences`` sentences (lead-3 by default), by rule:
  the pipeline has no ``model:`` block (the task is :attr:`~pipeline.types.Task.rule_based`).

The metrics are rouge-score's ``RougeScorer`` F-measures (0-1), averaged over
examples, with mean precision and recall in the details. As in rouge-score,
``rougeLsum`` takes the text's own newlines as sentence breaks; with
``split_summaries: true`` it puts one sentence per line first (spaCy's
sentencizer for ``lang``, where rouge-score uses nltk). rouge-score's default
tokenizer keeps only ASCII letters and digits, so Chinese or Russian text
scores 0; ``tokenizer: unicode`` keeps every script's words (and each Chinese
or Japanese character as a word).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from nlpflow import Backend, Example, Features, LoadedModel, Metric, ModelConfig, ModelError, Prediction, TaskContext, TaskModel, hookimpl, input_limit, is_causal_lm, tokenize
from nlpflow.plugins.prompted_generation import PromptedGeneration, PromptedGenerationOptions, refuse_causal_lm
from nlpflow.plugins.seq2seq import GenerationOptions, Seq2SeqModel, TextToTextTask, check_references, load_seq2seq

#: the prompt of method generate with a causal LM (the "TL;DR:" cue of the GPT-2 paper)
DEFAULT_PROMPT = "{{ document }}\n\nTL;DR:"


class SummarizationOptions(GenerationOptions):
    method: Literal["generate", "lead", "centroid"] = Field(
        "generate", description="generate: a sequence-to-sequence model writes the summary, or a causal LM continues a prompt; "
        "lead: the first sentences; centroid: the sentences nearest the document's mean embedding")
    sentences: PositiveInt = Field(3, description="lead and centroid: how many sentences the summary has")
    lang: str = Field("en", description="language of the spaCy sentencizer (spacy.blank) used to split documents")
    prompting: PromptedGenerationOptions = Field(
        default_factory=lambda: PromptedGenerationOptions(),
        description=f"generate with a causal LM: the prompt (default {DEFAULT_PROMPT!r}), few-shot examples, generation settings and answer step")


@lru_cache(maxsize=8)
def sentencizer(lang: str):
    from nlpflow.plugins.spacy_steps import load_spacy

    return load_spacy(lang, None, ("senter",))


def split_sentences(texts: Sequence[str], lang: str = "en") -> list[list[str]]:
    """Each text's sentences (stripped, empty ones dropped), by spaCy's rule-based sentencizer."""
    return [[s.text.strip() for s in doc.sents if s.text.strip()] for doc in sentencizer(lang).pipe(texts)]


class Summarization(TextToTextTask):
    name = "summarization"
    description = "Summarize a document (seq2seq generation, or lead/centroid extractive baselines); ROUGE against a reference summary"
    input_fields = ("document",)
    reference_fields = ("summary",)
    default_metrics = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    Options = SummarizationOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.prompting = (
            PromptedGeneration(self.options.prompting, DEFAULT_PROMPT, "summary", lambda value: check_references(value, "summary"))
            if self.options.method == "generate" else None
        )

    def check_example(self, example: Example) -> None:
        super().check_example(example)
        if self.prompting is not None:
            self.prompting.render(example)

    def prepare(self, context: TaskContext) -> None:
        if self.prompting is not None:
            self.prompting.prepare(context)

    def cache_inputs(self, example: Example) -> Mapping[str, Any]:
        prompted = self.prompting.cache_inputs(example) if self.prompting is not None else None
        return super().cache_inputs(example) if prompted is None else prompted

    @property
    def rule_based(self) -> bool:
        return self.options.method == "lead"

    @property
    def rule_name(self) -> str:
        return f"lead-{self.options.sentences}"

    def predict_by_rule(self, examples: Sequence[Example]) -> list[Prediction]:
        """Lead-k: the first ``sentences`` sentences of each document (spaCy sentencizer)."""
        k = self.options.sentences
        documents = split_sentences([example.fields["document"] for example in examples], self.options.lang)
        return [Prediction(" ".join(sentences[:k]), {"sentences": list(range(min(k, len(sentences))))}) for sentences in documents]

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        options = self.options
        if options.method == "lead":
            raise ModelError(f"task {self.name!r}: method 'lead' runs no model; remove the pipeline's model: block")
        if options.method == "generate" and is_causal_lm(backend.checkpoint_config(model)):
            return self.prompting.load(model, backend)
        if options.method == "generate":
            return Seq2SeqModel(load_seq2seq(model, backend, self.name), options, "document", by_sentences=True, lang=options.lang)
        refuse_causal_lm(model, backend, self.name, options.method)
        return ExtractiveSummarizer(backend.load(model, "embedding"), options)


class ExtractiveSummarizer(TaskModel):
    """Centroid: the ``k`` sentences nearest the mean of the document's sentence embeddings, in document order.

    Every sentence is one :class:`Features` row, so the model stage batches
    sentences of many documents together; the backend embeds them (mean pooling
    over the attention mask, L2-normalised, as sentence-transformers does for
    all-MiniLM).
    """

    def __init__(self, loaded: LoadedModel, options: SummarizationOptions):
        super().__init__(loaded)
        self.options = options
        self.max_length = input_limit(loaded)

    def parameters(self) -> dict[str, Any]:
        return {"method": "centroid", "sentences": self.options.sentences, "lang": self.options.lang, "max_length": self.max_length}

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        documents = split_sentences([example.fields["document"] for example in examples], self.options.lang)
        flat = [(position, sentence) for position, sentences in enumerate(documents) for sentence in sentences]
        rows, truncated = tokenize(self.loaded, [sentence for _, sentence in flat], self.max_length)
        features = [Features(position, inputs, extra=sentence) for (position, sentence), inputs in zip(flat, rows)]
        for (position, _), cut in zip(flat, truncated):
            if cut:
                examples[position].notes["truncated"] = True
        return features

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        k = self.options.sentences
        sentences = [feature.extra for feature in features]
        embeddings = np.stack([output["embedding"] for output in outputs]).astype(np.float64)
        centroid = embeddings.mean(axis=0)
        norm = np.linalg.norm(centroid)
        similarity = embeddings @ (centroid / norm if norm > 0 else centroid)
        # highest similarity first; ties go to the earlier sentence
        ranked = sorted(range(len(sentences)), key=lambda i: (-similarity[i], i))
        chosen = sorted(ranked[:k])
        return Prediction(" ".join(sentences[i] for i in chosen),
                          {"sentences": chosen, "similarity": [round(float(similarity[i]), 6) for i in chosen]})


# --- metrics -----------------------------------------------------------------


def _rouge_version() -> str:
    try:
        return version("rouge-score")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


class RougeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    use_stemmer: bool = Field(True, description="Porter-stem words before matching, as rouge-score's use_stemmer")
    tokenizer: Literal["default", "unicode"] = Field(
        "default", description="default: rouge-score's (lowercased ASCII letters and digits only); unicode: words of any "
        "script, each CJK character a word (for non-English text)"
    )
    split_summaries: bool = Field(
        False, description="rougeLsum: put one sentence per line (spaCy sentencizer for lang) instead of using the text's own newlines, as rouge-score's split_summaries"
    )
    lang: str = Field("en", description="rougeLsum with split_summaries: language of the spaCy sentencizer")


#: scripts written without spaces between words: each character is a token, as in CJK ROUGE toolkits
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNICODE_TOKEN = re.compile(f"[{_UNSPACED}]|[^\\W_{_UNSPACED}]+")


def unicode_tokenizer(use_stemmer: bool):
    """A rouge_score Tokenizer that keeps words of every script (rouge-score's default drops non-ASCII characters)."""
    from nltk.stem import porter
    from rouge_score.tokenizers import Tokenizer

    stemmer = porter.PorterStemmer() if use_stemmer else None

    class UnicodeTokenizer(Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            tokens = _UNICODE_TOKEN.findall(text.lower())
            # rouge-score stems only tokens longer than 3 characters; Porter leaves non-Latin words as they are
            return [stemmer.stem(token) if stemmer and len(token) > 3 else token for token in tokens]

    return UnicodeTokenizer()


class _Rouge(Metric):
    """One rouge-score type; stats rows hold the example's F-measure, precision and recall (of the reference with
    the best F-measure, as rouge-score's score_multi)."""

    tasks = ("summarization", "text-generation")
    scale = "0-1"
    Options = RougeOptions
    rouge_type: ClassVar[str]

    def __init__(self, options=None):
        super().__init__(options)
        from rouge_score import rouge_scorer

        options = self.options
        tokenizer = unicode_tokenizer(options.use_stemmer) if options.tokenizer == "unicode" else None
        self.scorer = rouge_scorer.RougeScorer([self.rouge_type], use_stemmer=options.use_stemmer, tokenizer=tokenizer)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        return list(texts)

    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        predictions = self.prepare(["" if p is None else str(p) for p in predictions])
        as_lists = [[r] if isinstance(r, str) else list(r) for r in references]
        flat = self.prepare([r for refs in as_lists for r in refs])
        rows, start = [], 0
        for prediction, refs in zip(predictions, as_lists):
            targets = flat[start : start + len(refs)]
            start += len(refs)
            if len(targets) == 1:
                result = self.scorer.score(targets[0], prediction)
            else:
                result = self.scorer.score_multi(targets, prediction)
            score = result[self.rouge_type]
            rows.append([score.fmeasure, score.precision, score.recall])
        return np.asarray(rows, dtype=float).reshape(-1, 3)

    def score(self, stats: np.ndarray) -> float:
        return float(np.mean(stats[:, 0])) if len(stats) else float("nan")

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (counts @ stats[:, 0]) / counts.sum(axis=1)

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        return stats[:, 0]

    def details(self, stats: np.ndarray) -> dict[str, Any]:
        if not len(stats):
            return {}
        return {"precision": float(np.mean(stats[:, 1])), "recall": float(np.mean(stats[:, 2]))}

    def signature(self) -> str:
        return (f"rouge-score {_rouge_version()}|{self.rouge_type}|stemmer={self.options.use_stemmer}|"
                f"tokenizer={self.options.tokenizer}|fmeasure")


class Rouge1(_Rouge):
    name = "rouge1"
    description = "ROUGE-1 F-measure (rouge-score, Porter stemmer by default), mean over examples"
    rouge_type = "rouge1"


class Rouge2(_Rouge):
    name = "rouge2"
    description = "ROUGE-2 F-measure (rouge-score), mean over examples"
    rouge_type = "rouge2"


class RougeL(_Rouge):
    name = "rougeL"
    description = "ROUGE-L F-measure (longest common subsequence over the whole text), mean over examples"
    rouge_type = "rougeL"


class RougeLsum(_Rouge):
    name = "rougeLsum"
    description = "ROUGE-Lsum F-measure (summary-level LCS over newline-separated sentences; split_summaries splits them), mean over examples"
    rouge_type = "rougeLsum"

    def prepare(self, texts: Sequence[str]) -> list[str]:
        if not self.options.split_summaries:
            return list(texts)
        return ["\n".join(sentences) for sentences in split_sentences(texts, self.options.lang)]

    def signature(self) -> str:
        split = f"spacy-sentencizer({self.options.lang})" if self.options.split_summaries else "newlines"
        return f"{super().signature()}|split={split}"


@hookimpl
def register_tasks(register):
    register(Summarization)


@hookimpl
def register_metrics(register):
    for metric in (Rouge1, Rouge2, RougeL, RougeLsum):
        register(metric)
