"""The main job on embedded defaults: synthetic CelebAMask-HQ -> Parquet shards (later: training).

Everything stays under --workdir (default runs/quickstart): local Ray, local storage. Re-running
reuses what is already finished (the synthetic data, an up-to-date preprocessing output).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

from maskgan.data import synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.preprocess import PreprocessConfig, PreprocessError, run
from maskgan.storage import StorageError


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The quick-start chain: how much synthetic data, at what size, and where."""

    workdir: str = "runs/quickstart"
    num_images: int = 96
    image_size: int = 128
    mask_size: int = 64
    resolution: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {self.num_images}")
        if self.resolution > self.image_size:
            raise ValueError(f"resolution {self.resolution} must not exceed image_size {self.image_size}")


@dataclass(frozen=True)
class PipelineResult:
    raw_uri: str
    parquet_uri: str
    manifest_uri: str


def main(config: PipelineConfig) -> PipelineResult:
    """Generate the synthetic dataset once, then preprocess it."""
    raw_uri = os.path.join(config.workdir, "celebamask-hq")
    parquet_uri = os.path.join(config.workdir, "parquet")
    synthetic_config = synthetic.SyntheticConfig(
        num_images=config.num_images,
        image_size=config.image_size,
        mask_size=config.mask_size,
        seed=config.seed,
    )
    marker = os.path.join(raw_uri, synthetic.MAPPING_FILE)
    if not os.path.exists(marker):
        print(f"[1/2] writing {config.num_images} synthetic CelebAMask-HQ samples to {raw_uri}")
        synthetic.write_dataset(synthetic_config, raw_uri)
    else:
        print(f"[1/2] synthetic dataset already at {raw_uri}")
    print(f"[2/2] preprocessing {raw_uri} -> {parquet_uri} on Ray Data")
    preprocess_config = PreprocessConfig(
        source_uri=raw_uri,
        output_uri=parquet_uri,
        decode=DecodeConfig(resolution=config.resolution, mask_size=config.mask_size),
        shard_target_mb=0.5,
        batch_size=8,
    )
    result = run(preprocess_config)
    print(result.summary())
    return PipelineResult(raw_uri, result.output_uri, result.manifest_uri)


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    defaults = PipelineConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default=defaults.workdir, help="where everything goes (default: %(default)s)"
    )
    parser.add_argument(
        "--num-images", type=int, default=defaults.num_images, help="synthetic samples (default: %(default)s)"
    )
    parser.add_argument(
        "--resolution", type=int, default=defaults.resolution, help="output px (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig(workdir=args.workdir, num_images=args.num_images, resolution=args.resolution)
    except ValueError as error:
        parser.error(str(error))
    try:
        main(config)
    except (PreprocessError, StorageError) as error:
        print(f"pipeline failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
