"""The raw CelebAMask-HQ layout: file names, text files, the official split, and decoding one sample.

Everything here is plain Python on bytes and arrays, so the Ray Data stages in preprocess.py, the
single-process benchmark loop and the tests all run exactly the same checks.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from maskgan import labels

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
POSE_FILE = "CelebAMask-HQ-pose-anno.txt"
IDS_PER_MASK_FOLDER = 2000

# Official split boundaries on CelebA's own index (orig_idx), REFERENCE.md §1.
TRAIN_END = 162771
VAL_END = 182638
SPLITS = ("train", "val", "test")

IMAGE_NAME = re.compile(r"^(\d+)\.jpg$")
MASK_NAME = re.compile(r"^(\d{5})_([a-z_]+)\.png$")


class BadSample(ValueError):
    """A sample that must be quarantined; the message is the reason recorded in the manifest."""


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """What a valid sample looks like and how to bring it to the output resolution."""

    resolution: int = 512
    mask_size: int = 512  # every part mask must be mask_size x mask_size
    max_image_pixels: int = 4096 * 4096  # decompression-bomb guard, checked before decoding
    # Decode JPEGs straight to the nearest power-of-two reduction with libjpeg's DCT scaling
    # (Pillow's draft mode), then resize: ~3x less decode work at 1024 -> 512.
    fast_jpeg_decode: bool = True

    def __post_init__(self) -> None:
        for name in ("resolution", "mask_size", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def mask_folder(sample_id: int) -> str:
    """The mask sub-folder of an id, as released (folder = id // 2000)."""
    return str(sample_id // IDS_PER_MASK_FOLDER)


def mask_file_name(sample_id: int, part: str) -> str:
    return f"{sample_id:05d}_{part}.png"


def image_relative_path(sample_id: int) -> str:
    return f"{IMAGE_DIR}/{sample_id}.jpg"


def mask_relative_path(sample_id: int, part: str) -> str:
    return f"{MASK_DIR}/{mask_folder(sample_id)}/{mask_file_name(sample_id, part)}"


def official_split(orig_idx: int) -> str:
    """train / val / test from the CelebA index, by the official boundaries."""
    if orig_idx < TRAIN_END:
        return "train"
    if orig_idx < VAL_END:
        return "val"
    return "test"


def hash_split(sample_id: int, fractions: tuple[float, float, float], seed: int = 0) -> str:
    """A deterministic split for data without a mapping file: a hash of (seed, id) against fractions."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def _data_lines(text: str, skip: int) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[skip:] if line.strip()]


def parse_mapping(text: str) -> dict[int, int]:
    """CelebA-HQ-to-CelebA-mapping.txt -> {id: orig_idx}. First line is the header."""
    mapping: dict[int, int] = {}
    for number, fields in enumerate(_data_lines(text, 1), start=2):
        try:
            mapping[int(fields[0])] = int(fields[1])
        except (IndexError, ValueError):
            raise ValueError(
                f"{MAPPING_FILE} line {number} is {' '.join(fields)!r}; expected 'idx orig_idx orig_file'"
            ) from None
    return mapping


def parse_attributes(text: str) -> tuple[list[str], dict[int, list[int]]]:
    """CelebAMask-HQ-attribute-anno.txt -> (40 names, {id: 40 values of 1 / -1})."""
    lines = text.splitlines()
    if len(lines) < 2:
        raise ValueError(f"{ATTRIBUTE_FILE} is too short: expected a count line and a names line")
    names = lines[1].split()
    values: dict[int, list[int]] = {}
    for number, fields in enumerate(_data_lines(text, 2), start=3):
        match = IMAGE_NAME.match(fields[0])
        if not match or len(fields) != len(names) + 1:
            raise ValueError(
                f"{ATTRIBUTE_FILE} line {number}: expected '<id>.jpg' and {len(names)} values of 1 / -1"
            )
        values[int(match.group(1))] = [int(v) for v in fields[1:]]
    return names, values


def parse_pose(text: str) -> dict[int, tuple[float, float, float]]:
    """CelebAMask-HQ-pose-anno.txt -> {id: (yaw, pitch, roll)}."""
    pose: dict[int, tuple[float, float, float]] = {}
    for number, fields in enumerate(_data_lines(text, 2), start=3):
        match = IMAGE_NAME.match(fields[0])
        if not match or len(fields) != 4:
            raise ValueError(f"{POSE_FILE} line {number}: expected '<id>.jpg yaw pitch roll'")
        pose[int(match.group(1))] = (float(fields[1]), float(fields[2]), float(fields[3]))
    return pose


def _bmp_bits_per_pixel(data: bytes) -> int:
    """Bits per pixel from a BMP header (after the 14-byte file header: a 12-byte OS/2 or a 40+ byte one)."""
    offset = 24 if int.from_bytes(data[14:18], "little") == 12 else 28
    return int.from_bytes(data[offset : offset + 2], "little")


def _open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise BadSample(f"{what} is a zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadSample(f"{what} is over Pillow's pixel limit (decompression bomb)") from None
    except UnidentifiedImageError:
        raise BadSample(f"{what} is not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:  # a header cut short or malformed
        raise BadSample(f"{what} is truncated or corrupt ({error})") from None
    if image.format == "BMP" and image.mode == "1" and (bits := _bmp_bits_per_pixel(data)) != 1:
        # Pillow (13.0) takes an 8-bit BMP with a black / white palette for 1-bit data: wrong pixels.
        raise BadSample(f"{what} is a {bits}-bit BMP with a black / white palette, which Pillow misreads")
    width, height = image.size
    if width * height > max_pixels:
        raise BadSample(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (decode.max_image_pixels)"
        )
    return image


# How each Pillow pixel mode becomes pixels. The release reads images with PIL's .convert("RGB") and
# masks with OpenCV's 3-channel imread, thresholding channel 0 != 0 (REFERENCE.md §1); these rules
# follow that, and every mode Pillow can write is pinned by tests/unit/test_decode_modes.py.
#
# Images -> (R, R, 3) uint8 RGB:
#   RGB as stored; 1 / L / LA greyscale replicated to three channels (1-bit: 0 / 255); P / PA through
#   the palette; alpha and palette transparency dropped, not composited (as .convert("RGB") does);
#   CMYK, YCbCr, LAB, HSV by Pillow's conversion to RGB; 16-bit greyscale (I;16, I;16B, ..., 16-bit PNG)
#   scaled to 8 bits as round(v / 257), so 65535 -> 255 and 257 k -> k exactly. 32-bit integer (I) and
#   float (F) pixels have no defined 8-bit range: quarantined, as is any mode Pillow cannot convert.
#   EXIF orientation is NOT applied: the stored pixels are used, as the release's PIL / OpenCV reads
#   of CelebA-HQ did, because the part masks (PNGs, no orientation) are drawn on the stored pixels;
#   rotating the image alone would misalign it with its masks.
#   The file's content decides the format, not its name (PNG bytes under a .jpg name decode as PNG).
# Masks -> (S, S) bool, True where the part is:
#   the one channel the release thresholds is taken first: L, I;16*, I, F as stored; 1-bit as 0 / 255;
#   LA its L channel; every other mode converted to RGBA by Pillow (P / PA through the palette, so a
#   palette whose index 0 is white marks the part where the index is 0, as OpenCV would read it;
#   palette transparency becomes alpha; CMYK, YCbCr, LAB converted), whose three colour channels must
#   be equal (a coloured mask is ambiguous: OpenCV's channel 0 is blue) and whose channel 0 is used.
#   That channel must be binary: 0 and at most one other value, 1 (0/1 masks from some tools), 255
#   (8-bit, as released) or 65535 (16-bit full scale); anything else (a gradient, an anti-aliased or
#   JPEG-blurred edge, 0/128, NaN) is quarantined. Alpha is ignored like the release does, except that
#   a mask whose transparency disagrees with its colour (a white square whose alpha draws the part)
#   is quarantined: the release would read it as all part.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
MASK_ON_VALUES = (1, 255, 65535)


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    """A decoded image in any mode -> (H, W, 3) uint8 RGB by the rules above."""
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.uint32)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise BadSample(
            f"image has {kind} pixels (mode {image.mode}), which have no defined 8-bit range; "
            "save it as 8-bit RGB or greyscale (or 16-bit greyscale PNG)"
        )
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:  # a mode Pillow cannot convert (e.g. La, RGBa)
        raise BadSample(
            f"image has pixel mode {image.mode}, which cannot be converted to RGB ({error})"
        ) from None


def decode_image(data: bytes, config: DecodeConfig) -> np.ndarray:
    """Image bytes, any format or mode -> (R, R, 3) uint8 RGB at the output resolution; else BadSample."""
    image = _open_image(data, "image", config.max_image_pixels)
    width, height = image.size
    if width != height:
        raise BadSample(f"image is {width}x{height}; expected a square image")
    if width < config.resolution:
        raise BadSample(
            f"image is {width}x{height}, smaller than the output resolution {config.resolution}; "
            "lower decode.resolution or fix the source"
        )
    try:
        if config.fast_jpeg_decode and image.format == "JPEG":
            image.draft("RGB", (config.resolution, config.resolution))
        image.load()  # decodes the pixels: truncated data fails here
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSample(f"image is truncated or corrupt ({error})") from None
    pixels = _rgb_pixels(image)
    if pixels.shape[:2] != (config.resolution, config.resolution):
        pixels = np.asarray(
            Image.fromarray(pixels).resize((config.resolution, config.resolution), Image.Resampling.BICUBIC)
        )
    return pixels


def _mask_channel(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded mask -> ((S, S) the channel the release thresholds, (S, S) alpha or None)."""
    if image.mode in ("L", "I", "F", *SIXTEEN_BIT_MODES):
        return np.asarray(image), None
    if image.mode == "1":
        # Not np.asarray(image): Pillow hands 1-bit pixels over as bools stored as 0 / 255 bytes,
        # which numpy arithmetic then multiplies by 255 (the cause of an old OverflowError).
        return np.asarray(image.convert("L")), None
    if image.mode == "LA":
        array = np.asarray(image)
        return array[..., 0], array[..., 1]
    try:
        array = np.asarray(image.convert("RGBA"))  # palette applied, its transparency -> alpha
    except ValueError as error:
        raise BadSample(
            f"mask {name} has pixel mode {image.mode}, which cannot be converted to RGB ({error})"
        ) from None
    colour = array[..., :3]
    if not (
        np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
    ):
        raise BadSample(
            f"mask {name} has colour (its channels differ, mode {image.mode}); expected a single-channel "
            "0/255 mask"
        )
    return colour[..., 0], array[..., 3]


def decode_mask(data: bytes, name: str, config: DecodeConfig) -> np.ndarray:
    """Part-mask bytes in any format / mode -> (S, S) bool by the rules above; BadSample if not binary."""
    image = _open_image(data, f"mask {name}", config.max_image_pixels)
    if image.size != (config.mask_size, config.mask_size):
        raise BadSample(
            f"mask {name} is {image.size[0]}x{image.size[1]}; expected {config.mask_size}x{config.mask_size} "
            "(decode.mask_size)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSample(f"mask {name} is truncated or corrupt ({error})") from None
    values, alpha = _mask_channel(image, name)
    on = values != 0
    count = np.count_nonzero(on)
    # Counting beats np.unique ~30x on 512 x 512 masks; unique only runs to word the rejection.
    if count:
        high = values.max()
        if high not in MASK_ON_VALUES or np.count_nonzero(values == high) != count:
            distinct = np.unique(values)
            shown = ", ".join(str(v) for v in distinct[:6].tolist())
            lossy = (
                " (the file is a JPEG: lossy compression blurs the edges; masks must be lossless, e.g. PNG)"
                if image.format == "JPEG"
                else ""
            )
            raise BadSample(
                f"mask {name} holds {len(distinct)} distinct values ({shown}...); expected a binary 0/255 "
                f"mask (0 and one of {', '.join(map(str, MASK_ON_VALUES))}){lossy}"
            )
    if alpha is not None and int(alpha.min()) < 255 and not np.array_equal(alpha != 0, on):
        raise BadSample(
            f"mask {name} has transparency that does not match its colour (mode {image.mode}); the release "
            "ignores alpha and reads the colour, so save the part as white on opaque black"
        )
    return on


def merge_masks(parts: Mapping[str, np.ndarray], config: DecodeConfig) -> np.ndarray:
    """Decoded (S, S) bool part masks -> (R, R) uint8 class map: merged in class order, then resized."""
    label = labels.merge_parts(parts, size=(config.mask_size, config.mask_size))
    if config.mask_size != config.resolution:
        label = np.asarray(
            Image.fromarray(label).resize((config.resolution, config.resolution), Image.Resampling.NEAREST)
        )
    return label


def decode_label(mask_bytes: Mapping[str, bytes], config: DecodeConfig, sample_id: int = 0) -> np.ndarray:
    """Part masks -> (R, R) uint8 class map, merged in the official order at mask size, then resized."""
    if not mask_bytes:
        raise BadSample("image has no mask files")
    parts = {
        part: decode_mask(data, mask_file_name(sample_id, part), config) for part, data in mask_bytes.items()
    }
    return merge_masks(parts, config)


def present_classes(label: np.ndarray) -> int:
    """Bit mask of the classes present in a class map (bit i = class i)."""
    histogram = Image.fromarray(label).histogram()  # C-speed, 256 bins
    return sum(1 << value for value in range(len(histogram)) if histogram[value])
