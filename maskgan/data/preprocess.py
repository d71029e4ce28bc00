"""CelebAMask-HQ (local or S3) -> sharded Parquet + manifest, on Ray Data.

Stages: list the raw tree on the driver (cheap: names only) -> Ray Data map tasks read, validate,
merge and resize each sample -> a Datasink writes per-split shards and returns the quarantined
rows -> the driver writes quarantine.jsonl, preview.png and finally manifest.json (the commit), then
removes the shards of the run it replaced. A folder without manifest.json is an incomplete run; the
next run removes its shards by name (output_dir.py says what the job may delete, and what it refuses).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa

from maskgan import config as config_lib
from maskgan import labels, storage
from maskgan.data import celebamask as raw
from maskgan.data import output_dir, schema
from maskgan.data.celebamask import BadSample, DecodeConfig
from maskgan.data.listing import OFFICIAL_FRACTIONS, Listing, SourceError, scan_source
from maskgan.data.preview import PREVIEW_NAME, write_preview
from maskgan.storage import Location, StorageConfig

log = logging.getLogger(__name__)

# Fields that change speed, not output: a rerun that differs only in these is still up to date.
NON_OUTPUT_FIELDS = ("storage", "batch_size", "read_threads", "progress")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """One preprocessing run: where from, where to, what a valid sample is, how to shard."""

    source_uri: str = "data/CelebAMask-HQ"  # what the authors' archive unpacks to
    output_uri: str = "data/celebamask-parquet"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    image_encoding: schema.ImageEncoding = "jpeg"
    jpeg_quality: int = 95
    shard_target_mb: float = 128.0
    max_bad_fraction: float = 0.01  # fail the job when more than this fraction is quarantined
    hash_split_fractions: tuple[float, float, float] = OFFICIAL_FRACTIONS
    split_seed: int = 0
    batch_size: int = 32  # samples per Ray Data map task
    read_threads: int = 8  # concurrent reads per task (hides S3 latency)
    progress: bool = True
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if self.image_encoding not in ("jpeg", "png", "raw"):
            raise ValueError(f"image_encoding must be jpeg, png or raw, got {self.image_encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.shard_target_mb <= 0:
            raise ValueError(f"shard_target_mb must be positive, got {self.shard_target_mb}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if abs(sum(self.hash_split_fractions) - 1) > 1e-6 or min(self.hash_split_fractions) < 0:
            raise ValueError(
                f"hash_split_fractions must be >= 0 and sum to 1, got {self.hash_split_fractions}"
            )
        if self.batch_size <= 0 or self.read_threads <= 0:
            raise ValueError("batch_size and read_threads must be positive")
        if not self.source_uri or not self.output_uri:
            raise ValueError("source_uri and output_uri must both be set")


def preprocess_512() -> PreprocessConfig:
    """The released data at the released resolution: 1024-px JPEGs, 512-px masks, 512 out."""
    return PreprocessConfig()


def preprocess_256() -> PreprocessConfig:
    return PreprocessConfig(decode=DecodeConfig(resolution=256))


def preprocess_tiny() -> PreprocessConfig:
    """For tests and the quick-start: 64-px images, 32-px masks, 32 out, small shards."""
    return PreprocessConfig(
        decode=DecodeConfig(resolution=32, mask_size=32), shard_target_mb=0.05, batch_size=4
    )


PRESETS = {
    "preprocess_512": preprocess_512,
    "preprocess_256": preprocess_256,
    "preprocess_tiny": preprocess_tiny,
}


class PreprocessError(RuntimeError):
    """The run could not produce a complete output; the message says why and what to do."""


class OutputOutdated(PreprocessError):
    """A finished output is there but is not this run's (config, source or shards differ);
    `overwrite=True` (--overwrite) rebuilds it. `reason` is the message without that advice."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"{reason}. Pass --overwrite to rebuild it, or choose another output_uri.")


@dataclass(frozen=True)
class PreprocessResult:
    output_uri: str
    manifest_uri: str
    manifest: schema.Manifest
    skipped: bool  # True when an identical finished run was already there
    seconds: float

    def summary(self) -> str:
        """What a person wants printed at the end: counts and where the output is."""
        counts = self.manifest.counts
        state = "already up to date" if self.skipped else f"done in {self.seconds:.1f}s"
        return (
            f"preprocess {state}: {counts['written']} rows written "
            f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), "
            f"{counts['quarantined']} quarantined of {counts['input']}\n"
            f"  parquet:  {self.output_uri}/{{train,val,test}}/\n  manifest: {self.manifest_uri}\n"
            f"  preview:  {self.output_uri}/{PREVIEW_NAME}"
        )


