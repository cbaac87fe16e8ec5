"""What a run counts as its phases go (records read, predicted, scored, cached, skipped), for the report and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counts:
    read: int = 0
    predicted: int = 0
    scored: int = 0
    from_cache: int = 0
    #: of the records predicted so far, how many a rerun over the same data would take from the cache (each model
    #: batch's predictions are stored as soon as it finishes; a text repeated within a chunk is computed again)
    reusable: int = 0
    truncated: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
