# ruff: noqa: I001  (the drop-in registrations must import after every family)
"""Lightweight CNNs as multi-scale feature extractors behind one contract.

>>> from backbones import create_backbone
>>> backbone = create_backbone("mobilenet_v2", output_stride=16)
>>> features = backbone(images)  # list of (N, C_i, ceil(H / s_i), ceil(W / s_i))
"""

# Each family module registers its names on import.
from backbones import (  # noqa: F401
    efficientnet,
    ghostnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    pp_lcnet,
    shufflenet_v1,
    shufflenet_v2,
    skipblocknet,
    xception,
)
from backbones._base import Backbone
from backbones._features import FeatureInfo
from backbones._registry import create_backbone, get_backbone_entry, list_backbones, register_backbone
from backbones._weights import WeightsMismatchError, read_state_dict

# Drop-in registration: every backbone as an smp encoder ("lw-<name>") and a timm model ("lw_<name>").
from backbones import _smp_encoder, _timm_registration  # noqa: E402, F401

__all__ = [
    "Backbone",
    "FeatureInfo",
    "WeightsMismatchError",
    "create_backbone",
    "get_backbone_entry",
    "list_backbones",
    "read_state_dict",
    "register_backbone",
]
