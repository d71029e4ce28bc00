"""Multi-node, simulated on one machine: two raylets on 127.0.0.1 (one CPU each), data, checkpoints and
MLflow artefacts on the moto S3 server, a 2-worker STRICT_SPREAD Ray Train stage submitted as a Ray
job; the worker node is lost mid-run and a new one joins, and the run resumes from S3."""

from __future__ import annotations

import os
import re
import time

import boto3
import pytest

from maskgan import storage
from maskgan.training import checkpoint as ckpt
from tests.cluster.jobs import Jobs, metric_history, runs_of, train_command

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(1800)]

MAX_STEPS = 12


def upload_folder(local: str, uri: str, storage_config) -> None:
    for folder, _, files in os.walk(local):
        for name in files:
            path = os.path.join(folder, name)
            target = storage.resolve(f"{uri}/{os.path.relpath(path, local)}", storage_config)
            with open(path, "rb") as handle:
                storage.write_bytes(target, handle.read())


def wait_for(predicate, what: str, timeout: float = 300, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(every)
    return value


def s3_keys(endpoint: str, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_two_workers_on_two_nodes_resume_from_s3_after_the_worker_node_is_lost(
    make_cluster, s3_bucket, mlflow_server, mlflow_server_artifacts, train_dataset
):
    bucket, storage_config = s3_bucket
    endpoint = storage_config.endpoint_url
    upload_folder(train_dataset, f"{bucket}/parquet", storage_config)
    cluster = make_cluster()
    head = cluster.start_head(num_cpus=1)
    worker = cluster.add_node(num_cpus=1)
    head_id, lost_id = cluster.node_id(head), cluster.node_id(worker)

    run_key = "two-nodes"
    command = train_command(
        "train_maskvae.py", "mask_vae_tiny", data=f"{bucket}/parquet", storage=f"{bucket}/runs",
        mlflow_uri=mlflow_server, run_key=run_key, max_steps=MAX_STEPS, num_workers=2,
        image_every=MAX_STEPS, val_every=MAX_STEPS,
    ) + ["--placement-strategy", "STRICT_SPREAD", "--cpus-per-worker", "0.5", "--max-failures", "1",
         "--data-cpus", "0.25", "--s3-endpoint", endpoint]  # fmt: skip
    jobs = Jobs(cluster)
    submitted = jobs.submit("two-nodes", command, wait=False)
    assert submitted.returncode == 0, submitted.stderr

    # Lose the worker node (raylet, its train worker, its agents: SIGKILL) once step 2 is in S3.
    run_uri = f"{bucket}/runs/maskvae-{run_key}"
    first = storage.resolve(f"{run_uri}/checkpoint_000000002/meta.json", storage_config)
    ended = ("SUCCEEDED", "FAILED", "STOPPED")
    try:
        wait_for(lambda: storage.exists(first) or jobs.info("two-nodes")["status"] in ended, "checkpoint 2")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; job logs: {jobs.logs('two-nodes')[-4000:]}") from None
    assert jobs.info("two-nodes")["status"] == "RUNNING", jobs.logs("two-nodes")[-3000:]
    assert not storage.exists(storage.resolve(f"{run_uri}/result.json", storage_config))
    cluster.kill_node(worker)
    replacement = cluster.add_node(num_cpus=1)
    new_id = cluster.node_id(replacement)

    info = jobs.wait("two-nodes", timeout=480)
    logs = jobs.logs("two-nodes")
    assert info["status"] == "SUCCEEDED", logs[-4000:]

    # One train worker per node, before the loss and after it (STRICT_SPREAD over two raylets):
    # each worker group has its own placement group.
    groups: dict[str, list[str]] = {}
    for actor in cluster.actors("RayTrainWorker"):
        groups.setdefault(actor["placement_group_id"], []).append(actor["node_id"])
    placements = sorted(sorted(nodes) for nodes in groups.values())
    assert placements == sorted([sorted([head_id, lost_id]), sorted([head_id, new_id])]), groups

    # Resumed from the last checkpoint in S3, completed, in the same (one) MLflow run.
    resumed = re.search(
        rf"maskvae run maskvae-{run_key}: trained to step {MAX_STEPS}, resumed after step (\d+)", logs
    )
    assert resumed, logs[-4000:]
    resumed_from = int(resumed.group(1))
    assert 2 <= resumed_from < MAX_STEPS and resumed_from % 2 == 0
    final = ckpt.read_meta(f"{run_uri}/checkpoint_{MAX_STEPS:09d}", storage_config)
    assert final["step"] == MAX_STEPS and final["world_size"] == 2
    (run,) = runs_of(mlflow_server, run_key)
    assert run.info.status == "FINISHED"
    steps = metric_history(mlflow_server, run.info.run_id, "loss/total")
    assert set(steps) == set(range(1, MAX_STEPS + 1))  # no gap
    repeated = sorted({step for step in steps if steps.count(step) > 1})
    assert all(step > resumed_from for step in repeated), (resumed_from, steps)  # only after the checkpoint
    # Its artefacts (image grid) went through the MLflow server into S3.
    keys = s3_keys(endpoint, mlflow_server_artifacts)
    assert any(run.info.run_id in key and key.endswith(".png") for key in keys), keys
