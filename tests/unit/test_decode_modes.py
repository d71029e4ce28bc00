"""Every pixel mode and file format Pillow writes, as an image and as a part mask.

Each case compares decoded VALUES (RGB pixels, the merged label map) with what the mode rules in
maskgan/data/celebamask.py promise, or checks a quarantine reason; "no crash" is never enough.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskgan import labels
from maskgan.data import celebamask as raw
from maskgan.data.celebamask import BadSample, DecodeConfig

SIZE = 16
# resolution == image size == mask size: no resize, so lossless formats must give exact values.
CONFIG = DecodeConfig(resolution=SIZE, mask_size=SIZE, max_image_pixels=4 * SIZE * SIZE)
LOSSY = ("JPEG", "JPEG2000", "MPO", "AVIF")  # or lossy by default: compared with a tolerance

_y, _x = np.mgrid[0:SIZE, 0:SIZE]
RGB = np.dstack([_x * 16, _y * 16, (_x + _y) * 8]).astype(np.uint8)  # (16, 16, 3) smooth, not symmetric
GREY = (_x * 15 + _y).astype(np.uint8)  # (16, 16), values 0..240
PALETTE_INDEX = ((_x // 4) * 4 + _y // 4).astype(np.uint8)  # 16 palette entries in 4x4 blocks
PALETTE = np.array([(17 * i, 255 - 13 * i, (97 * i) % 256) for i in range(16)], np.uint8)  # (16, 3)
SIXTEEN = (_x * 4096 + _y * 257).clip(0, 65535).astype(np.uint16)  # (16, 16) 16-bit greyscale
# An irregular part (not block aligned, so JPEG rings) and a fixed second part under it.
HAIR = ((_x - 6) ** 2 + (_y - 5) ** 2 < 20) | ((_x > 11) & (_y > 9))
SKIN = (_x > 2) & (_x < 14) & (_y > 3)
M255 = HAIR.astype(np.uint8) * 255
EDGE = SKIN & ~HAIR  # where a non-binary mask gets its stray values


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_48bit(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow writes no such mode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def palette_image(index: np.ndarray, palette: np.ndarray, transparency: int | None = None) -> Image.Image:
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# ---------------------------------------------------------------- images: (R, R, 3) RGB values

SIXTEEN_AS_8 = grey3((SIXTEEN / 257 + 0.5).astype(np.uint8))  # round(v / 257)
THROUGH_PALETTE = PALETTE[PALETTE_INDEX]  # (16, 16, 3)

with_alpha = Image.fromarray(np.dstack([RGB, (GREY // 2 + 1).astype(np.uint8)]))  # alpha 1..121
rotated_exif = Image.Exif()
rotated_exif[0x0112] = 6  # EXIF orientation: display rotated 90 degrees

IMAGE_CASES = {
    # id: (file bytes, expected (16, 16, 3) uint8, max abs error allowed)
    **{
        f"RGB-{fmt}": (encode(Image.fromarray(RGB), fmt, **params), RGB, 0)
        for fmt, params in [("PNG", {}), ("TIFF", {}), ("BMP", {}), ("PPM", {}), ("TGA", {}), ("QOI", {}),
                            ("SGI", {}), ("WEBP", {"lossless": True}), ("DDS", {}), ("PCX", {})]
    },  # fmt: skip
    "RGB-JPEG": (encode(Image.fromarray(RGB), "JPEG", quality=95), RGB, 12),
    "RGB-JPEG-4:2:0-q75": (encode(Image.fromarray(RGB), "JPEG", quality=75), RGB, 24),
    # alpha is dropped, not composited onto a background (as the release's .convert("RGB"))
    **{f"RGBA-{fmt}": (encode(with_alpha, fmt), RGB, 0) for fmt in ("PNG", "TIFF", "TGA", "SGI", "QOI")},
    "RGBA-WEBP": (encode(with_alpha, "WEBP", lossless=True, exact=True), RGB, 0),
    "RGBX-TIFF": (encode(Image.fromarray(RGB).convert("RGBX"), "TIFF"), RGB, 0),
    **{f"L-{fmt}": (encode(Image.fromarray(GREY), fmt), grey3(GREY), 0)
       for fmt in ("PNG", "TIFF", "BMP", "PPM", "TGA", "GIF", "PCX", "SGI")},  # fmt: skip
    "L-JPEG": (encode(Image.fromarray(GREY), "JPEG", quality=95), grey3(GREY), 12),
    **{f"1-{fmt}": (encode(Image.fromarray(M255).convert("1"), fmt), grey3(M255), 0)
       for fmt in ("PNG", "TIFF", "BMP", "PPM", "XBM", "MSP", "PCX")},  # fmt: skip
    **{f"LA-{fmt}": (encode(Image.fromarray(np.dstack([GREY, 255 - GREY]), "LA"), fmt), grey3(GREY), 0)
       for fmt in ("PNG", "TIFF", "TGA")},  # fmt: skip
    **{f"P-{fmt}": (encode(palette_image(PALETTE_INDEX, PALETTE), fmt), THROUGH_PALETTE, 0)
       for fmt in ("PNG", "TIFF", "BMP", "GIF", "TGA", "PCX")},  # fmt: skip
    # palette transparency is ignored like alpha: the palette colour is the pixel
    "P-transparency-PNG": (encode(palette_image(PALETTE_INDEX, PALETTE, 3), "PNG"), THROUGH_PALETTE, 0),
    "P-transparency-GIF": (encode(palette_image(PALETTE_INDEX, PALETTE, 3), "GIF"), THROUGH_PALETTE, 0),
    "PA-TIFF": (
        encode(palette_image(PALETTE_INDEX, PALETTE).convert("PA"), "TIFF"), THROUGH_PALETTE, 0
    ),
    "CMYK-TIFF": (encode(Image.fromarray(RGB).convert("CMYK"), "TIFF"), RGB, 0),
    "CMYK-JPEG": (encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), RGB, 12),
    "YCbCr-TIFF": (encode(Image.fromarray(RGB).convert("YCbCr"), "TIFF"), RGB, 3),  # conversion rounding
    "YCbCr-JPEG": (encode(Image.fromarray(RGB).convert("YCbCr"), "JPEG", quality=95), RGB, 12),
    # 16-bit greyscale: round(v / 257), so 65535 -> 255 (not clipped at 255 as Pillow's convert does)
    "I;16-PNG (16-bit PNG)": (encode(Image.fromarray(SIXTEEN), "PNG"), SIXTEEN_AS_8, 0),
    "I;16-TIFF": (encode(Image.fromarray(SIXTEEN), "TIFF"), SIXTEEN_AS_8, 0),
    "I;16B-TIFF": (
        encode(Image.frombytes("I;16B", (SIZE, SIZE), SIXTEEN.astype(">u2").tobytes()), "TIFF"),
        SIXTEEN_AS_8,
        0,
    ),
    # 16-bit RGB PNG: Pillow keeps each channel's high byte; multiples of 257 map exactly
    "RGB-48bit-PNG": (png_48bit(RGB.astype(np.uint16) * 257), RGB, 0),
    # EXIF orientation is NOT applied: the stored pixels, which the masks are drawn on
    "RGB-JPEG-EXIF-rotated": (encode(Image.fromarray(RGB), "JPEG", quality=95, exif=rotated_exif), RGB, 12),
}  # fmt: skip

IMAGE_QUARANTINED = {
    # id: (file bytes, reason pattern)
    "I-TIFF": (encode(Image.fromarray(SIXTEEN.astype(np.int32)), "TIFF"), r"32-bit integer pixels \(mode I"),
    "I-PPM (16-bit PGM, opened as I)": (encode(Image.fromarray(SIXTEEN), "PPM"), r"mode I\)"),
    "F-TIFF": (encode(Image.fromarray(GREY.astype(np.float32)), "TIFF"), r"floating-point pixels \(mode F\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_mode_decodes_to_the_right_rgb(case):
    data, expected, tolerance = IMAGE_CASES[case]
    pixels = raw.decode_image(data, CONFIG)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    error = np.abs(pixels.astype(int) - expected.astype(int))
    if tolerance == 0:
        np.testing.assert_array_equal(pixels, expected)
    else:
        assert error.mean() <= tolerance / 2 and error.max() <= tolerance * 4, (error.mean(), error.max())


def test_exif_orientation_is_not_applied():
    data = IMAGE_CASES["RGB-JPEG-EXIF-rotated"][0]
    with Image.open(io.BytesIO(data)) as image:
        assert image.getexif()[0x0112] == 6  # the tag is really there
    pixels = raw.decode_image(data, CONFIG).astype(int)
    stored = np.abs(pixels - RGB).mean()
    rotated = np.abs(pixels - np.rot90(RGB, k=-1)).mean()  # what exif_transpose would have given
    assert stored < 4 < rotated


@pytest.mark.parametrize("case", list(IMAGE_QUARANTINED))
def test_image_mode_without_an_8_bit_meaning_is_quarantined(case):
    data, reason = IMAGE_QUARANTINED[case]
    with pytest.raises(BadSample, match=reason):
        raw.decode_image(data, CONFIG)


# ---------------------------------------------------------------- masks: the merged label map

BLACK_WHITE = np.array([(0, 0, 0), (255, 255, 255)], np.uint8)
WHITE_BLACK = BLACK_WHITE[::-1].copy()
FOUR_GREYS = np.array([[0] * 3, [9] * 3, [7] * 3, [255] * 3], np.uint8)  # index 3 = white = the part
ON = HAIR.astype(np.uint8)  # 0 / 1
EXPECTED_LABEL = labels.merge_parts({"skin": SKIN, "hair": HAIR})


def la(colour: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([colour, alpha]).astype(np.uint8), "LA")


def rgba(colour: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([colour, colour, colour, alpha]).astype(np.uint8), "RGBA")


MASK_CASES = {
    # id: hair mask file bytes that must decode to HAIR
    **{f"L-{fmt}": encode(Image.fromarray(M255), fmt)
       for fmt in ("PNG", "TIFF", "BMP", "PPM", "TGA", "GIF", "PCX", "SGI", "DDS")},  # fmt: skip
    "L-WEBP": encode(Image.fromarray(M255), "WEBP", lossless=True),
    "L-0/1-PNG": encode(Image.fromarray(ON), "PNG"),
    # 1-bit: Pillow's numpy view is bools stored as 0 / 255 bytes; must still merge to class ids
    **{f"1-{fmt}": encode(Image.fromarray(M255).convert("1"), fmt)
       for fmt in ("PNG", "TIFF", "BMP", "PPM", "XBM", "MSP", "PCX")},  # fmt: skip
    "LA-opaque-PNG": encode(la(M255, np.full_like(M255, 255)), "PNG"),
    "LA-transparent-black-PNG": encode(la(M255, M255), "PNG"),  # alpha agrees with the colour
    "LA-TIFF": encode(la(M255, np.full_like(M255, 255)), "TIFF"),
    "RGB-PNG": encode(Image.fromarray(grey3(M255)), "PNG"),
    "RGBA-opaque-PNG": encode(rgba(M255, np.full_like(M255, 255)), "PNG"),
    "RGBA-transparent-black-PNG": encode(rgba(M255, M255), "PNG"),
    "RGBX-TIFF": encode(Image.fromarray(grey3(M255)).convert("RGBX"), "TIFF"),
    # palettes: the colour through the palette is what counts, not the index
    **{f"P-{fmt}": encode(palette_image(ON, BLACK_WHITE), fmt) for fmt in ("PNG", "GIF", "TIFF")},
    "P-4-colour-palette-BMP": encode(palette_image(ON * 3, FOUR_GREYS), "BMP"),
    "P-index-0-white-PNG": encode(palette_image(1 - ON, WHITE_BLACK), "PNG"),
    "P-transparent-black-PNG": encode(palette_image(ON, BLACK_WHITE, transparency=0), "PNG"),
    "P-transparent-black-GIF": encode(palette_image(ON, BLACK_WHITE, transparency=0), "GIF"),
    "PA-TIFF": encode(palette_image(ON, BLACK_WHITE).convert("PA"), "TIFF"),
    "CMYK-TIFF": encode(Image.fromarray(M255).convert("CMYK"), "TIFF"),
    "YCbCr-TIFF": encode(Image.fromarray(M255).convert("YCbCr"), "TIFF"),
    # 16-bit: 0 and one of 1, 255, 65535
    "I;16-0/65535-PNG (16-bit PNG)": encode(Image.fromarray(ON.astype(np.uint16) * 65535), "PNG"),
    "I;16-0/255-PNG": encode(Image.fromarray(ON.astype(np.uint16) * 255), "PNG"),
    "I;16-0/1-PNG": encode(Image.fromarray(ON.astype(np.uint16)), "PNG"),
    "I;16B-0/65535-TIFF": encode(
        Image.frombytes("I;16B", (SIZE, SIZE), (ON.astype(">u2") * 65535).tobytes()), "TIFF"
    ),
    "I-0/255-TIFF": encode(Image.fromarray(ON.astype(np.int32) * 255), "TIFF"),
    "I-0/65535-PPM": encode(Image.fromarray(ON.astype(np.uint16) * 65535), "PPM"),
    "F-0/1-TIFF": encode(Image.fromarray(ON.astype(np.float32)), "TIFF"),
}  # fmt: skip

MASK_QUARANTINED = {
    # id: (hair mask file bytes, reason pattern)
    # Pillow reads an 8-bit BMP whose palette is black, white as 1-bit data (garbage): refused
    "P-black-white-palette-BMP": (encode(palette_image(ON, BLACK_WHITE), "BMP"), "misreads"),
    "L-0/128": (encode(Image.fromarray(ON * 128), "PNG"), "expected a binary 0/255 mask"),
    "L-anti-aliased-edge-0/128/255": (
        encode(Image.fromarray(np.where(EDGE, 128, M255).astype(np.uint8)), "PNG"), "3 distinct values"
    ),
    "L-0/1/255": (encode(Image.fromarray(np.where(EDGE, 1, M255).astype(np.uint8)), "PNG"), "binary"),
    "L-gradient": (encode(Image.fromarray(GREY), "PNG"), "binary"),
    "RGB-grey-0/128/255": (
        encode(Image.fromarray(grey3(np.where(EDGE, 128, M255).astype(np.uint8))), "PNG"), "binary"
    ),
    "RGB-coloured": (encode(Image.fromarray(np.dstack([M255, 0 * M255, M255])), "PNG"), "has colour"),
    "P-coloured-palette": (
        encode(palette_image(ON, np.array([(0, 0, 0), (255, 0, 0)], np.uint8)), "PNG"), "has colour"
    ),
    "P-transparent-white-PNG": (encode(palette_image(ON, BLACK_WHITE, 1), "PNG"), "transparency"),
    "LA-white-alpha-draws-the-part": (encode(la(np.full_like(M255, 255), M255), "PNG"), "transparency"),
    "RGBA-white-alpha-draws-the-part": (encode(rgba(np.full_like(M255, 255), M255), "PNG"), "transparency"),
    "I;16-0/25500": (encode(Image.fromarray(ON.astype(np.uint16) * 25500), "PNG"), "binary"),
    "I;16-0/100/65535": (
        encode(Image.fromarray(np.where(EDGE, 100, ON.astype(np.uint16) * 65535).astype(np.uint16)), "PNG"),
        "binary",
    ),
    "I-0/70000-TIFF": (encode(Image.fromarray(ON.astype(np.int32) * 70000), "TIFF"), "binary"),
    "I-negative-TIFF": (encode(Image.fromarray(ON.astype(np.int32) * -255), "TIFF"), "binary"),
    "F-0/0.5-TIFF": (encode(Image.fromarray(ON.astype(np.float32) / 2), "TIFF"), "binary"),
    "F-NaN-TIFF": (encode(Image.fromarray(np.where(HAIR, np.nan, 0).astype(np.float32)), "TIFF"), "binary"),
    "JPEG-bytes-named-png": (encode(Image.fromarray(M255), "JPEG", quality=90), "the file is a JPEG"),
    "CMYK-JPEG": (encode(Image.fromarray(M255).convert("CMYK"), "JPEG", quality=90), "binary"),
    "LAB-TIFF (conversion is not exact)": (
        encode(Image.merge("LAB", [Image.fromarray(M255), *[Image.new("L", (SIZE, SIZE), 128)] * 2]), "TIFF"),
        "has colour",
    ),
}  # fmt: skip


def decode_hair(data: bytes) -> np.ndarray:
    """The hair mask in the given bytes merged with a plain skin mask: (16, 16) class ids."""
    skin = encode(Image.fromarray(SKIN.astype(np.uint8) * 255), "PNG")
    return raw.decode_label({"skin": skin, "hair": data}, CONFIG, sample_id=7)


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mask_mode_decodes_to_the_right_label(case):
    data = MASK_CASES[case]
    mask = raw.decode_mask(data, "00007_hair.png", CONFIG)
    assert mask.dtype == bool and mask.view(np.uint8).max() <= 1  # real bools, not 0 / 255 bytes
    np.testing.assert_array_equal(mask, HAIR)
    label = decode_hair(data)
    np.testing.assert_array_equal(label, EXPECTED_LABEL)  # 13 where hair, 1 where only skin, else 0


@pytest.mark.parametrize("case", list(MASK_QUARANTINED))
def test_mask_that_is_not_a_binary_part_is_rejected(case):
    data, reason = MASK_QUARANTINED[case]
    with pytest.raises(BadSample, match=reason) as caught:
        raw.decode_mask(data, "00007_hair.png", CONFIG)
    assert "00007_hair.png" in str(caught.value)
    with pytest.raises(BadSample, match="00007_hair.png"):  # decode_label passes the rejection on
        decode_hair(data)


# ---------------------------------------------------------------- the whole matrix: never another exception


def writable_files() -> list[tuple[str, str, bytes]]:
    """(mode, format, bytes) for every mode Pillow knows and every format that writes it here."""
    Image.init()
    out = []
    for mode in sorted({*Image.MODES, "I;16B", "I;16L"}):
        try:  # the hair mask's pixels in that mode where Pillow converts to it, else a blank image
            image = Image.fromarray(M255).convert(mode)
        except ValueError:
            try:
                image = Image.new(mode, (SIZE, SIZE))
            except ValueError:
                continue
        for fmt in sorted(Image.SAVE):
            try:
                out.append((mode, fmt, encode(image, fmt)))
            except Exception:  # this format does not write this mode (or needs a plugin)
                continue
    return out


def test_every_mode_and_format_pillow_writes_decodes_or_is_quarantined():
    files = writable_files()
    modes = {mode for mode, _, _ in files}
    assert {
        "1",
        "L",
        "LA",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "F",
        "I;16",
        "LAB",
    } <= modes
    outcomes = {"image": 0, "mask": 0, "quarantined": 0}
    for mode, fmt, data in files:
        try:
            pixels = raw.decode_image(data, CONFIG)
            assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8, (mode, fmt)
            outcomes["image"] += 1
        except BadSample:
            outcomes["quarantined"] += 1
        try:
            label = decode_hair(data)
            assert label.dtype == np.uint8 and int(label.max()) < labels.NUM_CLASSES, (mode, fmt)
            outcomes["mask"] += 1
        except BadSample as error:
            assert "00007_hair.png" in str(error), (mode, fmt)
            outcomes["quarantined"] += 1
    assert outcomes["image"] > 50 and outcomes["mask"] > 30, outcomes
