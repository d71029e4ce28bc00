"""MLflow tracking for training runs; rank 0 only (other ranks hold Tracker.disabled()).

One MLflow run per (run_key, stage): a restarted or resubmitted job finds the run by its tags and
continues it, so metrics of one training run stay in one place. The client is an explicit
MlflowClient, never the fluent global "active run", so nothing leaks between runs in one process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlunparse

from maskgan.storage import StorageConfig

if TYPE_CHECKING:  # mlflow, torch and PIL load on use: importing maskgan.tracking stays cheap
    import mlflow
    import torch
    from PIL import Image

RUN_KEY_TAG = "maskgan.run_key"
STAGE_TAG = "maskgan.stage"
GIT_COMMIT_TAG = "maskgan.git_commit"  # set by Tracker.start
# Set by the training glue; train_ebst reads CHECKPOINT_TAG of upstream runs found with find_run.
CHECKPOINT_TAG = "maskgan.checkpoint_uri"  # URI of the run's latest checkpoint directory
MANIFEST_TAG = "maskgan.manifest_sha256"  # checksum of the dataset manifest trained on
_RUN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]*$")
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Fail within seconds when the server is down, instead of MLflow's default 7 retries with backoff 2
# (minutes). Only set where the user has not set them: an explicit environment wins.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are tracked. tracking_uri None = an SQLite file ./mlflow.db, made absolute on the driver."""

    tracking_uri: str | None = None
    experiment: str = "maskgan"
    artifact_location: str | None = None  # e.g. s3://bucket/mlflow; used when the experiment is created
    enabled: bool = True

    def resolved(self) -> TrackingConfig:
        """This config with an absolute tracking URI: resolve on the driver, then ship to the workers."""
        return dataclasses.replace(self, tracking_uri=resolve_tracking_uri(self.tracking_uri))

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("tracking.experiment must be a non-empty name")
        if self.tracking_uri is not None:
            _check_tracking_uri(self.tracking_uri)
        if self.artifact_location is not None and "://" not in self.artifact_location:
            raise ValueError(
                f"tracking.artifact_location must be a URI such as s3://bucket/mlflow, "
                f"got {self.artifact_location!r}"
            )


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused the run; the message names the URI (never a secret)."""


def redact(uri: str) -> str:
    """A URI without user:password@ (MLflow server URIs may carry basic-auth credentials)."""
    parsed = urlparse(uri)
    if parsed.password is None and parsed.username is None:
        return uri
    return urlunparse(parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")))


def _check_tracking_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme == "file" or not scheme or len(scheme) == 1:  # len 1: a Windows drive letter
        raise ValueError(
            f"tracking URI {redact(uri)!r} is a file store, which MLflow 3 no longer supports; use "
            "sqlite:////absolute/path/mlflow.db or http://mlflow-server:5000"
        )


def resolve_tracking_uri(uri: str | None) -> str:
    """None -> sqlite:///<absolute ./mlflow.db>; a relative sqlite path becomes absolute (for workers)."""
    if uri is None:
        return "sqlite:///" + os.path.abspath("mlflow.db")
    _check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    return uri


def check_reachable(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, GET /health once; TrackingError within timeout_s when it is down."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    url = redact(uri).rstrip("/") + "/health"  # /health needs no credentials, even behind basic auth
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http(s) only)
            response.read()
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 or 404 behind a proxy): reachable; MLflow reports the rest
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}); start it "
            "(`mlflow server ...`) or pass another --mlflow-uri"
        ) from None


