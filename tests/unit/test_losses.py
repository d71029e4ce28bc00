"""Losses against values computed by hand on tiny tensors, and which side of each loss gets gradients."""

from __future__ import annotations

import math

import pytest
import torch

from maskgan.labels import NUM_CLASSES, one_hot
from maskgan.losses import (
    VGG_LAYER_WEIGHTS,
    DualEditingDiscriminatorWeights,
    discriminator_loss,
    discriminator_loss_on_images,
    dual_editing_discriminator_loss_on_images,
    dual_editing_discriminator_losses,
    dual_editing_generator_losses,
    elbo_kl_weight,
    feature_matching_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    kl_divergence,
    kl_warmup,
    lsgan_loss,
    mask_vae_loss,
    perceptual_loss,
)
from maskgan.models.discriminator import MultiscaleDiscriminator, discriminator_tiny
from maskgan.models.perceptual import PerceptualConfig, VGG19Features


def scale(*values: float, features: int = 1) -> list[torch.Tensor]:
    """One scale: `features` dummy feature maps then a (1, 1, 1, n) prediction holding `values`."""
    return [torch.zeros(1, 2, 2, 2) for _ in range(features)] + [torch.tensor(values).view(1, 1, 1, -1)]


# Two scales, predictions [0.5, 1.0, -1.0] and [2.0].
OUTPUTS = [scale(0.5, 1.0, -1.0), scale(2.0)]


def test_lsgan_by_hand():
    # real: mean((p - 1)^2) = (0.25 + 0 + 4) / 3, plus (2 - 1)^2 = 1
    assert lsgan_loss(OUTPUTS, True).item() == pytest.approx(4.25 / 3 + 1.0)
    # fake: mean(p^2) = (0.25 + 1 + 1) / 3, plus 4
    assert lsgan_loss(OUTPUTS, False).item() == pytest.approx(2.25 / 3 + 4.0)
    assert gan_generator_loss(OUTPUTS, "lsgan").item() == pytest.approx(4.25 / 3 + 1.0)
    assert gan_discriminator_loss(OUTPUTS, False, "lsgan").item() == pytest.approx(2.25 / 3 + 4.0)


def test_hinge_by_hand():
    # real: mean(relu(1 - p)) = (0.5 + 0 + 2) / 3, plus relu(-1) = 0
    assert hinge_discriminator_loss(OUTPUTS, True).item() == pytest.approx(2.5 / 3)
    # fake: mean(relu(1 + p)) = (1.5 + 2 + 0) / 3, plus 3
    assert hinge_discriminator_loss(OUTPUTS, False).item() == pytest.approx(3.5 / 3 + 3.0)
    # generator: -mean(p) = -0.5 / 3, plus -2
    assert hinge_generator_loss(OUTPUTS).item() == pytest.approx(-0.5 / 3 - 2.0)
    assert gan_generator_loss(OUTPUTS, "hinge").item() == pytest.approx(-0.5 / 3 - 2.0)


def test_discriminator_loss_averages_real_and_fake():
    real, fake = [scale(1.0)], [scale(0.5)]  # lsgan: real term 0, fake term 0.25
    terms = discriminator_loss(real, fake)
    assert terms["real"].item() == 0.0 and terms["fake"].item() == pytest.approx(0.25)
    assert terms["total"].item() == pytest.approx(0.125)


def test_feature_matching_by_hand():
    # 2 scales x (2 features + prediction): n_layers + 1 = 2, so each term weighs (4 / 2) (1 / 2) = 1.
    def outputs(a: float, b: float, c: float, d: float, prediction: float):
        return [
            [torch.full((1, 2, 2, 2), a), torch.full((1, 3, 2, 2), b), torch.full((1, 1, 2, 2), prediction)],
            [torch.full((1, 2, 1, 1), c), torch.full((1, 3, 1, 1), d), torch.full((1, 1, 1, 1), prediction)],
        ]

    fake = outputs(0.5, 1.0, 0.25, 0.0, prediction=5.0)
    real = outputs(0.0, 2.0, 0.0, 0.0, prediction=-5.0)  # predictions differ: they must be ignored
    for tensor in (t for s in fake + real for t in s):
        tensor.requires_grad_(True)
    loss = feature_matching_loss(fake, real, weight=10.0)
    assert loss.item() == pytest.approx(10.0 * (0.5 + 1.0 + 0.25 + 0.0))
    loss.backward()
    assert all(t.grad is None for s in real for t in s), "real features are targets: detached"
    assert fake[0][0].grad is not None and fake[0][-1].grad is None, "the prediction is not matched"


