"""Output-folder rules without Ray: URI spelling, overlap, the job's own file names, whole reasons."""

from __future__ import annotations

import os

import pytest

from maskgan import storage
from maskgan.data import output_dir, schema
from maskgan.data.preprocess import summarise_reasons


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
