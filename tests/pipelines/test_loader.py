"""Loader round trip: what preprocessing wrote comes back as the documented torch batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from preprocess_helpers import MASK_SIZE, assert_reconciles, tiny_config, write_raw

from maskgan.data import loader, schema, synthetic
from maskgan.data.celebamask import DecodeConfig
from maskgan.data.preprocess import run


def expected_image(raw_root, sample_id, resolution):
    """The source JPEG, fully decoded and resized the way preprocessing does with fast decode off."""
    with Image.open(f"{raw_root}/{synthetic.IMAGE_DIR}/{sample_id}.jpg") as image:
        return np.asarray(image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC))


@pytest.mark.parametrize(("encoding", "tolerance"), [("raw", 0.0), ("png", 0.0), ("jpeg", 4.0)])
def test_round_trip_pixels_and_labels(tmp_path, ray_session, encoding, tolerance):
    raw = str(tmp_path / "raw")
    raw_config = write_raw(raw, num_images=6)
    decode = DecodeConfig(resolution=MASK_SIZE, mask_size=MASK_SIZE, fast_jpeg_decode=False)
    config = tiny_config(raw, str(tmp_path / "out"), image_encoding=encoding, decode=decode)
    manifest = run(config).manifest
    assert_reconciles(manifest)
    assert manifest.image_encoding == encoding
    seen = 0
    for split in ("train", "val", "test"):
        for batch in loader.iter_batches(str(tmp_path / "out"), split, 4):
            assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (
                3,
                MASK_SIZE,
                MASK_SIZE,
            )
            assert batch["image"].min() >= -1 and batch["image"].max() <= 1
            assert batch["label"].dtype == torch.int64 and batch["onehot"].shape[1] == 19
            assert torch.equal(batch["onehot"].argmax(1), batch["label"])
            for i, sample_id in enumerate(batch["id"].tolist()):
                # Labels are exact: the synthetic ground truth merged in the official order.
                np.testing.assert_array_equal(
                    batch["label"][i].numpy(), synthetic.expected_label(raw_config, sample_id)
                )
                # Pixels: what the source JPEG decodes and resizes to, up to the storage encoding.
                want = expected_image(raw, sample_id, MASK_SIZE)
                got = ((batch["image"][i].permute(1, 2, 0) + 1) * 127.5).round().numpy()
                assert np.abs(got - want.astype(np.float64)).mean() <= tolerance, encoding
                seen += 1
    assert seen == 6


def test_ray_path_equals_direct_path(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=10)
    assert_reconciles(run(tiny_config(raw, str(tmp_path / "out"))).manifest)
    direct = {
        int(i): (b["image"][j], b["label"][j])
        for b in loader.iter_batches(str(tmp_path / "out"), "train", 3)
        for j, i in enumerate(b["id"])
    }
    dataset = loader.ray_dataset(str(tmp_path / "out"), "train")
    via_ray = {
        int(i): (b["image"][j], b["label"][j])
        for b in loader.iter_ray_batches(dataset, 3)
        for j, i in enumerate(b["id"])
    }
    assert direct.keys() == via_ray.keys() and direct
    for key, (image, label) in direct.items():
        assert torch.equal(image, via_ray[key][0]) and torch.equal(label, via_ray[key][1])


def test_shuffle_is_seeded_and_complete(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=12)
    assert_reconciles(run(tiny_config(raw, str(tmp_path / "out"))).manifest)

    def order(seed):
        batches = loader.iter_batches(str(tmp_path / "out"), "train", 2, shuffle=True, seed=seed)
        return [int(i) for b in batches for i in b["id"]]

    plain = [int(i) for b in loader.iter_batches(str(tmp_path / "out"), "train", 2) for i in b["id"]]
    assert order(1) == order(1) and sorted(order(1)) == sorted(plain)
    assert order(1) != plain or order(2) != plain


def test_tampered_shard_is_detected(tmp_path, ray_session):
    raw = str(tmp_path / "raw")
    write_raw(raw, num_images=4)
    manifest = run(tiny_config(raw, str(tmp_path / "out"))).manifest
    assert_reconciles(manifest)
    shard = tmp_path / "out" / manifest.shards[0].path
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="does not match its manifest checksum"):
        for split in ("train", "val", "test"):
            list(loader.iter_batches(str(tmp_path / "out"), split, 2))


def test_image_encodings_round_trip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for encoding in ("raw", "png"):
        np.testing.assert_array_equal(
            schema.decode_image(schema.encode_image(image, encoding), encoding, 16), image
        )
    smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2)
    jpeg = schema.decode_image(schema.encode_image(smooth, "jpeg", 95), "jpeg", 16)
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3
    with pytest.raises(ValueError, match="not one of"):
        schema.encode_image(image, "webp")
    label = rng.integers(0, 19, (16, 16), dtype=np.uint8)
    encoded = schema.encode_label(label)
    assert len(encoded) < label.nbytes or label.nbytes < 512
    np.testing.assert_array_equal(schema.decode_label(encoded, 16), label)
