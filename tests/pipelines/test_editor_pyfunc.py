"""The editor pyfunc: logged, registered, loaded by alias in a fresh process, output of the right size."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from editing_fixtures import face_mask, photo, reference_output, write_tiny_checkpoint  # noqa: E402
from released_reference import ReleasedGlobalGenerator, spread_style_bias_  # noqa: E402

from maskgan.editing import Editor  # noqa: E402
from maskgan.editing.pyfunc import encode_png, log_editor_model  # noqa: E402
from maskgan.models.dmn import dmn_tiny  # noqa: E402
from maskgan.tracking import CHECKPOINT_TAG, Tracker, TrackingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAME = "maskgan-editor"

# Runs in a fresh interpreter: nothing of the test process (imports, MLflow state) is shared.
FRESH_LOAD = textwrap.dedent(
    """
    import base64, io, json, sys
    import mlflow, pandas as pd
    from PIL import Image
    mlflow.set_tracking_uri(sys.argv[1])
    request = json.loads(sys.stdin.read())
    sizes = {}
    for alias in ("champion", "released"):
        model = mlflow.pyfunc.load_model(f"models:/maskgan-editor@{alias}")
        out = model.predict(pd.DataFrame([request]))
        image = Image.open(io.BytesIO(base64.b64decode(out["output"][0])))
        sizes[alias] = [image.size, image.mode, out["output"][0]]
    print("RESULT" + json.dumps(sizes))
    """
)


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def released_file(path: Path) -> Path:
    config = dmn_tiny()
    torch.manual_seed(1)
    released = ReleasedGlobalGenerator(
        input_nc=19, output_nc=3, ngf=config.base_channels, n_downsampling=config.num_downsample,
        n_blocks=config.num_res_blocks, enc_dim=config.encoder_base_channels,
        enc_downsample=config.encoder_num_downsample,
    )  # fmt: skip
    torch.save(spread_style_bias_(released).state_dict(), path)
    return path


@pytest.fixture
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrackingConfig(
        tracking_uri=uri, experiment="editor-test", artifact_location=(tmp_path / "art").as_uri()
    )
    return uri, config


def test_registered_editor_loads_by_alias_in_a_fresh_process(tmp_path, tracking):
    import mlflow

    uri, config = tracking
    checkpoint = str(tmp_path / "ebst" / "step_00000001")
    networks = write_tiny_checkpoint(checkpoint, ema=True)
    with Tracker.start(config, run_key="editor", stage="ebst", params={}, tags={}) as tracker:
        info = log_editor_model(tracker, checkpoint, registered_model_name=NAME)
        released = log_editor_model(
            tracker.run_id, str(released_file(tmp_path / "latest_net_G.pth")), tracking_uri=uri,
            registered_model_name=NAME, released_config=dmn_tiny(), name="released_editor",
        )  # fmt: skip
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias(NAME, "champion", info.registered_model_version)
    client.set_registered_model_alias(NAME, "released", released.registered_model_version)
    assert info.signature.inputs.input_names() == ["op", "image", "mask", "edited_mask", "target_mask"]
    # The artefact holds the inference networks only: no optimiser state, no discriminator.
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    finally:
        mlflow.set_tracking_uri(None)
    stored = sorted(p.name for p in (local / "artifacts" / "checkpoint" / "weights").iterdir())
    assert stored == ["blender.pt", "generator.pt", "generator_ema.pt", "mask_vae.pt"]
    assert not (local / "artifacts" / "checkpoint" / "state.pt").exists()
    assert (local / "input_example.json").exists()

    image, mask, edited = photo((40, 48)), face_mask((40, 48)), face_mask((40, 48), grow=3)
    request = {
        "op": "edit",
        "image": encode_png(image),
        "mask": encode_png(mask),
        "edited_mask": encode_png(edited),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, uri], input=json.dumps(request), capture_output=True, text=True,
        env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = json.loads(done.stdout.split("RESULT", 1)[1])
    assert sizes["champion"][:2] == [[48, 40], "RGB"]
    assert sizes["released"][:2] == [[48, 40], "RGB"]
    # The fresh process computed what this one does with the EMA generator of the checkpoint.
    here = np.asarray(Editor.from_checkpoint(checkpoint).edit(image, mask, edited)).astype(int)
    there = np.asarray(decode(sizes["champion"][2])).astype(int)
    assert np.abs(here - there).max() <= 1
    assert np.abs(there - np.asarray(decode(sizes["released"][2])).astype(int)).mean() > 2
    # At the model's resolution the pyfunc returns G(edited, mask, image) itself.
    small = Editor.load(f"models:/{NAME}@champion", tracking_uri=uri)
    expected = reference_output(networks["generator_ema"], face_mask(grow=3), face_mask(), photo())
    assert (
        np.abs(np.asarray(small.edit(photo(), face_mask(), face_mask(grow=3))).astype(int) - expected).max()
        <= 1
    )


def test_pyfunc_ops_inputs_and_errors(tmp_path, tracking):
    import mlflow
    import pandas as pd

    uri, config = tracking
    checkpoint = str(tmp_path / "ckpt")
    write_tiny_checkpoint(checkpoint)
    with Tracker.start(config, run_key="ops", stage="ebst", params={}, tags={}) as tracker:
        info = log_editor_model(tracker, checkpoint)
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    target, reference = face_mask((24, 16), grow=1), photo((32, 32), seed=4)
    style = model.predict(
        {"op": "style_copy", "image": encode_png(reference), "mask": encode_png(face_mask()),
         "target_mask": encode_png(target)}
    )  # fmt: skip
    assert decode(style["output"][0]).size == (16, 24)
    edit_row = {"op": "edit", "image": encode_png(photo()), "mask": encode_png(face_mask()),
                "edited_mask": encode_png(face_mask(grow=2))}  # fmt: skip
    style_row = {"op": "style_copy", "image": encode_png(reference), "mask": encode_png(face_mask()),
                 "target_mask": encode_png(target)}  # fmt: skip
    # Mixed ops in one DataFrame: the columns an op does not use are missing (NaN) in its row.
    out = model.predict(pd.DataFrame([edit_row, style_row, edit_row]))
    assert len(out) == 3 and out["output"][0] == out["output"][2]
    assert out["output"][1] == style["output"][0]
    assert decode(out["output"][0]).size == (32, 32)
    # A bad row anywhere refuses the whole request before the generator runs for any row.
    calls = []
    model.unwrap_python_model().editor.generator.register_forward_pre_hook(lambda *_: calls.append(1))
    bad = {**edit_row, "mask": encode_png(face_mask((32, 30)))}
    with pytest.raises(Exception, match="row 1: mask is 30 x 32 but image is 32 x 32"):
        model.predict(pd.DataFrame([edit_row, bad]))
    assert calls == []
    with pytest.raises(Exception, match="no face parser is loaded"):
        model.predict({"op": "parse", "image": encode_png(photo())})
    with pytest.raises(Exception, match="needs image, mask, edited_mask; missing edited_mask"):
        model.predict({"op": "edit", "image": encode_png(photo()), "mask": encode_png(face_mask())})
    with pytest.raises(Exception, match="op 'blur' is not one of edit, style_copy, parse"):
        model.predict({"op": "blur", "image": encode_png(photo())})
    with pytest.raises(Exception, match="column 'mask' is not valid base64"):
        model.predict({"op": "edit", "image": encode_png(photo()), "mask": "%%%", "edited_mask": "AAAA"})


def test_editor_from_run_uses_its_model_or_its_checkpoint_tag(tmp_path, tracking):
    uri, config = tracking
    checkpoint = str(tmp_path / "tagged")
    write_tiny_checkpoint(checkpoint, step=7)
    with Tracker.start(config, run_key="tagged", stage="dmn", params={}, tags={}) as tracker:
        tracker.set_tags({CHECKPOINT_TAG: checkpoint})
    editor = Editor.from_run(tracker.run_id, tracking_uri=uri)
    assert editor.source.kind == "checkpoint" and editor.source.step == 7
    with Tracker.start(config, run_key="logged", stage="ebst", params={}, tags={}) as logged:
        log_editor_model(logged, checkpoint)
    assert Editor.from_run(logged.run_id, tracking_uri=uri).source.uri.endswith("checkpoint")
    with Tracker.start(config, run_key="empty", stage="dmn", params={}, tags={}) as empty:
        pass
    with pytest.raises(ValueError, match="has no logged 'editor' model and no maskgan.checkpoint_uri tag"):
        Editor.from_run(empty.run_id, tracking_uri=uri)


@pytest.mark.s3
def test_editor_registered_on_an_mlflow_server_with_s3_artifacts(
    mlflow_server, s3_bucket, tmp_path, monkeypatch
):
    import mlflow

    bucket, storage_config = s3_bucket
    # Tracker.start sets these process-wide; monkeypatch puts the old values back after the test.
    process_env = {
        "MLFLOW_S3_ENDPOINT_URL": storage_config.endpoint_url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    for key, value in process_env.items():
        monkeypatch.setenv(key, value)
    checkpoint = f"{bucket}/runs/ebst/step_00000002"
    networks = write_tiny_checkpoint(checkpoint, step=2, storage_config=storage_config)
    config = TrackingConfig(
        tracking_uri=mlflow_server, experiment="editor-s3", artifact_location=f"{bucket}/mlflow"
    )
    with Tracker.start(
        config, run_key="srv", stage="ebst", params={}, tags={}, storage=storage_config
    ) as tracker:
        info = log_editor_model(
            tracker, checkpoint, storage_config=storage_config, registered_model_name=NAME
        )
    mlflow.MlflowClient(mlflow_server).set_registered_model_alias(
        NAME, "champion", info.registered_model_version
    )
    editor = Editor.load(f"models:/{NAME}@champion", tracking_uri=mlflow_server)
    assert editor.source.step == 2
    image, mask, edited = photo(), face_mask(), face_mask(grow=2)
    expected = reference_output(networks["generator"], edited, mask, image)
    assert np.abs(np.asarray(editor.edit(image, mask, edited)).astype(int) - expected).max() <= 1
    import boto3

    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket.removeprefix("s3://"))["Contents"]]
    assert any(key.startswith("mlflow/") and key.endswith("weights/generator.pt") for key in keys)
