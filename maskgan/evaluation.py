"""Evaluation of a trained model on the val or test split: metrics (torchmetrics), MLflow, a JSON report.

For a DMN / EBST checkpoint (the generator G(target_mask, reference_mask, reference_image)):
  recon/l1, recon/psnr, recon/ssim      G(M, M, I) against I (images mapped to [0, 1])
  recon/miou                           the parser on G(M, M, I) against M
  edit/<kind>/pixel_accuracy, /miou    the parser on G(E, M, I) against the edited mask E, for E from the
                                       MaskVAE simulator (kind "vae") and each rule of maskgan.editing_rules
  edit/<kind>/changed_accuracy         the same accuracy on the pixels the edit changed only
  edit/<kind>/outside_change           mean |G(E, M, I) - G(M, M, I)| over the pixels the edit left alone
                                       (an edit must stay local; 0 = perfectly local), images in [0, 1]
  edit/miou, edit/pixel_accuracy, edit/changed_accuracy, edit/outside_change: means over the kinds
  style/pixel_accuracy, style/miou     the parser on G(M', M, I) against M' (M' = another face's mask)
  parser/pixel_accuracy, parser/miou   the parser on the real images (its own accuracy: the ceiling)
  fid/reconstruction, fid/style_copy, lpips (recon vs real): only with configured weights, else "unavailable"
For a parser checkpoint: parser/*; for a MaskVAE checkpoint: maskvae/pixel_accuracy, maskvae/miou.
mIoU is torchmetrics MeanIoU: per image, the IoU of each class in the prediction or the target, averaged
over those (image, class) pairs. Samples an edit rule cannot change (no mouth, no eyes) are skipped.

The report (a JSON object beside the model, and the MLflow artefact evaluation/report.json) follows
maskgan.gate's contract: {"status": "ok" | "failed", "metrics": {name: number | "unavailable"},
"split", "model_uri", ...}; a failure writes status "failed" with the error and re-raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from maskgan import config as config_lib
from maskgan import editing_rules, storage
from maskgan.evaluation_features import UNAVAILABLE, FeatureWeightsConfig, fid_metric, lpips_metric
from maskgan.gate import parse_report
from maskgan.labels import NUM_CLASSES, one_hot
from maskgan.storage import StorageConfig
from maskgan.tracking import TrackingConfig

logger = logging.getLogger(__name__)

EDIT_KINDS = ("vae", *editing_rules.RULES)
EDIT_METRICS = ("pixel_accuracy", "miou", "changed_accuracy", "outside_change")  # per kind, and their means
PARSER_METRICS = (
    "recon/miou", "style/pixel_accuracy", "style/miou",
    *(f"edit/{kind}/{name}" for kind in EDIT_KINDS for name in EDIT_METRICS),
    *(f"edit/{name}" for name in EDIT_METRICS),
)  # fmt: skip  (what a generator's evaluation reports only with a parser)
EVALUATION_STAGE = "evaluation"  # maskgan.stage tag of evaluation runs
REPORT_ARTIFACT = "evaluation"  # MLflow artefact folder of the report
# checkpoint meta.json config section of each network's model config (first key present wins)
CONFIG_KEYS = {"generator": ("generator",), "mask_vae": ("mask_vae", "model"), "parser": ("model",)}


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate, on which data, and where FID / LPIPS weights and the report live."""

    model_uri: str  # a checkpoint (or a folder holding checkpoints: the latest) of dmn, ebst, parser or maskvae
    parser_uri: str | None = None  # parser checkpoint: needed for every mask-fidelity metric
    mask_vae_uri: str | None = None  # MaskVAE checkpoint for simulated edits; None = the model's own (EBST)
    data_uri: str = "data/celebamask-parquet"
    split: str = "val"
    storage: StorageConfig = field(default_factory=StorageConfig)
    batch_size: int = 8
    max_batches: int | None = None  # None = the whole split
    seed: int = 0  # MaskVAE edit draws
    fid: FeatureWeightsConfig = field(default_factory=FeatureWeightsConfig)
    lpips: FeatureWeightsConfig = field(default_factory=FeatureWeightsConfig)
    report_uri: str | None = None  # None = <checkpoint>/evaluation-<split>.json
    grid_rows: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.model_uri:
            raise ValueError("model_uri must name a checkpoint (local path or s3://...)")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be val or test (or train), got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {self.max_batches}")
        if self.grid_rows < 1:
            raise ValueError(f"grid_rows must be >= 1, got {self.grid_rows}")


