"""Classification by log-likelihood: nlpflow's loglikelihood mode against one forward per (example, label).

    python -m benchmarks.loglikelihood --examples 48 --shots 3 --rounds 3

One process, one checkpoint (a random-weight GPT-2, 4 layers, 256 wide, built
with ``tests/causal_lm_factory.py``, as the other benchmarks build it), 4
labels, the same prompts: each record a run of ``--words`` words from
``examples/data/shakespeare.txt`` after ``--shots`` solved examples of the same
kind (sampler ``first`` from a few-shot file), which makes contexts of about
100-300 tokens. It times

- ``nlpflow``: the task's LoglikelihoodClassifier driven by ``ModelStage``
  (tokenize, length-sorted token-budget batches, each context run once and the
  labels against its KV cache, ``--batch-size``);
- ``loop``: lm-evaluation-harness's request shape written with transformers
  directly: for each (example, label), the pair encoded whole and split at the
  context's length, one forward of ``(context + label)[:-1]``, the label's
  log-probabilities summed;

in interleaved rounds (alternating which goes first, so load from other
processes hits both alike), checks the log-likelihoods agree to 1e-4 relative
and the chosen labels are identical, and prints examples/second of each (best
and median) and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import add_device_arguments, add_round_arguments, interleaved, on_device, resolve_device_arguments, tolerance  # noqa: E402
LABELS = ["comedy", "tragedy", "history", "romance"]


def passages(count: int, seed: int, shortest: int, longest: int) -> list[str]:
    """``count`` runs of Shakespeare's words, ``shortest`` to ``longest`` words long (seeded)."""
    words = (REPO / "examples" / "data" / "shakespeare.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = rng.randrange(len(words) - longest)
        out.append(" ".join(words[start : start + rng.randint(shortest, longest)]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--shots", type=int, default=3, help="few-shot examples before each prompt")
    parser.add_argument("--words", default="8-25", help="words per passage (each shot and the record), SHORTEST-LONGEST")
    parser.add_argument("--batch-size", default="auto", help="nlpflow's model.batch_size (rows are records)")
    add_round_arguments(parser)
    add_device_arguments(parser, "both sides")
    args = parser.parse_args(argv)
    resolve_device_arguments(args)

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.causal_lm_factory import build_gpt2
    from nlpflow.contract.types import Example, ModelConfig, TaskContext
    from nlpflow.engine.model_stage import ModelStage
    from nlpflow.plugins.classification import ClassificationOptions, TextClassification
    from nlpflow.plugins.torch_backend import TorchBackend
    from nlpflow.registry import default_registry

    torch.set_num_threads(args.threads)
    shortest, longest = (int(n) for n in args.words.split("-"))
    rng = random.Random(args.seed)
    texts = passages(args.examples, args.seed, shortest, longest)
    shots = [{"text": text, "label": rng.choice(LABELS)} for text in passages(max(args.shots, 1), args.seed + 1, shortest, longest)]
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        (folder / "shots.jsonl").write_text("".join(json.dumps(shot) + "\n" for shot in shots), encoding="utf-8")
        path = build_gpt2(folder / "gpt2", seed=args.seed, hidden=256, layers=4, heads=4, context=1024, vocab_size=4000)
        options = ClassificationOptions(mode="loglikelihood", labels=LABELS, prompting={
            "prompt": "Passage: {{ text }}\nGenre:", "few_shot": {"k": args.shots, "source": "shots.jsonl"}})
        task = TextClassification(options)
        task.prepare(TaskContext("benchmark", folder, {"text": "text", "label": "label"}, lambda: iter(())))
        config = ModelConfig(name_or_path=str(path), device=args.device, dtype=args.dtype, batch_size=batch_size)
        backend = TorchBackend(heads=default_registry().heads)
        classifier = task.load(config, backend)
        stage = ModelStage(classifier, config)
        examples = []
        for index, text in enumerate(texts):
            example = Example(index, index + 1, {"text": text}, {"text": text})
            task.check_example(example)
            examples.append(example)
        contexts = [classifier.context(example) for example in examples]
        context_tokens = [len(classifier.split_tokens(context, [" " + LABELS[0]])[0][0]) for context in contexts]

        forward_seconds = []

        def run_nlpflow() -> list[dict[str, float]]:
            forward_before = stage.stats.forward_seconds
            scores = [prediction.details["loglikelihood"] for prediction in stage.run(examples)]
            forward_seconds.append(stage.stats.forward_seconds - forward_before)
            return scores

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = on_device(AutoModelForCausalLM.from_pretrained(path), args)

        def run_loop() -> list[dict[str, float]]:
            results = []
            for context in contexts:
                scores = {}
                for label in LABELS:
                    # lm-evaluation-harness's _encode_pair: trailing spaces move to the continuation, encoded whole
                    spaces = len(context) - len(context.rstrip())
                    left, right = (context[:-spaces], context[-spaces:] + " " + label) if spaces else (context, " " + label)
                    whole = tokenizer(left + right, add_special_tokens=False)["input_ids"]
                    split = len(tokenizer(left, add_special_tokens=False)["input_ids"])
                    with torch.inference_mode():
                        logits = model(torch.tensor([whole[:-1]], device=model.device)).logits[0, split - 1:]
                    logprobs = torch.log_softmax(logits.float(), dim=-1)
                    wanted = torch.tensor(whole[split:], device=model.device)[:, None]
                    scores[label] = float(logprobs.gather(-1, wanted).double().sum())
                results.append(scores)
            return results

        seconds, outputs = interleaved({"nlpflow": run_nlpflow, "loop": run_loop}, args.rounds)
        forward_shares = [forward / wall for forward, wall in zip(forward_seconds, seconds["nlpflow"])]

    ours = np.array([[scores[label] for label in LABELS] for scores in outputs["nlpflow"]])
    theirs = np.array([[scores[label] for label in LABELS] for scores in outputs["loop"]])
    largest = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    same_labels = bool((ours.argmax(1) == theirs.argmax(1)).all())
    print(f"{args.examples} examples, {len(LABELS)} labels, {args.shots}-shot, contexts of {min(context_tokens)}-{max(context_tokens)} tokens "
          f"(median {statistics.median(context_tokens):.0f}), batch size {args.batch_size}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds; GPT-2 4x256 (random weights), {args.device}, {args.dtype}")
    print(f"  nlpflow's forward passes: median {statistics.median(forward_shares):.0%} of its wall time")
    for name, times in seconds.items():
        print(f"  {name:8s} best {args.examples / min(times):7.2f} examples/s   median {args.examples / statistics.median(times):7.2f} examples/s")
    ratio = statistics.median(seconds["loop"]) / statistics.median(seconds["nlpflow"])
    allowed = tolerance(args, 1e-4)
    print(f"  nlpflow / loop: {ratio:.2f}x (median); log-likelihoods equal to {allowed:.0e} relative: {largest <= allowed} "
          f"(largest relative difference {largest:.1e}); chosen labels identical: {same_labels}")
    if largest > 1e-4 or not same_labels:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
