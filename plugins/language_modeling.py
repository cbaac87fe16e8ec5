"""Language modeling: a causal LM's log-likelihood of each document, scored as perplexity per token, word and byte.

Each document is tokenized once, without the special tokens a tokenizer may add, and scored in windows of at most
``model.max_length`` tokens (default: the model's context) through the ``token-logprobs`` head. A window is one
token sequence ``s``: the model reads ``s[:-1]`` and the head gives log p(``s[i + 1]`` | ``s[: i + 1]``); the window
says from which target on its log-probabilities count, so every document token is scored exactly once.

* Default: lm-evaluation-harness's ``loglikelihood_rolling`` windows (``get_rolling_token_windows`` with
  context length 1, then ``make_disjoint_window``), with the BOS token (else EOS) as the prefix of the first window:
  disjoint windows that each predict up to ``max_length`` new tokens.
* ``stride: N``: the overlapping windows of the transformers docs' "Perplexity of fixed-length models" over the
  prefix token followed by the document: a window starts every N tokens and scores only the tokens no earlier window
  scored, seeing up to ``max_length - N`` tokens before them.

A prediction holds the document's summed log-likelihood and scored token count; the reference holds its word count
(``len(re.split(r"\\s+", text))``) and UTF-8 byte count, as lm-evaluation-harness counts them. Every metric is a
ratio of sums over documents, so a bootstrap resamples documents and recomputes the ratio.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nlpflow import (
    Backend,
    Example,
    ExampleError,
    Features,
    LoadedModel,
    Metric,
    ModelConfig,
    ModelError,
    Prediction,
    Task,
    TaskModel,
    hookimpl,
    input_limit,
    json_type,
)

#: the head's "not scored" target (transformers' ignore index): the window's context before its first scored target
UNSCORED_TARGET = -100


class LanguageModelingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stride: int | None = Field(
        None,
        gt=0,
        description="overlapping windows (the transformers docs' perplexity loop): a window of model.max_length tokens starts "
        "every STRIDE tokens and scores only the tokens not scored before; default: lm-evaluation-harness's disjoint "
        "rolling windows",
    )


def disjoint_windows(tokens: Sequence[int], prefix_token: int, window: int) -> list[tuple[list[int], int]]:
    """lm-evaluation-harness's rolling windows with context length 1, made disjoint: ``(sequence, first_scored)`` pairs.

    The model reads ``sequence[:-1]`` (at most ``window`` tokens) and the targets ``sequence[1:]`` from index
    ``first_scored`` on are scored. The first window is the prefix token and the first ``window`` tokens; each later
    one predicts the next ``window`` tokens (fewer at the end) after the tokens that fill the rest of its input.
    """
    windows: list[tuple[list[int], int]] = []
    if not tokens:
        return windows
    first = min(window, len(tokens))
    windows.append(([prefix_token, *tokens[:first]], 0))
    predicted = first
    while predicted < len(tokens):
        predicting = min(len(tokens) - predicted, window)
        end = predicted + predicting
        windows.append((list(tokens[end - window - 1 : end]), window - predicting))
        predicted = end
    return windows


def strided_windows(tokens: Sequence[int], prefix_token: int, window: int, stride: int) -> list[tuple[list[int], int]]:
    """The transformers docs' strided windows over the prefix token and ``tokens``, as ``(sequence, first_scored)``
    pairs like :func:`disjoint_windows`: a window of up to ``window`` tokens starts every ``stride`` tokens and scores
    the targets after the previous window's end (with ``stride == window``, a window's first token has nothing before
    it in the window and is not scored, as in the docs' loop)."""
    windows: list[tuple[list[int], int]] = []
    if not tokens:
        return windows
    sequence = [prefix_token, *tokens]
    previous_end = 0
    for begin in range(0, len(sequence), stride):
        end = min(begin + window, len(sequence))
        # target j is sequence[begin + 1 + j]; the ones before previous_end were scored by an earlier window
        first_scored = max(previous_end - begin - 1, 0)
        if end - begin - 1 > first_scored:
            windows.append((sequence[begin:end], first_scored))
        previous_end = end
        if end == len(sequence):
            break
    return windows


def prefix_token_id(loaded: LoadedModel) -> int:
    """The token before a document: BOS, else EOS (lm-evaluation-harness's ``prefix_token_id``)."""
    tokenizer = loaded.tokenizer
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ModelError(
        f"model {loaded.name_or_path!r}: its tokenizer has neither a BOS nor an EOS token, so the first token of a "
        "document has nothing to be predicted from; language-modeling needs one of them"
    )


