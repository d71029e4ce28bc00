"""MaskVAE stage: cross-entropy on the class map + KL (weight with linear warm-up), Adam; one step per call.

The release defines the MaskVAE but never trains it, so the loss weights are our choice: by default
kl_weight = 1 / (H W), which makes cross-entropy (a per-pixel mean) + kl_weight * KL (a per-sample
sum) the exact per-pixel negative ELBO; the warm-up ramps it from 0 so the decoder learns to use z
before the prior pulls it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from maskgan.labels import from_one_hot
from maskgan.losses import mask_vae_loss
from maskgan.models import mask_vae as models
from maskgan.models.mask_vae import MaskVAE, MaskVAEConfig
from maskgan.training.loop import DataConfig, LoopConfig, Stage, as_floats
from maskgan.training.optim import OptimizerConfig, make_adam, make_schedule


@dataclass(frozen=True, kw_only=True)
class MaskVAETrainConfig:
    """MaskVAE training: model, Adam, loss weights, loop, data."""

    model: MaskVAEConfig = field(default_factory=models.mask_vae_official_512)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-4, betas=(0.9, 0.999)))
    kl_weight: float | None = None  # None = 1 / (H W), the exact per-pixel ELBO
    kl_warmup_steps: int = 0  # linear ramp of the KL weight from 0 over these steps
    loop: LoopConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.kl_weight is not None and not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0 or None, got {self.kl_weight}")
        if self.kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")

    @property
    def resolved_kl_weight(self) -> float:
        if self.kl_weight is not None:
            return self.kl_weight
        return 1.0 / self.model.image_size**2


def mask_vae_tiny() -> MaskVAETrainConfig:
    """32 px, tiny widths, a few hundred steps: tests and `make run`."""
    return MaskVAETrainConfig(
        model=models.mask_vae_tiny(),
        optimizer=OptimizerConfig(lr=2e-3, betas=(0.9, 0.999)),
        kl_warmup_steps=20,
        loop=LoopConfig(
            max_steps=200,
            batch_size=8,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
            val_every=100,
            val_batches=2,
            precision="auto",
        ),  # fmt: skip
    )


def mask_vae_base_256() -> MaskVAETrainConfig:
    """256 px, release-like widths (42.7 M parameters), batch 16 per worker."""
    return MaskVAETrainConfig(
        model=models.mask_vae_base_256(),
        optimizer=OptimizerConfig(lr=2e-4, betas=(0.9, 0.999), constant_steps=50_000, decay_steps=50_000),
        kl_warmup_steps=5_000,
        loop=LoopConfig(
            max_steps=100_000,
            batch_size=16,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
            grad_clip=10.0,
        ),  # fmt: skip
    )


def mask_vae_official_512() -> MaskVAETrainConfig:
    """The released MaskVAE (170.6 M parameters) at 512 px, batch 8 per worker; flip off as released."""
    return MaskVAETrainConfig(
        model=models.mask_vae_official_512(),
        optimizer=OptimizerConfig(lr=2e-4, betas=(0.9, 0.999), constant_steps=100_000, decay_steps=100_000),
        kl_warmup_steps=10_000,
        loop=LoopConfig(
            max_steps=200_000,
            batch_size=8,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
            grad_clip=10.0,
        ),  # fmt: skip
    )


PRESETS: dict[str, Callable[[], MaskVAETrainConfig]] = {
    "mask_vae_tiny": mask_vae_tiny,
    "mask_vae_base_256": mask_vae_base_256,
    "mask_vae_official_512": mask_vae_official_512,
}


class MaskVAEStage(Stage):
    """Trains a MaskVAE; networks {"mask_vae"}."""

    name = "maskvae"

    def __init__(self, config: MaskVAETrainConfig, device: torch.device | str, rank: int = 0) -> None:
        super().__init__(loop=config.loop, device=device, rank=rank)
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.loop.seed)  # the same init on every rank (DDP broadcasts it anyway)
            self.mask_vae = MaskVAE(config.model).to(self.device)
        self.optimizer = make_adam(self.mask_vae.parameters(), config.optimizer)
        self.scheduler = make_schedule(self.optimizer, config.optimizer)

    def networks(self) -> dict[str, nn.Module]:
        return {"mask_vae": self.mask_vae}

    def wrap(self, wrap_fn: Callable[[nn.Module], nn.Module]) -> None:
        """BatchNorm -> SyncBatchNorm across workers (CUDA only), then wrap (DDP)."""
        if self.device.type == "cuda" and dist.is_initialized() and dist.get_world_size() > 1:
            # Converts in place below the root and keeps the Parameter objects, so the optimiser stays valid.
            nn.SyncBatchNorm.convert_sync_batchnorm(self.mask_vae)
        super().wrap(wrap_fn)

    def _state_objects(self) -> dict[str, object]:
        return {
            "mask_vae": self.mask_vae,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }

    def kl_weight(self, step: int) -> float:
        """The KL weight at `step` (1-based): linear warm-up to the configured weight."""
        weight = self.config.resolved_kl_weight
        warmup = self.config.kl_warmup_steps
        return weight if warmup == 0 else weight * min(1.0, step / warmup)

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        self.mask_vae.train()
        label = batch["label"].to(self.device)  # (B, H, W) int64
        onehot = batch["onehot"].to(self.device)  # (B, 19, H, W)
        kl_weight = self.kl_weight(step)
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses (the scheduler moves it after)
        with self.autocast():
            logits, mu, logvar = self.runner("mask_vae")(onehot, generator=self.generator(step))
        losses = mask_vae_loss(logits, label, mu, logvar, kl_weight=kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(losses["total"])
        grad_norm = self.optimizer_step(self.optimizer)
        self.finish_step()
        self.scheduler.step()
        return as_floats(
            {
                "loss/total": losses["total"],
                "loss/cross_entropy": losses["cross_entropy"],
                "loss/kl": losses["kl"],
                "kl_weight": kl_weight,
                "lr/mask_vae": lr,
                "grad_norm/mask_vae": grad_norm,
            }
        )

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Eval-mode reconstruction decode(mu): cross-entropy, pixel and face-pixel accuracy, KL."""
        self.mask_vae.eval()
        label = batch["label"].to(self.device)
        with self.autocast():
            mu, logvar = self.mask_vae.encode(batch["onehot"].to(self.device))
            logits = self.mask_vae.decode(mu)
        correct = from_one_hot(logits) == label
        face = label != 0
        return as_floats(
            {
                "val/cross_entropy": F.cross_entropy(logits.float(), label),
                "val/pixel_accuracy": correct.float().mean(),
                "val/face_pixel_accuracy": correct[face].float().mean() if face.any() else torch.ones(()),
                "val/kl": mask_vae_loss(logits, label, mu, logvar)["kl"],
            }
        )

    @torch.no_grad()
    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """mask | reconstruction | edit 1 | edit 2 (edits need >= 2 masks: the partner is another sample)."""
        label = batch["label"].to(self.device)
        columns = {"mask": label, "reconstruction": self.mask_vae.reconstruct(label)}
        if len(label) >= 2:
            edit_1, edit_2 = self.mask_vae.simulate_edits(label, generator=torch.Generator().manual_seed(0))
            columns.update(edit_1=edit_1, edit_2=edit_2)
        return columns


def build(config: MaskVAETrainConfig, device: torch.device | str, *, rank: int = 0) -> MaskVAEStage:
    """The MaskVAE stage on `device` (rank only seeds per-step randomness)."""
    if not isinstance(config, MaskVAETrainConfig):
        raise ValueError(f"mask_vae.build needs a MaskVAETrainConfig, got {type(config).__name__}")
    return MaskVAEStage(config, device, rank=rank)
