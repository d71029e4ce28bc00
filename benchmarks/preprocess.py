"""Preprocessing throughput at full size (1024-px JPEG + 512-px masks in, 512 out), as ratios.

Measures in one run, on the same synthetic data:
  job      the Ray Data job (pipelines/preprocess.py's run(), Ray already started)
  loop     a plain single-process loop doing the same work (same decode/merge/encode, Parquet out)
  floor    decoding the inputs only, one process, times the number of cores
           (twice: the decode the job does, with libjpeg DCT scaling, and a full-size decode)
plus the peak memory (PSS of the driver and every Ray process) for two dataset sizes, and the
size / speed of each image encoding (why the schema stores JPEG).

  python benchmarks/preprocess.py --num-images 384 --workdir runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from maskgan.data import celebamask as raw
from maskgan.data import schema, synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.listing import Listing, scan_source
from maskgan.data.preprocess import OUTPUT_SCHEMA, PreprocessConfig, process_sample, run


def process_tree_pss_mb(root_pid: int) -> float:
    """Proportional set size of a process and all its descendants (shared pages counted once)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


class PeakMemory:
    """Samples the process tree's PSS every 0.1 s while the block runs."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, process_tree_pss_mb(os.getpid()))
            self._stop.wait(0.1)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


REPO = Path(__file__).resolve().parents[1]
CONFIG_MARKER = "synthetic-config.json"  # written last: its presence marks a complete cached dataset
_GENERATE = (
    "import json, sys\n"
    "from maskgan.data import synthetic\n"
    "config = synthetic.SyntheticConfig(**json.loads(sys.argv[1]))\n"
    "synthetic.write_dataset(config, sys.argv[2], progress=False)\n"
)


def raw_cache_dir(workdir: Path, config: synthetic.SyntheticConfig) -> Path:
    """Where a synthetic dataset is cached: named by a hash of EVERY field of its config."""
    fields = json.dumps(dataclasses.asdict(config), sort_keys=True)
    key = hashlib.sha256(fields.encode()).hexdigest()[:12]
    return workdir / f"raw-{config.num_images}-{config.image_size}-{key}"


def ensure_raw(workdir: Path, config: synthetic.SyntheticConfig) -> str:
    """Generate (once, cached) in a child process, so this process's memory stays a clean baseline."""
    root = raw_cache_dir(workdir, config)
    fields = json.dumps(dataclasses.asdict(config), sort_keys=True)
    marker = root / CONFIG_MARKER
    if not marker.exists() or marker.read_text() != fields:
        print(f"generating {config.num_images} synthetic samples ({config}) in {root} ...")
        shutil.rmtree(root, ignore_errors=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-c", _GENERATE, fields, str(root)], check=True, env=env)
        marker.write_text(fields)
    return str(root)


def list_source(config: PreprocessConfig) -> Listing:
    return scan_source(config.source_uri, config.storage, config.hash_split_fractions, config.split_seed)


def read_sample_files(row: dict) -> dict[str, bytes]:
    return {path: Path(path).read_bytes() for path in [row["image_path"], *row["mask_paths"]]}


def single_process_loop(config: PreprocessConfig, output: Path) -> float:
    """The same work without Ray: list, read, decode, merge, encode, write Parquet. Returns seconds."""
    started = time.perf_counter()
    listing = list_source(config)
    output.mkdir(parents=True, exist_ok=True)
    rows = [process_sample(row, read_sample_files(row), config) for row in listing.rows]
    table = (
        pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA).drop_columns(["error", "files"]).cast(schema.SCHEMA)
    )
    pq.write_table(table, output / "all.parquet", compression=schema.COMPRESSION, row_group_size=64)
    return time.perf_counter() - started


def decode_only(config: PreprocessConfig, fast: bool) -> tuple[float, int]:
    """Decode every input image and mask, nothing else. Returns (seconds, samples)."""
    listing = list_source(config)
    files = [read_sample_files(row) for row in listing.rows]  # reading is not decoding: excluded
    started = time.perf_counter()
    for row, contents in zip(listing.rows, files, strict=True):
        image = Image.open(io.BytesIO(contents[row["image_path"]]))
        if fast:
            image.draft("RGB", (config.decode.resolution, config.decode.resolution))
        image.convert("RGB")
        for path in row["mask_paths"]:
            np.asarray(Image.open(io.BytesIO(contents[path])))
    return time.perf_counter() - started, len(listing.rows)


