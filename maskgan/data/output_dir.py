"""What the preprocessing job may touch in its output folder, and what it must refuse.

The job deletes only files it wrote itself: shards named `part-<run>-<task>-<n>.parquet` (run = 8 hex
digits), its own `.tmp-<uuid>-<name>` temporaries, the shards listed by its own manifest, and its
own root files (manifest, quarantine, preview, the writer claim). Anything else in a split folder is
a person's file: the run is refused, naming it, before anything is touched. Source and output must not
overlap.

One run writes a folder at a time: a run claims it (`.maskgan-writer` holds its run id) before its
first write, and its write tasks check the claim before each shard. The Ray workers of a run killed
with SIGKILL can outlive their driver by seconds; without the claim, a task of theirs could drop a
shard into the folder after the next run cleaned it. A run also sweeps such shards once more just
before it commits its manifest.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Iterable

from maskgan import storage
from maskgan.data import schema
from maskgan.data.celebamask import SPLITS
from maskgan.data.preview import PREVIEW_NAME
from maskgan.storage import Location, StorageConfig

log = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"part-[0-9a-f]{8}-\d{5}-\d{3}\.parquet")
TEMPORARY_NAME = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<name>.+)")  # storage.write_bytes' temporaries
# The quarantine list of a failed run that would have replaced a finished one: kept apart so the
# finished run's quarantine.jsonl still matches its manifest.
FAILED_QUARANTINE_NAME = "quarantine.failed-run.jsonl"
WRITER_NAME = ".maskgan-writer"  # the run id of the run that may write shards here
ROOT_NAMES = (schema.QUARANTINE_NAME, PREVIEW_NAME, FAILED_QUARANTINE_NAME, WRITER_NAME)


class OutputRefused(RuntimeError):
    """The output folder (or its relation to the source) is not safe to write; nothing was touched."""


class OutputTakenOver(RuntimeError):
    """Another run claimed the output folder while this one was writing to it."""


def check_no_overlap(source_uri: str, output_uri: str) -> None:
    """Refuse a source and an output that are the same place or one inside the other."""
    source, output = storage.normalise_uri(source_uri), storage.normalise_uri(output_uri)
    if storage.is_s3_uri(source) != storage.is_s3_uri(output):
        return
    separator = "/" if storage.is_s3_uri(source) else os.sep
    if storage.is_s3_uri(source) and source.split("/")[2] != output.split("/")[2]:
        return  # different buckets

    def inside(inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith(outer.rstrip(separator) + separator)

    if inside(source, output) or inside(output, source):
        where = (
            "the same place as" if source == output else ("inside" if inside(source, output) else "contains")
        )
        raise OutputRefused(
            f"source {source_uri} ({source}) is {where} the output {output_uri} ({output}); the job "
            "would write into (or clean up) its own input. Choose an output outside the source."
        )


def check_before_writing(source_uri: str, output_uri: str, storage_config: StorageConfig) -> Location:
    """Overlap, buckets, reachability and a writable output: all refused before anything is touched.
    Returns the output location."""
    check_no_overlap(source_uri, output_uri)
    output = storage.resolve(output_uri, storage_config)
    source = storage.resolve(source_uri, storage_config)
    storage.check_reachable(output)
    storage.check_bucket(output, "output")
    storage.check_writable(output)
    storage.check_reachable(source)
    storage.check_bucket(source, "source")
    return output


def _relative(output: Location, path: str) -> str:
    return posixpath.relpath(path, output.path)


def split_files(output: Location) -> dict[str, int]:
    """Every file under the split folders: relative path -> size in bytes."""
    files = {}
    for split in SPLITS:
        for info in storage.list_files(output.join(split)):
            files[_relative(output, info.path)] = info.size
    return files


def is_own_file(relative: str) -> bool:
    """A name only this job writes in a split folder: `<split>/part-...parquet` or a temporary."""
    split, _, name = relative.partition("/")
    temporary = TEMPORARY_NAME.fullmatch(name)
    return split in SPLITS and bool(SHARD_NAME.fullmatch(temporary["name"] if temporary else name))


def check_split_folders(output: Location, manifest: schema.Manifest | None) -> None:
    """Refuse an output whose split folders hold files this job did not write (names them)."""
    listed = {shard.path for shard in manifest.shards} if manifest else set()
    foreign = [path for path in split_files(output) if path not in listed and not is_own_file(path)]
    if foreign:
        shown = ", ".join(output.join(path).uri for path in foreign[:10])
        more = f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        raise OutputRefused(
            f"{output.uri} holds files preprocessing did not write: {shown}{more}. It deletes only its "
            "own files, so it will not write beside these: move them away or choose another output_uri."
        )


def check_shards_present(output: Location, manifest: schema.Manifest) -> str | None:
    """None when every shard in the manifest exists with its recorded size; else what is wrong."""
    on_disk = split_files(output)
    for shard in manifest.shards:
        size = on_disk.get(shard.path)
        if size is None:
            return f"shard {output.join(shard.path).uri} listed in its manifest is missing"
        if size != shard.num_bytes:
            return (
                f"shard {output.join(shard.path).uri} is {size} bytes, its manifest says "
                f"{shard.num_bytes}: it was changed after preprocessing"
            )
    return None


def remove_leftovers(output: Location, keep: Iterable[str]) -> list[str]:
    """Delete own-named shards and temporaries not in `keep` (an unfinished run's); returns them."""
    keep = set(keep)
    removed = [path for path in split_files(output) if is_own_file(path) and path not in keep]
    for info in storage.list_files(output, recursive=False):
        temporary = TEMPORARY_NAME.fullmatch(info.base_name)
        if temporary and temporary["name"] in (schema.MANIFEST_NAME, *ROOT_NAMES):
            removed.append(_relative(output, info.path))
    for path in removed:
        log.warning("removing %s, left by an unfinished run", output.join(path).uri)
        storage.delete_file(output.join(path))
    return removed


def retire(output: Location, old: schema.Manifest | None, new: schema.Manifest | None) -> list[str]:
    """After `new` is committed: delete the shards of the `old` manifest that `new` does not list."""
    keep = {shard.path for shard in new.shards} if new else set()
    removed = [shard.path for shard in old.shards if shard.path not in keep] if old else []
    for path in removed:
        storage.delete_file(output.join(path))
    if removed:
        log.info("removed %d shards of the replaced run", len(removed))
    return removed


def claim(output: Location, run_id: str) -> None:
    """Make run_id the one run whose write tasks may add shards to the folder."""
    storage.write_bytes(output.join(WRITER_NAME), run_id.encode())


def check_claim(output: Location, run_id: str) -> None:
    """OutputTakenOver unless the folder's claim still names run_id (a write task asks before a shard)."""
    holder = storage.read_text_if_exists(output.join(WRITER_NAME))
    if holder != run_id:
        now = f"run {holder}" if holder else "no run (its claim was released)"
        raise OutputTakenOver(
            f"{output.uri} is now written by {now}, not by run {run_id}: two preprocessing jobs wrote the "
            "same output, or this is a task of a killed job. Run one job per output folder."
        )


def release(output: Location, run_id: str) -> None:
    """Drop the claim if it is still run_id's (a run that took over keeps its own)."""
    if storage.read_text_if_exists(output.join(WRITER_NAME)) == run_id:
        storage.delete_file(output.join(WRITER_NAME))


def remove_run(output: Location, run_id: str) -> None:
    """Delete the shards one (failed) run wrote, so a failure leaves the output as it found it."""
    for path in split_files(output):
        if is_own_file(path) and path.split("/", 1)[1].startswith(f"part-{run_id}-"):
            storage.delete_file(output.join(path))
