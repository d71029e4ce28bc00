"""The stage-agnostic training loop: loop and data configs, the Stage base class, run_loop and its guards.

A Stage owns its networks, optimisers, schedulers and EMA and does ONE optimisation step per call;
run_loop feeds it batches, watches for non-finite losses and calls the hooks (metrics, images,
checkpoints) that a driver (`train_local`, the Ray Train glue) fills in. Nothing here knows Ray.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from maskgan.storage import StorageConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """How long and how a stage trains; batch_size is per worker; every `*_every` counts steps."""

    max_steps: int
    batch_size: int
    log_every: int = 10
    image_every: int = 500
    checkpoint_every: int = 1000
    val_every: int = 500
    val_batches: int = 4  # batches of the val split averaged per validation
    seed: int = 0
    precision: str = "auto"  # auto = bf16 autocast on cuda, fp32 on cpu; fp32 | bf16 | fp16 (GradScaler)
    grad_clip: float | None = None  # max global grad norm per optimiser; None = no clipping
    compile: bool = False  # torch.compile each trained network (after DDP wrapping)
    fail_at_step: int | None = None  # TEST ONLY: raise InjectedFailure once, at this step (fresh runs)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "log_every", "image_every", "checkpoint_every", "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"loop.{name} must be an integer >= 1, got {value!r}")
        if self.val_batches < 0:
            raise ValueError(f"loop.val_batches must be >= 0, got {self.val_batches}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"loop.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"loop.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.fail_at_step is not None and not 1 <= self.fail_at_step <= self.max_steps:
            raise ValueError(
                f"loop.fail_at_step must be in 1..{self.max_steps} or None, got {self.fail_at_step}"
            )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which preprocessed dataset a stage reads (its manifest URI) and how."""

    uri: str = "data/celebamask-parquet"
    split: str = "train"
    val_split: str = "val"
    flip: bool = False  # random horizontal flip with left/right class swap; the release trains without
    shuffle: bool = True
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("data.uri must be set (the preprocessing output holding manifest.json)")
        for name in ("split", "val_split"):
            if getattr(self, name) not in ("train", "val", "test"):
                raise ValueError(f"data.{name} must be train, val or test, got {getattr(self, name)!r}")


class NonFiniteLossError(FloatingPointError):
    """A loss (or another step metric) came out NaN or inf; raised before any checkpoint of the weights."""

    def __init__(self, step: int, name: str, value: float) -> None:
        super().__init__(
            f"non-finite {name} = {value} at step {step}: training stopped before any checkpoint of "
            "these weights; lower the learning rate, enable loop.grad_clip or check the data"
        )
        self.step, self.name, self.value = step, name, value


