"""Editor.run_batch and the typed input errors / upload limits the web service maps to HTTP statuses."""

from __future__ import annotations

import io

import numpy as np
import pytest
from editing_fixtures import face_mask, photo, write_tiny_checkpoint
from PIL import Image
from test_editor import TinyParser

from maskgan.editing import Editor, InputLimits
from maskgan.editing.editor import prepare_edit, prepare_parse, prepare_style_copy
from maskgan.editing.inputs import InputTooLarge, InvalidMask, NotAnImage, load_image, load_mask


def png(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def editor(tmp_path):
    write_tiny_checkpoint(str(tmp_path / "ckpt"))
    return Editor.from_checkpoint(str(tmp_path / "ckpt"), parser=TinyParser())


def test_a_mixed_batch_gives_each_request_what_it_gets_alone(editor):
    limits = editor.limits
    requests = [
        prepare_edit(photo((40, 24)), face_mask((40, 24)), face_mask((40, 24), grow=3), limits),
        prepare_parse(photo((20, 30), seed=2), limits),
        prepare_style_copy(face_mask((36, 20)), photo(seed=3), face_mask(), limits),
        prepare_edit(photo(seed=4), face_mask(), face_mask(grow=2), limits),
    ]
    calls = []
    editor.generator.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    together = editor.run_batch(requests)
    assert calls == [(3, 3, 32, 32)], "the three generator requests ran as one forward"
    alone = [editor.run(request) for request in requests]
    for batched, single, request in zip(together, alone, requests, strict=True):
        a, b = np.asarray(batched).astype(int), np.asarray(single).astype(int)
        assert a.shape == b.shape and a.shape[:2] == request.out_size[::-1]
        assert np.abs(a - b).max() <= 1
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[3]))


def test_the_byte_cap_is_checked_before_pillow_reads_anything():
    limits = InputLimits(max_bytes=100)
    with pytest.raises(InputTooLarge, match="max_bytes"):
        load_image("image", b"\0" * 101, limits)  # not even an image: refused by size first
    assert load_image("image", png(photo((4, 4))), InputLimits(max_bytes=10_000)).shape == (4, 4, 3)


def test_formats_limit_the_accepted_files():
    limits = InputLimits(formats=("PNG",))
    with pytest.raises(NotAnImage, match="JPEG file; accepted formats: PNG"):
        load_image("image", png(photo((8, 8)), "JPEG"), limits)
    with pytest.raises(NotAnImage, match="not an image"):
        load_image("image", b"GIF? no", limits)
    with pytest.raises(ValueError, match="formats"):
        InputLimits(formats=("png",))


def test_each_kind_of_bad_input_has_its_error_class():
    limits = InputLimits(max_pixels=64 * 64)
    with pytest.raises(InputTooLarge):
        load_image("image", png(photo((65, 64))), limits)
    bad_id = face_mask()
    bad_id[0, 0] = 19
    with pytest.raises(InvalidMask, match="class index 19"):
        load_mask("mask", png(bad_id), limits)
    with pytest.raises(InvalidMask, match="not a class colour"):
        load_mask("mask", png(np.full((4, 4, 3), 7, np.uint8)), limits)
    with pytest.raises(InvalidMask, match="sizes must match"):
        prepare_edit(photo((32, 32)), face_mask((32, 16)), face_mask((32, 16)), limits)
    for kind in (InputTooLarge, InvalidMask, NotAnImage):
        assert issubclass(kind, ValueError), "callers catching ValueError keep working"
