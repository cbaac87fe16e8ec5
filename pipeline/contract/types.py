"""The plugin contract: the shapes plugins implement and the records that pass between them.

Task, TaskModel, Metric, Preprocessor, Reader, Reporter and Backend are small
abstract classes. A plugin subclasses one, sets the class attributes,
implements the abstract methods, and passes the class to the matching
``register`` callback (see :mod:`nlpflow.hookspecs`). Options a user writes in
``pipelines.yaml`` are validated with the class's ``Options`` pydantic model
before the object is built, so an object never sees bad options.

This module is a leaf: it imports nothing from the runner, the config loader
or the model stage, so it can be read (and a plugin written) on its own.
Plugins import these names from :mod:`nlpflow`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
import re
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Iterator, Literal, Mapping, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, field_validator

from nlpflow.contract.errors import ModelError


class NoOptions(BaseModel):
    """Options model for plugins that take none: any key is an error."""

    model_config = ConfigDict(extra="forbid")


# --- records -----------------------------------------------------------------


@dataclass
class RawRecord:
    """One record as a reader produced it.

    ``line`` is the 1-based line (JSON Lines) or row (CSV, header excluded
    counts as line 1) in the data file. A record the reader could not parse
    has ``data=None`` and ``error`` set; the runner fails or skips it
    according to ``on_error``.
    """

    line: int
    data: dict[str, Any] | None
    error: str | None = None
    #: the file the record is in, where the data is several files (a folder or a glob); None: the data path itself
    source: str | None = None


@dataclass
class Example:
    """A record on its way through a pipeline.

    ``fields`` holds the task's canonical fields (``text``, ``label``, ...)
    after the pipeline's field mapping; ``columns`` the record as read, for
    slicing reports. Preprocessors may rewrite ``fields`` and add to
    ``annotations`` (for instance ``annotations["document.sentences"]``) and
    ``notes`` (flags the report counts, such as ``notes["truncated"] = True``).
    """

    index: int
    line: int
    fields: dict[str, Any]
    columns: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """A task's answer for one example.

    ``value`` is what metrics score (a label, a translation, an answer
    string). ``details`` is JSON-serialisable extra output written next to it
    in ``predictions.jsonl`` (class scores, answer offsets, ...).
    """

    value: Any
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Features:
    """Model inputs for one example, or one window of one.

    ``example`` is the position of the example in the list passed to
    :meth:`TaskModel.encode`. ``inputs`` maps tokenizer outputs
    (``input_ids``, ``attention_mask``, ``token_type_ids``, ...) to unpadded
    lists; the model stage pads, batches and moves them. ``extra`` carries
    whatever :meth:`TaskModel.decode` needs to map outputs back (offsets, ...).
    """

    example: int
    inputs: dict[str, list[int]]
    extra: Any = None

    @property
    def length(self) -> int:
        return len(self.inputs["input_ids"])


def json_type(value: Any) -> str:
    """How a value's type reads to someone who wrote JSON or CSV: "null", "a number", "a list", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class ExampleError(ValueError):
    """Raised by a task when one example's fields are unusable.

    The runner adds the data file, line and pipeline; the message should say
    which field is wrong and what was expected.
    """


# --- tasks -------------------------------------------------------------------


# --- models and backends -----------------------------------------------------


class ModelConfig(BaseModel):
    """The ``model:`` section of a pipeline, as :meth:`Task.load` and :meth:`Backend.load` receive it."""

    model_config = ConfigDict(extra="forbid")
    name_or_path: str
    #: which registered backend runs the model (``nlpflow tasks`` lists them)
    backend: str = "torch"
    revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: rows per batch at most; "auto" starts from the token budget and halves on out-of-memory
    batch_size: Union[PositiveInt, Literal["auto"]] = "auto"
    #: padded tokens per batch (rows x longest row); default depends on the device
    max_tokens: PositiveInt | None = None
    #: input truncation in tokens; default is the tokenizer's model_max_length
    max_length: PositiveInt | None = None
    trust_remote_code: bool = False
    #: allow pickle-based weight files (.bin); off so only safetensors load
    allow_pickle: bool = False
    #: the backend's own options, validated by its ``Options`` model (``nlpflow tasks --options BACKEND`` lists them)
    backend_options: dict[str, Any] = Field(default_factory=dict)

    #: the local folder the model loads from, found when its pipeline is resolved (not part of the YAML)
    _folder: str | None = PrivateAttr(None)

    @property
    def folder(self) -> str | None:
        """The local folder the model loads from: ``name_or_path`` as a folder relative to the pipelines file, or
        the packaged copy of an embedded model, found when the pipeline was resolved; None when it is neither (a
        hub name) or the config was not resolved (:func:`nlpflow.resolve_model_path` then reads ``name_or_path``)."""
        return self._folder

    def in_folder(self, folder: str | None) -> "ModelConfig":
        """A copy of this config that loads from ``folder`` (what resolving a pipeline does)."""
        located = self.model_copy()
        located._folder = folder
        return located

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value


