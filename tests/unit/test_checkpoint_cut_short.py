"""A copy of a checkpoint folder cut short (meta.json copied, a weights file not whole) is not a checkpoint.

Ray Train persists a reported checkpoint by copying its folder, files in any order; an interrupt can
stop that copy after meta.json. meta.json lists every other file's size, so such a folder reads as
incomplete and latest_checkpoint passes over it.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from maskgan.training.checkpoint import (
    META_FILE,
    STATE_FILE,
    export_inference,
    latest_checkpoint,
    load_weights,
    read_meta,
    write_checkpoint,
)

META = {"stage": "dmn", "epoch": 0, "config": {}, "manifest_sha256": None}


def write(path, step: int) -> None:
    weights = {"generator": {"w": torch.full((8, 8), float(step))}}
    write_checkpoint(str(path), {"step": step}, weights=weights, meta={**META, "step": step})


def test_a_copy_cut_short_after_meta_json_reads_as_incomplete(tmp_path):
    run = tmp_path / "run"
    write(run / "checkpoint_000000002", 2)
    write(run / "checkpoint_000000004", 4)
    listed = read_meta(str(run / "checkpoint_000000004"))["files"]
    assert listed.keys() == {STATE_FILE, "weights/generator.pt"}

    # The newest checkpoint's copy stopped half-way through its weights file, after meta.json.
    cut = run / "checkpoint_000000006"
    shutil.copytree(run / "checkpoint_000000004", cut)
    meta = (cut / META_FILE).read_text().replace('"step": 4', '"step": 6')
    (cut / META_FILE).write_text(meta)
    whole = (cut / "weights" / "generator.pt").read_bytes()
    (cut / "weights" / "generator.pt").write_bytes(whole[: len(whole) // 2])

    with pytest.raises(FileNotFoundError, match=r"incomplete .*weights/generator.pt \(\d+ of \d+ bytes\)"):
        read_meta(str(cut))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_weights(str(cut), "generator")
    assert latest_checkpoint(str(run)) == str(run / "checkpoint_000000004")

    (cut / STATE_FILE).unlink()  # a file missing altogether: the same
    (cut / "weights" / "generator.pt").write_bytes(whole)
    with pytest.raises(FileNotFoundError, match=rf"{STATE_FILE} \(0 of \d+ bytes\)"):
        read_meta(str(cut))


def test_an_exported_inference_copy_is_complete_and_names_only_what_it_holds(tmp_path):
    """export_inference (editor bundles, registered stage models) copies weights without state.pt:
    its meta.json must list just those files, or every exported bundle would read as cut short."""
    source = tmp_path / "checkpoint_000000002"
    weights = {"generator": {"w": torch.ones(4, 4)}, "discriminator": {"w": torch.zeros(2)}}
    write_checkpoint(str(source), {"step": 2}, weights=weights, meta={**META, "step": 2})
    bundle = tmp_path / "bundle"

    kept = export_inference(str(source), str(bundle), frozenset({"generator", "blender"}))

    assert kept == ["generator"]
    meta = read_meta(str(bundle))
    assert meta["networks"] == ["generator"] and meta["files"].keys() == {"weights/generator.pt"}
    assert meta["exported_from"] == str(source)
    assert torch.equal(load_weights(str(bundle), "generator")["w"], torch.ones(4, 4))
    assert not (bundle / STATE_FILE).exists() and not (bundle / "weights" / "discriminator.pt").exists()
    (bundle / "weights" / "generator.pt").write_bytes(b"short")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_meta(str(bundle))
    with pytest.raises(ValueError, match="holds none of"):
        export_inference(str(source), str(tmp_path / "other"), frozenset({"parser"}))
