"""EBST stage mechanics on in-memory batches: one concatenated G call, edits, gradient isolation, batch 1."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from mask_vae_fixtures import one_thread
from training_inputs import batches, gradient_counts, make_batch

from maskgan import config as config_lib
from maskgan.labels import one_hot
from maskgan.training import dmn, ebst


def tiny(**changes) -> ebst.EBSTTrainConfig:
    return dataclasses.replace(ebst.ebst_tiny(), **changes)


def test_one_concatenated_generator_call_equals_three_separate_calls():
    stage = ebst.build(tiny(), "cpu")
    batch = make_batch(3)
    m1, m2 = stage.edits(batch["label"], step=1)
    onehot, image = batch["onehot"], batch["image"]
    with torch.no_grad(), one_thread():
        together = stage.render(onehot, image, m1, m2, stage.generator_net)
        apart = {
            "fake": stage.generator_net(onehot, onehot, image),
            "fake_1": stage.generator_net(one_hot(m1), onehot, image),
            "fake_2": stage.generator_net(one_hot(m2), onehot, image),
        }
    for name, value in apart.items():
        torch.testing.assert_close(together[name], value, rtol=0, atol=1e-5, msg=name)
    assert not torch.equal(together["fake_1"], together["fake"]), "the edits must change the render"


def test_edits_are_reproducible_per_seed_and_step():
    def edits(seed, step):
        stage = ebst.build(
            dataclasses.replace(tiny(), loop=dataclasses.replace(tiny().loop, seed=seed)), "cpu"
        )
        stage.load_networks({"mask_vae": reference.mask_vae.state_dict()})
        return stage.edits(make_batch(4)["label"], step)

    reference = ebst.build(tiny(), "cpu")
    with torch.no_grad():  # a non-degenerate VAE: random decoder weights, scaled up
        for parameter in reference.mask_vae.parameters():
            parameter.mul_(3)
    first, again, other_step = edits(0, 5), edits(0, 5), edits(0, 6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, other_step, strict=True))


def test_each_network_gets_exactly_its_own_loss_gradient():
    stage = ebst.build(tiny(), "cpu")
    counts = {name: gradient_counts(network) for name, network in stage.trained_networks().items()}
    with one_thread():
        stage.step(make_batch(2), 1)
    for name, network_counts in counts.items():
        assert set(network_counts.values()) == {1}, name
    assert not any(p.requires_grad for p in stage.mask_vae.parameters()) and not stage.mask_vae.training


def test_batch_size_one_uses_earlier_masks_as_edit_partners():
    stage = ebst.build(tiny(partner_buffer_size=3), "cpu")
    with one_thread():
        for step, batch in enumerate(batches(4, batch_size=1), start=1):
            metrics = stage.step(batch, step)
    assert len(stage.partner_buffer) == 3
    assert all(torch.isfinite(torch.tensor(list(metrics.values()))))
    state = stage.state_dict()
    fresh = ebst.build(tiny(partner_buffer_size=3), "cpu")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.partner_buffer.masks(), stage.partner_buffer.masks())


def test_blender_lr_stays_constant_while_generator_and_discriminator_decay():
    optimizer = dataclasses.replace(tiny().optimizer, constant_steps=1, decay_steps=2)
    stage = ebst.build(tiny(optimizer=optimizer), "cpu")
    with one_thread():
        metrics = [stage.step(batch, step) for step, batch in enumerate(batches(3, 2), start=1)]
    assert [m["lr/generator"] for m in metrics] == pytest.approx([1e-3, 1e-3, 5e-4])
    assert [m["lr/blender"] for m in metrics] == pytest.approx([2e-3] * 3)


def test_loads_upstream_weights_and_reports_the_networks():
    dmn_stage = dmn.build(dmn.dmn_tiny(), "cpu")
    stage = ebst.build(tiny(ema_decay=0.9), "cpu")
    stage.load_networks({name: net.state_dict() for name, net in dmn_stage.trained_networks().items()})
    for key, value in dmn_stage.generator_net.state_dict().items():
        assert torch.equal(stage.generator_net.state_dict()[key], value)
        assert torch.equal(stage.ema.module.state_dict()[key], value)
    with pytest.raises(ValueError, match="blender"):
        stage.load_networks({"blender": {}})
    assert stage.load_upstream() == {}  # no URIs configured
    assert set(stage.networks()) == {"generator", "discriminator", "generator_ema", "blender", "mask_vae"}
    assert set(stage.trained_networks()) == {"generator", "discriminator", "blender"}


def test_images_have_the_grid_columns():
    columns = ebst.build(tiny(), "cpu").images(make_batch(2))
    assert list(columns) == [
        "mask",
        "reference",
        "generated",
        "m1",
        "m2",
        "fake_1",
        "fake_2",
        "blend",
        "alpha",
    ]
    assert columns["alpha"].min() >= 0 and columns["alpha"].max() <= 1


@pytest.mark.parametrize("name", sorted(ebst.PRESETS))
def test_presets_round_trip_and_full_size_ones_need_vgg(name):
    config = ebst.PRESETS[name]()
    assert config_lib.from_dict(type(config), config_lib.to_dict(config)) == config
    assert config.data.flip is False
    if "tiny" not in name:
        with pytest.raises(ValueError, match="perceptual.weights"):
            ebst.build(config, "cpu")


@pytest.mark.slow
def test_official_preset_builds():
    config = config_lib.merge(ebst.ebst_official_512(), {"perceptual": {"fallback": "none"}})
    stage = ebst.build(config, "cpu")
    assert sum(p.numel() for p in stage.blender.parameters()) == 4_329_443
