"""What our Backbone wrapper costs over the timm model it wraps: `python benchmarks/backbone_overhead.py`.

For each timm-wrapped backbone, the wrapped timm feature model (`backbone.model`) and our backbone run
interleaved on the same input and threads; the table gives both medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from tqdm import tqdm

from backbones import create_backbone, list_backbones


def interleaved_medians(
    a: torch.nn.Module, b: torch.nn.Module, image: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median ms of a(image) and b(image), alternating so both see the same machine load."""
    times_a, times_b = [], []
    with torch.inference_mode():
        for _ in range(3):
            a(image), b(image)
        for i in range(repeats):
            for module, times in ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a)):
                start = time.perf_counter()
                module(image)
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = torch.randn(args.batch, 3, args.size, args.size)
    print("| backbone | timm model (ms) | ours (ms) | ours / timm |")
    print("|---|---|---|---|")
    ratios = []
    for name in tqdm(list_backbones(args.pattern), file=sys.stderr):
        backbone = create_backbone(name).eval()
        timm_model = getattr(backbone, "model", None)
        if timm_model is None or not type(timm_model).__module__.startswith("timm"):
            continue  # our own implementation: nothing wrapped
        timm_ms, ours_ms = interleaved_medians(timm_model, backbone, image, args.repeats)
        ratios.append(ours_ms / timm_ms)
        print(f"| `{name}` | {timm_ms:.2f} | {ours_ms:.2f} | {ours_ms / timm_ms:.3f} |")
    if ratios:
        print(
            f"\ngeometric mean ratio {statistics.geometric_mean(ratios):.3f} over {len(ratios)} backbones; "
            f"batch {args.batch}, {args.size}x{args.size}, {args.threads} thread(s), {args.repeats} runs each"
        )


if __name__ == "__main__":
    main()
