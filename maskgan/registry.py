"""MLflow model registry: register versions, the champion / challenger aliases, the promotion gate.

Aliases, not stages (deprecated in MLflow 3): a new version gets `challenger`; the gate
(maskgan.gate.decide) moves `champion` to a version only when it wins, or when no champion exists.
Each gated version carries its evaluation report (tag maskgan.report, JSON) so that the next gate
reads the champion's, and the decision, both metric sets, the rule and the reason (maskgan.gate.*).
Serve `models:/<name>@champion`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maskgan.gate import FAILED, PROMOTED, UNCHANGED, GateConfig, ReportError, decide, parse_report
from maskgan.storage import StorageConfig
from maskgan.tracking import (
    TrackingConfig,
    TrackingError,
    _configure_process,
    check_reachable,
    redact,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    import mlflow

MODEL_NAMES = ("maskgan-maskvae", "maskgan-dmn", "maskgan-parser", "maskgan-editor")
# The default rule's primary metric per model (higher is better); evaluation writes these names.
PRIMARY_METRICS = {
    "maskgan-maskvae": "maskvae/miou",  # mask reconstruction mIoU
    "maskgan-dmn": "edit/miou",  # parser mIoU of generated images against their (edited) masks
    "maskgan-parser": "parser/miou",  # mIoU on the split
    "maskgan-editor": "edit/miou",
}
CHAMPION, CHALLENGER = "champion", "challenger"
REPORT_TAG = "maskgan.report"  # the version's evaluation report, compact JSON
REPORT_SOURCE_TAG = "maskgan.report_source"  # where that report was read from
DECISION_TAG = "maskgan.gate.decision"  # promoted | kept | failed
REASON_TAG = "maskgan.gate.reason"
METRICS_TAG = "maskgan.gate.metrics"  # JSON {name: value | null}: the challenger's metrics
CHAMPION_METRICS_TAG = "maskgan.gate.champion_metrics"  # JSON, or "none"
CHAMPION_VERSION_TAG = "maskgan.gate.champion_version"  # the champion it was compared with, or "none"
RULE_TAG = "maskgan.gate.rule"  # JSON GateConfig
DECIDED_AT_TAG = "maskgan.gate.decided_at"  # UTC, ISO 8601
MAX_REPORT_CHARS = 50_000
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARTIFACT_PATH = re.compile(
    r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
)  # MLflow allows 100k per registry tag; a report is a few kB


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The gate's answer for one version; outcome promoted | kept | failed | unchanged (already champion)."""

    model: str
    version: int
    outcome: str
    reason: str
    champion_before: int | None
    champion_after: int | None
    metrics: Mapping[str, float | None] | None = None  # None: no valid report
    champion_metrics: Mapping[str, float | None] | None = None
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        """0 promoted / kept / unchanged, 1 failed (what pipelines/promote.py exits with)."""
        return 1 if self.outcome == FAILED else 0

    def summary(self) -> str:
        before = "none" if self.champion_before is None else f"v{self.champion_before}"
        after = "none" if self.champion_after is None else f"v{self.champion_after}"
        head = f"{self.model} v{self.version}: {self.outcome.upper()}{' (dry run)' if self.dry_run else ''}"
        return f"{head} -- {self.reason}\n  champion: {before} -> {after}"


# -------------------------------------------------------------------------------------------- client


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"model name {name!r} is not one of {', '.join(MODEL_NAMES)}")


