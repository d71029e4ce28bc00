"""Tracker against real MLflow stores: a SQLite file, an `mlflow server`, S3 artefacts on moto."""

from __future__ import annotations

import os
import socket

import boto3
import mlflow
import pytest
import torch

from maskgan.storage import StorageConfig
from maskgan.tracking import (
    RUN_KEY_TAG,
    STAGE_TAG,
    Tracker,
    TrackingConfig,
    TrackingError,
    find_run,
    image_grid,
)

PARAMS = {"loop": {"max_steps": 4, "batch_size": 2}, "model": {"widths": [8, 16]}}


@pytest.fixture
def restore_env():
    """Tracker.start sets process-wide MLflow variables; keep them from leaking into other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); tests use their own experiments."""
    # A folder that does not exist yet: Tracker.start must create it (SQLite would not).
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/new-folder/mlflow.db"


@pytest.fixture
def sqlite_config(sqlite_uri, request):
    def make(**kwargs) -> TrackingConfig:
        kwargs.setdefault("experiment", request.node.name[:60])
        return TrackingConfig(tracking_uri=sqlite_uri, **kwargs)

    return make


def grid() -> object:
    return image_grid({"mask": torch.zeros(2, 16, 16, dtype=torch.long), "image": torch.zeros(2, 3, 16, 16)})


def test_run_logs_and_resumes_in_sqlite(tmp_path, sqlite_config, restore_env):
    config = sqlite_config()
    tags = {"maskgan.dataset": "abc"}
    tracker = Tracker.start(config, run_key="key1", stage="dmn", params=PARAMS, tags=tags)
    assert not tracker.resumed
    assert os.path.isfile(config.tracking_uri.removeprefix("sqlite:///"))
    tracker.log_metrics({"loss/g": 2.0, "lr": torch.tensor(1e-3)}, step=1)
    tracker.log_metrics({"loss/g": 1.5}, step=2)
    assert tracker.log_image(grid(), "grid.png", step=2) == "images/grid_step0000002.png"
    notes = tmp_path / "notes.txt"
    notes.write_text("checkpoint at s3://x")
    tracker.log_artifact(str(notes), "meta")
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "sub" / "config.yaml").write_text("a: 1")
    tracker.log_artifact(str(tmp_path / "folder"), "run")
    tracker.finish()

    # A restarted job with the same key continues the same run and its metric history.
    resumed = Tracker.start(
        config, run_key="key1", stage="dmn", params=PARAMS, tags={"checkpoint": "s3://x/3"}
    )
    assert resumed.resumed and resumed.run_id == tracker.run_id
    resumed.log_metrics({"loss/g": 1.0}, step=3)
    client = mlflow.MlflowClient(config.tracking_uri)
    assert client.get_run(resumed.run_id).info.status == "RUNNING"
    resumed.finish("FAILED")

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.params == {"loop.max_steps": "4", "loop.batch_size": "2", "model.widths": "[8, 16]"}
    assert run.data.tags[RUN_KEY_TAG] == "key1" and run.data.tags[STAGE_TAG] == "dmn"
    assert run.data.tags["maskgan.dataset"] == "abc" and run.data.tags["checkpoint"] == "s3://x/3"
    assert run.data.tags["maskgan.git_commit"]
    history = client.get_metric_history(run.info.run_id, "loss/g")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert client.get_metric_history(run.info.run_id, "lr")[0].value == pytest.approx(1e-3)
    images = client.list_artifacts(run.info.run_id, "images")
    assert [f.path for f in images] == ["images/grid_step0000002.png"]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "meta")] == ["meta/notes.txt"]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "run/sub")] == ["run/sub/config.yaml"]

    # Another stage (or key) is another run; find_run sees each.
    other = Tracker.start(config, run_key="key1", stage="ebst", params=PARAMS, tags={})
    assert other.run_id != tracker.run_id
    assert find_run(config, run_key="key1", stage="ebst").info.run_id == other.run_id
    assert find_run(config, run_key="key2", stage="dmn") is None
    other.finish()


def test_changed_params_are_refused_by_name_unless_allowed(sqlite_config, restore_env):
    config = sqlite_config()
    first = Tracker.start(config, run_key="k", stage="maskvae", params=PARAMS, tags={})
    first.finish()
    changed = {"loop": {"max_steps": 8, "batch_size": 4}, "model": {"widths": [8, 16]}, "extra": 1}
    with pytest.raises(ValueError, match=r"loop.batch_size: logged '2', now '4'; loop.max_steps: logged '4'"):
        Tracker.start(config, run_key="k", stage="maskvae", params=changed, tags={})
    client = mlflow.MlflowClient(config.tracking_uri)
    assert client.get_run(first.run_id).info.status == "FINISHED"  # the refused start touched nothing
    assert "extra" not in client.get_run(first.run_id).data.params

    resumed = Tracker.start(config, run_key="k", stage="maskvae", params=changed, tags={},
                            allow_changed=("loop",))  # fmt: skip
    assert resumed.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.data.params["loop.max_steps"] == "4"  # MLflow keeps the first value
    assert run.data.params["extra"] == "1"  # new params are added
    assert run.data.tags["maskgan.changed_params"] == "loop.batch_size=4, loop.max_steps=8"
    resumed.finish()


