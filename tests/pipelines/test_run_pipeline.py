"""The main job (`make run`): its data part on a tiny configuration, and its reruns with other flags.
The whole job (data -> the chain -> champion), killed and run again, is tests/pipelines/test_chain.py."""

from __future__ import annotations

import json

import pytest
from preprocess_helpers import assert_reconciles

from maskgan.data import loader
from maskgan.data.preprocess import PreprocessError
from pipelines import run_pipeline as entry


def test_main_job_generates_and_preprocesses(tmp_path, ray_session, capsys):
    config = entry.PipelineConfig(
        workdir=str(tmp_path), num_images=10, image_size=64, mask_size=32, resolution=32
    )
    result = entry.main(config)
    manifest = loader.read_manifest(result.parquet_uri)
    assert_reconciles(manifest)
    assert manifest.counts["written"] == 10 and manifest.resolution == 32
    printed = capsys.readouterr().out
    assert "parquet:" in printed and result.manifest_uri in printed
    again = entry.main(config)
    assert again.manifest_uri == result.manifest_uri
    assert "already up to date" in capsys.readouterr().out


def test_new_num_images_or_resolution_rebuild(tmp_path, ray_session, capsys):
    """`make run ARGS="--num-images 12"` after a run with 10 must give 12 rows, not the old 10."""
    assert (
        entry.cli(
            [
                "--workdir",
                str(tmp_path),
                "--num-images",
                "10",
                "--resolution",
                "32",
                "--image-size",
                "64",
                "--no-train",
            ]
        )
        == 0
    )
    assert loader.read_manifest(str(tmp_path / "parquet")).counts["input"] == 10
    capsys.readouterr()

    assert (
        entry.cli(
            [
                "--workdir",
                str(tmp_path),
                "--num-images",
                "12",
                "--resolution",
                "32",
                "--image-size",
                "64",
                "--no-train",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "num_images: 10 -> 12" in printed and "regenerating" in printed and "rebuilding" in printed
    manifest = loader.read_manifest(str(tmp_path / "parquet"))
    assert_reconciles(manifest)
    assert manifest.counts["input"] == manifest.counts["written"] == 12
    record = json.loads((tmp_path / "celebamask-hq" / entry.SYNTHETIC_RECORD).read_text())
    assert record["complete"] and record["config"]["num_images"] == 12

    assert (
        entry.cli(
            [
                "--workdir",
                str(tmp_path),
                "--num-images",
                "12",
                "--resolution",
                "16",
                "--image-size",
                "64",
                "--no-train",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "synthetic dataset already at" in printed and "decode.resolution: 32 -> 16" in printed
    manifest = loader.read_manifest(str(tmp_path / "parquet"))
    assert_reconciles(manifest)
    assert manifest.resolution == 16 and manifest.counts["written"] == 12
    batch = next(loader.iter_batches(str(tmp_path / "parquet"), "train", 2))
    assert batch["image"].shape[-2:] == (16, 16)


def test_a_raw_folder_it_did_not_write_is_not_replaced(tmp_path):
    (tmp_path / "celebamask-hq").mkdir()
    (tmp_path / "celebamask-hq" / "mine.jpg").write_bytes(b"a person's photo")
    with pytest.raises(PreprocessError, match="did not write them"):
        entry.main(entry.PipelineConfig(workdir=str(tmp_path), num_images=2, resolution=32))
    assert (tmp_path / "celebamask-hq" / "mine.jpg").read_bytes() == b"a person's photo"
