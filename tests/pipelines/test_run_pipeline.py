"""The main job (`make run`) end to end on a tiny configuration, and its rerun."""

from __future__ import annotations

from maskgan.data import loader
from pipelines import run_pipeline as entry


def test_main_job_generates_and_preprocesses(tmp_path, ray_session, capsys):
    config = entry.PipelineConfig(
        workdir=str(tmp_path), num_images=10, image_size=64, mask_size=32, resolution=32
    )
    result = entry.main(config)
    manifest = loader.read_manifest(result.parquet_uri)
    assert manifest.counts["written"] == 10 and manifest.resolution == 32
    printed = capsys.readouterr().out
    assert "parquet:" in printed and result.manifest_uri in printed
    again = entry.main(config)
    assert again.manifest_uri == result.manifest_uri
    assert "already up to date" in capsys.readouterr().out
