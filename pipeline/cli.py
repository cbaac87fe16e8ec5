"""The ``nlpflow`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence, get_origin

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from nlpflow import __version__
from nlpflow.contract.errors import ConfigError, NlpflowError, PipelinesFailed, RunInterrupted, ValidationFailed, did_you_mean
from nlpflow.registry import DISABLE_ENV, KINDS, load_registry
from nlpflow.run_options import Overrides, RunOptions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlpflow", description="Run NLP task pipelines declared in pipelines.yaml and report their scores.")
    parser.add_argument("--version", action="version", version=f"nlpflow {__version__}")
    parser.add_argument(
        "--disable-plugin", action="append", default=[], metavar="NAME",
        help=f"do not load the named plugin (repeatable; also ${DISABLE_ENV}=a,b)",
    )
    parser.add_argument("--trace-hooks", action="store_true", help="print every plugin hook call to stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run pipelines (those marked default when none are named)")
    run.add_argument("pipelines", nargs="*", metavar="PIPELINE")
    run.add_argument("-c", "--config", type=Path, default=Path("pipelines.yaml"), help="pipelines file (default: pipelines.yaml)")
    run.add_argument("-o", "--output", type=Path, default=Path("reports"), help="report folder (default: reports/)")
    run.add_argument("--cache-dir", type=Path, default=None, help="prediction cache folder (default: $NLPFLOW_CACHE_DIR or ~/.cache/nlpflow)")
    run.add_argument("--no-cache", action="store_true", help="neither read nor write the prediction cache")
    run.add_argument(
        "--cache-optional", action="store_true",
        help="if the prediction cache cannot be opened, read or written (read-only folder, damaged file), warn once and run without it",
    )
    run.add_argument("--limit", type=int, default=None, metavar="N", help="read only the first N records of each pipeline's data")
    run.add_argument("--device", default=None, help="model device for every pipeline with a model (cpu, cuda, cuda:1, mps, auto)")
    run.add_argument("--batch-size", default=None, metavar="N", help="model batch size (a number, or auto)")
    run.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="run every pipeline with a model on this model instead")
    run.add_argument(
        "--set", action="append", default=[], metavar="PIPELINE.KEY=VALUE",
        help="override a setting without editing the YAML (VALUE is YAML: --set reviews-sentiment.options.mode=zero-shot; "
        "null removes the key, so its default applies); repeatable",
    )
    run.add_argument("--json", action="store_true", help="print every pipeline's metrics to stdout as JSON")
    run.add_argument("--keep-going", action="store_true", help="run the other pipelines after one fails; print a summary and exit non-zero")

    run.add_argument("--executor", default="local", help="where model batches are computed: local (this process, the default) or ray")
    run.add_argument("--address", default=None, help="with --executor ray: the Ray cluster to join (auto: the one `ray start` runs here); default: start one in this process")
    run.add_argument("--workers", type=int, default=None, help="with --executor ray: worker actors, each loading the model once (default: one per GPU, else one per CPU)")

    validate = commands.add_parser("validate", help="check a pipelines file without running it")
    validate.add_argument("pipelines", nargs="*", metavar="PIPELINE")
    validate.add_argument("-c", "--config", type=Path, default=Path("pipelines.yaml"))
    validate.add_argument("--set", action="append", default=[], metavar="PIPELINE.KEY=VALUE", help="check with this override, as run --set")

    init = commands.add_parser("init", help="write a commented pipelines.yaml for a task and a data file (never overwrites)",
                               description="Write a commented pipelines.yaml for TASK over DATA_FILE: fields from its first "
                               "records' columns, labels from all its records (pos/neg-style names mapped onto the built-in "
                               "sentiment labels; names such as 1 or LABEL_0 get a DESCRIBE: placeholder that validate refuses "
                               "until it is filled in). Never overwrites a file.")
    init.add_argument("task", metavar="TASK", help="task name (see `nlpflow tasks`)")
    init.add_argument("data", type=Path, metavar="DATA_FILE", help="data file; its columns and labels pre-fill the pipeline")
    init.add_argument("-o", "--output", type=Path, default=Path("pipelines.yaml"), help="file to write (default: pipelines.yaml)")
    init.add_argument("--name", default=None, help="pipeline name (default: DATA-TASK)")
    init.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="model (default: the embedded MiniLM, or a rule, where the task has one); "
                      "a causal language model (GPT-2, Llama, Qwen2, ...; told from its config.json) gets the task's prompted mode: "
                      "loglikelihood with a prompt for sentiment and text-classification, generate with a prompt for question-answering, "
                      "translation and summarization")
    init.add_argument("--backend", default=None, metavar="NAME", help="backend that runs the model, written as model.backend (default: torch; `nlpflow tasks` lists them)")

    tasks = commands.add_parser("tasks", help="list tasks, metrics, preprocessors, readers and reporters, with their plugins")
    tasks.add_argument("--json", action="store_true")
    tasks.add_argument("--options", metavar="NAME", help="list the options of the task, metric, reader, preprocessor, reporter or backend NAME")

    plugins = commands.add_parser("plugins", help="list installed plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true")

    compare = commands.add_parser("compare", help="compare runs on the same data: metric table and paired significance tests")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (with report.json); the first is the baseline. After it, a JSON Lines file of another system's predictions on the same data ({\"id\"|\"index\": ..., \"prediction\": ...}) is joined to the baseline's records and scored with its metrics")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    compare.add_argument("--trials", type=int, default=10000, help="approximate randomization trials (default 10000)")
    compare.add_argument("--seed", type=int, default=12345, help="random seed for both tests (default 12345)")

    board = commands.add_parser("leaderboard", help="table of every run under a folder, grouped by task and data")
    board.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    board.add_argument("--format", choices=["markdown", "html"], default="markdown")
    board.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write to FILE instead of stdout")
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (it may be replaced, as pytest does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _configure_logging(verbose: bool) -> None:
    """Our own messages at INFO on stderr; libraries' loggers (absl via rouge-score, ...) keep their defaults."""
    logger = logging.getLogger("nlpflow")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, ``docker stop``), raised where the run is so it unwinds as Ctrl-C does:
    partial files are removed and finished reports are left as they were."""


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def _was_terminated(interruption: BaseException) -> bool:
    while interruption is not None:  # the runner may re-raise Ctrl-C as its own KeyboardInterrupt, from this one
        if isinstance(interruption, Terminated):
            return True
        interruption = interruption.__cause__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        registry = load_registry(args.disable_plugin, trace=args.trace_hooks or None)
        for failure in [*registry.failures, *registry.warnings]:
            print(f"warning: {failure}", file=sys.stderr)
        code = COMMANDS[args.command](args, registry)
        sys.stdout.flush()  # here, so that a reader that stopped early is seen below, not at exit
        return code
    except BrokenPipeError:
        # the reader stopped reading (`nlpflow plugins --json | head`): what is left unwritten goes nowhere, as
        # for any command cut off by a pipe, and the exit status says so as a shell's would (128 + SIGPIPE)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (replaced in-process): nothing is flushed at exit
            pass
        return 128 + signal.SIGPIPE
    except NlpflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interruption:
        terminated = _was_terminated(interruption)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        if isinstance(interruption, RunInterrupted):
            saved = str(interruption)
        elif getattr(args, "no_cache", False):
            saved = "nothing was saved (--no-cache); reports from an earlier run are untouched"
        else:
            saved = "predictions made so far are cached; run the same command again to resume"
        print(f"{what}: {saved}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _run(args, registry) -> int:
    from nlpflow.api import run

    overrides = Overrides(limit=args.limit, device=args.device, batch_size=_batch_size(args.batch_size), model=args.model, set=args.set)
    options = RunOptions(
        cache_dir=args.cache_dir, use_cache=not args.no_cache, cache_optional=args.cache_optional, keep_going=args.keep_going,
        overrides=overrides, executor=args.executor, executor_options={"address": args.address, "workers": args.workers},
    )
    failures = []
    try:
        results = run(args.pipelines, args.config, args.output, registry=registry, options=options)
    except PipelinesFailed as failed:
        results, failures = failed.results, failed.failures
    if args.json:
        print(json.dumps({
            "pipelines": [{"pipeline": r.report["pipeline"], "metrics": r.report["metrics"], "counts": r.report["counts"],
                           "directory": str(r.directory)} for r in results],
            "failed": [{"pipeline": name, "error": str(error), "exit_code": error.exit_code} for name, error in failures],
        }, indent=2))
    else:
        _print_results(results)
    if failures:
        width = max(len(name) for name in [*(r.report["pipeline"] for r in results), *(n for n, _ in failures)])
        print("\nsummary:", file=sys.stderr)
        for result in results:
            print(f"  {result.report['pipeline']:<{width}}  ok", file=sys.stderr)
        for name, error in failures:
            print(f"  {name:<{width}}  FAILED (exit {error.exit_code}): {str(error).splitlines()[0]}", file=sys.stderr)
        return failures[0][1].exit_code
    return 0


def _batch_size(text: str | None) -> int | str | None:
    """``--batch-size`` as the schema's type: a number, or ``auto``."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--batch-size must be a number or auto, got {text!r}") from None


