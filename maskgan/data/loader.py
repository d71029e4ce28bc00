"""Parquet shards -> torch batches, directly from a path or through Ray Data for Ray Train workers.

Batches are dicts: `image` float32 (B, 3, H, W) in [-1, 1]; `label` int64 (B, H, W) class ids;
`onehot` float32 (B, 19, H, W); `id` int64 (B,). Shards are listed from the manifest only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from maskgan import labels, storage
from maskgan.data import schema
from maskgan.data.celebamask import SPLITS
from maskgan.storage import Location, StorageConfig

_DATA_COLUMNS = ["id", "image", "label"]


class DatasetNotReady(FileNotFoundError):
    """The output has no manifest: preprocessing never finished there."""


def read_manifest(uri: str, storage_config: StorageConfig | None = None) -> schema.Manifest:
    """The manifest of a finished preprocessing run; a clear error when there is none."""
    location = storage.resolve(uri, storage_config).join(schema.MANIFEST_NAME)
    if not storage.exists(location):
        raise DatasetNotReady(
            f"no {schema.MANIFEST_NAME} at {location.uri}: preprocessing has not finished there; "
            "run `python pipelines/preprocess.py` for this output first"
        )
    return schema.Manifest.from_json(storage.read_bytes(location).decode())


def _check_split(manifest: schema.Manifest, split: str) -> list[schema.ShardInfo]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return manifest.shards_of(split)


def read_shard(root: Location, shard: schema.ShardInfo, verify: bool = True, columns=None) -> pa.Table:
    """One shard as an Arrow table, its checksum verified against the manifest."""
    data = storage.read_bytes(root.join(shard.path))
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise ValueError(
            f"shard {root.join(shard.path).uri} does not match its manifest checksum; "
            "the output was modified after preprocessing: rerun preprocess with --overwrite"
        )
    return pq.read_table(pa.BufferReader(data), columns=columns)


def decode_table(table: pa.Table | dict[str, Any], encoding: str, resolution: int) -> dict[str, np.ndarray]:
    """Rows of encoded image / raw label bytes -> numpy id (B,), image (B, H, W, 3), label (B, H, W) uint8."""
    columns = table.to_pydict() if isinstance(table, pa.Table) else table
    images = [schema.decode_image(bytes(data), encoding, resolution) for data in columns["image"]]
    label_rows = [schema.decode_label(bytes(data), resolution) for data in columns["label"]]
    return {
        "id": np.asarray(columns["id"], dtype=np.int64),
        "image": np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8),
        "label": np.stack(label_rows) if label_rows else np.zeros((0, resolution, resolution), np.uint8),
    }


def to_torch(batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Decoded numpy (or tensor) batch -> the training layout, on `device`."""
    image, label, ids = (
        batch[key] if torch.is_tensor(batch[key]) else torch.as_tensor(np.asarray(batch[key]))
        for key in ("image", "label", "id")
    )
    # uint8 travels to the device (4x less than float), then becomes (B, 3, H, W) in [-1, 1] there.
    image = image.to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    label = label.to(device).long()  # (B, H, W)
    ids = ids.long()
    return {"id": ids, "image": image.contiguous(), "label": label, "onehot": labels.one_hot(label)}


def iter_batches(
    uri: str,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
    storage_config: StorageConfig | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Torch batches straight from the shards (inference, tests, single-process training)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    manifest = read_manifest(uri, storage_config)
    root = storage.resolve(uri, storage_config)
    shards = _check_split(manifest, split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(shards)) if shuffle else np.arange(len(shards))
    pending: dict[str, np.ndarray] | None = None
    for index in order:
        table = read_shard(root, shards[index], columns=_DATA_COLUMNS)
        decoded = decode_table(table, manifest.image_encoding, manifest.resolution)
        if shuffle:
            permutation = rng.permutation(len(decoded["id"]))
            decoded = {key: value[permutation] for key, value in decoded.items()}
        if pending is not None:
            decoded = {key: np.concatenate([pending[key], decoded[key]]) for key in decoded}
        count = len(decoded["id"])
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield to_torch({key: value[start : start + batch_size] for key, value in decoded.items()}, device)
        pending = {key: value[full:] for key, value in decoded.items()}
    if pending is not None and len(pending["id"]) and not drop_last:
        yield to_torch(pending, device)


def ray_dataset(uri: str, split: str, storage_config: StorageConfig | None = None):
    """A Ray Dataset of decoded rows (id, image uint8 (H, W, 3), label uint8 (H, W)) for Ray Train."""
    import ray

    manifest = read_manifest(uri, storage_config)
    root = storage.resolve(uri, storage_config)
    shards = _check_split(manifest, split)
    if not shards:
        raise ValueError(f"split {split!r} of {uri} has no rows")
    paths = [root.join(shard.path).path for shard in shards]
    encoding, resolution = manifest.image_encoding, manifest.resolution
    dataset = ray.data.read_parquet(paths, filesystem=root.fs, columns=_DATA_COLUMNS)
    return dataset.map_batches(
        lambda batch: decode_table(batch, encoding, resolution), batch_format="numpy", batch_size=32
    )


def iter_ray_batches(
    dataset, batch_size: int, *, device: torch.device | str = "cpu", **kwargs
) -> Iterator[dict]:
    """Torch batches from a Ray Dataset or a Ray Train dataset shard (DataIterator)."""
    for batch in dataset.iter_torch_batches(batch_size=batch_size, **kwargs):
        yield to_torch(batch, device)
