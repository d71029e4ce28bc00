"""Editor input decoding: every accepted form gives the right pixels; every bad input a named ValueError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskgan.editing.inputs import (
    InputLimits,
    check_same_shape,
    colors_to_classes,
    load_image,
    load_mask,
)
from maskgan.labels import COLORS, label_to_color

LIMITS = InputLimits()


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with one tiny (wrong) data chunk: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def class_map(height: int = 6, width: int = 5) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) % 19).astype(np.uint8)


# ------------------------------------------------------------------------------------------- images


def test_image_forms_give_the_same_rgb_pixels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(rgb).save(path)
    for source in (rgb, Image.fromarray(rgb), str(path), path, path.read_bytes()):
        out = load_image("image", source, LIMITS)
        assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
        np.testing.assert_array_equal(out, rgb)


def test_grey_and_palette_images_become_rgb():
    grey = np.arange(30, dtype=np.uint8).reshape(6, 5)
    np.testing.assert_array_equal(load_image("image", Image.fromarray(grey), LIMITS)[..., 1], grey)
    np.testing.assert_array_equal(load_image("image", grey, LIMITS)[..., 2], grey)
    palette = Image.fromarray(grey).convert("P")
    assert load_image("image", png_bytes(palette), LIMITS).shape == (6, 5, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Image.new("1", (4, 4)), "mode '1'"),
        (lambda: Image.new("I;16", (4, 4)), "mode 'I;16'"),
        (lambda: Image.new("F", (4, 4)), "mode 'F'"),
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 128)), "16 transparent pixels"),
    ],
)
def test_non_rgb_weirdness_is_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        load_image("image", make(), LIMITS)


def test_exif_orientation_is_applied_as_viewers_show_it():
    rgb = np.zeros((30, 40, 3), np.uint8)  # stored 40 wide, 30 high
    rgb[:, :20] = 200  # left half bright
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", exif=exif, quality=95)
    out = load_image("image", buffer.getvalue(), LIMITS)
    assert out.shape == (40, 30, 3)  # shown 30 wide, 40 high
    assert out[:20].mean() > 150 and out[20:].mean() < 50  # the left half is now on top


def test_opaque_rgba_is_accepted():
    out = load_image("image", Image.new("RGBA", (4, 3), (10, 20, 30, 255)), LIMITS)
    assert out.shape == (3, 4, 3) and tuple(out[0, 0]) == (10, 20, 30)


def test_multi_frame_images_are_refused():
    frames = [Image.new("L", (4, 4), value) for value in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="2 frames"):
        load_image("image", buffer.getvalue(), LIMITS)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32; expected uint8"),
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
        (np.zeros((0, 4, 3), np.uint8), "non-empty"),
    ],
)
def test_bad_image_arrays_are_refused(array, message):
    with pytest.raises(ValueError, match=message):
        load_image("image", array, LIMITS)


def test_non_image_bytes_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"image \(<\d+ bytes>\) is not an image Pillow can read") as caught:
        load_image("image", b"%PDF-1.4 definitely not a picture", LIMITS)
    assert "object at 0x" not in str(caught.value)  # no Python object repr in a message a user reads


def test_truncated_image_is_refused():
    data = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(ValueError, match="image"):
        load_image("image", data[: len(data) // 2], LIMITS)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image("image", str(tmp_path / "nope.png"), LIMITS)


def test_100_megapixel_image_is_refused_from_its_header_before_decoding():
    data = header_only_png(10_000, 10_000)
    assert len(data) < 200  # nothing to decode: the check must come from the header alone
    with pytest.raises(ValueError, match=r"10000 x 10000 = 100.0 MP, over the editor's limit of 64.0 MP"):
        load_image("image", data, LIMITS)
    with pytest.raises(ValueError, match="100.0 MP"):
        load_mask("mask", data, LIMITS)


def test_100_megapixel_array_is_refused_without_touching_its_pixels():
    huge = np.broadcast_to(np.zeros(3, np.uint8), (10_000, 10_000, 3))  # a view: no 300 MB allocated
    with pytest.raises(ValueError, match="100.0 MP"):
        load_image("image", huge, LIMITS)
    with pytest.raises(ValueError, match="100.0 MP"):
        load_mask("mask", huge, LIMITS)


def test_the_pixel_cap_is_configurable():
    image = Image.new("RGB", (20, 10))
    with pytest.raises(ValueError, match="0.0 MP"):
        load_image("image", image, InputLimits(max_pixels=199))
    assert load_image("image", image, InputLimits(max_pixels=200)).shape == (10, 20, 3)


# -------------------------------------------------------------------------------------------- masks


def test_class_id_masks_from_every_form(tmp_path):
    ids = class_map()
    path = tmp_path / "mask.png"
    Image.fromarray(ids, "L").save(path)
    for source in (ids, ids.astype(np.int64), ids[..., None], Image.fromarray(ids, "L"), str(path),
                   path.read_bytes()):  # fmt: skip
        np.testing.assert_array_equal(load_mask("mask", source, LIMITS), ids)


def test_colour_masks_decode_to_class_ids(tmp_path):
    ids = class_map()
    colour = label_to_color(ids)
    path = tmp_path / "colour.png"
    Image.fromarray(colour).save(path)
    for source in (colour, str(path), Image.fromarray(colour).convert("RGBA")):
        np.testing.assert_array_equal(load_mask("mask", source, LIMITS), ids)


def test_palette_pngs_use_their_colours_or_their_indices():
    ids = class_map()
    ours = Image.fromarray(ids, "P")
    ours.putpalette(COLORS.flatten().tolist())
    np.testing.assert_array_equal(load_mask("mask", png_bytes(ours), LIMITS), ids)
    # A palette of our colours in another order: the colours decide (the index is only storage).
    shuffled = Image.fromarray((18 - ids).astype(np.uint8), "P")
    shuffled.putpalette(COLORS[::-1].flatten().tolist())
    np.testing.assert_array_equal(load_mask("mask", png_bytes(shuffled), LIMITS), ids)
    # A VOC-style display palette: the indices are the class ids.
    voc = Image.fromarray(ids, "P")
    voc.putpalette([value for index in range(256) for value in (index, 7, 7)])
    np.testing.assert_array_equal(load_mask("mask", png_bytes(voc), LIMITS), ids)


@pytest.mark.parametrize("source_kind", ["array", "png"])
def test_class_index_above_18_is_refused_naming_value_and_place(source_kind):
    ids = class_map()
    ids[4, 3] = 19
    ids[5, 0] = 200
    source = ids if source_kind == "array" else png_bytes(Image.fromarray(ids, "L"))
    with pytest.raises(
        ValueError, match=r"class index 19 at \(x=3, y=4\) \(2 pixels with values \[19, 200\]\)"
    ):
        load_mask("mask", source, LIMITS)


def test_negative_and_float_class_ids_are_refused():
    with pytest.raises(ValueError, match="class index -1"):
        load_mask("mask", np.full((3, 3), -1, np.int32), LIMITS)
    with pytest.raises(ValueError, match="dtype float64"):
        load_mask("mask", np.zeros((3, 3)), LIMITS)
    with pytest.raises(ValueError, match="dtype bool"):
        load_mask("mask", np.zeros((3, 3), bool), LIMITS)


def test_unknown_colour_is_named_with_its_place():
    colour = label_to_color(class_map())
    colour[2, 4] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"colour \(1, 2, 3\) at \(x=4, y=2\).*1 pixels in 1 unknown colour"):
        load_mask("edited_mask", colour, LIMITS)
    with pytest.raises(ValueError, match="edited_mask has colour"):
        load_mask("edited_mask", png_bytes(Image.fromarray(colour)), LIMITS)


def test_class_ids_saved_as_rgb_get_a_hint():
    grey = np.repeat(class_map()[..., None], 3, axis=2)
    with pytest.raises(ValueError, match="class ids saved as RGB"):
        load_mask("mask", grey, LIMITS)


def test_colour_tolerance_snaps_near_colours_only():
    ids = class_map()
    colour = label_to_color(ids).astype(np.int16)
    colour[0, 1] += np.array([3, -2, 1], dtype=np.int16).clip(-colour[0, 1], 255 - colour[0, 1])
    colour = colour.astype(np.uint8)
    with pytest.raises(ValueError):
        colors_to_classes("mask", colour, tolerance=0)
    np.testing.assert_array_equal(colors_to_classes("mask", colour, tolerance=3), ids)
    with pytest.raises(ValueError, match="within tolerance 2"):
        colors_to_classes("mask", colour, tolerance=2)


def test_one_bit_and_transparent_masks_are_refused():
    with pytest.raises(ValueError, match="mode '1'"):
        load_mask("mask", Image.new("1", (4, 4)), LIMITS)
    with pytest.raises(ValueError, match="transparent"):
        load_mask("mask", Image.new("RGBA", (4, 4), (0, 0, 0, 0)), LIMITS)


def test_sizes_must_match_or_share_the_aspect_ratio():
    check_same_shape("image", (1024, 1024), "mask", (512, 512))  # CelebAMask-HQ's own layout
    check_same_shape("image", (40, 30), "mask", (40, 30))
    with pytest.raises(ValueError, match="mask is 32 x 30 but image is 32 x 32"):
        check_same_shape("image", (32, 32), "mask", (32, 30))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_pixels"):
        InputLimits(max_pixels=0)
    with pytest.raises(ValueError, match="color_tolerance"):
        InputLimits(color_tolerance=200)
