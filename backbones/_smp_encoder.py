"""Every registered backbone as a segmentation-models-pytorch encoder named `lw-<name>`.

>>> import backbones, segmentation_models_pytorch as smp
>>> model = smp.DeepLabV3Plus(encoder_name="lw-shufflenet_v2", encoder_weights=None, classes=12)
>>> model = smp.Unet("lw-mobilenet_v2", encoder_weights=None, width_mult=0.5)  # family option

The names are added to smp's `encoders` dict (so `smp.encoders.get_encoder_names()` lists them), and
smp's `get_encoder` is wrapped, in `segmentation_models_pytorch.encoders` and in every model module
that imported it. The wrapper is needed because smp 0.6 drops an architecture's `**kwargs` for
non-timm encoders (so family options would silently vanish) and fetches `encoder_weights` from its
own Hugging Face repos (ours live elsewhere). Every other name goes to smp's function unchanged.

Our encoder dilates itself (output_stride goes to `create_backbone`): smp's `make_dilated` would
replace strides in modules it does not know, so ours rebuilds the backbone at the new stride instead.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
from pathlib import Path

import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import Tensor, nn

from backbones._registry import get_backbone_entry, list_backbones
from backbones._timm_registration import TIMM_PREFIX, LiteDenseTimmModel, canonical_levels, check_timm_name

SMP_PREFIX = "lw-"
MAX_DEPTH = 5
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".safetensors")


class UnknownEncoderError(KeyError, ValueError):
    """An smp encoder name that exists nowhere (a KeyError like smp's own, readable like a ValueError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _pretrained_from_weights(encoder_name: str, weights: object) -> bool | str | os.PathLike:
    """Map smp's `encoder_weights` to our `pretrained`."""
    if weights is None or weights is False:
        return False
    if weights is True or weights == "imagenet":
        return True
    if isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (Path(weights).suffix in _WEIGHT_SUFFIXES or Path(weights).is_file())
    ):
        return weights
    raise ValueError(
        f"encoder_weights={weights!r} is not available for '{encoder_name}': use None (random init), "
        f"'imagenet' (the original ImageNet weights) or the path of a local .pth / .safetensors file"
    )


