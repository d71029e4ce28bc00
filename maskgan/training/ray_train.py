"""The only Ray Train glue: one TorchTrainer per stage, DDP per network, rank 0 checkpoints and logs.

A run is named `<stage>-<run_key>` under the storage URI (local path or s3://bucket/prefix). Starting
it again with the same name and storage resumes it: Ray Train hands every worker the latest
registered checkpoint (`ray.train.get_checkpoint()`), which continues at step k+1 in the same MLflow
run (found by its run key). A run whose `result.json` says it reached `max_steps` is not started again.

Data order is a function of (seed, epoch, world size) only: the train split is streamed to the
workers by an order-preserving equal split, and each epoch is shuffled locally with a seed made of
(seed, epoch). Every epoch therefore has the same number of steps, and step s reads batch
`s % steps_per_epoch` of epoch `s // steps_per_epoch`; a resumed run re-reads its current epoch and
skips the batches already consumed, so it sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from maskgan import config as config_lib
from maskgan import storage
from maskgan.storage import StorageConfig
from maskgan.tracking import TrackingConfig

logger = logging.getLogger(__name__)

# Stage config class name -> (stage name, module); the module exposes build(config, device) and PRESETS.
STAGES: dict[str, tuple[str, str]] = {
    "MaskVAETrainConfig": ("maskvae", "maskgan.training.mask_vae"),
    "DMNTrainConfig": ("dmn", "maskgan.training.dmn"),
    "EBSTTrainConfig": ("ebst", "maskgan.training.ebst"),
    "ParserTrainConfig": ("parser", "maskgan.training.parser"),
}
RESULT_FILE = "result.json"
STOPPED_FILE = "stopped.json"  # written by rank 0 when a non-finite loss stopped the run
CHECKPOINT_PREFIX = "checkpoint_"
# Fields that may change between a run and its resumption without making it another run.
_NOT_IN_RUN_KEY = ("loop.max_steps", "loop.fail_at_step", "loop.log_every", "loop.image_every")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True, kw_only=True)
class RayTrainConfig:
    """How a stage runs on Ray Train: workers, resources, storage, run identity, failures, tracking."""

    num_workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # only with use_gpu
    # Small on purpose: on a 2-core machine two workers at 0.5 leave Ray Data a whole core to decode.
    cpus_per_worker: float = 0.5
    storage_uri: str = "runs/train"  # local path or s3://bucket/prefix; runs live at <storage_uri>/<run name>
    storage: StorageConfig = field(default_factory=StorageConfig)
    run_key: str | None = None  # None -> a fingerprint of the stage config (so a resubmitted job resumes)
    num_to_keep: int | None = 2
    max_failures: int = 0
    placement_strategy: str = "PACK"
    shuffle_buffer_rows: int | None = None  # local shuffle rows per worker; None = 4 x batch, 0 = off
    # CPUs each Ray Data decode task asks for. A task must fit on one node beside the train workers:
    # on a node with 1 CPU and a 0.5-CPU worker, 1.0 would never be scheduled (training hangs).
    data_cpus: float = 1.0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker must be positive with use_gpu, got {self.gpus_per_worker}")
        if not self.storage_uri:
            raise ValueError("storage_uri is empty; give a local path or s3://bucket/prefix")
        if self.run_key is not None and not _is_slug(self.run_key):
            raise ValueError(f"run_key must be letters, digits, '-', '_' or '.', got {self.run_key!r}")
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ValueError(f"num_to_keep must be None or at least 1, got {self.num_to_keep}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be -1 (unlimited) or >= 0, got {self.max_failures}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}"
            )
        if self.data_cpus <= 0:
            raise ValueError(f"data_cpus must be positive, got {self.data_cpus}")
        if self.shuffle_buffer_rows is not None and self.shuffle_buffer_rows < 0:
            raise ValueError(f"shuffle_buffer_rows must be >= 0, got {self.shuffle_buffer_rows}")


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already finished) run left behind."""

    stage: str
    run_name: str
    run_key: str
    run_uri: str  # <storage_uri>/<run_name>: Ray Train's experiment folder
    checkpoint_uri: str | None  # the final checkpoint (a directory: state.pt, weights/, meta.json)
    mlflow_run_id: str | None
    step: int
    metrics: dict[str, Any]
    resumed_from_step: int | None = None  # the step a resumed run started after; None = fresh
    already_finished: bool = False  # nothing was trained: the run had reached max_steps before

    def summary(self) -> str:
        state = "already finished" if self.already_finished else "trained"
        resumed = f", resumed after step {self.resumed_from_step}" if self.resumed_from_step else ""
        return (
            f"{self.stage} run {self.run_name}: {state} to step {self.step}{resumed}\n"
            f"  checkpoint: {self.checkpoint_uri}\n  mlflow run: {self.mlflow_run_id}"
        )


