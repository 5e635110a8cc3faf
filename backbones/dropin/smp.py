"""Every registered backbone as a segmentation-models-pytorch encoder named `lw-<name>`.

>>> import backbones.dropin, segmentation_models_pytorch as smp
>>> model = smp.DeepLabV3Plus(encoder_name="lw-shufflenet_v2", encoder_weights=None, classes=12)
>>> model = smp.Unet("lw-mobilenet_v2_050", encoder_weights=None)  # width_mult=0.5, a named variant

The names are entries of smp's encoder table, `segmentation_models_pytorch.encoders.encoders`, which is
how smp builds every encoder that is not a `tu-` one: `get_encoder` calls
`entry["encoder"](**entry["params"], depth=..., output_stride=...)`, then `set_in_channels` and
`make_dilated`; `get_encoder_names()` lists them. No smp function is replaced.

Family options: smp passes an architecture's extra keyword arguments only to `tu-` (timm) encoders and
drops them for table encoders (its own `resnet34` included). So each supported setting of a backbone's
family options is a named variant of its own (`lw-mobilenet_v2_050`, `lw-shufflenet_v1_g8_050`,
`lw-mobilenet_v3_large_reduced_tail`; `smp_variant_name` spells them), and any option, including
values without a name, goes through timm: `smp.Unet("tu-lw_mobilenet_v2", width_mult=0.5)`.

Weights: smp downloads table-encoder weights from its own Hugging Face repositories, which hold none of
ours, so `lw-` names take `encoder_weights=None`. ImageNet weights come through timm:
`encoder_name="tu-lw_<name>", encoder_weights=True` (from the original source), or a local file with
`encoder_weights=True, pretrained_cfg_overlay=dict(file="/path/to/weights.pth")`.

Our encoder dilates itself (output_stride goes to `create_backbone`): smp's generic dilation would
replace strides in modules it does not know, so ours rebuilds the backbone at the new stride instead.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch.encoders as smp_encoders
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from backbones._registry import get_backbone_entry, list_backbones
from backbones._scriptable import not_scriptable
from backbones.dropin.timm import TIMM_PREFIX, LiteDenseTimmModel, canonical_levels

SMP_PREFIX = "lw-"
MAX_DEPTH = 5


class LiteDenseEncoder(nn.Module):
    """A litedense backbone as an smp encoder.

    `forward` returns `depth + 1` maps: the input (smp's convention), then the canonical levels at
    strides 2, 4, ..., 2**depth, with the deepest strides replaced by dilation at `output_stride`.
    A backbone without a stride-2 level gets a 0-channel placeholder there, as smp does for
    transformer encoders.

    Args:
        name: Registered backbone name (without the `lw-` prefix).
        in_channels: Input channels (smp builds with 3, then calls `set_in_channels`).
        depth: Number of levels, 1 to 5 (smp architectures use 3 to 5).
        output_stride: 32, 16 or 8.
        **family_kwargs: Family options of the backbone (width_mult, groups, ...), from the smp
            table entry's params.
    """

    # Declared for smp (its tests and users read these): TorchScript compiles only the encoders of
    # timm-built families (an instance attribute then says True); trace, export and compile work for all.
    _is_torch_scriptable = False
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        depth: int = 5,
        output_stride: int = 32,
        **family_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"encoder_depth for '{SMP_PREFIX}{name}' must be 1 to {MAX_DEPTH}, got {depth!r}")
        _, natural = canonical_levels(name, **family_kwargs)
        wanted = [2**k for k in range(1, depth + 1)]
        self._placeholder = natural.strides[0] > 2  # e.g. a net whose first tap is at stride 4
        missing = [s for s in wanted[int(self._placeholder) :] if s not in natural.strides]
        if missing:
            raise ValueError(
                f"'{SMP_PREFIX}{name}' has no feature level at stride(s) {missing} (its levels are at strides "
                f"{natural.strides}), so it cannot serve encoder_depth={depth}"
            )
        self.name = name
        self._family_kwargs = dict(family_kwargs)
        self._depth, self._in_channels, self._output_stride = depth, in_channels, output_stride
        self._timm_indices = [natural.strides.index(s) for s in wanted if s in natural.strides]
        self.model = self._build(in_channels, output_stride)
        self._out_channels = [in_channels] + [0] * self._placeholder + list(self.model.feature_info.channels())
        self._is_torch_scriptable = self.model.backbone.scriptable and not self._placeholder

    def _build(self, in_channels: int, output_stride: int) -> LiteDenseTimmModel:
        return LiteDenseTimmModel(
            self.name,
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
        features = self.model(x)
        if self._placeholder:
            n, _, h, w = x.shape
            features = [x.new_empty(n, 0, (h + 1) // 2, (w + 1) // 2)] + features  # (N, 0, H/2, W/2)
        return [x] + features

    def __prepare_scriptable__(self) -> nn.Module:
        """What `torch.jit.script` compiles in this encoder's place: the same network and forward.

        Raises:
            RuntimeError: The backbone is not scriptable (smp's tests expect this error when
                `_is_torch_scriptable` is False).
        """
        if not self._is_torch_scriptable:
            raise not_scriptable(f"smp encoder '{SMP_PREFIX}{self.name}'")
        return _ScriptableEncoder(self)

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
        old = self.model.state_dict()
        model = self._build(in_channels, output_stride)
        new = model.state_dict()
        for key, value in old.items():
            if key in new and new[key].shape != value.shape:
                # Only the stem convolution changes shape with in_channels; adapt it the way timm does.
                old[key] = adapt_input_conv(in_channels, value) if adapt and value.ndim == 4 else new[key]
        model.load_state_dict(old)
        self.model = model


class _ScriptableEncoder(nn.Module):
    """A scriptable `LiteDenseEncoder` of a timm-built backbone: same modules, keys and outputs.

    Keeps the `model.backbone.model.<timm key>` nesting so a state dict saved before scripting loads.
    """

    _is_torch_scriptable = True
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(self, source: LiteDenseEncoder) -> None:
        super().__init__()
        self.model = nn.Module()  # a container: only its `backbone` runs
        self.model.backbone = source.model.backbone.__prepare_scriptable__()
        self.name = source.name
        self.out_channels = list(source.out_channels)
        self.output_stride = source.output_stride
        self._in_channels = source._in_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        """[x, f_2, f_4, ...] as `LiteDenseEncoder.forward`."""
        return [x] + self.model.backbone(x)


class _WeightsOutsideSmpHub(dict):
    """The `pretrained_settings` of an `lw-` entry: no weights in smp's hub, and an error that says where.

    smp checks `weights in pretrained_settings` before downloading from the Hugging Face repository of the
    entry; ours has none, so every name "is present" and looking it up explains the timm path instead of
    smp's bare "Available options are: []".
    """

    def __init__(self, smp_name: str, name: str) -> None:
        super().__init__()
        self._smp_name, self._name = smp_name, name

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: object) -> dict:
        raise ValueError(
            f"encoder_weights={key!r} is not available for '{self._smp_name}': smp fetches the weights of its table "
            f"encoders from its own Hugging Face repositories, which hold no litedense weights. Use "
            f"encoder_weights=None (random init), or the timm path: encoder_name='tu-{TIMM_PREFIX}{self._name}' with "
            f"encoder_weights=True (the original ImageNet weights), or with encoder_weights=True and "
            f"pretrained_cfg_overlay=dict(file='/path/to/weights.pth') for a local file."
        )


def _format_option(key: str, value: Any) -> str:
    """One option's part of a variant name."""
    if key == "width_mult":
        return f"{round(value * 100):03d}"  # timm's spelling: 0.5 -> 050, 1.4 -> 140
    if key == "groups":
        return f"g{value}"
    if isinstance(value, bool):
        return key if value else f"no_{key}"
    return f"{key}{value}"


def smp_variant_name(name: str, **family_kwargs: Any) -> str:
    """The smp encoder name of a backbone with family options, e.g. `lw-mobilenet_v2_050`.

    Options left at their defaults are not spelled; the parts follow the builder's option order.

    Args:
        name: Registered backbone name.
        **family_kwargs: Family options.

    Returns:
        `lw-<name>` followed by one `_<part>` per option that differs from its default.
    """
    entry = get_backbone_entry(name)
    unknown = [k for k in family_kwargs if k not in entry.family_options]
    if unknown:
        raise ValueError(f"'{name}' has no family option(s) {unknown}; its options are {entry.family_options}")
    parts = [
        _format_option(k, family_kwargs[k])
        for k in entry.family_options
        if k in family_kwargs and family_kwargs[k] != entry.family_defaults[k]
    ]
    return "_".join([SMP_PREFIX + name, *parts])


def register_smp_encoders() -> list[str]:
    """Add every backbone and its named variants to smp's encoder table; safe to call again.

    Returns:
        The smp names added by this call.

    Raises:
        ValueError: A variant's name is already an smp encoder of someone else's.
    """
    added = []
    for name in list_backbones():
        entry = get_backbone_entry(name)
        for options in ({}, *entry.variants):
            key = smp_variant_name(name, **options)
            existing = smp_encoders.encoders.get(key)
            if existing is not None:
                if existing["encoder"] is not LiteDenseEncoder or existing["params"] != {"name": name, **options}:
                    raise ValueError(f"smp already has an encoder named '{key}' that is not litedense's {name}")
                continue
            smp_encoders.encoders[key] = {
                "encoder": LiteDenseEncoder,
                "pretrained_settings": _WeightsOutsideSmpHub(key, name),
                "params": {"name": name, **options},
            }
            added.append(key)
    return added


__all__ = ["SMP_PREFIX", "LiteDenseEncoder", "register_smp_encoders", "smp_variant_name"]