def _configure_process(config: TrackingConfig, storage: StorageConfig | None) -> None:
    """Environment MLflow's HTTP and boto3 clients read: fail-fast retries, the S3 endpoint."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = resolve_tracking_uri(config.tracking_uri)
    if uri.startswith("sqlite:///"):  # SQLite creates the file, not its folder
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    if config.artifact_location and config.artifact_location.startswith("s3://") and storage is not None:
        endpoint = storage.resolved_endpoint()
        if endpoint:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint  # a URL, never a secret
        if storage.access_key_id and storage.access_key_id != os.environ.get("AWS_ACCESS_KEY_ID"):
            # MLflow's boto3 client only reads credentials from the environment / AWS config files,
            # and copying secrets into the environment would hand them to every child process.
            raise ValueError(
                "MLflow uploads artefacts to s3:// with the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of "
                "the environment, but storage.access_key_id differs from them; set the credentials in "
                "the environment instead of the storage config"
            )


# ------------------------------------------------------------------------------------------ params


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; values as MLflow stores them (str, cut to its length limit)."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten_params(value, f"{name}.")
        else:
            text = str(value)
            out[name] = (
                text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
            )
    return out


def _matches(key: str, patterns: Collection[str]) -> bool:
    return any(key == pattern or key.startswith(pattern + ".") for pattern in patterns)


# --------------------------------------------------------------------------------------------- runs


def _client(tracking_uri: str) -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _beside_database(client: mlflow.MlflowClient) -> str | None:
    """For an SQLite store with no artifact_location: file://<db folder>/mlartifacts. MLflow's own default
    (./mlruns of whichever process creates the experiment) would land in a Ray worker's working folder."""
    uri = client.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    folder = os.path.dirname(os.path.abspath(uri.removeprefix("sqlite:///")))
    return "file://" + os.path.join(folder, "mlartifacts")


def _experiment_id(client: mlflow.MlflowClient, config: TrackingConfig, create: bool) -> str | None:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        if not create:
            return None
        try:
            return client.create_experiment(
                config.experiment, artifact_location=config.artifact_location or _beside_database(client)
            )
        except MlflowException:
            experiment = client.get_experiment_by_name(config.experiment)  # another driver made it first
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {config.experiment!r} is deleted; restore it (`mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}`) or choose another tracking.experiment"
        )
    wanted = (config.artifact_location or "").rstrip("/")
    if wanted and experiment.artifact_location.rstrip("/") != wanted:
        raise ValueError(
            f"MLflow experiment {config.experiment!r} keeps artefacts at {experiment.artifact_location}, "
            f"not at tracking.artifact_location {config.artifact_location}; use another experiment name"
        )
    return experiment.experiment_id


def _check_run_key(run_key: str, stage: str) -> None:
    for name, value in (("run_key", run_key), ("stage", stage)):
        if not _RUN_KEY.match(value or ""):
            raise ValueError(f"{name} {value!r} must match {_RUN_KEY.pattern} (letters, digits, _.:=+-)")


def _search(
    client: mlflow.MlflowClient, experiment_id: str, run_key: str, stage: str
) -> mlflow.entities.Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = '{stage}'",
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0] if runs else None  # two runs with one key only after a race: the oldest is the one


def find_run(config: TrackingConfig, *, run_key: str, stage: str) -> mlflow.entities.Run | None:
    """The run tagged with run_key and stage in the config's experiment, or None."""
    _check_run_key(run_key, stage)
    uri = resolve_tracking_uri(config.tracking_uri)
    check_reachable(uri)
    client = _client(uri)
    experiment_id = _experiment_id(client, config, create=False)
    return None if experiment_id is None else _search(client, experiment_id, run_key, stage)


