"""Fixtures of the training tests: one tiny synthetic dataset made by the preprocessing job, per session."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

NUM_IMAGES = 96  # 32 px: ~77 train, ~10 val, ~9 test rows


@pytest.fixture(scope="session")
def tiny_parquet(tmp_path_factory, ray_session) -> str:
    """URI of a preprocessed synthetic CelebAMask-HQ (32 px) made once per session with the real job."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))
    from preprocess_helpers import tiny_config, write_raw

    from maskgan.data.preprocess import run

    root = tmp_path_factory.mktemp("training-data")
    write_raw(str(root / "raw"), num_images=NUM_IMAGES)
    config = dataclasses.replace(tiny_config(str(root / "raw"), str(root / "parquet")), image_encoding="png")
    run(config)
    return str(root / "parquet")


# -- trained tiny models of the parser / evaluation tests (each trained once per session, train_local)


def _train_tiny(tmp_path_factory, data_uri: str, module_name: str, preset: str, steps: int):
    import importlib

    from maskgan import config as config_lib
    from maskgan.training.local import train_local

    module = importlib.import_module(f"maskgan.training.{module_name}")
    config = config_lib.merge(
        module.PRESETS[preset](),
        {"data": {"uri": data_uri}, "loop": {"max_steps": steps, "checkpoint_every": steps}},
    )
    folder = tmp_path_factory.mktemp(f"{module_name}-{steps}")
    return train_local(config, checkpoint_dir=str(folder))


@pytest.fixture(scope="session")
def trained_parser(tmp_path_factory, tiny_parquet):
    """The tiny parser after 300 steps: LocalResult (.checkpoints[-1], .result.val_metrics)."""
    return _train_tiny(tmp_path_factory, tiny_parquet, "parser", "parser_tiny", 300)


@pytest.fixture(scope="session")
def trained_dmn(tmp_path_factory, tiny_parquet) -> str:
    """Checkpoint URI of the tiny DMN after 300 steps."""
    return _train_tiny(tmp_path_factory, tiny_parquet, "dmn", "dmn_tiny", 300).checkpoints[-1]


@pytest.fixture(scope="session")
def untrained_dmn(tmp_path_factory, tiny_parquet) -> str:
    """Checkpoint URI of the tiny DMN as initialised (step 0)."""
    from maskgan import config as config_lib
    from maskgan.training import dmn
    from maskgan.training.local import build_stage, save_stage_checkpoint

    config = config_lib.merge(dmn.dmn_tiny(), {"data": {"uri": tiny_parquet}})
    folder = tmp_path_factory.mktemp("dmn-untrained") / "step_00000000"
    return save_stage_checkpoint(build_stage(config), config, str(folder), 0)


@pytest.fixture(scope="session")
def trained_mask_vae(tmp_path_factory, tiny_parquet) -> str:
    """Checkpoint URI of the tiny MaskVAE after 200 steps (the edit simulator of evaluation)."""
    return _train_tiny(tmp_path_factory, tiny_parquet, "mask_vae", "mask_vae_tiny", 200).checkpoints[-1]
