"""Defects injected into a written synthetic dataset, to test preprocessing's quarantine.

Each kind corrupts one id the way real downloads go wrong (REFERENCE.md §1, known defects).
"""

from __future__ import annotations

import io
import posixpath
import struct
from collections.abc import Mapping

import numpy as np
from PIL import Image

from maskgan import storage
from maskgan.data.celebamask import IDS_PER_MASK_FOLDER, IMAGE_DIR, MASK_DIR
from maskgan.data.synthetic import jpeg_bytes, png_bytes

HUGE_IMAGE_SIDE = 9000  # side of the "huge_image" defect: 81 M pixels, under 1 MB as a flat JPEG
DEFECT_KINDS: Mapping[str, str] = {
    "truncated_jpeg": "image cut to its first half: the header parses, decoding fails",
    "zero_byte_image": "image file of 0 bytes",
    "not_an_image": "image file holding plain text",
    "wrong_size_mask": "one part mask rewritten at half its size",
    "non_binary_mask": "one part mask replaced by a 0..255 gradient (not 0/255)",
    "rgb_mask": "one part mask rewritten as 3-channel 0/255 RGB: VALID, the release reads channel 0",
    "no_masks": "every part mask of the id deleted (the image stays)",
    "orphan_masks": "the id's image deleted, its masks kept (masks whose image does not exist)",
    "unknown_part": "an extra valid-looking mask named {id:05d}_tail.png, an unknown part",
    "huge_image": f"image replaced by a flat greyscale {HUGE_IMAGE_SIDE}x{HUGE_IMAGE_SIDE} JPEG",
    # Pixel modes and formats other tools write (celebamask.py's mode rules): valid ones must land
    # with the same pixels / label as the untouched id, invalid ones must be quarantined.
    "one_bit_mask": "one part mask rewritten as a 1-bit PNG: VALID (0 / 1 bits read as 0 / 255)",
    "palette_mask": (
        "one part mask rewritten as a palette PNG whose index 0 is white: VALID, read through the palette"
    ),
    "sixteen_bit_mask": "one part mask rewritten as a 16-bit greyscale PNG, 0 / 65535: VALID",
    "png_image_as_jpg": "the image rewritten as PNG bytes, still named .jpg: VALID, the content decides",
    "exif_rotated_image": (
        "the image rewritten as a JPEG tagged EXIF orientation 6 (rotate 90): VALID, the tag is ignored"
    ),
    "jpeg_mask": "one part mask rewritten as JPEG bytes, still named .png: lossy, not binary",
    "undecodable_mask": (
        "one part mask replaced by a DDS texture in a pixel format Pillow does not implement: Pillow "
        "raises NotImplementedError, an exception no decode rule anticipates"
    ),
}


def _mask_locations(root: storage.Location, image_id: int) -> list[storage.Location]:
    folder = root.join(MASK_DIR, str(image_id // IDS_PER_MASK_FOLDER))
    prefix = f"{image_id:05d}_"
    names = [posixpath.basename(info.path) for info in storage.list_files(folder, recursive=False)]
    return [folder.join(name) for name in names if name.startswith(prefix) and name.endswith(".png")]


def _pick_mask(root: storage.Location, image_id: int) -> tuple[storage.Location, np.ndarray]:
    masks = _mask_locations(root, image_id)
    if not masks:
        raise ValueError(f"id {image_id} has no mask files under {root.uri}/{MASK_DIR}; nothing to corrupt")
    skin = [m for m in masks if m.path.endswith("_skin.png")]
    target = (skin or masks)[0]
    with Image.open(io.BytesIO(storage.read_bytes(target))) as mask:
        return target, np.asarray(mask.convert("L"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unsupported_dds(width: int, height: int) -> bytes:
    """A DDS header whose pixel format (FourCC 'XYZW') no decoder implements."""
    pixel_format = struct.pack("<8I", 32, 0x4, int.from_bytes(b"XYZW", "little"), 0, 0, 0, 0, 0)
    header = struct.pack("<6I11I", 0x1007, height, width, 0, 0, 1, *[0] * 11) + pixel_format
    return b"DDS " + struct.pack("<I", 124) + header + struct.pack("<5I", 0x1000, 0, 0, 0, 0)


def inject_defect(
    uri: str, image_id: int, kind: str, storage_config: storage.StorageConfig | None = None
) -> tuple[str, ...]:
    """Corrupt one id of a written dataset in the way DEFECT_KINDS describes; returns the URIs touched."""
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECT_KINDS)}")
    root = storage.resolve(uri, storage_config)
    image = root.join(IMAGE_DIR, f"{image_id}.jpg")
    if kind in ("truncated_jpeg", "zero_byte_image", "not_an_image", "huge_image", "png_image_as_jpg",
                "exif_rotated_image"):  # fmt: skip
        if kind in ("png_image_as_jpg", "exif_rotated_image"):
            with Image.open(io.BytesIO(storage.read_bytes(image))) as original:
                pixels = original.convert("RGB")
            if kind == "png_image_as_jpg":
                data = _png(pixels)
            else:
                exif = Image.Exif()
                exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
                buffer = io.BytesIO()
                pixels.save(buffer, format="JPEG", quality=95, exif=exif)
                data = buffer.getvalue()
        elif kind == "truncated_jpeg":
            data = storage.read_bytes(image)
            data = data[: len(data) // 2]
        elif kind == "huge_image":
            data = jpeg_bytes(Image.new("L", (HUGE_IMAGE_SIDE, HUGE_IMAGE_SIDE), 128), 75)
        else:
            data = b"" if kind == "zero_byte_image" else b"this is not a JPEG, it is a text file\n" * 8
        storage.write_bytes(image, data)
        return (image.uri,)
    if kind in ("no_masks", "orphan_masks"):
        targets = _mask_locations(root, image_id) if kind == "no_masks" else [image]
        if kind == "orphan_masks" and not _mask_locations(root, image_id):
            raise ValueError(f"id {image_id} has no mask files under {root.uri}; they cannot become orphans")
        for target in targets:
            if storage.exists(target):
                target.fs.delete_file(target.path)
        return tuple(target.uri for target in targets)
    target, mask = _pick_mask(root, image_id)
    height, width = mask.shape
    if kind == "wrong_size_mask":
        data = png_bytes(np.asarray(Image.fromarray(mask).resize((max(1, width // 2), max(1, height // 2)))))
    elif kind == "non_binary_mask":
        data = png_bytes(np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1)))
    elif kind == "rgb_mask":
        data = png_bytes(np.repeat(mask[..., None], 3, axis=2))
    elif kind == "one_bit_mask":
        data = _png(Image.fromarray(mask).convert("1"))
    elif kind == "palette_mask":
        palette = Image.fromarray((mask == 0).astype(np.uint8), mode="P")  # index 1 where the part is not
        palette.putpalette([255, 255, 255, 0, 0, 0])  # index 0 -> white: the part
        data = _png(palette)
    elif kind == "sixteen_bit_mask":
        data = png_bytes((mask > 0).astype(np.uint16) * 65535)
    elif kind == "jpeg_mask":
        data = jpeg_bytes(Image.fromarray(mask), 75)
    elif kind == "undecodable_mask":
        data = unsupported_dds(width, height)
    else:  # unknown_part
        target = root.join(MASK_DIR, str(image_id // IDS_PER_MASK_FOLDER), f"{image_id:05d}_tail.png")
        data = png_bytes(mask)
    storage.write_bytes(target, data)
    return (target.uri,)
