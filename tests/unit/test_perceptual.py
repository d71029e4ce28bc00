"""VGG19 perceptual features: torchvision-format weight loading, checksums, fallbacks, freezing."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import logging
import socket
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mask_vae_fixtures import one_thread

from maskgan.losses import perceptual_loss
from maskgan.models.perceptual import (
    IMAGENET_FEATURE_SCALE,
    PerceptualConfig,
    VGG19Features,
    expected_state_shapes,
    weights_source,
)

# torchvision vgg19().features: 16 convs at these indices (3 after relu5_1, unused by the slices).
TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
VGG19_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
LOGGER = "maskgan.models.perceptual"


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def torchvision_features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict shaped and named like torchvision's `vgg19().features.state_dict()`."""
    generator = torch.Generator().manual_seed(seed)
    state, in_channels = {}, 3
    for index, channels in zip(TORCHVISION_CONVS, VGG19_CHANNELS, strict=True):
        state[f"{index}.weight"] = torch.randn(channels, in_channels, 3, 3, generator=generator) * 0.05
        state[f"{index}.bias"] = torch.randn(channels, generator=generator) * 0.05
        in_channels = channels
    return state


def save(state: dict, path: Path) -> str:
    torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, str, dict[str, torch.Tensor]]:
    state = torchvision_features_state()
    path = tmp_path_factory.mktemp("vgg") / "vgg19_features.pth"
    return path, save(state, path), state


def test_loads_torchvision_features_state_dict(weights_file):
    path, digest, state = weights_file
    vgg = VGG19Features(PerceptualConfig(weights=str(path), sha256=digest))
    loaded = vgg.state_dict()
    assert set(loaded) == set(expected_state_shapes())
    assert [key for key in loaded if key.endswith(".weight")] == [
        f"{i}.weight" for i in TORCHVISION_CONVS[:13]
    ]
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert vgg.enabled


def test_loads_full_model_state_dict_from_file_url(tmp_path):
    state = {f"features.{key}": value for key, value in torchvision_features_state(1).items()}
    state["classifier.0.weight"] = torch.zeros(4, 2)
    path = tmp_path / "vgg19-full.pth"
    digest = save(state, path)
    vgg = VGG19Features(PerceptualConfig(weights=path.as_uri(), sha256=digest.upper()))
    assert torch.equal(vgg.state_dict()["28.weight"], state["features.28.weight"])


def test_downloads_http_url_once_into_the_cache(weights_file, tmp_path):
    path, digest, state = weights_file
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/{path.name}"
    config = PerceptualConfig(weights=url, sha256=digest, cache_dir=str(tmp_path / "cache"))
    try:
        vgg = VGG19Features(config)
    finally:
        server.shutdown()
        server.server_close()  # later requests are refused at once
    assert torch.equal(vgg.state_dict()["0.weight"], state["0.weight"])
    cached = tmp_path / "cache" / path.name
    assert cached.is_file() and not list(cached.parent.glob("*.part"))
    VGG19Features(config)  # served from the cache now that the server is gone


