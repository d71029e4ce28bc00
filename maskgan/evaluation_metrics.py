"""The metric side of evaluation: what evaluate() accumulates batch by batch (torchmetrics underneath).

See maskgan.evaluation for the metric definitions, the report and the job around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from maskgan import editing_rules
from maskgan.evaluation_features import FeatureWeightsConfig, fid_metric, lpips_metric
from maskgan.gate import UNAVAILABLE  # the report contract's "not computed"
from maskgan.labels import NUM_CLASSES, one_hot

EDIT_KINDS = ("vae", *editing_rules.RULES)
EDIT_METRICS = ("pixel_accuracy", "miou", "changed_accuracy", "outside_change")  # per kind, and their means
PARSER_METRICS = (
    "recon/miou",
    "style/pixel_accuracy",
    "style/miou",
    *(f"edit/{kind}/{name}" for kind in EDIT_KINDS for name in EDIT_METRICS),
    *(f"edit/{name}" for name in EDIT_METRICS),
)  # fmt: skip  (what a generator's evaluation reports only with a parser)


@dataclass
class EvaluationModels:
    """The networks evaluation needs, in eval mode. An editing.Editor has the same attributes."""

    generator: nn.Module | None = None  # G(target_onehot, reference_onehot, reference_image)
    mask_vae: nn.Module | None = None
    parser: nn.Module | None = None
    stage: str | None = None  # the model checkpoint's stage: dmn | ebst | parser | maskvae
    step: int | None = None
    uri: str | None = None  # the resolved model checkpoint


class _Segmentation:
    """Pixel accuracy, mIoU and optionally accuracy on a pixel subset, accumulated over batches."""

    def __init__(self, device: torch.device) -> None:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy
        from torchmetrics.segmentation import MeanIoU

        self.accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro").to(device)
        self.miou = MeanIoU(num_classes=NUM_CLASSES, input_format="index").to(device)
        self.changed = MeanMetric().to(device)
        self.outside = MeanMetric().to(device)
        self.count = 0

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.accuracy.update(predicted.reshape(-1), target.reshape(-1))
        self.miou.update(predicted, target)
        self.count += len(target)

    def results(self, prefix: str) -> dict[str, float]:
        if not self.count:
            return {}
        out = {
            f"{prefix}/pixel_accuracy": float(self.accuracy.compute()),
            f"{prefix}/miou": float(self.miou.compute()),
        }
        if self.changed.update_count:
            out[f"{prefix}/changed_accuracy"] = float(self.changed.compute())
        if self.outside.update_count:
            out[f"{prefix}/outside_change"] = float(self.outside.compute())
        return out


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] float."""
    return ((images.float() + 1) / 2).clamp(0, 1)


