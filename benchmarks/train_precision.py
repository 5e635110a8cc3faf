"""One CPU training step (forward, loss, backward, optimizer) in fp32 and in bf16 autocast, round-robin.

What `--trainer.precision bf16-mixed` does on a CPU is `torch.autocast("cpu", torch.bfloat16)` around
the step; this measures that step for each task's default network on its synthetic data, alternating
fp32 and bf16 so that load from other processes falls on both alike. Prints the median ms per step.

    OMP_NUM_THREADS=1 python benchmarks/train_precision.py --rounds 5 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule
from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.module import DetectionModule
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule

TASKS = {
    "depth": (DepthModule, {}, DepthDataModule, {}),
    "segmentation": (SegmentationModule, {"num_classes": 4}, SegmentationDataModule, {}),
    "detection": (DetectionModule, {"num_classes": 4}, DetectionDataModule, {}),
}


def step_fn(module, batch, optimizer, bf16: bool):
    """One training step; returns its loss (float32)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    return loss.detach()


def main() -> None:
    """Time each task's step in both precisions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per precision (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, torch {torch.__version__}")
    for name in args.tasks:
        module_cls, module_kw, data_cls, data_kw = TASKS[name]
        module = module_cls(**module_kw)
        module.log = lambda *a, **k: None  # no trainer: logging is a no-op here
        module.train()
        data = data_cls(synthetic_train_size=args.batch, batch_size=args.batch, **data_kw)
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
        times: dict[bool, list[float]] = {False: [], True: []}
        losses: dict[bool, float] = {}
        for i in range(args.rounds + 2):
            for bf16 in (False, True):
                start = time.perf_counter()
                loss = step_fn(module, batch, optimizer, bf16)
                elapsed = time.perf_counter() - start
                if i >= 2:
                    times[bf16].append(elapsed)
                losses[bf16] = float(loss)
                assert torch.isfinite(loss), f"{name}: non-finite loss in {'bf16' if bf16 else 'fp32'}"
        fp32, bf16 = (statistics.median(times[k]) * 1000 for k in (False, True))
        print(
            f"{name:13s} fp32 {fp32:8.1f} ms  bf16 {bf16:8.1f} ms  bf16/fp32 {bf16 / fp32:5.2f}  "
            f"(last losses {losses[False]:.4f} / {losses[True]:.4f})"
        )


if __name__ == "__main__":
    main()