@dataclass(frozen=True)
class Head:
    """What a task asks a backend to compute, and the outputs it gets back; declared once, by name.

    ``outputs`` maps each output name to its shape per batch: ``"row"`` is one
    vector per row (``(rows, k)``), ``"token"`` one value per input token
    (``(rows, width)``; the model stage cuts each row to its own length), and
    ``"ids"`` a list of token ids per row (generation). nlpflow declares the
    built-in heads (:data:`HEADS`); a plugin declares more with the
    ``register_heads`` hook, and a backend computes a head when its
    :attr:`Backend.head_table` has a row for the name.
    """

    name: str
    outputs: Mapping[str, str]
    description: str

    def __post_init__(self) -> None:
        unknown = {output: shape for output, shape in self.outputs.items() if shape not in OUTPUT_SHAPES}
        if not self.name or not self.outputs or unknown:
            raise ValueError(
                f"head {self.name!r}: needs a name and at least one output, each shaped {', '.join(OUTPUT_SHAPES)}"
                + (f"; got {unknown}" if unknown else "")
            )


#: the shapes a head's output may have (see :class:`Head`)
OUTPUT_SHAPES = ("row", "token", "ids")

#: The heads nlpflow itself declares; the registry starts from these and adds the ones plugins register.
HEADS: Mapping[str, Head] = MappingProxyType({
    head.name: head
    for head in (
        Head("sequence-classification", {"logits": "row"},
             "a *ForSequenceClassification checkpoint: float32 logits (rows, labels)"),
        Head("embedding", {"embedding": "row"},
             "a plain encoder (AutoModel): mean of the last hidden states over real tokens, L2-normalised, float32 (rows, dim)"),
        Head("question-answering", {"start_logits": "token", "end_logits": "token"},
             "a *ForQuestionAnswering checkpoint: float32 start and end logits per token"),
        Head("generation", {"sequences": "ids"},
             "a sequence-to-sequence checkpoint (AutoModelForSeq2SeqLM): generated token ids per row; "
             "TaskModel.head_options() are generate() keyword arguments"),
        Head("token-logprobs", {"logprobs": "token"},
             "a causal language model (*ForCausalLM, *LMHeadModel; AutoModelForCausalLM) fed input_ids, attention_mask and "
             "target_ids (the token that follows each position): float32 log-probability of target_ids[i] given "
             "input_ids[: i + 1], from a float32 log-softmax whatever the model's dtype; computed only where target_ids >= 0 "
             "and the attention mask is 1 (-100, also the padding, marks context: 0.0 there)"),
        Head("causal-generation", {"sequences": "ids"},
             "a decoder-only checkpoint (AutoModelForCausalLM): the new token ids per row, cut before the end token; "
             "TaskModel.head_options() are generate() keyword arguments plus eos_token_id and pad_token_id (required), "
             "stop_strings and seed (for do_sample)"),
    )
})


