"""The training entrypoints: help, exit codes, one real run through the CLI and its no-op resubmission."""

from __future__ import annotations

import json

import pytest

from pipelines import train_dmn, train_ebst, train_maskvae


@pytest.mark.parametrize("entry", [train_maskvae, train_dmn, train_ebst])
def test_help_shows_examples_and_exit_codes(entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry.run(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "ray job submit" in text and "--run-key" in text and "Exit status" in text


def test_a_bad_override_is_a_usage_error_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_maskvae.run(["--preset", "mask_vae_tiny", "--set", "loop.max_steps=0"])
    assert exit_info.value.code == 2
    assert "loop.max_steps" in capsys.readouterr().err


def test_data_cpus_reaches_the_ray_config_and_must_be_positive(capsys):
    parser = train_maskvae.build_parser()
    args = parser.parse_args(["--preset", "mask_vae_tiny", "--data-cpus", "0.25"])
    _, ray_config = train_maskvae.cli.resolve(
        parser, args, train_maskvae.MaskVAETrainConfig, train_maskvae.PRESETS
    )
    assert ray_config.data_cpus == 0.25
    with pytest.raises(SystemExit) as exit_info:
        train_maskvae.run(["--preset", "mask_vae_tiny", "--data-cpus", "0"])
    assert exit_info.value.code == 2 and "data_cpus must be positive" in capsys.readouterr().err


def test_missing_dataset_and_missing_upstream_fail_with_exit_1(tmp_path, ray_session, capsys):
    code = train_maskvae.run(["--preset", "mask_vae_tiny", "--data", str(tmp_path / "nowhere")])
    assert code == 1 and f"{tmp_path / 'nowhere'} has no manifest.json" in capsys.readouterr().err
    code = train_ebst.run(["--preset", "ebst_tiny", "--data", str(tmp_path / "nowhere")])
    assert code == 1 and "--with-upstream" in capsys.readouterr().err


def test_cli_trains_and_a_resubmitted_job_has_nothing_to_do(tmp_path, train_dataset, capsys):
    argv = [
        "--preset", "mask_vae_tiny", "--data", train_dataset, "--storage", str(tmp_path / "runs"),
        "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--max-steps", "2", "--run-key", "cli",
        "--set", "loop.batch_size=4", "--set", "loop.log_every=1",
    ]  # fmt: skip
    assert train_maskvae.run(argv) == 0
    printed = capsys.readouterr().out
    assert "trained to step 2" in printed and "registered: maskgan-maskvae version 1" in printed
    record = json.loads((tmp_path / "runs" / "maskvae-cli" / "result.json").read_text())
    assert record["step"] == 2 and record["checkpoint_uri"].endswith("checkpoint_000000002")
    assert train_maskvae.run(argv) == 0
    printed = capsys.readouterr().out
    assert "already finished to step 2" in printed
    assert "registered: maskgan-maskvae version 1 (already registered)" in printed  # no second version
