"""Rule-based mask edits for evaluation: pure functions on class maps (never modify their input).

Each takes a (H, W) or (B, H, W) integer class map (ids 0..18, maskgan.labels order) and returns a new
one of the same shape and dtype. The edits keep the dataset's merge rule: a part is only painted over
classes that come before it (hair covers skin, glasses cover skin and nose, eyes and brows stay on
top of glasses). A sample the rule cannot apply to (no mouth, no eyes, no hair anywhere) comes back
unchanged; callers detect that with `changed(original, edited)`.
"""

from __future__ import annotations

import torch

from maskgan.labels import CLASS_INDEX, NUM_CLASSES

BACKGROUND, SKIN, NOSE = CLASS_INDEX["background"], CLASS_INDEX["skin"], CLASS_INDEX["nose"]
GLASSES, LEFT_EYE, RIGHT_EYE = CLASS_INDEX["eye_g"], CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]
HAIR = CLASS_INDEX["hair"]
MOUTH_CLASSES = (CLASS_INDEX["mouth"], CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"])


def _check(label: torch.Tensor, name: str = "label") -> None:
    if not isinstance(label, torch.Tensor) or label.dim() not in (2, 3):
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"{name} must be a (H, W) or (B, H, W) class-id tensor, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {label.dtype}")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= NUM_CLASSES):
        raise ValueError(
            f"{name} holds ids in [{int(label.min())}, {int(label.max())}], expected 0..{NUM_CLASSES - 1}"
        )


def _per_sample(label: torch.Tensor, edit, *others: torch.Tensor) -> torch.Tensor:
    """Apply edit(sample, *other_samples) -> sample to each (H, W) map of a (B, H, W) batch."""
    if label.dim() == 2:
        return edit(label.clone(), *others)
    return torch.stack(
        [edit(sample.clone(), *(other[i] for other in others)) for i, sample in enumerate(label)]
    )


def changed(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Boolean map of the pixels an edit changed (same shape as its inputs)."""
    if original.shape != edited.shape:
        raise ValueError(
            f"original {tuple(original.shape)} and edited {tuple(edited.shape)} masks differ in shape"
        )
    return original != edited


def scale_mouth(label: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the mouth region (mouth, upper and lower lip) about its centroid by `factor`.

    factor > 1 grows it, painting only over skin; factor < 1 shrinks it, the freed pixels become skin.
    Nearest-neighbour sampling keeps the lips / mouth layout.
    """
    _check(label)
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    mouth_ids = torch.tensor(MOUTH_CLASSES, device=label.device)

    def edit(sample: torch.Tensor) -> torch.Tensor:
        is_mouth = torch.isin(sample, mouth_ids)
        if not is_mouth.any():
            return sample
        height, width = sample.shape
        ys, xs = torch.nonzero(is_mouth, as_tuple=True)
        centre_y, centre_x = ys.float().mean(), xs.float().mean()
        grid_y, grid_x = torch.meshgrid(
            torch.arange(height, device=sample.device),
            torch.arange(width, device=sample.device),
            indexing="ij",
        )
        source_y = (centre_y + (grid_y - centre_y) / factor).round().long()
        source_x = (centre_x + (grid_x - centre_x) / factor).round().long()
        inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
        sampled = sample[source_y.clamp(0, height - 1), source_x.clamp(0, width - 1)]
        new_mouth = inside & torch.isin(sampled, mouth_ids)
        out = sample.clone()
        out[is_mouth & ~new_mouth] = SKIN
        paint = new_mouth & (is_mouth | (sample == SKIN))
        out[paint] = sampled[paint]
        return out

    return _per_sample(label, edit)


def grow_mouth(label: torch.Tensor, factor: float = 1.6) -> torch.Tensor:
    """A larger mouth (over skin only)."""
    return scale_mouth(label, factor)


def shrink_mouth(label: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """A smaller mouth (freed pixels become skin)."""
    return scale_mouth(label, factor)


def swap_hair(label: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Replace label's hair with other's hair region.

    The old hair becomes background; the new hair is painted over every class before hair (skin,
    face parts, background), and under hat, earrings, necklace, neck and cloth, as the merge rule does.
    """
    _check(label)
    _check(other, "other")
    if other.shape != label.shape:
        raise ValueError(f"other {tuple(other.shape)} must have label's shape {tuple(label.shape)}")

    def edit(sample: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
        out = sample.clone()
        out[sample == HAIR] = BACKGROUND
        paint = (donor == HAIR) & (out < HAIR)
        out[paint] = HAIR
        return out

    return _per_sample(label, edit, other)


def add_glasses(label: torch.Tensor, margin: int | None = None) -> torch.Tensor:
    """Glasses (eye_g) over both eyes: each eye's box grown by `margin` pixels, plus a bridge between them.

    eye_g covers lenses and frame (as in CelebAMask-HQ's masks) and is painted over skin and nose only,
    so eyes and brows stay on top. margin None = half the taller eye's height, at least 1 pixel.
    A sample without both eyes is returned unchanged.
    """
    _check(label)
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 or None, got {margin}")

    def edit(sample: torch.Tensor) -> torch.Tensor:
        boxes = []
        for eye in (LEFT_EYE, RIGHT_EYE):
            ys, xs = torch.nonzero(sample == eye, as_tuple=True)
            if len(ys) == 0:
                return sample
            boxes.append((int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())))
        pad = margin if margin is not None else max(1, max(b[1] - b[0] + 1 for b in boxes) // 2)
        height, width = sample.shape
        region = torch.zeros_like(sample, dtype=torch.bool)
        for top, bottom, left, right in boxes:
            region[
                max(0, top - pad) : min(height, bottom + pad + 1),
                max(0, left - pad) : min(width, right + pad + 1),
            ] = True
        (top_a, bottom_a, left_a, right_a), (top_b, bottom_b, left_b, right_b) = sorted(
            boxes, key=lambda b: b[2]
        )
        row = round(((top_a + bottom_a) / 2 + (top_b + bottom_b) / 2) / 2)
        region[row, right_a : left_b + 1] = True  # the bridge between the lenses
        out = sample.clone()
        paint = region & ((sample == SKIN) | (sample == NOSE))
        out[paint] = GLASSES
        return out

    return _per_sample(label, edit)


def remove_glasses(label: torch.Tensor) -> torch.Tensor:
    """Glasses (eye_g) become skin."""
    _check(label)
    out = label.clone()
    out[label == GLASSES] = SKIN
    return out


RULES = ("mouth_grow", "mouth_shrink", "hair_swap", "glasses_add", "glasses_remove")


def apply_rule(rule: str, label: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """One of RULES by name; hair_swap needs `other` (the donor masks, same shape)."""
    if rule == "hair_swap":
        if other is None:
            raise ValueError("hair_swap needs other=<donor masks>")
        return swap_hair(label, other)
    edits = {"mouth_grow": grow_mouth, "mouth_shrink": shrink_mouth, "glasses_add": add_glasses,
             "glasses_remove": remove_glasses}  # fmt: skip
    if rule not in edits:
        raise ValueError(f"unknown edit rule {rule!r}; expected one of {', '.join(RULES)}")
    return edits[rule](label)
