"""The terms of report.json's ``analysis`` section that reporters read: slice names, limits and confidence.

A reporter (the built-in HTML page, or a plugin's) shows what the engine's error analysis wrote; these are the
names and limits both sides agree on.
"""

from __future__ import annotations

import math
from typing import Any

#: distinct values kept per slice column; the rest are pooled as "(other)" (with it, codes fit in a byte)
MAX_SLICE_VALUES = 200
#: slices per column given a value and interval in the report, the largest first
REPORTED_SLICES = 30
OTHER = "(other)"
#: the slice of examples that have no value in a slice column
MISSING = "(missing)"


#: prediction details that say how sure the model was, in order of preference (QA's probability over its raw span
#: score; a classifier's softmax score; a zero-shot classifier's cosine similarity)
CONFIDENCE_DETAILS = ("probability", "score", "similarity")


def confidence(details: dict[str, Any] | None) -> dict[str, Any]:
    """``{"confidence": value, "confidence_of": key}`` from the first confidence detail that is a number, else {}."""
    for key in CONFIDENCE_DETAILS:
        value = (details or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return {"confidence": value, "confidence_of": key}
    return {}
