"""The same preprocessing code against a real S3 API: moto in server mode on 127.0.0.1."""

from __future__ import annotations

import dataclasses

import boto3
import pytest
from preprocess_helpers import MASK_SIZE, assert_reconciles, tiny_config, write_raw

from maskgan.data import defects, loader, schema, synthetic
from maskgan.data.preprocess import PreprocessError, run
from maskgan.storage import StorageConfig, StorageError

pytestmark = pytest.mark.s3


def test_s3_run_matches_the_local_run(tmp_path, ray_session, s3_bucket):
    bucket_uri, storage_config = s3_bucket
    raw_s3, out_s3 = f"{bucket_uri}/raw", f"{bucket_uri}/parquet"
    raw_config = write_raw(raw_s3, num_images=10, storage_config=storage_config)
    defects.inject_defect(raw_s3, 3, "truncated_jpeg", storage_config)
    write_raw(str(tmp_path / "raw"), num_images=10)
    defects.inject_defect(str(tmp_path / "raw"), 3, "truncated_jpeg")

    s3_result = run(tiny_config(raw_s3, out_s3, storage=storage_config, max_bad_fraction=0.2))
    local_result = run(tiny_config(str(tmp_path / "raw"), str(tmp_path / "out"), max_bad_fraction=0.2))
    assert s3_result.manifest.counts == local_result.manifest.counts
    assert_reconciles(s3_result.manifest, storage_config)
    assert_reconciles(local_result.manifest)
    assert [q.id for q in s3_result.manifest.quarantined] == [3]

    # The objects are really in the bucket, and the manifest was written.
    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    bucket = bucket_uri.removeprefix("s3://")
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix="parquet/")["Contents"]}
    assert f"parquet/{schema.MANIFEST_NAME}" in keys and f"parquet/{schema.QUARANTINE_NAME}" in keys
    assert {k for k in keys if k.endswith(".parquet")} == {
        f"parquet/{s.path}" for s in s3_result.manifest.shards
    }

    # Same pixels and labels from S3 as from local disk, and labels equal the synthetic ground truth.
    for split in ("train", "val", "test"):
        s3_batches = list(loader.iter_batches(out_s3, split, 4, storage_config=storage_config))
        local_batches = list(loader.iter_batches(str(tmp_path / "out"), split, 4))
        assert len(s3_batches) == len(local_batches)
        for a, b in zip(s3_batches, local_batches, strict=True):
            assert a["id"].tolist() == b["id"].tolist()
            assert (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()
            for i, sample_id in enumerate(a["id"].tolist()):
                expected = synthetic.expected_label(raw_config, sample_id)
                assert expected.shape == (MASK_SIZE, MASK_SIZE)
                assert (a["label"][i].numpy() == expected).all()

    # Rerun against S3 is a no-op.
    assert run(tiny_config(raw_s3, out_s3, storage=storage_config, max_bad_fraction=0.2)).skipped


def test_ray_dataset_reads_s3_shards_and_credentials_stay_secret(ray_session, s3_bucket, aws_env):
    bucket_uri, storage_config = s3_bucket
    # Credentials given in the config (not only the environment) must never be written anywhere.
    storage_config = dataclasses.replace(
        storage_config,
        access_key_id=aws_env["AWS_ACCESS_KEY_ID"],
        secret_access_key=aws_env["AWS_SECRET_ACCESS_KEY"],
    )
    write_raw(f"{bucket_uri}/raw", num_images=8, storage_config=storage_config)
    manifest = run(tiny_config(f"{bucket_uri}/raw", f"{bucket_uri}/out", storage=storage_config)).manifest
    assert_reconciles(manifest, storage_config)
    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    bucket = bucket_uri.removeprefix("s3://")
    text = client.get_object(Bucket=bucket, Key=f"out/{schema.MANIFEST_NAME}")["Body"].read().decode()
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in text and aws_env["AWS_ACCESS_KEY_ID"] not in text
    assert '"endpoint_url"' in text  # the rest of the storage config is recorded
    dataset = loader.ray_dataset(f"{bucket_uri}/out", "train", storage_config)
    batches = list(loader.iter_ray_batches(dataset, batch_size=4))
    assert sum(len(b["id"]) for b in batches) == manifest.counts["train"]
    assert batches[0]["onehot"].shape[1:] == (19, MASK_SIZE, MASK_SIZE)


def test_unreachable_endpoint_fails_fast_with_a_fix(ray_session):
    config = StorageConfig(endpoint_url="http://127.0.0.1:9", connect_timeout_s=1, request_timeout_s=2)
    with pytest.raises(StorageError, match=r"could not reach s3://nowhere/.*endpoint.*reachable") as error:
        run(tiny_config("s3://nowhere/raw", "s3://nowhere/out", storage=config))
    assert "testing-secret-key" not in str(error.value)


def test_missing_source_and_output_buckets_are_said_as_such(tmp_path, s3_bucket):
    bucket_uri, storage_config = s3_bucket
    write_raw(f"{bucket_uri}/raw", num_images=2, storage_config=storage_config)
    with pytest.raises(StorageError, match=r"the source bucket s3://no-such-source does not exist"):
        run(tiny_config("s3://no-such-source/raw", str(tmp_path / "out"), storage=storage_config))
    assert not (tmp_path / "out").exists()
    with pytest.raises(StorageError, match=r"the output bucket s3://no-such-output does not exist"):
        run(tiny_config(f"{bucket_uri}/raw", "s3://no-such-output/parquet", storage=storage_config))
    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket_uri.removeprefix("s3://"))["Contents"]}
    assert all(key.startswith("raw/") for key in keys)  # nothing written anywhere


def test_s3_overwrite_keeps_a_persons_objects_and_retires_old_shards(s3_bucket):
    bucket_uri, storage_config = s3_bucket
    bucket = bucket_uri.removeprefix("s3://")
    write_raw(f"{bucket_uri}/raw", num_images=6, storage_config=storage_config)
    config = tiny_config(f"{bucket_uri}/raw", f"{bucket_uri}/out/", storage=storage_config)
    old = run(config).manifest
    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="out/train/mine.txt", Body=b"a person's object")
    with pytest.raises(PreprocessError, match=r"s3://.*/out/train/mine\.txt"):
        run(dataclasses.replace(config, jpeg_quality=80), overwrite=True)
    client.delete_object(Bucket=bucket, Key="out/train/mine.txt")
    # The same output spelled differently is the same run.
    assert run(dataclasses.replace(config, output_uri=f"{bucket_uri}//out/x/..")).skipped
    new = run(dataclasses.replace(config, jpeg_quality=80), overwrite=True).manifest
    assert_reconciles(new, storage_config)
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert {k for k in keys if k.endswith(".parquet")} == {f"out/{s.path}" for s in new.shards}
    assert not {f"out/{s.path}" for s in old.shards} & keys
