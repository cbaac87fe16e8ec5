"""Resume and cache: a killed run loses nothing, a restart finishes from the cache with the same bytes.

The runs under test are real ``python -m nlpflow.cli run`` subprocesses with
the tiny BERT classifier and ``chunk_size: 16``. The one that gets killed is
slowed down (a short sleep before each chunk's model stage, patched in by a
wrapper script) so the kill reliably lands part-way; the kill itself is a
SIGKILL once the cache holds some but not all of the chunks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlpflow.cli import main
from tests.conftest import write_reviews_workload

REPO = Path(__file__).resolve().parent.parent
RECORDS = 200
CHUNK = 16

#: runs the CLI with a delay before each chunk's model stage, so a test can kill it part-way
SLOW_CLI = """
import sys, time
import nlpflow.engine.model_stage as model
original = model.ModelStage.run
def slow_run(self, *arguments, **options):
    time.sleep(float(sys.argv[1]))
    return original(self, *arguments, **options)
model.ModelStage.run = slow_run
from nlpflow.cli import main
sys.exit(main(sys.argv[2:]))
"""

#: the same with the delay before each model batch (``collate`` runs once per batch that is computed)
SLOW_BATCHES_CLI = SLOW_CLI.replace("import nlpflow.engine.model_stage as model", "import nlpflow.engine.batches as model").replace(
    "model.ModelStage.run", "model.ChunkPlan.collate")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


@pytest.fixture(scope="module")
def workload(tmp_path_factory, bert_classifier):
    root = tmp_path_factory.mktemp("resume")
    return write_reviews_workload(root, bert_classifier, RECORDS, CHUNK, "json, markdown", (5, 23))


@pytest.fixture(scope="module")
def baseline(workload, tmp_path_factory):
    """An uninterrupted run with a fresh cache."""
    root = tmp_path_factory.mktemp("baseline")
    assert main(["run", "reviews", "--config", str(workload), "--output", str(root / "out"), "--cache-dir", str(root / "cache")]) == 0
    run_dir = root / "out" / "reviews"
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["predicted"] == RECORDS
    assert report["counts"]["from_cache"] == 0
    return run_dir


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _cli(config: Path, out: Path, cache: Path | None, delay: float = 0.0, extra: tuple[str, ...] = (), slow: str = SLOW_CLI) -> subprocess.Popen:
    arguments = ["run", "reviews", "--config", str(config), "--output", str(out), *extra]
    arguments += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    command = [sys.executable, "-c", slow, str(delay), *arguments] if delay else [sys.executable, "-m", "nlpflow.cli", *arguments]
    return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cached_rows(cache: Path) -> int:
    path = cache / "predictions.sqlite"
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=5)
    try:
        return connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return 0  # not created yet
        raise
    finally:
        connection.close()


def _kill_part_way(process: subprocess.Popen, cache: Path, at_least: int = 2 * CHUNK) -> int:
    """SIGKILL the run once the cache holds ``at_least`` predictions; how many it holds after the kill."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = _cached_rows(cache)
        if rows >= at_least:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            return _cached_rows(cache)
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("the run never stored a chunk in the cache")


def _finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def killed_and_resumed(config: Path, name: str, root: Path, at_least: int) -> int:
    """Run pipeline ``name`` of ``config`` whole into ``root/baseline``; then again into ``root/out``, slowed and
    SIGKILLed once its cache (``root/cache``) holds ``at_least`` predictions, and rerun there to the end. Returns how
    many predictions the cache held after the kill; the caller compares ``out`` with ``baseline``."""

    def cli(out: Path, cache: Path, delay: float = 0.0) -> subprocess.Popen:
        arguments = ["run", name, "--config", str(config), "--output", str(out), "--cache-dir", str(cache)]
        command = [sys.executable, "-c", SLOW_CLI, str(delay), *arguments] if delay else [sys.executable, "-m", "nlpflow.cli", *arguments]
        return subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    _finish(cli(root / "baseline", root / "baseline-cache"))
    stored = _kill_part_way(cli(root / "out", root / "cache", delay=0.5), root / "cache", at_least=at_least)
    assert not (root / "out" / name / "predictions.jsonl").exists()
    _finish(cli(root / "out", root / "cache"))
    return stored