def _client(config: TrackingConfig) -> mlflow.MlflowClient:
    import mlflow

    _configure_process(config, None)  # fail-fast HTTP retries; SQLite folder
    uri = resolve_tracking_uri(config.tracking_uri)
    check_reachable(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@contextlib.contextmanager
def _mlflow_errors(config: TrackingConfig, action: str):
    """MLflow's 'does not exist' -> ValueError; any other MLflow failure -> TrackingError naming the URI."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        if _not_found(error):
            raise ValueError(f"cannot {action}: {error.message}") from None
        uri = redact(resolve_tracking_uri(config.tracking_uri))
        raise TrackingError(f"MLflow at {uri} failed to {action}: {error.message}") from error


def _check_run(run_id: str, artifact_path: str) -> None:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be an MLflow run id ([A-Za-z0-9_-]), got {run_id!r}")
    parts = artifact_path.split("/") if isinstance(artifact_path, str) else []
    if not _ARTIFACT_PATH.match(artifact_path or "") or {".", ".."} & set(parts):
        raise ValueError(
            f"artifact_path must be a relative path inside the run such as 'model', got {artifact_path!r}"
        )


def default_gate(name: str) -> GateConfig:
    """The default rule: the model's PRIMARY_METRICS entry, higher is better, margin 0, no bounds."""
    _check_name(name)
    return GateConfig(primary_metric=PRIMARY_METRICS[name], direction="max", margin=0.0)


def champion_version(config: TrackingConfig, name: str) -> int | None:
    """The version the `champion` alias points at, or None."""
    _check_name(name)
    client = _client(config)
    with _mlflow_errors(config, f"read the {name} aliases"):
        return _alias_version(client, name, CHAMPION)


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases  # {alias: version}
    except MlflowException as error:
        if _not_found(error):
            return None
        raise
    return int(aliases[alias]) if alias in aliases else None


# ------------------------------------------------------------------------------------------ register


@contextlib.contextmanager
def _process_tracking_uri(uri: str):
    """Point MLflow's process-wide tracking URI at `uri` for the block, then restore it exactly.

    A SQLite registry resolves a `models:/<model id>` source (an MLflow 3 logged model) through the
    process-wide tracking URI, not the client's (MlflowClient() inside create_model_version): without
    this it looks in whatever the process points at (./mlflow.db by default) and fails.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _source(client: mlflow.MlflowClient, run_id: str, artifact_path: str) -> tuple[str, str | None]:
    """(source URI, logged model id or None) of a run's logged model named artifact_path, else its folder."""
    run = client.get_run(run_id)
    # MLflow 3 keeps a model logged with log_model(name=...) outside the run's artefacts, as a LoggedModel.
    models = [
        model
        for model in client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{artifact_path}'"
        )
        if model.source_run_id == run_id
    ]
    if models:
        newest = max(models, key=lambda model: model.creation_timestamp)
        return f"models:/{newest.model_id}", newest.model_id
    parent, _, leaf = artifact_path.rpartition("/")
    if leaf not in {os.path.basename(item.path) for item in client.list_artifacts(run_id, parent or None)}:
        raise ValueError(
            f"run {run_id} has no logged model named {artifact_path!r} and no artefact at that path; "
            "log the model (or folder) first, or pass the artifact path it was logged under"
        )
    # (RunsArtifactRepository.get_underlying_uri would ask the global tracking URI, not this client's)
    return f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}", None


def find_version(config: TrackingConfig, name: str, run_id: str, artifact_path: str) -> int | None:
    """The newest version of `name` registered from this run's artifact_path, or None."""
    _check_name(name)
    _check_run(run_id, artifact_path)
    client = _client(config)
    with _mlflow_errors(config, f"look up {name} versions of run {run_id}"):
        source, _ = _source(client, run_id, artifact_path)
        return _find_version(client, name, run_id, source)


def _find_version(client: mlflow.MlflowClient, name: str, run_id: str, source: str) -> int | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    matching = [int(v.version) for v in versions if v.source == source]
    return max(matching) if matching else None


