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
import os
import sys
import tempfile

from maskgan import storage
from maskgan.training import cli, ray_train
from maskgan.training.parser import PRESETS, ParserTrainConfig

REGISTERED_NAME = "maskgan-parser"
ARTIFACT_PATH = "parser"  # the run's artefact folder that is registered
INFERENCE_FILES = ("meta.json", "weights/parser.pt")  # what loading a parser needs (no optimiser state)

logger = logging.getLogger(__name__)


def build_parser():
    description, _, examples = __doc__.partition("\n\n")
    return cli.build_parser(description, examples, PRESETS)


def log_parser_artifacts(result: ray_train.TrainResult, ray_config: ray_train.RayTrainConfig) -> None:
    """Copy the final checkpoint's inference files into the MLflow run as artefact folder `parser`."""
    import mlflow

    from maskgan.tracking import resolve_tracking_uri

    source = storage.resolve(result.checkpoint_uri, ray_config.storage)
    client = mlflow.MlflowClient(resolve_tracking_uri(ray_config.tracking.tracking_uri))
    with tempfile.TemporaryDirectory(prefix="maskgan-parser-") as folder:
        for name in INFERENCE_FILES:
            target = os.path.join(folder, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as stream:
                stream.write(storage.read_bytes(source.join(name)))
        client.log_artifacts(result.mlflow_run_id, folder, ARTIFACT_PATH)


def register_parser(result: ray_train.TrainResult, ray_config: ray_train.RayTrainConfig) -> int | None:
    """Log the parser into its MLflow run and register it as maskgan-parser; returns the version.

    None when there is nothing to register (tracking off, no checkpoint) or when this install has no
    model registry helper (maskgan.registry): the artefact is still logged, registration is skipped.
    """
    if not ray_config.tracking.enabled or result.mlflow_run_id is None or result.checkpoint_uri is None:
        logger.warning("not registering %s: no MLflow run or no checkpoint", REGISTERED_NAME)
        return None
    log_parser_artifacts(result, ray_config)
    try:
        from maskgan import registry
    except ModuleNotFoundError:  # REGISTRY HOOK: maskgan.registry (branch `registry`) not merged here yet
        logger.warning("maskgan.registry is not available: %s logged, not registered", ARTIFACT_PATH)
        return None
    return registry.register(
        ray_config.tracking, REGISTERED_NAME, result.mlflow_run_id, ARTIFACT_PATH,
        tags={"maskgan.checkpoint_uri": result.checkpoint_uri, "maskgan.step": result.step},
    )  # fmt: skip


def main(
    config: ParserTrainConfig, ray_config: ray_train.RayTrainConfig, *, register: bool = True
) -> ray_train.TrainResult:
    """Train (or resume, or find finished) the parser run these configs name; register its checkpoint."""
    result = ray_train.train(config, ray_config)
    cli.print_result(result)
    if register:
        version = register_parser(result, ray_config)
        if version is not None:
            print(f"  registered: {REGISTERED_NAME} version {version}")
    return result


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument(
        "--no-register", action="store_true", help=f"do not register the parser as {REGISTERED_NAME}"
    )
    args = parser.parse_args(argv)
    config, ray_config = cli.resolve(parser, args, ParserTrainConfig, PRESETS)
    if args.print_config:
        print(cli.config_lib.to_yaml(config))
        return 0
    return cli.run_cli(lambda: main(config, ray_config, register=not args.no_register))


if __name__ == "__main__":
    sys.exit(run())