def test_feature_matching_pix2pixhd_weights_for_three_layers():
    # pix2pixHD default n_layers 3: 4 intermediate features per scale, feat weight 4 / 4 = 1, D weight 1/2.
    fake = [[torch.ones(1, 1, 2, 2)] * 4 + [torch.zeros(1, 1, 2, 2)] for _ in range(2)]
    real = [[torch.zeros(1, 1, 2, 2)] * 4 + [torch.zeros(1, 1, 2, 2)] for _ in range(2)]
    assert feature_matching_loss(fake, real).item() == pytest.approx(10.0 * 2 * 4 * 1.0 * 0.5)


def test_perceptual_by_hand():
    real = [torch.zeros(1, 2, 4, 4) for _ in range(5)]
    diffs = (32.0, 16.0, 8.0, 4.0, 1.0)  # each weighted term = 1
    fake = [torch.full((1, 2, 4, 4), diff, requires_grad=True) for diff in diffs]
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert perceptual_loss(fake, real).item() == pytest.approx(10.0 * 5)
    assert perceptual_loss(fake, real, weight=1.0).item() == pytest.approx(5.0)
    assert perceptual_loss([], []).item() == 0.0


def test_kl_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # row 1: -0.5 [(1 + 0 - 1 - 1) + (1 + ln 2 - 0 - 2)] = 1 - 0.5 ln 2; row 2: 0; mean over batch
    assert kl_divergence(mu, logvar).item() == pytest.approx((1 - 0.5 * math.log(2.0)) / 2)


