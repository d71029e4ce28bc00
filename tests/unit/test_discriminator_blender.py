"""Multi-scale discriminator and alpha blender: parameter counts, shapes, ranges, blending math, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from model_inputs import random_image, random_mask

from maskgan.models.blender import AlphaBlender, BlenderConfig, blender_official, blender_tiny
from maskgan.models.discriminator import (
    DiscriminatorConfig,
    MultiscaleDiscriminator,
    discriminator_official,
    discriminator_tiny,
)

# --- discriminator -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("base_channels", 0), ("num_scales", 0), ("num_layers", 0), ("max_channels", 4)]
)
def test_discriminator_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"DiscriminatorConfig.{field}"):
        DiscriminatorConfig(**{field: value})


@pytest.mark.parametrize(
    ("preset", "params"), [(discriminator_official, 5_568_386), (discriminator_tiny, 27_250)]
)
def test_discriminator_parameter_counts(preset, params):
    with torch.device("meta"):
        model = MultiscaleDiscriminator(preset())
    assert sum(p.numel() for p in model.parameters()) == params


def test_official_discriminator_feature_shapes_at_512():
    config = discriminator_official()
    assert config.in_channels == 22
    with torch.device("meta"):
        outputs = MultiscaleDiscriminator(config)(torch.zeros(1, 19, 512, 512), torch.zeros(1, 3, 512, 512))
    # 4x4 convs with padding 2: stride 2 -> floor(h / 2) + 1, stride 1 -> h + 1.
    assert [tuple(f.shape) for f in outputs[0]] == [
        (1, 64, 257, 257), (1, 128, 129, 129), (1, 256, 65, 65), (1, 512, 66, 66), (1, 1, 67, 67),
    ]  # fmt: skip
    assert [tuple(f.shape) for f in outputs[1]] == [
        (1, 64, 129, 129), (1, 128, 65, 65), (1, 256, 33, 33), (1, 512, 34, 34), (1, 1, 35, 35),
    ]  # fmt: skip


def test_tiny_discriminator_outputs_and_scales():
    torch.manual_seed(0)
    config = discriminator_tiny()
    model = MultiscaleDiscriminator(config)
    mask, image = random_mask(2, 32), random_image(2, 32)
    outputs = model(mask, image)
    assert len(outputs) == config.num_scales
    assert all(len(features) == config.num_layers + 2 for features in outputs)
    assert outputs[0][-1].shape == (2, 1, 11, 11) and outputs[1][-1].shape == (2, 1, 7, 7)
    # Scale 1 sees the input average-pooled (3, stride 2, padding 1, excluding the padding).
    pooled = F.avg_pool2d(torch.cat([mask, image], 1), 3, 2, 1, count_include_pad=False)
    first = model.scales[1].layers[0]
    assert torch.allclose(outputs[1][0], first(pooled))


def test_discriminator_rejects_mismatched_inputs():
    model = MultiscaleDiscriminator(discriminator_tiny())
    with pytest.raises(ValueError, match="must share batch size"):
        model(random_mask(2, 32), random_image(2, 16))
    with pytest.raises(ValueError, match=r"mask must be \(B, 19, H, W\)"):
        model(random_image(2, 32), random_image(2, 32))


def test_discriminator_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = MultiscaleDiscriminator(discriminator_tiny())
    outputs = model(random_mask(2, 32), random_image(2, 32))
    sum(features[-1].square().mean() for features in outputs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_discriminator_bf16_and_channels_last():
    torch.manual_seed(0)
    model = MultiscaleDiscriminator(discriminator_tiny())
    mask, image = random_mask(2, 32), random_image(2, 32)
    with torch.no_grad():
        reference = model(mask, image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(mask, image)
        model = model.to(memory_format=torch.channels_last)
        last = model(mask.to(memory_format=torch.channels_last), image.to(memory_format=torch.channels_last))
    for scale in range(2):
        assert torch.isfinite(low[scale][-1].float()).all()
        assert (low[scale][-1].float() - reference[scale][-1]).abs().max() < 0.1
        assert torch.allclose(last[scale][-1], reference[scale][-1], atol=1e-5)


# --- blender -------------------------------------------------------------------------------------


def test_blender_config_validation_names_the_field():
    with pytest.raises(ValueError, match="BlenderConfig.alpha_channels"):
        BlenderConfig(alpha_channels=2)
    with pytest.raises(ValueError, match="BlenderConfig.base_channels"):
        BlenderConfig(base_channels=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        blender_tiny().base_channels = 3  # type: ignore[misc]


@pytest.mark.parametrize(("preset", "params"), [(blender_official, 4_329_443), (blender_tiny, 9_327)])
def test_blender_parameter_counts_and_shapes(preset, params):
    config = preset()
    with torch.device("meta"):
        model = AlphaBlender(config)
        blended, alpha = model(torch.zeros(1, 3, 512, 512), torch.zeros(1, 3, 512, 512))
    assert sum(p.numel() for p in model.parameters()) == params
    assert blended.shape == (1, 3, 512, 512) and alpha.shape == (1, config.alpha_channels, 512, 512)


def test_blender_output_is_the_alpha_mix_of_its_inputs():
    torch.manual_seed(0)
    model = AlphaBlender(blender_tiny())
    image1, image2 = random_image(2, 32, seed=1), random_image(2, 32, seed=2)
    blended, alpha = model(image1, image2)
    assert alpha.min() > 0 and alpha.max() < 1
    assert torch.allclose(blended, alpha * image1 + (1 - alpha) * image2)
    # A mix of two images in [-1, 1] stays in [-1, 1] and between its inputs.
    assert blended.min() >= -1 and blended.max() <= 1
    low, high = torch.minimum(image1, image2), torch.maximum(image1, image2)
    assert (blended >= low - 1e-6).all() and (blended <= high + 1e-6).all()


def test_single_channel_alpha_broadcasts_over_rgb():
    torch.manual_seed(0)
    model = AlphaBlender(dataclasses.replace(blender_tiny(), alpha_channels=1))
    image1, image2 = random_image(1, 16, seed=1), random_image(1, 16, seed=2)
    blended, alpha = model(image1, image2)
    assert alpha.shape == (1, 1, 16, 16)
    assert torch.allclose(blended, alpha * image1 + (1 - alpha) * image2)


def test_blender_rejects_mismatched_images():
    model = AlphaBlender(blender_tiny())
    with pytest.raises(ValueError, match="must match image1"):
        model(random_image(1, 32), random_image(1, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(random_image(1, 30), random_image(1, 30))


def test_blender_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = AlphaBlender(blender_tiny())
    blended, _ = model(random_image(2, 32, seed=1), random_image(2, 32, seed=2))
    blended.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_blender_bf16_and_channels_last():
    torch.manual_seed(0)
    model = AlphaBlender(blender_tiny())
    image1, image2 = random_image(2, 32, seed=1), random_image(2, 32, seed=2)
    with torch.no_grad():
        reference, _ = model(image1, image2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, alpha = model(image1, image2)
        model = model.to(memory_format=torch.channels_last)
        last, _ = model(*(x.to(memory_format=torch.channels_last) for x in (image1, image2)))
    assert torch.isfinite(low.float()).all() and (low.float() - reference).abs().max() < 0.1
    assert torch.allclose(last, reference, atol=1e-5)
