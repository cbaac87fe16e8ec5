"""Sentiment and text classification: fine-tuned classifiers or zero-shot with a sentence encoder,
plus the accuracy and macro-F1 metrics (with per-class scores and the confusion matrix).

Two ways to classify, picked by ``options.mode`` (``auto`` looks at the checkpoint):

- ``sequence-classification``: any ``AutoModelForSequenceClassification``
  checkpoint. Dataset labels are matched to the model's ``id2label``
  (case-insensitively, or through ``options.label_map``).
- ``zero-shot``: a sentence encoder (such as the embedded all-MiniLM-L6-v2)
  embeds the text and a description of each label; the label whose
  description is most similar (cosine) wins.
- ``loglikelihood``: a causal language model scores each label as the
  continuation of a prompt (lm-evaluation-harness's ``multiple_choice``); the
  likeliest label wins, see :class:`LoglikelihoodClassifier`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nlpflow import (
    Backend, Example, ExampleError, Features, LoadedModel, Metric, ModelConfig, ModelError, Prediction, Task, TaskModel,
    TaskContext, has_head, hookimpl, input_limit, is_causal_lm, json_type, tokenize,
)
from nlpflow.plugins.prompting import (
    OPTION, FewShotPromptOptions, PromptBuilder, chat_template_digest, check_pool_size, few_shot_context, read_few_shot_source,
    sample_shots, shots_from_examples, uses_chat_template,
)

#: Zero-shot descriptions: each label's embedding is the mean of its descriptions' embeddings
#: (a prototype), which is steadier than any single phrasing.
SENTIMENT_LABELS = {
    "positive": ["It was good.", "Excellent, wonderful, highly recommended.", "I love it", "I am happy with it",
                 "Great quality, great experience."],
    "negative": ["It was bad.", "Awful, disappointing, a waste of money and time.", "I hate it", "I am unhappy with it",
                 "Poor quality, bad experience."],
}


#: the keys of a log-likelihood prediction's value: the argmax of the log-likelihood and of it per character
LOGLIKELIHOOD_PREDICTION_KEYS = frozenset({"label", "label_norm"})


class ClassificationPromptOptions(FewShotPromptOptions):
    """``options.prompting`` of classification by log-likelihood: the block every prompting task shares, where
    ``target_delimiter`` goes between the prompt and each label scored."""

    prompt: str = Field("{{ text }}\nLabel:", description="Jinja2 template over the record's fields; each label is scored as its continuation")


class SentimentPromptOptions(ClassificationPromptOptions):
    prompt: str = Field("{{ text }}\nQuestion: Is this text positive or negative?\nAnswer:",
                        description=ClassificationPromptOptions.model_fields["prompt"].description)


class ClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str | list[str]] | list[str] | None = Field(None, description="dataset labels; for zero-shot, a mapping label -> description or list of descriptions (a plain list uses each label as its own description)")
    label_map: dict[str, str] = Field(default_factory=dict, description="dataset label -> model label (id2label name), when the names differ")
    mode: Literal["auto", "sequence-classification", "zero-shot", "loglikelihood"] = Field(
        "auto", description="auto: sequence-classification when the checkpoint has a classification head, loglikelihood when it "
        "is a causal LM, else zero-shot; loglikelihood: a causal LM scores each label after the prompt"
    )
    multi_label: bool = Field(False, description="each text has a set of labels (a list, or a comma-separated string)")
    threshold: float = Field(0.5, ge=0, le=1, description="multi-label: a label is predicted when its probability reaches this")
    template: str = Field("{}", description="zero-shot: the label description is put in this template")
    prompting: ClassificationPromptOptions = Field(
        default_factory=lambda: ClassificationPromptOptions(),
        description="loglikelihood: the prompt each label is scored after, the system message, the chat template and few-shot examples")


class SentimentOptions(ClassificationOptions):
    labels: dict[str, str | list[str]] | list[str] | None = Field(
        default_factory=lambda: dict(SENTIMENT_LABELS),
        description=ClassificationOptions.model_fields["labels"].description + "; default: positive and negative with zero-shot descriptions",
    )
    prompting: SentimentPromptOptions = Field(
        default_factory=lambda: SentimentPromptOptions(), description=ClassificationOptions.model_fields["prompting"].description)


class TextClassification(Task):
    name = "text-classification"
    description = "Assign one label (or several, multi_label) to a text"
    input_fields = ("text",)
    reference_fields = ("label",)
    default_metrics = ("accuracy", "macro_f1")
    Options = ClassificationOptions
    rank_ties_by_confidence = True

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.prompt = PromptBuilder(self.options.prompting.prompt, option=f"{OPTION}.prompt")
        #: the method, once :meth:`prepare` has read the checkpoint's config under ``mode: auto``
        self.mode = self.options.mode
        #: the few-shot pool; None until :meth:`prepare` has read it (no few-shot examples are rendered before)
        self.shots: list[dict[str, Any]] | None = None if self._few_shot else []

    @property
    def _few_shot(self) -> bool:
        return bool(self.options.prompting.few_shot.k) and self.mode == "loglikelihood"

    def prepare(self, context: TaskContext) -> None:
        """Picks the method under ``mode: auto`` (prompts are rendered in :meth:`check_example` for loglikelihood), then
        reads the few-shot pool: ``few_shot.source`` relative to the pipelines file, with the pipeline's field names,
        or, without a source, the pipeline's own examples (a first pass over the data; a record is never its own shot)."""
        if self.options.mode == "auto" and context.model is not None and context.backend is not None:
            try:
                self.mode = self._mode(context.model, context.backend)
            except ModelError:
                pass  # a checkpoint that cannot be read is reported where the model loads (and by validate's model check)
        self.shots = None if self._few_shot else []
        if not self._few_shot:
            return
        few_shot = self.options.prompting.few_shot
        if few_shot.source is not None:
            # every field the prompt names, so a shot that lacks one is refused at its own line of the file
            required = tuple(dict.fromkeys(("text", "label", *self.prompt.variables)))
            shots = read_few_shot_source(few_shot.source, fields=context.fields, required=required, folder=context.folder)
        else:
            shots = shots_from_examples(context.examples())
        check_pool_size(shots, few_shot)
        self.shots = shots

    def check_example(self, example: Example) -> None:
        text = example.fields.get("text")
        if not isinstance(text, str):
            raise ExampleError(f"field 'text' must be a string, got {json_type(text)}")
        if not text or text.isspace():
            raise ExampleError("field 'text' is empty")
        fields = example.fields
        label = fields.get("label")
        if label is not None:
            fields["label"] = self._normalise_label(label, "label")
        if "prediction" in fields:
            prediction = fields["prediction"]
            if isinstance(prediction, dict) and set(prediction) == LOGLIKELIHOOD_PREDICTION_KEYS:
                # a log-likelihood run's predictions.jsonl, scored again (or compared) as given predictions
                fields["prediction"] = {key: self._normalise_label(value, f"prediction.{key}") for key, value in sorted(prediction.items())}
            else:
                fields["prediction"] = self._normalise_label(prediction, "prediction")
        if self.mode == "loglikelihood":
            # rendered here, like text-generation's prompt, so the prediction cache keys on the text the model reads
            fields["prompt"] = self.prompt.render({**example.columns, **fields})
            if self.shots is not None:
                fields["few_shot"] = [[self.prompt.render(shot), self._answer(shot["label"])]
                                      for shot in sample_shots(self.shots, self.options.prompting.few_shot, example.index)]

    def cache_inputs(self, example: Example) -> Mapping[str, Any]:
        if self.mode != "loglikelihood":
            return super().cache_inputs(example)
        # the context the model reads: the rendered prompt and few-shot examples (which depend on the record's index
        # and, drawn from the data itself, on the other records)
        return {name: example.fields.get(name) for name in ("prompt", "few_shot")}

    def _answer(self, label: Any) -> str:
        """The text scored for a dataset label: its model label through ``options.label_map``."""
        return self.options.label_map.get(str(label), str(label))

    def _normalise_label(self, value: Any, field: str) -> Any:
        multi_label = self.options.multi_label
        if not multi_label and type(value) is str and value and not value.isspace():
            return value  # the common case, as is
        if multi_label:
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                raise ExampleError(f"field {field!r} must be a list of labels (or a comma-separated string) for multi_label")
            return sorted({str(v) for v in value})
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ExampleError(f"field {field!r} must be a label (string or integer), got {json_type(value)}")
        value = str(value)
        if not value.strip():
            raise ExampleError(f"field {field!r} is empty")
        return value

    def _mode(self, model: ModelConfig, backend: Backend) -> str:
        """``options.mode``, or under ``auto`` the one the checkpoint's config (its ``architectures``) fits: a
        classification head, a causal language model (by log-likelihood), else a sentence encoder (zero-shot)."""
        if self.options.mode != "auto":
            return self.options.mode
        checkpoint = backend.checkpoint_config(model)
        if has_head(checkpoint, "ForSequenceClassification"):
            return "sequence-classification"
        if is_causal_lm(checkpoint):
            return "loglikelihood"
        return "zero-shot"

    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        options = self.options
        mode = self._mode(model, backend)
        if mode == "loglikelihood":
            _check_loglikelihood_options(options, model.name_or_path)
            # the backend refuses an encoder checkpoint here, naming the heads it fits
            return LoglikelihoodClassifier(backend.load(model, "choice-logprobs"), options)
        if mode == "zero-shot":
            _check_zero_shot_labels(options, model.name_or_path)
            return ZeroShotClassifier(backend.load(model, "embedding"), options)
        return SequenceClassifier(backend.load(model, "sequence-classification"), options)

    def output_labels(self, model: ModelConfig, backend: Backend) -> list[str]:
        options = self.options
        mode = self._mode(model, backend)
        if mode == "loglikelihood":
            _check_loglikelihood_options(options, model.name_or_path)
            return dataset_labels(list(options.labels), options, model.name_or_path, zero_shot=True)
        if mode == "zero-shot":
            _check_zero_shot_labels(options, model.name_or_path)
            return dataset_labels(list(options.labels), options, model.name_or_path, zero_shot=True)
        id2label = {int(k): str(v) for k, v in backend.checkpoint_config(model).id2label.items()}
        return dataset_labels([id2label[i] for i in sorted(id2label)], options, model.name_or_path, zero_shot=False)


