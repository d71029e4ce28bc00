"""The stages learn on a synthetic dataset made by the preprocessing job (train_local: real loader, no Ray).

One tiny DMN is trained once per session and shared: its val reconstruction L1 falls >= 3x from the
untrained model; swapping its style reference changes its output more than an untrained one's; and
EBST started from its weights (fresh blender, a briefly trained MaskVAE) brings the blend of the two
edited renders closer to the real image than at the start of EBST.
"""

from __future__ import annotations

import pytest
from mask_vae_fixtures import one_thread

from maskgan import config as config_lib
from maskgan.training import dmn, ebst, mask_vae
from maskgan.training.local import train_local, val_batch_source
from maskgan.training.loop import validate

DMN_STEPS = 300
MASK_VAE_STEPS = 150
EBST_STEPS = 100
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


def test_dmn_reconstruction_l1_on_val_falls_3x(dmn_run):
    before, stage, config = dmn_run
    after = val_metrics(stage, config)
    assert after["val/l1"] * 3 <= before["val/l1"], (before, after)


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
    assert after["val/blend_l1"] < 0.9 * before["val/blend_l1"], (before, after)
    assert after["val/l1"] < 1.2 * before["val/l1"], "EBST must not wreck the reconstruction"
