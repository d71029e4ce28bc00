"""The Ray Data sink that writes per-split Parquet shards and hands back what it quarantined."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink

from maskgan import storage
from maskgan.data import output_dir, schema
from maskgan.data.celebamask import SPLITS
from maskgan.storage import StorageConfig


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as one Parquet file in memory (so it is hashed before it is stored)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=schema.COMPRESSION, row_group_size=64, use_dictionary=False)
    return buffer.getvalue()


class ShardSink(Datasink):
    """Writes good rows as per-split shards of at most `rows_per_shard` rows.

    Each write task returns {"shards": [ShardInfo dicts], "quarantined": [entries]}; the driver
    reads them from `self.result` after `write_datasink` returns and commits the manifest itself.
    """

    def __init__(self, output_uri: str, storage_config: StorageConfig, run_id: str, rows_per_shard: int):
        self.output_uri = output_uri
        self.storage_config = storage_config
        self.run_id = run_id
        self.rows_per_shard = rows_per_shard
        self.result = None

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable[pa.Table], ctx) -> dict:
        tables = [block for block in blocks if block.num_rows]
        if not tables:
            return {"shards": [], "quarantined": []}
        table = pa.concat_tables(tables)
        bad = table.filter(pc.is_valid(table["error"]))
        good = table.filter(pc.is_null(table["error"])).drop_columns(["error", "files"])
        quarantined = [
            {"id": row["id"], "reason": row["error"], "files": row["files"]} for row in bad.to_pylist()
        ]
        root = storage.resolve(self.output_uri, self.storage_config)
        shards = []
        for split in SPLITS:
            rows = good.filter(pc.equal(good["split"], split))
            for number, start in enumerate(range(0, rows.num_rows, self.rows_per_shard)):
                part = rows.slice(start, self.rows_per_shard).cast(schema.SCHEMA)
                data = parquet_bytes(part)
                relative = f"{split}/part-{self.run_id}-{ctx.task_idx:05d}-{number:03d}.parquet"
                output_dir.check_claim(root, self.run_id)  # a killed job's task stops here
                storage.write_bytes(root.join(relative), data)
                shards.append(
                    {
                        "path": relative, "split": split, "num_rows": part.num_rows,
                        "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )  # fmt: skip
        return {"shards": shards, "quarantined": quarantined}

    def on_write_complete(self, write_result) -> None:
        self.result = write_result