def _print_results(results) -> None:
    for result in results:
        report = result.report
        values = ", ".join(
            f"{name} {entry['value']:.4g}" if entry["value"] is not None else f"{name} n/a" for name, entry in report["metrics"].items()
        )
        counts = report["counts"]
        extra = f", {counts['skipped']} skipped" if counts["skipped"] else ""
        print(f"{report['pipeline']}: {values} ({counts['scored']} scored{extra}) -> {result.directory}")


def _validate(args, registry) -> int:
    """Every problem as its own ``error:`` line, the pipelines without one as ok, then a summary line."""
    from nlpflow.api import validate

    try:
        resolved = validate(args.config, args.pipelines, registry, overrides=Overrides(set=args.set))
    except ValidationFailed as failed:
        for problem in failed.problems:
            print(f"error: {problem}", file=sys.stderr)
        _print_ok(args.config, failed.pipelines)
        print(f"{args.config}: {failed.summary}", file=sys.stderr)
        return failed.exit_code
    _print_ok(args.config, resolved)
    return 0


def _print_ok(config: Path, pipelines) -> None:
    for pipeline in pipelines:
        print(f"{config}: pipeline {pipeline.name!r} ok (task {pipeline.task.name}, {len(pipeline.metrics)} metrics)")


def _init(args, registry) -> int:
    from nlpflow.init import write_pipelines_file

    written = write_pipelines_file(args.task, args.data, args.output, registry, args.name, args.model, args.backend)
    print(f"wrote {written}; check it, then run `nlpflow validate -c {written}`")
    return 0