def _check_zero_shot_labels(options: ClassificationOptions, model_name: str) -> None:
    if not options.labels:
        # label_map points dataset labels at options.labels, so on its own it leaves nothing to point at
        mapped = (f"; options.label_map maps dataset labels onto these labels, so it needs them too, for instance "
                  f"`labels: {{{next(iter(options.label_map.values()))}: [\"a description of it\"]}}`") if options.label_map else ""
        raise ModelError(
            f"zero-shot classification with {model_name!r} needs options.labels "
            f"(a list of labels, or a mapping from label to a description){mapped}"
        )


def _check_loglikelihood_options(options: ClassificationOptions, model_name: str) -> None:
    if not options.labels:
        raise ModelError(f"classification by log-likelihood with {model_name!r} needs options.labels, the labels to score")
    if options.multi_label:
        raise ModelError(f"classification by log-likelihood with {model_name!r} picks one label; multi_label is not supported")


def dataset_labels(model_labels: list[str], options: ClassificationOptions, model_name: str, zero_shot: bool) -> list[str]:
    """The dataset label for each model label, through ``options.label_map`` (dataset label -> model label), the
    same in both modes. A fine-tuned head's labels also match ``options.labels`` case-insensitively; in zero-shot
    mode ``options.labels`` are the model's labels themselves."""
    to_dataset = {model_label: dataset_label for dataset_label, model_label in options.label_map.items()}
    unknown = [m for m in to_dataset if m not in model_labels]
    if unknown:
        source = "options.labels" if zero_shot else "id2label"
        dataset_label = next(d for d, m in options.label_map.items() if m == unknown[0])
        way = (f"map each dataset label onto one of them (for instance `label_map: {{{dataset_label}: {model_labels[0]}}}`)"
               if model_labels else "give options.labels")
        if zero_shot:
            way += (f", or make {unknown} labels of the model by describing them in options.labels "
                    f"(for instance `labels: {{{unknown[0]}: [\"a description of it\"], ...}}`)")
        raise ModelError(
            f"model {model_name!r}: options.label_map maps to model labels {unknown} it does not have; its labels "
            f"({source}) are {model_labels}: {way}"
        )
    wanted = None if zero_shot or not options.labels else list(options.labels)
    if wanted is None:
        return [to_dataset.get(label, label) for label in model_labels]
    by_lower = {w.lower(): w for w in wanted}
    mapped = [to_dataset.get(label) or by_lower.get(label.lower(), label) for label in model_labels]
    missing = [w for w in wanted if w not in mapped]
    if missing:
        raise ModelError(
            f"model {model_name!r}: dataset labels {missing} do not map to any model label. "
            f"Dataset labels: {wanted}; model labels (id2label): {model_labels}. Add options.label_map "
            f"(dataset label -> model label), for instance {{{missing[0]!r}: {model_labels[0]!r}}}."
        )
    return mapped


