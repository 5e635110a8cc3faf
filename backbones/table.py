"""Print the backbone table (markdown) that the README shows: `python -m backbones.table`.

Params and MACs are those of the feature extractor at output stride 32 (no classifier) on a 224x224
image; latency is the median eval forward of one 224x224 image on this machine's CPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
from tqdm import tqdm

from backbones import create_backbone, get_backbone_entry, list_backbones
from backbones.complexity import count_macs, count_params


def measure_latency_ms(module: torch.nn.Module, image: torch.Tensor, repeats: int) -> float:
    """Median wall time of `repeats` eval forwards, after two warm-up runs."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            module(image)
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def backbone_rows(pattern: str, repeats: int) -> list[list[str]]:
    """One markdown row per registered backbone matching `pattern`."""
    rows = []
    image = torch.randn(1, 3, 224, 224)
    for name in tqdm(list_backbones(pattern), desc="backbones", file=sys.stderr):
        backbone = create_backbone(name).eval()
        info = backbone.feature_info
        latency = f"{measure_latency_ms(backbone, image, repeats):.1f}" if repeats else "-"
        paper = get_backbone_entry(name).paper
        rows.append(
            [
                f"`{name}`",
                f"{count_params(backbone) / 1e6:.2f}",
                f"{count_macs(backbone, image) / 1e6:.0f}",
                ", ".join(map(str, info.channels)),
                ", ".join(map(str, info.strides)),
                latency,
                paper,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pattern", default="*", help="fnmatch pattern of backbone names")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per backbone (0: skip latency)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = ["backbone", "params (M)", "MACs@224 (M)", "channels", "strides", "CPU ms@224", "paper"]
    rows = backbone_rows(args.pattern, args.repeats)
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    cpu = platform.processor() or platform.machine()
    print(
        f"\nFeature extractors at output stride 32 (classifier removed), default variant. Latency: batch 1, "
        f"eval, median of {args.repeats} runs, {args.threads} thread(s), {cpu}, torch {torch.__version__}."
    )


if __name__ == "__main__":
    main()
