"""The stages learn on a synthetic dataset made by the preprocessing job (train_local: real loader, no Ray).

One tiny DMN is trained once per session and shared: its val reconstruction L1 falls from the
untrained model's; swapping its style reference changes its output far more than an untrained one's;
and EBST started from its weights (fresh blender, a briefly trained MaskVAE) keeps the reconstruction
with a blend better than either edited render.

Two acceptance checks of issue 7 are NOT reached on this data within a CPU test budget and stay
strict xfails with their numbers: val L1 falling >= 3x, and the EBST blend getting closer to the real
image than at the start of EBST. Why (measured with benchmarks/dmn_learning.py, 32 px, 78 train /
9 val faces): half the pixels are background in a uniformly random colour per face, so a style-blind
generator can do no better than 0.353 (untrained: 0.42-0.49) and 3x (<= ~0.15) needs near-perfect
transfer of unseen faces' colours (perfect per-face class colours: 0.060). The generator memorises
the 78 train faces through their masks instead: pure L1, no GAN, 600 steps reaches train L1 0.09
but val 0.24. Randomly permuting / sign-flipping each train image's RGB channels stops that (val
0.21-0.22, 2.2-2.3x, in 600 steps, pure L1 or the preset's GAN + FM + L1, with a full-resolution
AdaIN bottleneck: num_downsample 0, so no instance norm follows the AdaIN blocks; encoder width 8,
batch 8, lr 1e-3), still short of 3x and ~4x the test budget (1200 pure-L1 steps: 0.187, 2.6x,
still falling slowly); without the jitter the same runs
stop at 0.24-0.30. The EBST blend can only be as good as G's renders, which carry this
reconstruction error, so its L1 moves with G's val L1, not with the blender's.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from mask_vae_fixtures import one_thread

from maskgan import config as config_lib
from maskgan.data import loader
from maskgan.training import dmn, ebst, mask_vae
from maskgan.training.local import train_local
from maskgan.training.loop import run_loop, validate

DMN_STEPS = 300
MASK_VAE_STEPS = 100
EBST_STEPS = 80
L1_FALLS = 1.1  # regression floor, NOT the acceptance check: measured 1.16-1.45x over 6 runs
L1_FACTOR = 3.0  # issue 7 acceptance check (strict xfail below)
VAL_BATCHES = 2


def split_in_id_order(uri: str, split: str) -> dict[str, torch.Tensor]:
    """A whole (tiny) split in memory, rows sorted by id: independent of how Ray sharded it."""
    parts = list(loader.iter_batches(uri, split, 64))
    rows = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    order = rows["id"].argsort()
    return {key: value[order] for key, value in rows.items()}


def epochs(rows: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
    """Endless batches: epoch e is a permutation seeded by seed + e (full batches only)."""
    for epoch in itertools.count():
        order = torch.randperm(len(rows["id"]), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield {key: value[order[start : start + batch_size]] for key, value in rows.items()}


def val_metrics(stage, uri: str) -> dict[str, float]:
    rows = split_in_id_order(uri, "val")
    batches = ({key: value[start : start + 8] for key, value in rows.items()} for start in range(0, 16, 8))
    return validate(stage, batches, VAL_BATCHES)


def train(stage, config, uri: str, steps: int) -> None:
    """run_loop on the train split in id order, shuffled per epoch (the loader's shard order varies)."""
    loop = dataclasses.replace(config.loop, max_steps=steps)
    run_loop(
        stage, epochs(split_in_id_order(uri, "train"), loop.batch_size, loop.seed), loop=loop, start_step=0
    )


@pytest.fixture(scope="session")
def dmn_run(tiny_parquet):
    """(untrained val metrics, trained stage) of the tiny DMN preset on the synthetic data."""
    config = dmn.dmn_tiny()
    with one_thread():
        stage = dmn.build(config, "cpu")
        before = val_metrics(stage, tiny_parquet)
        train(stage, config, tiny_parquet, DMN_STEPS)
    return before, stage


def test_dmn_reconstruction_l1_on_val_falls(dmn_run, tiny_parquet):
    """Regression floor: training moves val L1 the right way (the 3x check is the xfail below)."""
    before, stage = dmn_run
    after = val_metrics(stage, tiny_parquet)
    assert after["val/l1"] * L1_FALLS <= before["val/l1"], (before, after)


@pytest.mark.xfail(
    strict=True,
    reason="issue 7 acceptance, not reached in a CPU test budget: val L1 0.42-0.48 -> 0.33-0.40 after "
    "300 steps (1.16-1.45x); best variant measured (full-res AdaIN, RGB channel jitter, pure L1, 600 "
    "steps) 0.49 -> 0.21 (2.3x), with GAN + FM 0.22; a style-blind generator's floor is 0.353 "
    "(see module doc)",
)
def test_dmn_reconstruction_l1_on_val_falls_3x(dmn_run, tiny_parquet):
    before, stage = dmn_run
    after = val_metrics(stage, tiny_parquet)
    assert after["val/l1"] * L1_FACTOR <= before["val/l1"], (before, after)


def test_dmn_uses_its_style_reference(dmn_run, tiny_parquet):
    """Val mean abs(G(M, M', I') - G(M, M, I)): a trained DMN follows its reference; an untrained, barely."""
    before, stage = dmn_run
    after = val_metrics(stage, tiny_parquet)
    assert after["val/style_change"] >= max(5 * before["val/style_change"], 0.05), (before, after)


@pytest.fixture(scope="session")
def ebst_run(dmn_run, tiny_parquet):
    """(val metrics at the start of EBST, after EBST_STEPS steps): DMN-stage G and D, fresh blender."""
    _, dmn_stage = dmn_run
    vae_config = config_lib.merge(mask_vae.mask_vae_tiny(), {"data": {"uri": tiny_parquet}})
    config = ebst.ebst_tiny()
    with one_thread():
        vae_stage = train_local(vae_config, max_steps=MASK_VAE_STEPS).stage  # the real loader path
        stage = ebst.build(config, "cpu")
        stage.load_networks(
            {
                "generator": dmn_stage.generator_net.state_dict(),
                "discriminator": dmn_stage.discriminator.state_dict(),
                "mask_vae": vae_stage.mask_vae.state_dict(),
            }
        )
        before = val_metrics(stage, tiny_parquet)
        train(stage, config, tiny_parquet, EBST_STEPS)
        after = val_metrics(stage, tiny_parquet)
    return before, after


def test_ebst_blend_beats_its_edited_renders_and_keeps_the_reconstruction(ebst_run):
    before, after = ebst_run
    numbers = {key: (round(before[key], 4), round(after[key], 4)) for key in before}
    assert after["val/blend_l1"] < after["val/edit_l1"], numbers
    assert after["val/l1"] < 1.1 * before["val/l1"], numbers


@pytest.mark.xfail(
    strict=True,
    reason="issue 7 acceptance, not reached: the blend's L1 is G's val reconstruction error (0.38, "
    "G fits the train faces, see module doc) plus a little on the edited pixels; blend L1 0.377 -> "
    "0.379 in 80 steps here, 0.382 -> 0.386 in 160 steps, 0.382 -> 0.385 with G at lr 5e-4",
)
def test_ebst_brings_the_blend_of_edited_renders_closer_to_the_real_image(ebst_run):
    before, after = ebst_run
    numbers = {key: (round(before[key], 4), round(after[key], 4)) for key in before}
    assert after["val/blend_l1"] < before["val/blend_l1"], numbers
