"""Training step of every registered backbone in NCHW and in channels-last (NHWC) memory format.

What `BackboneEntry.channels_last` (the tasks' default memory format, `TaskModule(channels_last=None)`)
is measured by: forward + backward of the backbone alone (loss = mean square of every feature map), random
init, the two formats of each backbone timed round-robin (one step each per round), median ms and the
channels-last / NCHW ratio. A ratio above 1 means the net trains slower in channels-last on this CPU; its
registry entry says `channels_last=False`.

    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --threads 2 [--batch 4 --size 256 --rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

from backbones import create_backbone, get_backbone_entry, list_backbones


def training_step(network: nn.Module, x: torch.Tensor) -> None:
    """Forward, a loss on every feature map, backward."""
    loss = sum(feature.square().mean() for feature in network(x))
    network.zero_grad(set_to_none=True)
    loss.backward()


def time_pair(name: str, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median seconds of one training step in NCHW and in channels-last, timed round-robin."""
    torch.manual_seed(0)
    nchw = create_backbone(name).train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
    for network in (nchw, nhwc):
        training_step(network, x)  # warm-up: oneDNN compiles its kernels on the first call
    for _ in range(rounds):
        for key, network in (("nchw", nchw), ("nhwc", nhwc)):
            start = time.perf_counter()
            training_step(network, x)
            times[key].append(time.perf_counter() - start)
    return statistics.median(times["nchw"]), statistics.median(times["nhwc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="backbone names (default: every registered one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.batch}x3x{args.size}x{args.size}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| backbone | NCHW ms | channels-last ms | channels-last / NCHW | registry `channels_last` |")
    print("|---|---:|---:|---:|---|")
    for name in args.only or list_backbones():
        nchw, nhwc = time_pair(name, x, args.rounds)
        flag = get_backbone_entry(name).channels_last
        note = "" if (nhwc <= nchw * 1.02) == flag else " (disagrees with this run)"
        print(f"| {name} | {1000 * nchw:.0f} | {1000 * nhwc:.0f} | {nhwc / nchw:.2f}x | {flag}{note} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