# ---------------------------------------------------------------- per-sample work (Ray tasks)


@functools.lru_cache(maxsize=4)
def _filesystem(uri: str, storage_config: StorageConfig):
    return storage.resolve(uri, storage_config).fs


def _read_all(fs, paths: list[str], threads: int) -> list[bytes | None | OSError]:
    """File contents in order: None for a file that disappeared, the OSError for one that cannot be read."""

    def read(path: str) -> bytes | None | OSError:
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None
        except OSError as error:  # permissions, a folder, a storage error: this sample's problem only
            return error

    if threads <= 1 or len(paths) <= 1:
        return [read(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(threads, len(paths))) as pool:
        return list(pool.map(read, paths))


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def process_sample(row: dict, files: dict[str, bytes | None | OSError], config: PreprocessConfig) -> dict:
    """One listed sample + its file bytes -> an output row (error set when it must be quarantined).

    Never raises for a bad sample: a BadSample's message is the reason, and any other exception
    (a decoder's NotImplementedError, a MemoryError, a bug) becomes a reason naming the file being
    decoded and the exception, so one odd file cannot end the job.
    """
    out = {
        "id": row["id"], "split": row["split"], "image": b"", "label": b"",
        "resolution": config.decode.resolution, "classes": 0, "orig_idx": row["orig_idx"],
        "attributes": row["attributes"], "pose": row["pose"], "error": None,
        "files": [row["image_path"], *row["mask_paths"]],
    }  # fmt: skip
    current = None  # the file being decoded, for the reason of an unexpected exception
    try:
        unreadable = [
            f"{path} ({_describe_error(data)})" for path, data in files.items() if isinstance(data, OSError)
        ]
        if unreadable:
            raise BadSample(f"cannot read {', '.join(unreadable)}")
        missing = [path for path, data in files.items() if data is None]
        if missing:
            raise BadSample(f"file disappeared while reading: {', '.join(missing)}")
        current = row["image_path"]
        image = raw.decode_image(files[current], config.decode)
        parts = {}
        for part, path in zip(row["mask_parts"], row["mask_paths"], strict=True):
            current = path
            parts[part] = raw.decode_mask(files[path], raw.mask_file_name(row["id"], part), config.decode)
        current = None
        label = raw.merge_masks(parts, config.decode)
        encoded = (
            schema.encode_image(image, config.image_encoding, config.jpeg_quality),
            schema.encode_label(label),
        )
        classes = raw.present_classes(label)
    except BadSample as error:
        out["error"] = str(error)
        return out
    except Exception as error:  # any other failure: quarantined with its reason, the job goes on
        where = f"decoding {current}" if current else "merging, encoding or checking it"
        out["error"] = f"unexpected error while {where}: {_describe_error(error)}"
        return out
    out["image"], out["label"] = encoded
    out["classes"] = classes
    return out


OUTPUT_SCHEMA = schema.SCHEMA.append(pa.field("error", pa.string())).append(
    pa.field("files", pa.list_(pa.string()))
)


def _storable(row: dict) -> dict:
    """A row that does not fit OUTPUT_SCHEMA (e.g. an attribute 300 in a list<int8>) -> a quarantined row."""
    try:
        pa.Table.from_pylist([row], schema=OUTPUT_SCHEMA)
        return row
    except Exception as error:  # any other failure: quarantined with its reason, the job goes on
        reason = (
            "unexpected error while storing its row (attributes, pose or ids out of range?): "
            + _describe_error(error)
        )
        # Only the fields the quarantine record needs; the others are what did not fit.
        return {
            **row, "image": b"", "label": b"", "classes": 0, "orig_idx": None, "attributes": None,
            "pose": None, "error": row["error"] or reason,
        }  # fmt: skip


def process_batch(batch: pa.Table, config: PreprocessConfig) -> pa.Table:
    """Ray Data map: a batch of listed rows -> processed rows (pyarrow, OUTPUT_SCHEMA)."""
    fs = _filesystem(config.source_uri, config.storage)
    rows = batch.to_pylist()
    paths = [path for row in rows for path in [row["image_path"], *row["mask_paths"]]]
    contents = dict(zip(paths, _read_all(fs, paths, config.read_threads), strict=True))
    out = []
    for row in rows:
        files = {path: contents[path] for path in [row["image_path"], *row["mask_paths"]]}
        out.append(process_sample(row, files, config))
    try:
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)
    except Exception:  # find the rows that do not fit, one by one (rare: costs a second pass)
        return pa.Table.from_pylist([_storable(row) for row in out], schema=OUTPUT_SCHEMA)