def test_killed_run_resumes_from_the_cache_with_identical_output(workload, baseline, tmp_path):
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    # an earlier, complete run in the same folder: the killed run must leave its files whole
    shutil.copytree(baseline, out / "reviews")
    earlier = {name: (out / "reviews" / name).read_bytes() for name in ("predictions.jsonl", "report.json", "report.md")}

    stored = _kill_part_way(_cli(workload, out, cache, delay=0.3), cache)
    assert 0 < stored < RECORDS
    assert stored % CHUNK == 0  # one model batch per chunk here, stored whole or not at all
    for name, content in earlier.items():
        assert (out / "reviews" / name).read_bytes() == content, f"{name} was touched by the killed run"
    assert len(list((out / "reviews").glob(".*partial"))) == 1  # what the killed run was writing

    with sqlite3.connect(cache / "predictions.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    _finish(_cli(workload, out, cache))
    resumed = json.loads((out / "reviews" / "report.json").read_text(encoding="utf-8"))
    expected = json.loads((baseline / "report.json").read_text(encoding="utf-8"))
    assert (out / "reviews" / "predictions.jsonl").read_bytes() == (baseline / "predictions.jsonl").read_bytes()
    assert resumed["metrics"] == expected["metrics"]
    assert resumed["counts"]["from_cache"] >= stored > 0
    assert resumed["counts"]["predicted"] == RECORDS
    assert _cached_rows(cache) == RECORDS
    assert not list((out / "reviews").glob(".*partial"))  # the stale partial file is cleaned up


def test_sigterm_is_handled_like_ctrl_c(workload, baseline, tmp_path):
    """``kill PID`` part-way: a message, exit 143, no partial file left, the earlier run's files untouched."""
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    shutil.copytree(baseline, out / "reviews")
    earlier = {path.name: path.read_bytes() for path in (out / "reviews").iterdir()}
    process = _cli(workload, out, cache, delay=0.3)
    deadline = time.monotonic() + 120
    while _cached_rows(cache) < 2 * CHUNK:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended or stalled before it could be terminated: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated (SIGTERM): pipeline 'reviews': " in stderr and "predictions from the cache; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert {path.name: path.read_bytes() for path in (out / "reviews").iterdir()} == earlier  # no partial file either


def test_interrupted_first_run_leaves_no_report_files(workload, tmp_path, monkeypatch, capsys):
    """Ctrl-C part-way through a first run: no predictions.jsonl, no reports, no partial file; the cache keeps what was done."""
    import nlpflow.engine.model_stage as model

    original = model.ModelStage.run
    calls = []

    def interrupted(self, examples, **options):
        calls.append(len(examples))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, examples, **options)

    monkeypatch.setattr(model.ModelStage, "run", interrupted)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    assert main(["run", "reviews", "--config", str(workload), "--output", str(out), "--cache-dir", str(cache)]) == 130
    assert f"interrupted: pipeline 'reviews': a rerun will take {2 * CHUNK} predictions from the cache" in capsys.readouterr().err
    run_dir = out / "reviews"
    assert sorted(p.name for p in run_dir.iterdir()) == []
    assert _cached_rows(cache) == 2 * CHUNK


@pytest.fixture(scope="module")
def small_batches(workload, tmp_path_factory):
    """The workload in batches of 4 rows, so each chunk of 16 is several model batches."""
    root = tmp_path_factory.mktemp("small-batches")
    shutil.copy(workload.parent / "reviews.jsonl", root / "reviews.jsonl")
    config = root / "pipelines.yaml"
    text = workload.read_text(encoding="utf-8")
    assert "device: cpu}" in text
    config.write_text(text.replace("device: cpu}", "device: cpu, batch_size: 4}"), encoding="utf-8")
    return config


