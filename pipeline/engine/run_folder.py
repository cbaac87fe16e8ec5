"""What a run folder holds: the files of exactly one finished run.

Two guarantees, kept here so the runner only calls them:

- one run at a time: a run holds an exclusive ``flock`` on ``OUTPUT/.NAME.lock`` (next to the run folder, so the
  folder itself holds run files only) from before it reads the data until its last report is written. A second
  run of a pipeline with the same name into the same output folder waits for it, saying so once, and gives up
  with an :class:`OutputError` after :data:`LOCK_WAIT_SECONDS`.
- one set at a time: a finished run's files (predictions, reports and ``.nlpflow-files.json``, which lists them)
  are gathered in a staging folder and swapped with the run folder in one atomic rename (:func:`switch`), so at
  every instant the folder holds the previous run's set whole or the new one whole, whenever the process is
  killed. The previous set's files this run does not write (a report format no longer configured) go with it;
  files nlpflow did not write stay.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from nlpflow.contract.errors import OutputError
from nlpflow.contract.files import write_atomic

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


def switch(directory: Path, new_files: dict[str, Path]) -> None:
    """Make ``new_files`` (final name -> a finished temporary file in ``directory``) the run folder's set in one step.

    The new set, its manifest first, and a hard link to each file nlpflow did not write are gathered in a staging
    folder next to the run folder, which then trades places with the run folder in one rename
    (``renameat2(RENAME_EXCHANGE)``): a reader, or a run killed at any instant, finds the previous run's set whole
    or the new one whole. Where the system cannot exchange (not Linux, a file system without it, a run folder that
    is a mount point), each new file replaces its old one, and old files this run does not write are removed only
    after every new one is in place.
    """
    discard_staging(directory)
    previous = previous_files(directory)
    staging = staging_path(directory)
    if os.stat(directory).st_dev != os.stat(directory.parent).st_dev:
        _replace_one_by_one(directory, new_files, previous)
        return
    try:
        staging.mkdir()
        os.chmod(staging, stat.S_IMODE(os.stat(directory).st_mode))
        # the manifest first, so a staging folder a killed run leaves always says which of its files are nlpflow's
        write_atomic(staging / MANIFEST, _manifest_text(new_files))
        for name, temporary in new_files.items():
            os.replace(temporary, staging / name)
        for name in _not_ours(directory, previous, new_files):
            try:
                os.link(directory / name, staging / name, follow_symlinks=False)
            except OSError:
                pass  # a folder, or a file that cannot be linked: moved back just after the exchange instead
        _sync_folder(staging)
        exchanged = _exchange(staging, directory)
    except BaseException:
        _return_new_files(staging, new_files)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if exchanged:
        _sync_folder(directory.parent)
        discard_staging(directory)  # now the previous run's set
    else:
        _replace_one_by_one(directory, {name: staging / name for name in new_files}, previous)
        shutil.rmtree(staging, ignore_errors=True)


def staging_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.next"


def discard_staging(directory: Path) -> None:
    """Remove the staging folder next to ``directory`` (a killed run's, or the previous set after an exchange),
    first moving back into the run folder whatever nlpflow did not write and the run folder lacks."""
    staging = staging_path(directory)
    if staging.is_symlink() or not staging.is_dir():
        return
    for name in _not_ours(staging, previous_files(staging), {}):
        if not os.path.lexists(directory / name):
            try:
                os.replace(staging / name, directory / name)
            except OSError as error:
                raise OutputError(
                    f"cannot move {staging / name}, which nlpflow did not write, back into the run folder {directory}: "
                    f"{error.strerror or error}; move it yourself and remove {staging}"
                ) from None
    shutil.rmtree(staging)


def _not_ours(folder: Path, ours: Iterable[str], new: Iterable[str]) -> list[str]:
    """The entries of ``folder`` that are neither nlpflow's (``ours``, ``new``, the manifest) nor its temporary files."""
    skip = {*ours, *new, MANIFEST}
    return [
        entry.name for entry in os.scandir(folder)
        if entry.name not in skip and not (entry.name.startswith(".") and entry.name.endswith((".tmp", ".partial")))
    ]


def _replace_one_by_one(directory: Path, new_files: dict[str, Path], previous: Iterable[str]) -> None:
    for name, temporary in new_files.items():
        os.replace(temporary, directory / name)
    for name in {*previous} - set(new_files):
        (directory / name).unlink(missing_ok=True)
    for name in {*previous, *new_files}:
        for leftover in directory.glob(f".{name}.*.tmp"):  # of a killed run
            leftover.unlink(missing_ok=True)
    write_atomic(directory / MANIFEST, _manifest_text(new_files))
    _sync_folder(directory)


def _return_new_files(staging: Path, new_files: dict[str, Path]) -> None:
    """Put the new files back where the caller expects them (to remove them), after a failed staging."""
    for name, temporary in new_files.items():
        if (staging / name).is_file() and not temporary.exists():
            try:
                os.replace(staging / name, temporary)
            except OSError:
                pass


def _manifest_text(names: Iterable[str]) -> str:
    return json.dumps({"files": sorted(set(names))}, indent=1) + "\n"


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a power cut (best effort: not every system allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


#: renameat2's flag that swaps two paths atomically (Linux 3.15, glibc 2.28)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: errors that mean "cannot exchange here", not "the folder is broken"
_CANNOT_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP}


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic rename; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(second))