def test_kl_weight_defaults_to_the_per_pixel_elbo_and_warms_up():
    logits = torch.zeros(2, 3, 4, 8)
    target = torch.zeros(2, 4, 8, dtype=torch.int64)
    mu, logvar = torch.full((2, 5), 2.0), torch.zeros(2, 5)  # KL = 0.5 * 5 * 4 = 10 per sample
    terms = mask_vae_loss(logits, target, mu, logvar)
    assert elbo_kl_weight(4, 8) == 1 / 32
    assert terms["kl"].item() == pytest.approx(10.0)
    assert terms["total"].item() == pytest.approx(math.log(3.0) + 10.0 / 32)
    half = mask_vae_loss(logits, target, mu, logvar, kl_weight=0.1, kl_scale=kl_warmup(50, 100))
    assert half["total"].item() == pytest.approx(math.log(3.0) + 0.5 * 0.1 * 10.0)
    assert [kl_warmup(step, 4) for step in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_warmup(1, 0) == 1.0, "warmup_steps 0: no warm-up"
    with pytest.raises(ValueError, match="warmup_steps"):
        kl_warmup(1, -1)
    with pytest.raises(ValueError, match="kl_scale"):
        mask_vae_loss(logits, target, mu, logvar, kl_scale=1.5)


def test_mask_vae_loss_by_hand():
    # two pixels, two classes, both target 0: logits (0, 0) -> ln 2; (ln 3, 0) -> -ln(3/4)
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.zeros(1, 1, 2, dtype=torch.int64)
    mu, logvar = torch.tensor([[2.0]]), torch.tensor([[0.0]])  # KL = -0.5 (1 - 4 - 1) = 2
    terms = mask_vae_loss(logits, target, mu, logvar, kl_weight=0.1)
    cross_entropy = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert terms["cross_entropy"].item() == pytest.approx(cross_entropy)
    assert terms["kl"].item() == pytest.approx(2.0)
    assert terms["total"].item() == pytest.approx(cross_entropy + 0.2)
    weighted = mask_vae_loss(logits, target, mu, logvar, class_weights=torch.tensor([2.0, 1.0]))
    assert weighted["cross_entropy"].item() == pytest.approx(cross_entropy)  # one class: weights cancel


def test_dual_editing_generator_terms_by_hand():
    def d_output(feature: float, prediction: float):
        return [[torch.full((1, 1, 2, 2), feature), torch.full((1, 1, 1, 1), prediction)]]

    vgg_real = [torch.zeros(1, 1, 2, 2) for _ in range(5)]
    vgg_reconstruction = [torch.full((1, 1, 2, 2), 32.0)] + [torch.zeros(1, 1, 2, 2)] * 4  # 10 * 1
    vgg_blend = [torch.zeros(1, 1, 2, 2)] * 4 + [torch.full((1, 1, 2, 2), 0.5)]  # 10 * 0.5
    terms = dual_editing_generator_losses(
        d_real=d_output(0.0, 1.0),
        d_reconstruction=d_output(0.25, 0.5),  # GAN (0.5 - 1)^2 = 0.25; FM 10 * 4 * 0.25 = 10
        d_blend=d_output(0.5, 0.0),  # GAN 1; FM 10 * 4 * 0.5 = 20
        vgg_real=vgg_real,
        vgg_reconstruction=vgg_reconstruction,
        vgg_blend=vgg_blend,
    )
    expected = {
        "gan_reconstruction": 0.25,
        "feature_matching_reconstruction": 10.0,
        "perceptual_reconstruction": 10.0,
        "gan_blend": 1.0,
        "feature_matching_blend": 20.0,
        "perceptual_blend": 5.0,
    }
    assert set(terms) == {*expected, "total"}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value), name
    assert terms["total"].item() == pytest.approx(sum(expected.values()))


def test_dual_editing_without_perceptual_features():
    d = [[torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]]
    terms = dual_editing_generator_losses(
        d_real=d, d_reconstruction=d, d_blend=d, vgg_real=[], vgg_reconstruction=[], vgg_blend=[]
    )
    assert terms["perceptual_reconstruction"].item() == 0.0 and terms["total"].item() == 0.0


def test_dual_editing_discriminator_terms_by_hand():
    real, reconstruction, blend = [scale(1.0)], [scale(0.5)], [scale(1.0)]
    terms = dual_editing_discriminator_losses(d_real=real, d_reconstruction=reconstruction, d_blend=blend)
    assert terms["real"].item() == 0.0
    assert terms["fake_reconstruction"].item() == pytest.approx(0.25)
    assert terms["fake_blend"].item() == pytest.approx(1.0)
    # default: 0.5 real + 0.25 each fake (pix2pixHD's 0.5 (real + fake) balance)
    assert terms["total"].item() == pytest.approx(0.5 * 0.0 + 0.25 * 0.25 + 0.25 * 1.0)
    real = [scale(0.0)]  # real term (0 - 1)^2 = 1
    weights = DualEditingDiscriminatorWeights(real=2.0, reconstruction=1.0, blend=0.0)
    terms = dual_editing_discriminator_losses(
        d_real=real, d_reconstruction=reconstruction, d_blend=blend, weights=weights
    )
    assert terms["total"].item() == pytest.approx(2.0 * 1.0 + 1.0 * 0.25 + 0.0 * 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"real": -0.1}, "real must be >= 0"),
        ({"blend": float("nan")}, "blend must be a finite"),
        ({"real": 0.0}, "real and at least one"),
        ({"reconstruction": 0.0, "blend": 0.0}, "real and at least one"),
    ],
)
def test_dual_editing_d_weights_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualEditingDiscriminatorWeights(**kwargs)


