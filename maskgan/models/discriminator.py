"""pix2pixHD multi-scale PatchGAN discriminator on (one-hot mask, image) pairs, with features for matching."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from maskgan.labels import NUM_CLASSES
from maskgan.models.layers import ConvNormAct, check_image_input, init_weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """Multi-scale PatchGAN; defaults are the release's (2 scales, 3 layers, 64 channels, 22 inputs)."""

    num_classes: int = NUM_CLASSES
    image_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    # Strided layers per scale (the first without norm), then a stride-1 layer and the output conv.
    num_layers: int = 3
    num_scales: int = 2  # scale k sees the input average-pooled k times
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("num_classes", "image_channels", "base_channels", "num_layers", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_channels < self.base_channels:
            raise ValueError(
                f"DiscriminatorConfig.max_channels ({self.max_channels}) must be >= base_channels "
                f"({self.base_channels})"
            )
        if self.init_std <= 0:
            raise ValueError(f"DiscriminatorConfig.init_std must be > 0, got {self.init_std}")

    @property
    def in_channels(self) -> int:
        """One-hot mask channels + image channels (22 by default)."""
        return self.num_classes + self.image_channels


def discriminator_official() -> DiscriminatorConfig:
    """The release's discriminator (5,568,386 parameters)."""
    return DiscriminatorConfig()


def discriminator_tiny() -> DiscriminatorConfig:
    """A few channels, for tests and smoke runs."""
    return DiscriminatorConfig(base_channels=8, max_channels=32, num_layers=2)


class PatchDiscriminator(nn.Module):
    """One scale: 4x4 convs (padding 2), IN after the first, LeakyReLU 0.2; returns every layer's output."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        kwargs = {"padding": 2, "padding_mode": "zeros", "activation": "leaky_relu"}
        layers = [ConvNormAct(config.in_channels, config.base_channels, 4, stride=2, **kwargs)]
        channels = config.base_channels
        for _ in range(1, config.num_layers):
            out = min(2 * channels, config.max_channels)
            layers.append(ConvNormAct(channels, out, 4, stride=2, norm=True, **kwargs))
            channels = out
        out = min(2 * channels, config.max_channels)
        layers.append(ConvNormAct(channels, out, 4, stride=1, norm=True, **kwargs))
        layers.append(nn.Conv2d(out, 1, 4, stride=1, padding=2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features  # last = (B, 1, h, w) patch predictions


class MultiscaleDiscriminator(nn.Module):
    """D(mask, image) -> per scale (full size first) the list of intermediate features, last = prediction."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.scales = nn.ModuleList(PatchDiscriminator(config) for _ in range(config.num_scales))
        init_weights(self, config.init_std)

    def forward(self, mask: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        check_image_input("mask", mask, self.config.num_classes)
        check_image_input("image", image, self.config.image_channels)
        if mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"mask {tuple(mask.shape)} and image {tuple(image.shape)} "
                "must share batch size, height and width"
            )
        x = torch.cat([mask, image], dim=1)  # (B, 22, H, W)
        outputs = []
        for index, scale in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs
