"""Single-process training without Ray: `train_local` for tests, debugging and quick experiments.

Data order is a function of (seed, epoch) only: epoch e reads the train split shuffled with seed
loop.seed + e, dropping the last partial batch; a resumed run skips the batches already consumed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from maskgan import config as config_lib
from maskgan.data import loader
from maskgan.training.loop import DataConfig, LoopHooks, LoopResult, Stage, run_loop

# Stage config class name -> module exposing build(config, device) and PRESETS.
STAGE_MODULES = {
    "MaskVAETrainConfig": "maskgan.training.mask_vae",
    "DMNTrainConfig": "maskgan.training.dmn",
    "EBSTTrainConfig": "maskgan.training.ebst",
    "ParserTrainConfig": "maskgan.training.parser",
}


def build_stage(config: Any, device: torch.device | str = "cpu", *, rank: int = 0) -> Stage:
    """The Stage a stage config describes (dispatch on the config's class)."""
    name = type(config).__name__
    if name not in STAGE_MODULES:
        raise ValueError(f"no training stage for a {name}; expected one of {', '.join(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[name]).build(config, device, rank=rank)


def epoch_batches(
    data: DataConfig, batch_size: int, *, seed: int, start_step: int = 0, device: torch.device | str = "cpu"
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless full batches of data.split, epoch after epoch; the first start_step batches are skipped."""
    if data.flip:
        raise ValueError("data.flip is not supported by train_local; set data.flip=false")
    epoch, skip = 0, start_step
    while True:
        count = 0
        for batch in loader.iter_batches(
            data.uri, data.split, batch_size, shuffle=data.shuffle, seed=seed + epoch, drop_last=True,
            device=device, storage_config=data.storage,
        ):  # fmt: skip
            count += 1
            if skip:
                skip -= 1
                continue
            yield batch
        if count == 0:
            raise ValueError(
                f"split {data.split!r} of {data.uri} has fewer rows than one batch ({batch_size})"
            )
        epoch += 1


def val_batch_source(data: DataConfig, batch_size: int, device: torch.device | str = "cpu") -> Callable:
    """A callable returning a fresh, unshuffled iterator over data.val_split."""
    return lambda: loader.iter_batches(
        data.uri, data.val_split, batch_size, device=device, storage_config=data.storage
    )


@dataclass(frozen=True)
class LocalResult:
    stage: Stage
    result: LoopResult
    checkpoints: list[str]  # directories written, oldest first


def train_local(
    stage_config: Any,
    *,
    checkpoint_dir: str | None = None,
    tracker=None,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    stage: Stage | None = None,
    start_step: int = 0,
    hooks: LoopHooks | None = None,
) -> LocalResult:
    """Train one stage in this process on data.split, validating on data.val_split.

    checkpoint_dir: where `step_<n>` checkpoint directories go (None = no checkpoints).
    tracker: a maskgan.tracking.Tracker (or anything with log_metrics / log_image), or None.
    stage: an already built stage to continue (e.g. one whose weights a test set), else one is built.
    hooks: extra callbacks run after the tracker's / checkpoint's.
    """
    if max_steps is not None:
        stage_config = config_lib.merge(stage_config, {"loop": {"max_steps": max_steps}})
    loop = stage_config.loop
    stage = stage or build_stage(stage_config, device)
    written: list[str] = []
    extra = hooks or LoopHooks()

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics(metrics, step=step)
        extra.on_metrics(step, metrics)

    def on_images(step: int, columns: dict[str, torch.Tensor]) -> None:
        if tracker is not None:
            from maskgan.tracking import image_grid

            tracker.log_image(image_grid(columns), "grid", step=step)
        extra.on_images(step, columns)

    def on_checkpoint(step: int) -> None:
        if checkpoint_dir is not None:
            written.append(
                save_stage_checkpoint(stage, stage_config, f"{checkpoint_dir}/step_{step:08d}", step)
            )
        extra.on_checkpoint(step)

    batches = epoch_batches(
        stage_config.data, loop.batch_size, seed=loop.seed, start_step=start_step, device=device
    )
    result = run_loop(
        stage,
        batches,
        loop=loop,
        start_step=start_step,
        hooks=LoopHooks(on_metrics=on_metrics, on_images=on_images, on_checkpoint=on_checkpoint),
        val_batches=val_batch_source(stage_config.data, loop.batch_size, device),
    )
    return LocalResult(stage, result, written)


def save_stage_checkpoint(stage: Stage, stage_config: Any, directory: str, step: int) -> str:
    """Write stage state + per-network weights + meta through maskgan.training.checkpoint."""
    from maskgan.training import checkpoint

    meta = {
        "stage": stage.name,
        "step": step,
        "epoch": None,  # train_local does not count epochs; write_checkpoint requires the key
        "config": config_lib.to_dict(stage_config),
        "manifest_sha256": None,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    weights = {name: network.state_dict() for name, network in stage.networks().items()}
    state = {"stage_state": stage.state_dict(), "step": step, "rng": checkpoint.rng_state()}
    checkpoint.write_checkpoint(directory, state, weights=weights, meta=meta)
    return directory
