"""A picture of what preprocessing wrote: a grid of images beside their colourised label maps."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from maskgan import labels, storage
from maskgan.data import schema
from maskgan.storage import Location

PREVIEW_NAME = "preview.png"


def preview_grid(images: np.ndarray, label_maps: np.ndarray, columns: int = 4) -> np.ndarray:
    """(N, R, R, 3) images + (N, R, R) labels -> one uint8 grid, each cell [image | colour label]."""
    if len(images) != len(label_maps) or not len(images):
        raise ValueError(f"preview needs as many labels as images (got {len(images)} and {len(label_maps)})")
    count, size = len(images), images.shape[1]
    columns = min(columns, count)
    rows = -(-count // columns)
    grid = np.full((rows * size, columns * 2 * size, 3), 255, dtype=np.uint8)
    for index in range(count):
        top, left = (index // columns) * size, (index % columns) * 2 * size
        grid[top : top + size, left : left + size] = images[index]
        grid[top : top + size, left + size : left + 2 * size] = labels.label_to_color(label_maps[index])
    return grid


def write_preview(
    output: Location, shard: schema.ShardInfo, encoding: str, resolution: int, count: int = 8
) -> Location:
    """Decode the first rows of a written shard and store the grid as preview.png next to the manifest."""
    # Only the first row group (64 rows) is fetched: a 128 MB shard on S3 is not read whole for 8 rows.
    with output.fs.open_input_file(output.join(shard.path).path) as handle:
        table = pq.ParquetFile(handle).read_row_group(0, columns=["image", "label"]).slice(0, count)
    images = np.stack([schema.decode_image(b, encoding, resolution) for b in table["image"].to_pylist()])
    label_maps = np.stack([schema.decode_label(b, resolution) for b in table["label"].to_pylist()])
    picture = Image.fromarray(preview_grid(images, label_maps))
    if picture.width > 2048:  # keep the file small for high resolutions
        height = round(picture.height * 2048 / picture.width)
        picture = picture.resize((2048, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    location = output.join(PREVIEW_NAME)
    storage.write_bytes(location, buffer.getvalue())
    return location
