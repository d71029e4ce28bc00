"""Rule-based mask edits: each changes what it says, nothing else, keeps the merge order, and is pure."""

from __future__ import annotations

import pytest
import torch

from maskgan import editing_rules as rules
from maskgan.labels import CLASS_INDEX

SKIN, HAIR, HAT, NECK = CLASS_INDEX["skin"], CLASS_INDEX["hair"], CLASS_INDEX["hat"], CLASS_INDEX["neck"]
MOUTH, U_LIP, L_LIP = CLASS_INDEX["mouth"], CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"]
L_EYE, R_EYE, GLASSES, NOSE, L_BROW = (CLASS_INDEX[n] for n in ("l_eye", "r_eye", "eye_g", "nose", "l_brow"))


def face() -> torch.Tensor:
    """A 16 x 16 face: skin square, two eyes, a brow, a nose, a 3-row mouth, hair on top, a hat corner."""
    label = torch.zeros(16, 16, dtype=torch.int64)
    label[3:14, 3:13] = SKIN
    label[0:3, 2:14] = HAIR
    label[0, 2:4] = HAT
    label[5, 5:7] = L_EYE
    label[5, 9:11] = R_EYE
    label[4, 5:7] = L_BROW
    label[7, 7:9] = NOSE
    label[9, 6:10] = U_LIP
    label[10, 6:10] = MOUTH
    label[11, 6:10] = L_LIP
    return label


def mouth_pixels(label: torch.Tensor) -> int:
    return int(torch.isin(label, torch.tensor(rules.MOUTH_CLASSES)).sum())


def test_grow_mouth_paints_only_over_skin_and_keeps_the_lip_order():
    label = face()
    grown = rules.grow_mouth(label, 1.6)
    assert mouth_pixels(grown) > mouth_pixels(label)
    diff = rules.changed(label, grown)
    assert (label[diff] == SKIN).all(), "a grown mouth covers skin only"
    assert set(grown[diff].tolist()) <= set(rules.MOUTH_CLASSES)
    rows = [
        int(grown[:, col][torch.isin(grown[:, col], torch.tensor(rules.MOUTH_CLASSES))][0]) for col in (7, 8)
    ]
    assert rows == [U_LIP, U_LIP], "the upper lip stays the top row"


def test_shrink_mouth_frees_pixels_to_skin_and_touches_nothing_else():
    label = face()
    shrunk = rules.shrink_mouth(label, 0.5)
    assert 0 < mouth_pixels(shrunk) < mouth_pixels(label)
    diff = rules.changed(label, shrunk)
    assert torch.isin(label[diff], torch.tensor(rules.MOUTH_CLASSES)).all()
    assert (shrunk[diff] == SKIN).all()


def test_scale_mouth_without_a_mouth_or_with_factor_one_is_a_no_op():
    label = face()
    no_mouth = label.clone()
    no_mouth[torch.isin(no_mouth, torch.tensor(rules.MOUTH_CLASSES))] = SKIN
    assert torch.equal(rules.grow_mouth(no_mouth), no_mouth)
    assert torch.equal(rules.scale_mouth(label, 1.0), label)
    with pytest.raises(ValueError, match="factor"):
        rules.scale_mouth(label, 0.0)


def test_swap_hair_takes_the_donor_hair_under_the_hat_and_clears_the_old_hair():
    label, donor = face(), torch.zeros(16, 16, dtype=torch.int64)
    donor[0:6, 0:4] = HAIR  # long hair on the left
    swapped = rules.swap_hair(label, donor)
    assert (swapped[0, 2:4] == HAT).all(), "the hat stays over the new hair"
    assert (swapped[(donor == HAIR) & (label < HAIR)] == HAIR).all()
    old_only = (label == HAIR) & (donor != HAIR)
    assert (swapped[old_only] == 0).all(), "hair the donor lacks becomes background"
    untouched = (label != HAIR) & (donor != HAIR)
    assert torch.equal(swapped[untouched], label[untouched])


def test_add_glasses_covers_skin_round_the_eyes_and_keeps_eyes_and_brows_on_top():
    label = face()
    glasses = rules.add_glasses(label)
    diff = rules.changed(label, glasses)
    assert diff.any() and (glasses[diff] == GLASSES).all()
    assert torch.isin(label[diff], torch.tensor([SKIN, NOSE])).all()
    for cls in (L_EYE, R_EYE, L_BROW):
        assert torch.equal(glasses == cls, label == cls)
    assert (glasses[5, 7:9] == GLASSES).all(), "a bridge joins the lenses"


def test_add_glasses_needs_both_eyes_and_remove_glasses_undoes_it_to_skin():
    label = face()
    one_eye = label.clone()
    one_eye[one_eye == R_EYE] = SKIN
    assert torch.equal(rules.add_glasses(one_eye), one_eye)
    glasses = rules.add_glasses(label)
    assert torch.equal(rules.remove_glasses(glasses), label)  # every glasses pixel was skin before
    assert torch.equal(rules.remove_glasses(label), label)


def test_rules_are_pure_batched_and_validate_their_input():
    label = face()
    batch = torch.stack([label, label.flip(1)])
    before = batch.clone()
    for rule in rules.RULES:
        out = rules.apply_rule(rule, batch, batch.roll(1, 0))
        assert out.shape == batch.shape and out.dtype == batch.dtype
        assert torch.equal(out[0], rules.apply_rule(rule, batch[0], batch[1]))
    assert torch.equal(batch, before), "inputs are never modified"
    with pytest.raises(ValueError, match=r"ids in \[19, 19\], expected 0..18"):
        rules.grow_mouth(torch.full((4, 4), 19))
    with pytest.raises(ValueError, match="integer"):
        rules.add_glasses(label.float())
    with pytest.raises(ValueError, match="needs other"):
        rules.apply_rule("hair_swap", label)
    with pytest.raises(ValueError, match="unknown edit rule"):
        rules.apply_rule("beard", label)
