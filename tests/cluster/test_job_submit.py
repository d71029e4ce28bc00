"""`ray job submit --working-dir . -- python pipelines/train_*.py` against a real `ray start` cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maskgan.training import checkpoint as ckpt
from tests.cluster.jobs import metric_history, runs_of, train_command

# A real cluster, real jobs: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def uploaded_working_dirs(temp_dir: str) -> list[Path]:
    """The working_dir packages the cluster unpacked for its jobs (session_2*: not session_latest)."""
    found = Path(temp_dir).glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*")
    return sorted(path for path in found if path.is_dir())


def test_a_submitted_training_job_succeeds_and_a_resubmission_trains_nothing(
    cluster, jobs, train_dataset, tmp_path
):
    storage = str(tmp_path / "runs")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = train_command(
        "train_maskvae.py", "mask_vae_tiny", data=train_dataset, storage=storage, mlflow_uri=tracking_uri,
        run_key="job-a", max_steps=4,
    )  # fmt: skip

    submitted = jobs.submit("maskvae-first", command)
    info = jobs.info("maskvae-first")
    assert submitted.returncode == 0 and info["status"] == "SUCCEEDED", (info, submitted.stdout[-3000:])
    run_folder = Path(storage) / "maskvae-job-a"
    checkpoint = run_folder / "checkpoint_000000004"
    meta = ckpt.read_meta(str(checkpoint))
    assert meta["step"] == 4 and meta["run_key"] == "job-a" and meta["networks"] == ["mask_vae"]
    (run,) = runs_of(tracking_uri, "job-a")
    assert run.info.status == "FINISHED"
    assert run.data.tags["maskgan.checkpoint_uri"] == str(checkpoint)
    assert metric_history(tracking_uri, run.info.run_id, "loss/total") == [1, 2, 3, 4]
    logs = jobs.logs("maskvae-first")
    assert "maskvae run maskvae-job-a: trained to step 4" in logs and run.info.run_id in logs, logs[-3000:]

    # What --working-dir uploaded: the project, not the venv, git metadata, runs or data (.gitignore).
    (package,) = uploaded_working_dirs(cluster.temp_dir)
    names = set(os.listdir(package))
    assert {"maskgan", "pipelines", "pyproject.toml"} <= names
    assert not names & {".git", ".venv", "runs", "data", "mlruns", "mlflow.db"}, names

    before = sorted(os.listdir(run_folder))
    again = jobs.submit("maskvae-second", command)
    assert again.returncode == 0 and jobs.info("maskvae-second")["status"] == "SUCCEEDED", again.stdout[
        -3000:
    ]
    assert "maskvae run maskvae-job-a: already finished to step 4" in jobs.logs("maskvae-second")
    assert sorted(os.listdir(run_folder)) == before  # no new checkpoint
    (same,) = runs_of(tracking_uri, "job-a")  # no second MLflow run, and nothing logged to the first
    assert same.info.run_id == run.info.run_id
    assert metric_history(tracking_uri, run.info.run_id, "loss/total") == [1, 2, 3, 4]
