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
