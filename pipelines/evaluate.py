"""Evaluate a trained model on the val or test split: metrics to MLflow, a grid image, a JSON report.

Examples:
  python pipelines/evaluate.py --model runs/train/ebst-abc123/checkpoint_000300000 \\
      --parser runs/train/parser-def456 --data runs/quickstart/parquet --split val
  python pipelines/evaluate.py --model s3://bucket/runs/dmn-abc123 --parser s3://bucket/runs/parser-def456 \\
      --mask-vae s3://bucket/runs/maskvae-0a1b2c --data s3://bucket/parquet --split test \\
      --s3-endpoint http://minio:9000 --mlflow-uri http://mlflow.internal:5000 \\
      --fid-weights https://example.org/inception_fid.pt --fid-sha256 <64 hex> \\
      --lpips-weights /models/lpips_alex.pt --lpips-sha256 <64 hex>
A folder of checkpoints (a run) means its latest one. The report goes to <checkpoint>/evaluation-<split>.json
unless --report says otherwise; pipelines/promote.py reads it. FID / LPIPS are "unavailable" in the report
unless their weights are given (see maskgan/evaluation_features.py for the file formats).
Exit status: 0 evaluated; 1 the evaluation failed (a "failed" report is written when possible);
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from maskgan import config as config_lib
from maskgan.evaluation import EvaluationConfig, EvaluationResult, run_evaluation
from maskgan.evaluation_features import FeatureWeightsConfig
from maskgan.storage import StorageConfig, StorageError
from maskgan.tracking import TrackingConfig, TrackingError


def build_parser() -> argparse.ArgumentParser:
    description, _, examples = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        description=description, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, metavar="URI", help="checkpoint or run folder (dmn, ebst, parser, maskvae)"
    )
    parser.add_argument(
        "--parser", metavar="URI", help="parser checkpoint or run folder (mask-fidelity metrics)"
    )
    parser.add_argument(
        "--mask-vae", metavar="URI", help="MaskVAE checkpoint for simulated edits (default: the model's own)"
    )
    parser.add_argument(
        "--data", required=True, metavar="URI", help="preprocessed dataset (holds manifest.json)"
    )
    parser.add_argument(
        "--split", default="val", choices=("val", "test", "train"), help="default: %(default)s"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-batches", type=int, help="stop after this many batches (default: the whole split)"
    )
    parser.add_argument(
        "--report", metavar="URI", help="report location (default: <checkpoint>/evaluation-<split>.json)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    parser.add_argument(
        "--s3-endpoint", metavar="URL", help="S3 endpoint for data, checkpoints and the report"
    )
    for metric in ("fid", "lpips"):
        parser.add_argument(
            f"--{metric}-weights", metavar="PATH|URL", help=f"{metric.upper()} network weights"
        )
        parser.add_argument(
            f"--{metric}-sha256", metavar="HEX", help=f"sha256 of --{metric}-weights (required with it)"
        )
        parser.add_argument(
            f"--{metric}-kind", default="torchscript", choices=("torchscript", "torchmetrics"),
            help="weights format (default: %(default)s)",
        )  # fmt: skip
    parser.add_argument(
        "--mlflow-uri", metavar="URI", help="MLflow tracking URI (default: sqlite ./mlflow.db)"
    )
    parser.add_argument(
        "--experiment", default=TrackingConfig().experiment, help="MLflow experiment (default: %(default)s)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="write the report only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an EvaluationConfig field, e.g. --set grid_rows=8")  # fmt: skip
    return parser


def config_from(args: argparse.Namespace) -> tuple[EvaluationConfig, TrackingConfig]:
    """EvaluationConfig + TrackingConfig from the flags (ValueError names a bad field)."""
    weights = {
        metric: FeatureWeightsConfig(
            uri=getattr(args, f"{metric}_weights"),
            sha256=getattr(args, f"{metric}_sha256"),
            kind=getattr(args, f"{metric}_kind"),
        )  # fmt: skip
        for metric in ("fid", "lpips")
    }
    config = EvaluationConfig(
        model_uri=args.model, parser_uri=args.parser, mask_vae_uri=args.mask_vae, data_uri=args.data,
        split=args.split, batch_size=args.batch_size, max_batches=args.max_batches, report_uri=args.report,
        device=args.device, storage=StorageConfig(endpoint_url=args.s3_endpoint), **weights,
    )  # fmt: skip
    config = config_lib.load(EvaluationConfig, config, None, args.overrides)
    tracking = TrackingConfig(
        tracking_uri=args.mlflow_uri, experiment=args.experiment, enabled=not args.no_mlflow
    )
    return config, tracking


def main(config: EvaluationConfig, tracking: TrackingConfig) -> EvaluationResult:
    """Evaluate; print the metrics and where the report went."""
    result = run_evaluation(config, tracking)
    print(json.dumps(result.report["metrics"], indent=2, sort_keys=True))
    print(f"report: {result.report_uri}\nmlflow run: {result.mlflow_run_id}")
    return result


def run(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, tracking = config_from(args)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    try:
        main(config, tracking)
    except (ValueError, FileNotFoundError, StorageError, TrackingError) as error:
        print(f"evaluation failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