class Tracker:
    """One MLflow run. Tracker.start(...) on rank 0; Tracker.disabled() elsewhere (every call a no-op)."""

    def __init__(self, client: mlflow.MlflowClient | None, run_id: str | None, resumed: bool = False):
        self._client = client
        self.run_id = run_id
        self.resumed = resumed
        self.tracking_uri: str | None = None

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None, None)

    @classmethod
    def start(
        cls,
        config: TrackingConfig,
        *,
        run_key: str,
        stage: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        storage: StorageConfig | None = None,
        allow_changed: Collection[str] = (),
    ) -> Tracker:
        """Resume the run tagged (run_key, stage), else create it; log params once, set tags.

        On resume every param must equal the logged value (MLflow cannot change a param): a difference
        raises ValueError naming the params, except keys under `allow_changed` (dotted prefixes, e.g.
        "loop.max_steps"), which keep their first value and are listed in the tag maskgan.changed_params.
        """
        if not config.enabled:
            return cls.disabled()
        _check_run_key(run_key, stage)
        for tag, value in ((RUN_KEY_TAG, run_key), (STAGE_TAG, stage)):
            if tag in tags and str(tags[tag]) != value:
                raise ValueError(f"tags[{tag!r}] = {tags[tag]!r} contradicts {value!r}: runs are found by it")
        uri = resolve_tracking_uri(config.tracking_uri)
        _configure_process(config, storage)
        check_reachable(uri)
        client = _client(uri)
        try:
            experiment_id = _experiment_id(client, config, create=True)
            existing = _search(client, experiment_id, run_key, stage)
        except Exception as error:
            if isinstance(error, ValueError):
                raise
            raise TrackingError(f"MLflow at {redact(uri)} failed: {_first_line(error)}") from error
        flat = flatten_params(params)
        if existing is None:
            run = client.create_run(
                experiment_id,
                run_name=f"{stage}-{run_key}",
                tags={RUN_KEY_TAG: run_key, STAGE_TAG: stage},
            )
            tracker, logged = cls(client, run.info.run_id), {}
        else:
            tracker, logged = cls(client, existing.info.run_id, resumed=True), dict(existing.data.params)
        tracker.tracking_uri = uri
        tracker._log_params(flat, logged, allow_changed)  # raises on changed params before anything else
        if tracker.resumed:
            client.update_run(tracker.run_id, status="RUNNING")
        commit = git_commit()
        tracker.set_tags({**({GIT_COMMIT_TAG: commit} if commit else {}), **tags})
        return tracker

    def _log_params(
        self, flat: dict[str, str], logged: dict[str, str], allow_changed: Collection[str]
    ) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        changed = sorted(k for k in flat if k in logged and logged[k] != flat[k])
        refused = [k for k in changed if not _matches(k, allow_changed)]
        if refused:
            details = "; ".join(f"{k}: logged {logged[k]!r}, now {flat[k]!r}" for k in refused[:10])
            raise ValueError(
                f"run {self.run_id} was started with other params, and MLflow params cannot change: "
                f"{details}{' ...' if len(refused) > 10 else ''}; use a new run key, or allow the change "
                "(allow_changed) if it is meant"
            )
        if changed:
            self.set_tags({"maskgan.changed_params": ", ".join(f"{k}={flat[k]}" for k in changed)})
        new = [Param(k, v) for k, v in sorted(flat.items()) if k not in logged]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=new[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log numbers (floats, ints, 0-d tensors) at a step (MLflow keeps NaN, stores inf as +-max float)."""
        if not self.enabled or not metrics:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(key, float(value), now, int(step)) for key, value in sorted(metrics.items())]
        for start in range(0, len(values), 1000):  # MLflow's per-batch metric limit
            self._client.log_batch(self.run_id, metrics=values[start : start + 1000])

    def log_image(self, image: Image.Image, name: str, step: int | None = None) -> str:
        """Log a PNG under images/ (name_step000123.png); returns its artefact path ('' when disabled)."""
        name = name.removesuffix(".png")
        if not _ARTIFACT_NAME.match(name):
            raise ValueError(
                f"image name {name!r} must be a plain stem such as 'grid' ([A-Za-z0-9_.-]); the file "
                "becomes images/<name>_step<step>.png"
            )
        file_name = f"{name}.png" if step is None else f"{name}_step{int(step):07d}.png"
        if not self.enabled:
            return ""
        with tempfile.TemporaryDirectory(prefix="maskgan-image-") as folder:
            path = os.path.join(folder, file_name)
            image.save(path, format="PNG")
            self._client.log_artifact(self.run_id, path, artifact_path="images")
        return f"images/{file_name}"

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under artifact_path (None = the run's root)."""
        if not self.enabled:
            return
        if not os.path.exists(local_path):
            raise FileNotFoundError(f"artefact {local_path} does not exist")
        if os.path.isdir(local_path):
            self._client.log_artifacts(self.run_id, local_path, artifact_path=artifact_path)
        else:
            self._client.log_artifact(self.run_id, local_path, artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values become strings."""
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())])

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with FINISHED, FAILED or KILLED (a later start with the same key resumes it)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"finish status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self.enabled:
            self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def _first_line(error: Exception) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def git_commit() -> str | None:
    """The commit of the maskgan checkout ('<sha>-dirty' with local changes), or None outside git."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        top, sha = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=folder, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()  # fmt: skip
        if os.path.realpath(top) != os.path.realpath(folder):
            return None  # an installed copy inside some other repository (e.g. a venv in a checkout)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


# -------------------------------------------------------------------------------------- image grid


def image_grid(
    columns: Mapping[str, torch.Tensor],
    max_rows: int = 4,
    *,
    unit_columns: Collection[str] = ("alpha",),
    min_cell: int = 96,
) -> Image.Image:
    """Columns of images side by side, one row per sample, names in a header row.

    Each column is one of: (B, 3, H, W) float image in [-1, 1]; (B, H, W) integer class map or
    (B, 19, H, W) one-hot / logits, coloured with maskgan.labels.COLORS; (B, 1, H, W) float map in
    [0, 1] as grey. Columns named in unit_columns (default: "alpha", the blender's (B, 1 | 3, H, W)
    output) hold [0, 1] values whatever their channels. Small cells are enlarged (nearest) to at
    least min_cell pixels so that a 32-px run stays readable; columns of other sizes are scaled to fit.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if not columns:
        raise ValueError("image_grid needs at least one column")
    if max_rows < 1:
        raise ValueError(f"image_grid max_rows must be >= 1, got {max_rows}")
    cells = {
        name: _column_to_uint8(name, tensor, name in unit_columns)[:max_rows]
        for name, tensor in columns.items()
    }
    rows = min(len(c) for c in cells.values())
    height = max(c.shape[1] for c in cells.values())
    width = max(c.shape[2] for c in cells.values())
    scale = max(1, math.ceil(min_cell / max(height, width)))
    cell_h, cell_w = height * scale, width * scale
    gap, header = 4, 22
    grid = Image.new(
        "RGB", (len(cells) * (cell_w + gap) + gap, header + rows * (cell_h + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for index, (name, array) in enumerate(cells.items()):
        left = gap + index * (cell_w + gap)
        draw.text((left + 2, 3), _fit(draw, font, name, cell_w - 4), fill="black", font=font)
        for row in range(rows):
            cell = Image.fromarray(np.ascontiguousarray(array[row])).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(cell, (left, header + row * (cell_h + gap)))
    return grid


def _fit(draw, font, text: str, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else text[:-1]
    return text


def _column_to_uint8(name: str, tensor: torch.Tensor, unit: bool):
    """-> (B, H, W, 3) uint8 numpy."""
    import numpy as np
    import torch

    from maskgan.labels import COLORS, NUM_CLASSES

    tensor = torch.as_tensor(tensor).detach().cpu()
    if not tensor.is_floating_point() and tensor.dim() == 3:  # (B, H, W) class ids
        ids = tensor.long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= NUM_CLASSES):
            raise ValueError(f"image_grid column {name!r} holds class ids outside 0..{NUM_CLASSES - 1}")
        return COLORS[ids.numpy()]
    if tensor.dim() != 4:
        raise ValueError(
            f"image_grid column {name!r} has shape {tuple(tensor.shape)}; expected (B, H, W) class ids "
            f"or (B, 1 | 3 | {NUM_CLASSES}, H, W)"
        )
    channels = tensor.shape[1]
    tensor = torch.nan_to_num(tensor.float())
    if channels == NUM_CLASSES:  # (B, 19, H, W) one-hot or logits
        return COLORS[tensor.argmax(dim=1).numpy()]
    if channels not in (1, 3):
        raise ValueError(
            f"image_grid column {name!r} has {channels} channels; expected 1, 3 or {NUM_CLASSES}"
        )
    if unit or channels == 1:  # maps in [0, 1]
        values = tensor.clamp(0, 1)
    else:  # images in [-1, 1]
        values = (tensor.clamp(-1, 1) + 1) / 2
    values = values.expand(-1, 3, -1, -1)
    return (values.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy().astype(np.uint8)
