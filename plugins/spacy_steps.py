"""spaCy preprocessing steps: normalize, sentences, truncate, lemmas, entities.

Every step runs spaCy with ``nlp.pipe`` over the whole chunk, with only the
components it needs. ``sentences`` and ``truncate`` work with a blank
language plus the rule-based sentencizer (no download); ``lemmas`` and
``entities`` need a trained pipeline such as ``en_core_web_sm`` and say so
when it is not installed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from nlpflow import ConfigError, Example, Preprocessor, hookimpl

_SPACES = re.compile(r"\s+")


class SpacyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lang: str = Field("en", description="language of spacy.blank(), used when no trained pipeline is named")
    spacy_model: str | None = Field(None, description="a trained spaCy pipeline (package name or path); optional for sentences/truncate")
    batch_size: PositiveInt = Field(256, description="texts per nlp.pipe batch")
    n_process: PositiveInt = Field(1, description="worker processes for nlp.pipe; more only pays on CPU-bound runs with many cores")


@lru_cache(maxsize=16)
def load_spacy(lang: str, spacy_model: str | None, needs: tuple[str, ...]):
    """A spaCy Language with only the components ``needs`` asks for ("senter", "lemmatizer", "ner")."""
    import spacy

    if spacy_model is None:
        if set(needs) - {"senter"}:
            raise ConfigError(
                f"this step needs a trained spaCy pipeline for {', '.join(n for n in needs if n != 'senter')}; "
                "set spacy_model (for instance en_core_web_sm, installed with `python -m spacy download en_core_web_sm`)"
            )
        nlp = spacy.blank(lang)
        nlp.add_pipe("sentencizer")
        return nlp
    try:
        nlp = spacy.load(spacy_model)
    except OSError:
        raise ConfigError(
            f"spaCy pipeline {spacy_model!r} is not installed. Install it with `python -m spacy download {spacy_model}` "
            "(or pip install its wheel), or drop spacy_model to use spacy.blank with the rule-based sentencizer"
        ) from None
    keep = set()
    for need in needs:
        if need == "senter":
            keep |= {"senter"} if "senter" in nlp.component_names else {"parser"}
        elif need == "lemmatizer":
            keep |= {"tok2vec", "tagger", "attribute_ruler", "lemmatizer", "morphologizer"}
        elif need == "ner":
            keep |= {"tok2vec", "ner"}
    missing = [need for need in needs if need != "senter" and need not in nlp.component_names]
    if missing:
        raise ConfigError(f"spaCy pipeline {spacy_model!r} has no {', '.join(missing)} component")
    if "senter" in keep and "senter" in nlp.disabled:
        nlp.enable_pipe("senter")
    for name in nlp.component_names:
        if name not in keep:
            nlp.disable_pipe(name)
    return nlp


class _SpacyStep(Preprocessor):
    Options = SpacyOptions
    needs: tuple[str, ...] = ()

    def __init__(self, options, fields):
        super().__init__(options, fields)
        self.nlp = load_spacy(options.lang, options.spacy_model, self.needs)

    def docs(self, examples: list[Example], field: str):
        texts = (example.fields[field] for example in examples)
        return self.nlp.pipe(texts, batch_size=self.options.batch_size, n_process=self.options.n_process)


class NormalizeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = Field("NFKC", description="Unicode normalization form (unicodedata.normalize)")
    collapse_whitespace: bool = Field(True, description="replace runs of whitespace with one space and strip the ends")


class Normalize(Preprocessor):
    name = "normalize"
    description = "Unicode normalization (NFKC by default) and whitespace collapsing"
    Options = NormalizeOptions

    def __call__(self, examples: list[Example]) -> None:
        for example in examples:
            for field in self.fields:
                text = unicodedata.normalize(self.options.form, example.fields[field])
                if self.options.collapse_whitespace:
                    text = _SPACES.sub(" ", text).strip()
                example.fields[field] = text


class Sentences(_SpacyStep):
    name = "sentences"
    description = "Split each field into sentences (annotation FIELD.sentences)"
    needs = ("senter",)

    def __call__(self, examples: list[Example]) -> None:
        for field in self.fields:
            for example, doc in zip(examples, self.docs(examples, field)):
                example.annotations[f"{field}.sentences"] = [s.text.strip() for s in doc.sents if s.text.strip()]


class TruncateOptions(SpacyOptions):
    max_tokens: PositiveInt = Field(400, description="spaCy tokens to keep, in whole sentences (the first sentence is cut if it alone is longer)")


class Truncate(_SpacyStep):
    name = "truncate"
    description = "Keep whole sentences up to max_tokens spaCy tokens; counts truncated records"
    Options = TruncateOptions
    needs = ("senter",)

    def __call__(self, examples: list[Example]) -> None:
        budget = self.options.max_tokens
        for field in self.fields:
            for example, doc in zip(examples, self.docs(examples, field)):
                if len(doc) <= budget:
                    continue
                end = 0
                for sentence in doc.sents:
                    if sentence.end > budget:
                        break
                    end = sentence.end_char
                if end == 0:  # the first sentence alone is over budget: cut it at a token
                    end = doc[budget - 1].idx + len(doc[budget - 1].text)
                example.fields[field] = doc.text[:end].rstrip()
                example.notes["truncated"] = True


class Lemmas(_SpacyStep):
    name = "lemmas"
    description = "Lemmas of each token (annotation FIELD.lemmas); needs a trained spaCy pipeline"
    needs = ("lemmatizer",)

    def __call__(self, examples: list[Example]) -> None:
        for field in self.fields:
            for example, doc in zip(examples, self.docs(examples, field)):
                example.annotations[f"{field}.lemmas"] = [token.lemma_ for token in doc]


class Entities(_SpacyStep):
    name = "entities"
    description = "Named entities (annotation FIELD.entities: text, label, start, end); needs a trained spaCy pipeline"
    needs = ("ner",)

    def __call__(self, examples: list[Example]) -> None:
        for field in self.fields:
            for example, doc in zip(examples, self.docs(examples, field)):
                example.annotations[f"{field}.entities"] = [
                    {"text": ent.text, "label": ent.label_, "start": ent.start_char, "end": ent.end_char} for ent in doc.ents
                ]


@hookimpl
def register_preprocessors(register):
    for step in (Normalize, Sentences, Truncate, Lemmas, Entities):
        register(step)


