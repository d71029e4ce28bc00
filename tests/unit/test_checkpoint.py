"""Checkpoints: layout, atomic writes, local and S3 round trips, weights_only files, RNG restore, errors."""

from __future__ import annotations

import json
import os
import pickle
import random

import boto3
import numpy as np
import pytest
import torch
from torch import nn

from maskgan.training import checkpoint
from maskgan.training.checkpoint import (
    FORMAT_VERSION,
    latest_checkpoint,
    load_checkpoint_uri,
    load_torch_file,
    load_weights,
    read_checkpoint,
    read_meta,
    rng_state,
    save_torch_file,
    set_rng_state,
    write_checkpoint,
)

META = {"stage": "dmn", "step": 7, "epoch": 1, "config": {"loop": {"max_steps": 10}}, "manifest_sha256": "ab"}


def tiny_training_state(seed: int = 0) -> tuple[dict, dict]:
    """(state with a net, an Adam optimiser that has stepped and RNG states; weights per network)."""
    torch.manual_seed(seed)
    generator, discriminator = nn.Linear(4, 3), nn.Conv2d(3, 2, 3)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    generator(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {
        "networks": {"G": generator.state_dict(), "D": discriminator.state_dict()},
        "optimizers": {"G": optimizer.state_dict()},
        "step": 7,
        "rng": rng_state(),
    }
    return state, {"G": generator.state_dict(), "D": discriminator.state_dict()}


def assert_same_tensors(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_local_round_trip_layout_and_weights_only(tmp_path):
    state, weights = tiny_training_state()
    directory = str(tmp_path / "run" / "checkpoint_000007")
    write_checkpoint(directory, state, weights=weights, meta=META)

    assert sorted(os.listdir(directory)) == ["meta.json", "state.pt", "weights"]
    assert sorted(os.listdir(os.path.join(directory, "weights"))) == ["D.pt", "G.pt"]
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".")]  # no temp left
    meta = json.loads((tmp_path / "run" / "checkpoint_000007" / "meta.json").read_text())
    assert meta["networks"] == ["D", "G"] and meta["format_version"] == FORMAT_VERSION
    assert meta["step"] == 7 and meta["config"] == META["config"] and meta["created_at"]

    # The per-network files are plain tensors: the safe loader accepts them as they are.
    plain = torch.load(os.path.join(directory, "weights", "G.pt"), weights_only=True)
    assert_same_tensors(plain, weights["G"])
    assert_same_tensors(load_weights(directory, "D"), weights["D"])

    loaded, loaded_meta = read_checkpoint(directory)
    assert loaded_meta == meta
    assert_same_tensors(loaded["networks"]["G"], state["networks"]["G"])
    # Optimiser moments survive and load into a fresh optimiser.
    fresh = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    optimizer.load_state_dict(loaded["optimizers"]["G"])
    saved_moment = state["optimizers"]["G"]["state"][0]["exp_avg"]
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved_moment)
    assert loaded["step"] == 7


def test_state_file_is_not_weights_only_but_weights_files_are(tmp_path):
    state, weights = tiny_training_state()
    write_checkpoint(str(tmp_path / "c"), state, weights=weights, meta=META)
    # state.pt pickles RNG tuples and numpy arrays: the safe loader must refuse it, so nobody mistakes it
    # for a file that is safe to open from an untrusted source.
    with pytest.raises(ValueError, match="weights_only=True"):
        load_torch_file(str(tmp_path / "c" / "state.pt"))


