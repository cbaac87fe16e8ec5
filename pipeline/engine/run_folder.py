"""What a run folder holds: the files of exactly one finished run.

Two guarantees, kept here so the runner only calls them:

- one run at a time: a run holds an exclusive ``flock`` on ``OUTPUT/.NAME.lock`` (next to the run folder, so the
  folder itself holds run files only) from before it reads the data until its last report is written. A second
  run of a pipeline with the same name into the same output folder waits for it, saying so once, and gives up
  with an :class:`OutputError` after :data:`LOCK_WAIT_SECONDS`.
- no stale files: ``.nlpflow-files.json`` lists the files the last run wrote. The next run removes those it does
  not write again (a report format no longer configured) and the temporary files a killed run left behind. Files
  nlpflow did not write are never touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from nlpflow.contract.errors import OutputError

logger = logging.getLogger("nlpflow.engine.run_folder")

#: how long a run waits for another run writing the same folder before giving up
LOCK_WAIT_SECONDS = 600.0
MANIFEST = ".nlpflow-files.json"


def lock_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.lock"


@contextmanager
def exclusive(directory: Path, pipeline: str) -> Iterator[None]:
    """Hold the run folder's lock for the duration of the block (see the module docstring)."""
    path = lock_path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as error:
        raise OutputError(f"pipeline {pipeline!r}: cannot create the report folder {directory}: {error.strerror or error}") from None
    try:
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            logger.info("pipeline %r: waiting for another run (pid %s) that is writing %s", pipeline, holder, directory)
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while not _try_lock(handle):
                if time.monotonic() > deadline:
                    raise OutputError(
                        f"pipeline {pipeline!r}: the report folder {directory} is still being written by another run (pid "
                        f"{holder}, lock {path}) after {LOCK_WAIT_SECONDS:g} s; wait for it to finish or choose another --output"
                    )
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")  # for the message of a run that has to wait
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the file stays, since removing a lock file races with its next user


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def previous_files(directory: Path) -> list[str]:
    """The files the last finished run wrote (empty for a folder from before manifests, or one never finished)."""
    try:
        names = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    # only plain names in this folder: a hand-edited manifest must not point the clean-up elsewhere
    return [name for name in names if isinstance(name, str) and name and Path(name).name == name and not name.startswith(".")]


def remove_previous_run(directory: Path, names: Iterable[str], keep: Iterable[Path] = ()) -> None:
    """Remove the last run's files and ``names`` (what this run is about to write), and temporary files left by a
    killed run that was writing any of them (but not this run's own, in ``keep``)."""
    keep = {Path(path).name for path in keep}
    for name in {*previous_files(directory), *names}:
        (directory / name).unlink(missing_ok=True)
        for leftover in directory.glob(f".{name}.*.tmp"):
            if leftover.name not in keep:
                leftover.unlink(missing_ok=True)


def record_run_files(directory: Path, names: Iterable[str]) -> None:
    from nlpflow.contract.files import write_atomic

    write_atomic(directory / MANIFEST, json.dumps({"files": sorted(set(names))}, indent=1) + "\n")
