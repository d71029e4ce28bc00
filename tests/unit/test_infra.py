"""The deployment files (ray_cluster.yaml, infra/) parse, pass Ray's own cluster-config validation, name
real entrypoints, flags and presets, hold no inline secret, and keep 8265/5000/10001 off the internet.

Offline and CPU-only: Ray's validator runs on the YAML without AWS calls; the MLflow recipe runs
with a stand-in `mlflow` executable that records its arguments, which the real `mlflow server`
command-line definition then parses.
"""

from __future__ import annotations

import configparser
import copy
import os
import re
import stat
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from tests.unit import infra_checks as checks
from tests.unit.infra_checks import INFRA, ROOT

# Flags the schedules may name before the entrypoint knows them (announced, not built yet). None today:
# `train_ebst.py --chain` (issue 9 point 1) has landed.
PENDING_FLAGS: set[str] = set()

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def load_yaml(relative: str) -> list:
    return [d for d in yaml.safe_load_all((ROOT / relative).read_text()) if d is not None]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


# ---------------------------------------------------------------- every file parses


def _parse(path):
    """Parse one deployment file by its kind; a file of an unknown kind fails (add a check for it)."""
    text = path.read_text()
    name = path.name
    if name.endswith(".yaml"):
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        assert documents, f"{path}: no YAML document"
        if path.parent != ROOT:
            for document in documents:
                assert {"apiVersion", "kind", "metadata"} <= set(document), f"{path}: not a k8s object"
    elif name == "Dockerfile":
        instructions = checks.dockerfile_instructions(text)
        unknown = {keyword for keyword, _ in instructions} - checks.DOCKERFILE_INSTRUCTIONS
        assert not unknown, f"{path}: unknown instructions {unknown}"
        assert next(k for k, _ in instructions if k != "ARG") == "FROM"
    elif name == "crontab":
        _, entries = checks.crontab_entries(text)
        assert entries, f"{path}: no cron entry"
    elif name.endswith(".sh"):
        subprocess.run(["bash", "-n", str(path)], check=True)
        assert os.stat(path).st_mode & stat.S_IXUSR, f"{path} must be executable"
    elif name.endswith(".service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str
        unit.read_string(text)
        assert {"Unit", "Service", "Install"} <= set(unit.sections())
    elif name.endswith(".env.example"):
        for line in text.splitlines():
            assert not line.strip() or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=\S*$", line), line
    elif name == "constraints.txt":
        for line in text.splitlines():
            pinned = re.match(r"^[\w.\-\[\],]+==[\w.]+$", line)
            assert not line.strip() or line.startswith("#") or pinned, line
    elif name.endswith(".dockerignore"):
        assert text.strip()
    else:
        pytest.fail(f"{path}: no parser for this kind of file; add one to tests/unit/test_infra.py")


@pytest.mark.parametrize("path", checks.deployment_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deployment_file_parses(path):
    _parse(path)


# ---------------------------------------------------------------- ray_cluster.yaml


def test_ray_cluster_passes_ray_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(cluster)  # as written
    validate_config(prepare_config(copy.deepcopy(cluster)))  # after Ray fills its AWS defaults (offline)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["gpu_train"]["resources"].update(GPU=0.5),  # fractional
        lambda c: c.update(head_node_type="missing"),
        lambda c: c["docker"].update(imagee="typo"),
        lambda c: c["available_node_types"]["gpu_train"].update(min_workers=20),  # > global max_workers
    ],
)
def test_ray_validation_rejects_a_broken_cluster(cluster, breakage):
    """The validator is really consulted: a planted error fails it."""
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(cluster)
    breakage(broken)
    with pytest.raises(Exception):  # noqa: B017 (jsonschema.ValidationError or ValueError)
        validate_config(broken)