def test_write_refuses_to_replace_a_checkpoint_unless_asked(tmp_path):
    state, weights = tiny_training_state()
    directory = str(tmp_path / "c")
    write_checkpoint(directory, state, weights=weights, meta=META)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_checkpoint(directory, state, weights=weights, meta={**META, "step": 8})
    assert read_meta(directory)["step"] == 7
    write_checkpoint(directory, state, weights={"G": weights["G"]}, meta={**META, "step": 8}, overwrite=True)
    assert read_meta(directory)["step"] == 8 and read_meta(directory)["networks"] == ["G"]
    assert sorted(os.listdir(os.path.join(directory, "weights"))) == ["G.pt"]  # old D gone with the old dir
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_write_fills_an_existing_empty_directory(tmp_path):
    # Ray Train hands rank 0 a fresh temporary directory: writing into it must work.
    directory = tmp_path / "fresh"
    directory.mkdir()
    state, weights = tiny_training_state()
    write_checkpoint(str(directory), state, weights=weights, meta=META)
    assert read_meta(str(directory))["step"] == 7


def test_interrupted_write_leaves_nothing_readable(tmp_path, monkeypatch):
    state, weights = tiny_training_state()
    directory = str(tmp_path / "c")

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # The rename that publishes the checkpoint is the last step: fail there.
    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(directory, state, weights=weights, meta=META)
    assert os.listdir(tmp_path) == []  # no checkpoint and no temporary folder left behind


def test_directory_without_meta_is_refused_as_incomplete(tmp_path):
    state, weights = tiny_training_state()
    directory = tmp_path / "c"
    write_checkpoint(str(directory), state, weights=weights, meta=META)
    (directory / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no meta.json: the checkpoint is incomplete"):
        load_checkpoint_uri(str(directory))
    with pytest.raises(FileNotFoundError, match=str(directory)):
        load_weights(str(directory), "G")


def test_missing_checkpoint_names_the_uri(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'nowhere'}"):
        read_meta(str(tmp_path / "nowhere"))


def test_wrong_format_version_is_refused(tmp_path):
    state, weights = tiny_training_state()
    directory = tmp_path / "c"
    write_checkpoint(str(directory), state, weights=weights, meta=META)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match=rf"{directory} has format_version 99; this code reads 1"):
        load_checkpoint_uri(str(directory))


def test_missing_network_names_what_is_there(tmp_path):
    state, weights = tiny_training_state()
    write_checkpoint(str(tmp_path / "c"), state, weights=weights, meta=META)
    with pytest.raises(ValueError, match=r"has no network 'blender'; it holds D, G"):
        load_weights(str(tmp_path / "c"), "blender")


def test_a_listed_weights_file_that_vanished_is_reported(tmp_path):
    state, weights = tiny_training_state()
    write_checkpoint(str(tmp_path / "c"), state, weights=weights, meta=META)
    os.remove(tmp_path / "c" / "weights" / "D.pt")
    # meta.json lists every file's size: the folder reads as incomplete (as a copy cut short would).
    with pytest.raises(FileNotFoundError, match=r"incomplete .*weights/D.pt \(0 of \d+ bytes\)"):
        load_checkpoint_uri(str(tmp_path / "c"))


@pytest.mark.parametrize(
    ("weights", "meta", "message"),
    [
        ({}, META, "at least one network"),
        ({"G/../x": {}}, META, "plain file name"),
        ({"G": {"w": 1.0}}, META, "non-tensors"),
        ({"G": {"module.w": torch.zeros(1)}}, META, "unwrap DDP"),
        ({"G": {"w": torch.zeros(1)}}, {"stage": "dmn", "step": 1}, "lacks epoch, config, manifest_sha256"),
        ({"G": {"w": torch.zeros(1)}}, {**META, "config": {"x": object()}}, "JSON-serialisable"),
    ],
)
def test_bad_inputs_are_refused_before_writing(tmp_path, weights, meta, message):
    with pytest.raises(ValueError, match=message):
        write_checkpoint(str(tmp_path / "c"), {}, weights=weights, meta=meta)
    assert not os.path.exists(tmp_path / "c")


