"""Heads are open: a plugin declares a new head, adds a backend row for it and a task using it, without touching the core."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pytest

from nlpflow import (
    Backend,
    Example,
    Features,
    Head,
    LoadedModel,
    ModelError,
    Prediction,
    Task,
    TaskModel,
    hookimpl,
    input_limit,
    tokenize,
)
from nlpflow.plugins.torch_backend import TORCH_HEADS, TorchBackend, TorchHead
from nlpflow.registry import load_registry

TOKEN_CLASSIFICATION = Head(
    "token-classification", {"logits": "token"},
    "a *ForTokenClassification checkpoint: float32 logits per token (rows, tokens, labels)",
)


def _token_logits(loaded: LoadedModel, inputs: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {"logits": loaded.handle(**inputs).logits.float().cpu().numpy()}


class TokenTorchBackend(TorchBackend):
    """The torch backend and one more row: how torch computes the new head."""

    name = "torch-tokens"
    head_table = {
        **TORCH_HEADS,
        "token-classification": TorchHead(
            architecture="ForTokenClassification", auto_class="AutoModelForTokenClassification", compute=_token_logits,
        ),
    }


class TokenTagger(TaskModel):
    def encode(self, examples: Sequence[Example]) -> list[Features]:
        rows, _ = tokenize(self.loaded, [example.fields["text"] for example in examples], input_limit(self.loaded))
        return [Features(example=index, inputs=row) for index, row in enumerate(rows)]

    def decode(self, example: Example, features: Sequence[Features], outputs: Sequence[Mapping[str, Any]]) -> Prediction:
        logits = np.asarray(outputs[0]["logits"])
        id2label = self.loaded.checkpoint.id2label
        return Prediction([id2label[int(best)] for best in logits.argmax(-1)], {"tokens": len(logits)})


class TokenTags(Task):
    name = "token-tags"
    input_fields = ("text",)

    def load(self, model, backend):
        return TokenTagger(backend.load(model, "token-classification"))


class TokenHeadPlugin:
    @hookimpl
    def register_heads(self, register):
        register(TOKEN_CLASSIFICATION)

    @hookimpl
    def register_backends(self, register):
        register(TokenTorchBackend)

    @hookimpl
    def register_tasks(self, register):
        register(TokenTags)


@pytest.fixture(scope="module")
def token_classifier(models_dir):
    from transformers import BertForTokenClassification

    from tests.model_factory import _bert_config, _bert_tokenizer, _seeded

    path = models_dir / "bert-token-classifier"
    if not path.is_dir():
        tokenizer = _bert_tokenizer(model_max_length=512)
        labels = ("O", "B-THING", "I-THING")
        config = _bert_config(tokenizer, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
        with _seeded(0):
            model = BertForTokenClassification(config).eval()
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


TEXTS = ["the soup was cold", "a much longer sentence about the noodles, the broth and the service tonight", "fine"]


def test_a_plugin_head_runs_end_to_end_without_touching_the_core(token_classifier, tmp_path, write_pipelines):
    registry = load_registry(extra_plugins=[("token-head", TokenHeadPlugin())])
    assert registry.failures == []
    assert registry.heads["token-classification"] is TOKEN_CLASSIFICATION
    assert registry.head_plugins["token-classification"] == "token-head"
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS), encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n  tags:\n    task: token-tags\n    data: {path: texts.jsonl}\n"
        f"    model: {{name_or_path: {token_classifier}, backend: torch-tokens, batch_size: 2}}\n"
        "    report: {formats: [json]}\n"
    )
    from nlpflow.api import run

    [result] = run(["tags"], config, tmp_path / "out", registry=registry, use_cache=False)
    assert result.report["model"]["head"] == "token-classification"
    predictions = [json.loads(line) for line in (tmp_path / "out" / "tags" / "predictions.jsonl").read_text().splitlines()]

    # the model stage cut each row's "token" output to its own length, and the labels are the model's own
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(token_classifier))
    model = AutoModelForTokenClassification.from_pretrained(str(token_classifier)).eval()
    for prediction, text in zip(predictions, TEXTS):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            expected = model(**encoded).logits[0].argmax(-1).tolist()
        assert prediction["details"]["tokens"] == encoded["input_ids"].shape[1]
        assert prediction["prediction"] == [model.config.id2label[i] for i in expected]


def test_the_listing_shows_the_new_head_and_the_backend_computing_it(capsys):
    from nlpflow.cli import _tasks

    registry = load_registry(extra_plugins=[("token-head", TokenHeadPlugin())])
    args = type("Args", (), {"options": None, "json": True})()
    assert _tasks(args, registry) == 0
    heads = {head["name"]: head for head in json.loads(capsys.readouterr().out)["head"]}
    assert heads["token-classification"] == {
        "name": "token-classification", "plugin": "token-head", "outputs": {"logits": "token"},
        "backends": ["torch-tokens"], "description": TOKEN_CLASSIFICATION.description,
    }
    assert heads["generation"]["backends"] == ["torch", "torch-tokens"] and heads["generation"]["plugin"] == "nlpflow"


def test_a_head_no_backend_knows_and_a_head_this_backend_lacks_are_clear_errors(token_classifier):
    from nlpflow import ModelConfig

    registry = load_registry(extra_plugins=[("token-head", TokenHeadPlugin())])
    model = ModelConfig(name_or_path=str(token_classifier))
    with pytest.raises(ModelError) as raised:
        TorchBackend(heads=registry.heads).load(model, "token-classificaton")
    assert "there is no head 'token-classificaton'" in str(raised.value)
    assert "token-classification" in str(raised.value) and "sequence-classification" in str(raised.value)
    with pytest.raises(ModelError, match=r"backend 'torch' cannot compute a 'token-classification' head.*`nlpflow tasks`"):
        TorchBackend(heads=registry.heads).load(model, "token-classification")


def test_declaring_a_head_twice_or_a_malformed_head_is_refused_by_plugin_name():
    class Twice:
        @hookimpl
        def register_heads(self, register):
            register(Head("embedding", {"vector": "row"}, "another embedding"))

    registry = load_registry(extra_plugins=[("twice", Twice())])
    assert [(failure.plugin, "head 'embedding' is already declared by nlpflow itself" in str(failure)) for failure in registry.failures] == [
        ("twice", True)
    ]
    assert registry.heads["embedding"].outputs == {"embedding": "row"}
    with pytest.raises(ValueError, match="'row', 'token', 'ids'|row, token, ids"):
        Head("spans", {"spans": "matrix"}, "spans as a matrix")


def test_the_model_stage_checks_outputs_against_the_head_the_loaded_model_carries(tmp_path, write_pipelines):
    """A plugin head's outputs are what the model stage expects of a backend, with no core table consulted."""

    @dataclass
    class Tokenizer:
        pad_token_id: int = 0
        model_max_length: int = 8

    class WrongOutputs(Backend):
        name = "wrong-outputs"
        head_table = {"token-classification": "the row's content is this backend's own business"}

        def load_head(self, model, head, *, require_fast_tokenizer=True):
            return LoadedModel(tokenizer=Tokenizer(), checkpoint=None, config=model, head=head, backend=self, handle=None,
                               name_or_path=model.name_or_path, path=model.name_or_path, fingerprint="wrong")

        def run(self, loaded, prepared, **options):
            return {"scores": np.zeros((len(prepared["input_ids"]), 3), dtype=np.float32)}

    class Ones(TaskModel):
        def encode(self, examples):
            return [Features(example=i, inputs={"input_ids": [1, 2], "attention_mask": [1, 1]}) for i in range(len(examples))]

        def decode(self, example, features, outputs):
            return Prediction(None)

    class OnesTask(Task):
        name = "ones"
        input_fields = ("text",)

        def load(self, model, backend):
            return Ones(backend.load(model, "token-classification"))

    class Plugin:
        @hookimpl
        def register_heads(self, register):
            register(TOKEN_CLASSIFICATION)

        @hookimpl
        def register_backends(self, register):
            register(WrongOutputs)

        @hookimpl
        def register_tasks(self, register):
            register(OnesTask)

    assert WrongOutputs.heads == ("token-classification",)
    registry = load_registry(extra_plugins=[("wrong", Plugin())])
    (tmp_path / "texts.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n  p:\n    task: ones\n    data: {path: texts.jsonl}\n"
        "    model: {name_or_path: nowhere, backend: wrong-outputs}\n    report: {formats: [json]}\n"
    )
    from nlpflow import NlpflowError
    from nlpflow.api import run

    with pytest.raises(NlpflowError) as raised:
        run(["p"], config, tmp_path / "out", registry=registry, use_cache=False)
    assert "backend 'wrong-outputs' returned ['scores'] for head 'token-classification', expected ['logits']" in str(raised.value)
