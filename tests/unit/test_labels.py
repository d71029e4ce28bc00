import numpy as np
import pytest
import torch

from maskgan import labels


def square(size, top, left, bottom, right):
    mask = np.zeros((size, size), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def test_class_order_is_the_released_one():
    assert labels.NUM_CLASSES == 19
    assert labels.CLASS_NAMES[0] == "background"
    assert labels.CLASS_INDEX["hair"] == 13 and labels.CLASS_INDEX["hat"] == 14
    assert labels.CLASS_INDEX["neck_l"] == 16 and labels.CLASS_INDEX["neck"] == 17
    assert labels.CLASS_INDEX["cloth"] == 18 and labels.CLASS_INDEX["u_lip"] == 11
    assert tuple(labels.COLORS[13]) == (0, 0, 204)
    assert labels.COLORS.shape == (19, 3)


# REFERENCE.md §1, copied literally (idx | part | colour used by the released demo), both halves.
RELEASED_TABLE = """
| 0 | background | (0,0,0) | 10 | mouth | (102,204,0) |
| 1 | skin | (204,0,0) | 11 | u_lip | (255,255,0) |
| 2 | nose | (76,153,0) | 12 | l_lip | (0,0,153) |
| 3 | eye_g | (204,204,0) | 13 | hair | (0,0,204) |
| 4 | l_eye | (51,51,255) | 14 | hat | (255,51,153) |
| 5 | r_eye | (204,0,204) | 15 | ear_r (earring) | (0,204,204) |
| 6 | l_brow | (0,255,255) | 16 | neck_l (necklace) | (0,51,0) |
| 7 | r_brow | (51,255,255) | 17 | neck | (255,153,51) |
| 8 | l_ear | (102,51,0) | 18 | cloth | (0,204,0) |
| 9 | r_ear | (255,0,0) | | | |
"""


def released_rows() -> dict[int, tuple[str, tuple[int, int, int]]]:
    rows = {}
    for line in RELEASED_TABLE.strip().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for index, part, colour in (cells[0:3], cells[3:6]):
            if index:
                rows[int(index)] = (part.split()[0], tuple(int(v) for v in colour.strip("()").split(",")))
    return rows


def test_every_class_name_and_colour_is_the_released_one():
    rows = released_rows()
    assert sorted(rows) == list(range(19))
    for index, (part, colour) in rows.items():
        assert labels.CLASS_NAMES[index] == part, index
        assert tuple(int(v) for v in labels.COLORS[index]) == colour, (index, part)
    assert labels.COLORS.shape == (19, 3) and labels.COLORS.dtype == np.uint8
    # What the preview and colour masks use: class i is painted in the released colour i.
    expected = np.array([[rows[index][1] for index in range(19)]], np.uint8)  # (1, 19, 3)
    np.testing.assert_array_equal(labels.label_to_color(np.arange(19, dtype=np.uint8)[None]), expected)


@pytest.mark.parametrize(
    ("under", "over"),
    [
        ("skin", "hair"),
        ("nose", "hair"),
        ("hair", "hat"),
        ("neck_l", "neck"),
        ("neck", "cloth"),
        ("skin", "l_eye"),
    ],
)
def test_merge_later_class_overwrites_earlier(under, over):
    parts = {under: square(8, 0, 0, 6, 6), over: square(8, 3, 3, 8, 8)}
    label = labels.merge_parts(parts)
    assert label[4, 4] == labels.CLASS_INDEX[over]  # the overlap takes the later class
    assert label[1, 1] == labels.CLASS_INDEX[under]
    assert label[7, 7] == labels.CLASS_INDEX[over]
    assert label[0, 7] == 0  # background where no part is
    # Insertion order of the dict must not matter: only the class order does.
    reversed_parts = dict(reversed(list(parts.items())))
    np.testing.assert_array_equal(labels.merge_parts(reversed_parts), label)


def test_merge_reads_channel_zero_of_rgb_masks():
    rgb = np.repeat(square(4, 0, 0, 2, 2)[..., None], 3, axis=2)
    label = labels.merge_parts({"nose": rgb})
    assert label[0, 0] == 2 and label[3, 3] == 0


def test_merge_rejects_unknown_part_and_mismatched_size():
    with pytest.raises(ValueError, match="unknown CelebAMask-HQ part 'tail'"):
        labels.merge_parts({"tail": square(4, 0, 0, 2, 2)})
    with pytest.raises(ValueError, match="shape"):
        labels.merge_parts({"skin": square(4, 0, 0, 2, 2), "hair": square(8, 0, 0, 2, 2)})


def test_colour_round_trip_and_stray_colours():
    label = np.arange(19, dtype=np.uint8).reshape(1, 19).repeat(3, axis=0)
    colour = labels.label_to_color(label)
    np.testing.assert_array_equal(labels.color_to_label(colour), label)
    noisy = colour.astype(np.int16) + 3
    np.testing.assert_array_equal(
        labels.color_to_label(np.clip(noisy, 0, 255).astype(np.uint8), tolerance=5), label
    )
    colour[0, 0] = (123, 77, 10)
    with pytest.raises(ValueError, match="levels away"):
        labels.color_to_label(colour)


def test_one_hot_round_trip():
    label = torch.randint(0, 19, (2, 5, 7))
    onehot = labels.one_hot(label)
    assert onehot.shape == (2, 19, 5, 7)
    assert torch.all(onehot.sum(dim=1) == 1)
    assert torch.equal(labels.from_one_hot(onehot), label)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        labels.one_hot(label[0])