def encoding_table(
    raw_root: str, resolution: int, samples: int = 16
) -> list[tuple[str, float, float, float]]:
    """(encoding, KB per image incl. Parquet, encode ms, decode ms) at the output resolution."""
    images = []
    for sample_id in range(samples):
        with Image.open(f"{raw_root}/{raw.IMAGE_DIR}/{sample_id}.jpg") as image:
            images.append(
                np.asarray(image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC))
            )
    out = []
    for encoding in ("jpeg", "png", "raw"):
        started = time.perf_counter()
        blobs = [schema.encode_image(image, encoding, 95) for image in images]
        encode_ms = (time.perf_counter() - started) / samples * 1e3
        started = time.perf_counter()
        for blob in blobs:
            schema.decode_image(blob, encoding, resolution)
        decode_ms = (time.perf_counter() - started) / samples * 1e3
        buffer = io.BytesIO()
        compression = "none" if encoding != "raw" else "zstd"
        pq.write_table(pa.table({"image": pa.array(blobs, pa.binary())}), buffer, compression=compression)
        out.append((encoding, len(buffer.getvalue()) / samples / 1024, encode_ms, decode_ms))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=384, help="samples in the smaller dataset")
    parser.add_argument("--image-size", type=int, default=1024, help="synthetic JPEG side in pixels")
    parser.add_argument("--mask-size", type=int, default=512, help="synthetic mask PNG side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--resolution", type=int, default=512, help="output resolution of the job")
    parser.add_argument(
        "--workdir", default="runs/bench", help="synthetic data is cached here, keyed by its whole config"
    )
    parser.add_argument("--encoding", default="jpeg", choices=["jpeg", "png", "raw"], help="image encoding")
    parser.add_argument("--repeats", type=int, default=2, help="warm job / loop passes, best taken")
    return parser


def synthetic_config(args: argparse.Namespace, num_images: int) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(
        num_images=num_images, image_size=args.image_size, mask_size=args.mask_size, seed=args.seed
    )


def main() -> None:
    args = build_parser().parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    workdir = Path(args.workdir)
    cores = os.cpu_count() or 1
    small = ensure_raw(workdir, synthetic_config(args, args.num_images))
    large = ensure_raw(workdir, synthetic_config(args, 2 * args.num_images))

    def config_for(source: str, name: str) -> PreprocessConfig:
        return PreprocessConfig(
            source_uri=source, output_uri=str(workdir / name),
            decode=DecodeConfig(resolution=args.resolution, mask_size=args.mask_size),
            image_encoding=args.encoding, shard_target_mb=16, progress=False, max_bad_fraction=0.0,
        )  # fmt: skip

    baseline = process_tree_pss_mb(os.getpid())
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    idle = process_tree_pss_mb(os.getpid())

    results = {}
    for name, source in (("small", small), ("large", large)):
        config = config_for(source, f"out-{name}")
        shutil.rmtree(config.output_uri, ignore_errors=True)
        with PeakMemory() as memory:
            result = run(config, overwrite=True)
        results[name] = (result.manifest.counts["input"], result.seconds, memory.peak)
    # Warm passes over the large set (Ray workers already started), interleaved with the loop so
    # both see the same machine load; the best of each is the steady-state figure.
    config = config_for(large, "out-large")
    job_times, loop_times = [], []
    for _ in range(args.repeats):
        job_times.append(run(config, overwrite=True).seconds)
        shutil.rmtree(workdir / "out-loop", ignore_errors=True)
        loop_times.append(single_process_loop(config, workdir / "out-loop"))
    job_rate = results["large"][0] / min(job_times)
    loop_rate = results["large"][0] / min(loop_times)
    fast_seconds, n = min(decode_only(config, fast=True) for _ in range(args.repeats))
    full_seconds, _ = min(decode_only(config, fast=False) for _ in range(args.repeats))
    floor_fast, floor_full = n / fast_seconds * cores, n / full_seconds * cores

    print(
        f"\n== preprocessing, {args.image_size}-px JPEG + {args.mask_size}-px masks -> {args.resolution} px "
          f"({args.encoding}), {cores} cores, {results['large'][0]} samples ==")  # fmt: skip
    print(f"ray.init: {ray_start:.1f}s (not counted below)")
    print(f"{'what':42s} {'samples/s':>10s} {'x loop':>8s} {'x floor':>8s}")
    rows = [
        ("Ray Data job (warm)", job_rate),
        ("single-process loop (baseline)", loop_rate),
        (f"decode floor, DCT-scaled decode x {cores} cores", floor_fast),
        (f"decode floor, full decode x {cores} cores", floor_full),
    ]
    for label, rate in rows:
        print(f"{label:42s} {rate:10.1f} {rate / loop_rate:8.2f} {rate / floor_fast:8.2f}")
    print(f"job / decode floor (full decode): {job_rate / floor_full:.2f}")
    print("\n== peak memory (PSS of driver + Ray processes) ==")
    print(f"before Ray {baseline:.0f} MB; Ray idle {idle:.0f} MB")
    for name in ("small", "large"):
        count, seconds, peak = results[name]
        print(
            f"{count:6d} samples: peak {peak:7.0f} MB, {count / seconds:6.1f} samples/s (cold, incl. listing)"
        )
    print(f"peak ratio large/small: {results['large'][2] / results['small'][2]:.2f} for 2x the data")
    print(f"\n== image encodings at {args.resolution} px (16 samples) ==")
    print(f"{'encoding':10s} {'KB/image':>9s} {'encode ms':>10s} {'decode ms':>10s}")
    for encoding, size_kb, encode_ms, decode_ms in encoding_table(large, args.resolution):
        print(f"{encoding:10s} {size_kb:9.1f} {encode_ms:10.2f} {decode_ms:10.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
