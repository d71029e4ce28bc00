"""infra/mlflow/mlflow-server.sh for real: a low-memory MLflow server whose artefacts land in S3 (moto),
uploaded by a client that has no S3 access at all (the server proxies artefacts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "infra" / "mlflow" / "mlflow-server.sh"

CLIENT = """
import sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as run:
    mlflow.log_metric("loss", 0.5)
    mlflow.log_text("hello from a client without S3 credentials", "notes/hello.txt")
print(run.info.artifact_uri)
"""


def _session_processes(session_id: int) -> list[tuple[int, int]]:
    """[(pid, RSS in kB)] of the live processes in a session (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session_id:
                continue
            status = (entry / "status").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if "\nState:\tZ" in status:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        found.append((int(entry.name), rss))
    return found


@pytest.fixture
def recipe_server(tmp_path, s3_bucket, s3_server):
    """The recipe started as the Ray head starts it (all interfaces are not needed here: loopback)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bucket_uri, _ = s3_bucket
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"{bucket_uri}/mlflow",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}",
        "MLFLOW_PORT": str(port),
        # moto stands in for S3: the server (only the server) gets its endpoint and the fake credentials.
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    # Its own session, so teardown stops the server and its uvicorn worker and nothing else.
    process = subprocess.Popen(
        [str(RECIPE)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                log_tail = (tmp_path / "server.log").read_text()[-2000:]
                pytest.fail(f"recipe exited {process.returncode}: {log_tail}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no /health after 240 s: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield uri, process.pid, bucket_uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.s3
def test_recipe_serves_runs_and_proxies_artefacts_to_s3(recipe_server, s3_server):
    import boto3

    uri, session_id, bucket_uri = recipe_server
    # Low-memory shape: the CLI process and one uvicorn worker, no job-execution workers.
    processes = _session_processes(session_id)
    print(f"mlflow server processes {len(processes)}, RSS {sum(rss for _, rss in processes) / 1024:.0f} MB")
    assert len(processes) <= 2, processes

    # The client has no AWS credentials and no S3 endpoint: artefacts must go through the server.
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, uri], env=client_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("mlflow-artifacts:/")

    bucket = bucket_uri.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mlflow/").get("Contents", [])]
    hello = [key for key in keys if key.endswith("notes/hello.txt")]
    assert len(hello) == 1, keys
    body = s3.get_object(Bucket=bucket, Key=hello[0])["Body"].read()
    assert body == b"hello from a client without S3 credentials"
