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


# ---------------------------------------------------------------------------------------- training


@dataclass(frozen=True, kw_only=True)
class TrainChainConfig:
    """After preprocessing: MaskVAE, DMN, then EBST on the tiny presets, local Ray, SQLite MLflow."""

    workdir: str = "runs/quickstart"
    num_workers: int = 1
    max_steps: int | None = None  # None = the tiny presets' own step counts

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


class TrainingChainError(RuntimeError):
    """A training stage of the main job failed; the message names the stage and why."""


@dataclass(frozen=True)
class TrainChainResult:
    results: dict  # stage -> ray_train.TrainResult
    tracking_uri: str
    image_files: list[str]


def _tiny_stage_configs(parquet_uri: str, resolution: int, max_steps: int | None) -> dict:
    """The three tiny presets pointed at the dataset, their networks sized to its resolution."""
    from maskgan import config as config_lib
    from maskgan.training import dmn, ebst, mask_vae

    loop = {"max_steps": max_steps} if max_steps else {}
    data = {"uri": os.path.abspath(parquet_uri)}
    return {
        "maskvae": config_lib.merge(
            mask_vae.mask_vae_tiny(), {"model": {"image_size": resolution}, "data": data, "loop": loop}
        ),
        "dmn": config_lib.merge(
            dmn.dmn_tiny(), {"generator": {"resolution": resolution}, "data": data, "loop": loop}
        ),
        "ebst": config_lib.merge(
            ebst.ebst_tiny(),
            {
                "generator": {"resolution": resolution},
                "mask_vae": {"image_size": resolution},
                "data": data,
                "loop": loop,
            },
        ),  # fmt: skip
    }


def train_chain(config: TrainChainConfig, parquet_uri: str) -> TrainChainResult:
    """Train (or find finished) MaskVAE and DMN, then EBST from their checkpoints; print where things are."""
    import ray.train

    from maskgan import config as config_lib
    from maskgan.data import loader
    from maskgan.tracking import TrackingConfig
    from maskgan.training import ray_train

    workdir = os.path.abspath(config.workdir)
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{workdir}/mlflow.db", artifact_location=f"file://{workdir}/mlartifacts"
    )
    ray_config = ray_train.RayTrainConfig(
        num_workers=config.num_workers, storage_uri=os.path.join(workdir, "train"), tracking=tracking
    )
    resolution = loader.read_manifest(parquet_uri).resolution
    configs = _tiny_stage_configs(parquet_uri, resolution, config.max_steps)
    results = {}
    for index, stage in enumerate(("maskvae", "dmn", "ebst"), start=1):
        stage_config = configs[stage]
        if stage == "ebst":
            stage_config = config_lib.merge(
                stage_config,
                {
                    "mask_vae_checkpoint": results["maskvae"].checkpoint_uri,
                    "dmn_checkpoint": results["dmn"].checkpoint_uri,
                },
            )
        print(
            f"[train {index}/3] {stage}: {stage_config.loop.max_steps} steps, {config.num_workers} worker(s)"
        )
        try:
            results[stage] = ray_train.train(stage_config, ray_config)
        except (
            ray_train.DatasetError,
            ray_train.NonFiniteLossRunError,
            ray.train.TrainingFailedError,
        ) as error:
            raise TrainingChainError(f"training {stage} failed: {error}") from error
        print(results[stage].summary())
    images = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(workdir, "mlartifacts"))
        for name in names
        if name.endswith(".png")
        and any(r.mlflow_run_id and r.mlflow_run_id in root for r in results.values())
    )
    print("MLflow runs:")
    for stage, result in results.items():
        shown = {
            k: round(v, 4)
            for k, v in result.metrics.items()
            if k.startswith(("loss/", "val/")) and isinstance(v, float)
        }
        print(f"  {stage:8s} run {result.mlflow_run_id}  step {result.step}  {shown}")
    print("image grids:\n" + "\n".join(f"  {path}" for path in images[-9:]))
    print(f"open the MLflow UI:\n  mlflow ui --backend-store-uri {tracking.tracking_uri}")
    return TrainChainResult(results, tracking.tracking_uri, images)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainChainConfig()
    parser.add_argument("--no-train", action="store_true", help="stop after preprocessing")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=defaults.num_workers,
        help="Ray Train workers (default: %(default)s)",
    )
    parser.add_argument("--max-steps", type=int, help="steps per stage (default: the tiny presets' own)")


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
        train_config = TrainChainConfig(
            workdir=args.workdir, num_workers=args.num_workers, max_steps=args.max_steps
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        result = main(config)
        if not args.no_train:
            train_chain(train_config, result.parquet_uri)
    except (PreprocessError, StorageError, TrainingChainError) as error:
        print(f"pipeline failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
