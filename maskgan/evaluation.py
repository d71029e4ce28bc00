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
from maskgan import storage
from maskgan.evaluation_features import FeatureWeightsConfig
from maskgan.evaluation_metrics import EDIT_KINDS, EDIT_METRICS, PARSER_METRICS, EvaluationModels, Evaluator
from maskgan.gate import UNAVAILABLE, parse_report
from maskgan.storage import StorageConfig
from maskgan.tracking import TrackingConfig

logger = logging.getLogger(__name__)

EVALUATION_STAGE = "evaluation"  # maskgan.stage tag of evaluation runs
REPORT_ARTIFACT = "evaluation"  # MLflow artefact folder of the report
# checkpoint meta.json config section of each network's model config (first key present wins)
CONFIG_KEYS = {"generator": ("generator",), "mask_vae": ("mask_vae", "model"), "parser": ("model",)}


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What to evaluate, on which data, and where FID / LPIPS weights and the report live."""

    # a checkpoint (or a folder holding checkpoints: the latest) of dmn, ebst, parser or maskvae
    model_uri: str
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


def _build(
    meta: Mapping, uri: str, network: str, weights: str, storage_config: StorageConfig | None
) -> nn.Module:
    """Rebuild one network from a checkpoint's meta.json config and load its weights (weights_only)."""
    from maskgan.models.dmn import DenseMappingNetwork, DMNConfig
    from maskgan.models.mask_vae import MaskVAE, MaskVAEConfig
    from maskgan.models.parser import FaceParser, ParserConfig
    from maskgan.training import checkpoint

    classes = {"generator": (DMNConfig, DenseMappingNetwork), "mask_vae": (MaskVAEConfig, MaskVAE),
               "parser": (ParserConfig, FaceParser)}  # fmt: skip
    config_cls, model_cls = classes[network]
    sections = meta.get("config") or {}
    section = next(
        (sections[key] for key in CONFIG_KEYS[network] if isinstance(sections.get(key), dict)), None
    )
    if section is None:
        raise ValueError(
            f"checkpoint {uri} has no {' / '.join(CONFIG_KEYS[network])} config to rebuild {network}"
        )
    model = model_cls(config_lib.from_dict(config_cls, section, network))
    model.load_state_dict(checkpoint.load_weights(uri, weights, storage_config), strict=True)
    return model.eval()


def load_network(
    uri: str, network: str, storage_config: StorageConfig | None = None
) -> tuple[nn.Module, dict]:
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
                f"{config.model_uri}: MLflow model URIs load through maskgan.editing.Editor, missing here; "
                "pass the checkpoint URI (the run's maskgan.checkpoint_uri tag) instead"
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


def evaluate(
    models: EvaluationModels, batches: Iterable[Mapping[str, torch.Tensor]], config: EvaluationConfig
) -> tuple[dict[str, float | str], dict[str, str], dict[str, torch.Tensor], int]:
    """(metrics, unavailable reasons, grid columns of the first batch, number of samples) over `batches`."""
    device = torch.device(config.device)
    for network in (models.generator, models.mask_vae, models.parser):
        if network is not None:
            network.to(device).eval()
    evaluator = Evaluator(models, fid=config.fid, lpips=config.lpips, seed=config.seed, device=device)
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
        raise ValueError(
            f"set report_uri: there is no checkpoint folder to write the report beside ({config.model_uri})"
        )
    return f"{checkpoint_uri.rstrip('/')}/evaluation-{config.split}.json"


def manifest_sha256(config: EvaluationConfig) -> str:
    """sha256 of the dataset's manifest.json (as training tags it): reports on other data never compare."""
    raw = storage.read_bytes(storage.resolve(config.data_uri, config.storage).join("manifest.json"))
    return hashlib.sha256(raw).hexdigest()


def run_evaluation(config: EvaluationConfig, tracking: TrackingConfig | None = None) -> EvaluationResult:
    """Evaluate, log to MLflow (metrics, grid, report artefact) and write the report; a failure writes a
    status "failed" report (when the report location is known) and re-raises."""
    from maskgan import tracking as tracking_lib
    from maskgan.data import loader

    tracking = tracking or TrackingConfig()
    params = config_lib.to_dict(config)
    run_key = (
        "eval-" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    )
    report: dict[str, Any] = {
        "status": "failed", "metrics": {}, "split": config.split, "model_uri": config.model_uri,
        "parser_uri": config.parser_uri, "created_at": _now(),
    }  # fmt: skip
    report_uri = config.report_uri
    tracker = tracking_lib.Tracker.disabled()
    if tracking.enabled:
        tracker = tracking_lib.Tracker.start(
            tracking, run_key=run_key, stage=EVALUATION_STAGE, params=params,
            tags={"maskgan.model_uri": config.model_uri, "maskgan.split": config.split},
            storage=config.storage,
        )  # fmt: skip
    report["mlflow_run_id"] = tracker.run_id
    try:
        report["manifest_sha256"] = manifest_sha256(config)
        models = load_models(config)
        report_uri = default_report_uri(config, models.uri)
        report |= {"model_uri": models.uri, "stage": models.stage, "step": models.step}
        batches = loader.iter_batches(
            config.data_uri, config.split, config.batch_size, storage_config=config.storage
        )
        started = time.perf_counter()
        metrics, unavailable, grid, num_samples = evaluate(models, batches, config)
        report |= {"status": "ok", "metrics": metrics, "unavailable": unavailable, "num_samples": num_samples,
                   "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
        step = int(models.step or 0)
        tracker.log_metrics(
            {name: value for name, value in metrics.items() if isinstance(value, float)}, step=step
        )
        tracker.set_tags(
            {f"maskgan.eval.{name}": f"{UNAVAILABLE}: {why}"[:500] for name, why in unavailable.items()}
        )
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
    "EDIT_KINDS", "EDIT_METRICS", "PARSER_METRICS", "UNAVAILABLE", "EvaluationConfig", "EvaluationModels",
    "EvaluationResult", "FeatureWeightsConfig", "evaluate", "load_models", "load_network", "run_evaluation",
]  # fmt: skip
