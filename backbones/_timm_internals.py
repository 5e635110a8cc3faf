"""The one place litedense reaches into timm's private modules.

timm's public API (`timm.create_model`, `timm.models.adapt_input_conv`, `register_model`) does not expose
the block classes our expansion taps run, the architecture-definition decoder our reduced-tail MobileNetV3
needs, or the generators of widths timm does not register. Those names live in modules whose path starts
with an underscore or that timm does not export, and they move between timm releases; importing them here
only means a timm upgrade breaks one file, and its import error names what moved.
"""

from __future__ import annotations

from timm.models._efficientnet_blocks import DepthwiseSeparableConv, EdgeResidual, InvertedResidual, SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args, round_channels
from timm.models._features import FeatureInfo as TimmFeatureInfo
from timm.models._features import feature_take_indices
from timm.models.efficientnet import EfficientNet, _gen_mobilenet_v1
from timm.models.mobilenetv3 import MobileNetV3Features, _create_mnv3, _gen_lcnet

__all__ = [
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "EfficientNet",
    "InvertedResidual",
    "MobileNetV3Features",
    "SqueezeExcite",
    "TimmFeatureInfo",
    "create_mnv3",
    "decode_arch_def",
    "feature_take_indices",
    "gen_lcnet",
    "gen_mobilenet_v1",
    "resolve_act_layer",
    "resolve_bn_args",
    "round_channels",
]

# Public names here for timm's underscored builders: the callers read as ordinary calls.
create_mnv3 = _create_mnv3
gen_lcnet = _gen_lcnet
gen_mobilenet_v1 = _gen_mobilenet_v1
