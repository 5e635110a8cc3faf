"""Convert a checkpoint once to a safetensors file in the layout litedense loads.

    python -m backbones.convert mobilenet_v2-b0353104.pth mobilenet_v2.safetensors

The layout of SRC is recognised (see docs/weights.md) and its keys renamed to the layout of the
implementation we wrap (timm's for the timm families, the reference layout for our own nets), classifier
included. DST records the layout it came from, so what that layout needs (torchvision MobileNetV3's
BatchNorm eps, lukemelas EfficientNet's "same" padding) still applies when it is loaded:
`create_backbone(name, pretrained=DST)` gives the same features as `pretrained=SRC`. The file is written
atomically (a temporary file renamed onto DST).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from backbones._layouts import convert_state_dict, identify_architecture
from backbones._weights import CONVERTED_FROM_KEY, _load_file, _unwrap


def convert_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert SRC to a safetensors file DST in the layout litedense loads.

    Args:
        src: A checkpoint in any accepted layout (`.pth`, `.pt`, `.bin`, `.tar`, `.safetensors`).
        dst: The file to write; must end in `.safetensors`.

    Returns:
        A summary of what was detected and written.

    Raises:
        FileNotFoundError: SRC does not exist.
        ValueError: DST is not a `.safetensors` path, SRC is no checkpoint, its layout is unknown, or it
            fits none of litedense's backbones.
    """
    from safetensors.torch import save_file

    from tasks.common.files import atomic_path

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: the converted file is written as safetensors; name it <name>.safetensors")
    if not src.is_file():
        raise FileNotFoundError(f"weights file not found: {src}")
    checkpoint, metadata = _load_file(src)
    converted = convert_state_dict(_unwrap(checkpoint, src), str(src), strict=True)
    held = identify_architecture(converted.state_dict)
    if not held:
        raise ValueError(
            f"{src}: a {converted.layout.description} checkpoint, but its weights fit none of litedense's "
            f"backbones at any width (after conversion its first keys are {', '.join(list(converted.state_dict)[:6])})"
        )
    source = metadata.get(CONVERTED_FROM_KEY, converted.layout.name)  # a converted file keeps its origin
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    tensors = {k: v.detach().contiguous().clone() for k, v in converted.state_dict.items()}
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", CONVERTED_FROM_KEY: source})
    classifier = [k for k in tensors if k.startswith(("classifier.", "fc."))]
    return (
        f"{src}: layout {' > '.join(converted.layouts)} ({converted.layout.description}); holds {' or '.join(held)}\n"
        f"wrote {dst}: {len(tensors)} tensors in the {converted.layout.target} layout, "
        f"{'classifier included' if classifier else 'no classifier in the source'}; converted from {source}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m backbones.convert SRC DST`."""
    parser = argparse.ArgumentParser(prog="python -m backbones.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint in an accepted layout (torchvision, lukemelas, timm, litedense, ...)")
    parser.add_argument("dst", help="output .safetensors file")
    args = parser.parse_args(argv)
    try:
        print(convert_file(args.src, args.dst))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