def test_generator_gradient_flows_through_fake_outputs():
    fake_prediction = torch.tensor([[[[0.5]]]], requires_grad=True)
    fake_feature = torch.ones(1, 1, 2, 2, requires_grad=True)
    fake = [[fake_feature, fake_prediction]]
    real = [[torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]]
    (gan_generator_loss(fake) + feature_matching_loss(fake, real)).backward()
    assert fake_prediction.grad.item() == pytest.approx(2 * (0.5 - 1))
    assert torch.allclose(fake_feature.grad, torch.full((1, 1, 2, 2), 10.0 * 4 / 4))


def test_losses_are_float32_under_bfloat16_inputs():
    outputs = [[torch.ones(1, 1, 2, 2, dtype=torch.bfloat16), torch.zeros(1, 1, 1, 1, dtype=torch.bfloat16)]]
    assert lsgan_loss(outputs, True).dtype == torch.float32
    assert feature_matching_loss(outputs, outputs).dtype == torch.float32
    logits = torch.zeros(1, 19, 2, 2, dtype=torch.bfloat16)
    terms = mask_vae_loss(
        logits, torch.zeros(1, 2, 2, dtype=torch.int64), torch.zeros(1, 3), torch.zeros(1, 3)
    )
    assert terms["total"].dtype == torch.float32
    assert terms["cross_entropy"].item() == pytest.approx(math.log(19.0), rel=1e-3)


@pytest.mark.parametrize(
    "outputs",
    [[], torch.zeros(1), [torch.zeros(1)], [[]], [["not a tensor"]]],
)
def test_malformed_discriminator_output_raises(outputs):
    with pytest.raises(ValueError, match="discriminator output"):
        lsgan_loss(outputs, True)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="gan mode"):
        gan_generator_loss(OUTPUTS, "wgan")
    with pytest.raises(ValueError, match="scales"):
        feature_matching_loss([scale(1.0), scale(1.0)], [scale(1.0)])
    with pytest.raises(ValueError, match="intermediate features"):
        feature_matching_loss([[torch.zeros(1, 1, 1, 1)]], [[torch.zeros(1, 1, 1, 1)]])
    with pytest.raises(ValueError, match="layer weights"):
        perceptual_loss([torch.zeros(1)] * 3, [torch.zeros(1)] * 3)
    with pytest.raises(ValueError, match="kl_weight"):
        mask_vae_loss(
            torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1), -1.0
        )
    with pytest.raises(ValueError, match=r"\(B, H, W\) target"):
        mask_vae_loss(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 2), torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="kl_divergence"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------ which side gets gradients


def tiny_networks(seed: int = 0):
    """A stand-in generator and blender (one conv each) and a tiny multi-scale D, 16 px."""
    torch.manual_seed(seed)
    generator = torch.nn.Sequential(torch.nn.Conv2d(NUM_CLASSES, 3, 3, padding=1), torch.nn.Tanh())
    blender = torch.nn.Conv2d(6, 3, 3, padding=1)
    discriminator = MultiscaleDiscriminator(discriminator_tiny())
    masks = one_hot(torch.randint(0, NUM_CLASSES, (2, 16, 16)))
    real = torch.rand(2, 3, 16, 16) * 2 - 1
    return generator, blender, discriminator, masks, real


def grads(module: torch.nn.Module) -> list:
    return [parameter.grad for parameter in module.parameters()]


def test_discriminator_loss_on_images_gives_the_generator_no_gradient():
    generator, _, discriminator, masks, real = tiny_networks()
    fake = generator(masks)
    terms = discriminator_loss_on_images(discriminator, mask=masks, real_image=real, fake_image=fake)
    terms["total"].backward()
    assert all(grad is None for grad in grads(generator)), "D's loss must not reach G"
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads(discriminator))
    # The test can fail: D run on the undetached fake by hand does leak into G.
    discriminator_loss(discriminator(masks, real), discriminator(masks, generator(masks)))["total"].backward()
    assert all(grad is not None for grad in grads(generator))


