"""Alpha blender of MaskGAN's editing behaviour simulated training: two images in, a sigmoid alpha map out."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from maskgan.models.layers import (
    OutputHead,
    ResidualBlock,
    check_image_input,
    downsampling_path,
    init_weights,
    upsampling_path,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlenderConfig:
    """Widths and depths of the blender (a small pix2pixHD global generator); defaults are the release's."""

    image_channels: int = 3
    alpha_channels: int = 3  # the release predicts one alpha per RGB channel (its output_nc)
    base_channels: int = 32
    num_downsample: int = 3
    num_res_blocks: int = 3
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("image_channels", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"BlenderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.alpha_channels not in (1, self.image_channels):
            raise ValueError(
                f"BlenderConfig.alpha_channels must be 1 or image_channels ({self.image_channels}), "
                f"got {self.alpha_channels}"
            )
        for name in ("num_downsample", "num_res_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"BlenderConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.init_std <= 0:
            raise ValueError(f"BlenderConfig.init_std must be > 0, got {self.init_std}")


def blender_official() -> BlenderConfig:
    """The release's blender: ngf 32, 3 downsamplings, 3 residual blocks (4,329,443 parameters)."""
    return BlenderConfig()


def blender_tiny() -> BlenderConfig:
    """A few channels, for tests and smoke runs."""
    return BlenderConfig(base_channels=4, num_downsample=2, num_res_blocks=1)


class AlphaBlender(nn.Module):
    """blend(image1, image2) -> (alpha * image1 + (1 - alpha) * image2, alpha)."""

    def __init__(self, config: BlenderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.base_channels * 2**config.num_downsample
        self.encoder = downsampling_path(
            2 * config.image_channels, config.base_channels, config.num_downsample
        )
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(config.num_res_blocks)))
        self.decoder = upsampling_path(config.base_channels, config.num_downsample)
        self.head = OutputHead(config.base_channels, config.alpha_channels, "sigmoid")
        init_weights(self, config.init_std)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        check_image_input("image1", image1, config.image_channels, 2**config.num_downsample)
        if image2.shape != image1.shape:
            raise ValueError(f"image2 {tuple(image2.shape)} must match image1 {tuple(image1.shape)}")
        x = self.encoder(torch.cat([image1, image2], dim=1))  # (B, 6, H, W) in
        alpha = self.head(self.decoder(self.blocks(x)))  # (B, alpha_channels, H, W) in (0, 1)
        return alpha * image1 + (1 - alpha) * image2, alpha
