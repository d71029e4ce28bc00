"""Shared fixtures: one local Ray runtime and one moto S3 server (127.0.0.1) per test session."""

from __future__ import annotations

import os
import re
import socket

import pytest

from maskgan.storage import StorageConfig

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def aws_env():
    """Fake credentials in the environment, set before Ray starts so its workers inherit them."""
    saved = {key: os.environ.get(key) for key in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    yield dict(FAKE_CREDENTIALS)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_session(aws_env):
    """A local Ray runtime shared by the whole session (starting one costs seconds)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(aws_env):
    """moto in server mode on 127.0.0.1: a real S3 API over HTTP that pyarrow and Ray workers reach."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket for one test; returns (s3://bucket, StorageConfig pointing at the server)."""
    import boto3

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{os.getpid()}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return f"s3://{name}", StorageConfig(endpoint_url=s3_server, region="us-east-1")


@pytest.fixture(scope="session")
def mlflow_server_artifacts(s3_server) -> str:
    """Where the `mlflow_server` keeps artefacts: s3://<bucket>/mlflow on the moto server."""
    import boto3

    bucket = f"mlflow-server-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/mlflow"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server, mlflow_server_artifacts):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, one worker, ~350 MB); yields its http URI.

    Artefacts go through the server's proxy (clients need no S3 access) to the moto S3 server.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", mlflow_server_artifacts,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # Job execution spawns extra processes (~2.5 GB in all); the tests need none of them.
    # The server's boto3 reads the endpoint and the fake credentials (aws_env) from its environment.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_S3_ENDPOINT_URL": s3_server}
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    # Its own session: teardown stops the server and the uvicorn worker it spawned, nothing else.
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({process.returncode}): "
                                   f"{(folder / 'server.log').read_text()[-2000:]}")  # fmt: skip
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer on {uri} within 180 s")
            time.sleep(0.5)
        yield uri
    finally:
        import signal

        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory, ray_session):
    """A tiny Parquet dataset made by the preprocessing job (32 px; 32 train, 4 val rows): training tests."""
    from maskgan.data import preprocess
    from tests.pipelines import preprocess_helpers

    root = tmp_path_factory.mktemp("train-data")
    preprocess_helpers.write_raw(str(root / "raw"), num_images=40)
    result = preprocess.run(preprocess_helpers.tiny_config(str(root / "raw"), str(root / "parquet")))
    return result.output_uri
