"""Which smp architectures and timm paths work with which backbone: runs them all, prints a markdown table.

    python -m tools.compat_table                  # every backbone, every configuration (minutes)
    python -m tools.compat_table --quick          # one configuration per cell
    python -m tools.compat_table --backbones mobilenet_v2 shufflenet_v2 --archs Unet DPT

Each cell builds the smp model (random weights), runs forward and backward on a batch of 2 small
images and checks the output shape, for every encoder depth (3, 4, 5), output stride (8 and 16
where the architecture takes one) and input channels (3, 1, 4) that the architecture allows.
A progress bar goes to stderr, the table to stdout (the README's table is this output).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

import backbones.dropin  # noqa: F401  (the explicit line: registers the lw- smp encoders and lw_ timm models)
from backbones import list_backbones
from tools.readme import replace_generated_block

DEPTHS = (3, 4, 5)
IN_CHANNELS = (3, 1, 4)
CLASSES = 3


@dataclass(frozen=True)
class Architecture:
    """How to build one smp architecture small, and what it accepts.

    Attributes:
        name: smp class name.
        output_strides: Values of `encoder_output_stride` it takes; (None,) when it has no such argument.
        timm_only: smp accepts only `tu-` (timm) encoders, so ours go in as `tu-lw_<name>`.
    """

    name: str
    output_strides: tuple[int | None, ...] = (None,)
    timm_only: bool = False

    def kwargs(self, depth: int) -> dict:
        """Small decoder sizes (the test is about the encoder) for a given encoder depth."""
        small = {
            "Unet": dict(decoder_channels=(32, 16, 16, 8, 8)[:depth]),
            "UnetPlusPlus": dict(decoder_channels=(32, 16, 16, 8, 8)[:depth]),
            "MAnet": dict(decoder_channels=(32, 16, 16, 8, 8)[:depth], decoder_pab_channels=16),
            "Linknet": {},
            # FPN's decoder works at the stride of the 4th-deepest map: 4 at depth 5, the input's at depth 3.
            "FPN": dict(decoder_pyramid_channels=32, decoder_segmentation_channels=32, upsampling=2 ** (depth - 3)),
            "PSPNet": dict(psp_out_channels=32, upsampling=2**depth),
            "PAN": dict(decoder_channels=32),
            "DeepLabV3": dict(decoder_channels=32),
            "DeepLabV3Plus": dict(decoder_channels=32),
            "UPerNet": dict(decoder_channels=32),
            "Segformer": dict(decoder_segmentation_channels=32),
            "DPT": dict(
                decoder_readout="ignore", decoder_intermediate_channels=(16,) * depth, decoder_fusion_channels=16
            ),
        }
        return small[self.name]

    def min_size(self, depth: int, output_stride: int | None) -> int:
        """Smallest square input the tests use: 64, or what PAN's pyramid pooling needs (8 deepest pixels)."""
        deepest = min(output_stride or 32, 2**depth)
        return max(64, 8 * deepest) if self.name == "PAN" else 64


