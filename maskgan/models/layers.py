"""Conv building blocks shared by the DMN, the blender and the discriminator (pix2pixHD style)."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "leaky_relu", "none")


def make_activation(name: str) -> nn.Module:
    """Activation module by name: relu, leaky_relu (slope 0.2, as pix2pixHD's discriminator) or none."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Module):
    """Padded conv, optional affine-free instance norm, activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "reflect",
        norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        # padding_mode="reflect" pads like nn.ReflectionPad2d before an unpadded conv.
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, padding_mode=padding_mode
        )
        self.norm = nn.InstanceNorm2d(out_channels) if norm else nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class UpConvNormAct(nn.Module):
    """Transposed conv 3x3 stride 2 (doubles H and W), instance norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.InstanceNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """x + [reflect-pad 1, conv 3x3, IN, ReLU, reflect-pad 1, conv 3x3, IN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, 3, padding=1, norm=True, activation="relu")
        self.conv2 = ConvNormAct(channels, channels, 3, padding=1, norm=True, activation="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def downsampling_path(in_channels: int, base_channels: int, num_downsample: int) -> nn.Sequential:
    """pix2pixHD front: reflect-pad 3 + conv 7x7 + IN + ReLU, then num_downsample x [conv 3x3/2 + IN + ReLU].

    Channels double at each downsampling: base -> 2 base -> ... -> base * 2**num_downsample.
    """
    layers = [ConvNormAct(in_channels, base_channels, 7, padding=3, norm=True)]
    for index in range(num_downsample):
        channels = base_channels * 2**index
        # The strided convs zero-pad (pix2pixHD); only the 7x7 and residual convs reflect-pad.
        layers.append(
            ConvNormAct(channels, 2 * channels, 3, stride=2, padding=1, padding_mode="zeros", norm=True)
        )
    return nn.Sequential(*layers)


def upsampling_path(base_channels: int, num_downsample: int) -> nn.Sequential:
    """pix2pixHD back: num_downsample x [transposed conv 3x3/2 + IN + ReLU], halving channels to base."""
    layers = []
    for index in range(num_downsample):
        channels = base_channels * 2 ** (num_downsample - index)
        layers.append(UpConvNormAct(channels, channels // 2))
    return nn.Sequential(*layers)


class OutputHead(nn.Module):
    """Reflect-pad 3 + conv 7x7 to the output channels, then tanh or sigmoid."""

    def __init__(self, in_channels: int, out_channels: int, activation: str) -> None:
        super().__init__()
        if activation not in ("tanh", "sigmoid"):
            raise ValueError(f"OutputHead activation must be 'tanh' or 'sigmoid', got {activation!r}")
        self.conv = nn.Conv2d(in_channels, out_channels, 7, padding=3, padding_mode="reflect")
        self.act = nn.Tanh() if activation == "tanh" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Released init: every nn.Conv2d weight ~ N(0, std); biases and transposed convs keep PyTorch's default.

    (The release matches class names containing 'Conv2d', which skips ConvTranspose2d.)
    """
    for child in module.modules():
        if type(child) is nn.Conv2d:
            nn.init.normal_(child.weight, 0.0, std)


def check_image_input(name: str, x: torch.Tensor, channels: int, multiple: int = 1) -> None:
    """Raise ValueError unless x is (B, channels, H, W) with H and W divisible by multiple."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(f"{name} is {height}x{width}; height and width must be multiples of {multiple}")
