"""A run folder holds the files of exactly one finished run: one run writes it at a time, and nothing stale stays."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlpflow.engine import run_folder
from nlpflow.cli import main

REPO = Path(__file__).resolve().parent.parent


def _pipeline(tmp_path: Path, formats: str, description: str = "") -> Path:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text(
            "".join(json.dumps({"text": f"t{i}", "label": "pos" if i % 2 else "neg", "prediction": "pos"}) + "\n" for i in range(20)),
            encoding="utf-8",
        )
    config = tmp_path / f"pipelines-{formats.replace(',', '-').replace(' ', '')}.yaml"
    config.write_text(
        f"pipelines:\n  p:\n    task: sentiment\n    description: {json.dumps(description)}\n    data: {{path: data.jsonl}}\n"
        f"    report: {{formats: [{formats}], bootstrap: {{resamples: 20}}}}\n",
        encoding="utf-8",
    )
    return config


def _run(config: Path, out: Path) -> int:
    return main(["run", "p", "--config", str(config), "--output", str(out), "--no-cache"])


def test_a_format_no_longer_configured_is_removed_and_user_files_are_kept(tmp_path):
    out = tmp_path / "out"
    assert _run(_pipeline(tmp_path, "json, markdown"), out) == 0
    folder = out / "p"
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    (folder / ".report.md.abc123.tmp").write_text("left by a killed run", encoding="utf-8")
    assert _run(_pipeline(tmp_path, "json"), out) == 0
    assert sorted(path.name for path in folder.iterdir()) == [".nlpflow-files.json", "notes.txt", "predictions.jsonl", "report.json"]
    assert json.loads((folder / ".nlpflow-files.json").read_text(encoding="utf-8"))["files"] == ["predictions.jsonl", "report.json"]


def test_a_second_run_into_the_same_folder_waits_for_the_first(tmp_path):
    """Deterministic interleaving: this test holds the folder's lock as a first run would, then lets go."""
    out = tmp_path / "out"
    config = _pipeline(tmp_path, "json, markdown", description="second")
    (out / "p").mkdir(parents=True)
    with open(run_folder.lock_path(out / "p"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        log = tmp_path / "second.log"
        with open(log, "w") as stderr_file:
            second = subprocess.Popen(
                [sys.executable, "-m", "nlpflow.cli", "run", "p", "--config", str(config), "--output", str(out), "--no-cache"],
                env=env, stdout=subprocess.DEVNULL, stderr=stderr_file, text=True,
            )
        deadline = time.monotonic() + 60
        while "waiting for another run (pid 4242)" not in log.read_text() and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # it would write its predictions and reports in this time if it did not wait
        assert second.poll() is None, log.read_text()
        assert list((out / "p").iterdir()) == []
    second.wait(timeout=120)
    assert second.returncode == 0, log.read_text()
    assert json.loads((out / "p" / "report.json").read_text(encoding="utf-8"))["description"] == "second"


def test_a_folder_locked_too_long_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_folder, "LOCK_WAIT_SECONDS", 0.3)
    out = tmp_path / "out"
    (out / "p").mkdir(parents=True)
    with open(run_folder.lock_path(out / "p"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        assert _run(_pipeline(tmp_path, "json"), out) == 7
    err = capsys.readouterr().err
    assert f"is still being written by another run" in err and str(out / "p") in err
    assert list((out / "p").iterdir()) == []


def _many_records_pipeline(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": "pos", "prediction": "pos"}) + "\n" for i in range(100)), encoding="utf-8")
    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "pipelines:\n  p:\n    task: sentiment\n    data: {path: data.jsonl}\n    chunk_size: 10\n"
        "    report: {formats: [json], bootstrap: {resamples: 20}}\n",
        encoding="utf-8",
    )
    return config, data


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_data_file_replaced_or_deleted_during_the_run_is_a_clear_error(tmp_path, monkeypatch, capsys, change):
    """Chosen behaviour: refuse (exit 3, no report) rather than report a hash of a file that was not the one read."""
    from nlpflow.engine.preprocessing import Preprocessing

    config, data = _many_records_pipeline(tmp_path)
    out = tmp_path / "out"
    assert main(["run", "p", "--config", str(config), "--output", str(out), "--no-cache"]) == 0
    earlier = (out / "p" / "report.json").read_bytes()
    original = Preprocessing.preprocess

    def change_after_the_first_chunk(self, chunk):
        if chunk[0].index == 0:
            if change == "replaced":
                replacement = tmp_path / "new.jsonl"
                replacement.write_text(json.dumps({"text": "other", "label": "neg", "prediction": "pos"}) + "\n", encoding="utf-8")
                os.replace(replacement, data)  # what `mv new.jsonl data.jsonl` does
            else:
                data.unlink()
        return original(self, chunk)

    monkeypatch.setattr(Preprocessing, "preprocess", change_after_the_first_chunk)
    assert main(["run", "p", "--config", str(config), "--output", str(out), "--no-cache"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = "changed while it was being read" if change == "replaced" else "was deleted while it was being read"
    assert f"error: {data}: pipeline 'p': the data file {expected}" in err
    assert (out / "p" / "report.json").read_bytes() == earlier  # the previous run is intact


FILE_SIZE_LIMITED_CLI = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from nlpflow.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_while_writing_predictions_names_the_file_and_keeps_the_previous_run(tmp_path):
    config, _ = _many_records_pipeline(tmp_path)
    out = tmp_path / "out"
    assert main(["run", "p", "--config", str(config), "--output", str(out), "--no-cache"]) == 0
    earlier = {path.name: path.read_bytes() for path in (out / "p").iterdir()}
    assert len(earlier["predictions.jsonl"]) > 2000
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED_CLI, "2000", "run", "p", "--config", str(config), "--output", str(out), "--no-cache"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 7, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: pipeline 'p': cannot write the run's files in {out / 'p'}" in done.stderr
    assert "File too large" in done.stderr
    assert {path.name: path.read_bytes() for path in (out / "p").iterdir()} == earlier


def test_a_full_disk_while_writing_a_report_names_it_and_keeps_the_previous_run(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    config = _pipeline(tmp_path, "json, markdown")
    out = tmp_path / "out"
    assert _run(config, out) == 0
    earlier = {path.name: path.read_bytes() for path in (out / "p").iterdir()}
    real = tempfile.NamedTemporaryFile

    def disk_full_for_report_md(*args, **kwargs):
        handle = real(*args, **kwargs)
        if kwargs.get("prefix", "").startswith(".report.md."):
            def write(_data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", disk_full_for_report_md)
    assert _run(config, out) == 7
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: cannot write {out / 'p' / 'report.md'} (" in err and "bytes): No space left on device; free some space" in err
    assert {path.name: path.read_bytes() for path in (out / "p").iterdir()} == earlier


#: runs the CLI and, at the run folder's switch, announces it (a marker file) and waits to be killed there
PAUSED_AT_SWITCH_CLI = """
import sys, time
from pathlib import Path
import nlpflow.engine.run_folder as run_folder
marker, when = Path(sys.argv[1]), sys.argv[2]
original = run_folder._exchange
def paused(first, second):
    if when == "before":
        marker.write_text("staged")
        time.sleep(120)
    exchanged = original(first, second)
    if when == "after":
        marker.write_text("exchanged")
        time.sleep(120)
    return exchanged
run_folder._exchange = paused
from nlpflow.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _records(path: Path, count: int) -> None:
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": "pos" if i % 3 else "neg", "prediction": "pos"}) + "\n" for i in range(count)),
        encoding="utf-8",
    )


def _consistent_set(folder: Path) -> tuple[str, int]:
    """The description and record count the folder's files agree on (each report describes predictions.jsonl)."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    predictions = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert report["counts"]["predicted"] == len(predictions)
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert report["description"] in markdown
    assert json.loads((folder / ".nlpflow-files.json").read_text(encoding="utf-8"))["files"] == ["predictions.jsonl", "report.json", "report.md"]
    return report["description"], len(predictions)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_run_killed_at_the_switch_leaves_one_whole_set(tmp_path, when):
    """SIGKILL just before and just after the atomic exchange: the folder holds the previous run's set whole or the
    new one whole, the user's files stay, and the next run finishes and clears the staging folder."""
    out = tmp_path / "out"
    folder = out / "p"
    first = _pipeline(tmp_path, "json, markdown", description="first")
    _records(tmp_path / "data.jsonl", 20)
    assert _run(first, out) == 0
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    (folder / "plots").mkdir()
    (folder / "plots" / "a.txt").write_text("also mine", encoding="utf-8")
    assert _consistent_set(folder) == ("first", 20)

    second_root = tmp_path / "second"
    second_root.mkdir()
    _records(second_root / "data.jsonl", 35)
    second = _pipeline(second_root, "json, markdown", description="second")
    marker = tmp_path / "marker"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_AT_SWITCH_CLI, str(marker), when, "run", "p", "--config", str(second), "--output", str(out), "--no-cache"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended or stalled before its switch: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(30)

    assert _consistent_set(folder) == (("first", 20) if when == "before" else ("second", 35))
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert run_folder.staging_path(folder).is_dir()  # what the killed run was switching

    assert _run(second, out) == 0
    assert _consistent_set(folder) == ("second", 35)
    assert not run_folder.staging_path(folder).exists()
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (folder / "plots" / "a.txt").read_text(encoding="utf-8") == "also mine"
    assert sorted(path.name for path in out.iterdir()) == [".p.lock", "p"]


def test_where_folders_cannot_be_exchanged_files_are_replaced_and_the_old_removed_last(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "_exchange", lambda first, second: False)
    out = tmp_path / "out"
    folder = out / "p"
    assert _run(_pipeline(tmp_path, "json, markdown", description="first"), out) == 0
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    assert _run(_pipeline(tmp_path, "json", description="second"), out) == 0
    assert sorted(path.name for path in folder.iterdir()) == [".nlpflow-files.json", "notes.txt", "predictions.jsonl", "report.json"]
    assert json.loads((folder / "report.json").read_text(encoding="utf-8"))["description"] == "second"
    assert sorted(path.name for path in out.iterdir()) == [".p.lock", "p"]


def test_the_switch_exchanges_the_folder_itself(tmp_path):
    """On Linux the new set arrives by one rename of the folder: the old folder's inode is gone, not rewritten."""
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    out = tmp_path / "out"
    config = _pipeline(tmp_path, "json")
    assert _run(config, out) == 0
    before = os.stat(out / "p").st_ino
    assert _run(config, out) == 0
    assert os.stat(out / "p").st_ino != before
