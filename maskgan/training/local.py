"""Single-process training without Ray: `train_local` for tests, debugging and quick experiments.

Data order is a function of (seed, epoch) only: epoch e reads the train split shuffled with seed
loop.seed + e, dropping the last partial batch; a resumed run skips the batches already consumed.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from maskgan import config as config_lib
from maskgan import storage
from maskgan.data import loader, schema
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


class EpochBatches:
    """Endless full batches of data.split, epoch after epoch; the first start_step batches are skipped.

    `epoch` is the epoch of the batch last handed out.
    """

    def __init__(
        self, data: DataConfig, batch_size: int, *, seed: int, start_step: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        if data.flip:
            raise ValueError("data.flip is not supported by train_local; set data.flip=false")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.start_step = start_step
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        data, skip = self.data, self.start_step
        while True:
            count = 0
            for batch in loader.iter_batches(
                data.uri, data.split, self.batch_size, shuffle=data.shuffle, seed=self.seed + self.epoch,
                drop_last=True, device=self.device, storage_config=data.storage,
            ):  # fmt: skip
                count += 1
                if skip:
                    skip -= 1
                    continue
                yield batch
            if count == 0:
                raise ValueError(
                    f"split {data.split!r} of {data.uri} has fewer rows than one batch ({self.batch_size})"
                )
            self.epoch += 1


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
    upstream: dict[str, str]  # network -> checkpoint URI it was loaded from (EBST)


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
    upstream: dict[str, str] = {}
    if stage is None:
        stage = build_stage(stage_config, device)
        if start_step == 0:  # EBST: DMN and MaskVAE weights from the configured checkpoints
            upstream = stage.load_upstream(stage_config.data.storage)
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

    manifest = manifest_checksum(stage_config.data) if checkpoint_dir is not None else None

    def on_checkpoint(step: int) -> None:
        if checkpoint_dir is not None:
            directory = f"{checkpoint_dir}/step_{step:08d}"
            save_stage_checkpoint(
                stage, stage_config, directory, step, epoch=batches.epoch, manifest_sha256=manifest
            )
            written.append(directory)
        extra.on_checkpoint(step)

    batches = EpochBatches(
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
    return LocalResult(stage, result, written, upstream)


def save_stage_checkpoint(
    stage: Stage, stage_config: Any, directory: str, step: int, *, epoch: int = 0,
    manifest_sha256: str | None = None,
) -> str:  # fmt: skip
    """Write stage state + per-network weights + meta through maskgan.training.checkpoint."""
    from maskgan.training import checkpoint

    meta = {
        "stage": stage.name,
        "step": step,
        "epoch": epoch,
        "config": config_lib.to_dict(stage_config),
        "manifest_sha256": manifest_sha256,
    }
    weights = {name: network.state_dict() for name, network in stage.networks().items()}
    state = {"stage_state": stage.state_dict(), "step": step, "epoch": epoch, "rng": checkpoint.rng_state()}
    checkpoint.write_checkpoint(directory, state, weights=weights, meta=meta)
    return directory


def resume_local(
    stage_config: Any, checkpoint_uri: str, device: torch.device | str = "cpu"
) -> tuple[Stage, int]:
    """(stage restored from a train_local checkpoint, its step): continue with train_local(start_step=)."""
    from maskgan.training import checkpoint

    state, meta = checkpoint.load_checkpoint_uri(checkpoint_uri)
    stage = build_stage(stage_config, device)
    stage.load_state_dict(state["stage_state"])
    checkpoint.set_rng_state(state["rng"])
    return stage, int(meta["step"])


def manifest_checksum(data: DataConfig) -> str:
    """sha256 of the dataset's manifest.json (what a checkpoint was trained on)."""
    location = storage.resolve(data.uri, data.storage).join(schema.MANIFEST_NAME)
    return hashlib.sha256(storage.read_bytes(location)).hexdigest()
