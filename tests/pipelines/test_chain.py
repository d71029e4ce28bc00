"""The retraining chain (maskgan.chain) end to end through the main job (`make run`:
pipelines/run_pipeline.py, synthetic data -> Parquet -> the chain) on tiny presets, real Ray (the
session's runtime, joined through RAY_ADDRESS), a real SQLite MLflow store. `train_ebst.py --chain`, the
scheduled job's entrypoint, runs the same chain: tests/cluster/test_chain_job.py submits it to a real
cluster; here it is asked to reuse this chain's key with another config.

One main job is SIGKILLed once its DMN run has finished (seen from the storage folders), run again (it
completes), and a third time (nothing to do); the tests read what each left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from maskgan import chain
from maskgan.registry import MODEL_NAMES, RUN_KEY_TAG, champion_version
from maskgan.tracking import TrackingConfig

REPO = Path(__file__).resolve().parents[2]
# The main job runs three times (tiny presets, 2 steps per stage) in the module fixture; the budget
# covers a loaded 2-core machine (about 10 min there), not a wall-time claim.
pytestmark = pytest.mark.timeout(3600)
MAIN_JOB_ARGS = ["--num-images", "16", "--resolution", "32", "--image-size", "64", "--max-steps", "2"]


def chain_command(data: str, storage: str, mlflow_uri: str, key: str, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "pipelines" / "train_ebst.py"), "--chain", "--preset", "ebst_tiny",
        "--data", data, "--storage", storage, "--mlflow-uri", mlflow_uri, "--run-key", key,
        "--max-steps", "2", "--upstream-set", "loop.max_steps=2", "--eval-max-batches", "1", *extra,
    ]  # fmt: skip


def environment(ray_address: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def mlflow_state(uri: str) -> dict:
    """Every run (stage, run key, status) and every registered version with its aliases."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    versions = {
        model.name: sorted(int(v.version) for v in client.search_model_versions(f"name = '{model.name}'"))
        for model in client.search_registered_models()
    }
    aliases = {model.name: dict(model.aliases) for model in client.search_registered_models()}
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
        "versions": versions,
        "aliases": aliases,
    }


