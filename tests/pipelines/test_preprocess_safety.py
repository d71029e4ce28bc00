"""The job deletes only what it wrote, keeps a finished dataset through a failed --overwrite, refuses
what it can know is wrong before touching anything, and notices a damaged output."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from preprocess_helpers import assert_reconciles, tiny_config, write_raw

from maskgan import storage
from maskgan.data import defects, loader, output_dir, schema
from maskgan.data.preprocess import OutputOutdated, PreprocessError, run
from maskgan.storage import StorageError

LEFTOVER = "train/part-deadbeef-00000-000.parquet"  # an unfinished run's shard name


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under a folder: relative path -> (mtime_ns, content)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_persons_files_in_split_folders_survive_and_the_run_is_refused(tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=6)
    (out / "test").mkdir(parents=True)
    (out / "test" / "my-notes.txt").write_text("mine")
    (out / "val").mkdir()
    (out / "val" / "faces.parquet").write_bytes(b"my own parquet")  # .parquet, but not a job's name
    (out / LEFTOVER).parent.mkdir()
    (out / LEFTOVER).write_bytes(b"half a shard")
    before = snapshot(out)
    with pytest.raises(PreprocessError, match="did not write") as refused:
        run(tiny_config(raw, str(out)))
    assert str(out / "test" / "my-notes.txt") in str(refused.value)
    assert str(out / "val" / "faces.parquet") in str(refused.value)
    assert snapshot(out) == before  # refused before anything was touched, leftovers included

    # Beside a finished run, with --overwrite too: still refused, the finished run intact.
    (out / "test" / "my-notes.txt").unlink()
    (out / "val" / "faces.parquet").unlink()
    manifest = run(tiny_config(raw, str(out))).manifest
    assert_reconciles(manifest)
    (out / "train" / "my-notes.txt").write_text("mine again")
    before = snapshot(out)
    with pytest.raises(PreprocessError, match=r"train/my-notes\.txt"):
        run(tiny_config(raw, str(out), jpeg_quality=80), overwrite=True)
    assert snapshot(out) == before


@pytest.mark.parametrize("layout", ["source inside output", "output inside source", "same, spelled apart"])
def test_overlapping_source_and_output_are_refused_before_anything_is_touched(
    tmp_path, ray_session, monkeypatch, layout
):
    monkeypatch.chdir(tmp_path)
    if layout == "source inside output":
        source, output, raw = "out/test", "out/", tmp_path / "out" / "test"
    elif layout == "output inside source":
        source, output, raw = "raw", "raw/sub/../parquet", tmp_path / "raw"
    else:
        source, output, raw = "raw", "./raw/", tmp_path / "raw"
    write_raw(str(raw), num_images=4)
    before = snapshot(tmp_path)
    with pytest.raises(PreprocessError, match=r"(inside|contains|the same place as) the output"):
        run(tiny_config(source, output))
    assert snapshot(tmp_path) == before


def test_a_failed_overwrite_keeps_the_old_dataset_readable_and_valid(tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=8)
    old = run(tiny_config(raw, str(out))).manifest
    before = snapshot(out)
    defects.inject_defect(raw, 1, "zero_byte_image")
    defects.inject_defect(raw, 2, "wrong_size_mask")
    with pytest.raises(PreprocessError, match=r"2 of 8 samples .* are bad") as failed:
        run(tiny_config(raw, str(out), max_bad_fraction=0.1), overwrite=True)
    failed_list = out / output_dir.FAILED_QUARANTINE_NAME
    reasons = [json.loads(line)["reason"] for line in failed_list.read_text().splitlines()]
    assert len(reasons) == 2 and any("32x32" in reason for reason in reasons)
    for reason in reasons:  # shown whole: numbers kept, nothing cut
        assert reason in str(failed.value)
    failed_list.unlink()
    # Byte for byte what it was: manifest, quarantine, preview and every shard (the failed run's
    # own shards were removed again), and it still reads, checksums verified.
    assert snapshot(out) == before
    assert loader.read_manifest(str(out)) == old
    ids = [int(i) for split in ("train", "val", "test") for b in loader.iter_batches(str(out), split, 4)
           for i in b["id"]]  # fmt: skip
    assert sorted(ids) == list(range(8))
    assert_reconciles(old)


def test_listing_quarantine_over_the_limit_fails_before_anything_is_touched(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=8)
    good = run(tiny_config(raw, str(tmp_path / "out"))).manifest
    assert_reconciles(good)
    before = snapshot(tmp_path / "out")
    defects.inject_defect(raw, 3, "no_masks")
    defects.inject_defect(raw, 4, "orphan_masks")
    for output, overwrite in ((tmp_path / "fresh", False), (tmp_path / "out", True)):
        with pytest.raises(
            PreprocessError, match=r"2 of 8 .* are bad.*image has no mask files.*nothing was written"
        ):
            run(tiny_config(raw, str(output), max_bad_fraction=0.1), overwrite=overwrite)
    assert not (tmp_path / "fresh").exists()
    assert snapshot(tmp_path / "out") == before


def _read_only_output(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
        return Path("/sys/fs/maskgan-test-output")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "out"


def test_read_only_output_fails_before_anything_is_touched(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=4)
    output = _read_only_output(tmp_path)
    with pytest.raises(StorageError, match=f"could not write {output}: .* is not writable"):
        run(tiny_config(raw, str(output)))
    assert not output.exists()


def test_a_deleted_or_changed_shard_is_not_up_to_date(tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=10)
    config = tiny_config(raw, str(out))
    manifest = run(config).manifest
    first, second = manifest.shards[0], manifest.shards[1]
    (out / first.path).unlink()
    with pytest.raises(
        OutputOutdated, match=f"shard {out / first.path} listed in its manifest is missing.*--overwrite"
    ):
        run(config)
    rebuilt = run(config, overwrite=True)
    assert not rebuilt.skipped and (out / rebuilt.manifest.shards[0].path).exists()
    assert_reconciles(rebuilt.manifest)
    shard = out / rebuilt.manifest.shards[1].path
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(OutputOutdated, match=f"shard {shard} is {shard.stat().st_size} bytes"):
        run(config)
    assert second.path not in {s.path for s in rebuilt.manifest.shards}  # new run id, new names


def test_the_same_folders_spelled_differently_are_the_same_run(tmp_path, ray_session, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_raw(str(tmp_path / "raw"), num_images=4)
    first = run(tiny_config("raw/", "out"))
    assert first.manifest.source_uri == str(tmp_path / "raw")  # stored normalised
    assert first.manifest.output_uri == str(tmp_path / "out")
    assert first.manifest.config["source_uri"] == str(tmp_path / "raw")
    assert_reconciles(first.manifest)
    for source, output in ((str(tmp_path / "raw"), str(tmp_path / "out") + "/"), ("x/../raw", "./out//")):
        again = run(tiny_config(source, output))
        assert again.skipped, (source, output)


LOCAL_FILESYSTEM = pafs.LocalFileSystem


class RecordingFileSystem(pafs.FileSystemHandler):
    """The real local filesystem, recording every change the driver makes to it, in order."""

    def __init__(self, changes: list[tuple[str, str]]):
        self.fs, self.changes = LOCAL_FILESYSTEM(), changes

    def get_type_name(self):
        return "recording-local"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.changes.append(("delete_dir", path))
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.changes.append(("delete_dir", path))
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not in a test")

    def delete_file(self, path):
        self.changes.append(("delete", path))
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.changes.append(("write", dest))
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.changes.append(("write", dest))
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.changes.append(("write", path))
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self.changes.append(("write", path))
        return self.fs.open_append_stream(path, metadata=metadata)


@pytest.fixture
def driver_changes(monkeypatch) -> list[tuple[str, str]]:
    """What the driver writes and deletes, in order (shards come from Ray workers, not listed)."""
    changes: list[tuple[str, str]] = []
    recording = pafs.PyFileSystem(RecordingFileSystem(changes))
    monkeypatch.setattr(storage.pafs, "LocalFileSystem", lambda: recording)
    return changes


def test_the_manifest_is_the_last_write(tmp_path, ray_session, driver_changes):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=10)
    temporary = out / "val" / ".tmp-0123456789abcdef0123456789abcdef-part-deadbeef-00001-000.parquet"
    temporary.parent.mkdir(parents=True)
    temporary.write_bytes(b"x")
    (out / "train").mkdir()
    (out / LEFTOVER).write_bytes(b"half a shard")
    old = run(tiny_config(raw, str(out))).manifest
    assert_reconciles(old)
    manifest = str(out / schema.MANIFEST_NAME)
    writes = [path for change, path in driver_changes if change == "write"]
    assert writes[-1] == manifest  # the commit: the rename of the finished manifest into place
    commit = driver_changes.index(("write", manifest))
    before, after = driver_changes[:commit], driver_changes[commit + 1 :]
    assert {("delete", str(out / LEFTOVER)), ("delete", str(temporary))} <= set(before)
    assert {path for _, path in after} <= {
        str(out / output_dir.FAILED_QUARANTINE_NAME),
        str(out / output_dir.WRITER_NAME),
    }, after

    # A replacement: the old run's shards go only after the new manifest is in place.
    driver_changes.clear()
    new = run(tiny_config(raw, str(out), jpeg_quality=80), overwrite=True).manifest
    assert_reconciles(new)
    commit = driver_changes.index(("write", manifest))
    retired = {str(out / shard.path) for shard in old.shards}
    deleted_after = {path for change, path in driver_changes[commit + 1 :] if change == "delete"}
    assert retired <= deleted_after
    assert not retired & {path for _, path in driver_changes[:commit]}
    assert [path for change, path in driver_changes if change == "write"][-1] == manifest


def test_leftovers_of_an_unfinished_run_are_removed_by_name(tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=6)
    temporary = out / "val" / ".tmp-0123456789abcdef0123456789abcdef-part-deadbeef-00001-000.parquet"
    temporary.parent.mkdir(parents=True)
    temporary.write_bytes(b"half written")
    (out / LEFTOVER).parent.mkdir()
    (out / LEFTOVER).write_bytes(b"half a shard")
    (out / ".tmp-0123456789abcdef0123456789abcdef-manifest.json").write_text("{")
    (out / "notes.txt").write_text("a person's file beside the split folders is left alone")
    manifest = run(tiny_config(raw, str(out))).manifest
    assert_reconciles(manifest)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted(
        [*(s.path for s in manifest.shards), schema.MANIFEST_NAME, schema.QUARANTINE_NAME, "preview.png",
         "notes.txt"]
    )  # fmt: skip


def test_an_overwrite_retires_the_replaced_runs_shards_after_the_commit(tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=6)
    old = run(tiny_config(raw, str(out))).manifest
    new = run(tiny_config(raw, str(out), jpeg_quality=80), overwrite=True).manifest
    assert_reconciles(new)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert on_disk == sorted(s.path for s in new.shards)
    assert not {s.path for s in old.shards} & set(on_disk)
    again = run(dataclasses.replace(tiny_config(raw, str(out), jpeg_quality=80)))
    assert again.skipped


def test_a_shard_a_killed_runs_task_drops_in_during_the_run_is_swept_before_the_commit(tmp_path, ray_session):
    """The Ray workers of a SIGKILLed run can outlive their driver by seconds: a shard they write after
    the next run's first clean-up must not stay beside that run's manifest."""
    import threading

    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=8)
    dropped = threading.Event()
    manifest_existed = []

    def lingering_task():
        deadline = time.monotonic() + 120
        while not (out / output_dir.WRITER_NAME).exists():  # the new run has claimed the folder
            if time.monotonic() > deadline:
                return  # never claimed: the assertion on `dropped` below says so
            time.sleep(0.01)
        manifest_existed.append((out / schema.MANIFEST_NAME).exists())
        (out / LEFTOVER).parent.mkdir(parents=True, exist_ok=True)
        (out / LEFTOVER).write_bytes(b"a shard of the killed run")
        dropped.set()

    thread = threading.Thread(target=lingering_task, daemon=True)
    thread.start()
    manifest = run(tiny_config(raw, str(out))).manifest
    thread.join(timeout=5)
    assert dropped.is_set() and manifest_existed == [False], "the drop did not land during the run"
    assert_reconciles(manifest)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == sorted(
        s.path for s in manifest.shards
    )
    assert not (out / output_dir.WRITER_NAME).exists()  # the finished run released its claim


def test_a_run_whose_folder_another_run_claimed_stops_and_removes_its_own_shards(
    tmp_path, ray_session, monkeypatch
):
    """Two jobs on one output: the one that lost the claim fails naming the other, leaving its files."""
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=6)
    other = "0badc0de"
    claim = output_dir.claim
    # The other job claims the folder right after this one did (before any of this one's shards).
    monkeypatch.setattr(output_dir, "claim", lambda output, run_id: claim(output, other))
    with pytest.raises(PreprocessError, match=f"now written by run {other}.*one job per output folder"):
        run(tiny_config(raw, str(out)))
    assert not list(out.rglob("*.parquet")) and not (out / schema.MANIFEST_NAME).exists()
    assert (out / output_dir.WRITER_NAME).read_text() == other  # the other job's claim is left to it
