"""A registered editor served by its alias, and a new champion picked up by a redeploy without downtime.

A second app (route /redeploy) on the session's Serve serves models:/maskgan-editor@champion from an
SQLite registry. The alias moves to another version, the app is deployed again with a new `revision`,
and a client that kept posting edits the whole time saw only 200s; afterwards the output is the new
version's.
"""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import requests
from PIL import Image

from maskgan.editing import Editor
from maskgan.editing.pyfunc import log_editor_model
from maskgan.serving.app import build
from maskgan.serving.config import ServeConfig
from maskgan.tracking import Tracker, TrackingConfig
from tests.serving.conftest import wait_healthy
from tests.serving.test_serve_api import png
from tests.unit.editing_fixtures import face_mask, photo, write_tiny_checkpoint

NAME = "maskgan-editor"
APP = "redeploy"


def edit(url: str) -> requests.Response:
    files = {
        "image": ("i.png", png(photo((32, 32))), "image/png"),
        "mask": ("m.png", png(face_mask()), "image/png"),
        "edited_mask": ("e.png", png(face_mask(grow=3)), "image/png"),
    }
    return requests.post(f"{url}/api/edit", files=files, timeout=120)


def expected(checkpoint: str) -> np.ndarray:
    return np.asarray(
        Editor.from_checkpoint(checkpoint).edit(photo((32, 32)), face_mask(), face_mask(grow=3))
    )


def served(url: str) -> np.ndarray:
    response = edit(url)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_new_champion_after_redeploy_without_downtime(serve_app, tmp_path):
    import mlflow
    from ray import serve

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingConfig(
        tracking_uri=uri, experiment="serve", artifact_location=(tmp_path / "art").as_uri()
    )
    checkpoints = [str(tmp_path / f"editor-{seed}") for seed in (0, 10)]
    versions = []
    for seed, checkpoint in zip((0, 10), checkpoints, strict=True):
        write_tiny_checkpoint(checkpoint, stage="dmn", blender=False, mask_vae=False, seed=seed)
        with Tracker.start(tracking, run_key=f"v{seed}", stage="dmn", params={}, tags={}) as tracker:
            versions.append(
                log_editor_model(tracker, checkpoint, registered_model_name=NAME).registered_model_version
            )
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias(NAME, "champion", versions[0])
    old, new = expected(checkpoints[0]), expected(checkpoints[1])
    assert not close(old, new), "the two versions must be told apart by their output"

    config = ServeConfig(
        model_uri=f"models:/{NAME}@champion", tracking_uri=uri, revision=str(versions[0]),
        model_num_cpus=0.25, ingress_num_cpus=0, torch_threads=1,
    )  # fmt: skip
    url = f"{serve_app.url}/{APP}"
    serve.run(build(config), name=APP, route_prefix=f"/{APP}")
    try:
        assert wait_healthy(url)["model"] == f"models:/{NAME}@champion"
        assert close(served(url), old)

        statuses: list[int] = []
        stop = threading.Event()

        def keep_editing() -> None:
            while not stop.is_set():
                try:
                    statuses.append(edit(url).status_code)
                except requests.RequestException as error:  # a refused connection is downtime too
                    statuses.append(repr(error))

        client.set_registered_model_alias(NAME, "champion", versions[1])
        poller = threading.Thread(target=keep_editing)
        poller.start()
        try:
            serve.run(
                build(dataclasses.replace(config, revision=str(versions[1]))),
                name=APP,
                route_prefix=f"/{APP}",
            )
        finally:
            stop.set()
            poller.join(timeout=180)
        assert len(statuses) >= 3 and set(statuses) == {200}, statuses
        assert close(served(url), new), "the redeployed app serves the new champion"
    finally:
        serve.delete(APP)
