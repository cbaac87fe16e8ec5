"""What a run is told besides which pipelines to run: typed setting overrides and the run's options.

Both are plain frozen values, built once (by the command line from its flags, or by a Python caller) and read
by :func:`nlpflow.run`; nothing in them is text to be parsed again, except ``--set`` values, which are YAML by
nature and are parsed once, where the pipelines file is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping


@dataclass(frozen=True)
class Overrides:
    """Settings to change in the chosen pipelines without editing the pipelines file.

    ``limit`` sets ``data.limit`` in every pipeline; ``device``, ``batch_size`` and ``model`` set ``model.device``,
    ``model.batch_size`` and ``model.name_or_path`` in every pipeline that has a ``model:`` block. ``set`` holds
    ``PIPELINE.KEY.PATH=VALUE`` texts (``--set``), VALUE read as YAML (null removes the key, so its default applies),
    applied after the others. Each value is checked by the pipelines schema once, and an error in it names its flag (``--device``, ``--set ...``)."""

    limit: int | None = None
    device: str | None = None
    batch_size: int | Literal["auto"] | None = None
    model: str | None = None
    set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # a list is the natural thing to pass; a tuple keeps the value frozen and hashable
        object.__setattr__(self, "set", tuple(self.set))

    def flags(self) -> dict[str, Any]:
        """The flag overrides that are given: ``{"--device": "cpu", ...}``, in the order they are applied."""
        given = {"--limit": self.limit, "--device": self.device, "--batch-size": self.batch_size, "--model": self.model}
        return {flag: value for flag, value in given.items() if value is not None}


@dataclass(frozen=True)
class RunOptions:
    """How :func:`nlpflow.run` runs the chosen pipelines (which ones, from which file, and where the reports go are
    its own arguments).

    ``cache_dir``: the prediction cache folder (None: ``$NLPFLOW_CACHE_DIR`` or ``~/.cache/nlpflow``); ``use_cache``:
    read and write it; ``cache_optional``: a cache that cannot be opened, read or written is a warning, not an
    error. ``interactive``: show progress bars (None: when stderr is a terminal). ``keep_going``: a failing pipeline
    does not stop the others (:class:`PipelinesFailed` is raised at the end). ``library_logs``: leave transformers'
    own progress bars and notices on. ``overrides``: settings changed in the chosen pipelines. ``executor``: where
    model batches are computed (``local``: in this process; ``ray``: on Ray actors), with ``executor_options``
    (for ``ray``: ``address``, the cluster's, and ``workers``, how many actors)."""

    cache_dir: Path | str | None = None
    use_cache: bool = True
    cache_optional: bool = False
    interactive: bool | None = None
    keep_going: bool = False
    library_logs: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    executor: str = "local"
    executor_options: Mapping[str, Any] = field(default_factory=dict)
