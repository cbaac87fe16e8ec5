"""The Python API: what ``nlpflow run`` and ``nlpflow validate`` do, callable from code.

    from nlpflow.api import run
    results = run(["reviews-sentiment"], config="pipelines.yaml", output="reports")
    results[0].report["metrics"]["accuracy"]["value"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from nlpflow import run_folder
from nlpflow.cache import PredictionCache, default_cache_dir
from nlpflow.config import DEFAULT_CONFIG, PipelineConfig, ResolvedPipeline, load_config, resolve
from nlpflow.errors import ConfigError, Location, did_you_mean
from nlpflow.registry import Registry, default_registry
from nlpflow.runner import Runner
from nlpflow.types import RunResult


def select(pipelines: dict[str, PipelineConfig], names: Sequence[str], source: Path) -> list[PipelineConfig]:
    """The named pipelines, or every pipeline marked default when no names are given."""
    if not names:
        chosen = [p for p in pipelines.values() if p.default]
        if not chosen:
            raise ConfigError("no pipeline is marked default; name one to run. " + did_you_mean("", pipelines), Location(source))
        return chosen
    missing = [name for name in names if name not in pipelines]
    if missing:
        raise ConfigError(f"no pipeline named {missing[0]!r}. {did_you_mean(missing[0], pipelines)}", Location(source))
    return [pipelines[name] for name in names]


def validate(config: Path | str = DEFAULT_CONFIG, names: Sequence[str] = (), registry: Registry | None = None) -> list[ResolvedPipeline]:
    """Load, schema-check and resolve pipelines without running them; raises ConfigError on the first problem."""
    registry = registry or default_registry()
    pipelines = load_config(config)
    return [resolve(p, registry) for p in (select(pipelines, names, Path(config)) if names else pipelines.values())]


def run(
    names: Sequence[str] = (),
    config: Path | str = DEFAULT_CONFIG,
    output: Path | str = "reports",
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
    registry: Registry | None = None,
    disabled_plugins: Iterable[str] = (),
    interactive: bool | None = None,
    cache_optional: bool = False,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> list[RunResult]:
    """Run pipelines from a pipelines file; every pipeline is resolved before the first one runs.

    ``executor`` names where model batches are computed (``local``: in this
    process; ``ray``: on Ray actors, ``address`` the cluster's, ``workers`` how many).
    """
    registry = registry or default_registry(disabled_plugins)
    executor_class = registry.get("executor", executor)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    pipelines = load_config(config)
    resolved = [resolve(p, registry) for p in select(pipelines, names, Path(config))]
    cache = PredictionCache(Path(cache_dir) if cache_dir else default_cache_dir(), optional=cache_optional) if use_cache else None
    try:
        results = []
        for pipeline in resolved:
            runner = Runner(pipeline, Path(output), cache, interactive, executor_class(address=address, workers=workers))
            with run_folder.exclusive(runner.directory, pipeline.name):
                results.append(runner.run())
        return results
    finally:
        if cache is not None:
            cache.close()
