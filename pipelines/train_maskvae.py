"""Train the MaskVAE (mask -> latent -> mask; the edit simulator of EBST) on Ray Train.

Examples (after `make run`, whose dataset is 64 px):
  python pipelines/train_maskvae.py --preset mask_vae_tiny --data runs/quickstart/parquet \\
      --set model.image_size=64 --storage runs/train --max-steps 20
  ray job submit --working-dir . -- python pipelines/train_maskvae.py --preset mask_vae_official_512 \\
      --data s3://bucket/parquet --storage s3://bucket/runs --num-workers 8 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000
The final weights are logged to the MLflow run (artefact folder `maskvae`) and registered as a
version of `maskgan-maskvae` (alias challenger) unless --no-register.
"""

from __future__ import annotations

import sys

from maskgan.training import cli, ray_train
from maskgan.training.mask_vae import PRESETS, MaskVAETrainConfig


def build_parser():
    description, _, examples = __doc__.partition("\n\n")
    parser = cli.build_parser(description, examples, PRESETS)
    cli.add_register_argument(parser, "maskgan-maskvae")
    return parser


def main(config: MaskVAETrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True):
    """Train (or resume, or find finished) the run these configs name; register its model."""
    return cli.train_and_register(config, ray_config, register=register)


def run(argv: list[str] | None = None) -> int:
    return cli.run_stage(argv, build_parser(), MaskVAETrainConfig, PRESETS)


if __name__ == "__main__":
    sys.exit(run())
