"""The onnxruntime backend: encoder checkpoints exported to ONNX once, then run with onnxruntime.

Heads: sequence classification, embedding (mean pooling and L2 normalisation
inside the graph) and question answering; generation stays with the torch
backend. The graph comes from, in order:

1. ``model.onnx`` or ``onnx/model.onnx`` in the checkpoint folder, when its
   outputs are the head's (the row's ``graph_outputs`` in :data:`ONNX_HEADS`);
2. nlpflow's cache, ``<cache dir>/onnx/<weights fingerprint>-<head>.onnx``;
3. an export of the checkpoint with ``torch.onnx``, written atomically to that
   cache file (the cache dir is ``NLPFLOW_CACHE_DIR`` or ``~/.cache/nlpflow``).

onnxruntime is an optional extra (``pip install 'nlpflow[onnx]'``) and is
imported only when a model loads, so this plugin registers without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from nlpflow import (
    Head,
    LoadedModel,
    ModelConfig,
    ModelError,
    OpenedModel,
    TransformersBackend,
    TransformersHead,
    check_weight_format,
    checkpoint_directory,
    default_cache_dir,
    file_sha256,
    hookimpl,
    load_module,
    resolve_model_path,
)
from nlpflow.plugins.torch_backend import mean_pooled

INSTALL_HINT = "backend 'onnxruntime' needs the onnx extra: pip install 'nlpflow[onnx]' (onnxruntime, onnx, onnxscript)"

@dataclass(frozen=True)
class OnnxHead(TransformersHead):
    """An onnxruntime head row: the architecture suffix, the Auto class the export loads, the graph's outputs,
    and the export wrapper's function.

    ``graph_outputs`` maps the graph's output names, in order, to the nlpflow output each one is returned as.
    A ``model.onnx`` shipped with a checkpoint is used for a head only when it has these outputs.
    ``export(output, inputs)`` turns the module's output (and its inputs by name) into exactly those outputs,
    as one tensor or a tuple, for ``torch.onnx.export``.
    """

    auto_class: str
    graph_outputs: Mapping[str, str]
    export: Callable[[Any, Mapping[str, Any]], Any]


#: head name -> how onnxruntime computes it; generation stays with the torch backend. ``sentence_embedding``
#: in a shipped graph must be the mean-pooled, L2-normalised embedding. (The graph name is not "embedding":
#: torch.onnx's dynamo exporter names an internal node that, and the names collide.)
ONNX_HEADS: dict[str, OnnxHead] = {
    "sequence-classification": OnnxHead(
        architecture="ForSequenceClassification", auto_class="AutoModelForSequenceClassification",
        graph_outputs={"logits": "logits"},
        export=lambda output, inputs: output.logits.float(),
    ),
    "embedding": OnnxHead(
        architecture=None, auto_class="AutoModel",
        graph_outputs={"sentence_embedding": "embedding"},
        export=lambda output, inputs: mean_pooled(output.last_hidden_state, inputs["attention_mask"]),
    ),
    "question-answering": OnnxHead(
        architecture="ForQuestionAnswering", auto_class="AutoModelForQuestionAnswering",
        graph_outputs={"start_logits": "start_logits", "end_logits": "end_logits"},
        export=lambda output, inputs: (output.start_logits.float(), output.end_logits.float()),
    ),
}

SHIPPED_GRAPHS = ("model.onnx", "onnx/model.onnx")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(INSTALL_HINT) from None
    return onnxruntime


def cached_graph_path(fingerprint: str, head: str) -> Path:
    return default_cache_dir() / "onnx" / f"{fingerprint}-{head}.onnx"


def open_session(onnxruntime: Any, model: ModelConfig, graph: Path, chosen: list[Any]) -> Any:
    try:
        return onnxruntime.InferenceSession(str(graph), providers=chosen)
    except Exception as error:  # onnxruntime raises its own pybind exception types
        raise ModelError(f"model {model.name_or_path!r}: onnxruntime cannot load {graph}: {error}") from None


def shipped_session(onnxruntime: Any, model: ModelConfig, path: str, row: OnnxHead, chosen: list[Any]) -> tuple[Any, Path] | tuple[None, None]:
    """A session on the checkpoint's own ``model.onnx`` when that computes the head (has the row's graph outputs)."""
    directory = checkpoint_directory(path, model)
    if directory is None:
        return None, None
    for relative in SHIPPED_GRAPHS:
        candidate = directory / relative
        if candidate.is_file():
            session = open_session(onnxruntime, model, candidate, chosen)
            if set(row.graph_outputs) <= {output.name for output in session.get_outputs()}:
                return session, candidate
    return None, None


def head_graph(module: Any, row: OnnxHead, input_names: list[str]) -> Any:
    """A torch module that takes the inputs positionally and returns exactly the row's graph outputs, in order."""
    import torch

    class HeadGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = module

        def forward(self, *inputs):
            arguments = dict(zip(input_names, inputs))
            return row.export(self.module(**arguments), arguments)

    return HeadGraph()


