"""The editor as an MLflow pyfunc (`maskgan-editor`): rows of base64 PNGs in, base64 PNGs out.

Input: a pandas DataFrame (or a dict / list of dicts) with the columns
    op           "edit" | "style_copy" | "parse"
    image        base64 PNG/JPEG: the photo (edit, parse) or the style reference (style_copy)
    mask         base64 PNG: image's mask (class ids in an L PNG, or the palette's colours)
    edited_mask  base64 PNG: the edited mask (edit)
    target_mask  base64 PNG: the mask to draw in image's style (style_copy)
Output: a DataFrame with one column `output`: a base64 PNG (RGB for edit / style_copy, an L PNG of
class ids for parse) of the input's size. The model's artefact is a folder with meta.json and the
inference weights of a checkpoint (no optimiser state, no discriminator), plus an optional parser.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
from PIL import Image

from maskgan.editing.editor import Editor, Request
from maskgan.models.dmn import DMNConfig
from maskgan.storage import StorageConfig

OPS = ("edit", "style_copy", "parse")
IMAGE_COLUMNS = ("image", "mask", "edited_mask", "target_mask")
NEEDS = {"edit": ("image", "mask", "edited_mask"), "style_copy": ("image", "mask", "target_mask"),
         "parse": ("image",)}  # fmt: skip
# Networks inference needs; a checkpoint's discriminator and optimiser state stay behind.
INFERENCE_NETWORKS = ("generator", "generator_ema", "blender", "mask_vae")
MODEL_NAME = "editor"


def encode_png(image: Image.Image | np.ndarray) -> str:
    """A PIL image or (H, W[, 3]) uint8 array -> base64 PNG text."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_base64(text: Any, where: str) -> bytes:
    """Base64 text -> bytes; ValueError naming where it came from."""
    if not isinstance(text, str | bytes) or not text:
        raise ValueError(f"{where} must be a non-empty base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{where} is not valid base64: {error}") from None


def signature() -> mlflow.models.ModelSignature:
    """op required, the image columns optional (which ones an op needs is checked per row)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", "op")] + [ColSpec("string", n, required=False) for n in IMAGE_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "output")]))


def input_example() -> Any:
    """One 32 x 32 edit request: a noise photo, a face blob mask, and the blob grown by 4 px."""
    import pandas as pd

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 10:22] = 1  # skin
    edited = mask.copy()
    edited[4:28, 8:24] = 1
    row = {
        "op": "edit",
        "image": encode_png(photo),
        "mask": encode_png(mask),
        "edited_mask": encode_png(edited),
    }
    return pd.DataFrame([row])


def _rows(model_input: Any) -> list[dict[str, Any]]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        if all(isinstance(value, list | tuple | np.ndarray) for value in model_input.values()):
            return pd.DataFrame(model_input).to_dict(orient="records")
        return [dict(model_input)]
    if isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        return list(model_input)
    raise ValueError(
        f"editor input is a {type(model_input).__name__}; expected a DataFrame, a dict or a list of dicts"
    )


def prepare_request(editor: Editor, row: dict[str, Any], index: int = 0) -> Request:
    """One input row -> a checked Request (ValueError naming the row and column on bad input)."""
    op = row.get("op")
    if op not in OPS:
        raise ValueError(f"row {index}: op {op!r} is not one of {', '.join(OPS)}")
    missing = [name for name in NEEDS[op] if not isinstance(row.get(name), str) or not row.get(name)]
    if missing:
        raise ValueError(f"row {index}: op {op!r} needs {', '.join(NEEDS[op])}; missing {', '.join(missing)}")
    data = {name: decode_base64(row[name], f"row {index} column {name!r}") for name in NEEDS[op]}
    try:
        if op == "edit":
            return editor.prepare_edit(data["image"], data["mask"], data["edited_mask"])
        if op == "style_copy":
            return editor.prepare_style_copy(data["target_mask"], data["image"], data["mask"])
        return editor.prepare_parse(data["image"])
    except ValueError as error:
        raise ValueError(f"row {index}: {error}") from None


def run_requests(editor: Editor, rows: list[dict[str, Any]]) -> list[str]:
    """Rows -> base64 PNG outputs; every row is decoded and checked before the first one runs."""
    requests = [prepare_request(editor, row, index) for index, row in enumerate(rows)]
    return [encode_png(editor.run(request)) for request in requests]


class EditorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artefacts `checkpoint` (editor bundle) and optionally `parser` (a checkpoint)."""

    def load_context(self, context) -> None:
        device = (context.model_config or {}).get("device", "cpu")
        self.editor = Editor.from_checkpoint(
            context.artifacts["checkpoint"], parser=context.artifacts.get("parser"), device=device
        )

    def predict(self, context, model_input, params=None):
        import pandas as pd

        return pd.DataFrame({"output": run_requests(self.editor, _rows(model_input))})


def export_editor_bundle(
    checkpoint_uri: str,
    directory: str,
    storage_config: StorageConfig | None = None,
    *,
    released_config: DMNConfig | None = None,
) -> str:
    """Copy a checkpoint's inference weights and meta.json (networks trimmed) to a local folder.

    checkpoint_uri may also be a released latest_net_G.pth (its generator, built with released_config,
    default official 512 px, is converted and saved).
    """
    from maskgan.training import checkpoint

    if os.path.isfile(checkpoint_uri):
        return _export_released(checkpoint_uri, directory, released_config)
    uri = checkpoint.resolve_checkpoint(checkpoint_uri, storage_config)
    meta = checkpoint.read_meta(uri, storage_config)
    kept = [name for name in meta.get("networks", []) if name in INFERENCE_NETWORKS]
    if not {"generator", "generator_ema"} & set(kept):
        raise ValueError(f"checkpoint {uri} (stage {meta.get('stage')!r}) holds no generator to export")
    checkpoint.export_inference(uri, directory, frozenset(kept), storage_config)
    return directory


