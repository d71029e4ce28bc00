"""Preprocess CelebAMask-HQ (local path or s3://) into sharded Parquet + manifest on Ray Data.

Examples:
  python pipelines/preprocess.py --source data/CelebAMask-HQ --output data/celebamask-parquet
  python pipelines/preprocess.py --preset preprocess_256 \\
      --source s3://bucket/raw --output s3://bucket/parquet \\
      --set storage.endpoint_url=http://127.0.0.1:9000
Exit status: 0 done or already up to date; 1 the run failed (message says why); 2 bad arguments or config;
130 interrupted (Ctrl-C): rerun the same command to continue.
"""

from __future__ import annotations

import argparse
import logging
import sys

from maskgan import config as config_lib
from maskgan.data.preprocess import PRESETS, PreprocessConfig, PreprocessError, PreprocessResult, run
from maskgan.storage import StorageError

INTERRUPTED = "interrupted; rerun to continue"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    config_lib.add_config_arguments(parser, PRESETS)
    parser.add_argument(
        "--source", help="raw CelebAMask-HQ root, the folder the release unpacks to (sets source_uri; "
        f"default: {PreprocessConfig().source_uri})",
    )  # fmt: skip
    parser.add_argument(
        "--output",
        help=f"where shards and manifest.json go (sets output_uri; default: {PreprocessConfig().output_uri})",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="rebuild a finished output made with another config or source, or a damaged one; the old "
        "dataset stays readable until the new manifest is written",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser


def resolve_config(args: argparse.Namespace) -> PreprocessConfig:
    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"source_uri={args.source}")
    if args.output:
        overrides.append(f"output_uri={args.output}")
    if args.no_progress:
        overrides.append("progress=false")
    return config_lib.load(PreprocessConfig, PRESETS[args.preset](), args.config, overrides)


def main(config: PreprocessConfig, overwrite: bool = False) -> PreprocessResult:
    """Run preprocessing and print where the output is."""
    result = run(config, overwrite=overwrite)
    print(result.summary())
    return result


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    if args.print_config:
        print(config_lib.to_yaml(config))
        return 0
    try:
        main(config, overwrite=args.overwrite)
    except (PreprocessError, StorageError) as error:
        print(f"preprocess failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # No manifest was written, so the output reads as unfinished; the rerun removes its shards.
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
