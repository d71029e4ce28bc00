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
    width, height = image.size
    if width * height > max_pixels:
        raise BadSample(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (decode.max_image_pixels)"
        )
    return image


def decode_image(data: bytes, config: DecodeConfig) -> np.ndarray:
    """Image bytes -> (R, R, 3) uint8 RGB at the output resolution; BadSample on anything wrong."""
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
        if image.mode != "RGB":
            image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSample(f"image is truncated or corrupt ({error})") from None
    if image.size != (config.resolution, config.resolution):
        image = image.resize((config.resolution, config.resolution), Image.Resampling.BICUBIC)
    return np.asarray(image)


def decode_mask(data: bytes, name: str, config: DecodeConfig) -> np.ndarray:
    """Part-mask bytes -> (S, S) bool; accepts greyscale, 1-bit and RGB(A) masks whose channels agree."""
    image = _open_image(data, f"mask {name}", config.max_image_pixels)
    if image.size != (config.mask_size, config.mask_size):
        raise BadSample(
            f"mask {name} is {image.size[0]}x{image.size[1]}; expected {config.mask_size}x{config.mask_size} "
            "(decode.mask_size)"
        )
    try:
        if image.mode == "P":
            image = image.convert("RGB")
        array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSample(f"mask {name} is truncated or corrupt ({error})") from None
    if image.mode == "1":
        return array.astype(bool)
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        raise BadSample(f"mask {name} has pixel mode {image.mode}; expected an 8-bit 0/255 mask")
    if array.ndim == 3:
        colour = array[..., :3] if image.mode.startswith("RGB") else array[..., :1]
        if colour.shape[2] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise BadSample(
                f"mask {name} has colour (its channels differ); expected a single-channel 0/255 mask"
            )
        array = colour[..., 0]
    # A binary mask holds 0 and one other value (255 as released, 1 from some tools); anything else
    # (a gradient, an anti-aliased edge, a photo) is garbage. Counting beats np.unique ~30x here.
    high = int(array.max())
    if high not in (0, 1, 255) or np.count_nonzero(array) != np.count_nonzero(array == high):
        values = np.unique(array)
        shown = ", ".join(str(v) for v in values[:6].tolist())
        raise BadSample(
            f"mask {name} holds {len(values)} distinct values ({shown}...); expected a binary 0/255 mask"
        )
    return array != 0


def decode_label(mask_bytes: Mapping[str, bytes], config: DecodeConfig, sample_id: int = 0) -> np.ndarray:
    """Part masks -> (R, R) uint8 class map, merged in the official order at mask size, then resized."""
    if not mask_bytes:
        raise BadSample("image has no mask files")
    parts = {
        part: decode_mask(data, mask_file_name(sample_id, part), config) for part, data in mask_bytes.items()
    }
    label = labels.merge_parts(parts, size=(config.mask_size, config.mask_size))
    if config.mask_size != config.resolution:
        label = np.asarray(
            Image.fromarray(label).resize((config.resolution, config.resolution), Image.Resampling.NEAREST)
        )
    return label


def present_classes(label: np.ndarray) -> int:
    """Bit mask of the classes present in a class map (bit i = class i)."""
    histogram = Image.fromarray(label).histogram()  # C-speed, 256 bins
    return sum(1 << value for value in range(len(histogram)) if histogram[value])