@pytest.mark.s3
def test_s3_round_trip_and_incomplete_upload(s3_bucket):
    bucket_uri, storage_config = s3_bucket
    uri = f"{bucket_uri}/runs/dmn-key/checkpoint_000007"
    state, weights = tiny_training_state()
    write_checkpoint(uri, state, weights=weights, meta=META, storage_config=storage_config)

    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    bucket = bucket_uri.removeprefix("s3://")
    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    prefix = "runs/dmn-key/checkpoint_000007/"
    assert keys == [prefix + name for name in ("meta.json", "state.pt", "weights/D.pt", "weights/G.pt")]

    loaded, meta = load_checkpoint_uri(uri, storage_config)
    assert meta["stage"] == "dmn" and meta["networks"] == ["D", "G"]
    assert_same_tensors(loaded["networks"]["D"], weights["D"])
    assert_same_tensors(load_weights(uri, "G", storage_config), weights["G"])

    with pytest.raises(FileExistsError, match=uri):
        write_checkpoint(uri, state, weights=weights, meta=META, storage_config=storage_config)
    # Overwriting with fewer networks leaves no stale weights behind.
    write_checkpoint(uri, state, weights={"G": weights["G"]}, meta={**META, "step": 9},
                     storage_config=storage_config, overwrite=True)  # fmt: skip
    # (pyarrow leaves empty "folder/" marker objects when it empties a prefix: not files, ignored.)
    listing = client.list_objects_v2(Bucket=bucket)["Contents"]
    keys = sorted(item["Key"] for item in listing if not item["Key"].endswith("/"))
    assert keys == [prefix + name for name in ("meta.json", "state.pt", "weights/G.pt")]
    assert read_meta(uri, storage_config)["step"] == 9
    client.delete_object(Bucket=bucket, Key=prefix + "meta.json")
    with pytest.raises(FileNotFoundError, match=f"{uri} has no meta.json"):
        load_checkpoint_uri(uri, storage_config)
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {bucket_uri}/runs/other"):
        read_meta(f"{bucket_uri}/runs/other", storage_config)


@pytest.mark.s3
def test_an_s3_checkpoint_reads_without_a_working_directory(s3_bucket, tmp_path, monkeypatch):
    """A Ray job's driver may outlive its working directory: S3 paths must never be resolved against it."""
    bucket_uri, storage_config = s3_bucket
    run = f"{bucket_uri}/runs/dmn-gone"
    state, weights = tiny_training_state()
    write_checkpoint(f"{run}/checkpoint_000000004", state, weights=weights, meta={**META, "step": 4},
                     storage_config=storage_config)  # fmt: skip
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # os.getcwd() now raises FileNotFoundError

    assert read_meta(f"{run}/checkpoint_000000004", storage_config)["step"] == 4
    assert latest_checkpoint(run, storage_config) == f"{run}/checkpoint_000000004"
    loaded, _ = load_checkpoint_uri(f"{run}/checkpoint_000000004", storage_config)
    assert_same_tensors(loaded["networks"]["D"], weights["D"])


@pytest.mark.s3
def test_torch_file_helpers_reach_s3(s3_bucket):
    bucket_uri, storage_config = s3_bucket
    save_torch_file({"w": torch.arange(3.0)}, f"{bucket_uri}/weights/x.pt", storage_config)
    loaded = load_torch_file(f"{bucket_uri}/weights/x.pt", storage_config=storage_config)
    assert torch.equal(loaded["w"], torch.arange(3.0))
    with pytest.raises(FileNotFoundError, match=f"no file at {bucket_uri}/weights/y.pt"):
        load_torch_file(f"{bucket_uri}/weights/y.pt", storage_config=storage_config)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randint(9, (2,)).tolist()


def test_rng_state_restore_repeats_the_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()  # move away from the seeded start: the restore must not merely re-seed
    saved = rng_state()
    first = draws()
    assert draws() != first  # the generators really advance
    # Through a checkpoint, as a resumed run gets it.
    write_checkpoint(str(tmp_path / "c"), {"rng": saved}, weights={"G": {"w": torch.zeros(1)}}, meta=META)
    state, _ = read_checkpoint(str(tmp_path / "c"))
    set_rng_state(state["rng"])
    assert draws() == first


