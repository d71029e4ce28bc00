"""The retraining chain as its users run it: `ray job submit --working-dir . -- python
pipelines/train_ebst.py --chain ...` on a real `ray start` cluster (tiny presets, 32 px, SQLite MLflow).

One submission is stopped with `ray job stop` once its DMN stage has finished, the same key is submitted
again (it completes without redoing MaskVAE / DMN and without duplicate runs or versions), and a third
submission finds the chain finished and trains nothing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from maskgan import chain
from maskgan.registry import MODEL_NAMES, champion_version
from maskgan.tracking import TrackingConfig
from tests.cluster.jobs import Jobs

KEY = "chain-job"

# A real cluster, real jobs: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def chain_command(data: str, storage: str, mlflow_uri: str) -> list[str]:
    return [
        "python", "pipelines/train_ebst.py", "--chain", "--preset", "ebst_tiny", "--data", data,
        "--storage", storage, "--mlflow-uri", mlflow_uri, "--run-key", KEY, "--max-steps", "2",
        "--upstream-set", "loop.max_steps=2", "--eval-max-batches", "1",
    ]  # fmt: skip


def mlflow_state(uri: str) -> dict:
    """Every run (id, stage, run key, status) and every registered version with its aliases."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    models = client.search_registered_models()
    return {
        "runs": sorted(
            (
                r.info.run_id,
                r.data.tags.get("maskgan.stage"),
                r.data.tags.get("maskgan.run_key"),
                r.info.status,
            )
            for r in runs
        ),
        "versions": {
            m.name: sorted(int(v.version) for v in client.search_model_versions(f"name = '{m.name}'"))
            for m in models
        },
        "aliases": {m.name: dict(m.aliases) for m in models},
    }


@pytest.fixture(scope="module")
def chain_jobs(tmp_path_factory, train_dataset, aws_env):
    """Submit, `ray job stop` after the DMN finished, resubmit (completes), submit again (no-op)."""
    from tests.cluster.ray_cluster import LocalRayCluster

    root = tmp_path_factory.mktemp("chain-job")
    storage, uri = str(root / "runs"), f"sqlite:///{root}/mlflow.db"
    command = chain_command(train_dataset, storage, uri)
    cluster = LocalRayCluster()
    try:
        cluster.start_head(num_cpus=2)
        jobs = Jobs(cluster)
        out: dict = {"storage": storage, "uri": uri, "jobs": jobs}
        submitted = jobs.submit("chain-1", command, wait=False)
        assert submitted.returncode == 0, submitted.stderr
        # The DMN stage finished (and the chain recorded it) once the EBST run folder appears.
        ebst_started = Path(storage) / f"ebst-{KEY}"
        deadline = time.monotonic() + 900
        while not ebst_started.exists() and jobs.info("chain-1")["status"] in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, "the DMN stage did not finish within 900 s"
            time.sleep(0.5)
        out["running_at_stop"] = jobs.info("chain-1")["status"]
        jobs.stop("chain-1")
        out["stopped"] = jobs.wait("chain-1", timeout=120)
        out["logs_1"] = jobs.logs("chain-1")
        out["mlflow_after_stop"] = mlflow_state(uri)
        state = Path(storage) / f"chain-{KEY}" / chain.STATE_FILE
        out["steps_after_stop"] = json.loads(state.read_text())["steps"]

        jobs.submit("chain-2", command)
        out["second"] = jobs.wait("chain-2")
        out["logs_2"] = jobs.logs("chain-2")
        out["mlflow_after_second"] = mlflow_state(uri)
        out["summary"] = (Path(storage) / f"chain-{KEY}" / chain.SUMMARY_FILE).read_text()

        jobs.submit("chain-3", command)
        out["third"] = jobs.wait("chain-3")
        out["logs_3"] = jobs.logs("chain-3")
        out["mlflow_after_third"] = mlflow_state(uri)
        out["summary_after_third"] = (Path(storage) / f"chain-{KEY}" / chain.SUMMARY_FILE).read_text()
        yield out
    finally:
        cluster.shutdown()


def test_the_submitted_chain_succeeds_with_an_editor_champion_its_log_names(chain_jobs):
    assert chain_jobs["second"]["status"] == "SUCCEEDED", chain_jobs["logs_2"][-4000:]
    champion = champion_version(TrackingConfig(tracking_uri=chain_jobs["uri"]), "maskgan-editor")
    assert champion is not None
    assert f"champion: maskgan-editor v{champion} (models:/maskgan-editor@champion)" in chain_jobs["logs_2"]
    assert int(chain_jobs["mlflow_after_second"]["aliases"]["maskgan-editor"]["champion"]) == champion


def test_a_stopped_chain_job_resumes_without_redoing_or_duplicating(chain_jobs):
    assert chain_jobs["running_at_stop"] == "RUNNING" and chain_jobs["stopped"]["status"] == "STOPPED"
    done_before = set(chain_jobs["steps_after_stop"])
    assert {"train/maskvae", "train/dmn"} <= done_before and "gate/editor" not in done_before
    logs = chain_jobs["logs_2"]
    assert f"[chain {KEY}] train/maskvae: done earlier" in logs, logs[-4000:]
    assert f"[chain {KEY}] train/dmn: done earlier" in logs
    assert f"ebst run ebst-{KEY}:" in logs
    after = chain_jobs["mlflow_after_second"]
    stages = Counter(stage for _, stage, _, _ in after["runs"])
    assert {stage: stages[stage] for stage in chain.STAGES} == dict.fromkeys(chain.STAGES, 1)
    assert all(status == "FINISHED" for *_, status in after["runs"]), after["runs"]
    stopped_ids = {run_id for run_id, *_ in chain_jobs["mlflow_after_stop"]["runs"]}
    assert stopped_ids <= {run_id for run_id, *_ in after["runs"]}  # the same runs were resumed
    assert after["versions"] == dict.fromkeys(MODEL_NAMES, [1])


def test_a_third_submission_of_the_finished_key_trains_and_registers_nothing(chain_jobs):
    assert chain_jobs["third"]["status"] == "SUCCEEDED", chain_jobs["logs_3"][-4000:]
    logs = chain_jobs["logs_3"]
    assert f"chain {KEY} already finished" in logs and "trained to step" not in logs
    assert chain_jobs["mlflow_after_third"] == chain_jobs["mlflow_after_second"]
    assert chain_jobs["summary_after_third"] == chain_jobs["summary"]
