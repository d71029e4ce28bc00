"""Import of the released generator checkpoint: key/shape map, output equivalence, loud failures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from released_reference import ReleasedGlobalGenerator, spread_style_bias_

from maskgan.labels import one_hot
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_official_512, dmn_tiny
from maskgan.models.official import (
    convert_released_state_dict,
    load_released_generator,
    released_ignored_keys,
    released_key_map,
)


def released_like(config: DMNConfig) -> ReleasedGlobalGenerator:
    """The release's GlobalGenerator with the widths and depths of config."""
    return ReleasedGlobalGenerator(
        input_nc=config.num_classes,
        output_nc=config.image_channels,
        ngf=config.base_channels,
        n_downsampling=config.num_downsample,
        n_blocks=config.num_res_blocks,
        enc_dim=config.encoder_base_channels,
        enc_downsample=config.encoder_num_downsample,
    )


def random_inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target one-hot, reference one-hot, reference image) of one sample at size x size."""
    generator = torch.Generator().manual_seed(seed)
    # Blocky label maps so that regions span several pixels at every scale.
    target = torch.randint(0, 19, (1, size // 8, size // 8), generator=generator)
    reference = torch.randint(0, 19, (1, size // 8, size // 8), generator=generator)
    upsample = torch.nn.Upsample(scale_factor=8, mode="nearest")
    target = upsample(target[:, None].float())[:, 0].long()
    reference = upsample(reference[:, None].float())[:, 0].long()
    image = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    return one_hot(target), one_hot(reference), image


@pytest.fixture(scope="module")
def official_release_meta() -> ReleasedGlobalGenerator:
    with torch.device("meta"):
        return released_like(dmn_official_512())


def test_released_reference_has_the_published_parameter_count(official_release_meta):
    assert sum(p.numel() for p in official_release_meta.parameters()) == 89_702_595


@pytest.mark.parametrize("preset", [dmn_official_512, dmn_tiny])
def test_key_map_covers_every_released_and_every_own_key(preset):
    config = preset()
    with torch.device("meta"):
        released = released_like(config).state_dict()
        ours = DenseMappingNetwork(config).state_dict()
    key_map = released_key_map(config)
    ignored = released_ignored_keys(config)
    assert set(key_map) | ignored == set(released)
    assert not set(key_map) & ignored
    assert sorted(key_map.values()) == sorted(ours)
    for released_key, our_key in key_map.items():
        assert released[released_key].shape == ours[our_key].shape, released_key
    # The only ignored keys are the AdaIN layers' dummy statistics: 4 blocks x 2 norms x 2 at 512 px.
    assert all(".norm.running_" in key for key in ignored)
    if preset is dmn_official_512:
        assert len(ignored) == 16 and "model.16.conv_block.0.norm.running_mean" in ignored


def test_import_reproduces_release_outputs_small(tmp_path):
    torch.manual_seed(0)
    config = dmn_tiny()
    released = spread_style_bias_(released_like(config))
    path = tmp_path / "latest_net_G.pth"
    torch.save(released.state_dict(), path)
    ours = load_released_generator(path, config)
    inputs = random_inputs(64)
    with torch.no_grad():
        expected = released(*inputs)
        got = ours(*inputs)
    assert expected.std() > 0.05  # not a saturated or constant image
    assert (got - expected).abs().max() < 1e-5


def test_import_reproduces_release_outputs_at_512_official_widths(tmp_path):
    torch.manual_seed(0)
    released = spread_style_bias_(released_like(dmn_official_512()))
    path = tmp_path / "latest_net_G.pth"
    torch.save(released.state_dict(), path)
    state_dict = released.state_dict()
    assert sum(v.numel() for k, v in state_dict.items() if "running_" not in k) == 89_702_595
    del state_dict
    ours = load_released_generator(path)  # official_512 by default
    assert sum(p.numel() for p in ours.parameters()) == 89_702_595
    inputs = random_inputs(512, seed=1)
    with torch.no_grad():
        expected = released(*inputs)
        del released
        got = ours(*inputs)
    assert got.shape == (1, 3, 512, 512)
    assert expected.std() > 0.05
    assert (got - expected).abs().max() < 1e-4


def test_import_works_without_the_adain_running_statistics():
    config = dmn_tiny()
    state_dict = {
        key: value
        for key, value in released_like(config).state_dict().items()
        if key not in released_ignored_keys(config)
    }
    converted = convert_released_state_dict(state_dict, config)
    assert len(converted) == len(released_key_map(config))


def test_corrupted_checkpoint_lists_missing_unexpected_and_mis_shaped_keys(tmp_path):
    config = dmn_tiny()
    state_dict = released_like(config).state_dict()
    del state_dict["model.1.weight"]
    del state_dict["enc_style.sft2.SFT_shift_conv2.bias"]
    state_dict["model.99.weight"] = torch.zeros(3)
    state_dict["enc_label.model_last.1.conv.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError) as error:
        load_released_generator(path, config)
    message = str(error.value)
    assert "2 missing key(s): enc_style.sft2.SFT_shift_conv2.bias, model.1.weight" in message
    assert "1 unexpected key(s): model.99.weight" in message
    assert "1 mis-shaped key(s): enc_label.model_last.1.conv.weight: (1, 2, 3, 3) vs expected" in message


CORRUPTIONS = {
    "missing": lambda sd: sd.pop("model.33.weight"),
    "unexpected": lambda sd: sd.update({"model.16.conv_block.0.norm.num_batches_tracked": torch.tensor(0)}),
    "mis-shaped": lambda sd: sd.update({"enc_style.model_last.1.bias": torch.zeros(8192)}),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_each_official_corruption_is_reported(official_release_meta, corrupt):
    state_dict = dict(official_release_meta.state_dict())
    corrupt(state_dict)
    with pytest.raises(ValueError, match="not a released MaskGAN GlobalGenerator"):
        convert_released_state_dict(state_dict, dmn_official_512())


def test_checkpoint_for_other_widths_is_rejected(tmp_path):
    released = released_like(dataclasses.replace(dmn_tiny(), base_channels=16))
    path = tmp_path / "other.pth"
    torch.save(released.state_dict(), path)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_released_generator(path, dmn_tiny())


def test_non_state_dict_file_is_rejected(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_released_generator(path, dmn_tiny())
