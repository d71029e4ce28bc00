"""Ray Train end to end on the tiny presets (2 workers on gloo where it matters), on a dataset made by
the preprocessing job: artefacts, resume, fault tolerance, the NaN guard, the manifest guard."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import mlflow
import pytest
import torch

from maskgan import config as config_lib
from maskgan.tracking import TrackingConfig
from maskgan.training import checkpoint as ckpt
from maskgan.training import mask_vae, ray_train

LOOP = {"max_steps": 4, "batch_size": 4, "log_every": 1, "image_every": 2, "checkpoint_every": 2,
        "val_every": 4, "val_batches": 1}  # fmt: skip


def tiny(module, preset: str, data_uri: str, **loop):
    """A preset pointed at the test dataset, with a short loop (log every step)."""
    base = module.PRESETS[preset]()
    return config_lib.merge(base, {"data": {"uri": data_uri}, "loop": {**LOOP, **loop}})


def ray_config(tmp_path, **kwargs) -> ray_train.RayTrainConfig:
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=f"file://{tmp_path}/mlartifacts"
    )
    values = {
        "num_workers": 2,
        "cpus_per_worker": 0.5,
        "storage_uri": str(tmp_path / "runs"),
        "tracking": tracking,
    }
    return ray_train.RayTrainConfig(**{**values, **kwargs})


def mlflow_runs(tracking: TrackingConfig, stage: str):
    client = mlflow.MlflowClient(tracking.tracking_uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.`maskgan.stage` = '{stage}'")
    return client, runs


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def checkpoint_steps(run_uri: str) -> list[int]:
    names = [
        name.removeprefix("checkpoint_") for name in os.listdir(run_uri) if name.startswith("checkpoint_")
    ]
    return sorted(int(name) for name in names if name.isdigit())


def assert_one_tracked_run(tracking, result, *, stage: str, loss_key: str):
    client, runs = mlflow_runs(tracking, stage)
    assert [run.info.run_id for run in runs] == [result.mlflow_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params, "the resolved config is logged as params"
    assert run.data.tags["maskgan.checkpoint_uri"] == result.checkpoint_uri
    assert len(run.data.tags["maskgan.manifest_sha256"]) == 64 and "maskgan.git_commit" in run.data.tags
    assert metric_steps(client, run.info.run_id, loss_key) == list(range(1, result.step + 1))
    for key in ("images_per_s", "data_wait_fraction"):
        assert key in run.data.metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert images and all(path.endswith(".png") for path in images)
    return run


def assert_checkpoint(result, networks: set[str]):
    meta = ckpt.read_meta(result.checkpoint_uri)
    assert meta["step"] == result.step and set(meta["networks"]) == networks
    for network in networks:
        weights = ckpt.load_weights(result.checkpoint_uri, network)  # weights_only=True
        assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, train_dataset):
    """MaskVAE and DMN trained once on 2 workers into one storage + MLflow (EBST's test reuses them)."""
    root = tmp_path_factory.mktemp("upstream")
    config = ray_config(root)
    vae = ray_train.train(tiny(mask_vae, "mask_vae_tiny", train_dataset), config)
    from maskgan.training import dmn

    gan = ray_train.train(tiny(dmn, "dmn_tiny", train_dataset), config)
    return config, vae, gan


def test_maskvae_trains_on_two_workers_with_checkpoints_and_one_mlflow_run(upstream):
    config, result, _ = upstream
    assert result.step == 4 and result.resumed_from_step is None
    assert result.checkpoint_uri == f"{config.storage_uri}/{result.run_name}/checkpoint_000000004"
    assert checkpoint_steps(result.run_uri) == [2, 4]  # every checkpoint_every steps, num_to_keep=2
    assert_checkpoint(result, {"mask_vae"})
    assert_one_tracked_run(config.tracking, result, stage="maskvae", loss_key="loss/total")


def test_dmn_trains_on_two_workers_with_checkpoints_and_one_mlflow_run(upstream):
    config, _, result = upstream
    assert result.step == 4
    assert_checkpoint(result, {"generator", "discriminator"})
    run = assert_one_tracked_run(config.tracking, result, stage="dmn", loss_key="loss/g_total")
    assert run.data.tags["maskgan.perceptual"] == "none"


def test_ebst_trains_from_upstream_runs_it_finds_finished(upstream, train_dataset, capsys):
    from maskgan.training import ebst
    from pipelines import train_ebst

    config, vae, gan = upstream
    loop_overrides = [f"loop.{key}={value}" for key, value in LOOP.items()]
    result = train_ebst.main(
        tiny(ebst, "ebst_tiny", train_dataset), config, refs={}, with_upstream=True,
        upstream_overrides=loop_overrides,
    )  # fmt: skip
    printed = capsys.readouterr().out
    # --with-upstream found both finished runs (same configs) and trained neither again.
    assert printed.count("finished earlier") == 2, printed
    assert f"EBST uses DMN from {gan.checkpoint_uri}" in printed
    assert f"EBST uses MaskVAE from {vae.checkpoint_uri}" in printed
    assert result.step == 4
    assert_checkpoint(result, {"generator", "discriminator", "blender", "mask_vae"})
    run = assert_one_tracked_run(config.tracking, result, stage="ebst", loss_key="loss/g_total")
    assert run.data.tags["maskgan.upstream.generator"] == gan.checkpoint_uri
    assert run.data.tags["maskgan.upstream.mask_vae"] == vae.checkpoint_uri


def test_resume_continues_at_next_step_with_the_same_data_in_the_same_mlflow_run(tmp_path, train_dataset):
    # One worker, batch 16: 2 steps per epoch; stopping after step 1 and going on to step 3 resumes
    # inside epoch 0 (one batch to skip) and crosses into epoch 1.
    whole = tiny(mask_vae, "mask_vae_tiny", train_dataset, max_steps=5, batch_size=16, checkpoint_every=1)
    straight = ray_train.train(whole, ray_config(tmp_path / "a", num_workers=1, run_key="straight"))

    def to(step):
        return dataclasses.replace(whole, loop=dataclasses.replace(whole.loop, max_steps=step))

    config = ray_config(tmp_path / "b", num_workers=1, run_key="resumed")
    first = ray_train.train(to(1), config)
    assert first.step == 1 and first.resumed_from_step is None
    second = ray_train.train(to(3), config)
    assert second.step == 3 and second.resumed_from_step == 1
    assert second.mlflow_run_id == first.mlflow_run_id
    client, runs = mlflow_runs(config.tracking, "maskvae")
    assert len(runs) == 1
    assert metric_steps(client, second.mlflow_run_id, "loss/total") == [1, 2, 3]  # none twice, none missing

    # A job stopped after checkpoint 4 was uploaded but before Ray Train registered it: Ray hands the
    # rerun checkpoint 3. The rerun must go on after step 4, not train step 4 again over the kept copy.
    run_folder, straight_folder = (os.path.dirname(r.checkpoint_uri) for r in (second, straight))
    unregistered = os.path.join(run_folder, "checkpoint_000000004")
    shutil.copytree(os.path.join(straight_folder, "checkpoint_000000004"), unregistered)
    kept = ckpt.read_meta(unregistered)
    third = ray_train.train(whole, config)
    assert third.step == 5 and third.resumed_from_step == 4
    assert ckpt.read_meta(unregistered) == kept  # not written again
    assert metric_steps(client, third.mlflow_run_id, "loss/total") == [1, 2, 3, 5]  # 4 ran in the other run

    # Same batches in the same order and the same RNG streams: the weights match the uninterrupted run.
    a = ckpt.load_weights(straight.checkpoint_uri, "mask_vae")
    b = ckpt.load_weights(third.checkpoint_uri, "mask_vae")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)

    again = ray_train.train(whole, config)  # a finished run is not trained again
    assert again.already_finished and again.step == 5 and again.checkpoint_uri == third.checkpoint_uri