class LiteDenseEncoder(nn.Module):
    """A litedense backbone as an smp encoder.

    `forward` returns `depth + 1` maps: the input (smp's convention), then the canonical levels at
    strides 2, 4, ..., 2**depth, with the deepest strides replaced by dilation at `output_stride`.
    A backbone without a stride-2 level gets a 0-channel placeholder there, as smp does for
    transformer encoders.

    Args:
        name: Registered backbone name (without the `lw-` prefix).
        in_channels: Input channels.
        depth: Number of levels, 1 to 5 (smp architectures use 3 to 5).
        output_stride: 32, 16 or 8.
        pretrained: False, True (ImageNet weights) or a local weights file.
        **family_kwargs: Family options of the backbone (width_mult, groups, ...).
    """

    # A python list of maps in forward and registry-built modules: not scriptable, but traceable.
    _is_torch_scriptable = False
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        pretrained: bool | str | os.PathLike = False,
        **family_kwargs,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"encoder_depth for '{SMP_PREFIX}{name}' must be 1 to {MAX_DEPTH}, got {depth!r}")
        levels, natural = canonical_levels(name, **family_kwargs)
        wanted = [2**k for k in range(1, depth + 1)]
        self._placeholder = natural.strides[0] > 2  # e.g. a net whose first tap is at stride 4
        missing = [s for s in wanted[int(self._placeholder) :] if s not in natural.strides]
        if missing:
            raise ValueError(
                f"'{SMP_PREFIX}{name}' has no feature level at stride(s) {missing} (its levels are at strides "
                f"{natural.strides}), so it cannot serve encoder_depth={depth}"
            )
        self.name = name
        # The smp class this encoder serves (set by get_encoder from its caller), for size checks.
        self.architecture: str | None = None
        self._family_kwargs = dict(family_kwargs)
        self._depth, self._in_channels, self._output_stride = depth, in_channels, output_stride
        self._timm_indices = [natural.strides.index(s) for s in wanted if s in natural.strides]
        self.model = self._build(pretrained, in_channels, output_stride)
        self._out_channels = [in_channels] + [0] * self._placeholder + list(self.model.feature_info.channels())

    def _build(self, pretrained: bool | str | os.PathLike, in_channels: int, output_stride: int) -> LiteDenseTimmModel:
        return LiteDenseTimmModel(
            self.name,
            pretrained=pretrained,
            features_only=True,
            out_indices=self._timm_indices,
            output_stride=output_stride,
            in_chans=in_channels,
            **self._family_kwargs,
        )

    @property
    def out_channels(self) -> list[int]:
        """Channels of each returned map, the input's first."""
        return self._out_channels

    @property
    def output_stride(self) -> int:
        """Stride of the deepest returned map."""
        return min(self._output_stride, 2**self._depth)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Extract smp's list of maps.

        Args:
            x: Images, (N, in_channels, H, W).

        Returns:
            [x, f_2, f_4, ...]: f_s is (N, C_s, ceil(H / s'), ceil(W / s')) with s' = min(s, output_stride).
        """
        if x.ndim != 4 or (x.shape[1] != self._in_channels and not torch.jit.is_tracing()):
            raise ValueError(
                f"encoder '{SMP_PREFIX}{self.name}' expects images of shape (N, {self._in_channels}, H, W), got "
                f"{tuple(x.shape)}; set the model's in_channels to match your images"
            )
        self.check_input_size(x.shape[-2], x.shape[-1])
        features = self.model(x)
        if self._placeholder:
            n, _, h, w = x.shape
            features = [x.new_empty(n, 0, (h + 1) // 2, (w + 1) // 2)] + features  # (N, 0, H/2, W/2)
        return [x] + features

    def check_input_size(self, height: int, width: int) -> None:
        """Reject sizes the architecture would fail on deep inside smp (smp checks divisibility itself).

        Raises:
            ValueError: The image is too small for the architecture.
        """
        if self.architecture == "PAN":
            # PAN's feature pyramid attention max-pools the deepest map three times by 2.
            need = 8 * self.output_stride
            if height < need or width < need:
                raise ValueError(
                    f"PAN with encoder '{SMP_PREFIX}{self.name}' (deepest stride {self.output_stride}) needs images of "
                    f"at least {need}x{need} pixels: its pyramid attention pools the deepest map three times by 2; "
                    f"got {height}x{width}. Use larger images, encoder_output_stride=16 or a smaller encoder_depth."
                )

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Rebuild the stem for other input channels (smp's hook), keeping and adapting the weights."""
        if in_channels == self._in_channels:
            return
        self._replace_model(in_channels, self._output_stride, adapt=pretrained)
        self._in_channels = in_channels
        self._out_channels[0] = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """Rebuild at a new output stride (smp's dilation hook); the weights are unchanged."""
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output stride must be 8, 16 or 32, got {output_stride}")
        if output_stride != self._output_stride:
            self._replace_model(self._in_channels, output_stride, adapt=True)
            self._output_stride = output_stride

    def _replace_model(self, in_channels: int, output_stride: int, adapt: bool) -> None:
        from timm.models import adapt_input_conv

        old = self.model.state_dict()
        model = self._build(False, in_channels, output_stride)
        new = model.state_dict()
        for key, value in old.items():
            if key in new and new[key].shape != value.shape:
                # Only the stem convolution changes shape with in_channels; adapt it the way timm does.
                old[key] = adapt_input_conv(in_channels, value) if adapt and value.ndim == 4 else new[key]
        model.load_state_dict(old)
        self.model = model


