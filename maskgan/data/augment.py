"""Seeded randomness shared by both loaders: shard windows, row order, horizontal flips.

Every draw is a pure function of (seed, epoch, ...) -- never of process, worker or task order -- so the
direct iterator and the Ray Data path make the same choices for the same seed and epoch, and a resumed
run that passes the epoch it resumes repeats the first run's order.
"""

from __future__ import annotations

import numpy as np

from maskgan import labels

_MASK64 = (1 << 64) - 1
# Stream tags keep the draws independent of each other for the same (seed, epoch).
_SHARD_ORDER, _ROW_ORDER, _LOCAL_SHUFFLE = 1, 2, 3


def _rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    # SeedSequence takes non-negative integers only: fold negative seeds into 64 bits.
    return np.random.default_rng([seed & _MASK64, epoch & _MASK64, *stream])


def shard_windows(num_shards: int, window: int, *, shuffle: bool, seed: int, epoch: int) -> list[list[int]]:
    """Shard indices grouped into windows of `window` shards, in a per-(seed, epoch) order when shuffling.

    Rows are mixed within a window, so a window spans `window` shards drawn anywhere in the split.
    """
    if window <= 0:
        raise ValueError(f"shuffle_window must be positive, got {window}")
    order = _rng(seed, epoch, _SHARD_ORDER).permutation(num_shards) if shuffle else np.arange(num_shards)
    return [order[start : start + window].tolist() for start in range(0, num_shards, window)]


def row_order(num_rows: int, *, seed: int, epoch: int, window_index: int) -> np.ndarray:
    """(num_rows,) permutation of the rows of one window."""
    return _rng(seed, epoch, _ROW_ORDER, window_index).permutation(num_rows)


def local_shuffle_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for Ray's local shuffle buffer, different per epoch."""
    return int(_rng(seed, epoch, _LOCAL_SHUFFLE).integers(0, 2**32))


def flip_coins(ids: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """(B,) bool: which samples to mirror, p = 0.5 each, a hash of (seed, epoch, id).

    Hashing the id (splitmix64) rather than drawing in sequence makes a sample's coin independent of
    the batch it lands in, so the direct and Ray paths flip the same samples.
    """
    with np.errstate(over="ignore"):
        x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
        x ^= np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK64) ^ np.uint64(
            (epoch * 0xD1B54A32D192ED03) & _MASK64
        )
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(63)).astype(bool)


def flip_horizontal(batch: dict[str, np.ndarray], coins: np.ndarray) -> dict[str, np.ndarray]:
    """Mirror the samples where `coins` is set: image (B, H, W, 3) and label (B, H, W), classes swapped.

    Returns new arrays; the input batch is not modified.
    """
    if not coins.any():
        return batch
    image, label = batch["image"].copy(), batch["label"].copy()
    image[coins] = image[coins][:, :, ::-1]
    label[coins] = labels.mirror_label(label[coins])
    return {**batch, "image": image, "label": label}
