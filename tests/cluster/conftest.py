"""Real local Ray clusters (`ray start` raylets on 127.0.0.1) and `ray job submit` helpers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from tests.cluster.ray_cluster import REPO, LocalRayCluster


@pytest.fixture
def make_cluster(aws_env):
    """Start clusters on demand; each is stopped at teardown (its own processes only, checked)."""
    clusters: list[LocalRayCluster] = []

    def make(**kwargs) -> LocalRayCluster:
        cluster = LocalRayCluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in clusters:
        try:
            cluster.shutdown()
        except RuntimeError as error:
            errors.append(str(error))
    assert not errors, errors


@pytest.fixture
def cluster(make_cluster) -> LocalRayCluster:
    """One head node with 2 CPUs (dashboard + job server on 127.0.0.1)."""
    head = make_cluster()
    head.start_head(num_cpus=2)
    return head


class Jobs:
    """`ray job submit` from the repo root (--working-dir .), and the job server's view of the jobs."""

    def __init__(self, cluster: LocalRayCluster):
        self.cluster = cluster

    def submit(self, submission_id: str, entrypoint: list[str], *, wait: bool = True,
               env_vars: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        runtime_env = {"env_vars": env_vars or {}}
        args = ["job", "submit", "--address", self.cluster.dashboard_url, "--submission-id", submission_id,
                "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env)]  # fmt: skip
        if not wait:
            args.append("--no-wait")
        return self.cluster.ray(*args, "--", *entrypoint, cwd=REPO, check=False, timeout=600)

    def info(self, submission_id: str) -> dict:
        url = f"{self.cluster.dashboard_url}/api/jobs/{submission_id}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)

    def logs(self, submission_id: str) -> str:
        url = f"{self.cluster.dashboard_url}/api/jobs/{submission_id}/logs"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)["logs"]

    def wait(self, submission_id: str, timeout: float = 400) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(submission_id)
            if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {submission_id} still {info['status']} after {timeout} s")
            time.sleep(1)

    def stop(self, submission_id: str) -> None:
        self.cluster.ray("job", "stop", "--address", self.cluster.dashboard_url, submission_id, cwd=REPO)


@pytest.fixture
def jobs(cluster) -> Jobs:
    return Jobs(cluster)