def register(
    config: TrackingConfig,
    name: str,
    run_id: str,
    artifact_path: str,
    *,
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Register run_id's logged model (or artefact folder) at artifact_path as a version of `name`.

    A new version gets the alias `challenger`. Idempotent: when this run's artifact_path is already a
    version of `name`, that version is returned and no alias moves.
    """
    from mlflow.exceptions import MlflowException

    _check_name(name)
    _check_run(run_id, artifact_path)
    client = _client(config)
    action = f"register {name} from run {run_id}"
    with _mlflow_errors(config, action), _process_tracking_uri(client.tracking_uri):
        source, model_id = _source(client, run_id, artifact_path)
        existing = _find_version(client, name, run_id, source)
        if existing is not None:
            return existing
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = client.create_model_version(
            name, source, run_id=run_id, model_id=model_id, tags={k: str(v) for k, v in (tags or {}).items()}
        )
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    return int(version.version)


# ------------------------------------------------------------------------------------------- reports


def load_report(uri: str, *, tracking_uri: str | None = None, storage: StorageConfig | None = None) -> dict:
    """Read a JSON report from a local path, s3://..., or an MLflow artefact URI (runs:/<id>/path)."""
    if uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        text = _load_mlflow_text(uri, tracking_uri)
    else:
        from maskgan.storage import read_bytes, resolve

        text = read_bytes(resolve(uri, storage)).decode("utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"report {uri} is not JSON: {error}") from None


def _load_mlflow_text(uri: str, tracking_uri: str | None) -> str:
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="maskgan-report-") as folder:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri
        )
        with open(path, encoding="utf-8") as handle:
            return handle.read()


def stored_report(config: TrackingConfig, name: str, version: int) -> Any:
    """The evaluation report stored with a version (tag maskgan.report), or None."""
    _check_name(name)
    client = _client(config)
    with _mlflow_errors(config, f"read {name} version {version}"):
        return _stored_report(client.get_model_version(name, str(version)).tags)


def _stored_report(tags: Mapping[str, str]) -> Any:
    """The decoded tag, None without one; a tag that is not JSON comes back as its text (invalid)."""
    if REPORT_TAG not in tags:
        return None
    try:
        return json.loads(tags[REPORT_TAG])
    except json.JSONDecodeError:
        return tags[REPORT_TAG]


# ---------------------------------------------------------------------------------------------- gate


def promote(
    config: TrackingConfig,
    name: str,
    version: int,
    gate: GateConfig | None = None,
    *,
    report: Mapping[str, Any] | str | None = None,
    storage: StorageConfig | None = None,
    dry_run: bool = False,
) -> Decision:
    """Gate version `version` of `name` and move `champion` to it when it wins.

    gate: None = default_gate(name). report: the evaluation report (a dict, or a path / s3:// /
    runs:/ URI to its JSON); None = the report stored with the version by an earlier gate. The report
    and the decision are written as version tags (not with dry_run); a version that already is the
    champion is left untouched.
    """
    _check_name(name)
    gate = gate or default_gate(name)
    client = _client(config)
    with _mlflow_errors(config, f"gate {name} version {version}"):
        return _promote(client, config, name, version, gate, report, storage, dry_run)


def _promote(
    client: mlflow.MlflowClient,
    config: TrackingConfig,
    name: str,
    version: int,
    gate: GateConfig,
    report: Mapping[str, Any] | str | None,
    storage: StorageConfig | None,
    dry_run: bool,
) -> Decision:
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(name, str(version))
    except MlflowException as error:
        if _not_found(error):
            raise ValueError(f"{name} has no version {version}") from None
        raise
    version = int(model_version.version)
    champion = _alias_version(client, name, CHAMPION)
    if champion == version:
        return Decision(
            model=name, version=version, outcome=UNCHANGED, dry_run=dry_run,
            reason="already the champion; nothing to do",
            champion_before=champion, champion_after=champion,
        )  # fmt: skip

    loaded, load_error = _read_report(report, model_version.tags, config, storage)
    text = None  # the report to store with the version: only a new one, and only an object
    if not load_error and report is not None and isinstance(loaded, Mapping):
        text = json.dumps(loaded, sort_keys=True, separators=(",", ":"), default=str)
        if len(text) > MAX_REPORT_CHARS:
            load_error = (
                f"the evaluation report is {len(text)} characters; keep it under {MAX_REPORT_CHARS} "
                "(metrics and a few fields; images belong in run artefacts)"
            )
            text = None
    champion_report = None
    if champion is not None:
        champion_report = _stored_report(client.get_model_version(name, str(champion)).tags)
    if load_error:
        outcome, reason = FAILED, load_error
    else:
        verdict = decide(gate, loaded, champion_report, has_champion=champion is not None)
        outcome, reason = verdict.outcome, verdict.reason
    decision = Decision(
        model=name, version=version, outcome=outcome, reason=reason, dry_run=dry_run,
        champion_before=champion, champion_after=version if outcome == PROMOTED else champion,
        metrics=_metrics_of(loaded), champion_metrics=_metrics_of(champion_report),
    )  # fmt: skip
    if not dry_run:
        _write(client, decision, gate, text, report if isinstance(report, str) else None)
    return decision


