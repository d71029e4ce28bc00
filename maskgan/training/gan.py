"""What the DMN and EBST stages share: loss weights, weight init choice, and a G + D stage base.

DDP rules followed here (and why):
- G runs as ONE forward call per step through its runner (the DDP wrapper when wrapped), on the
  whole (possibly concatenated) batch: DDP expects one forward per backward.
- D runs through its runner (DDP) only in the D step, on concatenated [real; fakes.detach()]
  (instance norm only, so concatenation changes no number). In the G step D is the UNWRAPPED module
  with requires_grad off: D's weights get no gradient from G's loss, and D's DDP reducer is not
  left waiting for gradients that never come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from maskgan.losses import (
    FEATURE_MATCHING_WEIGHT,
    GAN_MODES,
    PERCEPTUAL_WEIGHT,
    VGG_LAYER_WEIGHTS,
    MultiScaleOutput,
    feature_matching_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    perceptual_loss,
)
from maskgan.models.discriminator import DiscriminatorConfig, MultiscaleDiscriminator
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig
from maskgan.models.perceptual import PerceptualConfig, VGG19Features
from maskgan.training.loop import LoopConfig, Stage
from maskgan.training.optim import ExponentialMovingAverage, OptimizerConfig, make_adam, make_schedule

INITS = ("release", "pytorch")


@dataclass(frozen=True, kw_only=True)
class GANLossConfig:
    """Generator and discriminator loss terms; defaults are the release's (LSGAN, FM x10, VGG x10)."""

    gan_mode: str = "lsgan"  # lsgan | hinge
    feature_matching_weight: float = FEATURE_MATCHING_WEIGHT
    perceptual_weight: float = PERCEPTUAL_WEIGHT
    perceptual_layer_weights: tuple[float, ...] = VGG_LAYER_WEIGHTS  # relu1_1 .. relu5_1
    # Pixel L1 to the real image (paired fakes only). NOT in the release (0 there); the tiny presets use
    # it in place of the VGG term, whose random-weight fallback costs most of a tiny step on a CPU.
    reconstruction_l1_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"losses.gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        for name in ("feature_matching_weight", "perceptual_weight", "reconstruction_l1_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"losses.{name} must be >= 0, got {getattr(self, name)}")
        weights = tuple(float(value) for value in self.perceptual_layer_weights)
        if len(weights) != 5 or min(weights) < 0:
            raise ValueError(f"losses.perceptual_layer_weights must be 5 values >= 0, got {weights!r}")
        object.__setattr__(self, "perceptual_layer_weights", weights)


def apply_init(network: nn.Module, init: str) -> None:
    """ "release": keep the models' N(0, init_std) conv init; "pytorch": PyTorch's default for every layer."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "pytorch":
        for module in network.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                module.reset_parameters()


def split_outputs(outputs: MultiScaleOutput, sizes: Sequence[int]) -> list[list[list[torch.Tensor]]]:
    """D's output on a concatenated batch -> one MultiScaleOutput per chunk of `sizes` samples."""
    chunks = [[[] for _ in outputs] for _ in sizes]
    for scale_index, scale in enumerate(outputs):
        for feature in scale:
            for chunk, part in zip(chunks, torch.split(feature, list(sizes)), strict=True):
                chunk[scale_index].append(part)
    return chunks


def select(outputs: MultiScaleOutput, index: torch.Tensor) -> list[list[torch.Tensor]]:
    """The samples `index` of every feature of a MultiScaleOutput."""
    return [[feature[index] for feature in scale] for scale in outputs]


