"""The training input: cross-shard shuffling, flips, shard verification, both loader paths agreeing.

One dataset (module scope) whose train split has many shards of ~2 rows, so that "mixes shards" and
"shuffles shard order" can fail: with one shard per split every order looks shuffled.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from preprocess_helpers import tiny_config, write_raw

from maskgan import labels
from maskgan.data import loader, schema
from maskgan.data.preprocess import run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_session):
    """(output path, manifest, {id: index of its train shard}) with >= 6 train shards."""
    root = tmp_path_factory.mktemp("multi-shard")
    write_raw(str(root / "raw"), num_images=24)
    manifest = run(tiny_config(str(root / "raw"), str(root / "out"), shard_target_mb=0.005)).manifest
    train = manifest.shards_of("train")
    assert len(train) >= 6, "the fixture must give the train split several shards"
    shard_of = {
        int(sample_id): index
        for index, shard in enumerate(train)
        for sample_id in pq.read_table(root / "out" / shard.path, columns=["id"])["id"].to_pylist()
    }
    return str(root / "out"), manifest, shard_of


def direct_ids(out, **kwargs):
    return [int(i) for batch in loader.iter_batches(out, "train", 2, **kwargs) for i in batch["id"]]


def ray_ids(dataset, batch_size=2):
    return [int(i) for batch in loader.iter_ray_batches(dataset, batch_size) for i in batch["id"]]


def shard_runs(ids, shard_of):
    """How many maximal runs of consecutive rows come from the same shard."""
    shards = [shard_of[i] for i in ids]
    return 1 + sum(a != b for a, b in zip(shards, shards[1:], strict=False))


def appearance_order(ids, shard_of):
    """Shards in the order their first row appears."""
    return list(dict.fromkeys(shard_of[i] for i in ids))


def test_direct_shuffle_mixes_rows_across_shards(dataset):
    out, manifest, shard_of = dataset
    num_shards = len(manifest.shards_of("train"))
    for seed in range(4):
        ids = direct_ids(out, shuffle=True, seed=seed)
        assert sorted(ids) == sorted(shard_of)
        # Rows of one shard are no longer contiguous: more runs than shards.
        assert shard_runs(ids, shard_of) > num_shards, seed
    # A batch of 4 (two shards' worth) holds rows of at least 3 shards for most seeds.
    spans = [
        len(
            {shard_of[int(i)] for i in next(loader.iter_batches(out, "train", 4, shuffle=True, seed=s))["id"]}
        )
        for s in range(6)
    ]
    assert sum(span >= 3 for span in spans) >= 3, spans


@pytest.mark.parametrize("path", ["direct", "ray"])
def test_shard_order_is_shuffled_per_seed_and_epoch(dataset, path):
    out, manifest, shard_of = dataset
    manifest_order = list(range(len(manifest.shards_of("train"))))

    def order(seed, epoch):
        # shuffle_window=1: rows mix only within a shard, so only a shuffled shard order moves shards.
        if path == "direct":
            ids = direct_ids(out, shuffle=True, seed=seed, epoch=epoch, shuffle_window=1)
        else:
            ids = ray_ids(loader.ray_dataset(out, "train", seed=seed, shuffle_window=1, start_epoch=epoch))
        assert sorted(ids) == sorted(shard_of)
        return appearance_order(ids, shard_of)

    orders = {(seed, epoch): order(seed, epoch) for seed, epoch in [(0, 0), (1, 0), (0, 1)]}
    assert all(o != manifest_order for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 3  # another seed or epoch, another order
    assert order(1, 0) == orders[(1, 0)]  # same seed and epoch, same order
    # Without shuffle the shards come in manifest order.
    plain = direct_ids(out) if path == "direct" else ray_ids(loader.ray_dataset(out, "train", shuffle=False))
    assert appearance_order(plain, shard_of) == manifest_order


def test_direct_shuffle_is_reproducible_per_seed_and_epoch(dataset):
    out, _, _ = dataset
    first = direct_ids(out, shuffle=True, seed=5, epoch=2)
    assert first == direct_ids(out, shuffle=True, seed=5, epoch=2)
    assert first != direct_ids(out, shuffle=True, seed=5, epoch=3)
    assert first != direct_ids(out, shuffle=True, seed=6, epoch=2)


def test_ray_passes_are_epochs_matching_the_direct_path(dataset):
    """Pass k of one Ray dataset = epoch start_epoch + k of iter_batches: same rows, order and flips."""
    out, _, shard_of = dataset
    ray_dataset = loader.ray_dataset(out, "train", seed=3, flip=True, start_epoch=1)
    passes = [list(loader.iter_ray_batches(ray_dataset, 4)) for _ in range(2)]
    for epoch, batches in zip((1, 2), passes, strict=True):
        direct = list(loader.iter_batches(out, "train", 4, shuffle=True, flip=True, seed=3, epoch=epoch))
        assert [b["id"].tolist() for b in batches] == [b["id"].tolist() for b in direct]
        for got, want in zip(batches, direct, strict=True):
            assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    ids = [[int(i) for b in batches for i in b["id"]] for batches in passes]
    assert ids[0] != ids[1] and sorted(ids[0]) == sorted(ids[1]) == sorted(shard_of)


def test_train_batches_under_streaming_split(dataset):
    """The Ray Train path: ingest_options + streaming_split; one call per epoch, seeded local shuffle."""
    out, _, shard_of = dataset

    def epochs(seed, shuffle_buffer):
        ray_dataset = loader.ray_dataset(out, "train", seed=seed)
        ray_dataset.context.execution_options = loader.ingest_options()  # what DataConfig does
        (shard,) = ray_dataset.streaming_split(1, equal=True)
        return [
            [
                int(i)
                for b in loader.train_batches(
                    shard, 4, seed=seed, epoch=epoch, shuffle_buffer=shuffle_buffer, drop_last=False
                )
                for i in b["id"]
            ]
            for epoch in range(2)
        ]

    plain = epochs(7, shuffle_buffer=0)
    # Each iteration of the split is the next epoch of the dataset, as in iter_batches.
    assert plain == [direct_ids(out, shuffle=True, seed=7, epoch=epoch) for epoch in range(2)]
    buffered = epochs(7, shuffle_buffer=8)
    assert buffered == epochs(7, shuffle_buffer=8)  # reproducible with the local buffer too
    assert buffered[0] != plain[0] and sorted(buffered[0]) == sorted(shard_of)
    assert buffered[0] != buffered[1]


def test_flip_mirrors_image_and_swaps_left_right_classes(dataset):
    out, _, _ = dataset
    plain = {
        int(i): (b["image"][j], b["label"][j])
        for b in loader.iter_batches(out, "train", 4)
        for j, i in enumerate(b["id"])
    }
    assert {
        int(i): (b["image"][j], b["label"][j])
        for b in loader.iter_batches(out, "train", 4, flip=False, seed=1)
        for j, i in enumerate(b["id"])
    }.keys() == plain.keys()
    flipped = swapped = 0
    for batch in loader.iter_batches(out, "train", 4, flip=True, seed=1, shuffle=True):
        for j, sample_id in enumerate(batch["id"].tolist()):
            image, label = plain[sample_id]
            if torch.equal(batch["label"][j], label):
                assert torch.equal(batch["image"][j], image)  # not flipped: untouched
                continue
            flipped += 1
            # The label is the mirror-permuted, horizontally flipped original; the image flips with it.
            want = torch.from_numpy(labels.mirror_label(label.numpy()).astype(np.int64))
            assert torch.equal(batch["label"][j], want)
            assert torch.equal(batch["image"][j], image.flip(-1))
            assert torch.equal(batch["onehot"][j].argmax(0), want)
            swapped += int(not torch.equal(want, label.flip(-1)))  # left/right classes really moved
    assert 0 < flipped < len(plain)
    assert swapped > 0, "the synthetic faces have eyes/brows/ears: the class swap must show"


def test_flip_false_changes_nothing(dataset):
    out, _, _ = dataset
    for a, b in zip(
        loader.iter_batches(out, "train", 4, shuffle=True, seed=2),
        loader.iter_batches(out, "train", 4, shuffle=True, seed=2, flip=False),
        strict=True,
    ):
        assert all(torch.equal(a[key], b[key]) for key in a)


def error_text(error: BaseException) -> str:
    """Ray wraps task errors: the message of the whole cause chain."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("verify", [True, False])
