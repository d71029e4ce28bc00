"""Test-only stand-in for the released MaskGAN GlobalGenerator: its module names, layer order and AdaIN.

Written from the facts of MaskGAN_demo/models/networks.py (CelebAMask-HQ repository) so that tests can
produce a state dict with the released key/shape map and a forward pass to compare against. Not library code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReleasedAdaIN(nn.Module):
    """Their AdaptiveInstanceNorm2d: weight/bias assigned as attributes before forward; dummy stats."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.weight is not None and self.bias is not None
        b, c = x.shape[:2]
        # Batch norm in training mode over a (1, B*C, H, W) view = instance norm with per-sample affines.
        out = F.batch_norm(
            x.reshape(1, b * c, *x.shape[2:]),
            self.running_mean.repeat(b),
            self.running_var.repeat(b),
            self.weight,
            self.bias,
            True,
            0.1,
            self.eps,
        )
        return out.view_as(x)


class ReleasedConvBlock(nn.Module):
    """Their ConvBlock: `pad` module, `conv` (unpadded), optional `norm`, optional activation."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, padding: int, norm: str, activation: str
    ) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(padding)
        self.norm = (
            ReleasedAdaIN(cout) if norm == "adain" else (nn.InstanceNorm2d(cout) if norm == "in" else None)
        )
        self.activation = nn.ReLU() if activation == "relu" else None
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ReleasedResnetBlock(nn.Module):
    """Their ResnetBlock: `conv_block` = [ConvBlock + ReLU, ConvBlock], plus the skip."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            ReleasedConvBlock(dim, dim, 3, 1, 1, norm, "relu"),
            ReleasedConvBlock(dim, dim, 3, 1, 1, norm, "none"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ReleasedSFTLayer(nn.Module):
    """Their SFTLayer (64 channels hard-coded there; a parameter here)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.SFT_scale_conv1 = nn.Conv2d(channels, channels, 1)
        self.SFT_scale_conv2 = nn.Conv2d(channels, channels, 1)
        self.SFT_shift_conv1 = nn.Conv2d(channels, channels, 1)
        self.SFT_shift_conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scale = self.SFT_scale_conv2(F.leaky_relu(self.SFT_scale_conv1(x[1]), 0.1))
        shift = self.SFT_shift_conv2(F.leaky_relu(self.SFT_shift_conv1(x[1]), 0.1))
        return x[0] * scale + shift


class ReleasedStyleEncoder(nn.Module):
    """Their StyleEncoder: `model`, `sft1`, `model_middle`, `sft2`, `model_last` = [avg pool, conv 1x1]."""

    def __init__(self, n_downsample: int, dim: int, style_dim: int) -> None:
        super().__init__()
        layers = [ReleasedConvBlock(3, dim, 7, 1, 3, "none", "relu")]
        for _ in range(2):
            layers.append(ReleasedConvBlock(dim, 2 * dim, 4, 2, 1, "none", "relu"))
            dim *= 2
        self.model = nn.Sequential(*layers)
        self.model_middle = nn.Sequential(
            *(ReleasedConvBlock(dim, dim, 4, 2, 1, "none", "relu") for _ in range(n_downsample - 2))
        )
        self.model_last = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, style_dim, 1, 1, 0))
        self.sft1 = ReleasedSFTLayer(dim)
        self.sft2 = ReleasedSFTLayer(dim)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        fea = self.sft1((self.model(x[0]), x[1]))
        fea = self.sft2((self.model_middle(fea), x[2]))
        return self.model_last(fea)


class ReleasedLabelEncoder(nn.Module):
    """Their LabelEncoder: `model` -> feature 1; `model_last` = [ReLU, ConvBlocks] -> feature 2."""

    def __init__(self, n_downsample: int, input_dim: int, dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            ReleasedConvBlock(input_dim, dim, 7, 1, 3, "none", "relu"),
            ReleasedConvBlock(dim, 2 * dim, 4, 2, 1, "none", "relu"),
            ReleasedConvBlock(2 * dim, 4 * dim, 4, 2, 1, "none", "none"),
        )
        dim *= 4
        last: list[nn.Module] = [nn.ReLU()]
        last += [ReleasedConvBlock(dim, dim, 4, 2, 1, "none", "relu") for _ in range(n_downsample - 3)]
        last.append(ReleasedConvBlock(dim, dim, 4, 2, 1, "none", "none"))
        self.model_last = nn.Sequential(*last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fea = self.model(x)
        return fea, self.model_last(fea)


class ReleasedGlobalGenerator(nn.Module):
    """Their GlobalGenerator (label2face_512p defaults): `model` Sequential, `enc_style`, `enc_label`."""

    def __init__(
        self,
        input_nc: int = 19,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 4,
        enc_dim: int = 16,
        enc_downsample: int = 5,
    ) -> None:
        super().__init__()
        model: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(),
        ]  # fmt: skip
        for i in range(n_downsampling):
            c = ngf * 2**i
            model += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU()]
        model += [ReleasedResnetBlock(ngf * 2**n_downsampling, "adain") for _ in range(n_blocks)]
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            model += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(c // 2),
                nn.ReLU(),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)
        num_adain = sum(2 * m.num_features for m in self.model.modules() if isinstance(m, ReleasedAdaIN))
        self.enc_style = ReleasedStyleEncoder(enc_downsample, enc_dim, num_adain)
        self.enc_label = ReleasedLabelEncoder(enc_downsample, input_nc, enc_dim)

    def assign_adain_params(self, adain_params: torch.Tensor) -> None:
        """Per AdaIN layer in module order: first C values -> bias (mean), next C -> weight (std)."""
        for m in self.model.modules():
            if isinstance(m, ReleasedAdaIN):
                m.bias = adain_params[:, : m.num_features].contiguous().view(-1)
                m.weight = adain_params[:, m.num_features : 2 * m.num_features].contiguous().view(-1)
                if adain_params.size(1) > 2 * m.num_features:
                    adain_params = adain_params[:, 2 * m.num_features :]

    def forward(self, target: torch.Tensor, ref_mask: torch.Tensor, ref_image: torch.Tensor) -> torch.Tensor:
        fea1, fea2 = self.enc_label(ref_mask)
        self.assign_adain_params(self.enc_style((ref_image, fea1, fea2)))
        return self.model(target)


def spread_style_bias_(model: ReleasedGlobalGenerator, seed: int = 0) -> ReleasedGlobalGenerator:
    """Draw the style head's bias from N(0, 1) (in place), so AdaIN affines differ strongly per channel.

    With the default init every AdaIN weight is near zero and a wrong parameter layout would barely show.
    """
    generator = torch.Generator().manual_seed(seed)
    bias = model.enc_style.model_last[1].bias
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=generator))
    return model
