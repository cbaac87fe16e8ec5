"""What the engine hands an executor: how to build the model's batch computer anywhere, and the executor itself.

An executor never receives the driver's model stage: at ``start`` it gets a
:class:`StageSpec`, plain picklable data that a worker turns into its own
:class:`BatchComputer` (loading the model there), and per chunk a
:class:`~nlpflow.engine.batches.ChunkPlan`. In the driver's own process the
spec hands back the computer the driver already loaded, so the ``local``
executor computes with the very model the runner loaded, through the same
path as any other executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

from pydantic import ValidationError

from nlpflow.contract.errors import ConfigError
from nlpflow.contract.types import Backend, Executor, ModelConfig, Task
from nlpflow.engine.batches import BatchComputer


@dataclass(frozen=True)
class StageSpec:
    """How to load a pipeline's model and build its :class:`BatchComputer`, in this process or a worker's.

    ``task_provider`` is the driver's task plugin (name, distribution,
    version); a worker puts the version of that distribution installed where
    it runs into its run key, so a worker with another version is refused.
    ``locate_model`` finds a model shipped inside a package (an embedded
    model) on the worker's own disk; None for a checkpoint path or hub name.
    """

    task: Task
    model: ModelConfig
    backend: Backend
    task_provider: dict[str, Any]
    locate_model: Callable[[], str] | None = None
    #: the driver's own computer and run key: used in the process that made the spec, never pickled
    loaded_here: tuple[BatchComputer, str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, task: Task, model: ModelConfig, backend: Backend, task_provider: dict[str, Any],
           loaded_here: tuple[BatchComputer, str] | None = None, locate_model: Callable[[], str] | None = None) -> "StageSpec":
        return cls(task, model, backend, task_provider, locate_model, loaded_here)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["loaded_here"] = None  # a worker loads its own model
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def build(self) -> tuple[BatchComputer, str]:
        """The batch computer and the run key (the cache key part its predictions share); loads the model unless
        this is the process that made the spec."""
        from nlpflow.engine.model_stage import run_key

        if self.loaded_here is not None:
            return self.loaded_here
        # an embedded model's packaged copy is where this process's own package put it
        model = self.model.in_folder(str(self.locate_model())) if self.locate_model is not None else self.model
        provider = dict(self.task_provider)
        if provider.get("distribution"):
            try:
                provider["version"] = version(provider["distribution"])
            except PackageNotFoundError:
                provider["version"] = None
        task_model = self.task.load(model, self.backend)
        return BatchComputer(task_model, model), run_key(self.task, task_model, provider)


def make_executor(registry: Any, name: str, options: dict[str, Any] | None = None) -> Executor:
    """The executor registered as ``name``, built with ``options`` validated by its Options model (options given
    as None are left to their defaults); a ConfigError naming the executor and the bad option otherwise."""
    executor_class = registry.get("executor", name)
    given = {key: value for key, value in (options or {}).items() if value is not None}
    try:
        validated = executor_class.Options.model_validate(given)
    except ValidationError as error:
        first = error.errors()[0]
        option = ".".join(str(part) for part in first["loc"]) or "options"
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"executor {name!r} has no option {option!r}") from None
        raise ConfigError(f"executor {name!r}: option {option!r}: {first['msg']}, got {first.get('input')!r}") from None
    return executor_class(validated)
