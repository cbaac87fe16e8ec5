"""Keyword extraction for nlpflow: a complete third-party plugin in one module.

nlpflow finds it through the entry point in this package's pyproject.toml; it
uses nothing but nlpflow's public plugin API (``pipeline.hookimpl``,
``nlpflow.contract.types``, ``nlpflow.engine.model_stage``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nlpflow import Example, ExampleError, Features, Metric, Prediction, Task, TaskModel, hookimpl, input_limit, tokenize

__version__ = "0.1.0"


class KeywordOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=50, description="keywords per text")
    max_words: int = Field(2, ge=1, le=4, description="longest candidate phrase, in words")
    lang: str = Field("en", description="language of the spaCy tokenizer (spacy.blank)")


class Keywords(Task):
    name = "keywords"
    description = "Extract the top-k keywords of a text (example third-party plugin)"
    input_fields = ("text",)
    reference_fields = ("keywords",)
    default_metrics = ("keyword_f1",)
    Options = KeywordOptions

    def check_example(self, example: Example) -> None:
        super().check_example(example)
        keywords = example.fields.get("keywords")
        if isinstance(keywords, str):
            example.fields["keywords"] = [k.strip() for k in keywords.split(",") if k.strip()]
        elif keywords is not None and not (isinstance(keywords, list) and all(isinstance(k, str) for k in keywords)):
            raise ExampleError("field 'keywords' must be a list of strings or a comma-separated string")
        if isinstance(example.fields.get("prediction"), str):
            example.fields["prediction"] = [k.strip() for k in example.fields["prediction"].split(",") if k.strip()]

    def load(self, model, backend):
        return KeywordModel(backend.load(model, "embedding"), self.options)


class KeywordModel(TaskModel):
    """Each example becomes one Features row for the text and one per candidate phrase."""

    def __init__(self, loaded, options: KeywordOptions):
        super().__init__(loaded)
        import spacy

        self.options = options
        self.nlp = spacy.blank(options.lang)
        self.max_length = input_limit(loaded)

    def candidates(self, text: str) -> list[str]:
        words = [t.text.lower() for t in self.nlp(text)]
        keep = [not (self.nlp.vocab[w].is_stop or not w.isalpha()) for w in words]
        found: dict[str, None] = {}
        for size in range(1, self.options.max_words + 1):
            for start in range(len(words) - size + 1):
                if all(keep[start : start + size]):
                    found[" ".join(words[start : start + size])] = None
        return list(found)

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        texts, owners, roles = [], [], []
        for position, example in enumerate(examples):
            phrases = self.candidates(example.fields["text"])
            texts.append(example.fields["text"])
            owners.append(position)
            roles.append(None)
            for phrase in phrases:
                texts.append(phrase)
                owners.append(position)
                roles.append(phrase)
        rows, _ = tokenize(self.loaded, texts, self.max_length)
        return [Features(owner, inputs, role) for owner, inputs, role in zip(owners, rows, roles)]

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        document = next(o["embedding"] for f, o in zip(features, outputs) if f.extra is None)
        scored = sorted(
            ((float(np.dot(document, o["embedding"])), f.extra) for f, o in zip(features, outputs) if f.extra is not None),
            key=lambda pair: (-pair[0], pair[1]),
        )
        top = scored[: self.options.top_k]
        return Prediction([phrase for _, phrase in top], {"scores": {phrase: round(s, 6) for s, phrase in top}})

    def parameters(self) -> dict[str, Any]:
        return self.options.model_dump()


class KeywordF1(Metric):
    name = "keyword_f1"
    description = "F1 between predicted and reference keyword sets (lower-cased), averaged over examples"
    tasks = ("keywords",)

    def example_stats(self, predictions, references) -> np.ndarray:
        rows = []
        for predicted, gold in zip(predictions, references):
            p = {k.lower().strip() for k in predicted or []}
            g = {k.lower().strip() for k in gold or []}
            overlap = len(p & g)
            rows.append([2 * overlap / (len(p) + len(g)) if p or g else 1.0])
        return np.array(rows, dtype=float).reshape(-1, 1)

    def score(self, stats: np.ndarray) -> float:
        return float(stats[:, 0].mean()) if len(stats) else float("nan")

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        return stats[:, 0]


@hookimpl
def register_tasks(register):
    register(Keywords)


@hookimpl
def register_metrics(register):
    register(KeywordF1)
