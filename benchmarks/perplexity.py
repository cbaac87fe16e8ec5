"""Perplexity: a whole ``nlpflow run`` of language-modeling against the transformers docs' strided loop, same windows.

    python -m benchmarks.perplexity --corpus long --documents 40 --rounds 3
    python -m benchmarks.perplexity --corpus paragraphs --documents 400 --vocab 50257 --rounds 3

The model is a random-weight GPT-2 (4 layers, 256 wide, 4 heads, context 256) with a byte-level BPE trained on the
test corpus (tests/causal_lm_factory.py), saved with ``save_pretrained``. ``--vocab N`` gives the model an
N-row embedding and LM head (GPT-2's is 50,257) while the tokenizer keeps its 1,000 ids: the vocabulary projection
and log-softmax cost what a real-size vocabulary costs, though no text ever uses the ids past 1,000.

- ``--corpus long``: ``--documents`` passages of about 2 KB from examples/data/shakespeare.txt (about 1,000 tokens
  each, several full windows each).
- ``--corpus paragraphs``: the first ``--documents`` paragraphs of examples/data/shakespeare.txt, split at blank
  lines, each its own document (heavy-tailed, like WikiText's lines: most a few to tens of tokens, a few over a
  window), as a corpus scored per paragraph is.

- ``docs loop``: the loop of the transformers docs' "Perplexity of fixed-length models", one window per forward
  (batch 1) under ``torch.no_grad()``, over each document's tokens after the BOS token, with ``max_length`` = the
  context and ``stride`` = half of it; each window's loss times its exact number of scored labels. The model is
  loaded before the clock starts; tokenizing is timed.
- ``nlpflow``: ``nlpflow.run`` of a language-modeling pipeline with the same ``stride`` and window (``batch_size:
  auto``, prediction cache off, JSON report only): model load, length-sorted token-budget batches, writing included.

Rounds alternate which side goes first. It prints each side's median wall time, the median of the per-round ratios
docs loop / nlpflow, the share of nlpflow's wall time spent in the model's forward passes (report.json's
``forward_seconds``), and checks that every document's log-likelihood agrees to 1e-5 relative (2e-2 in float16 or
bfloat16, where a batch's shape changes the rounding) and its scored token count exactly.

On a GPU: ``--device cuda --dtype bfloat16`` runs both sides there (the docs loop's model in that dtype too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.common import add_device_arguments, interleaved, on_device, resolve_device_arguments, tolerance  # noqa: E402
from tests.causal_lm_factory import SHAKESPEARE, build_gpt2  # noqa: E402


def passages(count: int, size: int = 2000) -> list[str]:
    """``count`` passages of whole speeches, each just over ``size`` characters."""
    found, current = [], ""
    for speech in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n"):
        current = f"{current}\n\n{speech}" if current else speech
        if len(current) > size:
            found.append(current)
            current = ""
        if len(found) == count:
            break
    return found


def paragraphs(count: int) -> list[str]:
    """The first ``count`` non-empty paragraphs (speeches, split at blank lines)."""
    return [block.strip() for block in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if block.strip()][:count]


def with_vocabulary(checkpoint: Path, vocab_size: int) -> None:
    """Rebuild the saved GPT-2 with ``vocab_size`` embedding and LM-head rows (seeded), keeping its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config.from_pretrained(checkpoint)
    config.vocab_size = vocab_size
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(checkpoint)


def docs_loop(model, tokenizer, texts: list[str], max_length: int, stride: int) -> list[tuple[float, int]]:
    """The transformers docs' loop per document: (log-likelihood, scored tokens), one window per forward."""
    import torch

    results = []
    for text in texts:
        encodings = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]],
                                 device=model.device)
        seq_len = encodings.size(1)
        nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
        for begin_loc in range(0, seq_len, stride):
            end_loc = min(begin_loc + max_length, seq_len)
            trg_len = end_loc - prev_end_loc
            input_ids = encodings[:, begin_loc:end_loc]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                loss = model(input_ids, labels=target_ids).loss
            scored = int((target_ids[:, 1:] != -100).sum())  # the labels the loss averaged over, after the shift
            nll_sum += float(loss) * scored
            n_tokens += scored
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
        results.append((-nll_sum, n_tokens))
    return results


def nlpflow_run(folder: Path, config: Path, forward_seconds: list[float]) -> list[tuple[float, int]]:
    import nlpflow

    [result] = nlpflow.run(["perplexity"], config=config, output=folder / "reports", use_cache=False)
    forward_seconds.append(result.report["model"]["forward_seconds"])
    rows = [json.loads(line) for line in (result.directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(row["prediction"]["loglikelihood"], row["prediction"]["tokens"]) for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("long", "paragraphs"), default="long",
                        help="long: ~2 KB passages; paragraphs: each blank-line paragraph its own document")
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=None,
                        help="the model's vocabulary size (embedding and LM-head rows); default: the tokenizer's 1,000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=256, help="the model's context: the window (max_length)")
    add_device_arguments(parser, "both sides")
    args = parser.parse_args(argv)
    resolve_device_arguments(args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix="nlpflow-perplexity-"))
    checkpoint = build_gpt2(folder / "gpt2", hidden=256, layers=4, heads=4, context=args.context)
    if args.vocab is not None:
        with_vocabulary(checkpoint, args.vocab)
    texts = passages(args.documents) if args.corpus == "long" else paragraphs(args.documents)
    data = folder / "documents.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    stride = args.context // 2
    config = folder / "pipelines.yaml"
    config.write_text(json.dumps({"pipelines": {"perplexity": {
        "task": "language-modeling", "data": {"path": str(data)}, "options": {"stride": stride},
        "model": {"name_or_path": str(checkpoint), "device": args.device, "dtype": args.dtype, "batch_size": "auto"},
        "report": {"formats": ["json"]},
    }}}), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = on_device(AutoModelForCausalLM.from_pretrained(checkpoint), args)
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    tokens = sum(lengths)
    print(f"{args.corpus}: {len(texts)} documents, {tokens} tokens (per document: median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]}); GPT-2 4x256, vocabulary {model.config.vocab_size} (tokenizer {len(tokenizer)}), "
          f"window {args.context}, stride {stride}; {args.device}, {args.dtype}, torch threads {torch.get_num_threads()}")

    forward_seconds: list[float] = []
    sides = {"docs loop": lambda: docs_loop(model, tokenizer, texts, args.context, stride),
             "nlpflow": lambda: nlpflow_run(folder, config, forward_seconds)}
    times, outputs = interleaved(sides, args.rounds, each_round=lambda round_, seconds: print(
        f"round {round_ + 1}: " + ", ".join(f"{side} {seconds[side][-1]:.2f} s" for side in sides)))

    reference, ours = outputs["docs loop"], outputs["nlpflow"]
    assert [n for _, n in reference] == [n for _, n in ours], "scored token counts differ"
    worst = max(abs(a - b) / abs(a) for (a, _), (b, _) in zip(reference, ours) if a)
    assert worst < tolerance(args, 1e-5), f"log-likelihoods differ by {worst:.2e} relative"
    ratios = [d / n for d, n in zip(times["docs loop"], times["nlpflow"])]
    for side in sides:
        median = statistics.median(times[side])
        print(f"{side}: median {median:.2f} s, {tokens / median:,.0f} tokens/s")
    shares = [forward / wall for forward, wall in zip(forward_seconds, times["nlpflow"])]
    print(f"nlpflow's forward passes: median {statistics.median(shares):.0%} of its wall time")
    print(f"speed-up nlpflow over the docs loop: median {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"outputs equal (worst relative difference {worst:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
