"""Credentials in StorageConfig never leave memory: not in YAML, repr, to_dict, fingerprints or diffs.

Parametrised over every field marked secret, so a new secret field is covered as soon as it exists;
a field whose name looks like a credential but is not marked secret fails the first test.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from maskgan import config as config_lib
from maskgan.data.preprocess import preprocess_tiny
from maskgan.storage import StorageConfig

SECRET_FIELDS = [item.name for item in dataclasses.fields(StorageConfig) if item.metadata.get("secret")]
CREDENTIAL_NAME = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def secret_value(name: str, variant: str = "a") -> str:
    return f"SECRET-{variant}-{name}-0123456789"


def storage_with_secrets(variant: str = "a") -> StorageConfig:
    """Every secret field set to a distinct, searchable value (plus public fields)."""
    return StorageConfig(
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        **{name: secret_value(name, variant) for name in SECRET_FIELDS},
    )


def test_every_credential_field_is_marked_secret():
    assert {"access_key_id", "secret_access_key", "session_token"} <= set(SECRET_FIELDS)
    for item in dataclasses.fields(StorageConfig):
        if CREDENTIAL_NAME.search(item.name):
            assert item.metadata.get("secret"), f"StorageConfig.{item.name} looks like a credential"
        if item.metadata.get("secret"):
            assert item.repr is False, f"StorageConfig.{item.name} is secret but shown by repr"


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_secret_field_stays_out_of_every_rendering(name):
    storage = storage_with_secrets()
    preprocess = dataclasses.replace(preprocess_tiny(), storage=storage)
    value = secret_value(name)
    assert getattr(storage, name) == value, "the value is held in memory for the S3 client"
    renderings = {
        "repr(storage)": repr(storage),
        "str(storage)": str(storage),
        "repr(config)": repr(preprocess),
        "to_yaml(config)": config_lib.to_yaml(preprocess),
        "to_yaml(storage)": config_lib.to_yaml(storage),
        "to_dict(config)": json.dumps(config_lib.to_dict(preprocess)),
        "to_dict(storage)": json.dumps(config_lib.to_dict(storage)),
    }
    for where, text in renderings.items():
        assert value not in text, f"{name} leaked into {where}"
    assert name not in config_lib.to_dict(preprocess)["storage"]
    assert config_lib.to_dict(preprocess)["storage"]["endpoint_url"] == "http://127.0.0.1:9000"


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_changing_a_secret_changes_no_fingerprint_or_diff(name):
    # A rotated credential is not a different dataset, and a diff message must not print it.
    old = dataclasses.replace(preprocess_tiny(), storage=storage_with_secrets("a"))
    new_storage = dataclasses.replace(old.storage, **{name: secret_value(name, "b")})
    new = dataclasses.replace(old, storage=new_storage)
    assert config_lib.fingerprint(old) == config_lib.fingerprint(new)
    changes = config_lib.differences(config_lib.to_dict(old), config_lib.to_dict(new))
    assert changes == []


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_yaml_round_trip_drops_the_secret_and_keeps_the_rest(name, tmp_path):
    preprocess = dataclasses.replace(preprocess_tiny(), storage=storage_with_secrets())
    path = tmp_path / "config.yaml"
    path.write_text(config_lib.to_yaml(preprocess))
    loaded = config_lib.load(type(preprocess), preprocess_tiny(), path)
    assert getattr(loaded.storage, name) is None
    assert loaded.storage.endpoint_url == preprocess.storage.endpoint_url
