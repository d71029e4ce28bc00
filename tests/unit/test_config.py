import dataclasses

import pytest

from maskgan import config as config_lib
from maskgan.data.preprocess import PreprocessConfig, preprocess_tiny
from maskgan.storage import StorageConfig


def test_overrides_keep_types_and_nest():
    config = config_lib.load(
        PreprocessConfig,
        preprocess_tiny(),
        overrides=["decode.resolution=16", "shard_target_mb=2", "progress=false"],
    )
    assert (
        config.decode.resolution == 16
        and isinstance(config.shard_target_mb, float)
        and config.progress is False
    )


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="decode.resolutoin"):
        config_lib.load(PreprocessConfig, preprocess_tiny(), overrides=["decode.resolutoin=16"])


def test_bad_value_is_named():
    with pytest.raises(ValueError, match="max_bad_fraction"):
        config_lib.load(PreprocessConfig, preprocess_tiny(), overrides=["max_bad_fraction=3"])
    with pytest.raises(ValueError, match="decode.resolution"):
        config_lib.load(PreprocessConfig, preprocess_tiny(), overrides=["decode.resolution=abc"])


def test_yaml_round_trip_drops_secrets(tmp_path):
    config = dataclasses.replace(
        preprocess_tiny(),
        storage=StorageConfig(access_key_id="AKIDEXAMPLE", secret_access_key="s3cr3t-value"),
    )
    text = config_lib.to_yaml(config)
    assert "s3cr3t-value" not in text and "AKIDEXAMPLE" not in text
    assert "s3cr3t-value" not in repr(config)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    loaded = config_lib.load(PreprocessConfig, PreprocessConfig(), path)
    assert loaded.decode == config.decode and loaded.shard_target_mb == config.shard_target_mb


def test_fingerprint_ignores_excluded_fields():
    a = preprocess_tiny()
    b = dataclasses.replace(a, batch_size=99)
    c = dataclasses.replace(a, jpeg_quality=50)
    assert config_lib.fingerprint(a, exclude=["batch_size"]) == config_lib.fingerprint(
        b, exclude=["batch_size"]
    )
    assert config_lib.fingerprint(a) != config_lib.fingerprint(c)


def test_differences_name_nested_fields():
    old = config_lib.to_dict(preprocess_tiny())
    new = config_lib.to_dict(dataclasses.replace(preprocess_tiny(), jpeg_quality=80))
    assert config_lib.differences(old, new) == ["jpeg_quality: 95 -> 80"]
    assert config_lib.differences({"decode": {"resolution": 32}}, {"decode": {"resolution": 64}}) == [
        "decode.resolution: 32 -> 64"
    ]
