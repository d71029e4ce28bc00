"""Frozen VGG19 feature extractor (relu1_1 ... relu5_1) for the perceptual loss.

Layers are registered under torchvision's `vgg19().features` indices ("0.weight", "2.weight", ...),
so the published torchvision VGG19 weights (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth,
either the whole model or its `features` part) load from a path or a file:// / http(s):// URL,
checked against the configured sha256. torchvision itself is not needed.

Without weights the extractor follows `fallback`:
  "error":  refuse: raise ValueError naming where to get the weights. The 256 / 512 training presets
            use this, because a perceptual loss on a random VGG is a different loss.
  "random": log one warning and use the same VGG19 with fixed-seed He-normal weights (torchvision's
            own init). Random conv features still measure local structure and colour statistics, so
            tiny presets and tests keep a perceptual term with the right shapes and code path; its
            values are not comparable with the pretrained VGG loss.
  "none":   log one warning; forward returns no features and the perceptual loss is 0.
`weights_source(config)` says which of "vgg19-weights" / "random" / "none" a config trains with
(for run tags), raising the same error as the extractor for "error" without weights.

Input: the release feeds [-1, 1] images to VGG19 as they are and tuned its layer weights (1/32 .. 1,
x 10) for that, so `imagenet_normalize` is False by default. With True, images are mapped to
ImageNet statistics, x' = ((x + 1) / 2 - mean) / std, which multiplies every image difference by
1 / (2 std) (2.18, 2.23, 2.22 per channel, 2.21 on average); conv + ReLU stacks are positively
homogeneous, so the feature L1 grows by about that factor (measured 2.2x). The features are then
multiplied by `imagenet_feature_scale` (default 2 x mean(std) = 0.452), which rescales the loss
weight so the released weights keep their meaning; set it to 1.0 for raw ImageNet-input features.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

# checkpoint.py is the only torch.load (the one upward import from models/, by design).
from maskgan.training.checkpoint import load_torch_file

logger = logging.getLogger(__name__)

FEATURE_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
FALLBACKS = ("error", "random", "none")
WEIGHT_SOURCES = ("vgg19-weights", "random", "none")
# torchvision's ImageNet VGG19 (the release's perceptual network); its file name holds the first
# 8 hex digits of the file's sha256.
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_VGG19_SHA256_PREFIX = "dcbb9e9d"
# torchvision vgg19 "E" layout up to relu5_1: an int is a 3x3 conv's output channels, "M" a 2x2 max-pool.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Index in torchvision's features Sequential of the ReLU that ends each slice (relu1_1 ... relu5_1).
_SLICE_ENDS = (1, 6, 11, 20, 29)
# Convs after relu5_1 (conv5_2..conv5_4) and the classifier are in published files but unused here.
_UNUSED_KEY = re.compile(r"^(classifier\..*|(30|32|34)\.(weight|bias))$")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet input multiplies image differences by 1 / (2 std); this undoes it on the features (module doc).
IMAGENET_FEATURE_SCALE = 2.0 * sum(_IMAGENET_STD) / len(_IMAGENET_STD)  # 0.452


@dataclass(frozen=True, kw_only=True)
class PerceptualConfig:
    """Where the VGG19 weights come from and what to do without them."""

    weights: str | None = None  # local path, file://..., http(s)://... of a torchvision VGG19 state dict
    sha256: str | None = None  # hex digest of the weights file; required with weights
    fallback: str = "random"  # used only when weights is None: "error", "random" or "none" (module doc)
    random_seed: int = 0  # seed of the "random" fallback's weights
    imagenet_normalize: bool = False  # False = the release's [-1, 1] input; True = ImageNet statistics
    imagenet_feature_scale: float = IMAGENET_FEATURE_SCALE  # feature factor with imagenet_normalize
    cache_dir: str | None = None  # where http(s) downloads are kept; None = torch hub's checkpoints dir

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"perceptual.fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if self.weights is not None:
            if not self.weights:
                raise ValueError("perceptual.weights is empty; give a path or URL, or None for the fallback")
            scheme = urlparse(self.weights).scheme
            if "://" in self.weights and scheme not in ("file", "http", "https"):
                raise ValueError(
                    f"perceptual.weights scheme {scheme!r} is not supported; use a path, file://, http(s)://"
                )
            if self.sha256 is None:
                raise ValueError("perceptual.sha256 is required when perceptual.weights is set")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ValueError(f"perceptual.sha256 must be 64 hex digits, got {self.sha256!r}")
        if not (math.isfinite(self.imagenet_feature_scale) and self.imagenet_feature_scale > 0):
            raise ValueError(
                f"perceptual.imagenet_feature_scale must be finite and > 0, got {self.imagenet_feature_scale}"
            )


def weights_source(config: PerceptualConfig) -> str:
    """Which VGG19 the perceptual term of a run with `config` uses: "vgg19-weights", "random" or "none".

    Raises the missing-weights ValueError for fallback "error" without weights, so a driver can
    refuse a run before starting workers.
    """
    if config.weights is not None:
        return "vgg19-weights"
    if config.fallback == "error":
        raise ValueError(missing_weights_message())
    return config.fallback


def missing_weights_message() -> str:
    """What to do when a preset needs real VGG19 weights and none are configured."""
    return (
        "this preset needs real VGG19 weights for its perceptual loss (perceptual.fallback='error'; "
        "a perceptual loss on a random VGG is a different loss). Download torchvision's ImageNet VGG19, "
        f"{TORCHVISION_VGG19_URL} (vgg19-dcbb9e9d.pth, the release's perceptual network), check that "
        f"`sha256sum` of it begins with {TORCHVISION_VGG19_SHA256_PREFIX}, and set "
        "perceptual.weights=<path or http(s)/file URL> perceptual.sha256=<its 64-hex sha256> "
        "(e.g. --set ...perceptual.weights=... --set ...perceptual.sha256=...). For smoke runs only, "
        "perceptual.fallback='random' uses a fixed-seed random VGG19 instead."
    )


class VGG19Features(nn.Module):
    """(B, 3, H, W) image in [-1, 1] -> [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1] features; frozen."""

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        self.config = config
        index, in_channels = 0, 3
        for entry in _LAYOUT:
            if entry == "M":
                self.add_module(str(index), nn.MaxPool2d(kernel_size=2, stride=2))
                index += 1
            else:
                self.add_module(str(index), nn.Conv2d(in_channels, entry, kernel_size=3, padding=1))
                self.add_module(str(index + 1), nn.ReLU())
                index, in_channels = index + 2, entry
        # (1, 3, 1, 1); not persistent, so the state dict holds exactly torchvision's keys.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.source = weights_source(config)  # raises for fallback "error" without weights
        self.enabled = True
        if config.weights is not None:
            self.load_state_dict(load_vgg19_state_dict(config), strict=True)
        else:
            self.enabled = config.fallback != "none"
            self._init_random(config.random_seed)
            logger.warning(
                "No VGG19 weights configured (perceptual.weights is None): using fallback %r, %s. "
                "Set perceptual.weights and perceptual.sha256 to a torchvision VGG19 state dict "
                "for the released perceptual loss.",
                config.fallback,
                "a fixed-seed randomly initialised VGG19 (random-feature perceptual proxy)"
                if self.enabled
                else "the perceptual loss is 0",
            )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        """Stay in eval mode whatever is asked: the extractor is frozen."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps, shallow to deep; an empty list when the fallback is "none"."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(
                f"VGG19Features expects (B, 3, H, W) images in [-1, 1], got {tuple(image.shape)}"
            )
        if min(image.shape[2:]) < 16:
            raise ValueError(
                f"VGG19Features needs H, W >= 16 (four max-pools precede relu5_1), got {tuple(image.shape)}"
            )
        if not self.enabled:
            return []
        x = image
        if self.config.imagenet_normalize:
            x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        features = []
        start = 0
        for end in _SLICE_ENDS:
            for index in range(start, end + 1):
                x = self._modules[str(index)](x)
            features.append(x)
            start = end + 1
        if self.config.imagenet_normalize and self.config.imagenet_feature_scale != 1.0:
            features = [feature * self.config.imagenet_feature_scale for feature in features]
        return features

    def _init_random(self, seed: int) -> None:
        """He-normal (fan_out) conv weights and zero biases from a private generator, like torchvision."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                weight = torch.empty(module.weight.shape)
                nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu", generator=generator)
                with torch.no_grad():
                    module.weight.copy_(weight)
                    module.bias.zero_()


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every parameter VGG19Features needs, in torchvision's naming."""
    shapes, index, in_channels = {}, 0, 3
    for entry in _LAYOUT:
        if entry == "M":
            index += 1
            continue
        shapes[f"{index}.weight"] = (entry, in_channels, 3, 3)
        shapes[f"{index}.bias"] = (entry,)
        index, in_channels = index + 2, entry
    return shapes


