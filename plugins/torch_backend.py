"""The torch backend: transformers checkpoints on CPU, CUDA or MPS, under ``torch.inference_mode()``.

Heads map to Auto classes (sequence classification, a plain encoder with
mean pooling, question answering, seq2seq generation, a causal LM's token log-probabilities and
decoder-only generation). Loading is safe by
default: remote code only when the pipeline sets ``trust_remote_code``, and
safetensors weights only unless ``allow_pickle: true``. On CUDA, batches are
pinned on the collating thread and copied without blocking.

torch is imported when a model loads, not when the plugin registers, so
``nlpflow tasks``, ``validate`` and ``--help`` start without it.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # annotations only: torch itself is imported on first use
    import torch

from nlpflow import (
    Backend,
    LoadedModel,
    ModelConfig,
    ModelError,
    checkpoint_config,
    files_fingerprint,
    has_head,
    hookimpl,
    hub_arguments,
    hub_offline,
    load_tokenizer,
    not_found_message,
    require_head,
    resolve_model_path,
)

#: head -> (transformers Auto class name, the architecture suffix the checkpoint must have)
AUTO_CLASSES = {
    "sequence-classification": ("AutoModelForSequenceClassification", "ForSequenceClassification"),
    "embedding": ("AutoModel", None),
    "question-answering": ("AutoModelForQuestionAnswering", "ForQuestionAnswering"),
    "generation": ("AutoModelForSeq2SeqLM", None),
    "token-logprobs": ("AutoModelForCausalLM", None),
    "causal-generation": ("AutoModelForCausalLM", None),
}

#: architecture suffixes of causal language models (GPT2LMHeadModel, LlamaForCausalLM, ...)
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")
#: the heads that need a causal language model; every other head needs a checkpoint that is not one
CAUSAL_HEADS = ("token-logprobs", "causal-generation")


def resolve_device(spec: str = "auto") -> torch.device:
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec!r} was asked for but CUDA is not available (torch {torch.__version__}); use device: auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    import torch

    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_module(auto_class_name: str, config: ModelConfig, checkpoint: Any, dtype: torch.dtype, **model_kwargs: Any) -> torch.nn.Module:
    """``AutoX.from_pretrained`` with nlpflow's safety rules, every failure a ModelError naming the model."""
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    name = config.name_or_path
    path = resolve_model_path(name)
    if config.allow_pickle:
        warnings.warn(
            f"model {name!r}: allow_pickle is set, so pickle weight files (.bin) may be loaded; "
            "they can run arbitrary code. Prefer a safetensors checkpoint.",
            stacklevel=3,
        )
    architectures = list(getattr(checkpoint, "architectures", None) or [])
    try:
        return auto_class.from_pretrained(
            path, config=checkpoint, dtype=dtype, use_safetensors=None if config.allow_pickle else True, **hub_arguments(config), **model_kwargs
        )
    except ValueError as error:
        text = str(error)
        if "Unrecognized configuration class" in text:
            raise ModelError(
                f"model {name!r} cannot be loaded with {auto_class_name}: found {', '.join(architectures) or checkpoint.model_type}"
            ) from None
        raise ModelError(f"model {name!r}: {text}") from None
    except OSError as error:
        text = str(error)
        if "safetensors" in text.lower() and not config.allow_pickle:
            raise ModelError(
                f"model {name!r} has no safetensors weights in {path}; only safetensors load by default. "
                "Convert it, or set model.allow_pickle: true if you trust the files."
            ) from None
        raise ModelError(not_found_message(name, path, hub_offline(), error)) from None


def require_causal_fit(config: ModelConfig, checkpoint: Any, head: str) -> None:
    """A causal LM only for the causal heads, and those only for a causal LM (AutoModelForCausalLM would put a
    random LM head on an encoder, and AutoModel would silently drop a causal LM's): one ModelError naming the model,
    what it is, and the heads that fit it."""
    architectures = list(getattr(checkpoint, "architectures", None) or [])
    causal = any(architecture.endswith(CAUSAL_ARCHITECTURES) for architecture in architectures)
    if causal == (head in CAUSAL_HEADS):
        return
    found = ", ".join(architectures) or f"no trained head (model_type {checkpoint.model_type!r})"
    if causal:
        raise ModelError(
            f"model {config.name_or_path!r} is a causal language model ({found}); the {head!r} head needs an encoder checkpoint. "
            f"Heads that fit it: {', '.join(CAUSAL_HEADS)} (tasks language-modeling, text-generation)"
        )
    fitting = [name for name in AUTO_CLASSES if name not in CAUSAL_HEADS and (AUTO_CLASSES[name][1] is None or has_head(checkpoint, AUTO_CLASSES[name][1]))]
    raise ModelError(
        f"model {config.name_or_path!r} is not a causal language model (found {found}); the {head!r} head needs a "
        f"*{' or *'.join(CAUSAL_ARCHITECTURES)} checkpoint. Heads that fit it: {', '.join(fitting)}"
    )


