"""infra/serve_editor.yaml: a valid Ray Serve config whose import path builds the editor app from its args.

Offline: Ray's own schema validates the file; the app builder runs (it binds deployments, starts nothing).
test_infra.py also runs its secret scan and Kubernetes exposure check on this file.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from maskgan.serving.app import APP_NAME
from maskgan.serving.config import DEFAULT_MODEL_URI, ServeConfig
from tests.unit.infra_checks import INFRA, secret_problems

PATH = INFRA / "serve_editor.yaml"


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(PATH.read_text())


def _builder(import_path: str):
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def test_ray_accepts_the_serve_config(serve_config):
    schema = ServeDeploySchema.model_validate(serve_config)
    (application,) = schema.applications
    assert application.name == APP_NAME and application.route_prefix == "/"


def test_ray_rejects_a_broken_serve_config(serve_config):
    """The schema is really consulted: a planted typo fails it."""
    broken = copy.deepcopy(serve_config)
    broken["applications"][0]["improt_path"] = broken["applications"][0].pop("import_path")
    with pytest.raises(Exception):  # noqa: B017 (pydantic.ValidationError)
        ServeDeploySchema.model_validate(broken)


def test_import_path_builds_the_app_from_the_args(serve_config):
    application = serve_config["applications"][0]
    app = _builder(application["import_path"])(application["args"])
    ingress = app._bound_deployment
    config, model_app = ingress.init_args
    assert isinstance(config, ServeConfig)
    assert config.model_uri == DEFAULT_MODEL_URI, "the cluster serves the registry's champion"
    assert config.tracking_uri and config.tracking_uri.startswith("http")
    model = model_app._bound_deployment
    autoscaling = model._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (config.num_replicas, config.max_replicas)
    assert model.ray_actor_options["num_gpus"] == config.model_num_gpus >= 1
    assert config.device == "auto" and config.max_surge_percent > 0, "rollouts keep old replicas serving"


def test_unknown_args_are_refused_by_name(serve_config):
    application = serve_config["applications"][0]
    with pytest.raises(ValueError, match="serve.max_replica "):
        _builder(application["import_path"])({**application["args"], "max_replica": 3})


def test_no_secret_and_no_credentials_in_the_args(serve_config):
    assert secret_problems(PATH.read_text()) == []
    for value in serve_config["applications"][0]["args"].values():
        assert "@" not in str(value).split("//", 1)[-1].split("/", 1)[0], f"credentials in a URI: {value}"