class CausalLanguageModel(TaskModel):
    """Documents in, summed log-likelihoods out: windows per document, token log-probabilities per window."""

    def __init__(self, loaded: LoadedModel, options: LanguageModelingOptions):
        super().__init__(loaded)
        self.window = input_limit(loaded)
        self.stride = options.stride
        self.prefix_token = prefix_token_id(loaded)
        if self.window < 2:
            raise ModelError(f"model {loaded.name_or_path!r}: model.max_length is {self.window}; a window needs at least 2 tokens")
        if self.stride is not None and self.stride > self.window:
            raise ModelError(
                f"model {loaded.name_or_path!r}: options.stride {self.stride} is longer than the window "
                f"(model.max_length {self.window}); tokens between windows would go unscored. Use a stride of at most {self.window}"
            )

    def windows(self, tokens: Sequence[int]) -> list[tuple[list[int], int]]:
        if self.stride is None:
            return disjoint_windows(tokens, self.prefix_token, self.window)
        return strided_windows(tokens, self.prefix_token, self.window, self.stride)

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        texts = [example.fields["text"] for example in examples]
        # whole documents, however long: the windows cut them; verbose=False silences the too-long warning
        encoded = self.loaded.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        features = []
        for position, tokens in enumerate(encoded):
            for sequence, first_scored in self.windows(tokens):
                # targets before first_scored are context only: -100 tells the head not to compute them
                targets = [UNSCORED_TARGET] * first_scored + sequence[first_scored + 1 :]
                inputs = {"input_ids": sequence[:-1], "attention_mask": [1] * (len(sequence) - 1), "target_ids": targets}
                features.append(Features(position, inputs, extra=first_scored))
        return features

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        loglikelihood, tokens = 0.0, 0
        for feature, output in zip(features, outputs):
            scored = np.asarray(output["logprobs"], dtype=np.float64)[feature.extra :]
            loglikelihood += float(scored.sum())
            tokens += len(scored)
        return Prediction({"loglikelihood": loglikelihood, "tokens": tokens})

    def parameters(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "prefix_token": self.prefix_token}


def document_counts(text: str) -> dict[str, int]:
    """A document's words and UTF-8 bytes, as lm-evaluation-harness counts them for word and byte perplexity."""
    return {"words": len(re.split(r"\s+", text)), "bytes": len(text.encode("utf-8"))}


class LanguageModeling(Task):
    name = "language-modeling"
    description = ("Score documents with a causal language model (rolling windows over long ones); perplexity per token, "
                   "word and byte, and bits per byte")
    input_fields = ("text",)
    default_metrics = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
    Options = LanguageModelingOptions

    def reference(self, example: Example) -> dict[str, int]:
        """What the word and byte perplexities divide by: the document's own size, needing no gold answer."""
        return document_counts(example.fields["text"])

    def parse_prediction(self, value: Any) -> Prediction:
        if (not isinstance(value, dict) or not isinstance(value.get("loglikelihood"), (int, float))
                or isinstance(value.get("tokens"), bool) or not isinstance(value.get("tokens"), int)):
            raise ExampleError(
                'field "prediction" must be an object {"loglikelihood": number, "tokens": integer}, '
                f"got {json_type(value)}"
            )
        return Prediction({"loglikelihood": float(value["loglikelihood"]), "tokens": value["tokens"]})

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        return CausalLanguageModel(backend.load(model, "token-logprobs"), self.options)


# --- metrics -----------------------------------------------------------------


class _LikelihoodRatio(Metric):
    """A function of Σ log-likelihood / Σ count over documents; stats rows are ``[loglikelihood, count]``."""

    tasks = ("language-modeling",)
    higher_is_better = False
    #: what the log-likelihood is divided by: the prediction's "tokens", or the reference's "words" or "bytes"
    count: ClassVar[str]

    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        rows = [(prediction["loglikelihood"], (prediction if self.count == "tokens" else reference)[self.count])
                for prediction, reference in zip(predictions, references)]
        return np.asarray(rows, dtype=float).reshape(len(rows), 2)

    @staticmethod
    def from_ratio(nats_per_unit: np.ndarray) -> np.ndarray:
        """The metric from the negative log-likelihood per unit (tokens, words or bytes), in nats."""
        raise NotImplementedError

    def _of_totals(self, totals: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self.from_ratio(-totals[..., 0] / totals[..., 1])

    def score(self, stats: np.ndarray, counts: np.ndarray | None = None) -> float:
        return float(self._of_totals(stats.sum(axis=0))) if len(stats) else float("nan")

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return self._of_totals(counts @ stats)

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        return self._of_totals(stats)


class Perplexity(_LikelihoodRatio):
    name = "perplexity"
    description = "token-level corpus perplexity, exp(-Σ log-likelihood / Σ tokens) over documents (lower is better)"
    scale = "1..1000"
    count = "tokens"
    from_ratio = staticmethod(np.exp)


class WordPerplexity(_LikelihoodRatio):
    name = "word_perplexity"
    description = "exp(-Σ log-likelihood / Σ words), words by re.split(r'\\s+', doc) (lm-evaluation-harness; lower is better)"
    scale = "1..1000"
    count = "words"
    from_ratio = staticmethod(np.exp)


class BytePerplexity(_LikelihoodRatio):
    name = "byte_perplexity"
    description = "exp(-Σ log-likelihood / Σ UTF-8 bytes) (lm-evaluation-harness; lower is better)"
    scale = "1..256"
    count = "bytes"
    from_ratio = staticmethod(np.exp)


class BitsPerByte(_LikelihoodRatio):
    name = "bits_per_byte"
    description = "-Σ log-likelihood / Σ UTF-8 bytes / ln 2 (lm-evaluation-harness; lower is better)"
    scale = "0..8"
    count = "bytes"

    @staticmethod
    def from_ratio(nats_per_unit: np.ndarray) -> np.ndarray:
        return nats_per_unit / math.log(2)


@hookimpl
def register_tasks(register):
    register(LanguageModeling)


@hookimpl
def register_metrics(register):
    for metric in (Perplexity, WordPerplexity, BytePerplexity, BitsPerByte):
        register(metric)
