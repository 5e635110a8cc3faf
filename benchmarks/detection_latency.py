"""Latency of our SSDLite on mobilenet_v3_large (torchvision's configuration) vs torchvision's SSDLite320.

Both are the same architecture: MobileNetV3-Large with the reduced tail, C4 expansion + last-layer taps,
the same extras, predictors and 6 default boxes per location (3.44M parameters), here with the same
weights (`tasks.detection.torchvision_weights`).

Same input, same threads, one process: eval forward + post-processing at batch 1 and 8, and one
training step (forward, loss, backward, SGD step) at batch 8. Median of `--repeats` runs after warm-up,
ours and torchvision's timed alternately.

    python benchmarks/detection_latency.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _torchvision_pairs import ours_ssdlite_in_torchvision_config
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones.complexity import count_params
from heads.ssdlite import postprocess
from tasks.detection.losses import ssd_loss
from tasks.detection.torchvision_weights import load_torchvision_ssdlite

SIZE = 320


def _paired_median_ms(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median ms of each, timed alternately so that load from other processes hits both alike."""
    ours(), theirs()  # warm-up (allocations, default-box cache)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def _targets(batch: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=g) * 200
        out.append(
            {
                "boxes": torch.cat([xy, xy + 40 + torch.rand(3, 2, generator=g) * 60], 1),
                "labels": torch.randint(1, 91, (3,), generator=g),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = ours_ssdlite_in_torchvision_config(  # the reduced tail: the last stage at half width
        score_thresh=0.001, nms_thresh=0.55, topk_candidates=300, detections_per_img=300
    )
    theirs = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)  # the published configuration
    # Identical weights: both predict the same offsets and scores for every default box, so their
    # post-processing does the same work (random weights of each would give NMS different workloads).
    load_torchvision_ssdlite(ours, theirs.state_dict())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def ours_eval(x):
        with torch.inference_mode():
            images = (x - mean) / std  # the normalisation our data pipeline does, timed for fairness
            reg, logits = ours(images)
            return postprocess(
                reg,
                logits,
                ours.head.default_boxes((SIZE, SIZE)),
                (SIZE, SIZE),
                score_thresh=0.001,
                nms_thresh=0.55,
                topk_candidates=300,
                detections_per_img=300,
            )

    def theirs_eval(x):
        with torch.inference_mode():
            return theirs(list(x))

    rows = []
    for batch in (1, 8):
        x = torch.rand(batch, 3, SIZE, SIZE)
        ours.eval()
        theirs.eval()
        rows.append(
            (
                f"eval forward + post-processing, batch {batch}",
                *_paired_median_ms(lambda x=x: ours_eval(x), lambda x=x: theirs_eval(x), args.repeats),
            )
        )

    x, targets = torch.rand(8, 3, SIZE, SIZE), _targets(8)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)

    def ours_step():
        reg, logits = ours((x - mean) / std)
        loss = ssd_loss(reg, logits, targets, ours.head.default_boxes((SIZE, SIZE)))["loss"]
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    def theirs_step():
        losses = theirs(list(x), targets)
        opt_theirs.zero_grad()
        sum(losses.values()).backward()
        opt_theirs.step()

    ours.train()
    theirs.train()
    rows.append(("training step, batch 8", *_paired_median_ms(ours_step, theirs_step, args.repeats)))

    print(f"threads={args.threads} input={SIZE}x{SIZE} repeats={args.repeats} (median ms)")
    print(f"parameters: ours {count_params(ours) / 1e6:.2f}M, torchvision {count_params(theirs) / 1e6:.2f}M")
    print("| measurement | ours (ms) | torchvision (ms) | ours / torchvision |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