def _batch_sensitive(monkeypatch) -> None:
    """Make the torch backend's logits depend visibly on the batch they were computed in.

    Real kernels do this in the last bits (the tiny model flips a 6-digit score in about
    one record in 200, mostly when a record runs alone), too rarely for a test to rely on;
    here what a batch holds (its shape and token ids) moves the first label's logit by up to 1e-2.
    """
    from nlpflow.plugins.torch_backend import TorchBackend

    original = TorchBackend.run

    def run(self, loaded, prepared, **options):
        result = original(self, loaded, prepared, **options)
        rows, width = prepared["input_ids"].shape
        logits = result["logits"].copy()
        logits[:, 0] += 1e-4 * ((rows + width + int(prepared["input_ids"].sum())) % 97)
        return {"logits": logits}

    monkeypatch.setattr(TorchBackend, "run", run)


@pytest.mark.parametrize("sensitivity", ["bert", "batch-sensitive"])
def test_partly_cached_run_writes_the_bytes_of_a_run_without_cache(small_batches, tmp_path, monkeypatch, sensitivity):
    """Cache hits must not change which examples share a model batch: float scores depend on the batch.

    The cache is filled by a complete run, then every third entry is deleted, so most
    chunks are part cached, part not. Computing only the misses would put them in
    batches of their own and change the last digits of some scores.
    """
    if sensitivity == "batch-sensitive":
        _batch_sensitive(monkeypatch)
    without_cache = tmp_path / "no-cache"
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(without_cache), "--no-cache"]) == 0
    cache = tmp_path / "cache"
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(tmp_path / "full"), "--cache-dir", str(cache)]) == 0
    with sqlite3.connect(cache / "predictions.sqlite") as connection:
        keys = [row[0] for row in connection.execute("SELECT key FROM predictions ORDER BY key")]
        connection.executemany("DELETE FROM predictions WHERE key = ?", [(key,) for key in keys[::3]])
    assert _cached_rows(cache) == RECORDS - len(keys[::3])

    out = tmp_path / "out"
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(out), "--cache-dir", str(cache)]) == 0
    expected = (without_cache / "reviews" / "predictions.jsonl").read_bytes()
    assert (out / "reviews" / "predictions.jsonl").read_bytes() == expected
    report = json.loads((out / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert 0 < report["counts"]["from_cache"] < RECORDS - len(keys[::3])  # whole batches with a miss were rerun
    assert report["model"]["batches_skipped_as_cached"] > 0
    assert _cached_rows(cache) == RECORDS


@pytest.fixture(scope="module")
def small_batches_baseline(small_batches, tmp_path_factory):
    """predictions.jsonl of an uninterrupted run without cache, in batches of 4."""
    out = tmp_path_factory.mktemp("small-batches-baseline")
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(out), "--no-cache"]) == 0
    return (out / "reviews" / "predictions.jsonl").read_bytes()


@pytest.mark.parametrize("kill_at", [1, CHUNK + 5, 6 * CHUNK + 9], ids=["first-batch", "mid-second-chunk", "mid-seventh-chunk"])
def test_killed_run_loses_no_finished_batch(small_batches, small_batches_baseline, tmp_path, kill_at):
    """Each model batch is stored as it finishes: a SIGKILL loses at most the batch in flight."""
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    stored = _kill_part_way(_cli(small_batches, out, cache, delay=0.1, slow=SLOW_BATCHES_CLI), cache, at_least=kill_at)
    assert kill_at <= stored < RECORDS
    assert stored % 4 == 0  # batches of 4 are stored whole or not at all

    _finish(_cli(small_batches, out, cache))
    resumed = json.loads((out / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert resumed["counts"]["from_cache"] >= stored > 0
    assert (out / "reviews" / "predictions.jsonl").read_bytes() == small_batches_baseline
    assert _cached_rows(cache) == RECORDS


def test_interrupt_in_a_chunk_keeps_its_finished_batches_and_says_how_many(small_batches, tmp_path, monkeypatch, capsys):
    import nlpflow.engine.batches as model

    original = model.ChunkPlan.collate
    calls = []

    def interrupted(self, indices):
        calls.append(len(indices))
        if len(calls) == 7:  # the third batch of the second chunk
            raise KeyboardInterrupt
        return original(self, indices)

    monkeypatch.setattr(model.ChunkPlan, "collate", interrupted)
    cache = tmp_path / "cache"
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)]) == 130
    assert "interrupted: pipeline 'reviews': a rerun will take 24 predictions from the cache" in capsys.readouterr().err
    assert _cached_rows(cache) == 24


