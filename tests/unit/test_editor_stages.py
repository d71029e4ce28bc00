"""The Editor rebuilds networks from checkpoints of the real training stages (tiny presets, one step)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from editing_fixtures import reference_output
from training_inputs import make_batch

from maskgan import config as config_lib
from maskgan.editing import Editor
from maskgan.training import dmn, ebst
from maskgan.training.checkpoint import write_checkpoint


def trained_checkpoint(directory: str, stage_config) -> object:
    """One optimisation step of the stage, written as the training jobs write checkpoints."""
    stage = (
        ebst.build(stage_config, "cpu")
        if isinstance(stage_config, ebst.EBSTTrainConfig)
        else dmn.build(stage_config, "cpu")
    )
    stage.step(make_batch(4, seed=1), 1)
    meta = {"stage": stage.name, "step": 1, "epoch": 0, "manifest_sha256": None,
            "config": config_lib.to_dict(stage_config)}  # fmt: skip
    weights = {name: network.state_dict() for name, network in stage.networks().items()}
    write_checkpoint(directory, {"stage_state": stage.state_dict()}, weights=weights, meta=meta)
    return stage


@pytest.mark.parametrize("preset", ["ebst_tiny", "dmn_tiny_ema"])
def test_editor_reproduces_the_stage_generator(tmp_path, preset):
    if preset == "ebst_tiny":
        config = ebst.ebst_tiny()
    else:
        config = dataclasses.replace(dmn.dmn_tiny(), ema_decay=0.5)
    stage = trained_checkpoint(str(tmp_path / "ckpt"), config)
    editor = Editor.from_checkpoint(str(tmp_path / "ckpt"))
    assert editor.source.stage == stage.name and editor.source.step == 1
    assert (editor.blender is not None) == (preset == "ebst_tiny")
    assert (editor.mask_vae is not None) == (preset == "ebst_tiny")
    batch = make_batch(2, seed=7)
    image = ((batch["image"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    mask, edited = batch["label"][0].numpy().astype(np.uint8), batch["label"][1].numpy().astype(np.uint8)
    generator = stage.inference_generator().eval()
    expected = reference_output(generator, edited, mask, image)
    out = np.asarray(editor.edit(image, mask, edited)).astype(int)
    assert np.abs(out - expected).max() <= 1
    if preset == "dmn_tiny_ema":  # the EMA copy, not the live generator, is what the editor runs
        live = reference_output(stage.generator_net.eval(), edited, mask, image)
        assert np.abs(live.astype(int) - expected).max() > 0
    if editor.mask_vae is not None:
        frozen = stage.mask_vae.state_dict()
        assert all(torch.equal(editor.mask_vae.state_dict()[k], v) for k, v in frozen.items())
