"""Extractive question answering: a span from the context answers the question, scored with the
official SQuAD exact match and F1.

Three ways to answer, picked by ``options.method`` (``auto`` looks at the checkpoint: ``generate`` for a causal
LM, ``span`` for a ``*ForQuestionAnswering`` head, else ``sentence-retrieval``):

- ``span``: any ``AutoModelForQuestionAnswering`` checkpoint. Each (question,
  context) pair is cut into overlapping windows (``max_seq_length`` tokens,
  ``doc_stride`` tokens of overlap); the best span over all windows of an
  example is mapped back to characters of the original context. Span
  selection follows transformers' ``QuestionAnsweringPipeline`` (4.x; the
  pipeline is gone from transformers 5): question and special tokens masked
  out, start and end logits turned into probabilities with a softmax per
  window, the 12 most probable ``start <= end`` pairs no longer than
  ``max_answer_length`` tokens kept per window and widened to whole words,
  candidates with the same text (ignoring case) added up across windows, and
  the most probable text wins. ``span_ranking: logits`` instead takes the
  highest start + end logit over all windows from the ``n_best`` starts and
  ends of each (transformers' run_qa.py example).
- ``sentence-retrieval``: a baseline with a sentence encoder (such as the
  embedded all-MiniLM-L6-v2). The context is split into sentences with spaCy,
  the question and every sentence are embedded (mean pooling, L2-normalised)
  and the sentence most similar to the question is the answer.
- ``generate``: a causal LM continues a prompt (``options.prompting``, default
  :data:`DEFAULT_PROMPT`), after few-shot examples answered with their first
  gold answer; the answer step takes the answer from the continuation (see
  :mod:`nlpflow.plugins.prompted_generation`).

Answers in the data may be a string, a list of strings, or SQuAD's
``{"text": [...], "answer_start": [...]}``. An empty list means "no answer"
(SQuAD 2.0) and is accepted when ``options.allow_no_answer`` is set.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from nlpflow import (
    Backend, Example, ExampleError, Features, LoadedModel, Metric, ModelConfig, Prediction, Task, TaskContext, TaskModel,
    has_head, hookimpl, input_limit, is_causal_lm, json_type, tokenize,
)
from nlpflow.plugins.prompted_generation import PromptedGeneration, PromptedGenerationOptions, refuse_causal_lm

#: the prompt of method generate (lm-evaluation-harness's SQuAD layout)
DEFAULT_PROMPT = "Context: {{ context }}\nQuestion: {{ question }}\nAnswer:"


class QuestionAnsweringOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["auto", "span", "sentence-retrieval", "generate"] = Field(
        "auto", description="auto: generate for a causal LM, span when the checkpoint has a *ForQuestionAnswering head, else sentence-retrieval")
    max_seq_length: PositiveInt | None = Field(None, description="span: tokens per window (question + context + special tokens); default: the model's input limit")
    doc_stride: int | None = Field(None, ge=0, description="span: tokens shared by consecutive windows; default min(128, max_seq_length // 2) as in transformers' pipeline; always lowered to fit next to a long question")
    max_answer_length: PositiveInt = Field(30, description="span: longest answer in tokens")
    span_ranking: Literal["probability", "logits"] = Field("probability", description='span: "probability" picks the window as transformers\' pipeline does (softmax per window); "logits" picks the highest start + end logit over all windows (the run_qa.py way)')
    n_best: PositiveInt = Field(20, description='span, span_ranking "logits": start and end candidates per window (the probability ranking keeps transformers\' own count, 12 with align_to_words)')
    align_to_words: bool = Field(True, description="span: widen the answer to whole words (transformers' align_to_words)")
    allow_no_answer: bool = Field(False, description='SQuAD 2.0: empty reference lists are "no answer", and the model may answer nothing')
    null_threshold: float = Field(0.0, description="with allow_no_answer: answer nothing when the null score (CLS start + end logit, lowest over windows) exceeds the best span's start + end logit by more than this")
    lang: str = Field("en", description="sentence-retrieval: spaCy language for sentence splitting, and an optional trained pipeline")
    spacy_model: str | None = Field(None, description="sentence-retrieval: a trained spaCy pipeline for sentence splitting; default: spacy.blank(lang) with a sentencizer")
    prompting: PromptedGenerationOptions = Field(
        default_factory=lambda: PromptedGenerationOptions(), description=f"generate: the prompt (default {DEFAULT_PROMPT!r}), few-shot examples, generation settings and answer step")


class QuestionAnswering(Task):
    name = "question-answering"
    description = "Extractive QA: answer a question with a span of the context (SQuAD exact match and F1)"
    input_fields = ("context", "question")
    reference_fields = ("answers",)
    default_metrics = ("exact_match", "f1")
    Options = QuestionAnsweringOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        # auto may pick generate once the checkpoint is known, so the prompt is checked on every record then too
        self.prompting = (
            PromptedGeneration(self.options.prompting, DEFAULT_PROMPT, "answers", self._normalise_answers)
            if self.options.method in ("auto", "generate") else None
        )

    def check_example(self, example: Example) -> None:
        for name in self.input_fields:
            value = example.fields.get(name)
            if not isinstance(value, str):
                raise ExampleError(f"field {name!r} must be a string, got {json_type(value)}")
            if not value.strip():
                raise ExampleError(f"field {name!r} is empty")
        if "answers" in example.fields:
            example.fields["answers"] = self._normalise_answers(example.fields["answers"])
        if "prediction" in example.fields:
            example.fields["prediction"] = _prediction_text(example.fields["prediction"])
        if self.prompting is not None:
            self.prompting.render(example)

    def prepare(self, context: TaskContext) -> None:
        if self.prompting is not None:
            self.prompting.prepare(context, method_prompts=self.options.method == "generate")

    def cache_inputs(self, example: Example) -> Mapping[str, Any]:
        prompted = self.prompting.cache_inputs(example) if self.prompting is not None else None
        return super().cache_inputs(example) if prompted is None else prompted

    def _normalise_answers(self, value: Any) -> list[str]:
        if isinstance(value, str):
            answers: Any = [value]
        elif isinstance(value, dict):
            if "text" not in value:
                raise ExampleError(
                    f"field 'answers' as a mapping must be SQuAD's {{\"text\": [...], \"answer_start\": [...]}}; it has keys {sorted(value)}"
                )
            answers = value["text"]
            starts = value.get("answer_start")
            if isinstance(answers, str):
                answers = [answers]
            if starts is not None and (not isinstance(starts, list) or len(starts) != len(answers)):
                raise ExampleError("field 'answers': 'answer_start' must be a list as long as 'text'")
        else:
            answers = value
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ExampleError(
                "field 'answers' must be a string, a list of strings, or SQuAD's {\"text\": [...], \"answer_start\": [...]}, "
                f"got {json_type(value)}"
            )
        if not answers and not self.options.allow_no_answer:
            raise ExampleError("field 'answers' is empty; set options.allow_no_answer: true for SQuAD 2.0 unanswerable questions")
        return list(answers)

    def reference(self, example: Example) -> Any:
        """The gold answers; with allow_no_answer, as SQuAD 2.0's evaluate-v2.0.py reads them: answers that normalise
        to nothing are dropped, and an answered question left with none has the gold ``[""]``."""
        answers = example.fields.get("answers")
        if answers is None or not self.options.allow_no_answer or not answers:
            return answers
        return [answer for answer in answers if normalize_answer(answer)] or [""]

    def parse_prediction(self, value: Any) -> Prediction:
        return Prediction(_prediction_text(value))

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        options = self.options
        method = options.method
        if method == "auto":
            checkpoint = backend.checkpoint_config(model)
            if is_causal_lm(checkpoint):
                method = "generate"
            else:
                method = "span" if has_head(checkpoint, "ForQuestionAnswering") else "sentence-retrieval"
        if method == "generate":
            return self.prompting.load(model, backend)
        refuse_causal_lm(model, backend, self.name, method)
        if method == "sentence-retrieval":
            return SentenceRetriever(backend.load(model, "embedding"), options)
        return SpanExtractor(backend.load(model, "question-answering"), options)


def _prediction_text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ExampleError(f"field 'prediction' must be the answer text (a string, or null for no answer), got {json_type(value)}")
    return value


# --- span extraction -----------------------------------------------------------


class SpanExtractor(TaskModel):
    """A ``*ForQuestionAnswering`` model over overlapping windows of (question, context)."""

    def __init__(self, loaded: LoadedModel, options: QuestionAnsweringOptions):
        super().__init__(loaded)
        self.options = options
        tokenizer = loaded.tokenizer
        self.max_length = options.max_seq_length or input_limit(loaded)
        self.doc_stride = options.doc_stride if options.doc_stride is not None else min(128, self.max_length // 2)
        # as in transformers' pipeline: right-padding tokenizers put the question first
        self.question_first = tokenizer.padding_side == "right"
        self.context_sequence = 1 if self.question_first else 0
        self.special_tokens = tokenizer.num_special_tokens_to_add(pair=True)
        if self.max_length - self.special_tokens < 2:
            raise ValueError(f"max_seq_length {self.max_length} leaves no room for question and context")
        self.names = list(tokenizer.model_input_names)

    def parameters(self) -> dict[str, Any]:
        return {
            "method": "span",
            "max_seq_length": self.max_length,
            "doc_stride": self.doc_stride,
            "question_first": self.question_first,
            **self.options.model_dump(include={"max_answer_length", "span_ranking", "n_best", "align_to_words", "allow_no_answer", "null_threshold"}),
        }

    def _questions(self, examples: Sequence[Example]) -> tuple[list[str], list[int]]:
        """Questions (cut when one would leave no room for context) and each example's stride."""
        tokenizer = self.loaded.tokenizer
        questions = [e.fields["question"] for e in examples]
        encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        budget = self.max_length - self.special_tokens
        strides = []
        for position, example in enumerate(examples):
            ids = encoded["input_ids"][position]
            if budget - len(ids) < 1:
                keep = budget // 2
                questions[position] = questions[position][: encoded["offset_mapping"][position][keep - 1][1]]
                example.notes["truncated"] = True
                length = len(tokenizer(questions[position], add_special_tokens=False)["input_ids"])
            else:
                length = len(ids)
            # the tokenizer refuses a stride as long as the room left for the context
            strides.append(max(0, min(self.doc_stride, budget - length - 1)))
        return questions, strides

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        tokenizer = self.loaded.tokenizer
        questions, strides = self._questions(examples)
        cls_id = tokenizer.cls_token_id
        features: list[Features] = []
        # one tokenizer call per stride; nearly always a single call for the whole chunk
        for stride in sorted(set(strides)):
            members = [p for p, s in enumerate(strides) if s == stride]
            contexts = [examples[p].fields["context"] for p in members]
            asked = [questions[p] for p in members]
            encoded = tokenizer(
                asked if self.question_first else contexts,
                contexts if self.question_first else asked,
                truncation="only_second" if self.question_first else "only_first",
                max_length=self.max_length,
                stride=stride,
                padding=False,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
            mapping = encoded["overflow_to_sample_mapping"]
            window_counts: Counter[int] = Counter()
            for row in range(len(encoded["input_ids"])):
                position = members[mapping[row]]
                sequence_ids = encoded.sequence_ids(row)
                in_context = [s == self.context_sequence for s in sequence_ids]
                input_ids = encoded["input_ids"][row]
                extra = {
                    "window": window_counts[position],
                    "context": in_context,
                    "offsets": [tuple(o) if c else None for o, c in zip(encoded["offset_mapping"][row], in_context)],
                    "words": [w if c else None for w, c in zip(encoded.word_ids(row), in_context)],
                    # CLS stays unmasked in the softmax, as in transformers' pipeline (SQuAD 2.0 null answer)
                    "cls": [i for i, t in enumerate(input_ids) if cls_id is not None and t == cls_id],
                }
                window_counts[position] += 1
                features.append(Features(position, {name: encoded[name][row] for name in self.names if name in encoded}, extra))
        features.sort(key=lambda f: (f.example, f.extra["window"]))
        return features

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        options = self.options
        context = example.fields["context"]
        candidates: list[dict[str, Any]] = []  # in discovery order, so sorting (stable) keeps the earliest of equals
        by_text: dict[str, dict[str, Any]] = {}
        null_score, null_window = float("inf"), 0
        for feature, output in zip(features, outputs):
            extra = feature.extra
            logits = np.stack([output["start_logits"], output["end_logits"]]).astype(np.float32, copy=False)
            cls = extra["cls"][0] if extra["cls"] else 0
            window_null = float(logits[0][cls]) + float(logits[1][cls])
            if window_null < null_score:
                null_score, null_window = window_null, extra["window"]
            spans = self._window_spans(extra, logits)
            for s, e, rank in spans:
                start_char, end_char = self._characters(extra, s, e)
                text = context[start_char:end_char]
                logit_score = float(logits[0][s]) + float(logits[1][e])
                # transformers' pipeline adds up the probability of candidates with the same text
                same = by_text.get(text.lower()) if options.span_ranking == "probability" else None
                if same is not None:
                    same["rank"] += rank
                    continue
                candidate = {"text": text, "start": start_char, "end": end_char, "rank": rank, "score": logit_score, "window": extra["window"]}
                candidates.append(candidate)
                by_text[text.lower()] = candidate
        candidates.sort(key=lambda c: c["rank"], reverse=True)
        best = candidates[0] if candidates else None
        if best is None or (options.allow_no_answer and null_score - best["score"] > options.null_threshold):
            details: dict[str, Any] = {"start": 0, "end": 0, "score": null_score, "window": null_window, "no_answer": True}
            if best is not None:
                details["best_span_score"] = best["score"]
            return Prediction("", details)
        details = {"start": best["start"], "end": best["end"], "score": best["score"], "window": best["window"]}
        if options.span_ranking == "probability":
            details["probability"] = best["rank"]
        return Prediction(best["text"], details)

    def _window_spans(self, extra: dict, logits: np.ndarray) -> list[tuple[int, int, float]]:
        """Candidate spans of one window as (start token, end token, ranking score), best first."""
        context = np.asarray(extra["context"], dtype=bool)
        max_answer = self.options.max_answer_length
        start_logits, end_logits = logits[0], logits[1]
        if self.options.span_ranking == "logits":
            # run_qa.py's postprocess_qa_predictions: the n_best start and end logits, valid pairs only
            n_best = self.options.n_best
            starts = np.argsort(start_logits)[-1 : -n_best - 1 : -1]
            ends = np.argsort(end_logits)[-1 : -n_best - 1 : -1]
            return [
                (int(s), int(e), float(start_logits[s]) + float(end_logits[e]))
                for s in starts
                for e in ends
                if context[s] and context[e] and s <= e < s + max_answer
            ]
        # transformers' select_starts_ends + decode_spans, same float32 arithmetic and candidate count
        desired = context.copy()
        desired[extra["cls"]] = True
        start = np.where(~desired, np.float32(-10000.0), start_logits)
        end = np.where(~desired, np.float32(-10000.0), end_logits)
        start = np.exp(start - start.max())
        start = start / start.sum()
        end = np.exp(end - end.max())
        end = end / end.sum()
        start[extra["cls"]] = 0.0
        end[extra["cls"]] = 0.0
        scores = np.tril(np.triu(np.outer(start, end)), max_answer - 1).flatten()
        top = 2 * 1 + 10 if self.options.align_to_words else 1  # the pipeline's pre_topk for top_k=1
        if top == 1:
            order = np.array([np.argmax(scores)])
        elif len(scores) < top:
            order = np.argsort(-scores)
        else:
            part = np.argpartition(-scores, top)[0:top]
            order = part[np.argsort(-scores[part])]
        length = len(start)
        return [
            (int(i // length), int(i % length), float(scores[i]))
            for i in order
            if context[i // length] and context[i % length]
        ]

    def _characters(self, extra: dict, s: int, e: int) -> tuple[int, int]:
        """Character span in the context of tokens s..e, widened to whole words like transformers' get_indices."""
        offsets, words = extra["offsets"], extra["words"]
        if self.options.align_to_words and words[s] is not None and words[e] is not None:
            first = next(i for i, w in enumerate(words) if w == words[s])
            last = max(i for i, w in enumerate(words) if w == words[e])
            return offsets[first][0], offsets[last][1]
        return offsets[s][0], offsets[e][1]


# --- sentence retrieval baseline --------------------------------------------------


class SentenceRetriever(TaskModel):
    """Answers with the context sentence whose embedding is closest (cosine) to the question's.

    The question and each sentence are separate feature rows, so the model stage batches them all.
    """

    def __init__(self, loaded: LoadedModel, options: QuestionAnsweringOptions):
        super().__init__(loaded)
        from nlpflow.plugins.spacy_steps import load_spacy

        self.options = options
        self.max_length = input_limit(loaded)
        self.nlp = load_spacy(options.lang, options.spacy_model, ("senter",))

    def parameters(self) -> dict[str, Any]:
        return {"method": "sentence-retrieval", "max_length": self.max_length, "lang": self.options.lang, "spacy_model": self.options.spacy_model}

    def sentences(self, contexts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each context's sentences, surrounding whitespace excluded."""
        spans = []
        for context, doc in zip(contexts, self.nlp.pipe(contexts, batch_size=256)):
            found = []
            for sentence in doc.sents:
                text = sentence.text
                start = sentence.start_char + (len(text) - len(text.lstrip()))
                end = sentence.start_char + len(text.rstrip())
                if end > start:
                    found.append((start, end))
            spans.append(found or [(0, len(context))])
        return spans

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        contexts = [e.fields["context"] for e in examples]
        texts: list[str] = []
        owners: list[tuple[int, Any]] = []
        for position, (example, spans) in enumerate(zip(examples, self.sentences(contexts))):
            texts.append(example.fields["question"])
            owners.append((position, None))
            for span in spans:
                texts.append(example.fields["context"][span[0] : span[1]])
                owners.append((position, span))
        rows, truncated = tokenize(self.loaded, texts, self.max_length)
        for (position, _), cut in zip(owners, truncated):
            if cut:
                examples[position].notes["truncated"] = True
        return [Features(position, inputs, span) for (position, span), inputs in zip(owners, rows)]

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        question = next(o["embedding"] for f, o in zip(features, outputs) if f.extra is None)
        sentences = [(f.extra, o["embedding"]) for f, o in zip(features, outputs) if f.extra is not None]
        similarities = [float(np.dot(question, embedding)) for _, embedding in sentences]
        best = int(np.argmax(similarities))
        start, end = sentences[best][0]
        return Prediction(
            example.fields["context"][start:end],
            {"start": start, "end": end, "score": similarities[best], "sentence": best},
        )


# --- metrics: the official SQuAD evaluation ------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1 evaluate script)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


class _SquadMetric(Metric):
    """Stats rows are (score in 0-1, reference is "no answer"); the value is 100 x the mean score.

    A non-empty reference list is scored with the v1.1 script (max over gold
    answers); an empty one (SQuAD 2.0 "no answer") scores 1 exactly when the
    prediction normalises to the empty string, as the v2.0 script does.
    """

    tasks = ("question-answering",)
    scale = "0-100"
    function: Any = None
    # exact match rows are 0 or 1, F1 rows a few common fractions: kept once each with their counts
    accepts_counts = True

    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        rows = []
        for prediction, gold in zip(predictions, references):
            prediction = prediction or ""
            if isinstance(gold, str):
                gold = [gold]
            if gold == [""]:
                # SQuAD 2.0, every gold answer normalised to nothing (QuestionAnswering.reference): evaluate-v2.0.py
                # scores both EM and F1 (int(gold_toks == pred_toks)) as whether the prediction is empty too
                rows.append((float(normalize_answer(prediction) == ""), 0.0))
            elif gold:
                rows.append((max(type(self).function(prediction, answer) for answer in gold), 0.0))
            else:
                rows.append((float(normalize_answer(prediction) == ""), 1.0))
        return np.array(rows, dtype=float).reshape(-1, 2)

    def score(self, stats: np.ndarray, counts: np.ndarray | None = None) -> float:
        if not len(stats):
            return float("nan")
        return 100.0 * float(np.mean(stats[:, 0]) if counts is None else counts @ stats[:, 0] / counts.sum())

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return 100.0 * (counts @ stats[:, 0]) / counts.sum(axis=1)

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        return 100.0 * stats[:, 0]

    def details(self, stats: np.ndarray, counts: np.ndarray | None = None) -> dict[str, Any]:
        no_answer = stats[:, 1] > 0
        if not no_answer.any():
            return {}
        counts = np.ones(len(stats), dtype=np.int64) if counts is None else counts
        answered = ~no_answer
        return {
            "has_answer": {"value": self.score(stats[answered], counts[answered]) if answered.any() else None,
                           "n": int(counts[answered].sum())},
            "no_answer": {"value": self.score(stats[no_answer], counts[no_answer]), "n": int(counts[no_answer].sum())},
        }


class ExactMatch(_SquadMetric):
    name = "exact_match"
    description = "SQuAD exact match (official v1.1 normalisation; max over gold answers; 0-100)"
    function = staticmethod(squad_exact_match)


class F1(_SquadMetric):
    name = "f1"
    description = "SQuAD token-overlap F1 (official v1.1 evaluation; max over gold answers; 0-100)"
    function = staticmethod(squad_f1)


@hookimpl
def register_tasks(register):
    register(QuestionAnswering)


@hookimpl
def register_metrics(register):
    register(ExactMatch)
    register(F1)
