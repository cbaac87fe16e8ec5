"""`nlpflow validate` checks what can be checked without running a model: the data file with its reader and
mapped fields, the model's config (no weights), the labels, every option; and a hub that cannot be reached
fails within seconds."""

from __future__ import annotations

import time

import pytest

from nlpflow.cli import main
from nlpflow.plugins.torch_backend import TorchBackend


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("validate loaded a model")

    monkeypatch.setattr(TorchBackend, "load_head", refuse)
    monkeypatch.setattr(TorchBackend, "run", refuse)


def _sentiment(write_pipelines, tmp_path, data: str, fields: str = "{text: text, label: label}", model="sentence-transformers/all-MiniLM-L6-v2", extra=""):
    (tmp_path / "data.csv").write_text(data, encoding="utf-8")
    return write_pipelines(
        "pipelines:\n"
        "  s:\n"
        "    task: sentiment\n"
        "    data: {path: data.csv}\n"
        f"    fields: {fields}\n"
        f"{extra}"
        f"    model: {{name_or_path: {model}}}\n"
    )


def _validate(config, capsys):
    code = main(["validate", "-c", str(config)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_good_pipeline_validates_without_loading_the_model(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,positive\nbad,negative\n")
    code, out, err = _validate(config, capsys)
    assert (code, err) == (0, "") and "pipeline 's' ok" in out


def test_mapped_columns_must_exist_in_the_first_records(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _sentiment(write_pipelines, tmp_path, "review,label\ngood,positive\n", fields="{text: body, label: label}")
    code, _, err = _validate(config, capsys)
    assert code == 3
    assert f"{tmp_path / 'data.csv'}:2: pipeline 's': missing field 'text' (column 'body'); the record has 'review', 'label'" in err


def test_a_data_file_the_reader_cannot_read(write_pipelines, tmp_path, capsys, no_model_loads):
    (tmp_path / "data.jsonl").write_text('{"text": "fine", "label": "positive"}\n{not json\n', encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n  s:\n    task: sentiment\n    data: {path: data.jsonl, on_error: skip}\n"
        "    model: {name_or_path: sentence-transformers/all-MiniLM-L6-v2}\n"
    )
    assert _validate(config, capsys)[0] == 0  # one readable record is enough with on_error: skip
    (tmp_path / "data.jsonl").write_text("{not json\n", encoding="utf-8")
    code, _, err = _validate(config, capsys)
    assert code == 3 and f"{tmp_path / 'data.jsonl'}:1: pipeline 's': the first 1 records were all skipped" in err


def test_a_model_that_does_not_resolve(write_pipelines, tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,positive\n", model="nobody/no-such-model")
    code, _, err = _validate(config, capsys)
    assert code == 4 and f"{config}:6:5: pipeline 's'" in err and "model 'nobody/no-such-model' is not available" in err


def test_labels_that_never_match(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,pos\nbad,neg\n")
    code, _, err = _validate(config, capsys)
    assert code == 2 and "Data labels: ['neg', 'pos']" in err and "options.label_map" in err
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,pos\nbad,neg\n", extra="    options: {label_map: {pos: positive, neg: negative}}\n")
    assert _validate(config, capsys)[0] == 0


def test_an_unreachable_hub_fails_within_seconds(write_pipelines, tmp_path, capsys, monkeypatch, no_model_loads):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.nlpflow-test.invalid")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,positive\n", model="nobody/no-such-model")
    started = time.monotonic()
    code, _, err = _validate(config, capsys)
    assert code == 4 and time.monotonic() - started < 10
    assert "is not in the Hugging Face cache" in err and "the hub at https://hub.nlpflow-test.invalid cannot be reached" in err
    assert "HF_HUB_OFFLINE=1" in err


def test_validate_takes_the_run_overrides(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,pos\nbad,neg\n")
    assert main(["validate", "-c", str(config), "--set", "s.options.label_map={pos: positive, neg: negative}"]) == 0
    assert main(["validate", "-c", str(config), "--set", "s.options.label_map=[pos]"]) == 2
    assert "error: --set s.options.label_map=[pos]: pipeline 's': " in capsys.readouterr().err


def test_validate_without_names_checks_what_run_would_run(capsys):
    """The repository's own file validates: its non-default translation pipeline names a model that is not
    downloaded here, and validate, like run, goes deep only into the default pipelines when none are named."""
    from nlpflow.cli import main
    from tests.conftest import REPO

    assert main(["validate", "--config", str(REPO / "pipelines.yaml")]) == 0
    assert "translation-en-de" not in capsys.readouterr().out
    assert main(["validate", "--config", str(REPO / "pipelines.yaml"), "translation-en-de"]) == 4


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _three_pipelines(write_pipelines, tmp_path):
    """'columns' maps a column its data lacks; 'no-data' has an unknown option and no data file; 'good' is fine."""
    (tmp_path / "reviews.csv").write_text("review,label\ngood,positive\n", encoding="utf-8")
    (tmp_path / "data.csv").write_text("text,label\ngood,positive\nbad,negative\n", encoding="utf-8")
    return write_pipelines(
        "pipelines:\n"
        "  columns:\n"
        "    task: sentiment\n"
        "    data: {path: reviews.csv}\n"
        "    fields: {text: body}\n"
        f"    model: {{name_or_path: {MINILM}}}\n"
        "  no-data:\n"
        "    task: sentiment\n"
        "    data: {path: missing.csv}\n"
        "    options: {lables: [positive]}\n"
        f"    model: {{name_or_path: {MINILM}}}\n"
        "  good:\n"
        "    task: sentiment\n"
        "    data: {path: data.csv}\n"
        f"    model: {{name_or_path: {MINILM}}}\n"
    )


def test_every_pipeline_is_checked_and_every_problem_listed_with_its_location(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _three_pipelines(write_pipelines, tmp_path)
    code, out, err = _validate(config, capsys)
    errors = _errors(err)
    assert len(errors) == 3, err
    assert errors[0] == (
        f"error: {tmp_path / 'reviews.csv'}:2: pipeline 'columns': missing field 'text' (column 'body'); the record has "
        "'review', 'label' (set data.on_error: skip to skip such records)"
    )
    assert errors[1].startswith(f"error: {config}:10:15: pipeline 'no-data': sentiment: unknown option 'lables'. Available: ")
    assert errors[2] == f"error: {config}:9:12: pipeline 'no-data': data file not found: {tmp_path / 'missing.csv'}"
    assert f"{config}: 2 of 3 pipelines have problems (3 problems in all)" in err.splitlines()
    assert out.splitlines() == [f"{config}: pipeline 'good' ok (task sentiment, 2 metrics)"]
    assert code == 3  # the first problem's kind: the data; the other two are exit 2


def test_run_still_stops_at_its_first_problem(write_pipelines, tmp_path, capsys, no_model_loads):
    config = _three_pipelines(write_pipelines, tmp_path)
    code = main(["run", "-c", str(config), "-o", str(tmp_path / "out"), "--no-cache"])
    errors = _errors(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: {config}:10:15: pipeline 'no-data': sentiment: unknown option 'lables'.")
    assert not (tmp_path / "out").exists()


def test_a_wrong_column_and_a_model_that_does_not_resolve_are_both_reported(write_pipelines, tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _sentiment(write_pipelines, tmp_path, "review,label\ngood,positive\n", fields="{text: body, label: label}", model="nobody/no-such-model")
    code, _, err = _validate(config, capsys)
    errors = _errors(err)
    assert len(errors) == 2, err
    assert errors[0].startswith(f"error: {tmp_path / 'data.csv'}:2: pipeline 's': missing field 'text' (column 'body')")
    assert errors[1].startswith(f"error: {config}:6:5: pipeline 's': model 'nobody/no-such-model' is not available")
    assert code == 3


def test_labels_are_not_checked_when_the_model_does_not_resolve(write_pipelines, tmp_path, capsys, monkeypatch, no_model_loads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _sentiment(write_pipelines, tmp_path, "text,label\ngood,pos\nbad,neg\n", model="nobody/no-such-model")
    code, _, err = _validate(config, capsys)
    [error] = _errors(err)
    assert code == 4 and "model 'nobody/no-such-model' is not available" in error


def test_every_schema_and_option_mistake_is_listed_with_its_line(write_pipelines, tmp_path, capsys, no_model_loads):
    (tmp_path / "data.csv").write_text("text,label\ngood,positive\n", encoding="utf-8")
    config = write_pipelines(
        "pipelines:\n"
        "  a:\n"
        "    task: sentiment\n"
        "    data: {path: data.csv, on_error: maybe}\n"
        "    chunk_size: 0\n"
        "  b:\n"
        "    task: sentiment\n"
        "    dataa: {path: data.csv}\n"
        "  c:\n"
        "    task: sentiment\n"
        "    data: {path: data.csv}\n"
        "    options:\n"
        "      lables: [positive]\n"
        "      threshold: 2\n"
    )
    code, _, err = _validate(config, capsys)
    errors = [line.split(". Available")[0] for line in _errors(err)]
    assert errors == [
        f"error: {config}:4:28: pipeline 'a': data.on_error: Input should be 'fail' or 'skip' (got 'maybe')",
        f"error: {config}:5:5: pipeline 'a': chunk_size: Input should be greater than 0 (got 0)",
        # the unknown key explains the missing one ("dataa" for "data"): said once
        f"error: {config}:8:5: pipeline 'b': unknown key 'dataa'",
        f"error: {config}:13:7: pipeline 'c': sentiment: unknown option 'lables'",
        f"error: {config}:14:7: pipeline 'c': sentiment: option 'threshold': Input should be less than or equal to 1 (got 2)",
    ]
    assert code == 2 and f"{config}: 3 of 3 pipelines have problems (5 problems in all)" in err


def test_a_yaml_syntax_error_is_one_problem(write_pipelines, capsys):
    config = write_pipelines("pipelines:\n  a: {task: sentiment\n  b: [\n")
    code, _, err = _validate(config, capsys)
    [error] = _errors(err)
    assert code == 2 and error.startswith(f"error: {config}:3:") and "YAML syntax error" in error


def test_the_python_api_raises_every_problem_at_once(write_pipelines, tmp_path, monkeypatch, no_model_loads):
    import nlpflow
    from nlpflow.contract.errors import DataError, ModelError, ValidationFailed

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _sentiment(write_pipelines, tmp_path, "review,label\ngood,positive\n", fields="{text: body, label: label}", model="nobody/no-such-model")
    with pytest.raises(ValidationFailed) as caught:
        nlpflow.validate(config)
    failed = caught.value
    assert [type(problem) for problem in failed.problems] == [DataError, ModelError]
    assert failed.exit_code == 3 and failed.pipelines == []
    assert str(failed).splitlines() == [*(str(problem) for problem in failed.problems), "1 of 1 pipeline has problems (2 problems in all)"]
