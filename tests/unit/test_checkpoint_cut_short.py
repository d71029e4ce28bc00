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
