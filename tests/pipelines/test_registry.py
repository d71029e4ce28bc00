"""The registry and the promotion gate against real MLflow stores: a SQLite file, and an `mlflow server`
whose artefacts live on the moto S3 server. No mocks: versions, aliases and tags are read back."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket

import boto3
import mlflow
import pytest

from maskgan.gate import GateConfig
from maskgan.registry import (
    CHALLENGER,
    CHAMPION,
    CHAMPION_METRICS_TAG,
    CHAMPION_VERSION_TAG,
    CHECKPOINT_TAG,
    DECIDED_AT_TAG,
    DECISION_TAG,
    METRICS_TAG,
    REASON_TAG,
    REPORT_SOURCE_TAG,
    REPORT_TAG,
    RULE_TAG,
    RUN_KEY_TAG,
    STEP_TAG,
    champion_checkpoint,
    champion_version,
    find_version,
    find_version_by_tag,
    promote,
    register,
    register_checkpoint,
    stored_report,
)
from maskgan.storage import StorageConfig
from maskgan.tracking import TrackingConfig
from pipelines import promote as promote_cli

GATE = GateConfig(primary_metric="edit/miou", margin=0.01, floors={"recon/ssim": 0.2})


class Doubler(mlflow.pyfunc.PythonModel):
    """The registered thing in the pyfunc test: what the editor will be, minus the networks."""

    def predict(self, context, model_input: list[int], params=None) -> list[int]:
        return [2 * value for value in model_input]


def report(miou: float, ssim: float = 0.5) -> dict:
    return {"status": "ok", "split": "val", "metrics": {"edit/miou": miou, "recon/ssim": ssim, "fid": None}}


@pytest.fixture
def restore_env():
    """The registry sets process-wide MLflow variables (fail-fast retries); keep them from leaking."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return (
        f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"  # one store: creating one costs seconds
    )


@pytest.fixture(params=["sqlite", "server"])
def store(request, sqlite_uri, tmp_path, restore_env):
    """(tracking URI, experiment id, (S3 endpoint, artefact root) or None); registered models start empty."""
    if request.param == "server":
        uri = request.getfixturevalue("mlflow_server")
        s3 = request.getfixturevalue("s3_server"), request.getfixturevalue("mlflow_server_artifacts")
        location = None  # the server's proxied default: mlflow-artifacts:/ -> S3
    else:
        uri, s3, location = sqlite_uri, None, (tmp_path / "artifacts").as_uri()
    client = mlflow.MlflowClient(uri)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name, location)
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    return uri, experiment_id, s3


def folder_run(uri: str, experiment_id: str, tmp_path, path: str = "model", content: str = "weights") -> str:
    """A run with a plain artefact folder at `path` (a checkpoint's stand-in)."""
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    folder = tmp_path / f"folder-{run_id}"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "generator.pt").write_text(content)
    client.log_artifacts(run_id, str(folder), path)
    client.set_terminated(run_id)
    return run_id


def tags(uri: str, name: str, version: int) -> dict[str, str]:
    return mlflow.MlflowClient(uri).get_model_version(name, str(version)).tags


def aliases(uri: str, name: str) -> dict[str, int]:
    return {alias: int(v) for alias, v in mlflow.MlflowClient(uri).get_registered_model(name).aliases.items()}