def test_unreachable_url_raises(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = PerceptualConfig(
        weights=f"http://127.0.0.1:{port}/vgg19.pth", sha256="a" * 64, cache_dir=str(tmp_path)
    )
    with pytest.raises(OSError, match="could not download"):
        VGG19Features(config)
    assert not list(tmp_path.iterdir()), "no partial download is left behind"


def test_wrong_checksum_raises(weights_file):
    path, _, _ = weights_file
    with pytest.raises(ValueError, match="sha256"):
        VGG19Features(PerceptualConfig(weights=str(path), sha256="0" * 64))


def test_missing_key_raises(tmp_path):
    state = torchvision_features_state()
    del state["10.bias"]
    path = tmp_path / "missing.pth"
    with pytest.raises(ValueError, match=r"missing keys \['10.bias'\]"):
        VGG19Features(PerceptualConfig(weights=str(path), sha256=save(state, path)))


def test_wrong_key_raises(tmp_path):
    state = torchvision_features_state()
    state["3.weight"] = state.pop("2.weight")  # index 3 is a ReLU in torchvision's layout
    path = tmp_path / "renamed.pth"
    with pytest.raises(ValueError, match=r"missing keys \['2.weight'\], unexpected keys \['3.weight'\]"):
        VGG19Features(PerceptualConfig(weights=str(path), sha256=save(state, path)))


def test_mis_shaped_key_raises(tmp_path):
    state = torchvision_features_state()
    state["5.weight"] = torch.zeros(128, 32, 3, 3)
    path = tmp_path / "shape.pth"
    with pytest.raises(
        ValueError, match=r"'5.weight' has shape \(128, 32, 3, 3\), expected \(128, 64, 3, 3\)"
    ):
        VGG19Features(PerceptualConfig(weights=str(path), sha256=save(state, path)))


def test_not_a_state_dict_raises(tmp_path):
    path = tmp_path / "list.pth"
    with pytest.raises(ValueError, match="expected a state dict"):
        VGG19Features(PerceptualConfig(weights=str(path), sha256=save([1, 2], path)))


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        VGG19Features(PerceptualConfig(weights=str(tmp_path / "nope.pth"), sha256="a" * 64))


def test_no_weights_warns_exactly_once_and_uses_random_fallback(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    vgg = VGG19Features(PerceptualConfig())
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    for _ in range(3):
        features = vgg(image)
    warnings = [record for record in caplog.records if record.name == LOGGER]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "No VGG19 weights" in warnings[0].getMessage() and "'random'" in warnings[0].getMessage()
    assert [tuple(f.shape) for f in features] == [
        (1, 64, 32, 32),
        (1, 128, 16, 16),
        (1, 256, 8, 8),
        (1, 512, 4, 4),
        (1, 512, 2, 2),
    ]
    assert all(torch.isfinite(f).all() and f.abs().sum() > 0 for f in features)


def test_random_fallback_is_fixed_by_its_seed():
    torch.manual_seed(123)  # the global RNG must not matter
    first = VGG19Features(PerceptualConfig()).state_dict()
    torch.manual_seed(456)
    second = VGG19Features(PerceptualConfig()).state_dict()
    other_seed = VGG19Features(PerceptualConfig(random_seed=1)).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["0.weight"], other_seed["0.weight"])


def test_none_fallback_turns_the_loss_off_and_says_so(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    vgg = VGG19Features(PerceptualConfig(fallback="none"))
    image = torch.zeros(2, 3, 16, 16)
    assert not vgg.enabled and vgg(image) == []
    assert perceptual_loss(vgg(image), vgg(image)).item() == 0.0
    messages = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert len(messages) == 1 and "perceptual loss is 0" in messages[0]


def test_frozen_eval_and_gradient_reaches_the_input():
    vgg = VGG19Features(PerceptualConfig())
    vgg.train()
    assert not vgg.training
    assert not any(parameter.requires_grad for parameter in vgg.parameters())
    fake = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    real = torch.rand(1, 3, 16, 16) * 2 - 1
    perceptual_loss(vgg(fake), vgg(real)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in vgg.parameters())


def test_default_input_is_the_releases_and_imagenet_input_is_an_option(weights_file):
    path, digest, state = weights_file
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    first_layer = F.relu(F.conv2d(image, state["0.weight"], state["0.bias"], padding=1))
    assert PerceptualConfig().imagenet_normalize is False
    default = VGG19Features(PerceptualConfig(weights=str(path), sha256=digest))(image)[0]
    assert torch.allclose(default, first_layer, atol=1e-5), "the release feeds [-1, 1] images as they are"

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalized = ((image + 1) / 2 - mean) / std
    imagenet_first = F.relu(F.conv2d(normalized, state["0.weight"], state["0.bias"], padding=1))
    config = PerceptualConfig(weights=str(path), sha256=digest, imagenet_normalize=True)
    assert config.imagenet_feature_scale == pytest.approx(2 * 0.226, abs=1e-3)
    assert torch.allclose(VGG19Features(config)(image)[0], imagenet_first * IMAGENET_FEATURE_SCALE, atol=1e-5)
    unscaled = dataclasses.replace(config, imagenet_feature_scale=1.0)
    assert torch.allclose(VGG19Features(unscaled)(image)[0], imagenet_first, atol=1e-5)


def test_imagenet_input_rescale_keeps_the_released_loss_magnitude():
    # ImageNet statistics multiply image differences by 1 / (2 std) ~ 2.21; the feature scale undoes it.
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    fake = (F.avg_pool2d(real, 3, 1, 1) + 0.1 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)

    def loss(**kwargs) -> float:
        vgg = VGG19Features(PerceptualConfig(**kwargs))
        return perceptual_loss(vgg(fake), vgg(real)).item()

    release = loss()
    imagenet_raw = loss(imagenet_normalize=True, imagenet_feature_scale=1.0)
    imagenet = loss(imagenet_normalize=True)
    assert 1.8 < imagenet_raw / release < 2.7, "ImageNet input makes the term about 2.2x larger"
    assert 0.85 < imagenet / release < 1.15, "the default rescale brings it back to the release's size"


def test_error_fallback_refuses_without_weights_and_names_where_to_get_them(weights_file):
    config = PerceptualConfig(fallback="error")  # a preset can say so before weights are --set
    with pytest.raises(ValueError, match=r"vgg19-dcbb9e9d\.pth.*perceptual\.weights=") as error:
        VGG19Features(config)
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in str(error.value)
    assert "ImageNet" in str(error.value)
    with pytest.raises(ValueError, match="vgg19-dcbb9e9d"):
        weights_source(config)
    path, digest, _ = weights_file
    with_weights = dataclasses.replace(config, weights=str(path), sha256=digest)
    vgg = VGG19Features(with_weights)
    assert vgg.enabled and vgg.source == weights_source(with_weights) == "vgg19-weights"


@pytest.mark.parametrize(
    ("fallback", "source", "enabled"), [("random", "random", True), ("none", "none", False)]
)
def test_weights_source_names_the_fallback_in_use(fallback, source, enabled):
    config = PerceptualConfig(fallback=fallback)
    vgg = VGG19Features(config)
    assert weights_source(config) == vgg.source == source and vgg.enabled is enabled


def test_real_side_gets_no_gradient_through_vgg():
    vgg = VGG19Features(PerceptualConfig())
    generator = torch.Generator().manual_seed(0)
    fake = (torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1).requires_grad_(True)
    real = (torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1).requires_grad_(True)
    perceptual_loss(vgg(fake), vgg(real)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None, "real features are targets: the real image must get no gradient"


def test_runs_under_bfloat16_autocast():
    vgg = VGG19Features(PerceptualConfig())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = vgg(torch.zeros(1, 3, 16, 16))
        loss = perceptual_loss(features, features)
    assert loss.dtype == torch.float32 and loss.item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fallback": "imagenet"}, "fallback"),
        ({"weights": "/tmp/vgg.pth"}, "sha256"),
        ({"weights": "/tmp/vgg.pth", "sha256": "abc"}, "sha256"),
        ({"weights": "s3://bucket/vgg.pth", "sha256": "a" * 64}, "scheme"),
        ({"weights": "", "sha256": "a" * 64}, "weights"),
        ({"imagenet_feature_scale": 0.0}, "imagenet_feature_scale"),
        ({"imagenet_feature_scale": float("nan")}, "imagenet_feature_scale"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PerceptualConfig(**kwargs)


def test_bad_input_shape_raises():
    vgg = VGG19Features(PerceptualConfig(fallback="none"))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vgg(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="H, W >= 16"):
        vgg(torch.zeros(1, 3, 8, 16))
