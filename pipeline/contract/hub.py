"""Finding checkpoints and their tokenizers: local folders, embedded models, the Hugging Face cache, the hub.

Every backend loads through these functions, so ``HF_HUB_OFFLINE``, the
safe-by-default rules (no remote code unless asked) and the "not available"
message are the same whichever backend runs the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nlpflow.contract.errors import ModelError
from nlpflow.contract.types import LoadedModel, ModelConfig


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_path(config: ModelConfig) -> str:
    """Where to load ``config``'s model from: the folder found when its pipeline was resolved (a local folder
    relative to the pipelines file, or an embedded model's packaged copy); otherwise ``name_or_path`` as a local
    folder if there is one, or the hub name unchanged."""
    if config.folder is not None:
        return config.folder
    local = Path(config.name_or_path).expanduser()
    return str(local) if local.is_dir() else config.name_or_path


def hub_arguments(config: ModelConfig) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments every load shares: revision, remote code, offline mode."""
    arguments: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if hub_offline():
        arguments["local_files_only"] = True
    return arguments


def checkpoint_config(config: ModelConfig) -> Any:
    """The checkpoint's ``config.json`` (AutoConfig), or a ModelError saying where it was looked for."""
    from transformers import AutoConfig

    path = resolve_model_path(config)
    _fail_fast_when_the_hub_is_unreachable(config, path)
    _check_config_parses(config, path)
    try:
        return AutoConfig.from_pretrained(path, **hub_arguments(config))
    except (OSError, ValueError) as error:
        if "custom code" in str(error) or "trust_remote_code" in str(error):
            raise ModelError(
                f"model {config.name_or_path!r} needs custom code from its repository to load, and nlpflow runs none "
                "by default. Set model.trust_remote_code: true only if you have read and trust that code."
            ) from None
        raise ModelError(not_found_message(config.name_or_path, path, hub_offline(), error)) from None


def _check_config_parses(config: ModelConfig, path: str) -> None:
    """A ``config.json`` that is there (in the local folder or the cache) but is not JSON is a ModelError with the
    parser's message: transformers says only "not a valid JSON file", which reads as a model that is not available."""
    directory = checkpoint_directory(path, config)
    file = directory / "config.json" if directory is not None else None
    if file is None or not file.is_file():
        return  # transformers says what is missing, and where it looked
    try:
        json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        if isinstance(error, json.JSONDecodeError):
            # some messages end in "at" themselves ("Invalid control character at")
            reason = f"{error.msg.removesuffix(' at')} at line {error.lineno} column {error.colno}"
        else:
            reason = "not valid UTF-8" if isinstance(error, UnicodeDecodeError) else "nested too deeply"
        refetch = (
            "replace it with a good copy (save_pretrained writes one)" if Path(path).is_dir()
            else f"fetch it again with `hf download {config.name_or_path} --force-download`"
        )
        raise ModelError(
            f"model {config.name_or_path!r}: its config.json ({file.resolve()}) could not be parsed: {reason}. The file "
            f"is damaged or was cut short; {refetch}"
        ) from None
    except OSError as error:
        raise ModelError(f"model {config.name_or_path!r}: cannot read its config.json ({file}): {error.strerror or error}") from None


#: pickle weight files as transformers names them (one file, or its shards): loading one can run code
PICKLE_WEIGHTS = "pytorch_model*.bin"


def pickle_weights_refused(name: str, where: str | Path) -> ModelError:
    """The refusal of a checkpoint with no safetensors weights, said alike by ``run`` and ``validate``."""
    return ModelError(
        f"model {name!r} has no safetensors weights in {where}; only safetensors load by default. "
        "Convert it, or set model.allow_pickle: true if you trust the files."
    )


