"""Output-folder rules and config identity, without Ray: URI normalisation, overlap, own file names,
reasons kept whole, `--set` overrides validated together, YAML errors that name the line."""

from __future__ import annotations

import os

import pytest

from maskgan import config as config_lib
from maskgan import storage
from maskgan.data import output_dir, schema
from maskgan.data.preprocess import PreprocessConfig, preprocess_tiny, summarise_reasons
from pipelines import preprocess as preprocess_cli


def test_one_folder_has_one_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    spellings = [
        "data",
        "data/",
        "./data",
        "x/../data",
        str(tmp_path / "data") + "//",
        "file://data",
        "link/",
    ]
    assert {storage.normalise_uri(uri) for uri in spellings} == {str(tmp_path / "data")}
    assert {
        storage.normalise_uri(uri)
        for uri in ("s3://b/raw", "s3://b/raw/", "s3://b//raw", "s3://b/x/../raw", "s3://b/./raw/")
    } == {"s3://b/raw"}
    assert storage.normalise_uri("s3://b/") == storage.normalise_uri("s3://b") == "s3://b"


@pytest.mark.parametrize(
    ("source", "output"),
    [
        ("out/test", "out"), ("out/test/", "./out/"), ("data", "data/parquet"), ("data/", "data"),
        ("a/../data", "data//parquet"), ("s3://b/out/test", "s3://b/out/"), ("s3://b/raw", "s3://b/raw/x/.."),
        ("s3://b", "s3://b/parquet"),
    ],
)  # fmt: skip
def test_overlapping_source_and_output_are_refused(tmp_path, monkeypatch, source, output):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(output_dir.OutputRefused, match="output outside the source"):
        output_dir.check_no_overlap(source, output)


@pytest.mark.parametrize(
    ("source", "output"),
    [("data", "data-parquet"), ("out/test", "out/testing"), ("s3://b/raw", "s3://b/raw2"),
     ("s3://b/raw", "s3://c/raw"), ("s3://b/raw", "b/raw")],
)  # fmt: skip
def test_neighbours_are_not_overlaps(tmp_path, monkeypatch, source, output):
    monkeypatch.chdir(tmp_path)
    output_dir.check_no_overlap(source, output)


def test_only_the_jobs_own_names_count_as_its_files():
    own = ["train/part-0123abcd-00000-000.parquet", "val/part-deadbeef-00012-003.parquet",
           "test/.tmp-0123456789abcdef0123456789abcdef-part-deadbeef-00001-000.parquet"]  # fmt: skip
    foreign = ["train/faces.parquet", "train/part-0123abcd-0-0.parquet", "test/notes.txt",
               "train/sub/part-0123abcd-00000-000.parquet", "other/part-0123abcd-00000-000.parquet",
               "test/.tmp-0123456789abcdef0123456789abcdef-notes.txt"]  # fmt: skip
    assert all(output_dir.is_own_file(path) for path in own)
    assert not any(output_dir.is_own_file(path) for path in foreign)


def test_failure_summary_groups_by_kind_and_keeps_the_text_whole():
    long_tail = "and a long explanation that goes on well past eighty characters so nothing may cut it"
    entries = [
        schema.QuarantineEntry(id=i, reason=f"mask 0000{i}_skin.png is 16x16, expected 32x32; {long_tail}")
        for i in (1, 2, 3)
    ] + [schema.QuarantineEntry(id=9, reason="image is a zero-byte file")]
    summary = summarise_reasons(entries)
    assert summary.startswith(f"3 x mask 00001_skin.png is 16x16, expected 32x32; {long_tail}")
    assert summary.endswith("; 1 x image is a zero-byte file")


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
