"""The Ray executor: same bytes as the local executor, work on two nodes, a killed worker, resume, handshake.

One module-scoped Ray cluster of two simulated nodes with 1 CPU each (one
worker actor each); Ray's temp folder and HOME point at a temporary folder so
nothing lands in the real home.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from nlpflow.api import validate  # noqa: E402
from nlpflow.engine.cache import PredictionCache  # noqa: E402
from nlpflow.cli import main  # noqa: E402
from nlpflow import hookimpl  # noqa: E402
from nlpflow.contract.errors import ModelError, PluginError  # noqa: E402
from nlpflow.plugins.torch_backend import TorchBackend  # noqa: E402
from nlpflow.registry import load_registry  # noqa: E402
from nlpflow.plugins.executors import RayExecutor  # noqa: E402
from nlpflow.engine.runner import Runner  # noqa: E402
from nlpflow.engine.predicting import load_model  # noqa: E402
from nlpflow import StageSpec  # noqa: E402
from tests.conftest import write_reviews_workload  # noqa: E402

RECORDS = 2_000
CHUNK = 256


@pytest.fixture(scope="module")
def workload(tmp_path_factory, bert_classifier):
    root = tmp_path_factory.mktemp("ray-data")
    return write_reviews_workload(root, bert_classifier, RECORDS, CHUNK, "json", (3, 29))


@pytest.fixture(scope="module")
def local_run(workload, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-local")
    assert main(["run", "reviews", "--config", str(workload), "--output", str(out), "--no-cache"]) == 0
    return out / "reviews"


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # a short path: Ray's unix sockets live under it and their names are limited to about 100 characters
    scratch = tempfile.mkdtemp(prefix="nlpflow-ray-", dir="/tmp")
    saved = {name: os.environ.get(name) for name in ("HOME", "RAY_TMPDIR")}
    os.environ["HOME"] = scratch
    os.environ["RAY_TMPDIR"] = scratch
    os.makedirs(os.path.join(scratch, "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(scratch, ignore_errors=True)


def run_with(executor, workload, out: Path, cache: PredictionCache | None = None):
    pipeline = validate(workload, ["reviews"])[0]
    return Runner(pipeline, out, cache, interactive=False, executor=executor).run()


def assert_ray_writes_the_local_bytes(config: Path, name: str, tmp_path: Path) -> None:
    """Pipeline ``name`` run locally through the CLI and on the cluster through the Runner: the same predictions.jsonl."""
    assert main(["run", name, "--config", str(config), "--output", str(tmp_path / "local"), "--no-cache"]) == 0
    Runner(validate(config, [name])[0], tmp_path / "ray", None, interactive=False, executor=RayExecutor()).run()
    assert (tmp_path / "ray" / name / "predictions.jsonl").read_bytes() == (tmp_path / "local" / name / "predictions.jsonl").read_bytes()


def same_as_local(run_dir: Path, local_run: Path) -> dict:
    assert (run_dir / "predictions.jsonl").read_bytes() == (local_run / "predictions.jsonl").read_bytes()
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    local = json.loads((local_run / "report.json").read_text(encoding="utf-8"))
    assert json.dumps(report["metrics"], sort_keys=True) == json.dumps(local["metrics"], sort_keys=True)
    assert report["counts"]["predicted"] == RECORDS
    return report


# -- without a cluster (these run before the module's cluster starts) --------------------------------


def test_ray_not_installed_is_one_line_with_the_install_command(workload, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path), "--no-cache", "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 4
    assert "pip install 'nlpflow[ray]'" in err and "Traceback" not in err


def test_unreachable_cluster_names_the_address_and_ray_start(workload, tmp_path, capsys):
    assert not ray.is_initialized()
    started = time.perf_counter()
    code = main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path), "--no-cache",
                 "--executor", "ray", "--address", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 4
    assert "127.0.0.1:9" in err and "ray start --head" in err and "Traceback" not in err
    assert time.perf_counter() - started < 60


def test_unknown_executor_lists_the_registered_ones(workload, tmp_path, capsys):
    assert main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path), "--executor", "rya"]) == 2
    assert "unknown executor 'rya'" in capsys.readouterr().err


def test_zero_workers_is_refused_before_anything_runs(workload, tmp_path, capsys):
    assert main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path), "--executor", "ray", "--workers", "0"]) == 2
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "reviews").exists()


# -- on the two-node cluster ------------------------------------------------------------------------


def test_ray_run_writes_the_bytes_of_a_local_run_from_two_nodes(cluster, workload, local_run, tmp_path):
    executor = RayExecutor()
    run_with(executor, workload, tmp_path)
    report = same_as_local(tmp_path / "reviews", local_run)
    section = report["executor"]
    assert section["name"] == "ray" and section["workers"] == 2
    assert section["nodes"] == 2, section["batches_by_node"]
    assert sum(section["batches_by_node"].values()) == report["model"]["batches"]
    assert 1 <= section["peak_in_flight"] <= section["window"] == 4


def test_a_worker_killed_mid_run_is_restarted_and_the_output_is_unchanged(cluster, workload, local_run, tmp_path):
    executor = RayExecutor()
    killed = {}

    def kill_one_worker():
        while executor.batches_done < 5:
            time.sleep(0.01)
        victim = executor.actors[0]
        pid = ray.get(victim.pid.remote())
        killed["at_batch"] = executor.batches_done
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid
        killed["new_pid"] = ray.get(victim.pid.remote(), timeout=120)  # answers once Ray has restarted it

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    run_with(executor, workload, tmp_path)
    killer.join(timeout=120)
    report = same_as_local(tmp_path / "reviews", local_run)
    assert killed["new_pid"] != killed["pid"]
    assert killed["at_batch"] < report["model"]["batches"]


def test_an_interrupted_ray_run_resumes_with_other_workers_to_the_same_bytes(cluster, workload, local_run, tmp_path):
    cache = PredictionCache(tmp_path / "cache")
    original = cache.put_many
    calls = {"n": 0}

    def put_then_stop(entries):
        original(entries)
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt

    cache.put_many = put_then_stop
    with pytest.raises(KeyboardInterrupt):
        run_with(RayExecutor(RayExecutor.Options(workers=2)), workload, tmp_path / "first", cache)
    cache.put_many = original
    run_with(RayExecutor(RayExecutor.Options(workers=1)), workload, tmp_path / "again", cache)
    report = same_as_local(tmp_path / "again" / "reviews", local_run)
    assert 0 < report["counts"]["from_cache"] < RECORDS
    assert report["executor"]["workers"] == 1
    cache.close()


def cached_rows(cache: Path) -> int:
    try:
        connection = sqlite3.connect(cache / "predictions.sqlite", timeout=5)
        try:
            return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def test_a_ray_run_killed_with_sigkill_resumes_locally_to_the_same_bytes(cluster, workload, local_run, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "nlpflow.cli", "run", "reviews", "--config", str(workload), "--output", str(tmp_path / "killed"),
               "--cache-dir", str(cache), "--executor", "ray", "--address", cluster.address, "--workers", "2"]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while cached_rows(cache) < CHUNK:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended or stalled before it could be killed: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=60)
    assert not (tmp_path / "killed" / "reviews" / "predictions.jsonl").exists()
    assert main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path / "again"), "--cache-dir", str(cache)]) == 0
    report = same_as_local(tmp_path / "again" / "reviews", local_run)
    assert 0 < report["counts"]["from_cache"] < RECORDS


def test_a_worker_with_another_run_key_is_refused(cluster, workload):
    pipeline = validate(workload, ["reviews"])[0]
    _, run_key = load_model(pipeline)
    changed = json.loads(run_key)
    changed["model"] = "weights of another checkpoint"
    executor = RayExecutor(RayExecutor.Options(workers=1))
    try:
        with pytest.raises(ModelError, match=r"loaded a different model or settings from the driver \(differs in: model\)"):
            spec = StageSpec.of(pipeline.task, pipeline.config.model, pipeline.backend, pipeline.task_provider, locate_model=pipeline.locate_model)
            executor.start(spec, json.dumps(changed, sort_keys=True))
    finally:
        executor.close()


class FailingBackend(TorchBackend):
    """The torch backend with a bug in ``run``: the error must reach the user as it does locally."""

    name = "failing-torch"

    def run(self, loaded, prepared, **options):
        raise ValueError("this backend fails on purpose")


class FailingBackendPlugin:
    @hookimpl
    def register_backends(register):
        register(FailingBackend)


def test_a_plugin_error_on_a_worker_reads_as_it_does_locally(cluster, workload, tmp_path):
    # workers cannot import this test module: ship the backend class itself
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = tmp_path / "failing.yaml"
    config.write_text(workload.read_text(encoding="utf-8").replace("device: cpu}", "device: cpu, backend: failing-torch}")
                      .replace("reviews.jsonl", str(workload.parent / "reviews.jsonl")), encoding="utf-8")
    registry = load_registry(extra_plugins=[("failing-backend", FailingBackendPlugin)])
    messages = []
    for executor in (None, RayExecutor(RayExecutor.Options(workers=1))):
        pipeline = validate(config, ["reviews"], registry=registry)[0]
        with pytest.raises(PluginError) as raised:
            Runner(pipeline, tmp_path / "out", None, interactive=False, executor=executor).run()
        messages.append(str(raised.value))
    assert "ValueError: this backend fails on purpose" in messages[0]
    assert messages[1] == messages[0]


class PretendOutOfMemory(RuntimeError):
    pass


class SmallMemoryBackend(TorchBackend):
    """The torch backend on a pretend device that runs out of memory above 4 rows."""

    name = "small-memory-torch"

    def run(self, loaded, prepared, **options):
        if len(prepared["input_ids"]) > 4:
            raise PretendOutOfMemory("pretend: CUDA out of memory")
        return super().run(loaded, prepared, **options)

    def is_out_of_memory(self, error):
        return isinstance(error, PretendOutOfMemory)


class SmallMemoryBackendPlugin:
    @hookimpl
    def register_backends(register):
        register(SmallMemoryBackend)


def test_a_worker_out_of_memory_computes_the_batch_in_halves(cluster, workload, local_run, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = tmp_path / "small.yaml"
    config.write_text(workload.read_text(encoding="utf-8").replace("device: cpu}", "device: cpu, backend: small-memory-torch}")
                      .replace("reviews.jsonl", str(workload.parent / "reviews.jsonl")), encoding="utf-8")
    pipeline = validate(config, ["reviews"], registry=load_registry(extra_plugins=[("small-memory", SmallMemoryBackendPlugin)]))[0]
    result = Runner(pipeline, tmp_path / "out", None, interactive=False, executor=RayExecutor(RayExecutor.Options(workers=1))).run()
    assert result.report["counts"]["predicted"] == RECORDS
    labels = [json.loads(line)["prediction"] for line in (tmp_path / "out" / "reviews" / "predictions.jsonl").open(encoding="utf-8")]
    assert labels == [json.loads(line)["prediction"] for line in (local_run / "predictions.jsonl").open(encoding="utf-8")]


def test_a_causal_lm_run_on_ray_writes_the_bytes_of_a_local_run(cluster, gpt2_lm, tmp_path):
    # windows of one document land in different batches on different workers; decode joins them on the driver
    heldout = Path(__file__).resolve().parent.parent / "examples/data/shakespeare_heldout.jsonl"
    config = tmp_path / "pipelines.yaml"
    config.write_text(json.dumps({"pipelines": {"lm": {
        "task": "language-modeling", "data": {"path": str(heldout)}, "options": {"stride": 24},
        "model": {"name_or_path": str(gpt2_lm), "device": "cpu", "max_length": 48, "batch_size": 4}, "chunk_size": 5,
    }}}), encoding="utf-8")
    assert_ray_writes_the_local_bytes(config, "lm", tmp_path)


def test_a_loglikelihood_run_with_few_shot_from_its_own_data_on_ray_writes_the_bytes_of_a_local_run(cluster, gpt2_lm, tmp_path):
    # the task's few-shot pool is read on the driver (Task.prepare) and travels to the workers with the pickled task
    records = [{"text": f"Review {index}: {'fine' if index % 2 else 'poor'} value.", "label": ["positive", "negative"][index % 2]}
               for index in range(10)]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(json.dumps({"pipelines": {"ll": {
        "task": "sentiment", "data": {"path": "reviews.jsonl"}, "metrics": ["accuracy", "accuracy_norm"],
        "options": {"mode": "loglikelihood", "labels": ["positive", "negative"], "prompting": {"few_shot": {"k": 2, "sampler": "random"}}},
        "model": {"name_or_path": str(gpt2_lm), "device": "cpu", "batch_size": 2}, "chunk_size": 4,
    }}}), encoding="utf-8")
    assert_ray_writes_the_local_bytes(config, "ll", tmp_path)


def test_sampled_generation_on_ray_writes_the_bytes_of_a_local_run(cluster, gpt2_lm, tmp_path):
    # sampling is seeded per batch from the seed and the batch's own tokens, so a worker samples what the driver would
    from tests.test_text_generation import PROMPTS, write_pipeline

    records = [{"prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}"} for i in range(24)]
    config = write_pipeline(tmp_path, gpt2_lm, records, "      do_sample: true\n      seed: 5\n", chunk_size=8)
    assert_ray_writes_the_local_bytes(config, "gen", tmp_path)