def test_deleted_experiment_is_refused_by_name(sqlite_config, restore_env):
    config = sqlite_config(experiment="to-delete")
    Tracker.start(config, run_key="k", stage="dmn", params={}, tags={}).finish()
    client = mlflow.MlflowClient(config.tracking_uri)
    client.delete_experiment(client.get_experiment_by_name("to-delete").experiment_id)
    with pytest.raises(ValueError, match="experiment 'to-delete' is deleted; restore it"):
        Tracker.start(config, run_key="k", stage="dmn", params={}, tags={})


def test_bad_run_key_is_refused(sqlite_config):
    with pytest.raises(ValueError, match="run_key"):
        Tracker.start(sqlite_config(), run_key="a' or '1'='1", stage="dmn", params={}, tags={})
    with pytest.raises(ValueError, match=r"tags\['maskgan.stage'\] = 'ebst' contradicts 'dmn'"):
        Tracker.start(sqlite_config(), run_key="k", stage="dmn", params={}, tags={STAGE_TAG: "ebst"})


def test_context_manager_marks_a_crash_failed(sqlite_config, restore_env):
    config = sqlite_config()
    with pytest.raises(RuntimeError):
        with Tracker.start(config, run_key="k", stage="dmn", params={}, tags={}) as tracker:
            raise RuntimeError("boom")
    assert mlflow.MlflowClient(config.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


@pytest.mark.timeout(90)  # MLflow's default retries would take minutes: a hang fails here
def test_unreachable_server_fails_fast_naming_the_uri(restore_env):
    os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        config = TrackingConfig(tracking_uri=f"http://user:hunter2@127.0.0.1:{port}")
        with pytest.raises(TrackingError, match=rf"http://127.0.0.1:{port} is not reachable") as caught:
            Tracker.start(config, run_key="k", stage="dmn", params={}, tags={})
        assert "hunter2" not in str(caught.value)
        with pytest.raises(TrackingError, match="not reachable"):
            find_run(config, run_key="k", stage="dmn")
    # Later MLflow calls of this process retry briefly too (an explicit environment would win).
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


def test_tracker_against_an_mlflow_server(mlflow_server, restore_env):
    config = TrackingConfig(tracking_uri=mlflow_server, experiment="server-test")
    tracker = Tracker.start(config, run_key="srv", stage="dmn", params=PARAMS, tags={"a": "b"})
    tracker.log_metrics({"loss/d": 0.5}, step=1)
    path = tracker.log_image(grid(), "grid", step=1)
    tracker.finish()
    resumed = Tracker.start(config, run_key="srv", stage="dmn", params=PARAMS, tags={})
    assert resumed.run_id == tracker.run_id and resumed.resumed
    resumed.log_metrics({"loss/d": 0.25}, step=2)
    resumed.finish()

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["loop.max_steps"] == "4"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss/d")] == [0.5, 0.25]
    # The artefact went through the server's artefact proxy and comes back as a PNG.
    local = client.download_artifacts(tracker.run_id, path, dst_path=None)
    with open(local, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.s3
def test_artifacts_land_in_s3(sqlite_config, s3_bucket, restore_env):
    bucket_uri, storage_config = s3_bucket
    os.environ.pop("MLFLOW_S3_ENDPOINT_URL", None)
    config = sqlite_config(artifact_location=f"{bucket_uri}/mlflow")
    tracker = Tracker.start(config, run_key="s3", stage="dmn", params=PARAMS, tags={}, storage=storage_config)
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == storage_config.endpoint_url
    path = tracker.log_image(grid(), "grid", step=5)
    tracker.finish()

    client = boto3.client("s3", endpoint_url=storage_config.endpoint_url, region_name="us-east-1")
    bucket = bucket_uri.removeprefix("s3://")
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix="mlflow/")["Contents"]]
    assert keys == [f"mlflow/{tracker.run_id}/artifacts/{path}"]
    assert path == "images/grid_step0000005.png"

    # Secrets stay out of the environment: explicit storage credentials that differ are refused.
    explicit = StorageConfig(
        endpoint_url=storage_config.endpoint_url, access_key_id="other", secret_access_key="x"
    )
    with pytest.raises(ValueError, match="set the credentials in the environment"):
        Tracker.start(config, run_key="s3b", stage="dmn", params={}, tags={}, storage=explicit)


def test_sqlite_artefacts_default_beside_the_database_not_the_working_folder(
    tmp_path, monkeypatch, restore_env
):
    """With no artifact_location, a Ray worker's working folder must not receive the run's images."""
    work = tmp_path / "worker-cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    config = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/store/mlflow.db", experiment="beside-db")
    tracker = Tracker.start(config, run_key="k", stage="dmn", params=PARAMS, tags={})
    tracker.log_image(grid(), "grid", step=1)
    tracker.finish()
    assert not (work / "mlruns").exists()
    assert list((tmp_path / "store" / "mlartifacts").rglob("grid_step*.png"))
