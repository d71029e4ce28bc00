"""Editor input decoding and validation: images and masks from PIL, arrays, paths or bytes.

Everything here runs before any tensor work and raises ValueError naming the argument and what was
wrong. Images become (H, W, 3) uint8 RGB arrays; masks become (H, W) uint8 class-id arrays, read
either as class ids (single-channel, values 0..18) or as colours of the dataset's palette
(maskgan.labels.COLORS).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskgan.labels import CLASS_NAMES, COLORS, NUM_CLASSES

# 64 million pixels: every camera photo of a face up to ~8000 x 8000; a 100 MP file is refused.
DEFAULT_MAX_PIXELS = 64_000_000
# Modes that hold one integer per pixel: read as class ids.
_CLASS_ID_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N")
# Image modes converted to RGB as they are; the others are refused (see load_image).
_CONVERTIBLE_MODES = ("RGB", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA", "RGBa", "La", "PA")
# Packed 0xRRGGBB palette colour -> class id.
_PACKED_PALETTE = {(int(r) << 16) | (int(g) << 8) | int(b): index for index, (r, g, b) in enumerate(COLORS)}


class InputTooLarge(ValueError):
    """An input over InputLimits' bytes or pixels (a web service answers 413)."""


class NotAnImage(ValueError):
    """Bytes that are not an image of an accepted format (a web service answers 415)."""


class InvalidMask(ValueError):
    """A mask that decodes but is not a valid class map for its image (a web service answers 422)."""


