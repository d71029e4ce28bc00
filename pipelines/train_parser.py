"""Train the face parser (image -> 19-class mask; judges mask fidelity, turns photos into masks) on Ray Train.

Examples:
  python pipelines/train_parser.py --preset parser_tiny --data runs/quickstart/parquet \\
      --storage runs/train --max-steps 20
  ray job submit --working-dir . -- python pipelines/train_parser.py --preset parser_512 \\
      --data s3://bucket/parquet --storage s3://bucket/runs --num-workers 4 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000
The final checkpoint's inference files (meta.json, weights/parser.pt) are logged to the MLflow run as
the artefact folder `parser` and registered as a version of `maskgan-parser` (alias challenger).
"""

from __future__ import annotations

import logging
import sys

from maskgan.training import cli, ray_train
from maskgan.training.parser import PRESETS, ParserTrainConfig

REGISTERED_NAME = "maskgan-parser"
ARTIFACT_PATH = "parser"  # the run's artefact folder that is registered

logger = logging.getLogger(__name__)


def build_parser():
    description, _, examples = __doc__.partition("\n\n")
    parser = cli.build_parser(description, examples, PRESETS)
    cli.add_register_argument(parser, REGISTERED_NAME)
    return parser


def main(config: ParserTrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True):
    """Train (or resume, or find finished) the run these configs name; register its model."""
    return cli.train_and_register(config, ray_config, register=register)


def run(argv: list[str] | None = None) -> int:
    return cli.run_stage(argv, build_parser(), ParserTrainConfig, PRESETS)


if __name__ == "__main__":
    sys.exit(run())
