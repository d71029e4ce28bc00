"""Dense Mapping Network: pix2pixHD global generator, AdaIN blocks fed by a spatial-aware style encoder."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from maskgan.labels import NUM_CLASSES
from maskgan.models.layers import (
    ConvNormAct,
    OutputHead,
    check_image_input,
    downsampling_path,
    init_weights,
    upsampling_path,
)
from maskgan.models.norms import SFT, AdaIN, split_adain_params


@dataclasses.dataclass(frozen=True, kw_only=True)
class DMNConfig:
    """Widths and depths of the DMN generator; defaults are the released label2face_512p."""

    num_classes: int = NUM_CLASSES
    image_channels: int = 3
    base_channels: int = 64  # first backbone width (pix2pixHD ngf)
    num_downsample: int = 4  # backbone downsamplings; bottleneck width = base_channels * 2**num_downsample
    num_res_blocks: int = 4  # AdaIN residual blocks at the bottleneck
    encoder_base_channels: int = 16  # first width of the label and style encoders; SFT width = 4x this
    # Downsamplings of each encoder: 2 before SFT 1, the rest before SFT 2.
    encoder_num_downsample: int = 5
    # Nominal (square) training size; the network runs at any size that is a multiple of size_multiple.
    resolution: int = 512
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "num_classes", "image_channels", "base_channels", "encoder_base_channels", "resolution",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"DMNConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_downsample < 0:
            raise ValueError(f"DMNConfig.num_downsample must be >= 0, got {self.num_downsample}")
        if self.num_res_blocks < 1:
            raise ValueError(
                f"DMNConfig.num_res_blocks must be >= 1 (the style acts through them), "
                f"got {self.num_res_blocks}"
            )
        if self.encoder_num_downsample < 3:
            raise ValueError(
                f"DMNConfig.encoder_num_downsample must be >= 3 (2 before SFT 1, >= 1 before SFT 2), "
                f"got {self.encoder_num_downsample}"
            )
        if self.resolution % self.size_multiple:
            raise ValueError(
                f"DMNConfig.resolution {self.resolution} must be a multiple of {self.size_multiple} "
                f"(2**max(num_downsample, encoder_num_downsample))"
            )
        if self.init_std <= 0:
            raise ValueError(f"DMNConfig.init_std must be > 0, got {self.init_std}")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** max(self.num_downsample, self.encoder_num_downsample)

    @property
    def bottleneck_channels(self) -> int:
        """Width of the AdaIN residual blocks."""
        return self.base_channels * 2**self.num_downsample

    @property
    def sft_channels(self) -> int:
        """Width of both SFT layers (label features and style features)."""
        return 4 * self.encoder_base_channels

    @property
    def adain_features(self) -> tuple[int, ...]:
        """Channels of every AdaIN layer in module order (2 per residual block)."""
        return (self.bottleneck_channels,) * (2 * self.num_res_blocks)

    @property
    def style_dim(self) -> int:
        """Length of the style code: [bias C | weight C] for every AdaIN layer."""
        return 2 * sum(self.adain_features)


def dmn_official_512() -> DMNConfig:
    """The released label2face_512p generator (89,702,595 parameters, style code 16,384)."""
    return DMNConfig()


def dmn_base_256() -> DMNConfig:
    """The released widths and depths trained at 256 x 256 (the SEAN/SPADE protocol)."""
    return DMNConfig(resolution=256)


def dmn_tiny() -> DMNConfig:
    """A few channels at 32 x 32, for tests and smoke runs."""
    return DMNConfig(
        base_channels=8,
        num_downsample=2,
        num_res_blocks=2,
        encoder_base_channels=4,
        encoder_num_downsample=3,
        resolution=32,
    )


class LabelEncoder(nn.Module):
    """Reference mask -> (feature 1 at 1/4 size, feature 2 at 1/2**encoder_num_downsample), SFT-wide."""

    def __init__(self, config: DMNConfig) -> None:
        super().__init__()
        dim = config.encoder_base_channels
        self.feature1 = nn.Sequential(
            ConvNormAct(config.num_classes, dim, 7, padding=3),
            ConvNormAct(dim, 2 * dim, 4, stride=2, padding=1),
            ConvNormAct(2 * dim, 4 * dim, 4, stride=2, padding=1, activation="none"),
        )
        layers = [
            ConvNormAct(4 * dim, 4 * dim, 4, stride=2, padding=1)
            for _ in range(config.encoder_num_downsample - 3)
        ]
        layers.append(ConvNormAct(4 * dim, 4 * dim, 4, stride=2, padding=1, activation="none"))
        self.feature2 = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature1 = self.feature1(mask)  # (B, 4 dim, H/4, W/4), no activation
        return feature1, self.feature2(F.relu(feature1))


class StyleEncoder(nn.Module):
    """Reference image, modulated by label features through two SFT layers -> style code (B, style_dim)."""

    def __init__(self, config: DMNConfig) -> None:
        super().__init__()
        dim = config.encoder_base_channels
        self.down1 = nn.Sequential(
            ConvNormAct(config.image_channels, dim, 7, padding=3),
            ConvNormAct(dim, 2 * dim, 4, stride=2, padding=1),
            ConvNormAct(2 * dim, 4 * dim, 4, stride=2, padding=1),
        )
        self.sft1 = SFT(4 * dim)
        self.down2 = nn.Sequential(
            *(
                ConvNormAct(4 * dim, 4 * dim, 4, stride=2, padding=1)
                for _ in range(config.encoder_num_downsample - 2)
            )
        )
        self.sft2 = SFT(4 * dim)
        # A 1x1 conv on the pooled features (a linear layer), kept as a conv so weights match the release.
        self.to_style = nn.Conv2d(4 * dim, config.style_dim, 1)

    def forward(self, image: torch.Tensor, feature1: torch.Tensor, feature2: torch.Tensor) -> torch.Tensor:
        x = self.sft1(self.down1(image), feature1)  # (B, 4 dim, H/4, W/4)
        x = self.sft2(self.down2(x), feature2)  # (B, 4 dim, H/2**n, W/2**n)
        x = x.mean(dim=(2, 3), keepdim=True)  # (B, 4 dim, 1, 1)
        return self.to_style(x).flatten(1)  # (B, style_dim)


class AdaINResidualBlock(nn.Module):
    """x + [reflect-pad 1, conv 3x3, AdaIN, ReLU, reflect-pad 1, conv 3x3, AdaIN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm1 = AdaIN(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.norm2 = AdaIN(channels)

    def forward(
        self,
        x: torch.Tensor,
        params1: tuple[torch.Tensor, torch.Tensor],
        params2: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x), *params1))
        return x + self.norm2(self.conv2(h), *params2)


