"""Tracking helpers without a server: URI resolution, param flattening, the image grid, git commit."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from maskgan import tracking
from maskgan.labels import COLORS
from maskgan.tracking import (
    Tracker,
    TrackingConfig,
    flatten_params,
    git_commit,
    image_grid,
    redact,
    resolve_tracking_uri,
)


def test_default_tracking_uri_is_an_absolute_sqlite_file_of_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri(None).startswith("sqlite:////")  # four slashes: an absolute path
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    # The driver resolves once; workers with another cwd get the same file.
    resolved = TrackingConfig(experiment="e").resolved()
    assert resolved.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and resolved.experiment == "e"


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "./mlruns", "/tmp/mlruns"])
def test_file_stores_are_refused(uri):
    with pytest.raises(ValueError, match="file store, which MLflow 3 no longer supports"):
        resolve_tracking_uri(uri)
    with pytest.raises(ValueError, match="file store"):
        TrackingConfig(tracking_uri=uri)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="tracking.experiment"):
        TrackingConfig(experiment="")
    with pytest.raises(ValueError, match="tracking.artifact_location"):
        TrackingConfig(artifact_location="bucket/mlflow")


def test_redact_drops_credentials_only():
    assert redact("https://user:secret@mlflow.example:443/x") == "https://mlflow.example:443/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_flatten_params_gives_dotted_string_values():
    params = {"loop": {"max_steps": 10, "grad_clip": None}, "widths": (1, 2), "name": "x" * 7000}
    flat = flatten_params(params)
    assert flat["loop.max_steps"] == "10" and flat["loop.grad_clip"] == "None"
    assert flat["widths"] == "(1, 2)"
    assert len(flat["name"]) == 6000 and flat["name"].endswith("...")  # MLflow's limit, cut the same way


def test_disabled_tracker_does_nothing():
    tracker = Tracker.disabled()
    assert tracker.run_id is None and not tracker.enabled
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.set_tags({"a": "b"})
    assert tracker.log_image(image_grid({"x": torch.zeros(1, 3, 8, 8)}), "grid", step=1) == ""
    with pytest.raises(ValueError, match="plain stem such as 'grid'"):  # checked even when disabled
        tracker.log_image(image_grid({"x": torch.zeros(1, 3, 8, 8)}), "images/step_10.png", step=10)
    tracker.finish()
    off = Tracker.start(TrackingConfig(enabled=False), run_key="k", stage="dmn", params={}, tags={})
    assert off.run_id is None and not off.enabled


def test_git_commit_is_this_checkout():
    commit = git_commit()
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)


def test_git_commit_of_an_installed_copy_inside_another_repository_is_none(tmp_path, monkeypatch):
    # e.g. a non-editable install in a venv that lives inside some checkout: that checkout's HEAD is wrong.
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "other"], check=True)
    copy = tmp_path / "venv" / "site-packages" / "maskgan" / "tracking.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(tracking.__file__, copy)
    spec = importlib.util.spec_from_file_location("copied_tracking", copy)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "copied_tracking", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.git_commit() is None


def cell(grid: np.ndarray, column: int, row: int, size: int, gap: int = 4, header: int = 22) -> np.ndarray:
    left, top = gap + column * (size + gap), header + row * (size + gap)
    return grid[top : top + size, left : left + size]


def test_image_grid_layout_colours_and_ranges(tmp_path):
    batch, size = 3, 32
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, :, 16:] = 13  # hair on the right half
    image = torch.full((batch, 3, size, size), -1.0)
    image[1] = 1.0  # second sample white
    alpha = torch.full((batch, 3, size, size), 0.5)
    onehot = torch.nn.functional.one_hot(labels, 19).permute(0, 3, 1, 2).float()
    grid_image = image_grid({"mask": labels, "image": image, "alpha": alpha, "onehot": onehot}, max_rows=2)
    grid_image.save(tmp_path / "grid.png")
    grid = np.asarray(grid_image)
    scale = 3  # 32 px cells enlarged to 96 so the header text fits
    cell_size = size * scale
    assert grid.shape == (22 + 2 * (cell_size + 4) + 4, 4 * (cell_size + 4) + 4, 3)  # 2 rows, 4 columns

    mask_cell = cell(grid, 0, 0, cell_size)
    assert (mask_cell[:, : cell_size // 2] == COLORS[0]).all()
    assert (mask_cell[:, cell_size // 2 :] == COLORS[13]).all()
    assert (cell(grid, 1, 0, cell_size) == 0).all()  # -1 -> black
    assert (cell(grid, 1, 1, cell_size) == 255).all()  # +1 -> white
    assert (cell(grid, 2, 0, cell_size) == 128).all()  # alpha 0.5 read as [0, 1], not [-1, 1]
    assert np.array_equal(cell(grid, 3, 1, cell_size), mask_cell)  # one-hot coloured like the ids
    header = grid[:22]
    assert (header < 128).any(), "the header row holds the column names"


def test_image_grid_scales_columns_of_other_sizes():
    grid = image_grid({"big": torch.zeros(1, 3, 64, 64), "small": torch.ones(1, 1, 16, 16)}, min_cell=32)
    assert grid.size == (4 + 2 * (64 + 4), 22 + 64 + 4 + 4)
    assert (np.asarray(grid)[22 : 22 + 64, 4 + 68 : 4 + 68 + 64] == 255).all()  # the 16-px map fills its cell


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (torch.full((1, 8, 8), 19), "class ids outside 0..18"),
        (torch.zeros(1, 2, 8, 8), "2 channels"),
        (torch.zeros(8, 8), "expected \\(B, H, W\\) class ids"),
    ],
)
def test_image_grid_refuses_what_it_cannot_draw(column, message):
    with pytest.raises(ValueError, match=message):
        image_grid({"bad": column})
