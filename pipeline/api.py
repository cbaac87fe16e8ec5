"""The Python API: what ``nlpflow run`` and ``nlpflow validate`` do, callable from code.

    import nlpflow
    results = nlpflow.run(["reviews-sentiment"], config="pipelines.yaml", output="reports")
    results[0].report["metrics"]["accuracy"]["value"]
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nlpflow.engine import run_folder
from nlpflow.engine.cache import PredictionCache
from nlpflow.contract.files import default_cache_dir
from nlpflow.config.schema import DEFAULT_CONFIG, PipelineConfig
from nlpflow.config.resolve import ResolvedPipeline, resolve
from nlpflow.config.loader import load_config
from nlpflow.contract.errors import ConfigError, Location, NlpflowError, PipelinesFailed, ValidationFailed, did_you_mean
from nlpflow.contract.progress import quiet_libraries
from nlpflow.registry import Registry, default_registry
from nlpflow.engine.executing import make_executor
from nlpflow.engine.runner import Runner
from nlpflow.contract.types import Executor, RunResult
from nlpflow.run_options import Overrides, RunOptions

log = logging.getLogger("nlpflow")

#: NLPFLOW_OVERLAP's values: 1 overlaps reading, the model and writing in threads, 0 runs them one after another;
#: unset, a run overlaps them only around a model stage
OVERLAP_SETTINGS = {"1": True, "0": False}


def select(pipelines: dict[str, PipelineConfig], names: Sequence[str], source: Path) -> list[PipelineConfig]:
    """The named pipelines, or every pipeline marked default when no names are given."""
    if not names:
        chosen = [p for p in pipelines.values() if p.default]
        if not chosen:
            raise _no_default(pipelines, source)
        return chosen
    missing = [name for name in names if name not in pipelines]
    if missing:
        raise _no_such_pipeline(missing[0], pipelines, source)
    return [pipelines[name] for name in names]


def _no_default(pipelines: dict, source: Path) -> ConfigError:
    return ConfigError("no pipeline is marked default; name one to run. " + did_you_mean("", pipelines), Location(source))


def _no_such_pipeline(name: str, pipelines: dict, source: Path) -> ConfigError:
    return ConfigError(f"no pipeline named {name!r}. {did_you_mean(name, pipelines)}", Location(source))


def _check_model_flags(chosen: Sequence[PipelineConfig], overrides: Overrides) -> None:
    """A model flag (``--device``, ``--batch-size``, ``--model``) is an error when no chosen pipeline has a model."""
    if any(pipeline.model is not None for pipeline in chosen):
        return
    for flag in overrides.flags():
        if flag != "--limit":
            raise ConfigError(f"none of the chosen pipelines ({', '.join(p.name for p in chosen)}) has a model: block", Location(flag))


def validate(
    config: Path | str = DEFAULT_CONFIG, names: Sequence[str] = (), registry: Registry | None = None, *, overrides: Overrides = Overrides()
) -> list[ResolvedPipeline]:
    """Check pipelines without running a model: schema, names and options (ConfigError), the data file's first
    records with the mapped fields (DataError), the model's config without its weights (ModelError), and that the
    model's labels meet the data's (ConfigError).

    Every pipeline in the file is schema-checked and resolved; the deeper checks (data, model, labels) cover the
    pipelines ``run`` would run with the same names: the named ones, or the default ones. So a file with a
    pipeline whose model is not downloaded here (``default: false``) validates, as ``nlpflow run`` runs.
    ``overrides`` are applied as ``run`` applies them.

    Every problem is found before any is raised: each pipeline is checked whatever the others' problems, and
    within one the data and the model are both checked (the labels need both). Returns the deeply checked
    pipelines; raises :class:`ValidationFailed` listing every problem, the first one's exit code, when there are any."""
    registry = registry or default_registry()
    source = Path(config)
    loaded: list[NlpflowError] = []
    try:
        pipelines = load_config(config, overrides, problems=loaded)
    except NlpflowError as error:  # not YAML, or not a mapping: nothing in it can be checked
        raise ValidationFailed([error], [], "the file cannot be read as pipelines, so no pipeline was checked") from None
    #: problems by pipeline, in the file's order; None: those outside any pipeline
    found: dict[str | None, list[NlpflowError]] = {None: [], **{name: [] for name in pipelines}}
    for error in loaded:
        owner = getattr(error, "pipeline", None)
        found[owner if owner in pipelines else None].append(error)
    resolved = {}
    for name, pipeline in pipelines.items():
        if pipeline is not None:
            checked = resolve(pipeline, registry, problems=found[name])
            if checked is not None:
                resolved[name] = checked
    if names:
        found[None] += [_no_such_pipeline(name, pipelines, source) for name in names if name not in pipelines]
        chosen = [name for name in dict.fromkeys(names) if name in pipelines]
    else:
        chosen = [name for name, pipeline in pipelines.items() if pipeline is None or pipeline.default]
        if not chosen and not any(found.values()):
            found[None].append(_no_default(pipelines, source))
    with quiet_libraries(_loads_models(resolved[name] for name in chosen if name in resolved)):
        for name in chosen:
            if name in resolved:
                try:
                    Runner(resolved[name], Path("reports")).preflight(problems=found[name])
                except NlpflowError as error:  # the label check reads a whole chunk: a bad record past the first few
                    found[name].append(error)
    ok = [resolved[name] for name in chosen if name in resolved and not found[name]]
    problems = [error for errors in found.values() for error in errors]
    if problems:
        raise ValidationFailed(problems, ok, _summary(found, pipelines))
    return ok


