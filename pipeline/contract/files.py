"""File helpers every plugin kind may use: atomic writes, sha256 of files, and nlpflow's cache folder.

A reporter, a backend that caches exported graphs, or a reader that fingerprints what it read uses these, so
what nlpflow promises about its files (a crash never leaves half a file; the cache lives in one place) holds
for plugins too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from nlpflow.contract.errors import OutputError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    os.replace(stage_file(path, text), path)


def _current_umask() -> int:
    """The process umask; reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stage_file(path: Path, text: str) -> Path:
    """Write ``text`` to a synced temporary file next to ``path`` and return it, for the caller to rename into place.

    A file that cannot be written (disk full, file size limit, no permission) is an :class:`OutputError` naming it
    and its size; ``path`` itself is never touched, so what was there stays whole.
    """
    data = text.encode("utf-8")
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            # tempfile creates files 0600; a report gets the mode any new file gets under the umask, as predictions.jsonl
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({len(data)} bytes): {error.strerror or error}{_STORAGE_HINT.get(error.errno, '')}") from None
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise


#: what to do about the write failures a user can fix
_STORAGE_HINT = {
    errno.ENOSPC: "; free some space or choose another --output",
    errno.EDQUOT: "; the disk quota is used up",
    errno.EFBIG: "; the file is over the size limit for files here (ulimit -f, or the file system's)",
}


def handle_sha256(handle: Any) -> str:
    """sha256 of what is left to read in a binary file handle, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle_sha256(handle)


def default_cache_dir() -> Path:
    if os.environ.get("NLPFLOW_CACHE_DIR"):
        return Path(os.environ["NLPFLOW_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nlpflow"