def test_ray_cluster_shape(cluster):
    """CPU head without tasks, a CPU and a GPU worker type that scale from 0, IAM profiles, pinned image."""
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for t in workers.values() if not t["resources"].get("GPU")]
    assert gpu and cpu
    for worker in workers.values():
        assert 0 == worker["min_workers"] < worker["max_workers"]
    assert cluster["max_workers"] >= sum(w["max_workers"] for w in workers.values())
    for name, node_type in types.items():
        assert "Name" in node_type["node_config"]["IamInstanceProfile"], name
    assert cluster["docker"]["image"].endswith(f":{VERSION}"), "image tag must be the pyproject version"
    assert any(f"== '{VERSION}'" in command for command in cluster["setup_commands"])
    assert "auth" not in cluster or "ssh_private_key" not in cluster["auth"]


def test_ray_start_commands_use_real_flags(cluster):
    from ray.scripts.scripts import start

    commands = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c.strip() for cmd in commands for c in cmd.split(";") if c.strip().startswith("ray start")]
    assert len(ray_starts) == 2
    for command in ray_starts:
        start.make_context("start", checks.shell_words(command)[2:])  # raises on an unknown flag


# ---------------------------------------------------------------- the MLflow recipe


@pytest.fixture
def fake_mlflow(tmp_path):
    """A stand-in `mlflow` on PATH recording its argv and environment (the script is what is tested)."""
    record = tmp_path / "record"
    binary = tmp_path / "bin" / "mlflow"
    binary.parent.mkdir()
    binary.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}.argv\nenv > {record}.env\n')
    binary.chmod(0o755)
    env = {"PATH": f"{binary.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return record, env


def _run_recipe(fake_mlflow, **variables):
    record, env = fake_mlflow
    script = INFRA / "mlflow" / "mlflow-server.sh"
    result = subprocess.run([str(script)], env={**env, **variables}, capture_output=True, text=True)
    if result.returncode:
        return result, None, None
    argv = record.with_suffix(".argv").read_text().splitlines()
    environment = dict(line.split("=", 1) for line in record.with_suffix(".env").read_text().splitlines())
    return result, argv, environment


def test_mlflow_recipe_runs_a_low_memory_server_with_s3_artefacts(fake_mlflow, tmp_path):
    from mlflow.cli import server

    db = tmp_path / "db" / "mlflow.db"
    result, argv, environment = _run_recipe(
        fake_mlflow,
        MLFLOW_ARTIFACTS_DESTINATION="s3://bucket/mlflow",
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{db}",
    )
    assert result.returncode == 0, result.stderr
    assert argv[0] == "server"
    params = server.make_context("server", argv[1:]).params  # the real CLI accepts every flag
    assert str(params["workers"]) == "1"  # click keeps it a string (uvicorn parses it)
    assert params["artifacts_destination"] == "s3://bucket/mlflow" and params["serve_artifacts"]
    assert params["backend_store_uri"] == f"sqlite:///{db}" and db.parent.is_dir()
    assert params["host"] == "127.0.0.1", "listens on loopback unless told otherwise"
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.parametrize("destination", [None, "/tmp/artefacts", "file:///tmp/a"])
def test_mlflow_recipe_refuses_non_s3_artefacts(fake_mlflow, destination):
    variables = {} if destination is None else {"MLFLOW_ARTIFACTS_DESTINATION": destination}
    result, argv, _ = _run_recipe(fake_mlflow, **variables)
    assert result.returncode != 0 and argv is None
    assert "MLFLOW_ARTIFACTS_DESTINATION" in result.stderr


def test_ray_head_starts_the_recipe_reachable_from_the_vpc(cluster, fake_mlflow):
    """The head's MLflow command runs the recipe in the image; with its variables it serves on all
    interfaces (the security group admits only the VPC)."""
    from mlflow.cli import server

    command = next(c for c in cluster["head_start_ray_commands"] if "mlflow-server.sh" in c)
    match = re.search(r"\(((?:\w+=\S+\s+)+)nohup (\S+)", command)
    assert match and checks.repo_path(match.group(2)) == INFRA / "mlflow" / "mlflow-server.sh"
    variables = dict(pair.split("=", 1) for pair in match.group(1).split())
    variables["MLFLOW_BACKEND_STORE_URI"] = "sqlite:////tmp/unused/mlflow.db"  # not /var/lib here
    result, argv, _ = _run_recipe(fake_mlflow, **variables)
    assert result.returncode == 0, result.stderr
    params = server.make_context("server", argv[1:]).params
    assert params["host"] == "0.0.0.0" and int(params["port"]) == 5000
    assert params["artifacts_destination"].startswith("s3://")


def test_systemd_and_kubernetes_run_the_recipe():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((INFRA / "mlflow" / "mlflow.service").read_text())
    exec_start = unit["Service"]["ExecStart"]
    assert checks.repo_path(exec_start.removeprefix("/opt/maskgan")) == INFRA / "mlflow" / "mlflow-server.sh"
    deployment = next(d for d in load_yaml("infra/mlflow/kubernetes.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert checks.repo_path(container["command"][0]) == INFRA / "mlflow" / "mlflow-server.sh"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert container["image"].endswith(f":{VERSION}")


# ---------------------------------------------------------------- schedules


def _schedules() -> dict[str, tuple[list[str] | None, list[str]]]:
    """{where: (ray job submit args or None, entrypoint words)} for every schedule in infra/schedule/."""
    found = {}
    _, entries = checks.crontab_entries((INFRA / "schedule" / "crontab").read_text())
    for i, (_, command) in enumerate(entries):
        found[f"crontab[{i}]"] = checks.split_submit(checks.shell_words(command.replace("\\%", "%")))
    rayjob = load_yaml("infra/schedule/rayjob.yaml")[0]
    found["rayjob"] = (None, checks.shell_words(rayjob["spec"]["entrypoint"]))
    raycronjob = load_yaml("infra/schedule/raycronjob.yaml")[0]
    found["raycronjob"] = (None, checks.shell_words(raycronjob["spec"]["jobTemplate"]["entrypoint"]))
    cronjob = next(d for d in load_yaml("infra/schedule/cronjob.yaml") if d["kind"] == "CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][-1].replace("$$", "$")  # Kubernetes' escape for a literal $
    found["cronjob"] = checks.split_submit(checks.shell_words(script))
    return found


SCHEDULES = _schedules()


@pytest.mark.parametrize("where", sorted(SCHEDULES))
def test_schedule_names_a_real_entrypoint_flags_and_preset(where):
    _, entrypoint = SCHEDULES[where]
    assert checks.entrypoint_problems(entrypoint, PENDING_FLAGS) == []


@pytest.mark.parametrize("where", sorted(w for w, (submit, _) in SCHEDULES.items() if submit is not None))
def test_schedule_submits_with_a_dated_submission_id_and_run_key(where):
    from ray.dashboard.modules.job.cli import submit as submit_command

    submit_args, entrypoint = SCHEDULES[where]
    params = submit_command.make_context("submit", [*submit_args, "--", *entrypoint]).params
    assert params["working_dir"] == "."
    submission_id = params["submission_id"]
    assert re.fullmatch(r"maskgan-retrain-\d{8}", submission_id), submission_id
    run_key = entrypoint[entrypoint.index("--run-key") + 1]
    assert run_key == submission_id, "the day's run key resumes the day's chain"


def test_all_schedules_run_the_same_chain():
    """Same script, preset, data, storage and resources wherever the schedule lives."""

    def essentials(words):
        keep = ("--preset", "--data", "--storage", "--num-workers", "--gpus-per-worker")
        return words[1], "--chain" in words, {flag: words[words.index(flag) + 1] for flag in keep}

    chains = {where: essentials(entrypoint) for where, (_, entrypoint) in SCHEDULES.items()}
    assert len(set(map(repr, chains.values()))) == 1, chains
    assert next(iter(chains.values()))[:2] == ("pipelines/train_ebst.py", True)


def test_raycronjob_runs_exactly_the_rayjob():
    rayjob = load_yaml("infra/schedule/rayjob.yaml")[0]
    raycronjob = load_yaml("infra/schedule/raycronjob.yaml")[0]
    assert raycronjob["spec"]["jobTemplate"] == rayjob["spec"]
    assert checks.cron_field_problems("30", 0, 59) == []
    minute, hour, dom, month, dow = raycronjob["spec"]["schedule"].split()
    for field, (low, high) in zip((minute, hour, dom, month, dow), checks.CRON_RANGES, strict=True):
        assert checks.cron_field_problems(field, low, high) == []


def test_kuberay_images_and_versions_are_pinned():
    rayjob = load_yaml("infra/schedule/rayjob.yaml")[0]
    spec = rayjob["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == _pin("ray")
    images = re.findall(r"image: (\S+)", (INFRA / "schedule" / "rayjob.yaml").read_text())
    images += re.findall(r"image: (\S+)", (INFRA / "schedule" / "cronjob.yaml").read_text())
    assert images and all(image.endswith(f":{VERSION}") for image in images)


def test_crontab_escapes_percent_and_sets_its_environment():
    env, entries = checks.crontab_entries((INFRA / "schedule" / "crontab").read_text())
    assert {"RAY_ADDRESS", "SHELL"} <= set(env)
    for _, command in entries:
        assert "%" not in command.replace("\\%", ""), "cron turns an unescaped % into a newline"


@pytest.mark.parametrize(
    "line", ["61 2 * * 1 echo", "30 2 * * echo", "30 2 * 13 1 echo", "*/x 2 * * 1 echo", "@weekly"]
)
def test_crontab_parser_rejects_bad_entries(line):
    with pytest.raises(ValueError):
        checks.crontab_entries(line)


def test_entrypoint_checker_finds_bad_entrypoints():
    ok = ["python", "pipelines/train_ebst.py", "--preset", "ebst_tiny"]
    assert checks.entrypoint_problems(ok, set()) == []
    assert checks.entrypoint_problems(["python", "pipelines/train_nothing.py"], set())
    assert checks.entrypoint_problems([*ok[:2], "--preset", "ebst_huge"], set())
    assert checks.entrypoint_problems([*ok, "--num-wrokers", "4"], set())
    assert checks.entrypoint_problems(ok[:2], set()), "the preset must be named"


# ---------------------------------------------------------------- no secrets, no public ports


@pytest.mark.parametrize("path", checks.deployment_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_secret(path):
    assert checks.secret_problems(path.read_text()) == []


@pytest.mark.parametrize(
    "text",
    [
        "AKIA" + "IOSFODNN7EXAMPLE",  # AWS's documented example key, split so scanners skip this file
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "--backend-store-uri postgresql://mlflow:hunter22@db:5432/mlflow",
        "-----BEGIN RSA PRIVATE KEY-----",
        "MLFLOW_TRACKING_PASSWORD=hunter22",
        "{name: PGPASSWORD, value: hunter22}",
        "- name: MLFLOW_TRACKING_TOKEN\n  value: abcdef123456",
    ],
)
def test_secret_scan_finds_planted_secrets(text):
    assert checks.secret_problems(text)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://mlflow@db:5432/mlflow",
        "valueFrom: {secretKeyRef: {name: mlflow-db, key: password}}",
        "aws ecr get-login-password | docker login --username AWS --password-stdin x.amazonaws.com",
        "MetadataOptions: {HttpTokens: required}",
        "PGPASSWORD=$PGPASSWORD",
        "- name: PGPASSWORD\n  valueFrom: {secretKeyRef: {name: mlflow-db, key: password}}",
    ],
)
def test_secret_scan_passes_references(text):
    assert checks.secret_problems(text) == []


def test_private_ports_admit_only_the_vpc(cluster):
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    assert {port for port in checks.PRIVATE_PORTS if any(checks._covers(r, port) for r in rules)} == set(
        checks.PRIVATE_PORTS
    ), "declare who may reach each port (the VPC), so nobody adds 0.0.0.0/0 later"
    assert checks.security_group_problems(rules) == []
    opened = copy.deepcopy(rules)
    opened[0]["IpRanges"].append({"CidrIp": "0.0.0.0/0"})
    assert checks.security_group_problems(opened) == ["port 8265 open to 0.0.0.0/0"]
    assert checks.security_group_problems([{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "8.8.8.0/24"}]}])


@pytest.mark.parametrize("relative", sorted(str(p.relative_to(ROOT)) for p in INFRA.rglob("*.yaml")))
def test_kubernetes_objects_stay_inside_the_cluster(relative):
    assert checks.kubernetes_exposure_problems(load_yaml(relative)) == []


def test_exposure_checker_finds_public_services():
    service = {"kind": "Service", "spec": {"type": "LoadBalancer", "ports": [{"port": 8265}]}}
    assert checks.kubernetes_exposure_problems([service])
    assert checks.kubernetes_exposure_problems([{"spec": {"headGroupSpec": {"serviceType": "NodePort"}}}])
    assert checks.kubernetes_exposure_problems([{"ports": [{"containerPort": 5000, "hostPort": 5000}]}])


# ---------------------------------------------------------------- the image


def _pin(name: str) -> str:
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#") and Requirement(line).name.lower() == name.lower():
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in infra/constraints.txt")


def test_every_dependency_is_pinned_within_its_range():
    for dependency in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(dependency)
        pinned = _pin(requirement.name)
        assert requirement.specifier.contains(pinned, prereleases=True), f"{dependency} vs =={pinned}"
    assert "default" in next(
        Requirement(line).extras
        for line in (INFRA / "constraints.txt").read_text().splitlines()
        if line.startswith("ray[")
    ), "cluster nodes need ray[default] (dashboard, job server)"


def test_dockerfile_builds_the_pinned_project_as_a_non_root_user():
    instructions = checks.dockerfile_instructions((INFRA / "Dockerfile").read_text())
    base = next(args for keyword, args in instructions if keyword == "FROM")
    assert base.startswith("nvidia/cuda:") and "latest" not in base
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "python3.11" in " ".join(args for _, args in instructions)
    assert "pip install -r /tmp/constraints.txt" in runs and "pip install --no-deps ." in runs
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    for keyword, args in instructions:
        if keyword in ("COPY", "ADD"):
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{keyword} {source}: not in the repository"
        if keyword in ("ARG", "ENV"):
            assert not re.search(r"(?i)secret|password|token|access_key", args), f"{keyword} {args}"
    workdir = [args for keyword, args in instructions if keyword == "WORKDIR"][-1]
    assert workdir == checks.IMAGE_ROOT, "paths in the manifests assume the repository at IMAGE_ROOT"


def _shell_commands() -> dict[str, str]:
    """Every shell command line the deployment files hand to a shell, as that shell receives it."""
    cluster = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    found = {f"ray_cluster.{key}[{i}]": command for key in keys for i, command in enumerate(cluster[key])}
    _, entries = checks.crontab_entries((INFRA / "schedule" / "crontab").read_text())
    found |= {f"crontab[{i}]": command.replace("\\%", "%") for i, (_, command) in enumerate(entries)}
    cronjob = next(d for d in load_yaml("infra/schedule/cronjob.yaml") if d["kind"] == "CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    found["cronjob"] = container["args"][-1].replace("$$", "$")
    return found


@pytest.mark.parametrize("where", sorted(_shell_commands()))
def test_shell_commands_are_valid_bash(where):
    result = subprocess.run(["bash", "-n", "-c", _shell_commands()[where]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_setup_command_checks_the_installed_version(cluster):
    """The version check really runs: here (maskgan VERSION installed) it passes, for another it fails."""
    command = next(c for c in cluster["setup_commands"] if "importlib.metadata" in c)
    python = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    assert subprocess.run(["bash", "-c", command], env=python, capture_output=True).returncode == 0
    other = command.replace(f"'{VERSION}'", "'0.0.0-other'")
    failed = subprocess.run(["bash", "-c", other], env=python, capture_output=True, text=True)
    assert failed.returncode != 0 and "expects" in failed.stderr
