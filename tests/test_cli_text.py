"""`nlpflow tasks` prints plugin text as written: square brackets are not taken for rich markup."""

from __future__ import annotations

from nlpflow.cli import main


def test_tasks_keeps_square_brackets_in_descriptions(capsys):
    assert main(["tasks"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "'nlpflow[parquet]'" in shown  # the parquet reader's install hint


def test_tasks_options_keeps_square_brackets_in_types(capsys):
    assert main(["tasks", "--options", "text-generation"]) == 0
    assert "list[str]" in capsys.readouterr().out  # the type of its `stop` option
