"""Write a small synthetic face dataset in the exact CelebAMask-HQ release layout (local path or s3://).

Examples:
  python pipelines/make_synthetic.py data/CelebAMask-HQ --num-images 8
  python pipelines/make_synthetic.py data/tiny --tiny --num-images 16 --defect 3:truncated_jpeg
  python pipelines/make_synthetic.py s3://bucket/raw --num-images 8 --endpoint-url http://127.0.0.1:9000
The first writes the release layout where pipelines/preprocess.py looks by default (data/CelebAMask-HQ).
Credentials for s3:// come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never from the command line.
Exit status: 0 written; 1 writing failed (message says why); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from maskgan.data import defects, synthetic
from maskgan.storage import StorageConfig, StorageError


@dataclass(frozen=True, kw_only=True)
class MakeSyntheticConfig:
    """Where to write, what to generate, and which ids to corrupt afterwards."""

    uri: str
    data: synthetic.SyntheticConfig
    storage: StorageConfig = field(default_factory=StorageConfig)
    defects: tuple[tuple[int, str], ...] = ()  # (id, kind) pairs, applied after writing
    num_workers: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("uri must be a local path or s3://bucket/prefix, got an empty string")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        for image_id, kind in self.defects:
            if kind not in defects.DEFECT_KINDS:
                raise ValueError(
                    f"defects: unknown kind {kind!r}; expected one of {', '.join(defects.DEFECT_KINDS)}"
                )
            if image_id not in self.data.ids:
                first, last = self.data.ids[0], self.data.ids[-1]
                raise ValueError(f"defects: id {image_id} is not generated (ids {first}..{last})")


def main(config: MakeSyntheticConfig) -> synthetic.WriteResult:
    """Write the dataset, inject the requested defects and print a summary."""
    result = synthetic.write_dataset(
        config.data, config.uri, config.storage, config.progress, config.num_workers
    )
    for image_id, kind in config.defects:
        defects.inject_defect(result.uri, image_id, kind, config.storage)
    splits = ", ".join(f"{split} {len(ids)}" for split, ids in result.ids_by_split.items())
    print(
        f"wrote {result.num_images} images and {result.num_mask_files} masks ({splits}) to {result.uri}"
        + (f"; injected {len(config.defects)} defect(s)" if config.defects else "")
    )
    return result


def _defect(text: str) -> tuple[int, str]:
    image_id, _, kind = text.partition(":")
    if not image_id.isdigit() or kind not in defects.DEFECT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected ID:KIND with KIND one of {', '.join(defects.DEFECT_KINDS)}"
        )
    return int(image_id), kind


def build_parser() -> argparse.ArgumentParser:
    defaults = synthetic.SyntheticConfig(num_images=1)
    kinds = "\n".join(f"  {kind:16s} {text}" for kind, text in defects.DEFECT_KINDS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2] + "\ndefect kinds (--defect ID:KIND):\n" + kinds,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("uri", help="dataset root: a local path or s3://bucket/prefix")
    parser.add_argument("--num-images", type=int, default=100, help="how many samples (default: %(default)s)")
    parser.add_argument(
        "--tiny", action="store_true", help="64 px images and 32 px masks (unless sizes are given)"
    )
    parser.add_argument(
        "--image-size", type=int, help=f"JPEG side in pixels (default: {defaults.image_size})"
    )
    parser.add_argument(
        "--mask-size", type=int, help=f"mask PNG side in pixels (default: {defaults.mask_size})"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="same seed, same bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--start-id", type=int, default=defaults.start_id, help="first id (default: %(default)s)"
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=defaults.jpeg_quality, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--train-fraction", type=float, default=defaults.train_fraction, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="test gets the rest (default: %(default)s)",
    )
    parser.add_argument(
        "--accessory-probability",
        type=float,
        default=defaults.accessory_probability,
        help="chance of each of glasses, hat, earrings, necklace (default: %(default)s)",
    )
    for name in ("mapping", "attributes", "pose"):
        parser.add_argument(f"--no-{name}", action="store_true", help=f"do not write the {name} text file")
    parser.add_argument(
        "--defect",
        type=_defect,
        action="append",
        default=[],
        metavar="ID:KIND",
        help="corrupt an id after writing (repeatable; kinds below)",
    )
    parser.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO / moto")
    parser.add_argument("--region", help="S3 region (default: AWS_REGION or us-east-1)")
    parser.add_argument("--workers", type=int, default=4, help="writer threads (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_config(args: argparse.Namespace) -> MakeSyntheticConfig:
    """Command-line arguments -> a validated config (ValueError names the bad field)."""
    data = synthetic.SyntheticConfig(
        num_images=args.num_images,
        image_size=args.image_size or (64 if args.tiny else 1024),
        mask_size=args.mask_size or (32 if args.tiny else 512),
        seed=args.seed,
        start_id=args.start_id,
        jpeg_quality=args.jpeg_quality,
        train_fraction=args.train_fraction,
        val_fraction=args.val_fraction,
        accessory_probability=args.accessory_probability,
        write_mapping=not args.no_mapping,
        write_attributes=not args.no_attributes,
        write_pose=not args.no_pose,
    )
    return MakeSyntheticConfig(
        uri=args.uri,
        data=data,
        storage=StorageConfig(endpoint_url=args.endpoint_url, region=args.region),
        defects=tuple(args.defect),
        num_workers=args.workers,
        progress=not args.no_progress,
    )


def cli(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"make_synthetic: error: {error}", file=sys.stderr)
        return 2
    try:
        main(config)
    except (StorageError, OSError, ValueError) as error:
        print(f"make_synthetic: failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
