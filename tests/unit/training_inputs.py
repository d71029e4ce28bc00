"""In-memory batches in the loader layout for the training-stage tests (no data files)."""

from __future__ import annotations

import torch
from mask_vae_fixtures import face_masks

from maskgan.labels import one_hot


def make_batch(batch_size: int = 4, seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    """Face-like class maps, images coloured per class with a per-sample tint, ids."""
    label = face_masks(batch_size, size=size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    colours = torch.rand(batch_size, 19, 3, generator=generator) * 1.6 - 0.8  # (B, 19, 3)
    image = torch.stack([colours[i][label[i]] for i in range(batch_size)]).permute(0, 3, 1, 2)
    return {"label": label, "onehot": one_hot(label), "image": image.contiguous(),
            "id": torch.arange(seed * batch_size, (seed + 1) * batch_size)}  # fmt: skip


def batches(num: int, batch_size: int = 4, seed: int = 0):
    for index in range(num):
        yield make_batch(batch_size, seed + index)


def gradient_counts(module: torch.nn.Module) -> dict[str, int]:
    """name -> how many backward passes computed a gradient for that parameter (filled in as they run)."""
    counts = dict.fromkeys((name for name, _ in module.named_parameters()), 0)
    for name, parameter in module.named_parameters():
        parameter.register_hook(lambda grad, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts
