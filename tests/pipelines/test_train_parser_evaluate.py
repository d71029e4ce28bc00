"""The parser entrypoint on Ray Train (checkpoint, MLflow run, maskgan-parser version), then the evaluate
entrypoint on that checkpoint (report beside it, MLflow run), then the gate promoting it with that report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import mlflow

from maskgan import registry
from maskgan.tracking import TrackingConfig


def _entrypoint(name: str):
    path = Path(__file__).resolve().parents[2] / "pipelines" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pipelines_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_train_parser_registers_and_evaluate_writes_a_report_the_gate_promotes(
    tmp_path, train_dataset, ray_session
):
    db = f"sqlite:///{tmp_path}/mlflow.db"
    train_parser = _entrypoint("train_parser")
    code = train_parser.run([
        "--preset", "parser_tiny", "--data", train_dataset, "--storage", str(tmp_path / "runs"),
        "--mlflow-uri", db, "--max-steps", "4", "--num-workers", "1", "--run-key", "parser-test",
        "--set", "loop.batch_size=4", "--set", "loop.checkpoint_every=2", "--set", "loop.val_every=4",
        "--set", "loop.val_batches=1",
    ])  # fmt: skip
    assert code == 0
    client = mlflow.MlflowClient(db)
    [run] = client.search_runs(
        [client.get_experiment_by_name("maskgan").experiment_id], "tags.`maskgan.stage` = 'parser'"
    )
    assert "val/miou" in run.data.metrics and "loss/dice" in run.data.metrics
    checkpoint_uri = run.data.tags["maskgan.checkpoint_uri"]
    assert checkpoint_uri.endswith("checkpoint_000000004")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "parser")}
    assert logged == {"parser/meta.json", "parser/weights"}
    tracking = TrackingConfig(tracking_uri=db)
    version = client.get_model_version_by_alias(train_parser.REGISTERED_NAME, "challenger")
    assert version.run_id == run.info.run_id and int(version.version) == 1

    evaluate = _entrypoint("evaluate")
    code = evaluate.run([
        "--model", str(tmp_path / "runs" / "parser-parser-test"), "--data", train_dataset, "--split", "val",
        "--mlflow-uri", db, "--batch-size", "4",
    ])  # fmt: skip
    assert code == 0
    report_path = Path(checkpoint_uri) / "evaluation-val.json"  # the newest checkpoint of the run folder
    report = json.loads(report_path.read_text())
    assert report["status"] == "ok" and report["stage"] == "parser" and report["step"] == 4
    assert set(report["metrics"]) == {"parser/pixel_accuracy", "parser/miou"}
    eval_runs = client.search_runs(
        [client.get_experiment_by_name("maskgan").experiment_id], "tags.`maskgan.stage` = 'evaluation'"
    )
    assert [r.data.metrics["parser/miou"] for r in eval_runs] == [report["metrics"]["parser/miou"]]

    decision = registry.promote(tracking, train_parser.REGISTERED_NAME, 1, report=str(report_path))
    assert decision.outcome == "promoted", decision.reason  # the first version with a valid report
    assert int(client.get_model_version_by_alias(train_parser.REGISTERED_NAME, "champion").version) == 1

    # A model that is not there: exit 1 and a failed report where asked.
    failed_report = tmp_path / "failed.json"
    code = evaluate.run([
        "--model", str(tmp_path / "nothing"), "--data", train_dataset, "--report", str(failed_report),
        "--no-mlflow",
    ])  # fmt: skip
    assert code == 1 and json.loads(failed_report.read_text())["status"] == "failed"