def test_a_worker_that_dies_once_is_replaced_and_the_run_completes(tmp_path, train_dataset):
    stage_config = tiny(
        mask_vae, "mask_vae_tiny", train_dataset, max_steps=6, checkpoint_every=2, fail_at_step=4
    )
    config = ray_config(tmp_path, max_failures=1)
    result = ray_train.train(stage_config, config)
    assert result.step == 6
    assert result.resumed_from_step == 2  # only step 3 (after the last checkpoint) was run twice
    client, runs = mlflow_runs(config.tracking, "maskvae")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert set(metric_steps(client, result.mlflow_run_id, "loss/total")) == set(range(1, 7))


def test_non_finite_loss_stops_the_run_naming_step_and_loss_without_a_checkpoint(tmp_path, train_dataset):
    stage_config = config_lib.merge(
        tiny(mask_vae, "mask_vae_tiny", train_dataset, max_steps=6, checkpoint_every=1),
        {"kl_weight": float("inf"), "kl_warmup_steps": 0},
    )
    config = ray_config(tmp_path, max_failures=2)  # a NaN is not retried: it would only happen again
    with pytest.raises(ray_train.NonFiniteLossRunError, match=r"non-finite \S+ = (nan|inf) at step 1"):
        ray_train.train(stage_config, config)
    name, _ = ray_train.run_name(stage_config, config)
    assert checkpoint_steps(os.path.join(config.storage_uri, name)) == []
    _, runs = mlflow_runs(config.tracking, "maskvae")
    assert [run.info.status for run in runs] == ["FAILED"]