def _tasks(args, registry) -> int:
    if args.options:
        return _options(args, registry)
    listing = {
        kind: [
            {"name": name, "plugin": registry.provider(kind, name), "description": registry.get(kind, name).description}
            for name in registry.names(kind)
        ]
        for kind, _ in KINDS.values()
    }
    listing["head"] = [
        {
            "name": head.name,
            "plugin": registry.head_plugins.get(head.name, "nlpflow"),
            "outputs": dict(head.outputs),
            "backends": [backend for backend in registry.names("backend") if head.name in registry.get("backend", backend).heads],
            "description": head.description,
        }
        for head in registry.heads.values()
    ]
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False)  # descriptions and types are printed as written: [str], nlpflow[parquet]
    for kind, rows in listing.items():
        table = Table(title=f"{kind}s", title_justify="left")
        columns = ("name", "plugin", "outputs", "backends", "description") if kind == "head" else ("name", "plugin", "description")
        for column in columns:
            table.add_column(column)
        for row in rows:
            if kind == "head":
                outputs = ", ".join(f"{output} ({shape})" for output, shape in row["outputs"].items())
                table.add_row(row["name"], row["plugin"], outputs, ", ".join(row["backends"]) or "none", row["description"])
            else:
                table.add_row(row["name"], row["plugin"], row["description"])
        console.print(table)
    return 0


