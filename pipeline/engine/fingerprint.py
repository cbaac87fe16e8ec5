"""Holding the data file while it is read, and its sha256 afterwards, refusing a file that changed in between."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.config.sources import irregular_kind
from nlpflow.contract.errors import DataError
from nlpflow.contract.files import handle_sha256


def file_identity(status: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file version from another: device and inode (a replaced file), size and mtime (an edited one)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class DataFingerprint:
    """The data a pipeline reads, held open from the moment reading starts, so the report hashes the very file
    that was read (a file replaced by path, ``mv new data.jsonl``, is noticed rather than hashed in its place)."""

    def __init__(self, pipeline: ResolvedPipeline):
        self.pipeline = pipeline
        #: the data file, open since reading started; None before, or when the data is several files
        self.handle: IO[bytes] | None = None
        #: the open file's identity as reading started
        self.identity: tuple[int, int, int, int] | None = None
        #: with several files (a folder, a glob, a saved dataset): each one's identity as reading started
        self.source_identities: dict[Path, tuple[int, int, int, int]] | None = None

    def hold(self) -> None:
        """Open the data file (or note each file's version) as the reader starts."""
        path = self.pipeline.config.data_path
        self.close()
        self.source_identities = None
        if not path.is_file():
            # several files: each one's version as reading starts, checked again as each is hashed; a file that
            # cannot be stat'ed is reported by the reader, with its line
            self.source_identities = {}
            for source in self.pipeline.reader.sources(path):
                try:
                    self.source_identities[source] = file_identity(os.stat(source))
                except OSError:
                    pass
            return
        try:
            self.handle = open(path, "rb")
            self.identity = file_identity(os.fstat(self.handle.fileno()))
        except OSError:
            self.handle = None  # the reader reports why the file cannot be read, with its line

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def sha256(self) -> str:
        """sha256 of the data that was read, after checking it is still the same, unchanged file (or files)."""
        path = self.pipeline.config.data_path
        name = self.pipeline.name
        if self.handle is None and self.source_identities is not None:
            return self._sources_sha256()
        if self.handle is None:
            raise DataError("the data file could not be opened again to fingerprint it", path, None, name)
        handle, self.handle = self.handle, None
        with handle:
            try:
                now_at_path = file_identity(os.stat(path))
            except FileNotFoundError:
                raise DataError(
                    "the data file was deleted while it was being read; the records read may not be all of it, so no "
                    "report is written", path, None, name,
                ) from None
            except OSError as error:
                raise DataError(f"cannot check the data file after reading it: {error.strerror or error}", path, None, name) from None
            if file_identity(os.fstat(handle.fileno())) != self.identity or now_at_path[:2] != self.identity[:2]:
                raise DataError(
                    "the data file changed while it was being read (it was modified, or replaced by another file); the "
                    "records read do not come from one version of it, so no report is written. Run again once the file "
                    "stays as it is",
                    path, None, name,
                )
            return handle_sha256(handle)

    def _sources_sha256(self) -> str:
        """sha256 over the sha256 of each file read, in reading order (so reordered files differ too), after
        checking each is the version that was there as reading started."""
        digest = hashlib.sha256()
        for source in self.pipeline.reader.sources(self.pipeline.config.data_path):
            kind = irregular_kind(source)
            if kind is not None:  # opening a named pipe would wait for a writer
                raise DataError(f"this file of the data is {kind}, not a data file, so the data cannot be fingerprinted", source, None, self.pipeline.name)
            try:
                with open(source, "rb") as handle:
                    if file_identity(os.fstat(handle.fileno())) != self.source_identities.get(source):
                        raise DataError(
                            "this file of the data appeared or changed while the data was being read; the records read "
                            "do not come from one version of the data, so no report is written. Run again once the "
                            "files stay as they are",
                            source, None, self.pipeline.name,
                        )
                    file_digest = handle_sha256(handle)
            except OSError as error:
                raise DataError(
                    f"cannot read this file of the data again to fingerprint it: {error.strerror or error}", source, None, self.pipeline.name
                ) from None
            digest.update(file_digest.encode() + b"\n")
        return digest.hexdigest()