class Sentiment(TextClassification):
    name = "sentiment"
    description = "Polarity of a text (positive/negative by default; any labels the data uses)"
    Options = SentimentOptions


# --- model stages ------------------------------------------------------------


class _TextClassifierModel(TaskModel):
    def __init__(self, loaded: LoadedModel, options: ClassificationOptions):
        super().__init__(loaded)
        self.options = options
        self.max_length = input_limit(loaded)

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        rows, truncated = tokenize(self.loaded, [e.fields["text"] for e in examples], self.max_length)
        for example, cut in zip(examples, truncated):
            if cut:
                example.notes["truncated"] = True
        return [Features(position, inputs) for position, inputs in enumerate(rows)]

    def _decide(self, probabilities: np.ndarray, labels: Sequence[str]) -> Prediction:
        scores = {label: round(float(p), 6) for label, p in zip(labels, probabilities)}
        if self.options.multi_label:
            chosen = sorted(label for label, p in zip(labels, probabilities) if p >= self.options.threshold)
            return Prediction(chosen, {"scores": scores})
        best = int(np.argmax(probabilities))
        return Prediction(labels[best], {"score": round(float(probabilities[best]), 6), "scores": scores})


class SequenceClassifier(_TextClassifierModel):
    """A fine-tuned classification head; model labels mapped to the dataset's."""

    def __init__(self, loaded: LoadedModel, options: ClassificationOptions):
        super().__init__(loaded, options)
        id2label = {int(k): str(v) for k, v in loaded.checkpoint.id2label.items()}
        self.model_labels = [id2label[i] for i in range(len(id2label))]
        self.labels = dataset_labels(self.model_labels, options, loaded.name_or_path, zero_shot=False)

    def parameters(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "labels": self.labels, **self.options.model_dump(include={"multi_label", "threshold"})}

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        logits = np.asarray(outputs[0]["logits"], dtype=np.float32)
        if self.options.multi_label:
            probabilities = 1 / (1 + np.exp(-logits))
        else:
            exponentials = np.exp(logits - logits.max())
            probabilities = exponentials / exponentials.sum()
        return self._decide(probabilities, self.labels)


