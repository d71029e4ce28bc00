"""Ctrl-C / SIGTERM during a real training CLI run: exit 130 with one line, every checkpoint left is
complete (or reads as incomplete), and the rerun with the same run key resumes from the last one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from maskgan.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
ENV.pop("RAY_ADDRESS", None)  # its own Ray runtime, as a terminal user's run would have
INTERRUPTED = "interrupted: the last reported checkpoint is intact; run the same command again to resume"
CHECKPOINT_EVERY = 2
# Lines Ray forwards from its own processes, "(ActorName pid=123) ...": not the CLI's output (Ray's
# internal actors may log their own tracebacks, e.g. on a machine running several Ray instances).
RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\((raylet|[\w.:]+ pid=\d+)")


def command(tmp_path: Path, data: str, max_steps: int) -> list[str]:
    return [
        sys.executable, str(REPO / "pipelines" / "train_dmn.py"), "--preset", "dmn_tiny", "--data", data,
        "--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--run-key", "interrupted", "--max-steps", str(max_steps), "--num-to-keep", "3",
        "--set", f"loop.checkpoint_every={CHECKPOINT_EVERY}", "--set", "loop.batch_size=4",
        "--set", "loop.val_every=1000", "--set", "loop.image_every=1000",
    ]  # fmt: skip


def checkpoint_dirs(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint_*")) if run.is_dir() else []


def complete(folder: Path) -> bool:
    """meta.json there and every file it lists at its full size (a copy cut short can have meta.json)."""
    try:
        ckpt.read_meta(str(folder))
    except FileNotFoundError:
        return False
    return True


def assert_checkpoint_loads(folder: Path) -> int:
    """A folder with meta.json is a whole checkpoint: state, meta and every network's plain weights load."""
    meta = ckpt.read_meta(str(folder))
    state, meta_again = ckpt.read_checkpoint(str(folder))
    assert meta_again == meta and state["step"] == meta["step"] == int(folder.name.split("_")[-1])
    assert set(meta["networks"]) == {"generator", "discriminator"}
    for network in meta["networks"]:
        weights = torch.load(folder / ckpt.WEIGHTS_DIR / f"{network}.pt", weights_only=True)
        assert weights.keys() == state["stage"][network].keys()
    return meta["step"]


def interrupt(tmp_path: Path, data: str, run: Path, how: str, after_step: int) -> tuple[str, str]:
    """Start the CLI (no step limit), send `how` once a complete checkpoint past after_step is there;
    returns its stdout and stderr after checking it exited 130 with the one interrupted line."""
    process = subprocess.Popen(
        command(tmp_path, data, max_steps=100_000), cwd=tmp_path, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip

    def newest() -> int:
        return max((int(f.name.split("_")[-1]) for f in checkpoint_dirs(run) if complete(f)), default=0)

    try:
        deadline = time.monotonic() + 600  # Ray's start-up alone can take minutes on a loaded machine
        while time.monotonic() < deadline and process.poll() is None and newest() <= after_step:
            time.sleep(0.05)
        assert process.poll() is None, (
            f"the run ended before a checkpoint past step {after_step}: {process.stderr.read()[-3000:]}"
        )
        assert newest() > after_step, f"no checkpoint past step {after_step} in 600 s"
        if how == "SIGINT":
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        else:
            os.kill(process.pid, signal.SIGTERM)  # a scheduler stopping the CLI process
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    driver_lines = [line for line in (stdout + stderr).splitlines() if not RAY_FORWARDED.match(line)]
    assert not [line for line in driver_lines if "Traceback" in line], stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == INTERRUPTED
    assert stderr.count(INTERRUPTED) == 1
    return stdout, stderr


def assert_left_intact(run: Path) -> tuple[int, dict[str, dict]]:
    """Every complete checkpoint loads, a cut-short copy reads as incomplete; (newest step, metas)."""
    folders = checkpoint_dirs(run)
    steps = [assert_checkpoint_loads(folder) for folder in folders if complete(folder)]
    assert steps and all(step % CHECKPOINT_EVERY == 0 for step in steps), folders
    for folder in folders:
        if not complete(folder):  # a copy cut short reads as incomplete, never as a checkpoint
            with pytest.raises(FileNotFoundError, match="incomplete"):
                ckpt.read_meta(str(folder))
    last = max(steps)
    assert ckpt.latest_checkpoint(str(run)) == str(run / f"checkpoint_{last:09d}")
    return last, {folder.name: ckpt.read_meta(str(folder)) for folder in folders if complete(folder)}


def assert_not_rewritten(run: Path, kept: dict[str, dict]) -> None:
    """Resumed, not restarted: the checkpoints of an interrupted run are still there, unchanged."""
    for name, meta in kept.items():
        if (run / name).is_dir():  # --num-to-keep may have retired older ones
            assert ckpt.read_meta(str(run / name)) == meta, name


@pytest.mark.timeout(1800)
def test_ctrl_c_then_sigterm_keep_complete_checkpoints_and_each_rerun_resumes(tmp_path, train_dataset):
    run = tmp_path / "runs" / "dmn-interrupted"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def tracked_runs():
        return client.search_runs([client.get_experiment_by_name("maskgan").experiment_id])

    interrupt(tmp_path, train_dataset, run, "SIGINT", after_step=0)
    first, kept = assert_left_intact(run)
    (tracked,) = tracked_runs()
    assert tracked.info.status == "KILLED"

    # The rerun resumes after `first`, and a SIGTERM later leaves its checkpoints as intact.
    interrupt(tmp_path, train_dataset, run, "SIGTERM", after_step=first)
    assert_not_rewritten(run, kept)
    second, kept = assert_left_intact(run)
    assert second > first
    (again,) = tracked_runs()
    assert again.info.run_id == tracked.info.run_id and again.info.status == "KILLED"

    finish = second + 2
    rerun = subprocess.run(
        command(tmp_path, train_dataset, max_steps=finish), cwd=tmp_path, env=ENV, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"trained to step {finish}" in rerun.stdout and f"resumed after step {second}" in rerun.stdout, (
        rerun.stdout
    )
    assert_not_rewritten(run, kept)
    assert assert_checkpoint_loads(run / f"checkpoint_{finish:09d}") == finish
    (done,) = tracked_runs()
    assert done.info.run_id == tracked.info.run_id and done.info.status == "FINISHED"
    steps_logged = sorted(m.step for m in client.get_metric_history(done.info.run_id, "loss/g_total"))
    assert steps_logged[-1] == finish  # the steps after the last checkpoint are trained (and logged) again
