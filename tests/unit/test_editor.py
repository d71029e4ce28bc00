"""Editor: loads tiny checkpoints and a re-created released generator, wires G correctly, validates first."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from editing_fixtures import face_mask, lively, photo, reference_output, write_tiny_checkpoint
from PIL import Image
from released_reference import ReleasedGlobalGenerator, spread_style_bias_
from test_editing_inputs import header_only_png

from maskgan.editing import Editor, InputLimits
from maskgan.labels import label_to_color, one_hot
from maskgan.models.dmn import dmn_tiny


@pytest.fixture
def tiny(tmp_path):
    directory = str(tmp_path / "run" / "step_00000001")
    networks = write_tiny_checkpoint(directory)
    return directory, networks


def test_edit_is_g_of_edited_mask_given_the_original_pair(tiny):
    directory, networks = tiny
    editor = Editor.from_checkpoint(directory)
    image, mask, edited = photo(), face_mask(), face_mask(grow=3)
    out = np.asarray(editor.edit(image, mask, edited))
    expected = reference_output(networks["generator"], edited, mask, image)
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - expected).max() <= 1
    # The argument order matters: the mask-swapped call is a different picture.
    swapped = reference_output(networks["generator"], mask, edited, image)
    assert np.abs(swapped.astype(int) - expected).mean() > 2
    # The edit shows where the mask changed.
    unedited = reference_output(networks["generator"], mask, mask, image)
    changed = edited != mask
    assert np.abs(expected.astype(int) - unedited)[changed].mean() > 5


def test_loads_blender_and_mask_vae_when_present(tiny, tmp_path):
    directory, networks = tiny
    editor = Editor.from_checkpoint(directory)
    assert editor.source.kind == "checkpoint" and editor.source.stage == "ebst" and editor.source.step == 1
    for name in ("blender", "mask_vae"):
        ours, theirs = getattr(editor, name).state_dict(), networks[name].state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    bare = str(tmp_path / "dmn_only")
    write_tiny_checkpoint(bare, stage="dmn", blender=False, mask_vae=False)
    editor = Editor.from_checkpoint(bare)
    assert editor.blender is None and editor.mask_vae is None


def test_ema_generator_is_preferred(tmp_path):
    directory = str(tmp_path / "ema")
    networks = write_tiny_checkpoint(directory, ema=True)
    image, mask, edited = photo(), face_mask(), face_mask(grow=2)
    out = np.asarray(Editor.from_checkpoint(directory).edit(image, mask, edited)).astype(int)
    assert np.abs(out - reference_output(networks["generator_ema"], edited, mask, image)).max() <= 1
    assert np.abs(out - reference_output(networks["generator"], edited, mask, image)).mean() > 2


def test_a_run_folder_loads_its_latest_checkpoint(tmp_path):
    write_tiny_checkpoint(str(tmp_path / "run" / "step_00000002"), step=2, seed=5)
    write_tiny_checkpoint(str(tmp_path / "run" / "step_00000010"), step=10, seed=6)
    editor = Editor.load(str(tmp_path / "run"))
    assert editor.source.step == 10 and editor.source.uri.endswith("step_00000010")


def test_output_takes_the_input_size_and_masks_of_the_same_aspect_work(tiny):
    editor = Editor.from_checkpoint(tiny[0])
    image = photo((40, 48))  # (H, W): not square, not the model's 32 px
    mask, edited = face_mask((20, 24)), face_mask((20, 24), grow=2)  # half size, same aspect
    out = editor.edit(image, mask, edited)
    assert out.size == (48, 40) and out.mode == "RGB"
    assert np.asarray(out).std() > 10  # a picture, not a constant


def test_colour_masks_and_class_id_masks_give_the_same_edit(tiny, tmp_path):
    editor = Editor.from_checkpoint(tiny[0])
    image, mask, edited = photo(), face_mask(), face_mask(grow=3)
    by_ids = np.asarray(editor.edit(image, mask, edited))
    colour_path = tmp_path / "edited.png"
    Image.fromarray(label_to_color(edited)).save(colour_path)
    image_path = tmp_path / "face.png"
    Image.fromarray(image).save(image_path)
    by_colour = np.asarray(editor.edit(str(image_path), Image.fromarray(mask, "L"), str(colour_path)))
    np.testing.assert_array_equal(by_ids, by_colour)


def test_style_copy_draws_the_target_mask_in_the_reference_style(tiny):
    directory, networks = tiny
    editor = Editor.from_checkpoint(directory)
    target, reference_image, reference_mask = face_mask(grow=4), photo(seed=3), face_mask()
    out = editor.style_copy(target, reference_image, reference_mask)
    expected = reference_output(networks["generator"], target, reference_mask, reference_image)
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1
    # The output takes the target's size, whatever the reference's.
    resized = editor.style_copy(face_mask((64, 48)), photo((24, 24)), face_mask((24, 24)))
    assert resized.size == (48, 64)


class CallCounter:
    """A forward pre-hook counting generator calls: bad input must be refused before any."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1


