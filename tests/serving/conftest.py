"""The editor service on this session's Ray: Serve HTTP on 127.0.0.1 and a free port, a tiny editor.

`serve_app` (session) yields ServeApp(url, config): the page's browser test uses it too. The editor is an
untrained tiny DMN checkpoint with large random weights (its output visibly depends on its inputs)
plus an untrained tiny face parser; the samples come from the session's tiny preprocessed dataset.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import NamedTuple

import pytest

from maskgan.serving.config import ServeConfig

# Small limits so the tests can cross them with small files.
MAX_UPLOAD_BYTES = 200_000
MAX_PIXELS = 300 * 300


class ServeApp(NamedTuple):
    url: str  # http://127.0.0.1:<port>, no trailing slash
    config: ServeConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 180) -> dict:
    """Poll /healthz until it answers ok; its JSON."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
                body = json.loads(response.read())
                if body.get("status") == "ok":
                    return body
                last = body
        except (urllib.error.URLError, OSError, ValueError) as error:
            last = error
        time.sleep(0.5)
    raise RuntimeError(f"{url}/healthz did not answer ok within {timeout_s} s (last: {last})")


@pytest.fixture(scope="session")
def tiny_editor_checkpoints(tmp_path_factory) -> tuple[str, str]:
    """(editor checkpoint, parser checkpoint): untrained tiny networks, written with write_checkpoint."""
    from maskgan import config as config_lib
    from maskgan.models.parser import build_parser, parser_tiny
    from maskgan.training.checkpoint import write_checkpoint
    from tests.unit.editing_fixtures import lively, write_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve-editor")
    editor = str(root / "editor")
    write_tiny_checkpoint(editor, stage="dmn", blender=False, mask_vae=False)
    parser = str(root / "parser")
    meta = {"stage": "parser", "step": 0, "epoch": 0, "manifest_sha256": None,
            "config": {"model": config_lib.to_dict(parser_tiny())}}  # fmt: skip
    weights = {"parser": lively(build_parser(parser_tiny()), seed=5).state_dict()}
    write_checkpoint(parser, {"step": 0}, weights=weights, meta=meta)
    return editor, parser


@pytest.fixture(scope="session")
def serve_app(ray_session, tiny_editor_checkpoints, train_dataset):
    """The editor app deployed on Serve at http://127.0.0.1:<free port>; Serve is shut down at the end."""
    from ray import serve

    from maskgan.serving.app import APP_NAME, build

    editor, parser = tiny_editor_checkpoints
    config = ServeConfig(
        model_uri=editor, parser_uri=parser, dataset_uri=train_dataset,
        max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS,
        model_num_cpus=0.25, ingress_num_cpus=0, torch_threads=1, batch_wait_timeout_s=0.01,
    )  # fmt: skip
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(config), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield ServeApp(url, config)
    finally:
        serve.shutdown()
