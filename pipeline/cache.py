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
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "predictions.sqlite"
        self._connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA busy_timeout=60000")
        self._connection.execute(SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            for key, value in self._connection.execute(f"SELECT key, value FROM predictions WHERE key IN ({marks})", part):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        if not items:
            return
        rows = [(key, json.dumps(value, ensure_ascii=False, sort_keys=True)) for key, value in items.items()]
        with self._connection:  # one transaction: a chunk is stored whole or not at all
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.executemany("INSERT OR REPLACE INTO predictions (key, value) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def close(self) -> None:
        self._connection.close()