def transparent_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (32, 32), (5, 5, 5, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def with_class(value: int) -> np.ndarray:
    mask = face_mask()
    mask[3, 7] = value
    return mask


@pytest.mark.parametrize(
    "image, mask, edited, message",
    [
        (photo(), face_mask((32, 30)), face_mask(), "mask is 30 x 32 but image is 32 x 32"),
        (photo(), face_mask(), face_mask((24, 32)), "edited_mask is 32 x 24 but mask is 32 x 32"),
        (photo(), face_mask(), with_class(19), r"edited_mask holds class index 19 at \(x=7, y=3\)"),
        (photo(), with_class(255), face_mask(), "mask holds class index 255"),
        (b"GIF89a-but-not-really", face_mask(), face_mask(), "image .* is not an image Pillow can read"),
        (photo(), face_mask(), b"\x00\x01garbage", "edited_mask .* is not an image"),
        (header_only_png(10_000, 10_000), face_mask(), face_mask(), "100.0 MP"),
        (photo(), face_mask(), header_only_png(10_000, 10_000), "edited_mask is 10000 x 10000"),
        (transparent_png(), face_mask(), face_mask(), "transparent pixels"),
        (photo().astype(np.float32), face_mask(), face_mask(), "dtype float32"),
    ],
)
def test_bad_edit_input_is_a_value_error_before_the_generator_runs(tiny, image, mask, edited, message):
    editor = Editor.from_checkpoint(tiny[0])
    counter = CallCounter(editor.generator)
    with pytest.raises(ValueError, match=message):
        editor.edit(image, mask, edited)
    assert counter.calls == 0
    editor.edit(photo(), face_mask(), face_mask())
    assert counter.calls == 1  # the hook does see a real call


def test_bad_style_copy_input_is_refused_before_the_generator_runs(tiny):
    editor = Editor.from_checkpoint(tiny[0])
    counter = CallCounter(editor.generator)
    with pytest.raises(ValueError, match="reference_mask is 16 x 32 but reference_image is 32 x 32"):
        editor.style_copy(face_mask(), photo(), face_mask((32, 16)))
    with pytest.raises(ValueError, match="target_mask holds class index 30"):
        editor.style_copy(with_class(30), photo(), face_mask())
    assert counter.calls == 0


def test_the_pixel_cap_comes_from_the_editor_limits(tiny):
    editor = Editor.from_checkpoint(tiny[0], limits=InputLimits(max_pixels=32 * 32 - 1))
    with pytest.raises(ValueError, match="over the editor's limit"):
        editor.edit(photo(), face_mask(), face_mask())


class TinyParser(torch.nn.Module):
    """A 1x1 conv image -> 19 logits; `resolution` tells the editor its input size."""

    resolution = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = lively(torch.nn.Conv2d(3, 19, 1), seed=9, std=1.0)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(image.shape))
        return self.conv(image)


def test_parse_without_a_parser_says_so(tiny):
    editor = Editor.from_checkpoint(tiny[0])
    with pytest.raises(ValueError, match="no face parser is loaded"):
        editor.parse(photo())


def test_parse_runs_the_parser_at_its_resolution_and_restores_the_size(tiny):
    parser = TinyParser()
    editor = Editor.from_checkpoint(tiny[0], parser=parser)
    image = photo((16, 16))
    ids = editor.parse(image)
    assert parser.seen == [(1, 3, 16, 16)]
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        expected = parser.conv(tensor).argmax(1)[0].numpy()
    np.testing.assert_array_equal(ids, expected)
    assert len(np.unique(ids)) > 1
    big = editor.parse(photo((40, 24)))
    assert big.shape == (40, 24) and big.dtype == np.uint8 and big.max() < 19


