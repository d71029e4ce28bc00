"""Parquet shards -> torch batches, directly from a path or through Ray Data for Ray Train workers.

Batches are dicts: `image` float32 (B, 3, H, W) in [-1, 1]; `label` int64 (B, H, W) class ids;
`onehot` float32 (B, 19, H, W); `id` int64 (B,). Shards are listed from the manifest only, and every
shard read is checked against it (size and sha256, row count, split column) before it is used.

Shuffling (both paths, same draws for the same seed and epoch, see maskgan.data.augment): the shard
order is permuted per (seed, epoch), shards are read in windows of `shuffle_window`, and the rows of
a window are permuted together, so a batch mixes rows of several shards from anywhere in the split.
Memory: one window of *encoded* rows (~shuffle_window x shard_target_mb); decoding is per batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from maskgan import labels, storage
from maskgan.data import augment, schema
from maskgan.data.celebamask import SPLITS
from maskgan.storage import Location, StorageConfig

_DATA_COLUMNS = ["id", "image", "label"]
_READ_COLUMNS = ["id", "split", "image", "label"]  # split is read only to check it
_RERUN = "rerun preprocess with --overwrite to rebuild the dataset"


class DatasetNotReady(FileNotFoundError):
    """The output has no manifest: preprocessing never finished there."""


class ShardMismatchError(ValueError):
    """A shard on storage is not the one the manifest lists (modified, truncated or swapped)."""


def read_manifest(uri: str, storage_config: StorageConfig | None = None) -> schema.Manifest:
    """The manifest of a finished preprocessing run; a clear error when there is none or it is foreign."""
    location = storage.resolve(uri, storage_config).join(schema.MANIFEST_NAME)
    if not storage.exists(location):
        raise DatasetNotReady(
            f"no {schema.MANIFEST_NAME} at {location.uri}: preprocessing has not finished there; "
            "run `python pipelines/preprocess.py` for this output first"
        )
    text = storage.read_bytes(location).decode()
    try:
        version = json.loads(text).get("schema_version")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{location.uri} is not a maskgan manifest ({error}); {_RERUN}") from None
    if version != schema.SCHEMA_VERSION:
        raise ValueError(
            f"{location.uri} has schema_version {version}, but this maskgan reads schema_version "
            f"{schema.SCHEMA_VERSION}; {_RERUN} (or read it with the maskgan version that wrote it)"
        )
    return schema.Manifest.from_json(text)


def _check_split(manifest: schema.Manifest, split: str) -> list[schema.ShardInfo]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return manifest.shards_of(split)


def read_shard(root: Location, shard: schema.ShardInfo, verify: bool = True, columns=None) -> pa.Table:
    """One shard as an Arrow table, checked against its manifest entry.

    Always: byte size, row count, and that every row's split is the shard's split (catches a shard
    copied over from another split or run). verify=True adds the sha256 of the bytes (catches any
    edit); the benchmark (benchmarks/loader.py) measures what that costs.
    """
    location = root.join(shard.path)
    data = storage.read_bytes(location)

    def mismatch(what: str) -> ShardMismatchError:
        return ShardMismatchError(
            f"shard {location.uri} ({shard.split} split) {what}: the output was modified after "
            f"preprocessing; {_RERUN}"
        )

    if len(data) != shard.num_bytes:
        raise mismatch(f"has {len(data)} bytes, the manifest says {shard.num_bytes}")
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise mismatch("does not match its manifest checksum")
    try:
        table = pq.read_table(pa.BufferReader(data), columns=_READ_COLUMNS)
    except (pa.ArrowException, OSError) as error:
        raise mismatch(f"is not a readable Parquet file with the maskgan columns ({error})") from None
    if table.num_rows != shard.num_rows:
        raise mismatch(f"has {table.num_rows} rows, the manifest says {shard.num_rows}")
    if table.num_rows and not pc.all(pc.equal(table["split"], shard.split)).as_py():
        found = sorted(set(table["split"].unique().to_pylist()) - {shard.split})
        raise mismatch(f"holds rows of split {', '.join(found)}")
    return table.select(columns or _DATA_COLUMNS)


def read_window(
    root: Location,
    shards: list[schema.ShardInfo],
    indices: list[int],
    *,
    verify: bool,
    shuffle: bool,
    seed: int,
    epoch: int,
    window_index: int,
) -> pa.Table:
    """The encoded rows (id, image, label) of several shards, permuted together when shuffling."""
    table = pa.concat_tables([read_shard(root, shards[i], verify) for i in indices])
    if shuffle:
        table = table.take(
            augment.row_order(table.num_rows, seed=seed, epoch=epoch, window_index=window_index)
        )
    return table


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


def decode_rows(
    table: pa.Table | dict[str, Any], encoding: str, resolution: int, *, flip: bool, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    """decode_table, then (flip=True) mirror each sample with p = 0.5 per (seed, epoch, id)."""
    decoded = decode_table(table, encoding, resolution)
    if flip:
        decoded = augment.flip_horizontal(decoded, augment.flip_coins(decoded["id"], seed=seed, epoch=epoch))
    return decoded


def to_torch(batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Decoded numpy (or tensor) batch -> the training layout, on `device`. The input is never modified."""
    image, label, ids = (
        batch[key] if torch.is_tensor(batch[key]) else torch.as_tensor(np.asarray(batch[key]))
        for key in ("image", "label", "id")
    )
    # uint8 travels to the device (4x less than float), then becomes (B, 3, H, W) in [-1, 1] there.
    image = image.to(device).permute(0, 3, 1, 2)
    if image.dtype == torch.uint8:
        image = image.float().div_(127.5).sub_(1.0)  # .float() made a new tensor: in place is safe
    else:
        image = image.float() / 127.5 - 1.0  # .float()/.to() may return the caller's tensor itself
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
    epoch: int = 0,
    flip: bool = False,
    shuffle_window: int = 4,
    drop_last: bool = False,
    verify: bool = True,
    device: torch.device | str = "cpu",
    storage_config: StorageConfig | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Torch batches straight from the shards (inference, tests, single-process training).

    shuffle=False: manifest order. shuffle=True: shard order permuted per (seed, epoch), rows mixed
    across windows of `shuffle_window` shards; the same (seed, epoch) gives the same order, another
    epoch or seed another one. flip=True mirrors each sample with p = 0.5 per (seed, epoch, id),
    swapping left/right classes (labels.MIRROR). Same rows and flips as ray_dataset for that epoch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle_window <= 0:
        raise ValueError(f"shuffle_window must be positive, got {shuffle_window}")
    manifest = read_manifest(uri, storage_config)
    root = storage.resolve(uri, storage_config)
    shards = _check_split(manifest, split)
    # Unshuffled, a window of one shard gives the same order with a quarter of the memory.
    window = shuffle_window if shuffle else 1
    windows = augment.shard_windows(len(shards), window, shuffle=shuffle, seed=seed, epoch=epoch)
    draws = {"seed": seed, "epoch": epoch}

    def emit(rows: pa.Table) -> dict[str, torch.Tensor]:
        decoded = decode_rows(rows, manifest.image_encoding, manifest.resolution, flip=flip, **draws)
        return to_torch(decoded, device)

    pending: pa.Table | None = None  # encoded rows not yet batched; decoding happens per batch
    for window_index, indices in enumerate(windows):
        table = read_window(
            root, shards, indices, verify=verify, shuffle=shuffle, window_index=window_index, **draws
        )
        pending = table if pending is None else pa.concat_tables([pending, table])
        full = pending.num_rows - pending.num_rows % batch_size
        for start in range(0, full, batch_size):
            yield emit(pending.slice(start, batch_size))
        pending = pending.slice(full)
    if pending is not None and pending.num_rows and not drop_last:
        yield emit(pending)


