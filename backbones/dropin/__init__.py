"""Our backbones inside segmentation-models-pytorch and timm, enabled by one explicit line.

>>> import backbones.dropin  # registers every backbone in smp ("lw-<name>") and timm ("lw_<name>")
>>> import segmentation_models_pytorch as smp, timm
>>> smp.Unet("lw-mobilenet_v2_050", encoder_weights=None)  # a family option as a named variant
>>> smp.Unet("tu-lw_mobilenet_v2", encoder_weights=None, width_mult=0.5)  # any option, through timm
>>> timm.create_model("lw_shufflenet_v2", features_only=True, output_stride=16)

Both go through the libraries' own extension points and replace none of their functions: smp's
encoder table (`segmentation_models_pytorch.encoders.encoders`, what `get_encoder` builds a non-timm
encoder from) and timm's model registry (`timm.models.register_model`, what `timm.create_model` and
smp's `tu-` encoders look names up in). `import backbones` alone touches neither library.
"""

from __future__ import annotations

from backbones.dropin.smp import LiteDenseEncoder, register_smp_encoders, smp_variant_name
from backbones.dropin.timm import TIMM_PREFIX, LiteDenseTimmModel, register_timm_models


def register() -> dict[str, list[str]]:
    """Register every backbone not yet registered in timm and smp; importing this package calls it.

    Call it again after registering a backbone of your own with `backbones.register_backbone`.

    Returns:
        The names added by this call: {"timm": [...], "smp": [...]}.
    """
    return {"timm": register_timm_models(), "smp": register_smp_encoders()}


register()

__all__ = [
    "TIMM_PREFIX",
    "LiteDenseEncoder",
    "LiteDenseTimmModel",
    "register",
    "register_smp_encoders",
    "register_timm_models",
    "smp_variant_name",
]