def _options(args, registry) -> int:
    """``nlpflow tasks --options NAME``: each option of every plugin class registered as NAME, from its Options schema."""
    found = [
        {"kind": kind, "name": args.options, "plugin": registry.provider(kind, args.options), "options": describe_options(registry.get(kind, args.options).Options)}
        for kind, _ in KINDS.values()
        if args.options in registry.entries[kind]
    ]
    if not found:
        everything = {name for kind, _ in KINDS.values() for name in registry.names(kind)}
        raise ConfigError(f"no task, metric, reader, preprocessor, reporter or backend is named {args.options!r}. {did_you_mean(args.options, everything)}")
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False)  # descriptions and types are printed as written: [str], nlpflow[parquet]
    for item in found:
        table = Table(title=f"options of {item['kind']} {item['name']!r} (plugin {item['plugin']})", title_justify="left")
        for column in ("option", "type", "default", "description"):
            table.add_column(column)
        for option in item["options"]:
            default = "(required)" if option["required"] else json.dumps(option["default"])
            table.add_row(option["name"], option["type"], default, option["description"] or "")
        if not item["options"]:
            table.add_row("(none)", "", "", "")
        console.print(table)
    return 0


def describe_options(options: type[BaseModel]) -> list[dict[str, Any]]:
    """Name, type, default and description of each field of an Options model (descriptions from ``Field(description=...)``)."""
    described = []
    for name, field in options.model_fields.items():
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        described.append({
            "name": name,
            "type": _type_name(field.annotation),
            "default": to_jsonable_python(default, fallback=repr),
            "required": required,
            "description": field.description,
        })
    return described


def _type_name(annotation: Any) -> str:
    # list[str] passes isinstance(..., type) but its __name__ is just "list": only plain classes go by name
    plain_class = isinstance(annotation, type) and get_origin(annotation) is None
    return annotation.__name__ if plain_class else str(annotation).replace("typing.", "")


def _plugins(args, registry) -> int:
    rows = [{"name": p.name, "version": p.version, "hooks": p.hooks} for p in registry.plugins]
    failures = [{"name": f.plugin, "error": str(f)} for f in registry.failures]
    if args.json:
        print(json.dumps({"plugins": rows, "failed": failures}, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']} {row['version'] or ''}: {', '.join(row['hooks'])}")
    for failure in failures:
        print(f"{failure['name']}: FAILED: {failure['error']}")
    return 0


def _compare(args, registry) -> int:
    from nlpflow.compare import CompareError, compare_runs, comparison_markdown

    if args.resamples < 1 or args.trials < 1:
        raise CompareError("--resamples and --trials must be at least 1")
    result = compare_runs(args.runs, registry, resamples=args.resamples, seed=args.seed, trials=args.trials)
    print(json.dumps(result, indent=2) if args.json else comparison_markdown(result), end="" if not args.json else "\n")
    return 0


def _leaderboard(args, registry) -> int:
    from nlpflow.compare import leaderboard, leaderboard_html, leaderboard_markdown
    from nlpflow.contract.files import write_atomic

    groups = leaderboard(args.output_dir)
    text = leaderboard_html(groups) if args.format == "html" else leaderboard_markdown(groups)
    if args.output:
        write_atomic(args.output, text)
    else:
        print(text, end="")
    return 0


COMMANDS = {"run": _run, "validate": _validate, "init": _init, "tasks": _tasks, "plugins": _plugins, "compare": _compare, "leaderboard": _leaderboard}

if __name__ == "__main__":
    sys.exit(main())
