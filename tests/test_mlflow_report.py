"""The mlflow reporter, against a real MLflow store: a SQLite database in tmp_path, read back with MLflow's own API.

Runs use the prediction-only path (records carry `prediction`, no model), so each takes a fraction of a second;
MLflow creating its tables is most of the time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name

from nlpflow import Publisher, hookimpl
from nlpflow.api import run
from nlpflow.cli import main
from nlpflow.contract.errors import ConfigError, OutputError, PluginError
from nlpflow.plugins.mlflow_report import MAX_KEY_LENGTH, MAX_PARAM_LENGTH, run_metrics, run_params
from nlpflow.registry import load_registry

PIPELINE = """
pipelines:
  reviews:
    task: sentiment
    data: {{path: reviews.jsonl}}
    fields: {{text: review, label: stars}}
    metrics: [accuracy, macro_f1]
    report: {{formats: [json, markdown, html, {mlflow}], slice_by: [domain], bootstrap: {{resamples: 100}}}}
"""


def write_reviews(folder: Path) -> None:
    records = []
    for i in range(30):
        label = "positive" if i % 2 else "negative"
        prediction = ("negative" if label == "positive" else "positive") if i % 4 == 0 else label
        records.append({"id": f"r{i}", "review": f"review {i}", "stars": label, "prediction": prediction,
                        "domain": ["movies", "food/drink"][i % 2]})
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def store(tmp_path, monkeypatch, cache_dir):
    """A fresh SQLite store; the working folder is tmp_path, where MLflow puts a SQLite store's artifacts (./mlruns)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_reviews(tmp_path)
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_a_run_is_logged_with_params_metrics_slices_and_files(tmp_path, store, write_pipelines):
    config = write_pipelines(PIPELINE.format(mlflow=f"{{mlflow: {{tracking_uri: '{store}', tags: {{team: nlp}}}}}}"))
    [result] = run(["reviews"], config=config, output=tmp_path / "out")
    report = result.report

    mlflow.set_tracking_uri(store)
    try:
        frame = mlflow.search_runs(experiment_names=["nlpflow"])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["params.task"] == "sentiment"
    assert row["params.data.sha256"] == report["data"]["sha256"]
    assert row["params.data.path"] == report["data"]["path"]
    assert row["params.pipeline"] == "reviews"
    assert row["tags.team"] == "nlp" and row["tags.nlpflow.pipeline"] == "reviews"
    assert "tags.mlflow.user" in frame.columns  # MLflow's own context tags, as its start_run sets them
    assert row["tags.mlflow.runName"].startswith("reviews ")
    assert row["start_time"].isoformat(timespec="seconds") == report["timing"]["started"]  # the run's, not the upload's
    accuracy = report["metrics"]["accuracy"]
    assert row["metrics.accuracy"] == pytest.approx(accuracy["value"])
    assert row["metrics.accuracy_ci_low"] == pytest.approx(accuracy["ci"]["low"])
    assert row["metrics.accuracy_ci_high"] == pytest.approx(accuracy["ci"]["high"])
    assert row["metrics.macro_f1"] == pytest.approx(report["metrics"]["macro_f1"]["value"])
    [table] = [table for table in report["analysis"]["slices"] if table["column"] == "domain"]
    slices = {item["value"]: item["metrics"]["accuracy"] for item in table["slices"]}
    assert row["metrics.slice.domain.movies.accuracy"] == pytest.approx(slices["movies"]["value"])
    # "/" is allowed in an MLflow name: the value keeps it
    assert row["metrics.slice.domain.food/drink.accuracy"] == pytest.approx(slices["food/drink"]["value"])
    assert row["metrics.slice.domain.movies.accuracy_ci_low"] == pytest.approx(slices["movies"]["ci"]["low"])
    # every metric of every slice table (input length too) is there, under the name run_metrics gives it
    logged = {name[len("metrics."):] for name in frame.columns if name.startswith("metrics.") and row[name] == row[name]}
    assert logged == set(run_metrics(report)) and any(name.startswith("slice.length.") for name in logged)

    artifacts = MlflowClient(store).list_artifacts(row["run_id"])
    assert {item.path for item in artifacts} == {"predictions.jsonl", "report.json", "report.md", "report.html"}
    # the files logged are the run's final ones
    local = Path(MlflowClient(store).download_artifacts(row["run_id"], "report.json", str(tmp_path / "back")))
    assert local.read_bytes() == (result.directory / "report.json").read_bytes()
    assert not (result.directory / "mlflow").exists()


