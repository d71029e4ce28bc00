"""DMN stage: G(M, M_ref, I_ref) against a multi-scale D; LSGAN + feature matching + VGG; one step per call.

The style reference of a sample is the sample itself (reconstruction, as released), or with
probability style_swap_prob another sample of the batch (style transfer). A swapped sample has no
paired target, so it gets only the adversarial term; feature matching and VGG pull the reconstructed
ones toward their real image. G and D alternate each step (G first, then D on the same detached fakes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maskgan.models import dmn as dmn_models
from maskgan.models.discriminator import DiscriminatorConfig, discriminator_official, discriminator_tiny
from maskgan.models.dmn import DMNConfig
from maskgan.models.perceptual import PerceptualConfig
from maskgan.training.gan import INITS, GANLossConfig, GANStage, select, split_outputs
from maskgan.training.loop import DataConfig, LoopConfig, as_floats
from maskgan.training.optim import OptimizerConfig

DEFAULT_INIT = "pytorch"  # chosen from the measurement in tests/unit/test_training_dmn.py (see README)


@dataclass(frozen=True, kw_only=True)
class DMNTrainConfig:
    """DMN training: G, D, perceptual VGG, loss weights, Adam (+ TTUR), style swap, init, EMA, loop, data."""

    generator: DMNConfig = field(default_factory=dmn_models.dmn_official_512)
    discriminator: DiscriminatorConfig = field(default_factory=discriminator_official)
    perceptual: PerceptualConfig = field(default_factory=lambda: PerceptualConfig(fallback="error"))
    losses: GANLossConfig = field(default_factory=GANLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # release: Adam 5e-5, (0.5, 0.999)
    discriminator_lr_multiplier: float = 1.0  # TTUR: D's lr = optimizer.lr * this
    style_swap_prob: float = 0.0  # 0 = pure reconstruction, as released
    init: str = DEFAULT_INIT  # "release" = N(0, 0.02) convs; "pytorch" = PyTorch's default init
    ema_decay: float | None = None  # EMA of G's weights (saved as "generator_ema"); None = off
    loop: LoopConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        validate_common(self)
        if not 0.0 <= self.style_swap_prob <= 1.0:
            raise ValueError(f"style_swap_prob must be in [0, 1], got {self.style_swap_prob}")


def validate_common(config) -> None:
    """Checks shared by the DMN and EBST configs (fields named as in the config)."""
    if not config.discriminator_lr_multiplier > 0:
        raise ValueError(f"discriminator_lr_multiplier must be > 0, got {config.discriminator_lr_multiplier}")
    if config.init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {config.init!r}")
    if config.ema_decay is not None and not 0.0 < config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1) or None, got {config.ema_decay}")
    if config.generator.num_classes != config.discriminator.num_classes:
        raise ValueError(
            f"generator.num_classes ({config.generator.num_classes}) != discriminator.num_classes "
            f"({config.discriminator.num_classes})"
        )


def dmn_tiny() -> DMNTrainConfig:
    """32 px, tiny G and D, pixel L1 in place of VGG, a few hundred steps: tests and `make run`."""
    return DMNTrainConfig(
        generator=dmn_models.dmn_tiny(),
        discriminator=discriminator_tiny(),
        # A random VGG costs ~90 % of a tiny CPU step for ~1 % of G's loss: off here, pixel L1 instead
        # (perceptual.fallback=random and losses.perceptual_weight=10 turn it back on).
        perceptual=PerceptualConfig(fallback="none"),
        losses=GANLossConfig(perceptual_weight=0.0, reconstruction_l1_weight=10.0),
        optimizer=OptimizerConfig(lr=2e-3, betas=(0.5, 0.999), constant_steps=200, decay_steps=100),
        loop=LoopConfig(
            max_steps=300,
            batch_size=4,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
            val_every=100,
            val_batches=2,
        ),  # fmt: skip
    )


def dmn_base_256() -> DMNTrainConfig:
    """Released widths at 256 px, batch 8 per worker (SEAN used 32 over 4 GPUs); needs VGG19 weights."""
    return DMNTrainConfig(
        generator=dmn_models.dmn_base_256(),
        discriminator=discriminator_official(),
        optimizer=OptimizerConfig(lr=2e-4, constant_steps=150_000, decay_steps=150_000),
        loop=LoopConfig(
            max_steps=300_000,
            batch_size=8,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
            grad_clip=None,
        ),  # fmt: skip
    )


def dmn_official_512() -> DMNTrainConfig:
    """The release: 512 px, batch 1, Adam 5e-5, 100 epochs constant + 100 decay (24,183 images), no flip."""
    epoch = 24_183
    return DMNTrainConfig(
        generator=dmn_models.dmn_official_512(),
        discriminator=discriminator_official(),
        optimizer=OptimizerConfig(lr=5e-5, constant_steps=100 * epoch, decay_steps=100 * epoch),
        loop=LoopConfig(
            max_steps=200 * epoch,
            batch_size=1,
            log_every=100,
            image_every=5_000,
            checkpoint_every=10_000,
            val_every=5_000,
            val_batches=16,
        ),  # fmt: skip
    )


PRESETS: dict[str, Callable[[], DMNTrainConfig]] = {
    "dmn_tiny": dmn_tiny,
    "dmn_base_256": dmn_base_256,
    "dmn_official_512": dmn_official_512,
}


def style_references(batch_size: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) index of each sample's style reference: itself, or with `probability` the next sample."""
    index = torch.arange(batch_size)
    if probability <= 0 or batch_size < 2:
        return index
    swap = torch.rand(batch_size, generator=generator) < probability
    return torch.where(swap, (index + 1) % batch_size, index)


