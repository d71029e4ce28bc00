"""Sample faces for the page: the first rows of a preprocessed dataset's val split, kept encoded in memory."""

from __future__ import annotations

import numpy as np

from maskgan import storage
from maskgan.data import loader, schema


class Samples:
    """Up to max_samples val rows (id -> encoded image and label) of a finished preprocessing run."""

    def __init__(self, dataset_uri: str | None, max_samples: int) -> None:
        self.rows: dict[int, tuple[bytes, bytes]] = {}
        self.encoding, self.resolution = "png", 0
        if dataset_uri is None or max_samples == 0:
            return
        manifest = loader.read_manifest(dataset_uri)
        self.encoding, self.resolution = manifest.image_encoding, manifest.resolution
        root = storage.resolve(dataset_uri)
        for shard in manifest.shards_of("val"):
            table = loader.read_shard(root, shard).to_pydict()
            for sample_id, image, label in zip(table["id"], table["image"], table["label"], strict=True):
                if len(self.rows) == max_samples:
                    return
                self.rows[int(sample_id)] = (bytes(image), bytes(label))

    def ids(self) -> list[int]:
        """Sample ids in dataset order."""
        return list(self.rows)

    def image(self, sample_id: int) -> np.ndarray:
        """(R, R, 3) uint8 photo; KeyError for an unknown id."""
        return schema.decode_image(self.rows[sample_id][0], self.encoding, self.resolution)

    def label(self, sample_id: int) -> np.ndarray:
        """(R, R) uint8 class ids; KeyError for an unknown id."""
        return schema.decode_label(self.rows[sample_id][1], self.resolution)