class InjectedFailure(RuntimeError):
    """The test-only failure of LoopConfig.fail_at_step."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Precision name -> autocast dtype (None = plain fp32). auto: bf16 on cuda, fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def as_floats(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors and floats -> floats, with ONE device sync for all the tensors."""
    tensors = {name: value for name, value in values.items() if torch.is_tensor(value)}
    out = {name: float(value) for name, value in values.items() if not torch.is_tensor(value)}
    if tensors:
        stacked = torch.stack([value.detach().float().reshape(()) for value in tensors.values()])
        out.update(zip(tensors, stacked.cpu().tolist(), strict=True))
    return out


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, rank, step, stream): resumed runs draw the same numbers."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Stage:
    """One training stage. Subclasses set `name`, build networks in __init__ and implement `step`.

    The base class holds device, precision (autocast + GradScaler for fp16), the runners (what
    forward calls go through: the network itself, or its DDP / compiled wrapper) and the generic
    state_dict over `_state_objects()`.
    """

    name: str = ""

    def __init__(self, *, loop: LoopConfig, device: torch.device | str, rank: int = 0) -> None:
        self.loop = loop
        self.device = torch.device(device)
        self.rank = rank
        self.dtype = autocast_dtype(loop.precision, self.device)
        # GradScaler only for fp16: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self._runners: dict[str, Callable] = {}

    # -- what subclasses provide
    def networks(self) -> dict[str, nn.Module]:
        """Networks to save (unwrapped): the trained ones, plus EMA copies when enabled."""
        raise NotImplementedError

    def trained_networks(self) -> dict[str, nn.Module]:
        """Networks that get gradients and are wrapped (DDP) separately; defaults to networks()."""
        return self.networks()

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimisation step on `batch` (step counts from 1); returns losses, lrs, grad norms."""
        raise NotImplementedError

    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Image-grid columns (see tracking.image_grid) for `batch`, no grad."""
        raise NotImplementedError

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics ("val/...") for one batch, no grad."""
        raise NotImplementedError

    def load_upstream(self, storage_config: StorageConfig | None = None) -> dict[str, str]:
        """Load weights of upstream stages from the config's URIs; returns {network: uri}. None by default."""
        return {}

    def _state_objects(self) -> dict[str, object]:
        """name -> object with state_dict / load_state_dict (networks, optimisers, schedulers, EMA)."""
        raise NotImplementedError

    # -- shared machinery
    def wrap(self, wrap_fn: Callable[[nn.Module], nn.Module]) -> None:
        """Route forward calls of each trained network through wrap_fn(network) (DDP), compiled if asked."""
        for name, network in self.trained_networks().items():
            self._runners[name] = self._maybe_compile(wrap_fn(network))

    def runner(self, name: str) -> Callable:
        """What to call for a forward pass of network `name` (the wrapper when wrapped)."""
        if name not in self._runners:
            self._runners[name] = self._maybe_compile(self.trained_networks()[name])
        return self._runners[name]

    def _maybe_compile(self, module: nn.Module) -> Callable:
        return torch.compile(module) if self.loop.compile else module

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the configured low precision, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled when training in fp16."""
        self.scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """Unscale, clip (loop.grad_clip) and step; returns the global grad norm before clipping."""
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.scaler.unscale_(optimizer)
        if self.loop.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(parameters, self.loop.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in parameters]))
        self.scaler.step(optimizer)
        return norm

    def finish_step(self) -> None:
        """Once per training step, after every optimiser stepped (GradScaler bookkeeping)."""
        self.scaler.update()

    def generator(self, step: int, stream: int = 0) -> torch.Generator:
        """Reproducible randomness of one step (style swaps, simulated edits), per rank and stream."""
        return step_generator(self.loop.seed, self.rank, step, stream)

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, optimisers, schedulers, EMA, GradScaler."""
        return {"stage": self.name, **{name: obj.state_dict() for name, obj in self._state_objects().items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state_dict() of the same stage; raises ValueError naming what is missing or foreign."""
        if state.get("stage") != self.name:
            raise ValueError(f"state is of stage {state.get('stage')!r}, this stage is {self.name!r}")
        objects = self._state_objects()
        missing = sorted(set(objects) - set(state))
        unexpected = sorted(set(state) - set(objects) - {"stage"})
        if missing or unexpected:
            raise ValueError(
                f"{self.name} state: missing entries {missing}, unexpected entries {unexpected} "
                "(was it saved with another config, e.g. EMA on/off?)"
            )
        for name, obj in objects.items():
            obj.load_state_dict(state[name])


def _ignore(*args) -> None:
    return None


@dataclass
class LoopHooks:
    """What run_loop calls; a driver fills these in (rank 0 does I/O, every rank calls them alike)."""

    on_metrics: Callable[[int, dict[str, float]], None] = _ignore
    on_images: Callable[[int, dict[str, torch.Tensor]], None] = _ignore
    on_checkpoint: Callable[[int], None] = _ignore


@dataclass(frozen=True)
class LoopResult:
    start_step: int
    last_step: int
    metrics: dict[str, float]  # the last logged training metrics
    val_metrics: dict[str, float]  # the last validation
    seconds: float

    @property
    def steps_run(self) -> int:
        return self.last_step - self.start_step


def run_loop(
    stage: Stage,
    batches: Iterator[dict],
    *,
    loop: LoopConfig,
    start_step: int,
    hooks: LoopHooks | None = None,
    val_batches: Callable[[], Iterator[dict]] | None = None,
) -> LoopResult:
    """Steps start_step + 1 .. loop.max_steps of `stage` on `batches` (an iterator that lasts long enough).

    Per step, in this order: the step; the non-finite guard (NonFiniteLossError before any hook);
    metrics every log_every (window means + images_per_s + data_wait_fraction); images every
    image_every; validation every val_every; checkpoint every checkpoint_every. The last step
    always logs, validates and checkpoints.
    """
    hooks = hooks or LoopHooks()
    started = time.perf_counter()
    if start_step >= loop.max_steps:
        return LoopResult(start_step, start_step, {}, {}, 0.0)
    iterator = iter(batches)
    window: dict[str, float] = {}
    window_steps, window_wait, window_time, window_images = 0, 0.0, 0.0, 0
    metrics: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    image_batch = None
    for step in range(start_step + 1, loop.max_steps + 1):
        # Fresh runs only: a run resumed from a checkpoint would otherwise fail again at the same step.
        if loop.fail_at_step == step and start_step == 0:
            raise InjectedFailure(f"injected failure at step {step} (loop.fail_at_step, test only)")
        tick = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            raise ValueError(f"the batch iterator ran out before step {step} of {loop.max_steps}") from None
        got_batch = time.perf_counter()
        step_metrics = stage.step(batch, step)
        done = time.perf_counter()
        for name, value in step_metrics.items():
            # Under fp16 an inf grad norm is GradScaler's overflow signal (it skips that step), not a failure.
            if not math.isfinite(value) and not (stage.scaler.is_enabled() and name.startswith("grad_norm/")):
                raise NonFiniteLossError(step, name, value)
            window[name] = window.get(name, 0.0) + value
        window_steps += 1
        window_wait += got_batch - tick
        window_time += done - tick
        window_images += len(batch["image"])
        last = step == loop.max_steps
        if step % loop.log_every == 0 or last:
            metrics = {name: total / window_steps for name, total in window.items()}
            metrics["images_per_s"] = window_images / max(window_time, 1e-9)
            metrics["data_wait_fraction"] = window_wait / max(window_time, 1e-9)
            hooks.on_metrics(step, metrics)
            window, window_steps, window_wait, window_time, window_images = {}, 0, 0.0, 0.0, 0
        if step % loop.image_every == 0 or last:
            if image_batch is None:
                image_batch = _first_val_batch(val_batches) or batch
            hooks.on_images(step, stage.images(image_batch))
        if val_batches is not None and loop.val_batches and (step % loop.val_every == 0 or last):
            val_metrics = validate(stage, val_batches(), loop.val_batches)
            hooks.on_metrics(step, val_metrics)
        if step % loop.checkpoint_every == 0 or last:
            hooks.on_checkpoint(step)
    return LoopResult(start_step, loop.max_steps, metrics, val_metrics, time.perf_counter() - started)


def validate(stage: Stage, batches: Iterator[dict], num_batches: int) -> dict[str, float]:
    """Mean of stage.validate over the first num_batches batches (sample-weighted)."""
    totals: dict[str, float] = {}
    count = 0
    for index, batch in enumerate(batches):
        if index >= num_batches:
            break
        size = len(batch["image"])
        for name, value in stage.validate(batch).items():
            totals[name] = totals.get(name, 0.0) + value * size
        count += size
    return {name: total / count for name, total in totals.items()} if count else {}


def _first_val_batch(val_batches: Callable[[], Iterator[dict]] | None) -> dict | None:
    if val_batches is None:
        return None
    return next(iter(val_batches()), None)
