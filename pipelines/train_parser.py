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


def register_parser(result: ray_train.TrainResult, ray_config: ray_train.RayTrainConfig) -> int | None:
    """Log the parser into its MLflow run (artefact folder `parser`) and register it as maskgan-parser.

    Returns the version; None when there is nothing to register (tracking off, no checkpoint).
    """
    return cli.register_result(result, ray_config)


def main(
    config: ParserTrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True
) -> ray_train.TrainResult:
    """Train (or resume, or find finished) the parser run these configs name; register its checkpoint."""
    result = ray_train.train(config, ray_config)
    cli.print_result(result)
    if register:
        register_parser(result, ray_config)
    return result


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, ray_config = cli.resolve(parser, args, ParserTrainConfig, PRESETS)
    if args.print_config:
        print(cli.config_lib.to_yaml(config))
        return 0
    return cli.run_cli(lambda: main(config, ray_config, register=not args.no_register))


if __name__ == "__main__":
    sys.exit(run())
