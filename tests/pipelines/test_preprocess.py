"""The preprocessing job on a local tiny synthetic dataset: output, bad input, reruns, killed runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from preprocess_helpers import assert_reconciles, tiny_config, write_raw

from maskgan.data import defects, loader, schema, synthetic
from maskgan.data.preprocess import PreprocessError, run
from pipelines import preprocess as preprocess_cli

REPO = Path(__file__).resolve().parents[2]


def parquet_files(output: Path) -> list[str]:
    return sorted(str(p.relative_to(output)) for p in output.rglob("*.parquet"))


def test_run_writes_shards_manifest_and_reconciles(tmp_path, ray_session):
    raw_config = write_raw(str(tmp_path / "raw"), num_images=14)
    result = run(tiny_config(str(tmp_path / "raw"), str(tmp_path / "out")))
    manifest = result.manifest
    assert not result.skipped
    assert_reconciles(manifest)
    assert (
        manifest.counts["input"] == 14
        and manifest.counts["written"] == 14
        and manifest.counts["quarantined"] == 0
    )
    assert manifest.split_source == "official mapping file"
    # Splits follow the mapping file's orig_idx.
    for split in ("train", "val", "test"):
        expected = {i for i in raw_config.ids if synthetic.expected_split(raw_config, i) == split}
        ids = (
            {
                int(b["id"][j])
                for b in loader.iter_batches(str(tmp_path / "out"), split, 4)
                for j in range(len(b["id"]))
            }
            if expected
            else set()
        )
        assert ids == expected, split
        assert manifest.counts[split] == len(expected)
    # Several shards (target 0.02 MB), each listed with its row count and checksum, in its split folder.
    assert len(manifest.shards) >= 2
    listed = sorted(shard.path for shard in manifest.shards)
    assert listed == parquet_files(tmp_path / "out")
    for shard in manifest.shards:
        assert shard.path.startswith(shard.split + "/")
        table = pq.read_table(tmp_path / "out" / shard.path)
        assert table.num_rows == shard.num_rows
        assert table.schema.equals(schema.SCHEMA, check_metadata=False)
    assert sum(s.num_rows for s in manifest.shards) == 14
    # Attributes and pose are joined.
    table = pq.read_table(tmp_path / "out" / manifest.shards[0].path)
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["attributes"]) == 40 and set(row["attributes"]) <= {-1, 1}
    assert len(row["pose"]) == 3
    assert manifest.attribute_names[0] == "5_o_Clock_Shadow"
    assert (tmp_path / "out" / schema.QUARANTINE_NAME).read_text() == ""
    # A preview grid for people: [image | colour label] cells of the first shard's rows.
    with Image.open(tmp_path / "out" / "preview.png") as preview:
        first = min(manifest.shards[0].num_rows, 8)
        assert preview.width == min(first, 4) * 2 * 32 and preview.height == -(-first // 4) * 32
    on_disk = json.loads((tmp_path / "out" / schema.MANIFEST_NAME).read_text())
    assert on_disk["config"]["decode"]["resolution"] == 32 and on_disk["source_uri"] == str(tmp_path / "raw")


def test_hash_split_without_mapping_file(tmp_path, ray_session):
    write_raw(str(tmp_path / "raw"), num_images=10)
    (tmp_path / "raw" / synthetic.MAPPING_FILE).unlink()
    manifest = run(tiny_config(str(tmp_path / "raw"), str(tmp_path / "out"))).manifest
    assert_reconciles(manifest)
    assert manifest.split_source == "hash of id (no mapping file)"
    assert manifest.counts["written"] == 10
    assert all(shard.num_rows > 0 for shard in manifest.shards)


DEFECTS = {
    "truncated_jpeg": "truncated or corrupt",
    "zero_byte_image": "zero-byte",
    "not_an_image": "not an image",
    "wrong_size_mask": "expected 32x32",
    "non_binary_mask": "expected a binary 0/255 mask",
    "no_masks": "image has no mask files",
    "orphan_masks": "masks with no image",
    "unknown_part": "unknown part name",
    "huge_image": "over the limit",
}


def test_every_bad_input_is_quarantined_and_the_rest_lands(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=16)
    bad_ids = dict(zip(DEFECTS, range(2, 2 + len(DEFECTS)), strict=False))
    for kind, sample_id in bad_ids.items():
        defects.inject_defect(raw, sample_id, kind)
    defects.inject_defect(raw, 0, "rgb_mask")  # valid: the release reads channel 0
    (tmp_path / "raw" / synthetic.IMAGE_DIR / "notes.txt").write_text("not a sample")  # ignored, reported

    config = tiny_config(raw, str(tmp_path / "out"), max_bad_fraction=0.6)
    manifest = run(config).manifest
    assert_reconciles(manifest)
    reasons = {entry.id: entry.reason for entry in manifest.quarantined}
    for kind, sample_id in bad_ids.items():
        assert sample_id in reasons, kind
        assert DEFECTS[kind] in reasons[sample_id], (kind, reasons[sample_id])
    assert set(reasons) == set(bad_ids.values())
    counts = manifest.counts
    assert counts["input"] == 16 and counts["quarantined"] == len(DEFECTS)
    assert counts["written"] + counts["quarantined"] == counts["input"]
    assert counts["ignored_files"] == 1
    written_ids = {
        int(i)
        for split in ("train", "val", "test")
        for b in loader.iter_batches(str(tmp_path / "out"), split, 8)
        for i in b["id"]
    }
    assert written_ids == set(range(16)) - set(bad_ids.values())
    assert 0 in written_ids
    lines = [
        json.loads(line) for line in (tmp_path / "out" / schema.QUARANTINE_NAME).read_text().splitlines()
    ]
    assert {line["id"] for line in lines} == set(bad_ids.values())
    assert all(line["files"] for line in lines)


def test_too_many_bad_samples_fails_without_a_manifest(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=8)
    defects.inject_defect(raw, 1, "zero_byte_image")
    defects.inject_defect(raw, 2, "not_an_image")
    with pytest.raises(PreprocessError, match=r"2 of 8 samples \(25.0%\) are bad.*max_bad_fraction"):
        run(tiny_config(raw, str(tmp_path / "out"), max_bad_fraction=0.1))
    assert not (tmp_path / "out" / schema.MANIFEST_NAME).exists()
    assert len((tmp_path / "out" / schema.QUARANTINE_NAME).read_text().splitlines()) == 2
    with pytest.raises(loader.DatasetNotReady, match="preprocessing has not finished"):
        next(loader.iter_batches(str(tmp_path / "out"), "train", 2))
    # The CLI turns it into exit status 1 with the message on stderr.
    status = preprocess_cli.cli(
        ["--preset", "preprocess_tiny", "--source", raw, "--output", str(tmp_path / "out2"), "--no-progress",
         "--set", "max_bad_fraction=0.1"]
    )  # fmt: skip
    assert status == 1


def test_rerun_skips_refuses_or_overwrites(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=6)
    config = tiny_config(raw, str(tmp_path / "out"))
    first = run(config)
    assert_reconciles(first.manifest)
    before = parquet_files(tmp_path / "out")
    manifest_bytes = (tmp_path / "out" / schema.MANIFEST_NAME).read_bytes()

    again = run(dataclasses.replace(config, batch_size=2))  # speed knob only: still up to date
    assert again.skipped and parquet_files(tmp_path / "out") == before
    assert (tmp_path / "out" / schema.MANIFEST_NAME).read_bytes() == manifest_bytes

    changed = dataclasses.replace(config, jpeg_quality=80)
    with pytest.raises(PreprocessError, match=r"different config \(jpeg_quality: 95 -> 80\).*--overwrite"):
        run(changed)
    assert parquet_files(tmp_path / "out") == before

    edited = tmp_path / "raw" / synthetic.IMAGE_DIR / "2.jpg"
    with Image.open(edited) as image:
        image.load()
    image.save(edited, quality=40)  # a re-encoded image: same name, new size
    with pytest.raises(PreprocessError, match=r"source .* changed since .*--overwrite"):
        run(config)  # same config, different source: not up to date any more
    assert parquet_files(tmp_path / "out") == before

    replaced = run(changed, overwrite=True)
    assert_reconciles(replaced.manifest)
    after = parquet_files(tmp_path / "out")
    assert not replaced.skipped and set(after).isdisjoint(before)  # no stale shard of the first run
    assert after == sorted(s.path for s in replaced.manifest.shards)
    assert replaced.manifest.counts["written"] == first.manifest.counts["written"] == 6


def test_leftovers_of_an_unfinished_run_are_removed(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=6)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-deadbeef-00000-000.parquet").write_bytes(b"half a shard")
    (out / "val").mkdir()
    (out / "val" / "part-deadbeef-00001-000.parquet").write_bytes(b"stale")
    manifest = run(tiny_config(raw, str(out))).manifest
    assert_reconciles(manifest)
    assert parquet_files(out) == sorted(s.path for s in manifest.shards)
    assert not any("deadbeef" in path for path in parquet_files(out))


def test_killed_run_leaves_no_manifest_and_next_run_is_clean(tmp_path):
    """SIGKILL the CLI while it writes shards; the rerun completes with exactly its own shards."""
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=60)
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "pipelines" / "preprocess.py"), "--preset", "preprocess_tiny",
            "--source", raw, "--output", str(out), "--no-progress",
            "--set", "shard_target_mb=0.005", "--set", "batch_size=2"]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.rglob("*.parquet")) and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it wrote a shard: nothing to kill"
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its Ray processes
    process.wait()
    assert list(out.rglob("*.parquet")) and not (out / schema.MANIFEST_NAME).exists()

    completed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    manifest = loader.read_manifest(str(out))
    assert_reconciles(manifest)
    assert manifest.counts["written"] == 60
    assert parquet_files(out) == sorted(s.path for s in manifest.shards)
    ids = [
        int(i)
        for split in ("train", "val", "test")
        for b in loader.iter_batches(str(out), split, 16)
        for i in b["id"]
    ]
    assert sorted(ids) == list(range(60))  # no duplicates, nothing lost
    assert "parquet:" in completed.stdout and "manifest:" in completed.stdout


def test_unreachable_source_names_the_problem(tmp_path, ray_session):
    with pytest.raises(PreprocessError, match="no CelebAMask-HQ data under .*check source_uri"):
        run(tiny_config(str(tmp_path / "missing"), str(tmp_path / "out")))


def test_cli_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess_cli.cli(["--help"])
    assert exit_info.value.code == 0
    assert "--overwrite" in capsys.readouterr().out
    assert (
        preprocess_cli.cli(["--preset", "preprocess_256", "--set", "jpeg_quality=90", "--print-config"]) == 0
    )
    printed = capsys.readouterr().out
    assert "resolution: 256" in printed and "jpeg_quality: 90" in printed
    with pytest.raises(SystemExit) as exit_info:
        preprocess_cli.cli(["--set", "decode.resolution=-3"])
    assert exit_info.value.code == 2
    assert "resolution must be positive" in capsys.readouterr().err