# ---------------------------------------------------------------------------------------- loading


@dataclass
class EvaluationModels:
    """The networks evaluation needs, in eval mode. An editing.Editor has the same attributes."""

    generator: nn.Module | None = None  # G(target_onehot, reference_onehot, reference_image)
    mask_vae: nn.Module | None = None
    parser: nn.Module | None = None
    stage: str | None = None  # the model checkpoint's stage: dmn | ebst | parser | maskvae
    step: int | None = None
    uri: str | None = None  # the resolved model checkpoint


def _build(meta: Mapping, uri: str, network: str, weights: str, storage_config: StorageConfig | None) -> nn.Module:
    """Rebuild one network from a checkpoint's meta.json config and load its weights (weights_only)."""
    from maskgan.models.dmn import DenseMappingNetwork, DMNConfig
    from maskgan.models.mask_vae import MaskVAE, MaskVAEConfig
    from maskgan.models.parser import FaceParser, ParserConfig
    from maskgan.training import checkpoint

    classes = {"generator": (DMNConfig, DenseMappingNetwork), "mask_vae": (MaskVAEConfig, MaskVAE),
               "parser": (ParserConfig, FaceParser)}  # fmt: skip
    config_cls, model_cls = classes[network]
    sections = meta.get("config") or {}
    section = next((sections[key] for key in CONFIG_KEYS[network] if isinstance(sections.get(key), dict)), None)
    if section is None:
        raise ValueError(f"checkpoint {uri} has no {' / '.join(CONFIG_KEYS[network])} config to rebuild {network}")
    model = model_cls(config_lib.from_dict(config_cls, section, network))
    model.load_state_dict(checkpoint.load_weights(uri, weights, storage_config), strict=True)
    return model.eval()


def load_network(uri: str, network: str, storage_config: StorageConfig | None = None) -> tuple[nn.Module, dict]:
    """(network, meta) from a checkpoint that holds it: generator (EMA when saved), mask_vae or parser."""
    from maskgan.training import checkpoint

    uri = checkpoint.resolve_checkpoint(uri, storage_config)
    meta = checkpoint.read_meta(uri, storage_config)
    saved = meta.get("networks", [])
    weights = "generator_ema" if network == "generator" and "generator_ema" in saved else network
    if weights not in saved:
        raise ValueError(f"checkpoint {uri} (stage {meta.get('stage')!r}) holds no {network}: it has {saved}")
    return _build(meta, uri, network, weights, storage_config), {**meta, "uri": uri}


def load_models(config: EvaluationConfig) -> EvaluationModels:
    """The model checkpoint's networks plus the configured parser / MaskVAE.

    SEAM: MLflow runs and registry aliases (runs:/..., models:/...) load through maskgan.editing.Editor
    (its .generator / .mask_vae / .parser are what evaluate() reads) once that module is installed.
    """
    from maskgan.training import checkpoint

    if config.model_uri.startswith(("models:/", "runs:/")):
        try:
            from maskgan.editing import Editor
        except ModuleNotFoundError:
            raise ValueError(
                f"{config.model_uri}: MLflow model URIs load through maskgan.editing.Editor, which this install "
                "lacks; pass the checkpoint URI (the run's maskgan.checkpoint_uri tag) instead"
            ) from None
        editor = Editor.load(config.model_uri, parser=config.parser_uri)
        source = editor.source
        return _with_extras(
            EvaluationModels(generator=editor.generator, mask_vae=editor.mask_vae, parser=editor.parser,
                             stage=source.stage, step=source.step, uri=config.model_uri),
            config,
        )  # fmt: skip
    uri = checkpoint.resolve_checkpoint(config.model_uri, config.storage)
    meta = checkpoint.read_meta(uri, config.storage)
    models = EvaluationModels(stage=meta.get("stage"), step=meta.get("step"), uri=uri)
    saved = meta.get("networks", [])
    if "generator" in saved:
        models.generator, _ = load_network(uri, "generator", config.storage)
    if "mask_vae" in saved:
        models.mask_vae, _ = load_network(uri, "mask_vae", config.storage)
    if "parser" in saved:
        models.parser, _ = load_network(uri, "parser", config.storage)
    if not (models.generator or models.mask_vae or models.parser):
        raise ValueError(f"checkpoint {uri} holds none of generator, mask_vae, parser (it has {saved})")
    return _with_extras(models, config)