class ZeroShotClassifier(_TextClassifierModel):
    """Cosine similarity between mean-pooled sentence embeddings of the text and of each label's description.

    A text's embedding does not depend on the labels, so the engine caches it (``caches_outputs``): a change of
    descriptions or template embeds only the descriptions and compares them with the cached text embeddings.
    """

    caches_outputs = True

    def __init__(self, loaded: LoadedModel, options: ClassificationOptions):
        super().__init__(loaded, options)
        labels = options.labels
        descriptions = dict(labels) if isinstance(labels, dict) else {label: label for label in labels}
        # predictions are in the data's spelling: label_map (dataset label -> label name here) read backwards
        self.labels = dataset_labels(list(descriptions), options, loaded.name_or_path, zero_shot=True)
        self.descriptions = {
            label: [options.template.format(text) for text in ([texts] if isinstance(texts, str) else texts)]
            for label, texts in descriptions.items()
        }
        if not all(self.descriptions.values()):
            raise ModelError(f"zero-shot labels need at least one description each; got {descriptions}")
        prototypes = np.stack([self._embed_texts(texts).mean(0) for texts in self.descriptions.values()])
        self.label_embeddings = (prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)).astype(np.float32)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        rows, _ = tokenize(self.loaded, texts, self.max_length)
        padded = self.loaded.tokenizer.pad(rows, return_tensors="np")
        return self.loaded.run({name: np.asarray(padded[name], dtype=np.int64) for name in rows[0]})["embedding"]

    def parameters(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "labels": self.labels, "descriptions": self.descriptions, "zero_shot": True,
                **self.options.model_dump(include={"multi_label", "threshold"})}

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        similarities = self.label_embeddings @ outputs[0]["embedding"]
        if self.options.multi_label:
            return self._decide((similarities + 1) / 2, self.labels)
        prediction = self._decide(similarities, self.labels)
        prediction.details["similarity"] = prediction.details.pop("score")
        return prediction


