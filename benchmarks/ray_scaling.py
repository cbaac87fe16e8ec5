"""Records/s of the local executor against the Ray executor with 1 and 2 workers (1 thread each), and Ray's fixed costs.

    python -m benchmarks.ray_scaling --records 1000 --repeats 3

One process: a local Ray cluster (``ray.init(num_cpus=2)``) started once and
timed; then ``--repeats`` rounds of the three contenders, interleaved (order
rotating each round), each a whole ``Runner.run`` of the zero-shot sentiment
pipeline on the embedded all-MiniLM-L6-v2 with the cache off. The local
contender computes with 1 torch thread in this process; each Ray worker has
1 CPU (Ray sets its OMP_NUM_THREADS to 1). For each run it takes the wall
time, the executor's start (actors spawned, model loaded, handshake) and the
model-stage seconds; records/s is over the wall time less the executor start,
the steady state. The driver's ceiling is records / (local wall - forward
seconds): what the driver does per record (read, check, preprocess, tokenize,
plan, collate, decode, score, write) when the forward pass costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.data import classification_records, write_jsonl

PIPELINE = """pipelines:
  bench:
    task: sentiment
    data: {{path: {data}}}
    model: {{name_or_path: sentence-transformers/all-MiniLM-L6-v2, device: cpu, batch_size: auto}}
    metrics: [accuracy]
    report: {{formats: [json]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from nlpflow.api import validate
    from nlpflow.plugins.executors import LocalExecutor, RayExecutor
    from nlpflow.engine.runner import Runner

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="nlpflow-ray-bench-"))
    records = [{"text": r["text"], "label": "positive" if i % 2 else "negative"} for i, r in enumerate(classification_records(arguments.records))]
    data = write_jsonl(root / "reviews.jsonl", records)
    config = root / "pipelines.yaml"
    config.write_text(PIPELINE.format(data=json.dumps(str(data))), encoding="utf-8")

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    ray_init_seconds = time.perf_counter() - started

    contenders = {"local": lambda: LocalExecutor(), "ray-1": lambda: RayExecutor(RayExecutor.Options(workers=1)),
                   "ray-2": lambda: RayExecutor(RayExecutor.Options(workers=2))}
    names = list(contenders)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(arguments.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            pipeline = validate(config, ["bench"])[0]
            executor = contenders[name]()
            timer = time.perf_counter()
            result = Runner(pipeline, root / "out" / name, None, interactive=False, executor=executor).run()
            wall = time.perf_counter() - timer
            report = result.report
            start = report["timing"]["stages_seconds"].get("start executor", 0.0)
            load = report["timing"]["stages_seconds"].get("load model", 0.0)
            forward = report["executor"].get("worker_forward_seconds", report["model"]["forward_seconds"])
            rows[name].append({"wall": wall, "load": load, "start": start, "forward": forward,
                               "rps": report["counts"]["predicted"] / (wall - load - start)})
            print(f"round {repeat + 1} {name:6s} wall {wall:6.2f} s  load {load:5.2f}  executor start {start:5.2f}  "
                  f"forward {forward:6.2f}  {rows[name][-1]['rps']:7.1f} records/s", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(row[key] for row in rows[name])

    local = median("local", "rps")
    print(f"\nray.init (local 2-CPU cluster): {ray_init_seconds:.2f} s, once per process")
    for name in names:
        print(f"{name:6s} median {median(name, 'rps'):7.1f} records/s (steady state), executor start {median(name, 'start'):.2f} s, "
              f"x{median(name, 'rps') / local:.2f} of local")
    workers = {"ray-1": 1, "ray-2": 2}
    for name, count in workers.items():
        print(f"scaling efficiency {name}: {median(name, 'rps') / (count * median('ray-1', 'rps')):.2f} of {count} x ray-1")
    driver = [arguments.records / (row["wall"] - row["load"] - row["forward"]) for row in rows["local"]]
    print(f"driver ceiling (records / (local wall - model load - forward)): {statistics.median(driver):.0f} records/s")
    ray.shutdown()


if __name__ == "__main__":
    main()