def _with_extras(models: EvaluationModels, config: EvaluationConfig) -> EvaluationModels:
    if config.parser_uri and models.parser is None:
        models.parser, _ = load_network(config.parser_uri, "parser", config.storage)
    if config.mask_vae_uri:
        models.mask_vae, _ = load_network(config.mask_vae_uri, "mask_vae", config.storage)
    return models


# ---------------------------------------------------------------------------------------- metrics


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
        out = {f"{prefix}/pixel_accuracy": float(self.accuracy.compute()), f"{prefix}/miou": float(self.miou.compute())}
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

    def __init__(self, models: EvaluationModels, config: EvaluationConfig, device: torch.device) -> None:
        from torchmetrics import MeanAbsoluteError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.models, self.config, self.device = models, config, device
        self.l1 = MeanAbsoluteError().to(device)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0).to(device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
        self.parser_real, self.recon, self.style, self.mask_vae = (_Segmentation(device) for _ in range(4))
        self.edits = {kind: _Segmentation(device) for kind in EDIT_KINDS}
        self.fid, self.fid_reason = fid_metric(config.fid, device)
        self.lpips, self.lpips_reason = lpips_metric(config.lpips, device)
        from torchmetrics import MeanMetric

        self.lpips_mean = MeanMetric().to(device)
        self.fakes: dict[str, list[torch.Tensor]] = {"reconstruction": [], "style_copy": []}
        self.previous: torch.Tensor | None = None  # masks of the previous batch: partners at batch size 1
        self.grid: dict[str, torch.Tensor] | None = None
        self.num_samples = 0
        self.generator = torch.Generator().manual_seed(config.seed)

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
            self.grid = {name: value.float() if value.is_floating_point() else value for name, value in columns.items()}

    def _edited_masks(self, label: torch.Tensor, others: torch.Tensor | None) -> dict[str, torch.Tensor]:
        edited = {}
        if self.models.mask_vae is not None and (len(label) >= 2 or self.previous is not None):
            partners = None if len(label) >= 2 else self.previous
            edited["vae"], _ = self.models.mask_vae.simulate_edits(label, generator=self.generator, partners=partners)
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
                values = [out[f"edit/{kind}/{name}"] for kind, out in per_kind.items() if f"edit/{kind}/{name}" in out]
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


def evaluate(
    models: EvaluationModels, batches: Iterable[Mapping[str, torch.Tensor]], config: EvaluationConfig
) -> tuple[dict[str, float | str], dict[str, str], dict[str, torch.Tensor], int]:
    """(metrics, unavailable reasons, grid columns of the first batch, number of samples) over `batches`."""
    device = torch.device(config.device)
    for network in (models.generator, models.mask_vae, models.parser):
        if network is not None:
            network.to(device).eval()
    evaluator = Evaluator(models, config, device)
    for index, batch in enumerate(batches):
        if config.max_batches is not None and index >= config.max_batches:
            break
        evaluator.update(batch)
    if evaluator.num_samples == 0:
        raise ValueError(f"split {config.split!r} of {config.data_uri} has no rows to evaluate")
    metrics, unavailable = evaluator.results()
    return metrics, unavailable, evaluator.grid or {}, evaluator.num_samples


# ------------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class EvaluationResult:
    report: dict[str, Any]
    report_uri: str
    mlflow_run_id: str | None


def default_report_uri(config: EvaluationConfig, checkpoint_uri: str | None) -> str:
    """<checkpoint>/evaluation-<split>.json (beside the model), unless report_uri is set."""
    if config.report_uri:
        return config.report_uri
    if not checkpoint_uri or "://" in checkpoint_uri and not checkpoint_uri.startswith("s3://"):
        raise ValueError(f"set report_uri: there is no checkpoint folder to write the report beside ({config.model_uri})")
    return f"{checkpoint_uri.rstrip('/')}/evaluation-{config.split}.json"


def manifest_sha256(config: EvaluationConfig) -> str:
    """sha256 of the dataset's manifest.json (as training tags it): reports of other datasets never compare."""
    raw = storage.read_bytes(storage.resolve(config.data_uri, config.storage).join("manifest.json"))
    return hashlib.sha256(raw).hexdigest()


def run_evaluation(config: EvaluationConfig, tracking: TrackingConfig | None = None) -> EvaluationResult:
    """Evaluate, log to MLflow (metrics, grid, report artefact) and write the report; a failure writes a
    status "failed" report (when the report location is known) and re-raises."""
    from maskgan import tracking as tracking_lib
    from maskgan.data import loader

    tracking = tracking or TrackingConfig()
    params = config_lib.to_dict(config)
    run_key = "eval-" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    report: dict[str, Any] = {"status": "failed", "metrics": {}, "split": config.split, "model_uri": config.model_uri,
                              "parser_uri": config.parser_uri, "created_at": _now()}  # fmt: skip
    report_uri = config.report_uri
    tracker = tracking_lib.Tracker.disabled()
    if tracking.enabled:
        tracker = tracking_lib.Tracker.start(
            tracking, run_key=run_key, stage=EVALUATION_STAGE, params=params,
            tags={"maskgan.model_uri": config.model_uri, "maskgan.split": config.split}, storage=config.storage,
        )  # fmt: skip
    report["mlflow_run_id"] = tracker.run_id
    try:
        report["manifest_sha256"] = manifest_sha256(config)
        models = load_models(config)
        report_uri = default_report_uri(config, models.uri)
        report |= {"model_uri": models.uri, "stage": models.stage, "step": models.step}
        batches = loader.iter_batches(config.data_uri, config.split, config.batch_size, storage_config=config.storage)
        started = time.perf_counter()
        metrics, unavailable, grid, num_samples = evaluate(models, batches, config)
        report |= {"status": "ok", "metrics": metrics, "unavailable": unavailable, "num_samples": num_samples,
                   "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
        step = int(models.step or 0)
        tracker.log_metrics({name: value for name, value in metrics.items() if isinstance(value, float)}, step=step)
        tracker.set_tags({f"maskgan.eval.{name}": f"{UNAVAILABLE}: {why}"[:500] for name, why in unavailable.items()})
        if grid:
            tracker.log_image(tracking_lib.image_grid(grid, max_rows=config.grid_rows), "grid", step=step)
    except BaseException as error:
        report["error"] = f"{type(error).__name__}: {error}"
        _finish(report, report_uri, config, tracker)
        tracker.finish("FAILED")
        raise
    _finish(report, report_uri, config, tracker)
    tracker.finish("FINISHED")
    return EvaluationResult(report=report, report_uri=report_uri, mlflow_run_id=tracker.run_id)


def _finish(report: dict, report_uri: str | None, config: EvaluationConfig, tracker) -> None:
    """Write the report beside the model and into the MLflow run (whatever of the two is possible)."""
    import os
    import tempfile

    if report_uri:
        report["report_uri"] = report_uri
    parse_report(report)  # the gate's contract (maskgan.gate): a ReportError here is a bug in this module
    data = json.dumps(report, indent=2, sort_keys=True, default=str).encode()
    if report_uri:
        storage.write_bytes(storage.resolve(report_uri, config.storage), data)
    if tracker.enabled:
        with tempfile.TemporaryDirectory(prefix="maskgan-report-") as folder:
            path = os.path.join(folder, "report.json")
            with open(path, "wb") as stream:
                stream.write(data)
            tracker.log_artifact(path, REPORT_ARTIFACT)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = [
    "EDIT_KINDS", "UNAVAILABLE", "EvaluationConfig", "EvaluationModels", "EvaluationResult", "FeatureWeightsConfig",
    "evaluate", "load_models", "load_network", "run_evaluation",
]  # fmt: skip
