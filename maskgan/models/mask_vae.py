"""MaskVAE: a convolutional VAE over 19-class face masks, and the EBST editing simulator built on it.

Architecture as released (REFERENCE.md §2): strided 4x4 conv + BatchNorm + LeakyReLU blocks down to
4 x 4, two linear heads to mu and logvar; a linear layer back to 4 x 4 and nearest-upsample +
replicate-pad + 3x3 conv blocks up to the mask size, ending in 19 logits per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import nn

from maskgan.labels import NUM_CLASSES, from_one_hot, one_hot

BOTTOM_SIZE = 4  # spatial size the encoder reduces to and the decoder starts from
LEAKY_SLOPE = 0.2
ENCODER_BN_EPS = 1e-5  # the release keeps PyTorch's default in the encoder ...
DECODER_BN_EPS = 1e-3  # ... and passes 1e-3 in the decoder
EDIT_PARTNERS = ("real", "prior")
_PARTNER_ALIASES = {"batch": "real"}  # the earlier name of "real"


@dataclass(frozen=True, kw_only=True)
class EditSimulatorConfig:
    """How `MaskVAE.simulate_edits` moves latents: z1 = mu + a1 d, z2 = mu - a2 d, d = z_partner - mu.

    a1, a2 ~ U(alpha_range), drawn independently. The range is our choice (the release read its
    edited masks from disk and never said how they were made): up to half way to another face.
    partner "real" (default): z_partner is the mu of another real mask: one of `partners` (e.g. an
        EditPartnerBuffer of earlier batches) when given, else the next sample of the batch (a roll
        by 1); at batch size 1 without partners it refuses. "batch" is accepted as its old name.
    partner "prior": z_partner ~ N(0, I). Opt-in only: a prior draw is not a face the data holds.
    """

    alpha_range: tuple[float, float] = (0.1, 0.5)
    partner: str = "real"

    def __post_init__(self) -> None:
        if not isinstance(self.alpha_range, tuple | list) or len(self.alpha_range) != 2:
            raise ValueError(f"edit.alpha_range must be a pair (low, high), got {self.alpha_range!r}")
        low, high = (float(value) for value in self.alpha_range)
        if not (math.isfinite(low) and math.isfinite(high)) or not 0.0 <= low <= high:
            raise ValueError(
                f"edit.alpha_range must satisfy 0 <= low <= high (finite), got {self.alpha_range!r}"
            )
        object.__setattr__(self, "alpha_range", (low, high))  # a YAML list becomes a tuple
        object.__setattr__(self, "partner", _PARTNER_ALIASES.get(self.partner, self.partner))
        if self.partner not in EDIT_PARTNERS:
            raise ValueError(f"edit.partner must be one of {EDIT_PARTNERS}, got {self.partner!r}")


@dataclass(frozen=True, kw_only=True)
class MaskVAEConfig:
    """Shape of a MaskVAE; the number of down / up blocks follows image_size (down to 4 x 4)."""

    num_classes: int = NUM_CLASSES
    image_size: int = 512
    base_channels: int = 32  # channels of the first encoder block; doubles per block
    latent_dim: int = 1024
    edit: EditSimulatorConfig = field(default_factory=EditSimulatorConfig)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"mask_vae.num_classes must be >= 2, got {self.num_classes}")
        size = self.image_size
        if size < 2 * BOTTOM_SIZE or size & (size - 1):
            raise ValueError(f"mask_vae.image_size must be a power of two >= {2 * BOTTOM_SIZE}, got {size}")
        if self.base_channels < 1:
            raise ValueError(f"mask_vae.base_channels must be >= 1, got {self.base_channels}")
        if self.latent_dim < 1:
            raise ValueError(f"mask_vae.latent_dim must be >= 1, got {self.latent_dim}")
        if not isinstance(self.edit, EditSimulatorConfig):
            raise ValueError(f"mask_vae.edit must be an EditSimulatorConfig, got {type(self.edit).__name__}")

    @property
    def num_down_blocks(self) -> int:
        return int(math.log2(self.image_size // BOTTOM_SIZE))

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * 2**index for index in range(self.num_down_blocks))


def mask_vae_official_512() -> MaskVAEConfig:
    """The released MaskVAE: 512 px, 7 down blocks 32 -> 2048 channels, 1024-d latent (170,619,571 params)."""
    return MaskVAEConfig(image_size=512, base_channels=32, latent_dim=1024)


def mask_vae_base_256() -> MaskVAEConfig:
    """256 px, 6 down blocks 32 -> 1024 channels, 512-d latent (42,666,675 params)."""
    return MaskVAEConfig(image_size=256, base_channels=32, latent_dim=512)


def mask_vae_tiny() -> MaskVAEConfig:
    """32 px, 3 down blocks 16 -> 64 channels, 32-d latent (171,491 params): tests, smoke runs."""
    return MaskVAEConfig(image_size=32, base_channels=16, latent_dim=32)


class EditedLatents(NamedTuple):
    """`MaskVAE.edit_latents`: (B, latent_dim) latents and the (B,) edit magnitudes."""

    mu: torch.Tensor  # the original masks' posterior means
    partner: torch.Tensor  # the latent each edit moves toward (z_1) and away from (z_2)
    z_1: torch.Tensor  # mu + alpha_1 (partner - mu)
    z_2: torch.Tensor  # mu - alpha_2 (partner - mu)
    alpha_1: torch.Tensor
    alpha_2: torch.Tensor


class EditPartnerBuffer:
    """Ring buffer of recent real class maps: the edit partners of `simulate_edits` at any batch size.

    Use: `edits = vae.simulate_edits(label, partners=buffer.masks(), generator=g)`, then
    `buffer.push(label)`; prime it with one batch before the first step when the batch size is 1.
    A sample meets itself only if it comes back while its earlier copy is still held (capacity
    below the dataset size makes that rare); its edit is then the reconstruction.
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"EditPartnerBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._masks: torch.Tensor | None = None  # (N <= capacity, H, W) uint8, oldest first

    def __len__(self) -> int:
        return 0 if self._masks is None else self._masks.shape[0]

    def masks(self) -> torch.Tensor | None:
        """(N, H, W) int64 class maps held, or None while empty."""
        return None if self._masks is None else self._masks.long()

    def push(self, masks: torch.Tensor) -> None:
        """Add (B, H, W) class maps or (B, C, H, W) one-hot; the oldest beyond capacity are dropped."""
        if masks.dim() == 4:
            masks = from_one_hot(masks)
        if masks.dim() != 3 or masks.is_floating_point():
            raise ValueError(f"EditPartnerBuffer.push expects (B, H, W) class maps, got {tuple(masks.shape)}")
        masks = masks.detach().to(torch.uint8)  # 19 classes fit; a quarter of int64's memory
        if self._masks is not None and self._masks.shape[1:] != masks.shape[1:]:
            raise ValueError(
                f"EditPartnerBuffer holds {tuple(self._masks.shape[1:])} masks, got {tuple(masks.shape[1:])}"
            )
        held = masks if self._masks is None else torch.cat([self._masks.to(masks.device), masks])
        self._masks = held[-self.capacity :].clone()

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "masks": None if self._masks is None else self._masks.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self._masks = None if state["masks"] is None else state["masks"].to(torch.uint8)


