"""The editor's HTTP API against a real Ray Serve app on 127.0.0.1 (tests/serving/conftest.py serve_app).

Every endpoint answers an image of the right size (square and non-square inputs); every bad input
gets its 4xx status and a JSON message naming the problem.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from maskgan.labels import CLASS_NAMES, COLORS
from tests.serving.conftest import MAX_PIXELS, MAX_UPLOAD_BYTES
from tests.unit.editing_fixtures import face_mask, photo

TIMEOUT = 120


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def part(data: bytes, content_type: str = "image/png", filename: str = "f.png") -> tuple:
    return (filename, data, content_type)


def post(serve_app, endpoint: str, **files) -> requests.Response:
    return requests.post(f"{serve_app.url}/api/{endpoint}", files=files, timeout=TIMEOUT)


def decoded(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def ids_of(colour_png: Image.Image) -> np.ndarray:
    """Colour-coded mask -> class ids (every pixel must be a class colour)."""
    rgb = np.asarray(colour_png.convert("RGB"))
    matches = (rgb[:, :, None, :] == COLORS[None, None]).all(axis=3)  # (H, W, 19)
    assert matches.any(axis=2).all(), "a pixel is not a class colour"
    return matches.argmax(axis=2)


def edit_inputs(size=(40, 24)) -> dict:
    """(height, width) photo, its mask (class ids) and an edit (mouth grown), as multipart parts."""
    mask = face_mask(size)
    return {
        "image": part(png(photo(size))),
        "mask": part(png(mask)),
        "edited_mask": part(png(COLORS[face_mask(size, grow=3)])),  # colour-coded
    }


# ---------------------------------------------------------------- endpoints


def test_healthz_names_the_configured_model(serve_app):
    body = requests.get(f"{serve_app.url}/healthz", timeout=TIMEOUT).json()
    assert body["status"] == "ok"
    assert body["model"] == serve_app.config.model_uri
    assert body["resolution"] == 32 and body["parser"] is True and body["device"] == "cpu"


def test_page_and_static_files(serve_app):
    page = requests.get(f"{serve_app.url}/", timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    static = requests.get(f"{serve_app.url}/static/index.html", timeout=TIMEOUT)
    assert static.status_code == 200 and static.content == page.content
    assert requests.get(f"{serve_app.url}/static/nothing.js", timeout=TIMEOUT).status_code == 404


def test_classes_in_label_order(serve_app):
    classes = requests.get(f"{serve_app.url}/api/classes", timeout=TIMEOUT).json()
    assert [c["id"] for c in classes] == list(range(19))
    assert [c["name"] for c in classes] == list(CLASS_NAMES)
    assert [c["color"] for c in classes] == COLORS.tolist()


@pytest.mark.parametrize("size", [(32, 32), (40, 24), (17, 50)])
def test_edit_returns_the_image_size(serve_app, size):
    inputs = edit_inputs(size)
    result = decoded(post(serve_app, "edit", **inputs))
    assert result.size == (size[1], size[0]) and result.mode == "RGB"


def test_edit_follows_the_edited_mask(serve_app):
    """Same photo and mask, two different edits: the outputs differ (the edited mask is really used)."""
    size = (32, 32)
    base = {"image": part(png(photo(size))), "mask": part(png(face_mask(size)))}
    one = decoded(post(serve_app, "edit", **base, edited_mask=part(png(face_mask(size)))))
    two = decoded(post(serve_app, "edit", **base, edited_mask=part(png(face_mask(size, grow=4)))))
    assert np.abs(np.asarray(one, np.int16) - np.asarray(two, np.int16)).max() > 0


def test_parse_returns_a_colour_mask_of_the_image_size(serve_app):
    result = decoded(post(serve_app, "parse", image=part(jpeg(photo((45, 30))), "image/jpeg", "p.jpg")))
    assert result.size == (30, 45)
    ids_of(result)


@pytest.mark.parametrize("with_reference_mask", [True, False])
def test_style_copy_returns_the_target_mask_size(serve_app, with_reference_mask):
    files = {
        "target_mask": part(png(COLORS[face_mask((36, 20))])),
        "reference_image": part(png(photo((32, 32), seed=3))),
    }
    if with_reference_mask:
        files["reference_mask"] = part(png(face_mask((32, 32))))
    result = decoded(post(serve_app, "style-copy", **files))
    assert result.size == (20, 36) and result.mode == "RGB"


def test_samples_from_the_val_split(serve_app):
    ids = requests.get(f"{serve_app.url}/api/samples", timeout=TIMEOUT).json()
    assert ids and all(isinstance(i, int) for i in ids)
    image = decoded(requests.get(f"{serve_app.url}/api/samples/{ids[0]}/image", timeout=TIMEOUT))
    mask = decoded(requests.get(f"{serve_app.url}/api/samples/{ids[0]}/mask", timeout=TIMEOUT))
    assert image.size == mask.size == (32, 32)
    assert len(np.unique(ids_of(mask))) > 1
    missing = requests.get(f"{serve_app.url}/api/samples/999999/image", timeout=TIMEOUT)
    assert missing.status_code == 404 and "/api/samples" in missing.json()["detail"]