def test_a_dataset_without_manifest_or_with_another_schema_is_refused(tmp_path, train_dataset):
    broken = tmp_path / "broken"
    shutil.copytree(train_dataset, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ray_train.DatasetError, match=rf"{broken}.*schema_version 99 is not 1"):
        ray_train.train(tiny(mask_vae, "mask_vae_tiny", str(broken)), ray_config(tmp_path))
    (broken / "manifest.json").unlink()
    with pytest.raises(ray_train.DatasetError, match=rf"{broken} has no manifest.json"):
        ray_train.train(tiny(mask_vae, "mask_vae_tiny", str(broken)), ray_config(tmp_path))


def test_run_key_ignores_how_far_to_train_but_not_what_to_train(train_dataset):
    base = tiny(mask_vae, "mask_vae_tiny", train_dataset)
    longer = dataclasses.replace(base, loop=dataclasses.replace(base.loop, max_steps=99, log_every=3))
    other_lr = config_lib.merge(base, {"optimizer": {"lr": 1e-5}})
    assert ray_train.derive_run_key(longer) == ray_train.derive_run_key(base)
    assert ray_train.derive_run_key(other_lr) != ray_train.derive_run_key(base)


@pytest.mark.s3
def test_data_checkpoints_and_mlflow_artifacts_on_s3(tmp_path, ray_session, s3_bucket):
    import boto3
    from preprocess_helpers import tiny_config, write_raw

    from maskgan.data import preprocess

    bucket_uri, storage_config = s3_bucket
    write_raw(str(tmp_path / "raw"), num_images=40)
    data_uri = f"{bucket_uri}/parquet"
    preprocess.run(tiny_config(str(tmp_path / "raw"), data_uri, storage=storage_config))
    stage_config = config_lib.merge(
        tiny(mask_vae, "mask_vae_tiny", data_uri, max_steps=2),
        {"data": {"storage": {"endpoint_url": storage_config.endpoint_url, "region": "us-east-1"}}},
    )
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=f"{bucket_uri}/mlflow"
    )
    config = ray_train.RayTrainConfig(
        num_workers=1, storage_uri=f"{bucket_uri}/runs", storage=storage_config, tracking=tracking
    )
    result = ray_train.train(stage_config, config)

    assert result.checkpoint_uri == f"{bucket_uri}/runs/{result.run_name}/checkpoint_000000002"
    assert ckpt.read_meta(result.checkpoint_uri, storage_config)["step"] == 2
    assert ckpt.load_weights(result.checkpoint_uri, "mask_vae", storage_config)
    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket_uri.removeprefix("s3://"))["Contents"]}
    assert f"runs/{result.run_name}/{ray_train.RESULT_FILE}" in keys
    images = [k for k in keys if k.startswith("mlflow/") and "/images/" in k and k.endswith(".png")]
    assert images, sorted(keys)
    run = mlflow.MlflowClient(tracking.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["maskgan.checkpoint_uri"] == result.checkpoint_uri
    # A second submission of the same job finds the finished run on S3 and trains nothing.
    assert ray_train.train(stage_config, config).already_finished
