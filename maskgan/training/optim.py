"""Optimiser pieces shared by the stages: Adam config, constant-then-linear-decay schedule, EMA of weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Adam with a step-based schedule: lr constant for constant_steps, then linear to 0 over decay_steps.

    Defaults are the release's (Adam 5e-5, betas (0.5, 0.999)); decay_steps 0 keeps lr constant.
    """

    lr: float = 5e-5
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    constant_steps: int = 0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        betas = tuple(float(beta) for beta in self.betas)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"optimizer.betas must be two values in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)  # a YAML list becomes a tuple
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.constant_steps < 0 or self.decay_steps < 0:
            raise ValueError(
                f"optimizer.constant_steps and optimizer.decay_steps must be >= 0, "
                f"got {self.constant_steps} and {self.decay_steps}"
            )


def make_adam(
    parameters: Iterable[nn.Parameter], config: OptimizerConfig, lr_multiplier: float = 1.0
) -> torch.optim.Adam:
    """Adam over `parameters` at config.lr * lr_multiplier (TTUR: a larger multiplier for D)."""
    return torch.optim.Adam(
        list(parameters), lr=config.lr * lr_multiplier, betas=config.betas, weight_decay=config.weight_decay
    )


class LinearDecay:
    """lr factor: 1 for the first constant_steps steps, then linear to 0 over decay_steps (0 = never decays).

    A callable object rather than a lambda, so LambdaLR's state_dict keeps it.
    """

    def __init__(self, constant_steps: int, decay_steps: int) -> None:
        self.constant_steps = constant_steps
        self.decay_steps = decay_steps

    def __call__(self, step: int) -> float:
        if self.decay_steps <= 0 or step < self.constant_steps:
            return 1.0
        return max(0.0, 1.0 - (step - self.constant_steps) / self.decay_steps)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: OptimizerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant-then-linear-decay LambdaLR, stepped once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, LinearDecay(config.constant_steps, config.decay_steps)
    )


class ExponentialMovingAverage(nn.Module):
    """A frozen copy of a network whose parameters follow ema = decay * ema + (1 - decay) * live.

    Buffers are copied as they are (G has none but the blender / VAE might). Use `.module` for inference.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the average toward `network`'s current weights (call after each optimiser step)."""
        for average, live in zip(self.module.parameters(), network.parameters(), strict=True):
            average.lerp_(live.detach().to(average.dtype), 1.0 - self.decay)
        for average, live in zip(self.module.buffers(), network.buffers(), strict=True):
            average.copy_(live)

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        """Stay in eval mode: the average is never trained directly."""
        return super().train(False)