class DMNStage(GANStage):
    """Trains the DMN generator and D; networks {"generator", "discriminator"} (+ "generator_ema")."""

    name = "dmn"

    def __init__(self, config: DMNTrainConfig, device: torch.device | str, rank: int = 0) -> None:
        super().__init__(
            loop=config.loop, device=device, rank=rank, generator=config.generator,
            discriminator=config.discriminator, perceptual=config.perceptual, losses=config.losses,
            optimizer=config.optimizer, discriminator_lr_multiplier=config.discriminator_lr_multiplier,
            init=config.init, ema_decay=config.ema_decay,
        )  # fmt: skip
        self.config = config

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        self.generator_net.train()
        self.discriminator.train()
        image = batch["image"].to(self.device)  # (B, 3, H, W) in [-1, 1]
        onehot = batch["onehot"].to(self.device)  # (B, 19, H, W)
        size = len(image)
        reference = style_references(size, self.config.style_swap_prob, self.generator(step)).to(self.device)
        paired = reference == torch.arange(size, device=self.device)  # (B,) reconstruction samples
        lrs = {
            "lr/generator": self.generator_optimizer.param_groups[0]["lr"],
            "lr/discriminator": self.discriminator_optimizer.param_groups[0]["lr"],
        }

        # G step: one G forward (DDP-safe), D unwrapped and frozen.
        with self.autocast():
            fake = self.runner("generator")(onehot, onehot[reference], image[reference])
            d_fake, d_real = split_outputs(
                self.judge_for_generator(torch.cat([onehot, onehot]), torch.cat([fake, image])), [size, size]
            )
            vgg = self.perceptual_features(torch.cat([fake[paired], image[paired]]))
        terms = {"gan": self.generator_terms(d_fake, d_real, [], [])["gan"]}
        if paired.any():
            count = int(paired.sum())
            vgg_fake, vgg_real = [f[:count] for f in vgg], [f[count:] for f in vgg]
            paired_terms = self.generator_terms(
                select(d_fake, paired),
                select(d_real, paired),
                vgg_fake,
                vgg_real,
                fake[paired],
                image[paired],
            )
            paired_terms.pop("gan")
            # Mean over the whole batch: swapped samples contribute 0 to the paired terms.
            terms.update({name: value * count / size for name, value in paired_terms.items()})
        generator_loss = sum(terms.values())
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.backward(generator_loss)
        generator_norm = self.optimizer_step(self.generator_optimizer)
        self.update_ema()

        # D step: one D forward through its runner on [real; fake.detach()].
        with self.autocast():
            d_real_out, d_fake_out = split_outputs(
                self.runner("discriminator")(torch.cat([onehot, onehot]), torch.cat([image, fake.detach()])),
                [size, size],
            )
        d_real_loss = self.discriminator_terms(d_real_out, True)
        d_fake_loss = self.discriminator_terms(d_fake_out, False)
        discriminator_loss = 0.5 * (d_real_loss + d_fake_loss)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        self.backward(discriminator_loss)
        discriminator_norm = self.optimizer_step(self.discriminator_optimizer)
        self.finish_step()
        self.generator_scheduler.step()
        self.discriminator_scheduler.step()
        return as_floats(
            {
                **{f"loss/g_{name}": value for name, value in terms.items()},
                "loss/g_total": generator_loss,
                "loss/d_real": d_real_loss,
                "loss/d_fake": d_fake_loss,
                "loss/d_total": discriminator_loss,
                "style_swap_fraction": 1.0 - float(paired.float().mean()),
                "grad_norm/generator": generator_norm,
                "grad_norm/discriminator": discriminator_norm,
                **lrs,
            }
        )

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """val/l1 of the reconstruction G(M, M, I); val/style_change: mean |G(M, M', I') - G(M, M, I)|."""
        generator = self.inference_generator()
        image, onehot = batch["image"].to(self.device), batch["onehot"].to(self.device)
        with self.autocast():
            reconstruction = generator(onehot, onehot, image).float()
        metrics = {"val/l1": (reconstruction - image).abs().mean()}
        if len(image) >= 2:
            with self.autocast():
                swapped = generator(onehot, onehot.roll(1, 0), image.roll(1, 0)).float()
            metrics["val/style_change"] = (swapped - reconstruction).abs().mean()
        return as_floats(metrics)

    @torch.no_grad()
    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """mask | reference (= real) | generated | other reference | generated with its style."""
        generator = self.inference_generator()
        image, onehot = batch["image"].to(self.device), batch["onehot"].to(self.device)
        with self.autocast():
            columns = {
                "mask": batch["label"],
                "reference": image,
                "generated": generator(onehot, onehot, image),
            }
            if len(image) >= 2:
                columns["other_reference"] = image.roll(1, 0)
                columns["generated_other_style"] = generator(onehot, onehot.roll(1, 0), image.roll(1, 0))
        return {
            name: value.float() if value.is_floating_point() else value for name, value in columns.items()
        }


def build(config: DMNTrainConfig, device: torch.device | str, *, rank: int = 0) -> DMNStage:
    """The DMN stage on `device` (rank only seeds per-step randomness)."""
    if not isinstance(config, DMNTrainConfig):
        raise ValueError(f"dmn.build needs a DMNTrainConfig, got {type(config).__name__}")
    return DMNStage(config, device, rank=rank)
