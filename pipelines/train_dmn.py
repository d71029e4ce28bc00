"""Train the DMN (G: mask + style image -> image; multi-scale D; LSGAN + FM + VGG) on Ray Train.

Examples (after `make run`, whose dataset is 64 px):
  python pipelines/train_dmn.py --preset dmn_tiny --data runs/quickstart/parquet \\
      --set generator.resolution=64 --storage runs/train --max-steps 20
  ray job submit --working-dir . -- python pipelines/train_dmn.py --preset dmn_official_512 \\
      --data s3://bucket/parquet --storage s3://bucket/runs --num-workers 8 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000
The final weights are logged to the MLflow run (artefact folder `dmn`) and registered as a
version of `maskgan-dmn` (alias challenger) unless --no-register.
"""

from __future__ import annotations

import sys

from maskgan.training import cli, ray_train
from maskgan.training.dmn import PRESETS, DMNTrainConfig


def build_parser():
    description, _, examples = __doc__.partition("\n\n")
    parser = cli.build_parser(description, examples, PRESETS)
    cli.add_register_argument(parser, "maskgan-dmn")
    return parser


def main(config: DMNTrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True):
    """Train (or resume, or find finished) the run these configs name; register its model."""
    return cli.train_and_register(config, ray_config, register=register)


def run(argv: list[str] | None = None) -> int:
    return cli.run_stage(argv, build_parser(), DMNTrainConfig, PRESETS)


if __name__ == "__main__":
    sys.exit(run())