def test_a_checkpoint_without_a_generator_is_refused(tmp_path):
    from maskgan import config as config_lib
    from maskgan.models.mask_vae import MaskVAE, mask_vae_tiny
    from maskgan.training.checkpoint import write_checkpoint

    directory = str(tmp_path / "vae")
    meta = {"stage": "maskvae", "step": 3, "epoch": 0, "manifest_sha256": None,
            "config": {"model": config_lib.to_dict(mask_vae_tiny())}}  # fmt: skip
    write_checkpoint(directory, {}, weights={"mask_vae": MaskVAE(mask_vae_tiny()).state_dict()}, meta=meta)
    with pytest.raises(ValueError, match="stage 'maskvae'.* holds no generator .*networks: mask_vae"):
        Editor.from_checkpoint(directory)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    import json

    directory = tmp_path / "mismatch"
    write_tiny_checkpoint(str(directory))
    meta = json.loads((directory / "meta.json").read_text())
    meta["config"]["generator"]["base_channels"] = 16
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights/generator.pt do not fit the generator"):
        Editor.from_checkpoint(str(directory))


def test_a_missing_checkpoint_names_the_uri(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Editor.load(str(tmp_path / "nowhere"))


@pytest.mark.s3
def test_loads_a_checkpoint_from_s3(s3_bucket):
    bucket, storage_config = s3_bucket
    networks = write_tiny_checkpoint(
        f"{bucket}/runs/ebst/step_00000004", step=4, storage_config=storage_config
    )
    editor = Editor.from_checkpoint(f"{bucket}/runs/ebst", storage_config)
    assert editor.source.step == 4
    image, mask, edited = photo(), face_mask(), face_mask(grow=2)
    expected = reference_output(networks["generator"], edited, mask, image)
    assert np.abs(np.asarray(editor.edit(image, mask, edited)).astype(int) - expected).max() <= 1


def test_released_generator_edits_like_the_release(tmp_path):
    config = dmn_tiny()
    torch.manual_seed(0)
    released = spread_style_bias_(
        ReleasedGlobalGenerator(
            input_nc=19, output_nc=3, ngf=config.base_channels, n_downsampling=config.num_downsample,
            n_blocks=config.num_res_blocks, enc_dim=config.encoder_base_channels,
            enc_downsample=config.encoder_num_downsample,
        )
    ).eval()  # fmt: skip
    path = tmp_path / "latest_net_G.pth"
    torch.save(released.state_dict(), path)
    editor = Editor.from_released(path, config)
    assert editor.source.kind == "released" and editor.resolution == 32
    image, mask, edited = photo(), face_mask(), face_mask(grow=3)

    def hot(ids):
        return one_hot(torch.from_numpy(ids.astype(np.int64))[None])

    with torch.no_grad():
        expected = released(
            hot(edited), hot(mask), torch.from_numpy(image).permute(2, 0, 1)[None] / 127.5 - 1
        )
    expected = ((expected[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert expected.std() > 5
    out = np.asarray(editor.edit(image, mask, edited)).astype(int)
    assert np.abs(out - expected).max() <= 1
    # A released file of other widths than the preset is refused by name.
    with pytest.raises(ValueError, match="not a released MaskGAN GlobalGenerator"):
        Editor.from_released(path, dmn_tiny().__class__(**{**dmn_tiny().__dict__, "base_channels": 16}))


@pytest.mark.s3
def test_editor_bundle_exports_inference_weights_from_s3(s3_bucket, tmp_path):
    from maskgan.editing.pyfunc import export_editor_bundle

    bucket, storage_config = s3_bucket
    networks = write_tiny_checkpoint(
        f"{bucket}/ebst/step_00000003", step=3, ema=True, storage_config=storage_config
    )
    bundle = export_editor_bundle(f"{bucket}/ebst", str(tmp_path / "bundle"), storage_config)
    assert sorted(p.name for p in (tmp_path / "bundle" / "weights").iterdir()) == [
        "blender.pt", "generator.pt", "generator_ema.pt", "mask_vae.pt",
    ]  # fmt: skip
    editor = Editor.from_checkpoint(bundle)
    assert editor.source.step == 3
    image, mask, edited = photo(), face_mask(), face_mask(grow=2)
    expected = reference_output(networks["generator_ema"], edited, mask, image)
    assert np.abs(np.asarray(editor.edit(image, mask, edited)).astype(int) - expected).max() <= 1
