"""Synthetic face-like class maps for the MaskVAE tests: layered ellipses and rectangles."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from maskgan.labels import CLASS_INDEX


def face_masks(num: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(num, size, size) int64 class maps: cloth, neck, skin, hair, brows, eyes, nose, lips, jittered."""
    generator = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in (0, 1)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    masks = torch.zeros(num, size, size, dtype=torch.int64)

    def jitter(scale: float) -> float:
        return float((torch.rand((), generator=generator) * 2 - 1) * scale)

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
        return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1

    def rect(top: float, bottom: float, left: float, right: float) -> torch.Tensor:
        return (y >= top) & (y < bottom) & (x >= left) & (x < right)

    for index in range(num):
        cy, cx = 0.45 + jitter(0.05), 0.5 + jitter(0.06)
        face_ry, face_rx = 0.28 + jitter(0.03), 0.22 + jitter(0.03)
        layers = [  # painted in this order; later layers cover earlier ones, as in the merge rule
            ("cloth", rect(0.85 + jitter(0.03), 1.0, 0.1, 0.9)),
            ("neck", rect(cy + 0.15, 0.9, cx - 0.1, cx + 0.1)),
            ("skin", ellipse(cy, cx, face_ry, face_rx)),
            ("hair", ellipse(cy - face_ry * 0.8, cx, face_ry * 0.55, face_rx * 1.15)),
            ("l_brow", rect(cy - 0.12, cy - 0.08, cx - 0.15, cx - 0.04)),
            ("r_brow", rect(cy - 0.12, cy - 0.08, cx + 0.04, cx + 0.15)),
            ("l_eye", ellipse(cy - 0.04, cx - 0.09, 0.035, 0.06)),
            ("r_eye", ellipse(cy - 0.04, cx + 0.09, 0.035, 0.06)),
            ("nose", ellipse(cy + 0.06, cx, 0.06, 0.035)),
            ("u_lip", rect(cy + 0.14, cy + 0.17, cx - 0.08, cx + 0.08)),
            ("l_lip", rect(cy + 0.17, cy + 0.21, cx - 0.07, cx + 0.07)),
        ]
        for part, region in layers:
            masks[index][region] = CLASS_INDEX[part]
    return masks


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (the test machines share 2 cores), then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
