"""Test helpers for the editor: tiny checkpoints written through checkpoint.write_checkpoint, masks, faces."""

from __future__ import annotations

import numpy as np
import torch

from maskgan import config as config_lib
from maskgan.labels import one_hot
from maskgan.models.blender import AlphaBlender, blender_tiny
from maskgan.models.dmn import DenseMappingNetwork, dmn_tiny
from maskgan.models.mask_vae import MaskVAE, mask_vae_tiny
from maskgan.training.checkpoint import write_checkpoint


def lively(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Large random weights: an untrained tiny net whose output visibly depends on its inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def write_tiny_checkpoint(
    directory: str, *, step: int = 1, stage: str = "ebst", blender: bool = True, mask_vae: bool = True,
    ema: bool = False, seed: int = 0, storage_config=None,
) -> dict[str, torch.nn.Module]:  # fmt: skip
    """An EBST-shaped checkpoint (meta config sections generator / blender / mask_vae); returns its nets."""
    networks: dict[str, torch.nn.Module] = {"generator": lively(DenseMappingNetwork(dmn_tiny()), seed)}
    config = {"generator": config_lib.to_dict(dmn_tiny())}
    if ema:
        networks["generator_ema"] = lively(DenseMappingNetwork(dmn_tiny()), seed + 1)
    if blender:
        networks["blender"] = lively(AlphaBlender(blender_tiny()), seed + 2)
        config["blender"] = config_lib.to_dict(blender_tiny())
    if mask_vae:
        networks["mask_vae"] = MaskVAE(mask_vae_tiny()).eval()
        config["mask_vae"] = config_lib.to_dict(mask_vae_tiny())
    meta = {"stage": stage, "step": step, "epoch": 0, "config": config, "manifest_sha256": None}
    weights = {name: network.state_dict() for name, network in networks.items()}
    write_checkpoint(directory, {"step": step}, weights=weights, meta=meta, storage_config=storage_config)
    return networks


def face_mask(size: tuple[int, int] = (32, 32), grow: int = 0) -> np.ndarray:
    """(H, W) uint8 class ids: background, a skin ellipse, hair on top, a mouth grown by `grow` px."""
    height, width = size
    y, x = np.mgrid[:height, :width]
    cy, cx = height / 2, width / 2
    ids = np.zeros(size, np.uint8)
    ids[((y - cy) / (0.4 * height)) ** 2 + ((x - cx) / (0.3 * width)) ** 2 <= 1] = 1
    ids[(y < 0.3 * height) & (ids == 1)] = 13
    mouth = (abs(y - 0.7 * height) <= 1 + grow) & (abs(x - cx) <= 0.1 * width + grow)
    ids[mouth] = 10
    return ids


def photo(size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 random photo."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def reference_output(generator, target: np.ndarray, mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """G(target, mask, image) on model-resolution arrays, as uint8 (H, W, 3): what the editor must return."""

    def hot(ids):
        return one_hot(torch.from_numpy(ids.astype(np.int64))[None])

    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        out = generator(hot(target), hot(mask), tensor)
    return ((out[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
