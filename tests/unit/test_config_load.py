"""Config loading as a person meets it: `--set` overrides validated together, YAML errors that name
the line, and the default source that the release archive unpacks to."""

from __future__ import annotations

import pytest

from maskgan import config as config_lib
from maskgan.data.preprocess import PreprocessConfig, preprocess_tiny
from pipelines import preprocess as preprocess_cli


def test_set_overrides_are_validated_together():
    config = config_lib.load(
        PreprocessConfig,
        preprocess_tiny(),
        overrides=["storage.access_key_id=AKID", "storage.secret_access_key=SECRET"],
    )
    assert config.storage.access_key_id == "AKID" and config.storage.secret_access_key == "SECRET"
    assert "SECRET" not in config_lib.to_yaml(config)
    # The pair rule still holds for the result of all overrides.
    with pytest.raises(ValueError, match="must be set together"):
        config_lib.load(PreprocessConfig, preprocess_tiny(), overrides=["storage.access_key_id=AKID"])
    # Later overrides win, nested ones merge.
    config = config_lib.load(
        PreprocessConfig, preprocess_tiny(), overrides=["decode.resolution=16", "decode.mask_size=16",
                                                        "decode.resolution=8"],
    )  # fmt: skip
    assert (config.decode.resolution, config.decode.mask_size) == (8, 16)


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("jpeg_quality: 90\ndecode:\n  resolution: [16\nprogress: false\n")
    with pytest.raises(ValueError, match=rf"config file {path} line \d+: not valid YAML"):
        config_lib.load(PreprocessConfig, preprocess_tiny(), path)
    with pytest.raises(SystemExit) as exit_info:
        preprocess_cli.cli(["--config", str(path), "--print-config"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{path} line 4" in error and "Traceback" not in error


def test_credentials_as_two_set_flags_work_on_the_command_line(capsys):
    args = [
        "--set",
        "storage.access_key_id=AKID",
        "--set",
        "storage.secret_access_key=SECRET",
        "--print-config",
    ]
    assert preprocess_cli.cli(args) == 0
    assert "SECRET" not in capsys.readouterr().out


def test_the_default_source_is_what_the_release_unpacks_to():
    assert PreprocessConfig().source_uri == "data/CelebAMask-HQ"
    assert "--source data/CelebAMask-HQ" in preprocess_cli.build_parser().format_help()
