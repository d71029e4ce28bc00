"""The raw CelebAMask-HQ tree as names: which samples exist, and what is bad before any decoding.

Runs on the driver and reads only names and the three small text files, so listing 30,000 samples
and ~400,000 masks on S3 costs a few list calls, not a read per file.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from maskgan import labels, storage
from maskgan.data import celebamask as raw
from maskgan.data import schema
from maskgan.storage import StorageConfig

# Official proportions (24,183 / 2,993 / 2,824), used for the hash split when no mapping file exists.
OFFICIAL_FRACTIONS = (0.8061, 0.0998, 0.0941)


class SourceError(RuntimeError):
    """The source holds no CelebAMask-HQ data; the message says where it looked."""


@dataclass(frozen=True)
class Listing:
    """The raw tree as names: candidate rows for Ray Data, plus what is already known to be bad."""

    rows: list[dict]
    quarantined: list[schema.QuarantineEntry]
    num_input: int
    ignored_files: list[str]
    attribute_names: list[str]
    split_source: str
    source_fingerprint: str  # names and sizes of every file: changes when the source does


def scan_source(
    source_uri: str,
    storage_config: StorageConfig | None = None,
    hash_split_fractions: tuple[float, float, float] = OFFICIAL_FRACTIONS,
    split_seed: int = 0,
) -> Listing:
    """List images and part masks, group them by id, and attach split, attributes and pose."""
    root = storage.resolve(source_uri, storage_config)
    storage.check_reachable(root)
    image_files = storage.list_files(root.join(raw.IMAGE_DIR), recursive=False)
    mask_files = storage.list_files(root.join(raw.MASK_DIR), recursive=True)
    if not image_files and not mask_files:
        raise SourceError(
            f"no CelebAMask-HQ data under {root.uri}: expected {raw.IMAGE_DIR}/<id>.jpg and "
            f"{raw.MASK_DIR}/<folder>/<id:05d>_<part>.png; check source_uri"
        )

    digest = hashlib.sha256()
    for info in [*image_files, *mask_files]:
        digest.update(f"{posixpath.relpath(info.path, root.path)}\t{info.size}\n".encode())
    ignored: list[str] = []
    images: dict[int, str] = {}
    for info in image_files:
        match = raw.IMAGE_NAME.match(info.base_name)
        if match:
            images[int(match.group(1))] = info.path
        else:
            ignored.append(info.path)
    masks: dict[int, dict[str, str]] = {}
    unknown_parts: dict[int, list[str]] = {}
    for info in mask_files:
        match = raw.MASK_NAME.match(info.base_name)
        if not match:
            ignored.append(info.path)
            continue
        sample_id, part = int(match.group(1)), match.group(2)
        if part in labels.PART_NAMES:
            masks.setdefault(sample_id, {})[part] = info.path
        else:
            unknown_parts.setdefault(sample_id, []).append(info.path)

    mapping_text = storage.read_text_if_exists(root.join(raw.MAPPING_FILE))
    mapping = raw.parse_mapping(mapping_text) if mapping_text is not None else None
    attribute_text = storage.read_text_if_exists(root.join(raw.ATTRIBUTE_FILE))
    attribute_names, attributes = raw.parse_attributes(attribute_text) if attribute_text else ([], {})
    pose_text = storage.read_text_if_exists(root.join(raw.POSE_FILE))
    for text in (mapping_text, attribute_text, pose_text):
        digest.update(hashlib.sha256((text or "").encode()).digest())
    poses = raw.parse_pose(pose_text) if pose_text else {}

    rows: list[dict] = []
    quarantined: list[schema.QuarantineEntry] = []
    all_ids = sorted(set(images) | set(masks) | set(unknown_parts))
    for sample_id in all_ids:
        mask_paths = masks.get(sample_id, {})
        files = tuple(p for p in ([images.get(sample_id)] + sorted(mask_paths.values())) if p)
        if sample_id not in images:
            reason = f"masks with no image (expected {raw.image_relative_path(sample_id)})"
        elif sample_id in unknown_parts:
            names = ", ".join(posixpath.basename(p) for p in unknown_parts[sample_id])
            reason = f"unknown part name in {names}; known parts: {', '.join(labels.PART_NAMES)}"
            files = files + tuple(unknown_parts[sample_id])
        elif not mask_paths:
            expected = f"{raw.MASK_DIR}/{raw.mask_folder(sample_id)}/{sample_id:05d}_<part>.png"
            reason = f"image has no mask files (expected {expected})"
        elif mapping is not None and sample_id not in mapping:
            reason = f"id missing from {raw.MAPPING_FILE}, so its official split is unknown"
        else:
            reason = None
        if reason is not None:
            quarantined.append(schema.QuarantineEntry(id=sample_id, reason=reason, files=files))
            continue
        if mapping is not None:
            orig_idx = mapping[sample_id]
            split = raw.official_split(orig_idx)
        else:
            orig_idx = None
            split = raw.hash_split(sample_id, hash_split_fractions, split_seed)
        pose = poses.get(sample_id)
        rows.append(
            {
                "id": sample_id,
                "split": split,
                "image_path": images[sample_id],
                "mask_parts": sorted(mask_paths),
                "mask_paths": [mask_paths[part] for part in sorted(mask_paths)],
                "orig_idx": orig_idx,
                "attributes": attributes.get(sample_id),
                "pose": list(pose) if pose else None,
            }
        )
    # Contiguous splits: each write task then sees (almost always) one split, so shards stay full.
    rows.sort(key=lambda row: (raw.SPLITS.index(row["split"]), row["id"]))
    split_source = "official mapping file" if mapping is not None else "hash of id (no mapping file)"
    return Listing(
        rows, quarantined, len(all_ids), ignored, attribute_names, split_source, digest.hexdigest()[:16]
    )
