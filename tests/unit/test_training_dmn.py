"""DMN stage mechanics on in-memory batches: gradient isolation, style swap, TTUR, EMA, hinge, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from mask_vae_fixtures import one_thread
from training_inputs import batches, gradient_counts, make_batch

from maskgan import config as config_lib
from maskgan.training import dmn
from maskgan.training.optim import OptimizerConfig


def tiny(**changes) -> dmn.DMNTrainConfig:
    return dataclasses.replace(dmn.dmn_tiny(), **changes)


def test_each_network_gets_exactly_its_own_loss_gradient():
    """One step: G's weights get one gradient (G's loss), D's one (D's loss): no leak either way."""
    stage = dmn.build(tiny(), "cpu")
    generator_counts = gradient_counts(stage.generator_net)
    discriminator_counts = gradient_counts(stage.discriminator)
    with one_thread():
        stage.step(make_batch(), 1)
    assert set(generator_counts.values()) == {1}
    assert set(discriminator_counts.values()) == {1}
    assert all(p.requires_grad for p in stage.discriminator.parameters()), "D must be trainable again"


def test_style_swap_only_adversarial_for_swapped_samples():
    with one_thread():
        swapped = dmn.build(tiny(style_swap_prob=1.0), "cpu").step(make_batch(), 1)
        paired = dmn.build(tiny(), "cpu").step(make_batch(), 1)
    assert swapped["style_swap_fraction"] == 1.0 and paired["style_swap_fraction"] == 0.0
    assert "loss/g_l1" not in swapped and "loss/g_feature_matching" not in swapped
    assert swapped["loss/g_total"] == pytest.approx(swapped["loss/g_gan"])
    assert {"loss/g_l1", "loss/g_feature_matching"} <= set(paired)


def test_style_references_are_self_or_the_next_sample_reproducibly():
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(dmn.style_references(6, 0.0, generator), torch.arange(6))
    assert torch.equal(dmn.style_references(6, 1.0, generator), torch.tensor([1, 2, 3, 4, 5, 0]))
    draws = [dmn.style_references(1000, 0.3, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*draws)
    assert 0.25 < (draws[0] != torch.arange(1000)).float().mean() < 0.35


def test_ttur_multiplier_and_decay_schedule_reach_the_optimisers():
    optimizer = OptimizerConfig(lr=1e-3, constant_steps=1, decay_steps=2)
    stage = dmn.build(tiny(optimizer=optimizer, discriminator_lr_multiplier=4.0), "cpu")
    with one_thread():
        metrics = [stage.step(batch, step) for step, batch in enumerate(batches(3), start=1)]
    assert [m["lr/generator"] for m in metrics] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert [m["lr/discriminator"] for m in metrics] == pytest.approx([4e-3, 4e-3, 2e-3])


def test_hinge_mode_and_ema_of_the_generator():
    stage = dmn.build(tiny(losses=dataclasses.replace(tiny().losses, gan_mode="hinge"), ema_decay=0.5), "cpu")
    assert set(stage.networks()) == {"generator", "discriminator", "generator_ema"}
    assert set(stage.trained_networks()) == {"generator", "discriminator"}
    with one_thread():
        for step, batch in enumerate(batches(2), start=1):
            metrics = stage.step(batch, step)
    assert all(torch.isfinite(torch.tensor(list(metrics.values()))))
    live, average = stage.generator_net.state_dict(), stage.ema.module.state_dict()
    assert any(not torch.equal(live[key], average[key]) for key in live)
    state = stage.state_dict()
    assert "generator_ema" in state
    fresh = dmn.build(tiny(losses=dataclasses.replace(tiny().losses, gan_mode="hinge"), ema_decay=0.5), "cpu")
    fresh.load_state_dict(state)
    assert all(torch.equal(v, fresh.ema.module.state_dict()[k]) for k, v in average.items())


def test_random_vgg_perceptual_term_runs_when_asked():
    from maskgan.models.perceptual import PerceptualConfig

    config = tiny(
        perceptual=PerceptualConfig(fallback="random"),
        losses=dataclasses.replace(tiny().losses, perceptual_weight=10.0),
    )
    with one_thread():
        metrics = dmn.build(config, "cpu").step(make_batch(2), 1)
    assert metrics["loss/g_perceptual"] > 0


def test_full_size_presets_refuse_a_random_vgg():
    with pytest.raises(ValueError, match="perceptual.weights"):
        dmn.build(dmn.dmn_base_256(), "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dmn_base_256", "dmn_official_512"])
def test_full_size_presets_build(name):
    """They build on CPU (no step: minutes at this size); VGG off only because no weights are here."""
    config = config_lib.merge(dmn.PRESETS[name](), {"perceptual": {"fallback": "none"}})
    stage = dmn.build(config, "cpu")
    assert sum(p.numel() for p in stage.generator_net.parameters()) == 89_702_595
    assert config.data.flip is False and config.init == dmn.DEFAULT_INIT


@pytest.mark.parametrize("name", sorted(dmn.PRESETS))
def test_presets_round_trip_through_dicts(name):
    config = dmn.PRESETS[name]()
    assert config_lib.from_dict(type(config), config_lib.to_dict(config)) == config
    if "tiny" not in name:
        assert config.perceptual.fallback == "error" and config.losses.reconstruction_l1_weight == 0.0
