"""The EBST edit simulator and the detaching D loss on a CUDA device (bf16 autocast); skipped without one."""

from __future__ import annotations

import pytest
import torch
from mask_vae_fixtures import face_masks

from maskgan.labels import one_hot
from maskgan.losses import dual_editing_discriminator_loss_on_images, dual_editing_discriminator_losses
from maskgan.models.discriminator import MultiscaleDiscriminator, discriminator_tiny
from maskgan.models.mask_vae import EditPartnerBuffer, MaskVAE, mask_vae_tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_simulate_edits_on_cuda_with_buffer_partners(generator_device):
    vae = MaskVAE(mask_vae_tiny()).cuda()
    masks = face_masks(4).cuda()
    buffer = EditPartnerBuffer(capacity=8)
    buffer.push(face_masks(3, seed=1))  # held on the CPU; moved to the masks' device when used
    results = []
    for _ in range(2):
        generator = torch.Generator(device=generator_device).manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            latents = vae.edit_latents(masks[:1], generator=generator, partners=buffer.masks())
            edited = vae.simulate_edits(
                masks[:1],
                generator=torch.Generator(device=generator_device).manual_seed(0),
                partners=buffer.masks(),
            )
        results.append(edited)
    step_1, step_2 = (latents.z_1 - latents.mu).float(), (latents.z_2 - latents.mu).float()
    assert torch.nn.functional.cosine_similarity(step_1, step_2).item() < -0.99
    assert edited[0].device.type == "cuda" and edited[0].shape == (1, 32, 32)
    assert torch.equal(results[0][0], results[1][0]), "reproducible per seed on the device"


def test_dual_editing_d_loss_on_cuda_under_bf16_detaches_and_matches_separate_calls():
    torch.manual_seed(0)
    discriminator = MultiscaleDiscriminator(discriminator_tiny()).cuda()
    generator = torch.nn.Conv2d(19, 3, 3, padding=1).cuda()
    masks = one_hot(face_masks(2)).cuda()
    real = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reconstruction = torch.tanh(generator(masks))
        blend = torch.tanh(generator(masks.roll(1, 0)))
        terms = dual_editing_discriminator_loss_on_images(
            discriminator, mask=masks, real_image=real, reconstruction=reconstruction, blend=blend
        )
        separate = dual_editing_discriminator_losses(
            d_real=discriminator(masks, real),
            d_reconstruction=discriminator(masks, reconstruction.detach()),
            d_blend=discriminator(masks, blend.detach()),
        )
    terms["total"].backward()
    assert all(parameter.grad is None for parameter in generator.parameters())
    assert terms["total"].dtype == torch.float32
    assert terms["total"].item() == pytest.approx(separate["total"].item(), rel=2e-2)  # bf16 batching
