"""The chunk loop, run one stage after another or overlapped in three threads handing chunks to each other."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

from nlpflow.contract.types import Example, Prediction

_END = object()  # the last item through a hand-off queue


class _Failure:
    """An exception raised in a worker thread, travelling to the main thread in the worker's queue."""

    def __init__(self, error: BaseException):
        self.error = error


class _Handoff:
    """A queue of one item between two stages that gives up when ``stop`` is set, so neither side waits forever
    on a stage that has failed or been interrupted."""

    def __init__(self, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = stop
        #: the consumer's exception, when the consumer is a worker thread
        self.failure: BaseException | None = None

    def put(self, item: Any) -> bool:
        """Hand ``item`` over; False if the run stopped first."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        """The next item; None if the run stopped first."""
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


def run_in_sequence(
    chunks: Iterable[list[Example]], predict: Callable[[list[Example]], list[Prediction]],
    write: Callable[[list[Example], list[Prediction]], None],
) -> None:
    """Each chunk read, predicted and written before the next is read."""
    for chunk in chunks:
        write(chunk, predict(chunk))


def run_overlapped(
    chunks: Iterator[list[Example]], predict: Callable[[list[Example]], list[Prediction]],
    write: Callable[[list[Example], list[Prediction]], None],
) -> None:
    """The chunk loop with its stages overlapped: a reader thread takes the next chunk from ``chunks`` (reading,
    checking and preprocessing it) and a writer thread writes the previous one while this thread predicts the current
    one (the tokenizer, numpy and torch release the GIL). Queues of one chunk keep memory flat; the writer takes
    chunks in order, so the output is the sequential loop's. A worker's exception is raised here as it was raised
    there; on any exit (an error, Ctrl-C, SIGTERM, both of which arrive in this thread) the workers are told to stop
    and joined."""
    stop = threading.Event()
    prepared = _Handoff(stop)
    to_write = _Handoff(stop)

    def read() -> None:
        try:
            for chunk in chunks:
                if not prepared.put(chunk):
                    return
            prepared.put(_END)
        except BaseException as error:  # handed to the main thread, which raises it
            prepared.put(_Failure(error))

    def write_each() -> None:
        try:
            while (item := to_write.get()) is not _END and item is not None:
                write(*item)
        except BaseException as error:
            to_write.failure = error
            stop.set()

    workers = [threading.Thread(target=read, name="nlpflow-read", daemon=True),
               threading.Thread(target=write_each, name="nlpflow-write", daemon=True)]
    for worker in workers:
        worker.start()
    try:
        while True:
            item = prepared.get()
            if to_write.failure is not None:
                raise to_write.failure
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            predictions = predict(item)
            if not to_write.put((item, predictions)) and to_write.failure is not None:
                raise to_write.failure
        to_write.put(_END)
        workers[1].join()
        if to_write.failure is not None:
            raise to_write.failure
    finally:
        stop.set()
        for worker in workers:
            # a worker stops at its next hand-off; one in the middle of a long chunk is left (a daemon) after
            # a few seconds rather than holding up Ctrl-C
            worker.join(timeout=5)
