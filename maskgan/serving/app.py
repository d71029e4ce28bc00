"""The Serve application: a FastAPI ingress (page, JSON and image endpoints) in front of the model deployment.

Endpoints (every error is JSON {"detail": message}; 413 too large, 415 not a PNG / JPEG, 422 invalid
mask, 400 other bad requests, 404 unknown sample, 503 model unavailable):

    GET  /                           the page (static/index.html); GET /static/<file> its files
    GET  /healthz                    {"status": "ok", "model": uri, "resolution": int, ...}
    GET  /api/classes                [{"id", "name", "color": [r, g, b]}] in maskgan.labels order
    GET  /api/samples                val sample ids of the configured dataset ([] when none)
    GET  /api/samples/{id}/image     PNG photo;  /api/samples/{id}/mask: colour-coded PNG mask
    POST /api/parse                  multipart image -> colour-coded PNG mask of the image's size
    POST /api/edit                   multipart image, mask, edited_mask -> PNG of the image's size
    POST /api/style-copy             multipart target_mask, reference_image[, reference_mask] -> PNG

The ingress decodes and checks uploads (maskgan.editing's prepare_* under the service's InputLimits)
so the model replicas only ever see valid, decoded requests.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime.
import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from ray import serve
from starlette.datastructures import UploadFile

from maskgan.editing import editor as editor_lib
from maskgan.editing.inputs import InputTooLarge, InvalidMask, NotAnImage
from maskgan.labels import CLASS_NAMES, COLORS
from maskgan.serving.config import ServeConfig, from_args
from maskgan.serving.model import EditorModel, input_limits

STATIC_DIR = Path(__file__).resolve().parent / "static"
APP_NAME = "maskgan-editor"
# Content types accepted for uploaded files (browsers and curl name PNG / JPEG files so).
UPLOAD_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/pjpeg")
# ValueError subclass -> HTTP status (ValueError itself: 400).
STATUS = ((InputTooLarge, 413), (NotAnImage, 415), (InvalidMask, 422))
FIELDS = {
    "parse": ("image",),
    "edit": ("image", "mask", "edited_mask"),
    "style-copy": ("target_mask", "reference_image", "reference_mask?"),
}


class HTTPProblem(Exception):
    """An error answered as JSON {"detail": message} with this status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def status_of(error: ValueError) -> int:
    """The HTTP status of an input error raised by maskgan.editing."""
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 400


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG bytes (fast compression: these go straight to a browser)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def colour_mask(ids: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the dataset's colours."""
    return COLORS[ids]


class BodyLimit:
    """ASGI middleware: 413 for a request body over max_bytes, judged by Content-Length before the body
    is read, and counted while it streams when there is no Content-Length (chunked uploads)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send, int(declared))
        seen, started = 0, False

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send, seen)

    async def _too_large(self, send: Any, size: int) -> None:
        detail = (
            f"the request is {size / 1e6:.1f} MB or more, over this server's limit of "
            f"{self.max_bytes / 1e6:.1f} MB for a whole request; upload smaller files"
        )
        response = JSONResponse({"detail": detail}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def create_api(config: ServeConfig, model: Any, samples: Any) -> FastAPI:
    """The FastAPI app; model has async-remote run(request) and info() (a Serve handle), samples a Samples."""
    limits = input_limits(config)
    api = FastAPI(title="maskgan editor", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @api.exception_handler(HTTPProblem)
    async def problem(_: Request, error: HTTPProblem) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    @api.exception_handler(ValueError)
    async def bad_input(_: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status_of(error))

    async def call_model(method: str, *args: Any) -> Any:
        try:
            return await getattr(model, method).remote(*args)
        except ValueError:
            raise
        except Exception as error:  # no replica yet, replica died, overloaded: the client may retry
            raise HTTPProblem(
                503,
                f"the model ({config.model_uri}) is not available right now "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "retry in a moment, and check the server log if this persists",
            ) from None

    async def files(request: Request, endpoint: str) -> dict[str, bytes | None]:
        """The endpoint's multipart files as bytes (optional ones None when absent), checked."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPProblem(
                415,
                f"POST /api/{endpoint} takes multipart/form-data (got {content_type or 'no content type'}); "
                f"send the files as form fields {', '.join(FIELDS[endpoint])}",
            )
        form = await request.form(max_files=len(FIELDS[endpoint]), max_fields=len(FIELDS[endpoint]))
        found: dict[str, bytes | None] = {}
        try:
            for spec in FIELDS[endpoint]:
                name = spec.rstrip("?")
                value = form.get(name)
                if value is None and spec.endswith("?"):
                    found[name] = None
                    continue
                if not isinstance(value, UploadFile):
                    fields = ", ".join(f.replace("?", " (optional)") for f in FIELDS[endpoint])
                    problem = "is missing" if value is None else "is a text field, not a file"
                    raise HTTPProblem(
                        400, f"form field {name!r} {problem}; POST /api/{endpoint} takes the files {fields}"
                    )
                if value.size is not None and value.size > config.max_upload_bytes:
                    raise InputTooLarge(
                        f"{name} is {value.size / 1e6:.1f} MB, over this server's limit of "
                        f"{config.max_upload_bytes / 1e6:.1f} MB per file; send a smaller file"
                    )
                kind = (value.content_type or "").split(";")[0].strip().lower()
                if kind not in UPLOAD_TYPES:
                    raise HTTPProblem(
                        415,
                        f"{name} has content type {kind or 'none'!r}; send a PNG or JPEG file "
                        "(image/png, image/jpeg)",
                    )
                found[name] = await value.read()
        finally:
            await form.close()
        return found

    def png(array: np.ndarray) -> Response:
        return Response(encode_png(array), media_type="image/png")

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            info = await asyncio.wait_for(call_model("info"), timeout=10)
        except (HTTPProblem, TimeoutError) as error:
            detail = error.detail if isinstance(error, HTTPProblem) else "the model did not answer in 10 s"
            return JSONResponse({"status": "unavailable", "detail": detail, "model": config.model_uri}, 503)
        return JSONResponse({"status": "ok", **info, "model": config.model_uri, "batching": config.batching})

    @api.get("/api/classes")
    async def classes() -> list[dict[str, Any]]:
        return [
            {"id": index, "name": name, "color": [int(c) for c in COLORS[index]]}
            for index, name in enumerate(CLASS_NAMES)
        ]

    @api.get("/api/samples")
    async def sample_ids() -> list[int]:
        return samples.ids()

    def sample(sample_id: int, what: str) -> Response:
        if sample_id not in samples.rows:
            raise HTTPProblem(
                404, f"no sample {sample_id} here; GET /api/samples lists the {len(samples.rows)} sample ids"
            )
        if what == "image":
            return png(samples.image(sample_id))
        return png(colour_mask(samples.label(sample_id)))

    @api.get("/api/samples/{sample_id}/image")
    async def sample_image(sample_id: int) -> Response:
        return await asyncio.to_thread(sample, sample_id, "image")

    @api.get("/api/samples/{sample_id}/mask")
    async def sample_mask(sample_id: int) -> Response:
        return await asyncio.to_thread(sample, sample_id, "mask")

    @api.post("/api/parse")
    async def parse(request: Request) -> Response:
        data = await files(request, "parse")
        prepared = await asyncio.to_thread(editor_lib.prepare_parse, data["image"], limits)
        ids = await call_model("run", prepared)
        return png(colour_mask(ids))

    @api.post("/api/edit")
    async def edit(request: Request) -> Response:
        data = await files(request, "edit")
        prepared = await asyncio.to_thread(
            editor_lib.prepare_edit, data["image"], data["mask"], data["edited_mask"], limits
        )
        return png(await call_model("run", prepared))

    @api.post("/api/style-copy")
    async def style_copy(request: Request) -> Response:
        data = await files(request, "style-copy")
        reference_mask = data["reference_mask"]
        if reference_mask is None:  # parse the reference photo first
            info = await call_model("info")
            if not info["parser"]:
                raise HTTPProblem(
                    400,
                    "reference_mask is missing and this server's model has no face parser to make one; "
                    "send reference_mask (a colour-coded or class-id PNG of reference_image)",
                )
            parsed = await asyncio.to_thread(editor_lib.prepare_parse, data["reference_image"], limits)
            reference_mask = await call_model("run", parsed)
        prepared = await asyncio.to_thread(
            editor_lib.prepare_style_copy,
            data["target_mask"],
            data["reference_image"],
            reference_mask,
            limits,
        )
        return png(await call_model("run", prepared))

    return api