class GANStage(Stage):
    """Base of the DMN and EBST stages: G, multi-scale D, frozen VGG19, Adam for each, optional G EMA."""

    def __init__(
        self,
        *,
        loop: LoopConfig,
        device: torch.device | str,
        rank: int,
        generator: DMNConfig,
        discriminator: DiscriminatorConfig,
        perceptual: PerceptualConfig,
        losses: GANLossConfig,
        optimizer: OptimizerConfig,
        discriminator_lr_multiplier: float,
        init: str,
        ema_decay: float | None,
    ) -> None:
        super().__init__(loop=loop, device=device, rank=rank)
        self.losses = losses
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(loop.seed)  # the same init on every rank
            self.generator_net = DenseMappingNetwork(generator)
            self.discriminator = MultiscaleDiscriminator(discriminator)
            apply_init(self.generator_net, init)
            apply_init(self.discriminator, init)
        self.generator_net.to(self.device)
        self.discriminator.to(self.device)
        self.vgg = VGG19Features(perceptual).to(self.device)  # frozen; raises for fallback "error"
        self.generator_optimizer = make_adam(self.generator_net.parameters(), optimizer)
        self.discriminator_optimizer = make_adam(
            self.discriminator.parameters(), optimizer, discriminator_lr_multiplier
        )
        self.generator_scheduler = make_schedule(self.generator_optimizer, optimizer)
        self.discriminator_scheduler = make_schedule(self.discriminator_optimizer, optimizer)
        self.ema = ExponentialMovingAverage(self.generator_net, ema_decay) if ema_decay else None

    def networks(self) -> dict[str, nn.Module]:
        networks = {"generator": self.generator_net, "discriminator": self.discriminator}
        if self.ema is not None:
            networks["generator_ema"] = self.ema.module
        return networks

    def trained_networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_net, "discriminator": self.discriminator}

    def _state_objects(self) -> dict[str, object]:
        objects = {
            "generator": self.generator_net,
            "discriminator": self.discriminator,
            "generator_optimizer": self.generator_optimizer,
            "discriminator_optimizer": self.discriminator_optimizer,
            "generator_scheduler": self.generator_scheduler,
            "discriminator_scheduler": self.discriminator_scheduler,
            "scaler": self.scaler,
        }
        if self.ema is not None:
            objects["generator_ema"] = self.ema
        return objects

    def generator_terms(
        self,
        d_fake: MultiScaleOutput,
        d_real: MultiScaleOutput,
        vgg_fake: Sequence[torch.Tensor],
        vgg_real: Sequence[torch.Tensor],
        fake: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"gan", "feature_matching", "perceptual", "l1"} of G for fakes against their real images.

        Terms whose weight is 0 (or whose inputs are not given) are left out.
        """
        losses = self.losses
        gan = gan_generator_loss(d_fake, losses.gan_mode)
        terms = {"gan": gan}
        if losses.reconstruction_l1_weight and fake is not None and real is not None:
            terms["l1"] = losses.reconstruction_l1_weight * (fake.float() - real.float()).abs().mean()
        if losses.feature_matching_weight:
            terms["feature_matching"] = feature_matching_loss(d_fake, d_real, losses.feature_matching_weight)
        if losses.perceptual_weight and vgg_fake:
            terms["perceptual"] = perceptual_loss(
                vgg_fake, vgg_real, losses.perceptual_layer_weights, losses.perceptual_weight
            ).to(gan.device)
        return terms

    def judge_for_generator(self, masks: torch.Tensor, images: torch.Tensor) -> MultiScaleOutput:
        """D's outputs for G's loss: the unwrapped D, no gradient into D's weights (see module doc)."""
        self.discriminator.requires_grad_(False)
        try:
            return self.discriminator(masks, images)
        finally:
            self.discriminator.requires_grad_(True)

    def discriminator_terms(self, d_outputs: MultiScaleOutput, target_is_real: bool) -> torch.Tensor:
        return gan_discriminator_loss(d_outputs, target_is_real, self.losses.gan_mode)

    def perceptual_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """VGG19 features of (N, 3, H, W) images, or [] when the perceptual term is off."""
        if not self.losses.perceptual_weight or not self.vgg.enabled:
            return []
        return self.vgg(images)

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(self.generator_net)

    def inference_generator(self) -> nn.Module:
        """The EMA generator when enabled, else the live one (for validation and images)."""
        return self.ema.module if self.ema is not None else self.generator_net