def check_weight_format(config: ModelConfig) -> None:
    """A ModelError when the checkpoint's only weights are pickles and ``allow_pickle`` is off, found from the file
    names alone (nothing is loaded). Checked where the files are all there are: a local folder, or the cache with
    ``HF_HUB_OFFLINE`` (online, the hub may hold safetensors weights not fetched yet)."""
    if config.allow_pickle:
        return
    path = resolve_model_path(config)
    if not (Path(path).is_dir() or hub_offline()):
        return
    directory = checkpoint_directory(path, config)
    if directory is None or any(directory.glob("*.safetensors")):
        return
    if any(directory.glob(PICKLE_WEIGHTS)):
        raise pickle_weights_refused(config.name_or_path, path)


#: seconds the hub gets to accept a connection before a model missing from the cache is reported as unavailable
HUB_PROBE_TIMEOUT = 3.0


def _fail_fast_when_the_hub_is_unreachable(config: ModelConfig, path: str) -> None:
    """A hub name missing from the cache, with the hub unreachable, is a ModelError within seconds: huggingface_hub
    would otherwise spend its etag timeout on each of several retries (about 20 s) before saying so."""
    if hub_offline() or Path(path).is_dir() or any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # through a proxy, only huggingface_hub knows how to reach the hub
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(path, "config.json", revision=config.revision), str):
            return
    except ValueError:  # not a repository id: from_pretrained says why
        return
    import socket
    from urllib.parse import urlsplit

    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as error:
        raise ModelError(
            f"model {config.name_or_path!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub at "
            f"{constants.ENDPOINT} cannot be reached ({error.strerror or error or type(error).__name__}). Set "
            "HF_HUB_OFFLINE=1 to use only local and cached models, fetch it where there is network "
            f"(`hf download {config.name_or_path}`), or set model.name_or_path to a local directory."
        ) from None


def has_head(checkpoint: Any, head: str) -> bool:
    """Whether the checkpoint was saved with a task head, e.g. ``has_head(config, "ForQuestionAnswering")``."""
    return any(architecture.endswith(head) for architecture in getattr(checkpoint, "architectures", None) or [])


#: architecture suffixes of causal language models (GPT2LMHeadModel, LlamaForCausalLM, ...)
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def is_causal_lm(checkpoint: Any) -> bool:
    """Whether a checkpoint's config describes a decoder-only language model: an architecture transformers maps to
    ``AutoModelForCausalLM`` or named ``*ForCausalLM`` / ``*LMHeadModel``; with no architecture saved, a model type
    transformers loads as a causal LM and not as a masked-LM encoder (so not BERT); never an encoder-decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(checkpoint, "is_encoder_decoder", False):
        return False
    architectures = getattr(checkpoint, "architectures", None) or []
    if architectures:
        causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        return any(name in causal_classes or name.endswith(CAUSAL_ARCHITECTURES) for name in architectures)
    model_type = getattr(checkpoint, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def require_head(config: ModelConfig, checkpoint: Any, head: str | None) -> None:
    """Refuse a checkpoint trained with another head (transformers would load it with a random one)."""
    if head and not has_head(checkpoint, head):
        architectures = list(getattr(checkpoint, "architectures", None) or [])
        found = ", ".join(architectures) or f"no trained head (model_type {checkpoint.model_type!r})"
        raise ModelError(
            f"model {config.name_or_path!r} has the wrong task head: expected a *{head} checkpoint, found {found}. "
            "Pick a checkpoint fine-tuned for this task."
        )


def load_tokenizer(config: ModelConfig, require_fast: bool = True) -> Any:
    """The checkpoint's tokenizer; tasks that need character offsets keep ``require_fast``."""
    from transformers import AutoTokenizer

    path = resolve_model_path(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_arguments(config))
    except (OSError, ValueError) as error:
        raise ModelError(f"model {config.name_or_path!r}: cannot load its tokenizer from {path}: {error}") from None
    if require_fast and not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"model {config.name_or_path!r}: nlpflow needs a fast (Rust) tokenizer; {type(tokenizer).__name__} is not one")
    return tokenizer


