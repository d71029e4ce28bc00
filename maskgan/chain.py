"""The retraining chain (issue 9): dataset -> MaskVAE, DMN -> EBST -> parser -> evaluate -> register -> gate.

One run key names the whole chain. Its stages are the Ray Train runs `<storage>/<stage>-<key>/`
(each resumes or is a no-op on its own, see maskgan.training.ray_train), and its bookkeeping lives
beside them in `<storage>/chain-<key>/`:
    state.json     the steps finished so far and what each produced (checkpoint, MLflow run, version)
    summary.json   written at the end (status succeeded | failed | interrupted): the MLflow runs, the
                   registered versions, the gate decisions, the champion and where the image grids are
A rerun of a key whose summary says succeeded does nothing and says so; after a failure or a kill it
skips the recorded steps and resumes the unfinished one. Registered versions carry the tag
maskgan.run_key=<key> and are looked up by it before anything is registered, MLflow runs are found by
(run key, stage): a rerun makes no second run or version.

Models: a stage that was trained in this chain is logged into its training run, registered
(maskgan-maskvae / -dmn / -parser, alias challenger), evaluated and gated; the editor (EBST's
generator + blender + MaskVAE, and the parser) is logged as the `editor` pyfunc in the EBST run,
registered as maskgan-editor, evaluated and gated (champion moves only when it wins or none exists).
`reuse_champions` takes the champions of maskgan-maskvae / maskgan-dmn instead of training them; the
parser is trained only when maskgan-parser has no champion at the dataset's resolution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maskgan import config as config_lib
from maskgan import storage
from maskgan.gate import FAILED, GateConfig
from maskgan.storage import StorageConfig
from maskgan.tracking import TrackingConfig, redact
from maskgan.training.dmn import DMNTrainConfig
from maskgan.training.ebst import EBSTTrainConfig
from maskgan.training.mask_vae import MaskVAETrainConfig
from maskgan.training.parser import ParserTrainConfig
from maskgan.training.ray_train import RayTrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
SUMMARY_FILE = "summary.json"
EDITOR_MODEL = "maskgan-editor"
EDITOR_ARTIFACT = "editor"  # the pyfunc's name in the EBST run
SUCCEEDED, FAILED_STATUS, INTERRUPTED, RUNNING = "succeeded", "failed", "interrupted", "running"
STAGES = ("maskvae", "dmn", "ebst", "parser")
# Probes of the run storage / MLflow before anything starts: seconds, not the training timeouts.
PREFLIGHT_CONNECT_S, PREFLIGHT_REQUEST_S = 3.0, 5.0


class ChainError(RuntimeError):
    """The chain cannot go on; the message names the step and what to do."""


@dataclass(frozen=True, kw_only=True)
class ChainConfig:
    """Everything one chain run does. The four stage configs share the dataset and the networks EBST
    loads (ebst.mask_vae == maskvae.model, ebst.generator/discriminator == dmn's); build them with
    `stage_configs` to get that for free."""

    maskvae: MaskVAETrainConfig
    dmn: DMNTrainConfig
    ebst: EBSTTrainConfig
    parser: ParserTrainConfig
    ray: RayTrainConfig = field(default_factory=RayTrainConfig)  # ray.run_key = the chain key (None: derived)
    preprocess: Any = None  # a maskgan.data.preprocess.PreprocessConfig writing ebst.data.uri, or None
    reuse_champions: bool = False
    eval_split: str = "val"
    eval_batch_size: int = 8
    eval_max_batches: int | None = 4  # None = the whole split
    editor_gate: GateConfig | None = None  # None = maskgan.registry.default_gate("maskgan-editor")

    def __post_init__(self) -> None:
        data = self.ebst.data.uri
        for stage in ("maskvae", "dmn", "parser"):
            if getattr(self, stage).data.uri != data:
                raise ValueError(
                    f"{stage}.data.uri {getattr(self, stage).data.uri!r} differs from ebst.data.uri {data!r}"
                )
        if self.ebst.mask_vae != self.maskvae.model:
            raise ValueError("ebst.mask_vae must equal maskvae.model (EBST loads the MaskVAE it trains)")
        if self.ebst.generator != self.dmn.generator or self.ebst.discriminator != self.dmn.discriminator:
            raise ValueError("ebst.generator / ebst.discriminator must equal the dmn's (EBST starts from it)")
        if self.parser.model.image_size != self.ebst.generator.resolution:
            raise ValueError(
                f"parser.model.image_size {self.parser.model.image_size} must equal the generator's "
                f"resolution {self.ebst.generator.resolution} (it parses the generated images)"
            )
        if self.preprocess is not None and self.preprocess.output_uri.rstrip("/") != data.rstrip("/"):
            raise ValueError(
                f"preprocess.output_uri {self.preprocess.output_uri!r} must be the dataset {data!r}"
            )
        if (
            self.preprocess is not None
            and self.preprocess.decode.resolution != self.ebst.generator.resolution
        ):
            raise ValueError(
                f"preprocess.decode.resolution {self.preprocess.decode.resolution} must equal the "
                f"generator's resolution {self.ebst.generator.resolution}"
            )
        if self.eval_split not in ("val", "test", "train"):
            raise ValueError(f"eval_split must be val or test (or train), got {self.eval_split!r}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            raise ValueError(f"eval_max_batches must be >= 1 or None, got {self.eval_max_batches}")

    def fingerprint(self) -> str:
        """What the chain computes (not how many workers): a finished key is refused another one."""
        data = {name: config_lib.to_dict(getattr(self, name)) for name in STAGES}
        data["editor_gate"] = self.editor_gate.to_dict() if self.editor_gate else None
        data |= {"preprocess": config_lib.to_dict(self.preprocess) if self.preprocess else None,
                 "reuse_champions": self.reuse_champions, "eval": [self.eval_split, self.eval_batch_size,
                 self.eval_max_batches]}  # fmt: skip
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run_key(self) -> str:
        """ray.run_key, else a fingerprint of the chain (the same command resumes the same chain)."""
        return self.ray.run_key or self.fingerprint()[:12]

    def chain_uri(self) -> str:
        """<storage>/chain-<key>: state.json, summary.json, evaluation reports."""
        return f"{self.ray.storage_uri.rstrip('/')}/chain-{self.run_key()}"


# ------------------------------------------------------------------------------------ stage configs


def matching_preset(suffix: str, presets: dict[str, Callable[[], Any]], resolution: int) -> str:
    """mask_vae_tiny for "_tiny"; parser_512 for "_official_512" (no suffix match: the same px)."""
    matches = [name for name in presets if name.endswith(suffix)]
    if len(matches) != 1:
        matches = [name for name in presets if name.endswith(f"_{resolution}")]
    if len(matches) != 1:
        raise ValueError(f"no single preset for {suffix!r} among {sorted(presets)}; name one")
    return matches[0]


def stage_configs(
    ebst: EBSTTrainConfig, *, size: str, upstream_overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """{maskvae, dmn, ebst, parser}: the upstream presets of the same size ("_tiny", "_base_256",
    "_official_512") with EBST's data and network configs, plus `upstream_overrides` (KEY=VALUE for
    the three upstream configs, e.g. loop.max_steps=50)."""
    from maskgan.training import dmn, mask_vae, parser

    resolution = ebst.generator.resolution
    out = {"ebst": ebst}
    shared = {
        "maskvae": {"model": config_lib.to_dict(ebst.mask_vae, True)},
        "dmn": {"generator": config_lib.to_dict(ebst.generator, True),
                "discriminator": config_lib.to_dict(ebst.discriminator, True)},
        "parser": {"model": {"image_size": resolution}},
    }  # fmt: skip
    for stage, module in (("maskvae", mask_vae), ("dmn", dmn), ("parser", parser)):
        preset = matching_preset(size, module.PRESETS, resolution)
        made = module.PRESETS[preset]()
        made = config_lib.load(type(made), made, None, list(upstream_overrides))
        out[stage] = config_lib.merge(made, {"data": config_lib.to_dict(ebst.data, True), **shared[stage]})
    return out


# ---------------------------------------------------------------------------------------- preflight


def preflight(config: ChainConfig) -> str:
    """Fail within seconds when MLflow or the storage cannot be reached; returns the tracking URI.

    Messages name the URI without credentials (TrackingError / StorageError)."""
    from maskgan import tracking

    uri = tracking.resolve_tracking_uri(config.ray.tracking.tracking_uri)
    tracking.check_reachable(uri)
    fast = dataclasses.replace(
        config.ray.storage, connect_timeout_s=PREFLIGHT_CONNECT_S, request_timeout_s=PREFLIGHT_REQUEST_S
    )
    places = [(config.ray.storage_uri, "run storage", fast)]
    data_storage = dataclasses.replace(
        config.ebst.data.storage, connect_timeout_s=PREFLIGHT_CONNECT_S, request_timeout_s=PREFLIGHT_REQUEST_S
    )
    places.append((config.ebst.data.uri, "dataset", data_storage))
    if config.preprocess is not None:
        places.append((config.preprocess.source_uri, "source", dataclasses.replace(
            config.preprocess.storage, connect_timeout_s=PREFLIGHT_CONNECT_S,
            request_timeout_s=PREFLIGHT_REQUEST_S)))  # fmt: skip
    for uri_, role, storage_config in places:
        location = storage.resolve(uri_, storage_config)
        if location.is_s3:
            try:
                storage.check_bucket(location, role)
            except storage.StorageError as error:
                endpoint = storage_config.resolved_endpoint()
                where = f" (endpoint {redact(endpoint)})" if endpoint else ""
                raise storage.StorageError(f"{role}{where}: {error}") from None
        elif role == "run storage":
            storage.check_writable(location)
    return uri


# ------------------------------------------------------------------------------------------- state


class _Ledger:
    """state.json: {step: record} of finished steps, rewritten after each (local or s3://)."""

    def __init__(self, location: storage.Location) -> None:
        self.location = location.join(STATE_FILE)
        text = storage.read_text_if_exists(self.location)
        self.steps: dict[str, Any] = json.loads(text)["steps"] if text else {}

    def get(self, step: str) -> Any:
        return self.steps.get(step)

    def put(self, step: str, record: Any) -> Any:
        self.steps[step] = record
        data = {"steps": self.steps, "updated_at": _now()}
        storage.write_bytes(self.location, json.dumps(data, indent=2, sort_keys=True, default=str).encode())
        return record


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_summary(config: ChainConfig) -> dict | None:
    """The summary.json of this chain's key, or None."""
    location = storage.resolve(config.chain_uri(), config.ray.storage).join(SUMMARY_FILE)
    text = storage.read_text_if_exists(location)
    return json.loads(text) if text else None


# --------------------------------------------------------------------------------------------- run


def run_chain(
    config: ChainConfig, *, log: Callable[[str], None] = print, start: Callable[[], Any] | None = None
) -> dict:
    """Run (or resume, or find finished) the chain; returns the summary (also written as summary.json).

    start: called once there is work to do (e.g. connect to Ray), not for a finished key.
    Raises on any failure after writing a summary with status failed / interrupted.
    """
    tracking_uri = preflight(config)
    key = config.run_key()
    tracking = dataclasses.replace(config.ray.tracking, tracking_uri=tracking_uri)
    ray_config = dataclasses.replace(config.ray, run_key=key, tracking=tracking)
    folder = storage.resolve(config.chain_uri(), config.ray.storage)
    previous = read_summary(config)
    fingerprint = config.fingerprint()
    if previous and previous.get("config_fingerprint") != fingerprint:
        raise ChainError(
            f"run key {key} was used by a chain with another config (summary {folder.uri}/{SUMMARY_FILE}); "
            "use a new --run-key, or the same config to resume"
        )
    if previous and previous.get("status") == SUCCEEDED:
        log(f"chain {key} already finished at {previous.get('finished_at')}: nothing to do "
            "(trained nothing, registered nothing)")  # fmt: skip
        return {**previous, "already_finished": True}
    summary: dict[str, Any] = {
        "run_key": key, "status": RUNNING, "config_fingerprint": fingerprint, "started_at": _now(),
        "chain_uri": folder.uri, "storage_uri": config.ray.storage_uri, "tracking_uri": redact(tracking_uri),
        "experiment": tracking.experiment, "resumed": previous is not None, "stages": {}, "evaluations": {},
        "registered": {}, "gate": {}, "mlflow_runs": {}, "image_grids": {},
    }  # fmt: skip
    _write_summary(folder, summary)
    ledger = _Ledger(folder)
    try:
        if start is not None:
            start()
        _Chain(config, ray_config, tracking, ledger, summary, log).run()
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        summary["status"] = INTERRUPTED if interrupted else FAILED_STATUS
        summary["error"] = f"{type(error).__name__}: {error}"
        summary["finished_at"] = _now()
        try:
            _write_summary(folder, summary)
        except Exception as write_error:  # the original failure matters more
            logger.warning("could not write the chain summary: %s", write_error)
        raise
    failed = [name for name, decision in summary["gate"].items() if decision["outcome"] == FAILED]
    summary["status"] = FAILED_STATUS if failed else SUCCEEDED
    if failed:
        summary["error"] = "the gate failed for " + ", ".join(
            f"{name} ({summary['gate'][name]['reason']})" for name in failed
        )
    summary["finished_at"] = _now()
    _write_summary(folder, summary)
    if failed:
        raise ChainError(summary["error"])
    return summary


def _write_summary(folder: storage.Location, summary: dict) -> None:
    storage.write_bytes(
        folder.join(SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True, default=str).encode()
    )


class _Chain:
    """The steps, each recorded in the ledger once done (and skipped when found there)."""

    def __init__(self, config, ray_config, tracking: TrackingConfig, ledger: _Ledger, summary, log):
        self.config, self.ray_config, self.tracking = config, ray_config, tracking
        self.ledger, self.summary, self.log = ledger, summary, log
        self.key = ray_config.run_key
        self.storage: StorageConfig = ray_config.storage

    def step(self, name: str, action: Callable[[], Any]) -> Any:
        done = self.ledger.get(name)
        if done is not None:
            self.log(f"[chain {self.key}] {name}: done earlier")
            return done
        self.log(f"[chain {self.key}] {name}")
        return self.ledger.put(name, action())

    def run(self) -> None:
        from maskgan import registry

        config = self.config
        self.summary["dataset"] = self.step("dataset", self._dataset)
        stages: dict[str, dict] = self.summary["stages"]
        for stage in ("maskvae", "dmn"):
            stages[stage] = self.step(f"train/{stage}", lambda stage=stage: self._upstream(stage))
        ebst = config_lib.merge(
            config.ebst,
            {"mask_vae_checkpoint": stages["maskvae"]["checkpoint_uri"],
             "dmn_checkpoint": stages["dmn"]["checkpoint_uri"]},
        )  # fmt: skip
        stages["ebst"] = self.step("train/ebst", lambda: self._train(ebst))
        stages["parser"] = self.step("train/parser", self._parser)
        parser_uri, maskvae_uri = stages["parser"]["checkpoint_uri"], stages["maskvae"]["checkpoint_uri"]
        for stage in ("parser", "maskvae", "dmn"):
            if stages[stage]["source"] not in ("trained", "already finished"):
                continue  # a reused champion is gated already
            name = registry.STAGE_MODELS[stage][0]
            extra = {"parser_uri": parser_uri, "mask_vae_uri": maskvae_uri} if stage == "dmn" else {}
            report = self.step(f"evaluate/{stage}", lambda s=stages[stage], e=extra: self._evaluate(s, e))
            self.summary["evaluations"][stage] = _report_brief(report)
            version = self.step(f"register/{stage}", lambda s=stage: self._register_stage(s, stages[s]))
            self.summary["registered"][name] = version
            self.summary["gate"][name] = self.step(
                f"gate/{stage}", lambda n=name, v=version, r=report: self._gate(n, v["version"], r)
            )
        editor = self.step("log/editor", lambda: self._log_editor(stages["ebst"], parser_uri))
        self.summary["editor_model"] = editor
        report = self.step(
            "evaluate/editor", lambda: self._evaluate(stages["ebst"], {"parser_uri": parser_uri})
        )
        self.summary["evaluations"]["editor"] = _report_brief(report)
        version = self.step("register/editor", lambda: self._register_editor(stages["ebst"], parser_uri))
        self.summary["registered"][EDITOR_MODEL] = version
        self.summary["gate"][EDITOR_MODEL] = self.step(
            "gate/editor", lambda: self._gate(EDITOR_MODEL, version["version"], report, config.editor_gate)
        )
        self._describe(stages)

    # ------------------------------------------------------------------------------------ steps

    def _dataset(self) -> dict:
        from maskgan.training import ray_train

        action = "given"
        if self.config.preprocess is not None:
            from maskgan.data.preprocess import OutputOutdated, run

            try:
                result = run(self.config.preprocess)
                action = "up to date" if result.skipped else "built"
            except OutputOutdated as outdated:
                self.log(f"[chain {self.key}] dataset: rebuilding ({outdated.reason})")
                run(self.config.preprocess, overwrite=True)
                action = "rebuilt"
        try:
            info = ray_train.check_dataset(self.config.ebst.data)
        except ray_train.DatasetError as error:
            hint = "" if self.config.preprocess else " (pass --source to preprocess the raw dataset first)"
            raise ChainError(f"dataset: {error}{hint}") from None
        eval_split = self.config.eval_split
        if eval_split == "val" and info.val_rows == 0:
            # A few synthetic samples may hash no row into val; the gate then compares train scores.
            self.log(f"[chain {self.key}] dataset {info.uri} has no val rows: evaluating on train")
            eval_split = "train"
        return {"uri": info.uri, "manifest_sha256": info.manifest_sha256, "train_rows": info.train_rows,
                "val_rows": info.val_rows, "resolution": info.resolution, "action": action,
                "eval_split": eval_split}  # fmt: skip

    def _train(self, stage_config: Any) -> dict:
        from maskgan.training import ray_train

        result = ray_train.train(stage_config, self.ray_config)
        self.log(result.summary())
        if not result.checkpoint_uri:
            raise ChainError(f"{result.stage}: run {result.run_name} left no checkpoint")
        return {
            "source": "already finished" if result.already_finished else "trained",
            "run_name": result.run_name, "run_uri": result.run_uri, "checkpoint_uri": result.checkpoint_uri,
            "mlflow_run_id": result.mlflow_run_id, "step": result.step,
        }  # fmt: skip

    def _upstream(self, stage: str) -> dict:
        from maskgan import registry

        if self.config.reuse_champions:
            found = registry.champion_checkpoint(self.tracking, registry.STAGE_MODELS[stage][0])
            if found is not None:
                version, uri = found
                name = registry.STAGE_MODELS[stage][0]
                self.log(f"[chain {self.key}] {stage}: reusing {name} champion v{version}")
                return {"source": f"champion v{version}", "version": version, "checkpoint_uri": uri,
                        "mlflow_run_id": None}  # fmt: skip
            self.log(f"[chain {self.key}] {stage}: no champion to reuse, training it")
        return self._train(getattr(self.config, stage))

    def _parser(self) -> dict:
        from maskgan import registry
        from maskgan.training import checkpoint

        found = registry.champion_checkpoint(self.tracking, "maskgan-parser")
        if found is not None:
            version, uri = found
            try:
                size = checkpoint.read_meta(uri, self.storage)["config"]["model"]["image_size"]
            except (OSError, ValueError, KeyError, storage.StorageError) as error:
                size, why = None, f"cannot read it ({error})"
            else:
                why = f"it is {size} px"
            if size == self.config.parser.model.image_size:
                self.log(f"[chain {self.key}] parser: reusing maskgan-parser champion v{version}")
                return {"source": f"champion v{version}", "version": version, "checkpoint_uri": uri,
                        "mlflow_run_id": None}  # fmt: skip
            self.log(f"[chain {self.key}] parser: champion v{version} does not fit ({why}): training one")
        return self._train(self.config.parser)

    def _evaluate(self, stage: dict, extra: dict) -> dict:
        from maskgan.evaluation import EvaluationConfig, run_evaluation

        config = self.config
        name, split = stage["run_name"], self.summary["dataset"]["eval_split"]
        evaluation = EvaluationConfig(
            model_uri=stage["checkpoint_uri"], data_uri=config.ebst.data.uri, split=split,
            storage=config.ebst.data.storage, batch_size=config.eval_batch_size,
            max_batches=config.eval_max_batches,
            report_uri=f"{self.summary['chain_uri']}/evaluation/{name}-{split}.json", **extra,
        )  # fmt: skip
        result = run_evaluation(evaluation, self.tracking)
        return {
            "report": result.report,
            "report_uri": result.report_uri,
            "mlflow_run_id": result.mlflow_run_id,
        }

    def _register_stage(self, stage: str, trained: dict) -> dict:
        from maskgan import registry

        version, new = registry.register_checkpoint(
            self.tracking, stage, trained["mlflow_run_id"], trained["checkpoint_uri"], run_key=self.key,
            storage=self.storage,
        )  # fmt: skip
        return {"version": version, "new": new}

    def _log_editor(self, ebst: dict, parser_uri: str) -> dict:
        import mlflow

        from maskgan.editing import pyfunc

        run_id = ebst["mlflow_run_id"]
        client = mlflow.MlflowClient(self.tracking.tracking_uri)
        experiment = client.get_run(run_id).info.experiment_id
        logged = [
            model for model in client.search_logged_models(
                [experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{EDITOR_ARTIFACT}'")
            if str(model.status).upper().endswith("READY")
        ]  # fmt: skip
        if logged:
            model_id = max(logged, key=lambda model: model.creation_timestamp).model_id
            return {"mlflow_run_id": run_id, "model_id": model_id, "new": False}
        info = pyfunc.log_editor_model(
            run_id, ebst["checkpoint_uri"], parser_checkpoint=parser_uri,
            tracking_uri=self.tracking.tracking_uri, storage_config=self.storage, name=EDITOR_ARTIFACT,
        )  # fmt: skip
        return {"mlflow_run_id": run_id, "model_id": info.model_id, "new": True}

    def _register_editor(self, ebst: dict, parser_uri: str) -> dict:
        import mlflow

        from maskgan import registry

        found = registry.find_version_by_tag(self.tracking, EDITOR_MODEL, registry.RUN_KEY_TAG, self.key)
        if found is not None:
            # Registered before a kill, the step unrecorded: make sure the alias got set too.
            client = mlflow.MlflowClient(self.tracking.tracking_uri, registry_uri=self.tracking.tracking_uri)
            aliases = client.get_registered_model(EDITOR_MODEL).aliases
            if registry.CHAMPION not in aliases or int(aliases[registry.CHAMPION]) != found:
                client.set_registered_model_alias(EDITOR_MODEL, registry.CHALLENGER, found)
            return {"version": found, "new": False}
        version = registry.register(
            self.tracking, EDITOR_MODEL, ebst["mlflow_run_id"], EDITOR_ARTIFACT,
            tags={registry.RUN_KEY_TAG: self.key, registry.CHECKPOINT_TAG: ebst["checkpoint_uri"],
                  "maskgan.parser_uri": parser_uri, registry.STEP_TAG: ebst["step"]},
        )  # fmt: skip
        return {"version": version, "new": True}

    def _gate(self, name: str, version: int, report: dict, gate: GateConfig | None = None) -> dict:
        from maskgan import registry

        decision = registry.promote(self.tracking, name, version, gate, report=report["report"])
        self.log(decision.summary())
        return {"version": version, "outcome": decision.outcome, "reason": decision.reason,
                "champion_before": decision.champion_before,
                "champion_after": decision.champion_after}  # fmt: skip

    def _describe(self, stages: dict) -> None:
        """MLflow runs, image grid folders, the editor champion and its metrics, the UI command."""
        import mlflow

        from maskgan import registry

        runs = {f"train/{stage}": record.get("mlflow_run_id") for stage, record in stages.items()}
        runs |= {
            f"evaluate/{name}": brief["mlflow_run_id"] for name, brief in self.summary["evaluations"].items()
        }
        self.summary["mlflow_runs"] = {label: run_id for label, run_id in runs.items() if run_id}
        client = mlflow.MlflowClient(self.tracking.tracking_uri)
        for label, run_id in self.summary["mlflow_runs"].items():
            self.summary["image_grids"][label] = (
                client.get_run(run_id).info.artifact_uri.rstrip("/") + "/images"
            )
        champion = registry.champion_version(self.tracking, EDITOR_MODEL)
        metrics = None
        if champion is not None:
            stored = registry.stored_report(self.tracking, EDITOR_MODEL, champion)
            metrics = stored.get("metrics") if isinstance(stored, dict) else None
        self.summary["champion"] = {
            "model": EDITOR_MODEL, "version": champion, "metrics": metrics,
            "uri": f"models:/{EDITOR_MODEL}@champion" if champion else None,
        }  # fmt: skip
        uri = self.tracking.tracking_uri
        self.summary["mlflow_ui"] = (
            f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {redact(uri)}"
        )


def _report_brief(record: dict) -> dict:
    report = record["report"]
    return {"status": report.get("status"), "report_uri": record["report_uri"],
            "mlflow_run_id": record["mlflow_run_id"], "metrics": report.get("metrics", {})}  # fmt: skip


# ---------------------------------------------------------------------------------------- summary

HEADLINE_METRICS = ("edit/miou", "edit/pixel_accuracy", "edit/outside_change", "recon/psnr", "recon/ssim",
                    "style/miou", "parser/miou", "maskvae/miou")  # fmt: skip


def format_summary(summary: dict) -> str:
    """The human-readable end of a chain run (the JSON is at <chain_uri>/summary.json)."""
    done = summary.get("already_finished")
    lines = [f"chain {summary['run_key']}: {summary['status'].upper()}"
             + (" (already finished earlier: nothing done now)" if done else "")]  # fmt: skip
    for stage, record in summary.get("stages", {}).items():
        where = record.get("run_name") or record.get("checkpoint_uri")
        lines.append(f"  {stage:8s} {record['source']:17s} {where}  mlflow run {record.get('mlflow_run_id')}")
    for name, version in summary.get("registered", {}).items():
        gate = summary.get("gate", {}).get(name, {})
        lines.append(
            f"  {name:16s} v{version['version']}{' (new)' if version.get('new') and not done else ''}: "
            f"{gate.get('outcome', '?')} -- {gate.get('reason', '')}"
        )
    champion = summary.get("champion") or {}
    if champion.get("version") is not None:
        metrics = champion.get("metrics") or {}
        shown = {
            name: round(metrics[name], 4) for name in HEADLINE_METRICS if isinstance(metrics.get(name), float)
        }
        lines.append(f"champion: {champion['model']} v{champion['version']} ({champion['uri']})")
        lines.append(f"  metrics: {json.dumps(shown)}")
    else:
        lines.append(f"champion: {EDITOR_MODEL} has none")
    if summary.get("image_grids"):
        lines.append("image grids:")
        lines += [f"  {label:16s} {uri}" for label, uri in summary["image_grids"].items()]
    lines.append(f"summary: {summary['chain_uri']}/{SUMMARY_FILE}")
    if summary.get("mlflow_ui"):
        lines.append(f"open the MLflow UI:\n  {summary['mlflow_ui']}")
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    return "\n".join(lines)
