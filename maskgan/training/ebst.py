"""EBST stage (editing behaviour simulated training), as released: DMN + blender fine-tuned, MaskVAE frozen.

Per step, with the real pair (M, I) and two edited masks M1, M2 from the frozen MaskVAE:
    fake = G(M, M, I), fake_1 = G(M1, M, I), fake_2 = G(M2, M, I)     ONE G call on (M; M1; M2)
    blend, alpha = B(fake_1, fake_2)
G + blender: GAN, feature matching and VGG terms of `fake` and of `blend` against I (D conditioned
on M for both, as released). D: real, fake and blend, total = 0.5 real + 0.25 fake + 0.25 blend
(our stated choice: pix2pixHD's 1:1 real:fake balance with two fake batches).

Optimisers: D, G and the blender, each Adam. The release keeps a separate G and "G + blender" Adam
(two G updates per step); that needs two G backward passes per forward, which DDP does not allow with
the single concatenated G call, so here ONE backward of (reconstruction + blend terms) feeds G's and
the blender's optimisers. As released, only D's and G's learning rates decay; the blender's is constant.
Edits: `simulate_edits` of the frozen, eval-mode MaskVAE, seeded per (seed, rank, step); partner masks
come from a ring buffer of earlier batches' real masks (works at batch size 1, the release's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from maskgan.labels import one_hot
from maskgan.models import dmn as dmn_models
from maskgan.models import mask_vae as vae_models
from maskgan.models.blender import AlphaBlender, BlenderConfig, blender_official, blender_tiny
from maskgan.models.discriminator import DiscriminatorConfig, discriminator_official, discriminator_tiny
from maskgan.models.dmn import DMNConfig
from maskgan.models.mask_vae import EditPartnerBuffer, MaskVAE, MaskVAEConfig
from maskgan.models.perceptual import PerceptualConfig
from maskgan.storage import StorageConfig
from maskgan.training.dmn import DEFAULT_INIT, validate_common
from maskgan.training.gan import GANLossConfig, GANStage, apply_init, split_outputs
from maskgan.training.loop import DataConfig, LoopConfig, as_floats
from maskgan.training.optim import OptimizerConfig, make_adam

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EBSTTrainConfig:
    """EBST training: G, D, blender, frozen MaskVAE, losses, optimisers, upstream checkpoints, loop, data."""

    generator: DMNConfig = field(default_factory=dmn_models.dmn_official_512)
    discriminator: DiscriminatorConfig = field(default_factory=discriminator_official)
    blender: BlenderConfig = field(default_factory=blender_official)
    mask_vae: MaskVAEConfig = field(default_factory=vae_models.mask_vae_official_512)
    perceptual: PerceptualConfig = field(default_factory=lambda: PerceptualConfig(fallback="error"))
    losses: GANLossConfig = field(default_factory=GANLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # G and D (D x multiplier)
    blender_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # constant lr as released
    discriminator_lr_multiplier: float = 1.0
    discriminator_real_weight: float = 0.5
    discriminator_fake_weight: float = 0.25  # each of reconstruction and blend
    init: str = DEFAULT_INIT  # init of the fresh blender (G and D come from the DMN stage)
    ema_decay: float | None = None
    partner_buffer_size: int = 64  # previous real masks kept as edit partners
    dmn_checkpoint: str | None = None  # URI of a DMN-stage checkpoint (generator + discriminator)
    mask_vae_checkpoint: str | None = None  # URI of a MaskVAE-stage checkpoint
    loop: LoopConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        validate_common(self)
        for name in ("discriminator_real_weight", "discriminator_fake_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.partner_buffer_size < 1:
            raise ValueError(f"partner_buffer_size must be >= 1, got {self.partner_buffer_size}")
        if self.mask_vae.image_size != self.generator.resolution:
            raise ValueError(
                f"mask_vae.image_size ({self.mask_vae.image_size}) must equal generator.resolution "
                f"({self.generator.resolution}): the edited masks feed G"
            )
        if self.blender.image_channels != self.generator.image_channels:
            raise ValueError("blender.image_channels must equal generator.image_channels")


def ebst_tiny() -> EBSTTrainConfig:
    """32 px, tiny networks, pixel L1 in place of VGG (as dmn_tiny), a few hundred steps."""
    return EBSTTrainConfig(
        generator=dmn_models.dmn_tiny(),
        discriminator=discriminator_tiny(),
        blender=blender_tiny(),
        mask_vae=vae_models.mask_vae_tiny(),
        perceptual=PerceptualConfig(fallback="none"),
        losses=GANLossConfig(perceptual_weight=0.0, reconstruction_l1_weight=10.0),
        optimizer=OptimizerConfig(lr=1e-3, betas=(0.5, 0.999)),
        blender_optimizer=OptimizerConfig(lr=2e-3, betas=(0.5, 0.999)),
        partner_buffer_size=16,
        loop=LoopConfig(
            max_steps=200,
            batch_size=4,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
            val_every=100,
            val_batches=2,
        ),  # fmt: skip
    )


def ebst_base_256() -> EBSTTrainConfig:
    """Released widths at 256 px, batch 8 per worker; needs VGG19 weights."""
    return EBSTTrainConfig(
        generator=dmn_models.dmn_base_256(),
        mask_vae=vae_models.mask_vae_base_256(),
        optimizer=OptimizerConfig(lr=1e-4, constant_steps=50_000, decay_steps=50_000),
        blender_optimizer=OptimizerConfig(lr=1e-4),
        loop=LoopConfig(
            max_steps=100_000,
            batch_size=8,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
        ),  # fmt: skip
    )


def ebst_official_512() -> EBSTTrainConfig:
    """The release: 512 px, batch 1, Adam 5e-5 / (0.5, 0.999), no flip; needs VGG19 weights."""
    epoch = 24_183
    return EBSTTrainConfig(
        optimizer=OptimizerConfig(lr=5e-5, constant_steps=10 * epoch, decay_steps=10 * epoch),
        blender_optimizer=OptimizerConfig(lr=5e-5),
        loop=LoopConfig(
            max_steps=20 * epoch,
            batch_size=1,
            log_every=100,
            image_every=5_000,
            checkpoint_every=10_000,
            val_every=5_000,
            val_batches=16,
        ),  # fmt: skip
    )


PRESETS: dict[str, Callable[[], EBSTTrainConfig]] = {
    "ebst_tiny": ebst_tiny,
    "ebst_base_256": ebst_base_256,
    "ebst_official_512": ebst_official_512,
}


class EBSTStage(GANStage):
    """Fine-tunes G and D with a fresh blender; networks {"generator", "discriminator", "blender",
    "mask_vae" (frozen, saved for reference)} (+ "generator_ema")."""

    name = "ebst"

    def __init__(self, config: EBSTTrainConfig, device: torch.device | str, rank: int = 0) -> None:
        super().__init__(
            loop=config.loop, device=device, rank=rank, generator=config.generator,
            discriminator=config.discriminator, perceptual=config.perceptual, losses=config.losses,
            optimizer=config.optimizer, discriminator_lr_multiplier=config.discriminator_lr_multiplier,
            init=config.init, ema_decay=config.ema_decay,
        )  # fmt: skip
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.loop.seed + 1)
            self.blender = AlphaBlender(config.blender)
            apply_init(self.blender, config.init)
            self.mask_vae = MaskVAE(config.mask_vae)
        self.blender.to(self.device)
        self.mask_vae.to(self.device).eval().requires_grad_(False)
        self.blender_optimizer = make_adam(self.blender.parameters(), config.blender_optimizer)
        self.partner_buffer = EditPartnerBuffer(config.partner_buffer_size)

    def networks(self) -> dict[str, nn.Module]:
        return {**super().networks(), "blender": self.blender, "mask_vae": self.mask_vae}

    def trained_networks(self) -> dict[str, nn.Module]:
        return {**super().trained_networks(), "blender": self.blender}

    def _state_objects(self) -> dict[str, object]:
        return {
            **super()._state_objects(),
            "blender": self.blender,
            "blender_optimizer": self.blender_optimizer,
            "mask_vae": self.mask_vae,
            "partner_buffer": self.partner_buffer,
        }

    def load_networks(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        """Set upstream weights from state dicts: generator / discriminator (DMN stage), mask_vae."""
        for name, state in weights.items():
            if name not in ("generator", "discriminator", "mask_vae"):
                raise ValueError(f"EBST loads only generator, discriminator, mask_vae weights, got {name!r}")
            self.networks()[name].load_state_dict(state)
        if "generator" in weights and self.ema is not None:
            self.ema.module.load_state_dict(self.generator_net.state_dict())
        self.mask_vae.eval()

    def load_upstream(self, storage_config: StorageConfig | None = None) -> dict[str, str]:
        """Load G and D from config.dmn_checkpoint and the MaskVAE from config.mask_vae_checkpoint."""
        from maskgan.training.checkpoint import load_weights

        used: dict[str, str] = {}
        for uri, names in (
            (self.config.dmn_checkpoint, ("generator", "discriminator")),
            (self.config.mask_vae_checkpoint, ("mask_vae",)),
        ):
            if uri is None:
                logger.warning(
                    "EBST: no checkpoint configured for %s; they start untrained", ", ".join(names)
                )
                continue
            self.load_networks({name: load_weights(uri, name, storage_config) for name in names})
            used.update(dict.fromkeys(names, uri))
        return used

    def edits(self, label: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """M1, M2 (B, H, W) from the frozen MaskVAE; partners are earlier batches' real masks."""
        if len(self.partner_buffer) == 0 and len(label) == 1:
            self.partner_buffer.push(label)  # step 1 at batch 1: the partner is the mask itself (no edit)
        partners = self.partner_buffer.masks()
        edited = self.mask_vae.simulate_edits(
            label, generator=self.generator(step, stream=1), partners=partners
        )
        self.partner_buffer.push(label)
        return edited

    def render(
        self,
        onehot: torch.Tensor,
        image: torch.Tensor,
        m1: torch.Tensor,
        m2: torch.Tensor,
        generator: Callable,
    ) -> dict[str, torch.Tensor]:
        """fake, fake_1, fake_2 from ONE generator call on (M; M1; M2) with the reference pair repeated."""
        size = len(image)
        targets = torch.cat([onehot, one_hot(m1), one_hot(m2)])  # (3B, 19, H, W)
        out = generator(targets, onehot.repeat(3, 1, 1, 1), image.repeat(3, 1, 1, 1))
        fake, fake_1, fake_2 = out.split(size)
        return {"fake": fake, "fake_1": fake_1, "fake_2": fake_2}

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        self.generator_net.train()
        self.discriminator.train()
        self.blender.train()
        image = batch["image"].to(self.device)
        onehot = batch["onehot"].to(self.device)
        label = batch["label"].to(self.device)
        size = len(image)
        m1, m2 = self.edits(label, step)
        lrs = {
            "lr/generator": self.generator_optimizer.param_groups[0]["lr"],
            "lr/discriminator": self.discriminator_optimizer.param_groups[0]["lr"],
            "lr/blender": self.blender_optimizer.param_groups[0]["lr"],
        }
        with self.autocast():
            rendered = self.render(onehot, image, m1, m2, self.runner("generator"))
            blend, alpha = self.runner("blender")(rendered["fake_1"], rendered["fake_2"])
            fake = rendered["fake"]
            d_fake, d_blend, d_real = split_outputs(
                self.judge_for_generator(onehot.repeat(3, 1, 1, 1), torch.cat([fake, blend, image])),
                [size] * 3,
            )
            vgg = self.perceptual_features(torch.cat([fake, blend, image]))
        vgg_fake, vgg_blend, vgg_real = ([f[i * size : (i + 1) * size] for f in vgg] for i in range(3))
        terms = {
            f"{name}_reconstruction": value
            for name, value in self.generator_terms(d_fake, d_real, vgg_fake, vgg_real, fake, image).items()
        }
        terms.update(
            {
                f"{name}_blend": value
                for name, value in self.generator_terms(
                    d_blend, d_real, vgg_blend, vgg_real, blend, image
                ).items()
            }
        )
        generator_loss = sum(terms.values())
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.blender_optimizer.zero_grad(set_to_none=True)
        self.backward(generator_loss)
        generator_norm = self.optimizer_step(self.generator_optimizer)
        blender_norm = self.optimizer_step(self.blender_optimizer)
        self.update_ema()

        with self.autocast():
            d_real_out, d_fake_out, d_blend_out = split_outputs(
                self.runner("discriminator")(
                    onehot.repeat(3, 1, 1, 1), torch.cat([image, fake.detach(), blend.detach()])
                ),
                [size] * 3,
            )
        d_terms = {
            "real": self.discriminator_terms(d_real_out, True),
            "fake_reconstruction": self.discriminator_terms(d_fake_out, False),
            "fake_blend": self.discriminator_terms(d_blend_out, False),
        }
        config = self.config
        discriminator_loss = config.discriminator_real_weight * d_terms[
            "real"
        ] + config.discriminator_fake_weight * (d_terms["fake_reconstruction"] + d_terms["fake_blend"])
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
                **{f"loss/d_{name}": value for name, value in d_terms.items()},
                "loss/d_total": discriminator_loss,
                "edit_changed_fraction": ((m1 != label) | (m2 != label)).float().mean(),
                "alpha_mean": alpha.float().mean(),
                "grad_norm/generator": generator_norm,
                "grad_norm/blender": blender_norm,
                "grad_norm/discriminator": discriminator_norm,
                **lrs,
            }
        )

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Renders of a batch with fixed edits (seeded by the batch ids, not the step): for val and images."""
        image, onehot, label = (batch[key].to(self.device) for key in ("image", "onehot", "label"))
        generator = torch.Generator().manual_seed(int(batch["id"].sum()) if "id" in batch else 0)
        partners = None if len(label) > 1 else label  # batch roll; alone, no edit
        m1, m2 = self.mask_vae.simulate_edits(label, generator=generator, partners=partners)
        with self.autocast():
            rendered = self.render(onehot, image, m1, m2, self.inference_generator())
            blend, alpha = self.blender(rendered["fake_1"], rendered["fake_2"])
        out = {name: value.float() for name, value in rendered.items()}
        return {
            **out,
            "blend": blend.float(),
            "alpha": alpha.float(),
            "m1": m1,
            "m2": m2,
            "image": image,
            "label": label,
        }

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """val/l1 (reconstruction), val/blend_l1 (blend of the two edited renders vs the real image)."""
        out = self._evaluate(batch)
        return as_floats(
            {
                "val/l1": (out["fake"] - out["image"]).abs().mean(),
                "val/blend_l1": (out["blend"] - out["image"]).abs().mean(),
                "val/edit_l1": 0.5
                * ((out["fake_1"] - out["image"]).abs().mean() + (out["fake_2"] - out["image"]).abs().mean()),
            }
        )

    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """mask | reference | generated | M1 | M2 | fake_1 | fake_2 | blend | alpha."""
        out = self._evaluate(batch)
        return {
            "mask": out["label"], "reference": out["image"], "generated": out["fake"], "m1": out["m1"],
            "m2": out["m2"], "fake_1": out["fake_1"], "fake_2": out["fake_2"], "blend": out["blend"],
            "alpha": out["alpha"],
        }  # fmt: skip


def build(config: EBSTTrainConfig, device: torch.device | str, *, rank: int = 0) -> EBSTStage:
    """The EBST stage on `device`; call `load_upstream` (or `load_networks`) before training from scratch."""
    if not isinstance(config, EBSTTrainConfig):
        raise ValueError(f"ebst.build needs an EBSTTrainConfig, got {type(config).__name__}")
    return EBSTStage(config, device, rank=rank)