class Evaluator:
    """Accumulates every metric over batches; evaluate() drives it."""

    def __init__(
        self,
        models: EvaluationModels,
        *,
        fid: FeatureWeightsConfig,
        lpips: FeatureWeightsConfig,
        seed: int,
        device: torch.device,
    ) -> None:
        from torchmetrics import MeanAbsoluteError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.models, self.device = models, device
        self.l1 = MeanAbsoluteError().to(device)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
        self.parser_real, self.recon, self.style, self.mask_vae = (_Segmentation(device) for _ in range(4))
        self.edits = {kind: _Segmentation(device) for kind in EDIT_KINDS}
        self.fid, self.fid_reason = fid_metric(fid, device)
        self.lpips, self.lpips_reason = lpips_metric(lpips, device)
        from torchmetrics import MeanMetric

        self.lpips_mean = MeanMetric().to(device)
        self.fakes: dict[str, list[torch.Tensor]] = {"reconstruction": [], "style_copy": []}
        self.previous: torch.Tensor | None = None  # masks of the previous batch: partners at batch size 1
        self.grid: dict[str, torch.Tensor] | None = None
        self.num_samples = 0
        self.generator = torch.Generator().manual_seed(seed)

    def _parse(self, images: torch.Tensor) -> torch.Tensor:
        return self.models.parser(images.float()).argmax(dim=1)

    def _generate(self, target: torch.Tensor, reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.models.generator(one_hot(target), one_hot(reference), image).float()

    def _others(self, label: torch.Tensor) -> torch.Tensor | None:
        """(B, H, W) masks of other faces: the batch rolled by one, or the previous batch at batch size 1."""
        if len(label) >= 2:
            return label.roll(1, 0)
        if self.previous is not None:
            return self.previous[:1].expand_as(label)
        return None

    @torch.no_grad()
    def update(self, batch: Mapping[str, torch.Tensor]) -> None:
        image = batch["image"].to(self.device)  # (B, 3, H, W) in [-1, 1]
        label = batch["label"].to(self.device)  # (B, H, W) int64
        self.num_samples += len(label)
        parser, generator, mask_vae = self.models.parser, self.models.generator, self.models.mask_vae
        columns: dict[str, torch.Tensor] = {"image": image, "mask": label}
        if parser is not None:
            self.parser_real.update(self._parse(image), label)
        if mask_vae is not None:
            self.mask_vae.update(mask_vae.reconstruct(label), label)
        if generator is not None:
            reconstruction = self._generate(label, label, image)
            columns["reconstruction"] = reconstruction
            self.l1.update(_unit(reconstruction), _unit(image))
            self.psnr.update(_unit(reconstruction), _unit(image))
            self.ssim.update(_unit(reconstruction), _unit(image))
            if self.fid is not None:
                self.fid.update_real(image)
                self.fakes["reconstruction"].append(reconstruction.cpu())
            if self.lpips is not None:
                self.lpips_mean.update(self.lpips(reconstruction, image))
            others = self._others(label)
            if parser is not None:
                self.recon.update(self._parse(reconstruction), label)
                for kind, edited in self._edited_masks(label, others).items():
                    self._update_edit(kind, edited, label, image, reconstruction, columns)
            if others is not None:
                style_copy = self._generate(others, label, image)  # another face's mask, this face's style
                if self.fid is not None:
                    self.fakes["style_copy"].append(style_copy.cpu())
                if parser is not None:
                    self.style.update(self._parse(style_copy), others)
                columns.update(style_target=others, style_copy=style_copy)
        self.previous = label
        if self.grid is None:
            self.grid = {
                name: value.float() if value.is_floating_point() else value for name, value in columns.items()
            }

    def _edited_masks(self, label: torch.Tensor, others: torch.Tensor | None) -> dict[str, torch.Tensor]:
        edited = {}
        if self.models.mask_vae is not None and (len(label) >= 2 or self.previous is not None):
            partners = None if len(label) >= 2 else self.previous
            edited["vae"], _ = self.models.mask_vae.simulate_edits(
                label, generator=self.generator, partners=partners
            )
        for rule in editing_rules.RULES:
            if rule == "hair_swap" and others is None:
                continue
            edited[rule] = editing_rules.apply_rule(rule, label, others)
        return edited

    def _update_edit(self, kind, edited, label, image, reconstruction, columns) -> None:
        changed = editing_rules.changed(label, edited)  # (B, H, W)
        keep = changed.flatten(1).any(dim=1)
        if not keep.any():
            return
        edited, changed = edited[keep], changed[keep]
        generated = self._generate(edited, label[keep], image[keep])
        parsed = self._parse(generated)
        metrics = self.edits[kind]
        metrics.update(parsed, edited)
        metrics.changed.update((parsed == edited)[changed].float())
        difference = (_unit(generated) - _unit(reconstruction[keep])).abs().mean(dim=1)  # (b, H, W)
        if (~changed).any():
            metrics.outside.update(difference[~changed])
        if kind in ("vae", "hair_swap") and keep.all():
            columns.update({f"{kind}_mask": edited, f"{kind}_edit": generated})

    def results(self) -> tuple[dict[str, float | str], dict[str, str]]:
        """(metrics, {metric: why unavailable})."""
        metrics: dict[str, float | str] = {}
        unavailable: dict[str, str] = {}
        metrics |= self.parser_real.results("parser") | self.mask_vae.results("maskvae")
        if self.models.generator is None:
            return metrics, unavailable
        metrics |= {"recon/l1": float(self.l1.compute()), "recon/psnr": float(self.psnr.compute()),
                    "recon/ssim": float(self.ssim.compute())}  # fmt: skip
        if self.models.parser is None:
            why = "no parser: pass parser_uri"
            for name in PARSER_METRICS:
                metrics[name], unavailable[name] = UNAVAILABLE, why
        else:
            metrics |= {"recon/miou": self.recon.results("recon")["recon/miou"]} | self.style.results("style")
            per_kind = {}
            for kind, values in self.edits.items():
                per_kind[kind] = values.results(f"edit/{kind}")
                metrics |= per_kind[kind]
                if not per_kind[kind]:
                    why = "no MaskVAE (mask_vae_uri)" if kind == "vae" else "the rule changed no sample"
                    for name in EDIT_METRICS:
                        metrics[f"edit/{kind}/{name}"], unavailable[f"edit/{kind}/{name}"] = UNAVAILABLE, why
            for name in EDIT_METRICS:
                values = [
                    out[f"edit/{kind}/{name}"]
                    for kind, out in per_kind.items()
                    if f"edit/{kind}/{name}" in out
                ]
                metrics[f"edit/{name}"] = sum(values) / len(values) if values else UNAVAILABLE
        for name in ("fid/reconstruction", "fid/style_copy"):
            fakes = self.fakes[name.split("/")[1]]
            if self.fid is None:
                metrics[name], unavailable[name] = UNAVAILABLE, self.fid_reason
            elif not fakes:
                metrics[name], unavailable[name] = UNAVAILABLE, "no samples"
            else:
                metrics[name] = self.fid.compute([fake.to(self.device) for fake in fakes])
        if self.lpips is None:
            metrics["lpips"], unavailable["lpips"] = UNAVAILABLE, self.lpips_reason
        else:
            metrics["lpips"] = float(self.lpips_mean.compute())
        return metrics, unavailable
