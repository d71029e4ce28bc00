"""Helpers for the preprocessing tests: a tiny synthetic dataset and the matching config."""

from __future__ import annotations

import dataclasses

from maskgan.data import synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.preprocess import PreprocessConfig
from maskgan.storage import StorageConfig

IMAGE_SIZE, MASK_SIZE = 64, 32


def tiny_synthetic(num_images: int = 12, seed: int = 0, start_id: int = 0) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(
        num_images=num_images, image_size=IMAGE_SIZE, mask_size=MASK_SIZE, seed=seed, start_id=start_id
    )


def write_raw(uri: str, num_images: int = 12, storage_config: StorageConfig | None = None, **kwargs):
    config = tiny_synthetic(num_images, **kwargs)
    synthetic.write_dataset(config, uri, storage_config, progress=False)
    return config


def tiny_config(source: str, output: str, **overrides) -> PreprocessConfig:
    base = PreprocessConfig(
        source_uri=source,
        output_uri=output,
        decode=DecodeConfig(resolution=MASK_SIZE, mask_size=MASK_SIZE),
        shard_target_mb=0.02,
        batch_size=4,
        progress=False,
        max_bad_fraction=0.0,
    )
    return dataclasses.replace(base, **overrides)
