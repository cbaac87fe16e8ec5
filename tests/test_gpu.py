"""The GPU path: device and dtype selection, padding to a multiple of 8, and out-of-memory back-off
with a real CUDA allocation limit. Skipped on machines without CUDA (CI has none); run on a GPU with
``python -m pytest -m gpu``."""

from __future__ import annotations

import pytest
import torch

from nlpflow.plugins.torch_backend import TorchBackend
from nlpflow.contract.types import ModelConfig
from nlpflow.engine.model_stage import ModelStage
from nlpflow.plugins.torch_backend import resolve_device, resolve_dtype
from nlpflow.contract.types import Example
from nlpflow.plugins.classification import ClassificationOptions, Sentiment

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _examples(count: int, words: int = 60):
    return [Example(index=i, line=i + 1, fields={"text": " ".join(["word"] * (words + i % 17))}) for i in range(count)]


def test_auto_picks_cuda_and_bfloat16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto", device) == expected


def test_classifier_on_gpu_matches_cpu_labels(bert_classifier):
    task = Sentiment(ClassificationOptions(labels=["negative", "positive"]))
    examples = _examples(64)
    gpu_config = ModelConfig(name_or_path=str(bert_classifier), dtype="float32")
    cpu_config = ModelConfig(name_or_path=str(bert_classifier), device="cpu")
    gpu_stage = ModelStage(task.load(gpu_config, TorchBackend()), gpu_config)
    gpu = gpu_stage.run(examples)
    cpu = ModelStage(task.load(cpu_config, TorchBackend()), cpu_config).run(examples)
    assert [p.value for p in gpu] == [p.value for p in cpu]
    assert gpu_stage.computer.pad_multiple == 8
    assert gpu_stage.describe()["device"].startswith("cuda")


def test_out_of_memory_backs_off_under_a_forced_small_budget(minilm_path):
    """Cap this process's CUDA memory, ask for huge batches, and check every example is still predicted."""
    task = Sentiment()
    config = ModelConfig(name_or_path=str(minilm_path), batch_size="auto", max_tokens=4_000_000, dtype="float32")
    task_model = task.load(config, TorchBackend())
    stage = ModelStage(task_model, config)
    stage.computer.max_rows = 4096
    examples = _examples(4096, words=200)
    reference = ModelStage(task_model, config.model_copy(update={"batch_size": 8, "max_tokens": 8 * 256})).run(examples[:64])
    total = torch.cuda.get_device_properties(0).total_memory
    in_use = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (in_use + 2 * 1024**3) / total))
    try:
        predictions = stage.run(examples)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert len(predictions) == len(examples)
    assert stage.stats.oom_retries >= 1
    assert stage.describe()["batch_size_that_worked"] < 4096
    assert [p.value for p in predictions[:64]] == [p.value for p in reference]