def _export_released(path: str, directory: str, config: DMNConfig | None) -> str:
    from maskgan import config as config_lib
    from maskgan.models.official import load_released_generator
    from maskgan.training import checkpoint

    generator = load_released_generator(path, config)
    meta = {"stage": "released", "step": 0, "epoch": 0, "manifest_sha256": None,
            "config": {"generator": config_lib.to_dict(generator.config)}, "exported_from": path}  # fmt: skip
    checkpoint.write_checkpoint(directory, {}, weights={"generator": generator.state_dict()}, meta=meta)
    return directory


@contextlib.contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API (and so its registry, unless one is set apart) at uri for the block.

    Restores the previous setting exactly, "unset" included (mlflow.get_tracking_uri() would return
    a resolved default and pin it).
    """
    if uri is None:
        yield
        return
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("torch", "numpy", "pillow", "pandas", "mlflow")]


def log_editor_model(
    tracker_or_run_id: Any,
    checkpoint_dir: str,
    *,
    parser_checkpoint: str | None = None,
    registered_model_name: str | None = None,
    tracking_uri: str | None = None,
    storage_config: StorageConfig | None = None,
    released_config: DMNConfig | None = None,
    name: str = MODEL_NAME,
) -> mlflow.models.model.ModelInfo:
    """Log the editor pyfunc into a run (a maskgan Tracker or a run id); register it when a name is given.

    checkpoint_dir: a DMN / EBST checkpoint (local or s3://, or a folder of them: the latest), or a
    released latest_net_G.pth. The model's info (ModelInfo.registered_model_version when registered).
    """
    run_id = getattr(tracker_or_run_id, "run_id", tracker_or_run_id)
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(
            f"log_editor_model needs a Tracker with a run or a run id, got {tracker_or_run_id!r}"
        )
    tracking_uri = tracking_uri or getattr(tracker_or_run_id, "tracking_uri", None)
    with tempfile.TemporaryDirectory(prefix="maskgan-editor-") as scratch:
        bundle = export_editor_bundle(
            checkpoint_dir,
            os.path.join(scratch, "checkpoint"),
            storage_config,
            released_config=released_config,
        )
        artifacts = {"checkpoint": bundle}
        if parser_checkpoint is not None:
            artifacts["parser"] = export_parser(
                parser_checkpoint, os.path.join(scratch, "parser"), storage_config
            )
        with _tracking(tracking_uri):
            active = mlflow.active_run()
            run = (
                contextlib.nullcontext()
                if active and active.info.run_id == run_id
                else mlflow.start_run(run_id)
            )
            with run:
                return mlflow.pyfunc.log_model(
                    name=name,
                    python_model=EditorModel(),
                    artifacts=artifacts,
                    signature=signature(),
                    input_example=input_example(),
                    pip_requirements=_pip_requirements(),
                    registered_model_name=registered_model_name,
                )


def export_parser(uri: str, directory: str, storage_config: StorageConfig | None = None) -> str:
    """Copy a parser checkpoint's meta.json and weights/parser.pt to a local folder."""
    from maskgan.training import checkpoint

    uri = checkpoint.resolve_checkpoint(uri, storage_config)
    meta = checkpoint.read_meta(uri, storage_config)
    if "parser" not in meta.get("networks", []):
        raise ValueError(f"checkpoint {uri} holds no parser network (networks: {meta.get('networks')})")
    checkpoint.export_inference(uri, directory, frozenset({"parser"}), storage_config)
    return directory


def load_editor_from_mlflow(
    model_uri: str, *, tracking_uri: str | None = None, device: str = "cpu", limits=None, parser=None
) -> Editor:
    """The Editor inside a logged / registered editor pyfunc (models:/name@alias, runs:/id/editor)."""
    with _tracking(tracking_uri):
        model = mlflow.pyfunc.load_model(model_uri, model_config={"device": str(device)})
    editor = model.unwrap_python_model().editor
    if limits is not None:
        editor.limits = limits
    if isinstance(parser, str):
        from maskgan.editing.editor import load_parser

        parser = load_parser(parser)
    if parser is not None:
        editor.parser = parser.to(editor.device).eval()
    return editor


def load_editor_from_run(run_id: str, *, tracking_uri: str | None = None, **kwargs: Any) -> Editor:
    """A run's logged `editor` model, else the checkpoint named by its maskgan.checkpoint_uri tag."""
    from maskgan.tracking import CHECKPOINT_TAG

    with _tracking(tracking_uri):
        client = mlflow.MlflowClient()
        run = client.get_run(run_id)
        logged = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
        )
    if len(logged):
        return load_editor_from_mlflow(f"runs:/{run_id}/{MODEL_NAME}", tracking_uri=tracking_uri, **kwargs)
    checkpoint_uri = run.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint_uri:
        raise ValueError(
            f"MLflow run {run_id} has no logged {MODEL_NAME!r} model and no {CHECKPOINT_TAG} tag to load from"
        )
    return Editor.from_checkpoint(checkpoint_uri, **kwargs)