def test_dual_editing_d_loss_on_images_gives_generator_and_blender_no_gradient():
    generator, blender, discriminator, masks, real = tiny_networks()
    reconstruction = generator(masks)
    blend = torch.sigmoid(blender(torch.cat([generator(masks.roll(1, 0)), reconstruction], 1)))
    terms = dual_editing_discriminator_loss_on_images(
        discriminator, mask=masks, real_image=real, reconstruction=reconstruction, blend=blend
    )
    terms["total"].backward()
    assert all(grad is None for grad in grads(generator) + grads(blender))
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads(discriminator))


def test_d_loss_on_images_equals_separate_d_calls():
    generator, blender, discriminator, masks, real = tiny_networks(1)
    with torch.no_grad():
        reconstruction, blend = generator(masks), torch.tanh(blender(torch.cat([real, real], 1)))
        terms = dual_editing_discriminator_loss_on_images(
            discriminator, mask=masks, real_image=real, reconstruction=reconstruction, blend=blend
        )
        separate = dual_editing_discriminator_losses(
            d_real=discriminator(masks, real),
            d_reconstruction=discriminator(masks, reconstruction),
            d_blend=discriminator(masks, blend),
        )
        single = discriminator_loss_on_images(discriminator, mask=masks, real_image=real, fake_image=blend)
        by_hand = discriminator_loss(discriminator(masks, real), discriminator(masks, blend))
    for name in separate:
        assert terms[name].item() == pytest.approx(separate[name].item(), rel=1e-5), name
    for name in by_hand:
        assert single[name].item() == pytest.approx(by_hand[name].item(), rel=1e-5), name
    with pytest.raises(ValueError, match="batch size"):
        discriminator_loss_on_images(discriminator, mask=masks, real_image=real[:1], fake_image=blend)


def test_dual_editing_generator_losses_detach_every_real_side_input():
    def d_output(value: float) -> list[list[torch.Tensor]]:
        return [
            [
                torch.full((1, 2, 2, 2), value, requires_grad=True),
                torch.full((1, 1, 1, 1), value, requires_grad=True),
            ]
            for _ in range(2)
        ]

    def vgg(value: float) -> list[torch.Tensor]:
        return [torch.full((1, 2, 2, 2), value, requires_grad=True) for _ in range(5)]

    d_real, d_reconstruction, d_blend = d_output(1.0), d_output(0.5), d_output(0.25)
    vgg_real, vgg_reconstruction, vgg_blend = vgg(1.0), vgg(0.5), vgg(0.25)
    terms = dual_editing_generator_losses(
        d_real=d_real,
        d_reconstruction=d_reconstruction,
        d_blend=d_blend,
        vgg_real=vgg_real,
        vgg_reconstruction=vgg_reconstruction,
        vgg_blend=vgg_blend,
    )
    terms["total"].backward()
    real_side = [t for s in d_real for t in s] + vgg_real
    assert all(t.grad is None for t in real_side), "real D and VGG features are targets: detached"
    fake_side = [t for s in d_reconstruction + d_blend for t in s] + vgg_reconstruction + vgg_blend
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in fake_side)


def test_generator_losses_send_no_gradient_into_the_real_image():
    # End to end through a real D and VGG: the real image reaches the loss only as a target.
    generator, blender, discriminator, masks, real = tiny_networks(2)
    real.requires_grad_(True)
    vgg = VGG19Features(PerceptualConfig())
    reconstruction = generator(masks)
    blend = torch.tanh(blender(torch.cat([reconstruction, generator(masks.roll(1, 0))], 1)))
    terms = dual_editing_generator_losses(
        d_real=discriminator(masks, real),
        d_reconstruction=discriminator(masks, reconstruction),
        d_blend=discriminator(masks, blend),
        vgg_real=vgg(real),
        vgg_reconstruction=vgg(reconstruction),
        vgg_blend=vgg(blend),
    )
    terms["total"].backward()
    assert real.grad is None
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads(generator) + grads(blender))
    for name in ("feature_matching", "perceptual"):
        assert terms[f"{name}_reconstruction"].item() > 0 and terms[f"{name}_blend"].item() > 0
