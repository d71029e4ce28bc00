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


# ---------------------------------------------------------------- bad inputs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by 8 bytes of pixel data: only its header is valid."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def noise_png(size: tuple[int, int]) -> bytes:
    return png(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))


def problem(response: requests.Response, status: int, *words: str) -> str:
    """The response is `status` with a JSON detail containing every word."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, (word, detail)
    return detail


def test_a_file_over_the_byte_limit_is_413(serve_app):
    big = noise_png((300, 260))  # ~234 KB of noise, under the request cap, over the per-file cap
    assert MAX_UPLOAD_BYTES < len(big) < serve_app.config.max_request_bytes
    problem(post(serve_app, "parse", image=part(big)), 413, "image", "MB")


def test_a_request_over_the_byte_limit_is_413_before_it_is_read(serve_app):
    body = b"\0" * (serve_app.config.max_request_bytes + 1)
    response = requests.post(
        f"{serve_app.url}/api/edit", data=body, timeout=TIMEOUT,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    problem(response, 413, "request", "limit")


def test_a_chunked_request_over_the_byte_limit_is_413(serve_app):
    """No Content-Length: the body (a multipart start, then an endless file) is counted as it streams."""
    start = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
             b"Content-Type: image/png\r\n\r\n")  # fmt: skip
    chunk = b"\0" * 65536
    count = serve_app.config.max_request_bytes // len(chunk) + 2
    body = (start if i < 0 else chunk for i in range(-1, count))
    response = requests.post(
        f"{serve_app.url}/api/edit", data=body, timeout=TIMEOUT,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    problem(response, 413, "request")


def test_too_many_pixels_are_refused_from_the_header(serve_app):
    """A 4000 x 3000 header with 8 bytes of pixels: 413 (pixels), not 415 (undecodable): never decoded."""
    header = png_header_only(4000, 3000)
    assert len(header) < 100
    detail = problem(post(serve_app, "parse", image=part(header)), 413, "image", "4000 x 3000")
    assert f"{MAX_PIXELS / 1e6:.1f} MP" in detail
    just_over = noise_png((301, 300))  # decodable, small in bytes, one row over the pixel cap
    problem(post(serve_app, "edit", **{**edit_inputs(), "image": part(just_over)}), 413, "image")


@pytest.mark.parametrize(
    "data, content_type, words",
    [
        (b"hello, not an image at all", "image/png", ["image", "not an image"]),
        (png(photo((8, 8))), "text/plain", ["image", "text/plain", "PNG or JPEG"]),
        (png(photo((8, 8))), "", ["image", "content type"]),
    ],
    ids=["non-image-bytes", "text-plain", "no-type"],
)
def test_wrong_content_is_415(serve_app, data, content_type, words):
    problem(
        post(serve_app, "parse", image=("x", data, content_type) if content_type else ("x", data)),
        415,
        *words,
    )


def test_an_image_of_another_format_is_415(serve_app):
    buffer = io.BytesIO()
    Image.fromarray(photo((8, 8))).save(buffer, format="GIF")
    problem(post(serve_app, "parse", image=part(buffer.getvalue())), 415, "GIF", "PNG, JPEG")


def test_a_body_that_is_not_multipart_is_415(serve_app):
    response = requests.post(f"{serve_app.url}/api/edit", json={"image": "x"}, timeout=TIMEOUT)
    problem(response, 415, "multipart/form-data", "image, mask, edited_mask")


def test_a_missing_field_is_400_and_names_it(serve_app):
    inputs = edit_inputs()
    del inputs["edited_mask"]
    problem(post(serve_app, "edit", **inputs), 400, "'edited_mask'", "is missing")
    text_field = requests.post(
        f"{serve_app.url}/api/parse",
        data={"image": "not a file"},
        files={"other": part(b"x")},
        timeout=TIMEOUT,
    )
    problem(text_field, 400, "'image'", "not a file")


def test_a_mask_of_another_size_is_422(serve_app):
    inputs = {**edit_inputs((40, 24)), "mask": part(png(face_mask((32, 32))))}
    problem(post(serve_app, "edit", **inputs), 422, "mask is 32 x 32", "image is 24 x 40")


def test_a_class_over_18_is_422(serve_app):
    bad = face_mask((40, 24))
    bad[5, 7] = 19
    problem(post(serve_app, "edit", **{**edit_inputs(), "edited_mask": part(png(bad))}), 422,
            "edited_mask", "class index 19", "x=7, y=5")  # fmt: skip


def test_an_unknown_colour_is_422(serve_app):
    colours = COLORS[face_mask((40, 24))].copy()
    colours[3, 4] = (1, 2, 250)
    problem(post(serve_app, "edit", **{**edit_inputs(), "mask": part(png(colours))}), 422,
            "mask", "(1, 2, 250)", "x=4, y=3", "not a class colour")  # fmt: skip


def test_a_transparent_photo_is_400(serve_app):
    rgba = np.dstack([photo((40, 24)), np.full((40, 24), 128, np.uint8)])
    problem(post(serve_app, "edit", **{**edit_inputs(), "image": part(png(rgba))}), 400, "transparent")


def test_the_model_uri_is_not_taken_from_a_request(serve_app, tmp_path):
    """Extra form fields and query parameters naming another model change nothing."""
    inputs = edit_inputs()
    reference = decoded(post(serve_app, "edit", **inputs)).tobytes()
    response = requests.post(
        f"{serve_app.url}/api/edit?model_uri=/nonexistent&model=/nonexistent", files=inputs,
        data={"model_uri": "/nonexistent"}, timeout=TIMEOUT,
    )  # fmt: skip
    assert decoded(response).tobytes() == reference
    assert requests.get(f"{serve_app.url}/healthz?model=/x", timeout=TIMEOUT).json()["model"] == (
        serve_app.config.model_uri
    )
