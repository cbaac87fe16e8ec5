"""Train a tiny GPT-2 on the Shakespeare shipped in examples/data on CPU, then score held-out passages with nlpflow.

Offline from start to end: the byte-level BPE tokenizer and the model (2 layers, 64 wide) are trained here on
``examples/data/shakespeare.txt`` (public-domain plays from the "tinyshakespeare" collection), in well under a
minute on two CPU cores, and saved with ``save_pretrained``. The script then writes a pipelines file that runs the
``language-modeling`` task on ``examples/data/shakespeare_heldout.jsonl`` (passages the model never saw) with the
trained model and with the same model untrained, prints their perplexities, and then continues the first lines of the
held-out passages with the trained model through the ``text-generation`` task (seeded sampling), scored with BLEU
and chrF against the lines that really follow::

    python examples/train_tiny_gpt2.py --output tiny-gpt2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the model builders live with the test fixtures, in tests/causal_lm_factory.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.causal_lm_factory import SHAKESPEARE, build_gpt2, train_gpt2  # noqa: E402

HELDOUT = REPO / "examples" / "data" / "shakespeare_heldout.jsonl"
METRICS = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def write_pipelines(path: Path, models: dict[str, Path]) -> Path:
    """One language-modeling pipeline per model over the held-out passages (JSON is YAML)."""
    pipelines = {
        name: {
            "description": f"perplexity of the {name} tiny GPT-2 on held-out Shakespeare",
            "task": "language-modeling",
            "data": {"path": str(HELDOUT)},
            "model": {"name_or_path": str(model), "device": "cpu"},
            "metrics": list(METRICS),
        }
        for name, model in models.items()
    }
    path.write_text(json.dumps({"pipelines": pipelines}, indent=2), encoding="utf-8")
    return path


def write_generation(path: Path, model: Path, output: Path) -> Path:
    """A text-generation pipeline: each held-out passage's first line as the prompt, its next line as the reference."""
    records = []
    for line in HELDOUT.read_text(encoding="utf-8").splitlines():
        passage = json.loads(line)
        lines = [text for text in passage["text"].split("\n") if text.strip()]
        if len(lines) >= 3:  # the speaker and their first line as the prompt, the next line as the reference
            records.append({"id": passage["id"], "prompt": "\n".join(lines[:2]) + "\n", "reference": lines[2]})
    data = output / "prompts.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    pipelines = {"generate": {
        "description": "the trained tiny GPT-2 continuing the first line of each held-out passage",
        "task": "text-generation",
        "data": {"path": str(data)},
        "model": {"name_or_path": str(model), "device": "cpu"},
        # a model this small repeats itself under greedy search: seeded sampling, reproducible run to run
        "options": {"max_new_tokens": 24, "do_sample": True, "temperature": 0.8, "top_k": 40, "seed": 0},
    }}
    path.write_text(json.dumps({"pipelines": pipelines}, indent=2), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("tiny-gpt2"), help="folder for the models, pipelines file and reports")
    parser.add_argument("--steps", type=int, default=120, help="training steps (16 slices of 128 tokens each)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    trained = train_gpt2(args.output / "trained", steps=args.steps)
    print(f"trained a 2-layer, 64-wide GPT-2 on {SHAKESPEARE.name} for {args.steps} steps in {time.perf_counter() - started:.1f} s")
    paragraphs = SHAKESPEARE.read_text(encoding="utf-8").split("\n\n")
    untrained = build_gpt2(args.output / "untrained", texts=paragraphs, vocab_size=2000)  # same tokenizer, random weights

    import nlpflow

    config = write_pipelines(args.output / "pipelines.yaml", {"trained": trained, "untrained": untrained})
    results = nlpflow.run(["trained", "untrained"], config=config, output=args.output / "reports", use_cache=False)
    for result in results:
        metrics = result.report["metrics"]
        shown = ", ".join(f"{name} {metrics[name]['value']:.3f} [{metrics[name]['ci']['low']:.3f}, {metrics[name]['ci']['high']:.3f}]"
                          for name in METRICS)
        print(f"{result.directory.name}: {shown}")
    [generated] = nlpflow.run(["generate"], config=write_generation(args.output / "generate.yaml", trained, args.output),
                              output=args.output / "reports", use_cache=False)
    for line in (generated.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[:3]:
        record = json.loads(line)
        print(f"{record['id']}: {record['prediction']!r}")
    metrics = generated.report["metrics"]
    print(f"generation: bleu {metrics['bleu']['value']:.2f}, chrf {metrics['chrf']['value']:.2f} against the passages' next lines")
    print(f"reports in {args.output / 'reports'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