def _read_report(
    report: Mapping[str, Any] | str | None,
    tags: Mapping[str, str],
    config: TrackingConfig,
    storage: StorageConfig | None,
) -> tuple[Any, str]:
    """(report, '') or (None | what was read, why it cannot be used)."""
    if report is None:
        stored = _stored_report(tags)
        if stored is None:
            return None, "no evaluation report: pass one (--report), none is stored with this version"
        return stored, ""
    if isinstance(report, str):
        uri = resolve_tracking_uri(config.tracking_uri)
        try:
            return load_report(report, tracking_uri=uri, storage=storage), ""
        except (OSError, ReportError, ValueError, UnicodeDecodeError) as error:
            return None, f"the evaluation report {report} cannot be read: {error}"
        except Exception as error:  # MLflow / storage errors of every kind: never promote on them
            return None, f"the evaluation report {report} cannot be read: {type(error).__name__}: {error}"
    return dict(report), ""


def _metrics_of(report: Any) -> dict[str, float | None] | None:
    """A report's metrics, or None when there is no valid report."""
    try:
        return dict(parse_report(report).metrics) if report is not None else None
    except ReportError:
        return None


def _write(
    client: mlflow.MlflowClient, decision: Decision, gate: GateConfig, report: str | None, source: str | None
) -> None:
    """Tags first, the alias last: a crash in between leaves the alias where it was."""
    name, version = decision.model, str(decision.version)
    tags = {
        DECISION_TAG: decision.outcome,
        REASON_TAG: decision.reason,
        METRICS_TAG: json.dumps(decision.metrics, sort_keys=True) if decision.metrics is not None else "none",
        CHAMPION_METRICS_TAG: "none"
        if decision.champion_metrics is None
        else json.dumps(decision.champion_metrics, sort_keys=True),
        CHAMPION_VERSION_TAG: "none" if decision.champion_before is None else str(decision.champion_before),
        RULE_TAG: json.dumps(gate.to_dict(), sort_keys=True),
        DECIDED_AT_TAG: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if report is not None:  # what was gated, so that the next gate can read this version's metrics
        tags[REPORT_TAG] = report
        if source is not None:
            tags[REPORT_SOURCE_TAG] = source
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.outcome == PROMOTED:
        client.set_registered_model_alias(name, CHAMPION, version)


# ------------------------------------------------------------------------------ stage models (issue 8)

# Training stage -> (registered model name, artefact folder in its MLflow run, networks inference needs).
# The artefact folder is a checkpoint folder trimmed to those networks: meta.json + weights/<net>.pt,
# so `maskgan.training.checkpoint` and `maskgan.evaluation.load_network` read a downloaded copy as is.
STAGE_MODELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "maskvae": ("maskgan-maskvae", "maskvae", ("mask_vae",)),
    "dmn": ("maskgan-dmn", "dmn", ("generator", "generator_ema")),
    "parser": ("maskgan-parser", "parser", ("parser",)),
}
RUN_KEY_TAG = "maskgan.run_key"  # the chain / run key a version was registered from
CHECKPOINT_TAG = "maskgan.checkpoint_uri"  # the checkpoint a version's files were copied from
STEP_TAG = "maskgan.step"


def _stage_model(stage: str) -> tuple[str, str, tuple[str, ...]]:
    if stage not in STAGE_MODELS:
        raise ValueError(f"stage {stage!r} has no registered model; one of {', '.join(STAGE_MODELS)}")
    return STAGE_MODELS[stage]


