"""Safe by default: no remote code, safetensors only, a safe YAML loader, run folders inside the output directory."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from nlpflow.contract.types import ModelConfig
from nlpflow.config.loader import parse_config
from nlpflow.contract.errors import ConfigError, ModelError, NlpflowError
from nlpflow.engine.runner import safe_run_directory


def test_trust_remote_code_is_off_unless_set(monkeypatch, bert_classifier):
    import transformers

    from nlpflow.plugins.torch_backend import TorchBackend

    seen: list[tuple[str, dict]] = []
    for cls_name in ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        cls = getattr(transformers, cls_name)
        original = cls.from_pretrained.__func__

        def spy(cls, *args, _original=original, _name=cls_name, **kwargs):
            seen.append((_name, dict(kwargs)))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    TorchBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu"), "sequence-classification")
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"}
    for name, kwargs in seen:
        assert kwargs.get("trust_remote_code") is False, name
    weights = [kwargs for name, kwargs in seen if name == "AutoModelForSequenceClassification"][0]
    assert weights["use_safetensors"] is True

    seen.clear()
    TorchBackend().load(ModelConfig(name_or_path=str(bert_classifier), device="cpu", trust_remote_code=True), "sequence-classification")
    assert all(kwargs.get("trust_remote_code") is True for _, kwargs in seen)


def test_checkpoint_with_custom_code_is_refused(tmp_path, bert_classifier):
    from nlpflow.plugins.torch_backend import TorchBackend

    checkpoint = tmp_path / "remote"
    shutil.copytree(bert_classifier, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "evilbert"
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "executed"
    (checkpoint / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ModelError) as caught:
        TorchBackend().load(ModelConfig(name_or_path=str(checkpoint), device="cpu"), "sequence-classification")
    assert "custom code" in str(caught.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def pickle_checkpoint(tmp_path_factory, bert_classifier):
    """The tiny classifier saved as pytorch_model.bin only (transformers 5 always writes safetensors, so torch.save)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("pickle")
    model = AutoModelForSequenceClassification.from_pretrained(bert_classifier)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    model.config.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(bert_classifier) / name, path / name)
    return path, model


def test_pickle_weights_refused_by_default(pickle_checkpoint):
    from nlpflow.plugins.torch_backend import TorchBackend

    path, _ = pickle_checkpoint
    assert not list(path.glob("*.safetensors"))
    with pytest.raises(ModelError) as caught:
        TorchBackend().load(ModelConfig(name_or_path=str(path), device="cpu"), "sequence-classification")
    message = str(caught.value)
    assert "no safetensors weights" in message and "allow_pickle: true" in message


def test_pickle_weights_load_with_allow_pickle_and_a_warning(pickle_checkpoint):
    import torch
    from nlpflow.plugins.torch_backend import TorchBackend

    path, original = pickle_checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = TorchBackend().load(ModelConfig(name_or_path=str(path), device="cpu", allow_pickle=True), "sequence-classification")
    assert any("allow_pickle" in str(w.message) for w in caught)
    assert torch.equal(loaded.handle.classifier.weight, original.classifier.weight)


def test_pickle_refusal_through_the_cli(pickle_checkpoint, tmp_path, capsys):
    from nlpflow.cli import main

    path, _ = pickle_checkpoint
    (tmp_path / "d.jsonl").write_text('{"text": "good", "label": "positive"}\n')
    config = tmp_path / "p.yaml"
    config.write_text(f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: d.jsonl}}\n    model: {{name_or_path: {json.dumps(str(path))}}}\n")
    assert main(["run", "--config", str(config), "--output", str(tmp_path / "out"), "--no-cache"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {config}:5:5: pipeline 't': model {str(path)!r} has no safetensors weights" in err


@pytest.mark.parametrize(
    "tag",
    ["!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system ''", "!!python/object/new:os.system ['touch {marker}']"],
)
def test_yaml_python_tags_are_config_errors_never_executed(tag, tmp_path):
    marker = tmp_path / "executed"
    text = f"pipelines:\n  t:\n    task: sentiment\n    data: {{path: {tag.format(marker=marker)}}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "p.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'p.yaml'}:4:")
    assert "safe loader" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "/etc", "a\\b", "", "x" * 101, ".hidden", "a b", "~user"])
def test_pipeline_names_that_could_escape_are_rejected_with_location(name, tmp_path):
    text = f"pipelines:\n  {json.dumps(name)}:\n    task: sentiment\n    data: {{path: d.jsonl}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "p.yaml")
    assert str(caught.value).startswith(f"{tmp_path / 'p.yaml'}:2:3: pipeline name")


def test_run_directory_stays_inside_the_output_directory(tmp_path):
    assert safe_run_directory(tmp_path, "ok-name") == (tmp_path / "ok-name").resolve()
    for bad in ("../x", "a/../../x", "/tmp/x", ".."):
        with pytest.raises(NlpflowError):
            safe_run_directory(tmp_path, bad)
