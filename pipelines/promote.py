"""Gate a registered model version with its evaluation report; move the `champion` alias when it wins.

Examples:
  # gate version 3 of the DMN with the report evaluation wrote (local file, s3:// or runs:/<id>/path)
  python pipelines/promote.py --model maskgan-dmn --version 3 --report reports/dmn-v3.json \\
      --mlflow-uri http://mlflow.internal:5000
  # register the run's logged model "editor" (alias challenger), then gate it
  python pipelines/promote.py --model maskgan-editor --run-id 0123abcd --artifact-path editor \\
      --report runs:/4567ef/evaluation/report.json --margin 0.005 --floor recon/ssim=0.3
  # see what the gate would decide, with a lower-is-better metric and hard bounds; changes nothing
  python pipelines/promote.py --model maskgan-parser --version 2 --report parser.json \\
      --primary-metric val/loss --direction min --floor parser/miou=0.5 --ceiling fid=80 --dry-run
Without --report, the report stored with the version by an earlier gate is used.
Exit status: 0 promoted, kept, or already the champion; 1 failed (no / failed / invalid evaluation, MLflow
or storage error); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from maskgan.gate import GateConfig
from maskgan.registry import MODEL_NAMES, PRIMARY_METRICS, Decision, find_version, promote, register
from maskgan.storage import StorageError
from maskgan.tracking import TrackingConfig, TrackingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="registered model name")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="the registered version to gate")
    which.add_argument(
        "--run-id", help="register this run's model first (once; alias challenger), then gate it"
    )
    parser.add_argument(
        "--artifact-path", default="model", help="with --run-id: the logged model's name or artefact folder"
    )
    parser.add_argument("--report", metavar="FILE|URI", help="evaluation report JSON: path, s3://, runs:/...")
    parser.add_argument(
        "--mlflow-uri", metavar="URI", help="MLflow tracking server (http://...) or sqlite:///abs/path.db "
        "(default ./mlflow.db)",
    )  # fmt: skip
    defaults = ", ".join(f"{name}: {metric}" for name, metric in PRIMARY_METRICS.items())
    parser.add_argument(
        "--primary-metric", help=f"metric to beat the champion on; default per model ({defaults})"
    )
    parser.add_argument(
        "--direction", default="max", choices=("max", "min"), help="max (default): higher wins"
    )
    parser.add_argument(
        "--margin", type=float, default=0.0, help="win by more than this (absolute, metric units); default 0"
    )
    parser.add_argument(
        "--floor", action="append", default=[], metavar="NAME=VALUE", help="hard bound NAME >= VALUE (repeat)"
    )
    parser.add_argument(
        "--ceiling",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="hard bound NAME <= VALUE (repeat)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the decision, write nothing")
    return parser


def _bounds(items: list[str], flag: str) -> dict[str, float]:
    bounds = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or not math.isfinite(number):
            raise ValueError(f"{flag} {item!r} must be NAME=NUMBER, e.g. {flag} recon/ssim=0.5")
        if name in bounds:
            raise ValueError(f"{flag} {name} is given twice")
        bounds[name] = number
    return bounds


def resolve_gate(args: argparse.Namespace) -> GateConfig:
    return GateConfig(
        primary_metric=args.primary_metric or PRIMARY_METRICS[args.model],
        direction=args.direction, margin=args.margin,
        floors=_bounds(args.floor, "--floor"), ceilings=_bounds(args.ceiling, "--ceiling"),
    )  # fmt: skip


def main(
    tracking: TrackingConfig,
    gate: GateConfig,
    *,
    model: str,
    version: int | None = None,
    run_id: str | None = None,
    artifact_path: str = "model",
    report: str | None = None,
    dry_run: bool = False,
) -> Decision:
    """Gate one version (given, or registered from run_id) and print the decision."""
    if (version is None) == (run_id is None):
        raise ValueError("give exactly one of version and run_id")
    if version is None:
        if dry_run:
            version = find_version(tracking, model, run_id, artifact_path)
            if version is None:
                raise ValueError(
                    f"run {run_id}'s {artifact_path!r} is not registered as {model} yet, and a dry run "
                    "registers nothing; run without --dry-run, or pass --version"
                )
        else:
            version = register(tracking, model, run_id, artifact_path)
            print(f"{model} v{version} <- runs:/{run_id}/{artifact_path}")
    decision = promote(tracking, model, version, gate, report=report, dry_run=dry_run)
    print(decision.summary())
    return decision


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        gate = resolve_gate(args)
        tracking = TrackingConfig(tracking_uri=args.mlflow_uri)
    except ValueError as error:
        parser.error(str(error))
    try:
        decision = main(
            tracking, gate, model=args.model, version=args.version, run_id=args.run_id,
            artifact_path=args.artifact_path, report=args.report, dry_run=args.dry_run,
        )  # fmt: skip
    except (ValueError, TrackingError, StorageError) as error:
        print(f"promote failed: {error}", file=sys.stderr)
        return 1
    return decision.exit_code


if __name__ == "__main__":
    sys.exit(cli())