def test_set_rng_state_rejects_a_foreign_dict():
    with pytest.raises(ValueError, match="lacks python, numpy"):
        set_rng_state({"torch": torch.get_rng_state()})


def test_load_torch_file_accepts_bytes_and_refuses_pickled_objects(tmp_path):
    assert torch.equal(load_torch_file(checkpoint.torch_bytes({"w": torch.ones(2)}))["w"], torch.ones(2))
    path = tmp_path / "evil.pt"
    save_torch_file({"f": pickle.loads}, str(path))  # a callable: only a full unpickler would rebuild it
    with pytest.raises(ValueError, match=f"could not torch.load {path}"):
        load_torch_file(str(path))
    assert load_torch_file(str(path), weights_only=False)["f"] is pickle.loads


def test_checkpoint_module_is_the_only_torch_save_and_load():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    offenders = []
    for folder in ("maskgan", "pipelines"):
        for directory, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                path = os.path.join(directory, name)
                if name.endswith(".py") and not path.endswith(os.path.join("training", "checkpoint.py")):
                    text = open(path, encoding="utf-8").read()
                    if "torch.save(" in text or "torch.load(" in text:
                        offenders.append(os.path.relpath(path, root))
    assert offenders == []


def test_latest_checkpoint_picks_the_highest_complete_step(tmp_path):
    run = tmp_path / "storage" / "dmn-key"
    state, weights = tiny_training_state()
    for step in (2, 10, 4):
        write_checkpoint(str(run / f"checkpoint_{step}"), state, weights=weights, meta={**META, "step": step})
    # An interrupted write (our hidden temporary folder still holding meta.json) and an incomplete one.
    write_checkpoint(str(run / ".tmp-checkpoint_99"), state, weights=weights, meta={**META, "step": 99})
    write_checkpoint(str(run / "checkpoint_50"), state, weights=weights, meta={**META, "step": 50})
    os.remove(run / "checkpoint_50" / "meta.json")
    other = tmp_path / "storage" / "maskvae-key" / "checkpoint_77"
    write_checkpoint(str(other), state, weights=weights, meta={**META, "stage": "maskvae", "step": 77})

    assert checkpoint.latest_checkpoint(str(run)) == str(run / "checkpoint_10")
    assert checkpoint.latest_checkpoint(str(run / "checkpoint_4")) == str(run / "checkpoint_4")
    assert checkpoint.resolve_checkpoint(str(tmp_path / "storage"), stage="dmn") == str(run / "checkpoint_10")
    assert checkpoint.resolve_checkpoint(str(tmp_path / "storage")) == str(other)
    assert checkpoint.latest_checkpoint(str(run / "checkpoint_4"), stage="ebst") is None
    message = rf"no complete checkpoint of stage 'ebst' at or under {run.parent}"
    with pytest.raises(FileNotFoundError, match=message):
        checkpoint.resolve_checkpoint(str(tmp_path / "storage"), stage="ebst")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_state_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    net = nn.Linear(4, 3).cuda()
    saved = rng_state()
    first = torch.rand(3, device="cuda").tolist()
    write_checkpoint(str(tmp_path / "c"), {"rng": saved, "net": net.state_dict()},
                     weights={"G": net.state_dict()}, meta=META)  # fmt: skip
    assert torch.load(tmp_path / "c" / "weights" / "G.pt", weights_only=True)["weight"].device.type == "cpu"
    state, _ = load_checkpoint_uri(str(tmp_path / "c"), map_location="cuda")
    assert state["net"]["weight"].is_cuda
    set_rng_state(state["rng"])  # torch's CPU state arrives on CUDA here: it must still restore
    assert torch.rand(3, device="cuda").tolist() == first
