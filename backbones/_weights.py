"""Loading weights safely: local files without unpickling objects, checked against the architecture."""

from __future__ import annotations

import fnmatch
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

# Keys that wrap a state dict in the checkpoints people publish (training scripts, Lightning, EMA).
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "params")
# Prefixes added by DataParallel / DistributedDataParallel / torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the architecture it is loaded into."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a `.pth`/`.pt`/`.bin`/`.tar` or `.safetensors` file, never unpickling objects.

    Checkpoints that wrap the weights (`{"state_dict": ...}`, `{"model": ...}`, EMA) are unwrapped and
    DataParallel `module.` prefixes removed.

    Args:
        path: Local file.

    Returns:
        Parameter name -> tensor.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a state dict, or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            checkpoint: object = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(f"{path} is not a valid safetensors file: {err}") from err
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} holds pickled Python objects, which litedense refuses to load (weights_only=True). "
                f"Re-save it as a plain state dict: torch.save(model.state_dict(), 'weights.pth'). ({err})"
            ) from err
        except (RuntimeError, EOFError) as err:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from err
    for _ in range(3):  # some checkpoints nest, e.g. {"model": {"state_dict": ...}}
        if isinstance(checkpoint, Mapping):
            wrapped = next((k for k in _WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)), None)
            if wrapped is None:
                break
            checkpoint = checkpoint[wrapped]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state_dict = {}
    for key, value in checkpoint.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state_dict[key] = value
    return state_dict


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
        parts = [f"{source} does not fit {architecture}; is it a checkpoint for another network or width?"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_summarize(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_summarize(unexpected)}")
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
        f"create_backbone(..., pretrained='/path/to/weights.pth' or '.safetensors')."
    )
