"""Test inputs for the DMN, blender and discriminator tests: blocky random masks and matching images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskgan.labels import NUM_CLASSES, one_hot


def random_label(batch: int, size: int, seed: int = 0, block: int = 4) -> torch.Tensor:
    """(B, size, size) int64 class map made of block x block squares of random classes."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, size // block, size // block), generator=generator)
    return F.interpolate(coarse.float(), scale_factor=block, mode="nearest")[:, 0].long()


def random_mask(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """(B, 19, size, size) one-hot mask with blocky regions."""
    return one_hot(random_label(batch, size, seed))


def random_image(batch: int, size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """(B, channels, size, size) uniform noise in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator) * 2 - 1


def face_like_pairs(
    batch: int, size: int, seed: int = 0, noise: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic (one-hot mask, image) pairs: random ellipses, each class painted its own colour + noise."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(NUM_CLASSES, 3, generator=generator) * 1.6 - 0.8  # (19, 3) per-class colour
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    for index in range(batch):
        # Background, then 5 ellipses with random centres, radii and classes painted in order.
        for _ in range(5):
            cy, cx = (torch.rand(2, generator=generator) - 0.5).tolist()
            ry, rx = (torch.rand(2, generator=generator) * 0.5 + 0.2).tolist()
            cls = int(torch.randint(1, NUM_CLASSES, (1,), generator=generator))
            inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            labels[index][inside] = cls
    images = colours[labels].permute(0, 3, 1, 2)  # (B, 3, size, size)
    images = images + noise * torch.randn(images.shape, generator=generator)
    return one_hot(labels), images.clamp(-1, 1)