class DenseMappingNetwork(nn.Module):
    """G(target_mask, reference_mask, reference_image) -> image in [-1, 1] with the reference's style."""

    def __init__(self, config: DMNConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = downsampling_path(config.num_classes, config.base_channels, config.num_downsample)
        self.blocks = nn.ModuleList(
            AdaINResidualBlock(config.bottleneck_channels) for _ in range(config.num_res_blocks)
        )
        self.decoder = upsampling_path(config.base_channels, config.num_downsample)
        self.head = OutputHead(config.base_channels, config.image_channels, "tanh")
        self.label_encoder = LabelEncoder(config)
        self.style_encoder = StyleEncoder(config)
        init_weights(self, config.init_std)

    def style_code(self, reference_mask: torch.Tensor, reference_image: torch.Tensor) -> torch.Tensor:
        """(B, 19, H, W) one-hot mask + (B, 3, H, W) image in [-1, 1] -> (B, style_dim) AdaIN parameters."""
        config = self.config
        check_image_input("reference_mask", reference_mask, config.num_classes, config.size_multiple)
        check_image_input("reference_image", reference_image, config.image_channels)
        if reference_image.shape[-2:] != reference_mask.shape[-2:] or len(reference_image) != len(
            reference_mask
        ):
            raise ValueError(
                f"reference_image {tuple(reference_image.shape)} and reference_mask "
                f"{tuple(reference_mask.shape)} must share batch size, height and width"
            )
        feature1, feature2 = self.label_encoder(reference_mask)
        return self.style_encoder(reference_image, feature1, feature2)

    def decode(self, target_mask: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, 19, H, W) one-hot target mask + (B, style_dim) style code -> (B, 3, H, W) image in [-1, 1]."""
        config = self.config
        check_image_input("target_mask", target_mask, config.num_classes, 2**config.num_downsample)
        if style.dim() != 2 or style.shape != (target_mask.shape[0], config.style_dim):
            raise ValueError(
                f"style code must be ({target_mask.shape[0]}, {config.style_dim}), got {tuple(style.shape)}"
            )
        params = split_adain_params(style, config.adain_features)
        x = self.encoder(target_mask)  # (B, bottleneck, H / 2**n, W / 2**n)
        for index, block in enumerate(self.blocks):
            x = block(x, params[2 * index], params[2 * index + 1])
        return self.head(self.decoder(x))

    def forward(
        self, target_mask: torch.Tensor, reference_mask: torch.Tensor, reference_image: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(target_mask, self.style_code(reference_mask, reference_image))
