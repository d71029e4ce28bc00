"""The command line shared by pipelines/train_*.py: flags -> (stage config, RayTrainConfig) -> train().

The same command runs locally (a local Ray runtime is started) and under
`ray job submit -- python pipelines/<name>.py ...` (RAY_ADDRESS is set: it connects to that cluster).
Exit status: 0 trained or already finished; 1 the run failed (message says why); 2 bad arguments or
config; 130 interrupted (Ctrl-C / SIGTERM; the last good checkpoint stays, rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from maskgan import config as config_lib
from maskgan.storage import StorageError
from maskgan.tracking import TrackingConfig
from maskgan.training import ray_train

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

COMMON_EPILOG = """\
Common flags work the same for every stage:
  --data URI            preprocessed dataset (local path or s3://bucket/prefix holding manifest.json)
  --storage URI         where runs and checkpoints go: <storage>/<stage>-<run key>/checkpoint_*
  --run-key KEY         name the run; the same key (and storage) resumes it. Default: a config fingerprint
  --mlflow-uri URI      MLflow tracking server (http://...) or sqlite:///abs/path.db (default ./mlflow.db)
  --num-workers N --gpus-per-worker G --cpus-per-worker C   Ray Train resources per worker
Exit status: 0 trained or already finished; 1 the run failed; 2 bad arguments; 130 interrupted.
"""


def build_parser(
    description: str, examples: str, presets: Mapping[str, Callable[[], Any]]
) -> argparse.ArgumentParser:
    """The flags of every training entrypoint (stage-specific ones are added by the caller)."""
    parser = argparse.ArgumentParser(
        description=description, epilog=examples + "\n" + COMMON_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_lib.add_config_arguments(parser, presets)
    defaults = ray_train.RayTrainConfig()
    parser.add_argument("--data", metavar="URI", help="preprocessed dataset (sets data.uri)")
    parser.add_argument(
        "--storage", metavar="URI", default=defaults.storage_uri,
        help="run storage, local path or s3://bucket/prefix (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--s3-endpoint", metavar="URL",
        help="S3 endpoint for data, checkpoints, MLflow artefacts (MinIO, moto); default AWS_ENDPOINT_URL",
    )  # fmt: skip
    parser.add_argument(
        "--num-workers",
        type=int,
        default=defaults.num_workers,
        help="Ray Train workers (default: %(default)s)",
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0.0,
        help="GPUs per worker; > 0 trains on GPUs (default: CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--cpus-per-worker", type=float, default=None,
        help=f"CPUs per worker (default: {defaults.cpus_per_worker} on CPU, 4 with GPUs; rest: Ray Data)",
    )  # fmt: skip
    parser.add_argument(
        "--data-cpus", type=float, default=defaults.data_cpus,
        help="CPUs per Ray Data decode task; lower it where a node has < 1 CPU beside its train worker "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--mlflow-uri", metavar="URI", help="MLflow tracking URI (default: sqlite ./mlflow.db)"
    )
    parser.add_argument(
        "--experiment", default=TrackingConfig().experiment, help="MLflow experiment (default: %(default)s)"
    )
    parser.add_argument(
        "--run-key", help="run identity; reuse it to resume (default: fingerprint of the config)"
    )
    parser.add_argument(
        "--max-steps", type=int, help="sets loop.max_steps (raise it to train a finished run further)"
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=defaults.max_failures,
        help="worker-group restarts (default: %(default)s)",
    )
    parser.add_argument(
        "--num-to-keep",
        type=int,
        default=defaults.num_to_keep,
        help="checkpoints kept (default: %(default)s)",
    )
    parser.add_argument(
        "--placement-strategy", default=defaults.placement_strategy, choices=ray_train.PLACEMENT_STRATEGIES,
        help="how workers spread over nodes (default: %(default)s)",
    )  # fmt: skip
    return parser


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """The --set list plus what the dedicated flags set on the stage config."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.uri={args.data}")
    if args.s3_endpoint:
        overrides.append(f"data.storage.endpoint_url={args.s3_endpoint}")
    if args.max_steps is not None:
        overrides.append(f"loop.max_steps={args.max_steps}")
    return overrides


def ray_config_from(args: argparse.Namespace, stage_config: Any) -> ray_train.RayTrainConfig:
    """RayTrainConfig from the flags; run storage reaches S3 with the same endpoint as the data."""
    use_gpu = args.gpus_per_worker > 0
    cpus = args.cpus_per_worker or (4.0 if use_gpu else ray_train.RayTrainConfig().cpus_per_worker)
    storage_config = stage_config.data.storage
    if args.s3_endpoint:
        storage_config = dataclasses.replace(storage_config, endpoint_url=args.s3_endpoint)
    tracking = TrackingConfig(tracking_uri=args.mlflow_uri, experiment=args.experiment)
    return ray_train.RayTrainConfig(
        num_workers=args.num_workers,
        use_gpu=use_gpu,
        gpus_per_worker=args.gpus_per_worker if use_gpu else 1.0,
        cpus_per_worker=cpus,
        storage_uri=args.storage,
        storage=storage_config,
        run_key=args.run_key,
        num_to_keep=args.num_to_keep,
        max_failures=args.max_failures,
        placement_strategy=args.placement_strategy,
        data_cpus=args.data_cpus,
        tracking=tracking,
    )


def resolve(
    parser: argparse.ArgumentParser, args: argparse.Namespace, config_cls: type, presets
) -> tuple[Any, Any]:
    """(stage config, ray config) or a usage error (exit 2) naming the bad field."""
    try:
        stage_config = config_lib.load(config_cls, presets[args.preset](), args.config, stage_overrides(args))
        return stage_config, ray_config_from(args, stage_config)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def init_ray() -> None:
    """Connect to RAY_ADDRESS when set (ray job submit sets it), else start a local runtime."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


def _sigterm_as_interrupt(signum, frame) -> None:
    # The SIGINT handler in force (during Ray Train's fit(): its graceful abort, see ray_train) runs
    # first, so SIGTERM stops the workers the way Ctrl-C does; either way a KeyboardInterrupt follows.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(body: Callable[[], Any]) -> int:
    """Run an entrypoint body with the shared exit codes; SIGTERM behaves like Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        init_ray()
        # ray.init installs Ray's own SIGTERM handler in the driver (it logs and aborts, status -6):
        # ours again, so SIGTERM stays an interrupt that leaves the last checkpoint and exits 130.
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        body()
        return EXIT_OK
    except KeyboardInterrupt:
        print(
            "interrupted: the last reported checkpoint is intact; run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (
        ray_train.DatasetError,
        ray_train.NonFiniteLossRunError,
        ray_train.UpstreamError,
        StorageError,
    ) as error:
        print(f"training failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # Ray's TrainingFailedError and friends: say what, keep the traceback in logs
        import ray.train

        if isinstance(error, ray.train.TrainingFailedError):
            logging.getLogger(__name__).exception("training failed")
            print(f"training failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_result(result: ray_train.TrainResult) -> None:
    print(result.summary())


def add_register_argument(parser: argparse.ArgumentParser, registered_name: str) -> None:
    parser.add_argument(
        "--no-register", action="store_true",
        help=f"do not log the final weights as a model and register them as {registered_name}",
    )  # fmt: skip


def register_result(result: ray_train.TrainResult, ray_config: ray_train.RayTrainConfig) -> int | None:
    """Log the final checkpoint's inference files into the run and register them (maskgan.registry).

    Idempotent (the run's version is found, not made again). None when there is nothing to register:
    tracking off, no MLflow run or no checkpoint.
    """
    from maskgan import registry

    name = registry.STAGE_MODELS[result.stage][0]
    if not ray_config.tracking.enabled or result.mlflow_run_id is None or result.checkpoint_uri is None:
        logging.getLogger(__name__).warning("not registering %s: no MLflow run or no checkpoint", name)
        return None
    version, new = registry.register_checkpoint(
        ray_config.tracking, result.stage, result.mlflow_run_id, result.checkpoint_uri,
        storage=ray_config.storage,
    )  # fmt: skip
    print(f"  registered: {name} version {version}{'' if new else ' (already registered)'}")
    return version


def train_and_register(config: Any, ray_config: ray_train.RayTrainConfig, *, register: bool = True):
    """Train (or resume, or find finished) the run these configs name; print it; register its model."""
    result = ray_train.train(config, ray_config)
    print_result(result)
    if register:
        register_result(result, ray_config)
    return result


def run_stage(
    argv: list[str] | None, parser: argparse.ArgumentParser, config_cls: type, presets: dict
) -> int:
    """The whole CLI of a registering stage (train_maskvae / train_dmn / train_parser)."""
    args = parser.parse_args(argv)
    config, ray_config = resolve(parser, args, config_cls, presets)
    if args.print_config:
        print(config_lib.to_yaml(config))
        return 0
    return run_cli(lambda: train_and_register(config, ray_config, register=not args.no_register))
