"""The stages learn on a synthetic dataset made by the preprocessing job (run_loop, no Ray Train).

One DMN is trained once per session and shared: its val reconstruction L1 falls >= 3x from a freshly
initialised model of the same config; swapping its style reference changes its output far more than
an untrained one's; EBST started from its weights (fresh blender, a briefly trained MaskVAE) brings
the blend of the two edited renders closer to the real image than at its start, keeps the
reconstruction, and its blend beats either edited render. L1 is always over the WHOLE val split.

Why this data and config (measured, 32 px, 1 thread, on this machine's shared 2 cores):
- Data: 480 faces (384 train / 48 val) instead of the shared tiny_parquet's 96. On 78 train faces
  the generator memorised faces through their masks (train L1 0.09, val 0.24, earlier measurement);
  on 384 its train L1 stays at its val L1 (no memorising), so no colour augmentation is needed: an
  RGB channel permutation / sign-flip jitter of image and reference measured WORSE here (600 steps,
  val 0.211 with it vs 0.176 without), so none was added.
- What 3x asks: the background (55 % of pixels), cloth and hat are a uniformly random colour per face.
  On val: per-class dataset-mean colours (the best a style-blind generator does) 0.338; perfect
  per-face class colours 0.061; perfect background only 0.172; background + cloth 0.133. The untrained
  DMN gives ~0.5, so 3x (~0.17) needs the style code to carry unseen faces' background and cloth colours.
- Config (dmn_tiny plus DMN_OVERRIDES): generator.num_downsample 0 -- the AdaIN blocks run at full
  resolution, so no decoder instance norm undoes the style's per-channel scale and bias;
  encoder_base_channels 8 (a 32-wide pooled style vector instead of 16); base_channels 16;
  losses.reconstruction_l1_weight 100 (GAN + feature matching kept, L1 dominant); batch 8; lr 2e-3
  constant for 100 steps, then linear to 0 at DMN_STEPS.
- Val L1 (first 16 val faces unless "all"), untrained -> trained: dmn_tiny as is, 300 steps 0.438 ->
  0.332 (1.3x); num_downsample 0, base 32, L1 100, lr 1e-3, 600 steps 0.461 -> 0.176 (2.6x); the chosen
  config, 600 steps 0.526 -> 0.178 (2.96x); 1000 steps (all 48) 0.505 -> 0.120 (4.2x), ~130 s of
  DMN steps on an idle core (340 s on a loaded machine).
- EBST (ebst_tiny with the same generator, L1 100, batch 8, G lr 5e-5, blender 2e-3), from that DMN:
  val blend L1 0.1537 at the start (fresh blender) -> 0.1511 / 0.1506 / 0.1502 after 25 / 50 / 75
  steps; the edited renders themselves 0.1588 -> 0.1556 (G learns to render the simulated edits: the
  blend term trains it on them), reconstruction 0.1199 -> 0.1208. With the 78-face data, G's val error
  (0.38) swamped this and the blend L1 rose slightly (0.377 -> 0.379).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
from pathlib import Path

import pytest
import torch
from mask_vae_fixtures import one_thread

from maskgan import config as config_lib
from maskgan.data import loader
from maskgan.training import dmn, ebst, mask_vae
from maskgan.training.local import train_local
from maskgan.training.loop import run_loop, validate

# Training in fixtures: ~4 min for the module on an idle 2-core machine, 2-3x that on a loaded one.
pytestmark = pytest.mark.timeout(1800)

NUM_IMAGES = 480  # 32 px: 384 train, 48 val faces (the shared tiny_parquet has 77 train faces)
DMN_STEPS = 1000
MASK_VAE_STEPS = 100
EBST_STEPS = 100
L1_FACTOR = 3.0  # issue 7 acceptance check
VAL_BATCH = 8
# dmn_tiny with a full-resolution AdaIN bottleneck (num_downsample 0: no instance norm after the
# style acts), a wider style encoder, L1-dominated G loss and a lr that decays over the run.
GENERATOR = {"num_downsample": 0, "base_channels": 16, "encoder_base_channels": 8}
DMN_OVERRIDES = {
    "generator": GENERATOR,
    "losses": {"reconstruction_l1_weight": 100.0},
    "optimizer": {"lr": 2e-3, "constant_steps": 100, "decay_steps": DMN_STEPS - 100},
    "loop": {"batch_size": 8, "max_steps": DMN_STEPS},
}
EBST_OVERRIDES = {
    "generator": GENERATOR,
    "losses": {"reconstruction_l1_weight": 100.0},
    "loop": {"batch_size": 8, "max_steps": EBST_STEPS},
}


@pytest.fixture(scope="session")
def learning_parquet(tmp_path_factory, ray_session) -> str:
    """A bigger synthetic set than tiny_parquet, made by the preprocessing job (~30 s): enough faces
    that the generator cannot get under the style-blind floor by memorising faces through their masks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))
    from preprocess_helpers import tiny_config, write_raw

    from maskgan.data.preprocess import run

    root = tmp_path_factory.mktemp("learning-data")
    write_raw(str(root / "raw"), num_images=NUM_IMAGES)
    run(dataclasses.replace(tiny_config(str(root / "raw"), str(root / "parquet")), image_encoding="png"))
    return str(root / "parquet")


