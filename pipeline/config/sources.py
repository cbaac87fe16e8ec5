"""Data given as several files, a folder of them or a glob (``data/*.jsonl``), read in sorted order as one stream.

Each record keeps the file it came from in ``RawRecord.source``, so an error names the file and line, and the
report's fingerprint hashes every file in reading order.
"""

from __future__ import annotations

import glob
import stat
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from nlpflow.contract.types import RawRecord, Reader

#: characters that make ``data.path`` a glob pattern rather than one file's name
GLOB_CHARACTERS = "*?["


def is_glob(path: Path) -> bool:
    return any(character in str(path) for character in GLOB_CHARACTERS)


def expand(path: Path) -> list[Path]:
    """What a glob matches, or what a folder holds (hidden entries left out), in sorted order: every entry but the
    folders, so one that is not a regular file (a named pipe, a socket) is refused by name rather than left out."""
    if is_glob(path):
        # ``**`` reaches into subfolders; sorting keeps the order the same on every file system
        return sorted(Path(name) for name in glob.glob(str(path), recursive=True) if not Path(name).is_dir())
    return sorted(child for child in path.iterdir() if not child.is_dir() and not child.name.startswith("."))


def irregular_kind(path: Path) -> str | None:
    """What a path that is there but is not a regular file is, in words; None for a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symbolic link to a missing file" if path.is_symlink() else "gone (it was removed)"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    kinds = [
        (stat.S_ISREG, None),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO), which can be read only once"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((words for test, words in kinds if test(mode)), "not a regular file")


class FileSeriesReader(Reader):
    """Reads each of several files with one reader, in sorted order, naming the file in every record."""

    def __init__(self, inner: Reader):
        super().__init__(inner.options)
        self.inner = inner
        # the runner finds the providing plugin and writes the format by the reader's name
        self.name = inner.name
        self.description = inner.description
        self._files: list[Path] | None = None

    def read(self, path: Path) -> Iterator[RawRecord]:
        # listed once, as reading starts: sources() hashes exactly the files that were read
        self._files = expand(path)
        for file in self._files:
            # checked when the pipeline was resolved; one put there since would block the read (a named pipe)
            kind = irregular_kind(file)
            if kind is not None:
                yield RawRecord(1, None, f"this is {kind}, not a data file", str(file))
                continue
            for record in self.inner.read(file):
                yield replace(record, source=str(file)) if isinstance(record, RawRecord) else record

    def sources(self, path: Path) -> list[Path]:
        return list(self._files) if self._files is not None else expand(path)

    def count_hint(self, path: Path) -> int | None:
        counts = [self.inner.count_hint(file) for file in expand(path)]
        return None if None in counts else sum(counts)