@pytest.fixture(scope="module")
def chain_runs(tmp_path_factory, ray_session):
    """The main job SIGKILLed once the DMN finished, run again (completes), and again (no-op)."""
    root = tmp_path_factory.mktemp("chain")
    workdir = root / "quickstart"
    storage, uri = workdir / "train", f"sqlite:///{workdir}/mlflow.db"
    env = environment(ray_session.get_runtime_context().gcs_address)
    command = [sys.executable, str(REPO / "pipelines" / "run_pipeline.py"), "--workdir", str(workdir),
               *MAIN_JOB_ARGS]  # fmt: skip
    with open(root / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        # It prints its run key before training; the DMN has finished (and is recorded) once the EBST
        # run folder appears.
        key, deadline = None, time.monotonic() + 1800
        while first.poll() is None and time.monotonic() < deadline:
            if key is None:
                found = re.search(r"run key (\S+)", (root / "first.log").read_text())
                key = found and found[1]
            elif (storage / f"ebst-{key}").exists():
                break
            time.sleep(0.2)
        killed_while_running = first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait()
    first_log = (root / "first.log").read_text()
    assert key and killed_while_running and (storage / f"dmn-{key}" / "result.json").exists(), first_log[
        -3000:
    ]
    state_after_kill = json.loads((storage / f"chain-{key}" / chain.STATE_FILE).read_text())["steps"]
    mlflow_after_kill = mlflow_state(uri)

    second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary_path = storage / f"chain-{key}" / chain.SUMMARY_FILE
    summary_text = summary_path.read_text()
    mlflow_after_second = mlflow_state(uri)

    third = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    return {
        "root": root, "workdir": workdir, "key": key, "storage": str(storage), "uri": uri,
        "state_after_kill": state_after_kill, "mlflow_after_kill": mlflow_after_kill, "second": second,
        "summary_text": summary_text, "summary": json.loads(summary_text),
        "mlflow_after_second": mlflow_after_second, "third": third, "summary_path": summary_path,
    }  # fmt: skip


def test_chain_promotes_an_editor_champion_and_its_summary_names_it(chain_runs):
    summary, uri, key = chain_runs["summary"], chain_runs["uri"], chain_runs["key"]
    tracking = TrackingConfig(tracking_uri=uri)
    champion = champion_version(tracking, "maskgan-editor")
    assert champion is not None
    assert summary["status"] == "succeeded" and summary["run_key"] == key
    assert summary["champion"] == {
        "model": "maskgan-editor", "version": champion, "uri": "models:/maskgan-editor@champion",
        "metrics": summary["evaluations"]["editor"]["metrics"],
    }  # fmt: skip
    assert summary["gate"]["maskgan-editor"]["outcome"] == "promoted"
    assert summary["registered"]["maskgan-editor"]["version"] == champion
    printed = chain_runs["second"].stdout
    assert f"champion: maskgan-editor v{champion} (models:/maskgan-editor@champion)" in printed
    assert "mlflow ui --backend-store-uri " + uri in printed and "image grids:" in printed
    assert "metrics: {" in printed
    section = printed.split("image grids:")[1].split("summary:")[0]
    printed_grids = [
        line.split()[-1].removeprefix("file://") for line in section.splitlines() if line.strip()
    ]
    assert printed_grids and all(any(Path(grid).glob("*.png")) for grid in printed_grids)
    client = mlflow.MlflowClient(uri)
    # data, then every stage of the chain, tracked in the main job's one SQLite store
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(run.data.tags["maskgan.stage"] for run in runs) == sorted(
        ["maskvae", "dmn", "ebst", "parser", *["evaluation"] * 4]
    )
    # every stage model is registered from this chain, tagged with its key, and (first ones) champion
    for name in MODEL_NAMES:
        assert champion_version(tracking, name) is not None, name
        assert client.get_model_version(name, "1").tags[RUN_KEY_TAG] == key
    # the summary's MLflow runs exist and finished; the editor pyfunc sits in the EBST run
    for label, run_id in summary["mlflow_runs"].items():
        assert client.get_run(run_id).info.status == "FINISHED", label
    assert summary["editor_model"]["mlflow_run_id"] == summary["mlflow_runs"]["train/ebst"]
    grids = [Path(folder.removeprefix("file://")) for folder in summary["image_grids"].values()]
    assert grids and all(any(folder.glob("*.png")) for folder in grids)


def test_a_killed_chain_resumes_without_redoing_or_duplicating(chain_runs):
    killed, key = chain_runs["state_after_kill"], chain_runs["key"]
    assert {"train/maskvae", "train/dmn"} <= set(killed) and "gate/editor" not in killed
    printed = chain_runs["second"].stdout
    assert f"maskvae run maskvae-{key}: already finished" not in printed  # not even asked again: recorded
    assert f"[chain {key}] train/maskvae: done earlier" in printed
    assert f"[chain {key}] train/dmn: done earlier" in printed
    assert f"ebst run ebst-{key}:" in printed
    after = chain_runs["mlflow_after_second"]
    # MLflow runs found by (stage, run key) after the kill: one per stage, none left RUNNING
    stages = Counter(stage for _, stage, _, _ in after["runs"])
    assert {stage: stages[stage] for stage in chain.STAGES} == dict.fromkeys(chain.STAGES, 1)
    assert all(status == "FINISHED" for *_, status in after["runs"]), after["runs"]
    killed_ids = {run_id for run_id, *_ in chain_runs["mlflow_after_kill"]["runs"]}
    assert killed_ids <= {run_id for run_id, *_ in after["runs"]}  # the same runs were resumed
    # evaluations: one run per evaluated model
    assert stages["evaluation"] == 4
    assert after["versions"] == dict.fromkeys(MODEL_NAMES, [1])
    # the finished DMN was not trained again: its loss history has each step once
    client = mlflow.MlflowClient(chain_runs["uri"])
    dmn_run = chain_runs["summary"]["mlflow_runs"]["train/dmn"]
    history = client.get_metric_history(dmn_run, "loss/g_total")
    assert history and len({m.step for m in history}) == len(history)


def test_rerun_of_a_finished_key_trains_and_registers_nothing(chain_runs):
    third, key = chain_runs["third"], chain_runs["key"]
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already up to date" in third.stdout  # the data part: the Parquet output is reused
    assert f"chain {key} already finished" in third.stdout and "nothing to do" in third.stdout
    champion = champion_version(TrackingConfig(tracking_uri=chain_runs["uri"]), "maskgan-editor")
    assert f"champion: maskgan-editor v{champion}" in third.stdout  # it still says what serves
    assert "trained to step" not in third.stdout and "Started a local Ray instance" not in third.stderr
    assert mlflow_state(chain_runs["uri"]) == chain_runs["mlflow_after_second"]
    assert chain_runs["summary_path"].read_text() == chain_runs["summary_text"]


def test_same_key_with_another_config_is_refused(chain_runs):
    """The scheduled job's entrypoint (`train_ebst.py --chain`) asked to reuse the main job's key with
    another config: refused, nothing changes."""
    env = environment(None)
    data = str(chain_runs["workdir"] / "parquet")
    command = chain_command(
        data, chain_runs["storage"], chain_runs["uri"], chain_runs["key"], "--gate-margin", "0.5"
    )
    completed = subprocess.run(
        command, cwd=chain_runs["root"], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    assert f"run key {chain_runs['key']} was used by a chain with another config" in completed.stderr
    assert mlflow_state(chain_runs["uri"]) == chain_runs["mlflow_after_second"]


@pytest.mark.parametrize("broken", ["storage", "mlflow"])
def test_unreachable_storage_or_mlflow_fails_before_any_work(tmp_path, train_dataset, broken):
    """A dead S3 endpoint or MLflow server: exit 1 naming the URI without its secret, before Ray starts."""
    env = environment(None) | {"AWS_SECRET_ACCESS_KEY": "never-print-this-secret"}
    storage, uri = str(tmp_path / "runs"), f"sqlite:///{tmp_path}/mlflow.db"
    extra: list[str] = []
    if broken == "storage":
        storage = "s3://maskgan-runs/chain"
        extra = ["--s3-endpoint", "http://127.0.0.1:1"]
    else:
        uri = "http://chain-user:hunter2@127.0.0.1:1"
    command = chain_command(train_dataset, storage, uri, "dead", *extra)
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-3000:]
    named = "s3://maskgan-runs/chain" if broken == "storage" else "http://127.0.0.1:1"
    assert "chain failed:" in completed.stderr and named in completed.stderr
    assert "hunter2" not in output and "never-print-this-secret" not in output
    assert "Started a local Ray instance" not in output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
