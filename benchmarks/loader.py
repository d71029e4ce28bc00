"""Loader throughput (rows/s) with and without shard verification and shuffling, as ratios in one run.

On a synthetic dataset made by the preprocessing job (per resolution, cached in --workdir), one pass
over the train split for each variant, passes interleaved and repeated, median taken:
  direct          iter_batches(shuffle=True): verify (sha256) on / off
  ray baseline    ray.data.read_parquet + decode map_batches: the unchecked path of the previous loader
  ray_dataset     verify off (size, row count, split column only) / on (+ sha256); preserve_order off;
                  + train_batches' local shuffle buffer (4 x batch)
  global shuffle  checked shard reads + random_shuffle(seed) on the encoded rows + decode (the alternative)
plus sha256 MB/s and decode ms/row on this machine, which explain the verify ratio.

  python benchmarks/loader.py --num-images 512 --resolutions 64 256 --workdir runs/bench-loader
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

from maskgan.data import loader, synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.preprocess import PreprocessConfig, run

SEED = 0


def make_dataset(workdir: Path, num_images: int, resolution: int, num_shards: int) -> tuple[str, int]:
    """Synthetic raw data (image 2R, masks R) -> preprocessing job -> Parquet; cached by every parameter."""
    key = f"n{num_images}-img{2 * resolution}-mask{resolution}-seed{SEED}"
    raw = workdir / f"raw-{key}"
    if not (raw / synthetic.MAPPING_FILE).exists():
        print(f"generating {num_images} synthetic samples ({key}) ...", flush=True)
        config = synthetic.SyntheticConfig(
            num_images=num_images, image_size=2 * resolution, mask_size=resolution, seed=SEED
        )
        synthetic.write_dataset(config, str(raw), progress=False)
    # Size shards so the train split has about `num_shards` of them (one shard would hide the
    # cross-shard work). The row size is measured by a first run, then the job reruns if needed.
    out = workdir / f"out-{key}-s{num_shards}"
    decode = DecodeConfig(resolution=resolution, mask_size=resolution)

    def job(shard_mb: float, overwrite: bool):
        config = PreprocessConfig(
            source_uri=str(raw), output_uri=str(out), decode=decode, shard_target_mb=shard_mb,
            progress=False, max_bad_fraction=0.0,
        )  # fmt: skip
        return run(config, overwrite=overwrite).manifest

    manifest = loader.read_manifest(str(out)) if (out / "manifest.json").exists() else job(128.0, True)
    train = manifest.shards_of("train")
    if len(train) < num_shards // 2:
        per_shard_mb = sum(s.num_bytes for s in train) / num_shards / 1e6
        manifest = job(per_shard_mb, True)
        train = manifest.shards_of("train")
    return str(out), manifest.counts["train"]


def timed_pass(make_batches) -> float:
    """Seconds for one full pass (dataset construction included); returns (seconds, rows)."""
    started = time.perf_counter()
    rows = sum(len(batch["id"]) for batch in make_batches())
    return time.perf_counter() - started, rows


def variants(out: str, batch_size: int) -> dict:
    import ray

    manifest = loader.read_manifest(out)
    encoding, resolution = manifest.image_encoding, manifest.resolution
    root = loader.storage.resolve(out)
    paths = [root.join(shard.path).path for shard in manifest.shards_of("train")]

    def decode(batch):
        return loader.decode_table(batch, encoding, resolution)

    def parquet_baseline():
        # Ray 2.60's read_parquet lists files in a ListFiles task that takes ~10-20 s wall (0.1 s CPU)
        # per execution here; ray_dataset reads the manifest's paths itself and never pays it.
        dataset = ray.data.read_parquet(paths, filesystem=root.fs).select_columns(["id", "image", "label"])
        dataset = dataset.map_batches(decode, batch_format="numpy", batch_size=32)
        return loader.iter_ray_batches(dataset, batch_size)

    def global_shuffle():
        # The alternative to windows: read + check every shard, random_shuffle the encoded rows
        # (an all-to-all barrier each epoch), then decode.
        shards = manifest.shards_of("train")

        def read(batch):
            return loader.read_shard(root, shards[int(batch["index"][0])])

        items = ray.data.from_items(
            [{"index": i} for i in range(len(shards))], override_num_blocks=len(shards)
        )
        dataset = items.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0.5)
        dataset = dataset.random_shuffle(seed=SEED).map_batches(decode, batch_format="numpy", batch_size=32)
        return loader.iter_ray_batches(dataset, batch_size)

    def checked(verify: bool, preserve_order: bool = True, buffer: int = 0):
        dataset = loader.ray_dataset(out, "train", verify=verify, seed=SEED)
        dataset.context.execution_options.preserve_order = preserve_order
        return loader.train_batches(dataset, batch_size, seed=SEED, shuffle_buffer=buffer, drop_last=False)

    return {
        "direct, verify on": lambda: loader.iter_batches(out, "train", batch_size, shuffle=True),
        "direct, verify off": lambda: loader.iter_batches(
            out, "train", batch_size, shuffle=True, verify=False
        ),
        "ray read_parquet, unchecked (old path)": parquet_baseline,
        "ray_dataset, verify off (size/rows/split)": lambda: checked(False),
        "ray_dataset, verify on (+sha256)": lambda: checked(True),
        "ray_dataset, verify on, preserve_order off": lambda: checked(True, preserve_order=False),
        "ray_dataset, verify on + local buffer 4B": lambda: checked(True, buffer=4 * batch_size),
        "ray verify on + random_shuffle (global)": global_shuffle,
    }


def hash_and_decode_costs(out: str) -> tuple[float, float]:
    """(sha256 MB/s, decode ms per row) on this machine, from the dataset's own shards."""
    manifest = loader.read_manifest(out)
    root = loader.storage.resolve(out)
    data = [loader.storage.read_bytes(root.join(s.path)) for s in manifest.shards_of("train")]
    started = time.perf_counter()
    for blob in data:
        hashlib.sha256(blob).hexdigest()
    hash_mb_s = sum(map(len, data)) / 1e6 / (time.perf_counter() - started)
    table = loader.read_shard(root, manifest.shards_of("train")[0])
    started = time.perf_counter()
    loader.decode_table(table, manifest.image_encoding, manifest.resolution)
    decode_ms = (time.perf_counter() - started) / table.num_rows * 1e3
    return hash_mb_s, decode_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=512, help="synthetic samples per dataset")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256], help="output px")
    parser.add_argument("--shards", type=int, default=8, help="about this many train shards")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved passes per variant (median)")
    parser.add_argument("--workdir", default="runs/bench-loader", help="datasets are cached here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    workdir = Path(args.workdir)
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for resolution in args.resolutions:
        out, rows = make_dataset(workdir, args.num_images, resolution, args.shards)
        num_shards = len(loader.read_manifest(out).shards_of("train"))
        runs = variants(out, args.batch_size)
        for make in runs.values():  # warm-up: Ray workers, page cache
            timed_pass(make)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, make in runs.items():
                elapsed, seen = timed_pass(make)
                assert seen == rows, (name, seen, rows)
                seconds[name].append(elapsed)
        rate = {name: rows / statistics.median(values) for name, values in seconds.items()}
        base = rate["ray read_parquet, unchecked (old path)"]
        hash_mb_s, decode_ms = hash_and_decode_costs(out)
        print(
            f"\n== loader, {resolution} px, train split {rows} rows in {num_shards} shards, batch "
            f"{args.batch_size}, {cores} cores, median of {args.repeats} =="
        )
        print(f"{'variant':46s} {'rows/s':>8s} {'x old ray':>9s}")
        for name, value in rate.items():
            print(f"{name:46s} {value:8.0f} {value / base:9.2f}")
        on, off = rate["ray_dataset, verify on (+sha256)"], rate["ray_dataset, verify off (size/rows/split)"]
        direct_on, direct_off = rate["direct, verify on"], rate["direct, verify off"]
        print(f"verify on / off: ray {on / off:.2f}, direct {direct_on / direct_off:.2f}")
        print(f"sha256 {hash_mb_s:.0f} MB/s; decode {decode_ms:.2f} ms/row (JPEG + zstd label)")
    ray.shutdown()


if __name__ == "__main__":
    main()