def create_smp_encoder(
    encoder_name: str,
    in_channels: int = 3,
    depth: int = 5,
    weights: object = None,
    output_stride: int = 32,
    **kwargs,
) -> LiteDenseEncoder:
    """Build the encoder of an `lw-<name>` smp name with smp's `get_encoder` arguments.

    Args:
        encoder_name: "lw-<name>".
        in_channels: Input channels.
        depth: Encoder depth (1 to 5).
        weights: None, "imagenet" / True, or a local weights file.
        output_stride: 32, 16 or 8.
        **kwargs: The architecture's leftover keyword arguments: the backbone's family options.

    Returns:
        The encoder.

    Raises:
        UnknownEncoderError: No backbone has that name.
        ValueError: An option the backbone does not take, or a depth / output stride it cannot use.
        RuntimeError: ImageNet weights cannot be fetched (e.g. offline).
    """
    name = encoder_name[len(SMP_PREFIX) :]
    if name not in list_backbones():
        known = [SMP_PREFIX + n for n in list_backbones()]
        close = difflib.get_close_matches(encoder_name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownEncoderError(f"unknown smp encoder '{encoder_name}'{hint} Available: {', '.join(known)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # smp prunes None options too
    stray = [k for k in kwargs if "output_stride" in k or k == "depth"]
    if stray:
        raise ValueError(
            f"{stray} reached the encoder '{encoder_name}' as unknown options: this smp architecture does not "
            f"take them (encoder_output_stride exists only for DeepLabV3, DeepLabV3Plus and PAN)"
        )
    entry = get_backbone_entry(name)
    unknown = [k for k in kwargs if k not in entry.family_options]
    if unknown:
        accepted = ", ".join(entry.family_options) or "none"
        raise ValueError(
            f"{unknown} is neither an argument of this smp architecture nor a family option of '{encoder_name}' "
            f"(its family options: {accepted})"
        )
    pretrained = _pretrained_from_weights(encoder_name, weights)
    try:
        return LiteDenseEncoder(name, in_channels, depth, output_stride, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if pretrained is not True:
            raise
        raise RuntimeError(
            f"{err} With smp, pass that file as encoder_weights='/path/to/weights.pth', or use "
            f"encoder_weights=None for random initialization."
        ) from err


def _wrap_get_encoder(original):
    @functools.wraps(original)
    def get_encoder(name, in_channels=3, depth=5, weights=None, output_stride=32, **kwargs):
        if isinstance(name, str) and name.startswith(SMP_PREFIX):
            encoder = create_smp_encoder(name, in_channels, depth, weights, output_stride, **kwargs)
            # smp models call get_encoder from their __init__: their class decides the input-size rules.
            caller = sys._getframe(1).f_locals.get("self")
            if isinstance(caller, SegmentationModel):
                encoder.architecture = type(caller).__name__
            return encoder
        if isinstance(name, str) and name.startswith("tu-" + TIMM_PREFIX):
            check_timm_name(name[3:])
        try:
            return original(name, in_channels, depth, weights, output_stride, **kwargs)
        except KeyError as err:
            if not str(err).strip("'\"").startswith("Wrong encoder name"):
                raise
            close = difflib.get_close_matches(str(name), smp_encoders.get_encoder_names(), n=3, cutoff=0.6)
            if not close:
                raise
            raise UnknownEncoderError(
                f"unknown smp encoder '{name}'; did you mean {' or '.join(repr(c) for c in close)}? "
                f"(smp.encoders.get_encoder_names() lists them all; timm models go by 'tu-<timm name>')"
            ) from err

    get_encoder._litedense_original = original
    return get_encoder


def register_smp_encoders() -> list[str]:
    """Add every backbone to smp's encoder table and route `lw-` names to us; safe to call again.

    Returns:
        The smp names added by this call.
    """
    added = []
    for name in list_backbones():
        key = SMP_PREFIX + name
        if key not in smp_encoders.encoders:
            # get_encoder_names() lists these; the wrapper builds them (the table path ignores kwargs).
            smp_encoders.encoders[key] = {
                "encoder": LiteDenseEncoder,
                "pretrained_settings": {},
                "params": {"name": name},
            }
            added.append(key)
    original = getattr(smp_encoders.get_encoder, "_litedense_original", smp_encoders.get_encoder)
    wrapped = _wrap_get_encoder(original)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(smp.__name__) and getattr(module, "get_encoder", None) is not None:
            current = module.get_encoder
            if current is original or getattr(current, "_litedense_original", None) is original:
                module.get_encoder = wrapped
    return added


__all__ = ["LiteDenseEncoder", "UnknownEncoderError", "create_smp_encoder", "register_smp_encoders"]
register_smp_encoders()
