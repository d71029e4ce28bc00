"""MaskVAE: presets, shapes, gradients, sampling, interpolation and the EBST editing simulator."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from mask_vae_fixtures import face_masks, one_thread

from maskgan.labels import NUM_CLASSES, one_hot
from maskgan.losses import mask_vae_loss
from maskgan.models.mask_vae import (
    EditPartnerBuffer,
    EditSimulatorConfig,
    MaskVAE,
    MaskVAEConfig,
    mask_vae_base_256,
    mask_vae_official_512,
    mask_vae_tiny,
)

# The released VAE(19, 32, 32, 1024) in CelebAMask-HQ/MaskGAN_demo/models/networks.py, counted by
# hand: encoder convs 44,742,112 + BN 8,128; fc1 + fc2 67,110,912; d1 33,587,200;
# decoder convs 25,167,187 + BN 4,032.
OFFICIAL_PARAMETERS = 170_619_571


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def masks() -> torch.Tensor:
    return face_masks(8, size=32, seed=0)


@pytest.fixture(scope="module")
def trained_vae(masks) -> MaskVAE:
    """A tiny MaskVAE trained a little (80 steps) on the synthetic faces."""
    with one_thread():
        torch.manual_seed(0)
        vae = MaskVAE(mask_vae_tiny())
        optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(80):
            logits, mu, logvar = vae(one_hot(masks), generator=generator)
            loss = mask_vae_loss(logits, masks, mu, logvar, kl_weight=1e-3)["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return vae


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_official_preset_matches_release_on_meta_device():
    config = mask_vae_official_512()
    assert config.encoder_channels == (32, 64, 128, 256, 512, 1024, 2048)
    with torch.device("meta"):
        vae = MaskVAE(config)
        logits, mu, logvar = vae(torch.zeros(2, NUM_CLASSES, 512, 512))
    assert count_parameters(vae) == OFFICIAL_PARAMETERS
    assert vae.to_mu.weight.shape == (1024, 2048 * 4 * 4)
    assert vae.from_latent.weight.shape == (2048 * 4 * 4, 1024)
    assert len(vae.decoder) == 6
    assert [block[1].eps for block in vae.decoder] == [1e-3] * 6
    assert [block[1].eps for block in vae.encoder] == [1e-5] * 7
    assert logits.shape == (2, NUM_CLASSES, 512, 512)
    assert mu.shape == logvar.shape == (2, 1024)


def test_base_256_preset_runs_on_cpu():
    vae = MaskVAE(mask_vae_base_256()).eval()
    assert count_parameters(vae) == 42_666_675
    assert len(vae.encoder) == 6
    with torch.no_grad():
        logits, mu, logvar = vae(one_hot(torch.randint(0, NUM_CLASSES, (1, 256, 256))))
    assert logits.shape == (1, NUM_CLASSES, 256, 256)
    assert mu.shape == logvar.shape == (1, 512)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("size", "blocks"), [(8, 1), (32, 3), (64, 4), (1024, 8)])
def test_number_of_blocks_follows_resolution(size, blocks):
    config = MaskVAEConfig(image_size=size, base_channels=2, latent_dim=4)
    assert config.num_down_blocks == blocks
    with torch.device("meta"):
        vae = MaskVAE(config)
    assert len(vae.encoder) == blocks and len(vae.decoder) == blocks - 1
    assert vae.decode(torch.zeros(1, 4, device="meta")).shape == (1, NUM_CLASSES, size, size)


def test_tiny_forward_shapes_and_ranges(masks):
    vae = MaskVAE(mask_vae_tiny())
    logits, mu, logvar = vae(one_hot(masks))
    assert logits.shape == (8, NUM_CLASSES, 32, 32) and logits.dtype == torch.float32
    assert mu.shape == logvar.shape == (8, 32)
    assert torch.isfinite(logits).all() and torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    reconstruction = vae.reconstruct(masks)
    assert reconstruction.shape == (8, 32, 32) and reconstruction.dtype == torch.int64
    assert 0 <= int(reconstruction.min()) and int(reconstruction.max()) < NUM_CLASSES


def test_gradients_reach_every_parameter(masks):
    vae = MaskVAE(mask_vae_tiny())
    logits, mu, logvar = vae(one_hot(masks), generator=torch.Generator().manual_seed(0))
    mask_vae_loss(logits, masks, mu, logvar, kl_weight=1.0)["total"].backward()
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_training_mode_samples_and_eval_mode_decodes_mu(masks):
    vae = MaskVAE(mask_vae_tiny())
    onehot = one_hot(masks)
    first = vae(onehot, generator=torch.Generator().manual_seed(3))[0]
    second = vae(onehot, generator=torch.Generator().manual_seed(3))[0]
    third = vae(onehot, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(first, second) and not torch.equal(first, third)
    vae.eval()
    logits, mu, _ = vae(onehot)
    assert torch.equal(logits, vae.decode(mu))


def test_sample_is_reproducible_with_a_generator():
    vae = MaskVAE(mask_vae_tiny()).train()
    samples = vae.sample(5, generator=torch.Generator().manual_seed(1))
    again = vae.sample(5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, 32, 32) and samples.dtype == torch.int64
    assert torch.equal(samples, again)
    assert vae.training, "sample must restore the training mode"
    with pytest.raises(ValueError, match="num"):
        vae.sample(0)


def test_interpolate_endpoints(trained_vae, masks):
    other = masks.roll(1, dims=0)
    assert torch.equal(trained_vae.interpolate(masks, other, 0.0), trained_vae.reconstruct(masks))
    at_one = trained_vae.interpolate(masks, other, 1.0)
    assert (at_one == trained_vae.reconstruct(other)).float().mean() > 0.99
    per_sample = trained_vae.interpolate(masks, other, torch.linspace(0, 1, 8))
    assert per_sample.shape == (8, 32, 32) and per_sample.dtype == torch.int64


def test_simulate_edits_returns_valid_class_maps(trained_vae, masks):
    edited_1, edited_2 = trained_vae.simulate_edits(masks, generator=torch.Generator().manual_seed(0))
    for edited in (edited_1, edited_2):
        assert edited.shape == (8, 32, 32) and edited.dtype == torch.int64
        assert int(edited.min()) >= 0 and int(edited.max()) <= NUM_CLASSES - 1


def test_simulate_edits_alpha_zero_gives_the_reconstruction(trained_vae, masks):
    edited_1, edited_2 = trained_vae.simulate_edits(masks, alpha_range=(0.0, 0.0))
    reconstruction = trained_vae.reconstruct(masks)
    assert torch.equal(edited_1, reconstruction) and torch.equal(edited_2, reconstruction)
    # One-hot input gives the same answer as class maps.
    assert torch.equal(trained_vae.simulate_edits(one_hot(masks), alpha_range=(0.0, 0.0))[0], reconstruction)


def test_larger_alpha_changes_more_pixels(trained_vae, masks):
    reconstruction = trained_vae.reconstruct(masks)

    def changed(alpha_range: tuple[float, float]) -> float:
        fractions = []
        for seed in range(3):
            edits = trained_vae.simulate_edits(
                masks, alpha_range, generator=torch.Generator().manual_seed(seed)
            )
            fractions += [(edited != reconstruction).float().mean().item() for edited in edits]
        return sum(fractions) / len(fractions)

    small, medium, large = changed((0.05, 0.1)), changed((0.3, 0.5)), changed((0.8, 1.0))
    assert small < medium < large, (small, medium, large)
    assert large > 0.02, "a full step toward another face must visibly change the mask"


def test_simulate_edits_is_reproducible_and_keeps_the_mode(trained_vae, masks):
    trained_vae.train()
    first = trained_vae.simulate_edits(masks, generator=torch.Generator().manual_seed(5))
    second = trained_vae.simulate_edits(masks, generator=torch.Generator().manual_seed(5))
    assert trained_vae.training
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity of two (B, D) tensors."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def test_edits_move_in_opposite_directions_toward_and_away_from_the_partner(trained_vae, masks):
    latents = trained_vae.edit_latents(masks, generator=torch.Generator().manual_seed(0))
    mu = latents.mu
    step_1, step_2 = latents.z_1 - mu, latents.z_2 - mu
    assert (step_1.norm(dim=1) > 0).all() and (step_2.norm(dim=1) > 0).all()
    assert torch.allclose(cosine(step_1, step_2), torch.full((8,), -1.0), atol=1e-4), "anti-parallel"
    toward = latents.partner - mu
    assert torch.allclose(cosine(step_1, toward), torch.ones(8), atol=1e-4), "z1 moves toward the partner"
    # Without partners, the partner of sample i is sample i - 1 of the batch (another real mask).
    with trained_vae._evaluating():
        batch_mu = trained_vae.encode(one_hot(masks))[0]
    assert torch.allclose(mu, batch_mu, atol=1e-6)
    assert torch.allclose(latents.partner, batch_mu.roll(1, dims=0), atol=1e-6)


def test_edited_masks_decode_those_latents(trained_vae, masks):
    edited_1, edited_2 = trained_vae.simulate_edits(masks, generator=torch.Generator().manual_seed(3))
    latents = trained_vae.edit_latents(masks, generator=torch.Generator().manual_seed(3))
    trained_vae.eval()
    try:
        assert torch.equal(edited_1, trained_vae.decode(latents.z_1).argmax(1))
        assert torch.equal(edited_2, trained_vae.decode(latents.z_2).argmax(1))
    finally:
        trained_vae.train()


def test_edit_toward_the_partner_looks_more_like_it(trained_vae, masks):
    partner_masks = masks.roll(1, dims=0)
    partner_reconstruction = trained_vae.reconstruct(partner_masks)
    edited_1, edited_2 = trained_vae.simulate_edits(
        masks, alpha_range=(0.6, 0.6), partners=partner_masks[:1].expand(8, -1, -1).contiguous()
    )
    # With one partner every sample moves toward / away from partner_masks[0].
    target = partner_reconstruction[:1]
    agree_1 = (edited_1 == target).float().mean().item()
    agree_2 = (edited_2 == target).float().mean().item()
    assert agree_1 > agree_2 + 0.02, (agree_1, agree_2)


def test_edit_magnitudes_are_drawn_independently(trained_vae, masks):
    many = masks.repeat(32, 1, 1)  # 256 samples
    latents = trained_vae.edit_latents(
        many, alpha_range=(0.1, 0.5), generator=torch.Generator().manual_seed(1)
    )
    direction = (latents.partner - latents.mu).norm(dim=1)
    assert torch.allclose((latents.z_1 - latents.mu).norm(dim=1), latents.alpha_1 * direction, rtol=1e-4)
    assert torch.allclose((latents.z_2 - latents.mu).norm(dim=1), latents.alpha_2 * direction, rtol=1e-4)
    for alpha in (latents.alpha_1, latents.alpha_2):
        assert alpha.min() >= 0.1 and alpha.max() <= 0.5
    assert (latents.alpha_1 != latents.alpha_2).all()
    correlation = torch.corrcoef(torch.stack([latents.alpha_1, latents.alpha_2]))[0, 1].item()
    assert abs(correlation) < 0.2, correlation


def test_batch_of_one_takes_its_partner_from_real_masks(trained_vae, masks):
    with pytest.raises(ValueError, match="partners.*EditPartnerBuffer"):
        trained_vae.simulate_edits(masks[:1])
    partners = masks[3:6]
    latents = trained_vae.edit_latents(
        masks[:1], partners=partners, generator=torch.Generator().manual_seed(2)
    )
    with trained_vae._evaluating():
        partner_mu = trained_vae.encode(one_hot(partners))[0]
    assert any(torch.allclose(latents.partner[0], row, atol=1e-6) for row in partner_mu), "a real partner"
    step_1, step_2 = latents.z_1 - latents.mu, latents.z_2 - latents.mu
    assert cosine(step_1, step_2).item() == pytest.approx(-1.0, abs=1e-4)
    edited_1, edited_2 = trained_vae.simulate_edits(masks[:1], partners=partners)
    assert edited_1.shape == edited_2.shape == (1, 32, 32)


def test_partners_are_drawn_from_all_given_masks(trained_vae, masks):
    partners = masks[:4]
    latents = trained_vae.edit_latents(
        masks.repeat(8, 1, 1), partners=partners, generator=torch.Generator().manual_seed(0)
    )
    with trained_vae._evaluating():
        partner_mu = trained_vae.encode(one_hot(partners))[0]
    used = {int(torch.cdist(row[None], partner_mu).argmin()) for row in latents.partner}
    assert used == {0, 1, 2, 3}


def test_prior_partner_is_opt_in(trained_vae, masks):
    prior = MaskVAE(replace(mask_vae_tiny(), edit=EditSimulatorConfig(partner="prior")))
    prior.load_state_dict(trained_vae.state_dict())
    latents = prior.edit_latents(
        masks[:1], alpha_range=(0.5, 0.5), generator=torch.Generator().manual_seed(0)
    )
    assert cosine(latents.z_1 - latents.mu, latents.z_2 - latents.mu).item() == pytest.approx(-1.0, abs=1e-4)
    with pytest.raises(ValueError, match="partner='prior'"):
        prior.simulate_edits(masks[:1], partners=masks[1:2])
    assert EditSimulatorConfig().partner == "real" and EditSimulatorConfig(partner="batch").partner == "real"


def test_partner_buffer_keeps_the_latest_masks_and_round_trips(masks):
    buffer = EditPartnerBuffer(capacity=5)
    assert len(buffer) == 0 and buffer.masks() is None
    buffer.push(masks[:3])
    buffer.push(one_hot(masks[3:6]))  # one-hot is accepted too
    held = buffer.masks()
    assert len(buffer) == 5 and held.dtype == torch.int64
    assert torch.equal(held, masks[1:6]), "the oldest are dropped first"
    again = EditPartnerBuffer(capacity=1)
    again.load_state_dict(buffer.state_dict())
    assert again.capacity == 5 and torch.equal(again.masks(), held)
    with pytest.raises(ValueError, match="16, 16"):
        buffer.push(torch.zeros(1, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="capacity"):
        EditPartnerBuffer(capacity=0)


def test_bad_inputs_raise(trained_vae, masks):
    with pytest.raises(ValueError, match="expected 0..18"):
        trained_vae.simulate_edits(masks + 19)
    with pytest.raises(ValueError, match="integer ids"):
        trained_vae.simulate_edits(masks.float())
    with pytest.raises(ValueError, match=r"\(B, 19, 32, 32\)"):
        trained_vae.encode(torch.zeros(2, 19, 64, 64))
    with pytest.raises(ValueError, match="alpha_range"):
        trained_vae.simulate_edits(masks, alpha_range=(0.5, 0.1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 48}, "image_size"),
        ({"image_size": 4}, "image_size"),
        ({"base_channels": 0}, "base_channels"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"num_classes": 1}, "num_classes"),
        ({"edit": {"alpha_range": (0.1, 0.2)}}, "edit"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MaskVAEConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha_range": (-0.1, 0.2)}, "alpha_range"),
        ({"alpha_range": (0.3, 0.2)}, "alpha_range"),
        ({"alpha_range": (0.1, float("inf"))}, "alpha_range"),
        ({"alpha_range": (0.1,)}, "alpha_range"),
        ({"partner": "random"}, "partner"),
        ({"partner": "prior "}, "partner"),
    ],
)
def test_edit_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EditSimulatorConfig(**kwargs)


def test_edit_config_accepts_a_yaml_list():
    assert EditSimulatorConfig(alpha_range=[0, 1]).alpha_range == (0.0, 1.0)


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        mask_vae_tiny().image_size = 64