@dataclass(frozen=True, kw_only=True)
class InputLimits:
    """Bounds on what the editor accepts; ValueError (or one of the subclasses above) when exceeded."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height, checked from the file header before decoding
    color_tolerance: int = 0  # colour masks: max abs channel difference to a palette colour (JPEG: ~30)
    max_bytes: int | None = None  # encoded size of a file / bytes input, checked before Pillow sees it
    formats: tuple[str, ...] | None = None  # Pillow format names accepted from files / bytes, e.g. PNG

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"InputLimits.max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"InputLimits.max_bytes must be >= 1 or None, got {self.max_bytes}")
        if self.formats is not None and (
            not self.formats or not all(isinstance(f, str) and f.isupper() for f in self.formats)
        ):
            raise ValueError(
                f"InputLimits.formats must be None or Pillow format names (e.g. ('PNG', 'JPEG')), "
                f"got {self.formats!r}"
            )
        if not 0 <= self.color_tolerance < 128:
            raise ValueError(f"InputLimits.color_tolerance must be in [0, 128), got {self.color_tolerance}")


def _describe(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _check_pixels(name: str, width: int, height: int, limits: InputLimits) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"{name} is {width} x {height} pixels; expected a non-empty image")
    if width * height > limits.max_pixels:
        raise InputTooLarge(
            f"{name} is {width} x {height} = {width * height / 1e6:.1f} MP, over the editor's limit of "
            f"{limits.max_pixels / 1e6:.1f} MP (InputLimits.max_pixels); downscale it first"
        )


def open_image(name: str, source: Any, limits: InputLimits) -> Image.Image:
    """A path, bytes or PIL image -> a decoded PIL image; its header size is checked before decoding."""
    if isinstance(source, Image.Image):
        _check_pixels(name, *source.size, limits)
        return source
    if isinstance(source, str | os.PathLike):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{name}: no file at {os.fspath(source)}")
        with open(source, "rb") as handle:
            data = handle.read()
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        raise ValueError(
            f"{name} is a {type(source).__name__}; expected a PIL image, a numpy array, a file path or bytes"
        )
    where = _describe(source)
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise InputTooLarge(
            f"{name} ({where}) is {len(data) / 1e6:.1f} MB, over the editor's limit of "
            f"{limits.max_bytes / 1e6:.1f} MB (InputLimits.max_bytes); send a smaller or more compressed file"
        )
    try:
        # Pillow's own bomb guard raises above 2 x its MAX_IMAGE_PIXELS; our cap is checked below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as error:
        raise InputTooLarge(f"{name} ({where}) is too large to decode: {error}") from None
    except UnidentifiedImageError:
        # Pillow names the in-memory buffer object (<_io.BytesIO object at 0x...>): say it ourselves.
        raise NotAnImage(
            f"{name} ({where}) is not an image Pillow can read (starts with {data[:8]!r}); "
            "send a PNG or JPEG file"
        ) from None
    except (OSError, SyntaxError) as error:
        raise NotAnImage(
            f"{name} ({where}) is not an image Pillow can read (starts with {data[:8]!r}): {error}"
        ) from None
    if limits.formats is not None and image.format not in limits.formats:
        raise NotAnImage(
            f"{name} ({where}) is a {image.format} file; accepted formats: {', '.join(limits.formats)}"
        )
    _check_pixels(name, *image.size, limits)
    if getattr(image, "n_frames", 1) > 1:
        raise ValueError(f"{name} ({where}) has {image.n_frames} frames; expected a single still image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:  # truncated or corrupt data: Pillow raises OSError, ValueError, ...
        raise NotAnImage(f"{name} ({where}) could not be decoded ({image.format}): {error}") from None
    return image


def load_image(name: str, source: Any, limits: InputLimits) -> np.ndarray:
    """Image input -> (H, W, 3) uint8 RGB. Transparent, 1-bit, 16-bit and float images are refused."""
    if isinstance(source, np.ndarray):
        return _image_array(name, source, limits)
    # Phone photos store their rotation in EXIF; users see (and draw masks on) the rotated picture.
    image = ImageOps.exif_transpose(open_image(name, source, limits))
    mode = image.mode
    if mode not in _CONVERTIBLE_MODES:
        raise ValueError(
            f"{name} has Pillow mode {mode!r}; expected an 8-bit RGB, grey or palette image "
            "(1-bit, 16-bit and float images are not photos: convert them to 8-bit RGB first)"
        )
    if mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            raise ValueError(
                f"{name} has {int((alpha < 255).sum())} transparent pixels; flatten it onto a background "
                "and pass an RGB image (the result would depend on hidden colours)"
            )
    return np.asarray(image.convert("RGB"))


def _image_array(name: str, array: np.ndarray, limits: InputLimits) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{name} array has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    _check_pixels(name, array.shape[1], array.shape[0], limits)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name} array has dtype {array.dtype}; expected uint8 in 0..255 "
            "(for floats in [0, 1]: (x * 255).round().astype(np.uint8))"
        )
    if array.ndim == 2 or array.shape[2] == 1:
        return np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    if array.shape[2] == 4:
        if (array[..., 3] < 255).any():
            raise ValueError(f"{name} array has transparent pixels (alpha < 255); pass RGB")
        array = array[..., :3]
    return np.ascontiguousarray(array)


def load_mask(name: str, source: Any, limits: InputLimits) -> np.ndarray:
    """Mask input -> (H, W) uint8 class ids, from class ids (0..18) or the palette's colours."""
    if isinstance(source, np.ndarray):
        return _mask_array(name, source, limits)
    image = open_image(name, source, limits)
    mode = image.mode
    if mode in _CLASS_ID_MODES:
        return check_class_ids(name, np.asarray(image))
    if mode in ("P", "PA"):
        return _palette_mask(name, image, limits)
    if mode in ("RGB", "RGBA"):
        rgba = np.asarray(image.convert("RGBA"))
        if (rgba[..., 3] < 255).any():
            raise InvalidMask(f"{name} has transparent pixels; a colour mask must be opaque")
        return colors_to_classes(name, rgba[..., :3], limits.color_tolerance)
    raise InvalidMask(
        f"{name} has Pillow mode {mode!r}; expected a class-id mask (mode L, values 0..{NUM_CLASSES - 1}) "
        "or a colour mask (RGB, maskgan.labels.COLORS)"
    )


def _mask_array(name: str, array: np.ndarray, limits: InputLimits) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        _check_pixels(name, array.shape[1], array.shape[0], limits)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"{name} array has dtype {array.dtype}; expected integer class ids 0..{NUM_CLASSES - 1}"
            )
        return check_class_ids(name, array)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        _check_pixels(name, array.shape[1], array.shape[0], limits)
        if array.dtype != np.uint8:
            raise ValueError(f"{name} colour array has dtype {array.dtype}; expected uint8")
        return colors_to_classes(name, array[..., :3], limits.color_tolerance)
    raise ValueError(f"{name} array has shape {array.shape}; expected (H, W) class ids or (H, W, 3) colours")


