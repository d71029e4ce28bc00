"""Train EBST (editing behaviour simulated training: G + D + blender, MaskVAE frozen) on Ray Train.

EBST starts from a trained DMN and uses a trained MaskVAE to simulate edits. Give them as checkpoint
URIs or MLflow runs (`mlflow:<run id>`), or pass --with-upstream to train whichever is missing first
(a finished upstream run with the same config is reused, not trained again).

Examples (after `make run`, whose dataset is 64 px):
  python pipelines/train_ebst.py --preset ebst_tiny --data runs/quickstart/parquet --storage runs/train \\
      --set generator.resolution=64 --set mask_vae.image_size=64 --max-steps 10 --with-upstream \\
      --upstream-set loop.max_steps=20
  python pipelines/train_ebst.py --preset ebst_tiny --data runs/quickstart/parquet --storage runs/train \\
      --set generator.resolution=64 --set mask_vae.image_size=64 \\
      --dmn runs/train/dmn-<key> --mask-vae mlflow:<mlflow run id>
  ray job submit --working-dir . -- python pipelines/train_ebst.py --preset ebst_official_512 \\
      --data s3://bucket/parquet --storage s3://bucket/runs --num-workers 8 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000 --dmn mlflow:<dmn run> --mask-vae mlflow:<maskvae run>
  # --chain: the whole retraining job (dataset, MaskVAE, DMN, EBST, parser, evaluate, register, gate)
  python pipelines/train_ebst.py --chain --preset ebst_tiny --data runs/quickstart/parquet \\
      --storage runs/chain --mlflow-uri sqlite:///runs/chain/mlflow.db --set generator.resolution=64 \\
      --set mask_vae.image_size=64 --max-steps 5 --upstream-set loop.max_steps=5 --run-key demo
  python pipelines/train_ebst.py --chain --reuse-champions --preset ebst_tiny \\
      --data runs/quickstart/parquet --storage runs/chain --mlflow-uri sqlite:///runs/chain/mlflow.db \\
      --set generator.resolution=64 --set mask_vae.image_size=64 --max-steps 5 \\
      --upstream-set loop.max_steps=5 --run-key demo-reuse
  ray job submit --submission-id retrain-20261127 --working-dir . -- python pipelines/train_ebst.py --chain \\
      --preset ebst_official_512 --source s3://bucket/CelebAMask-HQ --data s3://bucket/parquet-512 \\
      --storage s3://bucket/runs --num-workers 4 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000 --run-key retrain-20261127
With --chain the same run key after success does nothing; after a failure or a kill it resumes the
unfinished step (finished stages, MLflow runs and registered versions are found, not made again).
Its summary is printed and written to <storage>/chain-<run key>/summary.json. --source preprocesses
the raw dataset into --data first when the manifest is missing or stale. --chain exit status: 0 done or
already done; 1 any step failed (including a failed gate); 2 bad arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from maskgan import chain as chain_lib
from maskgan import config as config_lib
from maskgan.training import checkpoint, cli, dmn, mask_vae, ray_train
from maskgan.training.ebst import PRESETS, EBSTTrainConfig

# EBST config field -> (what it is, the upstream stage module)
UPSTREAM = {"mask_vae_checkpoint": ("MaskVAE", mask_vae, "maskvae"), "dmn_checkpoint": ("DMN", dmn, "dmn")}
FLAGS = {"mask_vae_checkpoint": "--mask-vae", "dmn_checkpoint": "--dmn"}


def build_parser() -> argparse.ArgumentParser:
    description, _, examples = __doc__.partition("\n\n")
    parser = cli.build_parser(description, examples, PRESETS)
    parser.add_argument(
        "--dmn", metavar="URI|mlflow:RUN", help="DMN checkpoint, run folder (newest checkpoint) or MLflow run"
    )
    parser.add_argument(
        "--mask-vae", metavar="URI|mlflow:RUN", help="MaskVAE checkpoint (sets mask_vae_checkpoint)"
    )
    parser.add_argument("--with-upstream", action="store_true", help="train a missing DMN / MaskVAE first")
    parser.add_argument(
        "--dmn-preset", choices=sorted(dmn.PRESETS), help="upstream DMN preset (default: matches --preset)"
    )
    parser.add_argument(
        "--mask-vae-preset",
        choices=sorted(mask_vae.PRESETS),
        help="upstream MaskVAE preset (default: matches --preset)",
    )
    parser.add_argument(
        "--upstream-set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field of the upstream configs (and with --chain the parser's), e.g. "
        "loop.max_steps=200 (repeatable)",
    )  # fmt: skip
    chain = parser.add_argument_group("the retraining chain (--chain)")
    chain.add_argument(
        "--chain", action="store_true",
        help="run the whole chain: dataset, MaskVAE, DMN, EBST, parser, evaluate, register, gate",
    )  # fmt: skip
    chain.add_argument(
        "--reuse-champions", action="store_true",
        help="use the champions of maskgan-maskvae / maskgan-dmn instead of training them (when present)",
    )  # fmt: skip
    chain.add_argument(
        "--source", metavar="URI", help="raw CelebAMask-HQ to preprocess into --data when its manifest is "
        "missing or stale (default: --data must hold a dataset)",
    )  # fmt: skip
    chain.add_argument(
        "--preprocess-set", action="append", default=[], metavar="KEY=VALUE",
        help="override a PreprocessConfig field, e.g. decode.mask_size=64 (repeatable)",
    )  # fmt: skip
    chain.add_argument(
        "--eval-max-batches", type=int, default=4, help="evaluation batches per model; 0 = the whole split "
        "(default: %(default)s)",
    )  # fmt: skip
    chain.add_argument("--eval-split", default="val", choices=("val", "test"), help="default: %(default)s")
    chain.add_argument(
        "--gate-margin", type=float, default=0.0,
        help="the editor must beat the champion's edit/miou by more than this (default: %(default)s)",
    )  # fmt: skip
    return parser


def upstream_preset(ebst_preset: str, presets: dict) -> str:
    """ebst_tiny -> dmn_tiny / mask_vae_tiny: the upstream preset of the same size."""
    suffix = ebst_preset.removeprefix("ebst")
    matches = [name for name in presets if name.endswith(suffix)]
    if len(matches) != 1:
        raise ValueError(
            f"no single upstream preset matches {ebst_preset!r} among {sorted(presets)}; name one"
        )
    return matches[0]


def resolve_upstream(
    config: EBSTTrainConfig,
    ray_config: ray_train.RayTrainConfig,
    *,
    refs: dict[str, str | None],
    with_upstream: bool = False,
    presets: dict[str, str] | None = None,
    upstream_overrides: list[str] | None = None,
) -> tuple[EBSTTrainConfig, dict[str, str]]:
    """Fill dmn_checkpoint / mask_vae_checkpoint; returns the config and {field: how it was found}."""
    updates, used = {}, {}
    for field, (label, module, stage) in UPSTREAM.items():
        ref = refs.get(field) or getattr(config, field)
        if ref:
            uri, how = ray_train.resolve_checkpoint_ref(ref, ray_config.tracking)
            try:  # a run folder or storage root stands for its newest complete checkpoint
                uri = checkpoint.resolve_checkpoint(uri, config.data.storage, stage=stage)
            except FileNotFoundError as error:
                raise ray_train.UpstreamError(f"{label}: {error}") from None
        elif with_upstream:
            preset = (presets or {}).get(field) or upstream_preset(config_preset_name(config), module.PRESETS)
            overrides = [f"data.uri={config.data.uri}", *(upstream_overrides or [])]
            upstream_config = config_lib.load(
                type(module.PRESETS[preset]()), module.PRESETS[preset](), None, overrides
            )
            # The upstream networks must be the ones EBST loads: same data, same network configs.
            networks = (
                {"model": config.mask_vae}
                if stage == "maskvae"
                else {"generator": config.generator, "discriminator": config.discriminator}
            )
            shared = {"data": config.data, **networks}
            upstream_config = config_lib.merge(
                upstream_config, {key: config_lib.to_dict(value, True) for key, value in shared.items()}
            )
            print(f"EBST needs a {label}: training {preset} first (a finished run is reused)")
            result = ray_train.train(upstream_config, dataclasses.replace(ray_config, run_key=None))
            if not result.checkpoint_uri:
                raise ray_train.UpstreamError(f"the {label} run {result.run_name} left no checkpoint")
            uri = result.checkpoint_uri
            state = "finished earlier" if result.already_finished else "trained now"
            how = f"{label} run {result.run_name} ({state}, MLflow run {result.mlflow_run_id})"
        else:
            raise ray_train.UpstreamError(
                f"EBST needs a {label} checkpoint: pass {FLAGS[field]} URI|mlflow:RUN, set {field}, "
                "or add --with-upstream to train it first"
            )
        updates[field], used[field] = uri, how
        print(f"EBST uses {label} from {uri} ({how})")
    return config_lib.merge(config, updates), used


def config_preset_name(config: EBSTTrainConfig) -> str:
    """The preset a config came from (the one it equals in everything but data, loop and upstream)."""
    ignore = {"data", "loop", *UPSTREAM}
    mine = {k: v for k, v in config_lib.to_dict(config).items() if k not in ignore}
    for name, make in PRESETS.items():
        if {k: v for k, v in config_lib.to_dict(make()).items() if k not in ignore} == mine:
            return name
    return next(iter(PRESETS))


def main(
    config: EBSTTrainConfig, ray_config: ray_train.RayTrainConfig, **upstream_kwargs
) -> ray_train.TrainResult:
    """Resolve (or train) the upstream stages, then train EBST."""
    config, _ = resolve_upstream(config, ray_config, **upstream_kwargs)
    result = ray_train.train(config, ray_config)
    cli.print_result(result)
    return result


def chain_config(
    args: argparse.Namespace, config: EBSTTrainConfig, ray_config: ray_train.RayTrainConfig
) -> chain_lib.ChainConfig:
    """The ChainConfig the --chain flags describe (ValueError names a bad field)."""
    from maskgan.data.preprocess import PRESETS as PREPROCESS_PRESETS
    from maskgan.registry import default_gate

    size = args.preset.removeprefix("ebst")
    stages = chain_lib.stage_configs(config, size=size, upstream_overrides=args.upstream_set)
    preprocess = None
    if args.source:
        resolution = config.generator.resolution
        name = chain_lib.matching_preset(size, PREPROCESS_PRESETS, resolution)
        made = PREPROCESS_PRESETS[name]()
        overrides = [f"source_uri={args.source}", f"output_uri={config.data.uri}",
                     f"decode.resolution={resolution}", *args.preprocess_set]  # fmt: skip
        preprocess = config_lib.load(type(made), made, None, overrides)
        preprocess = dataclasses.replace(preprocess, storage=config.data.storage)
    gate = dataclasses.replace(default_gate(chain_lib.EDITOR_MODEL), margin=args.gate_margin)
    return chain_lib.ChainConfig(
        **stages, ray=ray_config, preprocess=preprocess, reuse_champions=args.reuse_champions,
        eval_split=args.eval_split, eval_max_batches=args.eval_max_batches or None,
        editor_gate=gate,
    )  # fmt: skip


def run_chain(config: chain_lib.ChainConfig) -> int:
    """The chain with the shared exit codes; the storage and MLflow are probed before Ray starts."""
    import logging
    import signal

    from maskgan.data.preprocess import PreprocessError
    from maskgan.gate import ReportError
    from maskgan.storage import StorageError
    from maskgan.tracking import TrackingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, cli._sigterm_as_interrupt)
    failures = (chain_lib.ChainError, TrackingError, StorageError, PreprocessError, ReportError, ValueError,
                FileNotFoundError, ray_train.DatasetError, ray_train.NonFiniteLossRunError)  # fmt: skip
    try:
        chain_lib.preflight(config)  # before Ray starts: an unreachable store fails in seconds
        summary = chain_lib.run_chain(config, start=cli.init_ray)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command (same --run-key) to resume the chain", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    except failures as error:
        print(f"chain failed: {error}", file=sys.stderr)
        return cli.EXIT_FAILED
    except Exception as error:  # Ray's TrainingFailedError and the like: the traceback goes to the log
        logging.getLogger(__name__).exception("chain failed")
        print(f"chain failed: {type(error).__name__}: {error}", file=sys.stderr)
        return cli.EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(chain_lib.format_summary(summary))
    return cli.EXIT_OK


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, ray_config = cli.resolve(parser, args, EBSTTrainConfig, PRESETS)
    if args.chain:
        try:
            chain = chain_config(args, config, ray_config)
        except (ValueError, TypeError) as error:
            parser.error(str(error))
        if args.print_config:
            print(config_lib.to_yaml(chain))
            return 0
        return run_chain(chain)
    if args.print_config:
        print(config_lib.to_yaml(config))
        return 0
    presets = {"dmn_checkpoint": args.dmn_preset, "mask_vae_checkpoint": args.mask_vae_preset}
    refs = {"dmn_checkpoint": args.dmn, "mask_vae_checkpoint": args.mask_vae}
    return cli.run_cli(
        lambda: main(
            config, ray_config, refs=refs, with_upstream=args.with_upstream, presets=presets,
            upstream_overrides=args.upstream_set,
        )
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(run())
