"""Face parser: a compact U-Net, face image -> 19-class logits (the mask-fidelity judge; photo -> mask).

The release's code base parsed faces with a U-Net at 512 px; this one keeps the shape (conv blocks,
max-pool down, transposed-conv up, skip concatenation) at small widths, with GroupNorm so that its
statistics do not depend on the batch size (evaluation and the Editor parse single images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskgan.labels import NUM_CLASSES

MAX_GROUPS = 8


@dataclass(frozen=True, kw_only=True)
class ParserConfig:
    """U-Net shape: image_size divisible by 2**num_levels; widths double per level up to max_channels."""

    image_size: int = 512
    num_classes: int = NUM_CLASSES
    base_channels: int = 32
    max_channels: int = 256
    num_levels: int = 4  # downsamplings

    def __post_init__(self) -> None:
        for name in ("image_size", "num_classes", "base_channels", "max_channels", "num_levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parser.{name} must be an integer >= 1, got {value!r}")
        if self.image_size % 2**self.num_levels:
            raise ValueError(
                f"parser.image_size {self.image_size} must be divisible by "
                f"2**num_levels = {2**self.num_levels}"
            )
        if self.max_channels < self.base_channels:
            raise ValueError(
                f"parser.max_channels ({self.max_channels}) must be >= base_channels ({self.base_channels})"
            )

    @property
    def channels(self) -> tuple[int, ...]:
        """Width of each level, from full resolution down to the bottleneck (num_levels + 1 entries)."""
        return tuple(
            min(self.base_channels * 2**level, self.max_channels) for level in range(self.num_levels + 1)
        )


def parser_tiny() -> ParserConfig:
    """32 px, 0.12 M parameters: tests and smoke runs."""
    return ParserConfig(image_size=32, base_channels=16, max_channels=64, num_levels=2)


def parser_base_256() -> ParserConfig:
    """256 px, 5.1 M parameters."""
    return ParserConfig(image_size=256, base_channels=32, max_channels=256, num_levels=4)


def parser_512() -> ParserConfig:
    """512 px (the dataset's mask size), 8.4 M parameters: one more level for the larger context."""
    return ParserConfig(image_size=512, base_channels=32, max_channels=256, num_levels=5)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two [conv 3x3 + GroupNorm + ReLU]."""
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers += [
            nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(MAX_GROUPS, out_channels), out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class FaceParser(nn.Module):
    """(B, 3, H, W) image in [-1, 1] -> (B, num_classes, H, W) logits; H, W divisible by 2**num_levels."""

    def __init__(self, config: ParserConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.channels
        self.down = nn.ModuleList([_block(3, widths[0])])
        self.down.extend(_block(widths[level - 1], widths[level]) for level in range(1, len(widths)))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[level], widths[level - 1], 2, stride=2)
            for level in range(len(widths) - 1, 0, -1)
        )
        self.merge = nn.ModuleList(
            _block(2 * widths[level - 1], widths[level - 1]) for level in range(len(widths) - 1, 0, -1)
        )
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)

    @property
    def resolution(self) -> int:
        """The square size it was trained at (the Editor resizes to it)."""
        return self.config.image_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.config.num_levels
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[2] % multiple or image.shape[3] % multiple:
            raise ValueError(
                f"FaceParser expects (B, 3, H, W) images with H, W divisible by {multiple}, "
                f"got {tuple(image.shape)}"
            )
        skips = []
        x = image
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else self.pool(x))
            skips.append(x)  # (B, widths[level], H / 2**level, W / 2**level)
        skips.pop()  # the bottleneck is x itself
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    @torch.no_grad()
    def parse(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 class ids, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self(image).argmax(dim=1)
        finally:
            self.train(was_training)


def build_parser(config: ParserConfig | Mapping[str, Any] | None = None) -> FaceParser:
    """A FaceParser from a ParserConfig or its dict (e.g. a parser checkpoint meta.json's config["model"])."""
    if config is None:
        config = ParserConfig()
    elif isinstance(config, Mapping):
        from maskgan import config as config_lib

        config = config_lib.from_dict(ParserConfig, config, "model")
    if not isinstance(config, ParserConfig):
        raise ValueError(f"build_parser needs a ParserConfig or a dict of one, got {type(config).__name__}")
    return FaceParser(config)
