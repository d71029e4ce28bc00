"""Ctrl-C: exit status 130, one line saying what to do, no traceback; the rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from preprocess_helpers import assert_reconciles, write_raw

from maskgan.data import loader

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
ENV.pop("RAY_ADDRESS", None)  # its own Ray, which Ctrl-C in a terminal reaches too


def interrupt_when(args: list[str], ready, cwd: Path) -> subprocess.CompletedProcess:
    """Start a command in its own process group, send SIGINT to the group (as a terminal's Ctrl-C
    does) once ready() is true, and return what it printed."""
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ready() and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the command ended before the moment to interrupt it"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def assert_interrupted(completed: subprocess.CompletedProcess) -> None:
    assert completed.returncode == 130, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr + completed.stdout, completed.stderr[-3000:]
    assert completed.stderr.rstrip().splitlines()[-1] == "interrupted; rerun to continue"
    assert completed.stderr.count("interrupted; rerun to continue") == 1


def test_ctrl_c_during_preprocessing_then_the_rerun_completes(tmp_path):
    raw, out = str(tmp_path / "raw"), tmp_path / "out"
    write_raw(raw, num_images=24)
    args = [sys.executable, str(REPO / "pipelines" / "preprocess.py"), "--preset", "preprocess_tiny",
            "--source", raw, "--output", str(out), "--no-progress",
            "--set", "shard_target_mb=0.005", "--set", "batch_size=2"]  # fmt: skip
    assert_interrupted(interrupt_when(args, lambda: any(out.rglob("*.parquet")), tmp_path))
    assert not (out / "manifest.json").exists()

    completed = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    manifest = loader.read_manifest(str(out))
    assert_reconciles(manifest)
    assert manifest.counts["written"] == 24
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == sorted(
        s.path for s in manifest.shards
    )


def test_ctrl_c_during_the_main_job_then_the_rerun_completes(tmp_path):
    args = [sys.executable, str(REPO / "pipelines" / "run_pipeline.py"), "--workdir", str(tmp_path / "work"),
            "--num-images", "400", "--image-size", "64", "--resolution", "32", "--no-train"]  # fmt: skip
    images = tmp_path / "work" / "celebamask-hq" / "CelebA-HQ-img"
    assert_interrupted(interrupt_when(args, lambda: images.is_dir() and any(images.iterdir()), tmp_path))

    args[args.index("400")] = "24"  # the rerun may differ: what was left half-written is redone
    completed = subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "from an unfinished earlier run" in completed.stdout
    manifest = loader.read_manifest(str(tmp_path / "work" / "parquet"))
    assert_reconciles(manifest)
    assert manifest.counts["written"] == 24 and len(list(images.iterdir())) == 24
