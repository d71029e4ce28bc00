"""Import of the authors' released MaskGAN generator (`latest_net_G.pth`, a GlobalGenerator state dict)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_official_512

# The one exception to the layering (models below training): checkpoint.py is the only torch.load.
from maskgan.training.checkpoint import load_torch_file


def released_key_map(config: DMNConfig) -> dict[str, str]:
    """Released GlobalGenerator state-dict key -> our DenseMappingNetwork key, for every parameter."""
    pairs: dict[str, str] = {}

    def conv(released: str, ours: str) -> None:
        pairs[f"{released}.weight"] = f"{ours}.weight"
        pairs[f"{released}.bias"] = f"{ours}.bias"

    # Their `model` Sequential: [pad, conv, IN, ReLU] stem, [conv, IN, ReLU] per downsampling,
    # one ResnetBlock per residual block, [convT, IN, ReLU] per upsampling, [pad, conv, tanh] head.
    num_down, num_blocks = config.num_downsample, config.num_res_blocks
    conv("model.1", "encoder.0.conv")
    for index in range(num_down):
        conv(f"model.{4 + 3 * index}", f"encoder.{index + 1}.conv")
    first_block = 4 + 3 * num_down
    for index in range(num_blocks):
        conv(f"model.{first_block + index}.conv_block.0.conv", f"blocks.{index}.conv1")
        conv(f"model.{first_block + index}.conv_block.1.conv", f"blocks.{index}.conv2")
    first_up = first_block + num_blocks
    for index in range(num_down):
        conv(f"model.{first_up + 3 * index}", f"decoder.{index}.conv")
    conv(f"model.{first_up + 3 * num_down + 1}", "head.conv")

    # enc_label: `model` = 3 ConvBlocks (feature 1); `model_last` = [ReLU, ConvBlocks...] (feature 2).
    for index in range(3):
        conv(f"enc_label.model.{index}.conv", f"label_encoder.feature1.{index}.conv")
    for index in range(config.encoder_num_downsample - 2):
        conv(f"enc_label.model_last.{index + 1}.conv", f"label_encoder.feature2.{index}.conv")

    # enc_style: `model` (3 ConvBlocks), sft1, `model_middle`, sft2, `model_last` = [avg pool, conv 1x1].
    for index in range(3):
        conv(f"enc_style.model.{index}.conv", f"style_encoder.down1.{index}.conv")
    for index in range(config.encoder_num_downsample - 2):
        conv(f"enc_style.model_middle.{index}.conv", f"style_encoder.down2.{index}.conv")
    for sft in ("sft1", "sft2"):
        for part in ("scale", "shift"):
            for number in (1, 2):
                conv(f"enc_style.{sft}.SFT_{part}_conv{number}", f"style_encoder.{sft}.{part}_conv{number}")
    conv("enc_style.model_last.1", "style_encoder.to_style")
    return pairs


def released_ignored_keys(config: DMNConfig) -> frozenset[str]:
    """Keys of the release that hold no weights: the dummy running statistics of its AdaIN layers."""
    first_block = 4 + 3 * config.num_downsample
    return frozenset(
        f"model.{first_block + block}.conv_block.{conv}.norm.{stat}"
        for block in range(config.num_res_blocks)
        for conv in (0, 1)
        for stat in ("running_mean", "running_var")
    )


def convert_released_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DMNConfig
) -> dict[str, torch.Tensor]:
    """Rename a released state dict to ours; ValueError lists every missing, unexpected and mis-shaped key."""
    key_map = released_key_map(config)
    ignored = released_ignored_keys(config)
    with torch.device("meta"):
        expected_shapes = {
            key: value.shape for key, value in DenseMappingNetwork(config).state_dict().items()
        }
    missing = sorted(key for key in key_map if key not in state_dict)
    unexpected = sorted(key for key in state_dict if key not in key_map and key not in ignored)
    mis_shaped = sorted(
        f"{key}: {tuple(state_dict[key].shape)} vs expected {tuple(expected_shapes[ours])}"
        for key, ours in key_map.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected_shapes[ours])
    )
    if missing or unexpected or mis_shaped:
        problems = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                problems.append(f"{len(keys)} {title} key(s): " + ", ".join(keys))
        raise ValueError(
            "checkpoint is not a released MaskGAN GlobalGenerator for this DMNConfig; " + "; ".join(problems)
        )
    return {ours: state_dict[key] for key, ours in key_map.items()}


def import_released_generator(
    model: DenseMappingNetwork, state_dict: Mapping[str, torch.Tensor]
) -> DenseMappingNetwork:
    """Copy a released GlobalGenerator state dict into model (in place, cast to its dtype) and return it."""
    model.load_state_dict(convert_released_state_dict(state_dict, model.config), strict=True)
    return model


def load_released_generator(
    path: str | os.PathLike[str], config: DMNConfig | None = None
) -> DenseMappingNetwork:
    """Build a DMN (default: official_512) on CPU holding the weights of a released `latest_net_G.pth`."""
    config = dmn_official_512() if config is None else config
    state_dict = load_torch_file(path, weights_only=True, map_location="cpu")
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{os.fspath(path)} holds a {type(state_dict).__name__}, expected a state dict")
    return import_released_generator(DenseMappingNetwork(config), state_dict)
