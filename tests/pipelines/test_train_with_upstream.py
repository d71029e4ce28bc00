"""`train_ebst.py --with-upstream` from nothing: trains the MaskVAE and the DMN first, says what EBST
used, and a second invocation reuses both finished upstream runs (no new MLflow runs, no new training)."""

from __future__ import annotations

import re

import mlflow
import pytest

from maskgan.training import checkpoint as ckpt
from pipelines import train_ebst

SHORT = ["loop.max_steps=2", "loop.batch_size=4", "loop.checkpoint_every=2", "loop.log_every=1",
         "loop.image_every=2", "loop.val_every=2", "loop.val_batches=1"]  # fmt: skip


def argv(tmp_path, data: str, run_key: str, max_steps: int) -> list[str]:
    args = ["--preset", "ebst_tiny", "--data", data, "--storage", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--num-workers", "1",
            "--run-key", run_key, "--max-steps", str(max_steps), "--with-upstream"]  # fmt: skip
    for override in SHORT:
        if not override.startswith("loop.max_steps"):
            args += ["--set", override]
        args += ["--upstream-set", override]
    return args


def runs_by_stage(tmp_path) -> dict[str, list[str]]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("maskgan")
    runs = client.search_runs([experiment.experiment_id])
    out: dict[str, list[str]] = {}
    for run in runs:
        out.setdefault(run.data.tags["maskgan.stage"], []).append(run.info.run_id)
    return out


def used(printed: str, label: str) -> tuple[str, str]:
    """(checkpoint URI, how) from the line `EBST uses <label> from <uri> (<how>)`."""
    match = re.search(rf"^EBST uses {label} from (\S+) \((.*)\)$", printed, re.MULTILINE)
    assert match, printed
    return match.group(1), match.group(2)


@pytest.mark.timeout(1500)  # four Ray Train runs; minutes each on a loaded machine
def test_with_upstream_trains_missing_stages_first_then_reuses_them(tmp_path, train_dataset, capsys):
    assert train_ebst.run(argv(tmp_path, train_dataset, "first", max_steps=2)) == 0
    printed = capsys.readouterr().out
    assert "EBST needs a MaskVAE: training mask_vae_tiny first" in printed, printed
    assert "EBST needs a DMN: training dmn_tiny first" in printed, printed
    vae_uri, vae_how = used(printed, "MaskVAE")
    dmn_uri, dmn_how = used(printed, "DMN")
    assert "trained now" in vae_how and "trained now" in dmn_how, printed
    assert ckpt.read_meta(vae_uri)["stage"] == "maskvae" and ckpt.read_meta(dmn_uri)["stage"] == "dmn"
    assert ckpt.read_meta(vae_uri)["step"] == ckpt.read_meta(dmn_uri)["step"] == 2
    runs = runs_by_stage(tmp_path)
    assert {stage: len(ids) for stage, ids in runs.items()} == {"maskvae": 1, "dmn": 1, "ebst": 1}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    ebst_tags = client.get_run(runs["ebst"][0]).data.tags
    assert ebst_tags["maskgan.upstream.generator"] == dmn_uri
    assert ebst_tags["maskgan.upstream.mask_vae"] == vae_uri
    for stage in ("maskvae", "dmn"):
        assert runs["maskvae" if stage == "maskvae" else "dmn"][0] in dmn_how + vae_how

    # A new EBST run (another key) with the same upstream configs: both upstream runs are reused.
    assert train_ebst.run(argv(tmp_path, train_dataset, "second", max_steps=2)) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 2 and "trained now" not in printed, printed
    assert used(printed, "MaskVAE")[0] == vae_uri and used(printed, "DMN")[0] == dmn_uri
    again = runs_by_stage(tmp_path)
    assert again["maskvae"] == runs["maskvae"] and again["dmn"] == runs["dmn"]
    assert len(again["ebst"]) == 2