def token_logprobs(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The ``token-logprobs`` head: log p(target_ids[i] | input_ids[: i + 1]) per position, float32 (rows, width).

    The log-softmax runs in float32 on one row at a time, so a bf16 model gives float32 log-probabilities and a
    large vocabulary never needs a float32 copy of the whole batch's logits.
    """
    import torch

    targets = inputs["target_ids"]
    logits = module(**{name: tensor for name, tensor in inputs.items() if name != "target_ids"}).logits
    logprobs = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for row in range(len(logits)):
        logprobs[row] = torch.log_softmax(logits[row].float(), dim=-1).gather(-1, targets[row].unsqueeze(-1)).squeeze(-1)
    return logprobs.cpu().numpy()


def parameters_fingerprint(module: torch.nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens, L2-normalised, in float32.

    This is sentence-transformers' pooling for all-MiniLM and similar encoders,
    so a plain ``AutoModel`` checkpoint gives the embeddings those models were trained for.
    """
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def causal_generate(
    module: torch.nn.Module, tokenizer: Any, inputs: Mapping[str, torch.Tensor], *,
    eos_token_id: list[int], pad_token_id: int, stop_strings: list[str] | None = None, seed: int | None = None,
    **generate_options: Any,
) -> list[list[int]]:
    """Decoder-only generation on a right-padded batch: the new token ids of each row, cut before its end token.

    The model stage pads on the right; a decoder-only model must see every row
    end at the same position, so each row is moved right by its padding (one
    gather) before ``generate()``, which derives position ids from the
    attention mask and keeps its KV cache. A row ends at any of
    ``eos_token_id`` or at a stop string (transformers' ``stop_strings``), and
    the batch ends once every row has.

    With ``do_sample``, the random generator is seeded from ``seed`` and the
    batch's own input ids, inside a forked RNG state: a batch samples the same
    tokens whatever ran before it (a resumed run, another Ray worker), and the
    process's global RNG is left as it was. The same batch gives the same
    samples; a different batch size groups rows differently and samples differently.
    """
    import torch

    mask = inputs["attention_mask"]
    width = mask.shape[1]
    shift = width - mask.sum(1)
    # left-aligned column j of a row is its right-padded column j - shift (mod width: the padding wraps to the left)
    source = (torch.arange(width, device=mask.device)[None, :] - shift[:, None]) % width
    aligned = {name: tensor.gather(1, source) for name, tensor in inputs.items()}
    options = {**generate_options, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    if stop_strings:
        options.update(stop_strings=stop_strings, tokenizer=tokenizer)
    if generate_options.get("do_sample"):
        digest = hashlib.sha256(str(seed).encode() + inputs["input_ids"].cpu().numpy().tobytes()).digest()
        devices = [mask.device.index or 0] if mask.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int.from_bytes(digest[:8], "little"))
            sequences = module.generate(**aligned, **options)
    else:
        sequences = module.generate(**aligned, **options)
    ends = set(eos_token_id)
    rows = []
    for row in sequences[:, width:].cpu().tolist():
        cut = next((position for position, token in enumerate(row) if token in ends), len(row))
        # a row ended by a stop string is filled with padding up to the batch's longest
        while cut and stop_strings and row[cut - 1] == pad_token_id:
            cut -= 1
        rows.append(row[:cut])
    return rows


class TorchBackend(Backend):
    name = "torch"
    description = "transformers models in torch, on CPU, CUDA or MPS (the default)"
    heads = tuple(AUTO_CLASSES)

    def checkpoint_config(self, model: ModelConfig) -> Any:
        return checkpoint_config(model)

    def load_head(self, model: ModelConfig, head: str, *, require_fast_tokenizer: bool = True) -> LoadedModel:
        auto_class_name, required = AUTO_CLASSES[head]
        checkpoint = checkpoint_config(model)
        require_head(model, checkpoint, required)
        require_causal_fit(model, checkpoint, head)
        tokenizer = load_tokenizer(model, require_fast_tokenizer)
        device = resolve_device(model.device)
        dtype = resolve_dtype(model.dtype, device)
        module = load_module(auto_class_name, model, checkpoint, dtype)
        module.eval()
        module.to(device)
        path = resolve_model_path(model.name_or_path)
        fingerprint = files_fingerprint(path, model) or parameters_fingerprint(module)
        return LoadedModel(
            tokenizer=tokenizer, checkpoint=module.config, config=model, head=head, backend=self, handle=module,
            name_or_path=model.name_or_path, path=path, fingerprint=fingerprint,
            device=str(device), dtype=str(dtype).replace("torch.", ""),
        )

    def prepare(self, loaded: LoadedModel, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in batch.items()}
        if loaded.device.startswith("cuda"):
            tensors = {name: tensor.pin_memory() for name, tensor in tensors.items()}
        return tensors

    def run(self, loaded: LoadedModel, prepared: Mapping[str, torch.Tensor], **options: Any) -> dict[str, Any]:
        import torch

        module = loaded.handle
        with torch.inference_mode():
            if loaded.device != "cpu":
                prepared = {name: tensor.to(loaded.device, non_blocking=True) for name, tensor in prepared.items()}
            head = loaded.head
            if head == "causal-generation":
                return {"sequences": causal_generate(module, loaded.tokenizer, prepared, **options)}
            if head == "generation":
                sequences = module.generate(**prepared, **options)
                return {"sequences": sequences.cpu().tolist()}
            if head == "token-logprobs":
                return {"logprobs": token_logprobs(module, prepared)}
            output = module(**prepared)
            if head == "sequence-classification":
                return {"logits": output.logits.float().cpu().numpy()}
            if head == "embedding":
                return {"embedding": mean_pooled(output.last_hidden_state, prepared["attention_mask"]).cpu().numpy()}
            if head == "question-answering":
                return {"start_logits": output.start_logits.float().cpu().numpy(), "end_logits": output.end_logits.float().cpu().numpy()}
        raise ModelError(f"backend 'torch' has no head {head!r}")

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
