"""Data given as several files, a folder of them or a glob (``data/*.jsonl``), read in sorted order as one stream.

Each record keeps the file it came from in ``RawRecord.source``, so an error names the file and line, and the
report's fingerprint hashes every file in reading order.
"""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from nlpflow.contract.types import RawRecord, Reader

#: characters that make ``data.path`` a glob pattern rather than one file's name
GLOB_CHARACTERS = "*?["


def is_glob(path: Path) -> bool:
    return any(character in str(path) for character in GLOB_CHARACTERS)


def expand(path: Path) -> list[Path]:
    """The files a glob matches, or a folder's files (hidden ones left out), in sorted order."""
    if is_glob(path):
        # ``**`` reaches into subfolders; sorting keeps the order the same on every file system
        return sorted(Path(name) for name in glob.glob(str(path), recursive=True) if Path(name).is_file())
    return sorted(child for child in path.iterdir() if child.is_file() and not child.name.startswith("."))


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
            for record in self.inner.read(file):
                yield replace(record, source=str(file)) if isinstance(record, RawRecord) else record

    def sources(self, path: Path) -> list[Path]:
        return list(self._files) if self._files is not None else expand(path)

    def count_hint(self, path: Path) -> int | None:
        counts = [self.inner.count_hint(file) for file in expand(path)]
        return None if None in counts else sum(counts)
