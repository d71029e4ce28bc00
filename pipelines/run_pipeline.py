"""The main job on embedded defaults: synthetic CelebAMask-HQ -> Parquet -> the retraining chain.

Examples:
  python pipelines/run_pipeline.py
  python pipelines/run_pipeline.py --workdir runs/small --num-images 16 --resolution 32 --max-steps 5
  python pipelines/run_pipeline.py --no-train
Everything stays under --workdir (default runs/quickstart): local Ray, local storage, SQLite MLflow.
The chain (maskgan.chain, as `train_ebst.py --chain`) trains MaskVAE, DMN, EBST and the parser,
evaluates, registers maskgan-editor and the stage models in MLflow and gates the champion; it ends
by printing the champion, its metrics, where the image grids are and the MLflow UI command.
--no-train stops after preprocessing, --max-steps N shortens each training stage. A rerun reuses
what is finished and matches its flags (a finished chain trains and registers nothing); a different
--num-images regenerates the synthetic data and a different --num-images or --resolution rebuilds the
Parquet output.
Exit status: 0 done; 1 failed (message says why); 2 bad arguments; 130 interrupted (rerun to continue).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass

from maskgan import config as config_lib
from maskgan.data import synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.preprocess import OutputOutdated, PreprocessConfig, PreprocessError, run
from maskgan.storage import StorageError

# Beside the synthetic data: the config it was made with ({"complete": bool, "config": {...}}).
SYNTHETIC_RECORD = "synthetic-config.json"
INTERRUPTED = "interrupted; rerun to continue"


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
    _ensure_synthetic(synthetic_config, raw_uri)
    print(f"[2/2] preprocessing {raw_uri} -> {parquet_uri} on Ray Data")
    preprocess_config = PreprocessConfig(
        source_uri=raw_uri,
        output_uri=parquet_uri,
        decode=DecodeConfig(resolution=config.resolution, mask_size=config.mask_size),
        shard_target_mb=0.5,
        batch_size=8,
    )
    try:
        result = run(preprocess_config)
    except OutputOutdated as outdated:
        # The workdir is this job's own: what it holds from other flags is rebuilt, not refused.
        print(f"[2/2] rebuilding: {outdated.reason}")
        result = run(preprocess_config, overwrite=True)
    print(result.summary())
    return PipelineResult(raw_uri, result.output_uri, result.manifest_uri)


def _ensure_synthetic(wanted: synthetic.SyntheticConfig, raw_uri: str) -> None:
    """Generate the synthetic data unless the folder holds a complete set made with `wanted`."""
    record_path = os.path.join(raw_uri, SYNTHETIC_RECORD)
    wanted_dict = config_lib.to_dict(wanted)
    record = None
    if os.path.exists(record_path):
        with open(record_path) as handle:
            record = json.load(handle)
    if record == {"complete": True, "config": wanted_dict}:
        print(f"[1/2] synthetic dataset already at {raw_uri}")
        return
    if record is None and os.path.isdir(raw_uri) and os.listdir(raw_uri):
        raise PreprocessError(
            f"{raw_uri} holds files without {SYNTHETIC_RECORD}, so this job did not write them; "
            "move them away or choose another --workdir"
        )
    if record is not None:
        changes = config_lib.differences(record["config"], wanted_dict)
        why = (
            "is from an unfinished earlier run"
            if not record["complete"]
            else f"differs ({'; '.join(changes)})"
        )
        print(f"[1/2] synthetic data at {raw_uri} {why}: regenerating")
        shutil.rmtree(raw_uri)  # this job's own folder (it holds the record), never a person's
    os.makedirs(raw_uri, exist_ok=True)
    with open(record_path, "w") as handle:
        json.dump({"complete": False, "config": wanted_dict}, handle)
    print(f"[1/2] writing {wanted.num_images} synthetic CelebAMask-HQ samples to {raw_uri}")
    synthetic.write_dataset(wanted, raw_uri)
    with open(record_path, "w") as handle:
        json.dump({"complete": True, "config": wanted_dict}, handle)


# ---------------------------------------------------------------------------------------- training


@dataclass(frozen=True, kw_only=True)
class TrainChainConfig:
    """After preprocessing, the retraining chain (maskgan.chain) on the tiny presets: MaskVAE, DMN, EBST,
    the parser, evaluation, registration and the gate; local Ray, SQLite MLflow, storage in the workdir."""

    workdir: str = "runs/quickstart"
    num_workers: int = 1
    max_steps: int | None = None  # None = the tiny presets' own step counts

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


class TrainingChainError(RuntimeError):
    """A step of the main job's chain failed; the message names the step and why."""