class NonFiniteLossRunError(RuntimeError):
    """The run stopped on a NaN/inf loss; no checkpoint of the broken weights was written."""


class UpstreamError(ValueError):
    """An upstream checkpoint reference (URI or MLflow run) cannot be resolved."""


class DatasetError(ValueError):
    """The dataset cannot be trained on (no manifest, another schema version, too few rows)."""


def _is_slug(text: str) -> bool:
    return bool(text) and all(ch.isalnum() or ch in "-_." for ch in text)


def stage_of(stage_config: Any) -> tuple[str, str]:
    """(stage name, module name) for a stage config instance."""
    name = type(stage_config).__name__
    if name not in STAGES:
        raise ValueError(f"unknown stage config {name}; expected one of {', '.join(STAGES)}")
    return STAGES[name]


def derive_run_key(stage_config: Any) -> str:
    """A stable key from the stage config, blind to fields that only say how far or how loud to run."""
    data = config_lib.to_dict(stage_config)
    for dotted in _NOT_IN_RUN_KEY:
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_name(stage_config: Any, ray_config: RayTrainConfig) -> tuple[str, str]:
    """(run name, run key): `<stage>-<run_key>`, the Ray Train experiment folder and MLflow run identity."""
    stage, _ = stage_of(stage_config)
    key = ray_config.run_key or derive_run_key(stage_config)
    return f"{stage}-{key}", key


