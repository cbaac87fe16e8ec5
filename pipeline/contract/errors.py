"""The error types the CLI turns into one clear message and a non-zero exit code.

Anything else escaping the runner is a bug in nlpflow or a plugin and is shown
with its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn


class NlpflowError(Exception):
    """Base class: ``str(error)`` is the whole message a user sees."""

    exit_code = 1


@dataclass
class Location:
    """Where in a file something is: 1-based line and column (column may be unknown)."""

    path: Path | str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        text = str(self.path)
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text


class ConfigError(NlpflowError):
    """A problem in pipelines.yaml: bad syntax, unknown key or name, wrong type, missing file."""

    exit_code = 2

    def __init__(self, message: str, location: Location | None = None, pipeline: str | None = None):
        self.message = message
        self.location = location
        self.pipeline = pipeline
        prefix = f"{location}: " if location else ""
        where = f"pipeline {pipeline!r}: " if pipeline else ""
        super().__init__(f"{prefix}{where}{message}")


class DataError(NlpflowError):
    """A record in a data file that cannot be used, with the file and line."""

    exit_code = 3

    def __init__(self, message: str, path: Path | str, line: int | None = None, pipeline: str | None = None):
        self.message = message
        self.path = path
        self.line = line
        self.pipeline = pipeline
        where = f"pipeline {pipeline!r}: " if pipeline else ""
        super().__init__(f"{Location(path, line)}: {where}{message}")


class ModelError(NlpflowError):
    """A model that cannot be found, loaded, or used for the task."""

    exit_code = 4


class CacheError(NlpflowError):
    """The prediction cache cannot be opened, read or written (the run can go on with ``--no-cache``)."""

    exit_code = 6


class OutputError(NlpflowError):
    """The run folder cannot be written (disk full, file too large, no permission) or stays locked by another run.

    The previous run's files are left as they were."""

    exit_code = 7


class PluginError(NlpflowError):
    """A plugin that failed to import, raised inside a hook, or returned the wrong thing."""

    exit_code = 5

    def __init__(self, message: str, plugin: str | None = None):
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}" if plugin else message)


class PipelinesFailed(NlpflowError):
    """``keep_going``: some pipelines failed after every pipeline was tried; the exit code is the first failure's."""

    def __init__(self, results: list, failures: list[tuple[str, NlpflowError]]):
        self.results = results
        self.failures = failures
        self.exit_code = failures[0][1].exit_code
        names = ", ".join(repr(name) for name, _ in failures)
        super().__init__(f"{len(failures)} of {len(results) + len(failures)} pipelines failed: {names}")


class ValidationFailed(NlpflowError):
    """``validate`` found problems, and lists them all rather than stopping at the first.

    ``problems`` holds each one, an error of its own kind (ConfigError, DataError, ModelError, ...) with its
    location, in the order listed; ``pipelines`` the checked pipelines that have none. The message is every
    problem's, one after another, then ``summary``; the exit code is the first problem's, as with ``--keep-going``."""

    def __init__(self, problems: Sequence[NlpflowError], pipelines: list, summary: str):
        self.problems = list(problems)
        self.pipelines = pipelines
        self.summary = summary
        self.exit_code = self.problems[0].exit_code
        super().__init__("\n".join([*(str(problem) for problem in self.problems), summary]))


class _Reported(Exception):
    """Ends a :meth:`Problems.check` block whose problems are already kept."""


class Problems:
    """Where checks put the problems they find.

    Without a list (what ``run`` does) the first problem is raised where it is found, as if there were no
    collector. With one (what ``validate`` does) each problem is appended to it and the checks after it go on,
    so that every problem can be listed at once; a check that needs what a failed one would have built is skipped
    by its caller."""

    def __init__(self, found: list[NlpflowError] | None = None):
        self.found = found

    def add(self, error: NlpflowError) -> None:
        """A problem that does not stop the current check."""
        if self.found is None:
            raise error
        self.found.append(error)

    def fail(self, errors: Sequence[NlpflowError]) -> NoReturn:
        """Stop the current :meth:`check` with these problems (several, as pydantic finds them): the first is
        raised without a list; with one, all are kept."""
        if self.found is None:
            raise errors[0]
        self.found.extend(errors)
        raise _Reported

    @contextmanager
    def check(self) -> Iterator[None]:
        """One check: without a list its error propagates; with one it is kept and the code after the block runs."""
        if self.found is None:
            yield
            return
        try:
            yield
        except _Reported:
            pass
        except NlpflowError as error:
            self.found.append(error)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A sentence listing what is available and the closest match, for unknown-name errors."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(choices) if choices else "(none registered)"
    return f"Available: {listing}.{hint}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with how many predictions a rerun will take from the cache.

    A KeyboardInterrupt still (so code that stops on Ctrl-C keeps stopping), so the
    CLI can say how much a rerun will find in the cache.
    """

    def __init__(self, pipeline: str, reusable: int, cached: bool):
        self.pipeline = pipeline
        #: of the records read so far, those whose cached prediction a rerun uses (not those it computes again)
        self.reusable = reusable
        self.cached = cached
        super().__init__(pipeline, reusable)

    def __str__(self) -> str:
        if not self.cached:
            return f"pipeline {self.pipeline!r} ran without a cache (--no-cache), so its predictions were not kept"
        return (
            f"pipeline {self.pipeline!r}: a rerun will take {self.reusable} predictions from the cache; "
            "run the same command again to resume"
        )
