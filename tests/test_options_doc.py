"""`nlpflow tasks --options NAME` documents every option of a plugin from its pydantic Options model."""

from __future__ import annotations

import json

import pytest

from nlpflow.cli import main
from nlpflow.registry import KINDS, load_registry


def _options_json(name: str, capsys) -> list[dict]:
    assert main(["tasks", "--options", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_options_of_a_task_have_type_default_and_description(capsys):
    [entry] = _options_json("text-classification", capsys)
    assert (entry["kind"], entry["plugin"]) == ("task", "classification")
    options = {option["name"]: option for option in entry["options"]}
    from nlpflow.plugins.classification import ClassificationOptions

    assert list(options) == list(ClassificationOptions.model_fields)
    assert options["threshold"] == {
        "name": "threshold", "type": "float", "default": 0.5, "required": False,
        "description": "multi-label: a label is predicted when its probability reaches this",
    }
    assert options["mode"]["type"] == "Literal['auto', 'sequence-classification', 'zero-shot', 'loglikelihood']"
    assert options["labels"]["type"] == "dict[str, str | list[str]] | list[str] | None"
    assert options["label_map"]["default"] == {}


def test_every_builtin_option_has_a_description(capsys):
    registry = load_registry()
    undocumented = []
    for kind, _ in KINDS.values():
        for name in registry.names(kind):
            for entry in _options_json(name, capsys):
                undocumented += [f"{entry['kind']} {name}: {o['name']}" for o in entry["options"] if not o["description"]]
    # the generation options are transformers' own generate() arguments, documented there and in README
    assert [item for item in undocumented if not item.startswith(("task translation", "task summarization"))] == []


def test_options_table_and_unknown_name(capsys):
    assert main(["tasks", "--options", "truncate"]) == 0
    out = capsys.readouterr().out
    assert "options of preprocessor 'truncate'" in out and "max_tokens" in out and "400" in out
    assert main(["tasks", "--options", "sentimnt"]) == 2
    assert "Did you mean 'sentiment'?" in capsys.readouterr().err
