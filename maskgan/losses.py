"""Pure loss functions: GAN (LSGAN, hinge), feature matching, perceptual, KL, MaskVAE, dual-editing.

Discriminator outputs use the pix2pixHD multi-scale format, `MultiScaleOutput`: a list over scales
of lists of feature maps, whose last element is the (B, 1, h, w) patch prediction. Losses are
computed in float32 whatever the input dtype (autocast-safe). Released defaults (REFERENCE.md §2):
LSGAN, feature matching x 10, VGG19 perceptual with layer weights 1/32 ... 1 x 10.

Detachment, as the release does it: every real-side target (D features of the real pair, VGG
features of the real image) is detached inside the loss that takes it; the discriminator's losses
`discriminator_loss_on_images` / `dual_editing_discriminator_loss_on_images` take D and the fake
IMAGES and detach them before D sees them (the release's `discriminate`), so D's loss can never
reach G or the blender. The output-based `discriminator_loss` / `dual_editing_discriminator_losses`
remain for callers that ran D themselves, on detached fakes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MultiScaleOutput = Sequence[Sequence[torch.Tensor]]  # [scale][layer]; [scale][-1] is the prediction
GAN_MODES = ("lsgan", "hinge")
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)  # relu1_1 ... relu5_1
FEATURE_MATCHING_WEIGHT = 10.0
PERCEPTUAL_WEIGHT = 10.0
Discriminator = Callable[[torch.Tensor, torch.Tensor], MultiScaleOutput]  # D(mask one-hot, image)


@dataclass(frozen=True, kw_only=True)
class DualEditingDiscriminatorWeights:
    """EBST D total = real * D_real + reconstruction * D_fake + blend * D_blend (our choice).

    The release returns the three terms and no training code combines them. The default keeps
    pix2pixHD's balance, total = 0.5 (real + fake): half the weight on the real batch, the other
    half shared by the two fake batches (G(M, M, I) and the blend), so D is not pushed twice as hard
    toward "fake" as toward "real", and the loss scale matches the DMN stage's D loss.
    """

    real: float = 0.5
    reconstruction: float = 0.25
    blend: float = 0.25

    def __post_init__(self) -> None:
        for name in ("real", "reconstruction", "blend"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"dual_editing_d_weights.{name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"dual_editing_d_weights.{name} must be >= 0, got {value}")
            object.__setattr__(self, name, float(value))
        if self.real == 0 or self.reconstruction + self.blend == 0:
            raise ValueError(
                "dual_editing_d_weights: real and at least one of reconstruction / blend must be > 0, "
                f"got {self}"
            )


def lsgan_loss(outputs: MultiScaleOutput, target_is_real: bool) -> torch.Tensor:
    """sum over scales of mean((pred - t)^2), t = 1 for real, 0 for fake (pix2pixHD's GANLoss)."""
    target = 1.0 if target_is_real else 0.0
    return _sum(((prediction - target) ** 2).mean() for prediction in _predictions(outputs))


def hinge_discriminator_loss(outputs: MultiScaleOutput, target_is_real: bool) -> torch.Tensor:
    """sum over scales of mean(relu(1 - pred)) for real, mean(relu(1 + pred)) for fake."""
    sign = -1.0 if target_is_real else 1.0
    return _sum(F.relu(1.0 + sign * prediction).mean() for prediction in _predictions(outputs))


def hinge_generator_loss(outputs: MultiScaleOutput) -> torch.Tensor:
    """sum over scales of -mean(pred)."""
    return _sum(-prediction.mean() for prediction in _predictions(outputs))


def gan_discriminator_loss(
    outputs: MultiScaleOutput, target_is_real: bool, mode: str = "lsgan"
) -> torch.Tensor:
    """The discriminator's loss on one batch judged real or fake, in `mode` ("lsgan" or "hinge")."""
    _check_mode(mode)
    if mode == "lsgan":
        return lsgan_loss(outputs, target_is_real)
    return hinge_discriminator_loss(outputs, target_is_real)


def gan_generator_loss(outputs: MultiScaleOutput, mode: str = "lsgan") -> torch.Tensor:
    """The generator's adversarial loss on D(fake): LSGAN toward 1, or hinge -mean(pred)."""
    _check_mode(mode)
    if mode == "lsgan":
        return lsgan_loss(outputs, target_is_real=True)
    return hinge_generator_loss(outputs)


def discriminator_loss(
    real_outputs: MultiScaleOutput, fake_outputs: MultiScaleOutput, mode: str = "lsgan"
) -> dict[str, torch.Tensor]:
    """{"real", "fake", "total" = 0.5 (real + fake)} as pix2pixHD, on D outputs of DETACHED fakes.

    Prefer discriminator_loss_on_images, which detaches the fakes itself.
    """
    real = gan_discriminator_loss(real_outputs, True, mode)
    fake = gan_discriminator_loss(fake_outputs, False, mode)
    return {"real": real, "fake": fake, "total": 0.5 * (real + fake)}


def discriminator_loss_on_images(
    discriminator: Discriminator,
    *,
    mask: torch.Tensor,
    real_image: torch.Tensor,
    fake_image: torch.Tensor,
    gan_mode: str = "lsgan",
) -> dict[str, torch.Tensor]:
    """D's loss on (M, I) real and (M, fake) fake, detaching the inputs itself; keys as discriminator_loss.

    mask: (B, C, H, W) one-hot; images (B, 3, H, W). One D call on the concatenated batch: D's norms
    are per-sample (instance norm), so the numbers equal separate calls.
    """
    real_outputs, fake_outputs = _discriminate_detached(discriminator, mask, [real_image, fake_image])
    return discriminator_loss(real_outputs, fake_outputs, gan_mode)


def dual_editing_discriminator_loss_on_images(
    discriminator: Discriminator,
    *,
    mask: torch.Tensor,
    real_image: torch.Tensor,
    reconstruction: torch.Tensor,
    blend: torch.Tensor,
    gan_mode: str = "lsgan",
    weights: DualEditingDiscriminatorWeights | None = None,
) -> dict[str, torch.Tensor]:
    """EBST D loss on I, Ir = G(M, M, I) and B = blend(...), all judged with M; detaches the inputs itself.

    Keys as dual_editing_discriminator_losses; one D call on the concatenated (3B) batch.
    """
    real, fake_reconstruction, fake_blend = _discriminate_detached(
        discriminator, mask, [real_image, reconstruction, blend]
    )
    return dual_editing_discriminator_losses(
        d_real=real,
        d_reconstruction=fake_reconstruction,
        d_blend=fake_blend,
        gan_mode=gan_mode,
        weights=weights,
    )


def feature_matching_loss(
    fake_outputs: MultiScaleOutput, real_outputs: MultiScaleOutput, weight: float = FEATURE_MATCHING_WEIGHT
) -> torch.Tensor:
    """weight * sum_s sum_l (1 / num_D) (4 / (n_layers + 1)) mean|fake_sl - real_sl| (pix2pixHD form).

    l runs over each scale's intermediate features (the prediction excluded), so n_layers + 1 of
    them; the sum equals weight * 4 * (mean over scales and layers of the L1). Real features are
    detached: they are targets.
    """
    _check_same_structure(fake_outputs, real_outputs)
    num_scales = len(fake_outputs)
    terms = []
    for fake_scale, real_scale in zip(fake_outputs, real_outputs, strict=True):
        num_features = len(fake_scale) - 1  # = n_layers + 1
        if num_features < 1:
            raise ValueError(
                "feature matching needs intermediate features: each scale has only its prediction"
            )
        layer_weight = 4.0 / num_features / num_scales
        for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            terms.append(layer_weight * F.l1_loss(fake.float(), real.detach().float()))
    return weight * _sum(terms)


def perceptual_loss(
    fake_features: Sequence[torch.Tensor],
    real_features: Sequence[torch.Tensor],
    layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
    weight: float = PERCEPTUAL_WEIGHT,
) -> torch.Tensor:
    """weight * sum_k layer_weights[k] * mean|fake_k - real_k| over VGG19 relu1_1..relu5_1; real detached.

    Empty feature lists (VGG19Features with fallback "none") give a 0-dim zero: the term is off.
    """
    if len(fake_features) != len(real_features):
        raise ValueError(
            f"perceptual loss got {len(fake_features)} fake and {len(real_features)} real features"
        )
    if not fake_features:
        return torch.zeros(())
    if len(layer_weights) != len(fake_features):
        raise ValueError(
            f"perceptual loss has {len(layer_weights)} layer weights for {len(fake_features)} features"
        )
    terms = []
    for layer_weight, fake, real in zip(layer_weights, fake_features, real_features, strict=True):
        if fake.shape != real.shape:
            raise ValueError(
                f"perceptual features differ in shape: {tuple(fake.shape)} vs {tuple(real.shape)}"
            )
        terms.append(layer_weight * F.l1_loss(fake.float(), real.detach().float()))
    return weight * _sum(terms)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -0.5 sum_d (1 + logvar - mu^2 - exp(logvar)), mean over batch.

    mu, logvar: (B, latent_dim).
    """
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(
            f"kl_divergence expects two (B, D) tensors, got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def elbo_kl_weight(height: int, width: int) -> float:
    """1 / (H W): the KL weight that makes mask_vae_loss the per-pixel ELBO (beta = 1)."""
    if height < 1 or width < 1:
        raise ValueError(f"elbo_kl_weight needs a positive size, got {height} x {width}")
    return 1.0 / (height * width)


def kl_warmup(step: int, warmup_steps: int) -> float:
    """KL weight factor at `step` (1-based): linear from 1 / warmup_steps to 1 over warmup_steps, then 1.

    warmup_steps 0 turns the warm-up off. Pure function of the step, so a resumed run continues it.
    """
    if warmup_steps < 0:
        raise ValueError(f"kl warmup_steps must be >= 0, got {warmup_steps}")
    if step < 0:
        raise ValueError(f"kl_warmup step must be >= 0, got {step}")
    if warmup_steps == 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def mask_vae_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float | None = None,
    class_weights: torch.Tensor | None = None,
    *,
    kl_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """{"cross_entropy", "kl", "total" = cross_entropy + kl_scale * kl_weight * kl} for the MaskVAE.

    logits: (B, C, H, W); target: (B, H, W) int64 class map; cross-entropy is the mean over pixels,
    KL the per-sample sum over latent dims. kl_weight None (default) = elbo_kl_weight(H, W), the
    per-pixel ELBO (beta 1, ~1e-3 at 32 px, 3.8e-6 at 512 px): the release gave no weight, and beta 1
    is the unbiased VAE objective at every resolution; a fixed number would mean a different beta
    per preset. kl_scale: the warm-up factor, e.g. kl_warmup(step, warmup_steps).
    class_weights: optional (C,) weights for rare classes (eyes, lips).
    """
    if kl_weight is not None and not kl_weight >= 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    if not 0 <= kl_scale <= 1:
        raise ValueError(f"kl_scale must be in [0, 1], got {kl_scale}")
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"mask_vae_loss expects (B, C, H, W) logits and a (B, H, W) target, "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if kl_weight is None:
        kl_weight = elbo_kl_weight(logits.shape[2], logits.shape[3])
    weight = class_weights.float().to(logits.device) if class_weights is not None else None
    cross_entropy = F.cross_entropy(logits.float(), target.long(), weight=weight)
    kl = kl_divergence(mu, logvar)
    return {"cross_entropy": cross_entropy, "kl": kl, "total": cross_entropy + kl_scale * kl_weight * kl}


def dual_editing_generator_losses(
    *,
    d_real: MultiScaleOutput,
    d_reconstruction: MultiScaleOutput,
    d_blend: MultiScaleOutput,
    vgg_real: Sequence[torch.Tensor],
    vgg_reconstruction: Sequence[torch.Tensor],
    vgg_blend: Sequence[torch.Tensor],
    gan_mode: str = "lsgan",
    feature_matching_weight: float = FEATURE_MATCHING_WEIGHT,
    perceptual_weight: float = PERCEPTUAL_WEIGHT,
    layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
) -> dict[str, torch.Tensor]:
    """EBST generator terms pushing Ir = G(M, M, I) and B = blend(G(M1, M, I), G(M2, M, I)) toward I.

    d_*: D(M, I), D(M, Ir), D(M, B) (the release conditions D on M for the blend too);
    vgg_*: VGG19 features of I, Ir, B (empty lists when the perceptual term is off).
    Returns gan_, feature_matching_, perceptual_ {reconstruction, blend} (the release's G_GAN,
    G_GAN_Feat, G_VGG, GB_GAN, GB_GAN_Feat, GB_VGG) and "total", their sum.
    """
    terms = {}
    for name, d_fake, vgg_fake in (
        ("reconstruction", d_reconstruction, vgg_reconstruction),
        ("blend", d_blend, vgg_blend),
    ):
        terms[f"gan_{name}"] = gan_generator_loss(d_fake, gan_mode)
        terms[f"feature_matching_{name}"] = feature_matching_loss(d_fake, d_real, feature_matching_weight)
        perceptual = perceptual_loss(vgg_fake, vgg_real, layer_weights, perceptual_weight)
        terms[f"perceptual_{name}"] = perceptual.to(terms[f"gan_{name}"].device)
    terms["total"] = _sum(terms.values())
    return terms


def dual_editing_discriminator_losses(
    *,
    d_real: MultiScaleOutput,
    d_reconstruction: MultiScaleOutput,
    d_blend: MultiScaleOutput,
    gan_mode: str = "lsgan",
    weights: DualEditingDiscriminatorWeights | None = None,
) -> dict[str, torch.Tensor]:
    """EBST discriminator terms (release names D_real, D_fake, D_blend) on D outputs of DETACHED fakes.

    total = weights.real * real + weights.reconstruction * fake_reconstruction + weights.blend *
    fake_blend; default 0.5 / 0.25 / 0.25 (DualEditingDiscriminatorWeights says why). Prefer
    dual_editing_discriminator_loss_on_images, which detaches the fakes itself.
    """
    weights = weights or DualEditingDiscriminatorWeights()
    real = gan_discriminator_loss(d_real, True, gan_mode)
    fake_reconstruction = gan_discriminator_loss(d_reconstruction, False, gan_mode)
    fake_blend = gan_discriminator_loss(d_blend, False, gan_mode)
    return {
        "real": real,
        "fake_reconstruction": fake_reconstruction,
        "fake_blend": fake_blend,
        "total": weights.real * real
        + weights.reconstruction * fake_reconstruction
        + weights.blend * fake_blend,
    }


def _discriminate_detached(
    discriminator: Discriminator, mask: torch.Tensor, images: Sequence[torch.Tensor]
) -> list[list[list[torch.Tensor]]]:
    """D(mask, image) for each image, inputs detached, as one call on the concatenated batch."""
    batch = mask.shape[0]
    for image in images:
        if image.shape[0] != batch:
            raise ValueError(
                f"D-loss images must share the mask's batch size {batch}, got {tuple(image.shape)}"
            )
    mask = mask.detach()
    outputs = discriminator(
        torch.cat([mask] * len(images)), torch.cat([image.detach() for image in images])
    )  # [scale][layer] of (len(images) * B, ...)
    return [
        [[feature[index * batch : (index + 1) * batch] for feature in scale] for scale in outputs]
        for index in range(len(images))
    ]


def _predictions(outputs: MultiScaleOutput) -> list[torch.Tensor]:
    """The last tensor of each scale, in float32; raises ValueError on a malformed output."""
    if isinstance(outputs, torch.Tensor) or not outputs:
        raise ValueError("discriminator output must be a non-empty list over scales of lists of tensors")
    predictions = []
    for index, scale in enumerate(outputs):
        if isinstance(scale, torch.Tensor) or not scale or not isinstance(scale[-1], torch.Tensor):
            raise ValueError(
                f"discriminator output scale {index} must be a non-empty list of tensors "
                "ending in the prediction"
            )
        predictions.append(scale[-1].float())
    return predictions


def _check_same_structure(fake_outputs: MultiScaleOutput, real_outputs: MultiScaleOutput) -> None:
    _predictions(fake_outputs)
    _predictions(real_outputs)
    if len(fake_outputs) != len(real_outputs):
        raise ValueError(f"fake output has {len(fake_outputs)} scales, real output {len(real_outputs)}")
    for index, (fake_scale, real_scale) in enumerate(zip(fake_outputs, real_outputs, strict=True)):
        if len(fake_scale) != len(real_scale):
            raise ValueError(f"scale {index}: fake has {len(fake_scale)} features, real {len(real_scale)}")
        for fake, real in zip(fake_scale, real_scale, strict=True):
            if fake.shape != real.shape:
                raise ValueError(
                    f"scale {index}: feature shapes differ, {tuple(fake.shape)} vs {tuple(real.shape)}"
                )


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of 0-dim tensors (a plain `sum` would start from the int 0)."""
    terms = list(terms)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
