"""The Parquet contract between preprocessing and training: columns, encodings, and the manifest.

One row per sample. Shards live in `<output>/<split>/*.parquet`; `<output>/manifest.json` is written
last and is the only list readers trust: a folder without a manifest is an incomplete run.

| column      | type           | meaning                                                            |
|-------------|----------------|--------------------------------------------------------------------|
| id          | int32          | CelebA-HQ id (the image file name)                                 |
| split       | string         | train / val / test                                                 |
| image       | binary         | RGB image, R x R, encoded as the manifest's `image_encoding`       |
| label       | binary         | R x R uint8 class ids (labels.CLASS_NAMES order), C order, one zstd frame |
| resolution  | int32          | R                                                                  |
| classes     | int32          | bit i set when class i is present in the label                     |
| orig_idx    | int32 (null)   | CelebA index from the mapping file                                 |
| attributes  | list<int8>(null)| the 40 CelebA attributes (1 / -1), names in the manifest          |
| pose        | list<float32>(null)| yaw, pitch, roll                                               |

Encodings (measured in benchmarks/preprocess.py, see README): images are JPEG q95 4:4:4 by
default, about 5.6x smaller than raw pixels (53 vs 298 KB at 512 px) with a mean error near one
grey level and a ~1 ms decode, far below a training step; `png` (13x slower to encode) and `raw`
are lossless options. Labels must be exact: raw class ids compressed per row with zstd level 1
(4 KB instead of 256 KB, 0.1 ms each way; `zstd -d` reads them), done in the parallel decode
tasks so the writer and Ray's object store carry the small form.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from PIL import Image

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"

ImageEncoding = Literal["jpeg", "png", "raw"]

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.binary(), nullable=False),
        pa.field("resolution", pa.int32(), nullable=False),
        pa.field("classes", pa.int32(), nullable=False),
        pa.field("orig_idx", pa.int32()),
        pa.field("attributes", pa.list_(pa.int8())),
        pa.field("pose", pa.list_(pa.float32())),
    ],
    metadata={"maskgan.schema_version": str(SCHEMA_VERSION)},
)
# Parquet compression per column: image and label bytes are compressed already.
COMPRESSION = {"image": "none", "label": "none", "attributes": "zstd", "pose": "zstd"}
_LABEL_CODEC = pa.Codec("zstd", compression_level=1)


def encode_image(image: np.ndarray, encoding: ImageEncoding, jpeg_quality: int = 95) -> bytes:
    """(R, R, 3) uint8 -> bytes in the given encoding."""
    if encoding == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    if encoding == "jpeg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
    elif encoding == "png":
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image encoding {encoding!r} is not one of jpeg, png, raw")
    return buffer.getvalue()


def decode_image(data: bytes, encoding: ImageEncoding, resolution: int) -> np.ndarray:
    """Bytes written by encode_image -> (R, R, 3) uint8."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(resolution, resolution, 3)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_label(label: np.ndarray) -> bytes:
    """(R, R) uint8 class map -> one zstd frame of its C-order bytes."""
    return _LABEL_CODEC.compress(np.ascontiguousarray(label, dtype=np.uint8).tobytes(), asbytes=True)


def decode_label(data: bytes, resolution: int) -> np.ndarray:
    """Bytes written by encode_label -> (R, R) uint8 class map."""
    raw = _LABEL_CODEC.decompress(data, decompressed_size=resolution * resolution, asbytes=True)
    return np.frombuffer(raw, dtype=np.uint8).reshape(resolution, resolution)


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet file of a split, as listed in the manifest (path relative to the output root)."""

    path: str
    split: str
    num_rows: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class QuarantineEntry:
    """A sample that did not land, and why."""

    id: int
    reason: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """What a finished preprocessing run wrote; readers list shards from here, never by globbing."""

    schema_version: int
    created_at: str
    source_uri: str
    output_uri: str
    config: dict[str, Any]
    config_fingerprint: str
    image_encoding: str
    resolution: int
    class_names: list[str]
    attribute_names: list[str]
    split_source: str  # "official mapping file" or "hash of id (no mapping file)"
    counts: dict[str, int]  # input, written, quarantined, train, val, test
    shards: list[ShardInfo]
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source_fingerprint: str = ""  # listing.Listing.source_fingerprint of the source it was made from

    def shards_of(self, split: str) -> list[ShardInfo]:
        return [shard for shard in self.shards if shard.split == split]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema_version {data.get('schema_version')} is not {SCHEMA_VERSION}; "
                "rerun preprocess with this version of maskgan"
            )
        data["shards"] = [ShardInfo(**shard) for shard in data["shards"]]
        data["quarantined"] = [
            QuarantineEntry(id=q["id"], reason=q["reason"], files=tuple(q.get("files", ())))
            for q in data["quarantined"]
        ]
        return cls(**data)
