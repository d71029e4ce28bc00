"""DMN generator, AdaIN and SFT: shapes, parameter counts, style routing, gradients, precision and layouts."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
from model_inputs import random_image, random_mask

from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_base_256, dmn_official_512, dmn_tiny
from maskgan.models.norms import SFT, AdaIN, adaptive_instance_norm, split_adain_params


@pytest.fixture(scope="module")
def tiny() -> DenseMappingNetwork:
    """Tiny DMN with PyTorch's default conv init instead of the released N(0, 0.02).

    The style encoder has no normalisation, so under N(0, 0.02) its signal shrinks layer by layer and
    at init the style code barely depends on the reference (~1e-7 at tiny widths); routing tests need
    a live path.
    """
    torch.manual_seed(0)
    model = DenseMappingNetwork(dmn_tiny())
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            module.reset_parameters()
    return model


def tiny_inputs(batch: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        random_mask(batch, size, seed=1),
        random_mask(batch, size, seed=2),
        random_image(batch, size, seed=3),
    )


# --- configs and presets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("base_channels", 0), ("num_res_blocks", 0), ("encoder_num_downsample", 2), ("resolution", 100),
     ("init_std", 0.0), ("num_downsample", -1)],
)  # fmt: skip
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"DMNConfig.{field}"):
        DMNConfig(**{field: value})


def test_config_is_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        dmn_tiny().base_channels = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        DMNConfig(19)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("preset", "params", "style_dim"),
    [(dmn_official_512, 89_702_595, 16_384), (dmn_base_256, 89_702_595, 16_384), (dmn_tiny, 81_459, 256)],
)
def test_preset_parameter_counts_and_output_shapes(preset, params, style_dim):
    config = preset()
    size = config.resolution
    with torch.device("meta"):  # full-size presets: shapes only, no memory or compute
        model = DenseMappingNetwork(config)
        mask = torch.zeros(2, 19, size, size)
        style = model.style_code(mask, torch.zeros(2, 3, size, size))
        out = model.decode(mask, style)
    assert sum(p.numel() for p in model.parameters()) == params
    assert config.style_dim == style_dim == 4 * config.num_res_blocks * config.bottleneck_channels
    assert style.shape == (2, style_dim)
    assert out.shape == (2, 3, size, size)


def test_official_layout_matches_the_release():
    config = dmn_official_512()
    assert config.bottleneck_channels == 1024 and config.adain_features == (1024,) * 8
    assert config.sft_channels == 64 and config.size_multiple == 32


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_output_shape_and_range(tiny, size):
    out = tiny(*tiny_inputs(2, size))
    assert out.shape == (2, 3, size, size)
    assert out.min() >= -1 and out.max() <= 1
    assert out.std() > 1e-3


def test_generator_holds_no_adain_state(tiny):
    adains = [module for module in tiny.modules() if isinstance(module, AdaIN)]
    assert len(adains) == 2 * tiny.config.num_res_blocks
    assert all(not list(module.parameters()) and not list(module.buffers()) for module in adains)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda m, r, i: (m[:, :18], r, i), "target_mask must be"),
        (lambda m, r, i: (m, r[:, :, :28, :28], i[:, :, :28, :28]), "multiples of 8"),
        (lambda m, r, i: (m, r, i[:, :, :16, :16]), "must share batch size"),
        (lambda m, r, i: (m, r, i[:, :1]), "reference_image must be"),
    ],
)
def test_bad_inputs_raise_value_errors(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(*bad(*tiny_inputs()))


def test_bad_style_code_raises(tiny):
    mask = random_mask(2, 32)
    with pytest.raises(ValueError, match=r"style code must be \(2, 256\)"):
        tiny.decode(mask, torch.zeros(2, 255))


# --- AdaIN and SFT math on hand-checked tensors --------------------------------------------------


def test_adain_math_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    weight, bias = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    # mean 2.5, biased variance 1.25: out = 1 + 2 (x - 2.5) / sqrt(1.25 + 1e-5)
    expected = torch.tensor([-1.683275, 0.105575, 1.894425, 3.683275]).view(1, 1, 2, 2)
    assert torch.allclose(AdaIN(1)(x, weight, bias), expected, atol=1e-5)
    # Per sample: the second sample uses its own affine values.
    batch = torch.cat([x, 10 * x])
    out = adaptive_instance_norm(batch, torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [-3.0]]))
    assert torch.allclose(out[0], expected[0], atol=1e-5)
    assert torch.allclose(out[1], torch.full((1, 2, 2), -3.0))


def test_adain_rejects_wrong_affine_shapes():
    with pytest.raises(ValueError, match=r"weight and bias must be \(1, 2\)"):
        AdaIN(2)(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3), torch.zeros(1, 2))


def test_split_adain_params_follows_the_release_layout():
    style = torch.arange(12.0).view(1, 12)  # two layers of 3 channels: [bias | weight] each
    (weight0, bias0), (weight1, bias1) = split_adain_params(style, (3, 3))
    assert bias0.tolist() == [[0, 1, 2]] and weight0.tolist() == [[3, 4, 5]]
    assert bias1.tolist() == [[6, 7, 8]] and weight1.tolist() == [[9, 10, 11]]


def test_sft_math_by_hand():
    sft = SFT(1)
    with torch.no_grad():
        for conv, (w, b) in {
            sft.scale_conv1: (2.0, -1.0), sft.scale_conv2: (1.0, 0.5),
            sft.shift_conv1: (1.0, 0.0), sft.shift_conv2: (3.0, 0.0),
        }.items():  # fmt: skip
            conv.weight.fill_(w)
            conv.bias.fill_(b)
    x = torch.tensor([2.0, 10.0]).view(1, 1, 1, 2)
    cond = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    # scale = 1 * lrelu(2 cond - 1) + 0.5 = [1.5, 0.2]; shift = 3 * lrelu(cond) = [3, -0.3]
    out = sft(x, cond)
    assert torch.allclose(out, torch.tensor([2 * 1.5 + 3, 10 * 0.2 - 0.3]).view(1, 1, 1, 2))


# --- style routing -------------------------------------------------------------------------------


def test_forward_is_decode_of_style_code(tiny):
    target, ref_mask, ref_image = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(
            tiny(target, ref_mask, ref_image), tiny.decode(target, tiny.style_code(ref_mask, ref_image))
        )


def test_each_adain_layer_receives_its_slice_of_the_style_code(tiny):
    target = random_mask(2, 32)
    style = torch.randn(2, tiny.config.style_dim)
    received = []
    hooks = [
        module.register_forward_hook(lambda module, args, out: received.append(args[1:]))
        for module in tiny.modules()
        if isinstance(module, AdaIN)
    ]
    try:
        with torch.no_grad():
            tiny.decode(target, style)
    finally:
        for hook in hooks:
            hook.remove()
    channels = tiny.config.bottleneck_channels
    assert len(received) == len(tiny.config.adain_features)
    for index, (weight, bias) in enumerate(received):
        offset = 2 * channels * index
        assert torch.equal(bias, style[:, offset : offset + channels])
        assert torch.equal(weight, style[:, offset + channels : offset + 2 * channels])


def test_perturbing_the_style_code_changes_the_output(tiny):
    target, ref_mask, ref_image = tiny_inputs()
    with torch.no_grad():
        style = tiny.style_code(ref_mask, ref_image)
        base = tiny.decode(target, style)
        for layer in range(len(tiny.config.adain_features)):  # every AdaIN layer's slice matters
            perturbed = style.clone()
            start = 2 * tiny.config.bottleneck_channels * layer
            perturbed[:, start : start + 2 * tiny.config.bottleneck_channels] += 1.0
            assert (tiny.decode(target, perturbed) - base).abs().max() > 1e-3, layer


def test_reference_image_acts_only_through_the_style_code(tiny, monkeypatch):
    target, ref_mask, ref_image = tiny_inputs()
    other_image = random_image(2, 32, seed=9)
    with torch.no_grad():
        style = tiny.style_code(ref_mask, ref_image)
        assert (tiny.style_code(ref_mask, other_image) - style).abs().max() > 1e-4
        assert (tiny(target, ref_mask, other_image) - tiny(target, ref_mask, ref_image)).abs().max() > 1e-4
        # Hold the style code fixed: the reference image (and mask) then have no effect at all.
        monkeypatch.setattr(tiny, "style_code", lambda mask, image: style)
        assert torch.equal(tiny(target, ref_mask, other_image), tiny(target, ref_mask, ref_image))
        assert torch.equal(tiny(target, random_mask(2, 32, seed=7), other_image), tiny.decode(target, style))


def test_reference_mask_modulates_the_style_code(tiny):
    _, ref_mask, ref_image = tiny_inputs()
    with torch.no_grad():
        changed = tiny.style_code(random_mask(2, 32, seed=11), ref_image) - tiny.style_code(
            ref_mask, ref_image
        )
    assert changed.abs().max() > 1e-4


def test_target_mask_drives_the_layout(tiny):
    _, ref_mask, ref_image = tiny_inputs()
    with torch.no_grad():
        style = tiny.style_code(ref_mask, ref_image)
        diff = tiny.decode(random_mask(2, 32, seed=21), style) - tiny.decode(
            random_mask(2, 32, seed=22), style
        )
    assert diff.abs().max() > 1e-3


def test_samples_in_a_batch_are_independent(tiny):
    target, ref_mask, ref_image = tiny_inputs()
    with torch.no_grad():
        batch = tiny(target, ref_mask, ref_image)
        single = tiny(target[1:], ref_mask[1:], ref_image[1:])
    assert torch.allclose(batch[1:], single, atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = DenseMappingNetwork(dmn_tiny())
    target, ref_mask, ref_image = tiny_inputs()
    model(target, ref_mask, ref_image).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --- precision, memory layout, compiler ----------------------------------------------------------


def test_bf16_autocast(tiny):
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = tiny(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny(*inputs)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert torch.isfinite(out.float()).all()
    assert (out.float() - reference).abs().max() < 0.1


def test_bf16_autocast_backward():
    torch.manual_seed(0)
    model = DenseMappingNetwork(dmn_tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(*tiny_inputs()).float().abs().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = DenseMappingNetwork(dmn_tiny())
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = model(*inputs)
        model = model.to(memory_format=torch.channels_last)
        out = model(*(x.to(memory_format=torch.channels_last) for x in inputs))
    assert torch.allclose(out, reference, atol=1e-5)


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="torch.compile (inductor, CPU) needs a C compiler; none on PATH")  # fmt: skip
def test_torch_compile_builds_and_runs_the_tiny_generator():
    torch.manual_seed(0)
    model = DenseMappingNetwork(dmn_tiny())
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = model(*inputs)
        compiled = torch.compile(model)
        out = compiled(*inputs)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-4)
    assert math.isfinite(float(out.abs().max()))
