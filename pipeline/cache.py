"""A SQLite prediction cache, so an interrupted run resumes where it stopped.

Each prediction is stored as soon as its chunk is done, keyed by a hash of
the model's fingerprint, the task and its options, and the example's
(preprocessed) inputs. WAL mode and a busy timeout let two runs share a cache
file at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from nlpflow.errors import CacheError

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


def default_cache_dir() -> Path:
    if os.environ.get("NLPFLOW_CACHE_DIR"):
        return Path(os.environ["NLPFLOW_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nlpflow"


def example_key(run_key: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of one example: the run's model/task key plus the example's inputs."""
    payload = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{run_key}\x00{payload}".encode("utf-8")).hexdigest()


class PredictionCache:
    """Predictions by example key, in ``DIRECTORY/predictions.sqlite``.

    Every failure (a folder that cannot be created, a file that is not a
    SQLite database, a full disk, a lock held too long) is a :class:`CacheError`
    that names the file and suggests ``--no-cache``. A stored value that does
    not parse is treated as absent and recomputed.
    """

    def __init__(self, directory: Path, timeout: float = 60.0):
        self.path = Path(directory) / "predictions.sqlite"
        self._connection: sqlite3.Connection | None = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
                self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
                self._connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=NORMAL")
                self._connection.execute(SCHEMA)
                self._connection.execute("SELECT key, value FROM predictions LIMIT 1").fetchall()
                return
            except sqlite3.OperationalError as error:
                self.close()
                # Two runs creating the same new cache race to switch it to WAL; SQLite reports "locked"
                # at once there instead of waiting on the busy timeout, so wait and try again.
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise self._error("cannot open", error) from None
                time.sleep(random.uniform(0.02, 0.1))
            except (OSError, sqlite3.Error) as error:
                self.close()
                raise self._error("cannot open", error) from None

    def _error(self, action: str, error: BaseException) -> CacheError:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return CacheError(
            f"{action} the prediction cache {self.path}: {reason}. Delete the file, choose another --cache-dir, or run with --no-cache"
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        try:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = self._connection.execute(f"SELECT key, value FROM predictions WHERE key IN ({marks})", part).fetchall()
                for key, value in rows:
                    try:
                        found[key] = json.loads(value)
                    except (TypeError, ValueError):
                        continue  # unreadable entry: recompute it
        except sqlite3.Error as error:
            raise self._error("cannot read", error) from None
        return found

    def put_many(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        if not items:
            return
        # key order kept: a prediction read back must serialise to the same bytes as when it was made
        rows = [(key, json.dumps(value, ensure_ascii=False)) for key, value in items.items()]
        connection = self._connection
        try:
            # one transaction: a chunk is stored whole or not at all
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany("INSERT OR REPLACE INTO predictions (key, value) VALUES (?, ?)", rows)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise self._error("cannot write to", error) from None

    def __bool__(self) -> bool:
        # an empty cache is still a cache: without this, `if cache:` would skip it until it had rows
        return True

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