class EncoderBlock(nn.Sequential):
    """conv 4x4 stride 2 (zero pad 1) + BatchNorm + LeakyReLU 0.2: halves the size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(out_channels, eps=ENCODER_BN_EPS),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class UpConv(nn.Sequential):
    """nearest upsample x2 + replicate pad 1 + conv 3x3: doubles the size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.ReplicationPad2d(1),
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
        )


class DecoderBlock(nn.Sequential):
    """UpConv + BatchNorm (eps 1e-3) + LeakyReLU 0.2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            UpConv(in_channels, out_channels),
            nn.BatchNorm2d(out_channels, eps=DECODER_BN_EPS),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class MaskVAE(nn.Module):
    """VAE over one-hot masks: encode -> (mu, logvar), decode z -> (B, num_classes, H, W) logits."""

    def __init__(self, config: MaskVAEConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.encoder_channels
        deepest = channels[-1]
        flat = deepest * BOTTOM_SIZE * BOTTOM_SIZE
        self.encoder = nn.Sequential(
            *(
                EncoderBlock(c_in, c_out)
                for c_in, c_out in zip((config.num_classes, *channels), channels, strict=False)
            )
        )
        self.to_mu = nn.Linear(flat, config.latent_dim)
        self.to_logvar = nn.Linear(flat, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        reversed_channels = channels[::-1]  # deepest ... base
        self.decoder = nn.Sequential(
            *(
                DecoderBlock(c_in, c_out)
                for c_in, c_out in zip(reversed_channels, reversed_channels[1:], strict=False)
            )
        )
        self.to_logits = UpConv(channels[0], config.num_classes)

    def encode(self, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) one-hot -> mu, logvar, each (B, latent_dim)."""
        self._check_onehot(onehot)
        features = self.encoder(onehot)  # (B, deepest, 4, 4)
        flat = features.flatten(1)
        return self.to_mu(flat), self.to_logvar(flat)

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (drawn from `generator` when given)."""
        eps = _standard_normal(mu.shape, mu, generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, num_classes, H, W) logits."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"decode expects (B, {self.config.latent_dim}) latents, got {tuple(z.shape)}")
        deepest = self.config.encoder_channels[-1]
        hidden = torch.relu(self.from_latent(z)).view(z.shape[0], deepest, BOTTOM_SIZE, BOTTOM_SIZE)
        return self.to_logits(self.decoder(hidden))

    def forward(
        self, onehot: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One-hot -> (logits, mu, logvar); samples z in training mode, decodes mu in eval mode."""
        mu, logvar = self.encode(onehot)
        z = self.reparameterize(mu, logvar, generator) if self.training else mu
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, H, W) class maps or (B, C, H, W) one-hot -> (B, H, W) int64 argmax of decode(mu), eval mode."""
        with self._evaluating():
            mu, _ = self.encode(self._as_onehot(masks))
            return from_one_hot(self.decode(mu))

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode `num` latents z ~ N(0, I) -> (num, H, W) int64 class maps, eval mode."""
        if num < 1:
            raise ValueError(f"sample needs num >= 1, got {num}")
        reference = self.to_mu.weight
        z = _standard_normal((num, self.config.latent_dim), reference, generator)
        with self._evaluating():
            return from_one_hot(self.decode(z))

    @torch.no_grad()
    def interpolate(
        self, mask_a: torch.Tensor, mask_b: torch.Tensor, alpha: float | torch.Tensor
    ) -> torch.Tensor:
        """Decode mu_a + alpha (mu_b - mu_a) -> (B, H, W) int64 class maps; alpha scalar or (B,)."""
        with self._evaluating():
            mu_a, _ = self.encode(self._as_onehot(mask_a))
            mu_b, _ = self.encode(self._as_onehot(mask_b))
            alpha = torch.as_tensor(alpha, device=mu_a.device, dtype=mu_a.dtype).reshape(-1, 1)
            if alpha.shape[0] not in (1, mu_a.shape[0]):
                raise ValueError(f"interpolate alpha must be a scalar or (B,), got {alpha.shape[0]} values")
            return from_one_hot(self.decode(mu_a + alpha * (mu_b - mu_a)))

    @torch.no_grad()
    def edit_latents(
        self,
        masks: torch.Tensor,
        alpha_range: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        partners: torch.Tensor | None = None,
    ) -> EditedLatents:
        """The latents behind `simulate_edits`: z1 = mu + a1 (z_p - mu), z2 = mu - a2 (z_p - mu).

        masks: (B, H, W) class maps or (B, C, H, W) one-hot; partners: (P, ...) the same, masks of
        OTHER real samples (e.g. `EditPartnerBuffer.masks()`); each sample takes one of them drawn
        uniformly from `generator`. Without partners the batch rolled by one is used (B >= 2).
        a1, a2 ~ U(alpha_range) independently, so the two edits differ in size as well as direction.
        Draw order from `generator`: partner indices or prior noise, then a1, then a2.
        """
        edit = self.config.edit if alpha_range is None else replace(self.config.edit, alpha_range=alpha_range)
        onehot = self._as_onehot(masks)
        batch = onehot.shape[0]
        with self._evaluating():  # BatchNorm running statistics: a sample's edit ignores the batch
            mu, _ = self.encode(onehot)  # (B, latent_dim)
            if edit.partner == "prior":
                if partners is not None:
                    raise ValueError(
                        "simulate_edits got partners but edit.partner='prior' draws them from N(0, I); "
                        "set edit.partner='real' to use the partner masks"
                    )
                partner = _standard_normal(mu.shape, mu, generator)
            elif partners is not None:
                partner_onehot = self._as_onehot(partners.to(onehot.device))
                if partner_onehot.shape[0] < 1:
                    raise ValueError("simulate_edits got an empty partners tensor; pass None instead")
                partner_mu, _ = self.encode(partner_onehot)  # (P, latent_dim)
                device = generator.device if generator is not None else mu.device
                index = torch.randint(partner_mu.shape[0], (batch,), generator=generator, device=device)
                partner = partner_mu[index.to(mu.device)]
            elif batch >= 2:
                partner = mu.roll(shifts=1, dims=0)
            else:
                raise ValueError(
                    "simulate_edits at batch size 1 needs partners: masks of other real samples, e.g. "
                    "EditPartnerBuffer.masks() of earlier batches (prime it before the first step); "
                    "edit.partner='prior' (N(0, I) partners) is the opt-in alternative"
                )
            low, high = edit.alpha_range
            alpha_1 = low + (high - low) * _uniform((batch, 1), mu, generator)  # (B, 1)
            alpha_2 = low + (high - low) * _uniform((batch, 1), mu, generator)  # independent of alpha_1
            direction = partner - mu
            return EditedLatents(
                mu=mu,
                partner=partner,
                z_1=mu + alpha_1 * direction,
                z_2=mu - alpha_2 * direction,
                alpha_1=alpha_1.squeeze(1),
                alpha_2=alpha_2.squeeze(1),
            )

    @torch.no_grad()
    def simulate_edits(
        self,
        masks: torch.Tensor,
        alpha_range: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        partners: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EBST edited-mask pair M1, M2: `edit_latents` decoded, two (B, H, W) int64 class maps.

        masks: (B, H, W) class maps or (B, C, H, W) one-hot; partners: masks of other real samples
        (required at batch size 1 unless edit.partner is "prior"). Runs in eval mode, so alpha 0
        gives back `reconstruct(masks)`.
        """
        latents = self.edit_latents(masks, alpha_range, generator, partners)
        with self._evaluating():
            # Decoded separately, each with batch B, so alpha 0 reproduces reconstruct() bit for bit.
            edited_1 = from_one_hot(self.decode(latents.z_1))
            edited_2 = from_one_hot(self.decode(latents.z_2))
        return edited_1, edited_2

    def _as_onehot(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer class maps or (B, C, H, W) one-hot -> (B, C, H, W) float one-hot."""
        if masks.dim() == 3:
            if masks.is_floating_point():
                raise ValueError(f"class maps must hold integer ids, got dtype {masks.dtype}")
            if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= self.config.num_classes):
                raise ValueError(
                    f"class maps hold ids in [{int(masks.min())}, {int(masks.max())}], "
                    f"expected 0..{self.config.num_classes - 1}"
                )
            onehot = one_hot(masks, self.config.num_classes)
        elif masks.dim() == 4:
            onehot = masks.float()
        else:
            raise ValueError(
                f"masks must be (B, H, W) class maps or (B, C, H, W) one-hot, got {tuple(masks.shape)}"
            )
        self._check_onehot(onehot)
        return onehot

    def _check_onehot(self, onehot: torch.Tensor) -> None:
        size, classes = self.config.image_size, self.config.num_classes
        if onehot.dim() != 4 or tuple(onehot.shape[1:]) != (classes, size, size):
            raise ValueError(
                f"MaskVAE expects (B, {classes}, {size}, {size}) one-hot, got {tuple(onehot.shape)}"
            )

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode for the block, then the previous mode back."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)


def _standard_normal(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """N(0, 1) noise drawn on the generator's device, returned on `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) noise drawn on the generator's device, returned on `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)
