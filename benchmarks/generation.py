"""Prompted generation: nlpflow's text-generation task against ``transformers.pipeline("text-generation")``.

    python -m benchmarks.generation --prompts 64 --batch-size 8 --max-new-tokens 32 --rounds 3

One process, one checkpoint (a random-weight GPT-2, 4 layers, 256 wide, built
with ``tests/causal_lm_factory.py``), the same prompts (runs of
words from ``examples/data/shakespeare.txt``), the same batch size,
greedy decoding. Prompt lengths are uniform over ``--words``: long prompts with
short answers (``--words 10-300 --max-new-tokens 16``) are where length-sorted
batches save most, since ``pipeline()`` pads each batch to its longest prompt. It times

- ``nlpflow``: the task's CausalGenerator driven by ``ModelStage`` (tokenize,
  length-sorted batches, left alignment, ``generate()``, decode);
- ``pipeline()``: ``transformers.pipeline("text-generation")`` on the whole list
  with ``batch_size`` (the tokenizer padding on the left with its EOS token, as
  transformers documents for batched decoder-only generation);

in interleaved rounds (alternating which goes first, so load from other
processes hits both alike), checks the outputs are identical, and prints
prompts/second of each (best and median) and the median ratio.
"""

from __future__ import annotations

import argparse
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

from benchmarks.common import add_device_arguments, add_round_arguments, interleaved, on_device, resolve_device_arguments  # noqa: E402


def prompts(count: int, seed: int, shortest: int, longest: int, lengths: str = "uniform") -> list[str]:
    """``count`` runs of Shakespeare's words, ``shortest`` to ``longest`` words long (seeded): uniformly, or
    heavy-tailed (Pareto, shape 1.2: most prompts short, a few long, as questions with or without long contexts)."""
    words = (REPO / "examples" / "data" / "shakespeare.txt").read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = rng.randrange(len(words) - longest)
        if lengths == "heavy":
            length = min(longest, int(shortest * rng.paretovariate(1.2)))
        else:
            length = rng.randint(shortest, longest)
        out.append(" ".join(words[start : start + length]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--words", default="4-80", help="prompt lengths in words, SHORTEST-LONGEST")
    parser.add_argument("--lengths", choices=("uniform", "heavy"), default="uniform", help="how prompt lengths spread over --words")
    add_round_arguments(parser)
    add_device_arguments(parser, "both sides")
    args = parser.parse_args(argv)
    resolve_device_arguments(args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from tests.causal_lm_factory import build_gpt2
    from nlpflow.contract.types import Example, ModelConfig
    from nlpflow.engine.model_stage import ModelStage
    from nlpflow.plugins.text_generation import TextGeneration, TextGenerationOptions
    from nlpflow.plugins.torch_backend import TorchBackend

    torch.set_num_threads(args.threads)
    shortest, longest = (int(n) for n in args.words.split("-"))
    texts = prompts(args.prompts, args.seed, shortest, longest, args.lengths)
    with tempfile.TemporaryDirectory() as workdir:
        path = build_gpt2(Path(workdir) / "gpt2", seed=args.seed, hidden=256, layers=4, heads=4, context=1024, vocab_size=4000)
        task = TextGeneration(TextGenerationOptions(max_new_tokens=args.max_new_tokens))
        config = ModelConfig(name_or_path=str(path), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        stage = ModelStage(task.load(config, TorchBackend()), config)

        forward_seconds = []

        def run_nlpflow() -> list[str]:
            forward_before = stage.stats.forward_seconds
            examples = []
            for index, text in enumerate(texts):
                example = Example(index, index + 1, {"prompt": text}, {"prompt": text})
                task.check_example(example)
                examples.append(example)
            predictions = [prediction.value for prediction in stage.run(examples)]
            forward_seconds.append(stage.stats.forward_seconds - forward_before)
            return predictions

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        generator = pipeline("text-generation", model=on_device(AutoModelForCausalLM.from_pretrained(path), args),
                             tokenizer=tokenizer, device=args.device)

        def run_pipeline() -> list[str]:
            results = generator(texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, do_sample=False,
                                return_full_text=False)
            return [result[0]["generated_text"] for result in results]

        seconds, outputs = interleaved({"nlpflow": run_nlpflow, "pipeline()": run_pipeline}, args.rounds)
        forward_shares = [forward / wall for forward, wall in zip(forward_seconds, seconds["nlpflow"])]
        differing = sum(a != b for a, b in zip(outputs["nlpflow"], outputs["pipeline()"]))

    print(f"{args.prompts} prompts of {args.words} words ({args.lengths}), batch size {args.batch_size}, {args.max_new_tokens} new tokens, greedy, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds; GPT-2 4x256 (random weights), {args.device}, {args.dtype}")
    for name, times in seconds.items():
        print(f"  {name:11s} best {args.prompts / min(times):7.2f} prompts/s   median {args.prompts / statistics.median(times):7.2f} prompts/s")
    print(f"  nlpflow's generate() calls: median {statistics.median(forward_shares):.0%} of its wall time")
    ratio = statistics.median(seconds["pipeline()"]) / statistics.median(seconds["nlpflow"])
    print(f"  nlpflow / pipeline(): {ratio:.2f}x (median); outputs identical: {differing == 0} ({differing} of {args.prompts} differ)")


if __name__ == "__main__":
    main()
