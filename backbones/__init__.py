"""Lightweight CNNs as multi-scale feature extractors behind one contract.

>>> from backbones import create_backbone
>>> backbone = create_backbone("mobilenet_v2", output_stride=16)
>>> features = backbone(images)  # list of (N, C_i, ceil(H / s_i), ceil(W / s_i))
"""

from backbones import mobilenet_v2  # noqa: F401  (registers itself)
from backbones._base import Backbone
from backbones._features import FeatureInfo
from backbones._registry import create_backbone, get_backbone_entry, list_backbones, register_backbone
from backbones._weights import WeightsMismatchError, read_state_dict

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
