"""Hook specifications for nlpflow plugins.

Every hook here is a *registration* hook: nlpflow calls it once, right after
all plugins are loaded, and passes a ``register`` callback. A plugin calls
``register(...)`` once for each thing it contributes. Registration hooks
return nothing; their return value is ignored.

Implementations may accept fewer arguments than the spec (pluggy passes only
the ones named), so new arguments can be added here without breaking plugins.
"""

from __future__ import annotations

from typing import Callable

import pluggy

from nlpflow.contract.types import Backend, Executor, Head, Metric, Preprocessor, Reader, Reporter, Task

hookspec = pluggy.HookspecMarker("nlpflow")
hookimpl = pluggy.HookimplMarker("nlpflow")


# --- what a pipeline does -------------------------------------------------


@hookspec
def register_tasks(register: Callable[[type[Task]], None]) -> None:
    """Register task types.

    Called once when the plugin registry is built. Call ``register(TaskClass)``
    for each :class:`nlpflow.Task` subclass the plugin provides; the
    class's ``name`` is what ``task:`` refers to in ``pipelines.yaml``.
    Registering a name twice is an error that names both plugins.
    """


@hookspec
def register_metrics(register: Callable[[type[Metric]], None]) -> None:
    """Register metric types.

    Called once when the plugin registry is built. Call
    ``register(MetricClass)`` for each :class:`nlpflow.Metric`
    subclass; its ``name`` is what ``metrics:`` refers to.
    """


# --- how records get in and get ready --------------------------------------


@hookspec
def register_readers(register: Callable[[type[Reader]], None]) -> None:
    """Register data readers.

    Called once when the plugin registry is built. Call
    ``register(ReaderClass)`` for each :class:`nlpflow.Reader`
    subclass; its ``name`` is the ``data.format`` value and its
    ``extensions`` pick it from a file name.
    """


@hookspec
def register_preprocessors(register: Callable[[type[Preprocessor]], None]) -> None:
    """Register preprocessing steps.

    Called once when the plugin registry is built. Call
    ``register(PreprocessorClass)`` for each
    :class:`nlpflow.Preprocessor` subclass; its ``name`` is what a
    ``preprocess:`` entry refers to.
    """


# --- what comes out --------------------------------------------------------


@hookspec
def register_reporters(register: Callable[[type[Reporter]], None]) -> None:
    """Register report writers.

    Called once when the plugin registry is built. Call
    ``register(ReporterClass)`` for each :class:`nlpflow.Reporter`
    subclass; its ``name`` is what ``report.formats`` refers to.
    """


# --- how models run -----------------------------------------------------------


@hookspec
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    """Register model backends.

    Called once when the plugin registry is built. Call
    ``register(BackendClass)`` for each :class:`nlpflow.Backend` subclass;
    its ``name`` is what ``model.backend`` refers to (``torch`` by default).
    """


@hookspec
def register_heads(register: Callable[[Head], None]) -> None:
    """Declare heads: what a task may ask a backend to compute, beyond the built-in :data:`nlpflow.HEADS`.

    Called once when the plugin registry is built, before any pipeline
    resolves. Call ``register(Head(name, outputs, description))`` for each
    head; ``outputs`` maps each output name to its shape (``"row"``,
    ``"token"`` or ``"ids"``). A task then asks for it by name with
    ``backend.load(model, name)``, and a backend computes it when its
    ``head_table`` has a row for that name. Declaring a name that is already
    declared is an error that names both plugins. Returns nothing.
    """


@hookspec
def register_executors(register: Callable[[type[Executor]], None]) -> None:
    """Register executors: where a run's planned model batches are computed.

    Called once when the plugin registry is built. Call
    ``register(ExecutorClass)`` for each :class:`nlpflow.Executor` subclass;
    its ``name`` is what ``nlpflow run --executor`` (and ``executor=`` in
    ``nlpflow.run``) refers to (``local`` by default).
    """


@hookspec
def register_embedded_models(register: Callable[[str, Callable[[], str]], None]) -> None:
    """Register models whose files ship inside an installed package, so they load with no network.

    Called once when the plugin registry is built. Call
    ``register(hub_name, locate)`` where ``locate()`` returns the local folder
    of the checkpoint (it may raise ImportError when its package is missing;
    the hub name is then looked up in the Hugging Face cache as usual).
    """
