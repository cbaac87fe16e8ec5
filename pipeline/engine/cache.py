"""A SQLite prediction cache, so an interrupted run resumes where it stopped.

Each prediction is stored as soon as its model batch is done, keyed by a hash of
the model's fingerprint, the task and its options, and the example's
(preprocessed) inputs. A task model whose forward outputs do not depend on its
options (zero-shot text embeddings: not on the labels) also has those outputs
stored, keyed by the model and the feature's token ids alone, so a change of
options recomputes only the decoding. WAL mode and a busy timeout let two runs
share a cache file at the same time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from nlpflow.contract.errors import CacheError

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    checksum TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outputs (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    checksum TEXT NOT NULL
) WITHOUT ROWID;
"""

logger = logging.getLogger("nlpflow.engine.cache")


def value_checksum(value: str | bytes) -> str:
    """What a stored value must hash to: SQLite checks its pages, not our bytes, so a flipped byte inside a
    value (LABEL_0 -> LABEL_9) passes ``PRAGMA integrity_check`` and would be served without this."""
    return hashlib.sha256(value.encode("utf-8") if isinstance(value, str) else value).hexdigest()


def packed_outputs(outputs: Mapping[str, Any]) -> bytes:
    """One feature's outputs (name -> array) as bytes that :func:`unpacked_outputs` reads back bit for bit: a JSON
    header of each array's name, dtype and shape, then the arrays' raw bytes."""
    arrays = {name: np.ascontiguousarray(value) for name, value in outputs.items()}
    header = json.dumps([[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]).encode("utf-8")
    return struct.pack("<I", len(header)) + header + b"".join(array.tobytes() for array in arrays.values())


def unpacked_outputs(blob: bytes) -> dict[str, np.ndarray]:
    (size,) = struct.unpack_from("<I", blob)
    offset = 4 + size
    outputs = {}
    for name, dtype, shape in json.loads(blob[4:offset]):
        array = np.frombuffer(blob, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=offset).reshape(shape)
        outputs[name] = array
        offset += array.nbytes
    if offset != len(blob):
        raise ValueError(f"{len(blob) - offset} bytes left after the outputs")
    return outputs


def example_key(run_key: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of one example: the run's model/task key plus the example's inputs."""
    payload = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{run_key}\x00{payload}".encode("utf-8")).hexdigest()


class PredictionCache:
    """Predictions by example key, in ``DIRECTORY/predictions.sqlite``.

    Every failure (a folder that cannot be created, a file that is not a
    SQLite database, a full disk, a lock held too long) is a :class:`CacheError`
    that names the file and suggests ``--no-cache`` or ``--cache-optional``. A
    stored value that does not parse or does not match its checksum (rows written
    before checksums existed have none) is treated as absent and recomputed.

    With ``optional=True`` a cache that cannot be opened, read or written is
    dropped after a one-line warning and the run goes on without it.
    """

    def __init__(self, directory: Path, timeout: float = 60.0, optional: bool = False):
        self.path = Path(directory) / "predictions.sqlite"
        self.optional = optional
        self._connection: sqlite3.Connection | None = None
        self._warned_checksum = False
        try:
            self._open(directory, timeout)
        except CacheError as error:
            if not optional:
                raise
            self._give_up(error)

    def _give_up(self, error: CacheError) -> None:
        """--cache-optional: say once why, then behave as --no-cache for the rest of the run."""
        logger.warning("warning: %s; going on without the cache (--cache-optional)", error.problem)
        self.close()

    def _open(self, directory: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
                self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
                self._connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=NORMAL")
                self._connection.executescript(SCHEMA)
                self._add_checksum_column()
                self._connection.execute("SELECT key, value, checksum FROM predictions LIMIT 1").fetchall()
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

    def _add_checksum_column(self) -> None:
        """Caches written before checksums get the column; their rows, with none, read as misses."""
        columns = {row[1] for row in self._connection.execute("PRAGMA table_info(predictions)")}
        if "checksum" in columns:
            return
        try:
            self._connection.execute("ALTER TABLE predictions ADD COLUMN checksum TEXT")
        except sqlite3.OperationalError as error:
            if "duplicate column" not in str(error):  # another run added it first
                raise

    def _error(self, action: str, error: BaseException) -> CacheError:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        problem = f"{action} the prediction cache {self.path}: {reason}"
        failure = CacheError(
            f"{problem}. Delete the file, choose another --cache-dir, run with --no-cache, "
            "or with --cache-optional to go on without the cache when it cannot be used"
        )
        failure.problem = problem
        return failure

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored predictions by key; a key that is absent, damaged or unreadable is left out (recomputed)."""
        return self._read("predictions", keys, str, json.loads)

    def get_outputs(self, keys: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
        """Stored model outputs of features by key (see :func:`packed_outputs`), as :meth:`get_many` reads predictions."""
        return self._read("outputs", keys, bytes, unpacked_outputs)

    def _read(self, table: str, keys: Iterable[str], stored_type: type, parse: Callable[[Any], Any]) -> dict[str, Any]:
        if self._connection is None:
            return {}
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        damaged = 0
        try:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = self._connection.execute(f"SELECT key, value, checksum FROM {table} WHERE key IN ({marks})", part).fetchall()
                for key, value, checksum in rows:
                    if checksum is None:
                        continue  # written before checksums: recompute it
                    if not isinstance(value, stored_type) or value_checksum(value) != checksum:
                        damaged += 1
                        continue
                    try:
                        found[key] = parse(value)
                    except (TypeError, ValueError, struct.error):
                        continue  # unreadable entry: recompute it
        except sqlite3.Error as error:
            if self.optional:
                self._give_up(self._error("cannot read", error))
                return {}
            raise self._error("cannot read", error) from None
        if damaged and not self._warned_checksum:
            self._warned_checksum = True
            logger.warning(
                "warning: the prediction cache %s holds %s that do not match their checksum (the file was altered "
                "or damaged); they are recomputed and stored again",
                self.path, "predictions" if table == "predictions" else "model outputs",
            )
        return found

    def put_many(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        # key order kept: a prediction read back must serialise to the same bytes as when it was made
        self._write("predictions", {key: json.dumps(value, ensure_ascii=False) for key, value in items.items()})

    def put_outputs(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store features' model outputs (name -> array) by key."""
        self._write("outputs", {key: packed_outputs(outputs) for key, outputs in items.items()})

    def _write(self, table: str, values: Mapping[str, str | bytes]) -> None:
        if not values or self._connection is None:
            return
        rows = [(key, value, value_checksum(value)) for key, value in values.items()]
        connection = self._connection
        try:
            # one transaction: a chunk is stored whole or not at all
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(f"INSERT OR REPLACE INTO {table} (key, value, checksum) VALUES (?, ?, ?)", rows)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            if self.optional:
                self._give_up(self._error("cannot write to", error))
                return
            raise self._error("cannot write to", error) from None

    def __bool__(self) -> bool:
        # an empty cache is still a cache: without this, `if cache:` would skip it until it had rows
        return True

    def __len__(self) -> int:
        if self._connection is None:
            return 0
        return self._connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
