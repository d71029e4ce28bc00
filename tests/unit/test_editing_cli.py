"""`python -m maskgan.editing`: the --help examples run as written; bad input exits 2 with one line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from editing_fixtures import face_mask, photo, write_tiny_checkpoint
from PIL import Image

from maskgan.editing.cli import EXAMPLES, main
from maskgan.labels import label_to_color

REPO = Path(__file__).resolve().parents[2]


def example_commands() -> dict[str, list[str]]:
    """The epilog's commands (continuation lines joined), keyed by sub-command."""
    text = EXAMPLES.replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.strip().startswith("python -m")]
    return {words[3]: words[4:] for words in commands}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The files the examples name, in the current directory."""
    monkeypatch.chdir(tmp_path)
    write_tiny_checkpoint(str(tmp_path / "checkpoints" / "ebst" / "step_00000001"))
    Image.fromarray(photo((40, 48))).save("face.jpg", quality=95)
    Image.fromarray(face_mask((40, 48)), "L").save("face_mask.png")
    Image.fromarray(label_to_color(face_mask((40, 48), grow=3))).save("edited_mask.png")  # a colour mask
    Image.fromarray(photo((32, 32), seed=2)).save("style.jpg")
    Image.fromarray(face_mask((32, 32)), "L").save("style_mask.png")
    return tmp_path


def test_help_lists_examples_for_every_command():
    assert set(example_commands()) == {"edit", "style-copy", "parse"}


def test_edit_and_style_copy_examples_run_as_written(workspace, capsys):
    examples = example_commands()
    assert main(["edit", *examples["edit"]]) == 0
    assert Image.open("edited.png").size == (48, 40)
    assert main(["style-copy", *examples["style-copy"]]) == 0
    styled = Image.open("styled.png")
    assert styled.size == (48, 40) and styled.mode == "RGB"
    assert "wrote styled.png (48 x 40)" in capsys.readouterr().out


def test_parse_example_needs_a_parser_and_says_so(workspace, capsys):
    args = example_commands()["parse"]
    assert main(["parse", *args]) == 2
    assert "parser" in capsys.readouterr().err
    without = [a for i, a in enumerate(args) if a != "--parser" and (i == 0 or args[i - 1] != "--parser")]
    assert main(["parse", *without]) == 2
    assert "no face parser is loaded" in capsys.readouterr().err


def test_bad_input_exits_2_with_the_reason(workspace, capsys):
    Image.fromarray(face_mask((30, 48)), "L").save("short_mask.png")
    code = main(["edit", "--model", "checkpoints/ebst", "--image", "face.jpg", "--mask", "short_mask.png",
                 "--edited-mask", "edited_mask.png", "--out", "x.png"])  # fmt: skip
    assert code == 2 and not os.path.exists("x.png")
    assert capsys.readouterr().err.startswith("error: mask is 48 x 30 but image is 48 x 40")


def test_module_entry_point_runs_in_a_subprocess(workspace):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "maskgan.editing", "edit", *example_commands()["edit"]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.asarray(Image.open("edited.png")).std() > 5
    help_text = subprocess.run([sys.executable, "-m", "maskgan.editing", "--help"], capture_output=True,
                               text=True, env=env, timeout=300).stdout  # fmt: skip
    assert "python -m maskgan.editing edit --model checkpoints/ebst" in help_text
