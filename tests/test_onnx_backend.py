"""The onnxruntime backend: same labels and spans as the torch backend, the exported graph cached and reused,
clear refusals (generation, missing extra)."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import yaml

pytest.importorskip("onnxruntime")

from nlpflow.api import run  # noqa: E402
from nlpflow.contract.types import ModelConfig  # noqa: E402
from nlpflow.contract.errors import ModelError  # noqa: E402
from nlpflow.engine.model_stage import ModelStage  # noqa: E402
from nlpflow.plugins import onnx_backend  # noqa: E402
from nlpflow.plugins.classification import TextClassification  # noqa: E402
from nlpflow.plugins.onnx_backend import INSTALL_HINT, OnnxRuntimeBackend, cached_graph_path  # noqa: E402
from nlpflow.plugins.question_answering import QuestionAnswering  # noqa: E402
from nlpflow.plugins.torch_backend import TorchBackend  # noqa: E402
from nlpflow.plugins.translation import Translation  # noqa: E402
from nlpflow.contract.types import Example  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.test_question_answering import LONG_CONTEXT, _examples, _rows  # noqa: E402

TEXTS = [
    "The battery died after two days and support never answered.",
    "Great value, I would buy it again.",
    "ok",
    "The plot drags in the middle, but the last act is wonderful and the cast is superb throughout the film. " * 3,
    "Not what I expected at all.",
    "Fast delivery; the colour is a little darker than on the photos.",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One cache dir for the module, so each model is exported once; set as NLPFLOW_CACHE_DIR around each test."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def _use_onnx_cache(onnx_cache, monkeypatch):
    monkeypatch.setenv("NLPFLOW_CACHE_DIR", str(onnx_cache))


def _classify(path, backend, batch_size=4):
    task = TextClassification(TextClassification.Options(mode="sequence-classification"))
    config = ModelConfig(name_or_path=str(path), device="cpu", batch_size=batch_size)
    task_model = task.load(config, backend)
    examples = [Example(index=i, line=i + 1, fields={"text": text}) for i, text in enumerate(TEXTS)]
    return task_model, ModelStage(task_model, config).run(examples)


def test_classifier_labels_and_scores_equal_torch_through_the_model_stage(bert_classifier):
    onnx_model, onnx_predictions = _classify(bert_classifier, OnnxRuntimeBackend())
    _, torch_predictions = _classify(bert_classifier, TorchBackend())
    assert onnx_model.loaded.device == "cpu" and onnx_model.loaded.dtype == "float32"
    assert [p.value for p in onnx_predictions] == [p.value for p in torch_predictions]
    assert [round(p.details["score"], 5) for p in onnx_predictions] == [round(p.details["score"], 5) for p in torch_predictions]


def test_exported_graph_is_cached_by_fingerprint_and_reused(bert_classifier, onnx_cache, monkeypatch):
    loaded = OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    graph = cached_graph_path(loaded.fingerprint, "sequence-classification")
    assert graph.is_file() and graph.parent == onnx_cache / "onnx"
    assert not list(graph.parent.glob("*.tmp"))  # the atomic write left no temp file
    written = graph.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cached graph exists")

    monkeypatch.setattr(onnx_backend, "export_graph", no_export)
    again = OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    assert again.fingerprint == loaded.fingerprint and graph.stat().st_mtime_ns == written


def test_a_model_onnx_in_the_checkpoint_is_used_when_it_has_the_heads_outputs(bert_classifier, tmp_path, monkeypatch):
    import shutil

    checkpoint = tmp_path / "with-onnx"
    shutil.copytree(bert_classifier, checkpoint)
    source = OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    shutil.copy(cached_graph_path(source.fingerprint, "sequence-classification"), checkpoint / "model.onnx")
    monkeypatch.setattr(onnx_backend, "export_graph", lambda *a, **k: pytest.fail("exported although model.onnx has logits"))
    shipped_model, shipped = _classify(checkpoint, OnnxRuntimeBackend())
    _, torch_predictions = _classify(bert_classifier, TorchBackend())
    assert [p.value for p in shipped] == [p.value for p in torch_predictions]
    # the shipped graph is part of the fingerprint (and so of the prediction cache key)
    assert shipped_model.loaded.fingerprint != source.fingerprint
    # the same file has no sentence_embedding output, so for the embedding head it is passed over and the head exported
    exported = []

    class ExportChosen(Exception):
        pass

    def record_export(model, checkpoint_config, tokenizer, head, target):
        exported.append((head, target))
        raise ExportChosen

    monkeypatch.setattr(onnx_backend, "export_graph", record_export)
    with pytest.raises(ExportChosen):
        OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(checkpoint), device="cpu"), "embedding")
    assert exported and exported[0][0].name == "embedding" and exported[0][1].name.endswith("-embedding.onnx")


def _qa(path, backend):
    task = QuestionAnswering(QuestionAnswering.Options(method="span"))
    config = ModelConfig(name_or_path=str(path), device="cpu", batch_size=4)
    task_model = task.load(config, backend)
    rows = [{"context": LONG_CONTEXT, "question": r["question"]} for r in _rows()[:3]] + _rows()[20:24]
    examples = _examples(rows)
    windows = len(task_model.encode(examples))
    return windows, len(rows), ModelStage(task_model, config).run(examples)


def test_qa_spans_equal_torch_including_multi_window_contexts(bert_qa):
    windows, examples, onnx_predictions = _qa(bert_qa, OnnxRuntimeBackend())
    _, _, torch_predictions = _qa(bert_qa, TorchBackend())
    assert windows > examples  # the long contexts were split into several windows
    spans = lambda predictions: [(p.value, p.details["start"], p.details["end"]) for p in predictions]  # noqa: E731
    assert spans(onnx_predictions) == spans(torch_predictions)


def _reviews_pipeline(write_pipelines, backend: str):
    pipelines = yaml.safe_load((REPO / "pipelines.yaml").read_text(encoding="utf-8"))["pipelines"]
    pipeline = pipelines["reviews-sentiment"]
    pipeline["data"]["path"] = str(REPO / pipeline["data"]["path"])
    pipeline["model"]["backend"] = backend
    pipeline["report"] = {"formats": ["json"]}
    return write_pipelines(yaml.safe_dump({"pipelines": {"reviews-sentiment": pipeline}}), name=f"pipelines-{backend}.yaml")


@pytest.mark.slow
def test_default_reviews_pipeline_gives_identical_labels_on_onnxruntime_and_torch(write_pipelines, tmp_path):
    labels = {}
    for backend in ("torch", "onnxruntime"):
        [result] = run(["reviews-sentiment"], _reviews_pipeline(write_pipelines, backend), tmp_path / f"out-{backend}",
                       use_cache=False, interactive=False)
        lines = [json.loads(line) for line in result.predictions_path.read_text(encoding="utf-8").splitlines()]
        labels[backend] = [line["prediction"] for line in lines]
    assert len(labels["torch"]) == 68
    assert labels["onnxruntime"] == labels["torch"]


def test_embedding_head_equals_torch_on_minilm(minilm_path):
    config = ModelConfig(name_or_path=str(minilm_path), device="cpu")
    onnx_loaded = OnnxRuntimeBackend().load(config, "embedding")
    torch_loaded = TorchBackend().load(config, "embedding")
    encoded = onnx_loaded.tokenizer(TEXTS, padding=True, return_tensors="np")
    batch = {name: encoded[name].astype(np.int64) for name in onnx_loaded.tokenizer.model_input_names}
    ours, theirs = onnx_loaded.run(batch)["embedding"], torch_loaded.run(batch)["embedding"]
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_generation_is_refused_with_a_clear_message(t5_model):
    with pytest.raises(ModelError, match=r"backend 'onnxruntime' cannot compute a 'generation' head.*model.backend: torch"):
        Translation().load(ModelConfig(name_or_path=str(t5_model), device="cpu"), OnnxRuntimeBackend())


def test_missing_onnxruntime_gives_the_one_line_install_hint(bert_classifier, monkeypatch):
    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(ModelError) as raised:
        OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier)), "sequence-classification")
    assert str(raised.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
    assert "pip install 'nlpflow[onnx]'" in INSTALL_HINT


def test_float16_and_unknown_devices_are_refused(bert_classifier):
    with pytest.raises(ModelError, match="runs models in float32"):
        OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), dtype="float16"), "sequence-classification")
    with pytest.raises(ModelError, match="runs on cpu or cuda, not 'mps'"):
        OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="mps"), "sequence-classification")


def test_cuda_without_the_cuda_provider_says_what_to_install(bert_classifier):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ModelError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cuda"), "sequence-classification")


def test_backend_is_registered_through_its_entry_point(registry):
    assert registry.get("backend", "onnxruntime") is OnnxRuntimeBackend
    assert registry.provider("backend", "onnxruntime") == "onnx_backend"


def test_allocation_failures_count_as_out_of_memory_and_other_onnxruntime_errors_do_not(bert_classifier):
    backend = OnnxRuntimeBackend()
    loaded = backend.load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    with pytest.raises(Exception) as raised:  # a real onnxruntime error: an input of the wrong rank
        loaded.handle.run(None, {"input_ids": np.zeros((2,), dtype=np.int64), "attention_mask": np.zeros((2,), dtype=np.int64),
                                 "token_type_ids": np.zeros((2,), dtype=np.int64)})
    assert not backend.is_out_of_memory(raised.value)
    # the message onnxruntime's arena allocator throws (its own BFCArena tests match this text)
    arena = RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : onnxruntime::BFCArena::AllocateRawInternal "
                         "Failed to allocate memory for requested buffer of size 4294967296")
    assert backend.is_out_of_memory(arena)


def test_export_does_not_warn_about_negative_indices(bert_classifier, tmp_path, monkeypatch):
    """torch's exporter warns that advanced indexing with negative indices exports wrongly; the only such indexing in
    these encoders is transformers' padding mask, indexed by aranges (never negative), so the warning is silenced."""
    import warnings

    monkeypatch.setenv("NLPFLOW_CACHE_DIR", str(tmp_path / "fresh"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = OnnxRuntimeBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    assert cached_graph_path(loaded.fingerprint, "sequence-classification").is_file()  # exported here, not reused
    assert not [w for w in caught if "negative" in str(w.message)], [str(w.message) for w in caught]
