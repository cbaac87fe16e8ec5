"""The example backend (examples/nlpflow-numpy-backend): installed as a user would, it serves sentiment end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_public_imports import internal_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "examples" / "nlpflow-numpy-backend"
REVIEWS = REPO / "examples" / "data" / "reviews.jsonl"


@pytest.fixture(scope="module")
def numpy_backend_installed():
    """Install examples/nlpflow-numpy-backend into this environment with pip, as a user would; remove it after."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(PACKAGE)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    yield PACKAGE
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "nlpflow-numpy-backend"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def bag_of_tokens_model(numpy_backend_installed, bert_classifier, tmp_path_factory):
    from nlpflow_numpy_backend import train

    reviews = [json.loads(line) for line in REVIEWS.read_text(encoding="utf-8").splitlines()]
    return train([(review["review"], review["stars"]) for review in reviews], bert_classifier, tmp_path_factory.mktemp("bag-of-tokens"))


def _nlpflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "nlpflow.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_example_backend_imports_only_nlpflow():
    offenders = [offender for path in sorted(PACKAGE.rglob("*.py")) for offender in internal_imports(path)]
    assert offenders == []


def test_it_is_listed_with_the_head_it_computes(numpy_backend_installed, tmp_path):
    listing = _nlpflow("tasks", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)
    assert {"name": "numpy", "plugin": "numpy-backend"}.items() <= next(b for b in tasks["backend"] if b["name"] == "numpy").items()
    heads = {head["name"]: head for head in tasks["head"]}
    assert heads["sequence-classification"]["backends"] == ["numpy", "onnxruntime", "torch"]
    assert "numpy" not in heads["embedding"]["backends"]


def test_a_sentiment_pipeline_runs_on_it_end_to_end(bag_of_tokens_model, tmp_path):
    (tmp_path / "pipelines.yaml").write_text(
        "pipelines:\n  reviews-numpy:\n    task: sentiment\n"
        f"    data: {{path: {REVIEWS}}}\n"
        "    fields: {text: review, label: stars}\n"
        f"    model: {{name_or_path: {bag_of_tokens_model}, backend: numpy}}\n"
        "    report: {formats: [json]}\n",
        encoding="utf-8",
    )
    result = _nlpflow("run", "--config", "pipelines.yaml", "--output", "out", "--no-cache", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "reviews-numpy" / "report.json").read_text(encoding="utf-8"))
    assert report["model"]["backend"] == "numpy" and report["model"]["head"] == "sequence-classification"
    assert report["model"]["device"] == "cpu" and report["model"]["dtype"] == "float32"
    # fitted on these very reviews: a bag of tokens separates them
    assert report["metrics"]["accuracy"]["value"] >= 0.9

    # the scores are the bag-of-tokens model's own, computed here without nlpflow
    from transformers import AutoTokenizer

    stored = np.load(bag_of_tokens_model / "bag_of_tokens.npz")
    id2label = json.loads((bag_of_tokens_model / "config.json").read_text())["id2label"]
    tokenizer = AutoTokenizer.from_pretrained(str(bag_of_tokens_model))
    predictions = [json.loads(line) for line in (tmp_path / "out" / "reviews-numpy" / "predictions.jsonl").read_text().splitlines()]
    reviews = [json.loads(line) for line in REVIEWS.read_text(encoding="utf-8").splitlines()]
    for prediction in predictions[:5]:
        ids = tokenizer(reviews[prediction["index"]]["review"], truncation=True)["input_ids"]
        logits = np.bincount(ids, minlength=len(stored["weights"])).astype(np.float32) @ stored["weights"] + stored["bias"]
        assert prediction["prediction"] == id2label[str(int(np.argmax(logits)))]


def test_the_wrong_backend_says_what_is_wrong_with_an_existing_folder(bag_of_tokens_model):
    """The folder is there, holding a model torch cannot read: that is what the error says, not "not available"."""
    from nlpflow import ModelConfig, ModelError
    from nlpflow.plugins.torch_backend import TorchBackend

    with pytest.raises(ModelError) as raised:
        TorchBackend().load(ModelConfig(name_or_path=str(bag_of_tokens_model)), "sequence-classification")
    message = str(raised.value)
    assert "is not available" not in message
    assert str(bag_of_tokens_model) in message and "model.backend" in message
