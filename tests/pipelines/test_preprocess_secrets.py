"""A preprocessing run writes no credential: every secret StorageConfig field stays out of its files."""

from __future__ import annotations

import dataclasses

import pytest
from preprocess_helpers import tiny_config, write_raw

from maskgan.data import schema
from maskgan.data.preprocess import run
from maskgan.storage import StorageConfig

SECRET_FIELDS = [item.name for item in dataclasses.fields(StorageConfig) if item.metadata.get("secret")]


def secret_value(name: str) -> str:
    return f"SECRET-{name}-0123456789"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    """One local run whose config carries every secret field (unused by a local source, but recorded)."""
    root = tmp_path_factory.mktemp("secrets")
    write_raw(str(root / "raw"), num_images=6)
    storage = StorageConfig(region="eu-west-1", **{name: secret_value(name) for name in SECRET_FIELDS})
    result = run(tiny_config(str(root / "raw"), str(root / "out"), storage=storage))
    written = {
        path.relative_to(root / "out").as_posix(): path.read_bytes()
        for path in (root / "out").rglob("*")
        if path.is_file()
    }
    return result, written


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_no_written_file_or_result_holds_a_secret(finished_run, name):
    result, written = finished_run
    assert schema.MANIFEST_NAME in written and any(path.endswith(".parquet") for path in written)
    manifest_text = written[schema.MANIFEST_NAME].decode()
    assert '"region": "eu-west-1"' in manifest_text, "the public storage fields are recorded"
    value = secret_value(name).encode()
    for path, data in written.items():  # manifest, quarantine, preview, every shard
        assert value not in data, f"{name} leaked into {path}"
    assert f'"{name}"' not in manifest_text
    assert secret_value(name) not in repr(result) and secret_value(name) not in str(result)