ARCHITECTURES = (
    Architecture("Unet"),
    Architecture("UnetPlusPlus"),
    Architecture("MAnet"),
    Architecture("Linknet"),
    Architecture("FPN"),
    Architecture("PSPNet"),
    Architecture("PAN", output_strides=(16, 32)),
    Architecture("DeepLabV3", output_strides=(8, 16)),
    Architecture("DeepLabV3Plus", output_strides=(8, 16)),
    Architecture("UPerNet"),
    Architecture("Segformer"),
    Architecture("DPT", timm_only=True),
)
ARCHITECTURE_NAMES = tuple(a.name for a in ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The Architecture of an smp class name, or a ValueError listing them."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise ValueError(f"unknown smp architecture '{name}'; choose from {', '.join(ARCHITECTURE_NAMES)}")


def encoder_name(backbone: str, arch: Architecture) -> str:
    """The smp encoder name of a backbone for an architecture (`tu-lw_<name>` where smp wants timm)."""
    return f"tu-lw_{backbone}" if arch.timm_only else f"lw-{backbone}"


def build_model(
    backbone: str,
    arch: str | Architecture,
    *,
    depth: int = 5,
    output_stride: int | None = None,
    in_channels: int = 3,
) -> torch.nn.Module:
    """A small smp model of an architecture with a litedense encoder and random weights.

    Args:
        backbone: Registered backbone name.
        arch: smp architecture (class name or Architecture).
        depth: Encoder depth.
        output_stride: `encoder_output_stride`, for the architectures that take it.
        in_channels: Input channels.

    Returns:
        The smp model.
    """
    import segmentation_models_pytorch as smp

    arch = get_architecture(arch) if isinstance(arch, str) else arch
    kwargs = dict(arch.kwargs(depth), encoder_depth=depth, in_channels=in_channels, classes=CLASSES)
    if output_stride is not None:
        kwargs["encoder_output_stride"] = output_stride
    return getattr(smp, arch.name)(encoder_name=encoder_name(backbone, arch), encoder_weights=None, **kwargs)


def check_combination(
    backbone: str,
    arch: str | Architecture,
    *,
    depth: int = 5,
    output_stride: int | None = None,
    in_channels: int = 3,
    size: int | None = None,
    batch: int = 2,
) -> None:
    """Forward and backward one small batch through an smp model with our encoder.

    Raises:
        AssertionError: Wrong output shape or no gradient reaching the encoder.
        Exception: Whatever building or running the model raised.
    """
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    size = size or arch.min_size(depth, output_stride)
    model = build_model(backbone, arch, depth=depth, output_stride=output_stride, in_channels=in_channels)
    model.train()
    x = torch.randn(batch, in_channels, size, size)
    out = model(x)  # (N, CLASSES, size, size)
    assert out.shape == (batch, CLASSES, size, size), f"output shape {tuple(out.shape)}"
    out.square().mean().backward()
    # Levels deeper than `depth` may exist unused in the backbone, so only ask that gradients reach it.
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"


def configurations(arch: Architecture, full: bool = True) -> list[dict]:
    """The (depth, output_stride, in_channels) settings a cell runs: all of them, or the default one."""
    if not full:
        return [dict(depth=5, output_stride=arch.output_strides[0], in_channels=3)]
    settings = [dict(depth=d, output_stride=s, in_channels=3) for d in DEPTHS for s in arch.output_strides]
    settings += [dict(depth=5, output_stride=arch.output_strides[0], in_channels=c) for c in IN_CHANNELS[1:]]
    return settings


def check_timm(backbone: str, size: int = 64) -> None:
    """`timm.create_model("lw_<name>", features_only=True, output_stride=16, out_indices=(1, 2, 3, 4))`."""
    import timm

    model = timm.create_model(f"lw_{backbone}", features_only=True, output_stride=16, out_indices=(1, 2, 3, 4))
    features = model(torch.randn(2, 3, size, size))
    assert model.feature_info.reduction() == [4, 8, 16, 16], model.feature_info.reduction()
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    assert [f.shape[-1] for f in features] == [-(-size // r) for r in model.feature_info.reduction()]


def run_matrix(
    backbone_names: Iterable[str],
    archs: Sequence[Architecture] = ARCHITECTURES,
    full: bool = True,
    progress: bool = True,
) -> dict[tuple[str, str], str]:
    """Run every cell; a cell's value is "ok" or the first failure's one-line description.

    Args:
        backbone_names: Registered backbones (rows).
        archs: smp architectures (columns); "timm" is always added as a column.
        full: Every configuration per cell, or only the default one.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        (backbone, column) -> "ok" or "<setting>: <error>".
    """
    from tqdm import tqdm

    backbone_names = list(backbone_names)
    jobs = [(b, "timm", {}) for b in backbone_names]
    jobs += [(b, a.name, s) for b in backbone_names for a in archs for s in configurations(a, full)]
    results: dict[tuple[str, str], str] = {}
    for backbone, column, setting in tqdm(jobs, desc="compat", file=sys.stderr, disable=not progress):
        if results.get((backbone, column), "ok") != "ok":
            continue  # the cell already failed; its first failure is what the table shows
        try:
            if column == "timm":
                check_timm(backbone)
            else:
                check_combination(backbone, column, **setting)
            results[(backbone, column)] = "ok"
        except Exception as err:  # the table records any failure rather than stopping
            label = ", ".join(f"{k}={v}" for k, v in setting.items())
            results[(backbone, column)] = f"{label}: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
            if progress:
                traceback.print_exc(limit=-3, file=sys.stderr)
    return results


def to_markdown(
    results: dict[tuple[str, str], str], archs: Sequence[Architecture] = ARCHITECTURES, full: bool = True
) -> str:
    """The results as a markdown table (✓ / ✗ per cell) followed by the failures' descriptions."""
    rows = sorted({b for b, _ in results})
    columns = [a.name for a in archs] + ["timm"]
    header = ["backbone"] + [f"{c}*" if c == "DPT" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    failures = []
    for row in rows:
        cells = []
        for column in columns:
            value = results.get((row, column))
            if value is None:
                cells.append("")
            elif value == "ok":
                cells.append("✓")
            else:
                cells.append("✗")
                failures.append(f"- `{row}` × {column}: {value}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    settings = (
        "encoder depth 3, 4 and 5, "
        "`encoder_output_stride` 8/16 (DeepLabV3, DeepLabV3Plus) or 16/32 (PAN), and `in_channels` 1, 3 and 4"
        if full
        else "each architecture's default encoder depth (5) and output stride, 3 input channels (`--quick`)"
    )
    notes = [
        "",
        f"✓: forward + backward pass (batch 2, 64×64; PAN 8× its output stride) for {settings}; timm: "
        "`timm.create_model('lw_<name>', features_only=True, output_stride=16, out_indices=(1, 2, 3, 4))`.",
        "*DPT takes only timm encoders in smp: use `encoder_name='tu-lw_<name>'`.",
    ]
    return "\n".join(lines + notes + ([""] + failures if failures else []))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: run the matrix and print the markdown table."""
    parser = argparse.ArgumentParser(prog="python -m tools.compat_table", description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=None, help="backbone names (default: all registered)")
    parser.add_argument("--archs", nargs="+", default=None, choices=ARCHITECTURE_NAMES, help="smp architectures")
    parser.add_argument("--quick", action="store_true", help="only the default configuration per cell")
    parser.add_argument("--readme", default=None, help="also write the table into this README's compat-table block")
    args = parser.parse_args(argv)
    names = args.backbones or list_backbones()
    unknown = [n for n in names if n not in list_backbones()]
    if unknown:
        parser.error(f"unknown backbone(s) {unknown}; registered: {', '.join(list_backbones())}")
    archs = [get_architecture(a) for a in args.archs] if args.archs else list(ARCHITECTURES)
    torch.manual_seed(0)
    results = run_matrix(names, archs, full=not args.quick)
    table = to_markdown(results, archs, full=not args.quick)
    print(table)
    if args.readme:
        replace_generated_block(args.readme, "compat-table", table)
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
