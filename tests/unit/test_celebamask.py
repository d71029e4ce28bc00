"""Raw-layout rules: official split boundaries, text-file parsing, and what a valid image / mask is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskgan.data import celebamask as raw
from maskgan.data.celebamask import BadSample, DecodeConfig

CONFIG = DecodeConfig(resolution=16, mask_size=8, max_image_pixels=64 * 64)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orig_idx", "split"),
    [(0, "train"), (162770, "train"), (162771, "val"), (182637, "val"), (182638, "test"), (202598, "test")],
)
def test_official_split_boundaries(orig_idx, split):
    assert raw.official_split(orig_idx) == split


def test_hash_split_is_deterministic_and_follows_fractions():
    fractions = (0.8, 0.1, 0.1)
    splits = [raw.hash_split(i, fractions, seed=0) for i in range(5000)]
    assert splits == [raw.hash_split(i, fractions, seed=0) for i in range(5000)]
    assert splits != [raw.hash_split(i, fractions, seed=1) for i in range(5000)]
    share = {name: splits.count(name) / len(splits) for name in raw.SPLITS}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02


def test_text_files_parse_and_report_bad_lines():
    assert raw.parse_mapping("idx orig_idx orig_file\n0 119613 119614.jpg\n1 99094 99095.jpg\n") == {
        0: 119613,
        1: 99094,
    }
    with pytest.raises(ValueError, match="line 2"):
        raw.parse_mapping("idx orig_idx orig_file\nzero x y\n")
    names, values = raw.parse_attributes("1\nA B\n7.jpg 1 -1\n")
    assert names == ["A", "B"] and values == {7: [1, -1]}
    with pytest.raises(ValueError, match="line 3"):
        raw.parse_attributes("1\nA B\n7.jpg 1\n")
    assert raw.parse_pose("1\nYaw Pitch Raw\n3.jpg 1.5 -2 0.25\n") == {3: (1.5, -2.0, 0.25)}


def test_layout_names():
    assert raw.image_relative_path(2500) == "CelebA-HQ-img/2500.jpg"
    assert raw.mask_relative_path(2500, "l_brow") == "CelebAMask-HQ-mask-anno/1/02500_l_brow.png"


@pytest.mark.parametrize(
    ("make", "accepted"),
    [
        (lambda m: png(m), True),  # greyscale 0/255, as released
        (lambda m: png(np.repeat(m[..., None], 3, axis=2)), True),  # RGB with equal channels
        (lambda m: png(np.dstack([m, m, m, np.full_like(m, 255)])), True),  # RGBA
        (lambda m: png(m // 255), True),  # 0/1
        (lambda m: png(m, "1"), True),  # 1-bit
        (lambda m: png(np.dstack([m, np.zeros_like(m), m])), False),  # coloured
        (lambda m: png(np.where(m > 0, 128, 0).astype(np.uint8)), False),  # 0/128
        (lambda m: png(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4), False),  # gradient
        # max is 255, yet not binary: an anti-aliased edge, a stray 1 (only the count check sees these)
        (lambda m: png(np.where(np.eye(8, dtype=bool), 128, m).astype(np.uint8)), False),
        (lambda m: png(np.where(np.eye(8, dtype=bool), 1, m).astype(np.uint8)), False),
        (
            lambda m: png(
                np.where(np.eye(8, dtype=bool)[..., None], 128, np.dstack([m] * 3)).astype(np.uint8)
            ),
            False,
        ),
        (lambda m: png(m.astype(np.uint16) * 257), True),  # 16-bit 0 / 65535
        (
            lambda m: png(np.where(np.eye(8, dtype=bool), 100, m.astype(np.uint16) * 257)),
            False,
        ),  # 16-bit, stray
        (lambda m: png(m.astype(np.uint16) * 100), False),  # 16-bit 0 / 25500
    ],
)
def test_mask_validation(make, accepted):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:7] = 255
    data = make(mask)
    if accepted:
        np.testing.assert_array_equal(raw.decode_mask(data, "00001_skin.png", CONFIG), mask > 0)
        label = raw.decode_label({"hair": data}, CONFIG, 1)  # the class id, not id * 255 (1-bit bytes)
        np.testing.assert_array_equal(label[::2, ::2], np.where(mask > 0, 13, 0))
    else:
        with pytest.raises(BadSample, match="00001_skin.png"):
            raw.decode_mask(data, "00001_skin.png", CONFIG)
        with pytest.raises(BadSample, match="00001_hair.png"):
            raw.decode_label({"hair": data}, CONFIG, 1)


def test_image_validation():
    assert raw.decode_image(jpeg((32, 32)), CONFIG).shape == (16, 16, 3)
    with pytest.raises(BadSample, match="square"):
        raw.decode_image(jpeg((32, 24)), CONFIG)
    with pytest.raises(BadSample, match="smaller than the output resolution"):
        raw.decode_image(jpeg((8, 8)), CONFIG)
    with pytest.raises(BadSample, match="over the limit"):
        raw.decode_image(jpeg((80, 80)), CONFIG)
    with pytest.raises(BadSample, match="zero-byte"):
        raw.decode_image(b"", CONFIG)
    with pytest.raises(BadSample, match="not an image"):
        raw.decode_image(b"GIF? no, text", CONFIG)
    with pytest.raises(BadSample, match="truncated or corrupt"):
        raw.decode_image(jpeg((32, 32))[:200], CONFIG)


def test_decode_label_merges_and_resizes():
    skin = np.zeros((8, 8), np.uint8)
    skin[1:7, 1:7] = 255
    hair = np.zeros((8, 8), np.uint8)
    hair[0:3, :] = 255
    label = raw.decode_label({"hair": png(hair), "skin": png(skin)}, CONFIG)
    assert label.shape == (16, 16)
    assert label[0, 0] == 13 and label[8, 8] == 1 and label[15, 15] == 0
    assert raw.present_classes(label) == (1 << 0) | (1 << 1) | (1 << 13)
    with pytest.raises(BadSample, match="no mask files"):
        raw.decode_label({}, CONFIG)
