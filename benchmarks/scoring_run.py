"""A whole no-model scoring run (given predictions), timed per stage, with all three report formats.

    python -m benchmarks.scoring_run --records 1000000

Writes ``--records`` generated sentiment records with a ``prediction`` column
(benchmarks/data.py texts, seeded), runs ``nlpflow run`` on them in a fresh
subprocess (cache off, 1000 bootstrap resamples, JSON + Markdown + HTML
reports), and prints the wall time of the process, its peak resident memory,
the per-stage seconds from report.json, and the time spent after report.json's
clock stopped (writing the reports).

The peak is the child's own ``RUSAGE_SELF`` high-water mark, printed by the
child as it exits: ``RUSAGE_CHILDREN`` would also count the pages of this
process (which held the generated records) that the child shared between fork
and exec.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.data import LABELS, texts, write_jsonl


PEAK_MARK = "peak_rss_kib="
#: ``nlpflow`` that prints its own peak resident memory (KiB) to stderr as it exits
PEAK_REPORTING_CLI = (
    "import atexit, resource, runpy, sys\n"
    f"atexit.register(lambda: print('{PEAK_MARK}%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "sys.argv[0] = 'nlpflow'\n"
    "runpy.run_module('nlpflow.cli', run_name='__main__')\n"
)


def records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed + 1)
    gold = rng.integers(0, len(LABELS), size=n)
    right = rng.random(n) < 0.8
    guess = rng.integers(0, len(LABELS), size=n)
    for i, text in enumerate(texts(n, seed)):
        yield {"id": i, "text": text, "label": LABELS[gold[i]], "prediction": LABELS[gold[i] if right[i] else guess[i]]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scoring_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nlpflow-scoring-") as folder:
        root = Path(folder)
        write_jsonl(root / "data.jsonl", records(args.records))
        (root / "pipelines.yaml").write_text(
            "pipelines:\n  scoring:\n    task: sentiment\n    data: {path: data.jsonl}\n"
            "    report: {formats: [json, markdown, html], bootstrap: {resamples: 1000}}\n",
            encoding="utf-8",
        )
        command = [sys.executable, "-c", PEAK_REPORTING_CLI, "run", "scoring", "--config", str(root / "pipelines.yaml"),
                   "--output", str(root / "out"), "--no-cache"]
        started = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if finished.returncode != 0:
            sys.exit(f"nlpflow run failed ({finished.returncode}): {finished.stderr}")
        peak = int(finished.stderr.rsplit(PEAK_MARK, 1)[1].split()[0]) / 1024
        report = json.loads((root / "out" / "scoring" / "report.json").read_text(encoding="utf-8"))
    timing = report["timing"]
    print(f"{args.records} records: process wall {wall:.1f} s, peak RSS {peak:.0f} MiB")
    print(f"run clock (report.json wall_seconds): {timing['wall_seconds']:.1f} s; after it (reports, exit): {wall - timing['wall_seconds']:.1f} s")
    for stage, seconds in timing["stages_seconds"].items():
        print(f"  {stage:<24}{seconds:>8.1f} s")


if __name__ == "__main__":
    main()
