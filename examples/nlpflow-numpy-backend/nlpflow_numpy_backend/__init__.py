"""A numpy backend for nlpflow: bag-of-tokens logistic regression serving the ``sequence-classification`` head.

This is what a third-party backend looks like when it is written against the
public contract alone. It subclasses :class:`nlpflow.TransformersBackend`, so
the shared load steps come from nlpflow: the checkpoint config is read, a
checkpoint trained for another head is refused, the tokenizer is loaded, the
files are fingerprinted and the :class:`nlpflow.LoadedModel` is built. The
backend writes what differs: :meth:`NumpyBackend.open` loads the weights, and
:meth:`NumpyBackend.run` computes logits on a padded batch.

A model folder holds:

- a transformers tokenizer (``tokenizer.json`` and ``tokenizer_config.json``);
- ``config.json``: ``architectures`` (ending in ``ForSequenceClassification``)
  and ``id2label``, the labels in logit order;
- ``bag_of_tokens.npz``: ``weights`` (vocabulary size x labels) and ``bias`` (labels).

The logits of a row are ``counts @ weights + bias``, where ``counts`` are how
many times each token id occurs among the row's real tokens (attention mask
1). :func:`train` fits such a folder from labelled texts with plain gradient
descent, so the example is complete without any other library.

In a pipeline: ``model: {name_or_path: ./my-model, backend: numpy}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from nlpflow import (
    Head,
    LoadedModel,
    ModelConfig,
    ModelError,
    OpenedModel,
    TransformersBackend,
    TransformersHead,
    checkpoint_directory,
    file_sha256,
    hookimpl,
    resolve_model_path,
)

__version__ = "0.1.0"

#: the weights file in a model folder
WEIGHTS_FILE = "bag_of_tokens.npz"


class NumpyBackend(TransformersBackend):
    name = "numpy"
    description = "bag-of-tokens logistic regression in numpy, on CPU (example third-party backend)"
    head_table = {"sequence-classification": TransformersHead(architecture="ForSequenceClassification")}

    def checkpoint_config(self, model: ModelConfig) -> Any:
        """The folder's ``config.json`` as a transformers ``PretrainedConfig`` (it names no model_type: it is no transformers model)."""
        from transformers import PretrainedConfig

        config_file = self._folder(model) / "config.json"
        try:
            return PretrainedConfig.from_json_file(str(config_file))
        except (OSError, ValueError) as error:
            raise ModelError(f"model {model.name_or_path!r}: backend 'numpy' cannot read {config_file}: {error}") from None

    def open(self, model: ModelConfig, head: Head, checkpoint: Any, tokenizer: Any, path: str, fingerprint: str | None) -> OpenedModel:
        if model.device not in ("auto", "cpu"):
            raise ModelError(f"backend 'numpy' runs on the CPU, not {model.device!r}; set model.device: auto or cpu")
        if model.dtype not in ("auto", "float32"):
            raise ModelError(f"backend 'numpy' computes in float32, not {model.dtype}; set model.dtype: auto or float32")
        weights_file = self._folder(model) / WEIGHTS_FILE
        try:
            with np.load(weights_file) as stored:
                weights = stored["weights"].astype(np.float32)
                bias = stored["bias"].astype(np.float32)
        except (OSError, KeyError, ValueError) as error:
            raise ModelError(f"model {model.name_or_path!r}: backend 'numpy' needs {weights_file} with 'weights' and 'bias': {error}") from None
        labels = len(checkpoint.id2label)
        if weights.ndim != 2 or weights.shape[1] != labels or bias.shape != (labels,) or weights.shape[0] < len(tokenizer):
            raise ModelError(
                f"model {model.name_or_path!r}: {weights_file} holds weights {weights.shape} and bias {bias.shape}; "
                f"expected ({len(tokenizer)} tokens or more, {labels} labels) and ({labels},)"
            )
        # the weights file is not among the files nlpflow fingerprints, and it decides the outputs
        identity = hashlib.sha256(f"{fingerprint}\x00{file_sha256(weights_file)}".encode()).hexdigest()
        return OpenedModel(handle=(weights, bias), device="cpu", dtype="float32", fingerprint=identity)

    def run(self, loaded: LoadedModel, prepared: Mapping[str, np.ndarray], **options: Any) -> dict[str, Any]:
        weights, bias = loaded.handle
        return {"logits": bag_of_tokens(prepared["input_ids"], prepared["attention_mask"], len(weights)) @ weights + bias}

    def _folder(self, model: ModelConfig) -> Path:
        folder = checkpoint_directory(resolve_model_path(model), model)
        if folder is None:
            raise ModelError(f"model {model.name_or_path!r}: backend 'numpy' loads local folders (or hub snapshots in the cache); none found")
        return folder


def bag_of_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, vocabulary: int) -> np.ndarray:
    """How many times each token id occurs among each row's real tokens: float32 (rows, vocabulary)."""
    counts = np.zeros((len(input_ids), vocabulary), dtype=np.float32)
    rows = np.repeat(np.arange(len(input_ids)), input_ids.shape[1])
    np.add.at(counts, (rows, input_ids.reshape(-1)), attention_mask.reshape(-1).astype(np.float32))
    return counts


def train(records: Iterable[tuple[str, str]], tokenizer_folder: str | Path, out_folder: str | Path,
          steps: int = 300, learning_rate: float = 0.5) -> Path:
    """Fit a model folder from ``(text, label)`` pairs, with the tokenizer found in ``tokenizer_folder``.

    Softmax regression on token counts, full-batch gradient descent from zero
    weights (so the same data always gives the same folder). Labels are
    numbered in sorted order.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    records = list(records)
    labels = sorted({label for _, label in records})
    encoded = tokenizer([text for text, _ in records], truncation=True, padding=True, return_tensors="np")
    counts = bag_of_tokens(encoded["input_ids"], encoded["attention_mask"], len(tokenizer))
    targets = np.eye(len(labels), dtype=np.float32)[[labels.index(label) for _, label in records]]
    weights = np.zeros((len(tokenizer), len(labels)), dtype=np.float32)
    bias = np.zeros(len(labels), dtype=np.float32)
    for _ in range(steps):
        logits = counts @ weights + bias
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - targets) / len(records)
        weights -= learning_rate * counts.T @ error
        bias -= learning_rate * error.sum(axis=0)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    np.savez(out / WEIGHTS_FILE, weights=weights, bias=bias)
    config = {
        "architectures": ["BagOfTokensForSequenceClassification"],
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


@hookimpl
def register_backends(register):
    register(NumpyBackend)
