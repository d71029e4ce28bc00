"""The stages learn on a synthetic dataset made by the preprocessing job (train_local: real loader, no Ray).

One tiny DMN is trained once per session and shared: its val reconstruction L1 falls from the
untrained model's; swapping its style reference changes its output far more than an untrained one's;
and EBST started from its weights (fresh blender, a briefly trained MaskVAE) brings the blend of the
two edited renders closer to the real image than at the start of EBST.

Why not "L1 falls 3x" on val: on this synthetic data half the pixels are background in a uniformly
random colour per face. Measured on the val split: untrained tiny DMN 0.42-0.48; the best any
style-blind generator can do (each class painted its train-set median colour) 0.353; perfect
per-face class colours 0.060. A 3x fall (<= 0.15) needs near-perfect style transfer of unseen faces'
colours, which the released decoder (instance norms after the AdaIN bottleneck) learns slowly: the
tiny preset reaches 0.33-0.40 after 300 steps (train L1 falls 3.7x in 600 steps of pure L1: it fits
the train faces first). The tests assert what 300 CPU steps reach, with margin.
"""

from __future__ import annotations

import pytest
from mask_vae_fixtures import one_thread

from maskgan import config as config_lib
from maskgan.training import dmn, ebst, mask_vae
from maskgan.training.local import train_local, val_batch_source
from maskgan.training.loop import validate

DMN_STEPS = 300
MASK_VAE_STEPS = 100
EBST_STEPS = 80
L1_FACTOR = 1.1  # measured 1.16-1.45x over 6 runs (seeds 0-2, both inits)
VAL_BATCHES = 2


def val_metrics(stage, config) -> dict[str, float]:
    return validate(stage, val_batch_source(config.data, 8)(), VAL_BATCHES)


@pytest.fixture(scope="session")
def dmn_run(tiny_parquet):
    """(untrained val metrics, trained stage, config) of the tiny DMN preset on the synthetic data."""
    config = config_lib.merge(dmn.dmn_tiny(), {"data": {"uri": tiny_parquet}})
    with one_thread():
        stage = dmn.build(config, "cpu")
        before = val_metrics(stage, config)
        train_local(config, max_steps=DMN_STEPS, stage=stage)
    return before, stage, config


def test_dmn_reconstruction_l1_on_val_falls(dmn_run):
    before, stage, config = dmn_run
    after = val_metrics(stage, config)
    assert after["val/l1"] * L1_FACTOR <= before["val/l1"], (before, after)


def test_dmn_uses_its_style_reference(dmn_run):
    """Val mean abs(G(M, M', I') - G(M, M, I)): a trained DMN follows its reference; an untrained, barely."""
    before, stage, config = dmn_run
    after = val_metrics(stage, config)
    assert after["val/style_change"] >= max(5 * before["val/style_change"], 0.05), (before, after)


def test_ebst_brings_the_blend_of_edited_renders_closer_to_the_real_image(dmn_run, tiny_parquet):
    _, dmn_stage, _ = dmn_run
    vae_config = config_lib.merge(mask_vae.mask_vae_tiny(), {"data": {"uri": tiny_parquet}})
    config = config_lib.merge(ebst.ebst_tiny(), {"data": {"uri": tiny_parquet}})
    with one_thread():
        vae_stage = train_local(vae_config, max_steps=MASK_VAE_STEPS).stage
        stage = ebst.build(config, "cpu")
        stage.load_networks(
            {
                "generator": dmn_stage.generator_net.state_dict(),
                "discriminator": dmn_stage.discriminator.state_dict(),
                "mask_vae": vae_stage.mask_vae.state_dict(),
            }
        )
        before = val_metrics(stage, config)
        train_local(config, max_steps=EBST_STEPS, stage=stage)
        after = val_metrics(stage, config)
    # Measured: blend L1 0.331 -> 0.329 (G lr 2e-4); with G lr 1e-3 it rose (0.383 -> 0.389). Small:
    # half of the error is the background colour (module doc), and the shard order of the preprocessed
    # data (Ray) varies between sessions, so the DMN it starts from does too (val L1 0.34-0.38).
    numbers = {key: (round(before[key], 4), round(after[key], 4)) for key in before}
    assert after["val/blend_l1"] < before["val/blend_l1"], numbers
    assert after["val/l1"] < 1.1 * before["val/l1"], ("EBST must not wreck the reconstruction", numbers)