def _epoch_of_this_pass(start_epoch: int) -> int:
    """start_epoch + how many times this Ray Dataset ran before (Ray counts executions per dataset).

    Ray Train re-executes the dataset once per epoch; the count is in the task's DataContext.
    """
    from ray.data import DataContext

    return start_epoch + int(getattr(DataContext.get_current(), "_execution_idx", 0))


def ingest_options(**overrides):
    """Ray Data ExecutionOptions for training ingest: preserve_order so a seed gives one order.

    Pass as `ray.train.DataConfig(execution_options=ingest_options())`: Ray Train replaces a dataset's
    own execution options with DataConfig's.
    """
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    for key, value in overrides.items():
        setattr(options, key, value)
    return options


def ray_dataset(
    uri: str,
    split: str,
    storage_config: StorageConfig | None = None,
    *,
    verify: bool = True,
    flip: bool = False,
    seed: int = 0,
    shuffle: bool | None = None,
    shuffle_window: int = 4,
    start_epoch: int = 0,
    decode_batch_size: int = 32,
    decode_cpus: float = 1.0,
):
    """A Ray Dataset of decoded rows (id int64, image uint8 (H, W, 3), label uint8 (H, W)) for Ray Train.

    Each read task reads one window of shards as bytes, checks them against the manifest like
    read_shard (verify=True adds sha256) and permutes their rows; decode tasks (Ray Data CPU tasks)
    decode JPEG / zstd and apply the flip. One execution of the dataset = one epoch, numbered
    start_epoch, start_epoch + 1, ...: shard order, row order and flips are drawn per (seed, epoch)
    exactly as iter_batches(shuffle=shuffle, flip=flip, seed=seed, epoch=epoch) does. The order is
    reproducible only with preserve_order (set on this dataset; under Ray Train use ingest_options()).
    A mismatching shard fails the read with ShardMismatchError naming it. shuffle=None shuffles the
    train split only, so validation reads the same rows in the same order every time.
    """
    import ray

    if shuffle_window <= 0:
        raise ValueError(f"shuffle_window must be positive, got {shuffle_window}")
    if shuffle is None:
        shuffle = split == "train"
    if not shuffle:
        shuffle_window = 1  # same order; one read task per shard reads with more parallelism

    manifest = read_manifest(uri, storage_config)
    root = storage.resolve(uri, storage_config)
    shards = _check_split(manifest, split)
    if not shards:
        raise ValueError(f"split {split!r} of {uri} has no rows")
    num_windows = len(augment.shard_windows(len(shards), shuffle_window, shuffle=False, seed=0, epoch=0))
    encoding, resolution = manifest.image_encoding, manifest.resolution

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        epoch = _epoch_of_this_pass(start_epoch)
        windows = augment.shard_windows(len(shards), shuffle_window, shuffle=shuffle, seed=seed, epoch=epoch)
        tables = [
            read_window(
                root, shards, windows[slot], verify=verify, shuffle=shuffle, seed=seed, epoch=epoch,
                window_index=slot,
            )
            for slot in batch["slot"].tolist()
        ]  # fmt: skip
        return pa.concat_tables(tables)

    def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        epoch = _epoch_of_this_pass(start_epoch)
        return decode_rows(batch, encoding, resolution, flip=flip, seed=seed, epoch=epoch)

    # One block per window slot; which shards a slot reads is drawn inside the task, per epoch.
    slots = ray.data.from_items(
        [{"slot": slot} for slot in range(num_windows)], override_num_blocks=num_windows
    )
    # Reads are I/O and hashing: half a CPU each, which also keeps them out of the decode tasks
    # (different resources -> not fused), so decoding spreads over every CPU, not one task per window.
    dataset = slots.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.5).map_batches(
        decode, batch_size=decode_batch_size, batch_format="numpy", num_cpus=decode_cpus
    )
    dataset.context.execution_options.preserve_order = True
    return dataset


def train_batches(
    dataset_shard,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    drop_last: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of to_torch batches from `ray.train.get_dataset_shard(name)` (or a Dataset).

    Adds a local shuffle buffer of `shuffle_buffer` decoded rows (default 4 x batch_size, 0 = off)
    seeded per (seed, epoch) on top of ray_dataset's window shuffle; call once per epoch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buffer = 4 * batch_size if shuffle_buffer is None else shuffle_buffer
    if buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {buffer}")
    kwargs: dict[str, Any] = {"batch_size": batch_size, "drop_last": drop_last}
    if buffer:
        kwargs.update(
            local_shuffle_buffer_size=buffer, local_shuffle_seed=augment.local_shuffle_seed(seed, epoch)
        )
    for batch in dataset_shard.iter_torch_batches(**kwargs):
        yield to_torch(batch, device)


def iter_ray_batches(
    dataset, batch_size: int, *, device: torch.device | str = "cpu", **kwargs
) -> Iterator[dict]:
    """Torch batches from a Ray Dataset or a Ray Train dataset shard (DataIterator), no extra shuffle."""
    for batch in dataset.iter_torch_batches(batch_size=batch_size, **kwargs):
        yield to_torch(batch, device)
