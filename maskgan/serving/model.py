"""The model deployment: one Editor per replica; requests run alone or batched with @serve.batch.

The Editor is loaded in the constructor, so a replica counts as ready only once its model is:
a redeploy (serve.run / serve deploy with a new config) keeps the old replicas serving until the new
ones have loaded, which is what makes picking up a new champion free of downtime.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from maskgan.editing import Editor, InputLimits
from maskgan.editing.editor import Request
from maskgan.serving.config import ServeConfig

# Pillow formats accepted from uploads (the page sends PNG; photos are PNG or JPEG).
UPLOAD_FORMATS = ("PNG", "JPEG")


def input_limits(config: ServeConfig) -> InputLimits:
    """The Editor's input limits for this service's uploads."""
    return InputLimits(
        max_pixels=config.max_pixels,
        max_bytes=config.max_upload_bytes,
        formats=UPLOAD_FORMATS,
        color_tolerance=config.color_tolerance,
    )


def resolve_device(name: str) -> str:
    """auto -> cuda when this process sees a GPU, else cpu; cuda without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "serve.device is cuda but this replica sees no GPU: set model_num_gpus >= 1 (so Ray places "
            "the replica on a GPU node) or device: auto"
        )
    return name


def load_editor(config: ServeConfig) -> Editor:
    """The configured model on the configured device (the only place the model URI is read)."""
    import torch

    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    kwargs: dict[str, Any] = {"device": resolve_device(config.device), "limits": input_limits(config)}
    if config.parser_uri is not None:
        kwargs["parser"] = config.parser_uri
    if config.model_uri.startswith(("models:/", "runs:/")):
        kwargs["tracking_uri"] = config.tracking_uri
    return Editor.load(config.model_uri, **kwargs)


class EditorModel:
    """Serve deployment body: run(request) -> (H, W, 3) RGB or (H, W) class-id uint8 array."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.editor = load_editor(config)
        self._one_at_a_time = asyncio.Lock()
        self._run_batched.set_max_batch_size(config.max_batch_size)
        self._run_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        """What this replica serves, for /healthz."""
        return {
            "model": self.config.model_uri,
            "resolution": int(self.editor.resolution),
            "device": str(self.editor.device),
            "parser": self.editor.parser is not None,
            "source": self.editor.source.kind,
        }

    async def run(self, request: Request) -> np.ndarray:
        """One prepared request (decoded and checked by the ingress) -> its output array."""
        if request.op == "parse" and self.editor.parser is None:
            raise ValueError(f"this server's model ({self.config.model_uri}) has no face parser")
        if self.config.batching:
            return await self._run_batched(request)
        # Batching off: one request at a time, so torch's threads are not split between requests.
        async with self._one_at_a_time:
            return (await asyncio.to_thread(self._forward, [request]))[0]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _run_batched(self, requests: list[Request]) -> list[np.ndarray]:
        # In a thread: the event loop keeps queueing the next batch while this one runs.
        return await asyncio.to_thread(self._forward, requests)

    def _forward(self, requests: list[Request]) -> list[np.ndarray]:
        return [np.asarray(output) for output in self.editor.run_batch(requests)]