@pytest.mark.parametrize("stop_at_batch", [7, 22, 31])
def test_the_interrupted_run_counts_what_the_rerun_takes_from_the_cache(small_batches, tmp_path, monkeypatch, capsys, stop_at_batch):
    """With texts repeated within chunks (computed again at each place on a rerun, so not reused), the number an
    interrupted run gives is the rerun's from_cache count, not the number of predictions it stored."""
    import nlpflow.engine.batches as model

    lines = (small_batches.parent / "reviews.jsonl").read_text(encoding="utf-8").splitlines()
    for start in range(0, RECORDS - CHUNK + 1, 2 * CHUNK):
        for offset in range(0, CHUNK, 4):
            lines[start + offset + 1] = lines[start + offset]  # every other chunk: pairs of the same text
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(small_batches, tmp_path / "pipelines.yaml")
    config = tmp_path / "pipelines.yaml"

    original = model.ChunkPlan.collate
    calls = []

    def interrupted(self, indices):
        calls.append(len(indices))
        if len(calls) == stop_at_batch:
            raise KeyboardInterrupt  # what SIGTERM and Ctrl-C become
        return original(self, indices)

    monkeypatch.setattr(model.ChunkPlan, "collate", interrupted)
    cache = tmp_path / "cache"
    arguments = ["run", "reviews", "--config", str(config), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)]
    assert main(arguments) == 130
    message = capsys.readouterr().err
    said = int(message.split("a rerun will take ")[1].split(" predictions from the cache")[0])
    stored = _cached_rows(cache)
    monkeypatch.setattr(model.ChunkPlan, "collate", original)
    assert main(arguments) == 0
    from_cache = json.loads((tmp_path / "out" / "reviews" / "report.json").read_text(encoding="utf-8"))["counts"]["from_cache"]
    assert said == from_cache
    assert 0 < from_cache < stored  # stored repeats are computed again, so they are not counted