def test_tracking_uri_from_mlflows_environment_variable_and_two_runs_make_two(tmp_path, store, write_pipelines, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    config = write_pipelines(PIPELINE.format(mlflow="{mlflow: {experiment: reviews-eval, run_name: nightly}}"))
    run(["reviews"], config=config, output=tmp_path / "out")
    run(["reviews"], config=config, output=tmp_path / "out")

    frame = mlflow.search_runs(experiment_names=["reviews-eval"])
    assert len(frame) == 2
    assert set(frame["tags.mlflow.runName"]) == {"nightly"}
    assert len(set(frame["run_id"])) == 2
    assert not (tmp_path / "mlflow.db").exists()  # the variable's store, not MLflow's default


def test_a_bad_tracking_uri_names_the_reporter_and_uri_and_leaves_the_files(tmp_path, store, write_pipelines):
    bad = f"sqlit:///{tmp_path / 'mlruns.db'}"  # a typo in the scheme
    config = write_pipelines(PIPELINE.format(mlflow=f"{{mlflow: {{tracking_uri: '{bad}'}}}}"))
    with pytest.raises(OutputError) as caught:
        run(["reviews"], config=config, output=tmp_path / "out")
    message = str(caught.value)
    assert "pipeline 'reviews': reporter 'mlflow'" in message and bad in message
    assert "The run's files are in place" in message
    folder = tmp_path / "out" / "reviews"
    assert {"predictions.jsonl", "report.json", "report.md", "report.html"} <= {p.name for p in folder.iterdir()}
    json.loads((folder / "report.json").read_text(encoding="utf-8"))

    # the CLI says it in one line, with the output folder's exit code, no traceback
    assert main(["run", "reviews", "--config", str(config), "--output", str(tmp_path / "out")]) == OutputError.exit_code


def test_an_unreachable_tracking_server_is_a_located_error(tmp_path, store, write_pipelines, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens there
    config = write_pipelines(PIPELINE.format(mlflow=f"{{mlflow: {{tracking_uri: '{uri}'}}}}"))
    with pytest.raises(OutputError, match=r"reporter 'mlflow': cannot log the run to MLflow at http://127\.0\.0\.1:9"):
        run(["reviews"], config=config, output=tmp_path / "out")
    assert (tmp_path / "out" / "reviews" / "report.html").is_file()


def test_without_mlflow_installed_the_pipeline_says_which_extra(tmp_path, store, write_pipelines, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what importlib sees when MLflow is not installed
    config = write_pipelines(PIPELINE.format(mlflow="mlflow"))
    with pytest.raises(ConfigError) as caught:
        run(["reviews"], config=config, output=tmp_path / "out")
    message = str(caught.value)
    assert "pip install 'nlpflow[mlflow]'" in message
    assert "pipelines.yaml:8:" in message and "pipeline 'reviews'" in message  # the formats line of the YAML
    assert not (tmp_path / "out" / "reviews").exists()


def _report(metrics: dict, slices: list | None = None, task_options: dict | None = None) -> dict:
    return {
        "pipeline": "p", "task": "sentiment", "task_options": task_options or {}, "metrics": metrics,
        "analysis": {"slices": slices or []}, "data": {"path": "d.jsonl", "format": "jsonl", "sha256": "ab"},
        "model": None, "rule": None, "preprocess": [], "versions": {"nlpflow": "1"},
    }


def test_names_mlflow_refuses_are_made_valid_and_kept_apart():
    entry = {"value": 0.5, "ci": None}
    slices = [{"column": "lang", "slices": [
        {"value": "a:b", "n": 1, "metrics": {"acc": entry}},
        {"value": "a*b", "n": 1, "metrics": {"acc": entry}},
        {"value": "..", "n": 1, "metrics": {"acc": entry}},
        {"value": "x" * 300, "n": 1, "metrics": {"acc": entry}},
    ]}]
    names = list(run_metrics(_report({"acc": {"value": None, "ci": None}}, slices)))
    assert names[0] == "slice.lang.a_b.acc"
    assert names[1].startswith("slice.lang.a_b.acc_") and names[1] != names[0]
    assert names[2] == "slice.lang....acc"  # dots between slashes are fine: MLflow refuses only "." or ".." as a path part
    assert len(names[3]) <= MAX_KEY_LENGTH
    assert "acc" not in names  # no value: nothing to log
    for name in names:  # MLflow's own check of a metric name
        _validate_metric_name(name)


def test_long_and_nested_options_become_params_that_fit():
    params = run_params(_report({}, task_options={"labels": {"pos": ["good"] * 2000}, "threshold": 0.5, "mode": "auto"}))
    assert params["options.threshold"] == "0.5" and params["options.mode"] == "auto"
    long = params["options.labels.pos"]
    assert len(long) == MAX_PARAM_LENGTH and long.endswith("report.json holds the whole value)")
    assert params["model"] == "none (scored the records' predictions)"


def test_without_uri_or_variable_the_run_goes_to_mlflows_default_store(tmp_path, store, write_pipelines):
    config = write_pipelines(PIPELINE.format(mlflow="mlflow"))
    run(["reviews"], config=config, output=tmp_path / "out")
    default = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow's default: mlflow.db in the working folder
    assert (tmp_path / "mlflow.db").is_file()
    [logged] = MlflowClient(default).search_runs([MlflowClient(default).get_experiment_by_name("nlpflow").experiment_id])
    assert logged.data.params["task"] == "sentiment"


def test_a_publisher_sees_the_final_files_and_its_crash_names_its_plugin(tmp_path, store, write_pipelines):
    """The Publisher contract the mlflow reporter relies on, with a third-party publisher."""
    seen = {}

    class Snapshot(Publisher):
        name = "snapshot"

        def publish(self, result):
            folder = result.directory
            seen.update({path.name: path.read_bytes() for path in folder.iterdir() if not path.name.startswith(".")})
            if crash:
                raise RuntimeError("upload refused")

    class Plugin:
        @hookimpl
        def register_reporters(self, register):
            register(Snapshot)

    registry = load_registry(extra_plugins=[("snapshot_plugin", Plugin())])
    config = write_pipelines(PIPELINE.format(mlflow="snapshot"))
    crash = False
    [result] = run(["reviews"], config=config, output=tmp_path / "out", registry=registry)
    # every file the run wrote, in its final form, and no file of the publisher's own
    assert set(seen) == {"predictions.jsonl", "report.json", "report.md", "report.html"}
    assert seen["report.json"] == (result.directory / "report.json").read_bytes()
    assert seen["predictions.jsonl"] == (result.directory / "predictions.jsonl").read_bytes()

    crash = True
    with pytest.raises(PluginError, match=r"plugin 'snapshot_plugin': reporter 'snapshot' raised in publish\(\): RuntimeError: upload refused"):
        run(["reviews"], config=config, output=tmp_path / "out", registry=registry)
    assert (result.directory / "report.html").is_file()


def test_artifacts_are_names_in_the_run_folder(tmp_path, store, write_pipelines):
    config = write_pipelines(PIPELINE.format(mlflow="{mlflow: {artifacts: [report.json, ../reviews.jsonl]}}"))
    with pytest.raises(ConfigError, match=r"pipelines.yaml:8:.*not paths: '\.\./reviews\.jsonl'"):
        run(["reviews"], config=config, output=tmp_path / "out")
