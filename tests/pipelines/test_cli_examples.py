"""Every example in every entrypoint's --help runs as written, from a fresh folder.

Examples are taken from the --help text itself, so one that stops working fails here. Local paths
are relative to a temporary working folder; s3://bucket becomes a bucket on the moto server, and
http://127.0.0.1:9000 that server's address. The subprocesses join this session's Ray (RAY_ADDRESS)
instead of starting one each.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from preprocess_helpers import assert_reconciles

from maskgan.data import loader
from maskgan.data.preprocess import PreprocessConfig
from maskgan.storage import StorageConfig
from pipelines import make_synthetic, run_pipeline
from pipelines import preprocess as preprocess_cli

REPO = Path(__file__).resolve().parents[2]
# In the order a person would run them: data first, then preprocessing, then the main job.
PARSERS = {
    "make_synthetic.py": make_synthetic.build_parser,
    "preprocess.py": preprocess_cli.build_parser,
    "run_pipeline.py": run_pipeline.build_parser,
}


def help_examples(build_parser) -> list[list[str]]:
    """The `python pipelines/...` command lines of a parser's --help (backslash continuations joined)."""
    text = build_parser().format_help().replace("\\\n", " ")
    return [
        shlex.split(line.strip())
        for line in text.splitlines()
        if line.strip().startswith("python pipelines/")
    ]


def test_every_entrypoint_has_examples():
    for name, build_parser in PARSERS.items():
        examples = help_examples(build_parser)
        assert examples, name
        assert all(example[1] == f"pipelines/{name}" for example in examples), name


def test_every_help_example_runs(tmp_path, ray_session, s3_server):
    bucket = f"examples-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    }  # fmt: skip
    ran = []
    for build_parser in PARSERS.values():
        for example in help_examples(build_parser):
            if example[1] == "pipelines/run_pipeline.py" and "--no-train" not in example:
                # The whole chain behind the main job (4 trainings, evaluations, registry, gate: ~2 min a
                # run) is what tests/pipelines/test_chain.py runs; here its examples' data part.
                example = [*example, "--no-train"]
            command = [sys.executable, str(REPO / example[1])] + [
                re.sub(r"^s3://bucket\b", f"s3://{bucket}", arg).replace("http://127.0.0.1:9000", s3_server)
                for arg in example[2:]
            ]
            completed = subprocess.run(
                command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            assert completed.returncode == 0, (shlex.join(example), completed.stderr[-3000:])
            ran.append(shlex.join(example))
    assert len(ran) >= 7
    # The preprocessing examples made complete, reconciled datasets where they say.
    default = PreprocessConfig()
    assert (tmp_path / default.source_uri).is_dir()  # make_synthetic's first example feeds the default source
    assert_reconciles(loader.read_manifest(str(tmp_path / default.output_uri)))
    storage_config = StorageConfig(endpoint_url=s3_server, region="us-east-1")
    assert_reconciles(loader.read_manifest(f"s3://{bucket}/parquet", storage_config), storage_config)
    for workdir in ("runs/quickstart", "runs/small"):
        assert_reconciles(loader.read_manifest(str(tmp_path / workdir / "parquet")))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_exits_zero(name, capsys):
    module = {
        "make_synthetic.py": make_synthetic,
        "preprocess.py": preprocess_cli,
        "run_pipeline.py": run_pipeline,
    }
    with pytest.raises(SystemExit) as exit_info:
        module[name].cli(["--help"])
    assert exit_info.value.code == 0
    assert "Examples:" in capsys.readouterr().out