def test_text_repeated_within_a_chunk_is_computed_at_each_place(small_batches, tmp_path, monkeypatch):
    """Two copies of a text in one chunk sit in different batches, so a run without cache can give them
    different last digits; a fully cached rerun must still write those bytes, not one cached value twice."""
    _batch_sensitive(monkeypatch)
    lines = (small_batches.parent / "reviews.jsonl").read_text(encoding="utf-8").splitlines()
    for start in range(0, RECORDS - CHUNK + 1, CHUNK):
        lines[start + CHUNK - 1] = lines[start]  # the chunk's last record repeats its first
    (tmp_path / "reviews.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(small_batches, tmp_path / "pipelines.yaml")
    config = tmp_path / "pipelines.yaml"
    assert main(["run", "reviews", "--config", str(config), "--output", str(tmp_path / "no-cache"), "--no-cache"]) == 0
    expected = (tmp_path / "no-cache" / "reviews" / "predictions.jsonl").read_bytes()
    copies = [json.loads(line) for line in expected.decode("utf-8").splitlines()]
    assert any(copies[s]["details"] != copies[s + CHUNK - 1]["details"] for s in range(0, RECORDS - CHUNK + 1, CHUNK))

    cache = tmp_path / "cache"
    for run in ("first", "warm"):
        assert main(["run", "reviews", "--config", str(config), "--output", str(tmp_path / run), "--cache-dir", str(cache)]) == 0
        assert (tmp_path / run / "reviews" / "predictions.jsonl").read_bytes() == expected, run


def test_no_cache_gives_the_same_predictions_and_writes_no_cache(workload, baseline, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NLPFLOW_CACHE_DIR", str(tmp_path / "default-cache"))
    out = tmp_path / "out"
    assert main(["run", "reviews", "--config", str(workload), "--output", str(out), "--no-cache"]) == 0
    assert (out / "reviews" / "predictions.jsonl").read_bytes() == (baseline / "predictions.jsonl").read_bytes()
    report = json.loads((out / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["from_cache"] == 0
    assert not (tmp_path / "default-cache").exists()


def test_second_run_is_served_from_the_cache(workload, baseline, tmp_path):
    cache = baseline.parent.parent / "cache"
    out = tmp_path / "out"
    assert main(["run", "reviews", "--config", str(workload), "--output", str(out), "--cache-dir", str(cache)]) == 0
    report = json.loads((out / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["from_cache"] == RECORDS
    assert (out / "reviews" / "predictions.jsonl").read_bytes() == (baseline / "predictions.jsonl").read_bytes()


def test_cache_key_changes_with_the_model_settings(workload, baseline, tmp_path):
    """A different max_length changes predictions, so it must not be served from the same cache entries."""
    cache = baseline.parent.parent / "cache"
    config = tmp_path / "pipelines.yaml"
    config.write_text(workload.read_text(encoding="utf-8").replace("device: cpu}", "device: cpu, max_length: 8}"), encoding="utf-8")
    shutil.copy(workload.parent / "reviews.jsonl", tmp_path / "reviews.jsonl")
    assert main(["run", "reviews", "--config", str(config), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)]) == 0
    report = json.loads((tmp_path / "out" / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["from_cache"] == 0
    assert report["counts"]["truncated"] > 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(("device: cpu}", "device: cpu, dtype: bfloat16}"), id="dtype"),
        pytest.param(("task: sentiment", "task: sentiment\n    options: {labels: [negative, positive], threshold: 0.4, multi_label: true}"), id="task-options"),
    ],
)
def test_cache_misses_when_dtype_or_task_options_change(workload, baseline, tmp_path, change):
    """The same weights in another dtype, or other task options, give other predictions: never served stale."""
    cache = baseline.parent.parent / "cache"
    config = tmp_path / "pipelines.yaml"
    text = workload.read_text(encoding="utf-8")
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1], 1), encoding="utf-8")
    shutil.copy(workload.parent / "reviews.jsonl", tmp_path / "reviews.jsonl")
    assert main(["run", "reviews", "--config", str(config), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)]) == 0
    report = json.loads((tmp_path / "out" / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["from_cache"] == 0


def test_two_runs_sharing_a_cache_at_the_same_time(workload, baseline, tmp_path):
    cache = tmp_path / "cache"
    first = _cli(workload, tmp_path / "a", cache, delay=0.02)
    second = _cli(workload, tmp_path / "b", cache, delay=0.02)
    _finish(first)
    _finish(second)
    expected = (baseline / "predictions.jsonl").read_bytes()
    baseline_metrics = json.loads((baseline / "report.json").read_text(encoding="utf-8"))["metrics"]
    for name in ("a", "b"):
        assert (tmp_path / name / "reviews" / "predictions.jsonl").read_bytes() == expected
        report = json.loads((tmp_path / name / "reviews" / "report.json").read_text(encoding="utf-8"))
        assert report["metrics"] == baseline_metrics
    with sqlite3.connect(cache / "predictions.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == RECORDS


def test_unusable_cache_is_a_clear_error(workload, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "predictions.sqlite").write_bytes(b"this is not a database" * 100)
    code = main(["run", "reviews", "--config", str(workload), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 6
    assert "Traceback" not in err
    assert f"error: cannot open the prediction cache {cache / 'predictions.sqlite'}: file is not a database." in err
    assert "--no-cache" in err


def test_cache_entries_that_do_not_parse_are_recomputed(tmp_path):
    from nlpflow.engine.cache import PredictionCache

    cache = PredictionCache(tmp_path)
    cache.put_many({"a": {"value": "x", "details": {"b": 1, "a": 2}}})
    cache._connection.execute("INSERT INTO predictions (key, value, checksum) VALUES ('broken', '{not json', NULL)")
    assert cache.get_many(["a", "broken", "missing"]) == {"a": {"value": "x", "details": {"b": 1, "a": 2}}}
    assert list(cache.get_many(["a"])["a"]["details"]) == ["b", "a"]  # key order kept, so bytes round-trip
    cache.close()


OPEN_AND_WRITE = """
import sys, time
from pathlib import Path
from nlpflow.engine.cache import PredictionCache
start = float(sys.argv[2])
while time.time() < start:
    pass
cache = PredictionCache(Path(sys.argv[1]))
for i in range(10):
    cache.put_many({f"{sys.argv[3]}-{i}-{j}": {"value": j} for j in range(16)})
cache.close()
"""


def test_two_processes_creating_the_same_new_cache_both_succeed(tmp_path):
    """SQLite answers 'database is locked' at once when two connections switch a new file to WAL together."""
    for attempt in range(6):
        directory = tmp_path / f"cache{attempt}"
        start = str(time.time() + 0.5)
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, str(directory), start, name], cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")
        ]
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
        with sqlite3.connect(directory / "predictions.sqlite") as connection:
            assert connection.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 2 * 10 * 16


def test_a_value_altered_inside_the_cache_is_recomputed_with_one_warning(tmp_path, caplog):
    from nlpflow.engine.cache import PredictionCache

    cache = PredictionCache(tmp_path)
    cache.put_many({"a": {"value": "LABEL_0"}, "b": {"value": "LABEL_0"}, "c": {"value": "LABEL_1"}})
    cache.close()
    with sqlite3.connect(tmp_path / "predictions.sqlite") as connection:
        # a flipped byte inside the stored text: SQLite's own check cannot see it
        connection.execute("UPDATE predictions SET value = replace(value, 'LABEL_0', 'LABEL_9')")
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = PredictionCache(tmp_path)
    with caplog.at_level("WARNING", logger="nlpflow.engine.cache"):
        assert cache.get_many(["a", "b", "c"]) == {"c": {"value": "LABEL_1"}}
        assert cache.get_many(["a"]) == {}
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert str(tmp_path / "predictions.sqlite") in warnings[0] and "checksum" in warnings[0]
    cache.put_many({"a": {"value": "LABEL_0"}})  # recomputed and stored again
    assert cache.get_many(["a"]) == {"a": {"value": "LABEL_0"}}
    cache.close()


def test_rows_from_before_checksums_are_misses(tmp_path):
    from nlpflow.engine.cache import PredictionCache

    with sqlite3.connect(tmp_path / "predictions.sqlite") as connection:
        connection.execute("CREATE TABLE predictions (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        connection.execute("""INSERT INTO predictions VALUES ('old', '{"value": "x"}')""")
    cache = PredictionCache(tmp_path)
    assert cache.get_many(["old"]) == {}
    cache.put_many({"old": {"value": "x"}})
    assert cache.get_many(["old"]) == {"old": {"value": "x"}}
    cache.close()


def test_unusable_cache_folder_is_an_error_unless_the_cache_is_optional(workload, baseline, tmp_path, capsys):
    # a file where the cache folder should be: like a read-only folder, it cannot hold the database (and this
    # holds for root too, who can write to read-only folders)
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    arguments = ["run", "reviews", "--config", str(workload), "--output", str(tmp_path / "out"), "--cache-dir", str(cache)]
    assert main(arguments) == 6
    assert "--cache-optional" in capsys.readouterr().err
    assert main([*arguments, "--cache-optional"]) == 0
    err = capsys.readouterr().err
    assert err.count("going on without the cache (--cache-optional)") == 1
    assert f"cannot open the prediction cache {cache / 'predictions.sqlite'}" in err
    assert (tmp_path / "out" / "reviews" / "predictions.jsonl").read_bytes() == (baseline / "predictions.jsonl").read_bytes()


def test_a_fully_cached_run_counts_every_planned_batch_as_skipped(small_batches, tmp_path):
    """A rerun whose every prediction is in the cache computes no batch, and says so: each batch the first run
    computed is counted as skipped, not lost (it once reported 0 batches and 0 skipped)."""
    cache = tmp_path / "cache"
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(tmp_path / "first"), "--cache-dir", str(cache)]) == 0
    first = json.loads((tmp_path / "first" / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert first["model"]["batches"] > 0 and first["model"]["batches_skipped_as_cached"] == 0
    assert main(["run", "reviews", "--config", str(small_batches), "--output", str(tmp_path / "again"), "--cache-dir", str(cache)]) == 0
    again = json.loads((tmp_path / "again" / "reviews" / "report.json").read_text(encoding="utf-8"))
    assert again["counts"]["from_cache"] == RECORDS
    assert again["model"]["batches"] == 0
    assert again["model"]["batches_skipped_as_cached"] == first["model"]["batches"]