@dataclass(frozen=True)
class TrainChainResult:
    summary: dict  # maskgan.chain's summary (also <workdir>/train/chain-<key>/summary.json)
    tracking_uri: str
    image_folders: list[str]


def chain_config(config: TrainChainConfig, parquet_uri: str):
    """The ChainConfig of the main job: tiny presets sized to the dataset's resolution."""
    from maskgan import chain
    from maskgan.data import loader
    from maskgan.tracking import TrackingConfig
    from maskgan.training import ebst, ray_train

    workdir = os.path.abspath(config.workdir)
    resolution = loader.read_manifest(parquet_uri).resolution
    steps = {"max_steps": config.max_steps} if config.max_steps else {}
    ebst_config = config_lib.merge(
        ebst.ebst_tiny(),
        {"generator": {"resolution": resolution}, "mask_vae": {"image_size": resolution},
         "data": {"uri": os.path.abspath(parquet_uri)}, "loop": steps},
    )  # fmt: skip
    upstream = [f"loop.max_steps={config.max_steps}"] if config.max_steps else []
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{workdir}/mlflow.db", artifact_location=f"file://{workdir}/mlartifacts"
    )
    ray_config = ray_train.RayTrainConfig(
        num_workers=config.num_workers, storage_uri=os.path.join(workdir, "train"), tracking=tracking
    )
    stages = chain.stage_configs(ebst_config, size="_tiny", upstream_overrides=upstream)
    return chain.ChainConfig(**stages, ray=ray_config)


def train_chain(config: TrainChainConfig, parquet_uri: str) -> TrainChainResult:
    """Run (or find finished) the chain on the dataset; print the champion and where things are."""
    import ray.train

    from maskgan import chain
    from maskgan.gate import ReportError
    from maskgan.tracking import TrackingError
    from maskgan.training import ray_train

    chain_cfg = chain_config(config, parquet_uri)
    stages = ", ".join(f"{s} {getattr(chain_cfg, s).loop.max_steps} steps" for s in chain.STAGES)
    print(f"[chain] {stages}; {config.num_workers} worker(s); run key {chain_cfg.run_key()}")
    try:
        summary = chain.run_chain(chain_cfg)
    except (
        chain.ChainError, TrackingError, ReportError, ValueError, FileNotFoundError,
        ray_train.DatasetError, ray_train.NonFiniteLossRunError, ray.train.TrainingFailedError,
    ) as error:  # fmt: skip
        raise TrainingChainError(f"the chain failed: {error}") from error
    print(chain.format_summary(summary))
    folders = [uri.removeprefix("file://") for uri in summary.get("image_grids", {}).values()]
    return TrainChainResult(summary, chain_cfg.ray.tracking.tracking_uri, folders)


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


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--workdir", default=defaults.workdir, help="where everything goes (default: %(default)s)"
    )
    parser.add_argument(
        "--num-images", type=int, default=defaults.num_images,
        help="synthetic samples; a new value regenerates them and rebuilds the output (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="synthetic data seed (default: %(default)s)"
    )
    parser.add_argument(
        "--resolution", type=int, default=defaults.resolution,
        help="output px; a new value rebuilds the output (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="synthetic JPEG px, at least --resolution (default: %(default)s)",
    )
    add_training_arguments(parser)
    return parser


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig(
            workdir=args.workdir, num_images=args.num_images, resolution=args.resolution,
            image_size=args.image_size, seed=args.seed,
        )  # fmt: skip
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
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