def test_gate_moves_the_champion_only_for_a_winner(store, tmp_path):
    uri, experiment_id, s3 = store
    config = TrackingConfig(tracking_uri=uri)
    name = "maskgan-dmn"
    runs = [folder_run(uri, experiment_id, tmp_path, content=f"run{i}") for i in range(5)]

    v1 = register(config, name, runs[0], "model")
    assert v1 == 1 and aliases(uri, name) == {CHALLENGER: 1}
    assert champion_version(config, name) is None
    # Registering the same run's folder again finds the version instead of making another.
    assert register(config, name, runs[0], "model") == 1 and find_version(config, name, runs[0], "model") == 1

    # The first version with a passing report becomes the champion.
    first = promote(config, name, v1, GATE, report=report(0.40))
    assert (first.outcome, first.champion_before, first.champion_after) == ("promoted", None, 1)
    assert aliases(uri, name) == {CHALLENGER: 1, CHAMPION: 1}
    written = tags(uri, name, v1)
    assert written[DECISION_TAG] == "promoted" and "no champion" in written[REASON_TAG]
    assert json.loads(written[REPORT_TAG]) == report(0.40)  # stored for the next gate to read
    assert json.loads(written[METRICS_TAG]) == {"edit/miou": 0.40, "recon/ssim": 0.5, "fid": None}
    assert written[CHAMPION_VERSION_TAG] == "none" and written[CHAMPION_METRICS_TAG] == "none"
    assert json.loads(written[RULE_TAG])["floors"] == {"recon/ssim": 0.2}

    # Promoting it again is a no-op that says so: nothing is rewritten, not even the time stamp.
    again = promote(config, name, v1, GATE, report=report(0.10))
    assert again.outcome == "unchanged" and "already the champion" in again.reason and again.exit_code == 0
    assert tags(uri, name, v1) == written

    # A worse challenger is kept out; the tags hold both metric sets and the reason.
    v2 = register(config, name, runs[1], "model")
    assert aliases(uri, name) == {CHALLENGER: 2, CHAMPION: 1}
    worse = promote(config, name, v2, GATE, report=report(0.405))  # better, but not by the margin
    assert worse.outcome == "kept" and worse.champion_after == 1 and worse.exit_code == 0
    assert aliases(uri, name)[CHAMPION] == 1
    written = tags(uri, name, v2)
    assert written[DECISION_TAG] == "kept" and "does not beat the champion" in written[REASON_TAG]
    assert json.loads(written[CHAMPION_METRICS_TAG])["edit/miou"] == 0.40
    assert json.loads(written[METRICS_TAG])["edit/miou"] == 0.405 and written[CHAMPION_VERSION_TAG] == "1"

    # A better challenger that breaks a floor is kept out too; one that passes moves the champion.
    v3 = register(config, name, runs[2], "model")
    assert promote(config, name, v3, GATE, report=report(0.9, ssim=0.1)).outcome == "kept"
    assert aliases(uri, name)[CHAMPION] == 1
    report_uri = str(tmp_path / "v3.json")
    if s3:  # the report evaluation wrote to S3
        endpoint, artifacts = s3
        bucket = artifacts.removeprefix("s3://").partition("/")[0]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
            Bucket=bucket, Key="reports/v3.json", Body=json.dumps(report(0.5)).encode()
        )
        report_uri = f"s3://{bucket}/reports/v3.json"
    else:
        (tmp_path / "v3.json").write_text(json.dumps(report(0.5)))
    storage = StorageConfig(endpoint_url=s3[0], region="us-east-1") if s3 else None
    better = promote(config, name, v3, GATE, report=report_uri, storage=storage)
    assert better.outcome == "promoted" and (better.champion_before, better.champion_after) == (1, 3)
    assert aliases(uri, name) == {CHALLENGER: 3, CHAMPION: 3}
    assert stored_report(config, name, v3) == report(0.5)
    assert tags(uri, name, v3)[REPORT_SOURCE_TAG] == report_uri

    # A failed or missing evaluation never promotes, however good its numbers look.
    v4 = register(config, name, runs[3], "model")
    failed = promote(config, name, v4, GATE, report={**report(0.99), "status": "failed", "error": "OOM"})
    assert failed.outcome == "failed" and failed.exit_code == 1 and "evaluation failed: OOM" in failed.reason
    assert tags(uri, name, v4)[DECISION_TAG] == "failed"
    missing = promote(config, name, register(config, name, runs[4], "model"), GATE)
    assert missing.outcome == "failed" and "no evaluation report" in missing.reason
    unreadable = promote(config, name, v4, GATE, report=str(tmp_path / "nowhere.json"))
    assert unreadable.outcome == "failed" and "cannot be read" in unreadable.reason
    assert aliases(uri, name) == {CHALLENGER: 5, CHAMPION: 3}

    # A dry run decides but writes nothing; without --report the stored one is gated again.
    before = tags(uri, name, v2)
    dry = promote(config, name, v2, GateConfig(primary_metric="edit/miou"), dry_run=True)
    assert dry.outcome == "kept" and dry.dry_run and tags(uri, name, v2) == before

    champion = mlflow.MlflowClient(uri).get_model_version_by_alias(name, CHAMPION)
    local = mlflow.artifacts.download_artifacts(
        champion.source, dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    if s3:  # the server proxied the artefacts to S3: the registered source is there
        endpoint, artifacts = s3
        bucket, _, prefix = artifacts.removeprefix("s3://").partition("/")
        listing = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(
            Bucket=bucket, Prefix=prefix
        )
        keys = [item["Key"] for item in listing["Contents"]]
        assert f"{prefix}/{experiment_id}/{runs[2]}/artifacts/model/weights/generator.pt" in keys
        assert champion.source.startswith("mlflow-artifacts:/")
    with open(os.path.join(local, "weights", "generator.pt")) as handle:
        assert handle.read() == "run2"  # the champion alias serves version 3's files


def test_a_pyfunc_registers_and_loads_by_champion_alias(store, tmp_path):
    uri, experiment_id, _ = store
    config = TrackingConfig(tracking_uri=uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.pyfunc.log_model(name="editor", python_model=Doubler(), pip_requirements=[])
        version = register(config, "maskgan-editor", run.info.run_id, "editor")
        assert register(config, "maskgan-editor", run.info.run_id, "editor") == version  # idempotent
        source = mlflow.MlflowClient(uri).get_model_version("maskgan-editor", str(version)).source
        assert source.startswith("models:/m-")  # MLflow 3's logged model, not a run folder
        assert promote(config, "maskgan-editor", version, GATE, report=report(0.3)).outcome == "promoted"
        model = mlflow.pyfunc.load_model("models:/maskgan-editor@champion")
        assert model.predict([1, 2]) == [2, 4]
    finally:
        mlflow.set_tracking_uri(previous)
    with pytest.raises(ValueError, match="no logged model named 'nothing'"):
        register(config, "maskgan-editor", run.info.run_id, "nothing")
    with pytest.raises(ValueError, match="artifact_path must be a relative path"):
        register(config, "maskgan-editor", run.info.run_id, "../editor")
    with pytest.raises(ValueError, match="model name 'maskgan-gan' is not one of"):
        register(config, "maskgan-gan", run.info.run_id, "editor")


def test_a_logged_model_registers_whatever_the_process_tracking_uri(sqlite_uri, tmp_path, restore_env):
    """The SQLite registry resolves models:/<id> sources through MLflow's process-wide tracking URI;
    register() must not depend on it pointing at the same store (make run keeps its store in a workdir)."""
    config = TrackingConfig(tracking_uri=sqlite_uri)
    client = mlflow.MlflowClient(sqlite_uri)
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    experiment_id = client.create_experiment("elsewhere", (tmp_path / "artifacts").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(sqlite_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.pyfunc.log_model(name="editor", python_model=Doubler(), pip_requirements=[])
        other = f"sqlite:///{tmp_path}/other.db"
        mlflow.set_tracking_uri(other)
        assert register(config, "maskgan-editor", run.info.run_id, "editor") == 1
        assert mlflow.get_tracking_uri() == other  # restored
    finally:
        mlflow.set_tracking_uri(previous)


def stage_checkpoint(directory, stage: str) -> dict:
    """A tiny DMN- or MaskVAE-shaped checkpoint (what the training stages write); returns its state dicts."""
    import torch

    from maskgan import config as config_lib
    from maskgan.models.dmn import DenseMappingNetwork, dmn_tiny
    from maskgan.models.mask_vae import MaskVAE, mask_vae_tiny
    from maskgan.training.checkpoint import write_checkpoint

    torch.manual_seed(0)
    if stage == "dmn":
        networks = {"generator": DenseMappingNetwork(dmn_tiny()),
                    "generator_ema": DenseMappingNetwork(dmn_tiny()),
                    "discriminator": torch.nn.Linear(3, 1)}  # fmt: skip
        config = {"generator": config_lib.to_dict(dmn_tiny())}
    else:
        networks, config = (
            {"mask_vae": MaskVAE(mask_vae_tiny())},
            {"model": config_lib.to_dict(mask_vae_tiny())},
        )
    weights = {name: network.state_dict() for name, network in networks.items()}
    meta = {"stage": stage, "step": 5, "epoch": 0, "config": config, "manifest_sha256": None}
    write_checkpoint(str(directory), {"step": 5}, weights=weights, meta=meta)
    return weights


@pytest.mark.parametrize(
    "stage,name,network,exported",
    [("dmn", "maskgan-dmn", "generator", ["generator.pt", "generator_ema.pt"]),
     ("maskvae", "maskgan-maskvae", "mask_vae", ["mask_vae.pt"])],
)  # fmt: skip
def test_stage_checkpoints_register_once_and_load_back(store, tmp_path, stage, name, network, exported):
    """Issue 8: a DMN / MaskVAE run's final weights become a registered version (inference files only),
    registered once per run key and per run folder, loadable from the registry's copy, and reusable as
    the champion's checkpoint (what the chain's --reuse-champions reads)."""
    import torch

    from maskgan.evaluation import load_network

    uri, experiment_id, _ = store
    config = TrackingConfig(tracking_uri=uri)
    client = mlflow.MlflowClient(uri)
    checkpoint = tmp_path / f"{stage}-run" / "checkpoint_000000005"
    weights = stage_checkpoint(checkpoint, stage)
    run_id = client.create_run(experiment_id).info.run_id
    assert find_version_by_tag(config, name, RUN_KEY_TAG, "key-1") is None

    # the run folder stands for its newest checkpoint
    assert register_checkpoint(config, stage, run_id, str(checkpoint.parent), run_key="key-1") == (1, True)
    assert aliases(uri, name) == {CHALLENGER: 1}
    version_tags = tags(uri, name, 1)
    assert version_tags[CHECKPOINT_TAG] == str(checkpoint)
    assert (version_tags[RUN_KEY_TAG], version_tags[STEP_TAG], version_tags["maskgan.stage"]) == (
        "key-1",
        "5",
        stage,
    )
    assert find_version_by_tag(config, name, RUN_KEY_TAG, "key-1") == 1
    # again, by run key and without one: the same version, nothing new registered
    assert register_checkpoint(config, stage, run_id, str(checkpoint), run_key="key-1") == (1, False)
    assert register_checkpoint(config, stage, run_id, str(checkpoint)) == (1, False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    logged = sorted(os.path.basename(item.path) for item in client.list_artifacts(run_id, f"{stage}/weights"))
    assert logged == exported  # no discriminator, no optimiser state

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version(name, "1").source,
        dst_path=str(tmp_path / "copy"),
        tracking_uri=uri,
    )
    model, meta = load_network(local, network)
    expected = weights["generator_ema" if stage == "dmn" else network]  # the EMA generator serves
    assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.items())
    assert meta["networks"] == [file.removesuffix(".pt") for file in exported]

    assert champion_checkpoint(config, name) is None
    gate = GateConfig(primary_metric="score")
    good = {"status": "ok", "split": "val", "metrics": {"score": 0.5}}
    assert promote(config, name, 1, gate, report=good).outcome == "promoted"
    assert champion_checkpoint(config, name) == (1, str(checkpoint))


def _examples() -> list[list[str]]:
    """The command lines of promote.py's --help examples, continuation lines joined."""
    text = promote_cli.__doc__.replace("\\\n", " ")
    return [
        shlex.split(line)[2:] for line in text.splitlines() if line.strip().startswith("python pipelines/")
    ]


def _substitute(argv: list[str], values: dict[str, str]) -> list[str]:
    out = list(argv)
    for flag, value in values.items():
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


def test_help_examples_run_and_exit_codes(sqlite_uri, tmp_path, restore_env, capsys):
    client = mlflow.MlflowClient(sqlite_uri)
    experiment_id = client.create_experiment("cli", (tmp_path / "artifacts").as_uri())
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)
    config = TrackingConfig(tracking_uri=sqlite_uri)
    with pytest.raises(SystemExit) as exit_info:
        promote_cli.cli(["--help"])
    assert exit_info.value.code == 0 and "Examples:" in capsys.readouterr().out
    examples = _examples()
    assert len(examples) == 3

    # Example 1: a registered DMN version and a local report file.
    dmn = register(config, "maskgan-dmn", folder_run(sqlite_uri, experiment_id, tmp_path), "model")
    dmn_report = tmp_path / "dmn.json"
    dmn_report.write_text(json.dumps(report(0.5)))
    argv = _substitute(
        examples[0], {"--version": str(dmn), "--report": str(dmn_report), "--mlflow-uri": sqlite_uri}
    )
    assert promote_cli.cli(argv) == 0
    assert "maskgan-dmn v1: PROMOTED" in capsys.readouterr().out
    assert aliases(sqlite_uri, "maskgan-dmn")[CHAMPION] == dmn

    # Example 2: register a run's "editor" and gate it with a report read from another run (runs:/).
    editor_run = folder_run(sqlite_uri, experiment_id, tmp_path, path="editor")
    evaluation_run = client.create_run(experiment_id).info.run_id
    client.log_text(evaluation_run, json.dumps(report(0.7)), "evaluation/report.json")
    report_uri = f"runs:/{evaluation_run}/evaluation/report.json"
    argv = _substitute(examples[1], {"--run-id": editor_run, "--report": report_uri})
    assert promote_cli.cli([*argv, "--mlflow-uri", sqlite_uri]) == 0
    printed = capsys.readouterr().out
    assert f"maskgan-editor v1 <- runs:/{editor_run}/editor" in printed and "PROMOTED" in printed
    assert tags(sqlite_uri, "maskgan-editor", 1)[REPORT_SOURCE_TAG] == report_uri
    assert promote_cli.cli([*argv, "--mlflow-uri", sqlite_uri]) == 0  # run again: no second version
    assert "already the champion" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'maskgan-editor'")) == 1

    # Example 3: a dry run with bounds on the parser; it decides and writes nothing.
    parser = register(config, "maskgan-parser", folder_run(sqlite_uri, experiment_id, tmp_path), "model")
    parser_report = tmp_path / "parser.json"
    metrics = {"val/loss": 0.3, "parser/miou": 0.4, "fid": "unavailable"}
    parser_report.write_text(json.dumps({"status": "ok", "split": "val", "metrics": metrics}))
    argv = _substitute(examples[2], {"--version": str(parser), "--report": str(parser_report)})
    assert promote_cli.cli([*argv, "--mlflow-uri", sqlite_uri]) == 0
    printed = capsys.readouterr().out
    assert (
        "KEPT (dry run)" in printed
        and "parser/miou = 0.4, floor >= 0.5" in printed
        and "fid is unavailable" in printed
    )
    assert DECISION_TAG not in tags(sqlite_uri, "maskgan-parser", parser)
    assert DECIDED_AT_TAG not in tags(sqlite_uri, "maskgan-parser", parser)

    # Exit 1: a failed evaluation, an unknown version; exit 2: arguments that do not parse.
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"status": "failed", "error": "no parser weights"}))
    base = ["--model", "maskgan-parser", "--mlflow-uri", sqlite_uri]
    assert promote_cli.cli([*base, "--version", str(parser), "--report", str(failed)]) == 1
    assert "FAILED -- the evaluation failed: no parser weights" in capsys.readouterr().out
    assert promote_cli.cli([*base, "--version", "99", "--report", str(failed)]) == 1
    assert "has no version 99" in capsys.readouterr().err
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    argv = ["--model", "maskgan-dmn", "--version", "1", "--mlflow-uri", f"http://127.0.0.1:{closed}"]
    assert promote_cli.cli(argv) == 1
    assert "not reachable" in capsys.readouterr().err
    for bad, message in (
        (["--floor", "parser/miou"], "--floor 'parser/miou' must be NAME=NUMBER"),
        (["--margin", "-1"], "gate.margin must be finite and >= 0"),
        (["--direction", "up"], "invalid choice: 'up'"),
        (["--run-id", "x"], "not allowed with argument --version"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            promote_cli.cli([*base, "--version", "1", *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
