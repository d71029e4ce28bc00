"""Inference: edit(image, mask, edited_mask) -> image, style copy, parse; the MLflow pyfunc; the CLI.

The pyfunc (maskgan.editing.pyfunc) imports MLflow and is loaded only where it is used.
"""

from __future__ import annotations

from maskgan.editing.editor import Editor, LoadedFrom, load_parser
from maskgan.editing.inputs import DEFAULT_MAX_PIXELS, InputLimits, load_image, load_mask

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Editor",
    "InputLimits",
    "LoadedFrom",
    "load_image",
    "load_mask",
    "load_parser",
]