def check_class_ids(name: str, ids: np.ndarray) -> np.ndarray:
    """(H, W) integers -> uint8 class ids; ValueError naming the first pixel outside 0..18."""
    ids = np.asarray(ids)
    bad = (ids < 0) | (ids >= NUM_CLASSES)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        values = np.unique(ids[bad])
        raise InvalidMask(
            f"{name} holds class index {int(ids[row, col])} at (x={col}, y={row}) "
            f"({int(bad.sum())} pixels with values {values[:8].tolist()}); "
            f"class ids are 0..{NUM_CLASSES - 1}. "
            "A colour-coded mask must be saved as RGB, not greyscale"
        )
    return ids.astype(np.uint8)


def _palette_mask(name: str, image: Image.Image, limits: InputLimits) -> np.ndarray:
    """A palette PNG: its colours when they are all the dataset's, else its indices as class ids."""
    indices = np.asarray(image.convert("P") if image.mode == "PA" else image)
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if used.max() < len(palette):
        packed = (palette[used].astype(np.int64) << np.array([16, 8, 0])).sum(axis=1)
        if all(int(value) in _PACKED_PALETTE for value in packed):
            return colors_to_classes(name, palette[indices], limits.color_tolerance)
    # Segmentation-style palette PNG (VOC convention): the index is the class, the palette is display.
    return check_class_ids(name, indices)


def colors_to_classes(name: str, rgb: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 palette colours -> (H, W) class ids; ValueError naming an unknown colour and where."""
    packed = (rgb.astype(np.int32) << np.array([16, 8, 0], dtype=np.int32)).sum(axis=2)  # (H, W) 0xRRGGBB
    colours, inverse = np.unique(packed, return_inverse=True)
    inverse = inverse.reshape(packed.shape)
    lookup = np.full(len(colours), -1, dtype=np.int16)
    for position, value in enumerate(colours):
        lookup[position] = _PACKED_PALETTE.get(int(value), -1)
    unknown = np.flatnonzero(lookup < 0)
    if len(unknown) and tolerance > 0:
        # Nearest palette colour by max abs channel difference, only for the few distinct unknown colours.
        channels = (colours[unknown, None] >> np.array([16, 8, 0])) & 0xFF  # (U, 3)
        distance = np.abs(channels[:, None, :] - COLORS[None].astype(np.int64)).max(axis=2)  # (U, 19)
        near = distance.min(axis=1) <= tolerance
        lookup[unknown[near]] = distance[near].argmin(axis=1)
        unknown = unknown[~near]
    if len(unknown):
        first = int(unknown[0])
        row, col = (int(v) for v in np.argwhere(inverse == first)[0])
        colour = tuple(int(c) for c in rgb[row, col])
        count = int(np.isin(inverse, unknown).sum())
        hint = ""
        if colour[0] == colour[1] == colour[2] and colour[0] < NUM_CLASSES:
            hint = " (this looks like class ids saved as RGB: save a single-channel L PNG instead)"
        raise InvalidMask(
            f"{name} has colour {colour} at (x={col}, y={row}), which is not a class colour"
            f"{f' within tolerance {tolerance}' if tolerance else ''}; {count} pixels in "
            f"{len(unknown)} unknown colour(s){hint}. Known colours: "
            + ", ".join(f"{CLASS_NAMES[i]}={tuple(int(c) for c in COLORS[i])}" for i in range(NUM_CLASSES))
        )
    return lookup[inverse].astype(np.uint8)


def check_same_shape(
    first: str, first_size: tuple[int, int], second: str, second_size: tuple[int, int]
) -> None:
    """Sizes (width, height) must match or share the aspect ratio exactly (a 512 mask of a 1024 image)."""
    (w1, h1), (w2, h2) = first_size, second_size
    if (w1, h1) != (w2, h2) and w1 * h2 != w2 * h1:
        raise InvalidMask(
            f"{second} is {w2} x {h2} but {first} is {w1} x {h1}: sizes must match, or share the aspect "
            "ratio exactly (e.g. a CelebAMask-HQ 512 x 512 mask of its 1024 x 1024 image)"
        )


def size_of(array: np.ndarray) -> tuple[int, int]:
    """(width, height) of an (H, W[, C]) array, as PIL orders sizes."""
    return int(array.shape[1]), int(array.shape[0])