def test_ray_path_refuses_a_shard_swapped_from_another_split(tmp_path, dataset, verify):
    source, manifest, _ = dataset
    out = tmp_path / "out"
    shutil.copytree(source, out)
    train_shard, val_shard = manifest.shards_of("train")[1], manifest.shards_of("val")[0]
    shutil.copyfile(out / val_shard.path, out / train_shard.path)
    with pytest.raises(Exception) as caught:  # noqa: PT011 (a Ray wrapper around ShardMismatchError)
        ray_ids(loader.ray_dataset(str(out), "train", verify=verify))
    text = error_text(caught.value)
    assert train_shard.path in text and "rerun preprocess with --overwrite" in text
    with pytest.raises(loader.ShardMismatchError, match="rerun preprocess with --overwrite"):
        direct_ids(str(out), verify=verify)


def test_read_shard_checks_split_column_and_row_count(tmp_path, dataset):
    """A swap that keeps size and checksum consistent (a stale manifest entry) is still refused."""
    source, manifest, _ = dataset
    root = loader.storage.resolve(source)
    val = manifest.shards_of("val")[0]
    as_train = schema.ShardInfo(**{**val.__dict__, "split": "train"})
    with pytest.raises(loader.ShardMismatchError, match=r"holds rows of split val.*--overwrite"):
        loader.read_shard(root, as_train)
    more_rows = schema.ShardInfo(**{**val.__dict__, "num_rows": val.num_rows + 1})
    with pytest.raises(loader.ShardMismatchError, match=rf"has {val.num_rows} rows, the manifest says"):
        loader.read_shard(root, more_rows)
    assert loader.read_shard(root, val).num_rows == val.num_rows


def test_manifest_missing_or_other_schema_version_is_refused(tmp_path, dataset):
    source, _, _ = dataset
    out = tmp_path / "out"
    shutil.copytree(source, out)
    manifest_path = out / schema.MANIFEST_NAME
    text = manifest_path.read_text()
    manifest_path.write_text(
        text.replace(f'"schema_version": {schema.SCHEMA_VERSION}', '"schema_version": 99')
    )
    for read in (
        lambda: next(loader.iter_batches(str(out), "train", 2)),
        lambda: loader.ray_dataset(str(out), "train"),
    ):
        with pytest.raises(ValueError, match="schema_version") as caught:
            read()
        message = str(caught.value)
        assert "99" in message and f"schema_version {schema.SCHEMA_VERSION}" in message
        assert str(manifest_path) in message and "--overwrite" in message
    manifest_path.unlink()
    with pytest.raises(loader.DatasetNotReady, match="preprocessing has not finished"):
        loader.ray_dataset(str(out), "train")
