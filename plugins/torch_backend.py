"""The torch backend: transformers checkpoints on CPU, CUDA or MPS, under ``torch.inference_mode()``.

Heads map to Auto classes through one table, :data:`TORCH_HEADS` (sequence
classification, a plain encoder with mean pooling, question answering, seq2seq
generation); a subclass adds a head with one row. Loading is safe by
default: remote code only when the pipeline sets ``trust_remote_code``, and
safetensors weights only unless ``allow_pickle: true``. On CUDA, batches are
pinned on the collating thread and copied without blocking.

torch is imported when a model loads, not when the plugin registers, so
``nlpflow tasks``, ``validate`` and ``--help`` start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:  # annotations only: torch itself is imported on first use
    import torch

from nlpflow import (
    Head,
    LoadedModel,
    ModelConfig,
    OpenedModel,
    TransformersBackend,
    TransformersHead,
    hookimpl,
    load_module,
    parameters_fingerprint,
    resolve_device,
    resolve_dtype,
)


@dataclass(frozen=True)
class TorchHead(TransformersHead):
    """A torch head row: the architecture suffix, the transformers Auto class that loads it, and how the outputs
    come from the module.

    ``compute(module, inputs, options)`` runs under ``torch.inference_mode()``
    with the inputs on the device and returns the head's outputs off it.
    """

    auto_class: str
    compute: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens, L2-normalised, in float32.

    This is sentence-transformers' pooling for all-MiniLM and similar encoders,
    so a plain ``AutoModel`` checkpoint gives the embeddings those models were trained for.
    """
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _float_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy()


def _classification_logits(module: Any, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"logits": _float_array(module(**inputs).logits)}


def _pooled_embedding(module: Any, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding": mean_pooled(module(**inputs).last_hidden_state, inputs["attention_mask"]).cpu().numpy()}


def _answer_span_logits(module: Any, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    output = module(**inputs)
    return {"start_logits": _float_array(output.start_logits), "end_logits": _float_array(output.end_logits)}


def _generated_ids(module: Any, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"sequences": module.generate(**inputs, **options).cpu().tolist()}


#: head name -> how torch loads and computes it; adding a head to this backend is adding a row
TORCH_HEADS: dict[str, TorchHead] = {
    "sequence-classification": TorchHead(
        architecture="ForSequenceClassification", auto_class="AutoModelForSequenceClassification", compute=_classification_logits,
    ),
    "embedding": TorchHead(architecture=None, auto_class="AutoModel", compute=_pooled_embedding),
    "question-answering": TorchHead(
        architecture="ForQuestionAnswering", auto_class="AutoModelForQuestionAnswering", compute=_answer_span_logits,
    ),
    "generation": TorchHead(architecture=None, auto_class="AutoModelForSeq2SeqLM", compute=_generated_ids),
}


class TorchBackend(TransformersBackend):
    name = "torch"
    description = "transformers models in torch, on CPU, CUDA or MPS (the default)"
    head_table = TORCH_HEADS

    def open(self, model: ModelConfig, head: Head, checkpoint: Any, tokenizer: Any, path: str, fingerprint: str | None) -> OpenedModel:
        device = resolve_device(model.device)
        dtype = resolve_dtype(model.dtype, device)
        module = load_module(self.head_table[head.name].auto_class, model, checkpoint, dtype)
        module.eval()
        module.to(device)
        return OpenedModel(
            handle=module, device=str(device), dtype=str(dtype).replace("torch.", ""),
            fingerprint=fingerprint or parameters_fingerprint(module), checkpoint=module.config,
        )

    def prepare(self, loaded: LoadedModel, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in batch.items()}
        if loaded.device.startswith("cuda"):
            tensors = {name: tensor.pin_memory() for name, tensor in tensors.items()}
        return tensors

    def run(self, loaded: LoadedModel, prepared: Mapping[str, torch.Tensor], **options: Any) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            if loaded.device != "cpu":
                prepared = {name: tensor.to(loaded.device, non_blocking=True) for name, tensor in prepared.items()}
            return self.head_table[loaded.head.name].compute(loaded.handle, prepared, options)

    def is_out_of_memory(self, error: BaseException) -> bool:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
        return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()

    def release_memory(self, loaded: LoadedModel) -> None:
        import torch

        if loaded.device.startswith("cuda"):
            torch.cuda.empty_cache()


@hookimpl
def register_backends(register):
    register(TorchBackend)
