"""`ray job submit` of the training entrypoints, and what the tests read back (job server, MLflow)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import mlflow

from tests.cluster.ray_cluster import REPO, LocalRayCluster

LOOP = {"batch_size": 4, "log_every": 1, "image_every": 2, "checkpoint_every": 2, "val_every": 4,
        "val_batches": 1}  # fmt: skip


def train_command(script: str, preset: str, *, data: str, storage: str, mlflow_uri: str, run_key: str,
                  max_steps: int, num_workers: int = 1, **loop) -> list[str]:  # fmt: skip
    overrides = [arg for key, value in {**LOOP, **loop}.items() for arg in ("--set", f"loop.{key}={value}")]
    return ["python", f"pipelines/{script}", "--preset", preset, "--data", data, "--storage", storage,
            "--mlflow-uri", mlflow_uri, "--run-key", run_key, "--max-steps", str(max_steps),
            "--num-workers", str(num_workers), *overrides]  # fmt: skip


def runs_of(tracking_uri: str, run_key: str) -> list:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("maskgan")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`maskgan.run_key` = '{run_key}'")


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, key))


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
