"""pipelines/serve_editor.py: its --help examples are valid command lines, and it serves until Ctrl-C.

The examples block until Ctrl-C, so tests/pipelines/test_cli_examples.py (which runs examples to
completion) does not run them; here each one is parsed into its ServeConfig, and one real start-up
(its own local Ray, a tiny checkpoint) is stopped with SIGINT and must exit 0 after shutting Serve down.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pipelines import serve_editor
from tests.serving.conftest import free_port, wait_healthy
from tests.serving.test_serve_api import png
from tests.unit.editing_fixtures import face_mask, photo

REPO = Path(__file__).resolve().parents[2]


def help_examples() -> list[list[str]]:
    text = serve_editor.build_parser().format_help().replace("\\\n", " ")
    return [
        shlex.split(line.strip())
        for line in text.splitlines()
        if line.strip().startswith("python pipelines/")
    ]


def test_help_examples_are_valid_command_lines():
    examples = help_examples()
    assert len(examples) >= 3
    for example in examples:
        assert example[1] == "pipelines/serve_editor.py"
        config = serve_editor.resolve_config(serve_editor.build_parser().parse_args(example[2:]))
        assert config.model_uri == example[example.index("--model") + 1]
    last = serve_editor.resolve_config(serve_editor.build_parser().parse_args(examples[-1][2:]))
    assert (last.device, last.num_replicas, last.model_num_gpus, last.max_batch_size) == ("cuda", 2, 1, 4)


def test_bad_settings_exit_2_naming_the_field(capsys):
    assert serve_editor.cli(["--model", "x", "--set", "max_batch_size=0"]) == 2
    assert "serve.max_batch_size" in capsys.readouterr().err
    assert serve_editor.cli(["--model", "x", "--set", "modle_uri=y"]) == 2
    assert "modle_uri" in capsys.readouterr().err


@pytest.mark.slow
def test_serves_until_ctrl_c(tiny_editor_checkpoints, tmp_path):
    editor, _ = tiny_editor_checkpoints
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable, str(REPO / "pipelines" / "serve_editor.py"), "--model", editor, "--port", str(port),
        "--ray-address", "local", "--num-cpus", "1",
        "--set", "model_num_cpus=0.5", "--set", "torch_threads=1",
    ]  # fmt: skip
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}", timeout_s=300)
        assert health["model"] == editor and health["parser"] is False
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=60)
        assert page.status_code == 200
        # This model has no face parser: parsing, and a style copy that would need one, say so (400).
        image = ("p.png", png(photo((20, 20))), "image/png")
        parse = requests.post(f"http://127.0.0.1:{port}/api/parse", files={"image": image}, timeout=60)
        assert parse.status_code == 400 and "no face parser" in parse.json()["detail"], parse.text
        target = ("t.png", png(face_mask((20, 20))), "image/png")
        files = {"target_mask": target, "reference_image": image}
        copy = requests.post(f"http://127.0.0.1:{port}/api/style-copy", files=files, timeout=60)
        assert copy.status_code == 400 and "send reference_mask" in copy.json()["detail"], copy.text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
    assert f"at http://127.0.0.1:{port}/" in output and "stopping" in output, output[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
