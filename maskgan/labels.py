"""The 19 CelebAMask-HQ classes: their order, colours, the merge rule and one-hot helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are used: Ray Data workers never need it
    import torch

# Index = class id. The order is the released one (REFERENCE.md §1); other face parsers differ.
CLASS_NAMES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)
# The part names that appear in mask file names (`{id:05d}_{part}.png`): every class but background.
PART_NAMES: tuple[str, ...] = CLASS_NAMES[1:]
CLASS_INDEX: Mapping[str, int] = {name: index for index, name in enumerate(CLASS_NAMES)}

# (19, 3) uint8: colours of the released demo, row = class id.
COLORS = np.array(
    [
        (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204),
        (0, 255, 255), (51, 255, 255), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0),
        (0, 0, 153), (0, 0, 204), (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51),
        (0, 204, 0),
    ],
    dtype=np.uint8,
)  # fmt: skip


# Horizontal flip: class id -> the class the same pixels belong to in the mirrored face. A flip turns a
# left eye / brow / ear into a right one; every other class (earring and necklace included) keeps its id.
MIRROR_PAIRS: tuple[tuple[str, str], ...] = (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))


def _mirror_table() -> np.ndarray:
    table = np.arange(NUM_CLASSES, dtype=np.uint8)
    for left, right in MIRROR_PAIRS:
        table[CLASS_INDEX[left]], table[CLASS_INDEX[right]] = CLASS_INDEX[right], CLASS_INDEX[left]
    table.setflags(write=False)
    return table


MIRROR = _mirror_table()  # (19,) uint8, an involution: MIRROR[MIRROR] == identity


def mirror_label(label: np.ndarray) -> np.ndarray:
    """(..., H, W) class map -> its horizontal mirror image, left/right classes swapped (labels.MIRROR)."""
    return MIRROR[np.asarray(label)[..., ::-1]]


def part_index(part: str) -> int:
    """Class id of a part file name; raises ValueError naming the known parts."""
    if part not in PART_NAMES:
        raise ValueError(f"unknown CelebAMask-HQ part {part!r}; expected one of {', '.join(PART_NAMES)}")
    return CLASS_INDEX[part]


def merge_parts(parts: Mapping[str, np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray:
    """Merge binary part masks into one (H, W) uint8 class map, painting parts in class order.

    Later classes overwrite earlier ones (hair over skin, hat over hair, neck over necklace,
    cloth over neck), exactly as the released merge script does. Masks are non-zero where the
    part is present; (H, W) or (H, W, C) arrays are accepted and channel 0 is read.
    """
    if not parts and size is None:
        raise ValueError("merge_parts needs at least one part mask or an explicit size")
    ordered = sorted(parts.items(), key=lambda item: part_index(item[0]))
    if size is None:
        size = np.asarray(ordered[0][1]).shape[:2]
    label = np.zeros(size, dtype=np.uint8)
    for part, mask in ordered:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != tuple(size):
            raise ValueError(f"part {part!r} has shape {mask.shape}, expected {tuple(size)}")
        # Painting in increasing class order with overwrite == keeping the largest class id present,
        # and np.maximum is ~10x faster than boolean-index assignment on 512 x 512 masks.
        # `!= 0` even for bools: numpy arrays of Pillow 1-bit images are bools stored as 0 / 255
        # bytes, which the uint8 view below would turn into class id * 255.
        present = mask != 0
        np.maximum(label, present.view(np.uint8) * np.uint8(CLASS_INDEX[part]), out=label)
    return label


def label_to_color(label: np.ndarray) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) uint8 colour image in the demo's palette."""
    label = np.asarray(label)
    if label.size and int(label.max()) >= NUM_CLASSES:
        raise ValueError(f"label holds class {int(label.max())}; expected ids below {NUM_CLASSES}")
    return COLORS[label]


def color_to_label(image: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """(H, W, 3) colour image -> (H, W) class map; each pixel takes the nearest palette colour.

    Pixels farther than `tolerance` (max abs channel difference) from every palette colour raise
    ValueError, so a painted mask with stray colours is reported instead of guessed.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"colour mask must be (H, W, 3), got shape {image.shape}")
    pixels = image[..., :3].astype(np.int16)
    # (H, W, 19): max abs channel distance to each palette colour.
    distance = np.abs(pixels[..., None, :] - COLORS.astype(np.int16)).max(axis=-1)
    label = distance.argmin(axis=-1).astype(np.uint8)
    worst = int(distance.min(axis=-1).max()) if distance.size else 0
    if worst > tolerance:
        raise ValueError(
            f"colour mask has pixels {worst} levels away from every class colour "
            f"(tolerance {tolerance}); paint with the palette in maskgan.labels.COLORS"
        )
    return label


def one_hot(label: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(B, H, W) integer class map -> (B, C, H, W) float one-hot."""
    if label.dim() != 3:
        raise ValueError(f"one_hot expects (B, H, W) class indices, got shape {tuple(label.shape)}")
    import torch

    label = label.long()
    out = torch.zeros(label.shape[0], num_classes, *label.shape[1:], device=label.device)
    return out.scatter_(1, label.unsqueeze(1), 1.0)


def from_one_hot(onehot: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) one-hot or logits -> (B, H, W) int64 class map (argmax over classes)."""
    if onehot.dim() != 4:
        raise ValueError(f"from_one_hot expects (B, C, H, W), got shape {tuple(onehot.shape)}")
    return onehot.argmax(dim=1)