@serve.ingress()
class EditorIngress:
    """Serve deployment body of the HTTP front: holds the model handle and the samples."""

    def __init__(self, config: ServeConfig, model: Any) -> None:
        from maskgan.serving.samples import Samples

        self.config, self.model = config, model
        self.samples = Samples(config.dataset_uri, config.max_samples)

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.config, self.model, self.samples)


def build(config: ServeConfig) -> Any:
    """The Serve application for config: the ingress bound to the model deployment."""
    model = serve.deployment(EditorModel).options(
        name="EditorModel",
        num_replicas=None if config.max_replicas is not None else config.num_replicas,
        autoscaling_config=config.autoscaling_config(),
        ray_actor_options={"num_cpus": config.model_num_cpus, "num_gpus": config.model_num_gpus},
        max_ongoing_requests=max(2 * config.max_batch_size, 8),
        max_surge_percent=config.max_surge_percent,
    )
    ingress = serve.deployment(EditorIngress).options(
        name="EditorIngress",
        num_replicas=config.ingress_replicas,
        ray_actor_options={"num_cpus": config.ingress_num_cpus},
        max_ongoing_requests=64,  # mostly awaiting the model: let requests reach its batch queue
        max_surge_percent=config.max_surge_percent,
    )
    return ingress.bind(config, model.bind(config))


def app_builder(args: dict[str, Any]) -> Any:
    """The `serve run` import path (maskgan.serving.app:app_builder); args are ServeConfig fields."""
    return build(from_args(args))