def _summary(found: dict[str | None, list[NlpflowError]], pipelines: dict[str, PipelineConfig | None]) -> str:
    """``2 of 3 pipelines have problems (3 problems in all)``."""
    failed = sum(1 for name, pipeline in pipelines.items() if pipeline is None or found[name])
    count = sum(len(errors) for errors in found.values())
    text = f"{failed} of {len(pipelines)} pipeline{'' if len(pipelines) == 1 else 's'} {'has' if failed == 1 else 'have'} problems"
    if found[None]:
        text += f", and {len(found[None])} {'is' if len(found[None]) == 1 else 'are'} not in a pipeline"
    return f"{text} ({count} problem{'' if count == 1 else 's'} in all)"


def run(
    names: Sequence[str] = (),
    config: Path | str = DEFAULT_CONFIG,
    output: Path | str = "reports",
    *,
    registry: Registry | None = None,
    options: RunOptions = RunOptions(),
    **settings: Any,
) -> list[RunResult]:
    """Run pipelines from a pipelines file (the named ones, or those marked default), writing each one's reports
    under ``output``; every pipeline is resolved before the first one runs.

    How they run is ``options``, a :class:`RunOptions`. Keyword arguments named after its fields replace those
    fields, so the common cases stay short: ``run(["p"], "pipelines.yaml", "reports", use_cache=False)`` is
    ``run(["p"], "pipelines.yaml", "reports", options=RunOptions(use_cache=False))``. Setting overrides are
    ``overrides=Overrides(limit=5, device="cpu", set=["p.options.mode=zero-shot"])``. With ``keep_going``, a
    failing pipeline does not stop the others; :class:`PipelinesFailed` is raised at the end, holding the results
    and the failures. ``registry``: the plugins to use (default: the installed ones)."""
    fields = {option.name for option in dataclasses.fields(RunOptions)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"run() got unknown options {', '.join(unknown)}; the options are RunOptions' fields: {', '.join(sorted(fields))}")
    options = dataclasses.replace(options, **settings)
    registry = registry or default_registry()
    workers = options.executor_options.get("workers")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    # an unknown executor or a bad option fails before any pipeline loads
    make_executor(registry, options.executor, options.executor_options)
    #: the documented switch: read here, at the boundary, and handed to the runner as its overlap option
    overlap = OVERLAP_SETTINGS.get(os.environ.get("NLPFLOW_OVERLAP", ""))
    pipelines = load_config(config, options.overrides)
    chosen = select(pipelines, names, Path(config))
    _check_model_flags(chosen, options.overrides)
    resolved = [resolve(p, registry) for p in chosen]
    cache_dir = options.cache_dir
    cache = PredictionCache(Path(cache_dir) if cache_dir else default_cache_dir(), optional=options.cache_optional) if options.use_cache else None
    try:
        with quiet_libraries(not options.library_logs and _loads_models(resolved)):
            return _run_each(
                resolved, Path(output), cache, options.interactive, options.keep_going,
                lambda: make_executor(registry, options.executor, options.executor_options), overlap,
            )
    finally:
        if cache is not None:
            cache.close()


def _run_each(
    resolved: list[ResolvedPipeline], output: Path, cache: PredictionCache | None, interactive: bool | None, keep_going: bool,
    new_executor: Callable[[], Executor], overlap: bool | None,
) -> list[RunResult]:
    results = []
    failures: list[tuple[str, NlpflowError]] = []
    for pipeline in resolved:
        runner = Runner(pipeline, output, cache, interactive, new_executor(), overlap)
        try:
            with run_folder.exclusive(runner.directory, pipeline.name):
                results.append(runner.run())
        except NlpflowError as error:
            if not keep_going:
                raise
            log.error("error: %s", error)
            failures.append((pipeline.name, error))
    if failures:
        raise PipelinesFailed(results, failures)
    return results


def _loads_models(pipelines: Iterable[ResolvedPipeline]) -> bool:
    """Whether any of ``pipelines`` has a model: only those touch transformers, which costs seconds to import
    just to quiet it."""
    return any(pipeline.config.model is not None for pipeline in pipelines)
