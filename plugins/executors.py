"""Built-in executors: ``local`` computes model batches in this process, ``ray`` on Ray actors.

The driver (this process) keeps reading, preprocessing, the cache, planning
and decoding; an executor only computes planned batches. The Ray executor uses
Ray Core actors with an ordered window of ObjectRefs rather than Ray Data:
Ray Data does not keep order by default, its batch boundaries are not stable
(ray-project/ray#51419), so float results would depend on how it cut the
stream, and it has no streaming source fed from a driver-side iterator.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from collections import Counter, deque
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator, Mapping

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

from nlpflow import ChunkPlan, Executor, ModelError, StageSpec, hookimpl

RAY_INSTALL_HINT = "--executor ray needs Ray: pip install 'nlpflow[ray]'"
#: packages whose versions must match between the driver and every worker (outputs depend on them)
HANDSHAKE_PACKAGES = ("nlpflow", "torch", "transformers")
#: batches in flight per worker: one computing, one queued so the worker never waits for the driver
IN_FLIGHT_PER_WORKER = 2
#: CPU threads per worker when the cluster has no GPUs (Ray sets OMP_NUM_THREADS to an actor's num_cpus)
THREADS_PER_WORKER = 1
#: how long workers may take to start and load the model before the run gives up
START_TIMEOUT_SECONDS = 600
#: how long a cluster address may take to accept a connection
CONNECT_TIMEOUT_SECONDS = 5
#: a worker process that dies is restarted (and loads the model again) this many times; its batches are retried
MAX_RESTARTS = 3


@hookimpl
def register_executors(register):
    register(LocalExecutor)
    register(RayExecutor)


class LocalExecutor(Executor):
    """Computes every planned batch in this process, with the model the driver loaded (prefetch on CUDA)."""

    name = "local"
    description = "model batches computed in this process"

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.computer: Any = None

    def start(self, spec: StageSpec, run_key: str) -> None:
        self.computer, _ = spec.build()

    def compute(self, plan: ChunkPlan) -> Iterator[tuple[list[int], Mapping[str, np.ndarray]]]:
        return self.computer.compute(plan)


def handshake_versions() -> dict[str, str | None]:
    found = {}
    for name in HANDSHAKE_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


class RayWorker:
    """One Ray actor: builds the model's batch computer from the driver's spec once and computes the plans it is sent.

    Errors are caught and returned, never raised: a plugin's error must reach
    the user with its own type and text, and must not be retried.
    """

    def __init__(self, spec: StageSpec):
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.load_error: str | None = None
        self.run_key: str | None = None
        try:
            self.computer, self.run_key = spec.build()
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"

    def hello(self) -> dict[str, Any]:
        """What the driver checks before sending work: versions, the run key, where this worker is."""
        return {"versions": handshake_versions(), "run_key": self.run_key, "node": self.node, "pid": os.getpid(), "error": self.load_error}

    def pid(self) -> int:
        return os.getpid()

    def compute(self, plan: ChunkPlan) -> dict[str, Any]:
        """The plan's ``(indices, outputs)`` pairs: one for its batch, or its parts after running out of memory."""
        started = time.perf_counter()
        try:
            parts = list(self.computer.compute(plan))
        except Exception as error:
            return {"error": _transportable(error), "node": self.node}
        return {"parts": parts, "node": self.node, "seconds": time.perf_counter() - started}


def _transportable(error: Exception) -> Exception:
    """The exception itself when it pickles (the driver re-raises it, so the user reads the same text as locally);
    otherwise one of a same-named class with the same message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return type(type(error).__name__, (Exception,), {})(str(error))


class RayOptions(BaseModel):
    """Where the Ray cluster is and how many workers to start on it."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(
        None, description="the Ray cluster to join (auto: the one `ray start` runs on this machine); default: start one in this process"
    )
    workers: int | None = Field(None, ge=1, description="worker actors, each loading the model once; default: one per GPU, else one per CPU")


class RayExecutor(Executor):
    """Computes planned batches on Ray actors, each holding the model, with results streamed back in plan order."""

    name = "ray"
    description = "model batches computed on Ray actors (one model per actor), in order, through a bounded window"
    Options = RayOptions

    def __init__(self, options: RayOptions | None = None):
        super().__init__(options)
        self.address = self.options.address
        self.workers = self.options.workers
        self.actors: list[Any] = []
        self.window = 0
        self.peak_in_flight = 0
        self.batches_by_node: Counter[str] = Counter()
        self.worker_seconds = 0.0
        self.started_seconds = 0.0
        self.batches_done = 0

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ModelError(RAY_INSTALL_HINT) from None
        return ray

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            return
        self._check_reachable()
        try:
            # a local cluster in this process when no address is given; workers' logs stay in Ray's log folder
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="warning")
        except Exception as error:
            where = self.address or "a new local cluster"
            raise ModelError(
                f"cannot reach the Ray cluster at {where}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
                "start one with `ray start --head` (then --address auto) or check the address"
            ) from None

    def _check_reachable(self) -> None:
        """A ``host:port`` that does not answer fails at once: ``ray.init`` would retry it for minutes."""
        address = self.address
        if not address or address == "auto" or "://" in address or ":" not in address:
            return
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
        except (OSError, ValueError) as error:
            raise ModelError(
                f"cannot reach the Ray cluster at {address}: {getattr(error, 'strerror', None) or error}; start one with "
                "`ray start --head` on the head node (then --address auto there, or --address HEAD_IP:6379 elsewhere)"
            ) from None

    def start(self, spec: StageSpec, run_key: str) -> None:
        started = time.perf_counter()
        ray = self._ray()
        self._connect(ray)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            per_worker = {"num_gpus": 1}
            count = self.workers or gpus
        else:
            per_worker = {"num_cpus": THREADS_PER_WORKER}
            count = self.workers or max(1, int(resources.get("CPU", 1)) // THREADS_PER_WORKER)
        actor_class = ray.remote(RayWorker).options(
            **per_worker, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, scheduling_strategy="SPREAD"
        )
        self.actors = [actor_class.remote(spec) for _ in range(count)]
        self.window = IN_FLIGHT_PER_WORKER * count
        try:
            hellos = ray.get([actor.hello.remote() for actor in self.actors], timeout=START_TIMEOUT_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise ModelError(
                f"{count} Ray workers ({per_worker}) did not start within {START_TIMEOUT_SECONDS} s; the cluster has "
                f"{resources.get('CPU', 0):g} CPUs and {gpus} GPUs: ask for fewer with --workers"
            ) from None
        expected = handshake_versions()
        for hello in hellos:
            where = f"Ray worker on node {hello['node']} (pid {hello['pid']})"
            if hello["error"] is not None:
                raise ModelError(f"{where} could not load model {spec.model.name_or_path!r}: {hello['error']}")
            if hello["versions"] != expected:
                differ = ", ".join(f"{name} {hello['versions'][name]} (driver {expected[name]})" for name in expected if hello["versions"][name] != expected[name])
                raise ModelError(f"{where} has different versions from the driver: {differ}; install the same ones on every worker")
            if hello["run_key"] != run_key:
                mine, theirs = json.loads(run_key), json.loads(hello["run_key"])
                differ = ", ".join(sorted(key for key in mine if mine[key] != theirs.get(key)))
                raise ModelError(
                    f"{where} loaded a different model or settings from the driver (differs in: {differ}); every worker needs "
                    f"the same checkpoint {spec.model.name_or_path!r}, task plugin and device kind"
                )
        self.started_seconds = time.perf_counter() - started

    def compute(self, plan: ChunkPlan) -> Iterator[tuple[list[int], Mapping[str, np.ndarray]]]:
        ray = self._ray()
        in_flight: deque[tuple[list[int], Any, Any]] = deque()
        load = Counter()
        for position, indices in enumerate(plan.batches):
            while len(in_flight) >= self.window:
                yield from self._finish(ray, in_flight, load)
            # the least busy worker, so one slow worker does not hold the whole window
            actor = min(self.actors, key=lambda a: load[id(a)])
            load[id(actor)] += 1
            in_flight.append((indices, actor, actor.compute.remote(plan.only(position))))
            self.peak_in_flight = max(self.peak_in_flight, len(in_flight))
        while in_flight:
            yield from self._finish(ray, in_flight, load)

    def _finish(self, ray, in_flight: deque, load: Counter) -> list[tuple[list[int], Mapping[str, np.ndarray]]]:
        """The oldest batch's outputs: results come back in plan order, whatever order workers finish in."""
        indices, actor, reference = in_flight.popleft()
        load[id(actor)] -= 1
        try:
            result = ray.get(reference)
        except ray.exceptions.RayActorError as error:
            raise ModelError(
                f"a Ray worker died computing a batch of {len(indices)} rows and was not restarted (at most {MAX_RESTARTS} "
                f"restarts per worker); see its log in the Ray session folder: {str(error).splitlines()[0]}"
            ) from None
        if "error" in result:
            raise result["error"]
        self.batches_by_node[result["node"]] += 1
        self.worker_seconds += result["seconds"]
        self.batches_done += 1
        return result["parts"]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "workers": len(self.actors),
            "window": self.window,
            "peak_in_flight": self.peak_in_flight,
            "nodes": len(self.batches_by_node),
            "batches_by_node": dict(sorted(self.batches_by_node.items())),
            "start_seconds": round(self.started_seconds, 3),
            "worker_forward_seconds": round(self.worker_seconds, 4),
        }

    def close(self) -> None:
        if not self.actors:
            return
        ray = self._ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