def export_graph(model: ModelConfig, checkpoint: Any, tokenizer: Any, head: Head, target: Path) -> None:
    """Export the checkpoint's ``head`` to ``target`` with torch.onnx, on CPU in float32; atomic (temp file, rename)."""
    import torch

    row = ONNX_HEADS[head.name]
    # eager attention: measured to export a graph that matches torch (tests/test_onnx_backend.py checks it)
    module = load_module(row.auto_class, model, checkpoint, torch.float32, attn_implementation="eager")
    input_names = [name for name in tokenizer.model_input_names if name in ("input_ids", "attention_mask", "token_type_ids")]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise ModelError(f"model {model.name_or_path!r}: its tokenizer gives {tokenizer.model_input_names}; the onnxruntime backend needs input_ids and attention_mask")
    wrapper = head_graph(module, row, input_names)
    # eval() on the wrapper itself: export runs it in the mode it is in, and a wrapper in training
    # mode would switch the checkpoint's dropout back on for the traced graph
    wrapper.eval()
    sample = tokenizer(["a short sample", "a somewhat longer sample sentence for tracing"], padding=True, return_tensors="pt")
    arguments = tuple(sample[name] for name in input_names)
    output_names = list(row.graph_outputs)
    axes = {name: {0: "rows", 1: "tokens"} for name in input_names}
    for name in output_names:
        axes[name] = {0: "rows", 1: "tokens"} if head.outputs[row.graph_outputs[name]] == "token" else {0: "rows"}
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".onnx.tmp", dir=target.parent)
    os.close(handle)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about Python conditions it freezes (mask padding that is always 0 here: the
            # model stage pads the mask with the ids); they are noise for the user who only asked for a run
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # "If indices include negative values, the exported graph will produce incorrect results": said of every
            # advanced indexing with two index tensors. In the encoders exported here that is transformers' padding
            # mask, padding_mask[batch_idx, kv_idx], indexed by torch.arange of the batch and of the keys (offset 0
            # in an encoder): never negative, so the warning does not apply (the tests compare the graphs' outputs
            # with torch's)
            warnings.filterwarnings(
                "ignore", message="Exporting aten::index operator of advanced indexing", category=UserWarning)
            # the TorchScript exporter (dynamo=False): about 2-4 s on MiniLM against ~11 s for dynamo=True, and it
            # matches torch to ~1.6e-7 there. dynamo=True also needs dynamic_shapes that pass torch.export's
            # shape checks (plain Dim("rows"), Dim("tokens") per input failed validation on MiniLM with torch
            # 2.13). torch warns that this exporter is deprecated; when it is removed, switch here.
            torch.onnx.export(
                wrapper, arguments, temporary, input_names=input_names, output_names=output_names,
                dynamic_axes=axes, opset_version=17, dynamo=False,
            )
        os.replace(temporary, target)
    except ImportError:  # torch.onnx needs the onnx package (and onnxscript) from the extra
        raise ModelError(INSTALL_HINT) from None
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"model {model.name_or_path!r}: exporting the {head.name!r} head to ONNX failed: {type(error).__name__}: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def providers(onnxruntime: Any, spec: str) -> tuple[list[Any], str]:
    """onnxruntime execution providers for ``model.device``, and the device string the model reports."""
    available = onnxruntime.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if spec == "auto":
        return (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda") if has_cuda else (["CPUExecutionProvider"], "cpu")
    if spec == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        if not has_cuda:
            raise ModelError(
                f"device {spec!r} was asked for but onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu, or use device: auto or cpu"
            )
        device_id = int(match.group(1) or 0)
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], f"cuda:{device_id}" if match.group(1) else "cuda"
    raise ModelError(f"backend 'onnxruntime' runs on cpu or cuda, not {spec!r}; use model.backend: torch for {spec}")


class OnnxRuntimeBackend(TransformersBackend):
    name = "onnxruntime"
    description = "encoder checkpoints exported to ONNX (cached by weights fingerprint) and run with onnxruntime on CPU or CUDA"
    head_table = ONNX_HEADS

    def check_model(self, model: ModelConfig) -> None:
        self.checkpoint_config(model)
        # a checkpoint that ships its own graph may run from it without its torch weights ever loading
        directory = checkpoint_directory(resolve_model_path(model), model)
        if directory is None or not any((directory / relative).is_file() for relative in SHIPPED_GRAPHS):
            check_weight_format(model)

    def open(self, model: ModelConfig, head: Head, checkpoint: Any, tokenizer: Any, path: str, fingerprint: str | None) -> OpenedModel:
        onnxruntime = import_onnxruntime()
        if model.dtype not in ("auto", "float32"):
            raise ModelError(f"backend 'onnxruntime' runs models in float32, not {model.dtype}; set model.dtype: auto or float32, or use model.backend: torch")
        if fingerprint is None:
            raise ModelError(f"model {model.name_or_path!r}: no checkpoint files found at {path}; the onnxruntime backend exports from a folder of files")
        row = self.head_table[head.name]
        chosen, device = providers(onnxruntime, model.device)
        session, graph = shipped_session(onnxruntime, model, path, row, chosen)
        if session is not None:
            # the shipped graph holds its own copy of the weights, so it is part of what the outputs depend on
            fingerprint = hashlib.sha256(f"{fingerprint}\x00{file_sha256(graph)}".encode()).hexdigest()
        else:
            graph = cached_graph_path(fingerprint, head.name)
            if not graph.is_file():
                export_graph(model, checkpoint, tokenizer, head, graph)
            session = open_session(onnxruntime, model, graph, chosen)
        if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
            if model.device != "auto":
                raise ModelError(f"model {model.name_or_path!r}: onnxruntime could not start CUDA for {graph} (it fell back to {session.get_providers()})")
            device = "cpu"  # onnxruntime falls back to CPU when the CUDA libraries do not load
        return OpenedModel(handle=session, device=device, dtype="float32", fingerprint=fingerprint)

    def run(self, loaded: LoadedModel, prepared: Mapping[str, np.ndarray], **options: Any) -> dict[str, Any]:
        session = loaded.handle
        feeds = {}
        for graph_input in session.get_inputs():
            if graph_input.name not in prepared:
                raise ModelError(
                    f"model {loaded.name_or_path!r}: its ONNX graph needs input {graph_input.name!r}, "
                    f"the tokenizer gave {', '.join(prepared)}"
                )
            feeds[graph_input.name] = np.ascontiguousarray(prepared[graph_input.name], dtype=np.int64)
        names = self.head_table[loaded.head.name].graph_outputs
        values = session.run(list(names), feeds)
        return {names[graph_name]: np.asarray(value, dtype=np.float32) for graph_name, value in zip(names, values)}

    def is_out_of_memory(self, error: BaseException) -> bool:
        # onnxruntime raises its generic RuntimeException/Fail for everything, so the message is the only
        # signal: the arena allocator's (BFCArena, CPU and CUDA) and a failed cudaMalloc
        text = str(error)
        return "Failed to allocate memory for requested buffer" in text or "CUDA failure 2: out of memory" in text


@hookimpl
def register_backends(register):
    register(OnnxRuntimeBackend)
