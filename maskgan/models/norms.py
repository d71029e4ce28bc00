"""AdaIN (affine values passed in per call) and the SFT layer of MaskGAN's spatial-aware style encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Instance-normalise x (B, C, H, W) per sample and channel, then * weight + bias, both (B, C)."""
    # Biased variance and eps inside the sqrt, as F.batch_norm on the (1, B*C, H, W) view of the release.
    normalized = F.instance_norm(x, eps=eps)
    return normalized * weight[:, :, None, None] + bias[:, :, None, None]


class AdaIN(nn.Module):
    """Instance norm whose per-sample affine values come in through forward; holds no state."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        expected = (x.shape[0], self.num_features)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"AdaIN expects (B, {self.num_features}, H, W), got shape {tuple(x.shape)}")
        if tuple(weight.shape) != expected or tuple(bias.shape) != expected:
            raise ValueError(
                f"AdaIN weight and bias must be {expected}, got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        return adaptive_instance_norm(x, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def split_adain_params(
    style: torch.Tensor, num_features: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(B, sum 2C) style code -> [(weight, bias)] per AdaIN layer, laid out [bias C | weight C] per layer."""
    total = 2 * sum(num_features)
    if style.dim() != 2 or style.shape[1] != total:
        raise ValueError(f"style code must be (B, {total}), got shape {tuple(style.shape)}")
    params = []
    offset = 0
    for channels in num_features:
        bias = style[:, offset : offset + channels]  # the release's "mean"
        weight = style[:, offset + channels : offset + 2 * channels]  # the release's "std"
        params.append((weight, bias))
        offset += 2 * channels
    return params


class SFT(nn.Module):
    """Spatial feature transform: x * scale(cond) + shift(cond), each a 1x1 conv, leaky ReLU 0.1, 1x1 conv."""

    def __init__(self, channels: int, cond_channels: int | None = None) -> None:
        super().__init__()
        cond_channels = channels if cond_channels is None else cond_channels
        self.scale_conv1 = nn.Conv2d(cond_channels, channels, 1)
        self.scale_conv2 = nn.Conv2d(channels, channels, 1)
        self.shift_conv1 = nn.Conv2d(cond_channels, channels, 1)
        self.shift_conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != cond.shape[-2:]:
            raise ValueError(
                f"SFT input {tuple(x.shape)} and condition {tuple(cond.shape)} differ in spatial size"
            )
        scale = self.scale_conv2(F.leaky_relu(self.scale_conv1(cond), 0.1))
        shift = self.shift_conv2(F.leaky_relu(self.shift_conv1(cond), 0.1))
        return x * scale + shift
