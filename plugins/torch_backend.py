"""The torch backend: transformers checkpoints on CPU, CUDA or MPS, under ``torch.inference_mode()``.

Heads map to Auto classes through one table, :data:`TORCH_HEADS` (sequence
classification, a plain encoder with mean pooling, question answering, seq2seq
generation, a causal LM's token log-probabilities, choices scored after one shared context, and
decoder-only generation);
a subclass adds a head with one row. Loading is safe by
default: remote code only when the pipeline sets ``trust_remote_code``, and
safetensors weights only unless ``allow_pickle: true``. On CUDA, batches are
pinned on the collating thread and copied without blocking.

torch is imported when a model loads, not when the plugin registers, so
``nlpflow tasks``, ``validate`` and ``--help`` start without it.
"""

from __future__ import annotations

import hashlib
import inspect

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:  # annotations only: torch itself is imported on first use
    import torch

from nlpflow import (
    Head,
    LoadedModel,
    ModelConfig,
    ModelError,
    OpenedModel,
    TransformersBackend,
    TransformersHead,
    has_head,
    hookimpl,
    is_causal_lm,
    load_module,
    parameters_fingerprint,
    resolve_device,
    resolve_dtype,
)


@dataclass(frozen=True)
class TorchHead(TransformersHead):
    """A torch head row: the architecture suffix, the transformers Auto class that loads it, and how the outputs
    come from the module.

    ``compute(loaded, inputs, options)`` runs under ``torch.inference_mode()``
    with the inputs on the device (the module is ``loaded.handle``) and returns
    the head's outputs off it. ``causal``: the head needs a causal language
    model, and every other head needs a checkpoint that is not one.
    """

    auto_class: str
    compute: Callable[[LoadedModel, Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    causal: bool = False


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


def _classification_logits(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"logits": _float_array(loaded.handle(**inputs).logits)}


def _pooled_embedding(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding": mean_pooled(loaded.handle(**inputs).last_hidden_state, inputs["attention_mask"]).cpu().numpy()}


def _answer_span_logits(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    output = loaded.handle(**inputs)
    return {"start_logits": _float_array(output.start_logits), "end_logits": _float_array(output.end_logits)}


def _generated_ids(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"sequences": loaded.handle.generate(**inputs, **options).cpu().tolist()}


def accepts_logits_to_keep(module: torch.nn.Module) -> bool:
    """Whether the causal LM's forward takes ``logits_to_keep`` (transformers >= 4.50 for GPT-2, Llama, Qwen2, ...):
    then the model's own head code (its LM head and any logit scaling or soft-capping) runs at the kept positions only."""
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def token_logprobs(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The ``token-logprobs`` head: log p(target_ids[i] | input_ids[: i + 1]) per position, float32 (rows, width).

    Only scored positions are computed: those with a real token (attention mask 1) and a target of at least 0; the
    others (-100, transformers' ignore index, which is also what the model stage pads ``target_ids`` with) give 0.0. The vocabulary projection runs through the model's own forward with ``logits_to_keep`` set to
    the columns where any row is scored (all columns, sliced afterwards, for a model without that argument), so the
    unscored context of an overlapping window costs the model body only. The log-softmax runs in float32 on one
    row's scored positions at a time, so a bf16 model gives float32 log-probabilities and a large vocabulary never
    needs a float32 copy of the whole batch's logits.
    """
    import torch

    targets = inputs["target_ids"]
    scored = (targets >= 0) & inputs["attention_mask"].bool()
    logprobs = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    columns = scored.any(0).nonzero().squeeze(-1)
    if not len(columns):
        return logprobs.cpu().numpy()
    body = {name: tensor for name, tensor in inputs.items() if name != "target_ids"}
    if accepts_logits_to_keep(module):
        logits = module(**body, logits_to_keep=columns).logits
    else:
        logits = module(**body).logits[:, columns]
    kept_scored, kept_targets = scored[:, columns], targets[:, columns]
    # counted on the host once: a .any() and a .all() per row would each wait on the device
    for row, count in enumerate(kept_scored.sum(1).tolist()):
        if not count:
            continue
        positions = kept_scored[row]
        every = count == len(columns)  # the usual case once the plan batches rows scored alike: no copy to select them
        row_logits = logits[row] if every else logits[row][positions]
        row_targets = kept_targets[row] if every else kept_targets[row][positions]
        row_logprobs = torch.log_softmax(row_logits.float(), dim=-1)
        logprobs[row, columns if every else columns[positions]] = row_logprobs.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
    return logprobs.cpu().numpy()


#: the ``choice-logprobs`` head's declaration: a plugin-declared head, computed by this backend only
CHOICE_LOGPROBS = Head(
    "choice-logprobs", {"loglikelihood": "row", "greedy": "row"},
    "a causal language model (AutoModelForCausalLM) scoring several continuations of one context: a row's input_ids "
    "are the context's tokens then each choice's, and choice_index marks them (0: context, k: the k-th choice, each "
    "with at least one token, in order). The context runs once and every choice runs against its KV cache; per row, "
    "each choice's summed log-probability (float64, from a float32 log-softmax) and whether every one of its tokens "
    "was the greedy one (lm-evaluation-harness's is_greedy)",
)


def _cache_argument(module: torch.nn.Module) -> str:
    """The forward's name for a KV cache to continue: ``cache`` in recent transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def choice_logprobs(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``choice-logprobs`` head: per row, each choice's log-likelihood after the context, and its greediness.

    The contexts run once, right-padded, with the KV cache kept and the vocabulary projected only at each row's last
    context position (which predicts every choice's first token). The cache's rows are then repeated per choice and
    all choices run in one forward against it, fed all but their last token, with position ids continuing each row's
    own context and an attention mask that hides the context padding left inside the cache. A batch whose choices
    are all one token long needs no second forward.
    """
    import torch

    input_ids, segments = inputs["input_ids"], inputs["choice_index"]
    real = inputs["attention_mask"].bool()
    rows, device = len(input_ids), input_ids.device
    # tokens per segment and row: column 0 the context, column k the k-th choice (padding counts nowhere)
    counts = torch.zeros((rows, int(segments.max()) + 1), dtype=torch.long, device=device)
    counts.scatter_add_(1, segments * real, real.long())
    context_lengths, choice_lengths = counts[:, 0], counts[:, 1:]
    choices_per_row = (segments * real).amax(1)
    if bool((context_lengths < 1).any()) or bool(((choice_lengths > 0).sum(1) != choices_per_row).any()):
        raise ValueError("choice-logprobs: every row needs a context and choices 1..k of at least one token each")
    choice_row, choice_number = (choice_lengths > 0).nonzero(as_tuple=True)
    lengths = choice_lengths[choice_row, choice_number]
    starts = (context_lengths[:, None] + choice_lengths.cumsum(1) - choice_lengths)[choice_row, choice_number]
    longest = int(lengths.max())
    steps = torch.arange(longest, device=device)
    valid = steps[None, :] < lengths[:, None]
    targets = torch.where(valid, input_ids[choice_row[:, None], (starts[:, None] + steps).clamp(max=input_ids.shape[1] - 1)], 0)

    context_width = int(context_lengths.max())
    context_mask = (torch.arange(context_width, device=device)[None, :] < context_lengths[:, None]).long()
    last_positions, last_column = torch.unique(context_lengths - 1, return_inverse=True)
    context_inputs = {"input_ids": input_ids[:, :context_width], "attention_mask": context_mask, "use_cache": True}
    if accepts_logits_to_keep(module):
        context_output = module(**context_inputs, logits_to_keep=last_positions)
        next_logits = context_output.logits[torch.arange(rows, device=device), last_column]
    else:
        context_output = module(**context_inputs)
        next_logits = context_output.logits[torch.arange(rows, device=device), context_lengths - 1]
    # logits[i, j] predicts targets[i, j]: the context's last position for j = 0, the choice's own position j - 1 after
    logits = [next_logits[choice_row]]
    if longest > 1:
        cache = context_output.past_key_values
        cache.batch_select_indices(choice_row)
        fed = longest - 1
        choice_inputs = {
            "input_ids": targets[:, :fed], _cache_argument(module): cache,
            "attention_mask": torch.cat([context_mask[choice_row], valid[:, :fed].long()], dim=1),
            "position_ids": context_lengths[choice_row][:, None] + steps[None, :fed],
        }
        logits.append(module(**choice_inputs).logits)
    del context_output
    logits = torch.cat([logits[0][:, None], *logits[1:]], dim=1) if len(logits) > 1 else logits[0][:, None]
    loglikelihoods = torch.zeros(len(choice_row), dtype=torch.float64, device=device)
    greedy = torch.zeros(len(choice_row), dtype=torch.bool, device=device)
    # the lengths are read to the host once: reading each one on its own would wait on the device per choice
    for choice, length in enumerate(lengths.tolist()):
        # one choice at a time in float32: a large vocabulary never needs a float32 copy of the whole batch's logits
        scored = torch.log_softmax(logits[choice, :length].float(), dim=-1)
        wanted = targets[choice, :length]
        loglikelihoods[choice] = scored.gather(-1, wanted[:, None]).double().sum()
        greedy[choice] = (scored.argmax(-1) == wanted).all()
    per_row = choices_per_row.cpu().tolist()
    return ([values.numpy() for values in loglikelihoods.cpu().split(per_row)],
            [values.numpy() for values in greedy.cpu().split(per_row)])


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


def _token_logprobs(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"logprobs": token_logprobs(loaded.handle, inputs)}


def _choice_logprobs(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    loglikelihood, greedy = choice_logprobs(loaded.handle, inputs)
    return {"loglikelihood": loglikelihood, "greedy": greedy}


def _causal_generated_ids(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"sequences": causal_generate(loaded.handle, loaded.tokenizer, inputs, **options)}


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
    "token-logprobs": TorchHead(architecture=None, auto_class="AutoModelForCausalLM", compute=_token_logprobs, causal=True),
    "causal-generation": TorchHead(architecture=None, auto_class="AutoModelForCausalLM", compute=_causal_generated_ids, causal=True),
    "choice-logprobs": TorchHead(architecture=None, auto_class="AutoModelForCausalLM", compute=_choice_logprobs, causal=True),
}

def require_causal_fit(config: ModelConfig, checkpoint: Any, head: str, table: Mapping[str, TorchHead]) -> None:
    """A causal LM only for the causal heads, and those only for a causal LM (AutoModelForCausalLM would put a
    random LM head on an encoder, and AutoModel would silently drop a causal LM's): one ModelError naming the model,
    what it is, and the heads of ``table`` that fit it."""
    architectures = list(getattr(checkpoint, "architectures", None) or [])
    causal = is_causal_lm(checkpoint)
    if causal == table[head].causal:
        return
    found = ", ".join(architectures) or f"no trained head (model_type {checkpoint.model_type!r})"
    if causal:
        fitting = [name for name, row in table.items() if row.causal]
        raise ModelError(
            f"model {config.name_or_path!r} is a causal language model ({found}); the {head!r} head needs an encoder checkpoint. "
            f"Heads that fit it: {', '.join(fitting)} (tasks language-modeling, text-generation, and sentiment or text-classification "
            "with mode: loglikelihood)"
        )
    fitting = [name for name, row in table.items() if not row.causal and (row.architecture is None or has_head(checkpoint, row.architecture))]
    raise ModelError(
        f"model {config.name_or_path!r} is not a causal language model (found {found}); the {head!r} head needs a "
        f"*ForCausalLM or *LMHeadModel checkpoint. Heads that fit it: {', '.join(fitting)}"
    )


class TorchBackend(TransformersBackend):
    name = "torch"
    description = "transformers models in torch, on CPU, CUDA or MPS (the default)"
    head_table = TORCH_HEADS

    def open(self, model: ModelConfig, head: Head, checkpoint: Any, tokenizer: Any, path: str, fingerprint: str | None) -> OpenedModel:
        require_causal_fit(model, checkpoint, head.name, self.head_table)
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
            return self.head_table[loaded.head.name].compute(loaded, prepared, options)

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


@hookimpl
def register_heads(register):
    register(CHOICE_LOGPROBS)
