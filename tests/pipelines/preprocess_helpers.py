"""Helpers for the preprocessing tests: a tiny synthetic dataset, the matching config, reconciliation."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

from maskgan import storage
from maskgan.data import schema, synthetic
from maskgan.data.celebamask import SPLITS, DecodeConfig
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


def assert_reconciles(manifest: schema.Manifest, storage_config: StorageConfig | None = None) -> None:
    """rows in = rows out + quarantined, by the manifest's counts and by the ids in its shards."""
    counts = manifest.counts
    assert counts["input"] == counts["written"] + counts["quarantined"], counts
    assert counts["written"] == sum(shard.num_rows for shard in manifest.shards), counts
    assert counts["written"] == sum(counts[split] for split in SPLITS), counts
    assert counts["quarantined"] == len(manifest.quarantined), counts
    quarantined_ids = [entry.id for entry in manifest.quarantined]
    root = storage.resolve(manifest.output_uri, storage_config)
    written_ids = []
    for shard in manifest.shards:
        with root.fs.open_input_file(root.join(shard.path).path) as handle:
            table = pq.read_table(handle, columns=["id", "split"])
        assert table.num_rows == shard.num_rows, shard
        assert set(table["split"].to_pylist()) <= {shard.split}, shard
        written_ids += table["id"].to_pylist()
    assert len(set(written_ids)) == len(written_ids), "an id was written twice"
    assert len(set(quarantined_ids)) == len(quarantined_ids), "an id was quarantined twice"
    assert not set(written_ids) & set(quarantined_ids), "an id was both written and quarantined"
    assert len(written_ids) + len(quarantined_ids) == counts["input"]
