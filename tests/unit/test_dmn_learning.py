"""The tiny DMN fits a handful of synthetic mask/image pairs with plain L1 (fp32; bf16 + channels_last)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from model_inputs import face_like_pairs

from maskgan.models.dmn import DenseMappingNetwork, dmn_tiny

NUM_PAIRS = 4
STEPS = 150
REQUIRED_FACTOR = 3.0  # final L1 at least 3x below the initial L1 (the noise floor is ~0.04, start ~0.42)


def fit(seed: int, low_precision: bool) -> list[float]:
    """Train a fresh tiny DMN to reconstruct the pairs, G(M, M, I) ~ I; returns the L1 of every step."""
    torch.manual_seed(seed)
    model = DenseMappingNetwork(dmn_tiny())
    # (4, 19, 32, 32) one-hot masks, (4, 3, 32, 32) images
    masks, images = face_like_pairs(NUM_PAIRS, dmn_tiny().resolution, seed=seed)
    if low_precision:
        model = model.to(memory_format=torch.channels_last)
        masks = masks.contiguous(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    # Release betas; a higher lr than its 5e-5 so that a few hundred steps suffice.
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(STEPS):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if low_precision else contextlib.nullcontext()
        with autocast:
            output = model(masks, masks, images)
        loss = (output.float() - images).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("low_precision", [False, True], ids=["fp32", "bf16-channels-last"])
def test_tiny_dmn_fits_synthetic_pairs(low_precision):
    losses = fit(seed=0, low_precision=low_precision)
    first, last = losses[0], sum(losses[-10:]) / 10
    assert all(torch.isfinite(torch.tensor(losses)))
    assert first / last >= REQUIRED_FACTOR, f"L1 fell from {first:.4f} to {last:.4f} in {STEPS} steps"
