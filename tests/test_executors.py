"""The executor contract without a cluster: executors built from validated options, a stage spec that rebuilds the
driver's model in another process's place, the one out-of-memory policy through an executor, and the built-in
executors importing only nlpflow's public surface."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

from nlpflow import ChunkPlan, ConfigError, StageSpec
from nlpflow.api import validate
from nlpflow.engine.executing import make_executor
from nlpflow.engine.predicting import load_model
from nlpflow.contract.types import Example
from tests.conftest import write_reviews_workload

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, bert_classifier):
    root = tmp_path_factory.mktemp("executors")
    return validate(write_reviews_workload(root, bert_classifier, 40, 16, "json", (2, 9)), ["reviews"])[0]


def test_executor_options_are_validated_and_name_the_bad_option(registry):
    ray = make_executor(registry, "ray", {"address": "auto", "workers": 3})
    assert (ray.options.address, ray.options.workers) == ("auto", 3)
    assert make_executor(registry, "local", {"address": None, "workers": None}).name == "local"  # None: not given
    with pytest.raises(ConfigError, match="executor 'local' has no option 'workers'"):
        make_executor(registry, "local", {"workers": 2})
    with pytest.raises(ConfigError, match="executor 'ray': option 'workers': .*, got 0"):
        make_executor(registry, "ray", {"workers": 0})
    with pytest.raises(ConfigError, match="unknown executor 'rya'"):
        make_executor(registry, "rya", {})


def test_a_pickled_stage_spec_loads_the_model_again_and_gets_the_drivers_run_key(pipeline):
    stage, run_key = load_model(pipeline)
    spec = StageSpec.of(pipeline.task, pipeline.config.model, pipeline.backend, pipeline.task_provider, loaded_here=(stage.computer, run_key))
    assert spec.build() == (stage.computer, run_key)  # in the driver's process: the model it loaded
    shipped = pickle.loads(pickle.dumps(spec))
    assert shipped.loaded_here is None
    computer, worker_key = shipped.build()  # what a worker does: its own model, its own run key
    assert computer is not stage.computer and worker_key == run_key

    examples = [Example(i, i + 1, {"text": f"good and bad {'very ' * i}#{i}"}, {}) for i in range(12)]
    features = stage.task_model.encode(examples)
    plan = stage.chunk_plan(features, stage.plan(features))
    here = {tuple(indices): outputs for indices, outputs in stage.computer.compute(plan)}
    there = [part for position in range(len(plan.batches)) for part in computer.compute(pickle.loads(pickle.dumps(plan.only(position))))]
    assert [indices for indices, _ in there] == plan.batches  # the driver's batches, in its order
    for indices, outputs in there:
        for name, values in outputs.items():
            assert np.array_equal(np.asarray(values), np.asarray(here[tuple(indices)][name])), name


def test_one_batch_out_of_memory_comes_back_in_parts_under_the_shared_policy(pipeline, monkeypatch):
    stage, _ = load_model(pipeline)
    computer = stage.computer
    assert computer.auto  # the workload's model has batch_size: auto
    original = computer.backend.run
    attempts = []

    class PretendOutOfMemory(RuntimeError):
        pass

    def small_memory(loaded, prepared, **options):
        attempts.append(len(prepared["input_ids"]))
        if len(prepared["input_ids"]) > 3:
            raise PretendOutOfMemory("pretend: out of memory")
        return original(loaded, prepared, **options)

    monkeypatch.setattr(computer.backend, "run", small_memory)
    monkeypatch.setattr(computer.backend, "is_out_of_memory", lambda error: isinstance(error, PretendOutOfMemory))
    examples = [Example(i, i + 1, {"text": f"fine #{i}"}, {}) for i in range(10)]
    features = stage.task_model.encode(examples)
    plan = stage.chunk_plan(features, [list(range(10))])
    parts = list(computer.compute(plan.only(0)))
    assert [i for indices, _ in parts for i in indices] == list(range(10))  # every row, in plan order
    assert all(len(indices) <= 3 for indices, _ in parts) and computer.stats.oom_retries >= 1
    assert max(attempts) == 10 and computer.max_rows <= 3  # the smaller limits are kept for what follows


def test_the_builtin_executors_import_only_nlpflows_public_surface():
    path = REPO / "plugins" / "executors.py"
    internal = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nlpflow") and node.module != "nlpflow":
            internal.append(f"line {node.lineno}: {node.module}")
        if isinstance(node, ast.Import) and any(alias.name.startswith("nlpflow.") for alias in node.names):
            internal.append(f"line {node.lineno}: {', '.join(alias.name for alias in node.names)}")
    assert internal == []
