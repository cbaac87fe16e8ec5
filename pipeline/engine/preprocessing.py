"""Examples in chunks, each run through the pipeline's preprocessors in order before it is predicted."""

from __future__ import annotations

import time
from collections import Counter
from itertools import islice
from typing import Iterator

from nlpflow.config.resolve import ResolvedPipeline
from nlpflow.contract.types import Example
from nlpflow.engine.guard import blamed_on


def chunks(items: Iterator[Example], size: int) -> Iterator[list[Example]]:
    while True:
        chunk = list(islice(items, size))
        if not chunk:
            return
        yield chunk


class Preprocessing:
    """Cuts examples into chunks of ``chunk_size`` and runs each chunk through the preprocessors, timing both."""

    def __init__(self, pipeline: ResolvedPipeline, seconds: Counter[str]):
        self.pipeline = pipeline
        #: seconds spent per stage of the run, shared with the other phases
        self.seconds = seconds

    def prepared_chunks(self, examples: Iterator[Example]) -> Iterator[list[Example]]:
        """Chunks of read, checked and preprocessed examples, in file order."""
        read = chunks(examples, self.pipeline.config.chunk_size)
        while True:
            timer = time.perf_counter()
            chunk = next(read, None)
            self.seconds["read"] += time.perf_counter() - timer
            if chunk is None:
                return
            self.preprocess(chunk)
            yield chunk

    def preprocess(self, chunk: list[Example]) -> None:
        pipeline = self.pipeline
        for step in pipeline.preprocessors:
            timer = time.perf_counter()
            with blamed_on(
                pipeline.providers[("preprocessor", step.name)],
                f"preprocessor {step.name!r} raised on records {chunk[0].index}-{chunk[-1].index} of pipeline {pipeline.name!r}",
            ):
                step(chunk)
            self.seconds[f"preprocess:{step.name}"] += time.perf_counter() - timer