def not_found_message(name: str, path: str, offline: bool, error: Exception) -> str:
    """Why a model could not be loaded: where it was looked for, or, when ``path`` is a folder that exists, what in it
    could not be read (a folder holding a model for another backend is there, only not loadable this way)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if Path(path).is_dir():
        return (
            f"model {name!r}: the folder {Path(path).resolve()} exists, but this backend cannot load what is in it ({reason}). "
            "If it holds a model for another backend, set model.backend to that one (`nlpflow tasks` lists the backends); "
            "otherwise it needs the files save_pretrained writes (config.json with a model_type, weights, tokenizer)."
        )
    local = Path(name).expanduser()
    looked = [f"local path {local.resolve()} (not a directory)" if not local.is_dir() else f"local directory {local.resolve()}"]
    looked.append(f"the Hugging Face cache {HF_HUB_CACHE}")
    looked.append("the hub (skipped: HF_HUB_OFFLINE=1)" if offline else "the hub (unreachable or no such repository)")
    return (
        f"model {name!r} is not available. Looked in: {'; '.join(looked)}. "
        f"To fetch it, on a machine with network run `hf download {name}` (or "
        f"`huggingface-cli download {name}`) and copy the cache, or set model.name_or_path to a local directory "
        f"saved with save_pretrained. ({reason})"
    )


def checkpoint_directory(path: str, config: ModelConfig) -> Path | None:
    """The folder holding the checkpoint's files: the local path, or its snapshot in the Hugging Face cache."""
    directory = Path(path)
    if directory.is_dir():
        return directory
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=config.revision)
    return Path(cached).parent if isinstance(cached, str) else None


_FINGERPRINTS: dict[tuple, str] = {}
FINGERPRINTED_SUFFIXES = {".safetensors", ".bin", ".json", ".model", ".spm", ".txt"}


def files_fingerprint(path: str, config: ModelConfig) -> str | None:
    """sha256 over the checkpoint's weight, tokenizer and config files (memoised by size and mtime).

    None where no folder of files can be found (a model built in memory); the
    backend then hashes the weights it holds.
    """
    directory = checkpoint_directory(path, config)
    files = sorted(p for p in directory.glob("*") if p.is_file() and p.suffix in FINGERPRINTED_SUFFIXES) if directory is not None else []
    if not files:
        return None
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


def input_limit(loaded: LoadedModel) -> int:
    """Longest input in tokens: model.max_length, else the smaller of the tokenizer's and the checkpoint's limits."""
    if loaded.config.max_length:
        return loaded.config.max_length
    limits = [getattr(loaded.tokenizer, "model_max_length", None)]
    for attribute in ("max_position_embeddings", "n_positions", "max_source_positions"):
        limits.append(getattr(loaded.checkpoint, attribute, None))
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(usable) if usable else 512


#: a generous bound on the characters one token covers: text past ``max_length`` x this is never tokenized
CHARACTERS_PER_TOKEN = 100


def tokenize(loaded: LoadedModel, texts: list[str] | tuple[str, ...], max_length: int, **kwargs: Any) -> tuple[list[dict[str, list[int]]], list[bool]]:
    """Tokenize texts in one batched call, truncated to ``max_length``; also says which were truncated.

    Returns unpadded inputs limited to the names the model accepts. A text longer than
    :data:`CHARACTERS_PER_TOKEN` x ``max_length`` characters is cut to that first (and counts as truncated):
    the tokenizer would turn a huge record into millions of tokens only to keep ``max_length`` of them.
    """
    tokenizer = loaded.tokenizer
    usable = max_length * CHARACTERS_PER_TOKEN
    texts = list(texts)
    cut = [len(text) > usable for text in texts]
    if any(cut):
        texts = [text[:usable] if long else text for text, long in zip(texts, cut)]
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, return_overflowing_tokens=True, stride=0, padding=False, **kwargs
    )
    names = [name for name in tokenizer.model_input_names if name in encoded]
    mapping = encoded.pop("overflow_to_sample_mapping", None)
    rows: list[dict[str, list[int]]] = []
    truncated = cut
    for row in range(len(encoded["input_ids"])):
        sample = mapping[row] if mapping is not None else row
        if sample < len(rows):
            truncated[sample] = True  # an overflow window: the text did not fit
            continue
        rows.append({name: encoded[name][row] for name in names})
    return rows, truncated