# ---------------------------------------------------------------- the run (driver)


def _existing_manifest(output: Location, overwrite: bool) -> schema.Manifest | None:
    location = output.join(schema.MANIFEST_NAME)
    text = storage.read_text_if_exists(location)
    if text is None:
        return None
    try:
        return schema.Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        if overwrite:  # its shards are then an unfinished run's leftovers, removed by name
            log.warning("%s is unreadable (%s); replacing it", location.uri, error)
            return None
        raise OutputOutdated(f"{location.uri} exists but is unreadable ({error})") from None


def _estimate_rows_per_shard(listing: Listing, config: PreprocessConfig) -> int:
    """Process the first sample on the driver to size shards close to shard_target_mb."""
    target = config.shard_target_mb * 1e6
    fs = _filesystem(config.source_uri, config.storage)
    for row in listing.rows[:8]:
        paths = [row["image_path"], *row["mask_paths"]]
        out = process_sample(row, dict(zip(paths, _read_all(fs, paths, 1), strict=True)), config)
        if out["error"] is None:
            per_row = len(out["image"]) + len(out["label"]) + 200
            return max(1, int(target // per_row))
    return max(1, int(target // (config.decode.resolution**2 * 0.5)))


def _ray_init() -> None:
    import ray

    if not ray.is_initialized():
        # Connects to RAY_ADDRESS when set (a cluster, or `ray job submit`); else starts a local Ray.
        ray.init(log_to_driver=True, logging_level=logging.WARNING, include_dashboard=False)


def summarise_reasons(quarantined: list[schema.QuarantineEntry], top: int = 3) -> str:
    """The most common kinds of reason, each with one full example: '2 x <reason of one sample>'."""
    # A kind is the reason with its numbers (ids, sizes, folders) blanked; the text shown is intact.
    kinds = Counter(re.sub(r"\d+", "#", entry.reason) for entry in quarantined)
    examples = {}
    for entry in quarantined:
        examples.setdefault(re.sub(r"\d+", "#", entry.reason), entry.reason)
    return "; ".join(f"{count} x {examples[kind]}" for kind, count in kinds.most_common(top))


def _check_bad_fraction(bad: list[schema.QuarantineEntry], num_input: int, config, where: str) -> None:
    fraction = len(bad) / max(1, num_input)
    if fraction > config.max_bad_fraction:
        raise PreprocessError(
            f"{len(bad)} of {num_input} samples ({fraction:.1%}) are bad, over "
            f"max_bad_fraction={config.max_bad_fraction:.1%}; most common reasons: "
            f"{summarise_reasons(bad)}. {where}; fix the source or raise --set max_bad_fraction=..."
        )


def normalised(config: PreprocessConfig) -> PreprocessConfig:
    """The config with source and output spelled one way (absolute, `..` and links resolved)."""
    return dataclasses.replace(
        config,
        source_uri=storage.normalise_uri(config.source_uri),
        output_uri=storage.normalise_uri(config.output_uri),
    )


def run(config: PreprocessConfig, overwrite: bool = False) -> PreprocessResult:
    """Run preprocessing; skips an identical finished run, refuses a different one unless overwrite.

    With overwrite the new run is built beside the finished one (new shard names), committed by
    writing its manifest, and only then are the old shards removed: a failure keeps the old dataset.
    """
    started = time.monotonic()
    config = normalised(config)
    try:  # everything knowable before reading the data
        output = output_dir.check_before_writing(config.source_uri, config.output_uri, config.storage)
    except output_dir.OutputRefused as error:
        raise PreprocessError(str(error)) from None
    resolved = config_lib.to_dict(config)
    fingerprint = config_lib.fingerprint(config, exclude=NON_OUTPUT_FIELDS)
    existing = _existing_manifest(output, overwrite)
    if existing is not None and not overwrite:
        if existing.config_fingerprint != fingerprint or existing.source_uri != config.source_uri:
            changes = config_lib.differences(
                {**existing.config, "source_uri": existing.source_uri},
                {**resolved, "source_uri": config.source_uri},
            )
            changes = [c for c in changes if c.split(":")[0].split(".")[0] not in NON_OUTPUT_FIELDS]
            raise OutputOutdated(
                f"{output.uri} already holds a finished run with a different config "
                f"({'; '.join(changes[:5])})"
            )
    try:
        output_dir.check_split_folders(output, existing)
        listing = scan_source(
            config.source_uri, config.storage, config.hash_split_fractions, config.split_seed
        )
    except (SourceError, output_dir.OutputRefused) as error:
        raise PreprocessError(str(error)) from None
    if existing is not None and not overwrite:
        if existing.source_fingerprint != listing.source_fingerprint:
            raise OutputOutdated(
                f"the source {config.source_uri} changed since {output.uri} was made from it (file names "
                "or sizes differ)"
            )
        problem = output_dir.check_shards_present(output, existing)
        if problem is not None:
            raise OutputOutdated(f"{output.uri} is damaged: {problem}")
        log.info("%s is up to date (same config and source, every shard present): nothing to do", output.uri)
        return PreprocessResult(
            output.uri, output.join(schema.MANIFEST_NAME).uri, existing, True, time.monotonic() - started
        )
    _check_bad_fraction(
        listing.quarantined, listing.num_input, config, "Found while listing, nothing was written"
    )
    log.info(
        "found %d samples under %s (%d quarantined while listing, %d files ignored); split from %s",
        listing.num_input, config.source_uri, len(listing.quarantined), len(listing.ignored_files),
        listing.split_source,
    )  # fmt: skip

    # The first writes: the claim, then what an unfinished run left goes (by name; a finished run's
    # shards stay).
    storage.ensure_dir(output)
    run_id = uuid.uuid4().hex[:8]
    output_dir.claim(output, run_id)
    kept = [shard.path for shard in existing.shards] if existing else []
    output_dir.remove_leftovers(output, keep=kept)
    try:
        shards, quarantined = _write_shards(listing, config, output, run_id, replacing=existing is not None)
    except PreprocessError:
        output_dir.remove_run(output, run_id)  # the finished run (if any) stays as it was
        output_dir.release(output, run_id)
        raise
    # A task of a killed earlier run may have written after the first sweep (its workers outlive it).
    output_dir.remove_leftovers(output, keep=kept + [shard.path for shard in shards])
    _write_quarantine(output, quarantined, schema.QUARANTINE_NAME)
    if shards:  # a picture for people; not part of the contract, so written before the manifest
        write_preview(output, shards[0], config.image_encoding, config.decode.resolution)
    written = sum(shard.num_rows for shard in shards)
    counts = {"input": listing.num_input, "written": written, "quarantined": len(quarantined)}
    counts.update({split: sum(s.num_rows for s in shards if s.split == split) for split in raw.SPLITS})
    counts["ignored_files"] = len(listing.ignored_files)
    manifest = schema.Manifest(
        schema_version=schema.SCHEMA_VERSION,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source_uri=config.source_uri,
        output_uri=config.output_uri,
        config=resolved,
        config_fingerprint=fingerprint,
        image_encoding=config.image_encoding,
        resolution=config.decode.resolution,
        class_names=list(labels.CLASS_NAMES),
        attribute_names=listing.attribute_names,
        split_source=listing.split_source,
        counts=counts,
        shards=shards,
        quarantined=quarantined,
        notes=[f"ignored file: {path}" for path in listing.ignored_files[:100]],
        source_fingerprint=listing.source_fingerprint,
    )
    manifest_location = output.join(schema.MANIFEST_NAME)
    storage.write_bytes(manifest_location, manifest.to_json().encode())  # last write: the commit
    # Committed: only now may the replaced run's shards go.
    output_dir.retire(output, existing, manifest)
    storage.delete_file(output.join(output_dir.FAILED_QUARANTINE_NAME))
    output_dir.release(output, run_id)
    seconds = time.monotonic() - started
    log.info("wrote %d rows in %d shards (%d quarantined) in %.1fs", written, len(shards), len(quarantined),
             seconds)  # fmt: skip
    return PreprocessResult(output.uri, manifest_location.uri, manifest, False, seconds)


def _write_shards(
    listing: Listing, config: PreprocessConfig, output: Location, run_id: str, replacing: bool
) -> tuple[list[schema.ShardInfo], list[schema.QuarantineEntry]]:
    """Run the Ray pipeline; check that rows reconcile and that few enough were quarantined."""
    shards: list[schema.ShardInfo] = []
    quarantined = list(listing.quarantined)
    if listing.rows:
        rows_per_shard = _estimate_rows_per_shard(listing, config)
        try:
            results = _run_ray_pipeline(listing, config, run_id, rows_per_shard)
        except Exception as error:
            taken_over = _find_cause(error, output_dir.OutputTakenOver)
            if taken_over is None:
                raise
            raise PreprocessError(str(taken_over)) from None
        for result in results:
            shards += [schema.ShardInfo(**shard) for shard in result["shards"]]
            quarantined += [
                schema.QuarantineEntry(id=q["id"], reason=q["reason"], files=tuple(q["files"]))
                for q in result["quarantined"]
            ]
    shards.sort(key=lambda shard: (raw.SPLITS.index(shard.split), shard.path))
    quarantined.sort(key=lambda entry: entry.id)
    written = sum(shard.num_rows for shard in shards)
    if written + len(quarantined) != listing.num_input:
        raise PreprocessError(
            f"row counts do not reconcile: {listing.num_input} in, {written} written, "
            f"{len(quarantined)} quarantined; no manifest was written, rerun preprocess"
        )
    # A failed replacement keeps its list apart: the finished run's quarantine.jsonl stays its own.
    name = output_dir.FAILED_QUARANTINE_NAME if replacing else schema.QUARANTINE_NAME
    try:
        _check_bad_fraction(
            quarantined, listing.num_input, config, f"See {output.join(name).uri} (no manifest was written)"
        )
    except PreprocessError:
        _write_quarantine(output, quarantined, name)
        raise
    return shards, quarantined


def _find_cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The innermost `kind` in an error's chain, or None. Ray wraps a task's exception (RayTaskError,
    which is also an instance of the original's class; Ray Data's UserCodeException) and keeps the
    original as a cause."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            found = error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return found


def _run_ray_pipeline(
    listing: Listing, config: PreprocessConfig, run_id: str, rows_per_shard: int
) -> list[dict]:
    import ray
    from ray.data import DataContext

    _ray_init()
    context = DataContext.get_current()
    saved = (
        context.enable_progress_bars,
        context.enable_operator_progress_bars,
        context.op_resource_reservation_enabled,
    )
    context.enable_progress_bars = context.enable_operator_progress_bars = config.progress
    # Ray Data reserves part of the CPUs for each operator by default; with a light writer behind
    # CPU-bound decoding that halves decode concurrency on small nodes (measured: 75 -> 140
    # samples/s on 2 cores, benchmarks/preprocess.py). The writer still gets its 0.25 CPU.
    context.op_resource_reservation_enabled = False
    try:
        num_blocks = max(1, -(-len(listing.rows) // config.batch_size))
        dataset = ray.data.from_items(listing.rows, override_num_blocks=num_blocks)
        dataset = dataset.map_batches(
            functools.partial(process_batch, config=config),
            batch_size=config.batch_size,
            batch_format="pyarrow",
            zero_copy_batch=True,
        )
        from maskgan.data.shards import ShardSink  # imports Ray Data; only the driver's run needs it

        sink = ShardSink(config.output_uri, config.storage, run_id, rows_per_shard)
        # A fractional CPU keeps the writer from fusing with (and serialising behind) the decode tasks.
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    finally:
        (context.enable_progress_bars, context.enable_operator_progress_bars,
         context.op_resource_reservation_enabled) = saved  # fmt: skip
    if sink.result is None:
        raise PreprocessError("Ray Data finished without a write result; rerun preprocess")
    return list(sink.result.write_returns)


def _write_quarantine(output: Location, quarantined: list[schema.QuarantineEntry], name: str) -> None:
    lines = "".join(json.dumps(dataclasses.asdict(entry)) + "\n" for entry in quarantined)
    storage.write_bytes(output.join(name), lines.encode())
