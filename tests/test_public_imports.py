"""Built-in plugins are written against the public contract: they import ``nlpflow`` and sibling built-ins only."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: built-in plugin modules allowed, for now, to import internal nlpflow modules
KNOWN_EXCEPTIONS: set[str] = set()


def internal_imports(path: Path, allowed_prefixes: tuple[str, ...] = ()) -> list[str]:
    """``file:line: module`` for each import of an nlpflow module other than ``nlpflow`` itself and ``allowed_prefixes``.

    ``pipeline`` and ``plugins`` (the source folders' own names) count as internal too: installed, they are nlpflow's.
    """
    offenders = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] if node.level == 0 else []
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            public = module == "nlpflow" or any(module == prefix or module.startswith(prefix + ".") for prefix in allowed_prefixes)
            if top in ("pipeline", "plugins") or (top == "nlpflow" and not public):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    return offenders


def test_every_builtin_plugin_imports_only_nlpflow_and_its_siblings():
    modules = sorted((REPO / "plugins").rglob("*.py"))
    assert len(modules) > 10
    offenders = [
        offender
        for path in modules
        if path.name not in KNOWN_EXCEPTIONS
        for offender in internal_imports(path, allowed_prefixes=("nlpflow.plugins",))
    ]
    assert offenders == []


def test_the_rule_catches_internal_imports_wherever_they_are():
    plugin = REPO / "tests" / "_import_rule_sample.py"
    plugin.write_text(
        "from nlpflow import Task\n"
        "import nlpflow.plugins.torch_backend\n"
        "def later():\n"
        "    from nlpflow.engine import model_stage\n"
        "    import nlpflow.registry\n"
        "from pipeline.contract import types\n",
        encoding="utf-8",
    )
    try:
        found = internal_imports(plugin, allowed_prefixes=("nlpflow.plugins",))
    finally:
        plugin.unlink()
    assert sorted(line.rsplit(": ", 1)[1] for line in found) == ["nlpflow.engine", "nlpflow.registry", "pipeline.contract"]