class LoglikelihoodClassifier(TaskModel):
    """Each label scored as the continuation of the prompt by a causal LM (lm-evaluation-harness's ``multiple_choice``).

    The context is the system message, the few-shot examples and the rendered prompt: in the chat template (each
    example a user and an assistant turn, the label following the assistant's opening directly), or joined by
    ``fewshot_delimiter`` with ``target_delimiter`` before each label. Context and label are tokenized as
    lm-evaluation-harness does: whitespace at the end of the context moves to the label, context and label are
    encoded together and split at the context's length. One feature per record, through the ``choice-logprobs``
    head: the context's forward runs once and every label is scored against its KV cache.

    A context too long for the window is cut from the left, as lm-evaluation-harness does, so that the longest
    label fits after it; every label is then scored after the same context (lm-evaluation-harness cuts per label,
    so its labels may see contexts of different lengths).

    The prediction's value holds two argmaxes, ``label`` (of the summed log-likelihood) and ``label_norm`` (of the
    log-likelihood per character of the label text), which ``accuracy`` and ``accuracy_norm`` score; its details
    hold each label's ``loglikelihood``, ``probability`` (softmax over the labels' log-likelihoods) and ``greedy``
    (every token of the label was the model's greedy choice).
    """

    def __init__(self, loaded: LoadedModel, options: ClassificationOptions):
        super().__init__(loaded)
        self.options = options
        self.prompting = options.prompting
        self.model_labels = list(options.labels)
        self.labels = dataset_labels(self.model_labels, options, loaded.name_or_path, zero_shot=True)
        self.use_chat_template = uses_chat_template(loaded, self.prompting.chat_template)
        self.delimiter = "" if self.use_chat_template else self.prompting.target_delimiter
        self.window = input_limit(loaded)
        for label in self.model_labels:
            if not loaded.tokenizer(self.delimiter + label, add_special_tokens=False)["input_ids"]:
                raise ModelError(f"model {loaded.name_or_path!r}: label {label!r} tokenizes to nothing, so it cannot be scored")

    def parameters(self) -> dict[str, Any]:
        return {
            "window": self.window, "labels": self.labels, "model_labels": self.model_labels, "loglikelihood": True,
            "chat_template": chat_template_digest(self.loaded, self.use_chat_template),
            **self.prompting.model_dump(include={"system", "target_delimiter", "fewshot_delimiter"}),
        }

    def context(self, example: Example) -> str:
        """The text before each label: system message, few-shot examples and prompt."""
        return few_shot_context(self.loaded, self.prompting, self.use_chat_template, example)

    def split_tokens(self, context: str, continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """lm-evaluation-harness's ``_encode_pair`` for each continuation: trailing whitespace of the context moves to
        the continuation; the pair is encoded whole and split at the context's token count (the context is encoded
        once for all of them)."""
        spaces = len(context) - len(context.rstrip())
        moved = context[len(context) - spaces:] if spaces else ""
        context = context[: len(context) - spaces]
        tokenizer = self.loaded.tokenizer
        context_length = len(tokenizer(context, add_special_tokens=False, verbose=False)["input_ids"])
        pairs = []
        for continuation in continuations:
            whole = tokenizer(context + moved + continuation, add_special_tokens=False, verbose=False)["input_ids"]
            pairs.append((list(whole[:context_length]), list(whole[context_length:])))
        return pairs

    def encode(self, examples: Sequence[Example]) -> list[Features]:
        features = []
        for position, example in enumerate(examples):
            context = self.context(example)
            pairs = self.split_tokens(context, [self.delimiter + label for label in self.model_labels])
            for label, (_, label_ids) in zip(self.model_labels, pairs):
                if not label_ids:
                    raise ModelError(f"model {self.loaded.name_or_path!r}: label {label!r} tokenizes to nothing after the prompt of record {example.index}")
            # every label's context tokens are the same unless the context's last token merged with a label's first
            # (never with a delimiter that starts with whitespace); then the labels share the common part and the
            # tokens after it are scored with the label
            shared = _common_prefix([context_ids for context_ids, _ in pairs])
            choices = [context_ids[len(shared):] + label_ids for context_ids, label_ids in pairs]
            # a label's last token is never fed, so context + longest label may be one token longer than the window
            room = self.window + 1 - max(map(len, choices))
            if room < 1:
                raise ModelError(f"record {example.index}: a label is {max(map(len, choices))} tokens long, which leaves no room "
                                 f"for the prompt in the model's window of {self.window} tokens")
            if len(shared) > room:
                shared = shared[-room:]
                example.notes["truncated"] = True
            if not shared:
                raise ModelError(f"record {example.index}: the prompt tokenizes to nothing, so no label can be scored after it")
            input_ids = shared + [token for choice in choices for token in choice]
            choice_index = [0] * len(shared) + [k for k, choice in enumerate(choices, 1) for _ in choice]
            features.append(Features(position, {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "choice_index": choice_index}))
        return features

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        loglikelihoods = np.asarray(outputs[0]["loglikelihood"], dtype=np.float64)
        greedy = [bool(value) for value in outputs[0]["greedy"]]
        lengths = np.array([len(self.delimiter + label) for label in self.model_labels], dtype=np.float64)
        exponentials = np.exp(loglikelihoods - loglikelihoods.max())
        probabilities = exponentials / exponentials.sum()
        best, best_norm = int(np.argmax(loglikelihoods)), int(np.argmax(loglikelihoods / lengths))
        details = {
            "loglikelihood": {label: float(value) for label, value in zip(self.labels, loglikelihoods)},
            "probability": {label: round(float(p), 6) for label, p in zip(self.labels, probabilities)},
            "greedy": dict(zip(self.labels, greedy)),
        }
        return Prediction({"label": self.labels[best], "label_norm": self.labels[best_norm]}, details)


def _common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    first = sequences[0]
    length = min(map(len, sequences))
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return list(first[:length])


# --- metrics -----------------------------------------------------------------


class _LabelMetric(Metric):
    """Stats rows depend only on the labels they describe, so chunks scored anywhere concatenate.

    A label is coded by :func:`label_code`, a 52-bit hash of its text (exact in a float64; two of 10 000
    distinct labels collide with probability about 1e-8, and :meth:`MacroF1.details` raises if they do).
    Single-label rows are ``(predicted code, reference code)``; multi-label rows hold
    ``MAX_LABELS_PER_EXAMPLE`` slots of sorted predicted codes, then as many of reference codes, padded
    with -1. Metrics that name labels in their details (``_names``) add each label's UTF-8 text,
    packed into ``LABEL_NAME_COLUMNS`` floats, after the codes.
    """

    tasks = ("sentiment", "text-classification")
    _names: ClassVar[bool] = False
    # a row is one confusion-matrix cell (or label-set pair): a run has few distinct rows, kept once with their counts
    accepts_counts = True

    #: which argmax of a log-likelihood prediction (``{"label": ..., "label_norm": ...}``) this metric scores
    _prediction_key: ClassVar[str] = "label"

    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        key = self._prediction_key
        predictions = [prediction[key] if isinstance(prediction, dict) else prediction for prediction in predictions]
        multi = any(isinstance(r, list) for r in references)
        if not multi:
            # one row per label pair; a chunk holds few distinct labels, so each is coded (and packed) once
            columns: dict[str, tuple[float, ...]] = {}
            for label in {*map(str, predictions), *map(str, references)}:
                columns[label] = (label_code(label), *(_pack_name(label) if self._names else ()))
            pairs = [(columns[str(predicted)], columns[str(gold)]) for predicted, gold in zip(predictions, references)]
            width = 1 + (LABEL_NAME_COLUMNS if self._names else 0)
            rows = np.array(pairs, dtype=float).reshape(-1, 2, width)
            # (code, code, name columns, name columns): codes first, as multi-label rows
            return np.concatenate([rows[:, :, 0], rows[:, 0, 1:], rows[:, 1, 1:]], axis=1)
        rows = []
        for predicted, gold in zip(predictions, references):
            sides = ([_label_slots(predicted or []), _label_slots(gold)] if multi else [[str(predicted)], [str(gold)]])
            row = [label_code(label) if label is not None else -1.0 for side in sides for label in side]
            if self._names:
                row += [value for side in sides for label in side for value in _pack_name(label)]
            rows.append(row)
        width = 2 * (MAX_LABELS_PER_EXAMPLE if multi else 1) * (1 + (LABEL_NAME_COLUMNS if self._names else 0))
        return np.array(rows, dtype=float).reshape(-1, width)


#: multi-label rows have room for this many labels per example and side
MAX_LABELS_PER_EXAMPLE = 16
#: each name column holds 6 bytes of a label's UTF-8 text (48 bits, exact in a float64)
LABEL_NAME_COLUMNS = 16
_NAME_BYTES = 6 * LABEL_NAME_COLUMNS


def label_code(label: str) -> float:
    """A label's code: the first 52 bits of its BLAKE2b hash, the same in every process and on every machine."""
    digest = hashlib.blake2b(label.encode("utf-8"), digest_size=8).digest()
    return float(int.from_bytes(digest, "big") >> 12)


def _label_slots(labels: Sequence[str]) -> list[str | None]:
    labels = sorted({str(label) for label in labels}, key=label_code)
    if len(labels) > MAX_LABELS_PER_EXAMPLE:
        raise ValueError(f"multi-label metrics support at most {MAX_LABELS_PER_EXAMPLE} labels per example, got {len(labels)}: {labels}")
    return labels + [None] * (MAX_LABELS_PER_EXAMPLE - len(labels))


def _pack_name(label: str | None) -> list[float]:
    if label is None:
        return [0.0] * LABEL_NAME_COLUMNS
    data = label.encode("utf-8")
    if len(data) > _NAME_BYTES or b"\0" in data:
        raise ValueError(f"label {label[:40]!r}...: labels are limited to {_NAME_BYTES} UTF-8 bytes without NUL characters")
    data = data.ljust(_NAME_BYTES, b"\0")
    return [float(int.from_bytes(data[i:i + 6], "big")) for i in range(0, _NAME_BYTES, 6)]


def _unpack_name(columns: np.ndarray) -> str:
    data = b"".join(int(value).to_bytes(6, "big") for value in columns)
    return data.rstrip(b"\0").decode("utf-8")


def _split(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Predicted and reference code columns (one each, or one per multi-label slot), and whether the rows are multi-label."""
    width = stats.shape[1]
    multi = width not in (2, 2 * (1 + LABEL_NAME_COLUMNS))
    slots = MAX_LABELS_PER_EXAMPLE if multi else 1
    return stats[:, :slots], stats[:, slots:2 * slots], multi


def _per_class(stats: np.ndarray, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """The classes that occur (sklearn's label set: predicted or gold anywhere in ``stats``) as sorted codes,
    with their true positives, false positives and false negatives (row ``i`` counted ``counts[i]`` times),
    and whether the rows are multi-label."""
    predicted, gold, multi = _split(stats)
    codes = np.unique(np.concatenate([predicted.ravel(), gold.ravel()]))
    codes = codes[codes >= 0]
    k = len(codes)
    predicted_hot = np.zeros((len(stats), k), dtype=bool)
    gold_hot = np.zeros((len(stats), k), dtype=bool)
    rows = np.arange(len(stats))
    for hot, columns in ((predicted_hot, predicted), (gold_hot, gold)):
        for column in columns.T:
            used = column >= 0
            hot[rows[used], np.searchsorted(codes, column[used])] = True
    weights = np.ones(len(stats), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    tp = weights @ (predicted_hot & gold_hot)
    fp = weights @ (predicted_hot & ~gold_hot)
    fn = weights @ (~predicted_hot & gold_hot)
    return codes, tp, fp, fn, multi


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


class Accuracy(_LabelMetric):
    name = "accuracy"
    description = "Share of examples whose predicted label (or label set) equals the reference"

    def score(self, stats: np.ndarray, counts: np.ndarray | None = None) -> float:
        if not len(stats):
            return float("nan")
        correct = self.example_scores(stats)
        return float(np.mean(correct)) if counts is None else float(counts @ correct / counts.sum())

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (counts @ self.example_scores(stats)) / counts.sum(axis=1)

    def example_scores(self, stats: np.ndarray) -> np.ndarray:
        predicted, gold, _ = _split(stats)
        return (predicted == gold).all(axis=1).astype(float)


class AccuracyNorm(Accuracy):
    name = "accuracy_norm"
    description = ("Accuracy of the label whose log-likelihood per character is highest (lm-evaluation-harness's acc_norm); "
                   "the same as accuracy for other modes' predictions")
    _prediction_key = "label_norm"


class MacroF1(_LabelMetric):
    name = "macro_f1"
    description = "Unweighted mean of per-class F1 (as sklearn's f1_score(average='macro')), with per-class scores and confusion matrix"
    _names = True

    def score(self, stats: np.ndarray, counts: np.ndarray | None = None) -> float:
        if not len(stats):
            return float("nan")
        _, tp, fp, fn, _ = _per_class(stats, counts)
        f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
        # fsum: the mean does not depend on the order of the classes (hash order here, label order in sklearn)
        return math.fsum(f1) / len(f1) if len(f1) else 0.0

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        predicted, gold, multi = _split(stats)
        if multi:
            return super().resample_scores(stats, counts)
        # single-label: each example is one confusion-matrix cell, so a resample is its cell counts. Label codes
        # (hashes) become class positions 0..k-1; a missing label (a negative code) is position k, a cell that
        # counts as a false positive or negative of the other side only
        codes = np.unique(np.concatenate([predicted[:, 0], gold[:, 0]]))
        codes = codes[codes >= 0]
        k = len(codes)
        positions = [np.where(column >= 0, np.searchsorted(codes, column), k) for column in (predicted[:, 0], gold[:, 0])]
        cell = positions[0].astype(np.int64) * (k + 1) + positions[1].astype(np.int64)
        # sum each resample's counts over the examples of each cell: one pass over columns sorted by cell
        order = np.argsort(cell, kind="stable")
        occupied, starts = np.unique(cell[order], return_index=True)
        confusion = np.zeros((len(counts), (k + 1) * (k + 1)))
        confusion[:, occupied] = np.add.reduceat(counts[:, order], starts, axis=1)
        confusion = confusion.reshape(len(counts), k + 1, k + 1)  # [resample, predicted, gold]
        tp = np.diagonal(confusion, axis1=1, axis2=2)[:, :k]
        fp = confusion.sum(axis=2)[:, :k] - tp
        fn = confusion.sum(axis=1)[:, :k] - tp
        present = (confusion.sum(axis=2)[:, :k] + confusion.sum(axis=1)[:, :k]) > 0
        f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
        kept = present.sum(axis=1)
        return np.where(kept > 0, (f1 * present).sum(axis=1) / np.maximum(kept, 1), 0.0)

    def details(self, stats: np.ndarray, counts: np.ndarray | None = None) -> dict[str, Any]:
        codes, tp, fp, fn, multi = _per_class(stats, counts)
        names = _names_of(stats, codes)
        precision = _safe_divide(tp, tp + fp)
        recall = _safe_divide(tp, tp + fn)
        f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
        order = sorted(range(len(codes)), key=lambda i: names[i])
        per_class = {
            names[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(tp[i] + fn[i])}
            for i in order
        }
        result: dict[str, Any] = {"per_class": per_class}
        if not multi:
            position = np.empty(len(codes), dtype=int)
            position[order] = np.arange(len(order))
            predicted, gold, _ = _split(stats)
            matrix = np.zeros((len(order), len(order)), dtype=int)
            np.add.at(matrix, (position[np.searchsorted(codes, gold[:, 0])], position[np.searchsorted(codes, predicted[:, 0])]),
                      1 if counts is None else np.asarray(counts, dtype=int))
            result["confusion_matrix"] = {"labels": [names[i] for i in order], "rows": "reference", "columns": "prediction",
                                          "matrix": matrix.tolist()}
        return result


def _names_of(stats: np.ndarray, codes: np.ndarray) -> list[str]:
    """Each code's label text, read from the name columns; raises if two different labels share a code."""
    predicted, gold, _ = _split(stats)
    slots = predicted.shape[1]
    code_columns = np.concatenate([predicted, gold], axis=1)
    names: dict[float, str] = {}
    for slot in range(2 * slots):
        start = 2 * slots + slot * LABEL_NAME_COLUMNS
        column = code_columns[:, slot]
        used = column >= 0
        unique_codes, first = np.unique(column[used], return_index=True)
        packed = stats[used][:, start:start + LABEL_NAME_COLUMNS]
        for code, row in zip(unique_codes, first):
            name = _unpack_name(packed[row])
            if names.setdefault(float(code), name) != name or label_code(name) != code:
                raise ValueError(f"labels {names[float(code)]!r} and {name!r} have the same code; rename one of them")
    return [names[float(code)] for code in codes]


@hookimpl
def register_tasks(register):
    register(Sentiment)
    register(TextClassification)


@hookimpl
def register_metrics(register):
    register(Accuracy)
    register(AccuracyNorm)
    register(MacroF1)
