"""Loading weights safely: local files without unpickling objects, checked against the architecture."""

from __future__ import annotations

import fnmatch
import functools
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from backbones._layouts import (
    LAYOUTS,
    Converted,
    Layout,
    accepted_layouts,
    convert_state_dict,
    detect_layout,
    identify_architecture,
    unknown_layout_message,
)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class StateDict(dict):
    """A converted state dict that remembers its source layout and the file's own key names (for messages).

    Attributes:
        layout: The layout the file was in (None when unrecognised).
        original_keys: Converted key -> the key as stored in the file.
    """

    def __init__(self, tensors: Mapping[str, Tensor], layout: Layout | None, original_keys: Mapping[str, str]) -> None:
        super().__init__(tensors)
        self.layout, self.original_keys = layout, dict(original_keys)


# Keys that wrap a state dict in the checkpoints people publish (training scripts, Lightning, EMA).
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "params")
# Prefixes added by DataParallel / DistributedDataParallel / torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Safetensors metadata key in which `python -m backbones.convert` records the layout a file came from.
CONVERTED_FROM_KEY = "litedense.converted_from"


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the architecture it is loaded into."""


def _load_file(path: Path) -> tuple[object, dict[str, str]]:
    """The object a checkpoint file holds, and its safetensors metadata (empty for torch files)."""
    is_safetensors = path.suffix == ".safetensors"
    if not is_safetensors:
        with path.open("rb") as file:  # a safetensors file under another name: 8-byte header length, then JSON
            head = file.read(9)
        is_safetensors = len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")
    if is_safetensors:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = dict(file.metadata() or {})
            return load_file(str(path), device="cpu"), metadata
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{path} is not a valid safetensors file (truncated or corrupt?): {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as err:
        # weights_only refuses any global but tensors and containers, before calling it; name what it refused.
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused:
            raise ValueError(
                f"{path} holds pickled Python objects ({refused.group(1)}), which litedense refuses to load: "
                f"unpickling them could run arbitrary code (torch.load(weights_only=True) stopped before it). "
                f"Re-save it as a plain state dict: torch.save(model.state_dict(), 'weights.pth')."
            ) from err
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or another format)") from err
    except Exception as err:  # truncated zip (RuntimeError), empty file (EOFError), text (KeyError), ...
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or another format): "
            f"{type(err).__name__}: {str(err)[:200]}"
        ) from err


def _unwrap(checkpoint: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a checkpoint: wrappers (`state_dict`, `model`, EMA) and `module.` prefixes gone."""
    for _ in range(3):  # some checkpoints nest, e.g. {"model": {"state_dict": ...}}
        if isinstance(checkpoint, Mapping):
            wrapped = next((k for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
            if wrapped is None:
                break
            checkpoint = checkpoint[wrapped]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if not checkpoint:
        raise ValueError(f"{path} holds an empty state dict")
    state_dict = {}
    for key, value in checkpoint.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state_dict[key] = value
    return state_dict


def read_checkpoint(path: str | os.PathLike) -> Converted:
    """Read a checkpoint, recognise its layout and convert it to the layout litedense's nets load.

    Files written by `python -m backbones.convert` record the layout they were converted from (safetensors
    metadata), so what that layout needs (BatchNorm eps, "same" padding) still applies to them.

    Args:
        path: Local `.pth`/`.pt`/`.bin`/`.tar` or `.safetensors` file.

    Returns:
        The converted state dict (classifier included) and the layouts recognised.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a state dict, or holds pickled objects. A layout litedense does not
            recognise is returned unchanged (`layout` None); loading it fails in `load_checked`, which names
            its keys and lists the accepted layouts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    stat = path.stat()
    # A builder asks for the layout before it builds and loads after: read the file once, not twice.
    return _read_checkpoint_cached(str(path), str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _read_checkpoint_cached(shown: str, resolved: str, mtime_ns: int, size: int) -> Converted:
    """`read_checkpoint` of one file version (the key includes its mtime and size); tensors are shared."""
    path = Path(shown)
    checkpoint, metadata = _load_file(path)
    converted = convert_state_dict(_unwrap(checkpoint, path), shown, strict=False)
    source = metadata.get(CONVERTED_FROM_KEY)
    if source in LAYOUTS:
        layouts = (*converted.layouts, f"converted from {source}")
        converted = Converted(converted.state_dict, layouts, LAYOUTS[source], converted.original_keys)
    return converted


def read_state_dict(path: str | os.PathLike, *, convert: bool = True) -> dict[str, Tensor]:
    """Read a state dict from a `.pth`/`.pt`/`.bin`/`.tar` or `.safetensors` file, never unpickling objects.

    Checkpoints that wrap the weights (`{"state_dict": ...}`, `{"model": ...}`, EMA) are unwrapped and
    DataParallel `module.` prefixes removed. With `convert`, the layout is recognised and converted to the
    one litedense's nets load (torchvision and lukemelas files to timm's, litedense's own `model.` prefix
    removed; see `read_checkpoint` and docs/weights.md); keys of a layout it does not know stay as they are.

    Args:
        path: Local file.
        convert: Convert the layout (True) or return the keys as stored (False).

    Returns:
        Parameter name -> tensor.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a state dict, or holds pickled objects.
    """
    if convert:
        converted = read_checkpoint(path)
        return StateDict(converted.state_dict, converted.layout, converted.original_keys)  # a new dict per call
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return _unwrap(_load_file(path)[0], path)


def checkpoint_layout(pretrained: object) -> Layout | None:
    """The source layout of a `pretrained=` file (whose `bn_eps` / `padding` a builder must honour).

    Args:
        pretrained: What the user passed as `pretrained`.

    Returns:
        The layout for a local file, None for False / True (no file).
    """
    if pretrained in (False, True, None):
        return None
    return read_checkpoint(pretrained).layout  # type: ignore[arg-type]


def apply_layout_bn_eps(model: ModuleT, pretrained: object) -> ModuleT:
    """Give every BatchNorm of `model` the epsilon the `pretrained` file's weights were trained with.

    torchvision's MobileNetV3 normalises with eps 1e-3, timm's with 1e-5; the eps is no weight, so the
    family builder sets it after loading such a file (for other files and `pretrained=True` nothing changes).

    Args:
        model: The built (and loaded) network.
        pretrained: What the user passed as `pretrained`.

    Returns:
        `model`, changed in place.
    """
    layout = checkpoint_layout(pretrained)
    if layout is not None and layout.bn_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = layout.bn_eps
    return model


def _summarize(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_checked(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    architecture: str,
    ignore: Iterable[str] = (),
    rename: Callable[[str], str | None] | None = None,
    in_chans: int = 3,
    stem_keys: Iterable[str] = (),
) -> None:
    """Load a state dict into `model`, refusing one made for another architecture.

    Keys the model does not need but `ignore` names (the classifier, heads) are dropped; every other
    difference is an error that names the mismatching keys. When the model has `in_chans` != 3, the
    stem convolution weights named by `stem_keys` are adapted the way timm does (sum for 1 channel,
    repeat and rescale for more).

    Args:
        model: The module to load into.
        state_dict: Checkpoint keys in the layout of the reference implementation.
        source: Where the weights came from (a path or URL), for messages.
        architecture: What the model is, e.g. "mobilenet_v2 (width_mult=1.0)", for messages.
        ignore: fnmatch patterns of checkpoint keys to drop (classifier).
        rename: Maps a checkpoint key to the model's key, or None to drop it.
        in_chans: The model's input channels.
        stem_keys: Model keys of first-layer convolution weights to adapt to in_chans.

    Raises:
        WeightsMismatchError: Missing, unexpected or wrongly shaped keys.
    """
    from timm.models import adapt_input_conv

    ignore = tuple(ignore)
    stem_keys = set(stem_keys)
    expected = model.state_dict()
    loaded: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if any(fnmatch.fnmatchcase(key, p) for p in ignore):
            continue
        new_key = rename(key) if rename else key
        if new_key is None:
            continue
        loaded[new_key] = value
    # BatchNorm's num_batches_tracked is absent from many published checkpoints; it does not matter.
    missing = {k for k in expected if k not in loaded and not k.endswith("num_batches_tracked")}
    unexpected = set(loaded) - set(expected)
    for key in stem_keys & set(loaded):
        weight = loaded[key]
        if weight.ndim == 4 and key in expected and weight.shape[1] != expected[key].shape[1]:
            loaded[key] = adapt_input_conv(in_chans, weight)
    wrong_shape = {
        k: (tuple(loaded[k].shape), tuple(expected[k].shape))
        for k in set(loaded) & set(expected)
        if loaded[k].shape != expected[k].shape
    }
    if missing or unexpected or wrong_shape:
        held = identify_architecture(state_dict)
        if held:
            parts = [f"{source} does not fit {architecture}: it holds the weights of {' or '.join(held)}"]
        elif detect_layout(state_dict) is None:
            parts = [unknown_layout_message(state_dict, source), f"it does not fit {architecture}"]
        else:
            parts = [f"{source} does not fit {architecture}; is it a checkpoint for another network or width?"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_summarize(missing)}")
        if unexpected:
            # Name the keys as the file stores them (a converted file's keys were renamed on reading).
            stored = getattr(state_dict, "original_keys", {})
            parts.append(f"unexpected {len(unexpected)} key(s): {_summarize(stored.get(k, k) for k in unexpected)}")
        layout = getattr(state_dict, "layout", None)
        if layout is not None and layout.target != layout.name:
            parts.append(f"(the file is a {layout.description} checkpoint, read as {layout.target} keys)")
        if wrong_shape:
            shown = [f"{k} {a} vs expected {b}" for k, (a, b) in sorted(wrong_shape.items())[:8]]
            parts.append(f"{len(wrong_shape)} key(s) of the wrong shape: {'; '.join(shown)}")
        raise WeightsMismatchError("\n  ".join(parts))
    model.load_state_dict(loaded, strict=False)


def download_error(architecture: str, source: str, err: BaseException | None = None) -> RuntimeError:
    """The error raised when ImageNet weights cannot be fetched (offline, moved, no such variant).

    Args:
        architecture: What was asked for, e.g. "mobilenet_v2 (width_mult=1.0)".
        source: Where the weights live (hub id or URL).
        err: The underlying error.

    Returns:
        A RuntimeError whose message says where the weights are and how to pass a local file.
    """
    reason = f" ({type(err).__name__}: {err})" if err is not None else ""
    return RuntimeError(
        f"could not fetch the ImageNet weights of {architecture} from {source}{reason}. "
        f"If this machine is offline, download the file elsewhere and pass its path instead: "
        f"create_backbone(..., pretrained='/path/to/weights.pth' or '.safetensors'). A checkpoint you already "
        f"have loads directly if its layout is one of these (or convert it once to a safetensors file in the "
        f"layout we load: python -m backbones.convert SRC DST):\n{accepted_layouts()}"
    )