def log_checkpoint_model(
    config: TrackingConfig,
    run_id: str,
    checkpoint_uri: str,
    *,
    stage: str,
    storage: StorageConfig | None = None,
) -> str:
    """Copy a checkpoint's inference files into run_id's artefact folder STAGE_MODELS[stage][1].

    Weights first, meta.json last, so a folder holding meta.json is complete; such a folder is kept
    as it is (idempotent: a rerun uploads nothing). Returns the artefact path.
    """
    import tempfile

    from maskgan.training import checkpoint

    _, artifact_path, wanted = _stage_model(stage)
    _check_run(run_id, artifact_path)
    client = _client(config)
    with _mlflow_errors(config, f"log the {stage} model into run {run_id}"):
        logged = {os.path.basename(item.path) for item in client.list_artifacts(run_id, artifact_path)}
        if checkpoint.META_FILE in logged:
            return artifact_path
        uri = checkpoint.resolve_checkpoint(checkpoint_uri, storage, stage=stage)
        with tempfile.TemporaryDirectory(prefix=f"maskgan-{stage}-") as folder:
            checkpoint.export_inference(uri, folder, frozenset(wanted), storage)
            weights = os.path.join(folder, checkpoint.WEIGHTS_DIR)
            client.log_artifacts(run_id, weights, f"{artifact_path}/{checkpoint.WEIGHTS_DIR}")
            client.log_artifact(run_id, os.path.join(folder, checkpoint.META_FILE), artifact_path)
    return artifact_path


def find_version_by_tag(config: TrackingConfig, name: str, key: str, value: str) -> int | None:
    """The newest version of `name` whose tag `key` equals `value`, or None."""
    _check_name(name)
    if "'" in value or "`" in key:
        raise ValueError(f"tag {key!r} = {value!r} cannot be searched for (quotes)")
    client = _client(config)
    with _mlflow_errors(config, f"search {name} versions"):
        versions = client.search_model_versions(f"name = '{name}' and tags.`{key}` = '{value}'")
    return max((int(v.version) for v in versions), default=None)


def version_tags(config: TrackingConfig, name: str, version: int) -> dict[str, str]:
    """A registered version's tags."""
    _check_name(name)
    client = _client(config)
    with _mlflow_errors(config, f"read {name} version {version}"):
        return dict(client.get_model_version(name, str(version)).tags)


def register_checkpoint(
    config: TrackingConfig,
    stage: str,
    run_id: str,
    checkpoint_uri: str,
    *,
    run_key: str | None = None,
    storage: StorageConfig | None = None,
    tags: Mapping[str, Any] | None = None,
) -> tuple[int, bool]:
    """Log a maskvae / dmn / parser checkpoint into its training run and register it; (version, new).

    Idempotent twice over: a version tagged with this run_key (or registered from this run's folder)
    is returned instead of a new one. The new version gets the alias `challenger` and the tags
    maskgan.checkpoint_uri (what EBST or the editor load), maskgan.run_key and maskgan.step.
    """
    from maskgan.training import checkpoint

    name, _, _ = _stage_model(stage)
    if run_key is not None:
        found = find_version_by_tag(config, name, RUN_KEY_TAG, run_key)
        if found is not None:
            return found, False
    artifact_path = log_checkpoint_model(config, run_id, checkpoint_uri, stage=stage, storage=storage)
    uri = checkpoint.resolve_checkpoint(checkpoint_uri, storage, stage=stage)
    meta = checkpoint.read_meta(uri, storage)
    all_tags = {CHECKPOINT_TAG: uri, STEP_TAG: meta.get("step"), "maskgan.stage": stage, **(tags or {})}
    if run_key is not None:
        all_tags[RUN_KEY_TAG] = run_key
    before = find_version(config, name, run_id, artifact_path)
    version = register(config, name, run_id, artifact_path, tags=all_tags)
    return version, before is None


def champion_checkpoint(config: TrackingConfig, name: str) -> tuple[int, str] | None:
    """(version, checkpoint URI) of `name`'s champion, or None when it has no champion.

    The URI is the version's maskgan.checkpoint_uri tag (ValueError when the version lacks it).
    """
    version = champion_version(config, name)
    if version is None:
        return None
    uri = version_tags(config, name, version).get(CHECKPOINT_TAG)
    if not uri:
        raise ValueError(f"{name} v{version} (the champion) has no {CHECKPOINT_TAG} tag to load it from")
    return version, uri