@functools.cache
def split_in_id_order(uri: str, split: str) -> dict[str, torch.Tensor]:
    """A whole (small) split in memory, rows sorted by id: independent of how Ray sharded it."""
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
    """Metrics over the WHOLE val split, in id order, batches of VAL_BATCH."""
    rows = split_in_id_order(uri, "val")
    size = len(rows["id"])
    batches = ({key: value[start : start + VAL_BATCH] for key, value in rows.items()}
               for start in range(0, size, VAL_BATCH))  # fmt: skip
    return validate(stage, batches, -(-size // VAL_BATCH))


def train(stage, config, uri: str) -> None:
    """run_loop on the train split in id order, shuffled per epoch (the loader's shard order varies)."""
    loop = config.loop
    run_loop(
        stage, epochs(split_in_id_order(uri, "train"), loop.batch_size, loop.seed), loop=loop, start_step=0
    )


@pytest.fixture(scope="session")
def dmn_run(learning_parquet):
    """(untrained val metrics, trained stage): the same config, freshly initialised vs trained."""
    config = config_lib.merge(dmn.dmn_tiny(), DMN_OVERRIDES)
    with one_thread():
        stage = dmn.build(config, "cpu")
        before = val_metrics(stage, learning_parquet)
        train(stage, config, learning_parquet)
    print(f"DMN val before {before}, after {val_metrics(stage, learning_parquet)}")  # shown with -s
    return before, stage


def test_dmn_reconstruction_l1_on_val_falls_3x(dmn_run, learning_parquet):
    """Issue 7: val L1 of the trained DMN <= 1/3 of the untrained one's (same config, fresh init)."""
    before, stage = dmn_run
    after = val_metrics(stage, learning_parquet)
    assert after["val/l1"] * L1_FACTOR <= before["val/l1"], (before, after)


def test_dmn_uses_its_style_reference(dmn_run, learning_parquet):
    """Val mean abs(G(M, M', I') - G(M, M, I)): a trained DMN follows its reference; an untrained, barely."""
    before, stage = dmn_run
    after = val_metrics(stage, learning_parquet)
    assert after["val/style_change"] >= max(5 * before["val/style_change"], 0.05), (before, after)


@pytest.fixture(scope="session")
def ebst_run(dmn_run, learning_parquet):
    """(val metrics at the start of EBST, after EBST_STEPS steps): DMN-stage G and D, fresh blender."""
    _, dmn_stage = dmn_run
    vae_config = config_lib.merge(mask_vae.mask_vae_tiny(), {"data": {"uri": learning_parquet}})
    config = config_lib.merge(ebst.ebst_tiny(), EBST_OVERRIDES)
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
        before = val_metrics(stage, learning_parquet)
        train(stage, config, learning_parquet)
        after = val_metrics(stage, learning_parquet)
    print(f"EBST val before {before}, after {after}")  # shown with -s
    return before, after


def test_ebst_blend_beats_its_edited_renders_and_keeps_the_reconstruction(ebst_run):
    before, after = ebst_run
    numbers = {key: (round(before[key], 4), round(after[key], 4)) for key in before}
    assert after["val/blend_l1"] < after["val/edit_l1"], numbers
    assert after["val/l1"] < 1.1 * before["val/l1"], numbers


def test_ebst_brings_the_blend_of_edited_renders_closer_to_the_real_image(ebst_run):
    """Issue 7: after EBST the blend is closer to the real image (val L1) than at the start of EBST."""
    before, after = ebst_run
    numbers = {key: (round(before[key], 4), round(after[key], 4)) for key in before}
    assert after["val/blend_l1"] < before["val/blend_l1"], numbers
