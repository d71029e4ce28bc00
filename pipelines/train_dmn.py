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


def main(
    config: DMNTrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True
) -> ray_train.TrainResult:
    """Train (or resume, or find finished) the DMN run these configs name."""
    result = ray_train.train(config, ray_config)
    cli.print_result(result)
    if register:
        cli.register_result(result, ray_config)
    return result


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, ray_config = cli.resolve(parser, args, DMNTrainConfig, PRESETS)
    if args.print_config:
        print(cli.config_lib.to_yaml(config))
        return 0
    return cli.run_cli(lambda: main(config, ray_config, register=not args.no_register))


if __name__ == "__main__":
    sys.exit(run())
