"""Lightweight CNNs as multi-scale feature extractors behind one contract.

>>> from backbones import create_backbone
>>> backbone = create_backbone("mobilenet_v2", output_stride=16)
>>> features = backbone(images)  # list of (N, C_i, ceil(H / s_i), ceil(W / s_i))

Importing this package registers our backbones in our own registry and nothing else: the
segmentation-models-pytorch encoders (`lw-<name>`) and timm models (`lw_<name>`) are added by the
explicit line `import backbones.dropin` (see `backbones/dropin/__init__.py`).

Layout: one module per family (`mobilenet_v2.py`, `shufflenet_v2.py`, ...); the contract
(`_base.py`, `_features.py`, `_registry.py`) and its helpers (`_weights.py`, `_dilation.py`,
`_scriptable.py`, `complexity.py`); the builder the timm-wrapped families share (`_timm_family.py`, with
SSDLite's expansion taps in `_expansion_taps.py` and timm's private names in `_timm_internals.py`);
blocks of our own nets (`_shuffle_blocks.py`, `_skipblock_blocks.py`); and the drop-in (`dropin/`).
"""

# Each family module registers its names on import.
from backbones import (  # noqa: F401
    efficientnet,
    efficientnet_v2,
    ghostnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    pp_lcnet,
    resnet,
    shufflenet_v1,
    shufflenet_v2,
    skipblocknet,
    xception,
)
from backbones._base import Backbone
from backbones._features import FeatureInfo
from backbones._inference import fuse_for_inference
from backbones._registry import create_backbone, get_backbone_entry, list_backbones, register_backbone
from backbones._weights import WeightsMismatchError, read_state_dict

__all__ = [
    "Backbone",
    "FeatureInfo",
    "WeightsMismatchError",
    "create_backbone",
    "fuse_for_inference",
    "get_backbone_entry",
    "list_backbones",
    "read_state_dict",
    "register_backbone",
]
