"""nlpflow as a user gets it: a wheel installed into a fresh venv imports as ``nlpflow`` only, and the
example third-party plugin installed next to it runs through that venv's ``nlpflow`` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_public_imports import internal_imports

REPO = Path(__file__).resolve().parent.parent
KEYWORDS = REPO / "examples" / "nlpflow-keywords"


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_imports_as_nlpflow_and_runs_the_example_plugin(tmp_path):
    # build from a copy, so the build leaves nothing in the checkout
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("pipeline", "plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)], tmp_path)
    [wheel] = wheels.glob("nlpflow-*.whl")

    # a fresh venv that reuses this environment's dependencies through a .pth file; its own
    # site-packages comes first on sys.path, so the wheel's nlpflow and entry points win
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    (site_packages / "reuse_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    _run([*install, str(wheel), str(KEYWORDS)], tmp_path)

    outside = tmp_path / "elsewhere"
    shutil.copytree(KEYWORDS, outside, ignore=shutil.ignore_patterns("nlpflow_keywords", "*.egg-info", "build"))
    where = _run([str(python), "-c", "import nlpflow, nlpflow.plugins, nlpflow_keywords; print(nlpflow.__file__); print(nlpflow_keywords.__file__)"], outside)
    nlpflow_file, keywords_file = where.stdout.split()
    assert Path(nlpflow_file).is_relative_to(site_packages), f"nlpflow imported from {nlpflow_file}, not the wheel in {site_packages}"
    assert Path(keywords_file).is_relative_to(site_packages)
    for folder_name in ("pipeline", "plugins"):
        probe = subprocess.run([str(python), "-c", f"import {folder_name}"], cwd=outside, capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"'import {folder_name}' should fail: {probe.stderr}"

    _run([str(venv / "bin" / "nlpflow"), "run", "keywords-demo", "--output", "out", "--no-cache"], outside, HF_HUB_OFFLINE="1")
    report = json.loads((outside / "out" / "keywords-demo" / "report.json").read_text(encoding="utf-8"))
    assert report["task_plugin"] == "keywords" and report["counts"]["scored"] > 0
    assert report["metrics"]["keyword_f1"]["value"] is not None


def test_the_example_plugin_imports_only_nlpflow_from_nlpflow():
    """A third-party plugin needs the public module and nothing internal: no nlpflow.x, no pipeline, no plugins."""
    offenders = [offender for path in sorted((KEYWORDS / "nlpflow_keywords").rglob("*.py")) for offender in internal_imports(path)]
    assert offenders == []
