"""Loader augmentation and conversion on tiny arrays: the mirror table, flips, seeded draws, to_torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskgan import labels
from maskgan.data import augment, loader


def test_mirror_swaps_exactly_the_left_right_pairs():
    expected = list(range(labels.NUM_CLASSES))
    for left, right in [("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")]:
        a, b = labels.CLASS_INDEX[left], labels.CLASS_INDEX[right]
        expected[a], expected[b] = b, a
    assert labels.MIRROR.tolist() == expected
    assert (labels.CLASS_INDEX["l_eye"], labels.CLASS_INDEX["r_eye"]) == (4, 5)
    assert labels.MIRROR[labels.MIRROR].tolist() == list(range(labels.NUM_CLASSES))


def test_mirror_label_flips_columns_and_swaps_classes():
    label = np.array([[4, 0, 6], [9, 1, 13]], dtype=np.uint8)  # l_eye .. skin .. l_brow / r_ear .. hair
    assert labels.mirror_label(label).tolist() == [[7, 0, 5], [13, 1, 8]]


def test_flip_horizontal_only_touches_flipped_samples_and_not_its_input():
    rng = np.random.default_rng(0)
    batch = {
        "id": np.arange(3),
        "image": rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8),
        "label": rng.integers(0, labels.NUM_CLASSES, (3, 4, 5), dtype=np.uint8),
    }
    before = {key: value.copy() for key, value in batch.items()}
    coins = np.array([True, False, True])
    out = augment.flip_horizontal(batch, coins)
    for key in batch:
        np.testing.assert_array_equal(batch[key], before[key])
    for i, flipped in enumerate(coins):
        want_image = before["image"][i][:, ::-1] if flipped else before["image"][i]
        want_label = labels.MIRROR[before["label"][i][:, ::-1]] if flipped else before["label"][i]
        np.testing.assert_array_equal(out["image"][i], want_image)
        np.testing.assert_array_equal(out["label"][i], want_label)


def test_flip_coins_are_fair_per_seed_epoch_and_independent_of_batching():
    ids = np.arange(4000)
    coins = augment.flip_coins(ids, seed=1, epoch=0)
    assert 0.45 < coins.mean() < 0.55
    np.testing.assert_array_equal(augment.flip_coins(ids[::-1], seed=1, epoch=0), coins[::-1])
    assert (augment.flip_coins(ids, seed=1, epoch=1) != coins).mean() > 0.4
    assert (augment.flip_coins(ids, seed=2, epoch=0) != coins).mean() > 0.4
    assert augment.flip_coins(ids, seed=-1, epoch=0).shape == coins.shape  # negative seeds are fine


def test_shard_windows_cover_every_shard_once():
    windows = augment.shard_windows(10, 4, shuffle=True, seed=0, epoch=0)
    assert [len(w) for w in windows] == [4, 4, 2]
    assert sorted(i for w in windows for i in w) == list(range(10))
    assert augment.shard_windows(5, 2, shuffle=False, seed=0, epoch=0) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="shuffle_window"):
        augment.shard_windows(5, 0, shuffle=True, seed=0, epoch=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_to_torch_leaves_the_callers_tensors_unchanged(dtype):
    image = torch.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3).to(dtype)
    label = torch.randint(0, labels.NUM_CLASSES, (2, 3, 4))
    ids = torch.tensor([7, 8])
    batch = {"image": image, "label": label, "id": ids}
    saved = {key: value.clone() for key, value in batch.items()}
    out = loader.to_torch(batch)
    for key in batch:
        assert torch.equal(batch[key], saved[key]), key
    want = saved["image"].permute(0, 3, 1, 2).double() / 127.5 - 1
    assert out["image"].dtype == torch.float32 and out["image"].shape == (2, 3, 3, 4)
    assert torch.allclose(out["image"].double(), want, atol=1e-6)
    assert out["image"].data_ptr() != image.data_ptr()
