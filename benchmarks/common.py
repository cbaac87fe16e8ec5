"""What the side-by-side benchmarks share: every contender on one device in one dtype, and interleaved rounds."""

from __future__ import annotations

import argparse
from typing import Any, Callable, TypeVar

Output = TypeVar("Output")


def add_device_arguments(parser: argparse.ArgumentParser, contenders: str = "every contender") -> None:
    """``--device`` and ``--dtype``, the same for every contender (resolve them with :func:`resolve_device_arguments`)."""
    parser.add_argument("--device", default="cpu", help=f"device for {contenders}: cpu, cuda, cuda:N, auto")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "float16", "bfloat16"),
                        help=f"dtype for {contenders} (auto: bfloat16 on GPUs that support it)")


def add_round_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rounds`` (interleaved), ``--threads`` (torch's, on a shared machine) and ``--seed`` (the data and model)."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)


def resolve_device_arguments(args: argparse.Namespace) -> None:
    """``--device auto`` becomes the concrete device every contender uses, by nlpflow's own resolution."""
    from nlpflow.plugins.torch_backend import resolve_device

    args.device = str(resolve_device(args.device))


def torch_dtype(args: argparse.Namespace) -> Any:
    """The torch dtype every contender runs in: nlpflow's resolution of ``--dtype`` for ``--device``."""
    from nlpflow.plugins.torch_backend import resolve_device, resolve_dtype

    return resolve_dtype(args.dtype, resolve_device(args.device))


def on_device(model: Any, args: argparse.Namespace) -> Any:
    """A reference or floor model on the benchmark's device and dtype, in eval mode."""
    from nlpflow.plugins.torch_backend import resolve_device

    return model.to(device=resolve_device(args.device), dtype=torch_dtype(args)).eval()


#: how far outputs may differ between contenders in float16 or bfloat16, where a batch's shape changes the rounding
HALF_PRECISION_TOLERANCE = 2e-2


def tolerance(args: argparse.Namespace, float32: float) -> float:
    """The relative difference outputs may show between contenders: ``float32`` unless they run in half precision."""
    import torch

    return HALF_PRECISION_TOLERANCE if torch_dtype(args) in (torch.float16, torch.bfloat16) else float32


def interleaved(
    runners: dict[str, Callable[[], Output]], rounds: int, each_round: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, Output]]:
    """Each contender once per round, alternating which goes first so load from other processes hits all alike.

    Returns the wall seconds of every run per contender, and each contender's output from its last run.
    ``each_round(round_number, seconds)`` is called after every round (to print it).
    """
    import time

    seconds: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, Output] = {}
    for round_number in range(rounds):
        order = list(runners) if round_number % 2 == 0 else list(reversed(runners))
        for name in order:
            started = time.perf_counter()
            outputs[name] = runners[name]()
            seconds[name].append(time.perf_counter() - started)
        if each_round is not None:
            each_round(round_number, seconds)
    return seconds, outputs
