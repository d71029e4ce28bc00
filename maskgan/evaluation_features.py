"""FID and LPIPS behind configured, checksum-pinned feature weights; "unavailable" when there are none.

Both metrics need pretrained networks that are downloads (REFERENCE.md §3-4), so nothing here is
ever assumed present: a metric is computed only from a file the config names (local path or
http(s) URL) whose sha256 matches, and otherwise reported as unavailable with the reason.

kind "torchscript" (no extra dependency): the file is a TorchScript module.
    fid:   forward(images (B, 3, H, W) float in [0, 1]) -> (B, D) features; torchmetrics'
           FrechetInceptionDistance does the statistics (feature=<that module>).
    lpips: forward(a, b (B, 3, H, W) float in [-1, 1]) -> (B,) or (B, 1, 1, 1) distances; averaged.
kind "torchmetrics": torchmetrics' own networks.
    fid:   the standard FID Inception (pt_inception-2015-12-05-6726825d.pth, torch-fidelity's port of the
           TF FID weights) given as the file; needs the torch-fidelity package.
    lpips: torchvision's ImageNet backbone for `net` (e.g. alexnet-owt-7be5be79.pth for "alex") given as
           the file, placed in torch.hub's cache under its own name; needs torchvision. The LPIPS linear
           heads ship inside torchmetrics.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

KINDS = ("torchscript", "torchmetrics")
LPIPS_NETS = ("alex", "vgg", "squeeze")


@dataclass(frozen=True, kw_only=True)
class FeatureWeightsConfig:
    """Pinned weights of one metric's network: uri (local path or http(s) URL) + sha256, or nothing."""

    uri: str | None = None
    sha256: str | None = None
    kind: str = "torchscript"
    net: str = "alex"  # lpips with kind torchmetrics: the backbone the file holds
    cache_dir: str | None = None  # where URL downloads go; None = ~/.cache/maskgan/weights

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {LPIPS_NETS}, got {self.net!r}")
        if self.uri and not self.sha256:
            raise ValueError(f"weights {self.uri} need their sha256 (set the sha256 field next to uri)")
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, got {self.sha256!r}")

    @property
    def configured(self) -> bool:
        return bool(self.uri)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(config: FeatureWeightsConfig) -> Path:
    """The local file of config.uri (a URL is downloaded once, cached); ValueError on a sha256 mismatch."""
    if not config.configured:
        raise ValueError("no weights configured (uri is empty)")
    uri = config.uri
    if uri.startswith(("http://", "https://")):
        cache = Path(config.cache_dir or Path.home() / ".cache" / "maskgan" / "weights")
        path = cache / config.sha256 / os.path.basename(uri.split("?")[0])
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as partial:
                with urllib.request.urlopen(uri, timeout=60) as response:  # noqa: S310 (http(s) only, checked)
                    shutil.copyfileobj(response, partial)
            os.replace(partial.name, path)
    else:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ValueError(f"weights file {path} does not exist")
    actual = file_sha256(path)
    if actual != config.sha256:
        raise ValueError(
            f"weights {uri} have sha256 {actual}, expected {config.sha256}: wrong or corrupted file"
        )
    return path


class FIDScore:
    """torchmetrics FID over one real set and several fake sets (real features are computed once)."""

    def __init__(self, metric) -> None:
        self.metric = metric

    def update_real(self, images: torch.Tensor) -> None:
        """images (B, 3, H, W) in [-1, 1]."""
        self.metric.update(_unit(images), real=True)

    def compute(self, fakes: list[torch.Tensor]) -> float:
        """FID of the real set against `fakes` ((B, 3, H, W) in [-1, 1] batches)."""
        self.metric.reset()  # reset_real_features=False: only the fake statistics are cleared
        for images in fakes:
            self.metric.update(_unit(images), real=False)
        return float(self.metric.compute())


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


def fid_metric(config: FeatureWeightsConfig, device: torch.device) -> tuple[FIDScore | None, str]:
    """(FIDScore, '') or (None, why FID is unavailable)."""
    if not config.configured:
        return None, "no FID feature weights configured (fid.uri + fid.sha256)"
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = fetch_weights(config)
    if config.kind == "torchmetrics":
        if importlib.util.find_spec("torch_fidelity") is None:
            return None, "fid.kind torchmetrics needs the torch-fidelity package (pip install torch-fidelity)"
        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, reset_real_features=False, feature_extractor_weights_path=str(path)
        )
    else:
        extractor = torch.jit.load(str(path), map_location=device).eval()
        metric = FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False)
    return FIDScore(metric.to(device)), ""


def lpips_metric(config: FeatureWeightsConfig, device: torch.device) -> tuple[Callable | None, str]:
    """(distance(a, b) -> (B,) for [-1, 1] images, '') or (None, why LPIPS is unavailable)."""
    if not config.configured:
        return None, "no LPIPS network weights configured (lpips.uri + lpips.sha256)"
    path = fetch_weights(config)
    if config.kind == "torchmetrics":
        if importlib.util.find_spec("torchvision") is None:
            return None, "lpips.kind torchmetrics needs torchvision (it builds the backbone)"
        try:
            import torchvision  # noqa: F401  (installed but broken beside this torch build is common)
        except Exception as error:  # noqa: BLE001
            return (
                None,
                f"lpips.kind torchmetrics needs a working torchvision: {type(error).__name__}: {error}",
            )
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        hub = Path(torch.hub.get_dir()) / "checkpoints"
        hub.mkdir(parents=True, exist_ok=True)
        if not (hub / path.name).is_file():
            shutil.copyfile(path, hub / path.name)  # torchvision finds its pretrained file here, no download
        network = LearnedPerceptualImagePatchSimilarity(net_type=config.net, reduction="none").to(device)

        def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            network.reset()
            return network(a.float().clamp(-1, 1), b.float().clamp(-1, 1)).reshape(-1)

        return distance, ""
    scripted = torch.jit.load(str(path), map_location=device).eval()

    def scripted_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return scripted(a.float(), b.float()).reshape(len(a), -1).mean(dim=1)

    return scripted_distance, ""
