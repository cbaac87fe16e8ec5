"""Progress display: a rich progress bar per stage on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("nlpflow")


class Progress:
    """Counts records through named stages of one pipeline."""

    def __init__(self, pipeline: str, total: int | None, interactive: bool | None = None):
        self.pipeline = pipeline
        self.total = total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bars = None
        self._tasks: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._started = time.perf_counter()
        self._last_log = 0.0

    @contextmanager
    def running(self) -> Iterator["Progress"]:
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bars = RichProgress(
                TextColumn(f"[bold]{self.pipeline}[/] {{task.description:<10}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            with self._bars:
                yield self
        else:
            yield self
            log.info("%s: done, %s", self.pipeline, self._summary())

    def advance(self, stage: str, count: int) -> None:
        self._counts[stage] = self._counts.get(stage, 0) + count
        if self._bars is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bars.add_task(stage, total=self.total)
            self._bars.advance(self._tasks[stage], count)
            return
        now = time.perf_counter()
        if now - self._last_log >= 5 or (self.total and self._counts[stage] >= self.total):
            self._last_log = now
            log.info("%s: %s", self.pipeline, self._summary())

    def _summary(self) -> str:
        elapsed = time.perf_counter() - self._started
        parts = [f"{stage} {count}" + (f"/{self.total}" if self.total else "") for stage, count in self._counts.items()]
        return ", ".join(parts) + f" ({elapsed:.1f}s)"


def count_lines(path) -> int:
    """Lines in a file, read in binary blocks: a cheap total for the progress bar."""
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