def load_vgg19_state_dict(config: PerceptualConfig) -> dict[str, torch.Tensor]:
    """Fetch, checksum and validate the configured weights -> state dict for VGG19Features."""
    if config.weights is None or config.sha256 is None:
        raise ValueError("load_vgg19_state_dict needs perceptual.weights and perceptual.sha256")
    path = _local_weights_file(config)
    digest = _sha256(path)
    if digest != config.sha256.lower():
        raise ValueError(
            f"VGG19 weights {config.weights!r} have sha256 {digest}, expected {config.sha256.lower()}; "
            "the file is corrupt or not the one configured"
        )
    loaded = load_torch_file(path, weights_only=True, map_location="cpu")
    return validate_vgg19_state_dict(loaded, source=config.weights)


def validate_vgg19_state_dict(state: object, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Accept torchvision's full-model ("features.N.*") or features ("N.*") keys; raise on anything off."""
    if not isinstance(state, dict):
        raise ValueError(f"VGG19 weights {source!r} hold a {type(state).__name__}, expected a state dict")
    if state and all(key.startswith(("features.", "classifier.")) for key in state):
        state = {key.removeprefix("features."): value for key, value in state.items()}
    expected = expected_state_shapes()
    missing = sorted(set(expected) - set(state), key=_key_order)
    unexpected = sorted(key for key in state if key not in expected and not _UNUSED_KEY.match(key))
    if missing or unexpected:
        raise ValueError(
            f"VGG19 weights {source!r} do not match torchvision's vgg19 features layout: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"VGG19 weights {source!r}: key {key!r} has shape {got}, expected {shape}")
    return {key: state[key].float() for key in expected}


def _key_order(key: str) -> tuple[int, str]:
    index, _, kind = key.partition(".")
    return (int(index) if index.isdigit() else -1, kind)


def _local_weights_file(config: PerceptualConfig) -> Path:
    """Path of the weights on this machine, downloading http(s) URLs into the cache first."""
    source = config.weights
    assert source is not None
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _download(source, config)
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else source).expanduser()
    if not path.is_file():
        raise ValueError(f"VGG19 weights file {source!r} does not exist")
    return path


def _download(url: str, config: PerceptualConfig) -> Path:
    """Download once into the cache; a cached file whose checksum matches is reused."""
    cache = Path(config.cache_dir) if config.cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urlparse(url).path) or "vgg19.pth"
    target = cache / name
    if target.is_file() and _sha256(target) == (config.sha256 or "").lower():
        return target
    with tempfile.NamedTemporaryFile(dir=cache, prefix=name, suffix=".part", delete=False) as part:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, part)
        except OSError as error:
            Path(part.name).unlink(missing_ok=True)
            raise OSError(f"could not download VGG19 weights from {url!r}: {error}") from error
    os.replace(part.name, target)  # atomic: a concurrent reader never sees a partial file
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
