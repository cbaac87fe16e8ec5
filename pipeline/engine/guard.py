"""The one guard around every plugin call: an unexpected exception blames the plugin, and an output breaking its contract too.

Every call into a plugin's code (a reader's records, a task's checks, model
loading and decoding, metrics, preprocessors, reporters) runs inside
:class:`blamed_on`, which turns an exception the plugin did not mean to raise
into a :class:`PluginError` naming the plugin and what it was doing; the
``checked_*`` functions check what such a call returned where the call has a
contract (a count of predictions, a Prediction, JSON-writable values, a stats
array's shape, a reporter's text).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

from nlpflow.contract.errors import NlpflowError, PluginError
from nlpflow.contract.types import Example, ExampleError, Prediction
from nlpflow.engine.json_values import json_ready, plainly_writable


class Relayed(Exception):
    """An exception the engine raised around a plugin's own (its ``__cause__``), carrying where it happened: the
    guard reports the plugin's exception, with the place the wrapper knows."""


class blamed_on:
    """Turn an unexpected exception in a plugin's code into a PluginError naming the plugin and what it was doing.

    ``what`` is the message's start, or a function of the exception that builds
    it (so a message naming a record is built only on failure). nlpflow's own
    errors and ExampleError (a task's verdict on a record, which the caller
    handles) pass through unchanged; a :class:`Relayed` one reports its cause.
    """

    __slots__ = ("plugin", "what")

    def __init__(self, plugin: str, what: str | Callable[[BaseException], str]):
        self.plugin = plugin
        self.what = what

    def __enter__(self) -> "blamed_on":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> bool:
        if error is not None and isinstance(error, Exception):
            self._blame(error)
        return False

    def call(self, function: Callable[[Any], Any], argument: Any) -> Any:
        """``function(argument)`` under the guard: the same as a ``with`` block, at a third of its cost, for a
        plugin called once per record."""
        try:
            return function(argument)
        except Exception as error:
            self._blame(error)
            raise

    def _blame(self, error: Exception) -> None:
        """Raise the PluginError for ``error``; return (the caller re-raises it) when it is not the plugin's bug."""
        if isinstance(error, (NlpflowError, ExampleError)):
            return
        what = self.what if isinstance(self.what, str) else self.what(error)
        cause = error.__cause__ if isinstance(error, Relayed) and error.__cause__ is not None else error
        raise PluginError(f"{what}: {type(cause).__name__}: {cause}", self.plugin) from cause


def checked_count(predictions: Any, examples: Sequence[Example], plugin: str, task: str, source: str) -> list[Any]:
    """One prediction per example, or the task plugin is named for returning too few or too many."""
    if not isinstance(predictions, list) or len(predictions) != len(examples):
        found = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise PluginError(
            f"task {task!r}: {source} returned {found} predictions for {len(examples)} records "
            f"(records {examples[0].index}-{examples[-1].index})",
            plugin,
        )
    return predictions


def checked_prediction(prediction: Any, where: Callable[[], str], plugin: str, task: str, method: str) -> Prediction:
    """A task's prediction, made JSON-ready; anything else is the task plugin's bug, named with the record
    (``where()``, built only for a message)."""
    if not isinstance(prediction, Prediction):
        raise PluginError(f"task {task!r}: {method} returned {type(prediction).__name__} for {where()}, expected Prediction", plugin)
    details = prediction.details if prediction.details is not None else {}
    if not isinstance(details, dict):
        raise PluginError(f"task {task!r}: {method} returned details of type {type(details).__name__} for {where()}, expected a dict", plugin)
    prediction.details = json_ready(details) if details else details
    if plainly_writable(prediction.value, prediction.details):
        return prediction
    try:
        json.dumps([json_ready(prediction.value), prediction.details], ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as error:
        raise PluginError(f"task {task!r}: {method} returned a prediction for {where()} that cannot be written as JSON: {error}", plugin) from None
    return prediction


def checked_stats(stats: Any, rows: int, plugin: str, metric: str) -> np.ndarray:
    """A metric's ``example_stats``: a 2-d array with one row per scored example."""
    if stats.ndim != 2 or len(stats) != rows:
        raise PluginError(f"metric {metric!r}: example_stats returned shape {stats.shape}, expected ({rows}, k)", plugin)
    return stats


def checked_text(text: Any, plugin: str, reporter: str) -> str:
    """A reporter's rendered file: text."""
    if not isinstance(text, str):
        raise PluginError(f"reporter {reporter!r} returned {type(text).__name__}, expected str", plugin)
    return text


def checked_instance(value: Any, expected: type, plugin: str, message: Callable[[str], str]) -> Any:
    """``value`` when it is an ``expected``; else the plugin is named (``message`` of the type found builds the text)."""
    if not isinstance(value, expected):
        raise PluginError(message(type(value).__name__), plugin)
    return value
