"""Commands that run no model start without importing torch or transformers (they take ~1 s of start-up each)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
from nlpflow.registry import load_registry
registry = load_registry()
assert registry.names("backend"), "no backends registered"
heavy = sorted(name for name in ("torch", "transformers", "onnxruntime", "spacy") if name in sys.modules)
print(",".join(heavy))
"""


def test_loading_every_plugin_imports_no_model_library():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_import_nlpflow_is_light():
    probe = "import sys, nlpflow; print(','.join(n for n in ('torch', 'transformers', 'spacy') if n in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
