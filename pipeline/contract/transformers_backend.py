"""The toolkit for backends that run transformers checkpoints: device and dtype, safe loading, and the shared load steps.

A backend built on a transformers checkpoint (torch, onnxruntime, a numpy
forward, a compiled runtime) subclasses :class:`TransformersBackend`, fills
its :attr:`~nlpflow.Backend.head_table` with :class:`TransformersHead` rows
(or subclasses of it carrying what the backend needs per head), and writes
:meth:`~TransformersBackend.open` and :meth:`~nlpflow.Backend.run`. The base
reads the checkpoint config, refuses a checkpoint trained for another head,
loads the tokenizer, fingerprints the files and builds the
:class:`~nlpflow.LoadedModel`.

torch and transformers are imported inside the functions that need them, so
importing nlpflow (and registering a backend) stays light.
"""

from __future__ import annotations

import hashlib
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from nlpflow.contract.errors import ModelError
from nlpflow.contract.hub import (
    check_weight_format,
    checkpoint_config,
    files_fingerprint,
    hub_arguments,
    hub_offline,
    load_tokenizer,
    not_found_message,
    pickle_weights_refused,
    require_head,
    resolve_model_path,
)
from nlpflow.contract.types import Backend, Head, LoadedModel, ModelConfig

if TYPE_CHECKING:  # annotations only: torch itself is imported on first use
    import torch


@dataclass(frozen=True)
class TransformersHead:
    """A row of a transformers-based backend's head table: what the shared load steps need to know of a head.

    ``architecture`` is the suffix the checkpoint's ``architectures`` must end
    with (``"ForSequenceClassification"``), or None where any checkpoint will
    do (a plain encoder). Backends subclass it to add what they load and
    compute the head with (a transformers Auto class, an output function, a
    graph's output names).
    """

    architecture: str | None


@dataclass
class OpenedModel:
    """What :meth:`TransformersBackend.open` returns: the backend's handle and where and how it runs."""

    #: the backend's own object (a torch module, an onnxruntime session, numpy weights): only the backend touches it
    handle: Any
    #: where it runs, as a string (``"cpu"``, ``"cuda:0"``)
    device: str
    #: the dtype it computes in, as a string (``"float32"``, ``"bfloat16"``)
    dtype: str
    #: what identifies the weights it runs; None: the checkpoint files' fingerprint the base computed
    fingerprint: str | None = None
    #: the checkpoint config as the loaded model holds it, where loading completed it; None: the one read first
    checkpoint: Any = None


class TransformersBackend(Backend):
    """A backend for transformers checkpoints: the shared load steps, and one method, :meth:`open`, for the rest.

    Loading a head runs, in order: :meth:`checkpoint_config` (the checkpoint's
    ``config.json``), :func:`~nlpflow.require_head` with the row's
    ``architecture``, :func:`~nlpflow.load_tokenizer`,
    :func:`~nlpflow.files_fingerprint` of the checkpoint folder, then
    :meth:`open`, and builds the :class:`~nlpflow.LoadedModel` from what it returns.
    """

    head_table: ClassVar[Mapping[str, TransformersHead]] = {}

    def checkpoint_config(self, model: ModelConfig) -> Any:
        return checkpoint_config(model)

    def check_model(self, model: ModelConfig) -> None:
        """The config reads, and the weights are of a format that may load (safetensors unless ``allow_pickle``)."""
        self.checkpoint_config(model)
        check_weight_format(model)

    def load_head(self, model: ModelConfig, head: Head, *, require_fast_tokenizer: bool = True) -> LoadedModel:
        row = self.head_table[head.name]
        checkpoint = self.checkpoint_config(model)
        require_head(model, checkpoint, row.architecture)
        tokenizer = load_tokenizer(model, require_fast_tokenizer)
        path = resolve_model_path(model)
        files = files_fingerprint(path, model)
        opened = self.open(model, head, checkpoint, tokenizer, path, files)
        fingerprint = opened.fingerprint or files
        if fingerprint is None:
            raise ModelError(f"backend {self.name!r}: model {model.name_or_path!r} has no checkpoint files at {path} to fingerprint")
        return LoadedModel(
            tokenizer=tokenizer, checkpoint=opened.checkpoint if opened.checkpoint is not None else checkpoint, config=model,
            head=head, backend=self, handle=opened.handle, name_or_path=model.name_or_path, path=path,
            fingerprint=fingerprint, device=opened.device, dtype=opened.dtype,
        )

    @abstractmethod
    def open(self, model: ModelConfig, head: Head, checkpoint: Any, tokenizer: Any, path: str, fingerprint: str | None) -> OpenedModel:
        """Load what computes ``head`` (its row is ``self.head_table[head.name]``) and say where it runs.

        ``checkpoint`` is the config already read, ``tokenizer`` the loaded tokenizer, ``path`` the local folder
        or hub name the files are found at, and ``fingerprint`` the checkpoint files' fingerprint (None where no
        folder of files exists: return one computed from the weights then). A ModelError naming the model when
        it cannot.
        """


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device ``model.device`` names: ``auto`` is CUDA when there is one, else the CPU."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec!r} was asked for but CUDA is not available (torch {torch.__version__}); use device: auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The torch dtype ``model.dtype`` names: ``auto`` is bfloat16 (or float16) on CUDA, float32 elsewhere."""
    import torch

    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_module(auto_class_name: str, config: ModelConfig, checkpoint: Any, dtype: torch.dtype, **model_kwargs: Any) -> torch.nn.Module:
    """``AutoX.from_pretrained`` with nlpflow's safety rules, every failure a ModelError naming the model.

    Only safetensors weights load unless the pipeline sets ``allow_pickle``
    (with a warning); remote code runs only with ``trust_remote_code``.
    """
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    name = config.name_or_path
    path = resolve_model_path(config)
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
            raise pickle_weights_refused(name, path) from None
        raise ModelError(not_found_message(name, path, hub_offline(), error)) from None


def parameters_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a torch module's parameters and buffers by name: identifies weights that have no files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