@dataclass
class LoadedModel:
    """A model ready to run on its backend, with what identifies it.

    A task reads ``tokenizer`` (a transformers tokenizer), ``checkpoint``
    (the checkpoint's transformers config: ``id2label``, ``architectures``,
    ``max_position_embeddings``, ...), ``config`` (the pipeline's ``model:``
    section) and ``device``/``dtype`` (as strings, e.g. ``"cuda:0"``,
    ``"bfloat16"``). ``handle`` is the backend's own object (a torch module,
    an onnxruntime session): only the backend touches it.
    """

    tokenizer: Any
    checkpoint: Any
    config: ModelConfig
    #: the head this model computes: ``head.name``, and ``head.outputs`` the model stage checks and splits
    head: Head
    backend: Backend
    handle: Any
    name_or_path: str
    path: str
    fingerprint: str
    device: str = "cpu"
    dtype: str = "float32"

    def run(self, batch: Mapping[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Run one padded batch (int64 arrays by input name) through the backend; outputs as :attr:`head` says.

        The model stage calls this for every batch; a task may call it on a few
        inputs of its own (label descriptions, say) when it is built.
        """
        return self.backend.run(self, self.backend.prepare(self, batch), **options)


class Backend(ABC):
    """Runs models for tasks: loads a checkpoint for a :class:`Head` and computes it on padded batches.

    The model stage (batching, length sorting, out-of-memory back-off) is the
    same for every backend; a backend only loads, moves and computes. Which
    heads it computes is one table, :attr:`head_table`: a row per head name,
    holding whatever the backend needs to compute that head (an Auto class and
    an output function, a graph's output names, ...). Adding a head to a
    backend is adding a row (a subclass may extend its parent's table).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: head name -> the backend's own description of how it computes that head
    head_table: ClassVar[Mapping[str, Any]] = {}
    #: the names of the heads it computes: ``tuple(head_table)``, derived when a subclass sets a table
    heads: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.head_table:
            cls.heads = tuple(cls.head_table)

    def __init__(self, options: BaseModel | None = None, heads: Mapping[str, Head] | None = None):
        self.options = options if options is not None else self.Options()
        #: every head declared where this backend runs (the registry's); a task names one of them in :meth:`load`
        self.declared_heads: dict[str, Head] = dict(heads if heads is not None else HEADS)  # a dict: a backend is pickled to workers

    def load(self, model: ModelConfig, head: str, *, require_fast_tokenizer: bool = True) -> LoadedModel:
        """What a task calls: the model loaded for the head named ``head``, or a ModelError saying why not.

        Generation tasks may pass ``require_fast_tokenizer=False`` (they need no character offsets).
        """
        declared = self.declared_heads.get(head)
        if declared is None:
            raise ModelError(
                f"there is no head {head!r}. Heads: {', '.join(self.declared_heads)} "
                "(a plugin declares more with the register_heads hook)"
            )
        if head not in self.heads:
            able = ", ".join(name for name in self.declared_heads if name in self.heads) or "none"
            raise ModelError(
                f"backend {self.name!r} cannot compute a {head!r} head, which this task needs (it computes: {able}); "
                "use model.backend: torch for this pipeline"
                if head in HEADS else
                f"backend {self.name!r} cannot compute a {head!r} head, which this task needs (it computes: {able}); "
                "set model.backend to a backend that does (`nlpflow tasks` lists heads and their backends)"
            )
        return self.load_head(model, declared, require_fast_tokenizer=require_fast_tokenizer)

    @abstractmethod
    def load_head(self, model: ModelConfig, head: Head, *, require_fast_tokenizer: bool = True) -> LoadedModel:
        """Load tokenizer and model for ``head`` (its name is one of :attr:`heads`); a ModelError naming the model when it cannot."""

    def checkpoint_config(self, model: ModelConfig) -> Any:
        """The checkpoint's transformers config, read without loading weights (for picking a mode)."""
        raise NotImplementedError(f"backend {self.name!r} cannot read checkpoint configs")

    def check_model(self, model: ModelConfig) -> None:
        """What ``validate`` checks of a model without loading its weights: a ModelError for what would stop
        :meth:`load`. By default, that :meth:`checkpoint_config` reads; a backend adds its own checks (the
        transformers base: that the weights are of a format it may load)."""
        self.checkpoint_config(model)

    def prepare(self, loaded: LoadedModel, batch: Mapping[str, np.ndarray]) -> Any:
        """Make a padded numpy batch ready for :meth:`run` (e.g. pinned tensors). May run on a worker thread."""
        return batch

    @abstractmethod
    def run(self, loaded: LoadedModel, prepared: Any, **options: Any) -> dict[str, Any]:
        """Compute the head on one prepared batch; numpy arrays (or lists for ``"ids"``), off the device."""

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether ``error`` means the batch did not fit on the device (the model stage then halves it)."""
        return False

    def release_memory(self, loaded: LoadedModel) -> None:
        """Give back cached device memory after an out-of-memory error."""

    def cache_identity(self, loaded: LoadedModel) -> dict[str, Any]:
        """What besides weights and task settings changes outputs on this backend; part of the cache key."""
        return {"backend": self.name, "dtype": loaded.dtype, "device": loaded.device.split(":")[0]}


# --- tasks -------------------------------------------------------------------


class Executor(ABC):
    """Where the model stage computes its planned batches: in this process (``local``) or on workers (``ray``).

    The driver keeps everything else (reading, preprocessing, the cache,
    planning batches over each whole chunk, decoding, scoring, writing), so an
    executor only computes batches, and its unit of work is exactly one planned
    batch: a batch holds the same rows wherever it runs, so float results equal
    the local run's. An executor is chosen per run (``--executor``), with its
    :attr:`Options` (``--address`` and ``--workers`` are the ``ray`` executor's).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    def start(self, spec: Any, run_key: str) -> None:
        """Called once per run, after the driver has loaded the model and before the first chunk.

        ``spec`` (a picklable ``nlpflow.StageSpec``) says how to build the
        model's batch computer: ``spec.build()`` returns it and the run key,
        loading the model unless called in the driver's own process. A remote
        executor starts its workers here; each must reproduce ``run_key`` (the
        cache key part of the run), or the run is refused.
        """

    @abstractmethod
    def compute(self, plan: Any) -> Iterator[tuple[list[int], Mapping[str, np.ndarray]]]:
        """Compute ``plan.batches`` (lists of feature indices), yielding ``(indices, outputs)`` in their order.

        ``plan`` is a picklable ``nlpflow.ChunkPlan``: ``plan.collate(indices)``
        gives a batch's padded numpy inputs and ``plan.only(position)`` the plan
        of one batch alone; ``computer.compute(plan)``, with the computer
        ``spec.build()`` returned, computes a plan under the out-of-memory policy
        every executor shares (a batch cut after running out of memory comes back
        as its parts, each its own ``(indices, outputs)``). The outputs are the
        head's arrays, one row per index.
        """

    def describe(self) -> dict[str, Any]:
        """What the executor did, for report.json's ``executor`` section."""
        return {"name": self.name}

    def close(self) -> None:
        """Called once when the run ends, whatever happened: stop the workers this executor started."""


class TaskModel(ABC):
    """A task's side of a loaded model: inputs in, predictions out; the backend computes in between.

    The model stage calls :meth:`encode` on a chunk of examples, groups the
    resulting features into length-sorted batches under a token budget, has
    the backend compute :attr:`loaded`'s head on each padded batch, and hands
    each example's features and per-feature outputs to :meth:`decode` in the
    original order. A task model never imports torch.
    """

    #: the loaded model and tokenizer, with device, dtype and weights fingerprint
    loaded: LoadedModel
    #: True when the head's outputs for a feature depend only on the model and the feature's inputs, not on the
    #: task's options (a zero-shot classifier's text embeddings do not depend on its labels): the cache then also
    #: stores each feature's outputs, so a run whose options changed computes only :meth:`decode` for texts it has
    #: seen. Worth it where outputs are small (an embedding, not a vocabulary's logits per token).
    caches_outputs: ClassVar[bool] = False

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @abstractmethod
    def encode(self, examples: Sequence[Example]) -> list[Features]:
        """Tokenize a chunk of examples (in one batched tokenizer call).

        Returns one or more :class:`Features` per example; an example may
        produce several (QA windows) but must produce at least one.
        """

    @abstractmethod
    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        """Turn one example's outputs into a prediction.

        ``features`` are the example's own features in the order :meth:`encode`
        returned them; ``outputs[i]`` holds the head's outputs for
        ``features[i]`` by name (``outputs[i]["logits"]``), "token" outputs cut
        to that feature's length.
        """

    def head_options(self) -> dict[str, Any]:
        """Keyword arguments for the backend's head on every batch (generate() settings for generation)."""
        return {}

    def parameters(self) -> dict[str, Any]:
        """Settings besides the weights that change outputs; part of the cache key."""
        return {}


@dataclass(frozen=True)
class TaskContext:
    """What :meth:`Task.prepare` learns about the pipeline a task runs in.

    ``folder`` is the pipelines file's folder: a path in the task's options is
    read relative to it, as ``data.path`` and a local ``model.name_or_path``
    are. ``fields`` maps each of the task's canonical fields to the data's
    column (the pipeline's ``fields:`` mapping, identity where it has none).
    ``examples()`` reads the pipeline's data once more, through the same
    reader, ``data.limit``, field mapping and :meth:`Task.check_example`, and
    yields the examples the run will predict, in file order (records that fail
    or are skipped as in the run); nothing is read unless it is called.
    ``model`` and ``backend`` are the pipeline's (None without a model): a
    task that picks a method by the checkpoint reads
    ``backend.checkpoint_config(model)`` (no weights are loaded).
    """

    pipeline: str
    folder: Path
    fields: Mapping[str, str]
    examples: Callable[[], Iterator[Example]]
    model: ModelConfig | None = None
    backend: Backend | None = None


class Task(ABC):
    """A kind of NLP work: which fields it reads, how it predicts, what it is scored against.

    Example::

        class Sentiment(Task):
            name = "sentiment"
            input_fields = ("text",)
            reference_fields = ("label",)
            default_metrics = ("accuracy", "macro_f1")

            def load(self, model, backend):
                return MyClassifier(backend.load(model, "sequence-classification"))
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: canonical fields the model reads, in the order a record must supply them
    input_fields: ClassVar[tuple[str, ...]]
    #: canonical fields holding the gold answer; may be absent for inference-only runs
    reference_fields: ClassVar[tuple[str, ...]] = ()
    default_metrics: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: the reports' worst examples: among examples scored alike, the one predicted with the highest confidence (its
    #: details' ``probability``, ``score`` or ``similarity``) first. For tasks whose per-example score is all or
    #: nothing (a classifier's accuracy), where a confident mistake says more than a hesitant one.
    rank_ties_by_confidence: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    def prepare(self, context: TaskContext) -> None:
        """Called once before any record is checked for the run, and by ``validate``; the default does nothing.

        A task reads here what its options name relative to the pipelines file
        (``context.folder``) and, only if it needs the whole data before the
        first prediction (few-shot examples drawn from the data itself), calls
        ``context.examples()``: the runner's first pass over the data, with
        :meth:`check_example` run on each example before this method returns
        (so ``check_example`` must not need what ``prepare`` is still
        gathering). What the task keeps travels with it, pickled, to a remote
        executor's workers. Raise a :class:`ConfigError` for a problem with the
        options.
        """

    def check_example(self, example: Example) -> None:
        """Validate and normalise ``example.fields`` in place.

        Raise :class:`ExampleError` naming the field when a value is unusable.
        The default accepts non-empty strings for every input field.
        """
        for name in self.input_fields:
            value = example.fields.get(name)
            if not isinstance(value, str):
                raise ExampleError(f"field {name!r} must be a string, got {json_type(value)}")

    def cache_inputs(self, example: Example) -> Mapping[str, Any]:
        """What of a checked example the model reads, for the prediction cache's key (with the run's task options
        and model): by default its :attr:`input_fields`. A task whose ``check_example`` derives the model's input
        from more than those fields (a rendered prompt with few-shot examples) returns that input too."""
        return {name: example.fields.get(name) for name in self.input_fields}

    def reference(self, example: Example) -> Any:
        """The gold answer metrics compare with; ``None`` when the record has none."""
        if not self.reference_fields:
            return None
        return example.fields.get(self.reference_fields[0])

    def parse_prediction(self, value: Any) -> Prediction:
        """Turn a ``prediction`` value found in the data (another system's output) into a Prediction."""
        return Prediction(value=value)

    @property
    def rule_based(self) -> bool:
        """True when the task's options pick a method that needs no model (a lead-3 summary, say).

        A pipeline with no ``model:`` then calls :meth:`predict_by_rule` on each
        chunk instead of scoring the records' own ``prediction`` field.
        """
        return False

    def predict_by_rule(self, examples: Sequence[Example]) -> list[Prediction]:
        """Predictions for a chunk, made without a model; only called when :attr:`rule_based` is true."""
        raise NotImplementedError(f"task {self.name!r} has no rule-based method")

    @property
    def rule_name(self) -> str:
        """What the rule-based method is, for reports and the leaderboard (``lead-3``); read when :attr:`rule_based`."""
        return "rule"

    @abstractmethod
    def load(self, model: ModelConfig, backend: Backend) -> TaskModel:
        """Load the model named in the pipeline with ``backend.load(model, HEAD)`` and return it ready to run."""

    def output_labels(self, model: ModelConfig, backend: Backend) -> list[str] | None:
        """The labels this task's predictions can take with ``model``, in the data's spelling (after any label
        mapping), found without loading weights (``backend.checkpoint_config``); ``None`` when predictions are
        open-ended text. The runner and ``validate`` compare them with the references' labels before predicting."""
        return None


# --- metrics -----------------------------------------------------------------


class Metric(ABC):
    """A score over a set of examples, computed from per-example statistics.

    :meth:`example_stats` turns predictions and references into a matrix
    with one row per example; :meth:`score` turns any set of rows into the
    metric's value. Corpus-level metrics (BLEU) keep sufficient statistics
    per row and sum them; averaged metrics keep the per-example score. This
    split is what lets the report resample examples for confidence intervals
    and paired significance tests without re-running the metric library.

    :meth:`example_stats` must be stateless: its rows depend only on the
    predictions and references it is given, never on earlier calls (no label
    codes assigned in first-seen order, no running counts on the object), so
    stats computed in chunks, processes or machines concatenate into the same
    scores and details. Code a category by a stable function of its text.

    A metric whose rows repeat a lot (a confusion-matrix cell per example, a
    0/1 match) sets :attr:`accepts_counts`: its :meth:`score` and
    :meth:`details` then get ``counts``, how many examples have each row,
    and nlpflow keeps each distinct row once, so memory and the bootstrap
    stay flat as the data grows. Without it they get every example's row.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: task names this metric can score; empty means any task
    tasks: ClassVar[tuple[str, ...]] = ()
    #: the range of values: "0-1" or "0-100" as the reference library reports it, or "LOW..HIGH"
    #: such as "-1..1" for a correlation; reports format and draw values on it
    scale: ClassVar[str] = "0-1"
    higher_is_better: ClassVar[bool] = True
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: True: :meth:`score` and :meth:`details` take ``(stats, counts)``, distinct rows with how many examples
    #: have each (a weighted sum where the metric sums rows); False: ``(stats)``, one row per example
    accepts_counts: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def example_stats(self, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray:
        """Return a float array of shape ``(len(predictions), k)``."""

    @abstractmethod
    def score(self, stats: np.ndarray, counts: np.ndarray | None = None) -> float:
        """The metric's value over the rows of ``stats``; with :attr:`accepts_counts`, row ``i`` counts ``counts[i]`` times."""

    def resample_scores(self, stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The metric over each of several resamples of ``stats``, one value per row of ``counts``.

        ``counts[j, i]`` is how many times row ``i`` is drawn in resample ``j``.
        This default scores each resample on its own; metrics whose value is a
        function of (weighted) column sums override it with one matrix product,
        ``counts @ stats``, which is what keeps bootstrap intervals cheap on
        large data.
        """
        if self.accepts_counts:
            # rows a resample does not draw are left out, not given a count of 0: a class seen only in them is
            # absent from that resample
            return np.array([self.score(stats[row > 0], row[row > 0]) for row in counts], dtype=float)
        return np.array([self.score(np.repeat(stats, row, axis=0)) for row in counts], dtype=float)

    def example_scores(self, stats: np.ndarray) -> np.ndarray | None:
        """One score per row, written to ``predictions.jsonl``; ``None`` if the metric has none."""
        return None

    def details(self, stats: np.ndarray, counts: np.ndarray | None = None) -> dict[str, Any]:
        """Extra JSON-serialisable results for the report (per-class scores, confusion matrix); ``counts`` as in :meth:`score`."""
        return {}

    def signature(self) -> str:
        """A string that identifies the metric and its settings, stored in the report."""
        options = ",".join(f"{k}={v}" for k, v in sorted(self.options.model_dump().items()))
        return f"{self.name}|{options}" if options else self.name


# --- preprocessing -----------------------------------------------------------


class Preprocessor(ABC):
    """A step applied to each chunk of examples before the model stage.

    ``fields`` (an option every preprocessor accepts) names the canonical
    fields it works on; by default the task's text input fields.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, fields: Sequence[str]):
        self.options = options
        self.fields = tuple(fields)

    @abstractmethod
    def __call__(self, examples: list[Example]) -> None:
        """Process a chunk of examples in place (batched: use ``nlp.pipe``)."""


# --- input and output --------------------------------------------------------


class Reader(ABC):
    """Reads records from a data file, one at a time, without loading it whole."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()
    #: a folder holding one of these files is data this reader reads whole (``state.json`` of a saved dataset)
    folder_markers: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def read(self, path: Path) -> Iterator[RawRecord]:
        """Yield records in file order. Unparseable ones come back with ``error`` set, never raise."""

    def count_hint(self, path: Path) -> int | None:
        """How many records ``read(path)`` will yield, if that is cheap to know (a progress bar's total); None: unknown."""
        return None

    def sources(self, path: Path) -> list[Path]:
        """The files a read of ``path`` covers, in reading order; the report's data fingerprint hashes them.

        A reader of one file needs nothing more; one of a folder (a saved dataset, a set of shards) lists the
        files whose bytes decide what it reads, so a changed file changes the fingerprint.
        """
        return [path]


class Reporter(ABC):
    """Writes one report file for a finished pipeline run."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: the file ``render`` writes in the run folder; None only for a :class:`Publisher`, which writes none
    filename: ClassVar[str | None]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    def collector(self, task: Task, metrics: Sequence[Metric]) -> RunCollector | None:
        """Called once before the run reads its first record. A collector returned here is fed every written chunk
        of the run, in file order, and is handed back in ``RunResult.collected[self.name]``, so ``render`` needs
        not read the data or predictions files again. None (the default): the reporter needs no per-example data."""
        return None

    @abstractmethod
    def render(self, run: RunResult) -> str:
        """Return the file's text; the runner writes it atomically to ``run.directory / filename``."""


class Publisher(Reporter):
    """A reporter that sends the finished run elsewhere (a tracking server) instead of writing a file of its own.

    The runner calls ``publish`` once every file of the run is in place in ``run.directory`` (predictions.jsonl and
    every file reporter's report), so what it sends is the run's final files; a publisher that fails leaves them as
    they are."""

    filename: ClassVar[None] = None

    def render(self, run: RunResult) -> str:
        raise TypeError(f"{type(self).__name__} is a Publisher: it writes no file, the runner calls publish() instead")

    @abstractmethod
    def publish(self, run: RunResult) -> None:
        """Send the finished run; raise an :class:`~nlpflow.NlpflowError` saying what failed and where."""


class RunCollector(ABC):
    """Gathers what a reporter shows about single examples while the run goes, in memory that does not grow with
    the number of records (top-k heaps, per-slice sums)."""

    @abstractmethod
    def add(self, examples: Sequence[Example], predictions: Sequence[Any], references: Sequence[Any],
            scores: Sequence[dict[str, float | None]]) -> None:
        """One chunk, in file order: the examples, their prediction values and references as written to
        predictions.jsonl, and each example's per-example scores by metric name (None: not finite)."""


@dataclass
class RunResult:
    """What reporters receive: the report as written to report.json, where the run's files are, the
    data file, the pipeline's own reader and task, and each reporter's collector by reporter name."""

    report: dict[str, Any]
    directory: Path
    data_path: Path
    reader: Reader | None = None
    task: Task | None = None
    collected: dict[str, RunCollector] = field(default_factory=dict)
    #: where the predictions are while the reports are rendered: the runner writes every file of a run before it
    #: moves any into place, so a failed write leaves the previous run whole; None means predictions.jsonl
    predictions_file: Path | None = None

    @property
    def predictions_path(self) -> Path:
        return self.predictions_file or self.directory / "predictions.jsonl"

    def iter_predictions(self) -> Iterator[dict[str, Any]]:
        import json

        with open(self.predictions_path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)
