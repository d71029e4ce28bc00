"""MaskGAN networks: DMN, blender, discriminator, MaskVAE, perceptual VGG19, released-weight import."""

from __future__ import annotations

from maskgan.models.blender import AlphaBlender, BlenderConfig, blender_official, blender_tiny
from maskgan.models.discriminator import (
    DiscriminatorConfig,
    MultiscaleDiscriminator,
    PatchDiscriminator,
    discriminator_official,
    discriminator_tiny,
)
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_base_256, dmn_official_512, dmn_tiny
from maskgan.models.mask_vae import (
    EditSimulatorConfig,
    MaskVAE,
    MaskVAEConfig,
    mask_vae_base_256,
    mask_vae_official_512,
    mask_vae_tiny,
)
from maskgan.models.norms import SFT, AdaIN, adaptive_instance_norm, split_adain_params
from maskgan.models.official import (
    convert_released_state_dict,
    import_released_generator,
    load_released_generator,
    released_key_map,
)
from maskgan.models.perceptual import PerceptualConfig, VGG19Features

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
    "EditSimulatorConfig",
    "MaskVAE",
    "MaskVAEConfig",
    "mask_vae_base_256",
    "mask_vae_official_512",
    "mask_vae_tiny",
    "PerceptualConfig",
    "VGG19Features",
]
