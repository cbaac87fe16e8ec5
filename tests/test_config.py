"""pipelines.yaml loading: locations, closest names, and the schema's edge cases."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from nlpflow.config.loader import MAX_DEPTH, MAX_NODES, load_config, parse_config
from nlpflow.config.resolve import resolve
from nlpflow.contract.errors import ConfigError, PluginError

GOOD = "pipelines:\n  reviews:\n    task: sentiment\n    data: {path: d.jsonl}\n"


def _error(text: str, tmp_path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "p.yaml")
    return str(caught.value).replace(str(tmp_path / "p.yaml"), "p.yaml")


def test_good_file_parses_with_locations(tmp_path):
    pipelines = parse_config(GOOD + "    metrics: [accuracy, {macro_f1: {}}]\n", tmp_path / "p.yaml")
    pipeline = pipelines["reviews"]
    assert pipeline.name == "reviews"
    assert str(pipeline.location("metrics", 1)) == f"{tmp_path / 'p.yaml'}:5:25"
    assert str(pipeline.location("data", "path")) == f"{tmp_path / 'p.yaml'}:4:12"
    assert pipeline.data_path == tmp_path / "d.jsonl"


def test_unknown_top_level_key_is_reported_before_the_missing_one(tmp_path):
    assert _error("pipeline:\n  x: {}\n", tmp_path) == "p.yaml:1:1: unknown key 'pipeline'. Available: pipelines. Did you mean 'pipelines'?"


def test_missing_nested_key_points_at_its_parent(tmp_path):
    text = "pipelines:\n  reviews:\n    task: sentiment\n    data: {format: jsonl}\n"
    assert _error(text, tmp_path) == "p.yaml:4:5: pipeline 'reviews': missing required key 'data.path'"


def test_union_errors_are_combined(tmp_path):
    message = _error(GOOD + "    model: {name_or_path: m, batch_size: -3}\n", tmp_path)
    assert message.startswith("p.yaml:5:30: pipeline 'reviews': model.batch_size: Input should be greater than 0 or Input should be 'auto'")
    assert "constrained-int" not in message and "literal" not in message


@pytest.mark.parametrize("key", ["1", "true", "null", "1.5"])
def test_non_string_pipeline_names(key, tmp_path):
    message = _error(f"pipelines:\n  {key}:\n    task: sentiment\n    data: {{path: d.jsonl}}\n", tmp_path)
    assert message.startswith("p.yaml:2:3: pipeline name ")
    assert message.endswith("must be a string (quote it)")


def test_quoted_numeric_pipeline_name_is_fine(tmp_path):
    assert list(parse_config("pipelines:\n  '2024':\n    task: sentiment\n    data: {path: d.jsonl}\n", tmp_path / "p.yaml")) == ["2024"]


def test_duplicate_keys_at_any_depth(tmp_path):
    assert _error(GOOD + "    options: {labels: [a], labels: [b]}\n", tmp_path) == "p.yaml:5:28: duplicate key 'labels' (first defined on line 5)"
    # 1 and '1' are different keys, as the loader builds them
    parse_config(GOOD + "    fields: {}\n    options: {template: x}\n", tmp_path / "p.yaml")


def test_merge_keys_are_allowed(tmp_path):
    text = (
        "defaults: &defaults\n  task: sentiment\n  data: {path: d.jsonl}\n"
        "pipelines:\n  a:\n    <<: *defaults\n  b:\n    <<: *defaults\n    chunk_size: 8\n"
    )
    with pytest.raises(ConfigError, match="unknown key 'defaults'"):
        parse_config(text, tmp_path / "p.yaml")
    text = text.replace("defaults: &defaults\n  task", "pipelines:\n  base: &defaults\n    task").replace("  data: {path: d.jsonl}\npipelines:\n", "    data: {path: d.jsonl}\n")
    pipelines = parse_config(text, tmp_path / "p.yaml")
    assert pipelines["b"].chunk_size == 8 and pipelines["a"].task == "sentiment"


def test_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a: &a [" + ",".join(["x"] * 10) + "]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 10) + "]")
    started = time.perf_counter()
    message = _error("\n".join(levels) + "\n", tmp_path)
    assert time.perf_counter() - started < 5
    assert f"expands to more than {MAX_NODES} values" in message


def test_deep_nesting_is_a_config_error(tmp_path):
    assert "nested too deeply" in _error("pipelines: " + "[" * 3000 + "]" * 3000 + "\n", tmp_path)


@pytest.mark.parametrize(
    "nested",
    [
        "    " + "- " * 30_000 + "x\n",  # block sequences on one line
        "".join(" " * (level + 4) + "a:\n" for level in range(2_000)),  # block mappings, one level a line
    ],
    ids=["block-sequences", "block-mappings"],
)
def test_deep_block_nesting_exits_2_with_the_limit_and_line(tmp_path, nested):
    # a subprocess, so a crash of the C loader shows as a failure rather than killing pytest
    path = tmp_path / "deep.yaml"
    path.write_text("pipelines:\n  p:\n" + nested)
    done = subprocess.run(
        [sys.executable, "-m", "nlpflow.cli", "validate", "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"nested more than {MAX_DEPTH} levels deep" in done.stderr
    line = 3 if nested.startswith("    -") else 3 + MAX_DEPTH - 2
    assert f"{path}:{line}:" in done.stderr


def test_nesting_up_to_the_limit_is_read(tmp_path):
    text = "pipelines: {}\nextra: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    with pytest.raises(ConfigError, match="extra") as caught:
        parse_config(text, tmp_path / "p.yaml")
    assert "nested" not in str(caught.value)


def test_load_config_reads_only_utf8(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"pipelines: {}\n\xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8: byte 0xff") as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:2:1: ")
    with pytest.raises(ConfigError, match="pipelines file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read pipelines file"):
        load_config(tmp_path)


def test_step_options_and_fields(tmp_path, registry):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "positive"}\n')
    text = GOOD + "    preprocess: [{truncate: {max_tokenz: 3}}]\n"
    pipeline = parse_config(text, tmp_path / "p.yaml")["reviews"]
    with pytest.raises(ConfigError) as caught:
        resolve(pipeline, registry)
    assert "truncate: unknown option 'max_tokenz'" in str(caught.value)
    assert "Did you mean 'max_tokens'?" in str(caught.value)

    pipeline = parse_config(GOOD + "    preprocess: [{name: normalize, fields: text}]\n", tmp_path / "p.yaml")["reviews"]
    assert resolve(pipeline, registry).preprocessors[0].fields == ("text",)
    pipeline = parse_config(GOOD + "    preprocess: [{name: normalize, fields: {a: 1}}]\n", tmp_path / "p.yaml")["reviews"]
    with pytest.raises(ConfigError, match="fields must be a list of field names"):
        resolve(pipeline, registry)


@pytest.mark.parametrize("delimiter", ["", ";;", "\n"])
def test_reader_options_are_checked(delimiter, tmp_path, registry):
    (tmp_path / "d.csv").write_text("text,label\na,positive\n")
    text = f"pipelines:\n  r:\n    task: sentiment\n    data: {{path: d.csv, options: {{delimiter: {json.dumps(delimiter)}}}}}\n"
    with pytest.raises(ConfigError) as caught:
        resolve(parse_config(text, tmp_path / "p.yaml")["r"], registry)
    assert "csv: option 'delimiter': must be a single character" in str(caught.value)


def test_plugin_constructor_that_raises_names_the_plugin(tmp_path):
    from nlpflow import hookimpl
    from nlpflow.registry import load_registry
    from nlpflow.contract.types import Reporter

    class Exploding(Reporter):
        name = "exploding"
        filename = "x.txt"

        def __init__(self, options=None):
            raise RuntimeError("no template")

        def render(self, run):
            return ""

    class Plugin:
        @hookimpl
        def register_reporters(self, register):
            register(Exploding)

    registry = load_registry(extra_plugins=[("exploding_plugin", Plugin())])
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "positive"}\n')
    pipeline = parse_config(GOOD + "    report: {formats: [exploding]}\n", tmp_path / "p.yaml")["reviews"]
    with pytest.raises(PluginError) as caught:
        resolve(pipeline, registry)
    assert str(caught.value).startswith("plugin 'exploding_plugin': Exploding ('exploding') raised while being set up for pipeline 'reviews'")
    assert "RuntimeError: no template" in str(caught.value)
