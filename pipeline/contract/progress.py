"""Progress display: a rich progress bar per stage on a terminal (count, rate, ETA), a plain log line every
few seconds otherwise; and libraries' own bars and notices kept out of the way during a run."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger("nlpflow")

#: seconds between plain progress lines when stderr is not a terminal
LOG_EVERY_SECONDS = 5.0
#: what the progress time covers, said on the last line: report.md's time is the whole run's
TIMED_FROM = "timed from the first record read, model loading not included (report.md's time includes it)"


class Progress:
    """Counts records through named stages of one pipeline."""

    def __init__(self, pipeline: str, total: int | None, interactive: bool | None = None, *, log_every: float = LOG_EVERY_SECONDS,
                 clock: Callable[[], float] = time.perf_counter, console: Any = None):
        self.pipeline = pipeline
        self.total = total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.log_every = log_every
        self._clock = clock
        self._console = console
        self._bars = None
        self._tasks: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._started = clock()
        self._last_log = self._started

    @contextmanager
    def running(self) -> Iterator["Progress"]:
        if self.interactive:
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
            )

            self._bars = RichProgress(
                TextColumn(f"[bold]{self.pipeline}[/] {{task.description:<10}}"),
                BarColumn(),
                MofNCompleteColumn(),
                _rate_column(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
                console=self._console,
            )
            with self._bars:
                yield self
        else:
            yield self
            log.info("%s: done, %s; %s", self.pipeline, self._summary(), TIMED_FROM)

    def advance(self, stage: str, count: int) -> None:
        self._counts[stage] = self._counts.get(stage, 0) + count
        if self._bars is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bars.add_task(stage, total=self.total)
            self._bars.advance(self._tasks[stage], count)
            return
        now = self._clock()
        if now - self._last_log >= self.log_every or (self.total and self._counts[stage] >= self.total):
            self._last_log = now
            log.info("%s: %s", self.pipeline, self._summary())

    def _summary(self) -> str:
        elapsed = self._clock() - self._started
        parts = [f"{stage} {count}" + (f"/{self.total}" if self.total else "") for stage, count in self._counts.items()]
        line = ", ".join(parts) + f" ({elapsed:.1f}s"
        done = min(self._counts.values()) if self._counts else 0  # the last stage reached: what is finished
        if elapsed > 0 and done:
            rate = done / elapsed
            line += f", {rate:.1f} records/s"
            if self.total and done < self.total:
                line += f", ETA {(self.total - done) / rate:.0f}s"
        return line + ")"


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Records per second, from rich's moving estimate."""

        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} rec/s" if task.speed else "- rec/s", style="progress.data.speed")

    return RateColumn()


@contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """transformers' per-load progress bars ("Loading weights") and notices off for the block, restored after;
    nlpflow's own progress and messages replace them."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as transformers_logging

    bars, verbosity = transformers_logging.is_progress_bar_enabled(), transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def count_lines(path) -> int:
    """Lines in a file, read in binary blocks: a cheap total for the progress bar."""
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
