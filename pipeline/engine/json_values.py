"""Values made ready for JSON the same way everywhere a run writes them (predictions.jsonl, the cache, reports)."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

#: one encoder for every predictions.jsonl line: ``json.dumps`` with options builds a new encoder per call
LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)

#: types written to JSON as they are (bool and int exactly, not subclasses such as numpy's)
JSON_AS_IS = frozenset({str, int, bool, type(None)})


def plainly_writable(value: Any, details: dict) -> bool:
    """True for the common prediction (a label or text, details of numbers and strings) that JSON surely writes;
    anything else gets a full trial encoding."""
    for item in (value, *details.values()):
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return False  # a lone surrogate would not encode as UTF-8: let the trial encoding find it
        elif kind not in JSON_AS_IS and kind is not float:
            return False
    return True


def rounded(value: float) -> float | None:
    """Scores rounded so a resumed run (batched differently) writes the same bytes."""
    return round(value, 6) if math.isfinite(value) else None


def each_json_ready(values: Sequence[Any]) -> list[Any]:
    """:func:`json_ready` of each value, without a call for the plain ones (a chunk's labels, texts and ids)."""
    return [value if type(value) in JSON_AS_IS else json_ready(value) for value in values]


def json_ready(value: Any, exact: bool = False) -> Any:
    """``value`` as plain JSON types, floats :func:`rounded` for writing; ``exact`` keeps floats as computed (the
    cache's copy, so a prediction taken from it is scored exactly as a fresh one)."""
    if type(value) in JSON_AS_IS:  # most values (labels, texts, ids): no walk
        return value
    if isinstance(value, float):
        return value if exact else rounded(value)
    if isinstance(value, (np.floating,)):
        return float(value) if exact else rounded(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist(), exact)
    if isinstance(value, dict):
        return {str(k): json_ready(v, exact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, exact) for v in value]
    return value
