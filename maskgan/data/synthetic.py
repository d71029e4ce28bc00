"""A small synthetic face dataset in the exact CelebAMask-HQ release layout, for tests and smoke runs.

Every sample is drawn from an RNG seeded by (seed, id), so ids can be rendered in any order or in
parallel and the same config always gives byte-identical files. Part masks overlap the way the
released annotations do (skin under hair and eyes, hair under hat, necklace under neck), so the
merged map only comes out right when parts are painted in class order.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskgan import storage
from maskgan.data import faces
from maskgan.data.celebamask import (
    ATTRIBUTE_FILE,
    IDS_PER_MASK_FOLDER,
    IMAGE_DIR,
    MAPPING_FILE,
    MASK_DIR,
    POSE_FILE,
    TRAIN_END,
    VAL_END,
)  # fmt: skip
from maskgan.labels import merge_parts

# CelebA has 202,599 images; the official split ranges on its index (REFERENCE.md §1).
CELEBA_SIZE = 202_599
SPLIT_RANGES: Mapping[str, tuple[int, int]] = {
    "train": (0, TRAIN_END), "val": (TRAIN_END, VAL_END), "test": (VAL_END, CELEBA_SIZE),
}  # fmt: skip
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
POSE_NAMES: tuple[str, ...] = ("Yaw", "Pitch", "Raw")  # "Raw" (sic) is the release's header for roll


_STREAM_FACE, _STREAM_TEXTURE, _STREAM_ANNOTATION = 0, 1, 2


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """What to generate: how many faces, their sizes, the seed and the split fractions."""

    num_images: int
    image_size: int = 1024
    mask_size: int = 512
    seed: int = 0
    start_id: int = 0
    jpeg_quality: int = 90
    # orig_idx policy: each id lands in train / val / test with these fractions (test = the rest),
    # spread evenly over consecutive ids, and gets an orig_idx inside that split's official range.
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    accessory_probability: float = 0.3  # each of eyeglasses, hat, earrings, necklace, independently
    write_mapping: bool = True
    write_attributes: bool = True
    write_pose: bool = True

    def __post_init__(self) -> None:
        for name, low, high in (
            ("num_images", 1, 1_000_000), ("image_size", 8, 8192), ("mask_size", 8, 4096),
            ("seed", 0, 2**63 - 1), ("start_id", 0, 10_000_000), ("jpeg_quality", 1, 100),
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"synthetic.{name} must be an integer in [{low}, {high}], got {value!r}")
        for name in ("train_fraction", "val_fraction", "accessory_probability"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"synthetic.{name} must be a number in [0, 1], got {value!r}")
        if self.train_fraction + self.val_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"synthetic.train_fraction + synthetic.val_fraction must be <= 1 (test gets the rest), "
                f"got {self.train_fraction} + {self.val_fraction}"
            )
        for name in ("write_mapping", "write_attributes", "write_pose"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"synthetic.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def ids(self) -> range:
        return range(self.start_id, self.start_id + self.num_images)


@dataclass(frozen=True, kw_only=True)
class SyntheticSample:
    """One rendered sample: the image, its part masks, the merged map and its text-file rows."""

    image_id: int
    image: np.ndarray  # (image_size, image_size, 3) uint8 RGB
    parts: Mapping[str, np.ndarray]  # part -> (mask_size, mask_size) uint8 0/255; present parts only
    label: np.ndarray  # (mask_size, mask_size) uint8 class ids: merge_parts(parts)
    split: str
    orig_idx: int
    attributes: tuple[int, ...]  # 40 values of 1 / -1, ATTRIBUTE_NAMES order
    pose: tuple[float, float, float]  # yaw, pitch, roll in degrees


@dataclass(frozen=True, kw_only=True)
class WriteResult:
    """What write_dataset left at the root."""

    uri: str
    num_images: int
    num_mask_files: int
    text_files: tuple[str, ...]
    ids_by_split: Mapping[str, tuple[int, ...]]


def _position(config: SyntheticConfig, image_id: int) -> float:
    """Where an id falls in [0, 1): a golden-ratio sequence, so consecutive ids spread evenly."""
    offset = (config.seed * math.sqrt(2.0)) % 1.0
    return ((image_id + 1) * 0.6180339887498949 + offset) % 1.0


def _intervals(config: SyntheticConfig) -> dict[str, tuple[float, float]]:
    train_end = config.train_fraction
    val_end = train_end + config.val_fraction
    return {"train": (0.0, train_end), "val": (train_end, val_end), "test": (val_end, 1.0)}


def expected_split(config: SyntheticConfig, image_id: int) -> str:
    """The split an id is put in; consecutive ids fill the fractions evenly."""
    position = _position(config, image_id)
    for split, (start, stop) in _intervals(config).items():
        if start <= position < stop:
            return split
    return "test"


def orig_idx_for(config: SyntheticConfig, image_id: int) -> int:
    """The CelebA index written to the mapping file: inside the official range of the id's split.

    Positions map monotonically onto the range, so orig_idx values are distinct as long as no two
    ids' positions share a slot: true for ids below about 90,000 at the default fractions.
    """
    split = expected_split(config, image_id)
    start, stop = _intervals(config)[split]
    low, high = SPLIT_RANGES[split]
    slot = int((_position(config, image_id) - start) / (stop - start) * (high - low))
    return low + min(max(slot, 0), high - low - 1)


def _rng(config: SyntheticConfig, image_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, image_id, stream]))


def _annotations(
    face: faces.Face, parts: Mapping[str, np.ndarray], rng: np.random.Generator
) -> tuple[int, ...]:
    """The 40 CelebA attributes (1 / -1): those the drawing shows follow it, the rest are random."""
    male = bool(rng.random() < 0.4)
    has_hair = face.hair != "none"
    known = {
        "Bald": not has_hair, "Bangs": face.hairline > -0.4, "Male": male,
        "Black_Hair": face.hair_color == "black", "Blond_Hair": face.hair_color == "blond",
        "Brown_Hair": face.hair_color == "brown", "Gray_Hair": face.hair_color == "gray",
        "Eyeglasses": "eye_g" in parts, "Mouth_Slightly_Open": face.mouth_open,
        "Narrow_Eyes": face.eye_open < 0.75, "Pale_Skin": face.skin_tone < 0.12,
        "Big_Nose": face.nose_scale > 1.1, "Big_Lips": face.lip_height > 1.15, "Smiling": face.smile > 0.06,
        "Wearing_Earrings": "ear_r" in parts, "Wearing_Hat": "hat" in parts,
        "Wearing_Necklace": "neck_l" in parts, "Straight_Hair": has_hair and face.hair_volume < 0.12,
        "Wavy_Hair": has_hair and face.hair_volume >= 0.12,
    }  # fmt: skip
    for name in ("Goatee", "Mustache", "Sideburns", "5_o_Clock_Shadow"):
        known[name] = male and bool(rng.random() < 0.3)
    known["No_Beard"] = not (known["Goatee"] or known["Mustache"])
    for name in ("Heavy_Makeup", "Wearing_Lipstick"):
        known[name] = not male and bool(rng.random() < 0.5)
    values = [known[name] if name in known else bool(rng.random() < 0.3) for name in ATTRIBUTE_NAMES]
    return tuple(1 if value else -1 for value in values)


def _render_parts(
    config: SyntheticConfig, image_id: int
) -> tuple[faces.Face, dict[str, np.ndarray], np.ndarray]:
    if not isinstance(image_id, numbers.Integral) or isinstance(image_id, bool) or image_id < 0:
        raise ValueError(f"image_id must be a non-negative integer, got {image_id!r}")
    rng = _rng(config, int(image_id), _STREAM_FACE)
    face = faces.sample_face(rng, accessory_probability=config.accessory_probability)
    parts = faces.draw_parts(face, config.mask_size)
    return face, parts, merge_parts(parts, size=(config.mask_size, config.mask_size))


def expected_label(config: SyntheticConfig, image_id: int) -> np.ndarray:
    """The (mask_size, mask_size) uint8 merged class map of an id, without drawing the image."""
    return _render_parts(config, image_id)[2]


def render_sample(config: SyntheticConfig, image_id: int) -> SyntheticSample:
    """Render one id: image, part masks (uint8 0/255), merged map and its text-file rows."""
    face, parts, label = _render_parts(config, image_id)
    image_id = int(image_id)
    return SyntheticSample(
        image_id=image_id,
        image=faces.paint(face, label, config.image_size, _rng(config, image_id, _STREAM_TEXTURE)),
        parts=parts,
        label=label,
        split=expected_split(config, image_id),
        orig_idx=orig_idx_for(config, image_id),
        attributes=_annotations(face, parts, _rng(config, image_id, _STREAM_ANNOTATION)),
        pose=(round(face.yaw, 4), round(face.pitch, 4), round(math.degrees(face.roll), 4)),
    )


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_files(config: SyntheticConfig, sample: SyntheticSample) -> dict[str, bytes]:
    """Encoded files of one sample, keyed by their path relative to the dataset root."""
    files = {
        f"{IMAGE_DIR}/{sample.image_id}.jpg": jpeg_bytes(Image.fromarray(sample.image), config.jpeg_quality)
    }
    folder = f"{MASK_DIR}/{sample.image_id // IDS_PER_MASK_FOLDER}"
    for name, mask in sample.parts.items():
        files[f"{folder}/{sample.image_id:05d}_{name}.png"] = png_bytes(mask)
    return files


def text_files(config: SyntheticConfig, samples: list[SyntheticSample]) -> dict[str, str]:
    """The mapping, attribute and pose files for these samples (those the config asks for)."""
    samples = sorted(samples, key=lambda sample: sample.image_id)
    files = {}
    if config.write_mapping:
        rows = [f"{s.image_id} {s.orig_idx} {s.orig_idx + 1:06d}.jpg" for s in samples]
        files[MAPPING_FILE] = "\n".join(["idx orig_idx orig_file", *rows]) + "\n"
    if config.write_attributes:
        rows = [" ".join([f"{s.image_id}.jpg", *map(str, s.attributes)]) for s in samples]
        files[ATTRIBUTE_FILE] = "\n".join([str(len(samples)), " ".join(ATTRIBUTE_NAMES), *rows]) + "\n"
    if config.write_pose:
        rows = [" ".join([f"{s.image_id}.jpg", *(f"{value:.4f}" for value in s.pose)]) for s in samples]
        files[POSE_FILE] = "\n".join([str(len(samples)), " ".join(POSE_NAMES), *rows]) + "\n"
    return files


def write_dataset(
    config: SyntheticConfig,
    uri: str,
    storage_config: storage.StorageConfig | None = None,
    progress: bool = True,
    num_workers: int = 4,
) -> WriteResult:
    """Render every id of the config and write the release layout under uri (local path or s3://).

    Existing files with the same names are overwritten; other files under uri are left alone. The
    mapping file is written last, so its presence marks a complete dataset.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    root = storage.resolve(uri, storage_config)
    storage.ensure_dir(root)

    def write_one(image_id: int) -> tuple[SyntheticSample, int]:
        sample = render_sample(config, image_id)
        files = sample_files(config, sample)
        for relative, data in files.items():
            storage.write_bytes(root.join(relative), data)
        # The arrays are not needed any more: keep only the rows for the text files.
        return replace(sample, image=sample.image[:0], parts={}, label=sample.label[:0]), len(files) - 1

    samples, num_masks = [], 0
    bar = tqdm(total=config.num_images, desc=f"synthetic -> {root.uri}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=num_workers) as pool, bar:
        try:
            for sample, masks in pool.map(write_one, config.ids):
                samples.append(sample)
                num_masks += masks
                bar.update(1)
        except BaseException:  # Ctrl-C or a failed write: do not render the queued rest first
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    texts = text_files(config, samples)
    for name in sorted(texts, key=lambda name: name == MAPPING_FILE):
        storage.write_bytes(root.join(name), texts[name].encode())
    by_split = {split: tuple(s.image_id for s in samples if s.split == split) for split in SPLIT_RANGES}
    return WriteResult(
        uri=root.uri,
        num_images=len(samples),
        num_mask_files=num_masks,
        text_files=tuple(texts),
        ids_by_split=by_split,
    )
