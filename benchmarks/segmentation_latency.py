"""Eval-forward latency of our segmentation models against torchvision and smp, same input and threads.

Compares, on MobileNetV3-Large at output stride 16, 21 classes (logits upsampled to the input size):
- ours "deeplabv3" in torchvision's configuration (rates 12/24/36, 3x3 conv after ASPP) vs
  torchvision `deeplabv3_mobilenet_v3_large` (aux head off) and smp `DeepLabV3` with the same timm
  encoder ("tu-mobilenetv3_large_100", output stride 16);
- ours "lraspp" vs torchvision `lraspp_mobilenet_v3_large`;
- ours "deeplabv3_mobile" (the MobileNetV2 paper's head) for reference;
- ours "deeplabv3" and "lraspp" in their inference form (`backbones.fuse_for_inference(...,
  channels_last=True)`: batch norm folded, NHWC), the form to deploy (docs/speed.md).

Models are timed round-robin (one call of each per round) so that load from other processes hits
all of them alike; the table gives the median and the ratio to the torchvision model of the same
architecture.

    python benchmarks/segmentation_latency.py --size 512 --threads 2 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import segmentation_models_pytorch as smp
import torch
from _torchvision_pairs import TorchvisionSegmentationNetwork
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

from backbones import fuse_for_inference
from backbones.complexity import count_params
from tasks.segmentation.module import SegmentationModule


def build_models(num_classes: int) -> dict[str, tuple[str, nn.Module]]:
    """name -> (architecture group, model in eval mode)."""
    torchvision_deeplab_head = {"rates": [12, 24, 36], "dropout": 0.5, "extra_conv": True}

    def ours(head: str, head_kwargs: dict | None = None) -> nn.Module:
        return SegmentationModule(
            num_classes=num_classes, backbone="mobilenet_v3_large", head=head, head_kwargs=head_kwargs
        )

    models = {
        "ours deeplabv3": ("deeplabv3", ours("deeplabv3", torchvision_deeplab_head)),
        "torchvision deeplabv3": (
            "deeplabv3",
            TorchvisionSegmentationNetwork(
                deeplabv3_mobilenet_v3_large(
                    weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
                )
            ),
        ),
        "smp DeepLabV3": (
            "deeplabv3",
            smp.DeepLabV3(
                "tu-mobilenetv3_large_100", encoder_weights=None, encoder_output_stride=16, classes=num_classes
            ),
        ),
        "ours lraspp": ("lraspp", ours("lraspp")),
        "torchvision lraspp": (
            "lraspp",
            TorchvisionSegmentationNetwork(
                lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
            ),
        ),
        "ours deeplabv3_mobile": ("deeplabv3_mobile", ours("deeplabv3_mobile")),
    }
    for name in ("ours deeplabv3", "ours lraspp"):  # the inference form (docs/speed.md): same outputs, BN folded
        group, model = models[name]
        models[f"{name}, inference form"] = (group, fuse_for_inference(model.deployable().eval(), channels_last=True))
    return {name: (group, model.eval()) for name, (group, model) in models.items()}


@torch.inference_mode()
def time_round_robin(models: dict[str, nn.Module], x: Tensor, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per forward of each model, `rounds` samples each, interleaved."""
    for model in models.values():
        for _ in range(warmup):
            model(x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            out = model(x)
            times[name].append(time.perf_counter() - start)
            assert out.shape[-2:] == x.shape[-2:]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="square input side")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    built = build_models(args.classes)
    models = {name: model for name, (_, model) in built.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, input {args.size}x{args.size}, eval, inference_mode")
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size)
        times = time_round_robin(models, x, args.rounds, args.warmup)
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"\nbatch {batch}")
        print("| model | params (M) | median ms | ratio to torchvision |\n|---|---|---|---|")
        for name, (group, model) in built.items():
            reference = medians.get(f"torchvision {group}")
            ratio = f"{medians[name] / reference:.2f}x" if reference else "-"
            print(f"| {name} | {count_params(model) / 1e6:.2f} | {1000 * medians[name]:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
