"""MaskGAN networks: DMN, blender, discriminator, MaskVAE, perceptual VGG19, released-weight import."""

from __future__ import annotations

import importlib
from typing import Any

from maskgan.models.blender import AlphaBlender, BlenderConfig, blender_official, blender_tiny
from maskgan.models.discriminator import (
    DiscriminatorConfig,
    MultiscaleDiscriminator,
    PatchDiscriminator,
    discriminator_official,
    discriminator_tiny,
)
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_base_256, dmn_official_512, dmn_tiny
from maskgan.models.norms import SFT, AdaIN, adaptive_instance_norm, split_adain_params
from maskgan.models.official import (
    convert_released_state_dict,
    import_released_generator,
    load_released_generator,
    released_key_map,
)

# Imported on first use, so that importing the generator side does not pay for (or break on) these modules.
_LAZY = {
    "MaskVAE": "maskgan.models.mask_vae",
    "MaskVAEConfig": "maskgan.models.mask_vae",
    "EditSimulatorConfig": "maskgan.models.mask_vae",
    "mask_vae_official_512": "maskgan.models.mask_vae",
    "mask_vae_base_256": "maskgan.models.mask_vae",
    "mask_vae_tiny": "maskgan.models.mask_vae",
    "PerceptualConfig": "maskgan.models.perceptual",
    "VGG19Features": "maskgan.models.perceptual",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskgan.models' has no attribute {name!r}")


__all__ = [
    "SFT",
    "AdaIN",
    "AlphaBlender",
    "BlenderConfig",
    "DMNConfig",
    "DenseMappingNetwork",
    "DiscriminatorConfig",
    "MultiscaleDiscriminator",
    "PatchDiscriminator",
    "adaptive_instance_norm",
    "blender_official",
    "blender_tiny",
    "convert_released_state_dict",
    "discriminator_official",
    "discriminator_tiny",
    "dmn_base_256",
    "dmn_official_512",
    "dmn_tiny",
    "import_released_generator",
    "load_released_generator",
    "released_key_map",
    "split_adain_params",
    *_LAZY,
]
