"""ServeConfig: what the editor service serves (model, dataset) and how (limits, batching, replicas)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maskgan import config as config_lib

DEFAULT_MODEL_URI = "models:/maskgan-editor@champion"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """The service's whole configuration; the model URI comes from here only, never from a request."""

    # models:/name@alias or /version, runs:/id/editor, a DMN / EBST checkpoint (local or s3://),
    # or a released latest_net_G.pth.
    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None  # MLflow tracking / registry URI for models:/ and runs:/ URIs
    parser_uri: str | None = None  # a face parser checkpoint, when the model does not bundle one
    dataset_uri: str | None = None  # a preprocessed dataset: its val split feeds /api/samples
    max_samples: int = 64  # val samples offered (read once, kept in the ingress's memory)
    # Limits per uploaded file: bytes before reading, pixels from the header before decoding.
    max_upload_bytes: int = 20_000_000
    max_pixels: int = 25_000_000
    color_tolerance: int = 0  # colour masks: max channel difference to a class colour (JPEG masks: ~30)
    # Batching: requests waiting up to batch_wait_timeout_s are run as one forward of <= max_batch_size.
    batching: bool = True
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    # Model replicas: a fixed count, or autoscaling between num_replicas and max_replicas.
    num_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    model_num_cpus: float = 1.0
    model_num_gpus: float = 0.0
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.25
    # Rollouts: replacements start before old replicas stop (100: one new per old), so a redeploy has
    # no downtime as long as the cluster has room for the extra replicas.
    max_surge_percent: int = 100
    # Any text; change it (e.g. to the new champion's version) to roll the replicas when nothing else
    # in the config changed: a redeploy of an identical config restarts nothing, and an alias URI
    # (models:/maskgan-editor@champion) stays the same string when the alias moves.
    revision: str = ""
    device: str = "auto"  # auto: cuda when the replica sees a GPU, else cpu
    torch_threads: int | None = None  # intra-op threads per model replica (None: torch's default)

    def __post_init__(self) -> None:
        if not isinstance(self.model_uri, str) or not self.model_uri.strip():
            raise ValueError(f"serve.model_uri must be a non-empty URI or path, got {self.model_uri!r}")
        for name in ("max_samples", "max_upload_bytes", "max_pixels", "max_batch_size", "num_replicas",
                     "ingress_replicas"):  # fmt: skip
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if name == "max_samples" else 1)
            ):
                raise ValueError(f"serve.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.color_tolerance < 128:
            raise ValueError(f"serve.color_tolerance must be in [0, 128), got {self.color_tolerance}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(
                f"serve.batch_wait_timeout_s must be in [0, 10] s, got {self.batch_wait_timeout_s}"
            )
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(
                f"serve.max_replicas ({self.max_replicas}) must be >= num_replicas ({self.num_replicas}) "
                "(autoscaling runs between them); leave it unset for a fixed replica count"
            )
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"serve.target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        for name in ("model_num_cpus", "model_num_gpus", "ingress_num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"serve.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.max_surge_percent <= 100:
            raise ValueError(f"serve.max_surge_percent must be in [0, 100], got {self.max_surge_percent}")
        if self.device not in DEVICES:
            raise ValueError(f"serve.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"serve.torch_threads must be >= 1 or unset, got {self.torch_threads}")

    @property
    def max_request_bytes(self) -> int:
        """A whole multipart request: three files at most plus the multipart framing."""
        return 3 * self.max_upload_bytes + 64 * 1024

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config for the model deployment (None: a fixed num_replicas)."""
        if self.max_replicas is None:
            return None
        return {
            "min_replicas": self.num_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }


def from_args(args: dict[str, Any] | None) -> ServeConfig:
    """A ServeConfig from `serve run` args (a YAML mapping), unknown keys refused by name."""
    return config_lib.from_dict(ServeConfig, dict(args or {}), "serve")