def resolve_checkpoint_ref(ref: str, tracking_config: TrackingConfig) -> tuple[str, str]:
    """A checkpoint URI or `mlflow:<run id>` -> (checkpoint URI, how it was found)."""
    if not ref.startswith(("mlflow:", "runs:/")):
        return ref, "given checkpoint URI"
    run_id = ref.removeprefix("mlflow:").removeprefix("runs:/").strip("/").split("/")[0]
    import mlflow
    from mlflow.exceptions import MlflowException

    from maskgan import tracking

    client = mlflow.MlflowClient(tracking.resolve_tracking_uri(tracking_config.tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise UpstreamError(f"MLflow run {run_id!r} not found: {str(error).splitlines()[0]}") from None
    uri = run.data.tags.get("maskgan.checkpoint_uri")
    if not uri:
        raise UpstreamError(f"MLflow run {run_id} has no maskgan.checkpoint_uri tag: it never checkpointed")
    return uri, f"MLflow run {run_id} ({run.data.tags.get('maskgan.stage', '?')}, status {run.info.status})"


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DatasetInfo:
    uri: str
    manifest_sha256: str
    train_rows: int
    val_rows: int
    resolution: int


def check_dataset(data_config: Any) -> DatasetInfo:
    """Refuse a dataset without a manifest or with another schema version, naming the dataset and both."""
    from maskgan.data import schema

    location = storage.resolve(data_config.uri, data_config.storage).join(schema.MANIFEST_NAME)
    if not storage.exists(location):
        raise DatasetError(
            f"dataset {data_config.uri} has no {schema.MANIFEST_NAME} (looked at {location.uri}): "
            "preprocessing has not finished there; run `python pipelines/preprocess.py` first"
        )
    raw = storage.read_bytes(location)
    try:
        manifest = schema.Manifest.from_json(raw.decode())
    except ValueError as error:
        raise DatasetError(f"dataset {data_config.uri}: {error}") from None
    rows = {split: sum(s.num_rows for s in manifest.shards_of(split)) for split in ("train", "val")}
    return DatasetInfo(
        uri=data_config.uri,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        train_rows=rows[data_config.split],
        val_rows=rows.get(data_config.val_split, 0),
        resolution=manifest.resolution,
    )


def _build_datasets(
    data_config: Any, *, seed: int, start_epoch: int, decode_cpus: float = 1.0
) -> dict[str, Any]:
    """Ray Datasets of decoded rows: train (split across workers; its first execution is epoch
    start_epoch) and val (whole, per worker, manifest order, no flip)."""
    from maskgan.data import loader

    train = loader.ray_dataset(
        data_config.uri, data_config.split, data_config.storage,
        flip=data_config.flip, seed=seed, shuffle=data_config.shuffle, start_epoch=start_epoch,
        decode_cpus=decode_cpus,
    )  # fmt: skip
    datasets = {"train": train}
    try:
        datasets["val"] = loader.ray_dataset(
            data_config.uri, data_config.val_split, data_config.storage, shuffle=False,
            decode_cpus=decode_cpus,
        )  # fmt: skip
    except ValueError:
        pass  # an empty val split: the loop runs without validation
    for dataset in datasets.values():
        # Per-epoch progress bars from every worker would drown the training log.
        dataset.context.enable_progress_bars = False
    return datasets


def steps_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    """An equal split gives each worker floor(rows / world) rows; batches drop the remainder."""
    return (train_rows // world_size) // batch_size


def latest_checkpoint_step(run_uri: str, storage_config: StorageConfig | None = None) -> int:
    """The step of the newest complete checkpoint (with meta.json) under a run folder; 0 if none."""
    from maskgan.training import checkpoint as ckpt

    location = storage.resolve(run_uri, storage_config)
    steps = set()
    for info in storage.list_files(location, recursive=True):
        parent, name = os.path.split(info.path)
        folder = os.path.basename(parent)
        if name == ckpt.META_FILE and folder.startswith(CHECKPOINT_PREFIX):
            steps.add(int(folder.removeprefix(CHECKPOINT_PREFIX)))
    return max(steps, default=0)


def train_batches(
    shard: Any,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    per_epoch: int,
    shuffle_rows: int | None,
    device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches for steps start_step+1, ...: epoch e is a pure function of (seed, e); the
    batches of the current epoch consumed before start_step are read again and skipped."""
    from maskgan.data import loader

    epoch, skip = divmod(start_step, per_epoch)
    while True:
        count = 0
        for batch in loader.train_batches(
            shard, batch_size, device=device, seed=seed, epoch=epoch, shuffle_buffer=shuffle_rows
        ):
            count += 1
            if count > per_epoch:
                break  # every worker runs the same number of steps per epoch
            if count <= skip:
                continue
            yield batch
        if count < per_epoch:
            raise RuntimeError(f"epoch {epoch} gave {count} batches, expected {per_epoch}")
        epoch, skip = epoch + 1, 0


def val_batches_fn(shard: Any, *, batch_size: int, num_batches: int, device) -> Callable[[], Iterator]:
    """The first num_batches val batches, read once and kept: every validation scores the same
    samples, and a Ray Data execution per validation would cost more than the validation itself."""
    from maskgan.data import loader

    cache: list[dict[str, Any]] = []

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        if not cache:
            for index, batch in enumerate(shard.iter_torch_batches(batch_size=batch_size, device="cpu")):
                if index >= num_batches:
                    break
                cache.append(batch)
        for batch in cache:
            yield loader.to_torch(batch, device)

    return batches


# ------------------------------------------------------------------------------------ distributed


def wrap_for_ddp(module: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """DDP around one network (each trained network is wrapped separately); a no-op for one worker.

    BatchNorm -> SyncBatchNorm is the stage's business (MaskVAEStage.wrap converts on CUDA; torch's
    SyncBatchNorm has no CPU kernel, so on CPU each worker normalises with its own batch statistics).
    """
    if world_size <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # broadcast_buffers=False: a buffer broadcast inside forward would make any forward that runs on
    # one rank only a hang; SyncBatchNorm (CUDA) keeps running statistics equal on every rank anyway.
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def _all_gather(value: Any, world_size: int) -> list[Any]:
    if world_size <= 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size <= 1:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class _RankSyncedStage:
    """Delegates to a Stage. After each step all ranks agree whether any rank saw a non-finite value,
    so run_loop stops on every rank at the same step (one rank stopping alone would leave the others
    waiting in a collective). Also kills one worker once, for LoopConfig.fail_at_step (test only)."""

    def __init__(
        self, stage: Any, world_size: int, device: torch.device, fail_at_step: int | None, fail_marker=None
    ):
        self._stage, self._world_size, self._device = stage, world_size, device
        self._fail_at_step, self._fail_marker = fail_at_step, fail_marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stage, name)

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        if step == self._fail_at_step and not storage.exists(self._fail_marker):
            # A real crash of the last rank (no exception, no cleanup): Ray Train must notice the dead
            # worker, tear the group down and restart it from the last checkpoint. Once per run (the
            # marker); the wait lets the controller's 2 s poll register the last report first (a
            # report still unpolled when its worker dies is lost with it).
            storage.write_bytes(self._fail_marker, b"injected")
            logger.warning("loop.fail_at_step=%d: worker exits in 10 s (test only)", step)
            time.sleep(10)
            os._exit(3)
        metrics = self._stage.step(batch, step)
        scaler_on = self._stage.scaler.is_enabled()
        local_bad = any(
            not math.isfinite(value) and not (scaler_on and name.startswith("grad_norm/"))
            for name, value in metrics.items()
        )
        if _any_rank(local_bad, self._world_size, self._device) and not local_bad:
            # Another rank went non-finite: say so here too, so run_loop raises on every rank.
            metrics = {**metrics, "loss/on_another_rank": float("nan")}
        return metrics


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- worker


def _worker(payload: dict[str, Any]) -> None:
    """The Ray Train worker function (every rank runs it)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from maskgan import tracking
    from maskgan.training import checkpoint as ckpt
    from maskgan.training import loop as loop_lib

    stage_config = payload["stage_config"]
    ray_config: RayTrainConfig = payload["ray_config"]
    loop_config = stage_config.loop
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, round(ray_config.cpus_per_worker)))
    seed_everything(loop_config.seed + rank)

    _, module_name = stage_of(stage_config)
    stage_module = __import__(module_name, fromlist=["build"])
    stage = stage_module.build(stage_config, device, rank=rank)
    upstream = stage.load_upstream(stage_config.data.storage) if hasattr(stage, "load_upstream") else {}

    start_step, resumed_from, state = 0, None, None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            state, meta = ckpt.read_checkpoint(directory)
    state = _newer_run_folder_state(payload, ray_config.storage, after=state) or state
    if state is not None:
        stage.load_state_dict(state["stage"])
        start_step = resumed_from = int(state["step"])
        rng_states = state.get("rng") or []
        if len(rng_states) == world_size:
            ckpt.set_rng_state(rng_states[rank])
        else:  # another world size: a fresh, still deterministic stream per rank
            seed_everything(loop_config.seed + rank + 7919 * start_step)
        if start_step // payload["steps_per_epoch"] != payload["start_epoch"]:
            # The driver saw another newest checkpoint than Ray Train handed us (a crash between upload
            # and registration): training goes on, but this epoch's order differs from an uninterrupted run.
            logger.warning(
                "resumed at step %d but the data starts at epoch %d", start_step, payload["start_epoch"]
            )
    stage.wrap(lambda module: wrap_for_ddp(module, device, world_size))

    per_epoch = payload["steps_per_epoch"]
    batches = train_batches(
        ray.train.get_dataset_shard("train"),
        batch_size=loop_config.batch_size,
        seed=loop_config.seed,
        start_step=start_step,
        per_epoch=per_epoch,
        shuffle_rows=ray_config.shuffle_buffer_rows,
        device=device,
    )
    val_shard = ray.train.get_dataset_shard("val") if payload["has_val"] else None
    val = (
        val_batches_fn(
            val_shard, batch_size=loop_config.batch_size, num_batches=loop_config.val_batches, device=device
        )
        if val_shard is not None and loop_config.val_batches > 0
        else None
    )

    tracker = tracking.Tracker.disabled()
    if rank == 0 and ray_config.tracking.enabled:
        tracker = tracking.Tracker.start(
            dataclasses.replace(ray_config.tracking, tracking_uri=payload["tracking_uri"]),
            run_key=payload["run_key"],
            stage=payload["stage"],
            params=payload["params"],
            tags={**payload["tags"], **{f"maskgan.upstream.{k}": str(v) for k, v in upstream.items()}},
            storage=ray_config.storage,
            allow_changed=_NOT_IN_RUN_KEY,  # a resumed run may be asked to train further
        )
    hooks = _Hooks(
        stage=stage,
        tracker=tracker,
        rank=rank,
        world_size=world_size,
        payload=payload,
        per_epoch=per_epoch,
        write_checkpoint=ckpt.write_checkpoint,
        rng_state=ckpt.rng_state,
        report=ray.train.report,
        checkpoint_cls=Checkpoint,
    )
    hooks.last_step = start_step
    hooks.resumed_from = resumed_from
    # fail_at_step (test only): the last rank dies once per run, instead of every rank raising.
    fail_at = loop_config.fail_at_step if rank == world_size - 1 else None
    marker = storage.resolve(payload["run_uri"], ray_config.storage).join(".fail_injected")
    synced = _RankSyncedStage(stage, world_size, device, fail_at, marker)
    loop_config = dataclasses.replace(loop_config, fail_at_step=None)
    try:
        loop_lib.run_loop(
            synced, batches, loop=loop_config, start_step=start_step, hooks=hooks, val_batches=val
        )
    except loop_lib.NonFiniteLossError as error:
        # Every rank gets here at the same step (see _RankSyncedStage); no checkpoint was written.
        # Returning (not raising) keeps Ray Train from retrying a deterministic failure; the driver
        # reads the reason from the run folder and raises NonFiniteLossRunError.
        if rank == 0:
            tracker.set_tags({"maskgan.stopped": f"non-finite loss: {error}"})
            tracker.finish("FAILED")
            stopped = storage.resolve(payload["run_uri"], ray_config.storage).join(STOPPED_FILE)
            storage.write_bytes(stopped, json.dumps({"reason": str(error), "step": error.step}).encode())
        return
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")


def _newer_run_folder_state(
    payload: dict[str, Any], storage_config: StorageConfig, *, after: dict | None
) -> dict | None:
    """The state of the newest complete checkpoint in the run folder when it is newer than `after` (the
    one Ray Train handed the worker, or None); None when there is no newer one.

    Ray Train registers a reported checkpoint only when its controller next polls the workers: when a
    worker's node dies, or the job is stopped, after the upload and before that poll, Ray's newest
    checkpoint is older than the run folder's (or there is none). Resuming from Ray's would train those
    steps again and overwrite the complete checkpoints they wrote. A checkpoint that cannot be read (Ray
    uploads its files in no particular order) is skipped with a warning.
    """
    from maskgan.training import checkpoint as ckpt

    uri = ckpt.latest_checkpoint(payload["run_uri"], storage_config, stage=payload["stage"], max_depth=1)
    if uri is None or (after is not None and ckpt.read_meta(uri, storage_config)["step"] <= after["step"]):
        return None
    try:
        state, _ = ckpt.load_checkpoint_uri(uri, storage_config)
    except (OSError, ValueError, storage.StorageError) as error:
        logger.warning(
            "the run folder's newest checkpoint %s cannot be read (%s): not resuming from it", uri, error
        )
        return None
    given = f"step {after['step']}" if after is not None else "none"
    logger.warning(
        "Ray Train's newest registered checkpoint is %s; resuming from %s in the run folder", given, uri
    )
    return state


class _Hooks:
    """run_loop's hooks: rank 0 logs to MLflow and writes checkpoints; every rank reports with it."""

    def __init__(self, *, stage, tracker, rank, world_size, payload, per_epoch, write_checkpoint, rng_state,
                 report, checkpoint_cls):  # fmt: skip
        self.stage, self.tracker, self.rank, self.world_size = stage, tracker, rank, world_size
        self.payload, self.per_epoch = payload, per_epoch
        self._write_checkpoint, self._rng_state = write_checkpoint, rng_state
        self._report, self._checkpoint_cls = report, checkpoint_cls
        self.last_metrics: dict[str, float] = {}
        self.last_step = 0
        self.resumed_from: int | None = None

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.last_step = max(self.last_step, step)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.last_metrics.update(numeric)
        if self.rank == 0:
            self.tracker.log_metrics(numeric, step)

    def on_images(self, step: int, columns: dict[str, torch.Tensor]) -> None:
        if self.rank == 0:
            from maskgan import tracking

            self.tracker.log_image(tracking.image_grid(columns), "grid", step)

    def on_checkpoint(self, step: int) -> None:
        self.last_step = max(self.last_step, step)
        rng = _all_gather(self._rng_state(), self.world_size)
        # Ray Train's Result.metrics are those of the newest checkpoint: everything the driver
        # needs rides along with every checkpoint.
        metrics = {**self.last_metrics, "step": step}
        if self.resumed_from is not None:
            metrics["resumed_from"] = self.resumed_from
        if self.rank != 0:
            self._report(metrics)
            return
        directory = tempfile.mkdtemp(prefix=f"maskgan-ckpt-{step}-")
        try:
            epoch = step // self.per_epoch
            state = {"stage": self.stage.state_dict(), "step": step, "epoch": epoch, "rng": rng}
            weights = {name: net.state_dict() for name, net in self.stage.networks().items()}
            meta = {
                "stage": self.payload["stage"],
                "step": step,
                "epoch": epoch,
                "config": self.payload["params"],
                "manifest_sha256": self.payload["tags"]["maskgan.manifest_sha256"],
                "world_size": self.world_size,
                "run_key": self.payload["run_key"],
            }
            self._write_checkpoint(directory, state, weights=weights, meta=meta)
            name = f"{CHECKPOINT_PREFIX}{step:09d}"
            self._report(
                metrics, checkpoint=self._checkpoint_cls.from_directory(directory), checkpoint_dir_name=name
            )
            self.tracker.set_tags({"maskgan.checkpoint_uri": f"{self.payload['run_uri']}/{name}"})
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------------------- driver


def model_resolution(stage_config: Any) -> int:
    """The px size the stage's networks expect (the dataset must have been preprocessed to it)."""
    generator = getattr(stage_config, "generator", None)
    return generator.resolution if generator is not None else stage_config.model.image_size


def _storage_for_ray(ray_config: RayTrainConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: S3 gets an explicit filesystem + bucket/prefix."""
    location = storage.resolve(ray_config.storage_uri, ray_config.storage)
    if location.is_s3:
        return location.path, location.fs
    os.makedirs(location.path, exist_ok=True)
    return location.path, None


def read_result(run_uri: str, storage_config: StorageConfig | None = None) -> dict[str, Any] | None:
    """The result.json a finished run left in its folder, or None."""
    text = storage.read_text_if_exists(storage.resolve(run_uri, storage_config).join(RESULT_FILE))
    return json.loads(text) if text else None


def _tracking_env(tracking_uri: str, ray_config: RayTrainConfig) -> dict[str, str]:
    """What the workers need to reach MLflow (and its S3 artefact store) from any node."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    endpoint = ray_config.storage.resolved_endpoint()
    if endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    return env


def _tags(stage: str, run_key: str, dataset: DatasetInfo, stage_config: Any) -> dict[str, str]:
    from maskgan import tracking

    tags = {
        "maskgan.stage": stage,
        "maskgan.run_key": run_key,
        "maskgan.manifest_sha256": dataset.manifest_sha256,
        "maskgan.dataset": dataset.uri,
        "maskgan.git_commit": tracking.git_commit() or "unknown",
    }
    perceptual = getattr(stage_config, "perceptual", None)
    if perceptual is not None:
        from maskgan.models.perceptual import weights_source

        # Raises (naming where to get VGG19 weights) for presets that refuse a random VGG: before any worker.
        tags["maskgan.perceptual"] = weights_source(perceptual)
    return tags


def _mark_killed(tracking_config: TrackingConfig, tracking_uri: str, run_key: str, stage: str) -> None:
    from maskgan import tracking

    if not tracking_config.enabled:
        return
    try:
        resolved = dataclasses.replace(tracking_config, tracking_uri=tracking_uri)
        found = tracking.find_run(resolved, run_key=run_key, stage=stage)
        if found is not None:
            import mlflow

            mlflow.MlflowClient(tracking_uri).set_terminated(found.info.run_id, status="KILLED")
    except Exception as error:  # best effort on the way out: the interrupt matters more
        logger.warning("could not mark the MLflow run killed: %s", error)


def _interrupt_after_ray_abort(trainer: Any) -> None:
    """Make Ctrl-C during fit() a KeyboardInterrupt AFTER Ray Train's graceful abort.

    Ray Train v2's own SIGINT handler aborts the run (stops the workers, ends its controller) and then
    calls sys.exit(0) from inside the handler, which ended the driver with status 1 and no message.
    Wrapping it keeps the abort and then raises KeyboardInterrupt, so callers (the CLI: exit 130, one
    line) see an ordinary interrupt. Uses Ray's private hook; with a Ray without it, nothing changes.
    """
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is None:
        return

    def register_then_wrap(controller: Any) -> None:
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            try:
                if callable(ray_handler):
                    ray_handler(signum, frame)
            except SystemExit:
                pass
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = register_then_wrap


def train(stage_config: Any, ray_config: RayTrainConfig) -> TrainResult:
    """Train one stage on Ray Train (resuming the run of the same name if it exists)."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from maskgan import tracking

    stage, _ = stage_of(stage_config)
    name, run_key = run_name(stage_config, ray_config)
    run_uri = ray_config.storage_uri.rstrip("/") + "/" + name
    loop_config = stage_config.loop

    previous = read_result(run_uri, ray_config.storage)
    if previous and previous["step"] >= loop_config.max_steps:
        logger.info("%s already reached step %d (max_steps %d): nothing to do", name, previous["step"],
                    loop_config.max_steps)  # fmt: skip
        return TrainResult(**{**previous, "already_finished": True})

    dataset = check_dataset(stage_config.data)
    if dataset.resolution != model_resolution(stage_config):
        raise DatasetError(
            f"dataset {dataset.uri} is {dataset.resolution} px but the {stage} networks expect "
            f"{model_resolution(stage_config)} px: preprocess at that resolution or change the model config"
        )
    per_epoch = steps_per_epoch(dataset.train_rows, ray_config.num_workers, loop_config.batch_size)
    if per_epoch < 1:
        raise DatasetError(
            f"dataset {dataset.uri} has {dataset.train_rows} {stage_config.data.split} rows: too few for "
            f"{ray_config.num_workers} worker(s) x batch_size {loop_config.batch_size}"
        )
    tracking_uri = tracking.resolve_tracking_uri(ray_config.tracking.tracking_uri)
    payload = {
        "stage_config": stage_config,
        "ray_config": ray_config,
        "stage": stage,
        "run_key": run_key,
        "run_uri": run_uri,
        "tracking_uri": tracking_uri,
        "params": config_lib.to_dict(stage_config),
        "tags": _tags(stage, run_key, dataset, stage_config),
        "steps_per_epoch": per_epoch,
        "has_val": dataset.val_rows > 0,
    }
    start_epoch = latest_checkpoint_step(run_uri, ray_config.storage) // per_epoch
    datasets = _build_datasets(
        stage_config.data, seed=loop_config.seed, start_epoch=start_epoch, decode_cpus=ray_config.data_cpus
    )
    payload["has_val"] = "val" in datasets
    payload["start_epoch"] = start_epoch

    resources = {"CPU": ray_config.cpus_per_worker}
    if ray_config.use_gpu:
        resources["GPU"] = ray_config.gpus_per_worker
    storage_path, filesystem = _storage_for_ray(ray_config)
    from maskgan.data import loader

    trainer = TorchTrainer(
        _worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(
            num_workers=ray_config.num_workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker=resources,
            placement_strategy=ray_config.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=ray_config.num_to_keep),
            failure_config=FailureConfig(max_failures=ray_config.max_failures),
            worker_runtime_env={"env_vars": _tracking_env(tracking_uri, ray_config)},
        ),
        datasets=datasets,
        # preserve_order makes the split of the train stream over workers deterministic (see module doc).
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=loader.ingest_options()
        ),
    )
    stopped = storage.resolve(run_uri, ray_config.storage).join(STOPPED_FILE)
    if storage.exists(stopped):
        stopped.fs.delete_file(stopped.path)  # from an earlier attempt with other settings
    _interrupt_after_ray_abort(trainer)
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: Ray Train stops the workers; checkpoints already registered stay as they
        # are (a half-uploaded one never is). Mark the MLflow run KILLED; a rerun resumes it.
        _mark_killed(ray_config.tracking, tracking_uri, run_key, stage)
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous_sigint)  # fit() leaves Ray's handler installed
    reason = storage.read_text_if_exists(stopped)
    if reason:
        raise NonFiniteLossRunError(f"{name} stopped: {json.loads(reason)['reason']}")
    metrics = dict(result.metrics or {})
    checkpoint_uri = None
    if result.checkpoint is not None:
        checkpoint_uri = run_uri + "/" + os.path.basename(result.checkpoint.path.rstrip("/"))
    found = tracking.find_run(
        dataclasses.replace(ray_config.tracking, tracking_uri=tracking_uri), run_key=run_key, stage=stage
    ) if ray_config.tracking.enabled else None  # fmt: skip
    step = int(metrics.get("step", 0))
    resumed = metrics.get("resumed_from")
    out = TrainResult(
        stage=stage,
        run_name=name,
        run_key=run_key,
        run_uri=run_uri,
        checkpoint_uri=checkpoint_uri,
        mlflow_run_id=found.info.run_id if found is not None else None,
        step=step,
        metrics={k: v for k, v in metrics.items() if k not in ("resumed_from",)},
        resumed_from_step=int(resumed) if resumed is not None else None,
    )
    if step >= loop_config.max_steps:
        record = dataclasses.asdict(out)
        record.pop("already_finished")
        storage.write_bytes(
            storage.resolve(run_uri, ray_config.storage).join(RESULT_FILE),
            json.dumps(record, indent=2).encode(),
        )
    return out
