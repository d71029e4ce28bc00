"""Train EBST (editing behaviour simulated training: G + D + blender, MaskVAE frozen) on Ray Train.

EBST starts from a trained DMN and uses a trained MaskVAE to simulate edits. Give them as checkpoint
URIs or MLflow runs (`mlflow:<run id>`), or pass --with-upstream to train whichever is missing first
(a finished upstream run with the same config is reused, not trained again).

Examples:
  python pipelines/train_ebst.py --preset ebst_tiny --data runs/quickstart/parquet --storage runs/train \\
      --with-upstream --upstream-set loop.max_steps=20 --max-steps 10
  python pipelines/train_ebst.py --preset ebst_tiny --data runs/quickstart/parquet \\
      --dmn runs/train/dmn-<key>/checkpoint_000000020 --mask-vae mlflow:<mlflow run id>
  ray job submit --working-dir . -- python pipelines/train_ebst.py --preset ebst_official_512 \\
      --data s3://bucket/parquet --storage s3://bucket/runs --num-workers 8 --gpus-per-worker 1 \\
      --mlflow-uri http://mlflow.internal:5000 --dmn mlflow:<dmn run> --mask-vae mlflow:<maskvae run>
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from maskgan import config as config_lib
from maskgan.training import cli, dmn, mask_vae, ray_train
from maskgan.training.ebst import PRESETS, EBSTTrainConfig

# EBST config field -> (what it is, the upstream stage module)
UPSTREAM = {"mask_vae_checkpoint": ("MaskVAE", mask_vae), "dmn_checkpoint": ("DMN", dmn)}


def build_parser() -> argparse.ArgumentParser:
    description, _, examples = __doc__.partition("\n\n")
    parser = cli.build_parser(description, examples, PRESETS)
    parser.add_argument("--dmn", metavar="URI|mlflow:RUN", help="DMN checkpoint (sets dmn_checkpoint)")
    parser.add_argument("--mask-vae", metavar="URI|mlflow:RUN", help="MaskVAE checkpoint (sets mask_vae_checkpoint)")
    parser.add_argument("--with-upstream", action="store_true", help="train a missing DMN / MaskVAE first")
    parser.add_argument("--dmn-preset", choices=sorted(dmn.PRESETS), help="upstream DMN preset (default: matches --preset)")
    parser.add_argument(
        "--mask-vae-preset", choices=sorted(mask_vae.PRESETS), help="upstream MaskVAE preset (default: matches --preset)"
    )
    parser.add_argument(
        "--upstream-set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field of both upstream configs, e.g. loop.max_steps=200 (repeatable)",
    )  # fmt: skip
    return parser


def upstream_preset(ebst_preset: str, presets: dict) -> str:
    """ebst_tiny -> dmn_tiny / mask_vae_tiny: the upstream preset of the same size."""
    suffix = ebst_preset.removeprefix("ebst")
    matches = [name for name in presets if name.endswith(suffix)]
    if len(matches) != 1:
        raise ValueError(f"no single upstream preset matches {ebst_preset!r} among {sorted(presets)}; name one")
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
    for field, (label, module) in UPSTREAM.items():
        ref = refs.get(field) or getattr(config, field)
        if ref:
            uri, how = ray_train.resolve_checkpoint_ref(ref, ray_config.tracking)
        elif with_upstream:
            preset = (presets or {}).get(field) or upstream_preset(config_preset_name(config), module.PRESETS)
            overrides = [f"data.uri={config.data.uri}", *(upstream_overrides or [])]
            upstream_config = config_lib.load(type(module.PRESETS[preset]()), module.PRESETS[preset](), None, overrides)
            upstream_config = config_lib.merge(upstream_config, {"data": config_lib.to_dict(config.data, True)})
            print(f"EBST needs a {label}: training {preset} first (a finished run is reused)")
            result = ray_train.train(upstream_config, dataclasses.replace(ray_config, run_key=None))
            if not result.checkpoint_uri:
                raise ray_train.UpstreamError(f"the {label} run {result.run_name} left no checkpoint")
            uri = result.checkpoint_uri
            state = "finished earlier" if result.already_finished else "trained now"
            how = f"{label} run {result.run_name} ({state}, MLflow run {result.mlflow_run_id})"
        else:
            raise ray_train.UpstreamError(
                f"EBST needs a {label} checkpoint: pass --{label.lower().replace('maskvae', 'mask-vae')} URI|mlflow:RUN, "
                f"set {field}, or add --with-upstream to train it first"
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


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, ray_config = cli.resolve(parser, args, EBSTTrainConfig, PRESETS)
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
